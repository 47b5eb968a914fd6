"""Grounding per question: which cards a reply is grounded in (`ground`: the story or fact cards, narrowed to the
person the user names) and which counsel cards its advice comes from (`teachings_for`). The banks themselves,
their validation and their ranking are krishna_ai/core/knowledge.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from krishna_ai.core.evidence import Evidence, weigh
from krishna_ai.core.knowledge import Bank, Card, _tokenize, load_bank, same_person


@dataclass(frozen=True)
class Grounding:
    """What a reply is grounded in: the cards put in its prompt and whom its story is about."""

    cards: list[Card]
    person: str | None
    evidence: Evidence | None = None
    """With `one_label`: how clearly the question points to the best card's label (core/evidence.py)."""


_ASKED_FOR = re.compile(
    r"\b(?:stor(?:y|ies)|tale|example|lesson|life|tell me)\s+(?:\w+\s+){0,2}(?:of|about|from)\s+"
    r"((?:[A-Z][\w’'.-]*)(?:\s+(?:[A-Z][\w’'.-]*|van|von|de|da|bin|ibn)){0,3})")
"""A person the user asks a story about by name ("a story about Serena Williams", "the life of Lincoln")."""


def named_person(persona: Any, bank: Bank, message: str, requested: str | None) -> str | None:
    """The person the user asked about: typed in the personality box, or named in the message. A name asked
    for ("a story about ...") that is a known person's surname ("Lincoln") is that person; one of two or more
    words that the bank has no card of is returned as asked, so that no other person's story is told as
    theirs; a single unknown word ("the story of Diwali") is not taken for a person. Only for personas that
    tell stories about people (a `personalities` list); a tutor's cards are never narrowed."""
    if not persona.personalities:
        return None
    if requested and requested.strip():
        return requested.strip()
    lowered = message.casefold()
    known = sorted(set(persona.personalities) | set(bank.people()), key=len, reverse=True)
    for person in known:
        if person.casefold() in lowered:
            return person
    asked = _ASKED_FOR.search(message)
    if not asked:
        return None
    name = re.split(r"(?<=[a-z]{2})[.!?]\s", asked.group(1))[0].strip(" .'’")  # not into the next sentence
    by_surname = [p for p in known if p.split()[-1].casefold() == name.casefold()]
    if len(by_surname) == 1:
        return by_surname[0]
    return name if len(name.split()) >= 2 else None


def ground(persona: Any, message: str, personality: str | None = None) -> Grounding | None:
    """Retrieve the cards for `message` (None when the persona has no bank).

    A person the user names restricts the cards to that person's (none of theirs → no card: never a
    story about someone else presented as theirs, never an invented one)."""
    if persona.knowledge is None:
        return None
    bank = load_bank(persona.knowledge.bank)
    person = named_person(persona, bank, message, personality)
    k = persona.knowledge
    labels = {lab.casefold(): lab for lab in persona.labels} if k.one_label else {}
    hits = bank.search(search_query(persona, bank, message, person), k=k.top_k * (3 if labels else 1),
                       person=person, min_score=k.min_score, min_coverage=k.min_coverage, vectors=k.vectors)
    evidence = weigh([(card_label(h.card, labels), h.score) for h in hits]) if labels else None
    if labels and hits:  # only the best card's label: the reply retells one condition's advice, not three
        best = card_label(hits[0].card, labels)
        hits = [h for h in hits if card_label(h.card, labels) == best][: k.top_k]
    if person and not hits and any(same_person(c.person, person) for c in bank.cards):
        hits = bank.search(person + " " + message, k=k.top_k, person=person, vectors=k.vectors)  # their best card
    cards = [h.card for h in hits]
    return Grounding(cards, cards[0].person if cards and cards[0].person else person, evidence)


def search_query(persona: Any, bank: Bank, message: str, person: str | None) -> str:
    """What the bank is searched with: `message`, less the names of bank people nobody asked a story of when
    the persona tells stories of people (`person` None)."""
    return message if person or not persona.personalities else without_names(message, bank.people())


_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w-]*)(?:['’]s)?")
"""A capitalised word that does not open a sentence, without its possessive."""


def without_names(message: str, people: list[str]) -> str:
    """`message` without the capitalised words (not opening a sentence) that are part of a bank person's name:
    a name no one asked a story of ("my boss Mr Singh") must not choose the story (Milkha Singh's)."""
    parts = {w.casefold() for p in people for w in p.split() if len(w) > 2}
    return _CAPITALISED.sub(lambda m: "" if m.group(1).casefold() in parts else m.group(), message.strip())


def card_label(card: Card, labels: dict[str, str]) -> str | None:
    """The label a card is about: its first theme that is one of `labels` (casefolded → label)."""
    return next((labels[t.casefold()] for t in card.themes if t.casefold() in labels), None)


def teachings_for(persona: Any, message: str, before: str | None = None, k: int | None = None) -> list[Card]:
    """The cards of the persona's counsel bank (teachings, or written counsel) that fit the trouble in `message`
    (best first, `k` of them or the bank's `top_k`; [] when none does, or when no trouble is told: "Tell me a
    story about Lincoln"). `before` is the chat's earlier questions (the last three): a follow-up of few words
    ("and tomorrow?") is counselled on the trouble it follows; a new trouble told in full stands alone."""
    counsel = persona.counsel
    if counsel is None or not message.strip():
        return []
    trouble = trouble_in(persona, message)
    if len(_tokenize([trouble])[0]) < FOLLOW_UP_WORDS:
        trouble = " ".join(t for t in (trouble_in(persona, before or ""), trouble) if t)
    if not trouble:
        return []
    return [h.card for h in load_bank(counsel.bank).search(trouble, k=k or counsel.top_k, min_score=counsel.min_score,
                                                           vectors=counsel.vectors, matcher=counsel.matcher)]


FOLLOW_UP_WORDS = 5
"""A message of fewer words than this (stop words left out) is a follow-up: its chat's trouble is searched too."""

_REQUEST_WORDS = {"tell", "me", "us", "you", "share", "give", "want", "like", "hear", "pleas", "anoth", "one", "more",
                  "els", "again", "true", "famous", "short", "someon", "person", "stori", "tale", "exampl", "lesson",
                  "life", "can", "could", "would"}
"""Stemmed words of a story request that tell no trouble ("please tell me another true story")."""


_TELL_ME = re.compile(r"(?i)\b(?:(?:can|could|would|will)\s+you\s+)?(?:please\s+)?tell\s+(?:me|us)"
                      r"(?:\s+(?:a|an|the|another|one|some))?\b[.!?]?")


def trouble_in(persona: Any, message: str) -> str:
    """The trouble told in `message`: without a story asked for by name and without the names of the persona's
    story people; "" when nothing but a request is left."""
    if persona.knowledge is not None:
        message = without_names(_ASKED_FOR.sub(" ", message), load_bank(persona.knowledge.bank).people())
        message = " ".join(_TELL_ME.sub(" ", message).split())
    words = [w for w in _tokenize([message])[0] if w not in _REQUEST_WORDS]
    return message.strip() if words else ""
