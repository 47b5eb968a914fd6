"""Nothing lost: concurrent clients, each chatting in its own saved chat, with the app SIGKILLed mid-run.

    python bench/history_soak.py                                  # 32 clients × 120 s, kill at 60 s
    python bench/history_soak.py --clients 4 --seconds 20 --kill-at 8 --max-new-tokens 8
    python bench/history_soak.py --db postgresql+psycopg://user@127.0.0.1:5432/db
    python bench/history_soak.py --server-slots 4                 # replies through the app's llama-server router

`python app.py` runs as a child process on the light tier (llama.cpp when installed) with its own SQLite
file (or --db). Every client makes a chat (/reply chat_id="new") and keeps sending numbered messages
into it; at --kill-at the app is killed with SIGKILL and started again on the same database, and the
clients carry on (a request that fails while it is down is retried with the next number).

Checks (printed, and the exit code), from the database itself after the run:
- every message a client sent and got a reply for is in its chat exactly once, with that reply;
- each chat's messages are in the order sent (positions 1..n, no gaps, no duplicates);
- at most the reply in flight is lost: per chat, at most one question without its reply, and only
  one sent around the kill;
- no chat holds another client's message; the database passes its integrity check;
- with --server-slots, no llama-server the killed app started is left running (the router dies with it).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = ["How do I stay calm before an exam?", "My friend betrayed me. What now?", "Should I change jobs?",
             "I cannot sleep before big days.", "How do I forgive my brother?", "I feel lost in a new city."]


@dataclass
class Client:
    idx: int
    chat_id: str | None = None
    acked: list[tuple[str, str]] = field(default_factory=list)
    """(question, reply) for every request that returned."""
    acked_at: list[float] = field(default_factory=list)
    """When each of `acked` returned."""
    failed: list[tuple[str, float]] = field(default_factory=list)
    """(question, when) for every request that failed (sent while the app was down or being killed)."""


class App:
    """`python app.py` as a child process on a fixed port and database."""

    def __init__(self, port: int, db: str, data: Path, model: str, extra: list[str] | None = None):
        self.port, self.db, self.data, self.model, self.extra = port, db, data, model, extra or []
        self.proc: subprocess.Popen | None = None
        self.log = data / "app.log"

    def start(self, timeout: float = 240.0) -> None:
        import socket

        env = {**os.environ, "KRISHNA_AI_DATA": str(self.data)}
        # every simulated client comes from 127.0.0.1 without a login: one "user" to the app's per-user limits,
        # which a soak of the engine and the store must not measure
        cmd = [sys.executable, "app.py", "--port", str(self.port), "--db", self.db, "--user-rate", "off",
               "--user-replies", "1000"]
        if self.model:
            cmd += ["--model", self.model]
        cmd += self.extra
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the app did not listen within {timeout:.0f} s")

    def kill(self) -> tuple[list[int], list[int]]:
        """SIGKILL the app: (the llama-server processes it had started, those still alive 5 s later)."""
        assert self.proc is not None
        servers = llama_servers(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(p) for p in servers):
            time.sleep(0.1)
        return servers, [p for p in servers if alive(p)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def llama_servers(pid: int) -> list[int]:
    """The llama-server processes under `pid` (the router and the model processes it starts)."""
    from bench.common import process_tree

    found = []
    for p in process_tree(pid)[1:]:
        try:
            if Path(f"/proc/{p}/comm").read_text().strip().startswith("llama-server"):
                found.append(p)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


_GATE: list = []
_GATE_LOCK = threading.Lock()


def numbered(client: int, n: int, rng: random.Random) -> str:
    """Client `client`'s message number `n`: one of QUESTIONS with a tag ("#3.12") that names both, and one that
    Krishna answers: the tag alone can move the persona's scope gate to a decline, and a soak of declines would
    never run the model, so each candidate is judged by the app's own gate first (the next question if not)."""
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.scope import judge
    from krishna_ai.runtime.embed import LightEmbedder

    with _GATE_LOCK:
        if not _GATE:
            _GATE.append((load_personas()["krishna"], LightEmbedder()))
    persona, embed = _GATE[0]
    start = rng.randrange(len(QUESTIONS))
    candidates = [f"{QUESTIONS[(start + k) % len(QUESTIONS)]} #{client}.{n}" for k in range(len(QUESTIONS))]
    return next((q for q in candidates if judge(persona, q, embed, follow_up=n > 0) is None), candidates[0])


def tag(question: str) -> tuple[int, int]:
    """(client, number) from a question `numbered` made."""
    client, n = question.rsplit("#", 1)[1].split(".")
    return int(client), int(n)


def client_loop(url: str, c: Client, keep_going: Callable[[], bool], max_new: int, rng: random.Random) -> None:
    from gradio_client import Client as GradioClient

    api = None
    n = 0
    while keep_going():
        question = numbered(c.idx, n, rng)
        n += 1
        try:
            if api is None:
                api = GradioClient(url, verbose=False)
            out = api.predict(question, "krishna", 0.7, None, None, max_new, api_name="/reply",
                              chat_id=c.chat_id or "new")
            c.chat_id = out["chat_id"]
            c.acked.append((question, out["reply"]))
            c.acked_at.append(time.time())
        except Exception:  # noqa: BLE001 - the app is down (killed): counted, and the client carries on
            c.failed.append((question, time.time()))
            api = None
            time.sleep(1.0)


def check(store, clients: list[Client], kill_window: tuple[float, float] | None,
          orphans: list[int] | None = None) -> dict:
    """The pass criteria, read from the database."""
    from krishna_ai.history.schema import LOCAL_USER

    problems: list[str] = []
    lost_replies = 0
    for c in clients:
        if c.chat_id is None:
            problems.append(f"client {c.idx}: never got a chat")
            continue
        msgs = store.chat(LOCAL_USER, c.chat_id).messages
        if [m.seq for m in msgs] != list(range(1, len(msgs) + 1)):
            problems.append(f"client {c.idx}: positions are not 1..{len(msgs)}")
        questions = [m.content for m in msgs if m.role == "user"]
        if any(tag(q)[0] != c.idx for q in questions):
            problems.append(f"client {c.idx}: holds another client's message")
        if len(set(questions)) != len(questions):
            problems.append(f"client {c.idx}: a message is saved twice")
        numbers = [tag(q)[1] for q in questions]
        if numbers != sorted(numbers):
            problems.append(f"client {c.idx}: messages out of order")
        pairs = {}
        for i, m in enumerate(msgs):
            if m.role == "user":
                nxt = msgs[i + 1] if i + 1 < len(msgs) else None
                pairs[m.content] = nxt.content if nxt is not None and nxt.role == "assistant" else None
        for q, reply in c.acked:
            if pairs.get(q, "missing") != reply:
                problems.append(f"client {c.idx}: acknowledged {q!r} is missing or has another reply")
        unanswered = [q for q, r in pairs.items() if r is None]
        failed_at = dict(c.failed)
        for q in unanswered:  # only a request cut by the kill may have lost its reply
            if kill_window is None or not kill_window[0] - 5 <= failed_at.get(q, 0.0) <= kill_window[1]:
                problems.append(f"client {c.idx}: {q!r} lost its reply away from the kill")
        if len(unanswered) > 1:
            problems.append(f"client {c.idx}: {len(unanswered)} questions without a reply (at most 1 allowed)")
        lost_replies += len(unanswered)
    integrity = store.check()
    checks = {"every acknowledged message saved once, in order, with its reply": not problems,
              "at most the reply in flight lost": not any("reply" in p for p in problems),
              "database integrity check": not integrity}
    if orphans is not None:
        checks["no llama-server left by the killed app"] = not orphans
        problems += [f"llama-server {pid} outlived the killed app" for pid in orphans]
    return {"problems": problems, "integrity": integrity, "lost_replies": lost_replies, "checks": checks}


def warm_caches() -> None:
    """Krishna's card vectors (its stories, its counsel cards and their 4,000 examples) computed into the cache the
    app shares, before it starts: on a cold cache the app's first question spends tens of seconds of a 2-core
    machine embedding them, and the soak would measure that instead of the kill."""
    from krishna_ai.core.grounding import ground, teachings_for
    from krishna_ai.core.personas import load_personas

    krishna = load_personas()["krishna"]
    ground(krishna, QUESTIONS[0])
    teachings_for(krishna, QUESTIONS[0])


def run(clients: int = 32, seconds: float = 120.0, kill_at: float | None = 60.0, max_new: int = 16,
        db: str | None = None, data: Path | None = None, model: str = "", seed: int = 0,
        server_slots: int = 0, min_each_side: int = 0) -> dict:
    """The soak; with `min_each_side`, the kill waits (up to a minute past `kill_at`) for that many replies, and the
    clients carry on past `seconds` (up to two minutes) until that many came after the restart: a slow machine
    still tests a kill between replies, not a count of them."""
    import tempfile

    from krishna_ai.history.store import HistoryStore
    from krishna_ai.ship.serve import port_free

    data = data or Path(tempfile.mkdtemp(prefix="history-soak-"))
    db = db or f"sqlite:///{data / 'history.db'}"
    warm_caches()
    port = random.Random(seed).randint(20000, 40000)
    while not port_free("127.0.0.1", port):
        port += 1
    app = App(port, db, data, model, ["--server-slots", str(server_slots)] if server_slots else [])
    app.start()
    url = f"http://127.0.0.1:{port}/"
    rng = random.Random(seed)
    cs = [Client(i) for i in range(clients)]
    started = time.time()
    until = started + seconds
    window: tuple[float, float] | None = None

    def replies(since: float) -> int:
        return sum(t > since for c in cs for t in list(c.acked_at))

    def keep_going() -> bool:
        now = time.time()
        if now < until:
            return True
        return kill_at is not None and now < until + 120 and (window is None or replies(window[1]) < min_each_side)

    threads = [threading.Thread(target=client_loop, args=(url, c, keep_going, max_new, random.Random(rng.random())),
                                daemon=True) for c in cs]
    for t in threads:
        t.start()
    servers, orphans = [], None
    try:
        if kill_at is not None:
            time.sleep(max(0.0, started + kill_at - time.time()))
            while replies(0.0) < min_each_side and time.time() < started + kill_at + 60:
                time.sleep(0.2)
            killed = time.time()
            servers, orphans = app.kill()
            app.start()
            window = (killed, time.time())
        for t in threads:
            t.join(seconds + 600)
    finally:
        app.stop()
    store = HistoryStore(db, data_dir=data)
    out = check(store, cs, window, orphans if server_slots else None)
    from krishna_ai.core.personas import load_personas

    decline = load_personas()["krishna"].scope.decline
    out.update(declined=sum(r.startswith(decline[:40]) for c in cs for _, r in c.acked), llama_servers=len(servers),
               clients=clients, seconds=round(time.time() - started, 1),
               replies=sum(len(c.acked) for c in cs), failed_requests=sum(len(c.failed) for c in cs),
               replies_before_kill=sum(t < window[0] for c in cs for t in c.acked_at) if window else None,
               replies_after_restart=sum(t > window[1] for c in cs for t in c.acked_at) if window else None,
               restart_s=round(window[1] - window[0], 1) if window else None, db=store.where)
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--kill-at", type=float, default=60.0, help="seconds in; negative: never kill")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in a fresh folder)")
    ap.add_argument("--model", default="", help="the app's --model (default: its own default tier)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-slots", dest="server_slots", type=int, default=0,
                    help="the app's --server-slots: replies through its llama-server router (default 0: in-process)")
    args = ap.parse_args()
    out = run(args.clients, args.seconds, args.kill_at if args.kill_at >= 0 else None, args.max_new_tokens,
              args.db, model=args.model, seed=args.seed, server_slots=args.server_slots)
    print(f"{args.clients} clients × {args.seconds:.0f} s, SIGKILL at {args.kill_at:.0f} s, {out['db']}"
          + (f", --server-slots {args.server_slots}" if args.server_slots else ""))
    print("| measure | value |\n|---|---|")
    for key in ("replies", "replies_before_kill", "replies_after_restart", "declined", "failed_requests",
                "lost_replies", "restart_s", "llama_servers", "seconds"):
        print(f"| {key} | {out[key]} |")
    for name, ok in out["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for p in [*out["problems"][:20], *out["integrity"][:5]]:
        print(f"problem: {p}")
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
