"""The personas as an OpenAI-compatible API, on the app itself (same port, same users, same limits).

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="…")       # a key from --api-key-file
    client.models.list()                                                     # the personas
    client.chat.completions.create(model="krishna", messages=[{"role": "user", "content": "I failed."}])

`/v1/chat/completions` (streamed or not) runs exactly what the UI runs for a persona: its prompt, knowledge
retrieval, adapter, crisis check, style check and the closing sentence. What the reply rests on comes back in
an extra `krishna_ai` field (sources, style verdicts, safety, the story's person, stats), which OpenAI clients
ignore. The persona's system prompt is the only one: a client's `system`/`developer` messages are not used.
Nothing is saved (clients such as Open WebUI keep their own history). `/metrics` serves the app's counters.

Who may call: with API keys configured, a valid `Authorization: Bearer KEY` (its user's limits apply); with
logins but no keys, nobody (401 says why); with neither (a local app), anyone on this machine's loopback.
Every bad request gets an OpenAI-style error body with a 4xx status that names the problem. `/v1/openapi.json`
describes all of it (OpenAPI 3.1; tests/test_openai_api.py fuzzes the API from it with schemathesis).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from krishna_ai.core.errors import GenerationError, ImageError, InputError, KrishnaError, ModelUnavailable
from krishna_ai.core.sampling import MAX_NEW_TOKENS
from krishna_ai.studio.access import ApiKeys, BusyError, client_address
from krishna_ai.studio.metrics import CONTENT_TYPE
from krishna_ai.studio.replies import Update, reply_facts
from krishna_ai.studio.service import Studio, updates

MAX_BODY_BYTES = 1024 * 1024


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatBody(BaseModel):
    """The fields of a chat completion request this API reads (others that OpenAI clients send are ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    personality: str | None = Field(None, max_length=200)
    """An extension: whom a persona's closing story is about."""


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status, headers=headers)


def _from_domain(exc: KrishnaError) -> JSONResponse:
    if isinstance(exc, BusyError):
        return error(429, str(exc), "rate_limit_error", "rate_limited")
    if isinstance(exc, (InputError, ImageError)):
        return error(400, str(exc))
    if isinstance(exc, ModelUnavailable):
        return error(503, str(exc), "server_error", "model_unavailable")
    if isinstance(exc, GenerationError):
        return error(502, str(exc), "server_error", "generation_failed")
    return error(500, str(exc), "server_error")


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    kinds = {p.type for p in content} - {"text"}
    if kinds:
        raise InputError(f"message content of type {', '.join(sorted(kinds))} is not taken here (text only; send "
                         "images through the app's /chat endpoint)")
    return "\n".join(p.text or "" for p in content)


def _finish(update: Update) -> str:
    reason = update.stats.finish_reason if update.stats else None
    return "length" if reason == "max_tokens" else "stop"


def _extra(update: Update) -> dict[str, Any]:
    facts = reply_facts(update)
    if facts["stats"] is not None:
        facts["stats"]["dropped_turns"] = update.stats.dropped_turns if update.stats else 0
    return facts


def _usage(update: Update) -> dict[str, int]:
    s = update.stats
    prompt, completion = (s.prompt_tokens or 0, s.tokens or 0) if s else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _json(schema: dict[str, Any] | str, description: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def openapi(personas: list[str], *, secured: bool) -> dict[str, Any]:
    """This API as an OpenAPI 3.1 document: `model` is one of `personas`; with `secured`, a bearer key is needed."""
    ids = sorted(personas)
    body = ChatBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = body.pop("$defs", {})
    body["properties"]["model"] = {"type": "string", "enum": ids, "description": "a persona id"}
    # what is answered, not only what is read: tool messages and non-text parts get a 400 naming them
    schemas["ChatMessage"]["properties"]["role"]["enum"] = ["system", "developer", "user", "assistant"]
    schemas["ContentPart"]["properties"]["type"] = {"const": "text"}
    schemas["ChatBody"] = body
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
    schemas["Model"] = {"type": "object", "required": ["id", "object"],
                        "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                       "name": {"type": "string"}, "owned_by": {"type": "string"}}}
    schemas["ChatCompletion"] = {"type": "object", "required": ["id", "object", "model", "choices", "usage"],
                                 "properties": {"object": {"const": "chat.completion"}, "model": {"type": "string"},
                                                "choices": {"type": "array", "minItems": 1, "maxItems": 1},
                                                "usage": {"type": "object"}, "krishna_ai": {"type": "object"}}}
    errors = {"401": _json("Error", "no valid API key"), "429": _json("Error", "over this user's limits")}
    if not secured:
        errors.pop("401")
    chat_ok = _json("ChatCompletion", "the reply (stream: false)")
    chat_ok["content"]["text/event-stream"] = {"schema": {  # each event: a chunk (JSON) in `data`, then [DONE]
        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}
    chat_ok["description"] += ", or its chunks as server-sent events (stream: true)"
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "krishna_ai personas (OpenAI-compatible)", "version": "1"},
        "paths": {
            "/v1/models": {"get": {"operationId": "listModels", "responses": {
                "200": _json({"type": "object", "required": ["data"], "properties": {
                    "object": {"const": "list"}, "data": {"type": "array",
                                                          "items": {"$ref": "#/components/schemas/Model"}}}},
                             "the personas"), **errors}}},
            "/v1/models/{model}": {"get": {
                "operationId": "getModel",
                "parameters": [{"name": "model", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": ids}}],
                "responses": {"200": _json("Model", "the persona"), "404": _json("Error", "no such persona"),
                              **errors}}},
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChatBody"}}}},
                "responses": {"200": chat_ok, "400": _json("Error", "a bad body, named"),
                              "404": _json("Error", "no such persona"),
                              "413": _json("Error", "the body is too large"), **errors,
                              "502": _json("Error", "the model failed"),
                              "503": _json("Error", "the model cannot be loaded")}}},
        },
        "components": {"schemas": schemas},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"key": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"key": []}]
    return doc


def routes(studio: Studio, keys: ApiKeys, *, logins: bool) -> list[Route]:
    """The /v1 routes and /metrics, for the app's FastAPI (Gradio's `app_kwargs={"routes": …}`)."""

    def caller(request: Request) -> tuple[str | None, JSONResponse | None]:
        """(whose request, or the 401 that answers it)."""
        if keys:
            user = keys.user_for(request.headers.get("authorization"))
            if user is None:
                return None, error(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                   "authentication_error", "invalid_api_key")
            return f"user:{user}", None
        if logins:
            return None, error(401, "this server has logins but no API keys: the operator adds them with "
                                    "--api-key-file FILE (user:key lines)", "authentication_error", "no_api_keys")
        return f"address:{client_address(request.scope)}", None

    async def models(request: Request) -> Response:
        _, refused = caller(request)
        if refused is not None:
            return refused
        return JSONResponse({"object": "list", "data": [
            {"id": p.id, "object": "model", "created": 0, "owned_by": "krishna_ai", "name": p.name}
            for p in studio.personas.values()]})

    async def model(request: Request) -> Response:
        _, refused = caller(request)
        if refused is not None:
            return refused
        pid = request.path_params["model"]
        if pid not in studio.personas:
            return error(404, f"no persona {pid!r}; GET /v1/models lists them", code="model_not_found")
        p = studio.personas[pid]
        return JSONResponse({"id": p.id, "object": "model", "created": 0, "owned_by": "krishna_ai", "name": p.name})

    async def completions(request: Request) -> Response:
        user, refused = caller(request)
        if refused is not None:
            return refused
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, f"the request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}")
        try:
            body = ChatBody.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(400, f"the request body is not JSON: {exc}")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            return error(400, f"invalid request: {problems}")
        if body.model not in studio.personas:
            return error(404, f"no persona {body.model!r}; GET /v1/models lists them", code="model_not_found")
        try:
            turns = [(m.role, _text(m.content)) for m in body.messages if m.role not in ("system", "developer")]
            if any(role in ("tool", "function") for role, _ in turns):
                raise InputError("tool messages are not supported: the personas call no tools")
            if not turns or turns[-1][0] != "user":
                raise InputError("the last message (after any system messages) must be the user's")
        except InputError as exc:
            return error(400, str(exc))
        history = [{"role": role, "content": text} for role, text in turns[:-1] if text]
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
                    "max_new_tokens": body.max_completion_tokens or body.max_tokens}
        stream = updates(studio, body.model, history, turns[-1][1], user=user, endpoint="openai",
                         personality=body.personality, session=f"openai-{uuid.uuid4().hex}", **sampling)
        try:  # the first update (or the refusal) before answering, so a refusal gets its status code
            first = await anext(stream)
        except StopAsyncIteration:
            return error(500, "the reply ended before it began", "server_error")
        except KrishnaError as exc:
            await stream.aclose()
            return _from_domain(exc)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return StreamingResponse(_sse(stream, first, cid, created, body.model),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        last = first
        try:
            async for update in stream:
                last = update
        except KrishnaError as exc:
            return _from_domain(exc)
        finally:
            await stream.aclose()  # a client that went away stops the reply
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": last.text},
                         "finish_reason": _finish(last)}],
            "usage": _usage(last), "krishna_ai": _extra(last)})

    async def schema(request: Request) -> Response:
        _, refused = caller(request)
        if refused is not None:
            return refused
        return JSONResponse(openapi(list(studio.personas), secured=bool(keys) or logins))

    async def metrics(request: Request) -> Response:
        _, refused = caller(request)
        if refused is not None:
            return refused
        if studio.metrics is None:
            return error(404, "metrics are off on this server")
        return Response(studio.metrics.text(), media_type=CONTENT_TYPE)

    return [Route("/v1/models", models, methods=["GET"]), Route("/v1/models/{model}", model, methods=["GET"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/openapi.json", schema, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]


async def _sse(stream: AsyncIterator[Update], first: Update, cid: str, created: int, model: str
               ) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI streams them: the text in pieces, then the finish reason (with usage and
    the `krishna_ai` field), then [DONE]. A client that goes away cancels this, which stops the reply."""

    def event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    sent = ""
    yield event({"role": "assistant", "content": ""})
    update: Update | None = first
    try:
        while update is not None:
            text = update.text
            piece = text[len(sent):] if text.startswith(sent) else text  # the closing sentence is appended
            if piece:
                yield event({"content": piece})
                sent = text
            if update.done:
                yield event({}, _finish(update), usage=_usage(update), krishna_ai=_extra(update))
                break
            update = await anext(stream, None)
    except KrishnaError as exc:  # after the headers: the error travels as an event
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n".encode()
    finally:
        await stream.aclose()  # a client that went away stops the reply
    yield b"data: [DONE]\n\n"
