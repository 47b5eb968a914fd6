"""The one engine factory: the Studio, `ask`, `eval`, the sweep and the Space all load through it."""

from __future__ import annotations

import os
from typing import Any

from krishna_ai.runtime.engine import Engine
from krishna_ai.runtime.probe import is_remote_spec
from krishna_ai.runtime.tiers import is_gguf_spec


def load_engine(spec: str, adapter: str | os.PathLike[str] | None = None, **options: Any) -> Engine:
    """An engine for a model spec: a model server for `openai:URL[#MODEL]`, llama.cpp for `light-gguf` and
    *.gguf files, transformers for tiers, folders and hub ids. `options` go to the back end's loader (quantize,
    dtype, text_only, device for transformers; n_ctx, n_threads for llama.cpp). Raises ModelUnavailable with
    what to do."""
    if is_remote_spec(spec):
        from krishna_ai.runtime.remote import load_remote

        return load_remote(spec, adapter=adapter)
    if is_gguf_spec(spec):
        from krishna_ai.runtime.llamacpp import load_gguf

        return load_gguf(spec, adapter=adapter, **options)
    from krishna_ai.runtime.hf import HFEngine
    from krishna_ai.runtime.weights import load_model

    return HFEngine(load_model(spec, adapter=adapter, **options))
