"""The crisis check's model by meaning (`Net`): a multinomial logistic regression over a message's TF-IDF words and
word pairs beside its sentence vector, read from a JSON file and applied with numpy. Fitted by
krishna_ai/training/safety_fit.py; used by krishna_ai/core/safety.py after the crisis phrases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import PersonaError

NET_VERSION = 1
CLASSES = ("self_harm", "abuse", "medical")
"""The crisis kinds a model may name beside null (everyday): core/safety.py's `CRISES`."""


_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def words(text: str) -> list[str]:
    """The net's terms of `text`: lowercased words of two or more letters, and each pair of neighbours (as
    scikit-learn's TfidfVectorizer(ngram_range=(1, 2)) makes them; tests/test_safety.py compares the two)."""
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


@dataclass(frozen=True)
class Net:
    """Multinomial logistic regression over a message's TF-IDF terms (words and word pairs: "kill myself" is not
    "kill me") beside its unit sentence vector (what the words mean: "nobody would miss me"). P(crisis) is one
    minus P(everyday); the kind is the likeliest crisis class."""

    terms: dict[str, int]
    idf: Any
    coef: Any
    """One row per class of `classes`: len(terms) weights for the terms, then one per vector dimension."""
    intercept: Any
    classes: tuple[str | None, ...]
    threshold: float
    embedding: str
    report: dict[str, Any] = field(default_factory=dict, compare=False)

    def features(self, text: str, vector: Any) -> Any:
        import numpy as np

        counts: dict[int, int] = {}
        for w in words(text):
            if (i := self.terms.get(w)) is not None:
                counts[i] = counts.get(i, 0) + 1
        tfidf = np.zeros(len(self.terms))
        for i, n in counts.items():
            tfidf[i] = (1.0 + np.log(n)) * self.idf[i]  # sublinear term frequency
        norm = float(np.linalg.norm(tfidf))
        vector = np.asarray(vector, dtype=np.float64)
        return np.concatenate([tfidf / norm if norm else tfidf, vector / (float(np.linalg.norm(vector)) or 1.0)])

    def probabilities(self, text: str, vector: Any) -> dict[str | None, float]:
        import numpy as np

        z = self.coef @ self.features(text, vector) + self.intercept
        p = np.exp(z - z.max())
        return dict(zip(self.classes, (p / p.sum()).tolist(), strict=True))

    def kind(self, text: str, vector: Any) -> str | None:
        p = self.probabilities(text, vector)
        if 1.0 - p[None] < self.threshold:
            return None
        return max((k for k in self.classes if k is not None), key=lambda k: p[k])

    def to_json(self) -> str:
        return json.dumps({"version": NET_VERSION, "embedding": self.embedding, "threshold": self.threshold,
                           "dimensions": int(self.coef.shape[1]) - len(self.terms),
                           "classes": list(self.classes), "report": self.report,
                           "intercept": [round(float(v), 6) for v in self.intercept],
                           "terms": sorted(self.terms, key=lambda t: self.terms[t]),
                           "idf": [round(float(v), 6) for v in self.idf],
                           "coef": [[round(float(v), 6) for v in row] for row in self.coef]}) + "\n"


def load_net(path: Path, embedding: str) -> Net | None:
    """The model at `path`, fitted on `embedding` vectors (None when there is no file; PersonaError naming what is
    wrong with a damaged one); cached until the file changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _load_net(str(path), embedding, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _load_net(path: str, embedding: str, _mtime: int, _size: int) -> Net:
    import numpy as np

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"a JSON object is expected, got {type(raw).__name__}")
        if raw.get("version") != NET_VERSION:
            raise ValueError(f"version {raw.get('version')!r}, expected {NET_VERSION}")
        if raw["embedding"] != embedding:
            raise ValueError(f"fitted on {raw['embedding']!r} vectors, but messages are judged on {embedding!r}")
        classes = tuple(raw["classes"])
        if None not in classes or not set(classes) - {None} <= set(CLASSES):
            raise ValueError(f"classes must be null and kinds of {', '.join(CLASSES)}, got {classes}")
        terms = {t: i for i, t in enumerate(raw["terms"])}
        idf, coef = np.asarray(raw["idf"], dtype=np.float64), np.asarray(raw["coef"], dtype=np.float64)
        intercept = np.asarray(raw["intercept"], dtype=np.float64)
        if len(idf) != len(terms) or coef.ndim != 2 or coef.shape[0] != len(classes) or len(intercept) != len(classes):
            raise ValueError("terms, idf, coef and intercept do not agree in size")
        if coef.shape[1] != len(terms) + int(raw["dimensions"]):
            raise ValueError(f"coef has {coef.shape[1]} columns, not one per term ({len(terms)}) and per vector "
                             f"dimension ({raw['dimensions']})")
        threshold = float(raw["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        return Net(terms, idf, coef, intercept, classes, threshold, raw["embedding"], dict(raw.get("report") or {}))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path}: not a crisis model (JSON): {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PersonaError(f"{path}: not a valid crisis model: {what}") from None


