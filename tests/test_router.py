"""`python app.py --server-slots N`: every persona on one supervised llama-server (router mode).

Real llama-server (requirements-server.txt) on the light GGUF with the personas' adapters merged; skipped
without it. The router is killed for real (SIGKILL) and so is the app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from krishna_ai.core.errors import GenerationError, ModelUnavailable
from krishna_ai.core.prompting import build_messages
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.ship.serve import server_binary
from tests.conftest import REPO, free_port

try:
    server_binary()
except ModelUnavailable:
    pytest.skip("llama-server not installed (requirements-server.txt)", allow_module_level=True)

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found |= {child} | _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_one_router_serves_every_persona_with_its_adapter_and_comes_back_after_a_crash():
    import app

    demo, studio = app.build(app.parse_args(["--server-slots", "2", "--no-history", "--port", str(free_port())]))
    router = studio.router
    try:
        assert {"light-gguf", "krishna-light", "maize-light"} <= set(router.models)
        assert studio.concurrency == 2 * len(router.models)

        def ask(persona: str) -> str:
            engine = studio.engine(None, studio.persona(persona))
            assert engine.info.backend == "openai-api" and f"127.0.0.1:{router.port}" in engine.name
            return engine.stream(build_messages(studio.persona(persona), [], "My leaves have brown spots."),
                                 GREEDY).read()

        assert ask("krishna").startswith("Partha") and ask("maize").startswith("Diagnosis")  # each its adapter
        os.kill(router.process.pid, signal.SIGKILL)
        router.process.wait(10)
        with pytest.raises(GenerationError, match=f"127.0.0.1:{router.port}"):
            ask("maize")  # the reply in flight when the server is down: an error naming it
        deadline = time.monotonic() + 30
        while router.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert router.restarts == 1 and "exit code -9" in (router.last_crash or "")
        assert ask("maize").startswith("Diagnosis")
    finally:
        router.stop()
    assert router.process.poll() is not None


def test_an_app_killed_with_sigkill_leaves_no_llama_server(tmp_path):
    port = free_port()
    env = {**os.environ, "KRISHNA_AI_DATA": str(tmp_path / "data")}
    log = (tmp_path / "app.log").open("wb")
    proc = subprocess.Popen([sys.executable, "app.py", "--server-slots", "1", "--port", str(port), "--no-history"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "model": "maize", "max_tokens": 4, "messages": [{"role": "user", "content": "Grey leaf lesions?"}]})
        assert reply.status_code == 200, reply.text
        servers = _descendants(proc.pid) - {proc.pid}
        assert len(servers) >= 2  # the router and the maize model's own process
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in servers if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_a_router_that_cannot_start_leaves_no_process_and_no_folder(tmp_path, monkeypatch):
    from krishna_ai.ship import router

    monkeypatch.setattr(router, "server_binary", lambda: Path("/bin/false"))  # exits at once, code 1
    r = router.Router({"light-gguf": tmp_path / "none.gguf"})
    with pytest.raises(ModelUnavailable, match="exited with code 1 while starting"):
        r.start(timeout=10)
    assert not r._folder.exists() and r.process is not None and r.process.poll() == 1
