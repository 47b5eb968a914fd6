"""The Gemma 3n GPU path, measured on a full-size E4B-shaped checkpoint with random weights (speed and
memory do not depend on the weights' values), built on the machine itself: nothing large travels.

    python bench/gpu.py --out gpu-report          # on a CUDA machine: E4B at full size (~16 GB bf16)
    python bench/gpu.py --tiny --out /tmp/gpu     # anywhere: the same code path on a tiny checkpoint

Each row is measured in this one run, side by side, and every step is timed on its own (a step that fails
is reported with its error and the rest go on):
- load: bf16 and 4-bit nf4 (when bitsandbytes imports) through the project's `load_model`, with the time
  and the GPU memory the weights hold;
- decode and prefill: tokens/s through the project's engine (`HFEngine.stream`) and through plain
  `model.generate` on the same prompt, greedy, the same number of new tokens (engine ÷ plain);
- the E2B slice: live (`stream(slice="e2b")` on the loaded E4B) and on disk (`slice_checkpoint`, loaded);
- decode against the memory-bandwidth limit: bytes of weights a decode step reads ÷ measured copy bandwidth;
- a LoRA training step (transformers + peft, bf16, answer-only loss as `train` uses): tokens/s, peak memory;
- merging an adapter into the base (`runtime.merge.merge`): seconds.

Writes `<out>/gpu.json` and `<out>/gpu.md` (the table for BENCHMARKS.md), and deletes the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO, table  # noqa: F401 - REPO puts the package on sys.path

PROMPT = [{"role": "system", "content": "You are a calm counsellor."},
          {"role": "user", "content": "Partha asks how to stay calm before an exam. " * 8}]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_bytes() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def reset_peak() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - started


def gib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def build(folder: Path, tiny: bool) -> Path:
    """The parent checkpoint: tiny (tests' shape) or the real E4B config at full size, random weights."""
    import torch
    from transformers import Gemma3nConfig

    from krishna_ai.training.tiny import build_tiny_gemma3n

    config = None if tiny else Gemma3nConfig()  # transformers' default Gemma3nConfig is E4B
    device = "cuda" if torch.cuda.is_available() else None
    return build_tiny_gemma3n(folder, config=config, device=device)


def load(source: Path, quantize: str) -> Any:
    from krishna_ai.runtime.weights import load_model

    return load_model(str(source), quantize=quantize, dtype="bfloat16")  # type: ignore[arg-type]


def engine_decode(engine: Any, new_tokens: int, slice: str | None = None) -> dict[str, float]:
    from krishna_ai.core.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    engine.stream(PROMPT, params, slice=slice).read()  # warm-up: kernels, caches, the slice switch
    reply = engine.stream(PROMPT, params, slice=slice)
    reply.read()
    s = reply.stats
    return {"tokens": s.tokens, "prompt_tokens": s.prompt_tokens, "ttft_s": s.ttft_s or 0.0,
            "decode_tok_s": s.tokens_per_s, "prefill_tok_s": s.prompt_tokens / s.ttft_s if s.ttft_s else 0.0}


def plain_decode(loaded: Any, engine: Any, new_tokens: int) -> dict[str, float]:
    """`model.generate` on the prompt the engine builds, greedy, no streamer: the ceiling the engine is held to."""
    import torch

    inputs = engine.encode(PROMPT)
    inputs = {k: v.to(loaded.model.device) for k, v in inputs.items()}
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False)  # each side's tok/s over the tokens it made
    with torch.inference_mode():
        loaded.model.generate(**inputs, **kwargs)  # warm-up
        _, prefill = timed(lambda: loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False))
        out, total = timed(lambda: loaded.model.generate(**inputs, **kwargs))
    n = out.shape[-1] - inputs["input_ids"].shape[-1]
    return {"tokens": n, "decode_tok_s": (n - 1) / max(total - prefill, 1e-9),
            "prefill_tok_s": inputs["input_ids"].shape[-1] / max(prefill, 1e-9)}


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy of 1 GiB (of 64 MiB on CPU)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = (1 << 30) if device == "cuda" else (64 << 20)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _, t = timed(lambda: [b.copy_(a) for _ in range(5)])
    return 2 * n * 5 / t  # read + write


def decoder_bytes(model: Any) -> int:
    """Bytes a decode step reads: the language model's weights (per-layer embedding tables are gathered, not
    streamed, so they are left out)."""
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "per_layer" not in n
               and "embed_tokens" not in n) + sum(p.numel() * p.element_size() for p in model.lm_head.parameters())


def train_step(source: Path, seq: int, batch: int) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model

    from krishna_ai.training.common import target_regex
    from krishna_ai.training.config import LoraSettings

    loaded = load(source, "none")
    model = get_peft_model(loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=target_regex(
        LoraSettings().targets), task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1000, 20000, (batch, seq), device=loaded.model.device)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    reset_peak()
    _, t = timed(lambda: [step() for _ in range(3)])
    return {"tokens_per_s": 3 * batch * seq / t, "peak_gib": (gpu_bytes() or 0) / 2**30, "step_s": t / 3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--tiny", action="store_true", help="a tiny checkpoint (CPU check of the same code path)")
    ap.add_argument("--work", help="where the checkpoints are built (default: <out>/work; deleted at the end)")
    ap.add_argument("--new-tokens", type=int, default=128, dest="new_tokens")
    ap.add_argument("--train-seq", type=int, default=512, dest="train_seq")
    ap.add_argument("--train-batch", type=int, default=4, dest="train_batch")
    args = ap.parse_args()
    if args.tiny:
        args.new_tokens, args.train_seq, args.train_batch = min(args.new_tokens, 16), 64, 2

    import torch

    from krishna_ai.runtime.hf import HFEngine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {"machine": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                              "torch": torch.__version__, "tiny": args.tiny, "new_tokens": args.new_tokens,
                              "rows": {}, "errors": {}}
    rows = result["rows"]

    def step(name: str, fn: Callable[[], Any]) -> Any:
        print(f"[gpu] {name}…", file=sys.stderr, flush=True)
        try:
            value, seconds = timed(fn)
            rows[name] = value if isinstance(value, dict) else {"value": value}
            rows[name]["seconds"] = round(seconds, 2)
            return value
        except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            return None

    try:
        src = step("build", lambda: str(build(work / "e4b", args.tiny)))
        if src is None:
            raise SystemExit("could not build the checkpoint")
        src = Path(rows["build"]["value"])
        for quantize in ("none", "4bit"):
            if quantize == "4bit" and not cuda:
                result["errors"]["load 4bit"] = "needs CUDA (bitsandbytes' nf4 kernels)"
                continue
            reset_peak()
            loaded = step(f"load {quantize}", lambda q=quantize: load(src, q))
            if loaded is None:
                continue
            rows[f"load {quantize}"] = {"seconds": rows[f"load {quantize}"]["seconds"], "gib": gpu_bytes() and
                                        gpu_bytes() / 2**30, "quantized": loaded.quantized}
            engine = HFEngine(loaded)
            step(f"engine {quantize}", lambda e=engine: engine_decode(e, args.new_tokens))
            step(f"plain {quantize}", lambda ld=loaded, e=engine: plain_decode(ld, e, args.new_tokens))
            if quantize == "none":
                step("engine e2b live", lambda e=engine: engine_decode(e, args.new_tokens, slice="e2b"))
                bw = step("copy bandwidth", copy_bandwidth)
                per_token = decoder_bytes(loaded.model)
                if bw:
                    rows["bandwidth bound"] = {"bytes_per_token": per_token, "max_tok_s": bw / per_token}
            del engine, loaded
            reset_peak()

        def on_disk_slice() -> dict[str, float]:
            from krishna_ai.matformer import slice_checkpoint

            slice_checkpoint(src, work / "e2b", "e2b", progress=False)
            loaded = load(work / "e2b", "none")
            return engine_decode(HFEngine(loaded), args.new_tokens)

        step("engine e2b on disk", on_disk_slice)
        reset_peak()
        step("lora train step", lambda: train_step(src, args.train_seq, args.train_batch))
        reset_peak()

        def merge_time() -> dict[str, float]:
            from peft import LoraConfig, get_peft_model

            from krishna_ai.runtime.merge import merge
            from krishna_ai.training.common import target_regex
            from krishna_ai.training.config import LoraSettings

            loaded = load(src, "none")
            lora = get_peft_model(loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules=target_regex(
                LoraSettings().targets), task_type="CAUSAL_LM"))
            lora.save_pretrained(work / "adapter")
            del lora, loaded
            reset_peak()
            _, seconds = timed(lambda: merge(str(src), work / "adapter", work / "merged", force=True))
            return {"merge_s": seconds}

        step("merge", merge_time)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu.md").write_text(render(result))
    print(render(result))
    return 0 if not result["errors"] or set(result["errors"]) <= {"load 4bit"} else 1


def render(result: dict[str, Any]) -> str:
    r = result["rows"]

    def get(name: str, key: str, fmt: str = "{:.1f}") -> str:
        value = r.get(name, {}).get(key)
        return "–" if value is None else fmt.format(value)

    lines = [table(["what", "bf16", "4-bit nf4"], [
        ["load (s)", get("load none", "seconds"), get("load 4bit", "seconds")],
        ["GPU memory after load (GiB)", get("load none", "gib", "{:.2f}"), get("load 4bit", "gib", "{:.2f}")],
        ["engine decode (tok/s)", get("engine none", "decode_tok_s"), get("engine 4bit", "decode_tok_s")],
        ["engine tokens generated", get("engine none", "tokens", "{:.0f}"), get("engine 4bit", "tokens", "{:.0f}")],
        ["plain tokens generated", get("plain none", "tokens", "{:.0f}"), get("plain 4bit", "tokens", "{:.0f}")],
        ["plain generate decode (tok/s)", get("plain none", "decode_tok_s"), get("plain 4bit", "decode_tok_s")],
        ["engine prefill (tok/s)", get("engine none", "prefill_tok_s", "{:.0f}"),
         get("engine 4bit", "prefill_tok_s", "{:.0f}")],
        ["plain prefill (tok/s)", get("plain none", "prefill_tok_s", "{:.0f}"),
         get("plain 4bit", "prefill_tok_s", "{:.0f}")],
    ])]
    for q in ("none", "4bit"):
        e, p = r.get(f"engine {q}", {}).get("decode_tok_s"), r.get(f"plain {q}", {}).get("decode_tok_s")
        if e and p:
            lines.append(f"\nengine ÷ plain decode ({'bf16' if q == 'none' else 'nf4'}): {e / p:.3f}")
    lines.append("\n" + table(["what", "value"], [
        ["E2B live slice decode (tok/s)", get("engine e2b live", "decode_tok_s")],
        ["E2B on-disk slice decode (tok/s)", get("engine e2b on disk", "decode_tok_s")],
        ["weights read per decode step (GB)",
         f"{r['bandwidth bound']['bytes_per_token'] / 1e9:.3f}" if "bandwidth bound" in r else "–"],
        ["copy bandwidth (GB/s)", f"{r['copy bandwidth']['value'] / 1e9:.0f}" if "copy bandwidth" in r else "–"],
        ["decode bound by bandwidth (tok/s)", get("bandwidth bound", "max_tok_s")],
        ["LoRA train step (tokens/s)", get("lora train step", "tokens_per_s", "{:.0f}")],
        ["LoRA train peak GPU memory (GiB)", get("lora train step", "peak_gib", "{:.2f}")],
        ["merge an adapter (s)", get("merge", "merge_s")],
    ]))
    if result["errors"]:
        lines.append("\nNot measured: " + "; ".join(f"{k} ({v})" for k, v in result["errors"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
