"""Mutation score of the modules that decide what users see (mutmut; configured in pyproject.toml).

    python .ci/mutation.py            # mutmut run, then the score per module; exit 1 below the target
    python .ci/mutation.py --report   # the score of the last run only (mutants/ is kept between runs)
    python .ci/mutation.py --survivors krishna_ai/core/style.py   # the diff of every surviving mutant there
    python .ci/mutation.py --only krishna_ai/history/store.py --only krishna_ai/studio/access.py   # some modules

mutmut changes one thing at a time in a copy of the source (a `<` into `<=`, a string into another,
a call argument dropped...) and runs the tests that reach the changed function; a mutant the tests
do not notice "survived". Killed = the tests failed (or timed out, or the type check caught it);
score = killed / all mutants, so a mutant no test reaches ("no tests") counts against the score.
Not in CI: a full run of every module takes hours on 2 cores (one module: tens of minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.85
KILLED = {1: "killed", 3: "killed", 36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout",
          152: "timeout", 255: "timeout"}
"""mutmut's exit codes (mutmut/stats.py) that mean the change was noticed."""
OTHER = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked", -11: "crashed"}
"""A test process that died of a segfault (-11) says nothing about the mutant: on this machine it is a forked
child that had loaded llama.cpp/torch (format_table's mutants crash too); counted as not checked, never killed."""


def modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    return list(config["only_mutate"])


def outcomes(module: str) -> Counter[str]:
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"{meta.relative_to(ROOT)} not found: run `python .ci/mutation.py` (without --report) first")
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return Counter(KILLED.get(code) or OTHER.get(code, "suspicious") for code in codes.values())


def report(only: list[str] | None = None) -> bool:
    """Print the table (of `only`, when given); True when every module reaches the target."""
    print(f"| module | mutants | killed | survived | no tests | not checked | score (target {TARGET:.0%}) |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for module in only or modules():
        c = outcomes(module)
        total = sum(c.values())
        killed = c["killed"] + c["timeout"] + c["caught by type check"]
        unchecked = c["not checked"] + c["skipped"] + c["crashed"]
        score = killed / total if total else 1.0
        ok &= score >= TARGET
        partial = f" ({killed / (total - unchecked):.1%} of those checked)" if unchecked and total > unchecked else ""
        print(f"| `{module}` | {total} | {killed} | {c['survived']} | {c['no tests']} | {unchecked} | "
              f"{score:.1%}{'' if score >= TARGET else ' (below)'}{partial} |")
    return ok


def survivors(module: str) -> None:
    prefix = module.removesuffix(".py").replace("/", ".")
    meta = json.loads((ROOT / "mutants" / f"{module}.meta").read_text(encoding="utf-8"))
    for name, code in sorted(meta["exit_code_by_key"].items()):
        if name.startswith(prefix) and code in (0, 5, 33):
            subprocess.run(["mutmut", "show", name], cwd=ROOT, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", action="store_true", help="only print the score of the last run")
    ap.add_argument("--survivors", metavar="MODULE", help="show the surviving mutants of one module")
    ap.add_argument("--only", action="append", metavar="MODULE", help="mutate only this module (repeatable)")
    args = ap.parse_args()
    unknown = sorted(set(args.only or []) - set(modules()))
    if unknown:
        raise SystemExit(f"not in pyproject's only_mutate: {', '.join(unknown)}")
    if args.survivors:
        survivors(args.survivors)
        return 0
    if not args.report:
        # mutmut keeps results by function hash; a fresh mutants/ keeps the run honest after test edits.
        subprocess.run(["rm", "-rf", str(ROOT / "mutants")], check=True)
        # the tests' model cache stays the checkout's (mutmut runs them from a copy in mutants/)
        cache = os.environ.get("KRISHNA_AI_TEST_CACHE", str(ROOT / ".test-cache"))
        # mutmut forks a child per mutant from a process whose tests ran llama.cpp: ggml's OpenMP team does not
        # survive a fork (the child hangs in its next decode), and with one thread there is no team.
        env = {**os.environ, "KRISHNA_AI_TEST_CACHE": cache, "KRISHNA_AI_LLAMA_THREADS": "1", "OMP_NUM_THREADS": "1"}
        names = [m.removesuffix(".py").replace("/", ".") + ".*" for m in args.only or []]
        run = subprocess.run(["mutmut", "run", "--max-children", "2", *names], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL)
        if run.returncode not in (0, 1):
            print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
            return run.returncode
    return 0 if report(args.only) else 1


if __name__ == "__main__":
    sys.exit(main())
