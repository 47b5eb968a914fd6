"""The GPU requirements set stays the runtime set, apart from the pins Unsloth needs lower."""

from __future__ import annotations

import re

from tests.conftest import REPO

LOWER_FOR_UNSLOTH = {"torch", "torchvision", "transformers", "trl", "datasets", "huggingface_hub"}


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]+\])?==(\S+)", line)
            assert match, f"{name}: {line!r} is not pinned with =="
            out[match[1].lower().replace("-", "_")] = match[2]
    return out


def test_gpu_set_equals_runtime_set_but_for_unsloths_caps():
    runtime, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    assert set(runtime) <= set(gpu), f"missing from requirements-gpu.txt: {sorted(set(runtime) - set(gpu))}"
    differ = {name for name in runtime if runtime[name] != gpu[name]}
    assert differ == LOWER_FOR_UNSLOTH, differ ^ LOWER_FOR_UNSLOTH
    assert {"unsloth", "unsloth_zoo"} <= set(gpu)
    assert tuple(map(int, gpu["torch"].split(".")[:2])) < (2, 15)  # unsloth 2026.10.9: torch < 2.15
