"""The chat service behind the UI and the `/chat` API: personas, loaded engines, per-session stop.

Gradio handlers only wire widgets to a `Studio`; everything here is plain Python that tests can
drive without a browser (and with a scripted engine in place of a model).
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from krishna_ai.core.errors import ConfigError, ImageError, InputError
from krishna_ai.core.images import load_image
from krishna_ai.core.personas import Persona, get_persona, load_personas
from krishna_ai.core.prompting import Message, Turn, build_turn, sanitize
from krishna_ai.core.safety import crisis, crisis_reply
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.core.scope import Embed, Reason, judge
from krishna_ai.core.style import check_reply, story_due
from krishna_ai.history.store import HistoryStore
from krishna_ai.runtime.engine import Engine, Reply, ReplyStats
from krishna_ai.runtime.load import load_engine
from krishna_ai.runtime.tiers import check_adapter, check_spec, image_tiers_hint, split_model
from krishna_ai.studio.access import BusyError, ModelPolicy, UserLimits
from krishna_ai.studio.metrics import Metrics
from krishna_ai.studio.replies import Update

EngineLoader = Callable[[str, str | None], Engine]
MAX_MESSAGE_CHARS = 32_000
"""Longer messages are refused up front (the context would cut them anyway, after slow tokenising)."""
MAX_PERSONALITY_CHARS = 200
MAX_HISTORY_MESSAGES = 1000
"""The newest history messages read for a prompt; older ones could never fit a context (the fit drops them)."""


def bounded_history(history: list[Message]) -> list[Message]:
    """`history` with at most MAX_HISTORY_MESSAGES of its newest messages, each at most MAX_MESSAGE_CHARS
    (InputError names a longer one): the work per request is bounded whatever a client sends."""
    history = list(history or [])[-MAX_HISTORY_MESSAGES:]
    for n, m in enumerate(history, 1):
        content = m.get("content") if isinstance(m, dict) else None
        size = len(content) if isinstance(content, str) else len(str(content or ""))
        if size > MAX_MESSAGE_CHARS:
            raise InputError(f"history message {n} is {size:,} characters; the limit is {MAX_MESSAGE_CHARS:,} "
                             "(start a new chat)")
    return history


@dataclass
class Started:
    """A reply under way, and what it was grounded in."""

    reply: Reply
    persona: Persona
    turn: Turn
    """The prompt it answers: personality, cards, teachings, and the closing sentence added after it."""
    scope: Reason | None = None
    """Set when the message is outside the persona's scope: the reply is then its decline (no model ran)."""


class Studio:
    """Shared by all sessions: the personas, an LRU of loaded engines, and stop flags per session."""

    def __init__(
        self,
        personas: dict[str, Persona] | None = None,
        *,
        default_model: str = "light",
        adapters: dict[str, str] | None = None,
        loader: EngineLoader | None = None,
        max_loaded: int = 3,
        policy: ModelPolicy | None = None,
        concurrency: int = 1,
        store: HistoryStore | None = None,
        history_error: str | None = None,
        limits: UserLimits | None = None,
        metrics: Metrics | None = None,
        scopes: bool = True,
        embed: Embed | None = None,
        admins: frozenset[str] | None = None,
        prompts_dir: Path | None = None,
        jobs: Any = None,
    ):
        self.personas = personas if personas is not None else load_personas()
        self.default_model = default_model
        self.adapters = dict(adapters or {})
        """Adapter merged at load, per model spec (e.g. {"light": "adapters/krishna-light"})."""
        self._loader: EngineLoader = loader or (lambda spec, adapter: load_engine(spec, adapter))
        self._check_spec: Callable[[str], None] = check_spec if loader is None else (lambda spec: None)
        """Refuses a spec that names nothing without loading it (a custom loader knows its own specs)."""
        if loader is None:  # a startup model or adapter that is not there fails now, not at a first reply
            check_spec(default_model)
            for adapter in self.adapters.values():
                check_adapter(adapter)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._max_loaded = max_loaded
        self._load_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        """A lock per model being loaded: a slow load never holds up replies from models already loaded."""
        self._stops: dict[str, threading.Event] = {}
        self._stops_lock = threading.Lock()
        self.concurrency = concurrency
        """Replies generated at once (the UI's queue): 1 for a model in this process, which runs one reply at
        a time anyway; more for a model server, which batches them."""
        self.store = store
        """Saved chats (None: history is off, because it was not asked for or `history_error` says why)."""
        self.history_error = history_error
        self.policy = policy
        """Which models a client may name (None: any, for library and CLI use; the app always sets one)."""
        self.limits = limits
        """Each user's share of replies (None: no limits, for library and CLI use)."""
        self.metrics = metrics
        """Counts of what the app does, served at /metrics (None: not counted)."""
        self.scopes = scopes
        """Whether a message outside a persona's [scope] gets its decline (False: every message is answered)."""
        self._embed = embed
        """The sentence vectors the scope gates judge with (None: the light model's, loaded on first need)."""
        self.admins = admins
        """Who may change what the server runs (edit and save personas): these logins; None: whoever uses
        the app (no logins, on this machine only); an empty set: nobody."""
        self.prompts_dir = prompts_dir
        """Where personas edited in the app are saved (None: saving is off)."""
        self.jobs = jobs
        """The workbench's job runner (studio/jobs.py: JobRunner); None: no Train, Evaluate or Export jobs."""
        self.router: Any = None
        """The llama-server router replies go through (`app.py --server-slots`), None: engines in this process."""
        self.trained: dict[str, str] = {}
        """Models trained in the app, offered in the model boxes: spec (`MODEL@ADAPTER`) -> label."""

    def add_trained(self, model: str, adapter: str, label: str) -> str:
        """Offer an adapter a training job made (merged into `model`) in every model box; its spec."""
        spec = f"{model}@{adapter}"
        self.trained = {**self.trained, spec: label}
        if self.policy is not None and spec not in self.policy.allowed:
            self.policy.allowed.append(spec)
        return spec

    def may_admin(self, user: str) -> bool:
        return self.admins is None or user in self.admins

    def add_persona(self, persona: Persona) -> None:
        """A persona saved while the app runs: offered from now on (a new dict: readers never see it change)."""
        self.personas = {**self.personas, persona.id: persona}

    # -- models -----------------------------------------------------------------------------
    def engine(self, spec: str | None = None, persona: Persona | None = None, *, plain: bool = False) -> Engine:
        """The engine for `spec` (default: the startup model), loading it on first use.

        The adapter merged at load is the one given at startup for this spec, else the persona's
        own adapter for it (e.g. Krishna's fine-tune of the light tier), else none.
        A failed load raises ModelUnavailable and leaves the engines already loaded untouched. While one model
        loads, the models already loaded keep answering. `plain`: no adapter at all (the model as it is).
        """
        spec = (spec or self.default_model).strip()
        adapter = None if plain else self.adapter(spec, persona)
        spec = split_model(spec)[0]
        key = f"{spec}@{adapter}" if adapter else spec
        with self._load_lock:  # held for dictionary work only, never while a model loads
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key: a second request for the same model waits for the first
            with self._load_lock:
                if key in self._engines:
                    return self._engines[key]
            try:
                engine = self._loader(spec, adapter)
            finally:
                with self._load_lock:
                    self._loading.pop(key, None)
            with self._load_lock:
                self._engines[key] = engine
                evicted = []
                while len(self._engines) > self._max_loaded:
                    evicted.append(self._engines.popitem(last=False)[1])
        for old in evicted:  # closed in the background: close() waits for a reply still streaming from it
            threading.Thread(target=old.close, name=f"close {old.name}", daemon=True).start()
        return engine

    def adapter(self, spec: str | None, persona: Persona | None = None) -> str | None:
        """The adapter merged into `spec` for `persona`: the one it names (`MODEL@ADAPTER`), else the startup one
        for this model, else the persona's own."""
        spec, named = split_model((spec or self.default_model).strip())
        return named or self.adapters.get(spec) or (persona.adapter_for(spec) if persona else None)

    def client_engine(self, spec: str | None, persona: Persona | None = None, *, plain: bool = False) -> Engine:
        """`engine()` for a spec a client sent: refused (InputError, nothing loaded) unless the policy allows it."""
        if spec and spec.strip() and self.policy is not None:
            spec = self.policy.check(spec)
        return self.engine(spec, persona, plain=plain)

    def loaded(self) -> list[str]:
        return list(self._engines)

    # -- stop -------------------------------------------------------------------------------
    def new_stop(self, session: str, event: threading.Event | None = None) -> threading.Event:
        event = event or threading.Event()
        with self._stops_lock:
            self._stops[session] = event
        return event

    def stop(self, session: str) -> bool:
        """Stop the reply being generated for `session`; True if one was running."""
        with self._stops_lock:
            event = self._stops.pop(session, None)
        if event is None:
            return False
        event.set()
        return True

    def _release(self, session: str, event: threading.Event) -> None:
        with self._stops_lock:
            if self._stops.get(session) is event:
                del self._stops[session]

    # -- chat -------------------------------------------------------------------------------
    def persona(self, persona_id: str) -> Persona:
        return get_persona(self.personas, persona_id)

    def start_reply(
        self,
        persona_id: str,
        history: list[Message],
        message: str,
        *,
        image: str | Path | None = None,
        model: str | None = None,
        personality: str | None = None,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
        slice: str | None = None,
        plain: bool = False,
        draft: Persona | None = None,
        rejected: Sequence[str] = (),
        **sampling: Any,
    ) -> Started:
        """Validate the request, retrieve its cards and start generating. Raises domain errors before any
        generation (a bad knowledge bank too: the persona fails, the app keeps serving). A valid request whose
        message is outside the persona's scope gets its decline as the reply (`Started.scope`; nothing generated).
        `plain`: the model without the persona's adapter (the Compare tab's "no adapter"). `draft`: a persona
        being edited (the Personas tab's try-out chat), used instead of the one named `persona_id`. `rejected`: the
        replies to this question that Retry hid (written counsel then moves on to the next card that fits)."""
        persona = draft if draft is not None else self.persona(persona_id)
        try:
            params = SamplingParams.for_persona(persona, **sampling)
        except ConfigError as exc:  # the request's sampling (the persona's was checked at load): its fault, named
            raise InputError(str(exc)) from None
        message = sanitize(message or "").strip()
        if not message and image is None:
            raise InputError("the message is empty: type a question (or attach an image)")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InputError(f"the message is {len(message):,} characters; the limit is {MAX_MESSAGE_CHARS:,}")
        if personality is not None and len(personality) > MAX_PERSONALITY_CHARS:
            raise InputError(f"'story about' is {len(personality):,} characters; give a name of at most "
                             f"{MAX_PERSONALITY_CHARS}")
        history = bounded_history(history)
        if slice and self.policy is not None and not self.policy.open_to_any:
            from krishna_ai.matformer import known_configs

            if slice not in known_configs():  # never a path to a file on the server
                raise InputError(f"unknown MatFormer size {slice!r}; choose one of: {', '.join(known_configs())}")
        if model and model.strip():  # a model not offered, or naming nothing, is refused, declined message or not
            model = self.policy.check(model) if self.policy is not None else model.strip()
            self._check_spec(split_model(model)[0])
        engine = None
        if image is not None:  # (an image message is never judged outside the scope: it is always answered)
            engine = self.client_engine(model, persona, plain=plain)
            if not engine.info.multimodal:
                raise ImageError(f"The model {engine.name!r} reads text only. {image_tiers_hint()}")
            if not persona.accepts_images:
                raise ImageError(f"The persona {persona.name!r} does not take images; "
                                 f"try one that does: {', '.join(self.image_personas()) or 'none'}.")
            image = load_image(image)
        reason = self.outside_scope(persona, history, message, image)
        if reason is not None and persona.scope is not None:  # the request was valid: the decline, not the model
            decline = Reply.fixed(persona.scope.decline, stop_event)
            return Started(decline, persona, Turn([], None, None, None, None), scope=reason)
        turn = build_turn(persona, history, message, personality=personality, image=image, rng=rng,
                          rejected=rejected)
        if turn.complete:  # the written counsel is the whole reply: no model is loaded or run
            return Started(Reply.fixed("", stop_event), persona, turn)
        engine = engine or self.client_engine(model, persona, plain=plain)  # loaded only for a reply it writes
        return Started(engine.stream(turn.messages, params, stop_event, slice=slice or None), persona, turn)

    def image_personas(self) -> list[str]:
        return [p.id for p in self.personas.values() if p.accepts_images]

    def chat(self, persona_id: str, history: list[Message], message: str, *, session: str = "",
             user: str | None = None, stop_event: threading.Event | None = None, endpoint: str = "library",
             **kwargs: Any) -> Iterator[Update]:
        """Stream a reply as `Update`s; the last one has done=True, stats and the style check.

        A message that speaks of a crisis (self-harm, abuse, a medical emergency) gets one Update: the fixed
        reply that points to real help (`core.safety`), before any model is loaded or run.

        Closing the iterator, setting `stop_event` (the client went away) or `stop(session)` stops generation.
        With `limits` set, `user` (a login, or a session) must be within its share (BusyError otherwise); a
        crisis reply is never refused. With `metrics` set, each reply is counted under `endpoint` (ui, api,
        openai, library) with how it ended.
        """
        if self.metrics is None:
            yield from self._admitted(persona_id, history, message, session, user, stop_event, **kwargs)
            return
        label = persona_id if persona_id in self.personas else "unknown"  # never a client's free text as a label
        outcome, stats = "stopped", None
        self.metrics.in_progress.inc()
        try:
            for update in self._admitted(persona_id, history, message, session, user, stop_event, **kwargs):
                if update.done:
                    outcome = "crisis" if update.safety else "outside" if update.scope else "ok"
                    stats = update.stats
                yield update
        except (BusyError, InputError) as exc:
            outcome = "busy" if isinstance(exc, BusyError) else "refused"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.in_progress.dec()
            self.metrics.finished(endpoint, label, outcome, None if outcome in ("crisis", "outside") else stats)

    def _admitted(self, persona_id: str, history: list[Message], message: str, session: str, user: str | None,
                  stop_event: threading.Event | None, **kwargs: Any) -> Iterator[Update]:
        kind = crisis(message or "")
        if kind is not None:
            if kwargs.get("draft") is None:
                self.persona(persona_id)  # an unknown persona is still an error
            stats = ReplyStats(ttft_s=0.0, finish_reason="end_of_turn")
            yield Update(crisis_reply(kind), done=True, stats=stats, violations=[], safety=kind)
            return
        if self.limits is not None and user is not None:
            with self.limits.admit(user):
                yield from self._chat(persona_id, history, message, session, stop_event, **kwargs)
        else:
            yield from self._chat(persona_id, history, message, session, stop_event, **kwargs)

    def outside_scope(self, persona: Persona, history: list[Message], message: str,
                      image: object | None = None) -> Reason | None:
        """Why `message` is outside the persona's scope (core/scope.py), or None when the persona answers it."""
        if not self.scopes or persona.scope is None:
            return None
        if self._embed is None and persona.scope.gate:
            from krishna_ai.runtime.embed import LightEmbedder

            with self._load_lock:
                if self._embed is None:
                    self._embed = LightEmbedder()
        verdict = judge(persona, sanitize(message or ""), self._embed, follow_up=bool(history),
                        image=image is not None)
        return verdict.reason if verdict else None

    def _chat(self, persona_id: str, history: list[Message], message: str, session: str,
              stop_event: threading.Event | None, **kwargs: Any) -> Iterator[Update]:
        stop_event = self.new_stop(session, stop_event)
        try:
            started = self.start_reply(persona_id, history, message, stop_event=stop_event, **kwargs)
            reply, persona, turn = started.reply, started.persona, started.turn
            who, sources = turn.personality, turn.sources
            with reply:
                if turn.opening is not None and not turn.complete:  # the written counsel, before the prompt is read
                    yield Update(turn.opening, personality=who, sources=sources)
                for _ in reply:
                    yield Update(turn.streamed(reply.text), personality=who, sources=sources)
            if started.scope is not None:
                yield Update(reply.text, done=True, stats=reply.stats, violations=[], scope=started.scope)
                return
            violations = check_reply(turn.written(reply.text), persona, reply.stats.finish_reason,
                                     story=story_due(persona, turn.cards), asked=sanitize(message or ""))
            yield Update(turn.finish(reply.text), done=True, stats=reply.stats, violations=violations, personality=who,
                         sources=sources)
        finally:
            stop_event.set()
            self._release(session, stop_event)


async def updates(studio: Studio, *args: Any, **kwargs: Any) -> AsyncIterator[Update]:
    """`studio.chat` as an async iterator. Gradio cancels an event (Stop, or a client that went away)
    by cancelling its task; the `finally` here then flips the stop flag, so generate really ends.
    A plain sync generator would only be closed when garbage-collected, generating on meanwhile.
    (Gradio handlers and the OpenAI-compatible API both stream through this.)"""
    stop = threading.Event()
    updates = studio.chat(*args, stop_event=stop, **kwargs)
    try:
        while True:
            update = await anyio.to_thread.run_sync(next, updates, None)
            if update is None:
                return
            yield update
    finally:
        stop.set()
