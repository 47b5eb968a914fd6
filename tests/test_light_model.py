"""The real embedded Gemma 3 270M through the app's own engine (CPU, a few seconds each)."""

from __future__ import annotations

import threading
import time

import pytest

from krishna_ai.core.errors import GenerationError, ImageError, ModelUnavailable
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import build_messages
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.light import is_complete, light_dir
from krishna_ai.runtime.weights import load_model
from tests.conftest import fail_forward_on_call

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


def plain(engine, prompt: str, params: SamplingParams = GREEDY):
    """A raw continuation (no chat turns) through the engine's generation loop."""
    from krishna_ai.runtime.engine import Reply, ReplyStats

    inputs = engine.loaded.tokenizer(prompt, return_tensors="pt")
    event = threading.Event()
    stats = ReplyStats(prompt_tokens=int(inputs["input_ids"].shape[-1]))
    return Reply(engine._run(dict(inputs), params, event, stats), event, stats)


def test_cache_is_complete_and_safetensors(light_engine):
    assert is_complete(light_dir())
    assert (light_dir() / "model.safetensors").is_file()
    assert light_engine.loaded.family == "gemma3" and not light_engine.loaded.multimodal


def test_greedy_factual_continuation(light_engine):
    assert "Paris" in plain(light_engine, "The Eiffel Tower is located in the city of").read()
    assert "oxygen" in plain(light_engine, "Water is made of hydrogen and").read()


def test_streams_several_chunks_with_stats(light_engine):
    k = load_personas()["krishna"]
    reply = light_engine.stream(build_messages(k, [], "I failed my exam. What now?"),
                                SamplingParams(temperature=0.0, max_new_tokens=16))
    chunks = list(reply)
    assert len(chunks) >= 3 and "".join(chunks) == reply.text
    s = reply.stats
    assert 1 <= s.tokens <= 16 and s.ttft_s is not None and s.ttft_s > 0 and s.tokens_per_s > 0
    assert s.prompt_tokens > 50


def test_sampling_is_seeded(light_engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    a = plain(light_engine, "Once upon a time", params).read()
    b = plain(light_engine, "Once upon a time", params).read()
    assert a == b


def test_stop_ends_generate_thread_within_a_second(light_engine):
    long = SamplingParams(temperature=0.0, max_new_tokens=400)
    reply = plain(light_engine, "Write a long story about a river.", long)
    next(reply)
    next(reply)
    t0 = time.perf_counter()
    reply.stop()
    rest = list(reply)  # drains what was already produced, then ends
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed
    assert reply.stats.stopped and reply.stats.tokens < 100 and len(rest) < 10
    assert reply.stats.finish_reason == "stopped"
    assert not any(t.name == "krishna-generate" and t.is_alive() for t in threading.enumerate())
    # The model is free again at once: the next request does not wait for a join timeout.
    assert light_engine._lock.acquire(timeout=1.0)
    light_engine._lock.release()
    nxt = plain(light_engine, "The sky is", SamplingParams(temperature=0.0, max_new_tokens=3))
    assert next(nxt) and nxt.stats.ttft_s is not None and nxt.stats.ttft_s < 5.0
    nxt.close()


def test_finish_reason_says_why_a_reply_ended(light_engine):
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages

    cut = plain(light_engine, "Count from one to five hundred:", SamplingParams(temperature=0.0, max_new_tokens=5))
    cut.read()
    assert cut.stats.finish_reason == "max_tokens" and cut.stats.tokens == 5 and "cut at max tokens" in cut.stats.line()
    msgs = build_messages(load_personas()["pet"], [], "Hi")
    short = light_engine.stream(msgs, SamplingParams(temperature=0.0, max_new_tokens=200))
    text = short.read()
    assert short.stats.finish_reason in ("end_of_turn", "max_tokens")
    if short.stats.finish_reason == "end_of_turn":  # the marker itself never reaches the text
        assert "<end_of_turn>" not in text and "<start_of_turn>" not in text


def test_consumer_going_away_stops_generation(light_engine):
    reply = plain(light_engine, "Count from one to five hundred:", SamplingParams(temperature=0.0, max_new_tokens=400))
    next(reply)
    t0 = time.perf_counter()
    reply.close()
    assert time.perf_counter() - t0 < 1.0
    assert not any(t.name == "krishna-generate" and t.is_alive() for t in threading.enumerate())


def test_exception_inside_generate_surfaces(light_engine, monkeypatch):
    fail_forward_on_call(light_engine.loaded.model, monkeypatch, 3, "simulated device fault")
    reply = plain(light_engine, "The sky is", SamplingParams(temperature=0.0, max_new_tokens=20))
    with pytest.raises(GenerationError, match="simulated device fault"):
        list(reply)
    monkeypatch.undo()
    assert "Paris" in plain(light_engine, "The Eiffel Tower is located in the city of").read()


def test_image_to_text_only_tier_is_refused(light_engine):
    from PIL import Image

    k = load_personas()["maize"]
    msgs = build_messages(k, [], "what is this", image=Image.new("RGB", (32, 32)))
    with pytest.raises(ImageError, match="reads text only.*Gemma 3n tiers"):
        light_engine.stream(msgs)


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="not a tier .*not an existing folder"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="safetensors only"):
        load_model(str(tmp_path / "m"))


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as exc:
        load_model("e2b")
    msg = str(exc.value)
    assert "google/gemma-3n-E2B-it" in msg and "--model DIR" in msg and "light tier" in msg


def test_bad_adapter_folder(tmp_path):
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_model("light", adapter=tmp_path / "none")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="adapter_model.safetensors"):
        load_model("light", adapter=tmp_path / "a")
