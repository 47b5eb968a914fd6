"""The workbench's jobs in the database: training, evaluation and export runs, queued and run one at a time.

    job = add_job(store, "asha", "train", "krishna-light · sft", params, commands, folder)
    claim_next(store)                         # the oldest queued job, now running (None: the queue is empty)
    finish(store, job.id, "done", result={"adapter": "…/adapter"})
    jobs(store)                               # newest first, every user's (the Train tab shows them all)

The rows are the truth a reload or a restarted app reads: `interrupt_running` (at start) marks the jobs that
were running when the app ended "interrupted", and a training run among them can be resumed. What runs them
is `studio/jobs.py`; this module only keeps their state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from krishna_ai.core.errors import InputError
from krishna_ai.history.schema import JobRow, UserRow, now
from krishna_ai.history.store import HistoryStore

KINDS = ("train", "eval", "export")
STATUSES = ("queued", "running", "done", "failed", "stopped", "interrupted")
ENDED = ("done", "failed", "stopped", "interrupted")


class JobNotFound(InputError):
    """No job with this id."""


class JobChanged(InputError):
    """The job's status changed meanwhile (the queue took it, it ended): nothing was written."""


@dataclass
class Job:
    id: str
    user: str
    kind: str
    title: str
    params: dict[str, Any]
    commands: list[list[str]]
    folder: str
    status: str
    resume: bool = False
    pid: int | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _job(row: JobRow, user: str) -> Job:
    return Job(row.id, user, row.kind, row.title, dict(row.params or {}), [list(c) for c in row.commands or []],
               row.folder, row.status, bool(row.resume), row.pid, row.error, dict(row.result or {}),
               row.created_at, row.started_at, row.finished_at)


def add_job(store: HistoryStore, user: str, kind: str, title: str, params: dict[str, Any],
            commands: list[list[str]], folder: str) -> Job:
    """A new queued job."""
    if kind not in KINDS:
        raise InputError(f"a job is one of {', '.join(KINDS)}, not {kind!r:.40}")

    def fn(session: Session) -> Job:
        owner = store._user(session, user)
        assert owner is not None
        row = JobRow(id=os.urandom(6).hex(), user_id=owner.id, kind=kind, title=title[:200], params=params,
                     commands=commands, folder=folder, status="queued", resume=False, result={})
        session.add(row)
        session.flush()
        return _job(row, owner.name)
    return store._run(fn)


def _named(session: Session, job_id: str, lock: bool = False) -> tuple[JobRow, str]:
    row = session.get(JobRow, str(job_id or "")[:32], with_for_update=lock)
    if row is None:
        raise JobNotFound(f"no job {str(job_id)[:40]!r}")
    name = session.scalar(select(UserRow.name).where(UserRow.id == row.user_id)) or ""
    return row, name


def job(store: HistoryStore, job_id: str) -> Job:
    return store._run(lambda s: _job(*_named(s, job_id)), read=True)


def jobs(store: HistoryStore, kind: str | None = None, limit: int = 100) -> list[Job]:
    """The newest `limit` jobs (of one kind, or all), newest first."""
    def fn(session: Session) -> list[Job]:
        query = select(JobRow, UserRow.name).join(UserRow, JobRow.user_id == UserRow.id)
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        rows = session.execute(query.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit))
        return [_job(row, name) for row, name in rows]
    return store._run(fn, read=True)


def claim_next(store: HistoryStore) -> Job | None:
    """The oldest queued job, marked running (in one transaction: two runners never claim the same job)."""
    def fn(session: Session) -> Job | None:
        row = session.scalar(select(JobRow).where(JobRow.status == "queued")
                             .order_by(JobRow.created_at, JobRow.id).limit(1).with_for_update())
        if row is None:
            return None
        row.status, row.started_at, row.finished_at, row.error, row.pid = "running", now(), None, None, None
        return _job(row, session.scalar(select(UserRow.name).where(UserRow.id == row.user_id)) or "")
    return store._run(fn)


def set_pid(store: HistoryStore, job_id: str, pid: int | None) -> None:
    def fn(session: Session) -> None:
        _named(session, job_id, lock=True)[0].pid = pid
    store._run(fn)


def finish(store: HistoryStore, job_id: str, status: str, *, error: str | None = None,
           result: dict[str, Any] | None = None, resume: bool | None = None,
           expect: tuple[str, ...] | None = None) -> Job:
    """Record how a job ended (or that it is queued again: status "queued", `resume` to continue it). With
    `expect`, only a job in one of those states is changed (JobChanged otherwise), in the same transaction."""
    if status not in STATUSES:
        raise InputError(f"a job's status is one of {', '.join(STATUSES)}, not {status!r:.40}")

    def fn(session: Session) -> Job:
        row, name = _named(session, job_id, lock=True)
        if expect is not None and row.status not in expect:
            raise JobChanged(f"job {row.id} is {row.status} now (not {' or '.join(expect)}); nothing was changed")
        row.status, row.error, row.pid = status, error, None
        if result is not None:
            row.result = {**(row.result or {}), **result}
        if resume is not None:
            row.resume = resume
        row.finished_at = now() if status in ENDED else None
        if status == "queued":
            row.created_at = now()  # back of the queue
        return _job(row, name)
    return store._run(fn)


def interrupt_running(store: HistoryStore) -> list[Job]:
    """Mark every running job "interrupted" (the app that ran it has ended); they are returned. The pid their
    process had is kept: a process still saving its checkpoint must end before the job is resumed."""
    def fn(session: Session) -> list[Job]:
        out = []
        for row, name in session.execute(select(JobRow, UserRow.name).join(UserRow, JobRow.user_id == UserRow.id)
                                         .where(JobRow.status == "running")):
            out.append(_job(row, name))
            row.status, row.finished_at = "interrupted", now()
            row.error = "the app ended while this job ran"
        return out
    return store._run(fn)
