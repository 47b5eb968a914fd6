"""The remote engine: generation on a server that speaks the OpenAI chat-completions API.

llama.cpp's `llama-server` (what `python -m krishna_ai serve` starts), vLLM, SGLang and Ollama all
do, and all batch requests from many users together. The studio keeps what is its own — personas,
retrieval, the style check, stats — and the server only generates.

Spec: ``openai:URL[#MODEL]``, URL being the API root (``http://127.0.0.1:8081/v1``); without
``#MODEL`` the server's first model is used. The API key comes from $KRISHNA_AI_API_KEY (else
$OPENAI_API_KEY) and is never printed.

At load the server is probed once: its models (a wrong name is refused with the list), its context
size, slot count and image support where it says (llama-server's `/props`, Ollama's `/api/show`,
vLLM's `max_model_len`). Each reply is one streamed request; Stop closes the stream, which makes
the server drop the request and free its slot. Every failure (server down, slow, wrong key,
unreadable stream, connection cut mid-reply) is a `GenerationError` that names the server; the next
request tries again, so the app recovers on its own once the server is back.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from krishna_ai.core.errors import ConfigError, GenerationError
from krishna_ai.core.prompting import Message, opened, render_gemma_turns, text_of
from krishna_ai.core.sampling import DRY_ALLOWED_LENGTH, DRY_BASE, DRY_BREAKERS, REPETITION_WINDOW, SamplingParams
from krishna_ai.runtime.engine import (
    TURN_MARKERS,
    Completion,
    EngineInfo,
    Reply,
    ReplyStats,
    dropped_turns,
    family_of,
    generation_failed,
    prepare,
)
from krishna_ai.runtime.probe import (
    DEFAULT_CONTEXT,
    KEY_ENVS,
    TIMEOUT_ENV,
    ServerInfo,
    auth_headers,
    parse_spec,
    probe,
    stall_timeout,
)

BYTES_PER_TOKEN = 3
"""Token estimate for fitting history: UTF-8 bytes / 3 over-counts Gemma's tokens for English (about 4.3
characters each) and Devanagari (3 bytes a character, rarely more than one token a character). The
server tokenises for real and reports the true prompt size in each reply's stats."""


def load_remote(spec: str, *, adapter: str | os.PathLike[str] | None = None) -> RemoteEngine:
    """A RemoteEngine for ``openai:URL[#MODEL]`` after probing the server. Raises ModelUnavailable / ConfigError."""
    if adapter:
        raise ConfigError(f"{spec!r} runs on a server, which applies its own weights: merge the adapter "
                          "(python -m krishna_ai merge) and serve the merge, or `python -m krishna_ai serve "
                          "--adapter DIR` for the light model")
    url, model = parse_spec(spec)
    model, server = probe(url, model)
    notes = [f"{server.kind} at {url}"]
    if server.slots:
        notes.append(f"{server.slots} parallel slots")
    if server.vision is None:
        notes.append("image support not reported by the server: images are sent, and a refusal is shown")
    info = EngineInfo(name=f"{model} @ {urlsplit(url).netloc}", backend="openai-api", family=family_of(model),
                      multimodal=server.vision is not False, context_length=server.context_length or DEFAULT_CONTEXT,
                      notes=tuple(notes))
    return RemoteEngine(url, model, info, server)


def image_url(image: Any) -> str:
    """A PIL image as a data URL (PNG), the form every OpenAI-compatible server takes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai(messages: list[Message]) -> list[dict[str, Any]]:
    """Hugging Face-shaped messages as chat-completions messages (images as data URLs)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for block in content:
                if block.get("type") == "image":
                    parts.append({"type": "image_url", "image_url": {"url": image_url(block["image"])}})
                elif block.get("type") == "text" and block.get("text"):
                    parts.append({"type": "text", "text": block["text"]})
            out.append({"role": msg["role"], "content": parts})
        else:
            out.append({"role": msg["role"], "content": text_of(content)})
    return out


def request_body(params: SamplingParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """(standard arguments, server extras) for one request. top_k, min_p and the repetition penalty are not
    in OpenAI's API: llama-server reads `top_k`/`repeat_penalty`/`repeat_last_n`/`min_p`, vLLM and SGLang
    `top_k`/`repetition_penalty`/`min_p`; each ignores the names it does not know. min_p 0: the same
    filters as the in-process engines (llama-server's default would be 0.05). DRY: llama-server only (its
    `dry_*` names, over the last max_new_tokens tokens, the prompt's tail included until the reply fills
    them); vLLM and SGLang have no DRY sampler and ignore the names."""
    standard: dict[str, Any] = {"temperature": float(params.temperature), "top_p": float(params.top_p),
                                "max_tokens": int(params.max_new_tokens), "stop": list(TURN_MARKERS)}
    if params.seed is not None:
        standard["seed"] = int(params.seed)
    extra: dict[str, Any] = {"min_p": 0.0}
    if params.top_k:
        extra["top_k"] = int(params.top_k)
    if params.repetition_penalty != 1.0:
        extra["repeat_penalty"] = extra["repetition_penalty"] = float(params.repetition_penalty)
        extra["repeat_last_n"] = REPETITION_WINDOW  # llama-server (prompt tail included); vLLM, SGLang: all tokens
    if params.dry_multiplier > 0:
        extra.update(dry_multiplier=float(params.dry_multiplier), dry_base=DRY_BASE,
                     dry_allowed_length=DRY_ALLOWED_LENGTH, dry_penalty_last_n=int(params.max_new_tokens),
                     dry_sequence_breakers=list(DRY_BREAKERS))
    return standard, extra


class _Connection:
    """The socket of one request, caught as httpcore opens it (its `trace` extension), so that Stop can shut
    it from another thread: that wakes a reader blocked on the server, which sends nothing while the
    request waits for a free slot. Shutting it also tells the server to drop the request."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.closed = False
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self.sock = info["return_value"].get_extra_info("socket")
                if self.closed:
                    self._shutdown()

    def shut(self) -> None:
        with self._lock:
            self.closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


class RemoteEngine:
    """One model on an OpenAI-compatible server. Thread-safe: each reply is its own request."""

    def __init__(self, url: str, model: str, info: EngineInfo, server: ServerInfo | None = None):
        import httpx

        self.url, self.model, self.server = url, model, server
        self._info = info
        self.stall_s = stall_timeout()
        # No kept-alive connections: each request gets its own socket, which Stop can shut (see _Connection).
        self.http = httpx.Client(timeout=httpx.Timeout(self.stall_s, connect=5.0),
                                 limits=httpx.Limits(max_keepalive_connections=0), headers=auth_headers())
        self._in_flight = 0
        self._idle = threading.Condition()

    def close(self, timeout: float | None = 60.0) -> None:
        """Close the HTTP client once no reply is streaming (or after `timeout` seconds: a reply started and
        never read would otherwise hold it open for good)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout)
        self.http.close()

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def continues_by_prompt(self) -> bool:
        """A reply's written opening (`Turn.opening`) is continued through `/completions` with the prompt rendered
        here: llama-server's chat endpoint closes a last assistant message under its built-in `gemma` template
        (which `serve` runs) instead of continuing it, and that template is `render_gemma_turns` exactly."""
        return self.server is not None and self.server.kind == "llama.cpp server" and self.server.template == "gemma"

    @property
    def parallel(self) -> int:
        """Requests worth sending at once: the server's slot count (4 when it does not say)."""
        return (self.server.slots if self.server and self.server.slots else None) or 4

    def count_tokens(self, messages: list[Message]) -> int:
        """An over-estimate (see BYTES_PER_TOKEN) plus a few tokens of turn markup per message."""
        return sum(len(text_of(m.get("content")).encode("utf-8")) // BYTES_PER_TOKEN + 4 for m in messages)

    def check_slice(self, name: str) -> None:
        raise ConfigError(f"{self.name!r} runs on a server, which serves the weights it was started with: serve "
                          f"the MatFormer slice {name!r} itself (python -m krishna_ai slice, then the server)")

    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        started = time.perf_counter()
        fitted, params = prepare(self, messages, params, slice)
        stop_event = stop_event or threading.Event()
        stats = ReplyStats(prompt_tokens=self.count_tokens(fitted), started=started,
                           dropped_turns=dropped_turns(messages, fitted))
        with self._idle:  # counted from here, so an engine evicted before the first chunk waits for it
            self._in_flight += 1
        return Reply(self._run(to_openai(fitted), params, stop_event, stats), stop_event, stats)

    def generate_batch(self, conversations: list[list[Message]],
                       params: SamplingParams | None = None) -> list[Completion]:
        """Sent together, as many at once as the server has slots: it batches them."""
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(lambda conv: self.stream(conv, params).completion(), conversations))

    # -- one request ------------------------------------------------------------------------
    def _run(self, messages: list[dict[str, Any]], params: SamplingParams, stop_event: threading.Event,
             stats: ReplyStats) -> Iterator[str]:
        from httpx_sse import connect_sse

        standard, extra = request_body(params)
        body = {"model": self.model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **standard, **extra}
        path, prompted = "/chat/completions", opened(messages) and self.continues_by_prompt
        if prompted:  # llama-server with Gemma's template: the opening continued in a prompt rendered here
            body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": render_gemma_turns(messages)}
            path = "/completions"
        elif opened(messages):  # vLLM and SGLang are told to continue the opening (Ollama does on its own)
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        ended = failed = False
        conn, done = _Connection(), threading.Event()
        watcher = threading.Thread(target=_shut_on_stop, args=(conn, stop_event, done), daemon=True)
        try:
            if stop_event.is_set():
                return
            watcher.start()
            with connect_sse(self.http, "POST", f"{self.url}{path}", json=body,
                             extensions={"trace": conn.trace}) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    raise _StatusError(source.response.status_code, source.response.text)
                for event in source.iter_sse():
                    if event.data.strip() == "[DONE]":
                        break
                    chunk = json.loads(event.data)
                    if not isinstance(chunk, dict):
                        raise ValueError(f"an event that is not a JSON object: {event.data[:60]!r}")
                    if "error" in chunk:
                        raise _StatusError(500, event.data)
                    if usage := chunk.get("usage"):  # the last chunk: the server's own token counts
                        stats.prompt_tokens = usage.get("prompt_tokens") or stats.prompt_tokens
                        stats.tokens = usage.get("completion_tokens") or stats.tokens
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text") if prompted else (choice.get("delta") or {}).get("content")
                        if text:
                            stats.token()
                            yield text
                        if choice.get("finish_reason"):
                            ended = choice["finish_reason"] == "stop"
                    if stop_event.is_set():
                        break
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001 - one domain error, naming the server, for whatever failed
            if stop_event.is_set():
                return  # Stop shut the connection: not a failure
            failed = True
            raise self._explain(exc) from None
        finally:
            stopped = stop_event.is_set()
            done.set()
            stop_event.set()
            conn.shut()  # frees the server's slot when the reply did not run to its end
            if watcher.is_alive():
                watcher.join(timeout=1.0)
            stats.finish(stopped=stopped, ended=ended and not stopped, failed=failed)
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _explain(self, exc: BaseException) -> GenerationError:
        import httpx

        where = f"the model server at {self.url}"
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return GenerationError(f"{where} sent nothing for {self.stall_s:.0f} s: it may be overloaded or "
                                   f"stuck (${TIMEOUT_ENV} sets the wait)")
        if isinstance(exc, httpx.TransportError):
            return GenerationError(f"{where} cannot be reached or closed the connection mid-reply; "
                                   "the next message tries again")
        if isinstance(exc, _StatusError):
            if exc.status in (401, 403):
                return GenerationError(f"{where} refused the API key: set ${KEY_ENVS[0]} to the key it was "
                                       "started with")
            if exc.status == 404:
                return GenerationError(f"{where} no longer serves {self.model!r} ({exc.message})")
            return GenerationError(f"{where} refused the request (HTTP {exc.status}): {exc.message}")
        if isinstance(exc, ValueError | KeyError | TypeError | AttributeError):  # json and SSE decoding included
            return GenerationError(f"{where} sent a reply that is not a chat-completions stream "
                                   f"({type(exc).__name__}: {str(exc)[:120]})")
        return generation_failed(exc)


def _shut_on_stop(conn: _Connection, stop_event: threading.Event, done: threading.Event) -> None:
    while not done.is_set():
        if stop_event.wait(0.05):
            if not done.is_set():
                conn.shut()
            return


class _StatusError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.message = _server_message(body)


def _server_message(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else the body's start."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "no details"
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:300] if message else body.strip()[:300]
