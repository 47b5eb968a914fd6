"""Command line: `python -m krishna_ai <command>` (or `krishna-ai <command>`).

Each command is a `_cmd_*` function; domain errors become one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from krishna_ai import export, matformer, push, space, sweep, tiny
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
                              max_new_tokens=args.max_new_tokens, seed=args.seed, slice=args.slice):
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


def _cmd_train(args: argparse.Namespace) -> int:
    from krishna_ai.train import TrainConfig, main

    overrides = {"output_dir": args.output_dir, "max_steps": args.max_steps, "limit": args.limit}
    cfg = TrainConfig.from_yaml(args.config, **overrides)
    summary = main(cfg, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from krishna_ai.merge import merge

    out = merge(args.base, args.adapter, args.out, dtype=args.dtype, force=args.force)
    print(f"merged model written to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from krishna_ai.evaluate import evaluate, format_table, load_questions, split_spec, write_json
    from krishna_ai.generation import SamplingParams
    from krishna_ai.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.studio import default_loader

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    questions = load_questions(args.questions)[: args.limit or None]
    specs = [split_spec(m) for m in (args.model or ["light"])]
    if args.adapter:
        if len(specs) != 1:
            raise ValueError("--adapter goes with a single --model; for several use --model SPEC@ADAPTER")
        specs = [(specs[0][0], args.adapter)]
    params = SamplingParams.for_persona(persona, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                        seed=args.seed)
    results = []
    for model, adapter in specs:
        engine = default_loader(model, adapter)  # llama.cpp for GGUF tiers/files, else transformers
        name = f"{model}@{adapter}" if adapter else model
        results.append(evaluate(engine, persona, questions, params, batch_size=args.batch_size, name=name))
        del engine
    print(format_table(results))
    if args.json:
        print(f"results written to {write_json(results, persona, args.questions, args.json)}")
    return 0


def _cmd_build_dataset(args: argparse.Namespace) -> int:
    from krishna_ai.data import load_persona_source, persona_conversations, write_jsonl
    from krishna_ai.personas import get_persona, load_personas, persona_dirs

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    convs = persona_conversations(persona, load_persona_source(args.source))
    print(f"{len(convs)} conversations written to {write_jsonl(convs, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m krishna_ai",
                                 description="krishna_ai: chat, train and ship persona-specialised Gemma models")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ask", help="stream one reply to the terminal")
    p.add_argument("question", nargs="+", help="the question ('-' reads it from stdin)")
    p.add_argument("--persona", default="krishna")
    p.add_argument("--model", default="light",
                   help="tier (light, light-gguf, e2b, e4b), folder, hub id, or a .gguf file (llama.cpp)")
    p.add_argument("--adapter", help="LoRA adapter folder merged at load")
    p.add_argument("--image", help="image file (image-capable personas on a Gemma 3n tier)")
    p.add_argument("--personality", help="whom the closing story is about")
    p.add_argument("--slice", metavar="NAME", help="run an E4B-shaped Gemma 3n as this MatFormer slice, live")
    p.add_argument("--quiet", action="store_true", help="do not print stats and style check")
    _add_sampling(p)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("personas", help="list (and validate) the available personas")
    p.set_defaults(func=_cmd_personas)

    p = sub.add_parser("check-style", help="check a reply (file or '-') against a persona's style rules")
    p.add_argument("file")
    p.add_argument("--persona", default="krishna")
    p.set_defaults(func=_cmd_check_style)

    p = sub.add_parser("train", help="LoRA / QLoRA fine-tuning from a recipe (configs/*.yaml)")
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--output-dir", dest="output_dir", help="override the recipe's output_dir")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="override (smoke runs)")
    p.add_argument("--limit", type=int, help="use only the first N conversations")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("merge", help="merge a LoRA adapter into its base (bf16 safetensors)")
    p.add_argument("--base", required=True, help="tier, folder or hub id the adapter was trained on")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("eval", help="style compliance / accuracy over held-out questions")
    p.add_argument("--persona", required=True)
    p.add_argument("--model", action="append", help="SPEC or SPEC@ADAPTER (repeat to compare models)")
    p.add_argument("--adapter", help="adapter for a single --model")
    p.add_argument("--questions", required=True, help="one question per line, or JSONL with question/label")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--json", help="write every reply and the scores to this JSON file")
    p.add_argument("--temperature", type=float, help="override the persona's temperature (0 = greedy)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("build-dataset", help="render persona Q/A records into conversation JSONL")
    p.add_argument("--persona", required=True)
    p.add_argument("--source", required=True, help="JSONL with question, answer[, personality]")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_build_dataset)

    tiny.add_cli(sub)  # tiny-gemma3n
    sweep.add_cli(sub)  # sweep
    export.add_cli(sub)  # export gguf|modelfile|fetch-converter
    push.add_cli(sub)  # push
    space.add_cli(sub)  # space
    matformer.add_cli(sub)  # slice

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
