"""Side-by-side votes: two replies to one question (the Compare tab, the /compare API), the one the user
preferred, a leaderboard of the models compared so far, and the votes as preference pairs for DPO.

    cid = save_compare(store, "asha", "krishna", question, a=Side("light-gguf · krishna-light", reply, meta), b=…)
    vote(store, "asha", cid, "a")                    # a, b, tie, or bad (both bad)
    leaderboard(store, "krishna")                    # rows: model, games, wins, …, win rate and its 95% interval

The leaderboard's win rate counts decided games (ties and both-bad apart) with a Wilson 95% interval
(scipy); its score is a Bradley–Terry strength (choix, lightly regularised so a model that won every game
still gets a finite score), in which a tie or both-bad counts as one win each way. The votes for A or B
become preference pairs in `feedback export` (history/chatfile.py: `vote_pairs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from krishna_ai.core.errors import InputError
from krishna_ai.history.schema import UserRow, VoteRow, now
from krishna_ai.history.store import HistoryStore

Winner = Literal["a", "b", "tie", "bad"]
WINNERS: tuple[str, ...] = ("a", "b", "tie", "bad")
MAX_LABEL = 300


class VoteNotFound(InputError):
    """No comparison with this id belongs to this user (unknown ids and other users' ids read the same)."""


@dataclass
class Side:
    """One model's reply in a comparison."""

    model: str
    """The contestant's label: model spec and adapter (a leaderboard row)."""
    reply: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Vote:
    id: str
    user: str
    persona: str
    question: str
    context: list[dict[str, Any]]
    a: Side
    b: Side
    winner: str | None
    created_at: datetime
    voted_at: datetime | None


def save_compare(store: HistoryStore, user: str, persona: str, question: str, a: Side, b: Side,
                 context: list[dict[str, Any]] | None = None) -> str:
    """Save two replies to `question` (not voted yet); the comparison's id."""
    for side in (a, b):
        if not side.model.strip() or len(side.model) > MAX_LABEL:
            raise InputError(f"a compared model's label must be 1 to {MAX_LABEL} characters, not {side.model!r:.80}")

    def fn(session: Session) -> str:
        owner = store._user(session, user)
        assert owner is not None
        row = VoteRow(id=os.urandom(8).hex(), user_id=owner.id, persona=persona, question=question,
                      context=list(context or []), a_model=a.model, b_model=b.model, a_reply=a.reply,
                      b_reply=b.reply, a_meta=a.meta, b_meta=b.meta)
        session.add(row)
        return row.id
    return store._run(fn)


def vote(store: HistoryStore, user: str, compare_id: str, winner: str) -> Vote:
    """Record (or change) the user's verdict on one of their comparisons."""
    winner = (winner or "").strip().lower()
    if winner not in WINNERS:
        raise InputError(f"a vote is one of {', '.join(WINNERS)} (a better, b better, a tie, both bad), "
                         f"not {winner!r:.40}")

    def fn(session: Session) -> Vote:
        owner = store._user(session, user, create=False)
        row = session.get(VoteRow, str(compare_id or "")[:64], with_for_update=True) if owner else None
        if owner is None or row is None or row.user_id != owner.id:
            raise VoteNotFound(f"no comparison {str(compare_id)[:40]!r} of yours to vote on")
        row.winner, row.voted_at = winner, now()
        return _vote(row, owner.name)
    return store._run(fn)


def votes(store: HistoryStore, persona: str | None = None, user: str | None = None,
          voted: bool = True) -> list[Vote]:
    """Comparisons, oldest first: one persona's or all, one user's or everyone's; only voted ones by default."""
    def fn(session: Session) -> list[Vote]:
        query = select(VoteRow, UserRow.name).join(UserRow, VoteRow.user_id == UserRow.id)
        if persona is not None:
            query = query.where(VoteRow.persona == persona)
        if user is not None:
            query = query.where(UserRow.name == user)
        if voted:
            query = query.where(VoteRow.winner.is_not(None))
        return [_vote(row, name) for row, name in session.execute(query.order_by(VoteRow.created_at, VoteRow.id))]
    return store._run(fn, read=True)


def _vote(row: VoteRow, user: str) -> Vote:
    return Vote(row.id, user, row.persona, row.question, list(row.context or []),
                Side(row.a_model, row.a_reply, dict(row.a_meta or {})),
                Side(row.b_model, row.b_reply, dict(row.b_meta or {})), row.winner, row.created_at, row.voted_at)


# -- the leaderboard ------------------------------------------------------------------------------------
@dataclass
class Standing:
    model: str
    games: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0
    win_rate: float | None = None
    """wins / (wins + losses); None before a decided game."""
    low: float | None = None
    high: float | None = None
    """The Wilson 95% interval of the win rate."""
    score: float = 0.0
    """Bradley–Terry strength (log scale, mean 0 over the models compared)."""


def standings(compared: list[Vote]) -> list[Standing]:
    """The leaderboard of the voted comparisons in `compared`, best score first."""
    import choix
    import numpy as np
    from scipy.stats import binomtest

    rows: dict[str, Standing] = {}
    for v in compared:
        if v.winner is None:
            continue
        a, b = (rows.setdefault(m, Standing(m)) for m in (v.a.model, v.b.model))
        a.games += 1
        b.games += 1
        if v.winner == "a":
            a.wins, b.losses = a.wins + 1, b.losses + 1
        elif v.winner == "b":
            b.wins, a.losses = b.wins + 1, a.losses + 1
        elif v.winner == "tie":
            a.ties, b.ties = a.ties + 1, b.ties + 1
        else:
            a.both_bad, b.both_bad = a.both_bad + 1, b.both_bad + 1
    for s in rows.values():
        if s.wins + s.losses:
            s.win_rate = s.wins / (s.wins + s.losses)
            ci = binomtest(s.wins, s.wins + s.losses).proportion_ci(0.95, method="wilson")
            s.low, s.high = float(ci.low), float(ci.high)
    names = sorted(rows)
    index = {m: i for i, m in enumerate(names)}
    pairs: list[tuple[int, int]] = []
    for v in compared:
        if v.winner is None or v.a.model == v.b.model:  # a model against itself says nothing of its strength
            continue
        i, j = index[v.a.model], index[v.b.model]
        pairs += [(i, j)] if v.winner == "a" else [(j, i)] if v.winner == "b" else [(i, j), (j, i)]
    if len(names) > 1 and pairs:
        strengths = choix.ilsr_pairwise(len(names), pairs, alpha=0.01)
        for m, s in zip(names, np.asarray(strengths) - np.mean(strengths), strict=True):
            rows[m].score = float(s)
    return sorted(rows.values(), key=lambda s: (-s.score, -(s.win_rate or 0.0), s.model))


def leaderboard(store: HistoryStore, persona: str) -> list[Standing]:
    """One persona's leaderboard over every user's votes."""
    return standings(votes(store, persona))


def format_standings(rows: list[Standing]) -> list[list[Any]]:
    """Table rows: model, games, wins, losses, ties, both bad, win rate [95% interval], score."""
    out = []
    for s in rows:
        rate = "–" if s.win_rate is None else f"{s.win_rate:.0%} [{s.low:.0%}–{s.high:.0%}]"
        out.append([s.model, s.games, s.wins, s.losses, s.ties, s.both_bad, rate, round(s.score, 2)])
    return out
