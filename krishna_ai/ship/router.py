"""Every persona on one llama-server, started and watched by the app: `python app.py --server-slots N`.

llama-server's router mode (`--models-preset`) serves several GGUF files behind one OpenAI-compatible
endpoint, each in a child process of its own started on the first request that names it (`model`), so
one address serves Krishna, Maize, Aurora and PET with their adapters merged (the Q8_0 files of
`runtime.gguf_adapter`), each with N slots decoded as one batch. The router reads its models once, at
start: every persona's file is built before it starts.

The app supervises it: a thread checks the process every second; if it died, the crash (exit code, last
log lines) goes to the terminal and the router is started again (1, 2, 4 … 30 s apart). A reply in flight
when it dies ends with the remote engine's error naming the server; the next one goes to the new router.
On the app's exit it is stopped (SIGTERM, then SIGKILL); if the app is killed outright, Linux kills the
router (`PR_SET_PDEATHSIG`), and the router's children end with it.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ModelUnavailable
from krishna_ai.core.personas import Persona
from krishna_ai.runtime.engine import Engine
from krishna_ai.runtime.tiers import GGUF_TIER
from krishna_ai.ship.serve import CTX_PER_SLOT, free_port, server_binary, terminate

PR_SET_PDEATHSIG = 1
BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent (the app) ends, however it ends (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def alias_for(adapter: str | Path | None) -> str:
    """The router's model name for the light GGUF with `adapter` merged (the adapter folder's name), or for the
    light GGUF itself (`light-gguf`)."""
    return Path(adapter).name if adapter else GGUF_TIER


class Router:
    """llama-server in router mode over `models` ({alias: GGUF file}), on 127.0.0.1, restarted when it dies."""

    def __init__(self, models: dict[str, Path], *, slots: int = 4, ctx_per_slot: int = CTX_PER_SLOT,
                 threads: int | None = None, port: int | None = None, sources: dict[str, Path] | None = None):
        if not models:
            raise ModelUnavailable("the model server needs at least one model")
        if not 1 <= slots <= 64:
            raise ModelUnavailable(f"--server-slots {slots}: give 1 to 64")
        self.models = dict(models)
        self.sources = {alias: Path(p).resolve() for alias, p in (sources or {}).items()}
        """The adapter folder each alias was built from: `load` serves only that adapter under that name."""
        self.slots, self.ctx_per_slot, self.threads = slots, ctx_per_slot, threads
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_crash: str | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="krishna_ai-router-"))
        self._log = self._folder / "llama-server.log"
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def for_personas(cls, personas: dict[str, Persona], **options: Any) -> Router:
        """A router over the light GGUF itself (alias `light-gguf`) and, per adapter the personas use on it, that
        adapter merged (alias: the adapter folder's name). Files not cached yet are built now (about 8 s each)."""
        from krishna_ai.runtime.gguf_adapter import adapted_gguf
        from krishna_ai.runtime.light import light_gguf

        models, sources = {GGUF_TIER: light_gguf()}, {}
        for persona in personas.values():
            adapter = persona.adapter_for(GGUF_TIER)
            if adapter and alias_for(adapter) not in models:
                models[alias_for(adapter)] = adapted_gguf(GGUF_TIER, adapter)
                sources[alias_for(adapter)] = Path(adapter)
        return cls(models, sources=sources, **options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def spec(self, alias: str) -> str:
        """The `--model` that reaches `alias` on this router (a remote engine's spec)."""
        return f"openai:{self.url}#{alias}"

    def load(self, spec: str, adapter: str | None) -> Engine:
        """A Studio loader: the light GGUF with one of the router's adapters (or none) → a remote engine on it;
        anything else (another tier, a trained adapter the router was not started with) → loaded here."""
        from krishna_ai.runtime.load import load_engine
        from krishna_ai.runtime.remote import load_remote

        alias = alias_for(adapter) if spec == GGUF_TIER else None
        if alias in self.models and (adapter is None or self.sources.get(alias) == Path(adapter).resolve()):
            return load_remote(self.spec(alias))
        return load_engine(spec, adapter)

    def preset(self) -> str:
        """The INI file llama-server reads: shared settings under [*], a section per model."""
        from krishna_ai.runtime.llamacpp import default_threads, use_extra_buffers

        threads = self.threads or default_threads()
        shared = {"parallel": self.slots, "ctx-size": self.slots * self.ctx_per_slot, "threads": threads,
                  "threads-batch": threads, "jinja": "false", "chat-template": "gemma",  # = serve.ServerConfig
                  "swa-full": "true", "slots": "true", "metrics": "true"}
        if not use_extra_buffers():
            shared["repack"] = "false"
        lines = ["version = 1", "", "[*]", *(f"{k} = {v}" for k, v in shared.items())]
        for alias, path in self.models.items():
            lines += ["", f"[{alias}]", f"model = {Path(path).resolve()}"]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        preset = self._folder / "models.ini"
        preset.write_text(self.preset())
        # Every streamed reply holds one of the router's HTTP threads while it proxies: one per slot of every
        # model, and a few for /health and /v1/models (the default, slots + 2, made the 17th client's
        # connection drop: bench/router.py).
        return [str(server_binary()), "--models-preset", str(preset), "--models-max", str(len(self.models)),
                "--threads-http", str(self.slots * len(self.models) + 4),
                "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]

    def start(self, timeout: float = 120.0) -> Router:
        try:
            self._spawn(timeout)
        except BaseException:
            self.stop()  # no process and no temporary folder left behind by a start that failed
            raise
        self._watcher = threading.Thread(target=self._watch, name="llama-server watch", daemon=True)
        self._watcher.start()
        return self

    def _spawn(self, timeout: float) -> None:
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        import httpx

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelUnavailable(f"llama-server (router) exited with code {self.process.returncode} while "
                                       f"starting:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ModelUnavailable(f"llama-server (router) did not answer /health within {timeout:.0f} s:\n"
                               f"{self.log_tail()}")

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.wait(1.0):
            if self.process is None or self.process.poll() is None:
                failures = 0
                continue
            self.last_crash = f"exit code {self.process.returncode}; last lines:\n{self.log_tail()}"
            print(f"llama-server (router) ended: {self.last_crash}\nrestarting it", file=sys.stderr)
            if self._stopping.wait(BACKOFF[min(failures, len(BACKOFF) - 1)]):
                return
            try:
                self._spawn(120.0)
                self.restarts += 1
                print(f"llama-server (router) is back at {self.url}", file=sys.stderr)
            except ModelUnavailable as exc:
                failures += 1
                print(f"llama-server (router) did not come back: {exc}", file=sys.stderr)

    def log_tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(5)
        if self.process is not None:
            terminate(self.process)
        shutil.rmtree(self._folder, ignore_errors=True)
