"""`python -m krishna_ai` train, merge, eval, build-dataset, tiny-gemma3n, sweep: making and measuring a model."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from krishna_ai.training import sweep, tiny


def _cmd_train(args: argparse.Namespace) -> int:
    from krishna_ai.training.config import TrainConfig
    from krishna_ai.training.run import train

    overrides = {"output_dir": args.output_dir, "max_steps": args.max_steps, "limit": args.limit, "data": args.data,
                 "method": args.method, "prompts": args.prompts or None}
    if args.method == "dpo":
        overrides["data_format"] = "preference"
    cfg = TrainConfig.from_yaml(args.config, **overrides)
    summary = train(cfg, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from krishna_ai.runtime.merge import merge

    out = merge(args.base, args.adapter, args.out, dtype=args.dtype, force=args.force)
    print(f"merged model written to {out}")
    return 0


MAX_BEST_OF = 16
"""`eval --best-of`: replies sampled per question at most."""


def _cmd_eval(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.core.sampling import SamplingParams
    from krishna_ai.runtime.load import load_engine
    from krishna_ai.training.evaluate import evaluate, format_table, load_questions, split_spec, write_json

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
    # a persona without a knowledge bank or checklists is asked one way only, whatever --bank says
    banked = persona.knowledge or persona.coach
    banks = {"on": [True], "off": [False], "both": [True, False]}[args.bank] if banked else [True]
    embed = None
    if persona.scope is not None and args.scope == "on":
        from krishna_ai.runtime.embed import LightEmbedder

        embed = LightEmbedder()
    if not 1 <= args.best_of <= MAX_BEST_OF:  # each is a whole reply per question: a huge N never ends
        raise ValueError(f"--best-of must be between 1 and {MAX_BEST_OF}, not {args.best_of}")
    vectors = None
    if args.best_of > 1:
        from krishna_ai.core.vectors import sentence_vectors as vectors
    results = []
    for spec, (model, adapter) in zip(args.model or ["light"], specs, strict=True):
        engine = load_engine(model, adapter)  # llama.cpp for GGUF tiers/files, else transformers
        name = spec if not args.adapter else f"{model}@{adapter}"
        for bank in banks:
            results.append(evaluate(engine, persona, questions, params, batch_size=args.batch_size,
                                    name=(name if bank else f"{name} without bank")
                                    + (f" best of {args.best_of}" if args.best_of > 1 else ""),
                                    bank=bank, embed=embed, n=args.best_of, vectors=vectors))
        del engine
    print(format_table(results))
    if args.json:
        print(f"results written to {write_json(results, persona, args.questions, args.json)}")
    return 0


def _cmd_build_dataset(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.training.data import load_persona_source, persona_conversations, write_jsonl

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


def _cmd_grade(args: argparse.Namespace) -> int:
    from krishna_ai.training import grading

    if args.action == "prepare":
        sheet, key = grading.prepare(args.eval, args.rubric, args.out, seed=args.seed, limit=args.limit)
        print(f"blind sheet: {sheet} (grade each reply good, weak or bad); key: {key} (open it after grading)")
    else:
        print(grading.format_summary(grading.summary(args.sheet, partial=args.partial)))
    return 0


def _cmd_scope(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import load_personas, persona_dirs
    from krishna_ai.runtime.embed import LightEmbedder
    from krishna_ai.training import scope_fit

    personas = load_personas(persona_dirs(args.prompts)) if args.action == "eval" else None
    embed = LightEmbedder()
    if args.action == "fit":
        paths = [Path(p) for p in args.file] or sorted(Path(persona_dirs()[0]).glob("*.toml"))
        for path in paths:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            if not (raw.get("scope") or {}).get("gate"):
                continue
            persona, gate = scope_fit.fit_persona(path, embed, embed.name, progress=not args.quiet)
            r = gate.report
            print(f"{persona.id}: {r['inside']} inside / {r['outside']} outside questions, C={r['C']}, "
                  f"threshold {gate.threshold:.3f}: cross-validated, {r['cv_outside_caught']:.1%} of outside "
                  f"questions caught with at most {r['cv_inside_refused_max']:.0%} of inside ones refused "
                  f"-> {persona.scope.gate if persona.scope else ''}")
        return 0
    assert personas is not None
    chosen = [personas[p] for p in args.persona] if args.persona else list(personas.values())
    print(scope_fit.format_measured(scope_fit.measure(chosen, args.questions, embed)))
    return 0


def _cmd_safety(args: argparse.Namespace) -> int:
    from krishna_ai.training import safety_fit

    if args.action == "fit":
        net = safety_fit.fit_net()
        r = net.report
        sentence = "" if net.sentence_threshold is None else f", a sentence's {net.sentence_threshold:.3f}"
        print(f"{r['everyday']} everyday messages, " + ", ".join(f"{r[k]} {k}" for k in net.classes if k) +
              f"; C={r['C']}, a message's threshold {net.threshold:.3f}{sentence}: cross-validated, "
              f"{r['cv_crisis_caught']:.1%} of crisis messages caught (whole messages alone: "
              f"{r['cv_crisis_caught_whole_messages_only']:.1%}) with at most {r['cv_everyday_flagged_max']:.1%} of "
              f"everyday ones flagged -> {safety_fit.NET}")
        curve = r["cv_crisis_caught_by_everyday_flagged"]
        print("cross-validated, crisis messages caught if the thresholds flagged: " + ", ".join(
            f"{share} of everyday ones, {caught:.1%}" for share, caught in curve.items()))
        return 0
    paths = [Path(p) for p in args.file] or safety_fit.HELDOUT
    print(safety_fit.format_measured(safety_fit.measure(safety_fit.labelled(paths)), show=args.show))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--best-of", dest="best_of", type=int, default=1, metavar="N",
                   help="sample N replies per question and keep the one the checks rank best (core/rerank.py)")
    p.add_argument("--bank", choices=("on", "off", "both"), default="on",
                   help="the persona's knowledge bank: cards in the prompt (on, as the app serves it), none (off: "
                        "replies still checked against the cards retrieval picks; PET: the model writes the reply "
                        "instead of its checklists), or both side by side")
    p.add_argument("--scope", choices=("on", "off"), default="on",
                   help="the persona's scope: questions outside it get its decline, as the app answers them (on), or "
                        "every question goes to the model (off)")
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

    p = sub.add_parser("grade", help="blind grading of held-out replies: prepare a shuffled sheet, then summarise it")
    g = p.add_subparsers(dest="action", required=True)
    prep = g.add_parser("prepare", help="the replies of one or more eval JSON files, shuffled, without model names")
    prep.add_argument("--eval", action="append", required=True, metavar="JSON", help="an `eval --json` file; repeat")
    prep.add_argument("--rubric", required=True, help="the written rubric (Markdown), copied into the sheet")
    prep.add_argument("--out", required=True, help="the sheet (JSON); its key goes beside it")
    prep.add_argument("--limit", type=int, help="the first N questions every model answered")
    prep.add_argument("--seed", type=int, default=0, help="the shuffle's seed")
    summ = g.add_parser("summary", help="the share graded good, weak and bad per model (reads the key)")
    summ.add_argument("sheet")
    summ.add_argument("--partial", action="store_true", help="count the graded replies of an unfinished sheet")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("scope", help="the personas' scope gates: fit them, or measure them on labelled questions")
    g = p.add_subparsers(dest="action", required=True)
    fit = g.add_parser("fit", help="fit and write the gate of every persona file with [scope] gate (or those given)")
    fit.add_argument("file", nargs="*", help="persona files (default: every one in prompts/)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    ev = g.add_parser("eval", help="outside questions caught and inside ones refused, as the app judges them")
    ev.add_argument("--questions", default=str(scope_fit_heldout()),
                    help="labelled JSONL: question, in: [persona ids], out: [persona ids]")
    ev.add_argument("--persona", action="append", help="only this persona (repeatable)")
    p.set_defaults(func=_cmd_scope)
    add_safety_parser(sub)


def add_safety_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("safety", help="the crisis check's model by meaning: fit it, or measure the crisis check")
    g = p.add_subparsers(dest="action", required=True)
    g.add_parser("fit", help="fit and write prompts/safety/crisis.json on data/safety/dev*.jsonl")
    ev = g.add_parser("eval", help="crisis messages caught and everyday ones flagged, patterns alone and shipped")
    ev.add_argument("file", nargs="*", help="labelled JSONL: message, crisis (default: data/safety/heldout*.jsonl)")
    ev.add_argument("--show", action="store_true", help="list each message missed or wrongly flagged")
    p.set_defaults(func=_cmd_safety)

    p = sub.add_parser("matcher", help="tune the sentence model that chooses counsel cards, on the cards' examples")
    g = p.add_subparsers(dest="action", required=True)
    fit = g.add_parser("fit", help="fit and write the [counsel] matcher of every persona file that names one")
    fit.add_argument("file", nargs="*", help="persona files (default: every one in prompts/)")
    fit.add_argument("--epochs", type=int, default=2, help="passes over the examples (default 2)")
    fit.add_argument("--rank", type=int, default=8, help="the LoRA's rank (default 8)")
    fit.add_argument("--seed", type=int, default=0, help="the held-back examples and the shuffle (default 0)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_matcher)


def _cmd_matcher(args: argparse.Namespace) -> int:
    from krishna_ai.core.personas import persona_dirs
    from krishna_ai.training import matcher

    if min(args.epochs, args.rank) < 1:
        raise SystemExit("--epochs and --rank must be at least 1")
    settings = matcher.Settings(epochs=args.epochs, rank=args.rank, seed=args.seed)
    paths = [Path(p) for p in args.file] or sorted(Path(persona_dirs()[0]).glob("*.toml"))
    fitted = 0
    for path in paths:
        counsel = tomllib.loads(path.read_text(encoding="utf-8")).get("counsel") or {}
        if not args.file and not counsel.get("matcher"):
            continue  # every persona file: only those naming a matcher (a file named on the command line must)
        f = matcher.fit_persona(path, settings, progress=not args.quiet)
        fitted += 1
        print(f"{path.stem}: {f.cards} cards, trained on {f.trained_on} examples in {f.seconds:.0f} s; of "
              f"{f.held_back} held back, own card first {f.plain['own card']:.1%} -> {f.tuned['own card']:.1%}, "
              f"a card of its topic {f.plain['topic']:.1%} -> {f.tuned['topic']:.1%} -> {f.folder}")
    if not fitted:
        print("no persona file names a [counsel] matcher")
    return 0


def scope_fit_heldout() -> Path:
    from krishna_ai.training.scope_fit import HELDOUT

    return HELDOUT
