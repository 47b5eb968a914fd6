import pytest

from krishna_ai.core.personas import load_personas
from krishna_ai.core.style import check_reply, split_sentences

P = load_personas()
KRISHNA = P["krishna"]

GOOD = (
    "Partha, the fruit of an exam is not yours to hold, only the effort is. Rise, study with a steady "
    "heart, and let the result come as it will.\n\n"
    "Thomas Edison tried thousands of materials before he found a filament that would glow for hours. "
    "When asked about his failures, he said he had only found ways that did not work. He kept working "
    "without despair, and his lamp lit the world."
)


def rules(text, persona=KRISHNA):
    return [v.rule for v in check_reply(text, persona)]


def test_good_reply_passes():
    assert rules(GOOD) == []


def test_missing_address_and_forbidden_word():
    bad = GOOD.replace("Partha", "Arjuna")
    assert rules(bad) == ["missing_address", "forbidden_word"]
    assert "forbidden_word" in rules(GOOD + " Dear arjuna, remember.")


def test_sentence_count_out_of_range():
    one = GOOD.replace(" Rise, study with a steady heart, and let the result come as it will.", "")
    assert "sentence_count" in rules(one)
    five = GOOD.replace("as it will.", "as it will. Be calm. Be brave. Be free.")
    msgs = [str(v) for v in check_reply(five, KRISHNA)]
    assert any("has 5 sentence(s); expected 2–4" in m for m in msgs)


def test_missing_story():
    advice_only = GOOD.split("\n\n")[0]
    assert rules(advice_only) == ["missing_story"]
    assert rules(advice_only + "\n\nEdison tried.") == ["missing_story"]


def test_verse_quote_markers():
    assert "verse_quote" in rules(GOOD.replace("Rise,", "As Chapter 2, Verse 47 says, rise,"))
    assert "verse_quote" in rules(GOOD.replace("Rise,", "Remember BG 2.47, and rise,"))
    quoted = GOOD.replace("Rise,", '"You have a right to your actions but never to their fruits." Rise,')
    assert "verse_quote" in rules(quoted)


@pytest.mark.parametrize("quote", [
    "You have a right to perform your prescribed duty, but you are not entitled to the fruits of action.",
    "As it is said, the soul can never be cut to pieces by any weapon, nor burned by fire.",
    "Whenever there is a decline of righteousness and a rise of unrighteousness, I come.",
    "now I AM become death — the destroyer of worlds!",
])
def test_a_verse_repeated_without_quotation_marks_is_a_quote(quote):
    got = [str(v) for v in check_reply(GOOD.replace("Rise,", f"{quote} Rise,"), KRISHNA) if v.rule == "verse_quote"]
    assert got and "repeats a well-known translation word for word" in got[0]


@pytest.mark.parametrize("paraphrase", [
    "The work is yours to do; what it brings is not yours to hold.",
    "No weapon can touch what you truly are, Partha.",
    "You have a right to rest, and you are entitled to kindness from yourself.",  # shares a few words only
])
def test_a_paraphrase_is_not_a_quote(paraphrase):
    assert "verse_quote" not in rules(GOOD.replace("Rise,", f"{paraphrase} Rise,"))


def test_empty_and_too_long():
    assert rules("   ") == ["empty_reply"]
    assert "too_long" in rules(GOOD + (" More words here." * 60))


def test_required_patterns_maize():
    good = ("Diagnosis: Common Rust\nConfidence: high - powdery cinnamon pustules on both surfaces\n"
            "What to look for: pustules that rub off brown.\nWhat to do: plant resistant hybrids.")
    assert rules(good, P["maize"]) == []
    assert rules("It is probably rust. Spray something.", P["maize"]) == [
        "missing_diagnosis", "missing_confidence", "missing_advice"]
    assert rules(good.replace("Common Rust", "Leaf Curl"), P["maize"]) == ["missing_diagnosis"]


def test_pet_and_aurora():
    assert rules("Be specific.\nImproved prompt: Write a 12-line poem about the sea at dawn.", P["pet"]) == []
    assert rules("Be specific.", P["pet"]) == ["missing_improved_prompt"]
    assert rules("Shivaji was crowned at Raigad in 1674.", P["aurora"]) == ["sentence_count"]


def test_split_sentences():
    assert split_sentences("One. Two! Three? Four…") == ["One.", "Two!", "Three?", "Four…"]
    assert split_sentences("He said “go.” Then he left.") == ["He said “go.”", "Then he left."]
    assert split_sentences('It ended ("at last.") Then') == ['It ended ("at last.")', "Then"]


# -- exact verdicts: the rule *and* the message a user reads, for each path through check_reply --------

from krishna_ai.core.personas import RequiredPattern, Style  # noqa: E402
from krishna_ai.core.style import RULES, Violation, badge, leak, loop, paragraphs, pass_label  # noqa: E402

STORY_STYLE = Style(address="Partha", forbidden_words=["Arjuna", "verily"], sentences=(2, 3), story=True,
                    story_min_words=8, no_verse_quotes=True, max_words=80)
ANSWER = "Partha, be steady. Act well."
STORY = "Thomas Edison failed many times with his lamp and kept going until it glowed."


def verdict(text, style=STORY_STYLE, **kw):
    return [(v.rule, v.message) for v in check_reply(text, style, **kw)]


def test_exact_verdict_of_a_good_reply_and_its_badge():
    assert verdict(f"{ANSWER}\n\n{STORY}") == []
    assert badge([]) == "✅ style: all rules met"


def test_exact_messages_for_each_rule():
    assert verdict("  \n ") == [("empty_reply", "the reply is empty")]
    assert verdict(f"{ANSWER}\n\n{STORY}", finish_reason="max_tokens") == [
        ("not_ended", "cut at max_new_tokens: the model never closed its turn")]
    assert verdict(f"{ANSWER}\n\n{STORY}", finish_reason="run_on") == [
        ("not_ended", "ran into a new turn: the model never closed its own")]
    assert verdict(f"{ANSWER}\n\n{STORY}", finish_reason="end_of_turn") == []
    assert verdict(f"{ANSWER}\n\n{STORY}", finish_reason="stopped") == []
    assert verdict(f"Be steady. Act well.\n\n{STORY}") == [
        ("missing_address", "never addresses the user as 'Partha'")]
    assert verdict(f"Partha, be steady. Arjuna, act well, verily, arjuna.\n\n{STORY}") == [
        ("forbidden_word", "uses 'Arjuna' (2×)"), ("forbidden_word", "uses 'verily' (1×)")]
    assert verdict(f"Partha, be steady.\n\n{STORY}") == [
        ("sentence_count", "the answer paragraph has 1 sentence(s); expected 2–3")]
    assert verdict(f"{ANSWER} Breathe. Rest.\n\n{STORY}") == [
        ("sentence_count", "the answer paragraph has 4 sentence(s); expected 2–3")]
    assert verdict(ANSWER) == [("missing_story", "no story paragraph after the answer")]
    assert verdict(f"{ANSWER}\n\nEdison kept going.") == [
        ("missing_story", "the story has 3 words; expected at least 8")]
    assert verdict(f"{ANSWER}\n\nEdison failed many times and kept going on.") == []  # exactly 8 words
    assert verdict(f"Partha, see Chapter 2, Verse 47. Act well.\n\n{STORY}") == [
        ("verse_quote", "cites a verse ('Chapter 2, Verse 47') instead of paraphrasing")]
    quoted = f'Partha, "you have a right to your actions alone". Act well.\n\n{STORY}'
    assert verdict(quoted) == [
        ("verse_quote", "quotes a passage verbatim ('you have a right to your actions alone'...)")]
    assert verdict(f'Partha, "act well and be calm". Rest.\n\n{STORY}') == []  # five words: a phrase, not a passage

    def filler(n):
        return " ".join(f"word{i}" for i in range(n)) + "."

    assert verdict(f"{ANSWER}\n\n{STORY} {filler(61)}") == []  # 5 + 14 + 61 = 80 words: at the limit
    assert verdict(f"{ANSWER}\n\n{STORY} {filler(70)}") == [("too_long", "89 words; at most 80")]


def test_story_override_and_sentence_scope():
    # story=False (no card fitted): the whole reply is the answer and no story is due
    assert verdict(ANSWER, story=False) == []
    assert verdict(f"{ANSWER}\n\n{STORY}", story=False) == []  # 3 sentences in all: in range
    assert verdict(f"{ANSWER} Rest.\n\nBreathe. Sleep.", story=False) == [
        ("sentence_count", "the reply has 5 sentence(s); expected 2–3")]
    assert verdict(ANSWER, story=True) == [("missing_story", "no story paragraph after the answer")]
    plain = Style(sentences=(1, 1))
    assert verdict("One. Two.", plain) == [("sentence_count", "the reply has 2 sentence(s); expected 1–1")]


def test_required_lines_with_and_without_hint():
    style = Style(require=[RequiredPattern(name="improved_prompt", pattern=r"^Improved prompt:", hint="a line"),
                           RequiredPattern(name="tip", pattern=r"^Tip:")])
    assert verdict("Improved prompt: x\nTip: y", style) == []
    assert verdict("Tip: y", style) == [
        ("missing_improved_prompt", "does not contain the required improved_prompt (a line)")]
    assert verdict("Improved prompt: x", style) == [("missing_tip", "does not contain the required tip")]
    assert verdict("x Improved prompt: y\nTip: z", style)[0][0] == "missing_improved_prompt"  # must open a line
    assert verdict("Improved prompt: a\nImproved prompt: b\nTip: c", style) == [
        ("leaked", "contains a second reply (the improved_prompt line appears twice)")]


def test_badge_lists_every_violation():
    vs = [Violation("missing_address", "never addresses the user as 'Partha'"), Violation("too_long", "9 words")]
    assert badge(vs) == "⚠️ style: missing_address: never addresses the user as 'Partha'; too_long: 9 words"
    assert str(vs[1]) == "too_long: 9 words"


def test_pass_labels():
    assert pass_label("not_ended") == "ended" and pass_label("looped") == "no loop"
    assert pass_label("missing_improved_prompt") == "has improved prompt"
    assert pass_label("missing_diagnosis") == "has diagnosis"
    assert all(pass_label(r.name) for r in RULES)


@pytest.mark.parametrize("text, found", [
    ("Partha, act.<end_of_turn>", "a turn marker or role line ('<end_of_turn>')"),
    ("Partha, act.\n< start_of_turn >model", "a turn marker or role line ('< start_of_turn >')"),
    ("Partha, act.\nmodel\nPartha, again.", "a turn marker or role line ('model')"),
    ("Partha, act.\nUser: and what of fear?", "a turn marker or role line ('User:')"),
    ("Partha, act.\nMODEL: Partha, again.", "a turn marker or role line ('MODEL:')"),
    ("Partha, act.\n**Assistant**:", "a turn marker or role line ('**Assistant**:')"),
    ("Partha, act well. WithFieldContext", "a stray vocabulary piece ('WithFieldContext')"),
    ("Partha, act well stepToken now.", "a stray vocabulary piece ('stepToken')"),
    ("Partha, be calm and act now.\n\nEdison tried.\n\nPartha, be calm and act now, again.",
     "a second reply (a later paragraph starts like the first)"),
    (f"{ANSWER}\n\n{STORY}\n\nPartha, one more thing.",
     "a second reply (a paragraph after the story opens with 'Partha')"),
])
def test_leak_says_what_leaked(text, found):
    assert leak(text, STORY_STYLE) == found
    assert ("leaked", f"contains {found}") in verdict(text)


@pytest.mark.parametrize("text", [
    "Partha, use the iPhone and McDonald's and eBay.",  # brand names are not stray pieces
    "Email me at someName@example.com or see #hashTag and /pathName.",
    "Partha, act.\n\nEdison tried.",  # short openings never count as a second reply
    "Partha, be calm and act now.\n\nPartha, be calm: a story.",  # story paragraph needs more than two parts
])
def test_no_false_leak(text):
    assert leak(text, STORY_STYLE) is None


def test_a_word_the_user_wrote_is_not_a_stray_piece_but_one_they_did_not_is():
    improved = "Improved prompt: Why does useEffect run twice. Here is the code: [paste it]."
    assert leak(improved, asked="why does useEffect run twice") is None
    assert leak(improved, asked="why does my effect run twice") == "a stray vocabulary piece ('useEffect')"
    assert leak(improved + " WithFieldContext", asked="why does useEffect run twice") == (
        "a stray vocabulary piece ('WithFieldContext')")  # the next piece the user did not write
    plain = STORY_STYLE.model_copy(update={"story": False})
    assert "leaked" not in {v.rule for v in check_reply(improved, plain, asked="why does useEffect run twice")}
    assert "leaked" in {v.rule for v in check_reply(improved, plain)}  # the message unknown: flagged, as before


def test_loop_sentence_and_ngram():
    assert loop("He was a great warrior. He was a great warrior.") == "repeats the sentence 'He was a great warrior.'"
    assert loop("Be calm. Be calm. Be calm.") is None  # under five words: a refrain, not a loop
    run = "the ghats and temples she built along the river there"
    assert loop(f"She built {run} in the town, and {run} still stand.") == (
        f"repeats the run {run[:60]!r}")
    nine = "one two three four five six seven eight nine"
    assert loop(f"{nine} and then {nine}") is None  # nine words repeated: below the ten-word run
    assert verdict("Partha, be calm. He was a great warrior of old. He was a great warrior of old.\n\n" + STORY)[0] == (
        "looped", "repeats the sentence 'He was a great warrior of old.'")


def test_loop_restated_sentence():
    # aurora's adapter under DRY: the 10-word run was dodged by one word, the sentence still said twice
    reply = ("The capital of Ahilyabai Holkar was the ghats and temples she built along the river there. She "
             "developed Maheshwar into a centre of religion. The ghats and temples she built on the river there "
             "still stand.")
    assert loop(reply) == (
        "restates an earlier sentence ('The ghats and temples she built on the river there still sta')")
    # 10 distinct words: 7 of them in the earlier sentence is a restatement, 6 is not
    first = "alpha beta gamma delta epsilon zeta eta theta iota kappa."
    assert loop(f"{first} Alpha beta gamma delta epsilon zeta eta one two three.") is not None
    assert loop(f"{first} Alpha beta gamma delta epsilon zeta one two three four.") is None
    # under 8 distinct words never counts: a new fact about the same subject shares most of its few words
    assert loop("Shivaji was a Hindu king who ruled the Deccan in the 17th century. "
                "Shivaji was born in 1630 in the Deccan.") is None
    assert loop(f"{first} Alpha beta gamma delta epsilon zeta eta.") is None


@pytest.mark.parametrize("persona", ["krishna", "aurora", "maize", "pet"])
def test_no_dataset_answer_loops(persona):
    """The rule's false-positive check: no hand-written answer the adapters learn from counts as a loop."""
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "data" / persona / "train.jsonl"
    answers = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]
    assert len(answers) >= 100
    assert [a[:80] for a in answers if loop(a)] == []


def test_paragraphs_and_sentences():
    assert paragraphs("  a\n\n \n b \n\n") == ["a", "b"]
    assert paragraphs("a\nb") == ["a\nb"]
    assert split_sentences("Hi there.\nNew line! (Really?) Yes") == ["Hi there.", "New line!", "(Really?)", "Yes"]


def test_leak_and_loop_boundaries():
    # a later paragraph that opens with the same 4+ words is a second reply; 3 words are only an echo
    assert leak("Partha, be calm now.\n\nPartha, be calm now.") == (
        "a second reply (a later paragraph starts like the first)")
    assert leak("Be calm now.\n\nBe calm now.") is None
    # a 10-word run repeated at the very end of one sentence
    run = "a b c d e f g h i j"
    assert loop(f"{run} x {run}") == "repeats the run 'a b c d e f g h i j'"
    assert loop(f"{run} x a b c d e f g h i") is None  # nine words: not a run
    words = "extraordinary remarkable wonderful marvellous astonishing incredible splendid superb fine grand".split()
    gram = " ".join(words)
    assert len(gram) > 61  # so the message's cut at 60 characters shows
    assert loop(f"{' '.join(words)} and {' '.join(words)}") == f"repeats the run {gram[:60]!r}"
    sentence = "Extraordinary remarkable wonderful marvellous astonishing incredible splendid superb."
    assert loop(f"{sentence} {sentence}") == f"repeats the sentence {sentence[:60]!r}"


def test_verse_quote_boundaries():
    story = GOOD.split("\n\n")[1]
    assert "verse_quote" in rules(f'Partha, "one two three four five six". Rest.\n\n{story}')  # six words
    assert "verse_quote" not in rules(f'Partha, "one two three four five". Rest.\n\n{story}')
    passage = "do your work and leave the fruits of it to the world"
    found = [str(v) for v in check_reply(f'Partha, "{passage}". Rest.\n\n{story}', KRISHNA) if v.rule == "verse_quote"]
    assert found == [f"verse_quote: quotes a passage verbatim ({passage[:40]!r}...)"]


def test_a_reply_that_echoes_its_own_instructions_has_leaked():
    """Seen from Krishna's adapter asked without its cards: the instruction copied into the reply. Eight
    words in a row from the persona's system prompt, rules, story or knowledge instruction are a leak;
    seven are not; a card retold word for word is what a grounded reply does, not a leak."""
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.style import instruction_echo

    echoed = GOOD + ("\n\nThen, after a blank line, tell a short real-world story of 3 to 5 sentences about "
                     "Abraham Lincoln that reflects your advice.")
    found = [v for v in check_reply(echoed, KRISHNA) if v.rule == "leaked"]
    assert [str(v) for v in found] == [
        "leaked: contains its own instructions ('then after a blank line tell a short')"]
    rule = KRISHNA.constraints[1]  # "Answer in one paragraph of 2 to 4 poetic, direct sentences in the spirit..."
    eight, seven = " ".join(rule.split()[:8]), " ".join(rule.split()[:7])
    assert instruction_echo(f"Partha, {eight} indeed.", KRISHNA) is not None
    assert instruction_echo(f"Partha, {seven} indeed.", KRISHNA) is None
    assert instruction_echo(GOOD, KRISHNA) is None
    card = load_bank(KRISHNA.knowledge.bank).cards[0]
    assert instruction_echo(f"Partha, be steady.\n\n{card.text}", KRISHNA) is None
    # every persona's own system prompt is caught, and only a Persona (not a bare Style) is checked for it
    for persona in P.values():
        copied = "Here: " + persona.system_prompt
        assert "leaked" in rules(copied, persona), persona.id
        assert "leaked" not in [v.rule for v in check_reply(copied, persona.style)]
