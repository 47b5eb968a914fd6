"""What every engine and the Studio promise beyond the Protocol's shape: time to first token counts from the
request on every back end, and an engine the Studio evicts is closed (after the reply in flight)."""

from __future__ import annotations

import threading
import time

import pytest

from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.engine import EngineInfo
from krishna_ai.studio.service import Studio

PAUSE_S = 0.3
ASK = [{"role": "user", "content": "Say hello."}]


def _slow_prepare(module, monkeypatch):
    """Make the prompt checks before generation take PAUSE_S: time the request's own work must include."""
    real = module.prepare

    def slow(*args, **kwargs):
        time.sleep(PAUSE_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "prepare", slow)


def test_ttft_counts_from_the_request_on_transformers(light_engine, monkeypatch):
    import krishna_ai.runtime.hf as hf

    _slow_prepare(hf, monkeypatch)
    reply = light_engine.stream(ASK, SamplingParams(temperature=0, max_new_tokens=3))
    reply.read()
    assert reply.stats.ttft_s is not None and reply.stats.ttft_s >= PAUSE_S
    assert reply.stats.total_s >= reply.stats.ttft_s


def test_ttft_counts_from_the_request_on_llamacpp(monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    import krishna_ai.runtime.llamacpp as llamacpp

    engine = llamacpp.load_gguf("light-gguf")
    _slow_prepare(llamacpp, monkeypatch)
    reply = engine.stream(ASK, SamplingParams(temperature=0, max_new_tokens=3))
    reply.read()
    assert reply.stats.ttft_s is not None and reply.stats.ttft_s >= PAUSE_S
    waiting = engine.stream(ASK, SamplingParams(temperature=0, max_new_tokens=3))  # started before the close
    engine.close()
    from krishna_ai.core.errors import GenerationError

    with pytest.raises(GenerationError, match="unloaded to make room"):
        waiting.read()  # never touches the freed model
    # a reply asked of an engine the Studio unloaded a moment earlier: a clear error, not a read of freed memory
    # (tokenising the prompt did that, and under 16 clients across four personas the app died with SIGSEGV)
    with pytest.raises(GenerationError, match="unloaded to make room"):
        engine.stream(ASK, SamplingParams(temperature=0, max_new_tokens=3))
    with pytest.raises(GenerationError, match="unloaded to make room"):
        engine.complete("Once upon a time")


def test_ttft_counts_from_the_request_on_the_scripted_engine(scripted):
    engine = scripted(["a", "b"], delay=0.05)
    reply = engine.stream(ASK)
    time.sleep(PAUSE_S)  # a consumer that starts reading late still sees the time since the request
    reply.read()
    assert reply.stats.ttft_s >= PAUSE_S


def test_evicted_engines_are_closed_and_kept_ones_are_not(scripted):
    made = {}

    def loader(spec, adapter):
        made[spec] = scripted(name=spec)
        return made[spec]

    studio = Studio(loader=loader, max_loaded=2)
    for spec in ("a", "b", "a", "c"):  # "a" used again: "b" is the least recently used when "c" comes
        studio.engine(spec)
    deadline = time.monotonic() + 5
    while not made["b"].closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made["b"].closed and not made["a"].closed and not made["c"].closed
    assert studio.loaded() == ["a", "c"]


def test_remote_engine_close_waits_for_the_reply_in_flight_then_closes_its_client():
    from krishna_ai.runtime.remote import RemoteEngine

    info = EngineInfo(name="m @ 127.0.0.1:9", backend="openai-api", family="other", multimodal=False,
                      context_length=8192)
    engine = RemoteEngine("http://127.0.0.1:9/v1", "m", info)
    with engine._idle:
        engine._in_flight = 1  # a reply streaming
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and not engine.http.is_closed, "close must wait for the reply in flight"
    with engine._idle:
        engine._in_flight = 0
        engine._idle.notify_all()
    closer.join(5)
    assert not closer.is_alive() and engine.http.is_closed


def test_a_reply_that_runs_into_a_new_turn_is_not_ended(monkeypatch):
    """Generation stops at <start_of_turn> as at <end_of_turn>, but only the latter (or EOS) ends a reply."""
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_turn
    from krishna_ai.runtime.engine import FINISH_LABELS, ReplyStats
    from krishna_ai.runtime.load import load_engine

    stats = ReplyStats()
    stats.finish(stopped=False, ended=False, failed=False, run_on=True)
    assert stats.finish_reason == "run_on" and FINISH_LABELS["run_on"] == "ran into a new turn"
    persona = load_personas()["krishna"]
    engine = load_engine("light", persona.adapters["light"])  # the adapter closes its turns
    ask = build_turn(persona, [], "I failed my exam again. What should I do?").messages
    params = SamplingParams.for_persona(persona, seed=0)
    first = engine.stream(ask, params)
    first.read()
    assert first.stats.finish_reason == "end_of_turn"
    # The same reply, had its closing token been the start of a new turn: then it ran on.
    monkeypatch.setattr(engine, "end_token_ids", [])
    again = engine.stream(ask, params)
    again.read()
    assert again.stats.finish_reason == "run_on"
    assert engine.generate_batch([ask], params)[0].finish_reason == "run_on"


def test_a_slow_load_never_holds_up_replies_from_a_loaded_model(scripted):
    release = threading.Event()

    def loader(spec, adapter):
        if spec == "slow":
            release.wait(10)
        return scripted(["fine"], name=spec)

    studio = Studio(loader=loader, max_loaded=3)
    studio.engine("fast")
    loading = threading.Thread(target=studio.engine, args=("slow",))
    loading.start()
    time.sleep(0.1)  # the slow load has begun
    t0 = time.monotonic()
    assert studio.engine("fast").stream(ASK).read() == "fine"
    waited = time.monotonic() - t0
    second = threading.Thread(target=studio.engine, args=("slow",))  # a second ask for the same model waits
    second.start()
    release.set()
    loading.join(5)
    second.join(5)
    assert waited < 1.0, f"a reply from a loaded model waited {waited:.1f} s for another model's load"
    assert studio.loaded() == ["fast", "slow"]  # loaded once, not twice


def test_a_chat_longer_than_the_context_keeps_its_latest_turns_and_says_how_many_it_left_out(light_engine,
                                                                                               monkeypatch):
    import dataclasses

    monkeypatch.setattr(light_engine, "_info", dataclasses.replace(light_engine.info, context_length=400))
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 8},
                    {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 8}]
    reply = light_engine.stream([*history, {"role": "user", "content": "And the last one?"}],
                                SamplingParams(temperature=0, max_new_tokens=4))
    reply.read()
    stats = reply.stats
    assert 0 < stats.dropped_turns < 12 and stats.prompt_tokens <= 396
    assert f"{stats.dropped_turns} earlier exchange" in stats.line() and "left out to fit the context" in stats.line()
    short = light_engine.stream(ASK, SamplingParams(temperature=0, max_new_tokens=2))
    short.read()
    assert short.stats.dropped_turns == 0 and "left out" not in short.stats.line()
