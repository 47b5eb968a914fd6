"""What a stranger with the link can do: choose only the offered models, and guess passwords slowly.

Every row of the table goes through the real server (`/chat` API) of an app built by `app.build` with
its default policy; the loader records what it was asked to load, so "refused" means nothing loaded.
"""

from __future__ import annotations

import logging
import re
import time

import pytest

import app
from krishna_ai.core.errors import ConfigError, InputError
from krishna_ai.studio.access import LoginGuard, ModelPolicy, load_credentials
from tests.conftest import free_port, model_written_personas, serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_dir):
    """The app as `python app.py --no-preload` builds it, with a loader that records every load."""
    from tests.conftest import ScriptedEngine

    loads: list[str] = []
    args = app.parse_args(["--no-preload", "--port", str(free_port())])
    demo, studio = app.build(args)

    def loader(spec, adapter):
        loads.append(spec)
        return ScriptedEngine(["fine"])

    studio._loader = loader
    studio.personas = model_written_personas()  # PET's reply is the model's
    url, client = serve(demo)
    yield client, loads, tiny_dir
    demo.close()


ROWS = [
    ("a folder on the server's disk", lambda tiny: str(tiny)),
    ("a path with ..", lambda tiny: "../../" + tiny.name),
    ("a hub id", lambda tiny: "someone/any-model"),
    ("a GGUF path", lambda tiny: "/tmp/model.gguf"),
    ("a home-relative path", lambda tiny: "~/models/x"),
]


@pytest.mark.parametrize("what, spec", ROWS, ids=[r[0] for r in ROWS])
def test_a_client_cannot_make_the_server_load_an_unlisted_model(guarded, what, spec):
    client, loads, tiny = guarded
    before = list(loads)
    with pytest.raises(Exception, match="is not offered by this server"):
        client.predict("hello", "pet", model=spec(tiny), api_name="/chat")
    assert loads == before  # nothing was loaded


def test_a_client_cannot_pass_a_slice_config_path(guarded, tmp_path):
    client, loads, _ = guarded
    path = tmp_path / "evil.toml"
    path.write_text("name = 'x'\n")
    with pytest.raises(Exception, match="unknown MatFormer size"):
        client.predict("hello", "pet", slice=str(path), api_name="/chat")


def test_offered_models_still_work(guarded):
    client, loads, _ = guarded
    assert client.predict("Write a poem about the sea", "pet", model="light", api_name="/chat") == "fine"
    assert "light" in loads


def test_the_policy_lists_tiers_and_the_operators_models():
    policy = ModelPolicy(["./my-finetune"])
    assert policy.check(" light ") == "light" and policy.check("./my-finetune") == "./my-finetune"
    with pytest.raises(InputError, match="--allow-model"):
        policy.check("./other")
    assert ModelPolicy(open_to_any=True).check("./other") == "./other"


def test_allow_any_model_is_refused_with_share():
    with pytest.raises(SystemExit, match="cannot be combined with --share"):
        app.build(app.parse_args(["--allow-any-model", "--share", "--no-preload"]))


def test_twenty_wrong_passwords_are_slowed_and_logged_without_the_password(caplog):
    now = [0.0]
    guard = LoginGuard([("krishna", "s3cret")], clock=lambda: now[0])
    waits = []
    with caplog.at_level(logging.WARNING, logger="krishna_ai.studio.access"):
        for i in range(20):
            ok, wait = guard.check("krishna", f"guess-{i}")
            assert not ok
            waits.append(wait)
            now[0] += wait  # the guesser waits out each lock
    assert waits[0] < 0.5 and waits == sorted(waits) and sum(waits) >= 100  # minutes, not milliseconds
    assert "failed login for user 'krishna' (20 in a row)" in caplog.text
    assert "guess-" not in caplog.text and "s3cret" not in caplog.text
    assert guard("krishna", "s3cret") and guard.delay_for(0) == 0.0  # success resets the count


def test_a_locked_user_is_refused_even_the_right_password_and_learns_nothing_from_parallel_guesses():
    now = [0.0]
    guard = LoginGuard([("krishna", "s3cret")], clock=lambda: now[0])
    for i in range(4):
        guard.check("krishna", f"guess-{i}")
        now[0] += 10
    assert not guard("krishna", "wrong")  # 5th failure: locked for 4 s
    assert guard.check("krishna", "s3cret") == (False, 4.0)  # the right password inside the lock: refused
    now[0] += 4
    assert guard("krishna", "s3cret")


def test_the_failure_table_is_bounded():
    guard = LoginGuard([("a", "pw")], max_users=100)
    for i in range(1000):
        guard(f"made-up-{i}", "x")
    assert len(guard._failures) == 100 and "made-up-999" in guard._failures


def test_wrong_logins_never_stall_another_clients_page(tmp_path):
    """20 parallel wrong logins (the locks reach seconds) while another client loads the page: < 0.3 s."""
    import concurrent.futures
    import subprocess
    import sys
    import time as clock

    import httpx

    from tests.conftest import REPO, free_port, wait_for_port

    port = free_port()
    log = tmp_path / "app.log"
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--no-preload", "--auth", "u:right"],
                            cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, 120, log)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            for i in range(6):  # the user is now locked for seconds at a time
                client.post(f"{url}/login", data={"username": "u", "password": f"x{i}"})

        def guess(i: int) -> int:  # from 20 addresses (as a local proxy reports them), so each waits out the lock
            with httpx.Client(timeout=30) as c:
                return c.post(f"{url}/login", data={"username": "u", "password": f"g{i}"},
                              headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            guesses = [pool.submit(guess, i) for i in range(20)]
            clock.sleep(0.5)  # the guesses are waiting out their lock now
            started = clock.perf_counter()
            page = httpx.get(f"{url}/login", timeout=30)
            took = clock.perf_counter() - started
            assert all(g.result() == 400 for g in guesses)
        assert page.status_code < 500 and took < 0.3, took
        with httpx.Client(timeout=30) as client:  # this address has failed 6 times; the app caps it at 10/minute
            codes = [client.post(f"{url}/login", data={"username": f"v{i}", "password": "x"}).status_code
                     for i in range(5)]
        assert codes[:4] == [400] * 4 and codes[4] == 429  # the address limit is installed in the real app
    finally:
        proc.terminate()
        proc.wait(30)


def test_failed_logins_are_capped_per_address_without_waiting():
    """One address spreading guesses over many user names is refused (429, Retry-After) after 10 failures, even
    with a right password; another address is not; a remote peer cannot pick its address by header."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from krishna_ai.studio.access import LoginLimit, client_address

    async def login(request):  # Gradio's /login: 400 for a wrong password
        form = await request.form()
        return JSONResponse({"ok": True}) if form["password"] == "right" else JSONResponse({}, status_code=400)

    app = LoginLimit(Starlette(routes=[Route("/login", login, methods=["POST"])]))

    async def run():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            async def post(user, password, ip):
                return await c.post("/login", data={"username": user, "password": password},
                                    headers={"X-Forwarded-For": ip})
            assert (await post("u", "right", "10.0.0.1")).status_code == 200  # a success never counts
            codes = [(await post(f"user{i}", "wrong", "10.0.0.1")).status_code for i in range(12)]
            locked = await post("u", "right", "10.0.0.1")
            other = await post("u", "right", "10.0.0.2")
            return codes, locked, other

    codes, locked, other = asyncio.run(run())
    assert codes == [400] * 10 + [429] * 2
    assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 60
    assert "Too many failed logins" in locked.json()["detail"]
    assert other.status_code == 200
    forwarded = [(b"x-forwarded-for", b"1.2.3.4, 10.9.9.9")]
    assert client_address({"client": ("127.0.0.1", 1), "headers": forwarded}) == "10.9.9.9"  # the proxy's entry
    assert client_address({"client": ("203.0.113.5", 1), "headers": forwarded}) == "203.0.113.5"  # not believed


def test_logins_from_file_and_environment(tmp_path, monkeypatch):
    f = tmp_path / "logins.txt"
    f.write_text("# team\nasha:pw1\n\nravi:pw:with:colons\n")
    monkeypatch.setenv("KRISHNA_AI_AUTH", "env:pw2")
    assert load_credentials(None, str(f)) == [("asha", "pw1"), ("ravi", "pw:with:colons"), ("env", "pw2")]
    f.write_text("nocolon\n")
    with pytest.raises(ConfigError, match="logins.txt:1: expected user:password"):
        load_credentials(None, str(f))


def test_a_port_in_use_is_a_clear_message(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert app.main(["--port", str(port), "--no-preload"]) == 2
    err = capsys.readouterr().err
    assert f"port {port} is in use" in err and "pass --port N" in err


def test_a_gguf_model_without_llama_cpp_is_refused_at_start(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(SystemExit, match="pip install -r requirements-llamacpp.txt"):
        app.build(app.parse_args(["--model", "light-gguf"]))


def test_auth_from_the_environment_keeps_a_comma_inside_a_password(monkeypatch):
    monkeypatch.setenv("KRISHNA_AI_AUTH", "asha:pa,ss,ravi:pw2")
    assert load_credentials(None, None) == [("asha", "pa,ss"), ("ravi", "pw2")]
    monkeypatch.setenv("KRISHNA_AI_AUTH", "asha:pw1, ravi:pw2")  # a space after the comma: still two users
    assert load_credentials(None, None) == [("asha", "pw1"), ("ravi", "pw2")]
    monkeypatch.setenv("KRISHNA_AI_AUTH", "asha:a,b,c")
    assert load_credentials(None, None) == [("asha", "a,b,c")]  # no second user made from a password


def test_each_user_gets_a_share_of_replies_and_requests(scripted):
    from krishna_ai.core.personas import load_personas
    from krishna_ai.studio.access import BusyError, UserLimits
    from krishna_ai.studio.service import Studio

    limits = UserLimits(replies=1, rate="2/minute")  # a refused request does not count against the rate
    studio = Studio(load_personas(), loader=lambda spec, adapter: scripted(["Partha, ", "rest."]), limits=limits)
    first = studio.chat("pet", [], "hello", user="user:asha")
    next(first)  # asha's reply is under way
    with pytest.raises(BusyError, match=r"already have 1 replies in progress \(at most 1 per user\)"):
        list(studio.chat("pet", [], "hello again", user="user:asha"))
    assert list(studio.chat("pet", [], "hello", user="user:bob"))[-1].done  # others are not held up
    list(first)  # asha's first reply ends: her place is free again
    list(studio.chat("pet", [], "third", user="user:asha"))
    with pytest.raises(BusyError, match=r"too many requests: at most 2 per minute for each user; try again in \d+ s"):
        list(studio.chat("pet", [], "fourth", user="user:asha"))
    crisis = list(studio.chat("pet", [], "I want to kill myself", user="user:asha"))  # never refused
    assert crisis[-1].safety is not None
    with pytest.raises(ConfigError, match="give N/second"):
        UserLimits(rate="lots")
    with pytest.raises(ConfigError, match="1 or more"):
        UserLimits(replies=0)


def test_a_failed_reply_frees_its_place(scripted):
    from krishna_ai.core.errors import InputError
    from krishna_ai.studio.access import UserLimits
    from krishna_ai.studio.service import Studio

    studio = Studio(model_written_personas(), loader=lambda spec, adapter: scripted(["ok"]),
                    limits=UserLimits(1, None))
    for _ in range(3):
        with pytest.raises(InputError, match="the message is empty"):
            list(studio.chat("pet", [], "   ", user="user:asha"))
    assert list(studio.chat("pet", [], "Write a poem about the sea", user="user:asha"))[-1].text == "ok"


def test_logins_come_from_every_source_together_and_errors_name_each_line(tmp_path, monkeypatch):
    f = tmp_path / "logins.txt"
    f.write_text("file:pw-ü\n", encoding="utf-8")
    monkeypatch.setenv("KRISHNA_AI_AUTH", "env:pw2, env2:p,w")
    assert load_credentials("cli:pw0", str(f)) == [("cli", "pw0"), ("file", "pw-ü"), ("env", "pw2"), ("env2", "p,w")]
    with pytest.raises(ConfigError) as exc:
        load_credentials(None, str(tmp_path / "missing.txt"))
    assert str(exc.value) == f"--auth-file {tmp_path / 'missing.txt'}: no such file"
    monkeypatch.setenv("KRISHNA_AI_AUTH", "nocolon")
    with pytest.raises(ConfigError) as exc:
        load_credentials("ok:pw", None)
    assert str(exc.value) == "invalid login list:\n  - $KRISHNA_AI_AUTH:1: expected user:password"
    monkeypatch.delenv("KRISHNA_AI_AUTH")
    with pytest.raises(ConfigError) as exc:
        load_credentials("bad", None)
    assert str(exc.value) == "invalid login list:\n  - --auth:1: expected user:password"
    from krishna_ai.studio.access import parse_credentials

    with pytest.raises(ConfigError) as exc:  # every bad line at once, the good ones between them kept going
        parse_credentials("a:1\n:nouser\nb:2\nnopassword:\nc:3", "f")
    assert str(exc.value) == "invalid login list:\n  - f:2: expected user:password\n  - f:4: expected user:password"
    assert parse_credentials("  a :1\n# x\nb:2", "f") == [("a", "1"), ("b", "2")]


def test_login_guard_delays_and_its_coroutine(caplog):
    import asyncio

    now = [100.0]
    guard = LoginGuard([("u", "right")], clock=lambda: now[0])
    assert [guard.delay_for(n) for n in (0, 1, 2, 3, 7, 20)] == [0.0, 0.25, 0.5, 1.0, 8.0, 8.0]  # capped at 8 s
    with caplog.at_level(logging.WARNING, logger="krishna_ai.studio.access"):
        assert guard.check("u", "wrong") == (False, 0.25)
    assert caplog.records[-1].getMessage() == "failed login for user 'u' (1 in a row)"
    now[0] += 1
    assert guard.check("u", "right") == (True, 0.0)
    assert "u" not in guard._failures  # a success forgets the failures
    assert guard.check("u", "") == (False, 0.25) and guard.check("nobody", "right")[0] is False
    quick = LoginGuard([("u", "right")], base_s=0.05)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(quick.login("u", "right")) is True
        started = time.monotonic()
        assert loop.run_until_complete(quick.login("u", "bad")) is False
        assert time.monotonic() - started >= 0.05  # a refusal answers after its lock, never sooner
        assert loop.run_until_complete(quick.login("u", "right")) is True  # the lock has been waited out
    finally:
        loop.close()


def test_login_limit_counts_only_failed_posts_to_the_login_route(caplog):
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from krishna_ai.studio.access import LoginLimit

    async def login(request):
        return JSONResponse({}, status_code=400)

    async def other(request):
        return PlainTextResponse("other" + (await request.body()).decode())  # reads what the client sent

    inner = Starlette(routes=[Route("/login", login, methods=["GET", "POST"]),
                              Route("/login/", login, methods=["POST"]), Route("/other", other, methods=["POST"])])
    app_ = LoginLimit(inner, rate="2/minute")

    async def run():
        transport = httpx.ASGITransport(app=app_, client=("203.0.113.9", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            assert [(await c.post("/other", content=b"!")).text for _ in range(4)] == ["other!"] * 4  # not login
            assert [(await c.get("/login")).status_code for _ in range(4)] == [400] * 4  # a GET is not a login
            first = [(await c.post("/login/", data={"username": "u", "password": "x"})).status_code for _ in range(3)]
            after = await c.post("/login", data={"username": "u", "password": "x"})
            return first, after

    with caplog.at_level(logging.WARNING, logger="krishna_ai.studio.access"):
        first, after = asyncio.run(run())
    assert first == [400, 400, 429] and after.status_code == 429
    assert re.search(r"^login attempts from 203\.0\.113\.9 refused for (59|60) s \(too many failures\)$",
                     caplog.records[-1].getMessage())
    # the window began at the first failure, moments ago: about a minute to wait, rounded up
    assert int(after.headers["retry-after"]) in (59, 60) and after.headers["content-type"] == "application/json"


def test_api_keys_belong_to_users_and_weak_ones_are_refused(tmp_path, monkeypatch):
    from krishna_ai.studio.access import ApiKeys

    f = tmp_path / "keys.txt"
    f.write_text("asha:" + "a" * 16 + "\n")
    monkeypatch.setenv("KRISHNA_AI_API_KEYS", "bob:" + "b" * 20)
    keys = ApiKeys.load(str(f))
    assert keys and keys.user_for("Bearer " + "a" * 16) == "asha" and keys.user_for("bearer " + "b" * 20) == "bob"
    assert keys.user_for("Bearer " + "a" * 15) is None and keys.user_for("Basic " + "a" * 16) is None
    assert keys.user_for(None) is None and keys.user_for("Bearer ") is None
    with pytest.raises(ConfigError) as exc:
        ApiKeys([("carl", "short"), ("dan", "x" * 20), ("eve", "tiny")])
    assert str(exc.value) == ("API keys must be at least 16 characters: the key of 'carl', 'eve' is shorter (python -c "
                              "'import secrets; print(secrets.token_urlsafe(24))' makes one)")
    monkeypatch.setenv("KRISHNA_AI_API_KEYS", "c:" + "c" * 16 + ", d:" + "d" * 16)
    assert ApiKeys.load(None).user_for("Bearer " + "d" * 16) == "d"
    monkeypatch.setenv("KRISHNA_AI_API_KEYS", "broken")
    with pytest.raises(ConfigError, match=r"\$KRISHNA_AI_API_KEYS:1: expected user:password"):
        ApiKeys.load(None)
    f.write_text("nocolon\n")
    with pytest.raises(ConfigError, match="keys.txt:1: expected user:password"):
        ApiKeys.load(str(f))
    with pytest.raises(ConfigError, match="no such file"):
        ApiKeys.load(str(tmp_path / "none.txt"))
    monkeypatch.delenv("KRISHNA_AI_API_KEYS")
    assert not ApiKeys.load(None)
