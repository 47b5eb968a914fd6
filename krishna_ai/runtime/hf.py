"""The transformers engine: `generate` in a thread feeding a streamer, the `Reply` iterating it.

Stopping (`Reply.stop()`, or closing the iterator when the consumer goes away) flips a stopping
criterion, so `generate` really ends, and the thread is joined. An exception inside `generate` is
re-raised in the consumer as a `GenerationError`, never a hang. Generation ends at EOS and at either
turn marker, so a run-on second turn never reaches the user.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from krishna_ai.core.errors import ConfigError
from krishna_ai.core.prompting import Message, has_image, render_prompt
from krishna_ai.core.sampling import REPETITION_WINDOW, SamplingParams, breaker_tokens, dry_penalties
from krishna_ai.runtime.engine import (
    Completion,
    EngineInfo,
    FinishReason,
    Reply,
    ReplyStats,
    dropped_turns,
    end_token_ids,
    generation_failed,
    prepare,
    stop_token_ids,
)
from krishna_ai.runtime.weights import LoadedModel

JOIN_TIMEOUT_S = 10.0
POLL_S = 0.05


class _EventStop:
    """A StoppingCriteria that ends generation once its event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _RecentRepetitionPenalty:
    """transformers' repetition penalty over the reply's last `window` tokens, as the llama.cpp engine
    applies it (llama-cpp-python's sampler sees only sampled tokens): a token seen there has a positive
    logit divided by `penalty`, a negative one multiplied. The prompt's first `prompt_length` tokens
    never count, so a reply may name what the question names."""

    def __init__(self, penalty: float, prompt_length: int, window: int = REPETITION_WINDOW):
        self.penalty, self.prompt_length, self.window = penalty, prompt_length, window

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        recent = input_ids[:, self.prompt_length:][:, -self.window:]
        if recent.shape[1] == 0:
            return scores
        seen = torch.gather(scores, 1, recent)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, recent, seen)


class _DryPenalty:
    """DRY over the reply's tokens (`sampling.dry_penalties`), as the llama.cpp engine applies it."""

    def __init__(self, multiplier: float, prompt_length: int, breakers: frozenset[int]):
        self.multiplier, self.prompt_length, self.breakers = multiplier, prompt_length, breakers

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.clone()
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            for token, penalty in dry_penalties(ids, self.breakers, self.multiplier).items():
                scores[row, token] -= penalty
        return scores


def _counting_streamer(tokenizer: Any, stats: ReplyStats, last: list[int]) -> Any:
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt:
                stats.token(int(value.numel()))
                last[:] = [int(value.reshape(-1)[-1])]
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=POLL_S)


class HFEngine:
    """One transformers model. `stream()` may be called from many threads; generation is serialised."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self._lock = threading.Lock()
        tok = loaded.tokenizer

        def lookup(token: str) -> int | None:
            i = tok.convert_tokens_to_ids(token)
            return i if isinstance(i, int) and i != tok.unk_token_id else None

        self.stop_token_ids = stop_token_ids(tok.eos_token_id, lookup)
        self.end_token_ids = end_token_ids(tok.eos_token_id, lookup)
        self._breakers: frozenset[int] | None = None
        self._info = EngineInfo(
            name=loaded.name, backend="transformers", family=loaded.family, multimodal=loaded.multimodal,
            context_length=loaded.context_length, live_slices=loaded.family == "gemma3n",
            adapter=loaded.adapter, quantized=loaded.quantized, notes=tuple(loaded.notes))

    @property
    def info(self) -> EngineInfo:
        return self._info

    def close(self) -> None:
        """Nothing to shut: the weights are freed with the last reference (a reply in flight keeps its own);
        the lock is taken so that a caller that waits on close waits for that reply."""
        with self._lock:
            pass

    @property
    def name(self) -> str:
        return self.loaded.name

    # -- prompt -----------------------------------------------------------------------------
    def prompt_text(self, messages: list[Message]) -> str:
        """The prompt as text, in the model's own chat format, BOS included."""
        loaded = self.loaded
        return render_prompt(messages, loaded.tokenizer, loaded.processor)

    def encode(self, messages: list[Message]) -> dict[str, Any]:
        """Tokenise messages in the model's own chat format; returns model inputs on its device."""
        loaded = self.loaded
        if loaded.processor is not None:
            inputs = loaded.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        else:
            inputs = loaded.tokenizer(self.prompt_text(messages), return_tensors="pt", add_special_tokens=False)
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
        from krishna_ai.matformer import elastic

        if elastic.current_slice(self.loaded.model) == name:
            return None
        if name is None:
            elastic.restore_full(self.loaded.model)
            return "switched back to the full model"
        return f"switch allocated {elastic.switch_slice(self.loaded.model, name).allocated_bytes:,} bytes"

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        """Start generating a reply to `messages` and return it as a stream of text chunks.

        `slice` runs an E4B-shaped Gemma 3n as a MatFormer slice (e.g. "e2b") for this reply, switched
        live on the loaded weights; None runs the full model.
        """
        started = time.perf_counter()
        fitted, params = prepare(self, messages, params, slice)
        inputs = self.encode(fitted)
        stop_event = stop_event or threading.Event()
        stats = ReplyStats(prompt_tokens=int(inputs["input_ids"].shape[-1]), slice=slice or None, started=started,
                           dropped_turns=dropped_turns(messages, fitted))
        return Reply(self._run(inputs, params, stop_event, stats), stop_event, stats)

    def generate_batch(self, conversations: list[list[Message]],
                       params: SamplingParams | None = None) -> list[Completion]:
        """Replies to several text-only conversations at once (left-padded batch): evaluation throughput.

        Greedy results equal those of `stream` up to batch-padding numerics.
        """
        import torch

        if any(has_image(c) for c in conversations):
            return [self.stream(c, params).completion() for c in conversations]
        prepared = [prepare(self, c, params) for c in conversations]
        params = prepared[0][1] if prepared else (params or SamplingParams())
        tok = self.loaded.tokenizer
        texts = [self.prompt_text(messages) for messages, _ in prepared]
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
            out = self.loaded.model.generate(**batch, **self._generate_kwargs(params, batch["input_ids"].shape[1]))
        new = out[:, batch["input_ids"].shape[1]:]
        pad = self._pad_id()
        results = []
        for row in new.tolist():
            ended = next((i for i, t in enumerate(row) if t in self.stop_token_ids), None)
            kept = row[:ended] if ended is not None else [t for t in row if t != pad]
            reason: FinishReason = ("max_tokens" if ended is None
                                    else "end_of_turn" if row[ended] in self.end_token_ids else "run_on")
            results.append(Completion(text=tok.decode(kept, skip_special_tokens=True).strip(),
                                      finish_reason=reason,
                                      tokens=len(kept) + (ended is not None)))
        return results

    def _pad_id(self) -> int:
        pad = self.loaded.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.stop_token_ids[0]

    def _generate_kwargs(self, params: SamplingParams, prompt_length: int) -> dict[str, Any]:
        from transformers import GenerationConfig, LogitsProcessorList

        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample else None,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self._pad_id(),
        )
        processors: list[Any] = []
        if params.repetition_penalty != 1.0:
            processors.append(_RecentRepetitionPenalty(params.repetition_penalty, prompt_length))
        if params.dry_multiplier > 0:
            processors.append(_DryPenalty(params.dry_multiplier, prompt_length, self.breakers()))
        return {"generation_config": config, "logits_processor": LogitsProcessorList(processors)}

    def breakers(self) -> frozenset[int]:
        """DRY's breaker tokens in this vocabulary (found once: about two seconds for Gemma's 262k)."""
        if self._breakers is None:
            tok = self.loaded.tokenizer
            self._breakers = breaker_tokens(tok.batch_decode([[i] for i in range(len(tok))]))
        return self._breakers

    def _run(self, inputs: dict[str, Any], params: SamplingParams, stop_event: threading.Event,
             stats: ReplyStats) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList

        last: list[int] = []
        streamer = _counting_streamer(self.loaded.tokenizer, stats, last)
        errors: list[BaseException] = []
        user_stop = threading.Event()  # set when the stop came from outside, not from our own cleanup

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
                            **self._generate_kwargs(params, inputs["input_ids"].shape[1]))
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
            if stop_event.is_set():
                user_stop.set()
            stop_event.set()
            thread.join(JOIN_TIMEOUT_S)
            ended = bool(last) and last[0] in self.end_token_ids
            run_on = bool(last) and last[0] in self.stop_token_ids and not ended
            stats.finish(stopped=user_stop.is_set(), ended=ended, failed=bool(errors), run_on=run_on)
        if errors:
            raise generation_failed(errors[0]) from errors[0]
