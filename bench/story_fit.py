"""Does the story card fit the trouble? Krishna's card choice alone (no model writes anything), by each ranking.

    python bench/story_fit.py                 # the table; about 30 s on 2 cores
    python bench/story_fit.py --misses        # and each question whose card does not fit, with what it got

Two hand-labelled sets, each question with the cards a reader accepts for it (1-5; `"cards"`):
- data/krishna/story-dev.jsonl: the 222 training questions, labelled for this (the training file's own
  `"card"` is the one card its answer retells, not every card that fits). The ranking and its constants were
  chosen on this set.
- data/krishna/heldout.jsonl: the 50 held-out questions `eval` reports `story fits` on.

A question fits when the chosen card is one of its labels (none labelled and none chosen also counts). The
rankings: BM25 alone (the bank's index), and BM25 fused with sentence vectors (`[knowledge] vectors = true`,
krishna_ai/core/vectors.py), both through `ground()`, as the app chooses the card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETS = {"dev (222, chosen on)": REPO / "data/krishna/story-dev.jsonl",
        "held-out (50)": REPO / "data/krishna/heldout.jsonl"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--misses", action="store_true", help="list the questions whose card does not fit")
    args = ap.parse_args()

    from krishna_ai.core.grounding import ground
    from krishna_ai.core.personas import load_personas
    from krishna_ai.training.evaluate import load_questions

    persona = load_personas()["krishna"]
    assert persona.knowledge is not None
    rows = {name: load_questions(path) for name, path in SETS.items()}
    print(f"| ranking | {' | '.join(f'fits, {name}' for name in SETS)} | ms per question |")
    print(f"|---|{'---|' * len(SETS)}---|")
    misses = []
    for label, vectors in (("BM25 alone", False), ("BM25 + sentence vectors (shipped)", True)):
        ranked = persona.model_copy(update={"knowledge": persona.knowledge.model_copy(update={"vectors": vectors})})
        ground(ranked, "warm up")  # the model and the cards' vectors, loaded once
        cells, took, n = [], 0.0, 0
        for name, questions in rows.items():
            fit = 0
            for q in questions:
                started = time.perf_counter()
                grounding = ground(ranked, q["question"])
                took, n = took + time.perf_counter() - started, n + 1
                got = grounding.cards[0].id if grounding and grounding.cards else None
                ok = got in q["cards"] if q["cards"] else got is None
                fit += ok
                if not ok and vectors:
                    misses.append(f"{name}: {q['question']}\n    got {got}; fits: {', '.join(q['cards'])}")
            cells.append(f"{fit}/{len(questions)} ({fit / len(questions):.0%})")
        print(f"| {label} | {' | '.join(cells)} | {1000 * took / n:.1f} |")
    if args.misses:
        print("\n" + "\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
