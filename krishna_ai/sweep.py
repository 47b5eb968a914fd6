"""Hyper-parameter sweep: an Optuna study where every trial is a real `train` plus `evaluate`.

    python -m krishna_ai sweep --config configs/aurora-qlora.yaml --trials 12

TRL's SFTTrainer has no `model_init`, so `Trainer.hyperparameter_search` cannot sweep it; this is
the plain Optuna way instead: a TPE sampler with a seed and SQLite storage in the study folder
(`runs/sweeps/<study>/study.db`), so a sweep stopped by a crash or Ctrl-C resumes where it was:
only finished trials count toward `--trials`. A trial that raises is recorded as failed, with its
error message, and the study goes on. The objective is held-out accuracy when the questions carry
labels, else the persona's style compliance.

The space is learning rate (log scale), LoRA rank and epochs, plus (overriding those) the recipe's
`searchable:` mapping: `name: {low, high[, log][, step]}` for a range, a list for choices; dotted
names (`lora.r`) address nested settings. When the rank varies and `lora.alpha` does not, alpha
follows the rank (alpha / r stays as in the recipe), so the rank does not silently rescale the update.

Writes into the study folder: `trials.csv` and `trials.md` (every trial), `best.yaml` (a ready
recipe), `parallel_coordinates.html` (plotly) and `parallel_coordinates.png` (matplotlib), and one
folder per trial under `trials/` (recipe, loss log, eval JSON; the adapter only with --keep-adapters).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.errors import ConfigError, problems

DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "lora.r": [8, 16, 32, 64],
    "epochs": [1, 2, 3],
}
"""Searched unless the recipe's `searchable:` gives its own space for the name."""
NOT_SEARCHABLE = {"output_dir", "searchable", "lora"}
SWEEPS_ROOT = Path("runs") / "sweeps"


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    """"float", "int" or "categorical"."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


def _setting_defaults() -> dict[str, Any]:
    """Every settable name (dotted for LoRA) with its default value, which gives its type."""
    from krishna_ai.train import LoraSettings, TrainConfig

    def defaults(cls: type, prefix: str) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[prefix + f.name] = value
        return out

    return {**defaults(TrainConfig, ""), **defaults(LoraSettings, "lora.")}


def parse_space(searchable: dict[str, Any] | None, *, max_steps: int = -1) -> list[Dimension]:
    """Default space + the recipe's `searchable:` entries; every bad entry is reported in one ConfigError."""
    known = _setting_defaults()
    space = dict(DEFAULT_SPACE)
    if max_steps > 0:  # max_steps overrides epochs: searching epochs would change nothing
        space.pop("epochs")
    space.update(searchable or {})
    errors: list[str] = []
    dims: list[Dimension] = []
    for name, spec in space.items():
        if name not in known or name in NOT_SEARCHABLE:
            hint = "a setting that cannot be searched" if name in NOT_SEARCHABLE else "unknown setting"
            errors.append(f"searchable.{name}: {hint} (searchable: {', '.join(sorted(set(known) - NOT_SEARCHABLE))})")
            continue
        default = known[name]
        if isinstance(spec, list):
            bad = [c for c in spec if not (c is None or isinstance(c, bool | int | float | str))]
            if not spec or bad:
                errors.append(f"searchable.{name}: a list of choices must be non-empty and hold plain values "
                              f"(numbers, strings, booleans), got {spec!r}")
                continue
            dims.append(Dimension(name, "categorical", choices=tuple(spec)))
        elif isinstance(spec, dict):
            dim, problem = _range(name, spec, default)
            if problem:
                errors.append(f"searchable.{name}: {problem}")
            else:
                dims.append(dim)
        else:
            errors.append(f"searchable.{name}: must be {{low, high[, log][, step]}} or a list of choices, got {spec!r}")
    if errors:
        raise ConfigError(problems(f"invalid search space ({len(errors)} problem(s))", errors))
    return dims


def _range(name: str, spec: dict[str, Any], default: Any) -> tuple[Dimension | None, str | None]:
    extra = set(spec) - {"low", "high", "log", "step"}
    if extra:
        return None, f"unknown key(s) {sorted(extra)}; a range has low, high, log, step"
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    number = (int, float)
    if isinstance(default, bool) or not isinstance(default, number):
        return None, f"a range needs a numeric setting; give a list of choices for {name}"
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        return None, f"low and high must be numbers, got {low!r} and {high!r}"
    if not low < high:
        return None, f"low must be below high, got {low!r} and {high!r}"
    if not isinstance(log, bool):
        return None, f"log must be true or false, got {log!r}"
    if log and low <= 0:
        return None, f"a log range needs low > 0, got {low!r}"
    if step is not None and (not isinstance(step, number) or step <= 0 or log):
        return None, f"step must be a positive number and cannot go with log, got {step!r}"
    kind = "int" if isinstance(default, int) and default is not None else "float"
    if kind == "int" and not all(isinstance(v, int) for v in (low, high)):
        return None, f"{name} is an integer setting: low and high must be integers"
    return Dimension(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                     log, step), None


def apply_params(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The recipe mapping with the trial's values set (dotted names into nested mappings)."""
    out = copy.deepcopy(raw)
    out.pop("searchable", None)
    for name, value in params.items():
        node = out
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    lora = out.get("lora") or {}
    if "lora.r" in params and "lora.alpha" not in params:
        # keep alpha / r of the recipe, so changing the rank does not also change the update's scale
        base = raw.get("lora") or {}
        base_r, base_alpha = base.get("r", 16), base.get("alpha", 16)
        alpha = base_alpha * params["lora.r"] / base_r
        lora["alpha"] = int(alpha) if float(alpha).is_integer() else alpha
        out["lora"] = lora
    return out


def default_questions(raw: dict[str, Any], persona: str | None) -> Path:
    """Held-out questions beside the training data, else data/<persona>/heldout.jsonl."""
    tried = []
    data = Path(str(raw.get("data") or ""))
    if data.suffix == ".jsonl":
        tried.append(data.parent / "heldout.jsonl")
    if persona:
        tried.append(Path("data") / persona / "heldout.jsonl")
    for path in tried:
        if path.is_file():
            return path
    raise ConfigError(f"no held-out questions found (tried {', '.join(map(str, tried)) or 'nothing'}); "
                      "pass --questions FILE")


@dataclasses.dataclass
class SweepSettings:
    config: Path
    trials: int
    study: str | None = None
    root: Path = SWEEPS_ROOT
    questions: Path | None = None
    persona: str | None = None
    keep_adapters: bool = False
    seed: int = 0
    max_steps: int | None = None
    limit: int | None = None
    eval_limit: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    """Greedy by default, so two trials differ by their adapters, not by sampling noise."""
    batch_size: int = 8
    prompts: list[str] = dataclasses.field(default_factory=list)
    progress: bool = True


def run_sweep(s: SweepSettings) -> dict[str, Any]:
    """Run (or resume) the study until it holds `s.trials` finished trials; write the reports."""
    import optuna
    from optuna.trial import TrialState

    from krishna_ai.evaluate import load_questions
    from krishna_ai.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.train import TrainConfig

    if s.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {s.trials}")
    raw = _load_recipe(s.config)
    raw.update({k: v for k, v in {"max_steps": s.max_steps, "limit": s.limit}.items() if v is not None})
    TrainConfig.from_dict({k: v for k, v in raw.items() if k != "searchable"}, source=str(s.config))
    space = parse_space(raw.get("searchable"), max_steps=int(raw.get("max_steps", -1) or -1))
    persona_id = s.persona or raw.get("persona")
    if not persona_id:
        raise ConfigError("the sweep evaluates replies against a persona: set persona: in the recipe or pass --persona")
    persona = get_persona(load_personas(persona_dirs(s.prompts)), persona_id)
    questions_path = s.questions or default_questions(raw, persona.id)
    questions = load_questions(questions_path)[: s.eval_limit or None]
    metric = "accuracy" if any(q.get("label") for q in questions) else "compliance"

    name = s.study or s.config.stem
    folder = s.root / name
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    _check_same_setup(study, metric=metric, questions=str(questions_path), recipe=str(s.config))
    _fail_stale(study, storage, TrialState)
    done = [t for t in study.trials if _counts(t)]
    # A fresh sampler with the same seed would redraw the first trials' values after a resume.
    study.sampler = optuna.samplers.TPESampler(seed=s.seed + len(study.trials))
    todo = max(0, s.trials - len(done))
    print(f"study {name!r} in {folder}: {len(done)} finished trial(s), running {todo} more; "
          f"objective: {metric} on {len(questions)} question(s) from {questions_path}", file=sys.stderr)

    objective = _Objective(s, raw, space, persona, questions, questions_path, metric, folder)
    try:
        if todo:
            study.optimize(objective, n_trials=todo, catch=(Exception,), gc_after_trial=True,
                           callbacks=[lambda st, tr: (_print_trial(tr, metric), write_reports(st, folder, s, space,
                                                                                              metric, raw))])
    finally:
        paths = write_reports(study, folder, s, space, metric, raw, plots=True)
    return {"study": name, "folder": str(folder), "metric": metric, "paths": {k: str(v) for k, v in paths.items()},
            "finished": sum(_counts(t) for t in study.trials)}


def _load_recipe(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings")
    return raw


def _counts(trial: Any) -> bool:
    """Finished trials count toward --trials; one cut short by a crash or Ctrl-C does not."""
    return trial.state.is_finished() and not trial.user_attrs.get("interrupted")


def _check_same_setup(study: Any, **setup: str) -> None:
    old = {k: study.user_attrs.get(k) for k in setup}
    if not study.trials or all(v is None for v in old.values()):
        for k, v in setup.items():
            study.set_user_attr(k, v)
        return
    changed = [f"{k}: was {old[k]!r}, now {v!r}" for k, v in setup.items() if old[k] not in (None, v)]
    if changed:
        raise ConfigError(problems(f"study {study.study_name!r} was run with another setup, so its values would "
                                   "not compare; use the same settings or a new --study", changed))


def _fail_stale(study: Any, storage: Any, TrialState: Any) -> None:
    """Trials left RUNNING by a killed process: record them as failed (interrupted), uncounted."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the process running it was stopped")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


class _Objective:
    """One trial: train with the suggested values, evaluate the adapter, return the metric."""

    def __init__(self, s: SweepSettings, raw: dict[str, Any], space: list[Dimension], persona: Any,
                 questions: list[dict[str, Any]], questions_path: Path, metric: str, folder: Path):
        self.s, self.raw, self.space, self.persona = s, raw, space, persona
        self.questions, self.questions_path, self.metric, self.folder = questions, questions_path, metric, folder

    def __call__(self, trial: Any) -> float:
        params = {d.name: d.suggest(trial) for d in self.space}
        out = self.folder / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("output_dir", str(out))
        try:
            return self._run(trial, params, out)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            trial.set_user_attr("error", _one_line(exc))
            raise
        finally:
            _prune(out, keep_adapter=self.s.keep_adapters)
            gc.collect()

    def _run(self, trial: Any, params: dict[str, Any], out: Path) -> float:
        from krishna_ai.evaluate import evaluate, write_json
        from krishna_ai.runtime.load import load_engine
        from krishna_ai.sampling import SamplingParams
        from krishna_ai.train import TrainConfig
        from krishna_ai.train import main as train_main

        raw = apply_params(self.raw, params)
        raw["output_dir"] = str(out)
        cfg = TrainConfig.from_dict(raw, source=f"trial {trial.number}")
        summary = train_main(cfg, progress=self.s.progress)
        trial.set_user_attr("train_loss", summary.get("train_loss"))
        sampling = SamplingParams.for_persona(self.persona, temperature=self.s.temperature,
                                              max_new_tokens=self.s.max_new_tokens, seed=self.s.seed)
        engine = load_engine(cfg.model, summary["adapter"])
        result = evaluate(engine, self.persona, self.questions, sampling, batch_size=self.s.batch_size,
                          name=f"trial-{trial.number}", progress=self.s.progress)
        del engine
        write_json([result], self.persona, str(self.questions_path), out / "eval.json")
        trial.set_user_attr("compliance", result["compliance"])
        trial.set_user_attr("accuracy", result["accuracy"])
        trial.set_user_attr("seconds", summary.get("seconds"))
        value = result[self.metric]
        if value is None:
            raise ConfigError(f"no {self.metric} for this trial (are the questions labelled?)")
        return float(value)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"


def _prune(out: Path, *, keep_adapter: bool) -> None:
    """Checkpoints always go (a sweep never resumes a trial); the adapter only without --keep-adapters."""
    if not out.is_dir():
        return
    for ckpt in out.glob("checkpoint-*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    if not keep_adapter:
        for name in ("adapter", "adapter.partial"):
            shutil.rmtree(out / name, ignore_errors=True)


def _print_trial(trial: Any, metric: str) -> None:
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    if trial.value is not None:
        status = f"{metric} {trial.value:.2f}"
    else:
        status = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', '')}"
    print(f"trial {trial.number}: {status} ({params})", file=sys.stderr)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


# -- reports ---------------------------------------------------------------------------------------

COLUMNS = ["number", "state", "value", "compliance", "accuracy", "train_loss", "seconds", "error"]


def trial_rows(study: Any, space: list[Dimension]) -> tuple[list[str], list[dict[str, Any]]]:
    names = [d.name for d in space]
    header = COLUMNS[:2] + names + COLUMNS[2:]
    rows = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name, "value": t.value, **{n: t.params.get(n) for n in names}}
        row.update({k: t.user_attrs.get(k) for k in ("compliance", "accuracy", "train_loss", "seconds", "error")})
        rows.append(row)
    return header, rows


def write_reports(study: Any, folder: Path, s: SweepSettings, space: list[Dimension], metric: str,
                  raw: dict[str, Any], *, plots: bool = False) -> dict[str, Path]:
    header, rows = trial_rows(study, space)
    paths = {"csv": folder / "trials.csv", "markdown": folder / "trials.md"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    lines = [f"# Sweep {study.study_name!r}: {metric} (higher is better)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(r[h]).replace("|", "/") for h in header) + " |" for r in rows]
    paths["markdown"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    complete = [t for t in study.trials if t.value is not None]
    if complete:
        paths["best"] = write_best_recipe(study, folder, s, raw, metric)
    if plots and complete:
        paths.update(plot_parallel_coordinates(study, folder, metric))
    return paths


def write_best_recipe(study: Any, folder: Path, s: SweepSettings, raw: dict[str, Any], metric: str) -> Path:
    best = study.best_trial
    recipe = apply_params(raw, best.params)
    recipe["output_dir"] = str(Path("runs") / f"{study.study_name}-best")
    path = folder / "best.yaml"
    shown = _shown(path)
    head = [f"# python -m krishna_ai train --config {shown}",
            f"# Best of sweep {study.study_name!r} (trial {best.number}, {metric} {best.value:.3f}) over "
            f"{', '.join(best.params)}; from {s.config}.",
            f"# The full table: {_shown(folder / 'trials.md')}"]
    path.write_text("\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def plot_parallel_coordinates(study: Any, folder: Path, metric: str) -> dict[str, Path]:
    """HTML through optuna.visualization (plotly), PNG through optuna.visualization.matplotlib."""
    import optuna

    out: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        if optuna.visualization.is_available():
            fig = optuna.visualization.plot_parallel_coordinate(study, target_name=metric)
            out["html"] = folder / "parallel_coordinates.html"
            fig.write_html(out["html"], include_plotlyjs=True)
        else:
            print("parallel_coordinates.html skipped: plotly is not installed (pip install -r requirements.txt)",
                  file=sys.stderr)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target_name=metric)
        fig = ax.figure
        fig.set_size_inches(9, 4.5)
        fig.tight_layout()
        out["png"] = folder / "parallel_coordinates.png"
        fig.savefig(out["png"], dpi=110)
        plt.close(fig)
    return out
