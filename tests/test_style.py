from krishna_ai.personas import load_personas
from krishna_ai.style import check_reply, split_sentences

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
    assert len(split_sentences("He said “go.” Then he left.")) == 2
