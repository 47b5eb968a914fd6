"""A model server before it serves: the `openai:URL[#MODEL]` spec, the API key, and the probe.

At load the server is probed once: its models (a wrong name is refused with the list), its context size,
slot count and image support where it says (llama-server's `/props`, Ollama's `/api/show`, vLLM's
`max_model_len`). The API key comes from $KRISHNA_AI_API_KEY (else $OPENAI_API_KEY) and is never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from krishna_ai.core.errors import ConfigError, ModelUnavailable

PREFIX = "openai:"
KEY_ENVS = ("KRISHNA_AI_API_KEY", "OPENAI_API_KEY")
TIMEOUT_ENV = "KRISHNA_AI_REMOTE_TIMEOUT"
DEFAULT_STALL_S = 120.0
"""Longest wait for the next streamed piece, or for the first while the request waits in the server's queue
(llama-server sends nothing until a slot takes it: with 32 users on 8 slots that can take a minute)."""
DEFAULT_CONTEXT = 8192
"""Context assumed when the server does not say (the server still refuses a prompt that is too long)."""
def is_remote_spec(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(API root URL, model name or None) of ``openai:URL[#MODEL]``. Raises ConfigError."""
    url, _, model = spec[len(PREFIX):].partition("#")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{spec!r}: give the server's API root after 'openai:', e.g. "
                          "openai:http://127.0.0.1:8081/v1#MODEL")
    return url.rstrip("/"), (model.strip() or None)


def api_key() -> str | None:
    for env in KEY_ENVS:
        if os.environ.get(env, "").strip():
            return os.environ[env].strip()
    return None


def auth_headers(key: str | None = None) -> dict[str, str]:
    """The bearer header for `key` (default: the key from the environment); {} when there is none."""
    key = key if key is not None else api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def stall_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_STALL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: give the seconds to wait for the server, more than 0")
    return value


@dataclass(frozen=True)
class ServerInfo:
    """What the probe learned about the server."""

    kind: str
    """"llama.cpp server", "Ollama", "vLLM" or "OpenAI-compatible server"."""
    models: tuple[str, ...]
    context_length: int | None = None
    slots: int | None = None
    vision: bool | None = None
    """None: the server does not say (images are sent, and a refusal is reported as such)."""
    template: str | None = None
    """llama-server's chat template: a built-in one's name ("gemma", as `serve` runs it) or the template's text."""


def _server_root(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def probe(url: str, model: str | None, *, timeout: float = 10.0) -> tuple[str, ServerInfo]:
    """(model name, ServerInfo) of the server at `url`; ModelUnavailable says what is wrong."""
    import httpx

    headers = auth_headers()
    root = _server_root(url)
    try:
        with httpx.Client(timeout=timeout, headers=headers) as http:
            resp = http.get(f"{url}/models")
            if resp.status_code in (401, 403):
                raise ModelUnavailable(f"the server at {url} refused the API key (HTTP {resp.status_code}): set "
                                       f"${KEY_ENVS[0]} to the key it was started with")
            if resp.status_code != 200:
                raise ModelUnavailable(f"{url}/models answered HTTP {resp.status_code}: is {url} the API root of an "
                                       "OpenAI-compatible server (it usually ends in /v1)?")
            try:
                entries = resp.json()["data"]
                models = tuple(str(e["id"]) for e in entries)
            except (ValueError, KeyError, TypeError):
                raise ModelUnavailable(f"{url}/models did not answer like an OpenAI-compatible server "
                                       f"(no model list in {resp.text[:80]!r})") from None
            if not models:
                raise ModelUnavailable(f"the server at {url} serves no model yet")
            if model is None:
                model = models[0]
            elif model not in models:
                raise ModelUnavailable(f"the server at {url} does not serve {model!r}; it serves: {', '.join(models)}")
            entry = next(e for e in entries if str(e["id"]) == model)
            info = ServerInfo("OpenAI-compatible server", models,
                              context_length=_int(entry.get("max_model_len")))  # vLLM says it here
            info = _llama_server(http, root, info) or _ollama(http, root, model, info) or _vllm(http, root, info)
    except httpx.TimeoutException:
        raise ModelUnavailable(f"the server at {url} did not answer within {timeout:.0f} s") from None
    except httpx.HTTPError as exc:
        raise ModelUnavailable(f"no server answers at {url} ({type(exc).__name__}): start it (for the light "
                               "model: python -m krishna_ai serve), or check the address") from None
    return model, info


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _json(resp: Any) -> dict[str, Any] | None:
    if resp.status_code != 200:
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _llama_server(http: Any, root: str, info: ServerInfo) -> ServerInfo | None:
    props = _json(http.get(f"{root}/props"))
    if props is None or "default_generation_settings" not in props:
        return None
    slots = _int(props.get("total_slots"))
    n_ctx = _int((props.get("default_generation_settings") or {}).get("n_ctx"))
    vision = (props.get("modalities") or {}).get("vision")
    template = props.get("chat_template")
    return ServerInfo("llama.cpp server", info.models, context_length=n_ctx, slots=slots,
                      vision=vision if isinstance(vision, bool) else None,
                      template=template if isinstance(template, str) else None)


def _ollama(http: Any, root: str, model: str, info: ServerInfo) -> ServerInfo | None:
    show = _json(http.post(f"{root}/api/show", json={"model": model}))
    if show is None or "capabilities" not in show:
        return None
    ctx = next((_int(v) for k, v in (show.get("model_info") or {}).items() if k.endswith(".context_length")), None)
    return ServerInfo("Ollama", info.models, context_length=ctx, vision="vision" in (show.get("capabilities") or []))


def _vllm(http: Any, root: str, info: ServerInfo) -> ServerInfo:
    version = _json(http.get(f"{root}/version"))
    kind = f"vLLM {version['version']}" if version and "version" in version else info.kind
    return ServerInfo(kind, info.models, context_length=info.context_length)
