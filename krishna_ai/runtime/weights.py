"""transformers weights: a tier, folder or hub id loaded in fp32/bf16 or 4-bit nf4, a LoRA adapter merged.

One code path serves the real `google/gemma-3n-*` checkpoints and the tiny random ones the tests
build: the family is read from `config.json`, never guessed from the name. Weights load from
safetensors only and remote code is never run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from krishna_ai.core.cache import atomic_dir, cache_root
from krishna_ai.core.errors import ModelUnavailable
from krishna_ai.runtime.engine import Family, family_of
from krishna_ai.runtime.tiers import check_adapter, check_local_folder, resolve_source

Quantize = Literal["auto", "4bit", "none"]
DType = Literal["auto", "bfloat16", "float32"]


# Modules bitsandbytes must not quantise: AltUp's tiny routers/coefficient matrices have too few
# output features for 4-bit blocks, and the output head stays in full precision.
SKIP_4BIT = ["lm_head", "modality_router", "correction_coefs", "prediction_coefs"]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    processor: Any | None
    family: Family
    name: str
    source: str
    multimodal: bool
    context_length: int
    quantized: bool = False
    adapter: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> Any:
        return self.model.device


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _hub_hint(source: str, exc: Exception) -> ModelUnavailable:
    reason = (str(exc).splitlines() or [""])[0][:200]
    return ModelUnavailable(
        f"could not load {source!r} from the Hugging Face Hub ({type(exc).__name__}: {reason}).\n"
        "Tried: a local folder of that name (none) and the Hub (unreachable, gated or missing).\n"
        "To fix: on a machine with internet, accept the Gemma licence on the model page, run "
        f"`hf auth login` and `hf download {source} --local-dir DIR`, "
        "then start with `--model DIR`; or use the light tier, which runs offline."
    )


def model_family(config: Any) -> Family:
    return family_of(str(getattr(config, "model_type", "")))


def _context_length(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, "max_position_embeddings", 8192) or 8192)


def bnb_config(dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=SKIP_4BIT,
    )


def merged_cache_dir(source: str, adapter: Path, text_only: bool = False) -> Path:
    """Cache folder for base+adapter merged in bf16 (reused by later 4-bit loads)."""

    # A text-only merge holds no towers: it must not be reused for a multimodal load, and vice versa.
    h = hashlib.sha256(source.encode() + (b"\0text" if text_only else b""))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((adapter / name).read_bytes())
    base = Path(source)
    if base.is_dir():  # a local base rebuilt in place must not reuse an old merge
        for f in sorted(base.glob("*.safetensors")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "merged" / h.hexdigest()[:16]


def load_model(
    spec: str = "light",
    *,
    adapter: str | os.PathLike[str] | None = None,
    quantize: Quantize = "auto",
    text_only: bool = False,
    device: str | None = None,
    dtype: DType = "auto",
) -> LoadedModel:
    """Load a tier, folder or hub id, optionally merge a LoRA adapter, optionally in 4-bit nf4.

    quantize="auto" means 4-bit for Gemma 3n when CUDA is present, full precision otherwise.
    dtype="auto" means bf16 for Gemma 3n (fp16 overflows) and on CUDA, fp32 otherwise; with 4-bit it
    is the compute dtype.
    Raises ModelUnavailable with what was tried and what to do.
    """
    import torch
    from transformers import AutoConfig

    name, source, is_local = resolve_source(spec)
    adapter_path = check_adapter(adapter) if adapter else None
    if is_local:
        check_local_folder(Path(source))
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if is_local:
            raise ModelUnavailable(f"{source}: cannot read config.json ({exc})") from None
        raise _hub_hint(source, exc) from None

    family = model_family(config)
    # A Gemma3nForCausalLM checkpoint (e.g. a text-only export) has no towers and no processor.
    text_only = text_only or getattr(config, "model_type", "") == "gemma3n_text"
    cuda = _cuda() if device is None else device.startswith("cuda")
    device = device or ("cuda" if cuda else "cpu")
    four_bit = quantize == "4bit" or (quantize == "auto" and cuda and family == "gemma3n")
    if dtype != "auto":
        torch_dtype = getattr(torch, dtype)
    elif family == "gemma3n":
        torch_dtype = torch.bfloat16  # fp16 overflows in Gemma 3n; bf16 on CPU keeps E4B in memory
    else:
        torch_dtype = torch.bfloat16 if cuda else torch.float32

    notes: list[str] = []
    load_from = source
    if adapter_path is not None and four_bit:
        # Merging into 4-bit weights rounds the update away: merge in bf16 once, cache, then quantise.
        load_from = str(_merge_to_cache(source, adapter_path, family, text_only))
        notes.append(f"adapter merged in bf16 and cached at {load_from}")

    model = load_weights(load_from, family, torch_dtype, four_bit, text_only, device,
                          is_local or load_from != source)
    if adapter_path is not None and not four_bit:
        model = merge_adapter(model, adapter_path)
    model.eval()

    tokenizer, processor = load_processing(source, family, text_only)
    multimodal = family == "gemma3n" and not text_only and processor is not None
    return LoadedModel(
        model=model, tokenizer=tokenizer, processor=processor if multimodal else None, family=family,
        name=name, source=source, multimodal=multimodal, context_length=_context_length(config),
        quantized=four_bit, adapter=str(adapter_path) if adapter_path else None, notes=notes,
    )


def model_class(family: str, text_only: bool) -> Any:
    import transformers

    if family == "gemma3n":
        return transformers.Gemma3nForCausalLM if text_only else transformers.Gemma3nForConditionalGeneration
    return transformers.AutoModelForCausalLM


def load_weights(source: str, family: str, dtype: Any, four_bit: bool, text_only: bool,
                  device: str, is_local: bool) -> Any:
    cls = model_class(family, text_only)
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False)
    if four_bit:
        kwargs["quantization_config"] = bnb_config(dtype)
        kwargs["device_map"] = {"": device}
    try:
        model = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if is_local:
            raise ModelUnavailable(f"cannot load the weights in {source}: {exc}") from None
        raise _hub_hint(source, exc) from None
    except ImportError as exc:  # bitsandbytes / accelerate missing
        raise ModelUnavailable(f"4-bit loading needs bitsandbytes and accelerate: {exc}") from None
    if not four_bit:
        model = model.to(device)
    return model


def merge_adapter(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelUnavailable(f"adapter {adapter} does not fit this model (wrong base or rank?): {reason}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. safetensors' SafetensorError on a corrupt file
        weights = Path(adapter) / "adapter_model.safetensors"
        raise ModelUnavailable(f"cannot read the adapter weights {weights}: {type(exc).__name__}: {exc} "
                               "(the file is damaged or not safetensors; re-copy or re-train the adapter)") from None
    _check_complete(peft_model, adapter)
    return peft_model.merge_and_unload()


def _check_complete(peft_model: Any, adapter: Path) -> None:
    """peft only warns when the file lacks tensors for some adapted modules (they would merge as a no-op):
    refuse such an adapter instead, naming how many are missing."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        stored = {k.rsplit(".lora_", 1)[0] for k in fh.keys() if ".lora_A" in k or ".lora_B" in k}
        pairs = {k.rsplit(".lora_", 1)[0] for k in fh.keys() if ".lora_A" in k} & \
            {k.rsplit(".lora_", 1)[0] for k in fh.keys() if ".lora_B" in k}
    adapted = [name for name, module in peft_model.named_modules() if "default" in getattr(module, "lora_A", {})]
    missing = len(adapted) - len(pairs)
    if missing > 0 or len(pairs) < len(stored):
        raise ModelUnavailable(f"adapter {adapter} is incomplete: {max(missing, len(stored) - len(pairs))} of "
                               f"{len(adapted)} adapted modules have no lora_A/lora_B pair in "
                               "adapter_model.safetensors (a damaged or truncated file); re-train or re-copy it")


def _merge_to_cache(source: str, adapter: Path, family: str, text_only: bool) -> Path:
    import torch

    target = merged_cache_dir(source, adapter, text_only)
    if (target / "config.json").is_file():
        return target
    model = load_weights(source, family, torch.bfloat16, False, text_only, "cpu", True)
    model = merge_adapter(model, adapter)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return target


def load_processing(source: str, family: str, text_only: bool) -> tuple[Any, Any | None]:
    from transformers import AutoProcessor, AutoTokenizer

    processor = None
    try:
        if family == "gemma3n" and not text_only:
            processor = AutoProcessor.from_pretrained(source)
            tokenizer = processor.tokenizer
        else:
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the tokenizer/processor of {source}: {exc}") from None
    return tokenizer, processor
