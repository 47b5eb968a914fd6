"""What each workbench job is: its form's values checked, the commands it runs, its progress and what it made.

    plan("train", {"recipe": "krishna-light.yaml", "max_steps": 2, "save_steps": 1})
    plan("eval", {"persona": "krishna", "models": ["light-gguf", "light-gguf@none"], "limit": 10})
    plan("export", {"base": "light", "adapter": "adapters/krishna-light", "persona": "krishna",
                    "targets": ["gguf", "modelfile"]})

A job is plain `python -m krishna_ai` commands, the ones the README shows, so whatever the browser does a
terminal can repeat (the job's log starts each with `$ python -m krishna_ai …`):

- train: `train --config <job>/recipe.yaml` — a recipe from configs/ with the form's overrides (epochs or
  steps, LoRA rank, learning rate, checkpoint interval, examples), writing into `<job>/run`. A DPO recipe
  first exports this app's own votes and feedback as preference pairs (`feedback export`) and trains on them.
- eval: `eval --json <job>/results.json` on the persona's held-out questions for one or two models.
- export: `merge`, then `export gguf` (read back after writing), `export modelfile`, `space`, `push --dry-run`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history.jobs import Job
from krishna_ai.runtime.tiers import split_model

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "configs"
DATA = ROOT / "data"
EXPORT_TARGETS = ("gguf", "modelfile", "space", "hub")
"""What an export can make besides the merged model (hub: the upload folder of a dry run)."""
OUTTYPES = ("q8_0", "f16", "bf16")


@dataclass
class Plan:
    title: str
    params: dict[str, Any]
    commands: Callable[[Path], list[list[str]]]
    """The commands, given the job's folder (writing what they read there, e.g. the job's recipe)."""


def new_folder(root: Path, kind: str, title: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    folder = Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{slug}-{os.urandom(2).hex()}"
    folder.mkdir(parents=True)
    return folder


def plan(kind: str, params: dict[str, Any], *, prompts: list[str] | None = None) -> Plan:
    """The job `params` ask for; InputError names every value that is wrong. `prompts`: the server's extra
    persona folders (never a client's)."""
    if not isinstance(params, dict):
        raise InputError(f"a job's parameters are a JSON object, not {type(params).__name__}")
    planners = {"train": _train, "eval": _eval, "export": _export}
    if kind not in planners:
        raise InputError(f"a job is one of {', '.join(planners)}, not {kind!r:.40}")
    return planners[kind](params, [p for p in prompts or [] if Path(p).is_dir()])  # a folder not made yet: none


# -- train ------------------------------------------------------------------------------------------------
def recipes() -> list[tuple[str, dict[str, Any]]]:
    """(file name, settings) of each recipe in configs/ that reads."""
    import yaml

    out = []
    for path in sorted(RECIPES.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict):
            out.append((path.name, raw))
    return out


def _number(params: dict[str, Any], key: str, kind: type, low: float, high: float, errors: list[str]) -> Any:
    value = params.get(key)
    if value in (None, ""):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        errors.append(f"{key}: a number, not {value!r:.40}")
        return None
    if kind is int and number != float(value):
        errors.append(f"{key}: a whole number, not {value!r:.40}")
    elif not low <= number <= high:
        errors.append(f"{key}: between {low:g} and {high:g}, not {value!r:.40}")
    return number


def _problems(errors: list[str]) -> None:
    if errors:
        raise InputError("the job cannot start:\n  - " + "\n  - ".join(errors))


def _train(params: dict[str, Any], prompts: list[str]) -> Plan:
    from krishna_ai.training.config import TrainConfig

    name = str(params.get("recipe") or "")
    errors: list[str] = []
    if Path(name).name != name or not (RECIPES / name).is_file():
        errors.append(f"recipe: one of {', '.join(n for n, _ in recipes())}, not {name!r:.80}")
    overrides = {
        "epochs": _number(params, "epochs", float, 0.01, 100, errors),
        "max_steps": _number(params, "max_steps", int, 0, 100_000, errors),
        "learning_rate": _number(params, "learning_rate", float, 1e-8, 0.1, errors),
        "save_steps": _number(params, "save_steps", int, 1, 100_000, errors),
        "limit": _number(params, "limit", int, 0, 10_000_000, errors),
    }
    rank = _number(params, "rank", int, 1, 1024, errors)
    _problems(errors)
    if overrides["max_steps"] == 0:
        overrides["max_steps"] = -1  # 0: by epochs
    settings = {k: v for k, v in overrides.items() if v is not None}
    try:
        cfg = TrainConfig.from_yaml(RECIPES / name, output_dir="run", prompts=prompts or None, **settings)
        if rank is not None:
            cfg.lora = cfg.lora.model_copy(update={"r": rank, "alpha": cfg.lora.alpha * rank / cfg.lora.r})
        for key in ("data", "adapter"):  # a recipe's paths are the repository's
            value = getattr(cfg, key)
            if value and value != "none" and not Path(value).is_absolute() and (ROOT / value).exists():
                setattr(cfg, key, str(ROOT / value))
    except (KrishnaError, ValueError) as exc:
        raise InputError(f"recipe {name}: {exc}") from None
    if cfg.method == "sft":
        cfg.check_data()
    checked = {"recipe": name, **settings, **({"rank": rank} if rank else {}), "method": cfg.method,
               "persona": cfg.persona, "model": cfg.model}
    steps = f"{cfg.max_steps} steps" if cfg.max_steps > 0 else f"{cfg.epochs:g} epochs"
    title = f"{Path(name).stem} · {cfg.method} · r{cfg.lora.r} · lr {cfg.learning_rate:g} · {steps}"

    def commands(folder: Path) -> list[list[str]]:
        import yaml

        run = cfg.model_copy(update={"output_dir": str(folder / "run")})
        out: list[list[str]] = []
        if run.method == "dpo":  # this app's own votes and feedback, as pairs
            out.append(["feedback", "export", str(folder / "feedback"), *_prompt_args(prompts)])
            run = run.model_copy(update={"data": str(folder / "feedback" / f"dpo-{run.persona}.jsonl")})
        data = {k: v for k, v in run.to_dict().items() if v is not None}
        (folder / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return [*out, ["train", "--config", str(folder / "recipe.yaml")]]

    return Plan(title, checked, commands)


def _prompt_args(prompts: list[str]) -> list[str]:
    return [a for p in prompts for a in ("--prompts", p)]


def resumable(job: Job) -> bool:
    """A training run (SFT: DPO keeps no checkpoints) with a complete checkpoint to continue from."""
    if job.kind != "train" or job.params.get("method") != "sft":
        return False
    from krishna_ai.training.sft import is_complete_checkpoint

    return any(is_complete_checkpoint(c) for c in (Path(job.folder) / "run").glob("checkpoint-*"))


def resume_from(job: Job) -> int:
    """The number (from 1) of the command a resumed job starts at: its `train`."""
    return next((n for n, c in enumerate(job.commands, 1) if c[:1] == ["train"]), 1)


# -- eval ---------------------------------------------------------------------------------------------------
def heldout(persona: str) -> Path:
    return DATA / persona / "heldout.jsonl"


def _eval(params: dict[str, Any], prompts: list[str]) -> Plan:
    errors: list[str] = []
    persona = str(params.get("persona") or "")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", persona) or not heldout(persona).is_file():
        known = sorted(p.parent.name for p in DATA.glob("*/heldout.jsonl") if (ROOT / "prompts" /
                                                                             f"{p.parent.name}.toml").is_file())
        errors.append(f"persona: one with held-out questions ({', '.join(known)}), not {persona!r:.60}")
    models = [str(m).strip() for m in (params.get("models") or []) if str(m).strip()]
    if not 1 <= len(models) <= 2:
        errors.append(f"models: one or two model specs, not {len(models)} ({', '.join(models)[:200] or 'none'})")
    errors += _unknown_models([split_model(m)[0] for m in models], "models")
    limit = _number(params, "limit", int, 1, 10_000, errors)
    _problems(errors)
    checked = {"persona": persona, "models": models, **({"limit": limit} if limit else {})}
    title = f"{persona} · " + " vs ".join(models) + (f" · {limit} questions" if limit else "")

    def commands(folder: Path) -> list[list[str]]:
        argv = ["eval", "--persona", persona, "--questions", str(heldout(persona)), "--json",
                str(folder / "results.json"), *_prompt_args(prompts)]
        for m in models:
            argv += ["--model", m]
        return [argv + (["--limit", str(limit)] if limit else [])]

    return Plan(title, checked, commands)


# -- export -------------------------------------------------------------------------------------------------
def _has_converter() -> bool:
    from krishna_ai.core.errors import ConfigError
    from krishna_ai.runtime.convert import find_converter

    try:
        find_converter()
    except ConfigError:
        return False
    return True


def _export(params: dict[str, Any], prompts: list[str]) -> Plan:
    from krishna_ai.runtime.tiers import check_adapter

    errors: list[str] = []
    base = str(params.get("base") or "").strip()
    adapter = str(params.get("adapter") or "").strip()
    persona = str(params.get("persona") or "").strip()
    targets = [str(t) for t in params.get("targets") or []]
    outtype = str(params.get("outtype") or "q8_0")
    if not base:
        errors.append("base: the model the adapter was trained on (e.g. light)")
    if adapter:
        try:
            check_adapter(adapter)
        except KrishnaError as exc:
            errors.append(f"adapter: {exc}")
    else:
        errors.append("adapter: the LoRA adapter folder to merge (a training job's, or one in adapters/)")
    errors += _unknown_models([base] if base else [], "base")
    from krishna_ai.core.personas import load_personas, persona_dirs

    known = load_personas(persona_dirs(prompts))
    if persona not in known:
        errors.append(f"persona: one of {', '.join(sorted(known))}, not {persona!r:.60}")
    bad = [t for t in targets if t not in EXPORT_TARGETS]
    if bad:
        errors.append(f"targets: {bad} are not among {', '.join(EXPORT_TARGETS)}")
    if "modelfile" in targets and "gguf" not in targets:
        errors.append("targets: an Ollama Modelfile needs the gguf file (add gguf)")
    if outtype not in OUTTYPES:
        errors.append(f"outtype: one of {', '.join(OUTTYPES)}, not {outtype!r:.20}")
    _problems(errors)
    checked = {"base": base, "adapter": adapter, "persona": persona, "targets": targets, "outtype": outtype}
    stem = Path(adapter).name if Path(adapter).name != "adapter" else Path(adapter).parent.parent.name  # a job's run
    name = stem if stem.startswith(persona) else f"{persona}-{stem}"
    title = f"{name} · merge" + "".join(f" + {t}" for t in targets)

    def commands(folder: Path) -> list[list[str]]:
        merged, gguf, extra = folder / "merged", folder / f"{persona}-{outtype}.gguf", _prompt_args(prompts)
        out = [["merge", "--base", base, "--adapter", adapter, "--out", str(merged)]]
        if "gguf" in targets:
            if not _has_converter():  # llama.cpp's converter, fetched once (it used to come with light-gguf)
                out.append(["export", "fetch-converter"])
            out.append(["export", "gguf", "--model", str(merged), "--out", str(gguf), "--outtype", outtype])
        if "modelfile" in targets:
            out.append(["export", *extra, "modelfile", "--persona", persona, "--gguf", str(gguf), "--out",
                        str(folder / "Modelfile")])
        if "space" in targets:
            out.append(["space", "--out", str(folder / "space"), "--model", base, "--persona", persona, *extra])
        if "hub" in targets:
            out.append(["push", "--model", str(merged), "--repo", f"you/{name}", "--dry-run", "--out",
                        str(folder / "hub"), "--persona", persona, *extra])
        return out

    return Plan(title, checked, commands)


def _unknown_models(specs: list[str], key: str) -> list[str]:
    """A problem per model spec that names nothing (not a tier, server, GGUF file, folder or hub id); nothing
    is loaded."""
    from krishna_ai.runtime.tiers import check_spec

    out = []
    for spec in specs:
        try:
            check_spec(spec)
        except KrishnaError as exc:
            out.append(f"{key}: {exc}")
    return out


# -- progress and results ---------------------------------------------------------------------------------
def progress(job: Job) -> dict[str, Any]:
    """Training: the logged steps (rows of loss.jsonl), the step reached and the fraction done. Otherwise the
    command it is on (counted from its log)."""
    folder = Path(job.folder)
    if job.kind == "train":
        from krishna_ai.training.common import loss_rows

        try:
            rows = loss_rows(folder / "run" / "loss.jsonl")
        except (OSError, ValueError):  # a line being written
            rows = []
        last = rows[-1] if rows else {}
        total = last.get("max_steps")
        return {"steps": rows, "step": last.get("step", 0), "max_steps": total,
                **({"fraction": last["step"] / total} if total else {})}
    try:
        started = (folder / "job.log").read_text(encoding="utf-8", errors="replace").count("\n$ python -m krishna_ai ")
    except OSError:
        started = 0
    return {"command": min(started, len(job.commands)), "commands": len(job.commands)}


def result(job: Job) -> dict[str, Any]:
    """What a finished job made, for its page and the model box."""
    folder = Path(job.folder)
    if job.kind == "train":
        summary = folder / "run" / "train_summary.json"
        return {"adapter": str(folder / "run" / "adapter"), "model": job.params.get("model"),
                "persona": job.params.get("persona"),
                "summary": json.loads(summary.read_text()) if summary.is_file() else {}}
    if job.kind == "eval":
        return {"results": str(folder / "results.json")}
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in ("job.log",)]
    files += [p for sub in ("space", "hub") for p in sorted((folder / sub).rglob("*")) if p.is_file()][:50]
    return {"files": [str(p) for p in files], "merged": str(folder / "merged")}
