"""Saved chats in the UI and the API: what a chat looks like in the Chatbot, what a reply is saved with,
and the sidebar (new, resume, rename, delete, search, export, import).

The user is the login (`--auth`), else one local user. Every store call names that user, so a chat id
from someone else is refused by the store itself, whatever a client sends. When the store is down the
app keeps chatting, unsaved, and says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.chatfile import import_chat, to_json, to_markdown
from krishna_ai.errors import InputError, KrishnaError
from krishna_ai.history import LOCAL_USER, ChatInfo, HistoryError, HistoryStore, StoredMessage, check_image_size
from krishna_ai.studio import Studio, Update

EXPORT_DIR = Path(tempfile.gettempdir()) / "krishna_ai-exports"


def user_of(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or LOCAL_USER) if request is not None else LOCAL_USER


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
                                         "total_s": round(s.total_s, 3), "finish_reason": s.finish_reason},
        "style": [v.rule for v in update.violations or []],
        "personality": update.personality,
        "sources": [{"id": c.id, "title": c.title, "source": c.source} for c in update.sources],
    }


def save_question(store: HistoryStore, user: str, chat_id: str | None, persona_id: str,
                  history: list[dict]) -> tuple[str, list[dict]]:
    """Save the trailing user messages not saved yet (a new chat on the first); their ids go into `history`.
    Images are checked first, so a refused one leaves no empty chat behind."""
    history = list(history)
    i = len(history)
    while i > 0 and history[i - 1]["role"] == "user":
        i -= 1
    todo = [j for j in range(i, len(history)) if not message_id(history[j])]
    for j in todo:
        for f in content_files(history[j]["content"]):
            check_image_size(f)
    if not chat_id:
        chat_id = store.new_chat(user, persona_id).id
    for j in todo:
        m = history[j]
        files = content_files(m["content"])
        saved = store.add_message(user, chat_id, "user", content_text(m["content"]), image=files[-1] if files else None)
        history[j] = tag(m, saved)
    return chat_id, history


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
        gr.Warning(f"The refused question stays in the saved chat: {exc}")
    return chat_id, _untag_pending(history), gr.skip()


def _untag_pending(history: list[dict]) -> list[dict]:
    history = list(history)
    i = len(history)
    while i > 0 and history[i - 1]["role"] == "user":
        i -= 1
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
        return studio.store.add_message(user, cid, "assistant", update.text, meta=meta)
    except KrishnaError as exc:
        gr.Warning(f"This reply was not saved: {exc}")
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
    image: str | None = None
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
    if image is not None:
        check_image_size(image)
    if chat_id == "new":
        studio.persona(persona)  # an unknown persona fails here
        return ApiTurn(studio, user, None, persona, [], message or "", image, new=True)
    chat = studio.store.chat(user, chat_id)
    earlier = [{"role": m.role, "content": m.content} for m in chat.visible if m.content]
    return ApiTurn(studio, user, chat.id, chat.persona, earlier, message or "", image)


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


def _err(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def history_api(studio: Studio) -> None:
    """The saved-chat endpoints (inside a Blocks context): /chats, /chat_history, /chat_rename, /chat_delete,
    /chat_export, /chat_import, /chat_feedback. Each acts for the logged-in user only."""

    def store() -> HistoryStore:
        if studio.store is None:
            raise gr.Error(f"chat history is off on this server: {studio.history_error or 'no store'}")
        return studio.store

    def chats(query: str = "", request: gr.Request = None) -> list[dict]:  # type: ignore[assignment]
        """Your saved chats, latest first (`query`: only those whose title or messages contain it)."""
        try:
            return [{"id": c.id, "title": c.title, "persona": c.persona, "updated_at": c.updated_at.isoformat()}
                    for c in store().chats(user_of(request), query)]
        except KrishnaError as exc:
            raise _err(exc) from None

    def chat_history(chat_id: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """One of your chats, every message with its id, feedback and metadata (the JSON export format)."""
        try:
            chat = store().chat(user_of(request), chat_id)
        except KrishnaError as exc:
            raise _err(exc) from None
        out = to_json(chat)
        for m, row in zip(chat.messages, out["messages"], strict=True):
            row["id"] = m.id
        return {"id": chat.id, **out}

    def chat_rename(chat_id: str, title: str, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Rename one of your chats; returns the new title."""
        try:
            return store().rename(user_of(request), chat_id, title).title
        except KrishnaError as exc:
            raise _err(exc) from None

    def chat_delete(chat_id: str, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Delete one of your chats for good."""
        try:
            store().delete(user_of(request), chat_id)
        except KrishnaError as exc:
            raise _err(exc) from None
        return chat_id

    def chat_export(chat_id: str, format: str = "json", request: gr.Request = None) -> str:  # type: ignore[assignment]
        """One of your chats as text: "json" (the import format) or "md" (Markdown)."""
        try:
            chat = store().chat(user_of(request), chat_id)
        except KrishnaError as exc:
            raise _err(exc) from None
        if format == "json":
            return json.dumps(to_json(chat), ensure_ascii=False, indent=1)
        if format in ("md", "markdown"):
            return to_markdown(chat, persona_name(studio, chat))
        raise gr.Error(f"unknown export format {format!r}: json or md")

    def chat_import(file: gr.FileData, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Import a chat exported as JSON into your history; returns its new id."""
        try:
            path = Path(uploaded(file["path"] if isinstance(file, dict) else getattr(file, "path", file),
                                 "the chat file") or "")
            raw = path.read_bytes()
            return import_chat(store(), user_of(request), raw, path.name, set(studio.personas)).id
        except KrishnaError as exc:
            raise _err(exc) from None

    def chat_feedback(message_id: str, value: int | None = 1, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Like (1), dislike (-1) or clear (null) one of your saved replies (ids from /chat_history or /reply)."""
        try:
            store().feedback(user_of(request), message_id, value)
        except KrishnaError as exc:
            raise _err(exc) from None
        return str(message_id)

    for fn in (chats, chat_history, chat_rename, chat_delete, chat_export, chat_import, chat_feedback):
        gr.api(fn, api_name=fn.__name__, queue=False)


# -- the sidebar ----------------------------------------------------------------------------------------
@dataclass
class Sidebar:
    new: gr.Button
    search: gr.Textbox
    chats: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    export_md: gr.Button
    export_json: gr.Button
    export_out: gr.File
    import_btn: gr.UploadButton


def build_sidebar(studio: Studio) -> Sidebar:
    """The chats sidebar (inside a Blocks context). With history off it only says so, and why."""
    on = studio.store is not None
    with gr.Sidebar(label="Chats", open=on, elem_id="chats-sidebar"):
        gr.Markdown("Your chats are saved." if on else
                    f"⚠️ Chat history is off: {studio.history_error or 'started with --no-history'}. "
                    "Chats are not saved.", elem_id="history-status")
        new = gr.Button("+ New chat", elem_id="new-chat", visible=on)
        search = gr.Textbox(placeholder="Search your chats", show_label=False, elem_id="chat-search", visible=on)
        chats = gr.Radio([], label="Your chats", elem_id="chat-list", visible=on)
        title = gr.Textbox(label="Title of this chat", elem_id="chat-title", visible=on)
        with gr.Row(visible=on):
            rename = gr.Button("Rename", size="sm", elem_id="rename-chat")
            delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-chat")
        with gr.Row(visible=on):
            export_md = gr.Button("Export .md", size="sm", elem_id="export-md")
            export_json = gr.Button("Export .json", size="sm", elem_id="export-json")
        export_out = gr.File(label="Download", visible=False, elem_id="chat-export", interactive=False)
        import_btn = gr.UploadButton("Import .json", file_types=[".json"], size="sm", elem_id="chat-import",
                                     visible=on)
    return Sidebar(new, search, chats, title, rename, delete, export_md, export_json, export_out, import_btn)


def wire_sidebar(studio: Studio, demo: gr.Blocks, sidebar: Sidebar, *, chatbot: gr.Chatbot, chat_id: gr.State,
                 persona_dd: gr.Dropdown, persona_outputs: list, on_persona: Any, new_chat: Any,
                 new_chat_outputs: list) -> None:
    """Events of the sidebar and of the thumbs under each reply. `on_persona(id)` gives `persona_outputs` for a
    persona (its chat id and title last); `new_chat(persona)` gives `new_chat_outputs` (the chat list last)."""
    store = studio.store

    def on_like(history: list[dict], cid: str | None, data: gr.LikeData, request: gr.Request):
        if store is None:
            return
        index = data.index if isinstance(data.index, int) else data.index[0]
        mid = message_id(history[index]) if 0 <= index < len(history) else None
        if mid is None:
            gr.Info("Only saved replies can be rated (the greeting and unsaved replies cannot).")
            return
        liked = data.liked
        value = 1 if liked is True or liked == "Like" else -1 if liked is False or liked == "Dislike" else None
        try:
            store.feedback(user_of(request), mid, value)
        except KrishnaError as exc:
            raise _err(exc) from None

    chatbot.like(on_like, [chatbot, chat_id], None, queue=False)

    def list_chats(query: str, cid: str | None, request: gr.Request):
        try:
            return gr.Radio(choices=choices(store, user_of(request), query), value=cid)
        except KrishnaError as exc:
            gr.Warning(str(exc))
            return gr.skip()

    demo.load(list_chats, [sidebar.search, chat_id], sidebar.chats, queue=False)
    sidebar.search.change(list_chats, [sidebar.search, chat_id], sidebar.chats, queue=False)

    def open_chat(cid: str | None, request: gr.Request):
        if not cid or store is None:
            return [gr.skip()] * len(persona_outputs) + [gr.skip()]
        try:
            chat = store.chat(user_of(request), cid)
        except KrishnaError as exc:
            raise _err(exc) from None
        if chat.persona not in studio.personas:
            raise gr.Error(f"this chat was held with the persona {chat.persona!r}, which this app does not have")
        rows = chat_rows(chat, studio.persona(chat.persona).greeting)
        liked = {m.id: m.feedback for m in chat.visible}
        feedback = [{1: "Like", -1: "Dislike"}.get(liked.get(int(message_id(r)[1:])) if message_id(r) else None)
                    for r in rows if r["role"] == "assistant"]
        updates = list(on_persona(chat.persona))
        updates[0] = gr.Chatbot(value=rows, feedback_value=feedback)
        updates[-2:] = [chat.id, chat.title]
        return [*updates, chat.persona]

    sidebar.chats.input(open_chat, sidebar.chats, [*persona_outputs, persona_dd], queue=False)

    def rename(cid: str | None, title: str, query: str, request: gr.Request):
        if store is None or not cid:
            raise gr.Error("Nothing to rename yet: this chat is saved once you send a message.")
        try:
            store.rename(user_of(request), cid, title)
        except KrishnaError as exc:
            raise _err(exc) from None
        return gr.Radio(choices=choices(store, user_of(request), query), value=cid)

    sidebar.rename.click(rename, [chat_id, sidebar.title, sidebar.search], sidebar.chats, queue=False)
    sidebar.title.submit(rename, [chat_id, sidebar.title, sidebar.search], sidebar.chats, queue=False)

    def delete(cid: str | None, persona_id: str, query: str, request: gr.Request):
        if store is None or not cid:
            raise gr.Error("Nothing to delete: this chat was never saved.")
        try:
            store.delete(user_of(request), cid)
        except KrishnaError as exc:
            raise _err(exc) from None
        *fresh, _ = new_chat(persona_id)
        return (*fresh, gr.Radio(choices=choices(store, user_of(request), query), value=None))

    sidebar.delete.click(delete, [chat_id, persona_dd, sidebar.search], new_chat_outputs, queue=False)

    def export(fmt: str):
        def fn(cid: str | None, request: gr.Request):
            if store is None or not cid:
                raise gr.Error("Nothing to export yet: this chat is saved once you send a message.")
            try:
                chat = store.chat(user_of(request), cid)
                path = export_file(chat, fmt, persona_name(studio, chat))
            except KrishnaError as exc:
                raise _err(exc) from None
            return gr.File(value=str(path), visible=True)
        return fn

    sidebar.export_md.click(export("md"), chat_id, sidebar.export_out, queue=False)
    sidebar.export_json.click(export("json"), chat_id, sidebar.export_out, queue=False)

    def import_file(file: str | None, request: gr.Request):
        if store is None or not file:
            raise gr.Error("No file to import.")
        path = Path(file)
        try:
            chat = import_chat(store, user_of(request), path.read_bytes(), path.name, set(studio.personas))
        except KrishnaError as exc:
            raise _err(exc) from None
        gr.Info(f"Imported “{chat.title}”.")
        return gr.Radio(choices=choices(store, user_of(request)), value=chat.id)

    sidebar.import_btn.upload(import_file, sidebar.import_btn, sidebar.chats, queue=False).then(
        open_chat, sidebar.chats, [*persona_outputs, persona_dd], queue=False)
