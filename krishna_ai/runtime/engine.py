"""The engine contract: messages + sampling in, a stream of text chunks (with stats) out.

`Engine` is the one interface the UI, the CLI, evaluation, the sweep and the Space use; a type
checker verifies every back end against it (`mypy krishna_ai/runtime`). A new back end is one
module with a class that satisfies it and a branch in `runtime.load.load_engine`.

What every back end shares lives here, once: `prepare` (validate → slice check → image check →
fit the context), the turn markers generation stops at, the finish reason, and the error wrapping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from krishna_ai.core.errors import GenerationError, ImageError
from krishna_ai.core.prompting import Message, fit_history, has_image
from krishna_ai.core.sampling import SamplingParams
from krishna_ai.runtime.tiers import image_tiers_hint

Family = Literal["gemma3", "gemma3n", "other"]
FinishReason = Literal["end_of_turn", "run_on", "max_tokens", "stopped", "error"]

TURN_MARKERS = ("<end_of_turn>", "<start_of_turn>")
"""Control tokens generation stops at: the end of this turn, or the start of another. Only the first (or EOS)
means the reply ended; a reply that runs into a new turn is `run_on`, which is not ended."""
END_MARKERS = ("<end_of_turn>",)


def family_of(name: str) -> Family:
    """Model family from a transformers `model_type` or a GGUF `general.architecture`."""
    if name.startswith("gemma3n"):
        return "gemma3n"
    return "gemma3" if name.startswith("gemma3") else "other"


@dataclass(frozen=True)
class EngineInfo:
    """What the UI and the Studio need to know about a loaded engine."""

    name: str
    backend: str
    """"transformers", "llama.cpp", ..."""
    family: Family
    multimodal: bool
    context_length: int
    live_slices: bool = False
    """Can run an E4B-shaped Gemma 3n as a MatFormer slice per reply, without reloading."""
    adapter: str | None = None
    quantized: bool = False
    notes: tuple[str, ...] = ()


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    tokens: int = 0
    ttft_s: float | None = None
    """Seconds from the request (the engine's `stream()` called) to the first generated token."""
    total_s: float = 0.0
    """Seconds from the request to the end of the reply."""
    stopped: bool = False
    finish_reason: FinishReason | None = None
    """Why the reply ended: the model closed its turn, ran into a new turn without closing its own, hit
    max_new_tokens, was stopped, or failed."""
    slice: str | None = None
    """MatFormer slice the reply ran as (None: the full model)."""
    switch_note: str | None = None
    """What a live slice switch before this reply cost (None when no switch was needed)."""
    dropped_turns: int = 0
    """Earlier exchanges (question and reply) left out of the prompt so the chat fits the context."""
    started: float = field(default_factory=time.perf_counter, repr=False)
    """`time.perf_counter()` at the request: every engine passes the moment its `stream()` was called, so
    time to first token means the same on every back end (prompt checks, fitting and tokenising included)."""

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - (self.ttft_s or 0.0)
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else 0.0

    def line(self) -> str:
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "–"
        tail = f" · {FINISH_LABELS[self.finish_reason]}" if self.finish_reason else ""
        tail += f" · slice {self.slice}" if self.slice else ""
        tail += f" · {self.switch_note}" if self.switch_note else ""
        tail += (f" · {self.dropped_turns} earlier exchange{'s' if self.dropped_turns > 1 else ''} left out to fit "
                 "the context") if self.dropped_turns else ""
        return (f"{self.tokens} tokens · {self.tokens_per_s:.1f} tok/s · first token {ttft} · "
                f"prompt {self.prompt_tokens} tokens{tail}")

    def token(self, n: int = 1) -> None:
        """Count `n` generated tokens (the first one sets the time to first token)."""
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.started
        self.tokens += n

    def finish(self, *, stopped: bool, ended: bool, failed: bool, run_on: bool = False) -> None:
        """Record how the reply ended (called once, by the back end, when its generator closes)."""
        self.stopped = stopped
        self.total_s = time.perf_counter() - self.started
        if failed:
            self.finish_reason = "error"
        elif ended:
            self.finish_reason = "end_of_turn"
        elif run_on:
            self.finish_reason = "run_on"
        elif stopped:
            self.finish_reason = "stopped"
        else:
            self.finish_reason = "max_tokens"


FINISH_LABELS: dict[str, str] = {
    "end_of_turn": "ended", "run_on": "ran into a new turn", "max_tokens": "cut at max tokens", "stopped": "stopped",
    "error": "failed"}


class Reply:
    """An iterator over the text chunks of one reply; `.text` is the reply so far, `.stats` its numbers."""

    def __init__(self, chunks: Iterator[str], stop_event: threading.Event, stats: ReplyStats):
        self._chunks = chunks
        self._stop_event = stop_event
        self.stats = stats
        self.text = ""

    @classmethod
    def fixed(cls, text: str, stop_event: threading.Event | None = None) -> Reply:
        """A reply no model writes (a decline; written counsel that is the whole reply): one chunk, ended."""
        return cls(iter([text]), stop_event or threading.Event(), ReplyStats(ttft_s=0.0, finish_reason="end_of_turn"))

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        chunk = next(self._chunks)
        self.text += chunk
        return chunk

    def stop(self) -> None:
        """Ask generation to stop; the iterator then ends after the tokens already produced."""
        self._stop_event.set()

    def close(self) -> None:
        """Stop and join the generation (also done when the iterator is garbage-collected)."""
        self._stop_event.set()
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> str:
        """Consume the whole reply and return its text."""
        for _ in self:
            pass
        return self.text

    def completion(self) -> Completion:
        """Consume the whole reply: its stripped text, how it ended, and its token count."""
        text = self.read().strip()
        return Completion(text=text, finish_reason=self.stats.finish_reason or "max_tokens", tokens=self.stats.tokens)


@dataclass
class Completion:
    """One reply of `generate_batch` (evaluation): its text and how it ended."""

    text: str
    finish_reason: FinishReason
    tokens: int = 0


@runtime_checkable
class Engine(Protocol):
    """One loaded model. `stream()` may be called from many threads; a back end serialises what it must."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def name(self) -> str: ...

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens `messages` take in this model's chat format."""
        ...

    def check_slice(self, name: str) -> None:
        """Raise ConfigError unless this engine can run the MatFormer slice `name` live."""
        ...

    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        """Start a reply. Prompt errors (image to a text-only model, too long, bad slice) raise here,
        before anything runs; generation errors raise `GenerationError` from the iterator."""
        ...

    def generate_batch(self, conversations: list[list[Message]],
                       params: SamplingParams | None = None) -> list[Completion]:
        """Replies to several text conversations (evaluation throughput)."""
        ...

    def close(self) -> None:
        """Free what the engine holds (a model, a server's connections) once the replies in flight have ended;
        called when the Studio evicts it. The engine is not used after."""
        ...


def dropped_turns(before: list[Message], after: list[Message]) -> int:
    """How many exchanges `fit_history` left out between the messages asked for and those prepared."""
    return max(0, len(before) - len(after)) // 2


def prepare(engine: Engine, messages: list[Message], params: SamplingParams | None,
            slice: str | None = None) -> tuple[list[Message], SamplingParams]:
    """The steps before any back end generates: validate the sampling, check the slice and the
    images against what the engine can do, and cut the oldest history to fit the context."""
    params = (params or SamplingParams()).validated()
    if slice:
        engine.check_slice(slice)
    info = engine.info
    if has_image(messages) and not info.multimodal:
        raise ImageError(f"The model {info.name!r} reads text only. {image_tiers_hint()}")
    budget = info.context_length - params.max_new_tokens
    return fit_history(messages, engine.count_tokens, budget), params


def stop_token_ids(eos: int | None, lookup: Callable[[str], int | None], markers: tuple[str, ...] = TURN_MARKERS
                   ) -> list[int]:
    """EOS and every turn marker the vocabulary has (`lookup` returns None for a missing token)."""
    ids = {eos} | {lookup(marker) for marker in markers}
    return sorted(i for i in ids if i is not None and i >= 0)


def end_token_ids(eos: int | None, lookup: Callable[[str], int | None]) -> list[int]:
    """The stop tokens that mean the reply ended: EOS and <end_of_turn> (not a new turn's start)."""
    return stop_token_ids(eos, lookup, END_MARKERS)


def generation_failed(exc: BaseException) -> GenerationError:
    """One domain error for whatever a back end raised while generating."""
    if isinstance(exc, GenerationError):
        return exc
    return GenerationError(f"generation failed: {type(exc).__name__}: {exc}")
