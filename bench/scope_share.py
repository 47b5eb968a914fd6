"""How much of its inside questions may PET's scope gate refuse? One embedding pass, every choice side by side.

    python bench/scope_share.py            # about 4 minutes on 2 cores (2,300 questions embedded once)

PET's gate (`[scope]` in prompts/pet.toml, core/scope.py) learns what is inside from its training prompts, Aurora's
questions and, since 2026-12-07, the examples of every prompt kind (prompts/knowledge/prompt-kinds: 1,300 of the
1,600 inside questions). `scope fit` sets the threshold to refuse at most `max_refused` of those, cross-validated.
Each row fits the gate with or without the kinds' examples at one share and counts, with the vectors `scope fit`
uses, the in-scope prompts of PET's three held-out sets (data/pet/heldout*.jsonl) refused, the inside and outside
questions of data/scope/heldout.jsonl refused and caught. The shipped choice was read off this table, so those
sets are no longer untouched for it: the prompts of a fourth set would be.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    from krishna_ai.core.gate import fit
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.personas import load_persona
    from krishna_ai.core.scope import examples, labelled_for
    from krishna_ai.runtime.embed import LightEmbedder

    embed = LightEmbedder()
    vectors: dict[str, list[float]] = {}

    def vec(question: str) -> list[float]:
        if question not in vectors:
            vectors[question] = list(embed(question))
        return vectors[question]

    pet = load_persona(REPO / "prompts" / "pet.toml", check_gate=False)
    assert pet.scope is not None and pet.coach is not None
    rows = examples(pet)
    kinds = {e for card in load_bank(pet.coach.bank).cards for e in card.examples}
    prompts = {path.stem: [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines()
                           if line.strip()] for path in sorted((REPO / "data" / "pet").glob("heldout*.jsonl"))}
    labelled = labelled_for("pet", str(REPO / "data" / "scope" / "heldout.jsonl"))
    inside = [q for q, outside in labelled if not outside]
    outside = [q for q, out in labelled if out]
    print(f"{len(rows)} questions to fit on ({len(kinds)} of them prompt-kind examples); held out: "
          + ", ".join(f"{name} {len(qs)}" for name, qs in prompts.items()) + f", scope {len(inside)} in / "
          f"{len(outside)} out\n")
    print("| inside questions fitted on | max_refused | threshold | " + " | ".join(f"{n} refused" for n in prompts)
          + " | scope: inside refused | all inside refused | scope: outside caught |")
    print("|---|---|---|" + "---|" * len(prompts) + "---|---|---|")
    for label, fitted in (("training and Aurora's", [r for r in rows if r[0] not in kinds]),
                          ("and the prompt kinds' examples", rows)):
        for share in (0.02, 0.01, 0.005):
            gate = fit(fitted, [vec(q) for q, _ in fitted], embed.name, max_refused=share)

            def refused(questions: list[str], gate=gate) -> int:
                return sum(gate.p_outside(vec(q)) >= gate.threshold for q in questions)

            held = {name: refused(qs) for name, qs in prompts.items()}
            every = sum(held.values()) + refused(inside)
            count = sum(map(len, prompts.values())) + len(inside)
            print(f"| {label} | {share} | {gate.threshold:.3f} | "
                  + " | ".join(f"{held[n]}/{len(qs)}" for n, qs in prompts.items())
                  + f" | {refused(inside)}/{len(inside)} | {every}/{count} ({every / count:.1%}) | "
                  f"{refused(outside)}/{len(outside)} ({refused(outside) / len(outside):.1%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
