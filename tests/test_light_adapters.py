"""The light tier as the app serves it: every persona's shipped adapter, trained by the project's recipe,
ends its turn, leaks nothing, does not loop, and (krishna) retells its card."""

from __future__ import annotations

import json

import pytest
import yaml

from krishna_ai.core.knowledge import load_bank
from krishna_ai.core.personas import load_personas
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.load import load_engine
from krishna_ai.training.config import TrainConfig
from krishna_ai.training.evaluate import evaluate, load_questions
from tests.conftest import REPO

PERSONAS = ["krishna", "aurora", "maize", "pet"]
P = load_personas()


@pytest.mark.parametrize("name", PERSONAS)
def test_each_persona_ships_an_adapter_trained_by_its_recipe(name):
    adapter = REPO / "adapters" / f"{name}-light"
    assert P[name].adapters == {"light": str(adapter.resolve())}
    config = json.loads((adapter / "adapter_config.json").read_text())
    # the turn markers' embedding rows were trained: a base model cannot end its turn without them
    assert config["trainable_token_indices"] == [105, 106]
    summary = json.loads((adapter / "train_summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] and summary["steps"] > 0
    recipe = yaml.safe_load((adapter / "recipe.yaml").read_text())
    shipped = TrainConfig.from_yaml(REPO / "configs" / f"{name}-light.yaml").to_dict()
    assert {k: v for k, v in recipe.items() if k != "output_dir"} == \
        {k: v for k, v in shipped.items() if k != "output_dir" and k in recipe}
    # settings added since the adapter was trained hold their defaults in the shipped recipe (same training)
    defaults = TrainConfig(data="x").to_dict()
    assert {k: shipped[k] for k in shipped if k not in recipe} == {k: defaults[k] for k in shipped if k not in recipe}


@pytest.mark.slow
@pytest.mark.parametrize("name", PERSONAS)
def test_tuned_replies_end_cleanly(name):
    persona = P[name]
    engine = load_engine("light", persona.adapters["light"])
    questions = load_questions(REPO / "data" / name / "heldout.jsonl")[:3]
    res = evaluate(engine, persona, questions, SamplingParams.for_persona(persona, seed=0), progress=False)
    # Every reply ends and none leaks its instructions. A repeated sentence is a sampled fault `eval` measures
    # on the whole held-out set (0 to 7% per persona, README); here at most one of three: Maize's third reply
    # restates the fungicide sentence of the card it retells (seed 0, `light`), a fault the held-out rate counts.
    assert res["ended"] == 1.0 and res["leaked"] == 0.0 and res["looped"] <= 1 / 3, [
        (r["finish_reason"], r["violations"], r["reply"][-200:]) for r in res["replies"]]
    if persona.knowledge is not None and persona.knowledge.checked == "story":
        assert res["faithful"] >= 2 / 3, [(r["unsupported"], r["reply"]) for r in res["replies"]]
    if persona.counsel is not None and persona.counsel.written:  # the written counsel, then the model's story
        bank = load_bank(persona.counsel.bank)
        for r in res["replies"]:
            counsel = bank.card(r["teachings"][0]).text
            assert r["reply"].startswith(counsel + "\n\n") and len(r["reply"]) > len(counsel) + 100, r["reply"]
