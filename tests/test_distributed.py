"""Training beyond one process: `train` under `accelerate launch` with 2 CPU processes (gloo) gives the same adapter
as one process over the same global batch, on a tiny random Gemma 3n (whose KV-shared layers need DDP's
find_unused_parameters); the shipped accelerate configs parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

ROWS = [("What is courage?", "Partha, courage is acting while your knees shake."),
        ("How do I rest?", "Partha, rest is the pause between two breaths of duty."),
        ("Why do I fail?", "Partha, failure is the teacher that never lies, and it speaks once."),
        ("What is patience?", "Partha, patience is the river that carves the stone.")]


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from krishna_ai.training.tiny import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("tiny") / "tiny-text", text_only=True, layers=5)


def recipe(tmp_path, model, name: str, batch_size: int) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in ROWS))
    cfg = {"model": str(model), "data": str(data), "output_dir": str(tmp_path / name), "max_steps": 3,
           "batch_size": batch_size, "grad_accum": 1, "learning_rate": 5e-3, "dtype": "fp32", "save_steps": 100,
           "gradient_checkpointing": False, "seed": 7, "lora": {"r": 4, "alpha": 8, "trainable_tokens": []}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_two_processes_train_the_adapter_one_process_trains(tmp_path, tiny_text):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # one process, the whole dataset (4 conversations) as each step's batch
    one = subprocess.run([sys.executable, "-m", "krishna_ai", "train", "--config",
                          recipe(tmp_path, tiny_text, "one", 4)], cwd=REPO, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    # two processes with 2 each: the same global batch, through accelerate's launcher and the shipped config
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"), "--main_process_port",
                          str(free_port()), "-m", "krishna_ai", "train", "--config",
                          recipe(tmp_path, tiny_text, "two", 2)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    moved = [k for k in a if "lora_B" in k and a[k].abs().max() > 0]
    assert moved, "training changed nothing: the comparison would prove nothing"
    logs = {run: [json.loads(line) for line in (tmp_path / run / "loss.jsonl").read_text().splitlines()]
            for run in ("one", "two")}
    assert len(logs["two"]) == 3  # one writer: each step logged once, not once per process
    # the same loss and the same gradient norm at every step (Adam would hide a gradient scaled by the process
    # count in the weights; the norm shows it), then the same adapter up to float summation order
    for r1, r2 in zip(logs["one"], logs["two"], strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=2e-3) and r2["grad_norm"] == pytest.approx(
            r1["grad_norm"], rel=2e-3), (r1, r2)
    # Adam moves a weight whose gradient is ~0 by ±lr whatever the sign noise, so compare whole tensors
    worst = max(((a[k] - b[k]).norm() / a[k].norm()).item() for k in a)
    assert worst < 0.01, worst  # 0.1% measured


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# accelerate launch --config_file configs/accelerate/"), path
        config = load_config_from_file(str(path))
        assert config.mixed_precision in ("bf16", "no"), path  # never fp16: Gemma 3n overflows in it
        if config.fsdp_config:
            assert config.fsdp_config["fsdp_auto_wrap_policy"] == "NO_WRAP"  # no unit per decoder layer
