"""How sure may Maize be? Retrieval's evidence (core/evidence.py) against the labels, to choose its bounds.

    python bench/maize_evidence.py            # the table for the shipped bounds, on train (chosen on) and held-out
    python bench/maize_evidence.py --rows     # and every question with its ratio

For each labelled description: the condition of the card retrieval ranks first, and the ratio of the best
card of any other condition to it. A bound is good when the descriptions it lets say "high" are nearly always
the condition retrieval picked (the reply's diagnosis follows that card: `one_label`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETS = {"train (100, chosen on)": REPO / "data/maize/train.jsonl", "held-out (25)": REPO / "data/maize/heldout.jsonl"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", action="store_true", help="print every question's ratio and whether retrieval was right")
    args = ap.parse_args()

    from krishna_ai.core.evidence import allowed
    from krishna_ai.core.grounding import ground
    from krishna_ai.core.personas import load_personas
    from krishna_ai.training.evaluate import load_questions

    maize = load_personas()["maize"]
    assert maize.knowledge is not None and maize.knowledge.confidence is not None
    bounds = maize.knowledge.confidence
    print(f"bounds: high if ratio <= {bounds['high']}, medium if <= {bounds['medium']}, else low\n")
    print("| set | allowed | descriptions | retrieval's condition right |")
    print("|---|---|---|---|")
    for name, path in SETS.items():
        rows = []
        for q in load_questions(path):
            if not q["label"]:
                continue
            g = ground(maize, q["question"])
            ev = g.evidence if g else None
            rows.append((ev.ratio if ev else None, ev is not None and ev.label == q["label"],
                         allowed(ev, bounds) if ev else "none", q))
        for level in ("high", "medium", "low", "none"):
            got = [r for r in rows if r[2] == level]
            if got:
                right = sum(r[1] for r in got)
                print(f"| {name} | {level} | {len(got)} | {right} ({right / len(got):.0%}) |")
        if args.rows:
            for ratio, right, level, q in sorted(rows, key=lambda r: r[0] if r[0] is not None else 9):
                print(f"    {'-' if ratio is None else f'{ratio:.2f}'} {level:6} {'ok ' if right else 'BAD'} "
                      f"{q['label']:20} {q['question'][:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
