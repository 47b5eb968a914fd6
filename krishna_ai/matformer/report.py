"""The slice report: the child's layers, what it skips, its parameters next to the parent's, its size.

`render()` is the table `slice` prints; `to_json()` is what it writes as slice_report.json. For a
slice of the real E4B the report compares the count with Google's published effective size.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from krishna_ai.matformer.config import Resolved, format_ranges
from krishna_ai.matformer.plan import TensorPlan, count_params


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
        lines.append(f"skipped layers: {format_ranges(self.skipped)}")
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
