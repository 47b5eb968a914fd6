"""Tried and not shipped: a topic classifier as a prior on Krishna's counsel card choice.

    python bench/counsel_prior.py            # about 1 min on 2 cores

The shipped choice (`grounding.teachings_for`) fuses BM25 and sentence vectors over each counsel card and its
examples. Here a logistic regression over the examples' sentence vectors predicts the question's topic (37
topics: each card's first theme), and a card's fused score gains `weight * log P(its topic)`. Measured two ways:
- on the 50 held-out questions' labels (`"topic"`, `"teachings"`), as bench/counsel_fit.py;
- in 5-fold cross-validation on the 222 training questions: each fold's questions are taken out of their cards'
  examples, out of BM25's documents and out of the classifier's training, and must find their own card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2)


def main() -> int:
    import bm25s
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from krishna_ai.core.grounding import trouble_in
    from krishna_ai.core.knowledge import _document, _tokenize, load_bank
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.vectors import fuse, sentence_vectors
    from krishna_ai.training.evaluate import load_questions

    persona = load_personas()["krishna"]
    assert persona.counsel is not None
    bank = load_bank(persona.counsel.bank)
    cards = bank.cards
    owners, examples = bank.example_vectors()
    texts = [e for c in cards for e in c.examples]
    topics = sorted({c.themes[0] for c in cards})
    y = np.array([topics.index(cards[o].themes[0]) for o in owners])
    topic_of = np.array([topics.index(c.themes[0]) for c in cards])
    own = np.asarray(bank.vectors())

    def scores(bm25: np.ndarray, meaning: np.ndarray, p_topic: np.ndarray, weight: float) -> np.ndarray:
        return fuse(bm25, meaning) + weight * np.log(p_topic[topic_of] + 1e-9) + 1e-4 * meaning

    heldout = [json.loads(line) for line in (REPO / "data/krishna/heldout.jsonl").read_text().splitlines() if line]
    classifier = LogisticRegression(C=3, max_iter=2000).fit(examples, y)
    fits = {w: [0, 0] for w in WEIGHTS}
    for q in heldout:
        trouble = trouble_in(persona, q["question"])
        bm25 = np.asarray(bank.index().get_scores(_tokenize([trouble])[0]))
        meaning = bank.similarity(trouble)
        p_topic = classifier.predict_proba(sentence_vectors([trouble]))[0]
        for w in WEIGHTS:
            card = cards[int(np.argmax(scores(bm25, meaning, p_topic, w)))]
            fits[w][0] += card.themes[0] == q["topic"]
            fits[w][1] += card.teaching in (q.get("teachings") or [])

    train = [q["question"] for q in load_questions(REPO / "data/krishna/train.jsonl")]
    asked = [texts.index(t) for t in train if t in texts]
    folds = np.array_split(np.random.default_rng(0).permutation(len(asked)), 5)
    own_card = {w: 0 for w in WEIGHTS}
    for fold in folds:
        out = {asked[i] for i in fold}
        keep = np.array([i not in out for i in range(len(texts))])
        fold_classifier = LogisticRegression(C=3, max_iter=2000).fit(examples[keep], y[keep])
        left = [c.model_copy(update={"examples": [e for e in c.examples if texts.index(e) not in out]}) for c in cards]
        index = bm25s.BM25()
        index.index(_tokenize([_document(c) for c in left]), show_progress=False)
        for i in fold:
            j = asked[i]
            sims = examples @ examples[j]
            sims[~keep] = -1.0
            nearest = np.full(len(cards), -1.0)
            np.maximum.at(nearest, owners, sims)
            meaning = own @ examples[j] + nearest
            bm25 = np.asarray(index.get_scores(_tokenize([texts[j]])[0]))
            p_topic = fold_classifier.predict_proba(examples[j][None])[0]
            for w in WEIGHTS:
                own_card[w] += cards[int(np.argmax(scores(bm25, meaning, p_topic, w)))].id == cards[owners[j]].id

    n = len(heldout)
    print("| topic prior weight | held-out: topic fits | held-out: teaching fits | training, 5-fold: own card |")
    print("|---|---|---|---|")
    for w in WEIGHTS:
        label = f"{w} (shipped: none)" if w == 0 else str(w)
        print(f"| {label} | {fits[w][0]}/{n} | {fits[w][1]}/{n} | {own_card[w]}/{len(asked)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
