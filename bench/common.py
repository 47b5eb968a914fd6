"""Shared by the benchmarks: statistics over repeats, tables, the machine line, child processes, BENCHMARKS.md.

Every benchmark measures its comparisons side by side in one run, interleaved (A B C, B C A, ...), and
reports medians with [min–max] ranges and ratios of medians: the machines these run on are noisy.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
sys.path.insert(0, str(REPO))


@dataclass
class Series:
    """Repeated measurements of one quantity."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        if value is not None:
            self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self, fmt: str = "{:.2f}") -> str:
        if not self.values:
            return "not measured"
        lo, hi = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} [{fmt.format(lo)}–{fmt.format(hi)}]"


def ratio(a: Series, b: Series) -> float:
    return a.median / b.median if a.values and b.values and b.median else float("nan")


def interleaved(steps: dict[str, Callable[[], None]], repeats: int, *, label: str = "") -> None:
    """Run each step `repeats` times, rotating the order every round so drift hits all of them alike."""
    names = list(steps)
    for r in range(repeats):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            print(f"  {label}round {r + 1}/{repeats}: {name}", file=sys.stderr, flush=True)
            steps[name]()


def machine() -> str:
    """One line describing the machine and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    versions = []
    for mod in ("torch", "transformers", "gradio", "llama_cpp"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return (f"{cpu}, {cores} cores{mem}, no GPU used; Python {platform.python_version()}, "
            f"{', '.join(versions)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def command_line() -> str:
    args = [a for a in sys.argv[1:] if a != "--write"]
    return "python " + shlex.join([os.path.relpath(sys.argv[0], REPO), *args])


def section(name: str, title: str, body: str) -> str:
    """A BENCHMARKS.md section, with the command that produced it and the machine it ran on."""
    return (f"<!-- bench:{name} start -->\n## {title}\n\n```bash\n{command_line()}\n```\n\n"
            f"Machine: {machine()}\n\n{body.strip()}\n<!-- bench:{name} end -->\n")


def write_section(name: str, text: str, path: Path = BENCHMARKS) -> None:
    """Replace the section `name` in BENCHMARKS.md (append it when absent)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} start -->.*?<!-- bench:{re.escape(name)} end -->\n?",
                         re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")
    print(f"section {name!r} written to {path}", file=sys.stderr)


def report(name: str, title: str, body: str, write: bool) -> None:
    """Print a benchmark's tables; with `write` (--write) also replace its section in BENCHMARKS.md."""
    print(body)
    if write:
        write_section(name, section(name, title, body))


def run_child(argv: list[str], *, env: dict[str, str] | None = None,
              on_line: Callable[[str, float], None] | None = None,
              timeout: float = 1800) -> tuple[int, float, int, str]:
    """Run a child process; returns (exit code, wall seconds, peak RSS in bytes, stdout).

    Peak RSS is os.wait4's ru_maxrss: exact for the child, but Linux counts the parent's RSS at the
    fork in it too, so it is only meaningful when the parent is small (children can report
    `peak_rss_self()` instead). `on_line` is called with each stdout line and the time it arrived.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if on_line:
            on_line(line, time.perf_counter())
        if time.perf_counter() - started > timeout:
            proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss * 1024, "".join(lines)


def stop_child(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM a child (an app under test), SIGKILL it after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float,
              headers: dict[str, str] | None = None) -> float:
    """Seconds until `url` answers 200; SystemExit with the log's tail if `process` exits or time runs out."""
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5, headers=headers).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it (/proc's children lists, all threads)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def peak_rss_self() -> int:
    """This process's own resident-memory high-water mark in bytes (VmHWM), 0 where /proc is missing.

    Unlike a child's ru_maxrss, which Linux seeds with the parent's RSS at fork/exec time, VmHWM
    covers only the memory of the program itself.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the child printed no JSON result:\n{stdout[-2000:]}")


def median_of(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
