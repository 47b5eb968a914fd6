"""The llama.cpp backend for GGUF tiers: `light-gguf` (the packaged Q4_K_M file) and `--model FILE.gguf`.

`LlamaCppEngine` has the interface of `ChatEngine` that the Studio, the CLI and evaluation use:
`.loaded` (name, family, multimodal=False, context_length), `.name`, `stream(messages, params,
stop_event, *, slice=None) -> Reply` with its `ReplyStats`, `generate_batch`, `count_tokens`/`fit`.
Prompts are Gemma's turn format (`render_gemma_turns`), generation stops at `<end_of_turn>` or EOS.

llama-cpp-python's token generator runs in the consumer's own iteration: no thread and no queue
between the model and the reader, which is what keeps the per-token overhead at a few tens of
microseconds. The stop event is checked between tokens, so Stop (or closing the Reply) ends
generation after the token being computed. One context serves one reply at a time (a lock held
from the first token to the last); the KV cache is cleared for each reply: reusing a prefix is only
safe for Gemma 3's sliding-window layers when llama.cpp keeps a full-size SWA cache, and the time it
would save (a prefill of a few hundred tokens) is small next to a reply.

Needs `pip install -r requirements-llamacpp.txt` (llama-cpp-python, built from source once).
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from krishna_ai.errors import ConfigError, GenerationError, ImageError, ModelUnavailable
from krishna_ai.generation import Reply, ReplyStats, SamplingParams
from krishna_ai.models import GGUF_TIER, LoadedModel, image_tiers_hint, is_gguf_spec
from krishna_ai.prompting import Message, fit_history, has_image, render_gemma_turns

__all__ = ["GGUF_TIER", "LlamaCppEngine", "is_gguf_spec", "load_gguf", "load_gguf_engine"]
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


def _family(arch: str) -> str:
    if arch.startswith("gemma3n"):
        return "gemma3n"
    return "gemma3" if arch.startswith("gemma3") else "other"


def resolve_gguf(spec: str) -> tuple[str, Path]:
    """(name, file) for `light-gguf` or a path to a .gguf file. Raises ModelUnavailable."""
    if spec == GGUF_TIER:
        from krishna_ai.light import light_gguf

        return GGUF_TIER, light_gguf()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"no GGUF file {spec!r}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelUnavailable(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    return path.name, path


def load_gguf(spec: str, *, adapter: str | os.PathLike[str] | None = None, n_ctx: int | None = None,
              n_threads: int | None = None) -> LoadedModel:
    """Load a GGUF tier or file with llama.cpp. Raises ModelUnavailable with what to do."""
    if adapter:
        raise ModelUnavailable(
            f"a LoRA adapter cannot be merged into the GGUF model {spec!r} at load. Merge it into the "
            "transformers weights and export that: python -m krishna_ai merge --base light --adapter "
            f"{adapter} --out merged/m, then python -m krishna_ai export gguf --model merged/m --out m.gguf, "
            "and start with --model m.gguf")
    try:
        import llama_cpp
    except ImportError:
        raise ModelUnavailable(INSTALL_HINT) from None
    name, path = resolve_gguf(spec)
    threads = n_threads or default_threads()

    def load(ctx: int) -> Any:
        try:
            return llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(f"llama.cpp cannot load {path}: {exc}") from None

    llm = load(n_ctx or DEFAULT_N_CTX)
    arch = str(llm.metadata.get("general.architecture", ""))
    trained = int(llm.metadata.get(f"{arch}.context_length", 0) or 0)
    if not n_ctx and 0 < trained < DEFAULT_N_CTX:  # a model trained for less: allocate only that
        llm = load(trained)
    n_ctx = llm.n_ctx()
    family = _family(arch)
    notes = [f"llama.cpp {llama_cpp.__version__}, {threads} threads, context {n_ctx}"]
    if family == "other":
        notes.append(f"architecture {arch!r} is not Gemma: prompts still use Gemma's turn format")
    return LoadedModel(model=llm, tokenizer=None, processor=None, family=family, name=name,  # type: ignore[arg-type]
                       source=str(path), multimodal=False, context_length=n_ctx, quantized=True, notes=notes)


class LlamaCppEngine:
    """Wraps one llama.cpp model. `stream()` may be called from many threads; generation is serialised."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.llm = loaded.model
        self._lock = threading.Lock()
        stop = {self.llm.token_eos()}
        end_of_turn = self.llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
        if len(end_of_turn) == 1:
            stop.add(end_of_turn[0])
        self.stop_token_ids = sorted(t for t in stop if t is not None and t >= 0)

    @property
    def name(self) -> str:
        return self.loaded.name

    # -- prompt -----------------------------------------------------------------------------
    def tokenize(self, messages: list[Message]) -> list[int]:
        """BOS + Gemma's turn format, control tokens parsed (message text is sanitised upstream)."""
        if has_image(messages):
            raise ImageError(f"The model {self.name!r} reads text only. {image_tiers_hint()}")
        return self.llm.tokenize(render_gemma_turns(messages).encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(messages))

    def fit(self, messages: list[Message], max_new_tokens: int) -> list[Message]:
        """Cut the oldest history so the prompt plus the reply fit the context."""
        return fit_history(messages, self.count_tokens, self.loaded.context_length - max_new_tokens)

    def check_slice(self, name: str) -> None:
        raise ConfigError(f"{self.name!r} is a GGUF model run by llama.cpp, which cannot switch MatFormer slices "
                          f"live (asked for {name!r}): slice the checkpoint with `python -m krishna_ai slice`, "
                          "then export the child with `export gguf`")

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: list[Message], params: SamplingParams | None = None,
               stop_event: threading.Event | None = None, *, slice: str | None = None) -> Reply:
        """Start a reply to `messages`; prompt errors are raised here, generation errors from the iterator."""
        started = time.perf_counter()
        params = (params or SamplingParams()).validated()
        if slice:
            self.check_slice(slice)
        tokens = self.tokenize(self.fit(messages, params.max_new_tokens))
        return self._reply(tokens, params, stop_event, started)

    def complete(self, prompt: str, params: SamplingParams | None = None,
                 stop_event: threading.Event | None = None) -> Reply:
        """A raw continuation of `prompt` (BOS added, no chat turns): tests and benchmarks."""
        started = time.perf_counter()
        params = (params or SamplingParams()).validated()
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if len(tokens) + params.max_new_tokens > self.loaded.context_length:
            raise GenerationError(f"the prompt needs {len(tokens)} tokens; the context leaves "
                                  f"{self.loaded.context_length - params.max_new_tokens}")
        return self._reply(tokens, params, stop_event, started)

    def generate_batch(self, conversations: list[list[Message]], params: SamplingParams | None = None) -> list[str]:
        """Replies to several conversations, one after the other (llama-cpp-python's API does not batch)."""
        return [self.stream(c, params).read().strip() for c in conversations]

    def _reply(self, tokens: list[int], params: SamplingParams, stop_event: threading.Event | None,
               started: float) -> Reply:
        stop_event = stop_event or threading.Event()
        stats = ReplyStats(prompt_tokens=len(tokens))
        return Reply(self._run(tokens, params, stop_event, stats, started), stop_event, stats)

    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        greedy = params.temperature == 0
        # min_p and typical_p off: the same filters as transformers' temperature / top_k / top_p.
        return dict(temp=0.0 if greedy else float(params.temperature), top_k=int(params.top_k),
                    top_p=float(params.top_p), min_p=0.0, typical_p=1.0,
                    repeat_penalty=float(params.repetition_penalty))

    def _run(self, tokens: list[int], params: SamplingParams, stop_event: threading.Event, stats: ReplyStats,
             started: float) -> Iterator[str]:
        import llama_cpp

        llm, stop_ids = self.llm, set(self.stop_token_ids)
        acquired = False
        try:
            while not (acquired := self._lock.acquire(timeout=POLL_S)):
                if stop_event.is_set():  # stopped while another reply held the model
                    return
            if stop_event.is_set():
                return
            llm.set_seed(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
            llm.reset()  # no prefix reuse (see the module docstring)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
            generator = llm.generate(tokens, reset=True, **self._sampling(params))
            try:
                for token in generator:
                    if stats.ttft_s is None:
                        stats.ttft_s = time.perf_counter() - started
                    stats.tokens += 1
                    if token in stop_ids:
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
        except (GenerationError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one domain error for the edges
            raise GenerationError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            stats.stopped = stop_event.is_set()
            stop_event.set()
            if acquired:
                self._lock.release()
            stats.total_s = time.perf_counter() - started


def load_gguf_engine(spec: str, adapter: str | os.PathLike[str] | None = None, **kwargs: Any) -> LlamaCppEngine:
    return LlamaCppEngine(load_gguf(spec, adapter=adapter, **kwargs))
