"""The OpenAI-compatible API against the Gradio API, on one app and one engine: does `/v1` cost speed?

    python bench/openai_api.py                    # light-gguf (Krishna's adapter), 8 questions x 2 rounds

The app is `app.build` + `app.launch` in this process (as `python app.py`), llama.cpp on the light tier. Each
question is asked greedily (temperature 0, at most 96 new tokens) through the official `openai` client
(streamed) and through `gradio_client`'s `/chat` (streamed), alternating which goes first, so both see the
same replies. Timed on the client: from the request to the last chunk. Tokens: the reply's completion tokens
(the same reply on both paths). Target (issue #32): the OpenAI client's tokens/s ≥ 0.97x the Gradio API's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="tier (default: light-gguf when llama.cpp is installed)")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new", dest="max_new", type=int, default=96)
    args = ap.parse_args()

    import openai
    from gradio_client import Client

    import app
    from tests.conftest import free_port

    port = free_port()
    argv = ["--port", str(port), "--no-history", "--user-rate", "off", "--user-replies", "100"]
    app_args = app.parse_args(argv + (["--model", args.model] if args.model else []))
    demo, studio = app.build(app_args)  # preloads the model and Krishna's adapter
    app.launch(demo, app_args, concurrency=studio.concurrency, studio=studio, prevent_thread_lock=True, quiet=True)
    base = f"http://127.0.0.1:{port}"
    questions = [json.loads(line)["question"] for line in
                 (REPO / "data/krishna/heldout.jsonl").read_text().splitlines() if line.strip()][:args.questions]
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    gradio = Client(base, verbose=False)

    def via_openai(q: str) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        text, tokens = "", 0
        for chunk in oai.chat.completions.create(model="krishna", temperature=0, max_tokens=args.max_new,
                                                 stream=True, messages=[{"role": "user", "content": q}]):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            extra = (chunk.model_extra or {}).get("krishna_ai")
            if extra and extra.get("stats"):
                tokens = extra["stats"]["tokens"]
        return time.perf_counter() - t0, tokens, text

    def via_gradio(q: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        chunks = list(gradio.submit(q, "krishna", None, 0.0, None, None, args.max_new, api_name="/chat"))
        return time.perf_counter() - t0, chunks[-1] if chunks else ""

    via_openai(questions[0])  # warm-up of both paths
    via_gradio(questions[0])
    rows = []
    for r in range(args.rounds):
        for i, q in enumerate(questions):
            if (i + r) % 2:
                g_s, g_text = via_gradio(q)
                o_s, tokens, o_text = via_openai(q)
            else:
                o_s, tokens, o_text = via_openai(q)
                g_s, g_text = via_gradio(q)
            rows.append({"tokens": tokens, "openai_s": o_s, "gradio_s": g_s, "same_reply": o_text == g_text})
    tokens = sum(r["tokens"] for r in rows)
    o_total, g_total = sum(r["openai_s"] for r in rows), sum(r["gradio_s"] for r in rows)
    out = {
        "model": studio.default_model, "replies": len(rows), "tokens": tokens,
        "openai_tokens_per_s": round(tokens / o_total, 2), "gradio_tokens_per_s": round(tokens / g_total, 2),
        "ratio_openai_to_gradio": round(g_total / o_total, 3),
        "median_openai_s": round(statistics.median(r["openai_s"] for r in rows), 3),
        "median_gradio_s": round(statistics.median(r["gradio_s"] for r in rows), 3),
        "same_reply_on_both": sum(r["same_reply"] for r in rows),
    }
    print(json.dumps(out, indent=1))
    demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
