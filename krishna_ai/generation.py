"""The engine: messages + sampling parameters in, a stream of text chunks out.

The UI, the CLI and evaluation all call `ChatEngine.stream`. `generate` runs in a thread feeding a
streamer; the returned `Reply` is an iterator of chunks that also carries per-reply stats. Stopping
(`Reply.stop()`, or closing the iterator when the consumer goes away) flips a stopping criterion,
so `generate` really ends, and the thread is joined. An exception inside `generate` is re-raised
in the consumer as a `GenerationError`, never a hang.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from krishna_ai.errors import ConfigError, GenerationError, ImageError, problems
from krishna_ai.models import LoadedModel, image_tiers_hint
from krishna_ai.personas import Persona
from krishna_ai.prompting import Message, fit_history, has_image, render_gemma_turns

JOIN_TIMEOUT_S = 10.0
POLL_S = 0.05


@dataclass
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def for_persona(cls, persona: Persona, **overrides: Any) -> SamplingParams:
        """The persona's defaults, with any non-None override applied, validated."""
        base = persona.sampling.model_dump()
        base.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(base) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        return cls(**base).validated()

    def validated(self) -> SamplingParams:
        bad = []
        if not isinstance(self.temperature, int | float) or not 0.0 <= self.temperature <= 2.0:
            bad.append(f"temperature must be between 0 and 2, got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0.0 < self.top_p <= 1.0:
            bad.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not 0 <= self.top_k <= 1000:
            bad.append(f"top_k must be an integer from 0 to 1000, got {self.top_k!r}")
        if (not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool)
                or not 1 <= self.max_new_tokens <= 4096):
            bad.append(f"max_new_tokens must be an integer from 1 to 4096, got {self.max_new_tokens!r}")
        if not isinstance(self.repetition_penalty, int | float) or not 1.0 <= self.repetition_penalty <= 2.0:
            bad.append(f"repetition_penalty must be between 1 and 2, got {self.repetition_penalty!r}")
        if bad:
            raise ConfigError(problems("invalid sampling parameters:", bad))
        return self


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    tokens: int = 0
    ttft_s: float | None = None
    """Seconds from the request to the first generated token."""
    total_s: float = 0.0
    stopped: bool = False
    slice: str | None = None
    """MatFormer slice the reply ran as (None: the full model)."""
    switch_note: str | None = None
    """What a live slice switch before this reply cost (None when no switch was needed)."""

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - (self.ttft_s or 0.0)
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else 0.0

    def line(self) -> str:
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "–"
        tail = " · stopped" if self.stopped else ""
        tail += f" · slice {self.slice}" if self.slice else ""
        tail += f" · {self.switch_note}" if self.switch_note else ""
        return (f"{self.tokens} tokens · {self.tokens_per_s:.1f} tok/s · first token {ttft} · "
                f"prompt {self.prompt_tokens} tokens{tail}")


class _EventStop:
    """A StoppingCriteria that ends generation once its event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _counting_streamer(tokenizer: Any, stats: ReplyStats, started: float) -> Any:
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - started
                stats.tokens += int(value.numel())
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=POLL_S)


class Reply:
    """An iterator over the text chunks of one reply; `.text` is the reply so far, `.stats` its numbers."""

    def __init__(self, chunks: Iterator[str], stop_event: threading.Event, stats: ReplyStats):
        self._chunks = chunks
        self._stop_event = stop_event
        self.stats = stats
        self.text = ""

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
        """Stop and join the generation thread (also done when the iterator is garbage-collected)."""
        self._stop_event.set()
        self._chunks.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> str:
        """Consume the whole reply and return its text."""
        for _ in self:
            pass
        return self.text


class ChatEngine:
    """Wraps one loaded model. `stream()` may be called from many threads; generation is serialised."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._lock = threading.Lock()
        tok = loaded.tokenizer
        stop_ids = {tok.eos_token_id}
        end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_of_turn, int) and end_of_turn != tok.unk_token_id:
            stop_ids.add(end_of_turn)
        self.stop_token_ids = sorted(i for i in stop_ids if i is not None)

    @property
    def name(self) -> str:
        return self.loaded.name

    # -- prompt -----------------------------------------------------------------------------
    def encode(self, messages: list[Message]) -> dict[str, Any]:
        """Tokenise messages in the model's own chat format; returns model inputs on its device."""
        loaded = self.loaded
        if has_image(messages) and not loaded.multimodal:
            raise ImageError(f"The model {loaded.name!r} reads text only. {image_tiers_hint()}")
        if loaded.processor is not None:
            inputs = loaded.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        elif getattr(loaded.tokenizer, "chat_template", None):
            inputs = loaded.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        else:
            text = render_gemma_turns(messages)
            inputs = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=True)
        model = loaded.model
        out = {}
        for key, value in inputs.items():
            if hasattr(value, "to"):
                value = value.to(model.device)
                if value.is_floating_point():
                    value = value.to(model.dtype)
            out[key] = value
        return out

    def count_tokens(self, messages: list[Message]) -> int:
        return int(self.encode(messages)["input_ids"].shape[-1])

    def fit(self, messages: list[Message], max_new_tokens: int) -> list[Message]:
        """Cut the oldest history so the prompt plus the reply fit the context."""
        budget = self.loaded.context_length - max_new_tokens
        return fit_history(messages, self.count_tokens, budget)

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        """Start generating a reply to `messages` and return it as a stream of text chunks.

        `slice` runs an E4B-shaped Gemma 3n as a MatFormer slice (e.g. "e2b") for this reply, switched
        live on the loaded weights; None runs the full model. Prompt errors (image to a text-only
        model, prompt too long, a slice this model cannot run) are raised here, before any thread
        starts; errors inside `generate` are raised from the iterator.
        """
        params = (params or SamplingParams()).validated()
        if slice:
            self.check_slice(slice)
        messages = self.fit(messages, params.max_new_tokens)
        inputs = self.encode(messages)
        stop_event = stop_event or threading.Event()
        stats = ReplyStats(prompt_tokens=int(inputs["input_ids"].shape[-1]), slice=slice or None)
        return Reply(self._run(inputs, params, stop_event, stats), stop_event, stats)

    def check_slice(self, name: str) -> None:
        """Raise ConfigError unless this model can run the slice `name` live."""
        from krishna_ai.matformer import load_slice_config

        if self.loaded.family != "gemma3n":
            raise ConfigError(f"live MatFormer slicing needs an E4B-shaped Gemma 3n model; {self.name!r} is "
                              f"{self.loaded.family}")
        load_slice_config(name)

    def _switch(self, name: str | None) -> str | None:
        """Put the model in slice `name` (None: full); called under the generation lock."""
        if self.loaded.family != "gemma3n":
            return None
        from krishna_ai import elastic

        if elastic.current_slice(self.loaded.model) == name:
            return None
        if name is None:
            elastic.restore_full(self.loaded.model)
            return "switched back to the full model"
        return f"switch allocated {elastic.switch_slice(self.loaded.model, name).allocated_bytes:,} bytes"

    def generate_batch(self, conversations: list[list[Message]], params: SamplingParams | None = None) -> list[str]:
        """Replies to several text-only conversations at once (left-padded batch): evaluation throughput.

        Greedy results equal those of `stream` up to batch-padding numerics.
        """
        import torch

        params = (params or SamplingParams()).validated()
        if any(has_image(c) for c in conversations):
            return [self.stream(c, params).read() for c in conversations]
        tok = self.loaded.tokenizer
        texts = [self._prompt_text(self.fit(c, params.max_new_tokens)) for c in conversations]
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        batch = {k: v.to(self.loaded.model.device) for k, v in batch.items()}
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.loaded.model.generate(**batch, **self._generate_kwargs(params))
        new = out[:, batch["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]

    def _prompt_text(self, messages: list[Message]) -> str:
        loaded = self.loaded
        template_owner = loaded.processor if loaded.processor is not None else loaded.tokenizer
        if loaded.processor is not None or getattr(loaded.tokenizer, "chat_template", None):
            text = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = render_gemma_turns(messages)
        bos = loaded.tokenizer.bos_token or ""
        return text if not bos or text.startswith(bos) else bos + text

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        from transformers import GenerationConfig

        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.loaded.tokenizer.pad_token_id or self.stop_token_ids[0],
        )
        return {"generation_config": config}

    def _run(self, inputs: dict[str, Any], params: SamplingParams, stop_event: threading.Event,
             stats: ReplyStats) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList

        started = time.perf_counter()
        streamer = _counting_streamer(self.loaded.tokenizer, stats, started)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock:
                    if stop_event.is_set():
                        return
                    stats.switch_note = self._switch(stats.slice)
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    with torch.inference_mode():
                        self.loaded.model.generate(
                            **inputs, streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_EventStop(stop_event)]),
                            **self._generate_kwargs(params))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                errors.append(exc)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="krishna-generate", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    chunk = next(streamer)
                except StopIteration:
                    break
                except queue.Empty:
                    if not thread.is_alive() and streamer.text_queue.empty():
                        break
                    continue
                if chunk:
                    yield chunk
        finally:
            stats.stopped = stop_event.is_set()
            stop_event.set()
            thread.join(JOIN_TIMEOUT_S)
            stats.total_s = time.perf_counter() - started
        if errors:
            exc = errors[0]
            raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from exc
