"""The Compare tab and its API: one question to two models side by side, both streamed at once, each with its
stats, style check and sources; the user says which is better (or a tie, or both bad); the vote is saved with
both replies and what they rest on (history/votes.py), feeds `feedback export` as a preference pair, and
moves the persona's leaderboard.

    Client(url).submit("I failed my exam.", "krishna", "light-gguf", "light-gguf", False, True,
                       api_name="/compare")              # streams {"a": …, "b": …}; the last has compare_id
    Client(url).predict(compare_id, "a", api_name="/vote")
    Client(url).predict("krishna", api_name="/leaderboard")

A contestant is a model the server offers (the same policy as the chat's model box), with the persona's own
adapter merged or `plain` (the model as it is): "is the fine-tune better than its base?" is the question
this tab is most often asked. Both replies are asked for at once: two different contestants run side by
side on their own engines; the same model on both sides answers one after the other (an in-process engine
serves one reply at a time); a model server runs both in its slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import gradio as gr

from krishna_ai.core.errors import InputError, KrishnaError
from krishna_ai.history.votes import Side, format_standings, leaderboard, save_compare, vote
from krishna_ai.studio.replies import Update, reply_facts, sources_line, verdict_line
from krishna_ai.studio.saving import GENERATE, gr_error, quota_key, reply_meta, say, user_of
from krishna_ai.studio.service import Studio, updates

PLAIN = "|plain"
"""Suffix of a model box value for the model without the persona's adapter."""
VOTES = (("a", "👈 A is better"), ("b", "👉 B is better"), ("tie", "🤝 Tie"), ("bad", "👎 Both bad"))
HEADERS = ["model", "games", "wins", "losses", "ties", "both bad", "win rate [95% CI]", "score (Bradley–Terry)"]


@dataclass(frozen=True)
class Contestant:
    model: str
    plain: bool = False

    @classmethod
    def parse(cls, value: str) -> Contestant:
        value = (value or "").strip()
        return cls(value.removesuffix(PLAIN), True) if value.endswith(PLAIN) else cls(value)

    def label(self, studio: Studio, persona_id: str) -> str:
        """The leaderboard's name for it: model spec and the adapter merged ("no adapter" when none is)."""
        spec = (self.model or studio.default_model).strip()
        adapter = None if self.plain else studio.adapter(spec, studio.persona(persona_id))
        return f"{spec} · {Path(adapter).name}" if adapter else f"{spec} · no adapter"


def contestant_choices(model_choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each offered model twice: with the persona's adapter, and plain."""
    return [c for label, spec in model_choices for c in ((label, spec), (f"{label} · no adapter", spec + PLAIN))]


async def both(studio: Studio, persona: str, question: str, a: Contestant, b: Contestant, *, session: str,
               user: str, sampling: dict[str, Any] | None = None
               ) -> AsyncIterator[tuple[str, Update | None, Exception | None]]:
    """The two replies' updates as they come: (side, update, None), or (side, None, error) when one fails.
    Closing this (Stop, a client gone) cancels both, which stops both generations."""
    queue: asyncio.Queue[tuple[str, Update | None, Exception | None] | None] = asyncio.Queue()

    async def pump(side: str, who: Contestant) -> None:
        try:
            async for update in updates(studio, persona, [], question, session=f"{session}:{side}", user=user,
                                         endpoint="compare", model=who.model or None, plain=who.plain,
                                         **(sampling or {})):
                await queue.put((side, update, None))
        except (KrishnaError, ValueError) as exc:
            await queue.put((side, None, exc))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump("a", a)), asyncio.create_task(pump("b", b))]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _facts_line(update: Update) -> str:
    parts = [update.stats.line() if update.stats else "", verdict_line(update), sources_line(update)]
    return "\n\n".join(p for p in parts if p)


class _Pair:
    """Both sides of one comparison as they stream."""

    def __init__(self, studio: Studio, persona: str, a: Contestant, b: Contestant):
        self.labels = {"a": a.label(studio, persona), "b": b.label(studio, persona)}
        self.specs = {"a": (a.model or studio.default_model).strip(), "b": (b.model or studio.default_model).strip()}
        self.adapters = {s: None if c.plain else studio.adapter(self.specs[s], studio.persona(persona))
                         for s, c in (("a", a), ("b", b))}
        self.text = {"a": "", "b": ""}
        self.final: dict[str, Update] = {}
        self.error: dict[str, str] = {}

    def take(self, side: str, update: Update | None, error: Exception | None) -> None:
        if error is not None:
            self.error[side] = say(error)
        elif update is not None:
            self.text[side] = update.text
            if update.done:
                self.final[side] = update

    @property
    def done(self) -> bool:
        return len(self.final) == 2

    def side(self, studio: Studio, side: str) -> Side:
        update = self.final[side]
        meta = reply_meta(update, model=self.specs[side], adapter=self.adapters[side], slice=None, sampling={})
        return Side(self.labels[side], update.text, meta)


def _save(studio: Studio, user: str, persona: str, question: str, pair: _Pair) -> str | None:
    if studio.store is None:
        return None
    return save_compare(studio.store, user, persona, question, pair.side(studio, "a"), pair.side(studio, "b"))


def _board(studio: Studio, persona: str) -> list[list[Any]]:
    if studio.store is None:
        return []
    return format_standings(leaderboard(studio.store, persona))


def build_compare_tab(studio: Studio, model_choices: list[tuple[str, str]], persona: str) -> gr.Dropdown:
    """The Compare tab's widgets and events (inside a `gr.Tab`), and the /compare, /vote, /leaderboard API;
    returns its persona list (the app refreshes it when a persona is saved)."""
    personas = studio.personas
    choices = contestant_choices(model_choices)
    default = studio.default_model
    gr.Markdown("Ask two models the same question and say which answered better. Votes are saved with both "
                "replies, become preference pairs in `feedback export`, and move the leaderboard below.")
    with gr.Row():
        persona_dd = gr.Dropdown([(p.name, p.id) for p in personas.values()], value=persona,
                                 label="Persona to compare", elem_id="compare-persona")
        a_dd = gr.Dropdown(choices, value=default, label="Model A", elem_id="compare-model-a")
        b_dd = gr.Dropdown(choices, value=default + PLAIN, label="Model B", elem_id="compare-model-b")
    question = gr.Textbox(label="Question", placeholder="One question, answered by both", elem_id="compare-question")
    with gr.Row():
        go = gr.Button("Compare", variant="primary", elem_id="compare-go")
        stop = gr.Button("Stop both", variant="stop", interactive=False, elem_id="compare-stop")
    with gr.Row(equal_height=True):
        with gr.Column():
            a_head = gr.Markdown("**A**")
            a_reply = gr.Markdown("", elem_id="compare-reply-a", min_height=120)
            a_facts = gr.Markdown("", elem_id="compare-facts-a")
        with gr.Column():
            b_head = gr.Markdown("**B**")
            b_reply = gr.Markdown("", elem_id="compare-reply-b", min_height=120)
            b_facts = gr.Markdown("", elem_id="compare-facts-b")
    with gr.Row():
        buttons = [gr.Button(text, interactive=False, elem_id=f"vote-{w}") for w, text in VOTES]
    voted = gr.Markdown("" if studio.store is not None else
                        f"Votes are off: chat history is off on this server ({studio.history_error or 'no store'}).",
                        elem_id="compare-voted")
    board = gr.Dataframe(headers=HEADERS, value=lambda: _board(studio, persona), label="Leaderboard (this persona)",
                         interactive=False, elem_id="leaderboard")
    compare_id = gr.State(None)
    off = [gr.update(interactive=False)] * len(buttons)  # an update: gr.Button() here would add a button

    async def run(persona_id: str, a_value: str, b_value: str, text: str, request: gr.Request):
        text = (text or "").strip()
        if not text:
            raise gr.Error("The question is empty: type one for both models to answer.")
        a, b = Contestant.parse(a_value), Contestant.parse(b_value)
        try:
            pair = _Pair(studio, persona_id, a, b)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        heads = (f"**A** · {pair.labels['a']}", f"**B** · {pair.labels['b']}")
        yield (*heads, "⏳", "", "⏳", "", None, gr.Button(interactive=True), "", *off)
        async for side, update, error in both(studio, persona_id, text, a, b, session=request.session_hash or "",
                                              user=quota_key(request)):
            pair.take(side, update, error)
            facts = {s: _facts_line(pair.final[s]) if s in pair.final else "" for s in "ab"}
            shown = {s: f"⚠️ {pair.error[s]}" if s in pair.error else pair.text[s] for s in "ab"}
            yield (*heads, shown["a"], facts["a"], shown["b"], facts["b"], gr.skip(), gr.skip(), gr.skip(), *off)
        cid, note = None, ""
        if pair.done:
            try:
                cid = await anyio.to_thread.run_sync(_save, studio, user_of(request), persona_id, text, pair)
            except KrishnaError as exc:
                note = f"This comparison was not saved: {say(exc)}"
            if cid is None and not note:
                note = "Votes are off on this server (no chat history)."
        elif pair.error:
            note = "One side failed, so there is nothing to vote on."
        votable = [gr.Button(interactive=cid is not None)] * len(buttons)
        yield (*heads, gr.skip(), gr.skip(), gr.skip(), gr.skip(), cid, gr.Button(interactive=False), note, *votable)

    outputs = [a_head, b_head, a_reply, a_facts, b_reply, b_facts, compare_id, stop, voted, *buttons]
    event = go.click(run, [persona_dd, a_dd, b_dd, question], outputs, concurrency_id=GENERATE,
                     concurrency_limit=studio.concurrency, api_visibility="private")
    submitted = question.submit(run, [persona_dd, a_dd, b_dd, question], outputs, concurrency_id=GENERATE,
                                api_visibility="private")

    def on_stop(request: gr.Request):
        for side in "ab":
            studio.stop(f"{request.session_hash or ''}:{side}")
        return gr.Button(interactive=False), "⏹ stopped: a stopped comparison is not saved"

    stop.click(on_stop, None, [stop, voted], queue=False, cancels=[event, submitted])

    for winner, button in zip((w for w, _ in VOTES), buttons, strict=True):
        def on_vote(cid: str | None, persona_id: str, request: gr.Request, winner: str = winner):
            if studio.store is None or not cid:
                raise gr.Error("There is no saved comparison to vote on: compare first.")
            try:
                vote(studio.store, user_of(request), cid, winner)
                rows = _board(studio, persona_id)
            except KrishnaError as exc:
                raise gr_error(exc) from None
            return f"✅ Vote saved: {dict(VOTES)[winner]}.", rows

        button.click(on_vote, [compare_id, persona_dd], [voted, board], queue=False, api_visibility="private")

    def on_persona(persona_id: str):
        try:
            return _board(studio, persona_id)
        except KrishnaError as exc:
            raise gr_error(exc) from None

    persona_dd.input(on_persona, persona_dd, board, queue=False)
    _register_api(studio)
    return persona_dd


def _register_api(studio: Studio) -> None:
    async def compare(question: str, persona: str = "krishna", model_a: str | None = None,
                      model_b: str | None = None, plain_a: bool = False, plain_b: bool = True,
                      request: gr.Request = None) -> AsyncIterator[dict]:  # type: ignore[assignment]
        """Two replies to one question, streamed side by side; the last value has compare_id (for /vote).

        Args:
            question: the question both answer.
            persona: persona id.
            model_a: model for A (a tier the server offers); default the app's model.
            model_b: model for B; default the app's model.
            plain_a: A without the persona's adapter.
            plain_b: B without the persona's adapter (default: the base model against A's fine-tune).
        """
        text = (question or "").strip()
        if not text:
            raise gr.Error("the question is empty")
        a, b = Contestant(model_a or "", plain_a), Contestant(model_b or "", plain_b)
        try:
            pair = _Pair(studio, persona, a, b)
            async for side, update, error in both(studio, persona, text, a, b, user=quota_key(request),
                                                  session=f"api-{request.session_hash or id(pair)}"):
                pair.take(side, update, error)
                if error is not None:
                    raise InputError(f"{side.upper()} ({pair.labels[side]}) failed: {pair.error[side]}")
                yield {"a": pair.text["a"], "b": pair.text["b"], "done": False}
            cid = await anyio.to_thread.run_sync(_save, studio, user_of(request), persona, text, pair)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        yield {"a": pair.text["a"], "b": pair.text["b"], "done": True, "compare_id": cid,
               "models": pair.labels, "facts": {s: reply_facts(pair.final[s]) for s in "ab"}}

    gr.api(compare, api_name="compare", concurrency_id=GENERATE, concurrency_limit=studio.concurrency)

    def vote_api(compare_id: str, winner: str, request: gr.Request = None) -> dict:  # type: ignore[assignment]
        """Say which reply of one of your comparisons was better: a, b, tie or bad (both bad)."""
        if studio.store is None:
            raise gr.Error(f"votes are off: chat history is off on this server ({studio.history_error or 'no store'})")
        try:
            saved = vote(studio.store, user_of(request), compare_id, winner)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return {"compare_id": saved.id, "winner": saved.winner, "a": saved.a.model, "b": saved.b.model}

    gr.api(vote_api, api_name="vote", queue=False)

    def leaderboard_api(persona: str = "krishna") -> list[dict]:
        """A persona's leaderboard: each model compared so far, its games, win rate with a 95% interval, score."""
        try:
            studio.persona(persona)
            rows = _board(studio, persona)
        except KrishnaError as exc:
            raise gr_error(exc) from None
        return [dict(zip(HEADERS, row, strict=True)) for row in rows]

    gr.api(leaderboard_api, api_name="leaderboard", queue=False)
