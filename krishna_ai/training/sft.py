"""LoRA / QLoRA supervised fine-tuning with the loss on assistant tokens only.

Recipe: `setup()` validates the config and builds model + data, `train()` trains and saves.
Plain transformers + peft + TRL (SFTTrainer) by default; Unsloth's FastModel when the config asks
for it (or `engine: auto`) and CUDA + unsloth are importable. Every run writes into `output_dir`:
checkpoints every `save_steps`, `loss.jsonl` (one line per step), `loss.png`, and at the end
`adapter/` (safetensors) plus `train_summary.json`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from krishna_ai.core.errors import ConfigError
from krishna_ai.training.common import (
    LossLog,
    StopOnSignal,
    Stopped,
    compute_dtype,
    cuda_available,
    loss_rows,
    plot_loss,
    processes,
    recipe_persona,
    save_adapter,
    target_regex,
    token_ids,
)
from krishna_ai.training.config import TrainConfig


def use_unsloth(cfg: TrainConfig) -> bool:
    """Unsloth only with CUDA and the package present; `engine: unsloth` without them is an error."""
    import importlib.util

    import torch

    available = torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None
    if cfg.engine == "unsloth" and not available:
        raise ConfigError("engine: unsloth needs a CUDA GPU and `pip install unsloth`; use engine: hf on CPU")
    return cfg.engine == "unsloth" or (cfg.engine == "auto" and available)


def load_training_conversations(cfg: TrainConfig) -> list[list[dict[str, Any]]]:
    from krishna_ai.training import data

    persona = recipe_persona(cfg)
    if cfg.data_format == "image_folder":
        convs = data.load_image_folder(cfg.data, persona=persona)
    elif cfg.data_format == "persona":
        convs = data.persona_conversations(persona, data.load_persona_source(cfg.data))
    else:
        convs = data.load_conversations(cfg.data)
    return convs[: cfg.limit] if cfg.limit else convs


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
    dtype = compute_dtype(cfg)
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


def setup(cfg: TrainConfig) -> tuple[Any, Any, Any, Any]:
    """Validate, load data (all errors at once), build the model and the tokenised dataset."""
    from datasets import Dataset

    from krishna_ai.training.data import ConversationEncoder, encode_all

    cfg.check_data()
    conversations = load_training_conversations(cfg)
    random.Random(cfg.seed).shuffle(conversations)
    model, tokenizer, processor = build_model(cfg)
    encoder = ConversationEncoder(tokenizer, processor, cfg.max_seq_length)
    rows = encode_all(encoder, conversations)
    ds = Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in rows])
    return model, tokenizer, processor, ds


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Supervised fine-tuning; returns the summary written to train_summary.json."""
    import torch
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from krishna_ai.training.data import collate

    set_seed(cfg.seed)
    world, main_process = processes()
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
        seed=cfg.seed, data_seed=cfg.seed, bf16=compute_dtype(cfg) == torch.bfloat16,
        fp16=False, report_to=[], remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
        gradient_checkpointing=False, disable_tqdm=not progress, dataloader_num_workers=0,
        use_cpu=not cuda_available(), optim="adamw_torch",
        # DDP: Gemma 3n has parameters a step may not reach (its KV-shared layers' own projections, the
        # per-layer inputs of a slice), which plain DDP reports as an error.
        ddp_find_unused_parameters=world > 1 and getattr(model.config, "model_type", "") == "gemma3n",
    )
    log, stop = LossLog(out), StopOnSignal()
    try:
        trainer = _answer_only(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                                           data_collator=lambda batch: collate(batch, pad_id),
                                           callbacks=[log.callback, stop.callback])
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if resume else None)
    finally:
        stop.close()
    elapsed = time.perf_counter() - started
    trainer.accelerator.wait_for_everyone()
    if stop.requested and trainer.state.global_step < trainer.state.max_steps:
        step = trainer.state.global_step
        raise Stopped(f"stopped at step {step} of {trainer.state.max_steps}: checkpoint-{step} saved in {out}; "
                      "continue with --resume", step)
    n_tokens = sum(len(r) for r in ds["input_ids"])
    summary = {
        "model": cfg.model, "engine": "unsloth" if use_unsloth(cfg) else "hf", "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "first_loss": _loss_at(log.path, 0), "final_loss": _loss_at(log.path, -1),
        "seconds": round(elapsed, 1), "examples": len(ds), "tokens_per_epoch": n_tokens,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter": str(out / "adapter"), "processes": world,
    }
    if main_process:
        save_adapter(trainer.accelerator.unwrap_model(model), tokenizer, processor, out / "adapter")
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




def _loss_at(path: Path, index: int) -> float | None:
    rows = loss_rows(path)
    return rows[index]["loss"] if rows else None


def _truncate_log(path: Path, step: int) -> None:
    rows = [r for r in loss_rows(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
