"""Knowledge banks: validation on load, BM25 retrieval (quality on the labelled held-out sets), the
person restriction, the cache, and the `faithful` check that compares a reply with its cards."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.facts import facts_of
from krishna_ai.core.grounding import card_label, ground
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import PROMPTS_DIR, load_persona, load_personas
from krishna_ai.studio.service import Studio
from krishna_ai.training.evaluate import faithfulness, load_questions, top3
from tests.conftest import REPO, krishna_with_counsel, shipped_persona

P = load_personas()
# written elsewhere: no adapter beside it, and its bank still "knowledge/aurora", relative to where it is written
AURORA_NO_ADAPTER = shipped_persona("aurora", adapters=False).replace(f'"{PROMPTS_DIR.as_posix()}/knowledge/',
                                                                     '"knowledge/')
BANKS = PROMPTS_DIR / "knowledge"
CARD = '''[[cards]]
id = "x-one"
title = "One"
themes = ["t"]
text = "Ada Lovelace wrote about the Analytical Engine in 1843."
source = "Encyclopaedia Britannica, 'Ada Lovelace'"
'''


def test_shipped_banks_are_complete():
    krishna = load_bank(BANKS / "krishna")
    for person in P["krishna"].personalities:
        assert len([c for c in krishna.cards if c.person == person]) >= 3, person
    assert all(c.source and c.text for bank in ("krishna", "aurora", "maize") for c in load_bank(BANKS / bank).cards)
    maize = load_bank(BANKS / "maize")
    for label in P["maize"].labels:
        assert any(label.lower() in " ".join(c.themes).lower() for c in maize.cards), label


@pytest.mark.parametrize("persona, path, floor", [
    ("krishna", "data/krishna/heldout.jsonl", 0.9),
    ("aurora", "data/aurora/heldout.jsonl", 0.9),
    ("maize", "data/maize/heldout.jsonl", 0.9),
])
def test_retrieval_puts_the_expected_card_in_the_top_3(persona, path, floor):
    rows = [q for q in load_questions(path) if q["cards"]]
    hits = [any(c in top3(P[persona], q["question"]) for c in q["cards"]) for q in rows]
    assert len(rows) >= 15 and sum(hits) / len(hits) >= floor, (sum(hits), len(hits))


def test_a_named_person_restricts_the_story_to_their_cards():
    k = P["krishna"]
    g = ground(k, "I keep failing my exams, like Marie Curie did?")
    assert g.person == "Marie Curie" and g.cards and all(c.person == "Marie Curie" for c in g.cards)
    typed = ground(k, "I am afraid of speaking in public.", personality="Nelson Mandela")
    assert typed.cards and typed.cards[0].person == "Nelson Mandela"
    nobody = ground(k, "I am afraid of speaking in public.", personality="Serena Williams")
    assert nobody.cards == [] and nobody.person == "Serena Williams"  # never someone else's story as hers


def test_who_the_story_is_about_from_the_message_the_card_or_the_personas_list():
    k = P["krishna"]
    unnamed = ground(k, "I am afraid of speaking in public.")
    assert unnamed.cards and unnamed.person == unnamed.cards[0].person is not None  # the card's person
    for message in ("Tell me a story about Kalam.", "Tell me the life of Kalam. I failed."):  # a surname, a full stop
        assert ground(k, message).person == "A P J Abdul Kalam", message
    # a person the persona lists but holds no card of gets no one else's story; the longest name named wins
    listed = k.model_copy(update={"personalities": [*k.personalities, "Serena Williams", "Van Beethoven"]})
    serena = ground(listed, "Serena Williams inspires me, but I lost my final.")
    assert serena.person == "Serena Williams" and serena.cards == []
    ludwig = ground(listed, "Like Ludwig van Beethoven, I am losing my hearing.")
    assert ludwig.person == "Ludwig van Beethoven" and ludwig.cards[0].person == "Ludwig van Beethoven"


def test_a_named_person_whose_cards_all_fall_below_the_floor_still_gets_their_best_card():
    k = P["krishna"]
    floored = k.model_copy(update={"knowledge": k.knowledge.model_copy(update={"min_score": 1000.0})})
    message = "I am afraid of speaking in public."
    assert ground(floored, message).cards == []  # nobody named: nothing passes the floor
    bank = load_bank(k.knowledge.bank)
    for person in ("Nelson Mandela", "Marie Curie"):
        g = ground(floored, message, personality=person)
        best = bank.search(f"{person} {message}", k=1, person=person, vectors=True)
        assert g.person == person and len(g.cards) == k.knowledge.top_k == 1 and g.cards == [best[0].card]
        assert g.cards[0].person == person


def test_a_question_the_bank_does_not_cover_gets_no_card():
    assert ground(P["aurora"], "What is the boiling point of water in kelvin?").cards == []
    assert ground(P["aurora"], "Where was Shivaji Maharaj born?").cards[0].id.startswith("shivaji")


def test_bad_banks_are_refused_with_file_card_and_field(tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    with pytest.raises(PersonaError, match="is empty"):
        load_bank(bank)
    (bank / "a.toml").write_text(CARD.replace('source = "Encyclopaedia Britannica, \'Ada Lovelace\'"\n', "")
                                 + 'colour = "red"\n')
    (bank / "b.toml").write_text(CARD.replace('text = "Ada Lovelace wrote about the Analytical Engine in 1843."',
                                              'text = "  "'))
    (bank / "c.toml").write_text("[[cards]\nbroken")
    with pytest.raises(PersonaError) as exc:
        load_bank(bank)
    msg = str(exc.value)
    assert "a.toml: card x-one: source: required field is missing" in msg
    assert "a.toml: card x-one: colour: unknown key" in msg
    assert "b.toml: card x-one: text" in msg and "c.toml: not valid TOML" in msg
    with pytest.raises(PersonaError, match="does not exist"):
        load_bank(tmp_path / "missing")


def test_a_persona_naming_a_missing_bank_is_refused(tmp_path):
    path = tmp_path / "aurora.toml"
    path.write_text(AURORA_NO_ADAPTER)  # its bank "knowledge/aurora" is not beside it
    with pytest.raises(PersonaError, match=r"aurora.toml: knowledge.bank: .*does not exist"):
        load_persona(path)


def test_a_bank_broken_while_serving_fails_that_persona_only(tmp_path, scripted):
    bank = tmp_path / "knowledge" / "aurora"
    shutil.copytree(BANKS / "aurora", bank)
    (tmp_path / "aurora.toml").write_text(AURORA_NO_ADAPTER)
    personas = dict(P, aurora=load_persona(tmp_path / "aurora.toml"))
    studio = Studio(personas, loader=lambda spec, adapter: scripted(["Partha, fine."]))
    assert list(studio.chat("aurora", [], "Who was Tukaram?"))[-1].sources
    (bank / "saints.toml").write_text("[[cards]]\nid = 3\n")
    with pytest.raises(PersonaError, match="saints.toml"):
        list(studio.chat("aurora", [], "Who was Tukaram?"))
    assert list(studio.chat("krishna", [], "I am afraid."))[-1].done  # the others keep serving


def test_the_index_is_cached_and_rebuilt_when_a_card_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank_dir = tmp_path / "b"
    bank_dir.mkdir()
    (bank_dir / "a.toml").write_text(CARD)
    first = load_bank(bank_dir)
    assert first.search("Analytical Engine")[0].card.id == "x-one"
    assert len(list((tmp_path / "cache" / "bm25").iterdir())) == 1
    (bank_dir / "a.toml").write_text(CARD.replace("x-one", "x-two"))
    second = load_bank(bank_dir)
    assert second is not first and second.search("Analytical Engine")[0].card.id == "x-two"
    assert len(list((tmp_path / "cache" / "bm25").iterdir())) == 2


def test_faithful_compares_names_years_and_numbers_with_the_card():
    k = P["krishna"]
    card = load_bank(BANKS / "krishna").card("curie-pierre-death")
    counsel = "Partha, grief is a river; let it carry you, not drown you. Walk on."
    retold = counsel + "\n\n" + card.text
    assert faithfulness(k, "I lost my husband.", retold, [card]) == (True, [])
    invented = counsel + "\n\nMarie Curie won a gold medal at the 1912 Olympics in Stockholm."
    ok, missing = faithfulness(k, "I lost my husband.", invented, [card])
    assert not ok and "1912" in missing and "stockholm" in missing and "olympics" in missing
    other = counsel + "\n\n" + card.text.replace("Marie Curie", "She").replace("Curie", "she")
    assert "the story never names Marie Curie" in faithfulness(k, "q", other, [card])[1]
    assert faithfulness(k, "q", counsel, []) == (True, [])
    assert faithfulness(k, "q", retold, [])[0] is False  # a story with no card is never faithful
    a = P["aurora"]
    shivaji = ground(a, "Where was Shivaji Maharaj born?").cards
    assert faithfulness(a, "Where was Shivaji Maharaj born?", "He was born at Shivneri fort in 1630.", shivaji)[0]
    assert not faithfulness(a, "Where was Shivaji Maharaj born?", "He was born in Kutch in 1630.", shivaji)[0]


def test_facts_of_skips_sentence_starts_and_keeps_names():
    numbers, names = facts_of("After years of work, Thomas Edison opened Menlo Park in 1876. He had 40 helpers.")
    assert numbers == {"1876", "40"} and {"thomas", "edison", "menlo", "park"} <= names
    assert "after" not in names and "he" not in names


def test_heldout_sets_are_labelled_with_existing_cards():
    for persona in ("krishna", "aurora", "maize"):
        bank = load_bank(BANKS / persona)
        path = f"data/{persona}/heldout.jsonl"
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            for cid in row.get("cards") or [row.get("card")]:
                if cid:
                    bank.card(cid)


def test_the_bank_cache_keeps_one_bank_per_folder_and_reads_files_only_when_they_change(tmp_path, monkeypatch):
    import os

    from krishna_ai.core import knowledge

    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank_dir = tmp_path / "b"
    bank_dir.mkdir()
    card = bank_dir / "a.toml"
    for i in range(5):  # five edits: still one cached bank for the folder, the latest
        card.write_text(CARD.replace("x-one", f"x-{i}"))
        assert load_bank(bank_dir).cards[0].id == f"x-{i}"
    assert [k for k in knowledge._BANKS if k == str(bank_dir.resolve())] == [str(bank_dir.resolve())]
    assert len(knowledge._BANKS) <= knowledge.MAX_CACHED_BANKS

    settled = time.time() - 60  # an edit long ago: a question stats the files and reads none
    os.utime(card, (settled, settled))
    load_bank(bank_dir)
    hashed = []
    monkeypatch.setattr(knowledge, "fingerprint", lambda files: hashed.append(files) or "x")
    for _ in range(3):
        assert load_bank(bank_dir).cards[0].id == "x-4"
    assert hashed == []


def test_the_bank_cache_is_bounded(tmp_path, monkeypatch):
    from krishna_ai.core import knowledge

    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(knowledge, "MAX_CACHED_BANKS", 3)
    for i in range(5):
        folder = tmp_path / f"bank{i}"
        folder.mkdir()
        (folder / "a.toml").write_text(CARD)
        load_bank(folder)
    assert len(knowledge._BANKS) == 3 and str((tmp_path / "bank4").resolve()) in knowledge._BANKS


GITA = BANKS / "gita"
TEACHINGS = [json.loads(line) for line in (REPO / "data" / "krishna" / "teachings.jsonl").read_text().splitlines()]
"""Questions from data/krishna/heldout.jsonl with the teachings a reader would accept: keywords were tuned on the
"dev" ones; the "heldout" ones were labelled after and measure retrieval as it is (README "Tried first")."""


HELD_OUT = [json.loads(line) for line in (REPO / "data/krishna/heldout.jsonl").read_text().splitlines()]
"""All 50 held-out questions, each with the teachings a reader accepts ("teachings", README "Tried first")."""


def teaching_fit(rows: list[dict]) -> tuple[int, int]:
    """(questions whose top teaching is one they are labelled with, questions)."""
    bank = load_bank(GITA)
    return sum(bank.search(r["question"], k=1)[0].card.id in r["teachings"] for r in rows), len(rows)


def test_the_gita_bank_is_sourced_by_chapter_and_verse_and_fits_its_questions():
    bank = load_bank(GITA)
    assert len(bank.cards) >= 30
    for card in bank.cards:
        assert re.match(r"Bhagavad Gita \d{1,2}\.\d{1,2}(-\d{1,2})?, in ", card.source), card.source
        assert "Arjuna" not in card.text  # the persona never names him; a retold teaching must not either
    assert teaching_fit([r for r in TEACHINGS if r["split"] == "dev"]) == (8, 8)
    assert teaching_fit([r for r in TEACHINGS if r["split"] == "heldout"])[0] >= 4  # 4 of 8
    fit = teaching_fit(HELD_OUT)
    assert fit[0] >= 22, fit  # 22 of 50 held-out questions get a teaching a reader labelled as fitting (README)
    shipped = P["krishna"].counsel  # a teaching in the prompt measured no better: the shipped counsel is written
    assert shipped is not None and shipped.written and shipped.teachings == str(GITA.resolve())


def test_a_counsel_bank_puts_the_teaching_in_the_prompt_and_among_the_sources(tmp_path):
    from krishna_ai.core.prompting import build_turn

    text = shipped_persona("krishna", adapters=False, counsel=False)
    text += f'\n[counsel]\nbank = "{GITA}"\ninstruction = """Apply this teaching:\n$cards"""\n'
    (tmp_path / "krishna.toml").write_text(text)
    persona = load_persona(tmp_path / "krishna.toml")
    turn = build_turn(persona, [], "I keep breaking my promise to quit smoking.")
    assert [c.id for c in turn.teachings] == ["gita-6-35-practice"]
    assert "Apply this teaching:\n- The Gita admits that the mind is restless" in turn.messages[0]["content"]
    assert turn.sources[0].id == "gita-6-35-practice" and turn.sources[1:] == turn.cards
    (tmp_path / "bad.toml").write_text(text.replace("$cards", "").replace('id = "krishna"', 'id = "bad"'))
    with pytest.raises(PersonaError, match="counsel.instruction: .*must contain \\$cards"):
        load_persona(tmp_path / "bad.toml")


def test_a_person_without_cards_gets_no_other_persons_story():
    from krishna_ai.core.prompting import build_turn

    for question in ("Tell me a story about Serena Williams", "Give me a lesson from the life of Usain Bolt."):
        turn = build_turn(P["krishna"], [], question)
        assert turn.cards == [] and "retell" not in turn.messages[0]["content"]
        assert turn.closing is not None and turn.finish("Partha, rest.").endswith(turn.closing)
        assert turn.personality in turn.closing
    surname = build_turn(P["krishna"], [], "Tell me a story about Lincoln")
    assert surname.cards and surname.cards[0].person == "Abraham Lincoln" and surname.closing is None
    other = build_turn(P["krishna"], [], "Tell me a story about Indira Gandhi")  # not Mahatma Gandhi
    assert other.cards == [] and other.personality == "Indira Gandhi"
    for everyday in ("My boss Mr Singh shouts at me", "Jobs are scarce in my town", "Tell me the story of Diwali"):
        turn = build_turn(P["krishna"], [], everyday)  # no person asked for: a story that fits, no closing
        assert turn.closing is None and turn.personality not in ("Milkha Singh", "Steve Jobs", "Diwali")


def test_each_kind_of_bad_card_file_gets_its_own_message(tmp_path):
    cases = {
        "not-cards.toml": ('title = "x"\n', "not-cards.toml: unknown key(s) ['title']"),
        "empty.toml": ("cards = []\n", "empty.toml: cards: empty (a card file needs at least one [[cards]])"),
        "table.toml": ("[cards]\nid = 'x'\n", "table.toml: a card file holds [[cards]] tables only"),
        "unnamed.toml": ("[[cards]]\ntitle = 'x'\n", "unnamed.toml: card #1: id: required field is missing"),
        "second.toml": (CARD + CARD.replace('"x-one"', "7"), "second.toml: card #2: id: "),
        "themes.toml": (CARD.replace('themes = ["t"]', "themes = 5"),
                        "themes.toml: card x-one: themes: Input should be a valid list"),
        "numbers.toml": ("cards = [1]\n", "numbers.toml: card #1: (card): Input should be a valid dictionary"),
    }
    for name, (text, expected) in cases.items():
        bank = tmp_path / name.removesuffix(".toml")
        bank.mkdir()
        (bank / name).write_text(text)
        with pytest.raises(PersonaError) as exc:
            load_bank(bank)
        assert expected in str(exc.value), (name, str(exc.value))


def test_a_records_named_cards_come_first_and_a_null_card_shows_none():
    from krishna_ai.core.records import record_cards

    krishna = P["krishna"]
    question = "I failed my exam again. What should I do?"
    retrieved = [c.id for c in ground(krishna, question).cards]
    bank = load_bank(krishna.knowledge.bank)
    other = next(c.id for c in bank.cards if c.id not in retrieved)
    assert [c.id for c in record_cards(krishna, {"question": question})] == retrieved
    named = [c.id for c in record_cards(krishna, {"question": question, "card": other})]
    assert named[0] == other and named[1:] == [i for i in retrieved if i != other][:krishna.knowledge.top_k - 1]
    assert [c.id for c in record_cards(krishna, {"question": question, "cards": [other]})] == named
    assert record_cards(krishna, {"question": question, "card": None}) == []
    assert record_cards(krishna, {"question": question, "cards": []}) == []
    assert record_cards(P["pet"], {"question": question}) is None  # no bank


def test_a_records_teaching_is_the_one_its_prompt_shows(tmp_path):
    from krishna_ai.core.grounding import teachings_for
    from krishna_ai.core.records import record_teachings
    from krishna_ai.training.data import persona_conversations

    krishna = krishna_with_counsel(tmp_path)
    question = "I failed my exam again. What should I do?"
    retrieved = [c.id for c in teachings_for(krishna, question)]
    assert retrieved and [c.id for c in record_teachings(krishna, {"question": question})] == retrieved
    gita = load_bank(krishna.counsel.bank)
    other = next(c for c in gita.cards if c.id not in retrieved)
    record = {"question": question, "teaching": other.id, "answer": "Partha, ..."}
    assert record_teachings(krishna, record) == [other]
    system = persona_conversations(krishna, [record])[0][0]["content"]
    assert other.text in system and gita.card(retrieved[0]).text not in system
    assert record_teachings(krishna, {"question": question, "teaching": None}) == []
    assert record_teachings(P["pet"], {"question": question, "teaching": other.id}) is None  # no counsel bank
    with pytest.raises(PersonaError, match="has no card 'gita-99-1-nothing'"):
        record_teachings(krishna, {"question": question, "teaching": "gita-99-1-nothing"})


def test_a_damaged_index_cache_is_rebuilt_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "a.toml").write_text(CARD)
    first = load_bank(bank)
    assert [h.card.id for h in first.search("Analytical Engine")] == ["x-one"]
    saved = next((tmp_path / "cache" / "bm25").iterdir())
    for f in saved.iterdir():
        f.write_text("{damaged")
    from krishna_ai.core import knowledge

    knowledge._BANKS.clear()
    again = load_bank(bank)
    assert [h.card.id for h in again.search("Analytical Engine")] == ["x-one"]
    assert json.loads((saved / "params.index.json").read_text())  # written afresh


def test_a_cards_keywords_and_person_are_searched_and_indexing_is_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank = tmp_path / "quiet"
    bank.mkdir()
    (bank / "a.toml").write_text(CARD + '''
[[cards]]
id = "x-two"
title = "Two"
person = "Grace Hopper"
themes = ["debugging"]
keywords = ["zebrafish"]
text = "A computer pioneer found a moth in a relay of the Mark II in 1947."
source = "Encyclopaedia Britannica, 'Grace Hopper'"
''')
    loaded = load_bank(bank)
    assert loaded.folder == bank and loaded.name == "quiet" and loaded.card("x-two").person == "Grace Hopper"
    assert [h.card.id for h in loaded.search("zebrafish")] == ["x-two"]  # only in its keywords
    assert [h.card.id for h in loaded.search("Hopper")] == ["x-two"]  # only in its person
    from krishna_ai.core import knowledge

    knowledge._BANKS.clear()
    load_bank(bank).search("zebrafish")  # from the saved index this time
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no progress bars from the index, built or loaded


def test_a_records_person_and_the_retrieved_cards_after_the_named_one():
    from krishna_ai.core.grounding import teachings_for
    from krishna_ai.core.records import record_cards

    aurora = P["aurora"]
    question = "Who built the fort at Raigad and how was Shivaji crowned there?"
    retrieved = [c.id for c in record_cards(aurora, {"question": question})]
    assert len(retrieved) == aurora.knowledge.top_k == 2
    bank = load_bank(aurora.knowledge.bank)
    other = next(c.id for c in bank.cards if c.id not in retrieved)
    named = [c.id for c in record_cards(aurora, {"question": question, "card": other})]
    assert named == [other, *[i for i in retrieved if i != other][:aurora.knowledge.top_k - 1]]
    krishna = P["krishna"]
    person = "Thomas Edison"
    cards = record_cards(krishna, {"question": "Tell me a story about never giving up", "personality": person})
    assert cards and all(c.person == person for c in cards)
    assert teachings_for(P["pet"], "I keep breaking my promise") == []  # no counsel bank


def test_one_label_grounds_a_diagnosis_in_one_conditions_cards_only():
    """Maize's `one_label`: the cards in the prompt are all the best card's condition's, so the advice the reply
    retells is that condition's; without it, a rust question also got another condition's cards."""
    maize = P["maize"]
    assert maize.knowledge is not None and maize.knowledge.one_label
    mixed = maize.model_copy(update={"knowledge": maize.knowledge.model_copy(update={"one_label": False})})
    labels = {lab.casefold(): lab for lab in maize.labels}
    was_mixed = 0
    for q in load_questions(REPO / "data" / "maize" / "heldout.jsonl"):
        one, before = ground(maize, q["question"]), ground(mixed, q["question"])
        assert one is not None and before is not None and one.cards, q["question"]
        assert {card_label(c, labels) for c in one.cards} == {card_label(before.cards[0], labels)}, q["question"]
        assert len(one.cards) <= maize.knowledge.top_k
        was_mixed += len({card_label(c, labels) for c in before.cards}) > 1
    assert was_mixed >= 10


def test_a_saved_index_is_loaded_not_rebuilt(tmp_path, monkeypatch):
    import bm25s

    from krishna_ai.core import knowledge

    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.toml").write_text(CARD)
    first = load_bank(tmp_path / "b")
    assert first.search("Analytical Engine")[0].card.id == "x-one"
    (saved,) = (tmp_path / "cache" / "bm25").iterdir()
    assert saved.name == f"b-{first.fingerprint[:16]}" and (saved / "params.index.json").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the index was rebuilt although a saved one was there")

    monkeypatch.setattr(bm25s.BM25, "index", no_rebuild)
    knowledge._BANKS.clear()
    assert load_bank(tmp_path / "b").search("Analytical Engine")[0].card.id == "x-one"


def test_a_card_about_no_label_has_none_and_a_teaching_below_the_floor_is_left_out(tmp_path):
    card = load_bank(BANKS / "maize").cards[0]
    labels = {lab.casefold(): lab for lab in P["maize"].labels}
    assert card_label(card, labels) in P["maize"].labels
    assert card_label(card.model_copy(update={"themes": ["weather"]}), labels) is None
    from krishna_ai.core.grounding import teachings_for

    text = shipped_persona("krishna", adapters=False, counsel=False)
    counsel = f'\n[counsel]\nbank = "{GITA}"\ninstruction = """Apply this teaching:\n$cards"""\n'
    (tmp_path / "krishna.toml").write_text(text + counsel)
    question = "I keep breaking my promise to quit smoking."
    assert [c.id for c in teachings_for(load_persona(tmp_path / "krishna.toml"), question)] == ["gita-6-35-practice"]
    (tmp_path / "high.toml").write_text((text + counsel + "min_score = 1000.0\n").replace('id = "krishna"',
                                                                                         'id = "high"'))
    assert teachings_for(load_persona(tmp_path / "high.toml"), question) == []


def test_every_bad_file_of_a_bank_is_named_and_a_repeated_card_id_is_counted(tmp_path):
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "a.toml").write_bytes(b"\xff\xfe not text")
    (bank / "b.toml").write_text("[[cards]\nbroken")
    (bank / "c.toml").write_text(CARD.replace('themes = ["t"]', 'themes = ["t"]\nexamples = ["fine", 7]'))
    (bank / "d.toml").write_text(CARD + CARD.replace('"x-one"', '"x-two"'))
    (bank / "e.toml").write_text(CARD.replace('"x-one"', '"x-two"') + CARD.replace('"x-one"', '"x-three"'))
    with pytest.raises(PersonaError) as exc:
        load_bank(bank)
    msg = str(exc.value)
    assert "a.toml: not UTF-8 text" in msg and "b.toml: not valid TOML" in msg  # one bad file does not hide the next
    assert "c.toml: card x-one: examples.1: Input should be a valid string" in msg
    assert "card id 'x-two' is used 2 times" in msg and "x-three" not in msg and "'x-one' is used" not in msg


def test_an_edit_is_read_even_when_its_modification_time_is_old(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank_dir = tmp_path / "b"
    bank_dir.mkdir()
    card = bank_dir / "a.toml"
    card.write_text(CARD)
    assert load_bank(bank_dir).cards[0].id == "x-one"
    card.write_text(CARD.replace("x-one", "x-edited"))  # a file restored from a backup keeps its old time
    settled = time.time() - 600
    os.utime(card, (settled, settled))
    assert load_bank(bank_dir).cards[0].id == "x-edited"


def coverage_bank(tmp_path):
    cards = {"rare": "Zanzibar Zanzibar Zanzibar Zanzibar wrote.", "common": "Lovelace met Babbage.",
             **{f"filler-{i}": f"Filler card number {i}: Lovelace and Babbage." for i in range(3)}}
    (tmp_path / "cov").mkdir()
    (tmp_path / "cov" / "a.toml").write_text("".join(
        CARD.replace('"x-one"', f'"{cid}"').replace(
            "Ada Lovelace wrote about the Analytical Engine in 1843.", text)
        .replace('title = "One"', 'title = "Card"') for cid, text in cards.items()))
    return load_bank(tmp_path / "cov")


def test_coverage_keeps_a_card_at_exactly_the_share_and_goes_on_past_one_below_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    bank = coverage_bank(tmp_path)
    query = "Zanzibar Lovelace Babbage"
    assert bank.search(query, k=5)[0].card.id == "rare"  # the rare word outscores two common ones
    # "rare" shares 1 of the 3 words, the others 2 of 3: a coverage of 1/2 skips it and goes on to the rest
    covered = [h.card.id for h in bank.search(query, k=5, min_coverage=0.5)]
    assert "rare" not in covered and "common" in covered and len(covered) == 4
    assert [h.card.id for h in bank.search("Zanzibar Menabrea", min_coverage=0.5)] == ["rare"]  # 1 of 2: kept
    assert len(bank.search("Lovelace")) == 3  # three by default, of the four that share the word


def test_a_persons_cards_are_ranked_among_their_own_with_their_own_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "people"
    folder.mkdir()
    others = "".join(CARD.replace('"x-one"', f'"other-{i}"').replace(
        'title = "One"', 'title = "Engine"\nperson = "Charles Babbage"').replace(
        "Ada Lovelace wrote about", "The Analytical Engine Engine Engine and") for i in range(4))
    mine = CARD.replace('title = "One"', 'title = "Ada"\nperson = "Ada Lovelace"')
    (folder / "a.toml").write_text(others + mine)
    bank = load_bank(folder)
    everyone = {h.card.id: h.score for h in bank.search("Analytical Engine", k=5)}
    assert "x-one" not in list(everyone)[:1]  # the other person's cards rank first for everyone...
    hers = bank.search("Analytical Engine", k=1, person="Ada Lovelace")
    assert [h.card.id for h in hers] == ["x-one"]  # ...but among hers, hers is found
    assert hers[0].score == pytest.approx(everyone["x-one"])  # and scored as it is among all


def test_the_prompts_cards_block_is_one_line_per_card():
    from krishna_ai.core.knowledge import cards_block

    cards = load_bank(BANKS / "aurora").cards[:2]
    assert cards_block(cards) == f"- {cards[0].text}\n- {cards[1].text}"
