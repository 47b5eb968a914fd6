"""Fine-tuning on the tiny E4B-shaped Gemma 3n: LoRA on the language model only, images, QLoRA on CPU,
and the user's "fine-tune then slice" flow: train on E4B, merge, slice to E2B, evaluate both."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from krishna_ai.cli.main import main as cli
from krishna_ai.training.config import TrainConfig
from krishna_ai.training.run import train as main
from krishna_ai.training.sft import build_model

pytestmark = pytest.mark.slow

ROWS = [("What is courage?", "Partha, courage is acting while afraid."),
        ("How do I rest?", "Partha, rest between two duties."),
        ("Why do I fail?", "Partha, failure teaches."),
        ("What is patience?", "Partha, patience carves stone.")]


@pytest.fixture
def text_data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in ROWS))
    return path


def recipe(model, data, out, **kw):
    base = {"model": str(model), "data": str(data), "output_dir": str(out), "max_steps": 6, "batch_size": 2,
            "grad_accum": 1, "save_steps": 3, "learning_rate": 5e-3, "lora": {"r": 8, "alpha": 16},
            "gradient_checkpointing": False, "dtype": "fp32", "seed": 5}
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_lora_lands_only_on_the_language_model(tiny_dir, text_data, tmp_path, one_thread):
    model, _, processor = build_model(recipe(tiny_dir, text_data, tmp_path / "r"))
    assert processor is not None  # multimodal checkpoint: trained through its processor's chat template
    lora = [n for n, _ in model.named_modules() if n.endswith(".lora_A")]
    assert lora
    assert all(".language_model." in n for n in lora)
    assert not any(re.search(r"audio|vision", n) for n in lora)
    assert {n.split(".")[-2] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    # the turn markers' rows of the text embedding are the only non-LoRA trainables
    assert all(".language_model.embed_tokens." in n for n in trainable if "trainable_tokens" in n)


def test_training_lowers_loss_on_tiny_gemma3n(tiny_dir, text_data, tmp_path, one_thread):
    # the whole set in every step, so the per-step losses are comparable
    main(recipe(tiny_dir, text_data, tmp_path / "run", batch_size=4, learning_rate=2e-2), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses


def test_image_conversations_train(tiny_dir, tmp_path, one_thread):
    rng = np.random.default_rng(1)
    for label, colour in (("Common_Rust", (150, 80, 30)), ("Healthy", (40, 150, 40))):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.clip(rng.normal(colour, 20, size=(48, 48, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = recipe(tiny_dir, tmp_path / "imgs", tmp_path / "run", data_format="image_folder", persona="maize",
                 max_steps=2, max_seq_length=512)
    summary = main(cfg, progress=False)
    assert summary["steps"] == 2 and summary["examples"] == 4


def test_qlora_step_on_cpu(tiny_dir, text_data, tmp_path, one_thread):
    pytest.importorskip("bitsandbytes")
    summary = main(recipe(tiny_dir, text_data, tmp_path / "q", quantization="4bit", max_steps=2), progress=False)
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "q" / "adapter" / "adapter_model.safetensors"))
    assert weights and all(".language_model." in k for k in weights)


def test_finetune_merge_slice_eval(tiny_dir, text_data, tmp_path, one_thread):
    """The documented flow, end to end: train on E4B-shaped, merge, slice to E2B-shaped, eval side by side."""
    run = tmp_path / "run"
    main(recipe(tiny_dir, text_data, run, max_steps=3), progress=False)
    merged, child = tmp_path / "merged-e4b", tmp_path / "sliced-e2b"
    assert cli(["merge", "--base", str(tiny_dir), "--adapter", str(run / "adapter"), "--out", str(merged),
                "--dtype", "fp32"]) == 0
    assert cli(["slice", "--src", str(merged), "--out", str(child), "--config", "e2b"]) == 0
    cfg = json.loads((child / "config.json").read_text())["text_config"]
    assert cfg["num_hidden_layers"] == 30 and cfg["intermediate_size"] == [128] * 30
    questions = tmp_path / "q.txt"
    questions.write_text("What is courage?\nHow do I rest?\n")
    out = tmp_path / "eval.json"
    # --scope off: both questions reach the models (this tests the training flow; Krishna's gate, refitted on troubles
    # typed as people type them, now turns "How do I rest?" away: README "Troubles as people type them")
    assert cli(["eval", "--persona", "krishna", "--model", str(merged), "--model", str(child),
                "--questions", str(questions), "--max-new-tokens", "6", "--temperature", "0",
                "--scope", "off", "--json", str(out)]) == 0
    models = json.loads(out.read_text())["models"]
    assert [m["name"] for m in models] == [str(merged), str(child)]
    for m in models:
        assert m["n"] == 2 and m["compliance"] == sum(r["ok"] for r in m["replies"]) / 2
        assert all(r["finish_reason"] in ("end_of_turn", "max_tokens") and r["reply"] for r in m["replies"])
    # the merged parent differs from the untouched base: the adapter is in its weights
    from safetensors import safe_open

    def first_q(folder):
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    if k.endswith("layers.0.self_attn.q_proj.weight"):
                        return h.get_tensor(k).float()

    assert not torch.allclose(first_q(merged), first_q(tiny_dir))
