"""Read a GGUF file back and compare it with the Hugging Face folder it was converted from.

Checks, each reported on one line: the layer count and width in the metadata; a few tensors (the
token embeddings, the final norm, the first and last layers' projections and norms) through gguf's
own HF -> GGUF name map, dequantised when quantised, within a tolerance set by each tensor's stored
type; and the tokenizer (size, token strings at a few ids, BOS/EOS ids).

What llama.cpp's converter changes on purpose, and the check expects:
- Gemma 1/2/3 RMSNorm computes x * (1 + w): the converter stores w + 1. Gemma 3n's norm uses w as
  is, so its norms are stored unchanged.
- Gemma 3 embeddings are cut to the tokenizer's size; Gemma 3n embeddings (and per-layer embeddings)
  are padded with zero rows up to the full vocabulary (262400, with the vision/audio soft tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NORM_SHIFT = {"gemma": 1.0, "gemma2": 1.0, "gemma3": 1.0}
"""Added by the converter to `*norm.weight` tensors, per GGUF architecture (absent: 0)."""
SAMPLE_ROWS = 256
"""Large tensors are compared on 4 blocks of this many rows (first, two middle, last)."""
LARGE = 4_000_000


@dataclass
class Check:
    what: str
    detail: str
    ok: bool


@dataclass
class GGUFReport:
    path: Path
    arch: str
    file_type: str
    n_tensors: int
    size: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def format(self) -> str:
        lines = [f"GGUF check: {self.path.name} ({self.arch}, {self.file_type}, {self.n_tensors} tensors, "
                 f"{self.size / 2**20:.1f} MB)"]
        width = min(max((len(c.what) for c in self.checks), default=0), 36)
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.what:<{width}} {c.detail}" for c in self.checks]
        failed = sum(not c.ok for c in self.checks)
        lines.append(f"  {len(self.checks) - failed} of {len(self.checks)} checks passed")
        return "\n".join(lines)


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return f.contents() if f is not None else None


def _source_tensors(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as fh:
            out.update({k: shard for k in fh.keys()})  # noqa: SIM118 - safe_open is not a mapping
    return out


def _sample(names: dict[str, str], n_layers: int) -> list[str]:
    """HF names (without `language_model.`) of the tensors to compare, in report order."""
    last, wanted = n_layers - 1, []
    for suffix in ("embed_tokens.weight", "embed_tokens_per_layer.weight", "norm.weight",
                   "layers.0.self_attn.q_proj.weight", "layers.0.input_layernorm.weight",
                   f"layers.{last}.mlp.down_proj.weight", f"layers.{last}.post_attention_layernorm.weight"):
        wanted += [n for n in names if n == f"model.{suffix}"]
    return wanted


def _row_blocks(rows: int) -> list[slice]:
    if rows <= 4 * SAMPLE_ROWS:
        return [slice(0, rows)]
    starts = [0, rows // 3, 2 * rows // 3, rows - SAMPLE_ROWS]
    return [slice(s, s + SAMPLE_ROWS) for s in starts]


def _tolerance(type_name: str, expected: Any) -> Any:
    """Elementwise bound on |stored - expected| for the tensor's stored type."""
    import numpy as np

    a = np.abs(expected)
    if type_name == "F32":
        return 1e-6 * a + 1e-7
    if type_name == "F16":
        return 1e-3 * a + 1e-7  # 11-bit mantissa: relative error 2^-11, plus f16 subnormals
    if type_name == "BF16":
        return 8e-3 * a + 1e-30
    if type_name == "Q8_0" and expected.shape[-1] % 32 == 0:
        # per block of 32: scale d = amax/127 (stored in f16); rounding to q*d errs by d/2, plus d's own rounding
        blocks = a.reshape(*a.shape[:-1], -1, 32).max(axis=-1, keepdims=True)
        return np.broadcast_to(0.6 * blocks / 127, (*a.shape[:-1], a.shape[-1] // 32, 32)).reshape(a.shape) + 1e-7
    return 0.1 * a.max() + 1e-7  # other quantisations: only catch gross errors


def _compare(reader_tensor: Any, src_file: Path, src_name: str, shift: float) -> tuple[str, bool]:
    import numpy as np
    from gguf.quants import dequantize
    from safetensors import safe_open

    t = reader_tensor
    type_name = t.tensor_type.name
    with safe_open(str(src_file), "pt") as fh:
        sl = fh.get_slice(src_name)
        src_shape = tuple(sl.get_shape())
        rows_stored = int(t.data.shape[0])
        rows = min(rows_stored, src_shape[0])
        worst, ok, checked = 0.0, True, 0
        for block in _row_blocks(rows):
            expected = sl[block].float().numpy().astype(np.float32) + shift
            got = dequantize(np.asarray(t.data[block]), t.tensor_type).astype(np.float32).reshape(expected.shape)
            diff = np.abs(got - expected)
            ok = ok and bool(np.all(diff <= _tolerance(type_name, expected)))
            worst = max(worst, float(diff.max()))
            checked += block.stop - block.start
    notes = [f"{type_name}", f"max|diff| {worst:.2e}"]
    if shift:
        notes.append(f"norm +{shift:g} as Gemma stores it")
    if checked < src_shape[0]:
        notes.append(f"{checked} of {src_shape[0]} rows compared")
    if rows_stored > src_shape[0]:
        pad = dequantize(np.asarray(t.data[src_shape[0]:src_shape[0] + SAMPLE_ROWS]), t.tensor_type)
        zero = not np.any(pad)
        ok = ok and zero
        notes.append(f"rows {src_shape[0]}..{rows_stored} padding {'zero' if zero else 'NOT zero'}")
    elif rows_stored < src_shape[0]:
        notes.append(f"cut to {rows_stored} rows (the tokenizer's size)")
    return ", ".join(notes), ok


def verify_gguf(path: str | Path, source: str | Path, *, label: str | None = None) -> GGUFReport:
    """Compare a GGUF file with the model folder it came from; see the module docstring.

    Reading the file's vocabulary and merges (gguf.GGUFReader) takes 10-20 s for Gemma's 262k tokens.
    """
    import gguf

    path, source = Path(path), Path(source)
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    file_type = _field(reader, "general.file_type")
    type_name = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    report = GGUFReport(Path(label) if label else path, arch, type_name, len(reader.tensors), path.stat().st_size)
    config = json.loads((source / "config.json").read_text())
    text = config.get("text_config") or config
    n_layers = int(_field(reader, f"{arch}.block_count") or 0)
    for key, hf_key in (("block_count", "num_hidden_layers"), ("embedding_length", "hidden_size")):
        got, want = _field(reader, f"{arch}.{key}"), text.get(hf_key)
        report.checks.append(Check(key, f"{got} (source {hf_key} {want})", got == want))

    archs = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        report.checks.append(Check("tensors", f"architecture {arch!r} unknown to gguf {gguf.__name__}", False))
        return report
    name_map = gguf.get_tensor_name_map(archs[arch], n_layers)
    stored = {t.name: t for t in reader.tensors}
    files = {k.replace("language_model.", ""): (k, f) for k, f in _source_tensors(source).items()}
    for name in _sample({k: k for k in files}, n_layers):
        base = name.removesuffix(".weight")
        gname = name_map.get_name(base)
        t = stored.get(f"{gname}.weight") if gname else None
        if t is None:
            report.checks.append(Check(name, f"no GGUF tensor for it (mapped to {gname})", False))
            continue
        shift = NORM_SHIFT.get(arch, 0.0) if name.endswith("norm.weight") else 0.0
        detail, ok = _compare(t, files[name][1], files[name][0], shift)
        report.checks.append(Check(t.name, f"{detail}; from {name}", ok))
    report.checks.append(_check_tokenizer(reader, source, text.get("vocab_size")))
    return report


def _check_tokenizer(reader: Any, source: Path, vocab_size: int | None) -> Check:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        return Check("tokenizer", "no tokenizer.ggml.tokens in the file", False)

    def stored(i: int) -> str:
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8", errors="replace")

    n, n_hf = len(tokens.data), len(tok)
    ids = sorted({0, 1, 2, 3, 105, 106, 1000, 10_000, n_hf // 2, n_hf - 1} & set(range(min(n, n_hf))))
    wrong = [f"{i}: {stored(i)!r} vs {tok.convert_ids_to_tokens(i)!r}" for i in ids
             if stored(i) != tok.convert_ids_to_tokens(i)]
    bos, eos = _field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id")
    specials_ok = bos == tok.bos_token_id and eos == tok.eos_token_id
    size_ok = n in (n_hf, vocab_size)
    detail = (f"{n} tokens (source {n_hf}); ids {' '.join(map(str, ids))} "
              f"{'same strings' if not wrong else 'differ: ' + '; '.join(wrong)}; bos {bos} eos {eos}"
              f"{'' if specials_ok else f' (source bos {tok.bos_token_id} eos {tok.eos_token_id})'}")
    return Check("tokenizer", detail, size_ok and not wrong and specials_ok)
