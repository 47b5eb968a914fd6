"""Who may do what on a running app: which models a client may pick, and who may log in.

A client (the UI's model box, `/chat(model=…)`) may only choose the tiers and the models the operator
named at start; anything else — a folder on the server's disk, a hub id, a .gguf path, a path with
`..` — is refused before anything is loaded. Opening that up is an explicit operator flag
(`--allow-any-model`), never allowed together with a public share link.

Logins come from `--auth USER:PASSWORD`, `--auth-file FILE` (one `user:password` per line) or
$KRISHNA_AI_AUTH. Gradio does not limit login attempts: `LoginGuard` locks a user out after failures
(doubling lock per user, capped; no password is compared while locked) and logs them without the password,
and `LoginLimit` caps the failed logins per client address (the `limits` library's moving window), so one
machine cannot spread its guesses over many user names either.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError, InputError
from krishna_ai.runtime.tiers import TIERS

AUTH_ENV = "KRISHNA_AI_AUTH"
log = logging.getLogger("krishna_ai.studio.access")


class ModelPolicy:
    """The model specs clients may ask for (the operator's own `--model` is always among them)."""

    def __init__(self, allowed: Iterable[str] = (), *, open_to_any: bool = False):
        self.allowed = list(dict.fromkeys([*TIERS, *(s.strip() for s in allowed if s and s.strip())]))
        self.open_to_any = open_to_any

    def check(self, spec: str) -> str:
        """`spec` stripped, or InputError saying what may be chosen instead. Nothing is loaded here."""
        spec = (spec or "").strip()
        if self.open_to_any or spec in self.allowed:
            return spec
        raise InputError(f"the model {spec!r} is not offered by this server; choose one of: "
                         f"{', '.join(self.allowed)} (the operator can add models with --allow-model)")


def parse_credentials(text: str, where: str) -> list[tuple[str, str]]:
    """`user:password` pairs, one per line (blank lines and # comments skipped); ConfigError names the line."""
    pairs, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            bad.append(f"{where}:{n}: expected user:password")
            continue
        pairs.append((user.strip(), password))
    if bad:
        raise ConfigError("invalid login list:\n  - " + "\n  - ".join(bad))
    return pairs


def file_and_env_pairs(file: str | None, flag: str, env_name: str) -> list[tuple[str, str]]:
    """`user:secret` pairs from a file named by `flag` (one per line) and from the variable `env_name`.

    In the variable, entries are separated by newlines, or by a comma that starts another `user:` (so
    "u:pa,ss" is one secret with a comma; "u:p,v:q" is two users, as the variable has always been read)."""
    pairs: list[tuple[str, str]] = []
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{flag} {file}: no such file")
        pairs += parse_credentials(path.read_text(encoding="utf-8"), str(path))
    env = os.environ.get(env_name, "")
    if env.strip():
        pairs += parse_credentials(re.sub(r",\s*(?=[^,:\s]+:)", "\n", env), f"${env_name}")
    return pairs


def load_credentials(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """Logins from --auth, --auth-file and $KRISHNA_AI_AUTH together (none: the app needs no login)."""
    pairs = parse_credentials(auth, "--auth") if auth else []
    return pairs + file_and_env_pairs(auth_file, "--auth-file", AUTH_ENV)


class LoginGuard:
    """Gradio's `auth` callable (`login`, a coroutine): checks a password, and locks a user out after failures.

    After the n-th failure in a row for a user, that user is locked for base·2^(n-1) seconds (at most `cap`):
    20 wrong guesses cost minutes, a typo a fraction of a second. While locked, every attempt is refused
    *without looking at the password*, so guesses sent in parallel learn nothing until the lock ends, and a
    right password sent too early is refused too. Nothing waits on the server's event loop: a refused
    attempt waits out its lock with `asyncio.sleep`, which never holds up other clients. The table of
    failures is bounded (`max_users`, least recently failed dropped), so made-up user names cannot fill it.
    """

    def __init__(self, credentials: list[tuple[str, str]], *, base_s: float = 0.25, cap_s: float = 8.0,
                 max_users: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._passwords = dict(credentials)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """user -> (failures in a row, monotonic time the lock ends)"""
        self._lock = threading.Lock()
        self.base_s, self.cap_s, self.max_users, self._clock = base_s, cap_s, max_users, clock

    def delay_for(self, failures: int) -> float:
        return 0.0 if failures <= 0 else min(self.cap_s, self.base_s * 2 ** (failures - 1))

    def check(self, username: str, password: str) -> tuple[bool, float]:
        """(accepted, seconds until this user may try again). Never blocks."""
        now = self._clock()
        with self._lock:
            failures, until = self._failures.get(username, (0, 0.0))
            if now < until:
                return False, until - now  # locked: the password is not even compared
            expected = self._passwords.get(username)
            ok = expected is not None and hmac.compare_digest(expected.encode(), (password or "").encode())
            if ok:
                self._failures.pop(username, None)
                return True, 0.0
            failures += 1
            wait = self.delay_for(failures)
            self._failures[username] = (failures, now + wait)
            self._failures.move_to_end(username)
            while len(self._failures) > self.max_users:
                self._failures.popitem(last=False)
        log.warning("failed login for user %r (%d in a row)", username, failures)
        return False, wait

    def __call__(self, username: str, password: str) -> bool:
        """The verdict alone, at once (for callers that are not on an event loop)."""
        return self.check(username, password)[0]

    async def login(self, username: str, password: str) -> bool:
        """What Gradio awaits: a refusal comes after the user's lock (never sooner), without blocking."""
        ok, wait = self.check(username, password)
        if not ok and wait > 0:
            await asyncio.sleep(wait)
        return ok


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def client_address(scope: dict[str, Any]) -> str:
    """Who sent a request: the peer's address, or — only when the peer is this machine, i.e. a local proxy such
    as Gradio's share tunnel or nginx — the address that proxy appended last to X-Forwarded-For. A remote peer's
    X-Forwarded-For is never believed (anyone can send one)."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if peer in LOOPBACK:
        for name, value in scope.get("headers") or []:
            if name == b"x-forwarded-for":
                forwarded = value.decode("latin-1").split(",")[-1].strip()
                if forwarded:
                    return forwarded
    return peer


class LoginLimit:
    """ASGI middleware: at most `rate` failed logins per client address (default 10 per minute, a moving window
    from the `limits` library, in memory: entries expire with their window). Past it, POST /login answers 429
    with Retry-After at once — the password is not even checked, and nothing waits. A successful login does not
    count, so a user behind a shared address who types their password right is not held up by a typo."""

    def __init__(self, app: Any, rate: str = "10/minute"):
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.app = app
        self.rate = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in ("/login",
                                                                                                   "/login/"):
            await self.app(scope, receive, send)
            return
        who = client_address(scope)
        if not self.limiter.test(self.rate, who):
            reset = self.limiter.get_window_stats(self.rate, who).reset_time
            wait = max(1, int(reset - time.time() + 0.999))
            log.warning("login attempts from %s refused for %d s (too many failures)", who, wait)
            body = (f'{{"detail": "Too many failed logins from your address; try again in {wait} s."}}').encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] >= 400:  # Gradio answers a wrong password with 400
            self.limiter.hit(self.rate, who)


class BusyError(InputError):
    """A user over their share of the app: too many replies at once, or too many requests a minute."""


class UserLimits:
    """Each user's share of the model: at most `replies` replies in progress at once, and at most `rate` requests
    (e.g. "30/minute"; a moving window from the `limits` library). Over either, `admit` refuses at once with
    BusyError saying which limit and when to try again, so one user's burst never queues ahead of everyone else
    for long. Kept in memory; a user's count ends with their last reply, the window's entries expire."""

    def __init__(self, replies: int = 2, rate: str | None = "30/minute"):
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        if replies < 1:
            raise ConfigError(f"replies per user must be 1 or more, not {replies}")
        try:
            self.rate = parse(rate) if rate else None
        except ValueError:
            raise ConfigError(f"rate {rate!r}: give N/second, N/minute, N/hour or N/day (e.g. 30/minute)") from None
        self.replies = replies
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, user: str) -> Iterator[None]:
        """Hold one of `user`'s reply places for the block, or raise BusyError."""
        with self._lock:
            active = self._active.get(user, 0)
            if active >= self.replies:
                raise BusyError(f"you already have {active} replies in progress (at most {self.replies} per user); "
                                "wait for one to finish, or stop it")
            if self.rate is not None and not self._limiter.hit(self.rate, user):
                reset = self._limiter.get_window_stats(self.rate, user).reset_time
                wait = max(1, int(reset - time.time() + 0.999))
                raise BusyError(f"too many requests: at most {self.rate.amount} per {self.rate.GRANULARITY.name} "
                                f"for each user; try again in {wait} s")
            self._active[user] = active + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._active.get(user, 1) - 1
                if left > 0:
                    self._active[user] = left
                else:
                    self._active.pop(user, None)


API_KEYS_ENV = "KRISHNA_AI_API_KEYS"
MIN_KEY_CHARS = 16


class ApiKeys:
    """API keys for the OpenAI-compatible API and /metrics, each belonging to a user of the app (the same names
    as the logins, so a key acts as that user). From `--api-key-file FILE` (one `user:key` per line) and
    $KRISHNA_AI_API_KEYS (the same, newline- or comma-separated). A key shorter than 16 characters is refused
    at start; a key is compared in constant time against every key, so timing tells nothing about which."""

    def __init__(self, pairs: list[tuple[str, str]]):
        short = [user for user, key in pairs if len(key) < MIN_KEY_CHARS]
        if short:
            raise ConfigError(f"API keys must be at least {MIN_KEY_CHARS} characters: the key of "
                              f"{', '.join(map(repr, short))} is shorter (python -c 'import secrets; "
                              "print(secrets.token_urlsafe(24))' makes one)")
        self._keys = [(key.encode(), user) for user, key in pairs]

    def __bool__(self) -> bool:
        return bool(self._keys)

    @classmethod
    def load(cls, key_file: str | None) -> ApiKeys:
        return cls(file_and_env_pairs(key_file, "--api-key-file", API_KEYS_ENV))

    def user_for(self, authorization: str | None) -> str | None:
        """The user whose key an `Authorization: Bearer KEY` header carries, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        sent = token.strip().encode()
        found = None
        for key, user in self._keys:  # every key compared, whichever matches
            if hmac.compare_digest(key, sent):
                found = user
        return found
