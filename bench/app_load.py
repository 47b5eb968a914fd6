"""Many clients through the app: the app on its llama-server router, the app in-process, and the router alone.

    python bench/app_load.py                        # 16 clients, 60 s per arm
    python bench/app_load.py --seconds 120 --write  # ... and replace this section of BENCHMARKS.md

Three arms, one after another, each driven by the same clients (threads of `router.load`: streamed greedy
requests, at most --max-new new tokens, client i asks persona i mod 4 its own questions in turn):

- **app → router**: `python app.py --server-slots N` (the app starts llama-server in router mode over every
  persona's GGUF and supervises it); clients call the app's `/v1/chat/completions` with `model: <persona>`,
  so every reply runs the app's whole path: scope gate, retrieval, prompt, style check, metrics.
- **app in-process**: `python app.py` as it starts by default (llama.cpp in the app's process, one reply at a
  time), the same clients.
- **router alone**: the same llama-server router with no app in front; clients send it the messages the app
  would have built for the question (`core.prompting.build_turn`: the persona's prompt with its retrieved
  cards; built before the clock starts, so only llama-server is timed) and the app's sampling extras
  (`runtime.remote.request_body`), to the persona's model.

The app's overhead is its aggregate decode tokens/s against the router alone (target, issue #32: at most 5%
lower). Both app arms get `--user-rate off --user-replies 1000`: every client comes from 127.0.0.1 with no
login, one "user" to the app's per-user limits, which this benchmark does not measure. The memory column is
the resident size of the whole process tree at the end of the arm (the app, the router and its models).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, report, stop_child, table, wait_http
from router import QUESTIONS, Target, load, load_args, rss_tree

PERSONAS = ("krishna", "maize", "aurora", "pet")


def own_questions(k: int) -> list[str]:
    """Persona k's questions (QUESTIONS lists them in the PERSONAS order, round-robin)."""
    return QUESTIONS[k::len(PERSONAS)]


def start_app(extra: list[str], data: Path) -> tuple[subprocess.Popen, str]:
    from krishna_ai.ship.serve import free_port

    port = free_port()
    env = {**os.environ, "KRISHNA_AI_DATA": str(data)}
    log = data / "app.log"
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--no-history", "--user-rate", "off",
                             "--user-replies", "1000", *extra], cwd=REPO, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/v1/models", proc, log, 600)
    except SystemExit:
        stop_child(proc, 30)
        raise
    return proc, base


def app_arm(name: str, extra: list[str], args: argparse.Namespace) -> tuple[str, dict, int]:
    with tempfile.TemporaryDirectory(prefix="app-load-") as folder:
        proc, base = start_app(extra, Path(folder))
        try:
            targets = [Target(f"{base}/v1/chat/completions", p, lambda q: [{"role": "user", "content": q}],
                              own_questions(k)) for k, p in enumerate(PERSONAS)]
            load(targets, len(targets), 3, 8)  # every persona's model loaded and warm
            arm = load(targets, args.clients, args.seconds, args.max_new)
            return name, arm, rss_tree(proc.pid)
        finally:
            stop_child(proc, 30)


def router_arm(args: argparse.Namespace) -> tuple[str, dict, int]:
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_turn
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.runtime.remote import request_body, to_openai
    from krishna_ai.runtime.tiers import GGUF_TIER
    from krishna_ai.ship.router import Router, alias_for

    personas = {p: load_personas()[p] for p in PERSONAS}
    router = Router.for_personas(personas, slots=args.slots)
    rng = random.Random(0)

    def messages(persona, questions: list[str]):  # built before the clock starts: only llama-server is timed
        built = {q: to_openai(build_turn(persona, [], q, rng=rng).messages) for q in questions}
        return built.__getitem__

    def extra(persona) -> dict:
        standard, more = request_body(SamplingParams.for_persona(persona, temperature=0))
        return {**more, "stop": standard["stop"]}

    try:
        router.start()
        url = f"{router.url}/chat/completions"
        targets = [Target(url, alias_for(persona.adapter_for(GGUF_TIER)), messages(persona, own_questions(k)),
                          own_questions(k), extra(persona)) for k, persona in enumerate(personas.values())]
        load(targets, len(targets), 3, 8)
        arm = load(targets, args.clients, args.seconds, args.max_new)
        return "llama-server router alone (no app)", arm, rss_tree(router.process.pid)
    finally:
        router.stop()


def main() -> int:
    args = load_args(__doc__)

    rows = [router_arm(args),
            app_arm(f"app → router (`--server-slots {args.slots}`)", ["--server-slots", str(args.slots)], args),
            app_arm("app in-process (default start)", [], args)]
    header = ["serving", "requests", "failed", "decode tok/s (all clients)", "÷ router alone", "TTFT p50 (s)",
              "TTFT p95 (s)", "memory (MB)"]
    base = rows[0][1]["tok_s"]
    body = table(header, [[name, a["requests"], a["failures"], f"{a['tok_s']:.1f}", f"{a['tok_s'] / base:.2f}",
                           f"{a['ttft_p50']:.2f}", f"{a['ttft_p95']:.2f}", f"{mem / 2**20:.0f}"]
                          for name, a, mem in rows])
    text = (f"{args.clients} clients for {args.seconds:.0f} s per arm, {args.slots} slots per model, greedy, at most "
            f"{args.max_new} new tokens; client i asks persona i mod 4 (Krishna, Maize, Aurora, PET) its own "
            f"questions.\n\n{body}")
    report("app_load", "Many clients through the app: on its router, in-process, and the router alone", text,
           args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
