"""`python -m krishna_ai` export gguf|fetch-converter|modelfile, push, space, slice: taking a model elsewhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from krishna_ai import matformer
from krishna_ai.core.errors import ConfigError
from krishna_ai.runtime import convert
from krishna_ai.ship import ollama, push, space


def _cmd_gguf(args: argparse.Namespace) -> int:
    out, report = convert.convert_gguf(args.model, args.out, outtype=args.outtype, llama_cpp=args.llama_cpp,
                                      verify=not args.no_verify, force=args.force, verbose=args.verbose)
    if report is not None:
        print(report.format())
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB, {args.outtype})")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    folder = convert.fetch_converter(args.version, force=args.force)
    print(f"llama.cpp converter ready in {folder} ({(folder / convert.SOURCE_MARKER).read_text().splitlines()[0]})")
    return 0


def _cmd_modelfile(args: argparse.Namespace) -> int:
    out = ollama.write_modelfile(args.persona, args.gguf, args.out, prompts=getattr(args, "prompts", None),
                                 num_ctx=args.num_ctx)
    print(f"wrote {out}; create the model with: ollama create {args.persona} -f {out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    result, info = push.push(args.model, args.repo, private=args.private, dry_run=args.dry_run, out=args.out,
                             eval_json=args.eval, persona=args.persona, recipe=args.recipe, prompts=args.prompts)
    if args.dry_run:
        files = [p for p in Path(result).rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"dry run: nothing uploaded. The folder that would go to {args.repo} ({len(files)} files, "
              f"{size:.1f} MB): {result}")
        if not info.get("base_model"):
            print("note: no hub id known for the base model, so the card has no base_model", file=sys.stderr)
    else:
        print(f"uploaded to {result}")
    return 0


def _cmd_space(args: argparse.Namespace) -> int:
    out = space.build_space(args.out, model=args.model, persona=args.persona, hardware=args.hardware,
                            title=args.title, description=args.description, emoji=args.emoji,
                            gpu_duration=args.gpu_duration, space_id=args.space_id, prompts=args.prompts,
                            force=args.force)
    for w in space.warnings_for(args.model, args.hardware or "cpu-basic"):
        print(f"warning: {w}", file=sys.stderr)
    print(f"Space assembled in {out}. Try it: cd {out} && python app.py\n"
          f"Deploy: hf upload {args.space_id or 'OWNER/SPACE_NAME'} {out} . --repo-type space")
    return 0


def _cmd_slice(args: argparse.Namespace) -> int:
    if args.list:
        for name in matformer.known_configs():
            c = matformer.load_slice_config(name)
            print(f"{name:22s} {c.description}")
        return 0
    if not args.config:
        raise ConfigError("slice needs --config NAME|FILE (see --list)")
    if args.plan:
        report = matformer.plan_slice(args.config, args.src, text_only=args.text_only)
    else:
        if not args.src or not args.out:
            raise ConfigError("slice needs --src DIR and --out DIR (or --plan to only print the report)")
        report = matformer.slice_checkpoint(args.src, args.out, args.config, text_only=args.text_only,
                                            max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(report.to_json() if args.json else report.render())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model: GGUF (llama.cpp), Ollama Modelfile")
    formats = p.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    g = formats.add_parser("gguf", help="convert a local model folder to GGUF with llama.cpp's converter, then verify")
    g.add_argument("--model", required=True, help="model folder (e.g. from `merge`), or the light tier")
    g.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    g.add_argument("--outtype", choices=convert.OUTTYPES, default="f16",
                   help="tensor type (q8_0 = 8-bit, about half of f16)")
    g.add_argument("--llama-cpp", dest="llama_cpp", metavar="DIR",
                   help=f"llama.cpp folder with {convert.CONVERTER} (default: ${convert.LLAMA_CPP_ENV}, then the "
                        "fetched one)")
    g.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip reading the file back")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--verbose", action="store_true", help="show the converter's own log")
    g.set_defaults(func=_cmd_gguf)

    f = formats.add_parser("fetch-converter", help="download llama.cpp's converter (from the llama-cpp-python sdist)")
    f.add_argument("--version", default=convert.LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python version")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.set_defaults(func=_cmd_fetch)

    m = formats.add_parser("modelfile", help="write an Ollama Modelfile for a persona and a GGUF file")
    m.add_argument("--persona", required=True)
    m.add_argument("--gguf", required=True, metavar="FILE")
    m.add_argument("--out", default="Modelfile", metavar="FILE")
    m.add_argument("--num-ctx", dest="num_ctx", type=int,
                   help=f"context window (default: the model's, at most {ollama.DEFAULT_NUM_CTX})")
    # SUPPRESS: without --prompts here, the value given before `modelfile` (on `export`) is kept
    m.add_argument("--prompts", action="append", default=argparse.SUPPRESS, metavar="DIR",
                   help="extra persona folder (repeatable)")
    m.set_defaults(func=_cmd_modelfile)

    p = sub.add_parser("push", help="upload a model or adapter to the Hugging Face Hub with a model card")
    p.add_argument("--model", required=True, metavar="DIR", help="merged model folder or LoRA adapter folder")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="write the upload folder, upload nothing")
    p.add_argument("--out", metavar="DIR", help="with --dry-run: where to write it (default: a temporary folder)")
    p.add_argument("--eval", metavar="JSON", help="evaluation results (`eval --json`) for the card")
    p.add_argument("--persona", help="persona the model was tuned for (default: the recipe's)")
    p.add_argument("--recipe", metavar="YAML", help="training recipe for the card (default: the run's recipe.yaml)")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("space", help="assemble a deployable Hugging Face Space folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, or an earlier build)")
    p.add_argument("--model", default="light", help="tier (light, e2b, e4b) or hub id the Space serves")
    p.add_argument("--persona", default="krishna", help="persona shown first")
    p.add_argument("--hardware", choices=space.HARDWARE,
                   help="suggested_hardware (default cpu-basic); zero-* adds ZeroGPU")
    p.add_argument("--title", help="Space title (default: krishna_ai <persona name>)")
    p.add_argument("--description", help="short_description, at most 60 characters")
    p.add_argument("--emoji", default="🪷")
    p.add_argument("--gpu-duration", dest="gpu_duration", type=int, default=120,
                   help="ZeroGPU seconds per reply (model loading on first use included)")
    p.add_argument("--space-id", dest="space_id", metavar="OWNER/NAME", help="the Space's id, for its README")
    p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier Space build")
    p.set_defaults(func=_cmd_space)

    p = sub.add_parser("slice", help="MatFormer: slice a Gemma 3n E4B (fine-tuned or not) into E2B or a custom size",
                       description="Slice an E4B-shaped Gemma 3n checkpoint into a smaller MatFormer child.")
    p.add_argument("--config", metavar="NAME|FILE", help="shipped config name (see --list) or a .toml/.json file")
    p.add_argument("--src", metavar="DIR", help="parent checkpoint folder (E4B-shaped Gemma 3n, safetensors)")
    p.add_argument("--out", metavar="DIR", help="output folder (written atomically; must not exist unless --overwrite)")
    p.add_argument("--plan", action="store_true", help="print the report only (without --src: the real E4B shape)")
    p.add_argument("--text-only", action="store_true", dest="text_only",
                   help="drop the vision/audio towers: a Gemma3nForCausalLM checkpoint")
    p.add_argument("--max-shard-size", default="4GB", dest="max_shard_size", metavar="SIZE",
                   help="e.g. 2GB, 500MB (default 4GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list", action="store_true", help="list the shipped configs and exit")
    p.set_defaults(func=_cmd_slice)
