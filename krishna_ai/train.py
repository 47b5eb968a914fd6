"""LoRA / QLoRA supervised fine-tuning with the loss on assistant tokens only.

Recipe: `setup()` validates the config and builds model + data, `main()` trains and saves.
Plain transformers + peft + TRL (SFTTrainer) by default; Unsloth's FastModel when the config asks
for it (or `engine: auto`) and CUDA + unsloth are importable. Every run writes into `output_dir`:
checkpoints every `save_steps`, `loss.jsonl` (one line per step), `loss.png`, and at the end
`adapter/` (safetensors) plus `train_summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from krishna_ai.errors import ConfigError, problems

TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

# Attention/MLP projections of the decoder layers, never anything under the audio or vision towers
# (bare "q_proj" would also hit the audio conformer).
LANGUAGE_MODEL_TARGETS = (r"^(?!.*(?:audio_tower|vision_tower|embed_audio|embed_vision))"
                          r".*\.layers\.\d+\.(?:self_attn|mlp)\.(?:{mods})$")
PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
        "down": "down_proj"}


@dataclass
class LoraSettings:
    r: int = 16
    """LoRA rank: higher = more capacity and memory."""
    alpha: int = 16
    """Scaling numerator (alpha / r, or alpha / sqrt(r) with rslora)."""
    dropout: float = 0.0
    rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    """Projections of the language model's attention/MLP to adapt (never the audio/vision towers)."""
    trainable_tokens: list[str] = field(default_factory=lambda: list(TURN_TOKENS))
    """Embedding rows trained alongside the LoRA (peft `trainable_token_indices`). A *base* model never
    trained its turn markers: without these rows a fine-tune cannot learn to close its turn. [] = none."""


@dataclass
class TrainConfig:
    model: str = "light"
    """Tier (light, e2b, e4b), local folder or hub id."""
    output_dir: str = "runs/default"
    data: str = ""
    """Training data: conversation JSONL, persona source JSONL, or an image folder."""
    data_format: Literal["messages", "persona", "image_folder", "preference"] = "messages"
    """preference: {"prompt", "chosen", "rejected"} pairs (feedback export's dpo-<persona>.jsonl), for method dpo."""
    method: Literal["sft", "dpo"] = "sft"
    """sft: learn the answers; dpo: prefer the chosen reply over the rejected one (TRL's DPOTrainer)."""
    beta: float = 0.1
    """DPO: how far the tuned model may move from the reference (higher = stays closer)."""
    adapter: str | None = None
    """DPO: the adapter to refine (default: the persona's own for the model; "none" = a fresh LoRA)."""
    persona: str | None = None
    """Persona whose system part is rendered into each conversation (data_format persona / image_folder)."""
    engine: Literal["auto", "hf", "unsloth"] = "hf"
    quantization: Literal["none", "4bit"] = "none"
    """4bit = QLoRA (bitsandbytes nf4 base weights)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype; auto = bf16 on CUDA, fp32 on CPU. fp16 is refused: it overflows in Gemma 3n."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    """If > 0, overrides epochs."""
    batch_size: int = 2
    grad_accum: int = 4
    max_seq_length: int = 1024
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    gradient_checkpointing: bool = True
    save_steps: int = 50
    save_total_limit: int = 3
    seed: int = 3407
    limit: int | None = None
    """Use only the first N conversations (smoke runs)."""
    searchable: dict[str, Any] = field(default_factory=dict)
    """For `sweep`: parameter -> search space (see configs/)."""

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of settings")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TrainConfig:
        errors = _unknown_keys(cls, raw, "")
        lora_raw = raw.get("lora", {}) or {}
        if not isinstance(lora_raw, dict):
            errors.append("lora: must be a mapping")
            lora_raw = {}
        errors += _unknown_keys(LoraSettings, lora_raw, "lora.")
        if errors:
            raise ConfigError(problems(f"{source}: invalid recipe", errors))
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known and k != "lora"}
        lora_known = {f.name for f in dataclasses.fields(LoraSettings)}
        cfg = cls(**kwargs, lora=LoraSettings(**{k: v for k, v in lora_raw.items() if k in lora_known}))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        e = []
        if not self.data:
            e.append("data: required (a JSONL file or an image folder)")
        elif not Path(self.data).exists():
            e.append(f"data: {self.data} does not exist")
        if self.data_format not in ("messages", "persona", "image_folder", "preference"):
            e.append(f"data_format: {self.data_format!r} is not messages, persona, image_folder or preference")
        if self.method not in ("sft", "dpo"):
            e.append(f"method: {self.method!r} is not sft or dpo")
        elif (self.method == "dpo") != (self.data_format == "preference"):
            e.append("method dpo takes data_format preference (chosen/rejected pairs), and only it does; "
                     f"got method {self.method!r} with data_format {self.data_format!r}")
        if self.method == "dpo" and not (isinstance(self.beta, int | float) and self.beta > 0):
            e.append(f"beta: must be positive, got {self.beta!r}")
        if self.method == "dpo" and self.quantization != "none":
            e.append("quantization: DPO here refines a LoRA on a bf16/fp32 base; use quantization: none")
        if self.data_format == "persona" and not self.persona:
            e.append("persona: required when data_format is persona")
        if self.engine not in ("auto", "hf", "unsloth"):
            e.append(f"engine: {self.engine!r} is not auto, hf or unsloth")
        if self.quantization not in ("none", "4bit"):
            e.append(f"quantization: {self.quantization!r} is not none or 4bit")
        if self.dtype not in ("auto", "bf16", "fp32"):
            e.append(f"dtype: {self.dtype!r} is not auto, bf16 or fp32 (fp16 overflows in Gemma 3n)")
        if not (isinstance(self.lora.r, int) and self.lora.r > 0):
            e.append(f"lora.r: must be a positive integer, got {self.lora.r!r}")
        if not (isinstance(self.lora.alpha, int | float) and self.lora.alpha > 0):
            e.append(f"lora.alpha: must be positive, got {self.lora.alpha!r}")
        if not (isinstance(self.lora.dropout, int | float) and 0 <= self.lora.dropout < 1):
            e.append(f"lora.dropout: must be in [0, 1), got {self.lora.dropout!r}")
        bad_targets = [t for t in self.lora.targets if t not in PROJ]
        if bad_targets or not self.lora.targets:
            e.append(f"lora.targets: {bad_targets or 'empty'}; choose from {', '.join(PROJ)}")
        if not (isinstance(self.learning_rate, int | float) and 0 < self.learning_rate < 1):
            e.append(f"learning_rate: must be in (0, 1), got {self.learning_rate!r}")
        for name in ("batch_size", "grad_accum", "max_seq_length", "save_steps"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                e.append(f"{name}: must be a positive integer, got {v!r}")
        if self.max_steps <= 0 and not (isinstance(self.epochs, int | float) and self.epochs > 0):
            e.append(f"epochs: must be positive (or set max_steps), got {self.epochs!r}")
        if e:
            raise ConfigError(problems(f"{source}: invalid recipe", e))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown_keys(cls: type, raw: dict[str, Any], prefix: str) -> list[str]:
    known = {f.name for f in dataclasses.fields(cls)}
    return [f"{prefix}{k}: unknown setting (known: {', '.join(sorted(known))})" for k in raw if k not in known]


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


def use_unsloth(cfg: TrainConfig) -> bool:
    """Unsloth only with CUDA and the package present; `engine: unsloth` without them is an error."""
    import importlib.util

    import torch

    available = torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None
    if cfg.engine == "unsloth" and not available:
        raise ConfigError("engine: unsloth needs a CUDA GPU and `pip install unsloth`; use engine: hf on CPU")
    return cfg.engine == "unsloth" or (cfg.engine == "auto" and available)


def load_training_conversations(cfg: TrainConfig) -> list[list[dict[str, Any]]]:
    from krishna_ai import data
    from krishna_ai.personas import get_persona, load_personas

    persona = get_persona(load_personas(), cfg.persona) if cfg.persona else None
    if cfg.data_format == "image_folder":
        convs = data.load_image_folder(cfg.data, persona=persona)
    elif cfg.data_format == "persona":
        convs = data.persona_conversations(persona, data.load_persona_source(cfg.data))
    else:
        convs = data.load_conversations(cfg.data)
    return convs[: cfg.limit] if cfg.limit else convs


def _dtype(cfg: TrainConfig) -> Any:
    import torch

    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def _build_unsloth(cfg: TrainConfig, source: str) -> tuple[Any, Any, Any]:
    """Unsloth's FastModel (CUDA only): same LoRA settings, language layers only."""
    from unsloth import FastModel  # noqa: I001 - unsloth must be imported before transformers/peft

    model, processing = FastModel.from_pretrained(
        model_name=source, max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.quantization == "4bit",
        dtype=None, full_finetuning=False)
    model = FastModel.get_peft_model(
        model, finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
        finetune_mlp_modules=True, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        bias="none", random_state=cfg.seed, use_rslora=cfg.lora.rslora,
        target_modules=target_regex(cfg.lora.targets),
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False)
    tokenizer = getattr(processing, "tokenizer", processing)
    processor = processing if processing is not tokenizer else None
    return model, tokenizer, processor


def build_model(cfg: TrainConfig) -> tuple[Any, Any, Any]:
    """(peft model, tokenizer, processor or None) with LoRA on the language model only."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig

    from krishna_ai.runtime.tiers import resolve_source
    from krishna_ai.runtime.weights import bnb_config, load_processing, model_class, model_family

    _, source, _ = resolve_source(cfg.model)
    if use_unsloth(cfg):
        return _build_unsloth(cfg, source)
    config = AutoConfig.from_pretrained(source)
    family = model_family(config)
    # Train with the class the checkpoint was saved as, so adapter names match at merge/serve time.
    text_checkpoint = getattr(config, "model_type", "") != "gemma3n"
    dtype = _dtype(cfg)
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False)
    if cfg.quantization == "4bit":
        kwargs["quantization_config"] = bnb_config(dtype)
        kwargs["device_map"] = {"": "cuda" if torch.cuda.is_available() else "cpu"}
    model = model_class(family, text_checkpoint).from_pretrained(source, **kwargs)
    if cfg.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    tokenizer, processor = load_processing(source, family, text_checkpoint)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      use_rslora=cfg.lora.rslora, target_modules=target_regex(cfg.lora.targets),
                      trainable_token_indices=token_ids(tokenizer, cfg.lora.trainable_tokens) or None,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    return model, tokenizer, processor


class _LossLog:
    """TrainerCallback writing one JSON line per logged step; draws loss.png at the end."""

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


def plot_loss(log_path: Path, png: Path, title: str) -> Path | None:
    if not log_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
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


def setup(cfg: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """Validate, load data (all errors at once), build the model and the tokenised dataset."""
    from datasets import Dataset

    from krishna_ai.data import ConversationEncoder, encode_all

    cfg.validate()
    conversations = load_training_conversations(cfg)
    random.Random(cfg.seed).shuffle(conversations)
    model, tokenizer, processor = build_model(cfg)
    encoder = ConversationEncoder(tokenizer, processor, cfg.max_seq_length)
    rows = encode_all(encoder, conversations)
    ds = Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in rows])
    return model, tokenizer, processor, ds


def main(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train; returns the summary written to train_summary.json."""
    if cfg.method == "dpo":
        from krishna_ai import dpo

        if resume:
            raise ConfigError("--resume: DPO runs are short and restart from the start adapter; run again")
        cfg.validate()
        return dpo.main(cfg, progress=progress)
    import torch
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from krishna_ai.data import collate

    set_seed(cfg.seed)
    world, main_process = _processes()
    out = Path(cfg.output_dir)
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if out.is_dir() else []
    checkpoints = [c for c in found if is_complete_checkpoint(c)]
    if out.is_dir() and (out / "adapter").exists() and not resume:
        raise ConfigError(f"{out} already holds a finished run; choose another output_dir or pass --resume")
    if resume and not checkpoints:
        raise ConfigError(f"--resume: no complete checkpoint-* folder in {out}")
    # A run killed while saving leaves a half-written checkpoint: never resume from it, and clear it.
    stale = found if not resume else [c for c in found if c not in checkpoints]
    if main_process:  # under accelerate launch / torchrun, one process writes the run's files
        for folder in stale:
            shutil.rmtree(folder)
        if not resume and out.is_dir():
            (out / "loss.jsonl").unlink(missing_ok=True)
    model, tokenizer, processor, ds = setup(cfg)  # bad data fails here, before anything is written
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if resume:  # the log keeps only steps up to the checkpoint we resume from
            _truncate_log(out / "loss.jsonl", int(checkpoints[-1].name.split("-")[-1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay, logging_steps=1,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, data_seed=cfg.seed, bf16=_dtype(cfg) == torch.bfloat16,
        fp16=False, report_to=[], remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        gradient_checkpointing=False, disable_tqdm=not progress, dataloader_num_workers=0,
        use_cpu=not _cuda_available(), optim="adamw_torch",
        # DDP: Gemma 3n has parameters a step may not reach (its KV-shared layers' own projections, the
        # per-layer inputs of a slice), which plain DDP reports as an error.
        ddp_find_unused_parameters=world > 1 and getattr(model.config, "model_type", "") == "gemma3n",
    )
    log = _LossLog(out)
    trainer = _answer_only(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         data_collator=lambda batch: collate(batch, pad_id), callbacks=[log.callback])
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if resume else None)
    elapsed = time.perf_counter() - started
    trainer.accelerator.wait_for_everyone()
    n_tokens = sum(len(r) for r in ds["input_ids"])
    summary = {
        "model": cfg.model, "engine": "unsloth" if use_unsloth(cfg) else "hf", "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "first_loss": _first_loss(log.path), "final_loss": _last_loss(log.path),
        "seconds": round(elapsed, 1), "examples": len(ds), "tokens_per_epoch": n_tokens,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter": str(out / "adapter"), "processes": world,
    }
    if main_process:
        _save_adapter(trainer.accelerator.unwrap_model(model), tokenizer, processor, out / "adapter")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        plot_loss(log.path, out / "loss.png", f"{cfg.model} · r={cfg.lora.r} · lr={cfg.learning_rate}")
    trainer.accelerator.wait_for_everyone()
    return summary


def _answer_only(trainer_cls: type) -> type:
    """The trainer with a loss that runs the output head only where a label is: the head of a Gemma
    model (262k-token vocabulary) costs more than all its layers, and prompt tokens carry no loss."""
    import torch.nn.functional as F

    class AnswerOnlyLoss(trainer_cls):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            target = labels[:, 1:]  # the token each position predicts
            keep = (target != -100).any(dim=0).nonzero().squeeze(-1)
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits.float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1),
                                   ignore_index=-100, reduction="sum")
            n = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
            loss = loss / n
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # `n` counts the answer tokens of every process's batch; DDP then averages the gradients over
                # the processes, so the sum is scaled back up (as Trainer.compute_loss does for its own loss).
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return AnswerOnlyLoss


CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def is_complete_checkpoint(folder: Path) -> bool:
    """Every file `--resume` needs is there (the trainer writes them one by one)."""
    return all((folder / name).is_file() for name in CHECKPOINT_FILES) and any(folder.glob("rng_state*.pth"))


def _processes() -> tuple[int, bool]:
    """(number of training processes, whether this is the main one): 1 and True unless started by
    `accelerate launch` or torchrun, which set WORLD_SIZE and RANK."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _save_adapter(model: Any, tokenizer: Any, processor: Any, target: Path) -> None:
    """Write the adapter atomically: a half-written adapter/ must never look complete."""
    import os

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (processor or tokenizer).save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _first_loss(path: Path) -> float | None:
    rows = _rows(path)
    return rows[0]["loss"] if rows else None


def _last_loss(path: Path) -> float | None:
    rows = _rows(path)
    return rows[-1]["loss"] if rows else None


def _truncate_log(path: Path, step: int) -> None:
    rows = [r for r in _rows(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
