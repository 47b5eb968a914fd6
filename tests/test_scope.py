"""Scope: a message outside what a persona answers gets its fixed decline, before any model is loaded.

The gates are the shipped ones (prompts/scope/*.json) on the light model's real sentence vectors; the held-out
numbers the README quotes are asserted here, so a gate refitted worse fails the suite.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import InputError, PersonaError
from krishna_ai.core.gate import Gate, fit, load_gate
from krishna_ai.core.personas import load_persona, load_personas
from krishna_ai.core.safety import crisis_reply
from krishna_ai.core.scope import judge, labelled_for, names_outside
from krishna_ai.runtime.embed import LightEmbedder
from krishna_ai.studio.replies import reply_facts, verdict_line
from krishna_ai.studio.service import Studio
from krishna_ai.training.scope_fit import HELDOUT, measure
from tests.conftest import shipped_persona

P = load_personas()


@pytest.fixture(scope="module")
def embed():
    """The light model's vectors, each text embedded once per module (a held-out question is judged for
    every persona it is labelled for: 816 judgments of 267 questions). The vectors are deterministic, so
    the cache changes no verdict, only the time."""
    embedder = LightEmbedder()
    seen: dict[str, list[float]] = {}

    def vector(text: str) -> list[float]:
        if text not in seen:
            seen[text] = embedder(text)
        return seen[text]

    yield vector
    embedder.close()


class NoReply:
    """An engine that must not be asked for a reply."""

    def __init__(self, spec, adapter):
        self.name, self.info = spec, type("Info", (), {"multimodal": False})()

    def stream(self, *args, **kwargs):
        raise AssertionError("a declined message must not reach the model")


no_model = NoReply


def test_the_shipped_gates_meet_the_targets_on_held_out_questions(embed):
    """≥ 95% of outside questions caught (Maize: 90%, its outside set holds 30 maize problems that are none of
    its five conditions, the hardest kind) and ≤ 5% of inside ones refused, per persona, on questions none of
    the gates was fitted on (data/scope/heldout.jsonl)."""
    results = {m.persona: m for m in measure(list(P.values()), HELDOUT, embed)}
    assert set(results) == {"krishna", "aurora", "maize", "pet"}
    for m in results.values():
        assert m.outside >= 80 and m.inside >= 15, m.persona
        assert m.caught_share >= (0.90 if m.persona == "maize" else 0.95), (m.persona, m.missed)
        assert m.refused_share <= 0.05, (m.persona, m.wrongly_refused)
    # maize problems beyond the five (pests, deficiencies, weather, ear and stalk rots, growing questions):
    # "not one I can judge" for at least 40% of them (the gate before they were in the dev set caught 4 of 30)
    other = [r["question"] for r in map(json.loads, HELDOUT.read_text(encoding="utf-8").splitlines())
             if r.get("kind") == "maize problem not among the five"]
    assert len(other) == 30
    missed = set(results["maize"].missed)
    assert sum(q not in missed for q in other) >= 0.4 * len(other), [q for q in other if q in missed]


def test_krishna_takes_troubles_typed_as_people_type_them(embed):
    """Fresh troubles by writers who saw nothing of the project, lowercase and abbreviated (data/krishna/heldout6,
    data/safety/heldout8: none in the gate's fitting files): 34 of 100 were turned away before the gate was fitted
    on data/krishna/everyday.jsonl too (README "Troubles as people type them")."""
    from krishna_ai.training.safety_fit import labelled
    from tests.conftest import REPO

    troubles = [json.loads(line)["question"] for line in
                (REPO / "data/krishna/heldout6.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    troubles += [m for m, _ in labelled([REPO / "data/safety/heldout8.jsonl"])]
    assert len(troubles) == 100
    refused = [q for q in troubles if judge(P["krishna"], q, embed) is not None]
    assert len(refused) <= 3, refused  # measured: 0


@pytest.mark.parametrize(("persona", "question"), [
    ("aurora", "Who was the first Mughal emperor?"),  # once: "Mahatma Gandhi, the first Mughal emperor..."
    ("aurora", "Who won the 2011 Cricket World Cup?"),
    ("maize", "My tomato leaves have yellow spots with dark rings."),
    ("krishna", "Write a Python function that sorts a list of numbers."),
    ("pet", "Hello!"),
])
def test_an_outside_question_gets_the_decline_and_no_model_runs(embed, persona, question):
    studio = Studio(P, loader=no_model, embed=embed)
    final = list(studio.chat(persona, [], question))[-1]
    assert final.done and final.text == P[persona].scope.decline
    assert final.scope in ("gate", "word", "no card") and final.violations == [] and final.sources == []
    assert final.stats.finish_reason == "end_of_turn" and final.stats.tokens == 0
    assert "outside this persona's scope" in verdict_line(final) and "no model ran" in verdict_line(final)
    assert reply_facts(final)["scope"] == final.scope


@pytest.mark.parametrize(("persona", "question"), [
    ("krishna", "I failed my exam again. What should I do?"),
    ("krishna", "Tell me a story about Serena Williams."),
    ("aurora", "Who was Ahilyabai Holkar?"),
    ("maize", "How do I manage gray leaf spot?"),
    ("pet", "Write a poem about the sea"),
    ("pet", "Who was Shivaji Maharaj?"),  # any task for a model is a prompt to improve
])
def test_an_inside_question_reaches_the_model(embed, scripted, persona, question):
    studio = Studio(P, loader=lambda spec, adapter: scripted(["Partha, an answer."]), embed=embed)
    final = list(studio.chat(persona, [], question))[-1]
    assert final.scope is None
    if persona == "pet":  # PET's reply is written from the prompt kind's checklist, by no model
        assert final.text.startswith("- ") and "\n\nImproved prompt: " in final.text
    else:
        assert "Partha, an answer." in final.text  # (after Krishna's written counsel)


def test_declines_state_no_facts():
    """A decline names no person, place, year or number: nothing a reader could take for a fact."""
    from krishna_ai.core.facts import facts_of

    for persona in P.values():
        assert persona.scope is not None, persona.id
        numbers, names = facts_of(persona.scope.decline)
        # the only names are the persona's own address and subject
        assert not numbers and names <= {"partha", "maharashtra", "maratha"}, (persona.id, numbers, names)


def test_a_short_follow_up_and_an_image_are_never_turned_away(embed):
    aurora, maize = P["aurora"], P["maize"]
    history = [{"role": "user", "content": "Who was Tukaram?"}, {"role": "assistant", "content": "A saint."}]
    assert judge(aurora, "Who won Wimbledon in 2019?", embed) is not None
    assert judge(aurora, "Tell me more", embed, follow_up=True) is None
    assert judge(aurora, "Who won Wimbledon in 2019 then?", embed, follow_up=True) is not None  # not short
    assert judge(maize, "my tomato plant", embed, image=True) is None
    studio = Studio(P, loader=no_model, embed=embed)
    assert studio.outside_scope(aurora, history, "why?") is None


def test_outside_words_turn_away_another_crop_unless_maize_is_named():
    scope = P["maize"].scope
    assert names_outside(scope, "Brinjal leaves have holes in them")
    assert names_outside(scope, "My sugarcane has red stripes")
    assert names_outside(scope, "The TOMATOES are wilting")  # any case, plural
    assert not names_outside(scope, "My corn next to the tomatoes has rust")
    assert not names_outside(scope, "100 gram of urea on maize?")
    assert not names_outside(scope, "Long grey lesions on the lower leaves")


def test_bad_input_is_checked_before_the_scope(embed):
    studio = Studio(P, loader=no_model, embed=embed)
    with pytest.raises(Exception, match="temperature must be between 0 and 2"):
        list(studio.chat("krishna", [], "hello", temperature=5.0))
    with pytest.raises(InputError, match="limit is"):
        list(studio.chat("pet", [], "hi " * 20_000))


def test_a_model_a_client_may_not_name_is_refused_before_the_scope(embed):
    from krishna_ai.studio.access import ModelPolicy

    studio = Studio(P, loader=no_model, embed=embed, policy=ModelPolicy(["light"]))
    with pytest.raises(InputError, match="not offered"):
        list(studio.chat("pet", [], "hello", model="/etc"))


def test_a_declined_message_loads_no_model(embed, scripted):
    """The decline needs no model: a server whose first message is outside the scope loads nothing for it;
    the first message the persona answers loads the model."""
    loads = []

    def loader(spec, adapter):
        loads.append(spec)
        return scripted(["A poem."])

    studio = Studio(P, loader=loader, embed=embed)
    assert list(studio.chat("krishna", [], "Write a Python function that sorts a list."))[-1].scope is not None
    assert loads == [] and studio.loaded() == []
    assert list(studio.chat("krishna", [], "I failed my exam again. What should I do?"))[-1].scope is None
    assert loads == ["light"]



def test_a_model_that_names_nothing_is_refused_before_the_scope_without_a_load(embed):
    from krishna_ai.core.errors import ModelUnavailable

    studio = Studio(P, embed=embed)  # the app's own loader
    for spec, error in (("/nowhere/model", "not an existing folder"), ("/nowhere/x.gguf", "no GGUF file")):
        with pytest.raises(ModelUnavailable, match=error):
            list(studio.chat("krishna", [], "Write a Python function that sorts a list.", model=spec))
    assert studio.loaded() == []


def test_a_crisis_comes_before_the_scope(embed):
    studio = Studio(P, loader=no_model, embed=embed)
    final = list(studio.chat("pet", [], "I want to kill myself"))[-1]
    assert final.safety == "self_harm" and final.scope is None and final.text == crisis_reply("self_harm")


def test_scopes_off_answers_everything(scripted):
    studio = Studio(P, loader=lambda spec, adapter: scripted(["An answer."]), scopes=False)
    assert list(studio.chat("maize", [], "My tomato leaves have spots."))[-1].text == "An answer."


def test_fit_chooses_a_threshold_that_refuses_few_inside_questions():
    rng = np.random.default_rng(0)
    inside = rng.normal(0.0, 1.0, size=(200, 16)) + np.eye(16)[0] * 3
    outside = rng.normal(0.0, 1.0, size=(200, 16)) - np.eye(16)[0] * 3
    labelled = [(f"in {i}", 0) for i in range(200)] + [(f"out {i}", 1) for i in range(200)]
    gate = fit(labelled, [*inside, *outside], "test vectors")
    p_in = np.array([gate.p_outside(v) for v in inside])
    p_out = np.array([gate.p_outside(v) for v in outside])
    assert (p_in >= gate.threshold).mean() <= 0.05 and (p_out >= gate.threshold).mean() >= 0.9
    assert gate.report["inside"] == 200 and gate.report["outside"] == 200
    assert 0 < gate.report["cv_outside_caught"] <= 1


def test_a_gate_file_round_trips_and_bad_ones_are_named(tmp_path):
    gate = Gate((0.0, 1.0), (1.0, 2.0), (0.5, -0.5), 0.1, 0.4, "test")
    path = tmp_path / "g.json"
    path.write_text(gate.to_json())
    back = load_gate(path)
    assert back == gate and back.p_outside([1.0, 0.0]) == pytest.approx(gate.p_outside([1.0, 0.0]))
    with pytest.raises(ValueError, match="vectors of 2 numbers"):
        back.p_outside([1.0, 0.0, 0.0])
    cases = {
        "not json": ("{", "not a gate file"),
        "version": (json.dumps({**json.loads(gate.to_json()), "version": 9}), "version 9"),
        "lengths": (json.dumps({**json.loads(gate.to_json()), "coef": [1.0]}), "same, non-zero length"),
        "scale": (json.dumps({**json.loads(gate.to_json()), "scale": [1.0, 0.0]}), "scale must be > 0"),
        "threshold": (json.dumps({**json.loads(gate.to_json()), "threshold": 1.5}), "between 0 and 1"),
        "missing": (json.dumps({k: v for k, v in json.loads(gate.to_json()).items() if k != "mean"}), "missing"),
    }
    for name, (text, message) in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(text)
        with pytest.raises(PersonaError, match=message):
            load_gate(bad)


def test_a_persona_naming_a_missing_or_broken_gate_is_refused_at_load(tmp_path):
    text = shipped_persona("aurora", adapters=False)
    gate = str(P["aurora"].scope.gate)
    (tmp_path / "aurora.toml").write_text(text.replace(gate, "nowhere.json"))
    with pytest.raises(PersonaError, match=r"aurora.toml: scope.gate: nowhere.json does not exist .*scope fit"):
        load_persona(tmp_path / "aurora.toml")
    (tmp_path / "broken.json").write_text("[1, 2]")
    (tmp_path / "aurora.toml").write_text(text.replace(gate, "broken.json"))
    with pytest.raises(PersonaError, match=r"aurora.toml: scope.gate: broken.json: not a valid gate file"):
        load_persona(tmp_path / "aurora.toml")


def test_a_labelled_row_in_and_out_for_one_persona_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"question": "q1", "in": ["pet"], "out": ["krishna"]}\n'
                    '{"question": "q2", "in": ["pet"], "out": ["pet"]}\n')
    with pytest.raises(PersonaError, match="row 2: .*none in both"):
        labelled_for("pet", str(path))
    path.write_text('{"question": "q1", "in": ["pet"], "out": ["krishna"]}\n{"text": "no question"}\n')
    with pytest.raises(PersonaError, match=r"l.jsonl:2: expected an object with a \"question\""):
        labelled_for("pet", str(path))


def test_scope_fit_and_eval_from_the_command_line(tmp_path, capsys):
    """`scope fit FILE` writes the gate a persona file names (here a copy of Maize's, gate beside it, fitted on
    a small labelled set of its own so the test embeds tens of questions, not the shipped hundreds) and
    `scope eval` judges a labelled file with it."""
    text = shipped_persona("maize", adapters=False).replace(str(P["maize"].scope.gate), "maize-gate.json")
    text = re.sub(r"(?m)^(inside|outside|labelled) = .*\n", "", text)
    text = text.replace("[scope]\n", '[scope]\nlabelled = "fit.jsonl"\nmax_refused = 0.1\n', 1)
    (tmp_path / "maize.toml").write_text(text)
    rows = [json.loads(line) for line in (HELDOUT.parent / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    inside = [r for r in rows if "maize" in r.get("in", [])][:15]
    outside = [r for r in rows if "maize" in r.get("out", [])][:25]
    (tmp_path / "fit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in inside + outside))
    assert len(inside) == 15 and len(outside) == 25
    assert cli(["scope", "fit", str(tmp_path / "maize.toml"), "--quiet"]) == 0
    assert "maize:" in capsys.readouterr().out and (tmp_path / "maize-gate.json").is_file()
    report = json.loads((tmp_path / "maize-gate.json").read_text())["report"]
    assert report["inside"] == 15 and report["cv_inside_refused_max"] == 0.1  # the persona's share, not 2%
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "maize.toml").write_text(text.replace("max_refused = 0.1", "max_refused = 0.5"))
    with pytest.raises(PersonaError, match=r"maize\.toml: scope\.max_refused: .*less than or equal to 0\.2"):
        load_persona(tmp_path / "bad" / "maize.toml", check_gate=False)
    labelled = tmp_path / "l.jsonl"
    labelled.write_text('{"question": "Orange pustules crowd the upper leaf surface of my corn.", "in": ["maize"]}\n'
                        '{"question": "Who painted the Mona Lisa?", "out": ["maize"]}\n')
    assert cli(["scope", "--prompts", str(tmp_path), "eval", "--persona", "maize", "--questions", str(labelled)]) == 0
    out = capsys.readouterr().out
    assert "| maize | 1 | 1 (100.0%) | 1 | 0 (0.0%) |" in out


def test_eval_answers_outside_questions_with_the_decline_and_counts_them(embed, scripted, tmp_path):
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.training.evaluate import evaluate, format_table, load_questions

    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Orange pustules crowd the upper surface of my corn leaves after a hot week."},
        {"question": "Long grey lesions run along the lower corn leaves.", "scope": "in"},
        {"question": "My tomato leaves have yellow spots.", "scope": "out"},
        {"question": "Who painted the Mona Lisa?", "scope": "out"},
        # labelled outside though it is not: the gate answers it, and it counts as missed
        {"question": "Long cigar-shaped grey-green lesions spread up my corn from the lower leaves.", "scope": "out"},
    ]) + "\n")
    engine = scripted(["Diagnosis: Southern Rust\nConfidence: high - orange\nWhat to look for: x\nWhat to do: y"])
    maize = P["maize"]
    result = evaluate(engine, maize, load_questions(questions), SamplingParams.for_persona(maize), progress=False,
                      embed=embed)
    scope = result["scope"]
    assert {d["question"]: d["reason"] for d in result["declined"]} == {
        "My tomato leaves have yellow spots.": "word", "Who painted the Mona Lisa?": "gate"}
    assert all(d["reply"] == maize.scope.decline for d in result["declined"])
    assert scope["outside"] == 3 and scope["caught"] == pytest.approx(2 / 3) and scope["missed"] == [
        "Long cigar-shaped grey-green lesions spread up my corn from the lower leaves."]
    assert scope["inside"] == 2 and scope["refused"] == 0.0 and result["n"] == 3
    assert "| outside caught | inside refused |" in format_table([result]) and "| 67% | 0% |" in format_table([result])
    without = evaluate(engine, maize, load_questions(questions), SamplingParams.for_persona(maize), progress=False)
    assert without["scope"] is None and without["n"] == 5 and not without["declined"]


def test_a_bad_scope_label_in_a_questions_file_is_named(tmp_path):
    from krishna_ai.core.errors import DataError
    from krishna_ai.training.evaluate import load_questions

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "q", "scope": "outside"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1: \"scope\" must be \"in\", \"out\" or null"):
        load_questions(bad)


def test_without_llama_cpp_the_same_weights_judge_alike_on_transformers(embed, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now fails, as without the package
    fallback = LightEmbedder()
    questions = ["My dog died yesterday.", "Who won Wimbledon in 2019?", "Write a poem about the sea",
                 "How do I manage gray leaf spot?", "Who was Tukaram?", "Hello!"]
    for q in questions:
        a, b = np.asarray(embed(q)), np.asarray(fallback(q))
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.995, q
        for persona in P.values():
            assert (judge(persona, q, embed) is None) == (judge(persona, q, fallback) is None), (persona.id, q)
    assert type(fallback._llm).__name__ == "_TransformersEmbedder"


def test_a_folder_of_cards_is_read_as_its_examples_and_a_bad_one_is_named(tmp_path):
    """PET's gate learns from the tasks of every prompt kind: a folder named in `inside` (or `outside`) stands
    for its cards' `examples`, beside the JSONL files; a folder with a bad card fails the fit with its name."""
    from krishna_ai.core.scope import examples

    cards = tmp_path / "kinds"
    cards.mkdir()
    (cards / "k.toml").write_text('[[cards]]\nid = "limerick"\ntitle = "A limerick"\nthemes = ["poems"]\n'
                                  'text = "Five lines."\nsource = "This test"\n'
                                  'examples = ["write a limerick about a cat", "limerick for my dad"]\n')
    (tmp_path / "out.jsonl").write_text('{"question": "My corn leaves have orange pustules."}\n')
    text = shipped_persona("pet", adapters=False)
    text = re.sub(r"(?m)^(inside|outside|labelled) = .*\n", "", text)
    text = text.replace("[scope]\n", '[scope]\ninside = ["kinds"]\noutside = ["out.jsonl"]\n', 1)
    (tmp_path / "pet.toml").write_text(text)
    pet = load_persona(tmp_path / "pet.toml", check_gate=False)
    assert examples(pet) == [("write a limerick about a cat", 0), ("limerick for my dad", 0),
                             ("My corn leaves have orange pustules.", 1)]
    (cards / "k.toml").write_text('[[cards]]\nid = "Bad Id"\n')
    with pytest.raises(PersonaError, match=r"k\.toml"):
        examples(pet)
