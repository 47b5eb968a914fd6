"""The app through a real server: launched in-process, driven with gradio_client."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from gradio_client import handle_file
from PIL import Image

import app
from krishna_ai.core.personas import load_personas
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import NOTICE, build_demo, split_pending
from tests.conftest import model_written_personas, serve


def test_app_imports_without_loading_a_model():
    import importlib

    mod = importlib.reload(app)
    args = mod.parse_args(["--persona", "maize", "--port", "9999"])
    assert args.persona == "maize" and args.model is None  # build() picks light-gguf if llama.cpp is there, else light
    assert mod.parse_auth("me:pw") == ("me", "pw")
    with pytest.raises(SystemExit):
        mod.parse_auth("nopassword")


@pytest.mark.slow
def test_chat_endpoint_streams_real_model(light_engine, tmp_path):
    studio = Studio(load_personas(), loader=lambda spec, adapter: light_engine)
    demo = build_demo(studio)
    _, client = serve(demo)
    try:
        job = client.submit("I failed my exam. What should I do?", "krishna", None, 0.0, None, None, 24,
                            api_name="/chat")
        chunks = list(job)
        assert len(chunks) >= 3
        lengths = [len(c) for c in chunks]
        assert lengths == sorted(lengths) and all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 1))
        assert chunks[-1].strip()

        leaf = tmp_path / "leaf.png"
        Image.new("RGB", (64, 64), (30, 140, 40)).save(leaf)
        with pytest.raises(Exception, match="reads text only.*Gemma 3n"):
            client.predict("what disease is this?", "maize", handle_file(str(leaf)), api_name="/chat")
        with pytest.raises(Exception, match="unknown persona 'zeus'"):
            client.predict("hello", "zeus", api_name="/chat")
        with pytest.raises(Exception, match="temperature must be between 0 and 2"):
            client.predict("hello", "krishna", None, 5.0, api_name="/chat")
        # the server still answers after the errors
        assert client.predict("Hi", "aurora", None, 0.0, None, None, 4, api_name="/chat").strip()
    finally:
        demo.close()


def test_studio_stop_and_style_with_scripted_engine(scripted):
    engine = scripted(["Partha, ", "be ", "still. ", "Act ", "now."] * 20, delay=0.01)
    studio = Studio(load_personas(), loader=lambda spec, adapter: engine)
    updates = studio.chat("krishna", [], "I am afraid of failing.", session="s1")
    next(updates)
    threading.Timer(0.05, studio.stop, ["s1"]).start()
    final = list(updates)[-1]
    assert final.done and final.stats.stopped and engine.produced < 100
    assert [v.rule for v in final.violations] == ["missing_story"]


def test_studio_model_load_failure_keeps_running(scripted):
    from krishna_ai.core.errors import ModelUnavailable

    good = scripted(["ok"])

    def loader(spec, adapter):
        if spec == "broken":
            raise ModelUnavailable("no such model")
        return good

    studio = Studio(model_written_personas(), loader=loader)
    assert studio.engine("light") is good
    with pytest.raises(ModelUnavailable):
        studio.engine("broken")
    assert studio.loaded() == ["light"]
    assert list(studio.chat("pet", [], "Summarise this article"))[-1].text == "ok"


def test_ui_flow_with_scripted_engine(scripted):
    """The Blocks events (submit, retry, stop) through the server, with a scripted model."""
    engine = scripted(["Partha, ", "rise. ", "Act."], delay=0.02)
    studio = Studio(model_written_personas(), loader=lambda spec, adapter: engine)
    demo = build_demo(studio)
    _, client = serve(demo)
    try:
        out = client.predict("Write a poem about the sea", "pet", api_name="/chat")
        assert out == "Partha, rise. Act."
        _, msgs_params = engine.calls[-1]
        assert (msgs_params.temperature, msgs_params.repetition_penalty) == (0.3, 1.15)  # the pet persona's defaults
    finally:
        demo.close()


def test_split_pending_reads_gradio_history():
    history = [
        {"role": "assistant", "content": [{"type": "text", "text": "Namaskar"}]},
        {"role": "user", "content": [{"type": "text", "text": "q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/x.png"}}]},
        {"role": "user", "content": [{"type": "text", "text": "what is it?"}]},
    ]
    earlier, text, image = split_pending(history)
    assert text == "what is it?" and image == "/tmp/x.png"
    assert earlier[-1] == {"role": "assistant", "content": "a1"}
    refused = history[:3] + [
        {"role": "user", "content": [{"type": "text", "text": "bad request"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "refused"}], "metadata": {"title": NOTICE}},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]
    earlier, text, _ = split_pending(refused)
    assert text == "q2" and [m["content"] for m in earlier] == ["Namaskar", "q1", "a1"]


def test_share_without_auth_warns(monkeypatch, capsys):
    launched = {}

    class FakeDemo:
        def queue(self, **kw):
            return self

        def launch(self, **kw):
            launched.update(kw)

    monkeypatch.setattr(app, "build", lambda args: (FakeDemo(), SimpleNamespace(concurrency=1, store=None, jobs=None)))
    assert app.main(["--share"]) == 2 and not launched  # no login, public: refused unless said on purpose
    assert "--no-login" in capsys.readouterr().err
    assert app.main(["--host", "0.0.0.0"]) == 2 and not launched
    with pytest.warns(UserWarning, match="--share without --auth"):
        app.main(["--share", "--no-login"])
    assert launched["share"] is True and launched["auth"] is None
    assert "WARNING" in capsys.readouterr().err
    app.main(["--auth", "u:p"])
    guard = launched["auth"]
    import asyncio

    assert asyncio.run(guard("u", "p")) is True and guard.__self__.delay_for(0) == 0.0


def test_a_model_server_gets_concurrent_replies_and_in_process_models_one():
    """In-process engines run one reply at a time, so the queue does too; a model server batches, so the app
    sends it many at once (or --concurrency N). Nothing is loaded: --no-preload."""
    _, studio = app.build(app.parse_args(["--model", "openai:http://127.0.0.1:9/v1#m", "--no-preload"]))
    assert studio.concurrency == app.REMOTE_CONCURRENCY
    _, studio = app.build(app.parse_args(["--model", "light", "--no-preload"]))
    assert studio.concurrency == 1
    _, studio = app.build(app.parse_args(["--model", "light", "--no-preload", "--concurrency", "3"]))
    assert studio.concurrency == 3
    with pytest.raises(SystemExit, match="--concurrency 0"):
        app.build(app.parse_args(["--model", "light", "--no-preload", "--concurrency", "0"]))


def test_every_persona_keeps_its_light_model_loaded():
    """Each persona's light model is its own (its adapter merged): the app keeps one per persona and one more, so
    replies across personas never unload one another; larger tiers keep 3; --max-loaded sets it."""
    _, studio = app.build(app.parse_args(["--model", "light", "--no-preload"]))
    assert studio._max_loaded == len(studio.personas) + 1 >= 5
    _, studio = app.build(app.parse_args(["--model", "openai:http://127.0.0.1:9/v1#m", "--no-preload"]))
    assert studio._max_loaded == 3
    _, studio = app.build(app.parse_args(["--model", "light", "--no-preload", "--max-loaded", "2"]))
    assert studio._max_loaded == 2
    with pytest.raises(SystemExit, match="--max-loaded 0"):
        app.build(app.parse_args(["--model", "light", "--no-preload", "--max-loaded", "0"]))


def test_persona_adapter_is_used_on_its_tier_only(scripted):
    seen = []

    def loader(spec, adapter):
        seen.append((spec, adapter))
        return scripted(["ok"])

    personas = load_personas()
    personas["krishna"] = personas["krishna"].model_copy(update={"adapters": {"light": "/adapters/k"}})
    personas["aurora"] = personas["aurora"].model_copy(update={"adapters": {}})  # a persona without one
    studio = Studio(personas, loader=loader, scopes=False)  # "hi" is outside Krishna's scope: no model would run
    list(studio.chat("krishna", [], "hi"))
    list(studio.chat("aurora", [], "hi"))
    list(studio.chat("krishna", [], "again"))
    assert seen == [("light", "/adapters/k"), ("light", None)]  # cached per (tier, adapter)
    override = Studio(personas, loader=loader, adapters={"light": "/cli/adapter"}, scopes=False)
    list(override.chat("krishna", [], "hi"))
    assert seen[-1] == ("light", "/cli/adapter")
