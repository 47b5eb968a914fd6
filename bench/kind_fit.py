"""Does PET's checklist fit the prompt? The prompt kind chosen for each labelled prompt (no model writes anything).

    python bench/kind_fit.py                 # the table; about 20 s on 2 cores
    python bench/kind_fit.py --misses        # and each prompt whose kind is not one its label accepts

PET's reply is written from the prompt-kind card (prompts/knowledge/prompt-kinds) that fits the user's task
(`coaching.kinds_for`). The 120 training prompts (data/pet/train.jsonl), which the card writers never saw, are
labelled by hand in data/pet/kinds.jsonl: the kind whose checklist helps most (`kind`, or "any-task" when none
fits well) and the kinds that would do nearly as well (`also`). A choice fits when it is one of those.

A kind's `applies` names what a task of that kind makes ("poem|haiku|verse"): a kind the task does not name is
passed over for the next one ranked, and a task that names no kind's work gets the general checklist.

`[coach] min_meaning` sends a task whose best kind is not close enough in meaning (its own cosine plus its
nearest example's, as `Bank.similarity`) to the general checklist; the sweep below is where it was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--misses", action="store_true", help="list the prompts whose kind does not fit")
    ap.add_argument("--labels", default=str(REPO / "data/pet/kinds.jsonl"))
    args = ap.parse_args()

    from krishna_ai.core.coaching import kinds_for, the_task
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.personas import load_personas

    pet = load_personas()["pet"]
    assert pet.coach is not None
    bank = load_bank(pet.coach.bank)
    rows = [json.loads(line) for line in Path(args.labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    index = {c.id: i for i, c in enumerate(bank.cards)}
    general = pet.coach.general
    print(f"{len(bank)} prompt kinds; {len(rows)} labelled prompts ({sum(r['kind'] == general for r in rows)} "
          f"labelled {general})\n")
    print("| ranking | kind fits | ms per prompt |")
    print("|---|---|---|")
    chosen: list[tuple[str, float]] = []
    plain = pet.model_copy(update={"coach": pet.coach.model_copy(update={"min_meaning": 0.0})})
    for label, vectors, words in (("BM25 alone", False, True), ("BM25 + sentence vectors", True, True),
                                  ("sentence vectors alone", True, False),
                                  ("BM25 + sentence vectors, a kind the task does not name passed over (shipped)",
                                   True, None)):
        started, fits = time.perf_counter(), 0
        for r in rows:
            task = the_task(r["question"])
            if words is None:  # as the app chooses (coaching.kinds_for), before min_meaning
                best = kinds_for(plain, r["question"])[0].id
            elif words:
                hits = bank.search(task, k=1, vectors=vectors)
                best = hits[0].card.id if hits else general
            else:
                best = bank.cards[int(bank.similarity(task).argmax())].id
            fits += best in {r["kind"], *r["also"]}
            if label.endswith("(shipped)"):
                meaning = float(bank.similarity(task)[index[best]]) if best in index else 0.0
                chosen.append((best, meaning))
        ms = (time.perf_counter() - started) * 1000 / len(rows)
        print(f"| {label} | {fits}/{len(rows)} ({fits / len(rows):.0%}) | {ms:.1f} |")
    print("\nThe shipped ranking, a best kind below `min_meaning` answered with the general checklist:\n")
    print("| min_meaning | kind fits | sent to the general checklist |")
    print("|---|---|---|")
    for floor in (0.0, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1):
        picks = [best if meaning >= floor else general for best, meaning in chosen]
        fits = sum(p in {r["kind"], *r["also"]} for p, r in zip(picks, rows, strict=True))
        print(f"| {floor:.1f} | {fits}/{len(rows)} ({fits / len(rows):.0%}) | {sum(p == general for p in picks)} |")
    if args.misses:
        shipped = pet.coach.min_meaning
        print(f"\nMisses of the shipped ranking (min_meaning {shipped}):")
        for (best, meaning), r in zip(chosen, rows, strict=True):
            pick = best if meaning >= shipped else general
            if pick not in {r["kind"], *r["also"]}:
                print(f"- {r['question'][:90]!r}: {pick} ({meaning:.2f}); labelled {r['kind']} {r['also'] or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
