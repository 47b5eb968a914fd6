"""Saved chats: users, their chats and every message, in a real database (SQLite by default).

    store = open_store()                              # $KRISHNA_AI_DB, else <data dir>/history.db
    chat = store.new_chat("asha", "krishna")
    store.add_message("asha", chat.id, "user", "How do I stay calm?")
    store.chats("asha"); store.chat("asha", chat.id); store.feedback("asha", message_id, 1)

Every read and write names the user and is checked against the chat's owner: another user's chat id is
answered exactly like an unknown one (ChatNotFound), so ids cannot even be probed. The schema is
created and upgraded by Alembic migrations (krishna_ai/history/migrations) when the store opens, so an upgrade
of the package never loses chats; a database written by a newer version is refused, not touched.

SQLite runs in WAL mode: a killed app loses at most the transaction in flight (one message). Each
transaction takes the write lock when it begins (BEGIN IMMEDIATE), so writers to one chat never race
for its last position; they take turns in milliseconds. Any SQLAlchemy URL works too
(`postgresql+psycopg://…`; there a row lock on the chat does the same).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, column, create_engine, event, func, or_, select, text
from sqlalchemy.engine import Engine as DbEngine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history.images import SavedImage
from krishna_ai.history.schema import (
    MAX_QUERY,
    MAX_TITLE,
    SEARCH_TABLE,
    ChatInfo,
    ChatNotFound,
    ChatRow,
    DatabaseError,
    MessageRow,
    Role,
    StoredMessage,
    UserRow,
    data_root,
    default_url,
    now,
)


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("krishna_read") else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun by _sqlite_begin, not by the driver
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


class HistoryStore:
    """Users, chats and messages behind one SQLAlchemy engine. Thread-safe: a session per call."""

    def __init__(self, url: str | None = None, *, data_dir: str | Path | None = None, migrate: bool = True):
        self.url = url or default_url()
        self.data_dir = Path(data_dir) if data_dir else data_root()
        self.where = _redact(self.url)
        try:
            from sqlalchemy.engine import make_url

            parsed = make_url(self.url)
            if parsed.get_backend_name() == "sqlite" and parsed.database and not parsed.database.startswith("file:") \
                    and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: DbEngine = create_engine(self.url, pool_pre_ping=True)
        except (SQLAlchemyError, OSError, ValueError) as exc:  # bad URL, missing driver, unwritable folder
            raise DatabaseError(f"history database {self.where}: {_reason(exc)}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # BEGIN IMMEDIATE: a writing transaction takes the write lock when it starts, so two writers never
            # both read a chat's last position (they queue for busy_timeout instead of failing midway). A read
            # begins a plain deferred transaction: in WAL mode it never waits for, or holds up, a writer.
            event.listen(self.engine, "begin", _sqlite_begin)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._read_session = sessionmaker(self.engine.execution_options(krishna_read=True), expire_on_commit=False)
        if migrate:
            from krishna_ai.history.migrations import upgrade

            try:
                upgrade(self.engine)
            except SQLAlchemyError as exc:
                raise DatabaseError(f"history database {self.where}: {_reason(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- plumbing ----------------------------------------------------------------------------------
    def _run(self, fn: Any, *args: Any, read: bool = False) -> Any:
        """Run fn(session, *args) in one transaction (`read`: one that writes nothing, so it takes no write
        lock); database failures become DatabaseError."""
        try:
            with (self._read_session if read else self._session).begin() as session:
                return fn(session, *args)
        except KrishnaError:
            raise
        except SQLAlchemyError as exc:
            raise DatabaseError(f"history database {self.where}: {_reason(exc)}") from None

    @staticmethod
    def _user(session: Session, name: str, create: bool = True) -> UserRow | None:
        name = (name or "").strip()
        if not name:
            raise InputError("a user name is needed to save chats")
        row = session.scalar(select(UserRow).where(UserRow.name == name))
        if row is None and create:
            row = UserRow(name=name)
            session.add(row)
            session.flush()
        return row

    def _owned(self, session: Session, user: str, chat_id: str, lock: bool = False) -> ChatRow:
        """The user's chat (`lock`: held until the transaction ends, so writers to one chat take turns)."""
        owner = self._user(session, user, create=False)
        row = session.get(ChatRow, str(chat_id or ""), with_for_update=lock) if owner is not None else None
        if owner is None or row is None or row.user_id != owner.id:  # "not yours" reads as "no such chat"
            raise ChatNotFound(f"no chat {chat_id!r} in your history")
        return row

    # -- users -------------------------------------------------------------------------------------
    def users(self) -> list[str]:
        return self._run(lambda s: list(s.scalars(select(UserRow.name).order_by(UserRow.name))), read=True)

    # -- chats -------------------------------------------------------------------------------------
    def new_chat(self, user: str, persona: str, title: str | None = None,
                 messages: list[dict[str, Any]] | None = None) -> ChatInfo:
        """A new chat, with `messages` (dicts of MessageRow fields: role, content, meta, feedback, superseded)
        written in the same transaction: an import is all there or not at all."""
        def fn(session: Session) -> ChatInfo:
            owner = self._user(session, user)
            assert owner is not None
            row = ChatRow(id=os.urandom(8).hex(), user_id=owner.id, persona=persona,
                          title=clean_title(title) or "New chat")
            session.add(row)
            for seq, m in enumerate(messages or [], 1):
                if m.get("role") not in ("user", "assistant"):
                    raise InputError(f"a saved message's role must be user or assistant, not {m.get('role')!r}")
                session.add(MessageRow(chat=row, seq=seq, **m))
            session.flush()
            return _info(row)
        return self._run(fn)

    def chats(self, user: str, query: str | None = None, limit: int = 200) -> list[ChatInfo]:
        """The user's chats, latest first; `query` keeps those whose title or any message contains it."""
        def fn(session: Session) -> list[ChatInfo]:
            owner = self._user(session, user, create=False)
            if owner is None:
                return []
            stmt = select(ChatRow).where(ChatRow.user_id == owner.id)
            q = (query or "").strip()
            if len(q) > MAX_QUERY:
                raise InputError(f"the search is {len(q):,} characters; at most {MAX_QUERY} are searched")
            if q:
                like = f"%{_escape_like(q.lower())}%"
                if session.get_bind().dialect.name == "sqlite" and len(q) >= 3:  # the trigram index (0002)
                    phrase = '"' + q.replace('"', '""') + '"'
                    found = text(f"SELECT rowid FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH :phrase")
                    matches = MessageRow.id.in_(found.bindparams(phrase=phrase).columns(column("rowid", Integer)))
                else:
                    matches = func.lower(MessageRow.content).like(like, escape="\\")
                in_messages = select(MessageRow.chat_id).where(matches, MessageRow.superseded.is_(False))
                stmt = stmt.where(or_(func.lower(ChatRow.title).like(like, escape="\\"),
                                      ChatRow.id.in_(in_messages)))
            rows = session.scalars(stmt.order_by(ChatRow.updated_at.desc(), ChatRow.id).limit(limit))
            return [_info(r) for r in rows]
        return self._run(fn, read=True)

    def chat(self, user: str, chat_id: str) -> ChatInfo:
        """The chat with every message in order (superseded replies included, flagged)."""
        def fn(session: Session) -> ChatInfo:
            row = self._owned(session, user, chat_id)
            info = _info(row)
            info.messages = [self._message(m) for m in row.messages]
            return info
        return self._run(fn, read=True)

    def rename(self, user: str, chat_id: str, title: str) -> ChatInfo:
        title = clean_title(title)
        if not title:
            raise InputError("a chat title cannot be empty")

        def fn(session: Session) -> ChatInfo:
            row = self._owned(session, user, chat_id)
            row.title = title
            row.updated_at = now()
            return _info(row)
        return self._run(fn)

    def delete(self, user: str, chat_id: str) -> None:
        """Delete a chat for good, with its messages and the images no other message refers to."""
        def fn(session: Session) -> list[str]:
            row = self._owned(session, user, chat_id)
            images = {m.image for m in row.messages if m.image}
            session.delete(row)
            session.flush()
            return self._orphans(session, images)
        self._unlink(self._run(fn))

    # -- messages ----------------------------------------------------------------------------------
    def add_message(self, user: str, chat_id: str, role: Role, content: str, *,
                    image: str | Path | SavedImage | None = None,
                    meta: dict[str, Any] | None = None) -> StoredMessage:
        """Append one message at the chat's next position. An image is decoded and re-encoded first (`SavedImage`),
        and written into the data folder only once the chat is known to be the user's."""
        if role not in ("user", "assistant"):
            raise InputError(f"a saved message's role must be user or assistant, not {role!r}")
        kept = image if isinstance(image, SavedImage) or image is None else SavedImage.of(image)

        def fn(session: Session) -> StoredMessage:
            row = self._owned(session, user, chat_id, lock=True)
            stored_image = self._write_image(kept) if kept is not None else None
            seq = (session.scalar(select(func.max(MessageRow.seq)).where(MessageRow.chat_id == row.id)) or 0) + 1
            msg = MessageRow(chat_id=row.id, seq=seq, role=role, content=content, image=stored_image,
                             meta=meta or {})
            session.add(msg)
            row.updated_at = now()
            if row.title == "New chat" and role == "user" and content.strip():
                row.title = clean_title(content)
            session.flush()
            return self._message(msg)
        return self._run(fn)

    def _message_owned(self, session: Session, user: str, message_id: int | str) -> MessageRow:
        mid = str(message_id).removeprefix("m")
        # Only ids an Integer column can hold reach the database (PostgreSQL's is 32-bit: a larger one would
        # be a driver error, not "no such message").
        ok = re.fullmatch(r"[0-9]{1,10}", mid) is not None and int(mid) < 2**31
        msg = session.get(MessageRow, int(mid)) if ok else None
        if msg is None:
            raise ChatNotFound(f"no message {message_id!r} in your history")
        self._owned(session, user, msg.chat_id)  # raises ChatNotFound for another user's message too
        return msg

    def feedback(self, user: str, message_id: int | str, value: int | None) -> None:
        """Like (1), dislike (-1) or clear (None) a reply."""
        if value not in (1, -1, None):
            raise InputError(f"feedback must be 1 (like), -1 (dislike) or none, not {value!r}")

        def fn(session: Session) -> None:
            msg = self._message_owned(session, user, message_id)
            if msg.role != "assistant":
                raise InputError("only a reply can be liked or disliked")
            msg.feedback = value
        self._run(fn)

    def retry(self, user: str, chat_id: str, question: int | str | None = None) -> int:
        """Hide the replies to the chat's last question (Retry): they stay in the database as rejected answers
        for training. `question` (a message id): the retry is for that question, refused if the chat has moved
        on since (another tab). Returns how many were hidden."""
        def fn(session: Session) -> int:
            msgs = self._owned(session, user, chat_id, lock=True).messages
            hidden = 0
            for msg in msgs[_last_turn(msgs, question):]:
                if msg.role == "assistant" and not msg.superseded:
                    msg.superseded, hidden = True, hidden + 1
            return hidden
        return self._run(fn)

    def undo(self, user: str, chat_id: str, question: int | str | None = None) -> str:
        """Delete the last question and every reply to it (Undo); returns the question's text. `question` (a
        message id): the turn to undo, refused unless it is still the chat's last, so Undo never deletes a turn
        the user has not seen."""
        def fn(session: Session) -> tuple[str, list[str]]:
            msgs = self._owned(session, user, chat_id, lock=True).messages
            i = _last_turn(msgs, question)
            text = "\n".join(m.content for m in msgs[i:] if m.role == "user" and m.content)
            images = {m.image for m in msgs[i:] if m.image}
            for msg in msgs[i:]:
                session.delete(msg)
            session.flush()
            return text, self._orphans(session, images)
        text, orphans = self._run(fn)
        self._unlink(orphans)
        return text

    @staticmethod
    def _orphans(session: Session, images: set[str]) -> list[str]:
        """Those of `images` (paths in the data folder) that no message refers to any more."""
        if not images:
            return []
        used = set(session.scalars(select(MessageRow.image).where(MessageRow.image.in_(images))))
        return sorted(images - used)

    def _unlink(self, images: list[str]) -> None:
        for rel in images:
            (self.data_dir / rel).unlink(missing_ok=True)

    def all_chats(self, user: str | None = None) -> list[tuple[str, ChatInfo]]:
        """(owner, chat with messages) for every chat, or one user's: for the operator's exports."""
        def fn(session: Session) -> list[tuple[str, ChatInfo]]:
            stmt = select(ChatRow, UserRow.name).join(UserRow, ChatRow.user_id == UserRow.id)
            if user:
                stmt = stmt.where(UserRow.name == user)
            out = []
            for row, name in session.execute(stmt.order_by(ChatRow.created_at, ChatRow.id)):
                info = _info(row)
                info.messages = [self._message(m) for m in row.messages]
                out.append((name, info))
            return out
        return self._run(fn, read=True)

    # -- images and checks -------------------------------------------------------------------------
    def _write_image(self, image: SavedImage) -> str:
        """Write a checked image into the data folder under the name it was given (its content's hash)."""
        rel = Path("images") / image.name
        dest = self.data_dir / rel
        try:
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex}")
                tmp.write_bytes(image.data)
                os.replace(tmp, dest)
        except OSError as exc:
            raise DatabaseError(f"the image could not be saved into {self.data_dir}: {exc.strerror or exc}") from None
        return rel.as_posix()

    def _message(self, m: MessageRow) -> StoredMessage:
        return StoredMessage(id=m.id, seq=m.seq, role=m.role, content=m.content,  # type: ignore[arg-type]
                             image=self.data_dir / m.image if m.image else None, meta=dict(m.meta or {}),
                             feedback=m.feedback, superseded=bool(m.superseded), created_at=m.created_at)

    def check(self) -> list[str]:
        """Problems found by the database's own integrity check (SQLite) and ours; [] when sound."""
        problems: list[str] = []
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                problems += [r[0] for r in conn.execute(text("PRAGMA integrity_check")) if r[0] != "ok"]
                problems += [f"foreign key broken in {r[0]}" for r in conn.execute(text("PRAGMA foreign_key_check"))]
            dupes = conn.execute(text("SELECT chat_id, seq FROM messages GROUP BY chat_id, seq HAVING COUNT(*) > 1"))
            problems += [f"chat {c}: two messages at position {s}" for c, s in dupes]
        return problems


def _last_turn(msgs: list[MessageRow], question: int | str | None) -> int:
    """Where the chat's last turn (its last questions, then the replies to them) begins. With `question`, that
    message must be one of those questions: InputError otherwise (the chat changed since the client saw it)."""
    i = len(msgs)
    while i and msgs[i - 1].role == "assistant":
        i -= 1
    while i and msgs[i - 1].role == "user":
        i -= 1
    if question is not None and str(question).removeprefix("m") not in {str(m.id) for m in msgs[i:]
                                                                           if m.role == "user"}:
        raise InputError(f"message {question!r} is not this chat's last question: the chat changed since "
                         "(in another tab?); reopen it from the list")
    return i


def clean_title(title: str | None) -> str:
    """One line, at most MAX_TITLE characters (a first message makes the default title)."""
    line = " ".join((title or "").split())
    return line if len(line) <= MAX_TITLE else line[: MAX_TITLE - 1].rstrip() + "…"


def _info(row: ChatRow) -> ChatInfo:
    return ChatInfo(id=row.id, title=row.title, persona=row.persona, created_at=row.created_at,
                    updated_at=row.updated_at)


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported as it was given
        return url


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    msg = str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else type(exc).__name__
    if "file is not a database" in msg:
        return "the file is not a SQLite database (corrupt, or another kind of file); move it aside to start afresh"
    if "readonly database" in msg or "unable to open database file" in msg:
        return f"{msg}: the file or its folder is not writable"
    return msg


def open_store(url: str | None = None, data_dir: str | Path | None = None) -> HistoryStore:
    """The app's store: `url`, else $KRISHNA_AI_DB, else SQLite in the data folder."""
    return HistoryStore(url, data_dir=data_dir)
