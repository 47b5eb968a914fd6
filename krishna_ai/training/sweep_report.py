"""What a sweep writes: trials.csv and trials.md (every trial), best.yaml (a ready recipe), and the
parallel-coordinates plots (plotly HTML, matplotlib PNG)."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.training.search_space import Dimension, apply_params


def fmt(value: Any) -> str:
    """A table cell: floats to 3 significant digits, None as empty."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


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


def write_reports(study: Any, folder: Path, source: Path, space: list[Dimension], metric: str,
                  raw: dict[str, Any], *, plots: bool = False) -> dict[str, Path]:
    header, rows = trial_rows(study, space)
    paths = {"csv": folder / "trials.csv", "markdown": folder / "trials.md"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    lines = [f"# Sweep {study.study_name!r}: {metric} (higher is better)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(r[h]).replace("|", "/") for h in header) + " |" for r in rows]
    paths["markdown"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    complete = [t for t in study.trials if t.value is not None]
    if complete:
        paths["best"] = write_best_recipe(study, folder, source, raw, metric)
    if plots and complete:
        paths.update(plot_parallel_coordinates(study, folder, metric))
    return paths


def write_best_recipe(study: Any, folder: Path, source: Path, raw: dict[str, Any], metric: str) -> Path:
    best = study.best_trial
    recipe = apply_params(raw, best.params)
    recipe["output_dir"] = str(Path("runs") / f"{study.study_name}-best")
    path = folder / "best.yaml"
    shown = _shown(path)
    head = [f"# python -m krishna_ai train --config {shown}",
            f"# Best of sweep {study.study_name!r} (trial {best.number}, {metric} {best.value:.3f}) over "
            f"{', '.join(best.params)}; from {source}.",
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
