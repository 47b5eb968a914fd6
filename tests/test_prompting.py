import pytest

from krishna_ai.errors import GenerationError
from krishna_ai.knowledge import load_bank
from krishna_ai.personas import load_personas
from krishna_ai.prompting import build_messages, clean_history, fit_history, render_gemma_turns, system_text

K = load_personas()["krishna"]


def test_system_text_has_prompt_rules_and_the_card_to_retell():
    card = load_bank(K.knowledge.bank).card("curie-pierre-death")
    text = system_text(K, "Marie Curie", [card])
    assert text.startswith(K.system_prompt.strip())
    assert "Rules:\n- Address the seeker as Partha" in text
    assert "about Marie Curie" in text and card.text in text
    # No card fits: counsel only, and no story instruction that would invite an invented one.
    bare = system_text(K, "Marie Curie", [])
    assert "Tell no story" in bare and "retell" not in bare


def test_build_messages_drops_greeting_and_renders_gemma_turns():
    history = [{"role": "assistant", "content": K.greeting},
               {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Partha, peace."}]
    msgs = build_messages(K, history, "Why do I fear?", personality="Helen Keller")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    text = render_gemma_turns(msgs)
    assert text.startswith("<start_of_turn>user\nYou are Krishna")
    assert "\n\nHello<end_of_turn>\n<start_of_turn>model\nPartha, peace.<end_of_turn>\n" in text
    assert text.endswith("<start_of_turn>user\nWhy do I fear?<end_of_turn>\n<start_of_turn>model\n")
    assert text.count("You are Krishna") == 1


def test_clean_history_alternates():
    h = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
         {"role": "assistant", "content": ""}, {"role": "assistant", "content": "c"},
         {"role": "user", "content": "unanswered"}]
    assert clean_history(h) == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


def test_image_block():
    msgs = build_messages(K, [], "what is this", image="IMG")
    assert msgs[-1]["content"] == [{"type": "image", "image": "IMG"}, {"type": "text", "text": "what is this"}]


def count_words(msgs):
    return sum(len(str(m["content"]).split()) for m in msgs)


def test_fit_history_cuts_oldest_pairs_never_system():
    history = []
    for i in range(5):
        history += [{"role": "user", "content": f"question {i} " * 5},
                    {"role": "assistant", "content": f"answer {i} " * 5}]
    msgs = build_messages(K, history, "latest question")
    full = count_words(msgs)
    fitted = fit_history(msgs, count_words, full - 15)
    assert fitted[0] == msgs[0] and fitted[-1] == msgs[-1]
    assert len(fitted) == len(msgs) - 2  # one oldest pair dropped
    assert "question 1" in fitted[1]["content"]
    assert fit_history(msgs, count_words, full) == msgs
    only_new = fit_history(msgs, count_words, count_words([msgs[0], msgs[-1]]))
    assert only_new == [msgs[0], msgs[-1]]


def test_fit_history_message_too_long():
    msgs = build_messages(K, [], "word " * 500)
    with pytest.raises(GenerationError, match="the message is too long"):
        fit_history(msgs, count_words, 100)
