"""Merge a LoRA adapter into its base model, in bf16 (never into 4-bit weights), atomically.

    python -m krishna_ai merge --base light --adapter runs/krishna-light/adapter --out merged/krishna-light
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from krishna_ai.core.cache import atomic_dir
from krishna_ai.core.errors import ConfigError


def merge(base: str, adapter: str | Path, out: str | Path, *, dtype: Literal["bf16", "fp32"] = "bf16",
          force: bool = False) -> Path:
    """Write base+adapter as a plain safetensors model (+ tokenizer/processor) to `out`.

    The folder is built under a temporary name and renamed at the end: a failed or interrupted
    merge leaves no folder that looks complete.
    """
    import torch
    from transformers import AutoConfig

    from krishna_ai.runtime.tiers import check_adapter, resolve_source
    from krishna_ai.runtime.weights import load_processing, load_weights, merge_adapter, model_family

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    adapter_path = check_adapter(adapter)
    _, source, is_local = resolve_source(base)
    config = AutoConfig.from_pretrained(source)
    family = model_family(config)
    text_checkpoint = getattr(config, "model_type", "") != "gemma3n"
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    steps = ["load base", "merge adapter", "write safetensors", "finish"]
    with tqdm(total=len(steps), desc=f"Merging into {out.name}") as bar, atomic_dir(out) as tmp:
        bar.set_postfix_str(steps[0])
        model = load_weights(source, family, torch_dtype, False, text_checkpoint, "cpu", is_local)
        bar.update()
        bar.set_postfix_str(steps[1])
        model = merge_adapter(model, adapter_path)
        bar.update()
        bar.set_postfix_str(steps[2])
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer, processor = load_processing(source, family, text_checkpoint)
        (processor or tokenizer).save_pretrained(tmp)
        bar.update()
        bar.set_postfix_str(steps[3])
        info: dict[str, Any] = {"base": base, "base_source": source, "adapter": str(adapter_path),
                                "dtype": dtype}
        cfg = adapter_path / "adapter_config.json"
        info["lora"] = {k: v for k, v in json.loads(cfg.read_text()).items()
                        if k in ("r", "lora_alpha", "use_rslora", "target_modules")}
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=2))
        bar.update()
    return out
