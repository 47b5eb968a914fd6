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

import dataclasses
import gc
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.core.errors import ConfigError, problems
from krishna_ai.training.search_space import Dimension, apply_params, parse_space
from krishna_ai.training.sweep_report import fmt, write_reports

SWEEPS_ROOT = Path("runs") / "sweeps"


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

    from krishna_ai.core.personas import get_persona, load_personas, persona_dirs
    from krishna_ai.training.config import TrainConfig
    from krishna_ai.training.evaluate import load_questions

    if s.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {s.trials}")
    raw = _load_recipe(s.config)
    raw.update({k: v for k, v in {"max_steps": s.max_steps, "limit": s.limit}.items() if v is not None})
    if s.prompts:  # the trials' training finds the persona where the sweep does
        raw["prompts"] = [*s.prompts, *raw.get("prompts", [])]
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
            def report(st: Any, tr: Any) -> None:
                _print_trial(tr, metric)
                write_reports(st, folder, s.config, space, metric, raw)

            study.optimize(objective, n_trials=todo, catch=(Exception,), gc_after_trial=True, callbacks=[report])
    finally:
        paths = write_reports(study, folder, s.config, space, metric, raw, plots=True)
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
        from krishna_ai.core.sampling import SamplingParams
        from krishna_ai.runtime.load import load_engine
        from krishna_ai.training.config import TrainConfig
        from krishna_ai.training.evaluate import evaluate, write_json
        from krishna_ai.training.run import train

        raw = apply_params(self.raw, params)
        raw["output_dir"] = str(out)
        cfg = TrainConfig.from_dict(raw, source=f"trial {trial.number}")
        summary = train(cfg, progress=self.s.progress)
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
    params = ", ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    if trial.value is not None:
        status = f"{metric} {trial.value:.2f}"
    else:
        status = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', '')}"
    print(f"trial {trial.number}: {status} ({params})", file=sys.stderr)
