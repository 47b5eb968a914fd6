"""What every trainer shares: the persona a recipe names, compute dtype, LoRA target modules, the loss
log and its plot, and the atomic adapter write. SFT (`sft.py`) and DPO (`dpo.py`) import these; neither
imports the other."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError
from krishna_ai.core.personas import Persona, get_persona, load_personas, persona_dirs
from krishna_ai.training.config import PROJ, TrainConfig

# Attention/MLP projections of the decoder layers, never anything under the audio or vision towers
# (bare "q_proj" would also hit the audio conformer).
LANGUAGE_MODEL_TARGETS = (r"^(?!.*(?:audio_tower|vision_tower|embed_audio|embed_vision))"
                          r".*\.layers\.\d+\.(?:self_attn|mlp)\.(?:{mods})$")


def recipe_persona(cfg: TrainConfig) -> Persona | None:
    """The persona the recipe names, looked up in its `prompts` folders first, then the shipped prompts/."""
    return get_persona(load_personas(persona_dirs(cfg.prompts)), cfg.persona) if cfg.persona else None


def target_regex(targets: list[str]) -> str:
    return LANGUAGE_MODEL_TARGETS.replace("{mods}", "|".join(PROJ[t] for t in targets))


def token_ids(tokenizer: Any, tokens: list[str]) -> list[int]:
    """Vocabulary ids of `tokens`; ConfigError for one the tokenizer does not have as a single token."""
    ids, missing = [], []
    for token in tokens:
        i = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(i, int) or i == tokenizer.unk_token_id:
            missing.append(token)
        else:
            ids.append(i)
    if missing:
        raise ConfigError(f"lora.trainable_tokens: {missing} are not tokens of this model's vocabulary")
    return ids


def compute_dtype(cfg: TrainConfig) -> Any:
    import torch

    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def processes() -> tuple[int, bool]:
    """(number of training processes, whether this is the main one): 1 and True unless started by
    `accelerate launch` or torchrun, which set WORLD_SIZE and RANK."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


class LossLog:
    """TrainerCallback writing one JSON line per logged step to `out/loss.jsonl`."""

    def __init__(self, out: Path):
        from transformers import TrainerCallback

        log_path = out / "loss.jsonl"

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs and state.is_world_process_zero:  # one writer under accelerate/DDP
                    row = {"step": state.global_step, "loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                           "learning_rate": logs.get("learning_rate"), "epoch": logs.get("epoch")}
                    with log_path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")

        self.callback = Callback()
        self.path = log_path


def loss_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_loss(log_path: Path, png: Path, title: str) -> Path | None:
    rows = loss_rows(log_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="." if len(rows) < 60 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def save_adapter(model: Any, tokenizer: Any, processor: Any, target: Path) -> None:
    """Write the adapter atomically: a half-written adapter/ must never look complete."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (processor or tokenizer).save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
