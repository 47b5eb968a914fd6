"""The llama.cpp backend on the packaged Gemma 3 270M GGUF (skipped when llama-cpp-python is not installed)."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from krishna_ai.core.errors import ConfigError, ImageError, ModelUnavailable
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import build_messages
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.tiers import is_gguf_spec
from krishna_ai.runtime.weights import load_model
from tests.conftest import REPO

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


def test_gguf_specs_are_recognised_and_refused_by_transformers(tmp_path):
    assert is_gguf_spec("light-gguf") and is_gguf_spec("models/x.Q4_K_M.GGUF") and not is_gguf_spec("light")
    with pytest.raises(ModelUnavailable, match="GGUF model.*llama.cpp"):
        load_model("light-gguf")


def test_thread_count_from_the_environment(monkeypatch):
    from krishna_ai.runtime.llamacpp import THREADS_ENV, default_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    cores = default_threads()
    assert cores >= 1
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_threads() == 1
    for bad in ("0", "two", "-3", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=rf"{THREADS_ENV}='{bad}'"):
            default_threads()


def test_an_adapter_needs_a_real_adapter_folder_and_the_light_tier(tmp_path):
    pytest.importorskip("llama_cpp")
    from krishna_ai.runtime.load import load_engine as default_loader

    with pytest.raises(ModelUnavailable, match="has no adapter_config.json"):
        default_loader("light-gguf", str(tmp_path))
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ModelUnavailable, match="merge.*export gguf"):
        default_loader(str(gguf), str(REPO / "adapters" / "krishna-light"))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    pytest.importorskip("llama_cpp")
    from krishna_ai.runtime.llamacpp import load_gguf

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(ModelUnavailable, match="not a GGUF file"):
        load_gguf(str(fake))
    with pytest.raises(ModelUnavailable, match="no GGUF file"):
        load_gguf(str(tmp_path / "missing.gguf"))


@pytest.fixture(scope="module")
def gguf_engine():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install -r requirements-llamacpp.txt)")
    from krishna_ai.runtime.llamacpp import load_gguf

    return load_gguf("light-gguf")


def test_loaded_model_describes_itself(gguf_engine):
    info = gguf_engine.info
    assert gguf_engine.name == "light-gguf" and info.family == "gemma3" and not info.multimodal
    assert info.backend == "llama.cpp" and not info.live_slices
    # EOS, <end_of_turn> and <start_of_turn>: a run-on second turn is never generated.
    assert info.context_length == 8192 and len(gguf_engine.stop_token_ids) == 3


def test_greedy_factual_continuation(gguf_engine):
    assert "Paris" in gguf_engine.complete("The Eiffel Tower is located in the city of", GREEDY).read()


def test_chat_streams_chunks_with_stats(gguf_engine):
    k = load_personas()["krishna"]
    msgs = build_messages(k, [], "I failed my exam. What now?")
    reply = gguf_engine.stream(msgs, SamplingParams(temperature=0.0, max_new_tokens=16))
    chunks = list(reply)
    assert len(chunks) >= 3 and "".join(chunks) == reply.text and "<end_of_turn>" not in reply.text
    s = reply.stats
    assert 1 <= s.tokens <= 16 and s.ttft_s is not None and 0 < s.ttft_s <= s.total_s and s.tokens_per_s > 0
    assert s.prompt_tokens == gguf_engine.count_tokens(msgs) > 50 and not s.stopped
    # greedy is deterministic, and generate_batch gives the same text
    again = gguf_engine.stream(msgs, SamplingParams(temperature=0.0, max_new_tokens=16)).read()
    assert again == reply.text
    assert [c.text for c in gguf_engine.generate_batch([msgs], SamplingParams(temperature=0.0, max_new_tokens=16))] == [
        again.strip()]


def test_sampling_is_seeded(gguf_engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    a = gguf_engine.complete("Once upon a time", params).read()
    gguf_engine.complete("The Eiffel Tower is", GREEDY).read()  # what the cache holds does not matter
    b = gguf_engine.complete("Once upon a time", params).read()
    assert a == b and a


def test_stop_ends_within_a_second(gguf_engine):
    reply = gguf_engine.complete("Write a long story about a river.", SamplingParams(temperature=0.0,
                                                                                     max_new_tokens=2000))
    next(reply)
    stopper = threading.Timer(0.2, reply.stop)  # as the UI's Stop does: from another thread
    stopper.start()
    t0 = time.perf_counter()
    list(reply)
    elapsed = time.perf_counter() - t0
    stopper.join()
    assert elapsed < 1.0 + 0.2, elapsed
    assert reply.stats.stopped and reply.stats.tokens < 1000


def test_closing_early_frees_the_model(gguf_engine):
    reply = gguf_engine.complete("Count from one to five hundred:", SamplingParams(temperature=0.0,
                                                                                   max_new_tokens=400))
    next(reply)
    reply.close()
    assert reply.stats.stopped
    # the lock is released: the next reply runs at once
    assert "Paris" in gguf_engine.complete("The Eiffel Tower is located in the city of", GREEDY).read()


def test_a_reused_prefix_gives_the_reply_an_empty_cache_gives(gguf_engine, monkeypatch):
    """The next prompt decodes only what differs from the cached one, and the reply is the same as from
    an empty cache, also where the shared part is longer than the 512-token sliding window and the
    cached prompt ran far past it (without llama.cpp's full SWA cache this reply is garbage)."""
    text = " ".join(f"Item {i}: the river number {i} flows past the village of town{i}." for i in range(70))
    shared = text[: len(text) // 2]
    first = shared + " Which river flows past town3? Answer:"
    other = text + " Now list the first item again:"
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    gguf_engine.complete("The Eiffel Tower is", GREEDY).read()  # the cache holds nothing of `first`
    fresh = gguf_engine.complete(first, params).read()
    assert gguf_engine.complete(other, params).read()  # its prompt overwrites the cache far past `shared`

    decoded: list[int] = []
    real_eval = gguf_engine.llm.eval
    monkeypatch.setattr(gguf_engine.llm, "eval", lambda tokens: (decoded.append(len(tokens)), real_eval(tokens)))
    again = gguf_engine.complete(first, params)
    assert again.read() == fresh and fresh.strip()
    prompt = again.stats.prompt_tokens
    assert prompt > 650 and len(gguf_engine.llm.tokenize(shared.encode())) > 600
    assert decoded[0] < prompt - 600, (decoded[0], prompt)  # the shared part was not decoded again


def test_text_only_and_no_live_slices(gguf_engine):
    from PIL import Image

    maize = load_personas()["maize"]
    with pytest.raises(ImageError, match="reads text only"):
        gguf_engine.stream(build_messages(maize, [], "what is this", image=Image.new("RGB", (8, 8))))
    with pytest.raises(ConfigError, match="cannot switch MatFormer slices"):
        gguf_engine.stream(build_messages(maize, [], "hello"), slice="e2b")


@pytest.mark.slow
def test_chat_endpoint_with_light_gguf(gguf_engine):
    import socket

    from gradio_client import Client

    from krishna_ai.runtime.load import load_engine as default_loader
    from krishna_ai.studio.service import Studio
    from krishna_ai.studio.ui import build_demo

    loaded: list[str] = []

    def loader(spec, adapter):  # the real dispatch, with the module's engine reused for light-gguf
        loaded.append(spec)
        return gguf_engine if spec == "light-gguf" else default_loader(spec, adapter)

    demo = build_demo(Studio(load_personas(), loader=loader))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = client.submit("I failed my exam. What should I do?", "krishna", None, 0.0, None, None, 24,
                            "light-gguf", api_name="/chat")
        chunks = list(job)
        assert loaded == ["light-gguf"] and len(chunks) >= 3  # the loader was asked once, with Krishna's adapter
        assert all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 1)) and chunks[-1].strip()
        with pytest.raises(Exception, match="cannot switch MatFormer slices"):
            client.predict("I failed my exam.", "krishna", None, 0.0, None, None, 8, "light-gguf", None, "e2b",
                           api_name="/chat")
    finally:
        demo.close()


def test_default_loader_dispatches_gguf_to_llama_cpp(gguf_engine):
    from krishna_ai.runtime.light import light_gguf
    from krishna_ai.runtime.llamacpp import LlamaCppEngine
    from krishna_ai.runtime.load import load_engine as default_loader

    engine = default_loader(str(light_gguf()), None)  # --model path/to/file.gguf
    assert isinstance(engine, LlamaCppEngine) and engine.name.endswith(".gguf")


def test_greedy_text_is_the_same_on_transformers_and_llama_cpp(gguf_engine, light_engine):
    """One prompt format, one model: the two engines tokenise a persona prompt to the same ids and agree
    on 40 greedy tokens (transformers runs the dequantised Q4_K_M weights in fp32)."""
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages

    msgs = build_messages(load_personas()["pet"], [], "Write a poem about the sea")
    assert gguf_engine.tokenize(msgs) == light_engine.encode(msgs)["input_ids"][0].tolist()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=40)
    fast, slow = gguf_engine.stream(msgs, greedy), light_engine.stream(msgs, greedy)
    assert fast.read() == slow.read() and fast.stats.tokens == slow.stats.tokens


def test_repetition_penalty_weighs_the_same_tokens_on_transformers_and_llama_cpp(gguf_engine, light_engine):
    """The penalty counts the reply's own tokens on both engines (llama.cpp's sampler never sees the
    prompt), so a persona's measured value means the same on `light` and `light-gguf`, and a reply may
    repeat the question's words."""
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages

    msgs = build_messages(load_personas()["pet"], [], "Write a poem about the sea")
    strong = SamplingParams(temperature=0.0, max_new_tokens=20, repetition_penalty=2.0)
    fast, slow = gguf_engine.stream(msgs, strong), light_engine.stream(msgs, strong)
    assert fast.read() == slow.read() and fast.stats.tokens == slow.stats.tokens


def _native_dry(engine, reply: list[int], multiplier: float) -> dict[int, float]:
    """llama.cpp's own DRY sampler (through llama-cpp-python's C binding) fed `reply`: {token: penalty}."""
    import ctypes

    import llama_cpp as lib

    from krishna_ai.core.sampling import DRY_ALLOWED_LENGTH, DRY_BASE, DRY_BREAKERS

    breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*[b.encode() for b in DRY_BREAKERS])
    sampler = lib.llama_sampler_init_dry(lib.llama_model_get_vocab(engine.llm.model), multiplier, DRY_BASE,
                                         DRY_ALLOWED_LENGTH, 64, breakers, len(DRY_BREAKERS))
    try:
        for token in reply:
            lib.llama_sampler_accept(sampler, token)
        n = engine.llm.n_vocab()
        data = (lib.llama_token_data * n)()
        for i in range(n):
            data[i].id = i
        lib.llama_sampler_apply(sampler, ctypes.byref(lib.llama_token_data_array(data=data, size=n, selected=-1,
                                                                                  sorted=False)))
        return {data[i].id: -data[i].logit for i in range(n) if data[i].logit != 0}
    finally:
        lib.llama_sampler_free(sampler)


@pytest.mark.parametrize("text", [
    "You are a modeler. You are a modeler. You are a",  # a sentence loop: the next "modeler" costs ~23 logits
    "a b c d a b c d a b c d a b c",
    "Keep scouting weekly and keep scouting weekly: and keep scouting",  # ':' breaks the match
    'He said "go now" and he said "go now" and he said',  # '"' too
    "x y z\nx y z\nx y",  # and a newline
    "one two three four one two three five one two three",  # two earlier matches: each next token weighed
    "Partha, the work is yours alone.",  # nothing repeats: no penalty
])
def test_dry_penalties_are_llama_cpps(gguf_engine, text):
    """`sampling.dry_penalties` (which the transformers engine and the llama.cpp engine's reply-only processor
    use) gives llama.cpp's own DRY penalties, breakers included, on real token sequences."""
    from krishna_ai.core.sampling import dry_penalties

    ids = list(gguf_engine.llm.tokenize(text.encode(), add_bos=False))
    assert len(ids) < 64  # inside the native sampler's window
    ours, native = dry_penalties(ids, gguf_engine.breakers(), 0.8), _native_dry(gguf_engine, ids, 0.8)
    assert ours.keys() == native.keys()
    assert all(ours[t] == pytest.approx(native[t], rel=1e-5) for t in ours)


@pytest.mark.parametrize("which", ["gguf", "transformers"])
def test_dry_stops_a_loop_on_both_engines(gguf_engine, light_engine, which):
    """The bare light model, greedy, loops on pet's prompt ("You are a modeler." again and again); DRY over
    the reply's tokens stops the loop on both engines. (Their texts part after the loop: once DRY bars the
    likeliest token, the Q4_K and bf16 weights pick different runners-up.)"""
    from krishna_ai.core.style import loop

    engine = gguf_engine if which == "gguf" else light_engine
    msgs = build_messages(load_personas()["pet"], [], "Write a poem about the sea")
    plain = engine.stream(msgs, SamplingParams(temperature=0.0, max_new_tokens=40)).read()
    assert plain.count("You are a modeler.") >= 3 and loop(plain) is not None
    text = engine.stream(msgs, SamplingParams(temperature=0.0, max_new_tokens=40, dry_multiplier=2.0)).read()
    assert text.startswith("You are a modeler.") and text.count("You are a modeler.") == 1


def test_dry_counts_only_the_reply(gguf_engine, light_engine):
    """Both engines' DRY processors skip the prompt: a reply may retell what its prompt (a card) says."""
    import numpy as np
    import torch

    from krishna_ai.runtime.hf import _DryPenalty

    ids = [5, 1, 2, 3, 1, 2]  # prompt [5, 1, 2, 3]; the reply "1 2" repeats only the prompt
    (llama_dry,) = gguf_engine._dry(1.0, prompt_length=4)
    assert np.array_equal(llama_dry(np.array(ids), np.zeros(8, dtype=np.float32)), np.zeros(8))
    hf_dry = _DryPenalty(1.0, prompt_length=4, breakers=frozenset())
    assert torch.equal(hf_dry(torch.tensor([ids]), torch.zeros(1, 8)), torch.zeros(1, 8))
    # with the whole context as reply, "1 2" was said before, followed by 3: both engines bar 3 alike
    (llama_dry,) = gguf_engine._dry(1.0, prompt_length=0)
    hf_dry = _DryPenalty(1.0, prompt_length=0, breakers=gguf_engine.breakers())
    expected = np.zeros(8)
    expected[3] = -1.0
    assert np.array_equal(llama_dry(np.array(ids), np.zeros(8, dtype=np.float32)), expected)
    assert hf_dry(torch.tensor([ids]), torch.zeros(1, 8)).tolist() == [expected.tolist()]
    assert gguf_engine._dry(0.0, prompt_length=4) is None
    assert gguf_engine.breakers() == light_engine.breakers()  # the same 1,331 tokens hold a breaker


def test_extra_cpu_buffers_follow_the_cpu_and_the_override(monkeypatch):
    from krishna_ai.runtime.llamacpp import EXTRA_BUFFERS_ENV, use_extra_buffers

    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "0")
    assert use_extra_buffers() is False
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "1")
    assert use_extra_buffers() is True
    monkeypatch.delenv(EXTRA_BUFFERS_ENV)
    amx = " amx_int8" in open("/proc/cpuinfo").read()
    assert use_extra_buffers() is (not amx)  # AMX repacking segfaults on Q4_K (llama.cpp #20824)


@pytest.fixture(scope="module")
def krishna_gguf():
    """light-gguf with Krishna's adapter merged: built once into the test cache (`gguf_adapter.merge_into_gguf`)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install -r requirements-llamacpp.txt)")
    from krishna_ai.runtime.llamacpp import load_gguf

    return load_gguf("light-gguf", adapter=str(REPO / "adapters" / "krishna-light"))


def test_light_gguf_serves_a_persona_with_its_adapter(krishna_gguf):
    from krishna_ai.core.grounding import ground
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages

    k = load_personas()["krishna"]
    question = "I failed my exam again. What should I do?"
    g = ground(k, question)
    reply = krishna_gguf.stream(build_messages(k, [], question, personality=g.person, cards=g.cards),
                                SamplingParams(temperature=0.0, max_new_tokens=256))
    text = reply.read()
    assert reply.stats.finish_reason == "end_of_turn", text  # the adapter's turn-ending survived the export
    assert text.startswith("Partha") and g.cards[0].person.split()[-1] in text
    assert krishna_gguf.info.adapter and krishna_gguf.name.startswith("light-gguf@")


def test_the_offline_merge_matches_peft(tmp_path):
    """The light-gguf adapter build (gguf-py on the packaged GGUF: no transformers, converter or network) writes,
    for every adapted matrix and the embedding, the Q8_0 of what peft's own merge gives on the same weights."""
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from krishna_ai.runtime.gguf_adapter import merge_into_gguf
    from krishna_ai.runtime.light import ensure_light_checkpoint, light_gguf
    from krishna_ai.runtime.weights import merge_adapter

    adapter = REPO / "adapters" / "maize-light"
    merge_into_gguf(light_gguf(), adapter, tmp_path / "maize.gguf")
    written = {t.name: t for t in gguf.GGUFReader(tmp_path / "maize.gguf").tensors}
    base = AutoModelForCausalLM.from_pretrained(ensure_light_checkpoint(progress=False), dtype=torch.float32)
    merged = merge_adapter(base, adapter).state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, len(base.model.layers))
    q8 = gguf.GGMLQuantizationType.Q8_0
    compared = 0
    for key, value in merged.items():
        if not (key.endswith("_proj.weight") or key.endswith("embed_tokens.weight")):
            continue
        t = written[names.get_name(key, try_suffixes=(".weight",))]
        expected, got = gguf.quantize(value.numpy(), q8), np.asarray(t.data)
        assert t.tensor_type == q8 and got.shape == expected.shape, key
        assert np.mean(got == expected) > 0.9999, key  # a rounding tie may fall the other way, no more
        step = np.abs(value.numpy()).max() / 127
        assert np.abs(gguf.dequantize(got, q8) - value.numpy()).max() <= step, key
        compared += 1
    assert compared == 1 + 7 * len(base.model.layers)
    config = json.loads((adapter / "adapter_config.json").read_text())
    embedding = gguf.dequantize(np.asarray(written["token_embd.weight"].data), q8)
    rows = config["trainable_token_indices"]
    assert np.abs(embedding[rows] - merged["model.embed_tokens.weight"][rows].numpy()).max() < 0.01


def test_a_persona_answers_with_no_network_from_an_empty_cache(tmp_path):
    """Nothing is downloaded after the install: with an empty cache, in a network namespace with no interface up,
    Maize's adapter is merged into the packaged GGUF and the persona answers (issue #32's first start)."""
    import os
    import shutil
    import subprocess

    pytest.importorskip("llama_cpp")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--net", "--map-root-user", "true"],
                                                         capture_output=True).returncode:
        pytest.skip("no unprivileged network namespaces here (unshare --net --map-root-user)")
    cache = tmp_path / "cache"
    env = {**os.environ, "KRISHNA_AI_CACHE": str(cache), "KRISHNA_AI_DATA": str(tmp_path / "data")}
    done = subprocess.run(["unshare", "--net", "--map-root-user", sys.executable, "-m", "krishna_ai", "ask",
                           "--persona", "maize", "--temperature", "0", "--max-new-tokens", "8", "--quiet",
                           "My maize leaves have long grey-tan lesions like cigars. What is it?"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("Diagnosis"), done.stdout
    assert [p.name.split("-")[:3] for p in (cache / "gguf" / "adapted").iterdir()] == [["light", "maize", "light"]]
    assert not (cache / "llama.cpp").exists() and not (cache / "gemma-3-270m").exists()  # no converter, no HF copy


def _broken_adapter(tmp_path, how: str):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / f"adapter-{how}"
    shutil.copytree(REPO / "adapters" / "krishna-light", bad)
    weights = load_file(str(bad / "adapter_model.safetensors"))
    if how == "missing-tensors":
        weights = {k: v for k, v in weights.items() if "layers.5." not in k}
    elif how == "wrong-rank":
        key = next(k for k in weights if "lora_A" in k)
        weights[key] = weights[key][:4]
    save_file(weights, str(bad / "adapter_model.safetensors"))
    if how == "dora":
        config = json.loads((bad / "adapter_config.json").read_text())
        (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    if how == "corrupt":
        (bad / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    return bad


@pytest.mark.parametrize("how, message", [("corrupt", "damaged or not a safetensors file"),
                                          ("wrong-rank", "does not fit this model"),
                                          ("missing-tensors", "is incomplete"),
                                          ("dora", "uses use_dora, which the GGUF merge does not support")])
def test_a_bad_adapter_for_light_gguf_is_refused_and_leaves_nothing_in_the_cache(tmp_path, how, message):
    pytest.importorskip("llama_cpp")
    from krishna_ai.core.cache import cache_root
    from krishna_ai.core.errors import ModelUnavailable
    from krishna_ai.runtime.gguf_adapter import adapted_path
    from krishna_ai.runtime.llamacpp import load_gguf

    bad = _broken_adapter(tmp_path, how)
    before = set((cache_root() / "gguf").rglob("*"))
    with pytest.raises(ModelUnavailable, match=message):
        load_gguf("light-gguf", adapter=str(bad))
    assert set((cache_root() / "gguf").rglob("*")) == before
    if how != "corrupt":
        assert not adapted_path(bad).exists()
