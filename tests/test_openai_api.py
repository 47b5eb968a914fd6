"""The personas as an OpenAI-compatible API on the running app (`/v1`), driven by the official `openai`
client; its keys, limits and errors; and `/metrics`."""

from __future__ import annotations

import json
import random

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

import app
from krishna_ai.core.personas import load_personas
from krishna_ai.studio.access import ModelPolicy, UserLimits
from krishna_ai.studio.metrics import Metrics
from krishna_ai.studio.service import Studio
from krishna_ai.studio.ui import build_demo
from tests.conftest import free_port, model_written_personas

KEY = "k-" + "a" * 30
OTHER = "k-" + "b" * 30


@pytest.fixture
def launched(scripted, tmp_path, monkeypatch):
    """start(*argv) -> (base url, engine, studio): the app's own launch with a scripted model."""
    demos = []

    def start(*argv, chunks=None, rate=None):
        args = app.parse_args(["--port", str(free_port()), "--no-preload", "--model", "light", "--no-history",
                               *argv])
        engine = scripted(chunks or ["Partha, ", "be ", "still."])
        studio = Studio(model_written_personas(), default_model="light", loader=lambda spec, adapter: engine,
                        policy=ModelPolicy(["light"]), limits=UserLimits(2, rate), metrics=Metrics())
        demo = build_demo(studio)
        app.launch(demo, args, prevent_thread_lock=True, quiet=True, studio=studio)
        demos.append(demo)
        return f"http://127.0.0.1:{args.port}", engine, studio

    yield start
    for demo in demos:
        demo.close()


def client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


def test_the_official_client_lists_personas_and_gets_a_persona_reply(launched):
    base, engine, studio = launched()
    c = client(base)
    assert sorted(m.id for m in c.models.list()) == sorted(studio.personas)
    assert c.models.retrieve("maize").id == "maize"
    reply = c.chat.completions.create(model="krishna", temperature=0, messages=[
        {"role": "system", "content": "You are a pirate."},  # the persona's prompt is the only one
        {"role": "user", "content": "How do I stay calm?"},
        {"role": "assistant", "content": "Partha, breathe."},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}])
    expected = list(Studio(load_personas(), loader=lambda s, a: engine).chat("krishna", [
        {"role": "user", "content": "How do I stay calm?"}, {"role": "assistant", "content": "Partha, breathe."}],
        "And tomorrow?", temperature=0))[-1]
    assert reply.choices[0].message.content == expected.text and reply.choices[0].finish_reason == "stop"
    sent = engine.calls[0][0]
    assert "pirate" not in json.dumps(sent) and studio.persona("krishna").system_prompt.strip()[:40] in json.dumps(sent)
    assert [m["role"] for m in sent[-4:]] == ["user", "assistant", "user", "assistant"]  # the last: written counsel
    assert reply.choices[0].message.content.startswith(sent[-1]["content"].strip())
    assert reply.usage.completion_tokens == 3 and reply.usage.total_tokens > 3
    extra = reply.model_extra["krishna_ai"]
    assert {"sources", "style", "safety", "personality", "finish_reason", "stats"} <= set(extra)
    assert extra["finish_reason"] == "end_of_turn"

    pieces = list(c.chat.completions.create(model="krishna", temperature=0, stream=True,
                                            messages=[{"role": "user", "content": "How do I stay calm?"}]))
    text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    assert text == list(Studio(load_personas(), loader=lambda s, a: engine).chat(
        "krishna", [], "How do I stay calm?", temperature=0))[-1].text
    assert len([p for p in pieces if p.choices and p.choices[0].delta.content]) >= 2  # really streamed
    assert pieces[-1].choices[0].finish_reason == "stop"
    assert pieces[-1].model_extra["krishna_ai"]["stats"]["tokens"] == 3

    crisis = c.chat.completions.create(model="pet", messages=[{"role": "user", "content": "I want to kill myself"}])
    assert crisis.model_extra["krishna_ai"]["safety"] is not None
    outside = c.chat.completions.create(model="maize", messages=[{"role": "user", "content": "My tomato has spots."}])
    assert outside.choices[0].message.content == studio.persona("maize").scope.decline
    assert outside.model_extra["krishna_ai"]["scope"] == "word"


def test_keys_act_as_their_users_and_metrics_need_one(launched, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"asha:{KEY}\nbob:{OTHER}\n")
    base, _, _ = launched("--auth", "asha:pw", "--auth", "bob:pw2", "--api-key-file", str(keys), rate="1/minute")
    with pytest.raises(openai.AuthenticationError, match="a valid API key is needed"):
        client(base, "k-" + "c" * 30).models.list()
    assert httpx.get(f"{base}/metrics").status_code == 401
    asha, bob = client(base, KEY), client(base, OTHER)
    ask = {"model": "pet", "messages": [{"role": "user", "content": "Write a poem about the sea"}]}
    assert asha.chat.completions.create(**ask).choices[0].message.content
    with pytest.raises(openai.RateLimitError, match="too many requests: at most 1 per minute"):
        asha.chat.completions.create(**ask)
    assert bob.chat.completions.create(**ask).choices[0].message.content  # bob has a share of his own
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    body = metrics.text
    assert 'krishna_ai_requests_total{endpoint="openai",outcome="ok",persona="pet"} 2.0' in body
    assert 'krishna_ai_requests_total{endpoint="openai",outcome="busy",persona="pet"} 1.0' in body
    assert 'krishna_ai_tokens_total{kind="completion",persona="pet"} 6.0' in body
    assert "krishna_ai_ttft_seconds_bucket" in body and "krishna_ai_replies_in_progress 0.0" in body


def test_logins_without_keys_close_the_api(launched):
    base, _, _ = launched("--auth", "asha:pw")
    with pytest.raises(openai.AuthenticationError, match="no API keys"):
        client(base).models.list()


BAD = [
    (b"{not json", 400, "not JSON"),
    (b"[]", 400, "invalid request"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model: Field required"),
    ({"model": "zeus", "messages": [{"role": "user", "content": "hi"}]}, 404, "no persona 'zeus'"),
    ({"model": "pet", "messages": []}, 400, "messages: List should have at least 1 item"),
    ({"model": "pet", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     400, "the last message"),
    ({"model": "pet", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"model": "pet", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
    ({"model": "pet", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n: Input should be less"),
    ({"model": "pet", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "max_tokens"),
    ({"model": "pet", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "image_url is not taken here"),
    ({"model": "pet", "messages": [{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}]}, 400,
     "tool messages are not supported"),
    ({"model": "pet", "messages": [{"role": "user", "content": "x" * 40_000}]}, 400, "the limit is 32,000"),
    ({"model": "pet", "messages": [{"role": "user", "content": "   "}]}, 400, "the message is empty"),
]


def test_every_bad_body_is_a_clear_4xx_and_random_bodies_never_a_500(launched):
    base, engine, _ = launched()
    with httpx.Client(base_url=base, timeout=30) as http:
        for body, status, message in BAD:
            resp = http.post("/v1/chat/completions", content=body if isinstance(body, bytes) else json.dumps(body),
                             headers={"Content-Type": "application/json"})
            assert resp.status_code == status and message in resp.json()["error"]["message"], (body, resp.text)
        assert engine.calls == []  # none reached the model
        rng = random.Random(0)
        values = [None, 0, -1, 1e309, "", "x" * 300, [], {}, [{}], True, "krishna", {"role": "user"}, 7.5,
                  [{"role": "user", "content": None}], [{"role": "user", "content": [{"type": "text"}]}]]
        fields = ["model", "messages", "stream", "temperature", "top_p", "top_k", "max_tokens", "n", "personality"]
        for _ in range(150):  # a small fuzz over the schema's fields: anything but a server error
            body = {f: rng.choice(values) for f in rng.sample(fields, rng.randint(0, len(fields)))}
            resp = http.post("/v1/chat/completions", content=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            assert resp.status_code < 500, (body, resp.text)


@pytest.mark.parametrize("keys", [False, True], ids=["local", "keys"])
def test_the_api_fuzzed_from_its_own_openapi_schema(launched, tmp_path, keys):
    """schemathesis on the app's own /v1/openapi.json (a local app, and one with logins and API keys), both modes:
    valid bodies and bodies that break the schema. Every check but one: no 5xx, only documented statuses and
    content types, responses that match their schemas, invalid data refused with a 4xx, and with keys a missing
    or wrong key refused. Left out: that every schema-valid body is accepted, because a schema cannot say "the
    last message is the user's", which a valid body may break (a 400 naming it)."""
    headers = {}
    if keys:
        (tmp_path / "keys.txt").write_text(f"asha:{KEY}\n")
        base, _, _ = launched("--auth", "asha:pw", "--api-key-file", str(tmp_path / "keys.txt"))
        assert httpx.get(f"{base}/v1/openapi.json").status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
    else:
        base, _, _ = launched()
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json", headers=headers)
    assert {op.ok().label for op in schema.get_all_operations()} == {
        "GET /v1/models", "GET /v1/models/{model}", "POST /v1/chat/completions"}
    seen: dict[str, set[int]] = {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(mode))
        def fuzz(case):
            response = case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
            label = f"{case.meta.generation.mode.value} {case.operation.label}"
            seen.setdefault(label, set()).add(response.status_code)

        fuzz()
    # every operation was reached in both modes where it has inputs: valid persona ids answered, invalid requests
    # refused by name (a schema-valid chat body mostly ends in an assistant message or an empty one: a 400)
    assert seen["positive GET /v1/models/{model}"] == {200} and seen["positive POST /v1/chat/completions"], seen
    assert 400 in seen["negative POST /v1/chat/completions"], seen


def test_a_bad_key_file_is_refused_at_start(tmp_path, capsys):
    keys = tmp_path / "keys.txt"
    keys.write_text("asha:short\n")
    assert app.main(["--port", str(free_port()), "--no-preload", "--api-key-file", str(keys)]) == 2
    assert "API keys must be at least 16 characters: the key of 'asha' is shorter" in capsys.readouterr().err
    assert app.main(["--port", str(free_port()), "--no-preload", "--api-key-file", str(tmp_path / "none")]) == 2
    assert "--api-key-file" in capsys.readouterr().err
