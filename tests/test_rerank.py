"""Best-of-n (core/rerank.py): the ranking of sampled replies, and `eval` keeping the best of n."""

from __future__ import annotations

import pytest

from krishna_ai.core.personas import load_personas
from krishna_ai.core.rerank import best_of, own_part
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.core.vectors import sentence_vectors
from krishna_ai.training.evaluate import evaluate
from tests.conftest import ScriptedEngine

KRISHNA = load_personas()["krishna"]
QUESTION = "I failed my driving test twice and I am afraid to try again."
ON_TOPIC = ("Partha, a test failed twice is a lesson given twice. Practise the turns that beat you, book the "
            "test again, and let the result be what it will be.")
OFF_TOPIC = ("Partha, the river runs to the sea and the sea does not ask it why. The moon is old and the stars "
             "are older still.")
NO_ADDRESS = "A test failed twice is a lesson given twice. Practise the turns that beat you and book it again."


def test_the_best_reply_ended_keeps_the_rules_and_speaks_to_the_question():
    ranked = [(OFF_TOPIC, "end_of_turn"), (NO_ADDRESS, "end_of_turn"), (ON_TOPIC, "length"),
              (ON_TOPIC, "end_of_turn")]
    chosen, keys = best_of(KRISHNA, QUESTION, ranked, [], sentence_vectors)
    assert chosen == 3
    assert [k["not_ended"] for k in keys] == [0, 0, 1, 0]
    assert keys[1]["broken"] >= 1 and keys[0]["broken"] == keys[3]["broken"] == 0  # "Partha" is a rule
    assert keys[3]["relevance"] > keys[0]["relevance"] + 0.2  # the on-topic counsel is closer in meaning
    # only the rules and facts outrank meaning: the off-topic reply wins over one that broke a rule
    assert best_of(KRISHNA, QUESTION, ranked[:2], [], sentence_vectors)[0] == 0
    story = ON_TOPIC + "\n\nMarie Curie worked in a shed in Paris for four years."  # a story no card fitted
    assert best_of(KRISHNA, QUESTION, [(story, "end_of_turn"), (ON_TOPIC, "end_of_turn")], [],
                   sentence_vectors)[0] == 1


def test_one_candidate_is_chosen_without_ranking_and_none_is_an_error():
    def never(texts):
        raise AssertionError("no vectors are needed for one candidate")

    assert best_of(KRISHNA, QUESTION, [(OFF_TOPIC, "length")], None, never) == (0, [])
    with pytest.raises(ValueError, match="at least one"):
        best_of(KRISHNA, QUESTION, [], None, never)


def test_own_part_is_the_counsel_of_a_story_teller_and_all_of_a_reply_otherwise():
    assert own_part(KRISHNA, ON_TOPIC + "\n\nA story.") == ON_TOPIC
    assert own_part(load_personas()["pet"], "Improved prompt:\n\nWrite a plan.") == "Improved prompt:\n\nWrite a plan."


class BySeed(ScriptedEngine):
    """A model whose reply depends on the sampling seed, as a sampled one's does."""

    def __init__(self, replies: dict[int, str]):
        super().__init__()
        self.replies = replies

    def stream(self, messages, params=None, stop_event=None, *, slice=None):
        self.chunks = [self.replies[params.seed]]
        return super().stream(messages, params, stop_event, slice=slice)


def test_eval_keeps_the_best_of_n_and_n_1_is_its_first_candidate():
    engine = BySeed({7: OFF_TOPIC, 8: NO_ADDRESS, 9: ON_TOPIC})
    params = SamplingParams(temperature=1.0, seed=7)
    asked = [{"question": QUESTION}]
    one = evaluate(engine, KRISHNA, asked, params, progress=False, bank=False)
    assert one["replies"][0]["reply"] == OFF_TOPIC and "best_of" not in one["replies"][0]
    three = evaluate(engine, KRISHNA, asked, params, progress=False, bank=False, n=3, vectors=sentence_vectors)
    row = three["replies"][0]
    assert row["reply"] == ON_TOPIC and row["best_of"]["chosen"] == 2
    assert [c["reply"] for c in row["best_of"]["candidates"]] == [OFF_TOPIC, NO_ADDRESS, ON_TOPIC]
    assert [p.seed for _, p in engine.calls] == [7, 7, 8, 9]
    with pytest.raises(ValueError, match="sentence vectors"):
        evaluate(engine, KRISHNA, asked, params, progress=False, n=2)


def test_a_rewrite_that_keeps_the_task_and_its_numbers_wins():
    pet = load_personas()["pet"]
    question = "Give me a 30-minute workout plan for beginners."
    lost = "Improved prompt:\nWrite a healthy dinner recipe for two people."
    changed = "Improved prompt:\nGive me a workout plan for beginners. Keep it under 15 minutes."
    kept = "Improved prompt:\nGive me a 30-minute workout plan for beginners with [equipment] and [goal]."
    replies = [(text, "end_of_turn") for text in (lost, changed, kept)]
    chosen, keys = best_of(pet, question, replies, None, sentence_vectors)
    assert chosen == 2 and keys[2]["broken"] < min(keys[0]["broken"], keys[1]["broken"])


def test_each_candidates_key_counts_its_own_faults():
    from krishna_ai.core.knowledge import load_bank

    card = next(c for c in load_bank(KRISHNA.knowledge.bank).cards if c.person == "Marie Curie")
    retold = f"{ON_TOPIC}\n\n{card.text}"
    invented = f"{ON_TOPIC}\n\nIn 1921 Marie Curie sailed to Boston with Albert Einstein and 40 students."
    replies = [(retold, "end_of_turn"), (invented, "end_of_turn"), (ON_TOPIC, "end_of_turn")]
    chosen, keys = best_of(KRISHNA, QUESTION, replies, [card], sentence_vectors)
    assert chosen == 0 and keys[0]["unsupported"] == 0 and keys[1]["unsupported"] >= 2
    assert keys[2]["broken"] >= 1 and keys[0]["broken"] == 0  # a card fitted: a reply without its story breaks a rule
    assert all(k["relevance"] == round(k["relevance"], 4) for k in keys)
    pet = load_personas()["pet"]
    no_rewrite = [("Write it shorter.", "end_of_turn"), ("Improved prompt:\nWrite it.", "end_of_turn")]
    _, pet_keys = best_of(pet, "Write a poem about rain.", no_rewrite, None, sentence_vectors)
    assert pet_keys[0]["broken"] >= 2  # no "Improved prompt:" line (a style rule) and so no task kept
    maize = load_personas()["maize"]
    assert own_part(maize, "Diagnosis: Healthy\n\nWhat to do: nothing.") == "Diagnosis: Healthy\n\nWhat to do: nothing."
    assert own_part(KRISHNA, "  ") == ""


@pytest.mark.parametrize("n", ["0", "-3", "17", "1000000000"])
def test_eval_refuses_a_best_of_out_of_bounds_before_loading_a_model(n, capsys):
    from krishna_ai.cli.main import main as cli

    rc = cli(["eval", "--persona", "pet", "--questions", "data/pet/heldout.jsonl", "--model", "no-such-model",
              "--best-of", n])
    assert rc == 2 and f"--best-of must be between 1 and 16, not {n}" in capsys.readouterr().err
