"""A reply as it streams (`Update`), and the two ways a finished one is shown: the line under it in the UI
(`verdict_line`) and what the APIs return with it (`reply_facts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from krishna_ai.core.knowledge import Card
from krishna_ai.core.safety import Crisis, safety_badge
from krishna_ai.core.scope import Reason, scope_badge
from krishna_ai.core.style import Violation, badge
from krishna_ai.runtime.engine import ReplyStats


@dataclass
class Update:
    """One step of a streamed reply: the text so far, and (at the end) stats and style check."""

    text: str
    done: bool = False
    stats: ReplyStats | None = None
    violations: list[Violation] | None = None
    personality: str | None = None
    sources: list[Card] = field(default_factory=list)
    """The cards put in the prompt, with their sources: the teachings the counsel applies, then the knowledge
    cards (what the reply may state as fact)."""
    safety: Crisis | None = None
    """Set when the message spoke of a crisis: the text is then the fixed reply with real help (no model ran)."""
    scope: Reason | None = None
    """Set when the message was outside the persona's scope: the text is then its fixed decline (no model ran);
    the reason is what decided it (the gate, a word naming what is outside, no card)."""


def verdict_line(update: Update) -> str:
    """The line under a finished reply: a crisis or scope note (a fixed reply), else the style verdict."""
    if update.safety:
        return safety_badge(update.safety)
    if update.scope:
        return scope_badge(update.scope)
    return badge(update.violations or [])


def reply_facts(update: Update, *, card_text: bool = False) -> dict[str, Any]:
    """What a finished reply rests on, as the APIs return it (`/reply`, and the OpenAI API's extra field): how it
    ended, its stats, the style verdicts, the crisis kind, the story's person and its sources (`card_text`: with
    each card's text)."""
    s = update.stats
    return {
        "finish_reason": s.finish_reason if s else None,
        "stats": None if s is None else {"tokens": s.tokens, "prompt_tokens": s.prompt_tokens, "ttft_s": s.ttft_s,
                                         "tokens_per_s": round(s.tokens_per_s, 2), "total_s": round(s.total_s, 3)},
        "style": [{"rule": v.rule, "message": v.message} for v in update.violations or []],
        "safety": update.safety,
        "scope": update.scope,
        "personality": update.personality,
        "sources": [{"id": c.id, "title": c.title, "person": c.person, "source": c.source,
                     **({"text": c.text} if card_text else {})} for c in update.sources],
    }


def sources_line(update: Update) -> str:
    """The cards a reply was grounded in, with their sources, shown under it (Chat and Compare tabs)."""
    if not update.sources:
        return ""
    return "📚 " + " · ".join(f"**{c.title}** — {c.source}" for c in update.sources)
