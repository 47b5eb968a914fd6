"""The chats sidebar: new, resume, rename, delete, search, export, import, and the thumbs under each reply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.chatfile import import_chat
from krishna_ai.history.schema import MAX_QUERY, MAX_TITLE
from krishna_ai.studio.saving import chat_rows, choices, export_file, gr_error, message_id, persona_name, say, user_of
from krishna_ai.studio.service import Studio


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
        search = gr.Textbox(placeholder="Search your chats", show_label=False, max_length=MAX_QUERY,
                            elem_id="chat-search",
                            visible=on)
        chats = gr.Radio([], label="Your chats", elem_id="chat-list", visible=on)
        title = gr.Textbox(label="Title of this chat", max_length=MAX_TITLE, elem_id="chat-title", visible=on)
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
    persona (its chat id and title last); `new_chat(persona)` gives `new_chat_outputs` (the chat list last).
    Every event that can fail or warn is queued: in Gradio 6 a `queue=False` event shows no toast at all, so
    its errors would vanish (tests/test_browser.py checks an import error's toast)."""
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
            raise gr_error(exc) from None

    chatbot.like(on_like, [chatbot, chat_id], None)

    def list_chats(query: str, cid: str | None, request: gr.Request):
        try:
            return gr.Radio(choices=choices(store, user_of(request), query), value=cid)
        except KrishnaError as exc:
            gr.Warning(say(exc))
            return gr.skip()

    demo.load(list_chats, [sidebar.search, chat_id], sidebar.chats)
    sidebar.search.change(list_chats, [sidebar.search, chat_id], sidebar.chats)

    def open_chat(cid: str | None, request: gr.Request):
        if not cid or store is None:
            return [gr.skip()] * len(persona_outputs) + [gr.skip()]
        try:
            chat = store.chat(user_of(request), cid)
        except KrishnaError as exc:
            raise gr_error(exc) from None
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

    sidebar.chats.input(open_chat, sidebar.chats, [*persona_outputs, persona_dd])

    def rename(cid: str | None, title: str, query: str, request: gr.Request):
        if store is None or not cid:
            raise gr.Error("Nothing to rename yet: this chat is saved once you send a message.")
        try:
            store.rename(user_of(request), cid, title)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return gr.Radio(choices=choices(store, user_of(request), query), value=cid)

    sidebar.rename.click(rename, [chat_id, sidebar.title, sidebar.search], sidebar.chats)
    sidebar.title.submit(rename, [chat_id, sidebar.title, sidebar.search], sidebar.chats)

    def delete(cid: str | None, persona_id: str, query: str, request: gr.Request):
        if store is None or not cid:
            raise gr.Error("Nothing to delete: this chat was never saved.")
        try:
            store.delete(user_of(request), cid)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        *fresh, _ = new_chat(persona_id)
        return (*fresh, gr.Radio(choices=choices(store, user_of(request), query), value=None))

    sidebar.delete.click(delete, [chat_id, persona_dd, sidebar.search], new_chat_outputs)

    def export(fmt: str):
        def fn(cid: str | None, request: gr.Request):
            if store is None or not cid:
                raise gr.Error("Nothing to export yet: this chat is saved once you send a message.")
            try:
                chat = store.chat(user_of(request), cid)
                path = export_file(chat, fmt, persona_name(studio, chat))
            except KrishnaError as exc:
                raise gr_error(exc) from None
            return gr.File(value=str(path), visible=True)
        return fn

    sidebar.export_md.click(export("md"), chat_id, sidebar.export_out)
    sidebar.export_json.click(export("json"), chat_id, sidebar.export_out)

    def import_file(file: str | None, request: gr.Request):
        if store is None or not file:
            raise gr.Error("No file to import.")
        path = Path(file)
        try:
            chat = import_chat(store, user_of(request), path.read_bytes(), path.name, set(studio.personas))
        except KrishnaError as exc:  # a toast; the list stays as it was (and the chat on screen with it)
            gr.Warning(f"Not imported: {say(exc)}", duration=None)
            return gr.skip()
        gr.Info(f"Imported “{chat.title}”.")
        return gr.Radio(choices=choices(store, user_of(request)), value=chat.id)

    sidebar.import_btn.upload(import_file, sidebar.import_btn, sidebar.chats).then(
        open_chat, sidebar.chats, [*persona_outputs, persona_dd])
