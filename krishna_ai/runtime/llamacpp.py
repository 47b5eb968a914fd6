"""The llama.cpp engine for GGUF tiers: `light-gguf` (the packaged Q4_K_M file) and `--model FILE.gguf`.

It satisfies `runtime.engine.Engine`. Prompts are Gemma's turn format (`render_gemma_turns`);
generation stops at EOS or a turn marker.

llama-cpp-python's token generator runs in the consumer's own iteration: no thread and no queue
between the model and the reader, which is what keeps the per-token overhead at a few tens of
microseconds. The stop event is checked between tokens, so Stop (or closing the Reply) ends
generation after the token being computed. One context serves one reply at a time (a lock held
from the first token to the last).

The KV cache keeps the previous reply's tokens, and the next prompt decodes only what differs from
them: replies of one persona share its system part, so the first token comes after a prefill of
the question instead of the whole prompt (about a fifth of the time: bench/llamacpp.py). Reusing a
prefix is only correct for Gemma's sliding-window layers when llama.cpp keeps their full cache
(`swa_full`; otherwise positions that slid out of the window are gone), which costs KV memory: the
light model's 18 layers at 8192 tokens take 144 MiB instead of 39. A failed reply clears the cache.
A reply with a seed starts from an empty cache, so the same seed gives the same reply whatever was
asked before (eval passes one): decoding a prompt in different pieces changes the last bits of the
logits, enough to change a sampled token (seen on the light tier at temperature 1).

Needs `pip install -r requirements-llamacpp.txt` (llama-cpp-python, built from source once).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError, GenerationError, ModelUnavailable
from krishna_ai.core.prompting import Message, render_gemma_turns
from krishna_ai.core.sampling import REPETITION_WINDOW, SamplingParams, breaker_tokens, dry_penalties
from krishna_ai.runtime.engine import (
    Completion,
    EngineInfo,
    Reply,
    ReplyStats,
    dropped_turns,
    end_token_ids,
    family_of,
    generation_failed,
    prepare,
    stop_token_ids,
)
from krishna_ai.runtime.tiers import GGUF_TIER

DEFAULT_N_CTX = 8192
"""Context allocated when the file allows more: Gemma 3 270M is trained for 32k, whose KV cache is 4× larger."""
POLL_S = 0.05
INSTALL_HINT = ("GGUF models run with llama.cpp: pip install -r requirements-llamacpp.txt "
                "(llama-cpp-python, compiled from source once, about 5 minutes on 2 cores)")


THREADS_ENV = "KRISHNA_AI_LLAMA_THREADS"


def default_threads() -> int:
    """$KRISHNA_AI_LLAMA_THREADS, else all the cores this process may use (llama-cpp-python's own default is
    half of them). On a machine shared with other work, fewer threads than cores decode faster: ggml's
    workers busy-wait at every step, and one that loses its core stalls the others."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{THREADS_ENV}={raw!r}: give a whole number of threads, 1 or more")
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


EXTRA_BUFFERS_ENV = "KRISHNA_AI_LLAMA_EXTRA_BUFFERS"
_PARAMS_LOCK = threading.Lock()


def use_extra_buffers() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (AMX, repacked quants).

    Off on CPUs with AMX: there ggml's AMX path segfaults on the first decode of a Q4_K_M model
    (llama.cpp #20824, reproduced here with the light tier's GGUF). $KRISHNA_AI_LLAMA_EXTRA_BUFFERS=1/0
    overrides the detection."""
    raw = os.environ.get(EXTRA_BUFFERS_ENV, "").strip()
    if raw:
        return raw not in ("0", "false", "no", "off")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return " amx_int8" not in flags and " amx_tile" not in flags


@contextlib.contextmanager
def _model_params(*, extra_buffers: bool) -> Iterator[None]:
    """llama-cpp-python's `Llama()` takes no `use_extra_bufts`: while one is built, its default model
    params come with the flag set as asked."""
    import llama_cpp.llama as llama_module

    real = llama_module.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = real()
        p.use_extra_bufts = extra_buffers
        return p

    with _PARAMS_LOCK:
        llama_module.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = real


def resolve_gguf(spec: str) -> tuple[str, Path]:
    """(name, file) for `light-gguf` or a path to a .gguf file. Raises ModelUnavailable."""
    if spec == GGUF_TIER:
        from krishna_ai.runtime.light import light_gguf

        return GGUF_TIER, light_gguf()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"no GGUF file {spec!r}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelUnavailable(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    return path.name, path


def load_gguf(spec: str, *, adapter: str | os.PathLike[str] | None = None, n_ctx: int | None = None,
              n_threads: int | None = None) -> LlamaCppEngine:
    """Load a GGUF tier or file with llama.cpp (the light tier with `adapter` merged, built once and cached).
    Raises ModelUnavailable with what to do."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelUnavailable(INSTALL_HINT) from None
    if adapter:
        from krishna_ai.runtime.gguf_adapter import adapted_gguf

        name, path = f"{spec}@{Path(adapter).name}", adapted_gguf(spec, adapter)
    else:
        name, path = resolve_gguf(spec)
    threads = n_threads or default_threads()

    def load(ctx: int) -> Any:
        try:
            with _model_params(extra_buffers=use_extra_buffers()):
                return llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                                       last_n_tokens_size=REPETITION_WINDOW, swa_full=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(f"llama.cpp cannot load {path}: {exc}") from None

    llm = load(n_ctx or DEFAULT_N_CTX)
    arch = str(llm.metadata.get("general.architecture", ""))
    trained = int(llm.metadata.get(f"{arch}.context_length", 0) or 0)
    if not n_ctx and 0 < trained < DEFAULT_N_CTX:  # a model trained for less: allocate only that
        llm = load(trained)
    family = family_of(arch)
    notes = [f"llama.cpp {llama_cpp.__version__}, {threads} threads, context {llm.n_ctx()}"]
    if family == "other":
        notes.append(f"architecture {arch!r} is not Gemma: prompts still use Gemma's turn format")
    info = EngineInfo(name=name, backend="llama.cpp", family=family, multimodal=False,
                      context_length=llm.n_ctx(), quantized=True, notes=tuple(notes),
                      adapter=str(adapter) if adapter else None)
    return LlamaCppEngine(llm, info, source=path)


class LlamaCppEngine:
    """One llama.cpp model. `stream()` may be called from many threads; generation is serialised."""

    def __init__(self, llm: Any, info: EngineInfo, source: Path | None = None):
        self.llm = llm
        self.source = source
        self._info = info
        self._lock = threading.Lock()
        """Held by the reply being generated: replies take turns."""
        self._alive = threading.Lock()
        """Held while the model is read outside a reply (tokenising a prompt) and while it is freed, so a model
        unloaded to make room for another is never read after `close()` (that was a segfault under load)."""
        self._closed = False

        def lookup(token: str) -> int | None:
            ids = llm.tokenize(token.encode(), add_bos=False, special=True)
            return ids[0] if len(ids) == 1 else None

        self.stop_token_ids = stop_token_ids(llm.token_eos(), lookup)
        self.end_token_ids = end_token_ids(llm.token_eos(), lookup)
        self._breakers: frozenset[int] | None = None

    @property
    def info(self) -> EngineInfo:
        return self._info

    def close(self) -> None:
        """Free the model and its KV cache once the reply in flight (which holds the lock) has ended; a reply
        that was waiting for the lock then fails with a clear error instead of touching freed memory."""
        with self._lock, self._alive:
            self._closed = True
            close = getattr(self.llm, "close", None)
            if close is not None:
                close()

    def _unloaded(self) -> GenerationError:
        return GenerationError(f"{self.name!r} was unloaded to make room for another model: ask again")

    def _tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        with self._alive:
            if self._closed:
                raise self._unloaded()
            return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    @property
    def name(self) -> str:
        return self._info.name

    # -- prompt -----------------------------------------------------------------------------
    def tokenize(self, messages: list[Message]) -> list[int]:
        """BOS + Gemma's turn format, control tokens parsed (message text is sanitised upstream)."""
        return self._tokenize(render_gemma_turns(messages), add_bos=True, special=True)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(messages))

    def check_slice(self, name: str) -> None:
        raise ConfigError(f"{self.name!r} is a GGUF model run by llama.cpp, which cannot switch MatFormer slices "
                          f"live (asked for {name!r}): slice the checkpoint with `python -m krishna_ai slice`, "
                          "then export the child with `export gguf`")

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        """Start a reply to `messages`; prompt errors are raised here, generation errors from the iterator."""
        started = time.perf_counter()
        fitted, params = prepare(self, messages, params, slice)
        return self._reply(self.tokenize(fitted), params, stop_event, started, dropped_turns(messages, fitted))

    def complete(self, prompt: str, params: SamplingParams | None = None,
                 stop_event: threading.Event | None = None) -> Reply:
        """A raw continuation of `prompt` (BOS added, no chat turns): tests and benchmarks."""
        started = time.perf_counter()
        params = (params or SamplingParams()).validated()
        tokens = self._tokenize(prompt, add_bos=True, special=False)
        if len(tokens) + params.max_new_tokens > self._info.context_length:
            raise GenerationError(f"the prompt needs {len(tokens)} tokens; the context leaves "
                                  f"{self._info.context_length - params.max_new_tokens}")
        return self._reply(tokens, params, stop_event, started)

    def generate_batch(self, conversations: list[list[Message]],
                       params: SamplingParams | None = None) -> list[Completion]:
        """Replies to several conversations, one after the other (llama-cpp-python's API does not batch)."""
        return [self.stream(conv, params).completion() for conv in conversations]

    def _reply(self, tokens: list[int], params: SamplingParams, stop_event: threading.Event | None,
               started: float, dropped: int = 0) -> Reply:
        stop_event = stop_event or threading.Event()
        stats = ReplyStats(prompt_tokens=len(tokens), started=started, dropped_turns=dropped)
        return Reply(self._run(tokens, params, stop_event, stats), stop_event, stats)

    def _sampling(self, params: SamplingParams, prompt_length: int) -> dict[str, Any]:
        greedy = params.temperature == 0
        # min_p and typical_p off: the same filters as transformers' temperature / top_k / top_p.
        return dict(temp=0.0 if greedy else float(params.temperature), top_k=int(params.top_k),
                    top_p=float(params.top_p), min_p=0.0, typical_p=1.0,
                    repeat_penalty=float(params.repetition_penalty),
                    logits_processor=self._dry(params.dry_multiplier, prompt_length))

    def breakers(self) -> frozenset[int]:
        """DRY's breaker tokens in this vocabulary (found once: about a second for Gemma's 262k)."""
        if self._breakers is None:
            self._breakers = breaker_tokens([self.llm.detokenize([i]).decode("utf-8", errors="replace")
                                             for i in range(self.llm.n_vocab())])
        return self._breakers

    def _dry(self, multiplier: float, prompt_length: int) -> list[Any] | None:
        """DRY as a logits processor over the reply's tokens (llama-cpp-python hands it the whole context;
        it runs first in the sampler chain, on every token's logit in id order)."""
        if multiplier <= 0:
            return None
        breakers = self.breakers()

        def penalise(input_ids: Any, scores: Any) -> Any:
            for token, penalty in dry_penalties(input_ids[prompt_length:].tolist(), breakers, multiplier).items():
                scores[token] -= penalty
            return scores

        return [penalise]

    def _run(self, tokens: list[int], params: SamplingParams, stop_event: threading.Event,
             stats: ReplyStats) -> Iterator[str]:
        import llama_cpp

        llm, stop_ids = self.llm, set(self.stop_token_ids)
        acquired = ended = failed = run_on = False
        try:
            while not (acquired := self._lock.acquire(timeout=POLL_S)):
                if stop_event.is_set():  # stopped while another reply held the model
                    return
            if stop_event.is_set():
                return
            if self._closed:
                raise self._unloaded()
            llm.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
            if params.seed is not None:
                llm.reset()  # a seeded reply starts from an empty cache (module docstring)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
            # reset=True: keep the longest prefix the cache shares with `tokens`, decode the rest
            generator = llm.generate(tokens, reset=True, **self._sampling(params, len(tokens)))
            try:
                for token in generator:
                    stats.token()
                    if token in stop_ids:
                        ended = token in self.end_token_ids
                        run_on = not ended
                        break
                    text = decoder.decode(llm.detokenize([token]))
                    if text:
                        yield text
                    if stats.tokens >= params.max_new_tokens or stop_event.is_set():
                        break
            finally:
                generator.close()
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001 - one domain error for the edges
            failed = True
            if not self._closed:
                llm.reset()  # the cache may hold a half-decoded batch: the next reply starts from nothing
            raise generation_failed(exc) from exc
        finally:
            stopped = stop_event.is_set()
            stop_event.set()
            if acquired:
                self._lock.release()
            stats.finish(stopped=stopped, ended=ended, failed=failed, run_on=run_on)
