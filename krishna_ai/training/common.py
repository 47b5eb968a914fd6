"""What every trainer shares: the persona a recipe names, compute dtype, LoRA target modules, the loss
log and its plot, and the atomic adapter write. SFT (`sft.py`) and DPO (`dpo.py`) import these; neither
imports the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError, KrishnaError
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
    """bf16 on CUDA when asked (or auto); on a CPU only where it has bf16 matrix instructions: without them
    (AVX2-only CPUs) a bf16 matmul is emulated, ~90x slower than fp32 here, so fp32 is used, with a note."""
    import torch

    if cfg.dtype == "auto" and torch.cuda.is_available():
        return torch.bfloat16
    if cfg.dtype == "bf16":
        if torch.cuda.is_available() or cpu_has_bf16():
            return torch.bfloat16
        _note_once("dtype bf16: this CPU has no bf16 matrix instructions (AMX or AVX512-BF16), where bf16 is many "
                   "times slower than fp32; training in fp32")
    return torch.float32


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (Linux /proc/cpuinfo flags; elsewhere assumed so)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    import sys

    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def processes() -> tuple[int, bool]:
    """(number of training processes, whether this is the main one): 1 and True unless started by
    `accelerate launch` or torchrun, which set WORLD_SIZE and RANK."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


class Stopped(KrishnaError):
    """A run asked to stop (SIGTERM: the Train tab's Stop, or `kill`) ended early; `step` is the checkpoint it
    saved (0: it stopped before its first step, and nothing was saved)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


STOPPED_EXIT = 3
"""The CLI's exit code for a stopped run (resumable from its checkpoint), apart from 2 (an error)."""


class StopOnSignal:
    """Stop a run cleanly on SIGTERM: the step under way finishes, a checkpoint is saved, the trainer returns.

    Before the training loop starts (data and model loading) there is nothing to save: the run ends at once.
    `requested` is then checked by the trainer's caller, which raises Stopped instead of writing the adapter.
    The handler is installed only in the main thread (where Python delivers signals) and restored by `close`."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.requested = False
        self._in_loop = False
        self._previous: Any = None
        owner = self

        def handler(signum: int, frame: Any) -> None:
            owner.requested = True
            if not owner._in_loop:
                raise Stopped("stopped before its first step: nothing new was saved", 0)

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                owner._in_loop = True

            def on_step_end(self, args, state, control, **kwargs):
                if owner.requested:
                    control.should_save = True
                    control.should_training_stop = True

        self.callback = Callback()
        if threading_main():
            self._previous = signal.signal(signal.SIGTERM, handler)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class LossLog:
    """TrainerCallback writing one JSON line per logged step to `out/loss.jsonl`: step, loss, the run's total
    steps (`max_steps`) and the wall-clock time it was written (`time`, for the app's progress view)."""

    def __init__(self, out: Path):
        from transformers import TrainerCallback

        log_path = out / "loss.jsonl"

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs and state.is_world_process_zero:  # one writer under accelerate/DDP
                    row = {"step": state.global_step, "loss": logs["loss"], "grad_norm": logs.get("grad_norm"),
                           "learning_rate": logs.get("learning_rate"), "epoch": logs.get("epoch"),
                           "max_steps": state.max_steps, "time": round(time.time(), 3)}
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
