"""Scope: what each persona is for, decided before any model runs, and the one reply to everything else.

A 270M model asked what it does not know invents it ("the first Mughal emperor was Shah Alam the Second"),
and asked to say "my notes do not cover this" in its own words it garbles that too. So a message outside a
persona's `[scope]` gets the persona's `decline`, written once in its voice and stating no facts.

Three signals, each measured on hand-labelled questions (data/scope/; `python -m krishna_ai scope eval`):
- **the gate**: a logistic regression on the message's sentence vector (the light model's mean-pooled
  hidden states, `runtime/embed.py`), fitted by `scope fit` on the persona's own training questions
  (inside), the other personas' and hand-labelled ones (outside). Its threshold is chosen on
  cross-validated predictions so that at most 2% of inside questions are refused; on the held-out
  questions word features (TF-IDF) refused as few but missed 11% of general questions for Aurora and
  PET's greetings, the vectors about 1%.
- **outside words**: a message that names what is plainly outside (another crop, for Maize) and nothing
  inside ("maize", "corn"), whatever the gate says: the gate learns crops it has seen, not all of them.
- **no card**: for a persona that answers only from its notes (Aurora), a question none of them fits.

A short follow-up in a chat ("why?", "tell me more") and a message with an image are never turned away:
they are about what came before, or about the picture.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.gate import load_gate
from krishna_ai.core.personas import Persona, Scope
from krishna_ai.core.schema import read_jsonl

Embed = Callable[[str], Sequence[float]]
"""A message's sentence vector (the same embedding the gate was fitted on)."""

Reason = Literal["gate", "word", "no card"]

FOLLOW_UP_WORDS = 4
"""In a chat with history, a message of fewer words than this is a follow-up and never turned away."""


@dataclass(frozen=True)
class Verdict:
    """Why a message is outside the persona's scope, and how sure the gate was (None: it was not asked)."""

    reason: Reason
    p_outside: float | None = None


def scope_badge(reason: Reason) -> str:
    """The line under a decline: why, so nobody takes it for the model's answer."""
    why = {"gate": "the question is unlike what this persona answers", "word": "it names something outside",
           "no card": "no note fits the question"}[reason]
    return f"🧭 outside this persona's scope ({why}); a fixed reply (no model ran)"


def _phrases(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in sorted(words, key=len, reverse=True))
                      + r")(?:s|es)?\b")


def names_outside(scope: Scope, message: str) -> bool:
    """True when the message names something outside (`outside_words`) and nothing inside (`inside_words`)."""
    outside, inside = _phrases(scope.outside_words), _phrases(scope.inside_words)
    text = message.lower()
    return bool(outside and outside.search(text)) and not (inside and inside.search(text))


def judge(persona: Persona, message: str, embed: Embed | None, *, follow_up: bool = False,
          image: bool = False) -> Verdict | None:
    """The reason `message` is outside the persona's scope, or None when the persona should answer it.

    `follow_up`: the chat has history (a short message is then a follow-up). `embed` may be None only for a
    persona without a gate."""
    scope = persona.scope
    text = (message or "").strip()
    if scope is None or image or not text:
        return None
    if follow_up and len(text.split()) < FOLLOW_UP_WORDS:
        return None
    if names_outside(scope, text):
        return Verdict("word")
    if scope.gate:
        if embed is None:
            raise ValueError(f"persona {persona.id!r} has a scope gate: judging it needs an embedding")
        gate = load_gate(scope.gate)
        p = gate.p_outside(embed(text))
        if p >= gate.threshold:
            return Verdict("gate", p)
    if scope.without_cards:
        from krishna_ai.core.grounding import ground

        grounding = ground(persona, text)
        if grounding is not None and not grounding.cards:
            return Verdict("no card")
    return None


# ---- fitting (python -m krishna_ai scope fit): scikit-learn, only here ----

def examples(persona: Persona) -> list[tuple[str, int]]:
    """The persona's labelled questions for fitting: (question, 1 if outside else 0), duplicates dropped."""
    scope = persona.scope
    if scope is None:
        raise PersonaError(f"persona {persona.id!r} has no [scope] table")
    rows: dict[str, int] = {}
    for files, label in ((scope.inside, 0), (scope.outside, 1)):
        for path in files:
            for row in _jsonl(path):
                rows.setdefault(str(row["question"]), label)
    if scope.labelled:
        for question, label in labelled_for(persona.id, scope.labelled):
            rows[question] = label
    if len(set(rows.values())) < 2:
        raise PersonaError(f"persona {persona.id!r}: scope fit needs questions both inside and outside")
    return list(rows.items())


def labelled_for(persona_id: str, path: str) -> list[tuple[str, int]]:
    """The rows of a labelled file that speak of this persona: (question, 1 if outside else 0).
    A row is {"question": ..., "in": [persona ids], "out": [persona ids]}; a persona in neither is not counted."""
    found = []
    for n, row in enumerate(_jsonl(path), 1):
        inside, outside = row.get("in", []), row.get("out", [])
        if not isinstance(inside, list) or not isinstance(outside, list) or set(inside) & set(outside):
            raise PersonaError(f"{path}: row {n}: \"in\" and \"out\" must be lists of persona ids with none in both")
        if persona_id in inside or persona_id in outside:
            found.append((str(row["question"]), int(persona_id in outside)))
    return found


def _jsonl(path: str) -> list[dict[str, Any]]:
    """The rows of a JSONL of questions, or a card folder's `examples` as rows ({"question": example})."""
    if Path(path).is_dir():
        from krishna_ai.core.knowledge import load_bank

        return [{"question": e} for card in load_bank(path).cards for e in card.examples]
    rows = []
    for n, row in read_jsonl(path, PersonaError, allow_empty=True):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise PersonaError(f"{path}:{n}: expected an object with a \"question\" string")
        rows.append(row)
    return rows


