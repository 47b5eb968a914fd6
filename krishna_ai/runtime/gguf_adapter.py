"""A LoRA adapter on the llama.cpp path: the light tier's GGUF with a persona's adapter in it.

llama.cpp could apply a GGUF LoRA at load (`convert_lora_to_gguf.py`), but the light adapters also train
the turn markers' embedding rows (peft `trainable_token_indices`), which that converter does not carry,
and re-quantising a merged model to the shipped Q4_K_M rounds the LoRA's small update away (measured: the
merged Q4_K_M Krishna no longer ends its turn; the merged Q8_0 and F16 ones do). So the adapter is merged
into the light weights (`merge`), converted with llama.cpp's own converter to Q8_0 and read back against
the merged model (`export.convert_gguf`), and cached under a key of the adapter's bytes and the base: built
once (about two minutes on 2 cores), reused after, and a failed build leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from krishna_ai.core.cache import atomic_file, cache_root
from krishna_ai.core.errors import ConfigError, ModelUnavailable
from krishna_ai.runtime.tiers import GGUF_TIER, check_adapter

OUTTYPE = "q8_0"
BUILD_VERSION = "1"


def adapted_path(adapter: Path) -> Path:
    from krishna_ai.runtime.light import CONVERSION_VERSION

    h = hashlib.sha256(f"{BUILD_VERSION}:{OUTTYPE}:{CONVERSION_VERSION}:".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((adapter / name).read_bytes())
    return cache_root() / "gguf" / "adapted" / f"light-{adapter.name}-{h.hexdigest()[:16]}.gguf"


def adapted_gguf(spec: str, adapter: str | os.PathLike[str]) -> Path:
    """The GGUF of `spec` (only the light tier: its transformers weights are at hand) with `adapter` merged."""
    if spec != GGUF_TIER:
        raise ModelUnavailable(
            f"a LoRA adapter cannot be applied to the GGUF file {spec!r}: merge it into the transformers weights "
            "that file came from (python -m krishna_ai merge), export that (export gguf), and load the result")
    folder = check_adapter(adapter)
    target = adapted_path(folder)
    if target.is_file():
        return target
    from krishna_ai.runtime.convert import convert_gguf, fetch_converter, find_converter
    from krishna_ai.runtime.merge import merge

    try:
        converter = find_converter()
    except ConfigError:
        print("light-gguf with an adapter needs llama.cpp's converter once: fetching it", file=sys.stderr)
        converter = fetch_converter()
    print(f"Building the light tier's GGUF with {folder.name} merged (once; cached at {target})", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adapted-", dir=target.parent) as tmp:
        merged = merge("light", folder, Path(tmp) / "merged", dtype="fp32")
        with atomic_file(target) as partial:
            convert_gguf(str(merged), Path(tmp) / "model.gguf", outtype=OUTTYPE, llama_cpp=converter, verify=True)
            os.replace(Path(tmp) / "model.gguf", partial)
    return target
