"""A scope gate: logistic regression over sentence vectors, fitted by `python -m krishna_ai scope fit`
(scikit-learn, only when fitting) and applied with numpy alone. The file is JSON: the standardisation, the
weights, the threshold, and a report of what it was fitted on. See krishna_ai/core/scope.py for how it is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import PersonaError

MAX_REFUSED = 0.02
"""`fit` picks the threshold that refuses at most this share of inside questions (cross-validated)."""

GATE_VERSION = 1


@dataclass(frozen=True)
class Gate:
    """A fitted logistic regression over standardised sentence vectors: P(outside) = σ(w·(x-μ)/σ + b)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    embedding: str
    report: dict[str, Any] = field(default_factory=dict, compare=False)

    def p_outside(self, vector: Sequence[float]) -> float:
        import numpy as np

        x = _normalised(vector)
        if x.shape != (len(self.coef),):
            raise ValueError(f"the gate expects vectors of {len(self.coef)} numbers, got {x.shape}")
        z = float(((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_json(self) -> str:
        return json.dumps({"version": GATE_VERSION, "embedding": self.embedding, "threshold": self.threshold,
                           "intercept": self.intercept, "report": self.report, "mean": list(self.mean),
                           "scale": list(self.scale), "coef": list(self.coef)}, indent=1)


def _normalised(vector: Sequence[float]) -> Any:
    import numpy as np

    x = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    return x / norm if norm else x


def load_gate(path: str | Path) -> Gate:
    """Read a gate file (PersonaError naming what is wrong); cached until the file changes."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise PersonaError(f"{path}: cannot read the gate ({exc.strerror})") from None
    return _load_gate(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _load_gate(path: str, _mtime: int, _size: int) -> Gate:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.get("version") != GATE_VERSION:
            raise ValueError(f"version {raw.get('version')!r}, expected {GATE_VERSION}")
        mean, scale, coef = (tuple(float(v) for v in raw[k]) for k in ("mean", "scale", "coef"))
        if not len(mean) == len(scale) == len(coef) or not coef:
            raise ValueError("mean, scale and coef must be lists of one same, non-zero length")
        if any(s <= 0 for s in scale):
            raise ValueError("every scale must be > 0")
        threshold = float(raw["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        return Gate(mean, scale, coef, float(raw["intercept"]), threshold, str(raw["embedding"]),
                    dict(raw.get("report") or {}))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{Path(path).name}: not a gate file (JSON): {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PersonaError(f"{Path(path).name}: not a valid gate file: {what}") from None


def fit(labelled: list[tuple[str, int]], vectors: Sequence[Sequence[float]], embedding: str, *,
        max_refused: float = MAX_REFUSED, folds: int = 5, seed: int = 0) -> Gate:
    """Fit the gate: C and the threshold chosen on `folds`-fold cross-validated predictions (the threshold
    refuses at most `max_refused` of the inside questions; C catches the most outside ones under it)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.stack([_normalised(v) for v in vectors])
    y = np.array([label for _, label in labelled])

    def model(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))

    best: tuple[float, float, float] | None = None  # (recall, C, threshold)
    for c in (0.01, 0.03, 0.1, 0.3):
        p = cross_val_predict(model(c), x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]
        threshold = threshold_for(p[y == 0], max_refused)
        recall = float((p[y == 1] >= threshold).mean())
        if best is None or recall > best[0]:
            best = (recall, c, threshold)
    assert best is not None
    recall, c, threshold = best
    pipe = model(c).fit(x, y)
    scaler, lr = pipe.steps[0][1], pipe.steps[1][1]
    report = {"inside": int((y == 0).sum()), "outside": int((y == 1).sum()), "C": c,
              "cv_outside_caught": round(recall, 4), "cv_inside_refused_max": max_refused}
    return Gate(tuple(scaler.mean_), tuple(scaler.scale_), tuple(lr.coef_[0]), float(lr.intercept_[0]),
                threshold, embedding, report)


def threshold_for(negatives: Any, max_share: float) -> float:
    """The lowest threshold at which at most `max_share` of `negatives` (the scores of what must not be caught:
    P(outside) of inside questions here, P(crisis) of everyday messages in training/safety_fit.py) is at or
    above it."""
    import numpy as np

    return threshold_allowing(negatives, int(np.floor(max_share * len(negatives))))


def threshold_allowing(negatives: Any, allowed: int) -> float:
    """The lowest threshold at which at most `allowed` of `negatives` is at or above it (kept between 0 and 1)."""
    import numpy as np

    ranked = np.sort(negatives)[::-1]
    return float(min(max(ranked[allowed] + 1e-6, 1e-6), 1 - 1e-6)) if allowed < len(ranked) else 1e-6
