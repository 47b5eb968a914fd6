"""What a training record's prompt shows: the cards and teachings the app would retrieve for its question,
or those the record names. Training data (training/data.py) and chat files (history/chatfile.py) use it, so a
trained prompt is the prompt the app builds.
"""

from __future__ import annotations

from typing import Any

from krishna_ai.core.grounding import ground, teachings_for
from krishna_ai.core.knowledge import Card, load_bank


def record_teachings(persona: Any, record: dict[str, Any]) -> list[Card] | None:
    """The teachings a training record's prompt shows: the one its answer applies (`"teaching": id`, or null
    for an answer that applies none), else those the app would retrieve. None when the persona has no
    counsel bank."""
    if persona.counsel is None:
        return None
    if "teaching" not in record:
        return teachings_for(persona, record["question"])
    return [load_bank(persona.counsel.bank).card(record["teaching"])] if record["teaching"] else []


def record_cards(persona: Any, record: dict[str, Any]) -> list[Card] | None:
    """The cards a training record's prompt shows, as the app would retrieve them for its question.

    A record may name its card (`"card": id`, or null for a question the bank does not cover) or cards
    (`"cards": [ids]`): those are always among the cards shown. None when the persona has no bank."""
    if persona.knowledge is None:
        return None
    named = record.get("cards") if "cards" in record else [record["card"]] if "card" in record else None
    if named is not None and not any(named):
        return []
    grounding = ground(persona, record["question"], record.get("personality"))
    cards = list(grounding.cards) if grounding else []
    if named:
        bank = load_bank(persona.knowledge.bank)
        wanted = [bank.card(i) for i in named][: persona.knowledge.top_k]
        cards = wanted + [c for c in cards if c not in wanted][: persona.knowledge.top_k - len(wanted)]
    return cards
