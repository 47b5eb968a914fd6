"""Feedback feeds training: chats in the app → thumbs and Retry → `feedback export` → a short DPO run on the
real light tier (Gemma 3 270M with Krishna's shipped adapter), which must move the model towards the
chosen replies. Also the preference file's validation."""

from __future__ import annotations

import json

import pytest
import torch

from krishna_ai.core.errors import ConfigError, DataError
from krishna_ai.core.personas import load_personas
from krishna_ai.history.chatfile import export_feedback
from krishna_ai.history.store import HistoryStore
from krishna_ai.training.config import TrainConfig
from krishna_ai.training.dpo import load_preferences
from krishna_ai.training.run import train as main

GOOD = ["Partha, the fruit was never yours to hold. Do the work with a full heart and let the result go.",
        "Partha, steady the mind as a lamp in a windless place. Act, and leave the outcome to me.",
        "Partha, no effort on this path is ever lost. Begin again tomorrow, and do it well."]
BAD = ["lol idk just quit your job and go to sleep, nobody cares anyway",
       "As an AI language model I cannot give advice. As an AI language model I cannot give advice.",
       "whatever whatever whatever whatever whatever whatever"]
QUESTIONS = ["I failed my exam. Should I give up?", "My manager never notices my work.",
             "I keep putting off my studies."]


def saved_feedback(store: HistoryStore) -> None:
    """What users did in the app: a disliked reply retried into a liked one; a reply retried without thumbs."""
    for i, (q, good, bad) in enumerate(zip(QUESTIONS, GOOD, BAD, strict=True)):
        chat = store.new_chat("local", "krishna")
        store.add_message("local", chat.id, "user", q)
        first = store.add_message("local", chat.id, "assistant", bad, meta={"model": "light"})
        if i != 2:
            store.feedback("local", first.id, -1)
        store.retry("local", chat.id)
        second = store.add_message("local", chat.id, "assistant", good, meta={"model": "light"})
        if i != 2:
            store.feedback("local", second.id, 1)


def margin(model, tokenizer, rows) -> float:
    """Mean log-probability of chosen minus rejected reply tokens under `model` (the DPO objective's core)."""
    total = 0.0
    with torch.no_grad():
        for r in rows:
            scores = []
            for reply in (r["chosen"], r["rejected"]):
                prompt = tokenizer(r["prompt"])["input_ids"]
                ids = tokenizer(r["prompt"] + reply)["input_ids"]
                logits = model(torch.tensor([ids])).logits[0, :-1].float()
                logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
                scores.append(logp[len(prompt) - 1:].sum().item())
            total += scores[0] - scores[1]
    return total / len(rows)


@pytest.mark.slow
def test_chat_feedback_exports_and_a_dpo_run_prefers_the_liked_replies(tmp_path):
    from peft import PeftModel

    from krishna_ai.training.dpo import build_models, render_pairs

    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}", data_dir=tmp_path)
    saved_feedback(store)
    counts = export_feedback(store, tmp_path / "fb", personas=load_personas())
    assert counts == {"krishna": {"sft": 2, "dpo": 3}}
    data = tmp_path / "fb" / "dpo-krishna.jsonl"
    pairs = load_preferences(data)
    assert pairs[0]["prompt"][0]["role"] == "system" and "Partha" in pairs[0]["prompt"][0]["content"]

    cfg = TrainConfig.from_dict({
        "model": "light", "method": "dpo", "data": str(data), "data_format": "preference", "persona": "krishna",
        "output_dir": str(tmp_path / "run"), "dtype": "fp32", "beta": 0.1, "learning_rate": 5e-4, "max_steps": 6,
        "batch_size": 1, "grad_accum": 1, "max_seq_length": 1024})
    policy, tokenizer, processor = build_models(cfg)
    rows = render_pairs(pairs, tokenizer, processor)
    prompt = rows[0]["prompt"]
    assert prompt.startswith("<start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    assert rows[0]["chosen"] == GOOD[0] + "<end_of_turn>\n"
    with policy.disable_adapter():
        before = margin(policy, tokenizer, rows)  # the start: Krishna's shipped adapter, merged
    del policy

    summary = main(cfg, progress=False)
    assert summary["method"] == "dpo" and summary["steps"] == 6
    assert summary["start_adapter"].endswith("adapters/krishna-light")
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (tmp_path / "run" / "loss.png").is_file()

    from krishna_ai.runtime.weights import load_model

    tuned = PeftModel.from_pretrained(load_model("light").model, str(adapter)).merge_and_unload().eval()
    after = margin(tuned, tokenizer, rows)
    assert after > before + 1.0, (before, after)  # the liked replies gained on the rejected ones

    # the one combined adapter is exactly the shipped adapter merged, plus what DPO learnt on top of it
    stacked = PeftModel.from_pretrained(load_model("light").model, "adapters/krishna-light").merge_and_unload()
    stacked = PeftModel.from_pretrained(stacked, str(tmp_path / "run" / "dpo-delta")).merge_and_unload().eval()
    ids = torch.tensor([tokenizer(rows[1]["prompt"] + rows[1]["chosen"])["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(tuned(ids).logits, stacked(ids).logits, atol=2e-3, rtol=1e-3)


def test_bad_preference_files_list_every_problem(tmp_path):
    path = tmp_path / "p.jsonl"
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    lines = [good, {"prompt": "q"}, {**good, "prompt": [{"role": "assistant", "content": "x"}]},
             {**good, "rejected": good["chosen"]}, {**good, "extra": 1}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert "not valid JSON" in str(err.value)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DataError) as err:
        load_preferences(path)
    text = str(err.value)
    assert "p.jsonl:2" in text and "p.jsonl:3: prompt: must end with a user message" in text
    assert "p.jsonl:4: chosen and rejected are the same reply" in text and "p.jsonl:5" in text
    assert "p.jsonl:1" not in text


def test_dpo_recipe_validation(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("{}\n")
    with pytest.raises(ConfigError, match="method dpo takes data_format preference"):
        TrainConfig.from_dict({"data": str(data), "method": "dpo"})
    with pytest.raises(ConfigError, match="method dpo takes data_format preference"):
        TrainConfig.from_dict({"data": str(data), "data_format": "preference"})
    with pytest.raises(ConfigError, match="beta: must be positive"):
        TrainConfig.from_dict({"data": str(data), "method": "dpo", "data_format": "preference", "beta": 0})
