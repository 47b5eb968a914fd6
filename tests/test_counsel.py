"""Krishna's written counsel (`[counsel] written`, prompts/knowledge/counsel): every card is a counsel paragraph the
persona's rules pass, written from the training questions and never from a held-out one; the card that fits
opens the reply, the model continues it with the story, and with no story to tell no model runs."""

from __future__ import annotations

import json

import pytest

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.facts import facts_of
from krishna_ai.core.grounding import teachings_for
from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_persona, load_personas
from krishna_ai.core.prompting import build_turn, fit_history, render_gemma_turns
from krishna_ai.core.style import check_reply, split_sentences
from krishna_ai.studio.service import Studio
from tests.conftest import REPO, shipped_persona

P = load_personas()
KRISHNA = P["krishna"]
BANKS = REPO / "prompts" / "knowledge"


def _questions(path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r.get("question") or r["message"] for r in rows]  # the safety set holds messages


def _topics() -> set[str]:
    rows = [json.loads(line) for line in (REPO / "data/krishna/train.jsonl").read_text().splitlines() if line]
    return {r["topic"] for r in rows if r.get("topic")}


def test_every_counsel_card_is_a_counsel_paragraph_the_persona_rules_pass():
    bank, gita = load_bank(BANKS / "counsel"), load_bank(BANKS / "gita")
    topics = _topics()
    assert len(bank) >= 3 * len(topics)  # three or more kinds of trouble per topic of the training set
    for card in bank.cards:
        assert check_reply(card.text, KRISHNA, story=False) == [], card.id
        assert 35 <= len(card.text.split()) <= 85, card.id
        numbers, names = facts_of(card.text)
        openers = {s.split()[0].strip(",").casefold() for s in split_sentences(card.text)}  # "Moderation ..."
        allowed = {"partha", "cv", "god"} | openers  # no fact of the world: no name, year or number
        assert not numbers and names <= allowed, (card.id, numbers, names)
        assert card.teaching is not None and card.source == gita.card(card.teaching).source, card.id
        assert card.themes[0] in topics, card.id


def test_the_cards_were_written_from_the_training_questions_and_never_from_a_held_out_one():
    cards = load_bank(BANKS / "counsel").cards
    examples = [e.casefold() for c in cards for e in c.examples]
    assert len(examples) == len(set(examples))  # each trouble belongs to one card
    train = {q.casefold() for q in _questions(REPO / "data/krishna/train.jsonl")}
    assert train <= set(examples)
    held_out = {q.casefold() for path in ("data/krishna/heldout.jsonl", "data/scope/heldout.jsonl",
                                          "data/safety/heldout.jsonl") for q in _questions(REPO / path)}
    assert not held_out & set(examples)  # what `eval` and the graders measure on stays unseen


def test_the_counsel_that_fits_opens_the_reply_and_the_model_continues_from_it():
    turn = build_turn(KRISHNA, [], "I failed my driving test for the third time and my friends laugh at me.")
    card = turn.teachings[0]
    assert turn.opening == card.text and turn.sources[0] is card and not turn.complete and turn.cards
    assert turn.messages[-1] == {"role": "assistant", "content": card.text + "\n\n"}
    prompt = render_gemma_turns(turn.messages)
    assert prompt.endswith(f"<start_of_turn>model\n{card.text}\n\n") and prompt.count("<start_of_turn>model") == 1
    closed = render_gemma_turns(turn.messages, add_generation_prompt=False)  # training: every turn closed
    assert closed.endswith(f"{card.text}<end_of_turn>\n")
    # the user sees the counsel at once, then the story as it is written; the style rules read the whole
    assert turn.streamed("") == card.text and turn.streamed(" In 1990") == f"{card.text}\n\nIn 1990"
    story = "In 1990 she wrote."
    assert turn.finish(story) == turn.written(story) == f"{card.text}\n\n{story}"
    # fitting a long chat into the context never cuts the question or the opening
    history = [{"role": r, "content": f"turn {i} " * 50} for i in range(20) for r in ("user", "assistant")]
    messages = [turn.messages[0], *history, *turn.messages[-2:]]
    fitted = fit_history(messages, lambda ms: sum(len(str(m["content"])) for m in ms) // 4, 600)
    assert fitted[-2:] == turn.messages[-2:] and fitted[0] == turn.messages[0] and len(fitted) < len(messages)


def test_the_written_counsel_is_shown_before_the_model_has_read_the_prompt(scripted):
    engine = scripted(["In 1990", " she wrote."], delay=0.05)
    message = "I failed my driving test for the third time and my friends laugh at me."
    updates = list(Studio(P, loader=lambda spec, adapter: engine).chat("krishna", [], message))
    opening = build_turn(KRISHNA, [], message).opening
    assert updates[0].text == opening and not updates[0].done and updates[0].sources  # at once, with its source
    assert all(b.text.startswith(a.text) for a, b in zip(updates, updates[1:], strict=False))  # only appends
    assert updates[-1].text == f"{opening}\n\nIn 1990 she wrote."
    assert [v.rule for v in updates[-1].violations] == ["missing_story"]  # the rules read the whole: 4 words, no story


def test_with_no_story_to_tell_the_written_counsel_is_the_reply_and_no_model_runs():
    def loader(spec, adapter):
        raise AssertionError("no model may be loaded when the written counsel is the whole reply")

    message = "Tell me a story about Serena Williams. I lost the final of my club tournament."
    turn = build_turn(KRISHNA, [], message)
    assert turn.complete and turn.cards == [] and turn.opening
    updates = list(Studio(P, loader=loader).chat("krishna", [], message))
    final = updates[-1]
    assert final.done and final.violations == [] and final.stats.finish_reason == "end_of_turn"
    assert final.text == f"{turn.opening}\n\nI have no true story of Serena Williams in my notes to tell you, Partha."
    assert final.sources == turn.teachings


def test_a_written_counsel_section_is_checked_at_load(tmp_path):
    text = shipped_persona("krishna", adapters=False, counsel=False)
    bad = text + f'\n[counsel]\nbank = "{(BANKS / "counsel").as_posix()}"\n'
    (tmp_path / "krishna.toml").write_text(bad)
    with pytest.raises(PersonaError, match="instruction with \\$cards.*or written = true"):
        load_persona(tmp_path / "krishna.toml")
    # a counsel card whose teaching is not in the teachings bank names the file, the card and the teaching
    bank = tmp_path / "counsel"
    bank.mkdir()
    card = load_bank(BANKS / "counsel").cards[0]
    (bank / "one.toml").write_text(
        "[[cards]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in
                                card.model_copy(update={"teaching": "gita-99-1-nowhere"}).model_dump().items()
                                if v is not None))
    wrong = text + (f'\n[counsel]\nbank = "{bank.as_posix()}"\nwritten = true\n'
                    f'teachings = "{(BANKS / "gita").as_posix()}"\n')
    (tmp_path / "krishna.toml").write_text(wrong)
    with pytest.raises(PersonaError, match=f"card {card.id}: teaching: 'gita-99-1-nowhere' is not a card of"):
        load_persona(tmp_path / "krishna.toml")
    # the teachings bank is resolved against the persona file, and one that is not a bank names the key
    assert load_persona(REPO / "prompts" / "krishna.toml").counsel.teachings == str((BANKS / "gita").resolve())
    (tmp_path / "krishna.toml").write_text(text + f'\n[counsel]\nbank = "{(BANKS / "counsel").as_posix()}"\n'
                                           'written = true\nteachings = "no-such-folder"\n')
    with pytest.raises(PersonaError, match="^krishna.toml: counsel.teachings: .*no-such-folder"):
        load_persona(tmp_path / "krishna.toml")
    # teachings the model applies need the place their text goes
    (tmp_path / "krishna.toml").write_text(text + f'\n[counsel]\nbank = "{(BANKS / "gita").as_posix()}"\n'
                                           'instruction = "Apply these teachings."\n')
    needs_cards = r"counsel.instruction: Value error, must contain \$cards \(where the retrieved facts go\)$"
    with pytest.raises(PersonaError, match=needs_cards):
        load_persona(tmp_path / "krishna.toml")


def test_counsel_is_chosen_by_meaning_without_the_names_of_story_people():
    # a trouble that shares no word with its card's text still finds it through the troubles it was written for
    got = teachings_for(KRISHNA, "My son got rejected by every university he applied to and won't leave his room.")
    assert got and got[0].themes[0] in {"failure", "exams", "parents"}
    # a story person's name in the message does not move the counsel: the trouble chooses it
    plain = teachings_for(KRISHNA, "I am terrified of speaking at my sister's wedding.")
    named = teachings_for(KRISHNA, "Tell me about Abraham Lincoln. I am terrified of speaking at my sister's wedding.")
    assert plain == named


def test_a_story_asked_for_tells_no_trouble_and_a_follow_up_keeps_the_chats():
    from krishna_ai.core.grounding import trouble_in

    # asked only for a story: no counsel card (the adapter's own counsel, as before the cards), whoever it is about
    for message in ("Tell me a story about Serena Williams.", "Please tell me another story.",
                    "Tell me the life of Abdul Kalam", "Can you tell me a story about Thomas Edison?"):
        assert trouble_in(KRISHNA, message) == "" and teachings_for(KRISHNA, message) == [], message
    assert trouble_in(KRISHNA, "Tell me a story about Lincoln. I lost my job.") == "lost my job."
    # a follow-up is counselled on the trouble the chat is about, not on its own few words
    history = [{"role": "user", "content": "I failed my exam again. What should I do?"},
               {"role": "assistant", "content": "Partha, ..."}]
    first = build_turn(KRISHNA, [], history[0]["content"]).teachings
    assert first and first[0].themes[0] in {"exams", "failure"}
    follow_up = build_turn(KRISHNA, history, "And what about tomorrow?").teachings
    assert follow_up and follow_up[0].themes[0] in {"exams", "failure"}  # the chat's trouble (a card may weigh
    assert build_turn(KRISHNA, history, "Please tell me another story.").teachings == first  # "tomorrow" too)
    # five words that tell a trouble are not a follow-up: the chat's earlier questions do not move them
    from krishna_ai.core.grounding import FOLLOW_UP_WORDS
    five = "My dog died, grieving deeply."
    assert FOLLOW_UP_WORDS == 5
    assert build_turn(KRISHNA, history, five).teachings == build_turn(KRISHNA, [], five).teachings
    # a new trouble told in full stands alone
    dog = "Also our family dog died yesterday and I cannot stop crying."
    assert build_turn(KRISHNA, history, dog).teachings == build_turn(KRISHNA, [], dog).teachings != first


def test_retry_moves_on_to_the_next_counsel_card_that_fits_and_comes_back_to_the_best(tmp_path):
    from krishna_ai.core.prompting import RETRY_CHOICES
    from krishna_ai.history.store import HistoryStore
    from krishna_ai.studio.saving import retried_replies

    message = "Tell me a story about Serena Williams. I lost the final of my club tournament."
    ranked = teachings_for(KRISHNA, message, k=RETRY_CHOICES)
    assert len(ranked) == RETRY_CHOICES and len({c.id for c in ranked}) == RETRY_CHOICES
    rejected: list[str] = []
    for card in ranked:  # each Retry: the best card that opened none of the replies hidden so far
        turn = build_turn(KRISHNA, [], message, rejected=rejected)
        assert turn.teachings == [card] and turn.opening == card.text and turn.sources == [card]
        rejected.append(f"{card.text}\n\nI have no true story of Serena Williams in my notes to tell you, Partha.")
    assert build_turn(KRISHNA, [], message, rejected=rejected).teachings == ranked[:1]  # all seen: the best again
    assert build_turn(KRISHNA, [], message, rejected=["Partha, something else entirely."]).teachings == ranked[:1]
    # through the studio: the reply is the next card's (and no model runs, as no story is due)
    final = list(Studio(P).chat("krishna", [], message, rejected=rejected[:1]))[-1]
    assert final.done and final.text.startswith(ranked[1].text) and final.sources == [ranked[1]]

    # the app reads the replies Retry hid from the saved chat: those to the last question only
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}", data_dir=tmp_path / "data")
    chat = store.new_chat("u", "krishna")
    store.add_message("u", chat.id, "user", "An earlier question")
    store.add_message("u", chat.id, "assistant", "An earlier reply, retried")
    store.retry("u", chat.id)
    store.add_message("u", chat.id, "user", message)
    assert retried_replies(store.chat("u", chat.id)) == []  # a new question: nothing to move on from
    for reply in rejected[:2]:
        store.add_message("u", chat.id, "assistant", reply)
        store.retry("u", chat.id)
    assert retried_replies(store.chat("u", chat.id)) == rejected[:2]
    store.close()
