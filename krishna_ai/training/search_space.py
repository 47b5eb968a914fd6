"""A sweep's search space: the recipe's `searchable:` mapping (or DEFAULT_SPACE) parsed into Optuna
dimensions, each checked against the setting's type and default; `apply_params` writes a trial's values
back into the recipe (dotted names address nested settings; alpha follows a varied rank)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from krishna_ai.core.errors import ConfigError, problems

DEFAULT_SPACE: dict[str, Any] = {
    "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "lora.r": [8, 16, 32, 64],
    "epochs": [1, 2, 3],
}
"""Searched unless the recipe's `searchable:` gives its own space for the name."""
NOT_SEARCHABLE = {"output_dir", "searchable", "lora"}


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
    from krishna_ai.training.config import default_settings

    return default_settings()


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
