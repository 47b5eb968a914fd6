"""MatFormer slicing: cut a (fine-tuned) Gemma 3n E4B into E2B or any mix-n-match size, verified.

`python -m krishna_ai slice --src E4B_DIR --out OUT --config e2b` streams the parent's safetensors
tensor by tensor (big ones in row chunks, never the whole model in memory) into a sharded child
with an edited config.json, the tokenizer/processor files and a slice report. `--plan` prints the
report only; without --src it plans against the real E4B shape, built on the `meta` device.

- config:  slice configs (shipped ones in configs/*.toml, or a .toml/.json file), checked against a parent
- plan:    the tensor mapping and the edited config; the check that transformers can load the child
- report:  the slice report (layers, parameters, size)
- shards:  the streaming safetensors reader and writer
- slice:   `plan_slice` and `slice_checkpoint`, which tie those together
- elastic: the same slices live, on a loaded model (`from krishna_ai.matformer import elastic`)

The config edits fix the three bugs of Google's MatFormer Lab notebook: layer_types is filtered
to the kept layers, the sparsity pattern is written as floats, and the projection that
transformers 4.53-4.57 saved as `per_layer_model.language_model_projection` is sliced too.
"""

from krishna_ai.matformer.config import (
    CONFIGS_DIR,
    ParentShape,
    Resolved,
    SliceConfig,
    known_configs,
    load_slice_config,
    resolve,
)
from krishna_ai.matformer.plan import DTYPE_BYTES, TensorPlan, check_loadable, child_config, count_params, map_tensors
from krishna_ai.matformer.report import SliceReport, build_report
from krishna_ai.matformer.shards import parse_size
from krishna_ai.matformer.slice import e4b_reference, plan_slice, read_parent, slice_checkpoint

__all__ = [
    "CONFIGS_DIR", "DTYPE_BYTES", "ParentShape", "Resolved", "SliceConfig", "SliceReport", "TensorPlan",
    "build_report", "check_loadable", "child_config", "count_params", "e4b_reference", "known_configs",
    "load_slice_config", "map_tensors", "parse_size", "plan_slice", "read_parent", "resolve", "slice_checkpoint",
]
