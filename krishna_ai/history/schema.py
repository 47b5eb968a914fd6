"""The history database's tables (SQLAlchemy), and the plain records the store hands out.

Kept in step with the Alembic migrations (tests/test_history.py compares the two); `migrations/env.py`
reads `Base.metadata` from here, so the store and its migrations import this module and not each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from krishna_ai.core.errors import InputError, KrishnaError

DB_ENV = "KRISHNA_AI_DB"
DATA_ENV = "KRISHNA_AI_DATA"
LOCAL_USER = "local"
"""The one user of an app started without --auth."""
MAX_TITLE = 120
MAX_QUERY = 200
SEARCH_TABLE = "message_search"
"""SQLite's full-text index of messages (migration 0002; FTS5 keeps shadow tables named after it)."""
"""The longest chat search (a longer one is refused before the database sees it)."""
MAX_IMAGE_BYTES = 10 * 1024 * 1024
Role = Literal["user", "assistant"]


class HistoryError(KrishnaError):
    """The history database cannot be opened, read or written (the message names it and says why)."""


class DatabaseError(HistoryError):
    """The database or the data folder failed. The message names them (for the operator and the log);
    `public` is what a client of the app is told instead: never the database's location, nor the driver's words."""

    public = "the chat history database failed (the server's log says why)"


class ChatNotFound(InputError):
    """No chat with this id belongs to this user (unknown ids and other users' ids read the same)."""


def data_root() -> Path:
    """Where the app keeps what users make (chats, images): $KRISHNA_AI_DATA, else ~/.local/share/krishna_ai."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".local" / "share" / "krishna_ai")


def default_url() -> str:
    return os.environ.get(DB_ENV) or f"sqlite:///{data_root() / 'history.db'}"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- tables -------------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class ChatRow(Base):
    __tablename__ = "chats"
    __table_args__ = (Index("ix_chats_user_updated", "user_id", "updated_at"),)  # one user's newest chats
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(MAX_TITLE))
    persona: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=now, index=True)
    messages: Mapped[list[MessageRow]] = relationship(back_populates="chat", order_by="MessageRow.seq",
                                                      cascade="all, delete-orphan", passive_deletes=True)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("chat_id", "seq", name="uq_messages_chat_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(String(300), nullable=True)
    """An uploaded image, copied into <data dir>/images (path relative to the data dir)."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """model, adapter, slice, sampling, stats, style verdict, story person and sources of a reply."""
    feedback: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """1 liked, -1 disliked, None neither."""
    superseded: Mapped[bool] = mapped_column(default=False)
    """A reply the user replaced with Retry: hidden in the chat, kept as a rejected answer for training."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    chat: Mapped[ChatRow] = relationship(back_populates="messages")


class VoteRow(Base):
    """Two replies to one question, side by side (the Compare tab, /compare), and which one the user preferred."""

    __tablename__ = "votes"
    __table_args__ = (Index("ix_votes_persona_voted", "persona", "voted_at"),)  # one persona's leaderboard
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    persona: Mapped[str] = mapped_column(String(100))
    question: Mapped[str] = mapped_column(Text)
    context: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """The turns before the question ({role, content}); empty for a fresh question."""
    a_model: Mapped[str] = mapped_column(String(300))
    """A's contestant label: the model spec and the adapter merged into it (leaderboard rows are these)."""
    b_model: Mapped[str] = mapped_column(String(300))
    a_reply: Mapped[str] = mapped_column(Text)
    b_reply: Mapped[str] = mapped_column(Text)
    a_meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """As a saved reply's meta: model, adapter, sampling, stats, style verdict, sources, personality."""
    b_meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    winner: Mapped[str | None] = mapped_column(String(8), nullable=True)
    """a, b, tie or bad (both bad); None until the user votes."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    voted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class JobRow(Base):
    """A run of the workbench (Train, Evaluate, Export tabs; /job_start): its commands, folder and state."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)  # the queue: oldest queued first
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """train, eval or export."""
    title: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What was asked for (the form's values), as checked."""
    commands: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    """The `python -m krishna_ai` argument lists it runs, one after the other."""
    folder: Mapped[str] = mapped_column(String(500))
    """Where it writes: its log (job.log), the run, the files it makes."""
    status: Mapped[str] = mapped_column(String(16))
    """queued, running, done, failed, stopped or interrupted (the app ended while it ran)."""
    resume: Mapped[bool] = mapped_column(default=False)
    """Its next start continues from its last checkpoint (a training run stopped or interrupted)."""
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """What it made: the adapter, the results file, the exported files."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# -- what callers get back (plain data, no open session) -----------------------------------------------
@dataclass
class StoredMessage:
    id: int
    seq: int
    role: Role
    content: str
    image: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    feedback: int | None = None
    superseded: bool = False
    created_at: datetime | None = None


@dataclass
class ChatInfo:
    id: str
    title: str
    persona: str
    created_at: datetime
    updated_at: datetime
    messages: list[StoredMessage] = field(default_factory=list)
    """Filled by `HistoryStore.chat()` (every message, superseded ones included); empty in listings."""

    @property
    def visible(self) -> list[StoredMessage]:
        return [m for m in self.messages if not m.superseded]
