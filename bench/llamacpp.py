"""Light tier on CPU: transformers vs llama.cpp on the same GGUF weights vs the app's llama.cpp engine.

    python bench/llamacpp.py                       # 60 greedy tokens, 5 interleaved repeats
    python bench/llamacpp.py --repeats 3 --write   # ... and replace the section in BENCHMARKS.md

The same Krishna chat turn, tokenised once by llama.cpp (BOS + Gemma turns), greedy, all threads:
- transformers: the `light` tier (`HFEngine.stream`, fp32 weights converted from the GGUF);
- llama.cpp plain: llama-cpp-python's own token loop, `Llama.generate`, on the packaged Q4_K_M file
  (and `create_completion(stream=True)`, the API most users call);
- engine: `LlamaCppEngine.stream` (`--model light-gguf`), a separate `Llama` on the same file;
- engine + adapter: the same engine on the GGUF with Krishna's shipped adapter merged (what the app serves
  for Krishna on light-gguf; Q8_0), against plain llama.cpp on the base file (issue #17's target).
Every runner starts from an empty KV cache, except the last row: the adapted engine answering the turn
right after another Krishna question, as in a running app, where only what differs from the cached
prompt is decoded (runtime/llamacpp.py).
Decode tok/s = (tokens − 1) ÷ (time from the first token to the last). The bandwidth fraction is
decode tok/s × weight bytes read per token ÷ the machine's memory bandwidth, measured here as the
faster of a 1-thread and an all-threads numpy copy of 1 GiB (bytes read + bytes written per second).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import Series, interleaved, ratio, report, table

QUESTION = "I failed my exam. What should I do?"
OTHER_QUESTION = "How do I stop being angry at my brother?"
PERSONALITY = "Thomas Edison"


def copy_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes moved (read + written) per second by numpy copies of `gib` GiB split over `threads` threads."""
    import numpy as np

    n = int(gib * 2**30) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=lambda a=a, b=b: np.copyto(dst[a:b], src[a:b])) for a, b in bounds]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t0))
    return best


def gguf_bytes_per_token(path: Path) -> tuple[int, str]:
    """Weight bytes a decode step reads: every tensor, except the token embedding when a separate output exists."""
    import gguf

    reader = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    total = sum(sizes.values())
    if "output.weight" in sizes and "token_embd.weight" in sizes:
        return total - sizes["token_embd.weight"], "all tensors but token_embd (a separate output head)"
    return total, "all tensors (token_embd is also the output head)"


def torch_bytes_per_token(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():  # a tied embedding/head is one parameter, read once per token (as the head)
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--hf-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype of the transformers runner (the light tier loads fp32)")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = ap.parse_args()

    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: pip install -r requirements-llamacpp.txt", file=sys.stderr)
        return 2
    import torch

    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.runtime.hf import HFEngine
    from krishna_ai.runtime.light import light_gguf
    from krishna_ai.runtime.llamacpp import default_threads, load_gguf
    from krishna_ai.runtime.weights import load_model

    n = args.max_new_tokens
    threads = args.threads or default_threads()
    persona = load_personas()["krishna"]
    messages = build_messages(persona, [], QUESTION, personality=PERSONALITY)
    params = SamplingParams.for_persona(persona, temperature=0.0, max_new_tokens=n)
    path = light_gguf()

    hf = HFEngine(load_model("light", dtype=args.hf_dtype))
    engine = load_gguf("light-gguf", n_threads=threads)
    adapted = load_gguf("light-gguf", adapter=persona.adapter_for("light-gguf"), n_threads=threads)
    plain = load_gguf("light-gguf", n_threads=threads).llm  # its own context: no state shared with the engine
    tokens = engine.tokenize(messages)
    hf_tokens = hf.encode(messages)["input_ids"][0].tolist()
    stop = set(engine.stop_token_ids)
    print(f"prompt {len(tokens)} tokens (transformers: {len(hf_tokens)}; same ids: {tokens == hf_tokens}); "
          f"llama.cpp {llama_cpp.__version__}, {threads} threads; torch {torch.get_num_threads()} threads",
          file=sys.stderr)

    s = {k: Series(k, "tok/s") for k in ("hf", "plain", "completion", "engine", "adapted", "cached")}
    ttft = {k: Series(k, "s") for k in s}
    counts: dict[str, set[int]] = {k: set() for k in s}
    texts: dict[str, set[str]] = {k: set() for k in s}

    def record(key: str, t0: float, first: float | None, end: float, count: int, text: str) -> None:
        counts[key].add(count)
        texts[key].add(text)
        if first is not None:
            ttft[key].add(first - t0)
            if count > 1:
                s[key].add((count - 1) / (end - first))

    def run_hf() -> None:
        t0 = time.perf_counter()
        reply = hf.stream(messages, params)
        t_call = time.perf_counter() - t0
        text = reply.read()
        st = reply.stats
        counts["hf"].add(st.tokens)
        texts["hf"].add(text)
        ttft["hf"].add(t_call + (st.ttft_s or 0.0))
        s["hf"].add(st.tokens_per_s)

    def run_plain() -> None:
        plain.reset()
        t0 = time.perf_counter()
        first, out = None, []
        for token in plain.generate(tokens, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                    reset=True):
            first = first or time.perf_counter()
            out.append(token)
            if token in stop or len(out) >= n:
                break
        end = time.perf_counter()
        record("plain", t0, first, end, len(out), plain.detokenize([t for t in out if t not in stop]).decode())

    def run_completion() -> None:
        plain.reset()
        t0 = time.perf_counter()
        first, count, text = None, 0, ""
        for chunk in plain.create_completion(tokens, max_tokens=n, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                             repeat_penalty=1.0, stream=True):
            first = first or time.perf_counter()
            count += 1
            text += chunk["choices"][0]["text"]
        end = time.perf_counter()
        # a stream chunk per token; the end-of-turn token that stops it yields no chunk
        record("completion", t0, first, end, count + (count < n), text)

    other = build_messages(persona, [], OTHER_QUESTION, personality=PERSONALITY)

    def engine_runner(key: str, eng, *, cached: bool = False) -> Callable[[], None]:
        """One timed reply through an engine's `stream` (its stats time from the call): from an empty cache,
        or (`cached`) right after a one-token reply to another question of the persona."""
        def run() -> None:
            if cached:
                eng.stream(other, params.model_copy(update={"max_new_tokens": 1})).read()
            else:
                eng.llm.reset()
            reply = eng.stream(messages, params)
            text = reply.read()
            st = reply.stats
            counts[key].add(st.tokens)
            texts[key].add(text)
            ttft[key].add(st.ttft_s)
            s[key].add(st.tokens_per_s)
        return run

    run_engine, run_adapted = engine_runner("engine", engine), engine_runner("adapted", adapted)

    steps = {"transformers": run_hf, "llama.cpp generate": run_plain, "llama.cpp create_completion": run_completion,
             "LlamaCppEngine": run_engine, "LlamaCppEngine + Krishna adapter": run_adapted,
             "LlamaCppEngine + Krishna adapter, prefix cached": engine_runner("cached", adapted, cached=True)}
    print("warm-up", file=sys.stderr)
    for step in steps.values():
        step()
    for series in (*s.values(), *ttft.values()):
        series.values.clear()
    interleaved(steps, args.repeats)

    print("memory bandwidth ...", file=sys.stderr)
    bw1, bwn = copy_bandwidth(1), copy_bandwidth(threads)
    bandwidth = max(bw1, bwn)
    gguf_bytes, gguf_note = gguf_bytes_per_token(path)
    from krishna_ai.runtime.gguf_adapter import adapted_gguf

    adapted_bytes, _ = gguf_bytes_per_token(adapted_gguf("light-gguf", persona.adapter_for("light-gguf")))
    hf_bytes = torch_bytes_per_token(hf.loaded.model)

    def frac(series: Series, per_token: int) -> str:
        return f"{series.median * per_token / bandwidth:.0%}" if series.values else "–"

    rows = [
        [f"transformers `light` ({args.hf_dtype}, `HFEngine`)", s["hf"].cell("{:.1f}"), ttft["hf"].cell("{:.3f}"),
         f"{ratio(s['hf'], s['plain']):.3f}", "≥ 0.5", frac(s["hf"], hf_bytes)],
        ["llama.cpp `Llama.generate` (Q4_K_M)", s["plain"].cell("{:.1f}"), ttft["plain"].cell("{:.3f}"), "1.000",
         "reference", frac(s["plain"], gguf_bytes)],
        ["llama.cpp `create_completion(stream=True)`", s["completion"].cell("{:.1f}"),
         ttft["completion"].cell("{:.3f}"), f"{ratio(s['completion'], s['plain']):.3f}", "",
         frac(s["completion"], gguf_bytes)],
        ["`LlamaCppEngine` (`--model light-gguf`)", s["engine"].cell("{:.1f}"), ttft["engine"].cell("{:.3f}"),
         f"{ratio(s['engine'], s['plain']):.3f}", "≥ 0.5", frac(s["engine"], gguf_bytes)],
        ["`LlamaCppEngine` + Krishna's adapter (merged GGUF, Q8_0)", s["adapted"].cell("{:.1f}"),
         ttft["adapted"].cell("{:.3f}"), f"{ratio(s['adapted'], s['plain']):.3f}",
         f"≥ 0.9; first token ≤ 1.1× ({ttft['adapted'].median / ttft['plain'].median:.2f}×)",
         frac(s["adapted"], adapted_bytes)],
        ["the same, the turn after another Krishna question (prefix cached)", s["cached"].cell("{:.1f}"),
         ttft["cached"].cell("{:.3f}"), f"{ratio(s['cached'], s['plain']):.3f}",
         f"first token {ttft['cached'].median / ttft['plain'].median:.2f}× llama.cpp's cold one",
         frac(s["cached"], adapted_bytes)],
    ]
    body = (f"Gemma 3 270M, a Krishna chat turn of {len(tokens)} prompt tokens, greedy, at most {n} new tokens, "
            f"{threads} llama.cpp threads, {torch.get_num_threads()} torch threads; {args.repeats} interleaved "
            "repeats after a warm-up. Cells: median [min–max]; ratio = decode median ÷ llama.cpp's.\n\n"
            f"Generated tokens: " + ", ".join(f"{k} {sorted(v)}" for k, v in counts.items())
            + f"; llama.cpp texts identical across its three runners: "
            f"{len(texts['plain'] | texts['completion'] | texts['engine']) == 1}.\n\n"
            + table(["runner", "decode tok/s", "time to first token (s)", "ratio to llama.cpp", "target",
                     "of bandwidth limit"], rows)
            + f"\n\nBandwidth: numpy copy of 1 GiB, {bw1 / 1e9:.1f} GB/s with 1 thread, {bwn / 1e9:.1f} GB/s with "
            f"{threads} (read + write). Bytes read per token: GGUF {gguf_bytes / 1e6:.0f} MB ({gguf_note}); "
            f"transformers {args.hf_dtype} {hf_bytes / 1e6:.0f} MB (every parameter once; the tied embedding as the "
            f"head). Bandwidth limit: GGUF {bandwidth / gguf_bytes:.0f} tok/s, {args.hf_dtype} "
            f"{bandwidth / hf_bytes:.1f} tok/s.\n")
    report("llamacpp", "Light tier: transformers vs llama.cpp (CPU)", body, args.write)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
