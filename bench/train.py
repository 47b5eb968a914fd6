"""Light-tier LoRA training on CPU: tokens per second and peak memory for a few optimiser steps.

    python bench/train.py                          # configs/krishna-light.yaml, 3 steps of 8 examples, 2 runs
    python bench/train.py --steps 5 --runs 3 --write

Each run is `python -m krishna_ai train --config RECIPE --limit STEPS×batch×grad_acc --max-steps STEPS`
in a child process with its own output folder (deleted afterwards): exactly one pass over that many
examples, so the tokens trained on are the run's `tokens_per_epoch` (padding not counted), and
tokens/s = those tokens ÷ the trainer's own seconds (model loading and data preparation excluded).
Peak RSS is the child's high-water mark (wait4), loading included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from common import Series, report, run_child, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/krishna-light.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = ap.parse_args()

    recipe = yaml.safe_load(Path(args.config).read_text())
    batch, accum = int(recipe.get("batch_size", 2)), int(recipe.get("grad_accum", 4))
    examples = args.steps * batch * accum
    tps, sec, rss, tokens = Series("tok/s", "tok/s"), Series("s", "s"), Series("rss", "MiB"), Series("tok", "")
    wall = Series("wall", "s")
    root = Path(tempfile.mkdtemp(prefix="krishna-train-bench-"))
    try:
        for i in range(args.runs):
            out = root / f"run-{i}"
            argv = [sys.executable, "-m", "krishna_ai", "train", "--config", args.config, "--output-dir", str(out),
                    "--limit", str(examples), "--max-steps", str(args.steps)]
            print(f"  run {i + 1}/{args.runs}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
            code, seconds, peak, stdout = run_child(argv)
            if code != 0:
                raise RuntimeError(f"training failed with exit code {code}:\n{stdout[-2000:]}")
            summary = json.loads(stdout[stdout.rfind('{\n  "'):])  # `train` prints its summary last, indented
            tokens.add(summary["tokens_per_epoch"])
            sec.add(summary["seconds"])
            tps.add(summary["tokens_per_epoch"] / summary["seconds"])
            rss.add(peak / 2**20)
            wall.add(seconds)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    lora = recipe.get("lora", {})
    rows = [[f"`{recipe.get('model')}` LoRA r={lora.get('r')} ({', '.join(lora.get('targets', []))}), "
             f"{recipe.get('dtype')}, batch {batch} × grad-acc {accum}, max_seq_length {recipe.get('max_seq_length')}",
             f"{args.steps} steps / {examples} examples", tokens.cell("{:.0f}"), sec.cell("{:.1f}"),
             tps.cell("{:.1f}"), wall.cell("{:.1f}"), rss.cell("{:.0f}")]]
    body = (f"Recipe `{args.config}`, {args.runs} runs. Cells: median [min–max].\n\n"
            + table(["what", "work", "tokens trained", "trainer seconds", "tokens/s", "process wall (s)",
                     "peak RSS (MiB)"], rows) + "\n")
    report("train", "Light-tier LoRA training on CPU", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
