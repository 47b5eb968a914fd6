"""The crisis check's model by meaning (`Net`): a multinomial logistic regression over a message's TF-IDF words and
word pairs, its TF-IDF character n-grams and its sentence vector, read from a JSON file and applied with numpy.
Fitted by krishna_ai/training/safety_fit.py; used by krishna_ai/core/safety.py after the crisis phrases.

The character n-grams read what people type that no word list holds ("suicidl", "killmyself", "unaliving",
"dieee"), and a long message's sentences are judged one by one as well (`sentences`). Measured side by side on six
blind sets (`python bench/crisis_features.py`: 430 crisis messages, 440 look-alikes): words and the vector alone
catch 415 and flag 25; with the n-grams 420 and 24; with each sentence judged too 422 and 24 (in cross-validation,
85.0%, 89.5% and 90.8% caught at 2% of everyday messages flagged).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import PersonaError

NET_VERSION = 2
CLASSES = ("self_harm", "abuse", "medical")
"""The crisis kinds a model may name beside null (everyday): core/safety.py's `CRISES`."""


_TOKEN = re.compile(r"(?u)\b\w\w+\b")
CHAR_NGRAMS = (2, 4)


def words(text: str) -> list[str]:
    """The net's word terms of `text`: lowercased words of two or more letters, and each pair of neighbours (as
    scikit-learn's TfidfVectorizer(ngram_range=(1, 2)) makes them; tests/test_safety.py compares the two)."""
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def chars(text: str) -> list[str]:
    """The net's character terms of `text`: the `CHAR_NGRAMS` n-grams of each lowercased word padded with a space
    each side, a word shorter than n counted once (scikit-learn's analyzer="char_wb"; tests/test_safety.py compares
    the two)."""
    low, high = CHAR_NGRAMS
    grams = []
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            grams += [padded[i:i + n] for i in range(max(len(padded) - n + 1, 1))]
            if len(padded) <= n:
                break
    return grams


ANALYZERS: dict[str, Callable[[str], list[str]]] = {"words": words, "chars": chars}

_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|\s+(?:but|also|btw|anyway|and\s+then)\s+", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The sentences of a message of more than one (each of three words or more: a clause after "but", "also",
    "btw", "anyway" counts as one), judged one by one as well as whole; [] for a message of one. A crisis told in one
    sentence of a long request ("Who commanded the artillery at Panipat? also i keep thinking about the terrace") is
    outweighed as a whole by the request's words."""
    pieces = [p for p in _SENTENCE_BREAK.split(text) if p and len(p.split()) >= 3]
    return pieces if len(pieces) > 1 else []


@dataclass(frozen=True)
class Terms:
    """One TF-IDF block of the features: the terms `analyzer` gives, their columns and inverse document
    frequencies; a message's block is its sublinear term frequencies times idf, to unit length."""

    analyzer: str
    index: dict[str, int]
    idf: Any

    def tfidf(self, text: str) -> tuple[Any, Any]:
        """The columns `text` has a term in, and their values (sparse: a message has a few dozen of thousands)."""
        import numpy as np

        counts: dict[int, int] = {}
        for term in ANALYZERS[self.analyzer](text):
            if (i := self.index.get(term)) is not None:
                counts[i] = counts.get(i, 0) + 1
        columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
        values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * self.idf[columns]
        norm = float(np.linalg.norm(values))
        return columns, (values / norm if norm else values)

    def to_json(self) -> dict[str, Any]:
        return {"analyzer": self.analyzer, "terms": sorted(self.index, key=lambda t: self.index[t]),
                "idf": [round(float(v), 6) for v in self.idf]}


@dataclass(frozen=True)
class Net:
    """Multinomial logistic regression over a message's TF-IDF blocks (`terms`: words and word pairs, "kill myself"
    is not "kill me"; character n-grams) beside its unit sentence vector (what the words mean: "nobody would miss
    me"). P(crisis) is one minus P(everyday); the kind is the likeliest crisis class."""

    terms: tuple[Terms, ...]
    coef: Any
    """One row per class of `classes`: a weight per term of each block in turn, then one per vector dimension."""
    intercept: Any
    classes: tuple[str | None, ...]
    threshold: float
    """P(crisis) at or above which a whole message is a crisis."""
    embedding: str
    sentence_threshold: float | None = None
    """P(crisis) at or above which one of a message's `sentences` makes it a crisis (None: only whole messages). Fitted
    with `threshold` so that the two together flag the share of everyday messages one threshold alone would."""
    report: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def dimensions(self) -> int:
        """How many numbers the sentence vector has."""
        return int(self.coef.shape[1]) - sum(len(t.index) for t in self.terms)

    def logits(self, text: str, vector: Any) -> Any:
        """The classes' scores, from the columns `text` has terms in and the vector's: a product with the whole
        weight matrix would wake every BLAS thread, and their spinning slowed the next sentence vector 7-fold."""
        import numpy as np

        z = np.array(self.intercept, dtype=np.float64)
        start = 0
        for block in self.terms:
            columns, values = block.tfidf(text)
            z += self.coef[:, start + columns] @ values
            start += len(block.index)
        vector = np.asarray(vector, dtype=np.float64)
        return z + self.coef[:, start:] @ (vector / (float(np.linalg.norm(vector)) or 1.0))

    def probabilities(self, text: str, vector: Any) -> dict[str | None, float]:
        import numpy as np

        z = self.logits(text, vector)
        p = np.exp(z - z.max())
        return dict(zip(self.classes, (p / p.sum()).tolist(), strict=True))

    def kind(self, text: str, vector: Any) -> str | None:
        """The crisis kind of the whole message, or None."""
        return self._kind(self.probabilities(text, vector), self.threshold)

    def sentence_kind(self, pieces: list[str], vectors: Any) -> str | None:
        """The crisis kind of the first of a message's `sentences` (with their `vectors`) at `sentence_threshold`."""
        if self.sentence_threshold is None:
            return None
        for piece, vector in zip(pieces, vectors, strict=True):
            if kind := self._kind(self.probabilities(piece, vector), self.sentence_threshold):
                return kind
        return None

    def _kind(self, p: dict[str | None, float], threshold: float) -> str | None:
        if 1.0 - p[None] < threshold:
            return None
        return max((k for k in self.classes if k is not None), key=lambda k: p[k])

    def to_json(self) -> str:
        return json.dumps({"version": NET_VERSION, "embedding": self.embedding, "threshold": self.threshold,
                           "sentence_threshold": self.sentence_threshold,
                           "dimensions": self.dimensions, "classes": list(self.classes), "report": self.report,
                           "intercept": [round(float(v), 6) for v in self.intercept],
                           "terms": [t.to_json() for t in self.terms],
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
        blocks = []
        for block in raw["terms"]:
            if block["analyzer"] not in ANALYZERS:
                raise ValueError(f"terms by {block['analyzer']!r}: not one of {', '.join(ANALYZERS)}")
            if len(block["idf"]) != len(block["terms"]):
                raise ValueError(f"{block['analyzer']}: {len(block['terms'])} terms but {len(block['idf'])} idf")
            blocks.append(Terms(block["analyzer"], {t: i for i, t in enumerate(block["terms"])},
                                np.asarray(block["idf"], dtype=np.float64)))
        coef, intercept = np.asarray(raw["coef"], dtype=np.float64), np.asarray(raw["intercept"], dtype=np.float64)
        if coef.ndim != 2 or coef.shape[0] != len(classes) or len(intercept) != len(classes):
            raise ValueError("coef and intercept need a row and a value per class")
        n_terms = sum(len(b.index) for b in blocks)
        if coef.shape[1] != n_terms + int(raw["dimensions"]):
            raise ValueError(f"coef has {coef.shape[1]} columns, not one per term ({n_terms}) and per vector "
                             f"dimension ({raw['dimensions']})")
        threshold = float(raw["threshold"])
        sentence = raw.get("sentence_threshold")
        for name, value in (("threshold", threshold), ("sentence_threshold", sentence)):
            if value is not None and not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        return Net(tuple(blocks), coef, intercept, classes, threshold, raw["embedding"],
                   None if sentence is None else float(sentence), dict(raw.get("report") or {}))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path}: not a crisis model (JSON): {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PersonaError(f"{path}: not a valid crisis model: {what}") from None


