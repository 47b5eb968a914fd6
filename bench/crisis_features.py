"""What the crisis model's character n-grams and its judging of each sentence add: the model fitted with and
without them, side by side.

    python bench/crisis_features.py          # about 3 min on 2 cores

Both are fitted as `python -m krishna_ai safety fit` fits the shipped one (krishna_ai/training/safety_fit.py:
the dev messages, C and the threshold chosen in 5-fold cross-validation to flag at most 2% of everyday messages)
into a temporary folder; each is then judged, after the same phrases, on the blind sets data/safety/heldout*.jsonl.
Prints the cross-validated curve (crisis messages caught by share of everyday ones flagged) and, per set, crisis
messages caught and everyday ones flagged.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    from krishna_ai.core import safety
    from krishna_ai.training.safety_fit import HELDOUT, fit_net, labelled, measure

    print("| model over | judged | CV caught at 0.5% / 1% / 2% / 5% flagged | "
          + " | ".join(f"{p.name} caught, flagged" for p in HELDOUT) + " |")
    print("|---|---|---|" + "---|" * len(HELDOUT))
    with tempfile.TemporaryDirectory() as tmp:
        for analyzers, by_sentence in ((("words",), False), (("words", "chars"), False), (("words", "chars"), True)):
            path = Path(tmp) / f"{'-'.join(analyzers)}-{by_sentence}.json"
            net = fit_net(out=path, analyzers=analyzers, by_sentence=by_sentence)
            safety.NET = path  # the app's judge, with this model
            cells = []
            for held in HELDOUT:
                _, shipped = measure(labelled([held]))
                cells.append(f"{shipped.caught}/{shipped.crisis}, {shipped.flagged}/{shipped.everyday}")
            curve = " / ".join(f"{v:.1%}" for v in net.report["cv_crisis_caught_by_everyday_flagged"].values())
            judged = "whole, and each sentence" if by_sentence else "whole"
            print(f"| {' + '.join(analyzers)} + sentence vector | {judged} | {curve} | " + " | ".join(cells) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
