"""What saving a chat costs next to the reply itself: the app's own save calls (the question before the
reply, the reply with its metadata after) timed against each reply's wall time on a real model.

    python bench/history_overhead.py                      # light-gguf (Krishna's adapter), 20 replies, SQLite
    python bench/history_overhead.py --replies 10 --db postgresql+psycopg://user@127.0.0.1:5432/db

Target (issue #16): saving adds at most 2% to a reply's wall time. Reported: the ratio of the summed save
time to the summed reply time, and the medians of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run(replies: int = 20, db: str | None = None, model: str | None = None, max_new: int = 96) -> dict:
    from krishna_ai.core.personas import load_personas
    from krishna_ai.history.schema import LOCAL_USER
    from krishna_ai.history.store import HistoryStore
    from krishna_ai.runtime.tiers import default_tier
    from krishna_ai.studio.saving import save_question, save_reply
    from krishna_ai.studio.service import Studio

    model = model or default_tier()
    data = Path(tempfile.mkdtemp(prefix="history-bench-"))
    store = HistoryStore(db or f"sqlite:///{data / 'history.db'}", data_dir=data)
    studio = Studio(load_personas(), default_model=model, store=store)
    studio.engine(model, studio.persona("krishna"))  # loaded before the clock starts
    questions = [json.loads(line)["question"] for line in (REPO / "data/krishna/heldout.jsonl").read_text().splitlines()
                 if line.strip()]
    sampling = {"temperature": 0.7, "top_p": 0.95, "top_k": 64, "max_new_tokens": max_new}
    reply_s, save_s = [], []
    cid: str | None = None
    history: list[dict] = []
    for i in range(replies):
        question = questions[i % len(questions)]
        history.append({"role": "user", "content": question})
        t0 = time.perf_counter()
        cid, history = save_question(store, LOCAL_USER, cid, "krishna", history)
        t1 = time.perf_counter()
        earlier = [{"role": m["role"], "content": m["content"]} for m in history[:-1]][-6:]
        final = None
        for update in studio.chat("krishna", earlier, question, model=model, **sampling):
            final = update
        t2 = time.perf_counter()
        assert final is not None
        saved = save_reply(studio, LOCAL_USER, cid, final, model, "krishna", "full", sampling)
        t3 = time.perf_counter()
        assert saved is not None
        history.append({"role": "assistant", "content": final.text})
        reply_s.append(t2 - t1)
        save_s.append((t1 - t0) + (t3 - t2))
    assert len(store.chat(LOCAL_USER, cid).messages) == 2 * replies
    out = {"model": model, "db": store.where.split("://")[0], "replies": replies,
           "reply_median_s": round(statistics.median(reply_s), 3),
           "save_median_ms": round(1000 * statistics.median(save_s), 2),
           "save_max_ms": round(1000 * max(save_s), 2),
           "overhead": round(sum(save_s) / sum(reply_s), 5)}
    out["checks"] = {"saving adds <= 2% to a reply's wall time": out["overhead"] <= 0.02}
    store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=20)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in a fresh folder)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    out = run(args.replies, args.db, args.model, args.max_new_tokens)
    print("| model | database | replies | reply median | save median (question + reply) | save max | "
          "save ÷ reply time |\n|---|---|---|---|---|---|---|")
    print(f"| {out['model']} | {out['db']} | {out['replies']} | {out['reply_median_s']} s | {out['save_median_ms']} ms "
          f"| {out['save_max_ms']} ms | {100 * out['overhead']:.2f}% |")
    for name, ok in out["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
