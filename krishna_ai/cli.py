"""Command line: `python -m krishna_ai <command>` (or `krishna-ai <command>`).

Every command's arguments are defined here (`build_parser`), and each command is a `_cmd_*` function
that calls plain functions of the module doing the work; domain errors become one `error: ...` line
and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from krishna_ai import cli_history, export, matformer, push, space, sweep, tiny
from krishna_ai.errors import ConfigError, KrishnaError


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: the persona's)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float, dest="top_p")
    g.add_argument("--top-k", type=int, dest="top_k")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    g.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, help="1 = none")
    g.add_argument("--dry-multiplier", dest="dry_multiplier", type=float, help="DRY repetition control, 0 = off")
    g.add_argument("--seed", type=int)


def _cmd_ask(args: argparse.Namespace) -> int:
    from krishna_ai.personas import load_personas, persona_dirs
    from krishna_ai.runtime.tiers import default_tier
    from krishna_ai.studio import Studio
    from krishna_ai.style import badge

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
        print(f"[{badge(final.violations or [])}]", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from krishna_ai.personas import load_personas, persona_dirs
    from krishna_ai.serve import ServerConfig, model_file, serve

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
                              api_key_env=args.api_key_env))


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

    overrides = {"output_dir": args.output_dir, "max_steps": args.max_steps, "limit": args.limit, "data": args.data,
                 "method": args.method}
    if args.method == "dpo":
        overrides["data_format"] = "preference"
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
    from krishna_ai.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.runtime.load import load_engine
    from krishna_ai.sampling import SamplingParams

    persona = get_persona(load_personas(persona_dirs(args.prompts)), args.persona)
    questions = load_questions(args.questions)[: args.limit or None]
    specs = [split_spec(m, persona) for m in (args.model or ["light"])]
    if args.adapter:
        if len(specs) != 1:
            raise ValueError("--adapter goes with a single --model; for several use --model SPEC@ADAPTER")
        specs = [(specs[0][0], args.adapter)]
    params = SamplingParams.for_persona(persona, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                        repetition_penalty=args.repetition_penalty,
                                        dry_multiplier=args.dry_multiplier, seed=args.seed)
    # a persona without a knowledge bank is asked one way only, whatever --bank says
    banks = {"on": [True], "off": [False], "both": [True, False]}[args.bank] if persona.knowledge else [True]
    results = []
    for spec, (model, adapter) in zip(args.model or ["light"], specs, strict=True):
        engine = load_engine(model, adapter)  # llama.cpp for GGUF tiers/files, else transformers
        name = spec if not args.adapter else f"{model}@{adapter}"
        for bank in banks:
            results.append(evaluate(engine, persona, questions, params, batch_size=args.batch_size,
                                    name=name if bank else f"{name} without bank", bank=bank))
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


def _cmd_tiny(args: argparse.Namespace) -> int:
    out = tiny.build_tiny_gemma3n(args.out, text_only=args.text_only, layers=args.layers, seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MB); load it with --model {out}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    settings = sweep.SweepSettings(
        config=Path(args.config), trials=args.trials, study=args.study, root=Path(args.root),
        questions=Path(args.questions) if args.questions else None, persona=args.persona,
        keep_adapters=args.keep_adapters, seed=args.seed, max_steps=args.max_steps, limit=args.limit,
        eval_limit=args.eval_limit, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        batch_size=args.batch_size, prompts=args.prompts)
    result = sweep.run_sweep(settings)
    print(Path(result["paths"]["markdown"]).read_text(encoding="utf-8"))
    for kind, path in result["paths"].items():
        print(f"{kind}: {path}")
    return 0


def _cmd_gguf(args: argparse.Namespace) -> int:
    out, report = export.convert_gguf(args.model, args.out, outtype=args.outtype, llama_cpp=args.llama_cpp,
                                      verify=not args.no_verify, force=args.force, verbose=args.verbose)
    if report is not None:
        print(report.format())
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB, {args.outtype})")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    folder = export.fetch_converter(args.version, force=args.force)
    print(f"llama.cpp converter ready in {folder} ({(folder / export.SOURCE_MARKER).read_text().splitlines()[0]})")
    return 0


def _cmd_modelfile(args: argparse.Namespace) -> int:
    out = export.write_modelfile(args.persona, args.gguf, args.out, prompts=getattr(args, "prompts", None),
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m krishna_ai",
                                 description="krishna_ai: chat, train and ship persona-specialised Gemma models")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_chat(sub)  # ask, personas, check-style
    _add_train(sub)  # train, merge, eval, build-dataset, tiny-gemma3n, sweep
    _add_ship(sub)  # export gguf|fetch-converter|modelfile, push, space, slice
    cli_history.add_parsers(sub)  # chats list|export|import|check, feedback export
    for p in sub.choices.values():
        p.add_argument("--prompts", action="append", default=[], metavar="DIR",
                       help="extra persona folder (repeatable)")
    return ap


def _add_chat(sub: argparse._SubParsersAction) -> None:
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
    _add_sampling(p)
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


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="LoRA / QLoRA fine-tuning from a recipe (configs/*.yaml)")
    p.add_argument("--config", required=True, help="recipe YAML")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--output-dir", dest="output_dir", help="override the recipe's output_dir")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="override (smoke runs)")
    p.add_argument("--limit", type=int, help="use only the first N conversations")
    p.add_argument("--data", help="override the recipe's data file")
    p.add_argument("--method", choices=["sft", "dpo"],
                   help="override: dpo trains on preference pairs (data_format preference; `feedback export`)")
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
    p.add_argument("--model", action="append",
                   help="SPEC (with the persona's adapter for it, as the app serves it), SPEC@none (the bare model: "
                        "the prompt-only baseline) or SPEC@ADAPTER; repeat to compare side by side")
    p.add_argument("--adapter", help="adapter for a single --model")
    p.add_argument("--questions", required=True, help="one question per line, or JSONL with question/label")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--json", help="write every reply and the scores to this JSON file")
    p.add_argument("--temperature", type=float, help="override the persona's temperature (0 = greedy)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--repetition-penalty", dest="repetition_penalty", type=float,
                   help="override the persona's repetition penalty (1 = none)")
    p.add_argument("--dry-multiplier", dest="dry_multiplier", type=float,
                   help="override the persona's DRY repetition control (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8)
    p.add_argument("--bank", choices=("on", "off", "both"), default="on",
                   help="the persona's knowledge bank: cards in the prompt (on, as the app serves it), none (off: "
                        "replies still checked against the cards retrieval picks), or both side by side")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("build-dataset", help="render persona Q/A records into conversation JSONL")
    p.add_argument("--persona", required=True)
    p.add_argument("--source", required=True, help="JSONL with question, answer[, personality]")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_build_dataset)

    p = sub.add_parser("tiny-gemma3n", help="write a tiny random E4B-shaped Gemma 3n checkpoint (tests, demos)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced if an earlier tiny build)")
    p.add_argument("--text-only", action="store_true", help="Gemma3nForCausalLM weights and tokenizer only")
    p.add_argument("--layers", type=int, default=tiny.E4B_LAYERS,
                   help="decoder layers (E4B: 35); KV sharing and sparsity scale with it")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=_cmd_tiny)

    p = sub.add_parser("sweep", help="Optuna hyper-parameter sweep: train + evaluate per trial (resumable)")
    p.add_argument("--config", required=True, help="recipe YAML (its searchable: mapping adds to the space)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument("--study", help="study name (default: the recipe's file name)")
    p.add_argument("--root", default=str(sweep.SWEEPS_ROOT), help="folder holding the study folders")
    p.add_argument("--questions", help="held-out questions (default: heldout.jsonl beside the data)")
    p.add_argument("--persona", help="persona to evaluate with (default: the recipe's)")
    p.add_argument("--keep-adapters", dest="keep_adapters", action="store_true", help="keep every trial's adapter")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--max-steps", dest="max_steps", type=int, help="override the recipe (quick sweeps)")
    p.add_argument("--limit", type=int, help="train on the first N conversations only")
    p.add_argument("--eval-limit", dest="eval_limit", type=int, help="evaluate on the first N questions only")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="reply length at evaluation")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling at evaluation (default 0 = greedy)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="evaluation batch size")
    p.set_defaults(func=_cmd_sweep)


def _add_ship(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model: GGUF (llama.cpp), Ollama Modelfile")
    formats = p.add_subparsers(dest="export_command", required=True, metavar="FORMAT")

    g = formats.add_parser("gguf", help="convert a local model folder to GGUF with llama.cpp's converter, then verify")
    g.add_argument("--model", required=True, help="model folder (e.g. from `merge`), or the light tier")
    g.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    g.add_argument("--outtype", choices=export.OUTTYPES, default="f16",
                   help="tensor type (q8_0 = 8-bit, about half of f16)")
    g.add_argument("--llama-cpp", dest="llama_cpp", metavar="DIR",
                   help=f"llama.cpp folder with {export.CONVERTER} (default: ${export.LLAMA_CPP_ENV}, then the "
                        "fetched one)")
    g.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip reading the file back")
    g.add_argument("--force", action="store_true", help="replace --out if it exists")
    g.add_argument("--verbose", action="store_true", help="show the converter's own log")
    g.set_defaults(func=_cmd_gguf)

    f = formats.add_parser("fetch-converter", help="download llama.cpp's converter (from the llama-cpp-python sdist)")
    f.add_argument("--version", default=export.LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python version")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.set_defaults(func=_cmd_fetch)

    m = formats.add_parser("modelfile", help="write an Ollama Modelfile for a persona and a GGUF file")
    m.add_argument("--persona", required=True)
    m.add_argument("--gguf", required=True, metavar="FILE")
    m.add_argument("--out", default="Modelfile", metavar="FILE")
    m.add_argument("--num-ctx", dest="num_ctx", type=int,
                   help=f"context window (default: the model's, at most {export.DEFAULT_NUM_CTX})")
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
