"""MatFormer slicing: cut a (fine-tuned) Gemma 3n E4B into E2B or any mix-n-match size, verified.

`python -m krishna_ai slice --src E4B_DIR --out OUT --config e2b` streams the parent's safetensors
tensor by tensor (big ones in row chunks, never the whole model in memory) into a sharded child
with an edited config.json, the tokenizer/processor files and a slice report. `--plan` prints the
report only; without --src it plans against the real E4B shape, built on the `meta` device.

Slice configs are data: krishna_ai/slicing/*.toml (Google's published ones) or a .toml/.json file.
The config edits fix the three bugs of Google's MatFormer Lab notebook: layer_types is filtered
to the kept layers, the sparsity pattern is written as floats, and the projection that
transformers 4.53-4.57 saved as `per_layer_model.language_model_projection` is sliced too.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from krishna_ai.errors import ConfigError, ModelUnavailable, problems

SLICING_DIR = Path(__file__).resolve().parent / "slicing"
CONFIG_KEYS = {"name", "description", "source", "effective_params_b", "mmlu_pt", "relative_to", "skip_layers",
               "ffn_widths"}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
NOT_COPIED = {"config.json", ".gitattributes", "slice_report.json"}
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class SliceConfig:
    """A MatFormer slice: the layers to skip and one FFN width per kept layer."""

    name: str
    ffn_widths: tuple[int, ...]
    """One per kept layer. With `relative_to`, for a parent whose FFN is that wide (others scale in proportion)."""
    skip_layers: tuple[int, ...] = ()
    relative_to: int | None = None
    """E.g. 16384: a width of 8192 means half of the parent's own FFN width at that layer."""
    description: str = ""
    source: str = ""
    effective_params_b: float | None = None
    """Google's published effective size (billions) of this slice of E4B, when it is one of theirs."""
    mmlu_pt: float | None = None


@dataclass(frozen=True)
class ParentShape:
    """What slicing needs to know about the parent's text model (read from its config)."""

    num_layers: int
    ffn_widths: tuple[int, ...]
    layer_types: tuple[str, ...]
    num_kv_shared: int
    sparsity: tuple[float, ...]
    per_layer_dim: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ParentShape:
        text = config.get("text_config") or config
        n = int(text["num_hidden_layers"])
        widths = text["intermediate_size"]
        widths = [int(w) for w in widths] if isinstance(widths, list) else [int(widths)] * n
        types = text.get("layer_types") or ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention"
                                            for i in range(n)]
        sparsity = text.get("activation_sparsity_pattern")
        if sparsity is None:
            sparsity = [0.95] * 10 + [0.0] * (n - 10) if n > 10 else [0.0] * n
        elif not isinstance(sparsity, list):
            sparsity = [sparsity] * n
        lists = {"intermediate_size": widths, "layer_types": types, "activation_sparsity_pattern": sparsity}
        wrong = [f"{key} has {len(v)} entries" for key, v in lists.items() if len(v) != n]
        if wrong:  # e.g. the output of the MatFormer Lab notebook, which kept all 35 layer_types (bug 1)
            raise ConfigError(problems(f"the parent's config is inconsistent ({n} layers):", wrong))
        return cls(n, tuple(widths), tuple(types), int(text.get("num_kv_shared_layers", 0)),
                   tuple(float(s) for s in sparsity), int(text["hidden_size_per_layer_input"]))

    def kv_producers(self) -> dict[int, list[int]]:
        """Layer -> the KV-shared layers that read its K/V (the last full and last sliding non-shared layers)."""
        first_shared = self.num_layers - self.num_kv_shared
        found: dict[int, list[int]] = {}
        for kind in dict.fromkeys(self.layer_types):
            own = [i for i in range(first_shared) if self.layer_types[i] == kind]
            readers = [i for i in range(first_shared, self.num_layers) if self.layer_types[i] == kind]
            if own and readers:
                found[own[-1]] = readers
        return found

    def kv_roles(self) -> list[str]:
        """Per layer: "own" K/V, "store" (own, and KV-shared layers read it) or "shared" (reads another's)."""
        first_shared = self.num_layers - self.num_kv_shared
        roles = ["own" if i < first_shared else "shared" for i in range(self.num_layers)]
        for producer in self.kv_producers():
            roles[producer] = "store"
        return roles


@dataclass(frozen=True)
class Resolved:
    """A slice config checked against one parent: kept parent layers and their absolute FFN widths."""

    config: SliceConfig
    parent: ParentShape
    kept: tuple[int, ...]
    widths: tuple[int, ...]

    @property
    def skipped(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.parent.num_layers) if i not in self.kept)

    def text_config_edits(self) -> dict[str, Any]:
        p, shared_from = self.parent, self.parent.num_layers - self.parent.num_kv_shared
        return {
            "num_hidden_layers": len(self.kept),
            "intermediate_size": list(self.widths),
            "num_kv_shared_layers": p.num_kv_shared - sum(i >= shared_from for i in self.skipped),
            # For E4B this is 0.95 for the first (10 - skipped below 10) layers, then 0.0 (floats: bug 2)
            "activation_sparsity_pattern": [float(p.sparsity[i]) for i in self.kept],
            "layer_types": [p.layer_types[i] for i in self.kept],  # bug 1: the notebook kept all 35
        }

    def child(self) -> ParentShape:
        e = self.text_config_edits()
        return ParentShape(len(self.kept), self.widths, tuple(e["layer_types"]), e["num_kv_shared_layers"],
                           tuple(e["activation_sparsity_pattern"]), self.parent.per_layer_dim)


# ---------------------------------------------------------------- configs

def known_configs() -> list[str]:
    return sorted(p.stem for p in SLICING_DIR.glob("*.toml"))


def load_slice_config(spec: str | Path | SliceConfig) -> SliceConfig:
    """A shipped config by name (see `known_configs()`), or a .toml/.json file. Raises ConfigError."""
    if isinstance(spec, SliceConfig):
        return spec
    path = Path(spec).expanduser()
    if not path.is_file():
        if str(spec).endswith((".toml", ".json")) or os.sep in str(spec):
            raise ConfigError(f"slice config file {str(spec)!r} does not exist")
        path = SLICING_DIR / f"{spec}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown slice config {str(spec)!r}; known: {', '.join(known_configs())} "
                              "(or give a .toml/.json file)")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read slice config ({exc})") from None
    return _config_from_mapping(raw, path)


def _config_from_mapping(raw: Any, path: Path) -> SliceConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a slice config is a table of keys, not {type(raw).__name__}")
    issues = [f"unknown key {k!r} (allowed: {', '.join(sorted(CONFIG_KEYS))})" for k in raw if k not in CONFIG_KEYS]
    widths = raw.get("ffn_widths")
    if not isinstance(widths, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        issues.append("ffn_widths must be a list of integers, one per kept layer")
        widths = []
    skips = raw.get("skip_layers", [])
    if not isinstance(skips, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in skips):
        issues.append("skip_layers must be a list of layer indices")
        skips = []
    rel = raw.get("relative_to")
    if rel is not None and (not isinstance(rel, int) or isinstance(rel, bool) or rel <= 0):
        issues.append(f"relative_to must be a positive integer (the FFN width the widths refer to), not {rel!r}")
        rel = None
    for key in ("effective_params_b", "mmlu_pt"):
        if not isinstance(raw.get(key, 0.0), int | float) or isinstance(raw.get(key), bool):
            issues.append(f"{key} must be a number, not {raw[key]!r}")
    if issues:
        raise ConfigError(problems(f"slice config {path} is invalid:", issues))
    return SliceConfig(name=str(raw.get("name", path.stem)), ffn_widths=tuple(widths), skip_layers=tuple(skips),
                       relative_to=rel, description=str(raw.get("description", "")),
                       source=str(raw.get("source", path)), effective_params_b=raw.get("effective_params_b"),
                       mmlu_pt=raw.get("mmlu_pt"))


def resolve(config: SliceConfig, parent: ParentShape) -> Resolved:
    """Check a config against a parent and name every problem at once (one ConfigError)."""
    n, issues = parent.num_layers, []
    seen: set[int] = set()
    for i in config.skip_layers:
        if not 0 <= i < n:
            issues.append(f"skip_layers: {i} is out of range (the parent has layers 0-{n - 1})")
        elif i in seen:
            issues.append(f"skip_layers: {i} is listed twice")
        seen.add(i)
    skipped = {i for i in seen if 0 <= i < n}
    for producer, readers in parent.kv_producers().items():
        still_read = [r for r in readers if r not in skipped]
        if producer in skipped and still_read:
            issues.append(f"skip_layers: layer {producer} cannot be skipped: it is the last "
                          f"{parent.layer_types[producer].split('_')[0]}-attention layer that computes K/V, and "
                          f"the KV-shared layers {_ranges(still_read)} take their KV cache from it")
    kept = tuple(i for i in range(n) if i not in skipped)
    if not kept:
        issues.append("skip_layers: every layer is skipped")
    raw = config.ffn_widths
    if len(raw) != len(kept):
        issues.append(f"ffn_widths has {len(raw)} entries but {len(kept)} layers are kept ({n} - {len(skipped)} "
                      "skipped): give one width per kept layer")
    widths = []
    for i, w in zip(kept, raw, strict=False):
        full = parent.ffn_widths[i]
        absolute = w * full // config.relative_to if config.relative_to else w
        shown = f"{w} (= {absolute} for this parent)" if config.relative_to and absolute != w else str(w)
        if w <= 0:
            issues.append(f"layer {i}: FFN width {w} is not positive")
        elif config.relative_to and (w * full) % config.relative_to:
            issues.append(f"layer {i}: FFN width {w} of {config.relative_to} is not a whole number of the "
                          f"parent's {full}")
        elif absolute > full:
            issues.append(f"layer {i}: FFN width {shown} is above the parent's {full}")
        widths.append(absolute)
    if issues:
        raise ConfigError(problems(f"slice config {config.name!r} does not fit this parent ({n} layers):", issues))
    return Resolved(config, parent, kept, tuple(widths))


def _ranges(xs: list[int] | tuple[int, ...]) -> str:
    out: list[str] = []
    for x in sorted(xs):
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ", ".join(out) or "none"


# ---------------------------------------------------------------- tensor plan

@dataclass(frozen=True)
class TensorPlan:
    """One child tensor: where it comes from, and which parent rows/columns it keeps (None: all)."""

    name: str
    source: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    rows: tuple[tuple[int, int], ...] | None = None
    cols: tuple[tuple[int, int], ...] | None = None

    @property
    def numel(self) -> int:
        out = 1
        for d in self.shape:
            out *= d
        return out

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_PROJECTION = re.compile(r"^per_layer_model(?:\.language_model)?_projection\.weight$")  # bug 3: the 4.53-4.57 name


def text_prefix(names: list[str] | dict[str, Any]) -> str:
    for name in names:
        if name.endswith("embed_tokens_per_layer.weight"):
            return name[: -len("embed_tokens_per_layer.weight")]
    raise ConfigError("no embed_tokens_per_layer tensor: this is not a Gemma 3n checkpoint")


def map_tensors(tensors: dict[str, tuple[str, str, tuple[int, ...]]], r: Resolved, *, multimodal: bool,
                text_only: bool = False) -> list[TensorPlan]:
    """Apply the slicing rules to the parent's tensors {name: (file, dtype, shape)}; names come out as 5.x names."""
    prefix = text_prefix(tensors)
    out_prefix = "model.language_model." if multimodal and not text_only else "model."
    new_index = {old: new for new, old in enumerate(r.kept)}
    p = r.parent.per_layer_dim
    layer_cols = _merge([(i * p, (i + 1) * p) for i in r.kept])
    plans, issues = [], []
    for name, (file, dtype, shape) in sorted(tensors.items()):
        if dtype not in DTYPE_BYTES:
            raise ConfigError(f"{name}: unsupported dtype {dtype} (slice the bf16/fp32 checkpoint)")
        if not name.startswith(prefix):
            if not text_only or name == "lm_head.weight":
                plans.append(TensorPlan(name, name, file, dtype, shape))
            continue
        rest, rows, cols, new_shape = name[len(prefix):], None, None, shape
        if m := _LAYER.match(rest):
            i, sub = int(m.group(1)), m.group(2)
            if i not in new_index:
                continue
            rest, d, full = f"layers.{new_index[i]}.{sub}", r.widths[new_index[i]], r.parent.ffn_widths[i]
            if sub in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
                axis = 1 if sub.startswith("mlp.down") else 0
                if shape[axis] != full:
                    issues.append(f"{name}: shape {list(shape)} disagrees with the config's FFN width {full}")
                elif d < full and axis == 0:  # gate/up: the first d output rows
                    rows, new_shape = ((0, d),), (d, shape[1])
                elif d < full:  # down: the first d input columns
                    cols, new_shape = ((0, d),), (shape[0], d)
        elif rest == "embed_tokens_per_layer.weight":
            if shape[1] != r.parent.num_layers * p:
                issues.append(f"{name}: shape {list(shape)} is not [vocab, {r.parent.num_layers} layers x {p}]")
            cols, new_shape = layer_cols, (shape[0], len(r.kept) * p)
        elif _PROJECTION.match(rest):
            if shape[0] != r.parent.num_layers * p:
                issues.append(f"{name}: shape {list(shape)} is not [{r.parent.num_layers} layers x {p}, hidden]")
            rest, rows, new_shape = "per_layer_model_projection.weight", layer_cols, (len(r.kept) * p, shape[1])
        if rows is not None and rows == ((0, shape[0]),):
            rows = None  # every row kept: a plain copy
        if cols is not None and cols == ((0, shape[1]),):
            cols = None
        plans.append(TensorPlan(out_prefix + rest, name, file, dtype, tuple(new_shape), rows, cols))
    if issues:
        raise ConfigError(problems("the parent's weights do not match its config:", issues))
    return plans


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return tuple(out)


def child_config(parent: dict[str, Any], r: Resolved, *, text_only: bool = False) -> dict[str, Any]:
    config = json.loads(json.dumps(parent))
    if text_only and "text_config" in config:
        text = config["text_config"]
        text.update(architectures=["Gemma3nForCausalLM"], model_type="gemma3n_text")
        for key in ("dtype", "torch_dtype", "transformers_version"):
            if key in config and key not in text:
                text[key] = config[key]
        config = text
    (config.get("text_config") or config).update(r.text_config_edits())
    return config


def check_loadable(config: dict[str, Any], plans: list[TensorPlan]) -> list[str]:
    """Build the child's class on the meta device and compare its text tensors with the plan's."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForCausalLM, Gemma3nForConditionalGeneration, Gemma3nTextConfig

    multimodal = "text_config" in config
    cfg = Gemma3nConfig.from_dict(config) if multimodal else Gemma3nTextConfig.from_dict(config)
    with torch.device("meta"):
        model = (Gemma3nForConditionalGeneration if multimodal else Gemma3nForCausalLM)(cfg)
    prefix = "model.language_model." if multimodal else "model."
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith(prefix) or (k == "lm_head.weight" and not tied)}
    have = {p.name: p.shape for p in plans if p.name.startswith(prefix) or p.name == "lm_head.weight"}
    text_model = model.model.language_model if multimodal else model.model
    ignored = [re.compile(re.escape(prefix + k)) for k in text_model._keys_to_ignore_on_load_unexpected or []]
    issues = [f"missing {k}" for k in want if k not in have]
    issues += [f"unexpected {k}" for k in have if k not in want and not any(p.match(k) for p in ignored)]
    issues += [f"{k}: shape {list(have[k])}, the model expects {list(s)}" for k, s in want.items()
               if k in have and have[k] != s]
    return issues


class _LoadCheck:
    """`check_loadable` in a child Python process, started at once; `result()` waits for its issues."""

    def __init__(self, config: dict[str, Any], plans: list[TensorPlan]):
        payload = json.dumps({"config": config, "tensors": {p.name: list(p.shape) for p in plans}})
        root = str(Path(__file__).resolve().parent.parent)  # krishna_ai importable in the child as here
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from krishna_ai.matformer import _load_check_main; _load_check_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._out: tuple[str, str] | None = None
        self._thread = threading.Thread(target=self._talk, args=(payload,), name="krishna-slice-check", daemon=True)
        self._thread.start()

    def _talk(self, payload: str) -> None:
        self._out = self._proc.communicate(payload)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> list[str]:
        self._thread.join()
        out, err = self._out or ("", "")
        if self._proc.returncode != 0:
            raise RuntimeError(f"the loadability check failed (exit code {self._proc.returncode}):\n{err[-2000:]}")
        return json.loads(out)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._thread.join()


def _load_check_main() -> None:
    """The child side of `_LoadCheck`: config and tensor shapes as JSON on stdin, issues as JSON on stdout."""
    from types import SimpleNamespace

    job = json.loads(sys.stdin.read())
    plans = [SimpleNamespace(name=k, shape=tuple(v)) for k, v in job["tensors"].items()]
    print(json.dumps(check_loadable(job["config"], plans)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- report

@dataclass
class SliceReport:
    config: str
    description: str
    parent: str
    layers: list[dict[str, Any]]
    skipped: list[int]
    params: dict[str, int]
    parent_params: dict[str, int]
    child_bytes: int
    published_effective_b: float | None = None
    output: str | None = None
    shards: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def render(self) -> str:
        lines = [f"slice {self.config}: {self.description}".rstrip(": "), f"parent: {self.parent}",
                 f"{'layer':>5} {'from':>5}  {'attention':9}  {'kv':6} {'ffn':>7} / {'parent':<7} {'sparsity':>8}"]
        lines += [f"{x['layer']:>5} {x['from']:>5}  {x['attention']:9}  {x['kv']:6} {x['ffn']:>7} / "
                  f"{x['parent_ffn']:<7} {x['sparsity']:>8.2f}" for x in self.layers]
        lines.append(f"skipped layers: {_ranges(self.skipped)}")
        c, pp = self.params, self.parent_params
        lines.append("parameters (what the checkpoint stores)      child           parent")
        for key, label in (("total", "total"), ("text", "text"), ("effective", "effective (text - embeddings)"),
                           ("per_layer_embeddings", "per-layer embeddings"), ("token_embedding", "token embedding")):
            lines.append(f"  {label:40s} {c[key]:>15,} {pp[key]:>16,}")
        if c["tied_head"]:
            lines.append(f"  {'total + tied output head, counted again':40s} {c['total'] + c['tied_head']:>15,} "
                         f"{pp['total'] + pp['tied_head']:>16,}")
            lines.append("  (the output head shares the token embedding; the MatFormer Lab notebook's total counts it "
                         "a second time)")
        if self.published_effective_b is not None:
            mine = c["effective"] / 1e9
            verdict = ("matches" if round(mine, 2) == self.published_effective_b else
                       f"{mine - self.published_effective_b:+.3f}B: Google's table gives rounded sizes of E4B slices, "
                       "and its 35-layer mix-n-match rows do not follow from the stored tensors")
            lines.append(f"published effective size of this slice of E4B: {self.published_effective_b:.2f}B; "
                         f"counted here: {mine:.3f}B ({verdict})")
        lines.append(f"size on disk: {self.child_bytes / 1e9:.2f} GB" + (f" in {self.shards} shard(s) at {self.output}"
                                                                        if self.output else " (plan only)"))
        return "\n".join(lines + self.notes)


def count_params(plans: list[TensorPlan], config: dict[str, Any]) -> dict[str, int]:
    text_cfg = config.get("text_config") or config
    prefix = text_prefix([p.name for p in plans])
    by_name = {p.name: p.numel for p in plans}
    text = sum(p.numel for p in plans if p.name.startswith(prefix) or p.name == "lm_head.weight")
    ple, tok = by_name[prefix + "embed_tokens_per_layer.weight"], by_name.get(prefix + "embed_tokens.weight", 0)
    tied = text_cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", True))
    tied = tied and "lm_head.weight" not in by_name
    return {"total": sum(by_name.values()), "text": text, "effective": text - ple - tok, "per_layer_embeddings": ple,
            "token_embedding": tok, "tied_head": tok if tied else 0}


def build_report(r: Resolved, parent_plans: list[TensorPlan], plans: list[TensorPlan], parent_cfg: dict[str, Any],
                 config: dict[str, Any], parent_label: str) -> SliceReport:
    p, roles = r.parent, r.child().kv_roles()
    layers = [{"layer": j, "from": i, "attention": p.layer_types[i].split("_")[0], "kv": roles[j], "ffn": r.widths[j],
               "parent_ffn": p.ffn_widths[i], "sparsity": p.sparsity[i]} for j, i in enumerate(r.kept)]
    # Google's published sizes are for slices of the real E4B; other parents (a tiny test model) don't compare
    e4b = p.num_layers == 35 and set(p.ffn_widths) == {16384} and p.per_layer_dim == 256
    report = SliceReport(r.config.name, r.config.description, parent_label, layers, list(r.skipped),
                         count_params(plans, config), count_params(parent_plans, parent_cfg),
                         sum(x.nbytes for x in plans), r.config.effective_params_b if e4b else None)
    shared = {j for j, role in enumerate(roles) if role == "shared"}
    unused = [x for x in plans if (m := re.search(r"layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm)\.", x.name))
              and int(m.group(1)) in shared]
    if unused:
        layers_with = len({re.search(r"layers\.(\d+)\.", x.name).group(1) for x in unused})
        report.notes.append(f"note: the checkpoint stores K/V projections for {layers_with} KV-shared layers "
                            f"({sum(x.numel for x in unused):,} parameters, counted above as in Google's figures); "
                            "transformers >= 5.6 has no such modules and ignores them on load")
    return report


# ---------------------------------------------------------------- plan and slice

def read_parent(src: str | Path) -> tuple[dict[str, Any], dict[str, tuple[str, str, tuple[int, ...]]]]:
    """config.json and {tensor: (shard file, dtype, shape)} from the safetensors headers (no weights read)."""
    src = Path(src).expanduser()
    if not (src / "config.json").is_file():
        raise ModelUnavailable(f"{src} has no config.json: give the parent checkpoint folder")
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({src / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    else:
        files = sorted(f for f in src.glob("*.safetensors") if not f.name.startswith("adapter_"))
    if not files:
        raise ModelUnavailable(f"{src} has no *.safetensors weights (the slicer reads safetensors only)")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in ("gemma3n", "gemma3n_text"):
        raise ConfigError(f"{src} is not a Gemma 3n checkpoint (model_type {config.get('model_type')!r})")
    if config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config"):
        raise ConfigError(f"{src} is quantised: slice the bf16/fp32 checkpoint, then quantise the child")
    tensors = {}
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, meta in header.items():
            if name != "__metadata__":
                tensors[name] = (f.name, meta["dtype"], tuple(meta["shape"]))
    return config, tensors


@functools.cache
def e4b_reference() -> tuple[dict[str, Any], dict[str, tuple[str, str, tuple[int, ...]]]]:
    """The real E4B's config and stored tensor shapes, from the default Gemma3nConfig built on `meta`."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    config = Gemma3nConfig()
    with torch.device("meta"):
        model = Gemma3nForConditionalGeneration(config)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    tensors = {k: ("", "BF16", tuple(v.shape)) for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}
    # Google's checkpoint still stores K/V projections and k_norm for the KV-shared layers, which
    # transformers >= 5.6 no longer builds (and ignores on load): count what the checkpoint stores.
    t = config.text_config
    for i, layer in enumerate(model.model.language_model.layers):
        if layer.self_attn.is_kv_shared_layer:
            kv = (t.num_key_value_heads * t.head_dim, t.hidden_size)
            base = f"model.language_model.layers.{i}.self_attn."
            tensors.update({base + "k_proj.weight": ("", "BF16", kv), base + "v_proj.weight": ("", "BF16", kv),
                            base + "k_norm.weight": ("", "BF16", (t.head_dim,))})
    return config.to_dict(), tensors


def _plan(config: str | Path | SliceConfig, src: str | Path | None, text_only: bool):
    """Resolve the slice and map every tensor (no torch needed); `_prepare` adds the loadability check."""
    cfg = load_slice_config(config)
    parent_cfg, tensors = read_parent(src) if src is not None else e4b_reference()
    r = resolve(cfg, ParentShape.from_config(parent_cfg))
    multimodal = "text_config" in parent_cfg
    plans = map_tensors(tensors, r, multimodal=multimodal, text_only=text_only)
    child = child_config(parent_cfg, r, text_only=text_only)
    identity = Resolved(cfg, r.parent, tuple(range(r.parent.num_layers)), r.parent.ffn_widths)
    label = str(src) if src is not None else "Gemma 3n E4B shape (default Gemma3nConfig on the meta device, bf16)"
    report = build_report(r, map_tensors(tensors, identity, multimodal=multimodal), plans, parent_cfg, child, label)
    return r, plans, child, report


def _raise_unloadable(issues: list[str]) -> None:
    if issues:
        raise ConfigError(problems("the sliced checkpoint would not load in transformers:", issues[:20]))


def _prepare(config: str | Path | SliceConfig, src: str | Path | None, text_only: bool):
    r, plans, child, report = _plan(config, src, text_only)
    _raise_unloadable(check_loadable(child, plans))
    return r, plans, child, report


def plan_slice(config: str | Path | SliceConfig, src: str | Path | None = None, *,
               text_only: bool = False) -> SliceReport:
    """The slice report without writing anything; without `src`, against the real E4B shape."""
    return _prepare(config, src, text_only)[3]


def slice_checkpoint(src: str | Path, out: str | Path, config: str | Path | SliceConfig, *, text_only: bool = False,
                     max_shard_size: int | str = "4GB", overwrite: bool = False, progress: bool = True) -> SliceReport:
    """Write the sliced child of `src` to `out` (atomically: a temp sibling folder renamed at the end).

    The check that transformers can load the child (its class built on the meta device: seconds, most
    of them importing torch and transformers) runs in a child Python process while the bytes stream (in
    a thread it would hold the GIL each time the streaming returns from a read or write: measured 1.5x
    slower); a failed check stops the writing at the next tensor and, like any failure, leaves
    nothing behind.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    _, plans, child, report = _plan(config, src, text_only)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    check = _LoadCheck(child, plans)

    def checked() -> None:
        if check.done():
            _raise_unloadable(check.result())

    try:
        shards = _write_shards(plans, src, tmp, parse_size(max_shard_size), progress, between=checked)
        _raise_unloadable(check.result())
        for f in sorted(src.iterdir()):
            # model cards (*.md) describe the parent, not the child
            if f.is_file() and f.name not in NOT_COPIED and not f.name.endswith((*WEIGHT_SUFFIXES, ".md")):
                shutil.copy2(f, tmp / f.name)
        report.output, report.shards = str(out), shards
        (tmp / "slice_report.json").write_text(report.to_json() + "\n", encoding="utf-8")
        # config.json last: a folder without it never looks like a finished checkpoint
        (tmp / "config.json").write_text(json.dumps(child, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        check.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*((?:[KMGT]i?)?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ConfigError(f"bad size {size!r}: use bytes or e.g. 500MB, 4GB, 2GiB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    return int(float(m.group(1)) * base ** "BKMGT".index(unit[0]))


class _Shard:
    """A parent shard read with positional reads, never memory-mapped: the pages a slice reads stay in the
    page cache and out of this process's resident memory (an mmap'ed 16 GB parent counted in full)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        size = struct.unpack("<Q", os.pread(self.fd, 8, 0))[0]
        self.header = json.loads(os.pread(self.fd, size, 8))
        self.base = 8 + size

    def locate(self, name: str) -> tuple[int, list[int]]:
        """(absolute byte offset, shape) of tensor `name`."""
        meta = self.header[name]
        return self.base + meta["data_offsets"][0], meta["shape"]

    def prefetch(self, offset: int, nbytes: int) -> None:
        """Ask the kernel to start reading these bytes into the page cache now (returns at once)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class _Range:
    """Bytes [offset, offset + nbytes) of the source shard that go to the child unchanged."""

    offset: int
    nbytes: int


def _read_into(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of the parent shard at byte {offset + done}")
        done += n


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data):]


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Append source bytes to dst: in the kernel (copy_file_range, as cp does), else by reads and writes."""
    copy = getattr(os, "copy_file_range", None)
    while count:
        n = 0
        if copy is not None:
            try:
                n = copy(src_fd, dst_fd, count, offset)
            except OSError:  # EXDEV on older kernels, or a file system without it
                copy = None
        if n <= 0:
            data = os.pread(src_fd, min(count, CHUNK_BYTES), offset)
            if not data:
                raise OSError(f"unexpected end of the parent shard at byte {offset}")
            _write_all(dst_fd, memoryview(data))
            n = len(data)
        offset += n
        count -= n


def _spans(handle: _Shard, plan: TensorPlan) -> tuple[list[tuple[int, int]], int]:
    """The parent byte spans (offset, nbytes) the child tensor is read from, in order, and the parent's row
    size in bytes: whole tensors and kept row ranges in blocks of at most CHUNK_BYTES of rows."""
    start, shape = handle.locate(plan.source)
    if len(shape) < 2:
        return [(start, plan.nbytes)], plan.nbytes
    row_bytes = DTYPE_BYTES[plan.dtype]
    for d in shape[1:]:
        row_bytes *= d
    step = max(1, CHUNK_BYTES // row_bytes)
    rows = plan.rows or ((0, shape[0]),)
    return [(start + r * row_bytes, (min(r + step, b) - r) * row_bytes)
            for a, b in rows for r in range(a, b, step)], row_bytes


def _read_ahead(fd: int, spans: list[tuple[int, int]], size: int) -> Iterator[memoryview]:
    """The bytes of each span in turn, read by a thread into two alternating buffers of `size` bytes: the
    disk reads span k+1 while span k is used. A view is valid until the next one is asked for."""
    free: queue.Queue[memoryview | None] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | BaseException] = queue.Queue()
    for _ in range(2):
        free.put(memoryview(bytearray(size)))
    stop = threading.Event()

    def reader() -> None:
        try:
            for offset, nbytes in spans:
                buf = free.get()
                if buf is None or stop.is_set():
                    return
                _read_into(fd, buf[:nbytes], offset)
                full.put((buf, nbytes))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            full.put(exc)

    thread = threading.Thread(target=reader, name="krishna-slice-read", daemon=True)
    thread.start()
    try:
        for _ in spans:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buf, nbytes = item
            yield buf[:nbytes]
            free.put(buf)
    finally:
        stop.set()
        free.put(None)
        thread.join()


def _chunks(handle: _Shard, plan: TensorPlan) -> Iterator[_Range | Any]:
    """The child tensor in row blocks of at most CHUNK_BYTES of parent rows, never the whole tensor.

    Kept rows are contiguous bytes of the parent: they come as `_Range`s to copy unchanged, each block's
    successor handed to the kernel's readahead first, so the disk reads it while this one is copied.
    Column slices (down_proj, the per-layer embedding) come as arrays gathered from a block of rows
    that a reader thread has read while the previous block was gathered and written.
    """
    import numpy as np

    spans, row_bytes = _spans(handle, plan)
    if plan.cols is None:
        for i, (offset, nbytes) in enumerate(spans):
            if i + 1 < len(spans):
                handle.prefetch(*spans[i + 1])
            yield _Range(offset, nbytes)
        return
    _, shape = handle.locate(plan.source)
    col_bytes = row_bytes // shape[1]
    cuts = [(c0 * col_bytes, c1 * col_bytes) for c0, c1 in plan.cols]
    # copy in the widest unsigned words that every cut is a multiple of (uint8 copies are slower)
    unit = next(u for u in (8, 4, 2, 1) if all(x % u == 0 for x in (row_bytes, *sum(cuts, ()))))
    word = np.dtype(f"u{unit}")
    out_row = sum(b - a for a, b in cuts)
    most_rows = max((n for _, n in spans), default=0) // row_bytes
    out = np.empty(most_rows * out_row // unit, dtype=word)
    for view in _read_ahead(handle.fd, spans, most_rows * row_bytes):
        rows = len(view) // row_bytes
        block = np.frombuffer(view, dtype=word).reshape(rows, row_bytes // unit)
        gathered = out[: rows * out_row // unit].reshape(rows, out_row // unit)
        at = 0
        for a, b in cuts:
            gathered[:, at:at + (b - a) // unit] = block[:, a // unit:b // unit]
            at += (b - a) // unit
        yield gathered  # a view of a reused buffer: written out before the next block is gathered


def _write_shards(plans: list[TensorPlan], src: Path, out: Path, max_bytes: int, progress: bool,
                  between: Callable[[], None] = lambda: None) -> int:
    """Stream the planned tensors into safetensors shards (header first, then data) plus the index;
    `between` runs before each tensor (and may raise to stop)."""
    from tqdm.auto import tqdm

    groups: list[list[TensorPlan]] = [[]]
    for p in plans:
        if groups[-1] and sum(x.nbytes for x in groups[-1]) + p.nbytes > max_bytes:
            groups.append([])
        groups[-1].append(p)
    weight_map: dict[str, str] = {}
    handles: dict[str, _Shard] = {}
    following = {a.name: b for a, b in itertools.pairwise(plans)}

    def handle(p: TensorPlan) -> _Shard:
        if p.file not in handles:
            handles[p.file] = _Shard(src / p.file)
        return handles[p.file]

    bar = tqdm(total=sum(p.nbytes for p in plans), unit="B", unit_scale=True, desc="slicing", disable=not progress)
    try:
        for k, group in enumerate(groups, 1):
            name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for p in group:
                header[p.name] = {"dtype": p.dtype, "shape": list(p.shape), "data_offsets": [offset, offset + p.nbytes]}
                offset += p.nbytes
                weight_map[p.name] = name
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            with open(out / name, "wb", buffering=0) as fh:
                fd = fh.fileno()
                _write_all(fd, memoryview(struct.pack("<Q", len(blob)) + blob))
                for p in group:
                    between()
                    shard = handle(p)
                    if (after := following.get(p.name)) is not None:  # the next tensor's first block, read ahead
                        nxt = handle(after)
                        for span in _spans(nxt, after)[0][:1]:
                            nxt.prefetch(*span)
                    written = 0
                    for block in _chunks(shard, p):
                        if isinstance(block, _Range):
                            _copy_range(shard.fd, fd, block.offset, block.nbytes)
                        else:
                            _write_all(fd, memoryview(block).cast("B"))
                        written += block.nbytes
                        bar.update(block.nbytes)
                    if written != p.nbytes:
                        raise RuntimeError(f"{p.name}: wrote {written} bytes, planned {p.nbytes}")
    finally:
        bar.close()
        for h in handles.values():
            h.close()
    index = {"metadata": {"total_size": sum(p.nbytes for p in plans), "total_parameters": sum(p.numel for p in plans)},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(groups)


# ---------------------------------------------------------------- command line

def add_cli(sub: Any) -> None:
    """Register `slice` on the CLI's subparsers."""
    p = sub.add_parser("slice", help="MatFormer: slice a Gemma 3n E4B (fine-tuned or not) into E2B or a custom size",
                       description="Slice an E4B-shaped Gemma 3n checkpoint into a smaller MatFormer child.")
    p.add_argument("--config", metavar="NAME|FILE", help="shipped config name (see --list) or a .toml/.json file")
    p.add_argument("--src", metavar="DIR", help="parent checkpoint folder (E4B-shaped Gemma 3n, safetensors)")
    p.add_argument("--out", metavar="DIR", help="output folder (written atomically; must not exist unless --overwrite)")
    p.add_argument("--plan", action="store_true", help="print the report only (without --src: the real E4B shape)")
    p.add_argument("--text-only", action="store_true", dest="text_only",
                   help="drop the vision/audio towers: a Gemma3nForCausalLM checkpoint")
    p.add_argument("--max-shard-size", default="4GB", dest="max_shard_size", metavar="SIZE",
                   help="e.g. 2GB, 500MB (default 4GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--list", action="store_true", help="list the shipped configs and exit")
    p.set_defaults(func=_cmd_slice)


def _cmd_slice(args: argparse.Namespace) -> int:
    if args.list:
        for name in known_configs():
            c = load_slice_config(name)
            print(f"{name:22s} {c.description}")
        return 0
    if not args.config:
        raise ConfigError("slice needs --config NAME|FILE (see --list)")
    if args.plan:
        report = plan_slice(args.config, args.src, text_only=args.text_only)
    else:
        if not args.src or not args.out:
            raise ConfigError("slice needs --src DIR and --out DIR (or --plan to only print the report)")
        report = slice_checkpoint(args.src, args.out, args.config, text_only=args.text_only,
                                  max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(report.to_json() if args.json else report.render())
    return 0
