"""Confidence that follows the evidence (core/evidence.py): Maize says "high" only when no other condition's
card comes close, and the reply the user gets says so."""

from __future__ import annotations

import pytest

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.evidence import Evidence, allowed, cap, stated, weigh
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import build_turn
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.training.evaluate import evaluate
from tests.conftest import ScriptedEngine

MAIZE = load_personas()["maize"]
BOUNDS = {"high": 0.75, "medium": 0.9}
SURE = "Diagnosis: Gray Leaf Spot\nConfidence: high - straight-edged lesions\nWhat to look for: x.\nWhat to do: y."


def test_the_runner_up_labels_best_card_against_the_best():
    ev = weigh([("Common Rust", 8.0), ("Common Rust", 7.0), (None, 6.5), ("Southern Rust", 6.0), ("Healthy", 7.5)])
    assert ev == Evidence("Common Rust", "Southern Rust", 0.75)  # the first other label in rank order
    assert weigh([("Healthy", 3.0), ("Healthy", 2.0)]) == Evidence("Healthy", None, 0.0)
    assert weigh([]) is None and weigh([(None, 5.0)]) is None and weigh([("Healthy", 0.0)]) is None
    assert [allowed(Evidence("a", "b", r), BOUNDS) for r in (0.0, 0.75, 0.76, 0.9, 0.91)] == \
        ["high", "high", "medium", "medium", "low"]


def test_a_stated_confidence_above_the_evidence_is_lowered_and_the_rival_named():
    assert stated(SURE) == "high" and stated("**Confidence:** Medium, maybe") == "medium" and stated("no") is None
    lowered = cap(SURE, "low", "Northern Leaf Blight")
    assert lowered.splitlines()[1] == ("Confidence: low - straight-edged lesions "
                                       "(the description also fits Northern Leaf Blight)")
    assert lowered.splitlines()[0] == SURE.splitlines()[0] and lowered.splitlines()[2:] == SURE.splitlines()[2:]
    assert cap(SURE, "high", "Healthy") == SURE  # allowed: unchanged
    modest = SURE.replace("high", "low")
    assert cap(modest, "medium", "Healthy") == modest  # a lower confidence is never raised
    assert cap("**Confidence:** High\nWhat to do: y.", "medium", None) == "**Confidence:** medium\nWhat to do: y."


def test_maize_is_capped_on_an_ambiguous_description_and_not_on_a_clear_one_or_an_image():
    unsure = "Pale brown to grey lesions that are rectangular, not oval, 1 to 6 cm long on the lower leaves."
    turn = build_turn(MAIZE, [], unsure)
    assert turn.confidence is not None and turn.confidence[0] in ("medium", "low") and turn.confidence[1]
    assert "Confidence: high" not in turn.finish(SURE) and f"also fits {turn.confidence[1]}" in turn.finish(SURE)
    clear = "Long grey lesions with tapered ends, from 3 up to 15 cm, that get darker in the middle."
    assert build_turn(MAIZE, [], clear).confidence[0] == "high"
    assert build_turn(MAIZE, [], clear).finish(SURE) == SURE
    from PIL import Image

    assert build_turn(MAIZE, [], unsure, image=Image.new("RGB", (8, 8))).confidence is None  # the photo decides
    assert build_turn(load_personas()["krishna"], [], unsure).confidence is None


def test_eval_records_what_a_reply_stated_against_what_the_evidence_allowed():
    unsure = "Pale brown to grey lesions that are rectangular, not oval, 1 to 6 cm long on the lower leaves."
    res = evaluate(ScriptedEngine([SURE]), MAIZE, [{"question": unsure, "label": "Gray Leaf Spot"}],
                   SamplingParams(temperature=0.0), progress=False)
    row = res["replies"][0]
    assert row["confidence"]["stated"] == "high" and row["confidence"]["allowed"] in ("medium", "low")
    assert "Confidence: high" not in row["reply"]


@pytest.mark.parametrize("bounds, one_label, problem", [
    ("high = 0.9\nmedium = 0.75", "true", "high <= medium"),
    ("high = 0.75", "true", "both bounds"),
    ("high = 0.75\nmedium = 0.9", "false", "needs one_label"),
    ("high = 1.5\nmedium = 2.0", "true", "less than or equal to 1"),
])
def test_bad_confidence_bounds_name_what_is_wrong(bounds, one_label, problem):
    from krishna_ai.core.drafts import check_persona_text, persona_text

    text = persona_text(MAIZE)
    assert "one_label = true\n\n[knowledge.confidence]\nhigh = 0.75\nmedium = 0.9\n" in text
    text = text.replace("one_label = true\n\n[knowledge.confidence]\nhigh = 0.75\nmedium = 0.9\n",
                        f"one_label = {one_label}\n\n[knowledge.confidence]\n{bounds}\n")
    with pytest.raises(PersonaError, match=problem):
        check_persona_text(text)


def test_the_app_shows_and_saves_the_lowered_confidence(scripted):
    from krishna_ai.studio.service import Studio

    studio = Studio(load_personas(), loader=lambda spec, adapter: scripted([SURE]), scopes=False)
    unsure = "Pale brown to grey lesions that are rectangular, not oval, 1 to 6 cm long on the lower leaves."
    last = list(studio.chat("maize", [], unsure))[-1]
    assert last.done and "Confidence: high" not in last.text and "(the description also fits " in last.text


def test_a_capped_reply_streams_by_whole_lines_and_only_ever_appends(scripted):
    from krishna_ai.studio.service import Studio

    chunks = ["Diagnosis: Gray", " Leaf Spot\nConfidence:", " high - straight", "-edged lesions\nWhat to look for:",
              " x.\nWhat to do: y."]
    studio = Studio(load_personas(), loader=lambda spec, adapter: scripted(chunks), scopes=False)
    unsure = "Pale brown to grey lesions that are rectangular, not oval, 1 to 6 cm long on the lower leaves."
    texts = [u.text for u in studio.chat("maize", [], unsure)]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    assert "high" not in "".join(texts) and texts[-1].count("also fits") == 1
    clear = [u.text for u in studio.chat("maize", [], "Long grey lesions with tapered ends, from 3 up to 15 cm.")]
    assert clear[0] == "Diagnosis: Gray" and clear[-1] == "".join(chunks)  # nothing to cap: streamed as written


def test_small_scores_are_evidence_too():
    assert weigh([("Healthy", 0.5)]) == Evidence("Healthy", None, 0.0)
    assert weigh([("Healthy", 2.0), ("Common Rust", 0.5)]).ratio == pytest.approx(0.25)
