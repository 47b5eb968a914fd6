"""The tensor plan: which parent tensors the child keeps, renamed and narrowed, and whether it loads.

`map_tensors` applies the slicing rules to the parent's {name: (file, dtype, shape)} and gives one
`TensorPlan` per child tensor; `child_config` edits the parent's config.json to match. The check
that transformers can build the child with exactly those shapes (`check_loadable`) runs in a child
Python process (`LoadCheck`) while the slice is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError, problems
from krishna_ai.matformer.config import Resolved

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


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


def count_params(plans: list[TensorPlan], config: dict[str, Any]) -> dict[str, int]:
    """What the checkpoint stores: total, text, effective (text minus embeddings), the embeddings, a tied head."""
    text_cfg = config.get("text_config") or config
    prefix = text_prefix([p.name for p in plans])
    by_name = {p.name: p.numel for p in plans}
    text = sum(p.numel for p in plans if p.name.startswith(prefix) or p.name == "lm_head.weight")
    ple, tok = by_name[prefix + "embed_tokens_per_layer.weight"], by_name.get(prefix + "embed_tokens.weight", 0)
    tied = text_cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", True))
    tied = tied and "lm_head.weight" not in by_name
    return {"total": sum(by_name.values()), "text": text, "effective": text - ple - tok, "per_layer_embeddings": ple,
            "token_embedding": tok, "tied_head": tok if tied else 0}


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


class LoadCheck:
    """`check_loadable` in a child Python process, started at once; `result()` waits for its issues."""

    def __init__(self, config: dict[str, Any], plans: list[TensorPlan]):
        payload = json.dumps({"config": config, "tensors": {p.name: list(p.shape) for p in plans}})
        root = str(Path(__file__).resolve().parents[2])  # krishna_ai importable in the child as here
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from krishna_ai.matformer.plan import _load_check_main; _load_check_main()"],
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
    """The child side of `LoadCheck`: config and tensor shapes as JSON on stdin, issues as JSON on stdout."""
    from types import SimpleNamespace

    job = json.loads(sys.stdin.read())
    plans = [SimpleNamespace(name=k, shape=tuple(v)) for k, v in job["tensors"].items()]
    print(json.dumps(check_loadable(job["config"], plans)))  # type: ignore[arg-type]

