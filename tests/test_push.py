"""`push`: the staged upload folder and its model card (dry run), and the errors without token or network."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import yaml
from safetensors.torch import save_file

from krishna_ai.cli.main import main as cli


@pytest.fixture
def merged(tmp_path):
    """A folder shaped like `merge`'s output (weights are a stand-in: push never loads them)."""
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text",
                                                    "architectures": ["Gemma3ForCausalLM"]}))
    save_file({"w": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "merge_info.json").write_text(json.dumps({"base": "light", "adapter": "runs/x/adapter"}))
    (folder / "model.safetensors.partial-12").write_text("junk")  # never uploaded
    (folder / "checkpoint-10").mkdir()
    return folder


@pytest.fixture
def eval_json(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"persona": "krishna", "questions": "data/krishna/heldout.jsonl", "models": [
        {"name": "light", "n": 50, "compliance": 0.12, "accuracy": None, "rules": {}},
        {"name": "light@runs/x/adapter", "n": 50, "compliance": 0.64, "accuracy": None, "rules": {}}]}))
    return path


def front_matter(card):
    head, sep, body = card.removeprefix("---\n").partition("\n---\n")
    assert sep, card[:200]
    return yaml.safe_load(head), body


def test_dry_run_writes_the_exact_upload_folder(merged, eval_json, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# python -m krishna_ai train --config recipe.yaml\nmodel: light\npersona: krishna\n")
    out = tmp_path / "upload"
    assert cli(["push", "--model", str(merged), "--repo", "someone/krishna-light", "--dry-run", "--out", str(out),
                "--eval", str(eval_json), "--recipe", str(recipe)]) == 0
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "merge_info.json",
                                                      "model.safetensors", "tokenizer.json"]
    meta, body = front_matter((out / "README.md").read_text())
    assert meta["license"] == "gemma" and meta["base_model"] == "google/gemma-3-270m"
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert {"gemma", "gemma3", "krishna-ai", "persona-krishna"} <= set(meta["tags"])
    assert "**Krishna** (`krishna`)" in body and "Address the seeker as Partha" in body
    assert "| light | 50 | 12% | – |" in body and "| light@runs/x/adapter | 50 | 64% | – |" in body
    assert "# python -m krishna_ai train --config recipe.yaml" in body
    assert 'AutoModelForCausalLM.from_pretrained("someone/krishna-light")' in body
    assert "python app.py --model someone/krishna-light --persona krishna" in body
    assert "https://ai.google.dev/gemma/terms" in body
    # a second dry run into the same folder is refused rather than mixing two uploads
    assert cli(["push", "--model", str(merged), "--repo", "someone/x", "--dry-run", "--out", str(out)]) == 2


def test_adapter_card_and_default_recipe(tmp_path):
    from krishna_ai.runtime.light import light_dir
    from krishna_ai.ship.push import push

    run = tmp_path / "run"
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(light_dir()), "r": 8}))
    save_file({"a": torch.zeros(1)}, str(adapter / "adapter_model.safetensors"))
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": "light", "persona": "maize"}))
    folder, info = push(adapter, "someone/maize-lora", dry_run=True, out=tmp_path / "up")
    meta, body = front_matter((folder / "README.md").read_text())
    assert info["kind"] == "adapter" and meta["base_model"] == "google/gemma-3-270m"
    assert meta["library_name"] == "peft" and {"lora", "peft", "persona-maize"} <= set(meta["tags"])
    assert "AutoPeftModelForCausalLM" in body and "temperature=0.3" in body
    assert "python app.py --model light --adapter adapter --persona maize" in body


def test_without_token_nothing_is_uploaded(merged, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert cli(["push", "--model", str(merged), "--repo", "someone/krishna-light"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token, so nothing was uploaded" in err and "hf auth login" in err


def test_without_network_the_error_says_so(merged, monkeypatch, capsys):
    import huggingface_hub

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert cli(["push", "--model", str(merged), "--repo", "someone/krishna-light"]) == 2
    err = capsys.readouterr().err
    assert "could not reach the Hugging Face Hub" in err and "check the network" in err


def test_input_errors(merged, tmp_path, capsys):
    assert cli(["push", "--model", str(tmp_path / "nope"), "--repo", "a/b", "--dry-run"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert cli(["push", "--model", str(merged), "--repo", "just-a-name", "--dry-run"]) == 2
    assert "give OWNER/NAME" in capsys.readouterr().err
    assert cli(["push", "--model", str(tmp_path), "--repo", "a/b", "--dry-run"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert cli(["push", "--model", str(merged), "--repo", "a/b", "--dry-run", "--eval", str(tmp_path / "x.json")]) == 2
    assert "--eval" in capsys.readouterr().err
