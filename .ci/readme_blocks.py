"""Run the README's short command blocks, in order, on a fresh copy of the repository (CI runs this).

    python .ci/readme_blocks.py [README.md] [--list]

A block runs when the line before its ```bash fence is `<!-- ci: run -->`; the others are long (training,
an hour on a CPU), need what this machine has not (a GPU, the hub, Ollama), or start a server, and say
so with their measured duration where they are long. Each block runs with `bash -e -o pipefail` in one
scratch copy of the tracked files (so a block may use what an earlier one made; removed at the end), with its
own data folder, the test suite's model cache (.test-cache, warm after pytest) and the active virtual environment.
Exit status 1 names the first block that failed, with the end of its output.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- ci: run -->"
TIMEOUT_S = 900


def blocks(readme: Path) -> list[tuple[int, str]]:
    """(line number, script) of every marked ```bash block."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() == "```bash" and i > 0 and lines[i - 1].strip() == MARK:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            out.append((i + 1, "\n".join(lines[i + 1:end])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("readme", nargs="?", default=str(REPO / "README.md"))
    ap.add_argument("--list", action="store_true", help="print the blocks that would run")
    args = ap.parse_args()
    found = blocks(Path(args.readme))
    if args.list:
        for line, script in found:
            print(f"--- README.md:{line}\n{script}")
        return 0
    if not found:
        print(f"no block marked {MARK} in {args.readme}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="readme-blocks-") as scratch:  # 1.5 GB by the end: never left behind
        return run_blocks(found, Path(scratch))


def run_blocks(found: list[tuple[int, str]], work: Path) -> int:
    """Run the blocks in order in `work`, a copy of the tracked files; 1 at the first that fails."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-c", "--null", "-T", "-", "-f", "-"], cwd=REPO, input=tracked, check=True,
                   stdout=open(work / "repo.tar", "wb"))  # noqa: SIM115 - closed with the process
    subprocess.run(["tar", "-x", "-f", "repo.tar"], cwd=work, check=True)
    (work / "repo.tar").unlink()
    env = {**os.environ, "KRISHNA_AI_DATA": str(work / ".data"),
           "KRISHNA_AI_CACHE": os.environ.get("KRISHNA_AI_TEST_CACHE") or str(REPO / ".test-cache")}
    env.pop("KRISHNA_AI_DB", None)
    print(f"{len(found)} README blocks in {work}")
    for line, script in found:
        started = time.perf_counter()
        try:
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, output = 124, f"timed out after {TIMEOUT_S} s\n{exc.stdout or ''}{exc.stderr or ''}"
        took = time.perf_counter() - started
        first = script.strip().splitlines()[0][:90]
        print(f"{'ok  ' if rc == 0 else 'FAIL'} README.md:{line:<4} {took:6.1f} s  {first}")
        if rc != 0:
            print(re.sub(r"\n{3,}", "\n\n", str(output))[-4000:], file=sys.stderr)
            print(f"README.md:{line}: the block failed (exit {rc})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
