"""Evaluation: label parsing, per-rule rates, the JSON it writes, and the CLI on the real light model."""

from __future__ import annotations

import json
import re

import pytest

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import DataError
from krishna_ai.core.grounding import ground
from krishna_ai.core.personas import load_personas
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.training.evaluate import (
    answer_recall,
    consistency,
    evaluate,
    format_table,
    load_questions,
    parse_label,
    rules_for,
    split_spec,
)
from tests.conftest import krishna_with_counsel, shipped_persona

P = load_personas()
LABELS = P["maize"].labels


def test_parse_label():
    assert parse_label("Diagnosis: Southern Rust\nConfidence: low - could be Common Rust", LABELS) == "Southern Rust"
    assert parse_label("It looks like gray leaf spot, not northern leaf blight.", LABELS) == "Gray Leaf Spot"
    assert parse_label("No idea.", LABELS) is None


def test_parse_label_reads_negations_and_hedges_as_no_answer():
    assert parse_label("Diagnosis: not Common Rust\nConfidence: low", LABELS) is None
    assert parse_label("Diagnosis: Common Rust or Southern Rust", LABELS) is None  # a hedge is not an answer
    assert parse_label("Diagnosis: Healthy. The spots suggest southern rust.", LABELS) is None
    assert parse_label("Diagnosis: Southern Rust (rather than Common Rust)", LABELS) == "Southern Rust"
    assert parse_label("It is not healthy; it is common rust.", LABELS) == "Common Rust"
    assert parse_label("Answer: yes, the leaf is diseased.\nIt looks like Common Rust.", LABELS) == "Common Rust"


def test_rules_for_personas():
    assert rules_for(P["krishna"]) == ["empty_reply", "not_ended", "leaked", "looped", "missing_address",
                                       "forbidden_word", "sentence_count", "missing_story", "verse_quote",
                                       "too_long"]
    assert "missing_diagnosis" in rules_for(P["maize"])


def test_evaluate_scores_compliance_rules_and_accuracy(scripted):
    good = ("Diagnosis: Common Rust\nConfidence: high - pustules\nWhat to look for: pustules.\n"
            "What to do: resistant hybrids.")
    engine = scripted([good])
    questions = [{"question": "brown pustules", "label": "Common Rust"},
                 {"question": "long grey lesions", "label": "Northern Leaf Blight"}]
    res = evaluate(engine, P["maize"], questions, SamplingParams(temperature=0.0), progress=False)
    assert res["n"] == 2 and res["compliance"] == 1.0 and res["accuracy"] == 0.5
    assert res["rules"]["missing_diagnosis"] == 1.0
    assert [r["correct"] for r in res["replies"]] == [True, False]
    table = format_table([res])
    assert table.splitlines()[0].startswith("| model | n | all rules met | ended | leaked | looped | faithful |")
    assert "| scripted | 2 | 100% | 100% | 0% | 0% | " in table and "| 50% |" in table
    assert "has diagnosis" in table.splitlines()[0] and "missing_diagnosis" not in table


def test_answer_recall_counts_the_reference_facts_beyond_the_question():
    question = "Which treaty ended the First Anglo-Maratha War?"
    answer = "The Treaty of Salbai, signed in 1782 with Mahadji Shinde, ended it."
    # wanted: salbai, 1782, mahadji, shinde (treaty/first/anglo/maratha/war come from the question)
    half = answer_recall(question, answer, "It ended with the Treaty of Salbai in 1782.")
    assert half == (0.5, ["mahadji", "shinde"])
    assert answer_recall(question, answer, "The Treaty of Salbai (1782), negotiated by Mahadji Shinde.")[0] == 1.0
    assert answer_recall(question, answer, "It was the Treaty of Purandar in 1776.") == (
        0.0, ["1782", "mahadji", "salbai", "shinde"])
    assert answer_recall("Who built Raigad?", "Shivaji built Raigad.", "Nobody.") == (0.0, ["shivaji"])
    # an answer with no fact of its own is not scored (None), rather than scored 100%
    assert answer_recall("Did Shivaji build Raigad?", "Yes, Shivaji did.", "Yes.") == (None, [])


def test_evaluate_reports_answer_facts(scripted):
    engine = scripted(["The Treaty of Salbai ended it in 1782."])
    questions = [{"question": "Which treaty ended the First Anglo-Maratha War?",
                  "answer": "The Treaty of Salbai, signed in 1782 with Mahadji Shinde, ended it."},
                 {"question": "Which treaty ended the First Anglo-Maratha War?", "answer": "Salbai, 1782."}]
    res = evaluate(engine, P["aurora"], questions, SamplingParams(temperature=0.0), progress=False)
    assert [r["answer_facts"] for r in res["replies"]] == [0.5, 1.0]
    assert res["answer_facts"] == 0.75
    head, _, row = format_table([res]).splitlines()
    assert "| accuracy | consistent | answer facts |" in head and "| – | – | 75% |" in row


def test_without_the_bank_the_prompt_has_no_cards_and_replies_are_checked_against_them(scripted):
    """`bank=False`: the persona as it was before its bank (story instruction, no cards in the prompt), the
    reply still scored against the cards retrieval picks, so an invented story counts as unfaithful."""
    invented = ("Partha, fear is a passing cloud. Act, and let the fruit go.\n\n"
                "In 1921 Marie Curie won the Nobel Prize in Tokyo for inventing the telephone.")
    question = {"question": "I am afraid of failing, like Marie Curie might have been."}
    with_bank, without = scripted([invented]), scripted([invented])
    on = evaluate(with_bank, P["krishna"], [question], SamplingParams(temperature=0.0), progress=False)
    off = evaluate(without, P["krishna"], [question], SamplingParams(temperature=0.0), progress=False, bank=False)
    prompt_on, prompt_off = with_bank.calls[0][0][0]["content"], without.calls[0][0][0]["content"]
    cards = on["replies"][0]["sources"]
    assert cards and off["replies"][0]["checked_against"] == cards and "sources" not in off["replies"][0]
    card = ground(P["krishna"], question["question"]).cards[0]
    assert card.id == cards[0] and card.person == "Marie Curie"
    assert card.text in prompt_on and card.text not in prompt_off and "story" in prompt_off
    assert "about Marie Curie" in prompt_off  # the persona's own story instruction, as before its bank
    assert not off["replies"][0]["faithful"] and off["faithful"] == 0.0
    assert {"1921", "tokyo"} <= set(off["replies"][0]["unsupported"])
    # a persona without a bank (PET without its checklists) is asked the same either way
    runs = [scripted(["Improved prompt: Write a haiku about rain."]) for _ in range(2)]
    for engine, bank in zip(runs, (True, False), strict=True):
        evaluate(engine, P["pet"].model_copy(update={"coach": None}), [{"question": "rain poem"}], SamplingParams(),
                 progress=False, bank=bank)
    assert runs[0].calls[0][0] == runs[1].calls[0][0]


RUN_ON = ("Partha, act without fear. Let the fruit go.\n\nThomas Edison kept working on his lamp for years "
          "and did not give up when his tests failed again and again in the workshop.\n\n"
          "Partha, act without fear. Let the fruit go.")


@pytest.mark.parametrize("chunks, ends, broken", [
    (["Partha, act without fear. Let the fruit go.\n\nThomas Edison kept working on his lamp for years and did "
      "not give up when his tests failed again and again."], True, set()),
    ([RUN_ON], True, {"leaked"}),  # a second reply in the text (its sentences are too short to count as a loop)
    (["Partha, act without fear. Let the fruit go. stepToken"], True, {"leaked"}),
    (["Partha, be calm. He was a great warrior of the land. He was a great warrior of the land."], True,
     {"looped"}),
    (["Partha, act without fear. Let the fruit go."], False, {"not_ended"}),  # cut at max_new_tokens
])
def test_evaluate_counts_ended_leaked_looped(scripted, chunks, ends, broken):
    res = evaluate(scripted(chunks, ends=ends), P["krishna"], [{"question": "I am afraid."}],
                   SamplingParams(temperature=0.0), progress=False)
    row = res["replies"][0]
    assert row["ended"] is ends and res["ended"] == float(ends)
    assert row["leaked"] is ("leaked" in broken) and res["leaked"] == float("leaked" in broken)
    assert row["looped"] is ("looped" in broken) and res["looped"] == float("looped" in broken)
    for rule in ("not_ended", "leaked", "looped"):
        assert res["rules"][rule] == (0.0 if rule in broken else 1.0)
    if broken:
        assert not row["ok"] and res["compliance"] == 0.0


def test_load_questions(tmp_path):
    txt = tmp_path / "q.txt"
    txt.write_text("first?\n\nsecond?\n")
    assert [q["question"] for q in load_questions(txt)] == ["first?", "second?"]
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": ""}\n{"label": 3, "question": "x"}\n'
                   '{"question": "y", "answer": ["a list"]}\n')
    with pytest.raises(DataError) as exc:
        load_questions(bad)
    assert "q.jsonl:2" in str(exc.value) and "q.jsonl:3" in str(exc.value)
    assert 'q.jsonl:4: "answer" must be a string' in str(exc.value)
    assert split_spec("light@runs/a") == ("light", "runs/a") and split_spec("e4b") == ("e4b", None)
    # A bare tier is evaluated as the app serves it: with the persona's adapter; @none is the baseline.
    k = P["krishna"]
    assert split_spec("light", k) == ("light", k.adapters["light"]) and split_spec("light@none", k) == ("light", None)
    # a model server's URL may carry user@host: it is never split, and a server takes no adapter
    assert split_spec("openai:http://me@127.0.0.1:8081/v1#krishna-light", k) == (
        "openai:http://me@127.0.0.1:8081/v1#krishna-light", None)


@pytest.mark.slow
def test_eval_cli_on_light_model(tmp_path, light_engine):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "I am afraid of failing."}\n{"question": "How do I forgive?"}\n')
    out = tmp_path / "eval.json"
    assert cli(["eval", "--persona", "krishna", "--model", "light", "--questions", str(questions),
                "--json", str(out), "--max-new-tokens", "8", "--temperature", "0"]) == 0
    data = json.loads(out.read_text())
    model = data["models"][0]
    assert data["persona"] == "krishna" and model["name"] == "light" and model["n"] == 2
    assert model["accuracy"] is None
    # the rates are the replies' own verdicts, counted: 8 tokens never end a Krishna reply
    assert model["compliance"] == sum(r["ok"] for r in model["replies"]) / 2 == 0.0
    assert model["ended"] == 0.0 and all(r["finish_reason"] == "max_tokens" for r in model["replies"])
    assert set(model["rules"]) == set(rules_for(P["krishna"]))
    assert all(r["reply"] and "violations" in r for r in model["replies"])


def test_eval_cli_bank_both_puts_the_two_side_by_side(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install -r requirements-llamacpp.txt)")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Which sea fort did Shivaji Maharaj build near Malvan?"}\n')
    out = tmp_path / "eval.json"
    assert cli(["eval", "--persona", "aurora", "--model", "light-gguf@none", "--questions", str(questions),
                "--json", str(out), "--max-new-tokens", "8", "--bank", "both"]) == 0
    on, off = json.loads(out.read_text())["models"]
    assert (on["name"], off["name"]) == ("light-gguf@none", "light-gguf@none without bank")
    cards = on["replies"][0]["sources"]
    assert cards and off["replies"][0]["checked_against"] == cards and off["faithful"] is not None
    # PET: its checklists (no model) against the model writing the reply
    assert cli(["eval", "--persona", "pet", "--model", "light-gguf@none", "--questions", str(questions),
                "--json", str(out), "--max-new-tokens", "4", "--bank", "both"]) == 0
    written, model = json.loads(out.read_text())["models"]
    assert written["replies"][0]["reply"].startswith("- ") and written["keeps_task"] == 1.0
    assert model["name"] == "light-gguf@none without bank"
    # a persona without a bank or checklists is evaluated once, whatever --bank says
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "pet.toml").write_text(re.sub(r"(?ms)^\[coach\]\n.*?(?=^#|^\[)", "", shipped_persona("pet")))
    assert cli(["eval", "--persona", "pet", "--prompts", str(prompts), "--model", "light-gguf@none", "--questions",
                str(questions), "--json", str(out), "--max-new-tokens", "4", "--bank", "both"]) == 0
    assert [m["name"] for m in json.loads(out.read_text())["models"]] == ["light-gguf@none"]


def test_parse_label_prefers_the_longer_label_and_never_a_part_of_one():
    from krishna_ai.training.evaluate import parse_label

    labels = ["Blight", "Northern Leaf Blight", "Rust", "Rust Spot"]
    assert parse_label("Blight, I think. Looking closer: Northern Leaf Blight.", labels) == "Northern Leaf Blight"
    assert parse_label("Rust Spot on the leaves", labels) == "Rust Spot"
    assert parse_label("rust spot, clearly", labels) == "Rust Spot"


def test_hit_at_3_counts_three_cards_of_the_person_a_question_names():
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.core.personas import load_personas
    from krishna_ai.training.evaluate import top3

    krishna = load_personas()["krishna"]
    bank = load_bank(krishna.knowledge.bank)
    ids = top3(krishna, "Tell me a story about Thomas Edison and failure")
    assert 1 <= len(ids) <= 3 and all(bank.card(i).person == "Thomas Edison" for i in ids)
    assert len(top3(krishna, "I failed my exam and feel like giving up on my studies")) == 3


def test_consistent_flags_advice_for_another_condition_but_not_a_contrast():
    maize = P["maize"]
    head = "Diagnosis: Southern Rust\nConfidence: high - orange pustules on the upper surface\n"
    ok = head + ("What to look for: Orange pustules crowded on the upper surface; unlike common rust, few below.\n"
                 "What to do: Scout every few days and spray a labelled fungicide if it spreads before tasseling.")
    assert consistency(maize, ok) == (True, [])
    # the cards' own way to tell two conditions apart is not a contradiction either
    assert consistency(maize, head + "What to look for: Common rust looks similar but is cinnamon-brown.")[0]
    # advice that belongs to another condition, named by its pathogen or its words, is
    said, other = consistency(maize, head + "What to do: Puccinia sorghi needs no spray; rotate next year.")
    assert not said and other == ["Puccinia sorghi (diagnosis: Southern Rust)"]
    said, other = consistency(maize, head + "What to do: Nothing; the crop looks healthy.")
    assert not said and other == ["looks healthy (diagnosis: Southern Rust)"]
    assert consistency(maize, "What to do: scout weekly.") == (False, ["no diagnosis stated"])


def test_evaluate_reports_consistent_for_a_persona_with_labels(scripted):
    head = "Diagnosis: Healthy\nConfidence: high - clean leaves\nWhat to look for: Even green colour.\n"
    questions = [{"question": "Every leaf is plain green on both sides.", "label": "Healthy"}]
    scores = []
    for advice in ("What to do: No treatment is needed; keep scouting weekly.",
                   "What to do: Spray for northern leaf blight now."):
        res = evaluate(scripted([head + advice]), P["maize"], questions, SamplingParams(temperature=0.0),
                       progress=False)
        scores.append((res["consistent"], res["replies"][0]["inconsistent"]))
    assert scores == [(1.0, []), (0.0, ["northern leaf blight (diagnosis: Healthy)"])]
    assert "| 0% |" in format_table([res]) and "consistent" in format_table([res]).splitlines()[0]


def test_a_rewrite_that_loses_the_task_or_contradicts_itself_is_counted():
    from krishna_ai.core.rewrites import contradictions, keeps_task

    # two values the user gave themselves are not the rewrite's contradiction; a third one is
    study = "Make me a study plan. I can do 1 hour on weekdays and 3 hours on weekends."
    assert contradictions(study, study + " Give each session a goal.") == []
    assert contradictions(study, study + " Keep it to 2 hours in all.") == ["2 hour(s) where the user asked for 1 or 3"]

    q = "Give me a 30-minute workout plan I can do at home without equipment"
    good = "Give me a 30-minute workout plan for [fitness level] that I can do at home without equipment, as a table."
    assert keeps_task(q, good) == (True, []) and contradictions(q, good) == []
    assert contradictions(q, good + " Keep it under 15 minutes.") == ["15 minute(s) where the user asked for 30"]
    assert keeps_task(q, "Give me a 30-minute workout plan at home with equipment like dumbbells.")[1] == [
        "without equip"]  # the negation is the task: "with equipment" is another one
    assert keeps_task("What can I bake without eggs?", "Bake 4 eggs in a pan without oil.") == (
        False, ["without egg"])
    assert not keeps_task("Why is my Python script so slow?", "Write a script that sums a list of numbers.")[0]
    # a wrapped prompt: the task is the quoted one, not the request about it
    assert keeps_task('Please improve this prompt: "Write a press release for our product"',
                      "Write a press release for [product name] aimed at [audience].")[0]
    # the user's [placeholder] is no task word; a rewrite's placeholder keeps its words
    assert keeps_task("Translate these product instructions into Hindi: [text]",
                      "Translate the [product] instructions below into Hindi for [audience]: [paste text]")[0]
    # a part's count is not a second value for the whole; two for the whole are
    assert contradictions("Summarise this", "Summarise it in 3 bullet points, each under 20 words, under 100 words"
                          " in all.") == []
    assert contradictions("Plan a trip", "Plan a 7-day trip. Spread the visits over 10 days.") == [
        "10 and 7 day(s) for one thing"]
    assert contradictions("Write a eulogy", "My grandfather was 90 years old; his wife is 80 years old.") == []


def test_evaluate_reports_keeps_task_for_a_persona_that_rewrites(scripted):
    questions = [{"question": "Give me a 30-minute workout plan"}]
    rows = []
    for rewrite in ("Give me a 30-minute workout plan for [level], as a table.",
                    "Give me a workout plan for [level]. Keep it under 15 minutes.",
                    "Write a poem about the sea."):
        reply = f"- No level or format.\n\nImproved prompt: {rewrite}"
        res = evaluate(scripted([reply]), P["pet"].model_copy(update={"coach": None}), questions,  # the model writes
                       SamplingParams(temperature=0.0), progress=False)
        rows.append((res["keeps_task"], res["self_consistent"]))
    assert rows == [(1.0, 1.0), (0.0, 0.0), (0.0, 1.0)]
    head, _, row = format_table([res]).splitlines()
    assert "| keeps task | no contradiction |" in head and "| 0% | 100% |" in row
    res = evaluate(scripted(["Partha, act."]), P["krishna"], [{"question": "I failed my exam"}],
                   SamplingParams(temperature=0.0), progress=False)
    assert res["keeps_task"] is None and "keeps_task" not in res["replies"][0]  # no rewrite to check


def test_story_and_teaching_fit_count_the_cards_a_question_is_labelled_with(scripted, tmp_path):
    from krishna_ai.core.grounding import teachings_for

    question = "I failed my exam again. What should I do?"
    krishna = krishna_with_counsel(tmp_path)
    turn_cards = ground(krishna, question).cards
    teaching = teachings_for(krishna, question)[0].id
    story = "Partha, act.\n\n" + turn_cards[0].text
    fits = []
    for cards, teachings in (([turn_cards[0].id, "x"], [teaching]), (["x"], ["y", "z"])):
        res = evaluate(scripted([story]), krishna,
                       [{"question": question, "cards": cards, "teachings": teachings}],
                       SamplingParams(temperature=0.0), progress=False)
        fits.append((res["story_fits"], res["teaching_fits"]))
    assert fits == [(1.0, 1.0), (0.0, 0.0)]
    assert "| story fits | teaching fits |" in format_table([res]).splitlines()[0]


def test_scope_counts_outside_caught_and_inside_refused():
    from krishna_ai.training.evaluate import _scope_cells, _scope_summary

    declined = [{"expected": "out"}, {"expected": "out"}, {"expected": "in"}]
    summary = _scope_summary(declined, [{"question": "Who won the 2011 World Cup?"}], asked=5)
    assert summary == {"outside": 3, "caught": pytest.approx(2 / 3), "inside": 5, "refused": pytest.approx(0.2),
                       "missed": ["Who won the 2011 World Cup?"]}
    assert _scope_summary([], [], 0) == {"outside": 0, "caught": None, "inside": 0, "refused": None, "missed": []}
    assert _scope_cells(summary) == ["67%", "20%"]
    assert _scope_cells({"caught": None, "refused": 0.0}) == ["–", "0%"] and _scope_cells(None) == ["–", "–"]


def test_the_table_gives_ended_leaked_and_looped_one_column_each():
    res = {"name": "m", "n": 1, "rules": {"not_ended": 1.0, "leaked": 1.0, "looped": 0.5, "missing_address": 1.0}}
    head = format_table([res]).splitlines()[0].split(" | ")
    assert [h for h in head if "ended" in h or "leak" in h or "loop" in h] == ["ended", "leaked", "looped"]
    assert head[-1].rstrip(" |") == "addresses user" and format_table([res]).splitlines()[2].endswith("| 100% |")


def test_the_json_is_indented_keeps_non_ascii_and_names_its_questions(tmp_path):
    from krishna_ai.training.evaluate import write_json

    out = write_json([{"name": "light", "replies": [{"reply": "Pārtha — “ok”"}]}], P["krishna"], "q.jsonl",
                     tmp_path / "e.json")
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == {"persona": "krishna", "questions": "q.jsonl",
                                "models": [{"name": "light", "replies": [{"reply": "Pārtha — “ok”"}]}]}
    assert text.startswith('{\n  "persona": "krishna",\n  "questions"') and "Pārtha — “ok”" in text


def test_at_none_is_the_bare_model_and_the_longer_label_wins_where_both_start():
    assert split_spec("light-gguf@none") == ("light-gguf", None)
    assert parse_label("It is Rust Belt blight.", ["Rust", "Rust Belt"]) == "Rust Belt"
    assert parse_label("Healthy now; later Common Rust.", ["Common Rust", "Healthy"]) == "Healthy"


def test_hit_at_3_of_a_named_person_ranks_only_their_cards():
    from krishna_ai.core.knowledge import load_bank
    from krishna_ai.training.evaluate import top3

    krishna = P["krishna"]
    bank = load_bank(krishna.knowledge.bank)
    got = top3(krishna, "Tell me a story about Marie Curie and her long nights of work.")
    assert len(got) == 3 and {bank.card(c).person for c in got} == {"Marie Curie"}


def test_the_table_names_every_measure_and_fills_each_from_its_own_field():
    res = {"name": "m@a", "n": 7, "compliance": 0.5, "ended": 0.91, "leaked": 0.02, "looped": 0.03, "faithful": 0.94,
           "retrieval_top3": 0.95, "story_fits": 0.96, "teaching_fits": 0.97, "accuracy": 0.98, "consistent": 0.99,
           "answer_facts": 0.11, "keeps_task": 0.12, "self_consistent": 0.13,
           "scope": {"caught": 0.14, "refused": 0.15}, "rules": {"not_ended": 0.91, "missing_address": 0.16}}
    other = {"name": "b", "n": 0, "rules": {"verse_quote": 0.17}}
    assert format_table([res, other]).split("\n") == [
        "| model | n | all rules met | ended | leaked | looped | faithful | card in top 3 | story fits | teaching fits "
        "| accuracy | consistent | answer facts | keeps task | no contradiction | outside caught | inside refused "
        "| addresses user | no verse quote |",
        "|" + "---|" * 19,
        "| m@a | 7 | 50% | 91% | 2% | 3% | 94% | 95% | 96% | 97% | 98% | 99% | 11% | 12% | 13% | 14% | 15% | 16% | – |",
        "| b | 0 | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | – | 17% |",
    ]


def test_eval_declines_outside_questions_as_the_app_does_and_counts_them(scripted):
    from krishna_ai.runtime.embed import LightEmbedder

    maize = P["maize"]
    asked = [{"question": "My tomato leaves have brown spots, what is it?", "scope": "out"},
             {"question": "Small cinnamon-brown powdery pustules on both sides of my maize leaves.", "scope": "out"},
             {"question": "Long grey cigar-shaped lesions on the lower maize leaves.", "label": "Northern Leaf Blight"}]
    engine = scripted(["Diagnosis: Northern Leaf Blight\nConfidence: high - x\nWhat to look for: y\nWhat to do: z"])
    res = evaluate(engine, maize, asked, SamplingParams(temperature=0.0), progress=False, embed=LightEmbedder())
    assert res["declined"] == [{"question": asked[0]["question"], "reply": maize.scope.decline, "reason": "word",
                                "expected": "out"}]
    assert [r["question"] for r in res["replies"]] == [asked[1]["question"], asked[2]["question"]]
    assert res["scope"] == {"outside": 2, "caught": 0.5, "inside": 1, "refused": 0.0, "missed": [asked[1]["question"]]}
    assert len(engine.calls) == 2  # the declined question never reached the model


def test_written_counsel_with_no_story_due_runs_no_model_and_is_scored_as_the_user_gets_it(scripted):
    from krishna_ai.core.prompting import build_turn

    krishna = P["krishna"]
    complete = "Tell me a story about Serena Williams. I lost the final of my club tournament."
    story_due = "I failed my exam again. What should I do?"
    engine = scripted(["In 1990 she wrote."])
    batches: list[int] = []
    generate = engine.generate_batch
    engine.generate_batch = lambda conversations, params=None: batches.append(len(conversations)) or generate(
        conversations, params)
    params = SamplingParams(temperature=0.0)
    first, second = evaluate(engine, krishna, [{"question": complete}, {"question": story_due}], params,
                             progress=False)["replies"]
    alone = evaluate(engine, krishna, [{"question": complete}], params, progress=False)["replies"]
    assert batches == [1]  # only the question with a story due reached the model; alone, none did
    opening = build_turn(krishna, [], complete).opening
    assert first["reply"] == alone[0]["reply"] == (
        f"{opening}\n\nI have no true story of Serena Williams in my notes to tell you, Partha.")
    assert first["finish_reason"] == "end_of_turn" and first["ended"] and first["ok"] and first["violations"] == []
    assert second["reply"] == f"{build_turn(krishna, [], story_due).opening}\n\nIn 1990 she wrote."
