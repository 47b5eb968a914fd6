"""The Train tab under load: how soon a logged training step reaches the page, and what a training job costs
the chat on the same machine.

    python bench/jobs.py                        # 6 steps of Krishna's light recipe, 3 replies idle and 3 while training
    python bench/jobs.py --steps 10 --replies 5 --write

Target (issue #31): each logged step on the page within 2 s. Measured in headless Chromium on a real
`python app.py` (light-gguf, its own data folder): the page's status line is read every 100 ms, and the time
it first shows "step n of N" is compared with the wall-clock time the trainer wrote that step to loss.jsonl.
The chat's cost: time to the first streamed token and decode speed of a Krishna reply (`/chat` through
gradio_client, greedy, 96 new tokens) with the Train tab open (its view refreshing) before the job is started
(idle), and while it trains.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, Series, report, stop_child, table

sys.path.insert(0, str(REPO))
from tests.conftest import free_port, wait_for_port  # noqa: E402

QUESTION = "I failed my exam and my parents are angry. What should I do?"


def reply_timing(url: str) -> tuple[float, float]:
    """(seconds to the first streamed text, characters per second after it) of one /chat reply."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    started = time.perf_counter()
    job = client.submit(QUESTION, "krishna", None, 0.0, None, None, 96, api_name="/chat")
    first, text = None, ""
    for text in job:
        if first is None and text:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "no reply"
    return first - started, len(text) / max(end - first, 1e-6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--replies", type=int, default=3, help="replies timed idle, and again while training")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    port = free_port()
    env = {**os.environ, "KRISHNA_AI_DATA": str(data)}
    env.pop("KRISHNA_AI_DB", None)
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--model", "light-gguf"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    ttft = {"idle": Series("idle", "s"), "training": Series("training", "s")}
    speed = {"idle": Series("idle", "chars/s"), "training": Series("training", "chars/s")}
    lag = Series("lag", "s")
    try:
        wait_for_port(port, app, 300)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("KRISHNA_AI_CHROMIUM", "/usr/bin/chromium"),
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            page.wait_for_selector("#chat-input textarea")
            page.get_by_role("tab", name="Train").click()  # its view refreshes each second from now on
            reply_timing(url)  # warm-up
            for _ in range(args.replies):  # idle: the same page open and ticking, no job
                t, s = reply_timing(url)
                ttft["idle"].add(t)
                speed["idle"].add(s)
            for name, value in (("steps", str(args.steps)), ("save-steps", "1000"), ("limit", "1")):
                box = page.locator(f"#train-{name} input[type=number]").first
                box.fill(value)
                box.press("Tab")
            page.locator("#train-start").click()
            status = page.locator("#train-job-status")
            seen: dict[int, float] = {}

            def chat_while_training() -> None:  # in its own thread: the page is read all the while
                for _ in range(args.replies):
                    t, s = reply_timing(url)
                    ttft["training"].add(t)
                    speed["training"].add(s)
            worker = threading.Thread(target=chat_while_training, daemon=True)
            deadline = time.time() + 60 * 30
            while time.time() < deadline:
                text = status.inner_text()
                now = time.time()
                for step in range(1, args.steps + 1):
                    if f"step {step} of {args.steps}" in text and step not in seen:
                        seen[step] = now
                if "done" in text or "failed" in text:
                    break
                if seen and worker.ident is None:  # the job is training
                    worker.start()
                time.sleep(0.1)
            worker.join()
            browser.close()
        run = next((data / "jobs").glob("*-train-*")) / "run"
        rows = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
        timed_rows = {r["step"]: r["time"] for r in rows}
        for step, when in seen.items():
            if step in timed_rows:
                lag.add(when - timed_rows[step])
        summary = json.loads((run / "train_summary.json").read_text())
    finally:
        stop_child(app, 20)

    body = table(["measure", "value"], [
        ["logged step → on the page (s), every step", lag.cell()],
        ["steps seen / logged", f"{len(lag.values)} / {len(rows)}"],
        ["training: seconds per step (1 example, the job on 1 thread, SCHED_IDLE)",
         f"{summary['seconds'] / max(summary['steps'], 1):.1f}"],
    ]) + "\n\n" + table(["chat reply (light-gguf, 96 tokens, greedy)", "idle", "while a job trains", "ratio"], [
        ["time to first token (s)", ttft["idle"].cell(), ttft["training"].cell(),
         f"{ttft['training'].median / ttft['idle'].median:.2f}×"],
        ["decode (characters/s)", speed["idle"].cell("{:.0f}"), speed["training"].cell("{:.0f}"),
         f"{speed['training'].median / speed['idle'].median:.2f}×"],
    ])
    body += ("\n\nA step's lag includes the page's 1 s refresh: up to 1 s plus the round trip is expected. The "
             "replies while training start once the first step is on the page, so they overlap the training steps.")
    report("jobs", "The Train tab: progress on the page, and the chat while a job trains", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
