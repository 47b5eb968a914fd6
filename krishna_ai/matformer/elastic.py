"""Elastic inference: run a loaded E4B-shaped Gemma 3n as any MatFormer slice, without reloading.

`switch_slice(model, "e2b")` makes the model compute exactly what the same slice written to disk by
`krishna_ai.matformer.slice_checkpoint` computes, using only views of the weights already loaded:

- FFN widths: each narrowed MLP runs on `weight[:d]` / `weight[:, :d]` views (a per-instance forward);
- skipped layers: the decoder-layer list is replaced by the kept layers (the same modules), whose
  layer/cache indices and KV-sharing roles are renumbered from the sliced config;
- per-layer inputs: forward hooks keep the kept layers' slots of the per-layer embedding and
  projection outputs (the full tables stay as they are).

`restore_full(model)` undoes all of it. Weights are never copied; the switch allocates only a small
index tensor, and the report says how many bytes. Switch between requests, not inside one: a KV
cache built before a switch does not fit the model after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError
from krishna_ai.matformer.config import ParentShape, Resolved, SliceConfig, load_slice_config, resolve

_STATE = "_krishna_elastic"
_CONFIG_FIELDS = ("num_hidden_layers", "intermediate_size", "num_kv_shared_layers", "activation_sparsity_pattern",
                  "layer_types")


@dataclass(frozen=True)
class SwitchReport:
    name: str
    layers: int
    skipped: tuple[int, ...]
    ffn_widths: tuple[int, ...]
    active_params: int
    """Text-model parameters the forward pass now uses."""
    loaded_params: int
    """Text-model parameters resident in memory (switching never changes this)."""
    allocated_bytes: int
    """Bytes of new tensors the switch allocated (weight views cost 0)."""

    def line(self) -> str:
        skipped = f", skipping {', '.join(map(str, self.skipped))}" if self.skipped else ""
        return (f"{self.name}: {self.layers} layers{skipped}; {self.active_params:,} of {self.loaded_params:,} text "
                f"parameters active; switch allocated {self.allocated_bytes:,} bytes")


@dataclass
class _Saved:
    """What a switch changed, to put back."""

    name: str
    layers: Any
    config: dict[str, Any]
    attn: list[tuple[int, bool, bool]]
    mlps: list[tuple[Any, int]] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)


def text_model(model: Any) -> Any:
    """The Gemma3nTextModel inside a Gemma3nForConditionalGeneration / Gemma3nForCausalLM (or itself)."""
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel

    for module in model.modules():
        if isinstance(module, Gemma3nTextModel):
            return module
    raise ConfigError(f"live switching needs a Gemma 3n model, not {type(model).__name__}")


def current_slice(model: Any) -> str | None:
    saved = getattr(text_model(model), _STATE, None)
    return saved.name if saved else None


def switch_slice(model: Any, config: str | Path | SliceConfig | None) -> SwitchReport:
    """Run `model` as the slice `config` (name, file or SliceConfig; None: the full model). Reversible."""
    import torch

    tm = text_model(model)
    restore_full(model)
    cfg = tm.config
    parent = ParentShape.from_config({k: getattr(cfg, k) for k in (*_CONFIG_FIELDS, "hidden_size_per_layer_input")})
    if config is None:
        return _report(tm, resolve(SliceConfig("full", parent.ffn_widths), parent), 0, list(tm.layers))
    r = resolve(load_slice_config(config), parent)
    narrowed = [(tm.layers[i].mlp, d) for i, d in zip(r.kept, r.widths, strict=True) if d < parent.ffn_widths[i]]
    bad = sorted({type(getattr(m, n)).__name__ for m, _ in narrowed for n in ("gate_proj", "up_proj", "down_proj")
                  if type(getattr(m, n)) is not torch.nn.Linear})
    if bad:
        raise ConfigError(f"live FFN narrowing needs plain nn.Linear projections, found {', '.join(bad)} (a 4-bit or "
                          "LoRA-wrapped model): merge/unquantise it, or slice to disk with `krishna_ai slice`")

    saved = _Saved(r.config.name, tm.layers, {k: getattr(cfg, k) for k in _CONFIG_FIELDS},
                   [(layer.self_attn.layer_idx, layer.self_attn.is_kv_shared_layer,
                     layer.self_attn.store_full_length_kv) for layer in tm.layers])
    setattr(tm, _STATE, saved)  # first, so that a failure below can be rolled back
    try:
        allocated = _apply(tm, r, saved, narrowed)
    except BaseException:
        restore_full(model)
        raise
    return _report(tm, r, allocated, list(saved.layers))


def _apply(tm: Any, r: Resolved, saved: _Saved, narrowed: list[tuple[Any, int]]) -> int:
    """Make the text model compute the slice `r`; returns the bytes of new tensors allocated."""
    import torch

    allocated = 0
    for mlp, d in narrowed:
        saved.mlps.append((mlp, mlp.intermediate_size))
        mlp.forward = _narrow_forward(mlp, d)  # instance attribute: nn.Module.__call__ uses it
        mlp.intermediate_size = d
    for key, value in r.text_config_edits().items():
        setattr(tm.config, key, value)
    if r.skipped:
        tm.layers = torch.nn.ModuleList([saved.layers[i] for i in r.kept])
        modes = tm.config.kv_sharing_modes
        for j, layer in enumerate(tm.layers):
            layer.layer_idx = layer.self_attn.layer_idx = j  # cache slot of the sliced model
            layer.self_attn.is_kv_shared_layer = modes[j] == "reuse"
            layer.self_attn.store_full_length_kv = modes[j] == "store"
        keep = torch.tensor(r.kept, device=tm.embed_tokens_per_layer.weight.device)
        allocated += keep.numel() * keep.element_size()
        hook = _keep_layers_hook(keep, r.parent.num_layers, r.parent.per_layer_dim)
        saved.hooks = [tm.embed_tokens_per_layer.register_forward_hook(hook),
                       tm.per_layer_model_projection.register_forward_hook(hook)]
    return allocated


def restore_full(model: Any) -> None:
    """Undo `switch_slice`: the model runs as loaded again."""
    tm = text_model(model)
    saved = getattr(tm, _STATE, None)
    if saved is None:
        return
    for handle in saved.hooks:
        handle.remove()
    for mlp, width in saved.mlps:
        del mlp.forward
        mlp.intermediate_size = width
    tm.layers = saved.layers
    for layer, (idx, shared, store) in zip(tm.layers, saved.attn, strict=True):
        layer.layer_idx = layer.self_attn.layer_idx = idx
        layer.self_attn.is_kv_shared_layer, layer.self_attn.store_full_length_kv = shared, store
    for key, value in saved.config.items():
        setattr(tm.config, key, value)
    delattr(tm, _STATE)


def _narrow_forward(mlp: Any, d: int) -> Any:
    """Gemma3nTextMLP.forward on the first d FFN channels: the same ops, on views of the same weights."""
    import torch.nn.functional as F

    def forward(hidden_states: Any) -> Any:
        gate = F.linear(hidden_states, mlp.gate_proj.weight[:d])
        if mlp.activation_sparsity > 0.0:
            gate = mlp._gaussian_topk(gate)  # statistics over the d kept channels, as in the sliced model
        up = F.linear(hidden_states, mlp.up_proj.weight[:d])
        return F.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight[:, :d])

    return forward


def _keep_layers_hook(keep: Any, num_layers: int, per_layer_dim: int) -> Any:
    """Forward hook: keep the kept layers' slots of a [..., num_layers * per_layer_dim] output."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        shape = output.shape[:-1]
        per_layer = output.reshape(*shape, num_layers, per_layer_dim)
        return per_layer.index_select(-2, keep).reshape(*shape, keep.numel() * per_layer_dim)

    return hook


def _report(tm: Any, r: Resolved, allocated: int, layers: list[Any]) -> SwitchReport:
    """Parameter counts over all loaded layers (`layers`: the full list, including the bypassed ones)."""
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    loaded = sum(p.numel() for layer in layers for p in layer.parameters())
    loaded += sum(p.numel() for p in tm.parameters() if id(p) not in in_layers)
    unused = sum(p.numel() for i in r.skipped for p in layers[i].parameters())
    hidden = tm.config.hidden_size
    for i, d in zip(r.kept, r.widths, strict=True):
        unused += 3 * hidden * (r.parent.ffn_widths[i] - d)  # gate, up and down lose (full - d) rows/columns
    ple = tm.embed_tokens_per_layer.weight.shape[0] * r.parent.per_layer_dim
    unused += len(r.skipped) * r.parent.per_layer_dim * hidden + len(r.skipped) * ple
    return SwitchReport(r.config.name, len(r.kept), r.skipped, r.widths, loaded - unused, loaded, allocated)
