"""MatFormer slicing and elastic inference on a tiny random E4B-shaped Gemma 3n (krishna_ai.training.tiny).

The tiny parent has E4B's structure (35 layers, 15 KV-shared, FFN 256 everywhere), so the published
configs apply to it in proportion (e2b: FFN 128, layers 20-24 skipped). The parent also stores K/V
projections for its KV-shared layers, as Google's E4B checkpoint does.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from krishna_ai.cli.main import main
from krishna_ai.core.errors import ConfigError
from krishna_ai.matformer import ParentShape, load_slice_config, plan_slice, resolve, shards, slice_checkpoint
from krishna_ai.matformer.elastic import restore_full, switch_slice

E2B_SKIP = [20, 21, 22, 23, 24]
TOWERS = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(folder, cls_name="Gemma3nForCausalLM"):
    import transformers

    model, info = getattr(transformers, cls_name).from_pretrained(folder, dtype=torch.float32,
                                                                  output_loading_info=True)
    return model.eval(), info


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _add_shared_kv(folder: Path) -> None:
    """Store k/v projections and k_norm for the KV-shared layers, as the real E4B checkpoint does."""
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    n, shared, h = text["num_hidden_layers"], text["num_kv_shared_layers"], text["hidden_size"]
    kv, head = text["num_key_value_heads"] * text["head_dim"], text["head_dim"]
    prefix = "model.language_model." if "text_config" in config else "model."
    extra, gen = {}, torch.Generator().manual_seed(0)  # the same values in every parent
    for i in range(n - shared, n):
        base = f"{prefix}layers.{i}.self_attn."
        for name, shape in (("k_proj.weight", (kv, h)), ("v_proj.weight", (kv, h)), ("k_norm.weight", (head,))):
            extra[base + name] = torch.randn(shape, generator=gen).bfloat16()
    save_file(extra, folder / "model-kv-shared.safetensors", metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] |= dict.fromkeys(extra, "model-kv-shared.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))




@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """Three views of one tiny random E4B: multimodal, text-only (model.layers.N) and text-only as saved by
    transformers 4.53-4.57 (model.language_model.* with the misnamed per-layer projection: notebook bug 3)."""
    from krishna_ai.training.tiny import build_tiny_gemma3n

    root = tmp_path_factory.mktemp("matformer")
    mm = build_tiny_gemma3n(root / "parent-mm", seed=1)
    _add_shared_kv(mm)
    from transformers import Gemma3nForCausalLM

    loaded, _ = _load(mm)
    text_model = Gemma3nForCausalLM(loaded.config).to(torch.bfloat16)  # a fresh one saves the 5.x names
    text_model.load_state_dict(loaded.state_dict())
    text_model.save_pretrained(root / "parent-text", max_shard_size="10MB")
    _add_shared_kv(root / "parent-text")
    old = root / "parent-old-text"
    old.mkdir()
    (old / "config.json").write_text((root / "parent-text" / "config.json").read_text())
    tensors = {}
    for f in sorted((root / "parent-text").glob("*.safetensors")):
        with safe_open(f, "pt") as handle:
            tensors |= {k.replace("model", "model.language_model"): handle.get_tensor(k) for k in handle.keys()}
    assert "model.language_model.per_layer_model.language_model_projection.weight" in tensors
    save_file(tensors, old / "model.safetensors", metadata={"format": "pt"})
    return {"mm": mm, "text": root / "parent-text", "old": old, "root": root}


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(3, 500, (1, 12))


@pytest.fixture(scope="module")
def e2b(parents):
    out = parents["root"] / "child-e2b"
    report = slice_checkpoint(parents["mm"], out, "e2b", max_shard_size="20MB", progress=False)
    return out, report


@pytest.fixture(scope="module")
def loaded():
    """Models loaded once per module (the CPU is shared: every load and forward pass counts)."""
    cache = {}

    def get(folder, cls_name="Gemma3nForConditionalGeneration"):
        key = (str(folder), cls_name)
        if key not in cache:
            cache[key] = _load(folder, cls_name)
        return cache[key]

    return get


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as handle:
            out |= {k: handle.get_tensor(k) for k in handle.keys()}
    return out


def test_identity_config_reproduces_parent_exactly(parents, loaded, ids, tmp_path):
    out = tmp_path / "same"
    slice_checkpoint(parents["mm"], out, "main-e4b", progress=False)
    child, info = _load(out, "Gemma3nForConditionalGeneration")
    assert not any(info.values())
    assert torch.equal(_logits(loaded(parents["mm"])[0], ids), _logits(child, ids))
    assert json.loads((out / "config.json").read_text()) == json.loads((parents["mm"] / "config.json").read_text())


def _reference_slice(model, kept: list[int], widths: list[int]):
    """The slice built by hand in memory: deep copy, drop layers, narrow FFNs, keep per-layer slots, edit config."""
    ref = copy.deepcopy(model)
    tm = ref.model.language_model
    cfg = tm.config
    n, p = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
    shared_from = n - cfg.num_kv_shared_layers
    cfg.num_kv_shared_layers -= sum(1 for i in range(shared_from, n) if i not in kept)
    cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.activation_sparsity_pattern = [cfg.activation_sparsity_pattern[i] for i in kept]
    cfg.intermediate_size, cfg.num_hidden_layers = widths, len(kept)
    layers = [tm.layers[i] for i in kept]
    for j, (layer, d) in enumerate(zip(layers, widths, strict=True)):
        mlp = layer.mlp
        mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[:d].clone())
        mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[:d].clone())
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, :d].clone())
        mlp.intermediate_size = d
        layer.layer_idx = layer.self_attn.layer_idx = j
        layer.self_attn.is_kv_shared_layer = cfg.kv_sharing_modes[j] == "reuse"
        layer.self_attn.store_full_length_kv = cfg.kv_sharing_modes[j] == "store"
    tm.layers = torch.nn.ModuleList(layers)
    cols = torch.cat([torch.arange(i * p, (i + 1) * p) for i in kept])
    tm.embed_tokens_per_layer.weight = torch.nn.Parameter(tm.embed_tokens_per_layer.weight[:, cols].clone())
    tm.per_layer_model_projection.weight = torch.nn.Parameter(tm.per_layer_model_projection.weight[cols].clone())
    return ref


def test_e2b_slice_equals_in_memory_reference(parents, loaded, e2b, ids):
    out, report = e2b
    parent = loaded(parents["mm"])[0]
    kept = [i for i in range(35) if i not in E2B_SKIP]
    expected = _logits(_reference_slice(parent, kept, [128] * 30), ids)
    got = _logits(loaded(out)[0], ids)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, _logits(parent, ids), atol=1e-3)  # the slice really changed the model

    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] == 30 and text["intermediate_size"] == [128] * 30
    assert text["num_kv_shared_layers"] == 10
    assert text["layer_types"] == [("full" if (i + 1) % 5 == 0 else "sliding") + "_attention" for i in kept]
    assert text["activation_sparsity_pattern"] == [0.95] * 10 + [0.0] * 20
    assert re.search(r'"activation_sparsity_pattern": \[[^\]]*0\.0\s*\]', (out / "config.json").read_text())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert "model.language_model.layers.29.self_attn.k_proj.weight" in index["weight_map"]  # stored, renumbered
    assert not any(".layers.30." in k for k in index["weight_map"])
    assert report.skipped == E2B_SKIP and [x["ffn"] for x in report.layers] == [128] * 30
    saved = json.loads((out / "slice_report.json").read_text())
    assert saved["params"]["total"] == index["metadata"]["total_parameters"] == report.params["total"]
    assert (out / "processor_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "TINY_GEMMA3N.md").exists()


def test_output_loads_clean_multimodal_and_text_only(parents, loaded, e2b, ids, tmp_path):
    out, _ = e2b
    assert not any(loaded(out)[1].values())  # multimodal class: nothing missing or unexpected
    text, info = _load(out)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert info["unexpected_keys"] and all(k.startswith(TOWERS) for k in info["unexpected_keys"])
    assert torch.allclose(_logits(loaded(out)[0], ids), _logits(text, ids), atol=1e-5)
    assert text.generate(ids[:, :6], max_new_tokens=3, do_sample=False, min_new_tokens=3).shape == (1, 9)

    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(out).tokenizer is not None

    # --text-only drops the towers: a Gemma3nForCausalLM checkpoint with nothing unexpected
    slice_checkpoint(parents["mm"], tmp_path / "text", "e2b", text_only=True, progress=False)
    only, info = _load(tmp_path / "text")
    assert not any(info.values()), info
    assert torch.allclose(_logits(only, ids), _logits(text, ids), atol=1e-5)


def test_text_only_parents_and_the_4_53_projection_name(parents, tmp_path, monkeypatch):
    slice_checkpoint(parents["mm"], tmp_path / "from-mm", "e2b", text_only=True, progress=False)
    expected = _tensors(tmp_path / "from-mm")
    assert "model.per_layer_model_projection.weight" in expected
    monkeypatch.setattr(shards, "CHUNK_BYTES", 3000)  # every 2-D tensor now streams in many row blocks
    for kind in ("text", "old"):
        slice_checkpoint(parents[kind], tmp_path / kind, "e2b", progress=False)
        got = _tensors(tmp_path / kind)
        assert got.keys() == expected.keys(), kind
        assert all(torch.equal(got[k], expected[k]) for k in got), kind
        assert not any(_load(tmp_path / kind)[1].values()), kind


def test_plan_reproduces_googles_published_e2b_numbers(capsys):
    report = plan_slice("e2b")
    assert report.params["text"] == 4_456_156_768
    assert report.params["effective"] == 1_905_495_648
    notebook_total = report.params["total"] + report.params["tied_head"]
    assert abs(notebook_total - 5_976_833_408) / 5_976_833_408 < 1e-4
    assert report.parent_params["effective"] == 3_980_491_248  # E4B: "3.98B effective"
    assert round(plan_slice("e1.96b-layer-level").params["effective"] / 1e9, 2) == 1.96

    assert main(["slice", "--plan", "--config", "e2b"]) == 0
    printed = capsys.readouterr().out
    for number in ("4,456,156,768", "1,905,495,648", "5,976,833,472", "(matches)", "skipped layers: 20-24"):
        assert number in printed


def test_validation_names_every_problem(tmp_path):
    e4b = ParentShape.from_config({"num_hidden_layers": 35, "intermediate_size": 16384, "num_kv_shared_layers": 15,
                                   "hidden_size_per_layer_input": 256})
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nskip_layers = [18, 19, 21, 21, 40]\nffn_widths = [8192, 32768, 0]\n')
    with pytest.raises(ConfigError) as err:
        resolve(load_slice_config(bad), e4b)
    message = str(err.value)
    assert "skip_layers: 21 is listed twice" in message
    assert "skip_layers: 40 is out of range (the parent has layers 0-34)" in message
    assert ("layer 18 cannot be skipped: it is the last sliding-attention layer that computes K/V, and the "
            "KV-shared layers 20, 22-23, 25-28, 30-33 take their KV cache from it") in message
    assert "layer 19 cannot be skipped: it is the last full-attention layer" in message
    assert "ffn_widths has 3 entries but 32 layers are kept (35 - 3 skipped)" in message
    assert "layer 1: FFN width 32768 is above the parent's 16384" in message
    assert "layer 2: FFN width 0 is not positive" in message

    tiny = ParentShape.from_config({"num_hidden_layers": 35, "intermediate_size": 256, "num_kv_shared_layers": 15,
                                    "hidden_size_per_layer_input": 64})
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"ffn_widths": [100] * 35, "relative_to": 16384}))
    with pytest.raises(ConfigError, match="width 100 of 16384 is not a whole number of the parent's 256"):
        resolve(load_slice_config(odd), tiny)
    assert resolve(load_slice_config("e2b"), tiny).widths == (128,) * 30  # named configs scale in proportion

    notebook_output = {"num_hidden_layers": 30, "intermediate_size": [8192] * 30, "num_kv_shared_layers": 10,
                       "layer_types": ["sliding_attention"] * 35, "hidden_size_per_layer_input": 256}
    with pytest.raises(ConfigError, match="layer_types has 35 entries"):
        ParentShape.from_config(notebook_output)  # a parent written by the notebook (bug 1) is refused

    typo = tmp_path / "typo.toml"
    typo.write_text('skipp_layers = [20]\nffn_widths = "wide"\n')
    with pytest.raises(ConfigError) as err:
        load_slice_config(typo)
    assert "unknown key 'skipp_layers'" in str(err.value) and "ffn_widths must be a list of integers" in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown slice config 'e3b'; known: .*e2b, .*main-e4b"):
        load_slice_config("e3b")


def test_a_child_transformers_cannot_load_is_refused_and_nothing_is_left(parents, tmp_path):
    """The loadability check runs in a child process while the bytes stream; its verdict still stops the run."""
    import shutil

    bad = tmp_path / "parent"
    shutil.copytree(parents["text"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] += 8  # the embedding in the shards no longer matches the config
    (bad / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "child"
    with pytest.raises(ConfigError, match=r"would not load in transformers:[\s\S]*embed_tokens.weight: shape"):
        slice_checkpoint(bad, out, "e2b", progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["parent"]


def test_interrupted_slice_leaves_nothing_that_looks_complete(parents, monkeypatch, tmp_path):
    real_chunks, calls = shards._chunks, []

    def failing(handle, plan):
        calls.append(plan.name)
        if len(calls) == 40:
            raise RuntimeError("disk full (injected)")
        yield from real_chunks(handle, plan)

    monkeypatch.setattr(shards, "_chunks", failing)
    out = tmp_path / "child"
    with pytest.raises(RuntimeError, match="injected"):
        slice_checkpoint(parents["mm"], out, "e2b", max_shard_size="5MB", progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    # Even a run killed before it can clean up leaves only a partial folder without config.json
    calls.clear()
    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError):
        slice_checkpoint(parents["mm"], out, "e2b", max_shard_size="5MB", progress=False)
    (left,) = tmp_path.iterdir()
    assert not out.exists() and left.name.startswith("child.partial-")
    assert not (left / "config.json").exists() and not (left / "model.safetensors.index.json").exists()


def test_live_switch_matches_disk_and_is_reversible(parents, loaded, e2b, ids, tmp_path):
    model = loaded(parents["mm"])[0]
    full = _logits(model, ids)
    resident = sum(p.numel() for p in model.model.language_model.parameters())
    try:
        report = switch_slice(model, "e2b")
        assert report.allocated_bytes == 30 * 8  # the kept-layer index; weights are views
        child = loaded(e2b[0])[0]
        assert torch.allclose(_logits(model, ids), _logits(child, ids), atol=1e-5, rtol=1e-5)
        assert report.active_params == sum(p.numel() for p in child.model.language_model.parameters())
        assert report.loaded_params == resident
    finally:
        restore_full(model)
    assert torch.equal(_logits(model, ids), full)

    # a custom mix: skip a layer that computes its own K/V (renumbers the cache) and narrow unevenly
    custom = tmp_path / "custom.toml"
    widths = [64, 256, 128, 192] * 8
    custom.write_text(f"skip_layers = [3, 21, 33]\nffn_widths = {widths}\n")
    slice_checkpoint(parents["text"], tmp_path / "custom", custom, progress=False)
    sliced, _ = _load(tmp_path / "custom")
    live, _ = _load(parents["text"])
    switch_slice(live, custom)
    assert torch.allclose(_logits(live, ids), _logits(sliced, ids), atol=1e-5, rtol=1e-5)
    prompt = ids[:, :6]
    assert torch.equal(live.generate(prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4),
                       sliced.generate(prompt, max_new_tokens=4, do_sample=False, min_new_tokens=4))
    switch_slice(live, None)
    assert live.config.num_hidden_layers == 35 and len(live.model.layers) == 35


def test_slice_cli(parents, tmp_path, capsys):
    out = tmp_path / "cli-child"
    assert main(["slice", "--src", str(parents["mm"]), "--out", str(out), "--config", "e2.54b-layer-level",
                 "--max-shard-size", "20MB"]) == 0
    printed = capsys.readouterr().out
    assert "slice e2.54b-layer-level" in printed and "skipped layers: none" in printed
    assert json.loads((out / "config.json").read_text())["text_config"]["intermediate_size"][4] == 256
    assert main(["slice", "--src", str(parents["mm"]), "--out", str(out), "--config", "e2b"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["slice", "--plan", "--config", "nope"]) == 2
    assert "known: " in capsys.readouterr().err
    assert main(["slice", "--plan", "--src", str(parents["mm"]), "--config", "e2b", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["skipped"] == E2B_SKIP and plan["output"] is None
    assert main(["slice", "--list"]) == 0
    assert "e2b" in capsys.readouterr().out


def test_live_switch_refuses_wrapped_ffns_and_leaves_the_model_untouched():
    from transformers import Gemma3nForCausalLM

    from krishna_ai.matformer import SliceConfig
    from krishna_ai.matformer.elastic import current_slice
    from krishna_ai.training.tiny import tiny_text_config

    model = Gemma3nForCausalLM(tiny_text_config(layers=5)).eval()
    half = SliceConfig("half", (128,) * 5)
    report = switch_slice(model, half)
    assert report.allocated_bytes == 0 and current_slice(model) == "half"
    assert report.active_params == report.loaded_params - 5 * 3 * 64 * 128
    restore_full(model)
    model.model.layers[2].mlp.up_proj = torch.nn.Sequential(model.model.layers[2].mlp.up_proj)  # e.g. a LoRA wrapper
    with pytest.raises(ConfigError, match="needs plain nn.Linear projections, found Sequential"):
        switch_slice(model, half)
    assert current_slice(model) is None and model.config.intermediate_size == [256] * 5
