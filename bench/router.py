"""Four personas on one llama-server (router mode, `app.py --server-slots`) against four servers, one per persona.

    python bench/router.py                        # 16 clients, 60 s per arm, 4 slots per model
    python bench/router.py --seconds 120 --write  # ... and replace this section of BENCHMARKS.md

Both arms serve the same four Q8_0 files (the light GGUF with each persona's adapter merged, as the app
serves them) with the same slots and context. Clients are threads; each sends, again and again until the
time is up, a streamed greedy request (at most 64 new tokens) for the persona of its number (client i →
persona i mod 4) with that persona's system prompt and one of 16 questions, straight to llama-server's
/v1/chat/completions: what the app's remote engine sends, without the app. Reported per arm: requests,
aggregate decode tok/s (completion tokens ÷ wall time), time to the first token p50/p95, and the memory
of the whole process tree (RSS of the router and its children, or of the four servers) at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import process_tree, report, table

QUESTIONS = [
    "I failed my exam again. What should I do?", "My maize leaves have grey lesions. What is it?",
    "What happened at Surat in 1664?", "Improve my prompt: write a poem about rain.",
    "How do I stop being angry at my brother?", "Brown pustules on both sides of the leaf?",
    "Who was Tanaji Malusare?", "Make this prompt better: summarise this article.",
    "Should I leave my stable job?", "The leaves are yellow between the veins.", "Tell me about Panipat.",
    "Rewrite: explain quantum physics.", "I feel lonely in a new city.", "Lesions with a purple border?",
    "What did Shivaji do at Agra?", "Improve: list healthy breakfasts.",
]


def rss_tree(pid: int) -> int:
    """Resident bytes of `pid` and every process under it."""
    total = 0
    for p in process_tree(pid):
        try:
            total += next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


@dataclass
class Target:
    """Where a client sends, and what: client i asks `questions` in turn from the i-th."""

    url: str
    """A /v1/chat/completions address."""
    model: str
    messages: Callable[[str], list[dict]]
    """question -> the request's messages."""
    questions: list[str]
    extra: dict = field(default_factory=dict)
    """More body fields (sampling extras)."""


def plain(system: str) -> Callable[[str], list[dict]]:
    """The persona's system prompt and the question: what a client that knows the prompt sends."""
    return lambda question: [{"role": "system", "content": system}, {"role": "user", "content": question}]


def load(targets: list[Target], clients: int, seconds: float, max_new: int) -> dict:
    """Client i sends to targets[i % len] until `seconds` are up. Returns the arm's numbers."""
    import httpx

    ttft: list[float] = []
    failures: list[str] = []
    tokens = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        t = targets[i % len(targets)]
        n = 0
        # A new connection per request, as the app's remote engine makes them: llama-server may close a kept-alive
        # connection just as the next request goes out on it ("Server disconnected without sending a response").
        with httpx.Client(timeout=300, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while time.monotonic() < stop_at:
                body = {**t.extra, "model": t.model, "stream": True, "temperature": 0, "max_tokens": max_new,
                        "stream_options": {"include_usage": True},
                        "messages": t.messages(t.questions[(i + n) % len(t.questions)])}
                n += 1
                t0, first, used = time.perf_counter(), None, 0
                try:
                    with http.stream("POST", t.url, json=body) as resp:
                        resp.raise_for_status()
                        for line in resp.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            if "error" in chunk:  # an error after the headers (the app's API sends one so)
                                raise ValueError(chunk["error"].get("message"))
                            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                                first = time.perf_counter() - t0
                            used = (chunk.get("usage") or {}).get("completion_tokens", used)
                except (httpx.HTTPError, ValueError) as exc:
                    with lock:
                        failures.append(f"{t.model}: {type(exc).__name__}: {exc}"[:200])
                    time.sleep(0.5)  # a server that is down is not asked again at once
                    continue
                with lock:
                    if first is not None:
                        ttft.append(first)
                    tokens[0] += used

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft.sort()
    for failure in failures:
        print("failed:", failure, file=sys.stderr)
    return {"requests": len(ttft), "failures": len(failures), "tok_s": tokens[0] / wall,
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
            "ttft_p95": ttft[max(0, int(len(ttft) * 0.95) - 1)] if ttft else float("nan")}


def load_args(doc: str) -> argparse.Namespace:
    """The load benchmarks' options: clients, seconds per arm, slots per model, new tokens, --write."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--max-new", dest="max_new", type=int, default=64)
    ap.add_argument("--write", action="store_true")
    return ap.parse_args()


def main() -> int:
    args = load_args(__doc__)

    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages
    from krishna_ai.runtime.tiers import GGUF_TIER
    from krishna_ai.ship.router import Router, alias_for
    from krishna_ai.ship.serve import CTX_PER_SLOT, LlamaServer, ServerConfig, free_port

    personas = {p: load_personas()[p] for p in ("krishna", "maize", "aurora", "pet")}
    router = Router.for_personas(personas, slots=args.slots)
    systems = {p: build_messages(persona, [], "x")[0]["content"] for p, persona in personas.items()}
    aliases = {p: alias_for(persona.adapter_for(GGUF_TIER)) for p, persona in personas.items()}
    rows = []
    try:
        router.start()
        url = f"{router.url}/chat/completions"
        targets = [Target(url, aliases[p], plain(systems[p]), QUESTIONS) for p in personas]
        load(targets, len(targets), 3, 8)  # every model's process started and warm
        arm = load(targets, args.clients, args.seconds, args.max_new)
        rows.append(("one router, 4 models", arm, rss_tree(router.process.pid)))
    finally:
        router.stop()
    servers = [LlamaServer(ServerConfig(model=router.models[aliases[p]], alias=aliases[p], parallel=args.slots,
                                        ctx_per_slot=CTX_PER_SLOT, port=free_port())) for p in personas]
    try:
        for s in servers:
            s.start()
        targets = [Target(f"{s.config.url}/chat/completions", s.config.alias, plain(systems[p]), QUESTIONS)
                   for s, p in zip(servers, personas, strict=True)]
        load(targets, len(targets), 3, 8)
        arm = load(targets, args.clients, args.seconds, args.max_new)
        rows.append(("four servers", arm, sum(rss_tree(s.process.pid) for s in servers if s.process)))
    finally:
        for s in servers:
            s.stop()
    header = ["serving", "requests", "failed", "decode tok/s (all clients)", "TTFT p50 (s)", "TTFT p95 (s)",
              "memory (MB)"]
    body = table(header, [[name, a["requests"], a["failures"], f"{a['tok_s']:.1f}", f"{a['ttft_p50']:.2f}",
                           f"{a['ttft_p95']:.2f}", f"{mem / 2**20:.0f}"] for name, a, mem in rows])
    text = (f"{args.clients} clients for {args.seconds:.0f} s per arm, {args.slots} slots per model, greedy, at most "
            f"{args.max_new} new tokens; client i asks persona i mod 4 (Krishna, Maize, Aurora, PET).\n\n{body}")
    report("router", "Four personas: one router or four servers", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
