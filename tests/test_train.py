"""Fine-tuning on the real light model: loss goes down, resume is exact, merge equals peft."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from krishna_ai.cli.main import main as cli
from krishna_ai.core.errors import ConfigError
from krishna_ai.training.common import target_regex
from krishna_ai.training.config import TrainConfig
from krishna_ai.training.run import train as main

pytestmark = pytest.mark.slow

ROWS = [
    ("What is courage?", "Partha, courage is acting while your knees shake."),
    ("How do I rest?", "Partha, rest is the pause between two breaths of duty."),
    ("Why do I fail?", "Partha, failure is the teacher that never lies."),
    ("What is patience?", "Partha, patience is the river that carves the stone."),
]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in ROWS))
    return path


def recipe(data, out, **kw):
    base = {"model": "light", "data": str(data), "output_dir": str(out), "max_steps": 4, "batch_size": 2,
            "grad_accum": 1, "save_steps": 2, "learning_rate": 1e-3, "gradient_checkpointing": False,
            "lora": {"r": 4, "alpha": 8}, "seed": 11}
    base.update(kw)
    return TrainConfig.from_dict(base)


def adapter_tensors(run):
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_training_lowers_loss_and_writes_artifacts(dataset, tmp_path):
    summary = main(recipe(dataset, tmp_path / "run", max_steps=6), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.7
    run = tmp_path / "run"
    assert (run / "loss.png").stat().st_size > 1000 and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["steps"] == 6 and summary["engine"] == "hf"
    keys = list(adapter_tensors(run))
    lora = [k for k in keys if "trainable_tokens" not in k]
    assert lora and all(".layers." in k and ("self_attn" in k or "mlp" in k) for k in lora)
    # the turn markers' embedding rows are trained too (the base model never learned to end a turn)
    assert [k for k in keys if "trainable_tokens" in k] == [
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]


def test_resume_reaches_the_same_state(dataset, tmp_path):
    full = tmp_path / "full"
    main(recipe(dataset, full), progress=False)
    interrupted = tmp_path / "interrupted"
    main(recipe(dataset, interrupted), progress=False)
    # what a run killed after step 2 leaves behind: checkpoint-2 only, no adapter
    shutil.rmtree(interrupted / "checkpoint-4")
    shutil.rmtree(interrupted / "adapter")
    main(recipe(dataset, interrupted), resume=True, progress=False)
    a, b = adapter_tensors(full), adapter_tensors(interrupted)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    losses = [json.loads(line)["loss"] for line in (interrupted / "loss.jsonl").read_text().splitlines()]
    full_losses = [json.loads(line)["loss"] for line in (full / "loss.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(full_losses, rel=1e-5)


def test_merge_matches_peft_and_is_atomic(dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from krishna_ai.runtime.light import ensure_light_checkpoint
    from krishna_ai.runtime.weights import load_model

    run = tmp_path / "run"
    main(recipe(dataset, run, max_steps=2), progress=False)
    out = tmp_path / "merged"
    assert cli(["merge", "--base", "light", "--adapter", str(run / "adapter"), "--out", str(out),
                "--dtype", "fp32"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "merge_info.json").is_file()
    assert not list(tmp_path.glob("merged.partial-*"))

    ids = torch.tensor([[2, 818, 5279, 529, 7001, 563]])
    base = AutoModelForCausalLM.from_pretrained(ensure_light_checkpoint(), dtype=torch.float32)
    with torch.no_grad():
        reference = PeftModel.from_pretrained(base, str(run / "adapter")).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(ids).logits
        at_load = load_model("light", adapter=run / "adapter").model(ids).logits
    torch.testing.assert_close(merged, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(at_load, reference, rtol=1e-4, atol=1e-4)
    # a second merge into the same folder is refused without --force
    assert cli(["merge", "--base", "light", "--adapter", str(run / "adapter"), "--out", str(out)]) == 2


def test_recipes_that_read_as_defaults_still_load(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    cfg = TrainConfig.from_dict({"data": str(data), "lora": None, "limit": 0, "save_total_limit": None})
    assert cfg.lora.r == 16 and cfg.limit == 0 and cfg.save_total_limit is None


def test_recipe_validation_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: light\ndata: nowhere.jsonl\nlearnig_rate: 1\nlora: {r: 0, targets: [q, wq]}\n"
                   "dtype: fp16\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_yaml(bad)
    assert "learnig_rate: unknown setting" in str(exc.value)
    bad.write_text("model: light\ndata: nowhere.jsonl\nlora: {r: 0, targets: [q, wq]}\ndtype: fp16\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_yaml(bad)
    msg = str(exc.value)
    for part in ("data: nowhere.jsonl does not exist", "lora.r: must be a positive integer", "lora.targets: ['wq']",
                 "dtype: 'fp16'", "batch_size: must be a positive integer"):
        assert part in msg, msg


def test_shipped_recipes_parse(tmp_path):
    from tests.conftest import REPO

    for path in sorted((REPO / "configs").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith(f"# python -m krishna_ai train --config configs/{path.name}"), path
        import yaml

        raw = yaml.safe_load(text)
        if path.name == "maize-e4b.yaml":
            raw["data"] = "data/maize/train.jsonl"  # the image folder is the user's own
        raw["data"] = str(REPO / raw["data"])
        if raw.get("method") == "dpo":  # the pairs come from the user's own feedback export
            raw["data"] = str(tmp_path / "dpo.jsonl")
            (tmp_path / "dpo.jsonl").write_text("{}\n")
        TrainConfig.from_dict(raw, source=path.name)


def test_target_regex_spares_towers():
    import re

    rx = target_regex(["q", "v", "down"])
    assert re.fullmatch(rx, "model.language_model.layers.3.self_attn.q_proj")
    assert re.fullmatch(rx, "model.layers.0.mlp.down_proj")
    assert not re.fullmatch(rx, "model.audio_tower.conformer.0.attention.attn.q_proj")
    assert not re.fullmatch(rx, "model.layers.0.self_attn.k_proj")


def test_unsloth_engine_without_gpu_is_a_clear_error(dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="unsloth needs a CUDA GPU"):
        main(recipe(dataset, tmp_path / "u", engine="unsloth"), progress=False)


@pytest.mark.gpu
def test_unsloth_engine_trains_on_gpu(dataset, tmp_path):
    pytest.importorskip("unsloth")
    summary = main(recipe(dataset, tmp_path / "u", engine="unsloth"), progress=False)
    assert summary["engine"] == "unsloth" and summary["final_loss"] < summary["first_loss"]


def _custom_persona(folder):
    """A persona that exists only in `folder` (as one made with --prompts DIR would)."""
    from tests.conftest import REPO, shipped_persona

    folder.mkdir(parents=True, exist_ok=True)
    text = shipped_persona("pet")
    text = text.replace('id = "pet"', 'id = "coach-q"').replace("You are PET,", "You are Coach Q,")
    text = text.replace(f'adapters = {{ light = "{REPO.as_posix()}/adapters/pet-light" }}',
                        'adapters = { light = "coach-adapter" }')
    (folder / "coach-q.toml").write_text(text, encoding="utf-8")
    (folder / "coach-adapter").mkdir()
    return folder


def test_prompts_folders_are_honoured_by_train_dpo_and_the_cli(tmp_path, monkeypatch):
    """`train --prompts DIR` (and a recipe's `prompts:`) finds a persona that lives only in DIR, for the SFT
    data, DPO's start adapter and the sweep's trials, which all build their recipe through TrainConfig."""
    from krishna_ai.training import dpo, run
    from krishna_ai.training.sft import load_training_conversations

    prompts = _custom_persona(tmp_path / "mine")
    source = tmp_path / "qa.jsonl"
    source.write_text(json.dumps({"question": "Write a poem", "answer": "Improved prompt: a poem."}) + "\n")
    cfg = TrainConfig.from_dict({"data": str(source), "data_format": "persona", "persona": "coach-q",
                                 "prompts": [str(prompts)]})
    system = load_training_conversations(cfg)[0][0]["content"]
    assert system.startswith("You are Coach Q,")
    assert dpo.start_adapter(cfg.model_copy(update={"method": "dpo"})) == str(prompts / "coach-adapter")
    with pytest.raises(Exception, match="coach-q"):  # without the folder the persona is unknown
        load_training_conversations(cfg.model_copy(update={"prompts": []}))

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"data: {source}\ndata_format: persona\npersona: coach-q\n")
    seen = []
    monkeypatch.setattr(run, "train", lambda cfg, **kw: seen.append(cfg) or {})
    assert cli(["train", "--config", str(recipe_file), "--prompts", str(prompts)]) == 0
    assert seen[0].prompts == [str(prompts)]
    assert load_training_conversations(seen[0])[0][0]["content"].startswith("You are Coach Q,")
