"""Knowledge banks: cards of checkable facts, retrieved with BM25 and put in the prompt.

A small model knows almost no facts, and no model should be trusted to recall them: a persona that
tells true stories or teaches history names a bank (`[knowledge] bank = "knowledge/krishna"`), the
cards that fit the question are retrieved (bm25s, over title, person, themes, keywords and text,
stemmed) and the reply retells them. `faithful` (in `evaluate`) checks that it added nothing.

A bank is a folder of TOML files, each holding `[[cards]]`; see prompts/knowledge/README.md.
Every file is validated on load (unknown key, missing source, empty text → file, card and field
named). The BM25 index is built once per bank content and cached under the cache root; a change to
any card file changes the fingerprint and rebuilds it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from krishna_ai.core.cache import atomic_dir, cache_root
from krishna_ai.core.errors import PersonaError, problems
from krishna_ai.core.schema import Regex
from krishna_ai.core.vectors import card_matrix, card_texts, fuse, sentence_vector

INDEX_VERSION = "1"


class Need(BaseModel):
    """One thing a prompt of some kind needs (a prompt-kind card's `needs`: PET's written rewrites,
    core/coaching.py). The prompt has it when a named detector (`has`) or `pattern` finds it in the user's task;
    else the critique says `lacks` and the improved prompt gains `add`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=2)]
    """A short noun ("the length", "the readers"), listed when the prompt already has it."""
    lacks: Annotated[str, Field(min_length=10)]
    """The critique point when the prompt lacks it: what is missing and why it matters, one sentence."""
    add: Annotated[str, Field(min_length=10)]
    """The sentence the improved prompt gains, [bracketed] where only the user knows the answer."""
    has: list[str] = []
    """Detectors (coaching.DETECTORS) any of which finding something means the prompt has it."""
    pattern: Regex | None = None
    """A regular expression (case-insensitive) that also means the prompt has it."""


class Card(BaseModel):
    """One short, sourced piece of knowledge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    title: Annotated[str, Field(min_length=1)]
    person: str | None = None
    """Who the card is about (Krishna's stories: a name from the persona's list)."""
    themes: Annotated[list[str], Field(min_length=1)]
    keywords: list[str] = []
    text: Annotated[str, Field(min_length=1)]
    """The facts, 2–5 sentences: every name, year and number a reply may state."""
    source: Annotated[str, Field(min_length=3)]
    """A standard reference work, by title and (where it has one) section."""
    teaching: str | None = None
    """A counsel card: the id of the teaching (in the persona's teachings bank) its advice applies."""
    examples: list[str] = []
    """A counsel card: troubles it answers, in a person's words (training questions), matched by meaning."""
    needs: list[Need] = []
    """A prompt-kind card: what a prompt of its kind needs, most important first (core/coaching.py)."""
    applies: Regex | None = None
    """A prompt-kind card: a regular expression (case-insensitive) a task of its kind contains, naming what it
    makes ("poem|haiku|verse"); a task it does not match never gets this kind, however close its words."""

    @field_validator("text", "title", "source")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return " ".join(value.split())

    def citation(self) -> str:
        return f"{self.title} — {self.source}"


@dataclass(frozen=True)
class Hit:
    card: Card
    score: float


def _file_errors(path: Path, raw: Any) -> tuple[list[Card], list[str]]:
    cards: list[Card] = []
    errors: list[str] = []
    if not isinstance(raw, dict) or set(raw) != {"cards"} or not isinstance(raw["cards"], list):
        extra = sorted(set(raw) - {"cards"}) if isinstance(raw, dict) else []
        why = f"unknown key(s) {extra}" if extra else "a card file holds [[cards]] tables only"
        return [], [f"{path.name}: {why}"]
    if not raw["cards"]:
        return [], [f"{path.name}: cards: empty (a card file needs at least one [[cards]])"]
    for i, item in enumerate(raw["cards"]):
        label = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else f"#{i + 1}"
        try:
            cards.append(Card.model_validate(item))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(card)"
                msg = {"extra_forbidden": "unknown key", "missing": "required field is missing"}.get(
                    err["type"], err["msg"])
                errors.append(f"{path.name}: card {label}: {field}: {msg}")
    return cards, errors


def _tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer.stemWords, return_ids=False,
                          show_progress=False)


def _document(card: Card) -> str:
    # Themes and keywords are what a question shares with a card most often: counted twice.
    tags = " ".join(card.themes + card.keywords)
    examples = "".join(f" {e}" for e in card.examples)
    return f"{card.title}. {card.person or ''}. {tags}. {tags}. {card.text}{examples}"


class Bank:
    """A validated bank of cards with its BM25 index."""

    def __init__(self, folder: Path, cards: list[Card], fingerprint: str):
        self.folder = folder
        self.name = folder.name
        self.cards = cards
        self.fingerprint = fingerprint
        self._by_id = {c.id: c for c in cards}
        self._lock = threading.Lock()
        self._index: Any = None
        self._doc_terms: list[set[str]] | None = None
        self._vectors: Any = None
        self._examples: tuple[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self.cards)

    def card(self, card_id: str) -> Card:
        try:
            return self._by_id[card_id]
        except KeyError:
            raise PersonaError(f"bank {self.name!r} has no card {card_id!r}") from None

    def people(self) -> list[str]:
        return sorted({c.person for c in self.cards if c.person})

    def index(self) -> Any:
        """The BM25 index: loaded from the cache when the bank is unchanged, else built and cached."""
        with self._lock:
            if self._index is None:
                self._index = self._load_or_build()
            return self._index

    def _load_or_build(self) -> Any:
        import bm25s

        where = cache_root() / "bm25" / f"{self.name}-{self.fingerprint[:16]}"
        if (where / "params.index.json").is_file():
            try:
                return bm25s.BM25.load(str(where), show_progress=False)
            except (OSError, ValueError):
                pass  # a damaged cache: rebuild it below
        retriever = bm25s.BM25()
        retriever.index(_tokenize([_document(c) for c in self.cards]), show_progress=False)
        try:
            with atomic_dir(where) as tmp:
                retriever.save(str(tmp), show_progress=False)
        except OSError:
            pass  # an unwritable cache only costs the rebuild next time
        return retriever

    def search(self, query: str, k: int = 3, person: str | None = None, min_score: float = 0.0,
               min_coverage: float = 0.0, vectors: bool = False, matcher: str | None = None) -> list[Hit]:
        """The `k` cards that fit `query` best (only `person`'s when given), scoring above `min_score` and
        sharing at least `min_coverage` of the question's (stemmed, non-stop) words. With `vectors`, ranked
        by BM25 and sentence vectors fused (core/vectors.py), and a card sharing no word may fit (unless
        `min_score` is set); a hit's score is still its BM25 score. `matcher`: the question's vector from that
        tuned copy of the model (core/vectors.py), the cards' from the plain one.

        BM25 alone ranks well but cannot say "nothing fits": one shared word ("water") can score like a
        real match. The coverage floor is what turns away a question from outside the bank."""
        import numpy as np

        pool = [i for i, c in enumerate(self.cards) if person is None or same_person(c.person, person)]
        tokens = _tokenize([query])
        if not pool or not tokens[0]:
            return []
        if vectors:
            bm25 = np.asarray(self.index().get_scores(tokens[0]))[pool]
            meaning = self.similarity(query, matcher)[pool]
            fused = fuse(bm25, meaning)  # a tie of ranks ((1, 3) against (3, 1)) goes to the closer in meaning
            ranked = [(pool[j], float(bm25[j])) for j in np.lexsort((-meaning, -fused))[:k]]
        else:
            mask = np.zeros(len(self.cards), dtype=np.float32)
            mask[pool] = 1.0
            ids, scores = self.index().retrieve(tokens, k=min(k, len(self.cards)), show_progress=False,
                                                weight_mask=mask, n_threads=1)
            ranked = list(zip(ids[0], scores[0], strict=True))
        asked = set(tokens[0])
        hits = []
        for i, s in ranked:
            if int(i) not in pool or (float(s) <= min_score and (min_score > 0 or not vectors)):
                continue
            if min_coverage and len(asked & self._terms(int(i))) / len(asked) < min_coverage:
                continue
            hits.append(Hit(self.cards[int(i)], float(s)))
        return hits

    def vectors(self) -> Any:
        """One unit sentence vector per card (computed once per bank content, then cached)."""
        with self._lock:
            if self._vectors is None:
                self._vectors = card_matrix(self.name, self.fingerprint, [
                    card_texts(c.title, c.themes + c.keywords, c.text, c.person) for c in self.cards])
            return self._vectors

    def similarity(self, query: str, matcher: str | None = None) -> Any:
        """Each card's cosine to `query`; for a card with `examples` (the troubles a counsel card was written for),
        its own cosine plus its nearest example's, so a card is found by what it says and by whom it answers.
        (Krishna's counsel cards: `python bench/counsel_fit.py`.) `matcher`: the query's vector from a tuned copy
        of the model (`python -m krishna_ai matcher fit`), trained to land near the cards' and examples' vectors."""
        import numpy as np

        q = sentence_vector(query, matcher)
        own = self.vectors() @ q
        owners, examples = self.example_vectors()
        if not len(owners):
            return own
        nearest = own.copy()  # a card without examples counts its own cosine twice, on the same scale
        has = np.zeros(len(own), dtype=bool)
        has[owners] = True
        nearest[has] = -1.0
        np.maximum.at(nearest, owners, examples @ q)
        return own + nearest

    def example_vectors(self) -> tuple[Any, Any]:
        """(the card index of each example, the examples' unit vectors), cached per bank content."""
        import numpy as np

        with self._lock:
            if self._examples is None:
                owners = np.asarray([i for i, c in enumerate(self.cards) for _ in c.examples], dtype=np.int64)
                texts = [(e, e) for c in self.cards for e in c.examples]
                matrix = card_matrix(f"{self.name}-examples", self.fingerprint, texts) if texts else np.zeros((0, 1))
                self._examples = (owners, matrix)
            return self._examples

    def _terms(self, i: int) -> set[str]:
        if self._doc_terms is None:
            self._doc_terms = [set(t) for t in _tokenize([_document(c) for c in self.cards])]
        return self._doc_terms[i]


def same_person(card_person: str | None, wanted: str) -> bool:
    return card_person is not None and card_person.casefold() == wanted.strip().casefold()


def fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(INDEX_VERSION.encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


MAX_CACHED_BANKS = 32
_SETTLE_NS = 2_000_000_000
"""A file modified this close to the moment it was stat'ed may be modified again within the same timestamp tick
(same size, same mtime): its content is hashed until it is older than that (git's "racily clean" rule)."""


@dataclass
class _Cached:
    stat: tuple[Any, ...]
    fingerprint: str
    bank: Bank
    checked_ns: int
    """`time.time_ns()` when `stat` was taken."""

    def fresh(self, stat: tuple[Any, ...]) -> bool:
        return stat == self.stat and all(mtime < self.checked_ns - _SETTLE_NS for _, mtime, *_ in stat)


_BANKS: OrderedDict[str, _Cached] = OrderedDict()
"""folder -> its bank: one entry per folder, least recently used dropped past MAX_CACHED_BANKS. A question
only stats the card files; they are read and hashed again when one changed (or was changed just now)."""
_BANKS_LOCK = threading.Lock()


def _stat_key(files: list[Path]) -> tuple[Any, ...]:
    return tuple((f.name, st.st_mtime_ns, st.st_size, st.st_ino) for f in files for st in [f.stat()])


def load_bank(folder: str | Path) -> Bank:
    """Load and validate every card file of a bank; PersonaError names each bad file, card and field.

    Banks are cached per folder: editing a card file (a new size or modification time) gives a fresh bank
    and index, which replaces the old one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PersonaError(f"knowledge bank {folder} does not exist")
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise PersonaError(f"knowledge bank {folder} is empty: it has no *.toml card files")
    where, checked, stat = str(folder.resolve()), time.time_ns(), _stat_key(files)
    with _BANKS_LOCK:
        cached = _BANKS.get(where)
    if cached is not None and cached.fresh(stat):
        with _BANKS_LOCK:
            if where in _BANKS:
                _BANKS.move_to_end(where)
        return cached.bank
    digest = fingerprint(files)
    if cached is not None and cached.fingerprint == digest:
        with _BANKS_LOCK:
            cached.stat, cached.checked_ns = stat, checked
        return cached.bank
    cards: list[Card] = []
    errors: list[str] = []
    for path in files:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            errors.append(f"{path.name}: not UTF-8 text ({exc.reason})")
            continue
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"{path.name}: not valid TOML: {exc}")
            continue
        found, bad = _file_errors(path, raw)
        cards += found
        errors += bad
    seen: dict[str, int] = {}
    for c in cards:
        seen[c.id] = seen.get(c.id, 0) + 1
    errors += [f"card id {i!r} is used {n} times" for i, n in seen.items() if n > 1]
    if errors:
        raise PersonaError(problems(f"{folder}: invalid knowledge bank ({len(errors)} problem(s))", errors))
    bank = Bank(folder, cards, digest)
    with _BANKS_LOCK:
        _BANKS[where] = _Cached(stat, digest, bank, checked)
        _BANKS.move_to_end(where)
        while len(_BANKS) > MAX_CACHED_BANKS:
            _BANKS.popitem(last=False)
    return bank


# -- what the model is told ---------------------------------------------------------------------

def cards_block(cards: list[Card]) -> str:
    """The retrieved cards as the prompt shows them: the facts only (sources are shown to the user)."""
    return "\n".join(f"- {c.text}" for c in cards)
