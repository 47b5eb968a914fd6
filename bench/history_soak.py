"""Nothing lost: concurrent clients, each chatting in its own saved chat, with the app SIGKILLed mid-run.

    python bench/history_soak.py                                  # 32 clients × 120 s, kill at 60 s
    python bench/history_soak.py --clients 4 --seconds 20 --kill-at 8 --max-new-tokens 8
    python bench/history_soak.py --db postgresql+psycopg://user@127.0.0.1:5432/db

`python app.py` runs as a child process on the light tier (llama.cpp when installed) with its own SQLite
file (or --db). Every client makes a chat (/reply chat_id="new") and keeps sending numbered messages
into it; at --kill-at the app is killed with SIGKILL and started again on the same database, and the
clients carry on (a request that fails while it is down is retried with the next number).

Checks (printed, and the exit code), from the database itself after the run:
- every message a client sent and got a reply for is in its chat exactly once, with that reply;
- each chat's messages are in the order sent (positions 1..n, no gaps, no duplicates);
- at most the reply in flight is lost: per chat, at most one question without its reply, and only
  one sent around the kill;
- no chat holds another client's message; the database passes its integrity check.
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
    failed: list[tuple[str, float]] = field(default_factory=list)
    """(question, when) for every request that failed (sent while the app was down or being killed)."""


class App:
    """`python app.py` as a child process on a fixed port and database."""

    def __init__(self, port: int, db: str, data: Path, model: str):
        self.port, self.db, self.data, self.model = port, db, data, model
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

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def client_loop(url: str, c: Client, until: float, max_new: int, rng: random.Random) -> None:
    from gradio_client import Client as GradioClient

    api = None
    n = 0
    while time.time() < until:
        question = f"[client {c.idx} #{n}] {rng.choice(QUESTIONS)}"
        n += 1
        try:
            if api is None:
                api = GradioClient(url, verbose=False)
            out = api.predict(question, "krishna", 0.7, None, None, max_new, api_name="/reply",
                              chat_id=c.chat_id or "new")
            c.chat_id = out["chat_id"]
            c.acked.append((question, out["reply"]))
        except Exception:  # noqa: BLE001 - the app is down (killed): counted, and the client carries on
            c.failed.append((question, time.time()))
            api = None
            time.sleep(1.0)


def check(store, clients: list[Client], kill_window: tuple[float, float] | None) -> dict:
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
        if any(not q.startswith(f"[client {c.idx} #") for q in questions):
            problems.append(f"client {c.idx}: holds another client's message")
        if len(set(questions)) != len(questions):
            problems.append(f"client {c.idx}: a message is saved twice")
        numbers = [int(q.split("#")[1].split("]")[0]) for q in questions]
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
    return {"problems": problems, "integrity": integrity, "lost_replies": lost_replies,
            "checks": {"every acknowledged message saved once, in order, with its reply": not problems,
                       "at most the reply in flight lost": not any("reply" in p for p in problems),
                       "database integrity check": not integrity}}


def run(clients: int = 32, seconds: float = 120.0, kill_at: float | None = 60.0, max_new: int = 16,
        db: str | None = None, data: Path | None = None, model: str = "", seed: int = 0) -> dict:
    import tempfile

    from krishna_ai.history.store import HistoryStore
    from krishna_ai.ship.serve import port_free

    data = data or Path(tempfile.mkdtemp(prefix="history-soak-"))
    db = db or f"sqlite:///{data / 'history.db'}"
    port = random.Random(seed).randint(20000, 40000)
    while not port_free("127.0.0.1", port):
        port += 1
    app = App(port, db, data, model)
    app.start()
    url = f"http://127.0.0.1:{port}/"
    rng = random.Random(seed)
    cs = [Client(i) for i in range(clients)]
    started = time.time()
    until = started + seconds
    threads = [threading.Thread(target=client_loop, args=(url, c, until, max_new, random.Random(rng.random())),
                                daemon=True) for c in cs]
    for t in threads:
        t.start()
    window = None
    try:
        if kill_at is not None:
            time.sleep(max(0.0, started + kill_at - time.time()))
            killed = time.time()
            app.kill()
            app.start()
            window = (killed, time.time())
        for t in threads:
            t.join(seconds + 600)
    finally:
        app.stop()
    store = HistoryStore(db, data_dir=data)
    out = check(store, cs, window)
    out.update(clients=clients, seconds=round(time.time() - started, 1),
               replies=sum(len(c.acked) for c in cs), failed_requests=sum(len(c.failed) for c in cs),
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
    args = ap.parse_args()
    out = run(args.clients, args.seconds, args.kill_at if args.kill_at >= 0 else None, args.max_new_tokens,
              args.db, model=args.model, seed=args.seed)
    print(f"{args.clients} clients × {args.seconds:.0f} s, SIGKILL at {args.kill_at:.0f} s, {out['db']}")
    print("| measure | value |\n|---|---|")
    for key in ("replies", "failed_requests", "lost_replies", "restart_s", "seconds"):
        print(f"| {key} | {out[key]} |")
    for name, ok in out["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for p in [*out["problems"][:20], *out["integrity"][:5]]:
        print(f"problem: {p}")
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
