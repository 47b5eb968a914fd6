"""`train`: one recipe in, one adapter out; the recipe's `method` picks the trainer."""

from __future__ import annotations

from typing import Any

from krishna_ai.training import dpo, sft
from krishna_ai.training.config import TrainConfig

TRAINERS = {"sft": sft.train, "dpo": dpo.train}


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the recipe's trainer; returns the summary it wrote to output_dir/train_summary.json."""
    return TRAINERS[cfg.method](cfg, resume=resume, progress=progress)
