"""Confidence that follows the evidence: how clearly a description points to one label (Maize: one of five
conditions), and the reply's stated confidence capped by it.

A 270M model says "Confidence: high" almost every time. What the description supports is measured instead by
retrieval: the best card of the condition retrieval picks against the best card of any *other* condition.
When the runner-up scores nearly as well, the description fits two conditions, and "high" is not honest.

`[knowledge] confidence = { high = H, medium = M }` (a persona with `one_label`): the runner-up's best BM25
score over the best's at most H allows "high", at most M "medium", above it "low". The app lowers a stated
confidence above that (and says which condition also fits); an image is evidence retrieval cannot weigh, so a
turn with one is never capped. Maize's bounds were chosen on its 100 labelled training descriptions
(`python bench/maize_evidence.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

LEVELS = ("low", "medium", "high")
Bounds = Mapping[Literal["high", "medium"], float]
"""The largest runner-up ratio that allows "high", and "medium" (`[knowledge] confidence`)."""

_CONFIDENCE = re.compile(r"(?im)^(\W*confidence\W*:\W*)(high|medium|low)\b([^\n]*)")


@dataclass(frozen=True)
class Evidence:
    """What retrieval says of a description: the best card's label, and how close the next label came."""

    label: str
    runner_up: str | None
    ratio: float
    """The runner-up label's best score over the best card's (0: no card of another label fits at all)."""


def weigh(scored: list[tuple[str | None, float]]) -> Evidence | None:
    """The evidence in retrieval hits, best first, as (label, score); None when the best has no label or score."""
    if not scored:
        return None
    best, top = scored[0]
    if best is None or top <= 0:
        return None
    runner = next(((label, score) for label, score in scored if label is not None and label != best), None)
    if runner is None:
        return Evidence(best, None, 0.0)
    return Evidence(best, runner[0], max(0.0, runner[1]) / top)


def allowed(evidence: Evidence, bounds: Bounds) -> str:
    """The highest confidence the evidence allows under `bounds` ({"high": H, "medium": M})."""
    if evidence.ratio <= bounds["high"]:
        return "high"
    return "medium" if evidence.ratio <= bounds["medium"] else "low"


def stated(reply: str) -> str | None:
    """The confidence a reply states on its "Confidence:" line (high, medium or low), or None."""
    found = _CONFIDENCE.search(reply)
    return found.group(2).lower() if found else None


def cap(reply: str, level: str, runner_up: str | None) -> str:
    """`reply` with a stated confidence above `level` lowered to it, and the condition that also fits named."""
    found = _CONFIDENCE.search(reply)
    if not found or LEVELS.index(found.group(2).lower()) <= LEVELS.index(level):
        return reply
    rest = found.group(3).rstrip()
    also = f" (the description also fits {runner_up})" if runner_up else ""
    return f"{reply[:found.start()]}{found.group(1)}{level}{rest}{also}{reply[found.end():]}"
