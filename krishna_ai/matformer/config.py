"""Slice configs: what a MatFormer slice is, the shipped ones (configs/*.toml), and their validation.

`load_slice_config` reads a shipped config by name or a .toml/.json file (unknown keys and wrong
types are named, all at once); `resolve` checks one against a parent's shape (`ParentShape`, read
from its config.json) and gives the kept layers and their absolute FFN widths (`Resolved`).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError, problems

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_KEYS = {"name", "description", "source", "effective_params_b", "mmlu_pt", "relative_to", "skip_layers",
               "ffn_widths"}


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



def known_configs() -> list[str]:
    """The names of the shipped slice configs (configs/*.toml)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def load_slice_config(spec: str | Path | SliceConfig) -> SliceConfig:
    """A shipped config by name (see `known_configs()`), or a .toml/.json file. Raises ConfigError."""
    if isinstance(spec, SliceConfig):
        return spec
    path = Path(spec).expanduser()
    if not path.is_file():
        if str(spec).endswith((".toml", ".json")) or os.sep in str(spec):
            raise ConfigError(f"slice config file {str(spec)!r} does not exist")
        path = CONFIGS_DIR / f"{spec}.toml"
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
                          f"the KV-shared layers {format_ranges(still_read)} take their KV cache from it")
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


def format_ranges(xs: list[int] | tuple[int, ...]) -> str:
    """Layer indices as "3, 20-24" (or "none")."""
    out: list[str] = []
    for x in sorted(xs):
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ", ".join(out) or "none"

