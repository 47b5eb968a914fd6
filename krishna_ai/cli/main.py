"""Command line: `python -m krishna_ai <command>` (or `krishna-ai <command>`).

Each command group is a module with `add_parsers(sub)` and one `_cmd_*` function per command, which calls
plain functions of the module doing the work (chat, train, ship, history); domain errors become one
`error: ...` line and exit code 2, here.
"""

from __future__ import annotations

import argparse
import sys

from krishna_ai.cli import chat, history, ship, train
from krishna_ai.core.errors import KrishnaError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m krishna_ai",
                                 description="krishna_ai: chat, train and ship persona-specialised Gemma models")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (chat, train, ship, history):
        group.add_parsers(sub)
    for p in sub.choices.values():
        p.add_argument("--prompts", action="append", default=[], metavar="DIR",
                       help="extra persona folder (repeatable)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KrishnaError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
