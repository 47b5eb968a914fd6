"""Many users at once: the in-process llama.cpp engine against llama.cpp's batched server, through the Studio.

    python bench/serving.py                     # 1, 4, 8, 16 clients; 8 server slots; --write to BENCHMARKS.md
    python bench/serving.py --clients 1 4 --requests 1 --max-new-tokens 16      # a quick look

Both sides serve the same GGUF (the light model with the Krishna adapter merged, as the app serves
it), the same prompts, greedy, in one run. Every client is a thread calling `Studio.chat`, as the
app's handlers do, `--requests` times in a row; in-process, the clients wait their turn in a
first-come queue of one, as the app's queue makes them (`Queue`), and the engine runs one reply at a
time; the server decodes all its slots in one batch per step. Both engines keep prompts in their KV
cache, so a question after another of the same persona decodes only what differs.

Reported per client count: aggregate decode tok/s (all generated tokens ÷ wall time of the round),
and the time to the first token per request, p50/p95 (queue wait included: what a user feels).
Then the remote engine's own cost: one client, decode tok/s through `RemoteEngine` against the
official `openai` client on the same server, interleaved repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Series, interleaved, ratio, report, table  # noqa: E402

QUESTIONS = [
    "I failed my exam again. What should I do?", "How do I stop being angry at my brother?",
    "Should I leave my stable job?", "I feel lonely in a new city.", "How do I forgive my friend?",
    "What is my duty when my family disagrees with me?", "How can I stop fearing failure?",
    "My work feels meaningless. What should I do?", "How do I stay calm before an interview?",
    "Is it wrong to want success?", "How do I deal with jealousy?", "What should I do when I feel lost?",
    "How do I choose between two paths?", "Why do good people suffer?", "How do I let go of the past?",
    "What is true courage?",
]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Queue:
    """First come, first served, `size` at a time: the app's queue (Gradio's concurrency limit) for threads."""

    def __init__(self, size: int = 1):
        self.size, self.cond, self.issued, self.done = size, threading.Condition(), 0, 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self.cond:
            ticket = self.issued
            self.issued += 1
            self.cond.wait_for(lambda: ticket < self.done + self.size)
        try:
            yield
        finally:
            with self.cond:
                self.done += 1
                self.cond.notify_all()


def load_round(studio, clients: int, requests: int, max_new: int, queue: Queue | None = None) -> dict:
    """`clients` threads, each sending `requests` chats one after another (through `queue` if given);
    aggregate tok/s and TTFTs (the wait in the queue included)."""
    ttfts: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(idx: int) -> None:
        for k in range(requests):
            question = QUESTIONS[(idx * requests + k) % len(QUESTIONS)]
            sent = time.perf_counter()
            first = None
            final = None
            try:
                with queue.turn() if queue else contextlib.nullcontext():
                    for update in studio.chat("krishna", [], question, session=f"c{idx}", temperature=0.0,
                                              max_new_tokens=max_new, personality="Mahatma Gandhi"):
                        if first is None and update.text:
                            first = time.perf_counter() - sent
                        final = update
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                if first is not None:
                    ttfts.append(first)
                tokens.append(final.stats.tokens if final and final.stats else 0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"agg_tok_s": sum(tokens) / wall, "tokens": sum(tokens), "wall_s": wall, "ttft": ttfts, "errors": errors}


def raw_openai_decode(url: str, model: str, messages: list[dict], max_new: int) -> float:
    """Decode tok/s of one streamed reply through the official openai client (the reference)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    first = None
    pieces = 0
    usage_tokens = None
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, max_tokens=max_new,
                                            temperature=0.0, stream_options={"include_usage": True},
                                            extra_body={"top_k": 64, "min_p": 0.0})
    for chunk in stream:
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            pieces += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    n = usage_tokens or pieces
    return (n - 1) / (end - first) if first and n > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests", type=int, default=2, help="chats per client per round")
    ap.add_argument("--max-new-tokens", dest="max_new", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8, help="server slots")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads on both sides (default: all cores)")
    ap.add_argument("--overhead-repeats", type=int, default=5)
    ap.add_argument("--no-swa-full", dest="swa_full", action="store_false",
                    help="start the server without --swa-full (it then prefills every prompt whole)")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = ap.parse_args()

    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages
    from krishna_ai.runtime.llamacpp import default_threads, load_gguf
    from krishna_ai.runtime.remote import to_openai
    from krishna_ai.ship.serve import LlamaServer, ServerConfig, model_file
    from krishna_ai.studio.service import Studio
    from tests.conftest import free_port

    personas = load_personas()
    alias, gguf = model_file("light-gguf", personas["krishna"].adapter_for("light-gguf"))
    threads = args.threads or default_threads()
    config = ServerConfig(model=gguf, alias=alias, parallel=args.parallel, port=free_port(), threads=threads,
                          swa_full=args.swa_full)
    local = Studio(personas, loader=lambda spec, adapter: load_gguf(str(gguf), n_threads=threads),
                   default_model=str(gguf))
    local.engine()
    rows, results = [], {}
    with LlamaServer(config).start():
        remote = Studio(personas, default_model=config.spec, concurrency=32)
        remote.engine()
        for studio in (local, remote):  # warm-up
            load_round(studio, 1, 1, 8)
        for clients in args.clients:
            for side, studio, queue in (("in-process", local, Queue(1)), ("server", remote, None)):
                print(f"  {clients} clients: {side}", file=sys.stderr, flush=True)
                results[(side, clients)] = load_round(studio, clients, args.requests, args.max_new, queue)
        # The remote engine's own cost, one client, against the raw openai client.
        engine = remote.engine()
        messages = build_messages(personas["krishna"], [], QUESTIONS[0], personality="Mahatma Gandhi")
        ours, raw = Series("RemoteEngine", "tok/s"), Series("openai client", "tok/s")

        def via_engine() -> None:
            from krishna_ai.core.sampling import SamplingParams

            reply = engine.stream(messages, SamplingParams(temperature=0.0, max_new_tokens=args.max_new))
            reply.read()
            ours.add(reply.stats.tokens_per_s)

        def via_openai() -> None:
            raw.add(raw_openai_decode(config.url, config.alias, to_openai(messages), args.max_new))

        interleaved({"engine": via_engine, "openai": via_openai}, args.overhead_repeats)

    for clients in args.clients:
        a, b = results[("in-process", clients)], results[("server", clients)]
        gain = b["agg_tok_s"] / a["agg_tok_s"] if a["agg_tok_s"] else float("nan")
        p95_ratio = percentile(b["ttft"], 0.95) / percentile(a["ttft"], 0.95) if a["ttft"] else float("nan")
        rows.append([clients,
                     f"{a['agg_tok_s']:.1f}", f"{b['agg_tok_s']:.1f}", f"**{gain:.2f}×**",
                     f"{percentile(a['ttft'], 0.5):.2f} / {percentile(a['ttft'], 0.95):.2f}",
                     f"{percentile(b['ttft'], 0.5):.2f} / {percentile(b['ttft'], 0.95):.2f}", f"{p95_ratio:.2f}",
                     f"{a['tokens']} / {b['tokens']}", len(a["errors"]) + len(b["errors"])])
    errors = sorted({e for r in results.values() for e in r["errors"]})
    body = (f"The light GGUF with the Krishna adapter merged ({gguf.name}), greedy, at most {args.max_new} new "
            f"tokens, {args.requests} chats per client in a row through `Studio.chat`; llama.cpp with {threads} "
            f"threads on both sides; in-process behind a first-come queue of one (the app's); the server "
            f"(`python -m krishna_ai serve`, llama-server) with {args.parallel} slots"
            + ("" if args.swa_full else ", started WITHOUT --swa-full")
            + ". TTFT includes the wait in the queue. Both engines reuse the cached prompt prefix.\n\n"
            + table(["clients", "in-process tok/s", "server tok/s", "server ÷ in-process", "TTFT p50 / p95 (s), "
                     "in-process", "TTFT p50 / p95 (s), server", "p95 server ÷ in-process", "tokens (in / srv)",
                     "failed"], rows)
            + "\n\nRemote engine overhead, one client, decode tok/s (median [min–max] of "
            f"{args.overhead_repeats} interleaved repeats): `RemoteEngine` {ours.cell('{:.1f}')}, the `openai` "
            f"client {raw.cell('{:.1f}')}: ratio **{ratio(ours, raw):.3f}** (target ≥ 0.97).\n")
    if errors:
        body += "\nErrors: " + "; ".join(errors[:5]) + "\n"
    report("serving", "Many users: in-process llama.cpp vs the batched llama.cpp server", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
