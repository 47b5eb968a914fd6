"""`python app.py` started the way a new user starts it: empty cache, no network; the page, then each persona.

    python bench/first_start.py              # 1 cold + 1 warm start, every persona in prompts/
    python bench/first_start.py --write      # ... and replace this section of BENCHMARKS.md

The benchmark runs itself again inside a new network namespace that has only loopback (`unshare --net
--map-root-user`, then `ip link set lo up`), checks there that an outside address cannot be reached, and
starts `python app.py --port P` with a new, empty KRISHNA_AI_CACHE and KRISHNA_AI_DATA (cold), then again
with the same folders (warm). Clock: from spawning the app to the page answering 200 ("page up"), then for
each persona, one after another, its first question through `/v1/chat/completions` (the persona's first
held-out question; the app's own sampling, at most 160 new tokens), from the request to the whole reply.
Targets (issue #32): page up ≤ 30 s and every persona's first reply ≤ 30 s, cold and offline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, report, stop_child, table

from krishna_ai.ship.serve import free_port

INNER = "--inside-namespace"


def offline() -> bool:
    """True when no outside address can be reached (the namespace has only loopback)."""
    try:
        socket.create_connection(("1.1.1.1", 443), timeout=2).close()
    except OSError:
        return True
    return False


def first_question(persona: str) -> str:
    path = REPO / "data" / persona / "heldout.jsonl"
    if path.is_file():
        return json.loads(path.read_text().splitlines()[0])["question"]
    return "What can you help me with?"


def start(env: dict[str, str], max_new: int, log: Path) -> dict:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with log.open("ab") as out:
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=REPO, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    row: dict = {}
    try:
        while True:
            if app.poll() is not None:
                raise SystemExit(f"the app ended ({app.returncode}) before its page came up; see {log}")
            try:
                if httpx.get(base, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"no page after 600 s; see {log}")
            time.sleep(0.1)
        row["page_s"] = time.perf_counter() - t0
        personas = [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]]
        row["replies"] = {}
        for persona in personas:
            q = first_question(persona)
            t1 = time.perf_counter()
            r = httpx.post(f"{base}/v1/chat/completions", timeout=600, json={
                "model": persona, "max_tokens": max_new, "messages": [{"role": "user", "content": q}]})
            seconds = time.perf_counter() - t1
            r.raise_for_status()
            choice = r.json()["choices"][0]
            row["replies"][persona] = {"s": seconds, "finish": choice["finish_reason"], "question": q,
                                       "reply": choice["message"]["content"]}
    finally:
        stop_child(app, 60)
    return row


def inside(args: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not offline():
        raise SystemExit("an outside address is reachable inside the namespace: not a test of offline")
    work = Path(tempfile.mkdtemp(prefix="first-start-"))
    env = {**os.environ, "KRISHNA_AI_CACHE": str(work / "cache"), "KRISHNA_AI_DATA": str(work / "data")}
    env.pop("KRISHNA_AI_DB", None)
    try:
        rows = {"cold": start(env, args.max_new, work / "app.log"), "warm": start(env, args.max_new, work / "app.log")}
    except BaseException:
        print((work / "app.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new", dest="max_new", type=int, default=160)
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    ap.add_argument(INNER, dest="inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inside(args)
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("needs util-linux's unshare and iproute2's ip (a network namespace with only loopback)")
    done = subprocess.run(["unshare", "--net", "--map-root-user", sys.executable, __file__, INNER,
                           "--max-new", str(args.max_new)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the offline run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    personas = list(rows["cold"]["replies"])
    body = [table(["start", "page up (s)"] + [f"{p}: first reply (s)" for p in personas],
                  [[name, f"{row['page_s']:.1f}"] + [f"{row['replies'][p]['s']:.1f}" for p in personas]
                   for name, row in rows.items()])]
    body.append("\nEach reply's end (finish_reason), cold: "
                + ", ".join(f"{p} {rows['cold']['replies'][p]['finish']}" for p in personas) + ".")
    for p in personas:
        r = rows["cold"]["replies"][p]
        print(f"\n[{p}] {r['question']}\n{r['reply']}", file=sys.stderr)
    text = ("Network: none (a namespace with only loopback; checked). Cold = empty KRISHNA_AI_CACHE and "
            "KRISHNA_AI_DATA; warm = the same folders again.\n\n" + "\n".join(body))
    report("first_start", "The first start, offline", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
