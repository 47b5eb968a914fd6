"""Soak test: concurrent gradio_client sessions with random prompts and random cancels.

    python bench/soak.py                        # 8 clients, 120 s, the app in-process on the light tier
    python bench/soak.py --clients 4 --seconds 20 --max-new-tokens 12
    python bench/soak.py --clients 32 --serve 8           # the app on llama-server (8 slots): `serve`

Pass criteria (printed, and the exit code): no failed request, no generate thread left running,
resident memory stable within 10% (median of the last fifth vs the first fifth after warm-up), and a
fair queue (no client starved: each finishes at least half the mean number of requests). Timings
are reported, never judged: a slow machine does not fail.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from krishna_ai.ship.serve import free_port  # noqa: E402

PROMPTS = [
    "I failed my exam again. What should I do?", "How do I stop being angry at my brother?",
    "Should I leave my stable job?", "I feel lonely in a new city.", "How do I forgive my friend?",
    "Who was Ahilyabai Holkar?", "What happened at Panipat in 1761?", "Improve this prompt: write a poem",
]
PERSONAS = ["krishna", "krishna", "aurora", "pet"]


@dataclass
class Result:
    client: int
    submitted: float
    first_chunk: float | None = None
    finished: float | None = None
    cancelled: bool = False
    error: str | None = None
    chunks: int = 0


@dataclass
class Soak:
    results: list[Result] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(url: str, idx: int, until: float, soak: Soak, rng: random.Random, max_new: int,
                cancel_rate: float) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    while time.time() < until:
        res = Result(idx, time.time())
        cancel_after = rng.uniform(0.2, 2.0) if rng.random() < cancel_rate else None
        try:
            job = client.submit(rng.choice(PROMPTS), rng.choice(PERSONAS), None, None, None, None,
                                rng.randint(max(2, max_new // 2), max_new), api_name="/chat")
            for _ in job:
                res.chunks += 1
                now = time.time()
                res.first_chunk = res.first_chunk or now
                if cancel_after is not None and now - res.first_chunk > cancel_after:
                    job.cancel()
                    res.cancelled = True
                    break
            if not res.cancelled:
                job.result()  # raises the server's error, if any
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            res.error = f"{type(exc).__name__}: {exc}"[:300]
        res.finished = time.time()
        with soak.lock:
            soak.results.append(res)


def sample_rss(until: float, soak: Soak) -> None:
    import psutil

    proc = psutil.Process()
    while time.time() < until:
        soak.rss.append((time.time(), proc.memory_info().rss))
        time.sleep(0.5)


def start_app(model: str, adapter: str | None, concurrency: int = 1) -> tuple[object, str]:
    from krishna_ai.core.personas import load_personas
    from krishna_ai.studio.service import Studio
    from krishna_ai.studio.ui import build_demo

    studio = Studio(load_personas(), default_model=model, adapters={model: adapter} if adapter else None,
                    concurrency=concurrency)
    studio.engine()  # load before the clock starts
    demo = build_demo(studio)
    port = free_port()
    demo.queue(default_concurrency_limit=concurrency).launch(prevent_thread_lock=True, server_port=port, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def run(clients: int = 8, seconds: float = 120.0, max_new: int = 24, cancel_rate: float = 0.3, seed: int = 0,
        model: str = "light", adapter: str | None = None, url: str | None = None, concurrency: int = 1,
        busy_slots: Callable[[], list[bool]] | None = None) -> dict:
    demo = None
    if url is None:
        demo, url = start_app(model, adapter, concurrency)
    soak = Soak()
    rng = random.Random(seed)
    started = time.time()
    until = started + seconds
    threads = [threading.Thread(target=sample_rss, args=(until, soak), daemon=True)]
    threads += [threading.Thread(target=client_loop, args=(url, i, until, soak, random.Random(rng.random()),
                                                           max_new, cancel_rate), daemon=True)
                for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    time.sleep(1.0)  # let cancelled generations wind down
    leftover = [t.name for t in threading.enumerate() if t.name == "krishna-generate" and t.is_alive()]
    busy = sum(busy_slots()) if busy_slots else None  # a model server: slots still generating after the run
    if demo is not None:
        demo.close()
    out = summarise(soak, clients, time.time() - started, leftover)
    if busy is not None:
        out["server_slots_busy_after"] = busy
        out["checks"]["no server slot left busy"] = busy == 0
    return out


def summarise(soak: Soak, clients: int, elapsed: float, leftover: list[str]) -> dict:
    res = soak.results
    failed = [r for r in res if r.error]
    done = [r for r in res if not r.error and not r.cancelled]
    waits = [r.first_chunk - r.submitted for r in res if r.first_chunk]
    per_client = [sum(1 for r in res if r.client == c and not r.error) for c in range(clients)]
    rss = [v for _, v in soak.rss]
    fifth = max(1, len(rss) // 5)
    early = statistics.median(rss[fifth: 2 * fifth] or rss[:fifth])  # skip the first fifth: warm-up
    late = statistics.median(rss[-fifth:])
    drift = (late - early) / early if early else 0.0
    mean_share = statistics.mean(per_client) if per_client else 0
    return {
        "requests": len(res), "completed": len(done), "cancelled": sum(r.cancelled for r in res),
        "failed": len(failed), "errors": sorted({r.error for r in failed})[:5],
        "seconds": round(elapsed, 1), "wait_median_s": round(statistics.median(waits), 2) if waits else None,
        "wait_max_s": round(max(waits), 2) if waits else None, "per_client": per_client,
        "rss_early_mb": round(early / 2**20), "rss_late_mb": round(late / 2**20), "rss_drift": round(drift, 4),
        "generate_threads_left": len(leftover),
        "checks": {
            "no failed requests": not failed,
            "no generate thread left": not leftover,
            "RSS within 10%": abs(drift) <= 0.10,
            "fair queue (every client >= half the mean)": all(n >= 0.5 * mean_share for n in per_client),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--cancel-rate", type=float, default=0.3)
    ap.add_argument("--model", default="light")
    ap.add_argument("--adapter")
    ap.add_argument("--url", help="soak a running app instead of starting one in-process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve", type=int, metavar="SLOTS",
                    help="run the app on llama-server with this many slots (Krishna's light adapter merged)")
    args = ap.parse_args()
    if args.serve:
        from krishna_ai.core.personas import load_personas
        from krishna_ai.ship.serve import LlamaServer, ServerConfig, model_file, slot_states

        alias, gguf = model_file("light-gguf", load_personas()["krishna"].adapter_for("light-gguf"))
        config = ServerConfig(model=gguf, alias=alias, parallel=args.serve, port=free_port())
        with LlamaServer(config).start():
            time.sleep(0.5)
            out = run(args.clients, args.seconds, args.max_new_tokens, args.cancel_rate, args.seed, config.spec,
                      None, args.url, concurrency=32,
                      busy_slots=lambda: (time.sleep(2.0), slot_states(config.host, config.port))[1])
    else:
        out = run(args.clients, args.seconds, args.max_new_tokens, args.cancel_rate, args.seed, args.model,
                  args.adapter, args.url)
    print(f"{args.clients} clients × {args.seconds:.0f} s, max_new_tokens ≤ {args.max_new_tokens}, "
          f"cancel rate {args.cancel_rate}")
    print("| measure | value |\n|---|---|")
    for key in ("requests", "completed", "cancelled", "failed", "wait_median_s", "wait_max_s", "per_client",
                "rss_early_mb", "rss_late_mb", "rss_drift", "generate_threads_left", "server_slots_busy_after"):
        if key in out:
            print(f"| {key} | {out[key]} |")
    for name, ok in out["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for err in out["errors"]:
        print(f"error: {err}")
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
