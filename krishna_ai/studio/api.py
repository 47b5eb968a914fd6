"""The documented API (inside the Blocks context): /chat (streamed), /reply (whole, with what it rests on),
and the saved-chat endpoints /chats, /chat_history, /chat_rename, /chat_delete, /chat_export, /chat_import,
/chat_feedback. Every endpoint acts for the logged-in user only, behind the same checks as the UI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr

from krishna_ai.core.errors import KrishnaError
from krishna_ai.history.chatfile import import_chat, to_json, to_markdown
from krishna_ai.history.store import HistoryStore
from krishna_ai.studio.replies import Update, reply_facts
from krishna_ai.studio.saving import (
    GENERATE,
    PartialReply,
    api_turn,
    gr_error,
    persona_name,
    quota_key,
    uploaded,
    user_of,
)
from krishna_ai.studio.service import Studio, updates


def reply_payload(update: Update) -> dict[str, Any]:
    """A finished reply as the `/reply` API returns it."""
    return {"reply": update.text, **reply_facts(update, card_text=True)}


def register_api(studio: Studio) -> None:
    """Every endpoint (call inside the app's Blocks context)."""
    _history_api(studio)

    async def chat(message: str, persona: str = "krishna", image: gr.FileData | None = None,
                   temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                   max_new_tokens: int | None = None, model: str | None = None, personality: str | None = None,
                   slice: str | None = None, chat_id: str | None = None,
                   request: gr.Request = None) -> AsyncIterator[str]:  # type: ignore[assignment]
        """Stream a reply from a persona; yields the growing reply text.

        Args:
            message: the question.
            persona: persona id (krishna, maize, aurora, pet, or one you added).
            image: optional image file (gradio_client.handle_file), for image-capable personas and tiers.
            temperature: override the persona's sampling temperature (0 = greedy).
            top_p: override top_p.
            top_k: override top_k.
            max_new_tokens: override the reply length limit.
            model: model tier / folder / hub id; default the app's model.
            personality: whom the closing story is about (personas with stories).
            slice: MatFormer size to run an E4B-shaped Gemma 3n as (e.g. "e2b"); default the full model.
            chat_id: continue one of your saved chats (its persona and history; see /chats), or "new" to save
                this exchange as a new chat; empty: nothing is saved.
        """
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens}
        turn = None
        with PartialReply(lambda u, finish: turn.save(u, model, slice, sampling, finish=finish)
                          if turn is not None else None) as partial:
            try:
                path = uploaded(image["path"] if isinstance(image, dict) else getattr(image, "path", image),
                                "the image") if image is not None else None
                turn = api_turn(studio, request, chat_id, persona, message, path)
                async for update in updates(studio, turn.persona, turn.earlier, message, image=path,
                                             user=quota_key(request), endpoint="api",
                                             model=model, personality=personality, slice=slice or None,
                                             **sampling):
                    partial.seen(update)
                    turn.begin()  # the reply has started: now the question is saved
                    if update.done:
                        partial.finished()
                        turn.save(update, model, slice, sampling)
                    yield update.text
            except (KrishnaError, ValueError) as exc:
                partial.failed()  # a failure is not saved
                raise gr_error(exc) from None

    gr.api(chat, api_name="chat", concurrency_id=GENERATE, concurrency_limit=studio.concurrency)

    async def reply(message: str, persona: str = "krishna", temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, max_new_tokens: int | None = None,
                    model: str | None = None, personality: str | None = None, slice: str | None = None,
                    chat_id: str | None = None, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """A whole reply with what it rests on: text, finish reason, stats, style check and sources.

        Args:
            message: the question.
            persona: persona id.
            temperature: override the persona's sampling temperature (0 = greedy).
            top_p: override top_p.
            top_k: override top_k.
            max_new_tokens: override the reply length limit.
            model: model tier; default the app's model.
            personality: whom the closing story is about (personas with stories).
            slice: MatFormer size for an E4B-shaped Gemma 3n; default the full model.
            chat_id: continue one of your saved chats, or "new" to start one; empty: nothing is saved.
                The result then carries chat_id and the saved reply's message_id (for /chat_feedback).
        """
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens}
        turn = None
        with PartialReply(lambda u, finish: turn.save(u, model, slice, sampling, finish=finish)
                          if turn is not None else None) as partial:
            try:
                turn = api_turn(studio, request, chat_id, persona, message, None)
                async for update in updates(studio, turn.persona, turn.earlier, message, model=model,
                                             user=quota_key(request), endpoint="api",
                                             personality=personality, slice=slice or None, **sampling):
                    partial.seen(update)
                    turn.begin()  # the reply has started: now the question is saved
            except (KrishnaError, ValueError) as exc:
                partial.failed()  # a failure is not saved
                raise gr_error(exc) from None
        final = partial.last
        if final is None or final.stats is None:
            raise gr.Error("the reply was stopped before it finished")
        saved = turn.save(final, model, slice, sampling)
        payload = reply_payload(final)
        if turn.chat_id:
            payload.update(chat_id=turn.chat_id, message_id=f"m{saved.id}" if saved else None)
        return payload

    gr.api(reply, api_name="reply", concurrency_id=GENERATE, concurrency_limit=studio.concurrency)


def _history_api(studio: Studio) -> None:
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
            raise gr_error(exc) from None

    def chat_history(chat_id: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """One of your chats, every message with its id, feedback and metadata (the JSON export format)."""
        try:
            chat = store().chat(user_of(request), chat_id)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        out = to_json(chat)
        for m, row in zip(chat.messages, out["messages"], strict=True):
            row["id"] = m.id
        return {"id": chat.id, **out}

    def chat_rename(chat_id: str, title: str, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Rename one of your chats; returns the new title."""
        try:
            return store().rename(user_of(request), chat_id, title).title
        except KrishnaError as exc:
            raise gr_error(exc) from None

    def chat_delete(chat_id: str, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Delete one of your chats for good."""
        try:
            store().delete(user_of(request), chat_id)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return chat_id

    def chat_export(chat_id: str, format: str = "json", request: gr.Request = None) -> str:  # type: ignore[assignment]
        """One of your chats as text: "json" (the import format) or "md" (Markdown)."""
        try:
            chat = store().chat(user_of(request), chat_id)
        except KrishnaError as exc:
            raise gr_error(exc) from None
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
            raise gr_error(exc) from None

    def chat_feedback(message_id: str, value: int | None = 1, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Like (1), dislike (-1) or clear (null) one of your saved replies (ids from /chat_history or /reply)."""
        try:
            store().feedback(user_of(request), message_id, value)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return str(message_id)

    for fn in (chats, chat_history, chat_rename, chat_delete, chat_export, chat_import, chat_feedback):
        gr.api(fn, api_name=fn.__name__, queue=False)
