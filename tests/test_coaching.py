"""PET's written rewrites (`[coach]`, prompts/knowledge/prompt-kinds, core/coaching.py): every kind's checklist
keeps the user's task and states no second value on every example and training prompt; a need the prompt already
meets is never asked again; the reply is written with no model, and Retry moves on to the next kind."""

from __future__ import annotations

import json
import re

import pytest

from krishna_ai.core.coaching import DETECTORS, applies, coached, kinds_for, missing, the_task
from krishna_ai.core.errors import PersonaError
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_persona, load_personas
from krishna_ai.core.prompting import build_turn
from krishna_ai.core.rewrites import contradictions, improved_part, keeps_task, stated_quantities
from krishna_ai.core.style import check_reply
from tests.conftest import REPO, shipped_persona

KINDS = REPO / "prompts" / "knowledge" / "prompt-kinds"


def _questions(path) -> list[str]:
    return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pet():
    return load_personas()["pet"]


def _check(pet, question: str, reply: str) -> None:
    rewrite = improved_part(reply, "Improved prompt")
    assert rewrite, (question, reply)
    assert keeps_task(question, rewrite)[0], (question, keeps_task(question, rewrite), reply)
    assert contradictions(question, rewrite) == [], (question, reply)
    assert check_reply(reply, pet, "end_of_turn") == [], (question, check_reply(reply, pet, "end_of_turn"), reply)
    points = reply.split("\n\n")[0].splitlines()
    assert 1 <= len(points) <= 3 and all(p.startswith("- ") for p in points), reply
    assert not re.search(r"\[[^\]]*$|^[^\[]*\]", rewrite), reply  # every bracket closed


def test_every_kind_is_a_checklist_whose_examples_get_a_reply_the_persona_rules_pass():
    pet = _pet()
    bank = load_bank(KINDS)
    assert len(bank) >= 30
    held_out = {q.casefold() for path in (REPO / "data/pet").glob("heldout*.jsonl") for q in _questions(path)}
    assert len(held_out) >= 100
    for card in bank.cards:
        assert card.needs and len(card.examples) >= (3 if card.id == pet.coach.general else 8), card.id
        assert not held_out & {e.casefold() for e in card.examples}, card.id  # no kind was written from a test
        assert len({n.name for n in card.needs}) == len(card.needs), card.id
        for need in card.needs:
            assert need.has or need.pattern or need is card.needs[-1], (card.id, need.name)
            assert set(need.has) <= set(DETECTORS), (card.id, need.name)
            said = re.sub(r"\[[^\]]*\]", "", need.add)  # a quantity outside a placeholder is stated only when
            if stated_quantities(said) or re.search(r"\d", said):  # the user gave none: never a second value
                assert {"count", "length"} & set(need.has), (card.id, need.add)
        for example in card.examples:
            _check(pet, example, coached(card, example, "Improved prompt"))
            assert applies(card, the_task(example)), (card.id, example)  # its own examples name what it makes
    assert [c.id for c in bank.cards if c.applies is None] == [pet.coach.general]


def test_every_training_prompt_gets_a_reply_that_keeps_its_task():
    pet = _pet()
    for question in _questions(REPO / "data/pet/train.jsonl"):
        _check(pet, question, build_turn(pet, [], question).opening)


def test_a_need_the_prompt_already_meets_is_not_asked_again():
    poem = load_bank(KINDS).card("poem")
    met, lacked = missing(poem, "Write a funny 12-line poem about the sea for my sister's birthday card.")
    assert [n.name for n in met] == ["the form and length", "the mood", "what it is for"]
    assert [n.name for n in lacked] == ["a concrete detail", "a title"]
    reply = coached(poem, "Write a funny 12-line poem about the sea for my sister's birthday card", "Improved prompt")
    assert reply.startswith("- Nothing specific to build on")  # what it gives is named only when nothing lacks
    assert "Improved prompt: Write a funny 12-line poem about the sea for my sister's birthday card. Build it" in reply
    assert "[number] lines" not in reply and "The mood should be" not in reply


@pytest.mark.parametrize(("message", "task"), [
    ("write a poem about the sea", "Write a poem about the sea."),
    ('Improve this prompt for my shop: "Make an ad for facebook"', "Make an ad for facebook."),
    ("improve: Tips to reduce stress", "Tips to reduce stress."),
    ("How do I make bread?", "How do I make bread?"),
    ("Summarise this: [article]", "Summarise this: [article]."),
    # what the user says of themselves after the prompt is part of the task; a complaint about the answers is not
    ('prompt review pls -- "Give me a workout plan" -- for context im 52, bad left knee, 3 days a week',
     "Give me a workout plan. Im 52, bad left knee, 3 days a week."),
    ('Improve this prompt: "Write a blog post about tea." I\'m a tea shop owner and my readers are beginners',
     "Write a blog post about tea. I'm a tea shop owner and my readers are beginners."),
    ('My prompt "write a country song about my truck" gives me super cheesy lyrics every time, fix it',
     "Write a country song about my truck."),
    ('Improve this prompt: "Write SQL to join two tables" We use Postgres, the tables are orders and customers',
     "Write SQL to join two tables. We use Postgres, the tables are orders and customers."),
    # a request about the prompt, typed as people type it, is not the task
    ("can u make my prompt better: give me workout plan", "Give me workout plan."),
    ("Can you please improve this prompt for me: write a haiku about rain", "Write a haiku about rain."),
    ("hey pls rewrite my prompt - summarise this article", "Summarise this article."),
])
def test_the_task_is_the_users_own_words(message, task):
    assert the_task(message) == task


def test_a_pet_reply_is_written_with_no_model_and_shows_its_kind_and_retry_moves_on():
    pet = _pet()
    question = "Write song lyrics about a summer that ended too soon"
    turn = build_turn(pet, [], question)
    assert turn.complete and turn.opening.startswith("- ") and turn.teachings[0].id == "song-lyrics"
    assert turn.sources == turn.teachings  # the checklist is shown as the reply's source
    assert kinds_for(pet, question)[0].id == "song-lyrics"
    retried = build_turn(pet, [], question, rejected=[turn.opening])  # no other kind names a song: the general
    assert retried.opening != turn.opening and retried.teachings[0].id == pet.coach.general
    again = build_turn(pet, [], question, rejected=[turn.opening, retried.opening])  # both retried: the best again
    assert again.opening == turn.opening
    off = build_turn(pet, [], question, bank=False)  # as before its checklists: the model writes the reply
    assert not off.complete and off.opening is None


def test_a_task_no_kind_fits_gets_the_general_checklist(tmp_path):
    pet = _pet()
    high = pet.model_copy(update={"coach": pet.coach.model_copy(update={"min_score": 1e6})})
    turn = build_turn(high, [], "Write a poem about the sea")
    assert turn.teachings[0].id == "any-task" and turn.complete
    # ranked first and second, relationship advice and a trip plan are not what the task names: the general
    vague = "do the thing we talked about yesterday"
    assert [h.card.id for h in load_bank(KINDS).search(the_task(vague), k=2, vectors=True)] == [
        "relationship-advice", "trip-plan"]
    assert [c.id for c in kinds_for(pet, vague, k=3)] == ["any-task"]
    from krishna_ai.core.knowledge import load_bank as bank_of

    poem = bank_of(KINDS).similarity(the_task("Write a poem about the sea"))[
        [c.id for c in bank_of(KINDS).cards].index("poem")]
    for floor, kind in ((float(poem), "poem"), (float(poem) + 1e-6, "any-task")):  # min_meaning's boundary
        near = pet.model_copy(update={"coach": pet.coach.model_copy(update={"min_meaning": floor})})
        assert kinds_for(near, "Write a poem about the sea")[0].id == kind


def test_a_coach_with_a_bad_checklist_fails_the_persona_at_load(tmp_path):
    base = shipped_persona("pet")
    bank = tmp_path / "kinds"
    bank.mkdir()
    (bank / "a.toml").write_text((KINDS / "general.toml").read_text().replace('has = ["purpose"]', 'has = ["porpose"]'))
    path = tmp_path / "pet.toml"
    path.write_text(base.replace(f'"{(REPO / "prompts").as_posix()}/knowledge/prompt-kinds"', f'"{bank.as_posix()}"'))
    with pytest.raises(PersonaError, match=r"card any-task: need 'the purpose': unknown detector 'porpose'"):
        load_persona(path)
    (bank / "a.toml").write_text((KINDS / "general.toml").read_text())
    path.write_text(path.read_text().replace('general = "any-task"', 'general = "none-such"'))
    with pytest.raises(PersonaError, match=r"coach.general: 'none-such' is not a card"):
        load_persona(path)
    path.write_text(path.read_text().replace('general = "none-such"', 'general = "any-task"')
                    .replace('rewrite = "Improved prompt"', ""))
    with pytest.raises(PersonaError, match=r"coach: needs \[style\] rewrite"):
        load_persona(path)
    path.write_text(base.replace(f'"{(REPO / "prompts").as_posix()}/knowledge/prompt-kinds"', f'"{bank.as_posix()}"'))
    (bank / "a.toml").write_text((KINDS / "general.toml").read_text().replace("pattern = '", "pattern = '(?<"))
    with pytest.raises(PersonaError, match=r"needs.3.pattern: Value error, not a valid regular expression"):
        load_persona(path)


def _card(*needs):
    from krishna_ai.core.knowledge import Card, Need

    return Card(id="t", title="A test kind", themes=["t"], text="What a test prompt needs.", source="This test",
                needs=[Need(name=n, lacks=f"It lacks {n}, which matters.", add=f"Add {n} here please.", pattern=p)
                       for n, p in needs])


def test_what_is_met_is_named_once_and_what_is_added_follows_the_task_word_for_word():
    one = _card(("the colour", r"\bred\b"), ("the size", r"\bbig\b"))
    # one need met, one lacked: only the gap is named; the added sentence follows the task after one space
    assert coached(one, "draw a RED fox", "Improved prompt") == (
        "- It lacks the size, which matters.\n\n"
        "Improved prompt: Draw a RED fox. Add the size here please.")  # a pattern is matched in any case
    # everything met: what it gives is named, nothing is added, and nothing trails the task
    assert coached(one, "a big red fox", "Improved prompt") == (
        "- It already gives the colour and the size: keep those as they are.\n\nImproved prompt: A big red fox.")
    assert coached(one, "a RED fox", "Improved prompt").startswith("- It lacks the size")
    assert coached(_card(("the colour", r"\bred\b")), "red", "Improved prompt").startswith(
        "- It already gives the colour: keep it as it is.\n\n")
    three = _card(("aa", r"\balpha\b"), ("bb", r"\bbeta\b"), ("cc", r"\bgamma\b"), ("dd", r"\bdelta\b"))
    reply = coached(three, "alpha only", "Improved prompt")  # three lacked: the critique is those three alone
    assert reply.splitlines()[:3] == ["- It lacks bb, which matters.", "- It lacks cc, which matters.",
                                      "- It lacks dd, which matters."]
    assert reply.endswith("Improved prompt: Alpha only. Add bb here please. Add cc here please. Add dd here please.")
    assert coached(three, "nothing", "Improved prompt").startswith("- It lacks aa, which matters.")


def test_a_length_in_the_task_meets_only_a_need_that_asks_for_a_length():
    poem = load_bank(KINDS).card("poem")
    met, lacked = missing(poem, "Write a 12-line poem about the sea.")
    assert "the form and length" in [n.name for n in met] and "the mood" in [n.name for n in lacked]


def test_an_unknown_detector_is_named_with_the_ones_there_are(tmp_path):
    from krishna_ai.core.coaching import check_kinds

    bank = tmp_path / "kinds"
    bank.mkdir()
    (bank / "a.toml").write_text((KINDS / "general.toml").read_text().replace('has = ["purpose"]', 'has = ["x"]'))
    with pytest.raises(PersonaError) as exc:
        check_kinds(tmp_path / "pet.toml", str(bank), "any-task")
    assert f"unknown detector 'x' (one of {', '.join(sorted(DETECTORS))})" in str(exc.value)


@pytest.mark.parametrize(("message", "task"), [
    ('regex to match "john@example.com" please', 'Regex to match "john@example.com" please.'),  # a quotation
    ("Prompt: improve: write a haiku", "Improve: write a haiku."),  # one request about a prompt is taken off
    ('improve: "Tips to reduce stress', "Tips to reduce stress."),  # a stray quotation mark is not the task's
    ("Fix this: [code]", "Fix this: [code]."),
])
def test_the_task_keeps_a_quotation_inside_it_and_drops_one_request(message, task):
    assert the_task(message) == task


def test_kinds_are_ranked_by_meaning_too_and_retry_comes_back_to_the_best(monkeypatch):
    from krishna_ai.core import knowledge
    from krishna_ai.core.coaching import coaching_reply

    pet = _pet()
    asked = []
    search = knowledge.Bank.search

    def spy(self, query, **kw):
        asked.append((query, kw))
        return search(self, query, **kw)

    monkeypatch.setattr(knowledge.Bank, "search", spy)
    kinds_for(pet, "Write a poem about the sea")
    bank = load_bank(KINDS)
    assert asked == [("Write a poem about the sea.", {"k": len(bank), "min_score": 0.0, "vectors": True})]
    question = "Write a short story for my daughter about a dragon. Then give me ideas for a poem to go with it."
    ranked = [h.card.id for h in search(bank, the_task(question), k=len(bank), vectors=True)]
    named = [c.id for c in kinds_for(pet, question, k=3)]  # the kinds the task names, in the ranking's order
    assert len(named) == 3 and named == [i for i in ranked if i in named]
    assert any(i not in named for i in ranked[:ranked.index(named[-1])])  # a kind ranked above but not named
    replies = [coaching_reply(pet, question, choices=3)[1]]
    for _ in range(2):
        replies.append(coaching_reply(pet, question, rejected=replies, choices=3)[1])
    kind, again = coaching_reply(pet, question, rejected=replies, choices=3)  # all three retried: the best again
    assert again == replies[0] and kind.id == named[0] and len(set(replies)) == 3
