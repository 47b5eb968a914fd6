"""Command line: `python -m krishna_ai <command>` (or `krishna-ai <command>`).

Each command group is a module with `add_parsers(sub)` and one `_cmd_*` function per command, which calls
plain functions of the module doing the work (chat, train, ship, history); domain errors become one
`error: ...` line and exit code 2, here; a training run stopped by SIGTERM (resumable) exits with 3.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from krishna_ai.cli import chat, history, ship, train
from krishna_ai.core.errors import KrishnaError
from krishna_ai.training.common import STOPPED_EXIT, Stopped


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


JOB_PARENT_ENV = "KRISHNA_AI_JOB_PARENT"
"""Set by the app's job runner (studio/jobs.py) to its pid in the processes it starts."""


def watch_parent(parent: int) -> None:
    """A job process whose app is gone stops itself as Stop would (SIGTERM: a training run saves a checkpoint)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get(JOB_PARENT_ENV, "").isdigit():
        watch_parent(int(os.environ[JOB_PARENT_ENV]))
    try:
        return args.func(args)
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return STOPPED_EXIT
    except (KrishnaError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
