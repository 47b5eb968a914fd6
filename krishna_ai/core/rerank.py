"""Best-of-n: of several sampled replies to one question, the one the checks rank best.

A 270M model writes a coherent, on-topic paragraph some of the time and a muddled one the rest; sampling a
few and keeping the best is the cheapest way to see more of the first kind, if something can tell them apart.
The ranking, most important first:

1. it ended (not cut at the token limit);
2. fewer broken style rules (`check_reply`: the persona's address, sentence count, a story when one is due,
   no loop, no leaked turn marker...) and, for a persona that rewrites the user's text, a rewrite that keeps
   the user's task and states no two values for one thing (`core/rewrites.py`);
3. fewer unsupported facts (`faithfulness`: every name and number of the story is its card's);
4. the part the model writes itself (the counsel, or the whole reply when the persona tells no story) is
   closest in meaning to the question (cosine of sentence vectors, `core/vectors.py`).

`eval --best-of N` measures it; README "Best-of-n, measured" says what it was worth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from krishna_ai.core.facts import unsupported
from krishna_ai.core.knowledge import Card
from krishna_ai.core.personas import Persona
from krishna_ai.core.rewrites import contradictions, improved_part, keeps_task
from krishna_ai.core.style import check_reply, paragraphs, story_due

Vectors = Callable[[Sequence[str]], np.ndarray]
"""Unit sentence vectors of some texts (`core.vectors.sentence_vectors`)."""


def faithfulness(persona: Persona, question: str, reply: str, cards: list[Card]) -> tuple[bool, list[str]]:
    """(faithful, what is unsupported): every number and proper name in the factual part of `reply` (the
    story, or the whole reply) is stated by a retrieved card (or the question, or the persona's own
    prompt), and a story names its card's person. No card: a story-teller tells no story, and a reply
    states nothing the question did not."""
    assert persona.knowledge is not None
    story_mode = persona.knowledge.checked == "story"
    parts = paragraphs(reply)
    part = "\n\n".join(parts[1:]) if story_mode else reply
    allowed = [c.text for c in cards] + [question, persona.system_prompt, *persona.constraints, *persona.labels,
                                         persona.style.address or "", persona.name, persona.description]
    missing = unsupported(part, allowed)
    if story_mode and cards and part.strip():
        person = cards[0].person or ""
        if person and person.split()[-1].casefold() not in part.casefold():
            missing.append(f"the story never names {person}")
    if story_mode and not cards and part.strip():
        missing.append("a story although no card fitted")
    return not missing, missing


def own_part(persona: Persona, reply: str) -> str:
    """What the model writes itself: the counsel paragraph of a persona that then retells a story, else all."""
    if persona.style.story and persona.knowledge is not None:
        parts = paragraphs(reply)
        return parts[0] if parts else ""
    return reply.strip()


def rank_key(persona: Persona, reply: str, finish_reason: str | None, cards: list[Card] | None,
             question: str, relevance: float) -> tuple[int, int, int, float]:
    """Lower is better: (not ended, rules broken, unsupported facts, -relevance)."""
    broken = len(check_reply(reply, persona, finish_reason, story=story_due(persona, cards), asked=question))
    if persona.style.rewrite:
        rewrite = improved_part(reply, persona.style.rewrite) or ""
        broken += (not keeps_task(question, rewrite)[0]) + len(contradictions(question, rewrite))
    facts = faithfulness(persona, question, reply, cards)[1] if cards is not None and persona.knowledge else []
    return (int(finish_reason != "end_of_turn"), broken, len(facts), -relevance)


def best_of(persona: Persona, question: str, candidates: Sequence[tuple[str, str | None]],
            cards: list[Card] | None, vectors: Vectors) -> tuple[int, list[dict[str, Any]]]:
    """The index of the best of `candidates` ((text, finish_reason) each) and each one's ranking key."""
    if not candidates:
        raise ValueError("best_of needs at least one candidate reply")
    if len(candidates) == 1:
        return 0, []
    matrix = vectors([question, *(own_part(persona, text) or "-" for text, _ in candidates)])
    relevance = matrix[1:] @ matrix[0]
    keys = [rank_key(persona, text, reason, cards, question, float(rel))
            for (text, reason), rel in zip(candidates, relevance, strict=True)]
    best = min(range(len(keys)), key=keys.__getitem__)
    return best, [{"not_ended": k[0], "broken": k[1], "unsupported": k[2], "relevance": round(-k[3], 4)}
                  for k in keys]
