"""Start-up of the light tier: cold (first run: GGUF assembly and conversion) and warm, to the first token.

    python bench/startup.py                        # light and light-gguf, 1 cold + 3 warm starts each
    python bench/startup.py --warm 5 --write       # ... and replace the section in BENCHMARKS.md

Each start is a fresh Python process (`python bench/startup.py --child MODEL`) that imports the
package, loads the model the way the app does (`studio.default_loader`) and streams a reply to a
Krishna question; the clock runs from spawning the process to its first streamed token. Cold starts
use a new, empty KRISHNA_AI_CACHE folder (so the light tier converts its GGUF, as on a user's first
run); warm starts reuse that folder. The folder is deleted at the end; the user cache is not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import Series, interleaved, last_json, peak_rss_self, report, run_child, table


def child(model: str) -> int:
    t_start = time.time()
    from krishna_ai.core.personas import load_personas
    from krishna_ai.core.prompting import build_messages
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.studio.service import default_loader

    t_import = time.time()
    engine = default_loader(model, None)
    t_load = time.time()
    persona = load_personas()["krishna"]
    reply = engine.stream(build_messages(persona, [], "I failed my exam. What should I do?",
                                         personality="Thomas Edison"),
                          SamplingParams(temperature=0.0, max_new_tokens=8))
    next(reply)
    t_first = time.time()
    print("FIRST", flush=True)
    reply.close()
    print(json.dumps({"start": t_start, "import_s": t_import - t_start, "load_s": t_load - t_import,
                      "first_token_s": t_first - t_load, "first": t_first, "peak_rss": peak_rss_self()}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["light", "light-gguf"])
    ap.add_argument("--cold", type=int, default=1, help="cold starts per model (each in a new empty cache)")
    ap.add_argument("--warm", type=int, default=3, help="warm starts per model, interleaved")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    ap.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)

    keys = ("total", "import", "load", "first", "rss")
    cold = {m: {k: Series(k, "s") for k in keys} for m in args.models}
    warm = {m: {k: Series(k, "s") for k in keys} for m in args.models}
    root = Path(tempfile.mkdtemp(prefix="krishna-startup-"))
    caches: dict[str, Path] = {}

    def start(model: str, cache: Path, into: dict[str, Series]) -> None:
        env = {**os.environ, "KRISHNA_AI_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.time()
        code, _, _, out = run_child([sys.executable, "bench/startup.py", "--child", model], env=env)
        if code != 0:
            raise RuntimeError(f"{model}: the start-up child failed with exit code {code}:\n{out[-2000:]}")
        res = last_json(out)
        into["total"].add(res["first"] - t0)
        into["import"].add(res["import_s"])
        into["load"].add(res["load_s"])
        into["first"].add(res["first_token_s"])
        into["rss"].add(res["peak_rss"] / 2**20)

    try:
        for model in args.models:
            for i in range(args.cold):
                caches[model] = root / f"{model}-{i}"
                print(f"  cold start {i + 1}/{args.cold}: {model}", file=sys.stderr, flush=True)
                start(model, caches[model], cold[model])
        interleaved({m: (lambda m=m: start(m, caches[m], warm[m])) for m in args.models}, args.warm,
                    label="warm ")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for model in args.models:
        for kind, d, target in (("cold", cold[model], "report"), ("warm", warm[model], "≤ 10 s")):
            rows.append([f"`{model}`", kind, d["total"].cell(), d["import"].cell(), d["load"].cell(),
                         d["first"].cell("{:.3f}"), d["rss"].cell("{:.0f}"), target])
    body = (f"From spawning `python` to the first streamed token of a Krishna reply; {args.cold} cold start(s) "
            f"(empty KRISHNA_AI_CACHE: the light tier assembles its GGUF and converts it to safetensors) and "
            f"{args.warm} warm starts per model, interleaved. Cells: median [min–max] seconds; peak RSS in MiB.\n\n"
            + table(["model", "start", "to first token (s)", "imports (s)", "load, incl. conversion (s)",
                     "prompt → first token (s)", "peak RSS (MiB)", "target"], rows) + "\n")
    report("startup", "Light tier start-up: cold and warm", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
