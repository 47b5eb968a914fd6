"""Shared fixtures: an isolated cache, the real embedded light model (loaded once), a scripted engine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.engine import Completion, Engine, EngineInfo, Reply, ReplyStats
from krishna_ai.runtime.hf import HFEngine
from krishna_ai.ship.serve import free_port  # noqa: F401  (tests and benchmarks import it from here)

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("KRISHNA_AI_TEST_CACHE") or REPO / ".test-cache")
"""The tests' own cache (converted light model, merged adapters, GGUF LoRAs): never the user's ~/.cache.
Kept between runs of one checkout, so the light model is converted once per checkout."""


os.environ["KRISHNA_AI_CACHE"] = str(TEST_CACHE)  # before any session fixture loads a model


def shipped_persona(persona_id: str, *, adapters: bool = True, counsel: bool = True) -> str:
    """A shipped persona file's text with every path in it made absolute (banks, verses, the scope gate and its
    data, adapters), so it can be written into any folder; `adapters=False` drops its adapters line,
    `counsel=False` its [counsel] table (for a test that writes its own)."""
    prompts = REPO / "prompts"
    text = (prompts / f"{persona_id}.toml").read_text(encoding="utf-8")
    if not adapters:
        text = re.sub(r"(?m)^adapters = .*\n", "", text)
    if not counsel:
        text = re.sub(r"(?ms)^\[counsel\]\n.*?(?=^\[)", "", text)
    text = re.sub(r'"\.\./', f'"{REPO.as_posix()}/', text)
    return re.sub(r'"(knowledge|scope)/', lambda m: f'"{prompts.as_posix()}/{m.group(1)}/', text)


def served(persona_id: str, message: str, model_text: str, history: list | None = None) -> str:
    """A reply as the app serves it when the model writes `model_text`: Krishna's written counsel first (`Turn`)."""
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_turn

    return build_turn(load_personas()[persona_id], list(history or []), message).finish(model_text)


COUNSEL_INSTRUCTION = ("Your counsel applies this teaching: say it in your own words, then what it asks of Partha in "
                       "this trouble:\n$cards")
COUNSEL = (f'\n[counsel]\nbank = "{(REPO / "prompts" / "knowledge" / "gita").as_posix()}"\ntop_k = 1\n'
           f"instruction = {json.dumps(COUNSEL_INSTRUCTION)}\n")
"""Krishna's counsel bank as it was trained and graded (data/krishna/train-counsel.jsonl, README "Tried first: the
model applying a teaching"); the shipped persona's counsel is written instead (its [counsel] section, which this
replaces)."""


def krishna_with_counsel(folder: Path):
    """Krishna with the Gita's teachings in its prompt (COUNSEL), written into `folder` and loaded."""
    from krishna_ai.core.personas import load_persona

    path = folder / "krishna.toml"
    path.write_text(shipped_persona("krishna", adapters=False, counsel=False) + COUNSEL, encoding="utf-8")
    return load_persona(path)


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    """Every test writes caches under TEST_CACHE (a test may point KRISHNA_AI_CACHE at its tmp_path), and
    saved chats under its own tmp_path (never the user's ~/.local/share/krishna_ai)."""
    monkeypatch.setenv("KRISHNA_AI_CACHE", str(TEST_CACHE))
    monkeypatch.setenv("KRISHNA_AI_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("KRISHNA_AI_DB", raising=False)
    yield


def serve(demo, **launch_kw) -> tuple[str, object]:
    """Launch a Blocks app in this process on a free port (queue of one, as the app runs); (url, Client)."""
    from gradio_client import Client

    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_port=port, quiet=True,
                                                   **launch_kw)
    url = f"http://127.0.0.1:{port}/"
    return url, Client(url, verbose=False)


def fail_forward_on_call(model, monkeypatch, n: int, message: str) -> None:
    """Make `model.forward` raise RuntimeError(message) on its n-th call from now (a fault inside generate)."""
    real_forward = model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError(message)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Wait until a child process listens on `port`; fail with its output if it exits or never listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text()[-3000:] if log else (proc.stdout.read() if proc.stdout else "")
            pytest.fail(f"{proc.args!r} exited with {proc.returncode} before listening:\n{output!s}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"nothing listened on port {port} within {timeout} s")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped cleanly elsewhere)")
    config.addinivalue_line("markers", "slow: loads a real model or runs a server")
    config.addinivalue_line("markers", "browser: drives the page in headless Chromium")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def light_engine() -> HFEngine:
    """The real Gemma 3 270M light tier (converted once into the user cache, then loaded)."""
    from krishna_ai.runtime.weights import load_model

    return HFEngine(load_model("light"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random E4B-shaped Gemma 3n checkpoint (text + vision + audio), built once per session."""
    from krishna_ai.training.tiny import build_tiny_gemma3n

    return build_tiny_gemma3n(tmp_path_factory.mktemp("gemma3n") / "tiny-e4b")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box spinning OpenMP threads slow them a lot."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ScriptedEngine:
    """Stands in for a model engine in UI tests (the full `Engine` Protocol, checked by mypy): replies with
    scripted chunks, honours stop, records calls, and can fail mid-reply."""

    def __init__(self, chunks: list[str] | None = None, *, delay: float = 0.0, name: str = "scripted",
                 multimodal: bool = False, fail_after: int | None = None, ends: bool = True):
        self.chunks = chunks or ["Partha, ", "act ", "without ", "fear."]
        self.delay = delay
        self._info = EngineInfo(name=name, backend="scripted", family="other", multimodal=multimodal,
                                context_length=8192)
        self.fail_after = fail_after
        self.ends = ends
        self.calls: list[tuple[list, SamplingParams | None]] = []
        self.produced = 0
        self.closed = False

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def name(self) -> str:
        return self._info.name

    def count_tokens(self, messages) -> int:
        return len(str(messages)) // 4

    def check_slice(self, name: str) -> None:
        from krishna_ai.core.errors import ConfigError

        raise ConfigError(f"the scripted engine runs no slices (asked for {name!r})")

    def generate_batch(self, conversations, params=None) -> list[Completion]:
        return [self.stream(c, params).completion() for c in conversations]

    def close(self) -> None:
        self.closed = True

    def stream(self, messages, params=None, stop_event=None, *, slice=None) -> Reply:
        stop_event = stop_event or threading.Event()
        self.calls.append((messages, params))
        stats = ReplyStats(prompt_tokens=len(str(messages)))

        def gen() -> Iterator[str]:
            stopped = failed = False
            try:
                for i, chunk in enumerate(self.chunks):
                    if stop_event.is_set():
                        stopped = True
                        break
                    if self.fail_after is not None and i == self.fail_after:
                        from krishna_ai.core.errors import GenerationError

                        failed = True
                        raise GenerationError("scripted failure")
                    time.sleep(self.delay)
                    self.produced += 1
                    stats.token()
                    yield chunk
            finally:
                stopped = stopped or stop_event.is_set()
                stats.finish(stopped=stopped, ended=self.ends and not stopped and not failed, failed=failed)

        return Reply(gen(), stop_event, stats)


@pytest.fixture
def scripted():
    return ScriptedEngine


def _satisfies_protocol() -> Engine:
    """mypy (in CI) checks the fake against the Engine Protocol here, as it checks both real engines."""
    return ScriptedEngine()


def model_written_personas() -> dict:
    """The shipped personas with PET's checklists off (`[coach]`): PET's whole reply is then the model's. The
    tests of the app's plumbing (streaming, sampling, limits, metrics, log-ins) use PET as the persona whose reply
    is all the model's; with its checklists, PET's reply is written by no model (tests/test_coaching.py)."""
    from krishna_ai.core.personas import load_personas

    personas = load_personas()
    return {**personas, "pet": personas["pet"].model_copy(update={"coach": None})}
