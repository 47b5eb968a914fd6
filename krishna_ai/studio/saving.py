"""A chat as the studio saves it: Chatbot messages tagged with their database ids, the question saved
before its reply, the reply saved with what it rests on (model, sampling, stats, style, sources), a reply
cut short saved as "stopped", and an API call's place in a saved chat.

The user is the login (`--auth`), else one local user. Every store call names that user, so a chat id
from someone else is refused by the store itself, whatever a client sends. When the store is down the
app keeps chatting, unsaved, and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history.chatfile import to_json, to_markdown
from krishna_ai.history.schema import LOCAL_USER, ChatInfo, DatabaseError, HistoryError, StoredMessage
from krishna_ai.history.store import HistoryStore, SavedImage
from krishna_ai.studio.access import client_address
from krishna_ai.studio.replies import Update
from krishna_ai.studio.service import Studio

log = logging.getLogger("krishna_ai.studio")
EXPORT_DIR = Path(tempfile.gettempdir()) / "krishna_ai-exports"


GENERATE = "generate"
"""The one concurrency group of everything that generates (chat, API, Compare): Studio.concurrency at a time."""

def say(exc: Exception) -> str:
    """What a client is told of an error: its message, except a database failure's, which names the
    server's database (its path or URL) and stays in the server's log; the client gets a plain sentence."""
    if isinstance(exc, DatabaseError):
        log.warning("%s", exc)
        return exc.public
    return str(exc)


def gr_error(exc: Exception) -> gr.Error:
    """A domain error as the message the browser or API client sees (no server traceback)."""
    return gr.Error(say(exc), print_exception=False)


def timed(studio: Studio, what: str) -> Any:
    """Time a saved-chat write into the app's metrics (a no-op without them)."""
    return studio.metrics.writing(what) if studio.metrics is not None else contextlib.nullcontext()


def pending_start(history: list[dict]) -> int:
    """Where the trailing user messages of a Chatbot history begin (len(history) when there are none)."""
    i = len(history)
    while i > 0 and history[i - 1]["role"] == "user":
        i -= 1
    return i


class PartialReply:
    """What a streamed reply reached, so that a reply stopped or cancelled midway is saved as "stopped":
    `seen()` each update, `finished()` when the last one was saved, `failed()` on an error (nothing saved).
    Used as `with PartialReply(save) as partial:` around the stream; `save(update, finish)` writes it."""

    def __init__(self, save: Any):
        self._save = save
        self.last: Update | None = None
        self._ended = False

    def seen(self, update: Update) -> None:
        self.last = update

    def finished(self) -> None:
        self._ended = True

    failed = finished

    def __enter__(self) -> PartialReply:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._ended and self.last is not None and not self.last.done and self.last.text.strip():
            self._save(self.last, "stopped")


def user_of(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or LOCAL_USER) if request is not None else LOCAL_USER


def quota_key(request: gr.Request | None) -> str:
    """Whose share of the model a request uses: the login, else the client's address (without logins anyone can
    open new sessions, not new addresses)."""
    name = getattr(request, "username", None) if request is not None else None
    if name:
        return f"user:{name}"
    inner = getattr(request, "request", None)
    scope = getattr(inner, "scope", None)
    if isinstance(scope, dict):
        return f"address:{client_address(scope)}"
    host = getattr(getattr(request, "client", None), "host", None)
    return f"address:{host or 'unknown'}"


def content_files(content: Any) -> list[str]:
    """The file paths in a Chatbot message's content (a file dict, or a list of blocks)."""
    if isinstance(content, dict) and content.get("type") == "file":
        return [content["file"]["path"]]
    if isinstance(content, dict) and "path" in content:
        return [content["path"]]
    if isinstance(content, list):
        return [p for block in content for p in content_files(block)]
    return []


def content_text(content: Any) -> str:
    """The text of a Chatbot message's content (a string, a text block, or a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type") == "text":
        return content.get("text", "")
    if isinstance(content, list):
        return "\n".join(t for t in (content_text(b) for b in content) if t)
    return ""


def message_id(message: dict) -> str | None:
    """The saved message's id carried in a Chatbot message (metadata id "m<n>"), if it was saved."""
    mid = (message.get("metadata") or {}).get("id")
    return str(mid) if mid and str(mid).startswith("m") else None


def tag(message: dict, saved: StoredMessage) -> dict:
    return {**message, "metadata": {**(message.get("metadata") or {}), "id": f"m{saved.id}"}}


def chat_rows(chat: ChatInfo, greeting: str) -> list[dict]:
    """The Chatbot value of a saved chat: the persona's greeting, then what the user saw."""
    rows: list[dict] = [{"role": "assistant", "content": greeting}]
    for m in chat.visible:
        meta = {"id": f"m{m.id}"}
        if m.image is not None and m.image.is_file():
            rows.append({"role": "user", "content": {"path": str(m.image)}, "metadata": meta})
        if m.content or m.image is None:
            rows.append({"role": m.role, "content": m.content, "metadata": meta})
    return rows


def choices(store: HistoryStore | None, user: str, query: str = "") -> list[tuple[str, str]]:
    if store is None:
        return []
    return [(f"{c.title} · {c.persona} · {c.updated_at:%d %b %H:%M}", c.id) for c in store.chats(user, query)]


def reply_meta(update: Update, *, model: str, adapter: str | None, slice: str | None,
               sampling: dict[str, Any]) -> dict[str, Any]:
    """What a saved reply records: which model made it, how, how fast, and what it rests on."""
    s = update.stats
    return {
        "model": model, "adapter": adapter, "slice": slice,
        "sampling": {k: v for k, v in sampling.items() if v is not None},
        "stats": None if s is None else {"tokens": s.tokens, "prompt_tokens": s.prompt_tokens, "ttft_s": s.ttft_s,
                                         "total_s": round(s.total_s, 3), "finish_reason": s.finish_reason,
                                         "dropped_turns": s.dropped_turns},
        "style": [v.rule for v in update.violations or []],
        "safety": update.safety,
        "scope": update.scope,
        "personality": update.personality,
        "sources": [{"id": c.id, "title": c.title, "source": c.source} for c in update.sources],
    }


def save_question(store: HistoryStore, user: str, chat_id: str | None, persona_id: str,
                  history: list[dict]) -> tuple[str, list[dict]]:
    """Save the trailing user messages not saved yet (a new chat on the first); their ids go into `history`.
    Every image of the turn is decoded and re-encoded first, so a refused one leaves nothing behind: no
    empty chat, no file. (The store checks the chat is the user's before it writes an image.)"""
    history = list(history)
    i = pending_start(history)
    todo = [j for j in range(i, len(history)) if not message_id(history[j])]
    images = {j: [SavedImage.of(f) for f in content_files(history[j]["content"])] for j in todo}  # all, first
    if not chat_id:
        chat_id = store.new_chat(user, persona_id).id
    for j in todo:
        m = history[j]
        saved = store.add_message(user, chat_id, "user", content_text(m["content"]),
                                  image=images[j][-1] if images[j] else None)
        history[j] = tag(m, saved)
    return chat_id, history


def saved_context(chat: ChatInfo, history: list[dict]) -> list[dict]:
    """The turns before the pending question, from the saved chat (its visible messages, in order), without
    the pending messages of `history` (tagged with their ids by `save_question`)."""
    pending = {message_id(m) for m in history[pending_start(history):]}
    return [{"role": m.role, "content": m.content} for m in chat.visible if f"m{m.id}" not in pending and m.content]


def retried_replies(chat: ChatInfo) -> list[str]:
    """The replies to the chat's last question that Retry hid, oldest first: the next reply moves on from them
    (written counsel goes to the next card that fits)."""
    last = max((i for i, m in enumerate(chat.messages) if m.role == "user"), default=-1)
    return [m.content for m in chat.messages[last + 1:] if m.role == "assistant" and m.superseded and m.content]


def unsave_question(store: HistoryStore, user: str, chat_id: str, history: list[dict]
                    ) -> tuple[str | None, list[dict], Any]:
    """Take back a question the studio refused (nothing was generated): it leaves the database (and an
    emptied new chat goes too), and its Chatbot messages lose their ids. (chat id or None, history, chat list)."""
    try:
        store.undo(user, chat_id)
        if not store.chat(user, chat_id).messages:
            store.delete(user, chat_id)
            return None, _untag_pending(history), gr.Radio(choices=choices(store, user), value=None)
    except KrishnaError as exc:
        gr.Warning(f"The refused question stays in the saved chat: {say(exc)}")
    return chat_id, _untag_pending(history), gr.skip()


def _untag_pending(history: list[dict]) -> list[dict]:
    history = list(history)
    for i in range(pending_start(history), len(history)):
        meta = {k: v for k, v in (history[i].get("metadata") or {}).items() if k != "id"}
        history[i] = {k: v for k, v in history[i].items() if k != "metadata"} | ({"metadata": meta} if meta else {})
    return history


def save_reply(studio: Studio, user: str, cid: str | None, update: Update, model: str | None, persona_id: str,
               size: str | None, sampling: dict[str, Any], finish: str | None = None) -> StoredMessage | None:
    """Save a reply with what made it (None: not saved; a failure is a warning, the reply stays on screen)."""
    if studio.store is None or not cid:
        return None
    model = (model or studio.default_model).strip()
    meta = reply_meta(update, model=model, sampling=sampling, slice=None if size in (None, "", "full") else size,
                      adapter=studio.adapter(model, studio.persona(persona_id)))
    if finish:
        meta["stats"] = {**(meta["stats"] or {}), "finish_reason": finish}
    try:
        with timed(studio, "reply"):
            return studio.store.add_message(user, cid, "assistant", update.text, meta=meta)
    except KrishnaError as exc:
        gr.Warning(f"This reply was not saved: {say(exc)}")
        return None


@dataclass
class ApiTurn:
    """An API call's place in the history: which chat (None: unsaved), its persona and earlier turns.

    Nothing is written until the reply has started (`begin`, at its first chunk): a request the studio
    refuses (an image to a text-only tier, a model not offered) leaves no question and no empty chat."""

    studio: Studio
    user: str
    chat_id: str | None
    persona: str
    earlier: list[dict]
    message: str = ""
    image: SavedImage | None = None
    new: bool = False
    begun: bool = False

    def begin(self) -> None:
        store = self.studio.store
        if self.begun or store is None or not (self.chat_id or self.new):
            return
        self.begun = True
        if self.new:
            self.chat_id = store.new_chat(self.user, self.persona).id
        store.add_message(self.user, self.chat_id or "", "user", self.message, image=self.image)

    def save(self, update: Update, model: str | None, size: str | None, sampling: dict[str, Any],
             finish: str | None = None) -> StoredMessage | None:
        if not self.begun:
            return None
        return save_reply(self.studio, self.user, self.chat_id, update, model, self.persona, size, sampling, finish)


def api_turn(studio: Studio, request: gr.Request | None, chat_id: str | None, persona: str, message: str,
             image: str | None) -> ApiTurn:
    """Resolve `chat_id` ("" none, "new", or one of the caller's chats); `begin()` saves the question.

    Continuing a chat uses its persona and its visible history; another user's id is refused (ChatNotFound)."""
    user = user_of(request)
    if not chat_id:
        return ApiTurn(studio, user, None, persona, [])
    if studio.store is None:
        raise HistoryError(f"chat history is off on this server ({studio.history_error or 'no store'}): "
                           "call without chat_id")
    kept = SavedImage.of(image) if image is not None else None
    if chat_id == "new":
        studio.persona(persona)  # an unknown persona fails here
        return ApiTurn(studio, user, None, persona, [], message or "", kept, new=True)
    chat = studio.store.chat(user, chat_id)
    earlier = [{"role": m.role, "content": m.content} for m in chat.visible if m.content]
    return ApiTurn(studio, user, chat.id, chat.persona, earlier, message or "", kept)


def uploaded(path: str | None, what: str) -> str | None:
    """A file path a client sent, accepted only inside Gradio's upload folder (a file sent with the request,
    e.g. gradio_client.handle_file): never a path to some other file on the server."""
    if path is None:
        return None
    from gradio.utils import get_upload_folder

    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(get_upload_folder()).resolve()) or not resolved.is_file():
        raise InputError(f"{what} must be a file sent with the request (gradio_client.handle_file), not a path "
                         "on the server")
    return str(resolved)


def persona_name(studio: Studio, chat: ChatInfo) -> str | None:
    """The display name of the persona a chat was held with (None: this app no longer has it)."""
    return studio.personas[chat.persona].name if chat.persona in studio.personas else None


def export_file(chat: ChatInfo, fmt: str, name: str | None = None) -> Path:
    """The chat written to a file for download (JSON or Markdown), named after its title."""
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    for old in EXPORT_DIR.iterdir():  # earlier downloads (Gradio has its own copy by now)
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in chat.title)[:60].strip("-") or "chat"
    folder = Path(tempfile.mkdtemp(dir=EXPORT_DIR))
    if fmt == "json":
        path = folder / f"{stem}.json"
        path.write_text(json.dumps(to_json(chat), ensure_ascii=False, indent=1), encoding="utf-8")
    elif fmt in ("md", "markdown"):
        path = folder / f"{stem}.md"
        path.write_text(to_markdown(chat, name), encoding="utf-8")
    else:
        raise gr.Error(f"unknown export format {fmt!r}: json or md")
    return path
