"""Gemma 3n through the app's own code path, on a tiny random E4B-shaped checkpoint built once per session.

No Gemma 3n weights are reachable here, so `krishna_ai.training.tiny` builds one from the real transformers
config classes; everything else (load_model, 4-bit, adapter merge, processor, HFEngine, Studio, the
Gradio server) is the code that serves `google/gemma-3n-*`.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from krishna_ai.core.errors import ImageError
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import build_messages
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.hf import HFEngine
from krishna_ai.runtime.load import load_engine as default_loader
from krishna_ai.runtime.weights import SKIP_4BIT, load_model
from krishna_ai.studio.service import Studio
from krishna_ai.training.tiny import IMAGE_SOFT_TOKENS, SPECIAL_TOKENS
from tests.conftest import model_written_personas

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
LORA_TARGETS = r".*language_model.*\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"
E4B_LAYER_TYPES = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(35)]




@pytest.fixture(scope="module")
def fp32_engine(tiny_dir) -> HFEngine:
    return HFEngine(load_model(str(tiny_dir), dtype="float32", quantize="none"))


@pytest.fixture(scope="module")
def leaf(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "leaf.jpg"
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal((60, 140, 50), 25, size=(96, 128, 3)), 0, 255).astype("uint8")
    Image.fromarray(pixels).save(path, quality=90)
    return path


def _messages(persona_id: str = "maize", text: str = "What is wrong with this leaf?", image=None):
    persona = load_personas()[persona_id]
    return build_messages(persona, [], text, image=image)


def _stream(engine: HFEngine, messages) -> list[str]:
    reply = engine.stream(messages, GREEDY)
    chunks = list(reply)
    assert reply.stats.tokens >= 2 and reply.text == "".join(chunks)
    return chunks


# -- the checkpoint -------------------------------------------------------------------------------
def test_checkpoint_is_e4b_shaped_and_loads_without_key_mismatch(tiny_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, Gemma3nForConditionalGeneration

    text = AutoConfig.from_pretrained(tiny_dir).text_config
    assert text.num_hidden_layers == 35 and text.num_kv_shared_layers == 15
    assert text.layer_types == E4B_LAYER_TYPES
    assert text.intermediate_size == [256] * 35
    assert text.activation_sparsity_pattern == [0.95] * 10 + [0.0] * 25
    assert text.altup_num_inputs == 4 and text.laurel_rank % 64 == 0 and text.hidden_size_per_layer_input % 64 == 0
    assert text.vocab_size == 262_400 and text.vocab_size_per_layer_input < 262_144

    model, info = AutoModelForImageTextToText.from_pretrained(tiny_dir, output_loading_info=True)
    assert isinstance(model, Gemma3nForConditionalGeneration)
    assert {k: v for k, v in info.items() if v} == {}, info
    assert model.dtype == torch.bfloat16

    shards = sorted(tiny_dir.glob("*.safetensors"))
    assert len(shards) >= 2 and not list(tiny_dir.glob("*.bin"))
    size_mb = sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 100
    assert json.loads((tiny_dir / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    assert not list(tiny_dir.parent.glob("*.partial-*"))  # the atomic write left nothing behind


def test_skip_4bit_covers_exactly_the_linears_bitsandbytes_cannot_quantise(tiny_dir):
    """bitsandbytes' CPU 4-bit needs out_features % 32 == 0 and in_features >= 64: the modules
    that break it, in the real E4B and in the tiny model, are exactly `SKIP_4BIT` (plus lm_head,
    kept in full precision on purpose)."""
    from transformers import AutoConfig, Gemma3nConfig, Gemma3nForConditionalGeneration

    def unquantisable(model) -> set[str]:
        return {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and (m.out_features % 32 or m.in_features < 64)}

    with torch.device("meta"):
        real = Gemma3nForConditionalGeneration(Gemma3nConfig())  # E4B: the config defaults
        tiny = Gemma3nForConditionalGeneration(AutoConfig.from_pretrained(tiny_dir))
    assert unquantisable(real) == unquantisable(tiny) == set(SKIP_4BIT) - {"lm_head"}
    assert not any(isinstance(m, torch.nn.Linear) for m in real.model.vision_tower.modules())


def test_processor_renders_the_gemma3n_template_with_image_soft_tokens(fp32_engine, leaf):
    from transformers import Gemma3nProcessor

    from krishna_ai.core.images import load_image

    processor = fp32_engine.loaded.processor  # AutoProcessor.from_pretrained(folder), offline
    assert isinstance(processor, Gemma3nProcessor)
    tok = processor.tokenizer
    assert len(tok) == 262_400
    assert {key: tok.convert_tokens_to_ids(text) for key, (text, _) in SPECIAL_TOKENS.items()} == {
        key: token_id for key, (_, token_id) in SPECIAL_TOKENS.items()}
    messages = _messages(image=load_image(leaf))
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert "<image_soft_token>What is wrong with this leaf?" in text  # system text opens the user turn
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == 2 and ids[1] != 2  # one BOS
    start = ids.index(255_999)
    assert ids[start:start + IMAGE_SOFT_TOKENS + 2] == [255_999] + [262_145] * IMAGE_SOFT_TOKENS + [262_144]
    assert ids.count(262_145) == IMAGE_SOFT_TOKENS
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)


# -- the engine: fp32, 4-bit, text-only ------------------------------------------------------------
def test_fp32_engine_streams_text_and_image_replies(fp32_engine, leaf):
    from krishna_ai.core.images import load_image

    loaded = fp32_engine.loaded
    assert loaded.family == "gemma3n" and loaded.multimodal and not loaded.quantized
    assert loaded.model.dtype == torch.float32 and loaded.context_length == 32_768
    assert len(_stream(fp32_engine, _messages("krishna", "I failed my exam."))) >= 2
    assert len(_stream(fp32_engine, _messages(image=load_image(leaf)))) >= 2


def test_4bit_engine_on_cpu_streams_text_and_image_replies(tiny_dir, leaf):
    import bitsandbytes as bnb

    from krishna_ai.core.images import load_image

    engine = HFEngine(load_model(str(tiny_dir), quantize="4bit", device="cpu"))
    model = engine.loaded.model
    assert engine.loaded.quantized and engine.loaded.multimodal
    quantised = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any(".mlp.gate_proj" in n for n in quantised) and any(".self_attn.q_proj" in n for n in quantised)
    assert not any(skip in n for n in quantised for skip in SKIP_4BIT)
    assert len(_stream(engine, _messages("krishna", "I failed my exam."))) >= 2
    assert len(_stream(engine, _messages(image=load_image(leaf)))) >= 2


def test_text_only_load_of_the_multimodal_checkpoint(tiny_dir, fp32_engine, leaf):
    from transformers import Gemma3nForCausalLM

    loaded = load_model(str(tiny_dir), text_only=True, dtype="float32", quantize="none")
    assert isinstance(loaded.model, Gemma3nForCausalLM) and loaded.processor is None and not loaded.multimodal
    engine = HFEngine(loaded)
    messages = _messages("krishna", "Who are you?")
    with torch.no_grad():
        text_logits = loaded.model(**engine.encode(messages)).logits
        full_logits = fp32_engine.loaded.model(**fp32_engine.encode(messages)).logits
    torch.testing.assert_close(text_logits, full_logits)
    with pytest.raises(ImageError, match="reads text only"):
        engine.stream(_messages(image=Image.open(leaf)), GREEDY)


# -- LoRA adapters merged at load -------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory):
    """A LoRA adapter saved by peft (random non-zero weights), and peft's own merge of it (fp32)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3nForConditionalGeneration

    base = Gemma3nForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    names = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
    assert names and all(".language_model." in n for n in names)  # never the audio conformer
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(out)
    return out, peft_model.merge_and_unload().eval()


def test_adapter_merged_at_load_equals_peft_merge_and_unload(tiny_dir, adapter, fp32_engine):
    adapter_dir, reference = adapter
    loaded = load_model(str(tiny_dir), adapter=adapter_dir, dtype="float32", quantize="none")
    assert loaded.adapter == str(adapter_dir) and loaded.multimodal
    inputs = HFEngine(loaded).encode(_messages("krishna", "Tell me about duty."))
    with torch.no_grad():
        merged = loaded.model(**inputs).logits
        expected = reference(**inputs).logits
        unadapted = fp32_engine.loaded.model(**inputs).logits
    assert torch.allclose(merged, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged, unadapted, atol=1e-2)  # the adapter really changes the model


def test_4bit_with_adapter_merges_in_bf16_into_a_cache_first(tiny_dir, adapter, fp32_engine, tmp_path,
                                                              monkeypatch):
    from safetensors.torch import load_file

    from krishna_ai.runtime.weights import merged_cache_dir

    adapter_dir, reference = adapter
    monkeypatch.setattr("krishna_ai.runtime.weights.cache_root", lambda: tmp_path)
    loaded = load_model(str(tiny_dir), adapter=adapter_dir, quantize="4bit", device="cpu")
    cache = merged_cache_dir(str(tiny_dir), adapter_dir)
    assert loaded.quantized and loaded.notes == [f"adapter merged in bf16 and cached at {cache}"]
    assert list((tmp_path / "merged").iterdir()) == [cache]  # where later 4-bit loads find it
    cached = {k: v for shard in cache.glob("*.safetensors") for k, v in load_file(shard).items()}
    base = fp32_engine.loaded.model.state_dict()
    for name in ("model.language_model.layers.3.mlp.down_proj.weight",
                 "model.language_model.layers.30.self_attn.q_proj.weight"):
        merged, expected = cached[name], reference.state_dict()[name]
        assert merged.dtype == torch.bfloat16
        error = (merged.float() - expected).abs().max()
        assert error < 0.02 * expected.abs().max() < (expected - base[name]).abs().max()
    assert len(_stream(HFEngine(loaded), _messages("krishna", "Hello"))) >= 1


# -- Studio and the Gradio server -----------------------------------------------------------------
def test_maize_persona_takes_a_leaf_photo_on_the_gemma3n_tier(fp32_engine, leaf):
    studio = Studio(load_personas(), loader=lambda spec, adapter: fp32_engine)
    started = studio.start_reply("maize", [], "Which disease is this?", image=leaf,
                                 temperature=0.0, max_new_tokens=6)
    reply = started.reply
    assert started.persona.accepts_images and len(list(reply)) >= 2
    assert reply.stats.prompt_tokens > IMAGE_SOFT_TOKENS
    updates = list(studio.chat("maize", [], "", image=str(leaf), temperature=0.0, max_new_tokens=4))
    assert updates[-1].done and updates[-1].stats.tokens >= 1
    with pytest.raises(ImageError, match="does not take images"):
        studio.start_reply("krishna", [], "what is this?", image=leaf)


def test_the_pixels_change_the_reply(fp32_engine, tmp_path):
    """The image really reaches the model: greedy replies to three different pictures are not all the same,
    and one picture twice gives one reply. (A pipeline that dropped the image would answer all three alike.)"""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = {"black": Image.new("RGB", (64, 64), (0, 0, 0)), "white": Image.new("RGB", (64, 64), (255, 255, 255)),
                "noise": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))}
    studio = Studio(load_personas(), loader=lambda spec, adapter: fp32_engine)

    def reply(name: str) -> str:
        path = tmp_path / f"{name}.png"
        pictures[name].save(path)
        return list(studio.chat("maize", [], "Which disease is this?", image=str(path), temperature=0.0,
                                max_new_tokens=8))[-1].text

    replies = {name: reply(name) for name in pictures}
    assert len(set(replies.values())) > 1, replies
    assert reply("noise") == replies["noise"]


def _bad_images(folder) -> list[tuple]:
    """A small corpus of uploads the app must refuse, with the message each must give."""
    folder.mkdir()
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    truncated = folder / "truncated.png"
    Image.effect_noise((64, 64), 40).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is not a picture of a maize leaf\n" * 20)
    animated = folder / "anim.gif"
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    huge = folder / "huge.png"
    Image.new("L", (7000, 7000)).save(huge)
    return [(corrupt, "not an image this app can read"), (truncated, "truncated or corrupt"),
            (empty, r"is empty \(0 bytes\)"), (text, "not an image this app can read"),
            (animated, r"is animated \(3 frames\)"), (huge, "7000×7000 = 49,000,000 pixels; the limit")]


def _launch(demo):
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_port=port, quiet=True)
    return Client(f"http://127.0.0.1:{port}/", verbose=False)


def test_chat_api_on_the_tiny_tier_streams_image_replies_and_rejects_bad_images(tiny_dir, leaf, tmp_path,
                                                                                scripted):
    """Through a real server: the default loader on the tiny folder (bf16, the app's own path), the
    light tier scripted, switched per request without a restart; bad uploads give a clear error."""
    from gradio_client import handle_file

    from krishna_ai.studio.ui import build_demo

    light = scripted(["Partha, ", "act."], name="light")
    loads: list[str] = []

    def loader(spec, adapter):
        loads.append(spec)
        return light if spec == "light" else default_loader(spec, adapter)

    studio = Studio(model_written_personas(), default_model=str(tiny_dir), loader=loader)
    demo = build_demo(studio, persona="maize")
    client = _launch(demo)
    try:
        ready = client.predict(str(tiny_dir), api_name="/on_model")
        assert "reads images" in ready

        def ask(image, model=None) -> list[str]:
            job = client.submit("What disease is this?", "maize", handle_file(str(image)), 0.0, None, None, 6, model,
                                api_name="/chat")
            chunks = list(job)
            job.result()  # an error ends the stream quietly; result() raises it
            return chunks

        chunks = ask(leaf)
        assert len(chunks) >= 2 and all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 1))

        for path, match in _bad_images(tmp_path / "bad"):
            with pytest.raises(Exception, match=match):
                ask(path)
            assert client.predict("Write a poem about the sea", "pet", None, 0.0, None, None, 4, "light",
                                  api_name="/chat") == "Partha, act."

        cmyk = tmp_path / "cmyk.jpg"
        Image.new("CMYK", (80, 80), (180, 20, 200, 10)).save(cmyk)
        deep = tmp_path / "deep.png"
        Image.fromarray(np.linspace(0, 65535, 80 * 80, dtype=np.uint16).reshape(80, 80)).save(deep)
        for good in (cmyk, deep):
            assert ask(good)[-1]

        # the light tier (text only) refuses the image; the Gemma 3n folder answers again afterwards
        with pytest.raises(Exception, match="reads text only"):
            ask(leaf, "light")
        assert ask(leaf, str(tiny_dir))[-1]
        # the light tier was loaded once per persona adapter (pet's, maize's), the tiny folder once
        assert loads[0] == str(tiny_dir) and loads[1:] == ["light", "light"] and len(studio.loaded()) == 3
    finally:
        demo.close()


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_writes_a_text_only_checkpoint_that_load_model_reads(tmp_path, capsys):
    from transformers import Gemma3nForCausalLM

    from krishna_ai.cli.main import main

    out = tmp_path / "tiny-text"
    assert main(["tiny-gemma3n", "--out", str(out), "--text-only", "--layers", "5"]) == 0
    assert str(out) in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3n_text" and config["num_hidden_layers"] == 5
    assert not (out / "preprocessor_config.json").exists() and not (out / "processor_config.json").exists()

    loaded = load_model(str(out), quantize="none")
    assert isinstance(loaded.model, Gemma3nForCausalLM) and not loaded.multimodal
    assert len(_stream(HFEngine(loaded), _messages("krishna", "Hello"))) >= 1
    # a folder that is not an earlier tiny build is never overwritten
    assert main(["tiny-gemma3n", "--out", str(tmp_path), "--text-only"]) == 2
    assert "not an earlier tiny Gemma 3n build" in capsys.readouterr().err


# -- GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_4bit_engine_on_cuda(tiny_dir, leaf):
    from krishna_ai.core.images import load_image

    loaded = load_model(str(tiny_dir), quantize="auto")  # auto = 4-bit for Gemma 3n on CUDA
    assert loaded.quantized and loaded.model.device.type == "cuda"
    engine = HFEngine(loaded)
    assert len(_stream(engine, _messages("krishna", "I failed my exam."))) >= 2
    assert len(_stream(engine, _messages(image=load_image(leaf)))) >= 2


# -- live MatFormer switching through the engine ---------------------------------------------------
def test_live_slice_per_reply_matches_the_slice_on_disk(tiny_dir, fp32_engine, tmp_path):
    from krishna_ai.cli.main import main as cli
    from krishna_ai.core.errors import ConfigError

    msgs = _messages("krishna", "How do I stay calm?")
    live = fp32_engine.stream(msgs, GREEDY, slice="e2b")
    live_text = live.read()
    assert live.stats.slice == "e2b" and "allocated" in live.stats.switch_note
    full = fp32_engine.stream(msgs, GREEDY)  # the next reply without a slice runs the full model again
    full_text = full.read()
    assert full.stats.switch_note == "switched back to the full model"

    out = tmp_path / "e2b"
    assert cli(["slice", "--src", str(tiny_dir), "--out", str(out), "--config", "e2b"]) == 0
    disk = HFEngine(load_model(str(out), dtype="float32", quantize="none"))
    assert disk.stream(msgs, GREEDY).read() == live_text
    assert fp32_engine.stream(msgs, GREEDY).read() == full_text
    with pytest.raises(ConfigError, match="unknown"):
        fp32_engine.stream(msgs, GREEDY, slice="e9b")
