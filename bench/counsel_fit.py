"""Does the written counsel fit the trouble? Krishna's counsel card choice alone (no model writes anything).

    python bench/counsel_fit.py               # the table; about a minute on 2 cores
    python bench/counsel_fit.py --misses      # and each held-out question whose card is off its topic (shipped)

Krishna's counsel is a card of prompts/knowledge/counsel, each written for one kind of trouble and applying one
teaching of the Gita (`teaching`), chosen per question (`grounding.teachings_for`, as the app chooses it), with
the plain sentence model or the tuned matcher (`[counsel] matcher`, training/matcher.py). Two measures on the
held-out questions (data/krishna/heldout.jsonl: 50; heldout5 and heldout6: 40 each, written by helpers who saw
nothing of the project), which no card was written from:
- **topic**: the card's topic (its first theme) is the question's `"topic"` (37 topics, 3-4 cards each): the
  card speaks of this kind of trouble;
- **teaching** (heldout.jsonl only): the card's teaching is one of those a reader accepts for the question
  (`"teachings"`, labelled by hand before the cards were written; 1-4 of 30 each), as `eval`'s `teaching fits`.

Neither says the card answers *this* person: that is graded blind (README "Written counsel"). The training
questions are no test (each is one of its card's `examples`); leave-one-out on them takes each out of its card's
examples and ranks again, with the plain sentence model (the matcher was trained on most of those questions).
Optimistic: the cards were written from those very questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


HELDOUT = ("heldout", "heldout5", "heldout6")
"""Krishna's held-out questions labelled with their kind of trouble; heldout6 was written after the matcher was
tuned and first read by this table (README "A tuned matcher")."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--misses", action="store_true", help="list the held-out questions whose card is off topic")
    args = ap.parse_args()

    import numpy as np

    from krishna_ai.core.grounding import teachings_for
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.personas import load_personas
    from krishna_ai.training.evaluate import load_questions

    persona = load_personas()["krishna"]
    assert persona.counsel is not None and persona.counsel.written
    bank = load_bank(persona.counsel.bank)
    sets = {name: load_questions(REPO / "data/krishna" / f"{name}.jsonl") for name in HELDOUT}
    topics = {q["question"]: json.loads(line).get("topic") for name in HELDOUT
              for q, line in zip(sets[name], (REPO / "data/krishna" / f"{name}.jsonl").read_text(
                  encoding="utf-8").splitlines(), strict=True)}
    print(f"{len(bank)} counsel cards; held-out questions: " + ", ".join(f"{n} {len(q)}" for n, q in sets.items()))
    print("\n| ranking | " + " | ".join(f"{n}: topic" for n in HELDOUT) + " | heldout: teaching | ms per question |")
    print("|---|" + "---|" * (len(HELDOUT) + 2))
    misses = []
    tuned = persona.counsel.matcher
    for label, vectors, words, matcher in (
            ("BM25 alone", False, True, None), ("BM25 + sentence vectors", True, True, None),
            ("sentence vectors alone", True, False, None), ("BM25 + tuned matcher (shipped)", True, True, tuned),
            ("tuned matcher alone", True, False, tuned)):
        if "tuned" in label and tuned is None:
            continue
        ranked = persona.model_copy(update={"counsel": persona.counsel.model_copy(
            update={"vectors": vectors, "matcher": matcher})})
        teachings_for(ranked, "warm up")  # the model and the cards' vectors, loaded once
        cells, teaching, asked = [], 0, 0
        started = time.perf_counter()
        for name, questions in sets.items():
            topic = 0
            for q in questions:
                if words:
                    cards = teachings_for(ranked, q["question"])
                    card = cards[0] if cards else None
                else:  # the vector half of the ranking on its own
                    card = bank.cards[int(np.argmax(bank.similarity(q["question"], matcher)))]
                on_topic = card is not None and card.themes[0] == topics[q["question"]]
                topic += on_topic
                if name == "heldout":
                    teaching += card is not None and card.teaching in (q.get("teachings") or [])
                if words and matcher == tuned and not on_topic:
                    misses.append(f"[{name}: {topics[q['question']]}] {q['question']}\n    got "
                                  f"{card.id if card else None}: {card.title if card else ''}")
            cells.append(f"{topic}/{len(questions)} ({topic / len(questions):.0%})")
            asked += len(questions)
        took = 1000 * (time.perf_counter() - started) / asked
        n = len(sets["heldout"])
        print(f"| {label} | " + " | ".join(cells) + f" | {teaching}/{n} ({teaching / n:.0%}) | {took:.1f} |")

    # Leave-one-out on the training questions, each ranking as the app ranks, with the question taken out of its
    # card's examples (and of its BM25 document). Optimistic: the cards were written from these very questions.
    import bm25s

    from krishna_ai.core.knowledge import _document, _tokenize
    from krishna_ai.core.vectors import fuse

    train = {q["question"] for q in load_questions(REPO / "data/krishna/train.jsonl")}
    owners, examples = bank.example_vectors()
    texts = [e for c in bank.cards for e in c.examples]
    asked = [i for i, t in enumerate(texts) if t in train]
    own = np.asarray(bank.vectors()) @ np.asarray(examples[asked]).T
    fits = {"BM25 alone": [0, 0], "BM25 + plain sentence vectors": [0, 0], "sentence vectors alone": [0, 0]}
    for n, i in enumerate(asked):
        sims = examples @ examples[i]
        sims[i] = -1.0  # the question itself is left out
        nearest = np.full(len(bank.cards), -1.0)
        np.maximum.at(nearest, owners, sims)
        meaning = own[:, n] + nearest
        owner = bank.cards[int(owners[i])]
        left = [c.model_copy(update={"examples": [e for e in c.examples if e != texts[i]]}) for c in bank.cards]
        index = bm25s.BM25()
        index.index(_tokenize([_document(c) for c in left]), show_progress=False)
        bm25 = np.asarray(index.get_scores(_tokenize([texts[i]])[0]))
        for label, scores in (("BM25 alone", bm25), ("BM25 + plain sentence vectors", fuse(bm25, meaning)),
                              ("sentence vectors alone", meaning)):
            got = bank.cards[int(np.argmax(scores))]
            fits[label][0] += got.id == owner.id
            fits[label][1] += got.themes[0] == owner.themes[0]
    print(f"\nleave-one-out on the {len(asked)} training questions:\n")
    print("| ranking | its own card | a card of its topic |")
    print("|---|---|---|")
    for label, (card_fit, topic_fit) in fits.items():
        print(f"| {label} | {card_fit}/{len(asked)} ({card_fit / len(asked):.0%}) | "
              f"{topic_fit}/{len(asked)} ({topic_fit / len(asked):.0%}) |")
    if args.misses:
        print("\n" + "\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
