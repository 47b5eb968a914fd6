"""The chats sidebar with many chats: listing and searching one user's 10,000 chats, as the app does it.

    python bench/sidebar.py                        # SQLite, 10,000 chats of 6 messages for one user
    python bench/sidebar.py --chats 2000 --db postgresql+psycopg://user@127.0.0.1:5432/db

Target (issue #32): list and search ≤ 100 ms p95 on SQLite. Timed: `HistoryStore.chats(user)` (the newest
200, as the sidebar shows them) and `chats(user, query)` for words found in a few chats, in many, in none,
and a short one; 30 runs each, after one warm-up. Other users' chats (another 10,000) share the tables.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ("exam calm fear work duty family friend rust blight leaf maize field rain harvest Shivaji fort Pune "
         "history prompt model answer question story courage patience anger sleep money job travel").split()


def fill(store, user: str, chats: int, rng: random.Random) -> None:
    """`chats` chats of 6 messages each, written in bulk (as imports would), with spread-out times."""
    from datetime import datetime, timedelta

    from krishna_ai.history.schema import ChatRow, MessageRow, UserRow

    with store._session.begin() as session:
        owner = UserRow(name=user)
        session.add(owner)
        session.flush()
        start = datetime(2026, 1, 1)
        for i in range(chats):
            when = start + timedelta(minutes=i)
            row = ChatRow(id=f"{user[:4]}{i:08d}{rng.randrange(16**8):08x}", user_id=owner.id,
                          title=f"Chat {i} about {rng.choice(WORDS)}", persona=rng.choice(["krishna", "maize"]),
                          created_at=when, updated_at=when)
            session.add(row)
            for seq in range(1, 7):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
                if i % 997 == 0 and seq == 1:
                    text += " zanzibar"  # a word in 11 chats of 10,000
                session.add(MessageRow(chat=row, seq=seq, role="user" if seq % 2 else "assistant", content=text,
                                       meta={}, created_at=when))
            if i % 1000 == 999:
                session.flush()


def timed(fn, runs: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chats", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    args = ap.parse_args()

    from krishna_ai.history.store import HistoryStore

    data = Path(tempfile.mkdtemp(prefix="sidebar-bench-"))
    store = HistoryStore(args.db or f"sqlite:///{data / 'history.db'}", data_dir=data)
    rng = random.Random(0)
    t0 = time.perf_counter()
    fill(store, "asha", args.chats, rng)
    fill(store, "bob", args.chats, rng)
    built = time.perf_counter() - t0
    cases = {"list (newest 200)": "", "search: rare word (11 chats)": "zanzibar",
             "search: common word (most chats)": "courage", "search: no match": "xylophone",
             "search: 2 letters": "ex"}
    out = {"db": store.engine.dialect.name, "chats_per_user": args.chats, "messages": 12 * args.chats,
           "fill_s": round(built, 1)}
    for name, query in cases.items():
        found = len(store.chats("asha", query))
        out[name] = {**timed(lambda q=query: store.chats("asha", q), args.runs), "found": found}
    print(json.dumps(out, indent=1))
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
