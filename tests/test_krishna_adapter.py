"""The shipped light-tier Krishna adapter: wired to the persona, and it really changes how the model answers."""

from __future__ import annotations

import json

import pytest

from krishna_ai.personas import load_personas
from krishna_ai.prompting import build_messages
from krishna_ai.runtime.hf import HFEngine
from krishna_ai.runtime.weights import load_model
from krishna_ai.sampling import SamplingParams
from krishna_ai.style import check_reply
from tests.conftest import REPO

ADAPTER = REPO / "adapters" / "krishna-light"


def test_persona_uses_the_shipped_adapter_on_the_light_tier():
    k = load_personas()["krishna"]
    assert k.adapters == {"light": str(ADAPTER.resolve())}
    assert (ADAPTER / "adapter_model.safetensors").is_file() and (ADAPTER / "adapter_config.json").is_file()
    summary = json.loads((ADAPTER / "train_summary.json").read_text())
    assert summary["steps"] == 56 and summary["final_loss"] < summary["first_loss"]


@pytest.mark.slow
def test_fine_tuned_light_tier_follows_the_krishna_style(light_engine):
    k = load_personas()["krishna"]
    held = [json.loads(line)["question"] for line in (REPO / "data/krishna/heldout.jsonl").read_text().splitlines()]
    convs = [build_messages(k, [], q, personality=p) for q, p in zip(held[:4], k.personalities, strict=False)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=256)
    tuned = HFEngine(load_model("light", adapter=ADAPTER)).generate_batch(convs, greedy)
    base = light_engine.generate_batch(convs, greedy)
    ok_tuned = sum(not check_reply(r, k) for r in tuned)
    ok_base = sum(not check_reply(r, k) for r in base)
    assert ok_tuned >= 3, [str(v) for r in tuned for v in check_reply(r, k)]
    assert ok_base <= 1
    assert all("Partha" in r for r in tuned)
