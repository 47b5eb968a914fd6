"""Fail CI when a test listed in .ci/must_run.txt was skipped or did not run (reads pytest's JUnit XML)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(junit: str, listing: str) -> int:
    wanted = [line.strip() for line in Path(listing).read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    ran: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        node = f"{path}::{case.get('name', '').split('[')[0]}"
        status = "skipped" if case.find("skipped") is not None else "ran"
        ran[node] = "skipped" if ran.get(node) == "skipped" or status == "skipped" else "ran"
    problems = []
    for want in wanted:
        hits = {node: s for node, s in ran.items() if node == want or node.startswith(want + "::")}
        if not hits:
            problems.append(f"{want}: did not run at all")
        problems += [f"{node}: skipped" for node, s in hits.items() if s == "skipped"]
    for p in problems:
        print(f"must-run test not run: {p}", file=sys.stderr)
    print(f"must-run tests: {len(wanted)} entries checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
