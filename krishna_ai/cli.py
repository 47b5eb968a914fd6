"""Command line: `python -m krishna_ai <command>` (or `krishna-ai <command>`).

Each command is a `_cmd_*` function; domain errors become one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from krishna_ai.errors import KrishnaError

Command = Callable[[argparse.Namespace], int]


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: the persona's)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float, dest="top_p")
    g.add_argument("--top-k", type=int, dest="top_k")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    g.add_argument("--seed", type=int)


def _cmd_ask(args: argparse.Namespace) -> int:
    from krishna_ai.personas import load_personas, persona_dirs
    from krishna_ai.studio import Studio
    from krishna_ai.style import badge

    question = " ".join(args.question).strip()
    if question == "-":
        question = sys.stdin.read().strip()
    studio = Studio(load_personas(persona_dirs(args.prompts)), default_model=args.model,
                    adapters={args.model: args.adapter} if args.adapter else None)
    final = None
    shown = 0
    for update in studio.chat(args.persona, [], question, image=args.image, personality=args.personality,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, seed=args.seed):
        sys.stdout.write(update.text[shown:])
        sys.stdout.flush()
        shown = len(update.text)
        final = update
    sys.stdout.write("\n")
    if final is not None and final.done and not args.quiet:
        print(f"[{final.stats.line()}]", file=sys.stderr)
        print(f"[{badge(final.violations or [])}]", file=sys.stderr)
    return 0


def _cmd_personas(args: argparse.Namespace) -> int:
    from krishna_ai.personas import load_personas, persona_dirs

    personas = load_personas(persona_dirs(args.prompts))
    for p in personas.values():
        images = " [images]" if p.accepts_images else ""
        print(f"{p.id:10s} {p.name}{images}\n{'':10s} {p.description}")
    return 0


def _cmd_check_style(args: argparse.Namespace) -> int:
    from krishna_ai.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.style import check_reply

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    violations = check_reply(text, persona)
    for v in violations:
        print(v)
    print("ok" if not violations else f"{len(violations)} violation(s)")
    return 1 if violations else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m krishna_ai",
                                 description="krishna_ai: chat, train and ship persona-specialised Gemma models")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ask", help="stream one reply to the terminal")
    p.add_argument("question", nargs="+", help="the question ('-' reads it from stdin)")
    p.add_argument("--persona", default="krishna")
    p.add_argument("--model", default="light", help="tier (light, e2b, e4b), folder or hub id")
    p.add_argument("--adapter", help="LoRA adapter folder merged at load")
    p.add_argument("--image", help="image file (image-capable personas on a Gemma 3n tier)")
    p.add_argument("--personality", help="whom the closing story is about")
    p.add_argument("--quiet", action="store_true", help="do not print stats and style check")
    _add_sampling(p)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("personas", help="list (and validate) the available personas")
    p.set_defaults(func=_cmd_personas)

    p = sub.add_parser("check-style", help="check a reply (file or '-') against a persona's style rules")
    p.add_argument("file")
    p.add_argument("--persona", default="krishna")
    p.set_defaults(func=_cmd_check_style)

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
