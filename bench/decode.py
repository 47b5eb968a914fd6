"""Decode speed and time to first token: the app's engine and server against plain `model.generate`.

    python bench/decode.py                       # light tier, 60 greedy tokens, 5 interleaved repeats
    python bench/decode.py --repeats 3 --write   # ... and replace the section in BENCHMARKS.md

Same model, same prompt tokens (a Krishna chat turn), greedy. Two phases, each interleaved.
Time to first token (`--ttft-repeats` rounds, cheap, so many of them: a prefill varies ±15% here):
- plain prefill: `model(**inputs, logits_to_keep=1)` (what generate's first step computes);
- plain generate of one token, to its scores (a logits processor that only reads the clock);
- engine: `HFEngine.stream` of one token, from the call to its first token; and, read by a forward
  pre-hook, the engine's own time from the call to the start of the model's prefill forward.
Decode (`--repeats` rounds of N tokens):
- plain generate: `model.generate(max_new_tokens=N, do_sample=False)`, per-token times taken by a
  logits processor that only reads the clock;
- engine: `HFEngine.stream` (its threaded generate, streamer and stop criterion), timed from the
  call; decode rate from its own ReplyStats;
- server: `python app.py --preload` in a child process, `/chat` through gradio_client, timed from
  submit; decode rate over the streamed chunks (tokens after the first chunk ÷ time after it).
Decode tok/s = (tokens − 1) ÷ (time from the first token to the last). Plain and engine also get a
steadier figure from a forward pre-hook on the model: 1 ÷ the median time between the starts of
consecutive decode steps (everything the token loop does per token, streamer and stop criterion
included), which a burst of load on a shared machine moves far less than a whole-run average.
Nothing is judged: the targets are printed next to the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

from common import REPO, Series, interleaved, ratio, report, table

from krishna_ai.ship.serve import free_port

QUESTION = "I failed my exam. What should I do?"
PERSONA = "krishna"
PERSONALITY = "Thomas Edison"


def start_server(model: str, port: int) -> subprocess.Popen:
    # one client asking many times: the per-user limits are off, the bench measures the engine
    return subprocess.Popen([sys.executable, "app.py", "--model", model, "--preload", "--port", str(port),
                             "--user-rate", "off", "--user-replies", "1000"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def connect(url: str, proc: subprocess.Popen, timeout: float = 300.0):
    from gradio_client import Client

    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving")
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline:
                raise
            time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="light", help="tier or folder (transformers); default light")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5, help="decode rounds")
    ap.add_argument("--ttft-repeats", type=int, default=15, help="time-to-first-token rounds")
    ap.add_argument("--no-server", action="store_true", help="skip the server measurement")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = ap.parse_args()

    import torch
    from transformers import LogitsProcessorList

    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.runtime.hf import HFEngine
    from krishna_ai.studio.service import Studio

    n = args.max_new_tokens
    persona = load_personas()[PERSONA]
    messages = build_messages(persona, [], QUESTION, personality=PERSONALITY)
    params = SamplingParams.for_persona(persona, temperature=0.0, max_new_tokens=n)
    one_token = SamplingParams.for_persona(persona, temperature=0.0, max_new_tokens=1)
    # The engine the server builds for this persona and tier (with the persona's adapter, if it has one).
    engine = Studio(load_personas(), default_model=args.model).engine(args.model, persona)
    if not isinstance(engine, HFEngine):
        raise SystemExit(f"{args.model!r} is not a transformers model: bench/llamacpp.py measures GGUF models")
    model, tok = engine.loaded.model, engine.loaded.tokenizer
    inputs = engine.encode(engine.fit(messages, n))
    prompt_len = int(inputs["input_ids"].shape[-1])
    print(f"{args.model}: prompt {prompt_len} tokens, {n} new tokens, torch threads {torch.get_num_threads()}",
          file=sys.stderr)

    s = {k: Series(k, u) for k, u in [
        ("plain_prefill", "s"), ("plain_decode", "tok/s"), ("plain_ttft", "s"), ("engine_ttft", "s"),
        ("engine_decode", "tok/s"), ("engine_chunks_decode", "tok/s"), ("server_ttfc", "s"),
        ("server_decode", "tok/s"), ("engine_chunk_ttfc", "s"), ("engine_overhead", "s"),
        ("plain_step", "tok/s"), ("engine_step", "tok/s")]}
    counts: dict[str, set[int]] = {"plain": set(), "engine": set(), "server": set()}
    texts: dict[str, set[str]] = {"plain": set(), "engine": set(), "server": set()}

    class Clock:
        """A logits processor that only records when each token's scores are ready."""

        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def plain_prefill() -> None:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            out.logits[:, -1].argmax(-1)
            s["plain_prefill"].add(time.perf_counter() - t0)

    def plain_first_token() -> None:
        clock = Clock()
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False, eos_token_id=engine.stop_token_ids,
                           pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([clock]))
        s["plain_ttft"].add(clock.times[0] - t0)

    forward_starts: list[float] = []
    model.register_forward_pre_hook(lambda *_: forward_starts.append(time.perf_counter()))

    def step_rate() -> float | None:
        """1 / the median decode step (forward start to the next forward start), prefill excluded."""
        steps = [b - a for a, b in zip(forward_starts[1:], forward_starts[2:], strict=False)]
        return 1.0 / statistics.median(steps) if steps else None

    def engine_first_token() -> None:
        forward_starts.clear()
        t0 = time.perf_counter()
        reply = engine.stream(messages, one_token)
        t_call = time.perf_counter() - t0
        reply.read()
        s["engine_ttft"].add(t_call + (reply.stats.ttft_s or 0.0))  # from the call to the first generated token
        s["engine_overhead"].add(forward_starts[0] - t0)

    def plain_generate() -> None:
        forward_starts.clear()
        clock = Clock()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=engine.stop_token_ids,
                                 pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([clock]))
            end = time.perf_counter()
        new = out[0, prompt_len:]
        counts["plain"].add(len(new))
        texts["plain"].add(tok.decode(new, skip_special_tokens=True))
        if len(new) > 1:
            s["plain_decode"].add((len(new) - 1) / (end - clock.times[0]))
        s["plain_step"].add(step_rate())

    def engine_stream() -> None:
        forward_starts.clear()
        t0 = time.perf_counter()
        reply = engine.stream(messages, params)
        first_chunk = first_len = None
        for chunk in reply:
            if first_chunk is None:
                first_chunk, first_len = time.perf_counter(), len(tok(chunk, add_special_tokens=False)["input_ids"])
        end = time.perf_counter()
        st = reply.stats
        counts["engine"].add(st.tokens)
        texts["engine"].add(reply.text)
        s["engine_decode"].add(st.tokens_per_s)
        s["engine_step"].add(step_rate())
        if first_chunk is not None and end > first_chunk:
            s["engine_chunk_ttfc"].add(first_chunk - t0)
            s["engine_chunks_decode"].add((st.tokens - first_len) / (end - first_chunk))

    client = proc = None

    def server_chat() -> None:
        t0 = time.perf_counter()
        job = client.submit(QUESTION, PERSONA, None, 0.0, None, None, n, args.model, PERSONALITY, None,
                            api_name="/chat")
        first = first_len = None
        last_text = ""
        for partial in job:
            if first is None and partial:
                first, first_len = time.perf_counter(), len(tok(partial, add_special_tokens=False)["input_ids"])
            last_text = partial
        end = time.perf_counter()
        tokens = len(tok(last_text, add_special_tokens=False)["input_ids"])
        # the reply's text does not hold the end-of-turn token that ended it; plain generate counts it
        plain_n = max(counts["plain"]) if counts["plain"] else tokens
        if tokens < plain_n:
            tokens = plain_n
        counts["server"].add(tokens)
        texts["server"].add(last_text)
        if first is not None:
            s["server_ttfc"].add(first - t0)
            if end > first:
                s["server_decode"].add((tokens - first_len) / (end - first))

    def in_thread(fn):
        """Run `fn` in a fresh thread, as the engine runs generate: on a loaded machine torch's OpenMP team in
        the main thread was measured 10× slower than in a worker thread (bench/decode.py notes), which would
        flatter the engine against a main-thread reference."""

        def run() -> None:
            t = threading.Thread(target=fn)
            t.start()
            t.join()

        return run

    ttft_steps = {"plain prefill": in_thread(plain_prefill), "plain generate, 1 token": in_thread(plain_first_token),
                  "engine, 1 token": engine_first_token}
    steps = {"plain generate": in_thread(plain_generate), "engine": engine_stream}
    try:
        if not args.no_server:
            port = free_port()
            env_note = f"http://127.0.0.1:{port}/"
            print(f"starting the app at {env_note} (python app.py --model {args.model} --preload)", file=sys.stderr)
            proc = start_server(args.model, port)
            client = connect(env_note, proc)
            steps["server"] = server_chat
        print("warm-up", file=sys.stderr)
        for step in (*ttft_steps.values(), *steps.values()):
            step()
        for series in s.values():
            series.values.clear()
        interleaved(ttft_steps, args.ttft_repeats, label="first token ")
        interleaved(steps, args.repeats, label="decode ")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    same = len(texts["plain"] | {t for t in texts["engine"]}) == 1
    rows = [
        ["plain `model.generate` decode", s["plain_decode"].cell(), "1.00", "reference"],
        ["engine `HFEngine.stream` decode (ReplyStats)", s["engine_decode"].cell(),
         f"{ratio(s['engine_decode'], s['plain_decode']):.3f}", "≥ 0.98"],
        ["plain: 1 ÷ median decode step (forward hook)", s["plain_step"].cell(), "1.00", "reference"],
        ["engine: 1 ÷ median decode step (forward hook)", s["engine_step"].cell(),
         f"{ratio(s['engine_step'], s['plain_step']):.3f}", "≥ 0.98"],
        ["engine decode over streamed chunks", s["engine_chunks_decode"].cell(),
         f"{ratio(s['engine_chunks_decode'], s['plain_decode']):.3f}", "(consumer view)"],
        ["server `/chat` via gradio_client decode over chunks", s["server_decode"].cell(),
         f"{ratio(s['server_decode'], s['plain_decode']):.3f}", "≥ 0.95"],
    ]
    ttft_rows = [
        ["plain prefill `model(**inputs, logits_to_keep=1)`", s["plain_prefill"].cell("{:.3f}"), "1.00", "reference"],
        ["plain generate of 1 token: its scores", s["plain_ttft"].cell("{:.3f}"),
         f"{ratio(s['plain_ttft'], s['plain_prefill']):.3f}", ""],
        ["engine: call → first generated token", s["engine_ttft"].cell("{:.3f}"),
         f"{ratio(s['engine_ttft'], s['plain_prefill']):.3f}", "≤ 1.05"],
        ["engine's own part: call → start of the prefill forward", s["engine_overhead"].cell("{:.4f}"),
         f"{ratio(s['engine_overhead'], s['plain_prefill']):.4f}", ""],
        ["engine: call → first streamed chunk (a whole word)", s["engine_chunk_ttfc"].cell("{:.3f}"),
         f"{ratio(s['engine_chunk_ttfc'], s['plain_prefill']):.3f}", ""],
        ["server: submit → first streamed chunk", s["server_ttfc"].cell("{:.3f}"),
         f"{ratio(s['server_ttfc'], s['plain_prefill']):.3f}", ""],
    ]
    body = (f"Model `{args.model}` (transformers, fp32), a Krishna chat turn of {prompt_len} prompt tokens, greedy; "
            f"decode: at most {n} new tokens, {args.repeats} interleaved repeats; first token: "
            f"{args.ttft_repeats} interleaved repeats (the streamed-chunk rows come from the decode repeats); "
            "after a warm-up. Cells: median [min–max]; ratio = median ÷ the reference's median.\n\n"
            f"Generated tokens: plain {sorted(counts['plain'])}, engine {sorted(counts['engine'])}, "
            f"server {sorted(counts['server']) or '–'}; plain and engine texts identical: {same}.\n\n"
            + table(["decode", "tok/s", "ratio", "target"], rows) + "\n\n"
            + table(["time to first token", "seconds", "ratio", "target"], ttft_rows) + "\n")
    report("decode", "Decode speed and time to first token (light tier)", body, args.write)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
