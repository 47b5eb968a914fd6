"""`python -m krishna_ai` ask, serve, personas, check-style: talking to a persona from a terminal."""

from __future__ import annotations

import argparse
import sys

from krishna_ai.cli.common import add_sampling
from krishna_ai.core.errors import ConfigError


def _cmd_ask(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.runtime.tiers import default_tier
    from krishna_ai.studio.replies import verdict_line
    from krishna_ai.studio.service import Studio

    args.model = args.model or default_tier()
    question = " ".join(args.question).strip()
    if question == "-":
        question = sys.stdin.read().strip()
    studio = Studio(load_personas(persona_dirs(args.prompts)), default_model=args.model,
                    adapters={args.model: args.adapter} if args.adapter else None)
    final = None
    shown = 0
    for update in studio.chat(args.persona, [], question, image=args.image, personality=args.personality,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
                              dry_multiplier=args.dry_multiplier, seed=args.seed, slice=args.slice):
        sys.stdout.write(update.text[shown:])
        sys.stdout.flush()
        shown = len(update.text)
        final = update
    sys.stdout.write("\n")
    if final is not None and final.done and final.sources:
        for card in final.sources:  # what the reply's facts come from (stdout: part of the answer)
            print(f"Source: {card.title} — {card.source}")
    if final is not None and final.done and not args.quiet:
        print(f"[{final.stats.line()}]", file=sys.stderr)
        print(f"[{verdict_line(final)}]", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.ship.serve import ServerConfig, check_exposure, model_file, serve

    check_exposure(args.host, args.api_key_env, args.no_key)  # before a model is built for nothing
    adapter = args.adapter
    if adapter is None and args.persona:
        persona = load_personas(persona_dirs(args.prompts)).get(args.persona)
        if persona is None:
            raise ConfigError(f"unknown persona {args.persona!r}")
        adapter = persona.adapter_for(args.model)
    if adapter in ("", "none"):
        adapter = None
    alias, path = model_file(args.model, adapter)
    return serve(ServerConfig(model=path, alias=args.alias or alias, parallel=args.parallel,
                              ctx_per_slot=args.ctx_per_slot, host=args.host, port=args.port, threads=args.threads,
                              api_key_env=args.api_key_env, open_without_key=args.no_key))


def _cmd_personas(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs

    personas = load_personas(persona_dirs(args.prompts))
    for p in personas.values():
        images = " [images]" if p.accepts_images else ""
        print(f"{p.id:10s} {p.name}{images}\n{'':10s} {p.description}")
    return 0


def _cmd_check_style(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.core.style import check_reply

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    violations = check_reply(text, persona)
    for v in violations:
        print(v)
    print("ok" if not violations else f"{len(violations)} violation(s)")
    return 1 if violations else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="stream one reply to the terminal")
    p.add_argument("question", nargs="+", help="the question ('-' reads it from stdin)")
    p.add_argument("--persona", default="krishna")
    p.add_argument("--model", default=None,
                   help="tier (light, light-gguf, e2b, e4b), folder, hub id, or a .gguf file (llama.cpp); "
                        "default: light-gguf when llama-cpp-python is installed, else light")
    p.add_argument("--adapter", help="LoRA adapter folder merged at load")
    p.add_argument("--image", help="image file (image-capable personas on a Gemma 3n tier)")
    p.add_argument("--personality", help="whom the closing story is about")
    p.add_argument("--slice", metavar="NAME", help="run an E4B-shaped Gemma 3n as this MatFormer slice, live")
    p.add_argument("--quiet", action="store_true", help="do not print stats and style check")
    add_sampling(p)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("serve", help="llama.cpp's OpenAI-compatible server on the light GGUF, N users at once")
    p.add_argument("--persona", default="krishna", help="serve this persona's light adapter (merged)")
    p.add_argument("--model", default="light-gguf", help="light-gguf (default) or a .gguf file")
    p.add_argument("--adapter", help="adapter folder to merge instead of the persona's ('none': the bare model)")
    p.add_argument("--alias", help="model name clients ask for (default: the adapter's folder name)")
    p.add_argument("--parallel", type=int, default=8, help="slots decoded together (default 8)")
    p.add_argument("--ctx-per-slot", dest="ctx_per_slot", type=int, default=2048, help="context per slot (tokens)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--no-key", dest="no_key", action="store_true",
                   help="serve beyond this machine (--host other than loopback) without --api-key-env, on purpose")
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    p.add_argument("--api-key-env", dest="api_key_env", metavar="VAR",
                   help="require the key held in this environment variable (never on the command line)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("personas", help="list (and validate) the available personas")
    p.set_defaults(func=_cmd_personas)

    p = sub.add_parser("check-style", help="check a reply (file or '-') against a persona's style rules")
    p.add_argument("file")
    p.add_argument("--persona", default="krishna")
    p.set_defaults(func=_cmd_check_style)
