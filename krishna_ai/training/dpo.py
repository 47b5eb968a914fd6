"""Preference tuning (DPO) from the app's feedback: `train` with `method: dpo` on a dpo-<persona>.jsonl file
written by `python -m krishna_ai feedback export`.

TRL's DPOTrainer does the optimisation. The pairs are rendered here, in the model's own turn format
through `prompting.render_prompt` (the light tier's Gemma 3 checkpoint has no chat template for TRL
to use), so the prompt tuned on is the prompt the app builds; each reply ends with <end_of_turn>.

Starting point: `adapter` (default: the persona's own adapter for the model, e.g. adapters/krishna-light)
is merged into the base, and a fresh LoRA on the same modules learns from the pairs; the reference
policy is the merged model itself (the new LoRA switched off), so the KL term keeps the tuned model
close to the fine-tune users already had, not to the bare base. The result, adapter/, is the start
adapter and the new LoRA combined into one (ranks concatenated), served like any shipped adapter;
dpo-delta/ keeps the new LoRA alone. Without a start adapter, adapter/ is the new LoRA on the base.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from krishna_ai.core.cache import atomic_dir
from krishna_ai.core.errors import ConfigError, DataError, problems
from krishna_ai.core.prompting import Message, render_prompt, system_text, text_of
from krishna_ai.training.common import (
    LossLog,
    StopOnSignal,
    Stopped,
    compute_dtype,
    cuda_available,
    plot_loss,
    recipe_persona,
    save_adapter,
    target_regex,
)
from krishna_ai.training.config import TrainConfig


def _check_messages(value: Any, where: str, errors: list[str], *, last: str) -> list[Message] | None:
    if isinstance(value, str) and last == "assistant" and value.strip():  # TRL's plain-text completion form
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        errors.append(f"{where}: a non-empty list of messages")
        return None
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str) or not m["content"].strip():
            errors.append(f"{where}[{i}]: {{\"role\": system|user|assistant, \"content\": non-empty text}}")
            return None
        if m["role"] == "system" and i:
            errors.append(f"{where}[{i}]: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != last:
        errors.append(f"{where}: must end with a {last} message")
    return out


def load_preferences(path: str | Path) -> list[dict[str, list[Message]]]:
    """Preference pairs {"prompt", "chosen", "rejected"} (TRL's conversational DPO format), every bad line
    reported at once in one DataError."""
    from krishna_ai.training.data import read_jsonl

    path = Path(path)
    errors: list[str] = []
    pairs = []
    for n, row in read_jsonl(path):
        at = f"{path.name}:{n}"
        if not isinstance(row, dict) or set(row) - {"prompt", "chosen", "rejected"} or not {"prompt", "chosen",
                                                                                               "rejected"} <= set(row):
            errors.append(f"{at}: expected exactly the keys prompt, chosen, rejected")
            continue
        before = len(errors)
        prompt = _check_messages(row["prompt"], f"{at}: prompt", errors, last="user")
        chosen = _check_messages(row["chosen"], f"{at}: chosen", errors, last="assistant")
        rejected = _check_messages(row["rejected"], f"{at}: rejected", errors, last="assistant")
        if len(errors) == before and chosen is not None and rejected is not None and prompt is not None:
            if text_of(chosen[-1]["content"]).strip() == text_of(rejected[-1]["content"]).strip():
                errors.append(f"{at}: chosen and rejected are the same reply")
            else:
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} bad line(s)", errors[:50]))
    return pairs


def render_pairs(pairs: list[dict[str, list[Message]]], tokenizer: Any, processor: Any = None,
                 system: str | None = None) -> list[dict[str, str]]:
    """Pairs as text for DPOTrainer: the prompt rendered up to the model's turn (no BOS: the tokenizer adds
    it), each reply closed with <end_of_turn>. `system` fills in for pairs whose prompt has none."""
    bos = getattr(tokenizer, "bos_token", None) or ""
    out = []
    for pair in pairs:
        prompt = list(pair["prompt"])
        if system and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
        text = render_prompt(prompt, tokenizer, processor, add_generation_prompt=True)
        text = text[len(bos):] if bos and text.startswith(bos) else text
        out.append({"prompt": text,
                    "chosen": text_of(pair["chosen"][-1]["content"]).strip() + "<end_of_turn>\n",
                    "rejected": text_of(pair["rejected"][-1]["content"]).strip() + "<end_of_turn>\n"})
    return out


def start_adapter(cfg: TrainConfig) -> str | None:
    """The adapter DPO refines: the recipe's, else the persona's own for this model ("none" = a fresh LoRA)."""
    if cfg.adapter == "none":
        return None
    if cfg.adapter:
        return cfg.adapter
    persona = recipe_persona(cfg)
    return persona.adapter_for(cfg.model) if persona else None


def build_models(cfg: TrainConfig) -> tuple[Any, Any, Any]:
    """(policy, tokenizer, processor): a fresh LoRA on the base with the start adapter merged in.

    The reference policy is that same model with the new LoRA switched off (TRL does this for a peft
    model), so no second copy is held. The start adapter's modules are the ones the new LoRA targets."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoConfig

    from krishna_ai.runtime.tiers import resolve_source
    from krishna_ai.runtime.weights import load_processing, model_class, model_family

    _, source, _ = resolve_source(cfg.model)
    config = AutoConfig.from_pretrained(source)
    family, text_checkpoint = model_family(config), getattr(config, "model_type", "") != "gemma3n"
    model = model_class(family, text_checkpoint).from_pretrained(source, dtype=compute_dtype(cfg), use_safetensors=True,
                                                                 trust_remote_code=False)
    targets: Any = target_regex(cfg.lora.targets)
    adapter = start_adapter(cfg)
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"adapter: {adapter} is not a LoRA adapter folder (no adapter_config.json)")
        from safetensors import safe_open

        start_config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
            _plain_lora(Path(adapter), start_config, list(f.keys()))  # before training, not after
        targets = start_config["target_modules"]
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # LoRA and token rows, merged
    model.config.use_cache = False
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      use_rslora=cfg.lora.rslora, target_modules=targets, bias="none", task_type="CAUSAL_LM",
                      trainable_token_indices=None)  # the start adapter's rows are merged; DPO leaves them
    tokenizer, processor = load_processing(source, family, text_checkpoint)
    return get_peft_model(model, lora), tokenizer, processor


def _scaling(config: dict[str, Any]) -> float:
    r = config["r"]
    return config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)


def _plain_lora(where: Path, config: dict[str, Any], weights: Any) -> None:
    """ConfigError for an adapter whose update is not B·A·alpha/r on every module (it cannot be combined)."""
    odd = [k for k in ("rank_pattern", "alpha_pattern", "use_dora", "lora_bias") if config.get(k)]
    odd += sorted({k.split(".")[-2] for k in weights if "lora_embedding" in k or "lora_magnitude" in k})
    if config.get("peft_type", "LORA") != "LORA":
        odd.append(f"peft_type {config.get('peft_type')}")
    if odd:
        raise ConfigError(f"adapter {where}: {', '.join(odd)} cannot be combined by rank concatenation; "
                          "start DPO from a plain LoRA adapter (or adapter: none)")


def combine_adapters(first: str | Path, second: str | Path, out: str | Path) -> Path:
    """One adapter whose update is first's plus second's (LoRA ranks concatenated, token rows from `first`):
    a DPO adapter trained on top of a merged start adapter becomes servable like any single adapter."""
    import torch
    from safetensors.torch import load_file, save_file

    first, second, out = Path(first), Path(second), Path(out)
    c1 = json.loads((first / "adapter_config.json").read_text())
    c2 = json.loads((second / "adapter_config.json").read_text())
    w1 = load_file(first / "adapter_model.safetensors")
    w2 = load_file(second / "adapter_model.safetensors")
    _plain_lora(first, c1, w1)
    _plain_lora(second, c2, w2)
    s1, s2 = _scaling(c1), _scaling(c2)
    combined: dict[str, torch.Tensor] = {k: v for k, v in w1.items() if "lora_" not in k}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in [*w1, *w2] if ".lora_A." in k})
    for m in modules:
        a1, b1 = w1.get(f"{m}.lora_A.weight"), w1.get(f"{m}.lora_B.weight")
        a2, b2 = w2.get(f"{m}.lora_A.weight"), w2.get(f"{m}.lora_B.weight")
        like = a1 if a1 is not None else a2
        likeb = b1 if b1 is not None else b2
        assert like is not None and likeb is not None
        if a1 is None or b1 is None:
            a1, b1 = like.new_zeros(c1["r"], like.shape[1]), likeb.new_zeros(likeb.shape[0], c1["r"])
        if a2 is None or b2 is None:
            a2, b2 = like.new_zeros(c2["r"], like.shape[1]), likeb.new_zeros(likeb.shape[0], c2["r"])
        combined[f"{m}.lora_A.weight"] = torch.cat([a1.float() * s1, a2.float() * s2]).to(like.dtype).contiguous()
        combined[f"{m}.lora_B.weight"] = torch.cat([b1, b2], dim=1).contiguous()
    config = {**c1, "r": c1["r"] + c2["r"], "lora_alpha": c1["r"] + c2["r"], "use_rslora": False,
              "rank_pattern": {}, "alpha_pattern": {}}  # scaling 1: the factors live in lora_A
    out.mkdir(parents=True, exist_ok=True)
    save_file(combined, out / "adapter_model.safetensors", metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """DPO on cfg.data; writes output_dir/adapter, loss.jsonl, loss.png and train_summary.json."""
    import torch
    import yaml
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    if resume:
        raise ConfigError("--resume: DPO runs are short and restart from the start adapter; run again")
    cfg.check_data()
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if out.is_dir() and (out / "adapter").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another output_dir")
    pairs = load_preferences(cfg.data)[: cfg.limit or None]  # bad data fails here, before anything is loaded
    persona = recipe_persona(cfg)
    policy, tokenizer, processor = build_models(cfg)
    rows = render_pairs(pairs, tokenizer, processor, system_text(persona) if persona else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loss.jsonl").unlink(missing_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    args = DPOConfig(
        output_dir=str(out), beta=cfg.beta, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler,
        max_length=cfg.max_seq_length, truncation_mode="keep_start", logging_steps=1, save_strategy="no",
        seed=cfg.seed, bf16=compute_dtype(cfg) == torch.bfloat16, fp16=False, report_to=[], disable_tqdm=not progress,
        use_cpu=not cuda_available(), dataloader_num_workers=0, gradient_checkpointing=False)
    log, stop = LossLog(out), StopOnSignal()
    try:
        trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[log.callback, stop.callback])
        started = time.perf_counter()
        result = trainer.train()
    finally:
        stop.close()
    elapsed = time.perf_counter() - started
    if stop.requested and trainer.state.global_step < trainer.state.max_steps:  # DPO keeps no checkpoints
        raise Stopped(f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; a DPO run "
                      "restarts from the start (run it again)", 0)
    start = start_adapter(cfg)
    if start is None:
        save_adapter(policy, tokenizer, processor, out / "adapter")
    else:  # the start adapter plus what DPO learnt on top of it, as one adapter (written whole or not at all)
        save_adapter(policy, tokenizer, processor, out / "dpo-delta")
        with atomic_dir(out / "adapter") as tmp:
            combine_adapters(start, out / "dpo-delta", tmp)
            (processor or tokenizer).save_pretrained(tmp)
    history = [r for r in trainer.state.log_history if "loss" in r]
    summary = {
        "model": cfg.model, "method": "dpo", "start_adapter": start_adapter(cfg), "beta": cfg.beta,
        "pairs": len(rows), "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
        "reward_margin_first": history[0].get("rewards/margins") if history else None,
        "reward_margin_last": history[-1].get("rewards/margins") if history else None,
        "seconds": round(elapsed, 1), "adapter": str(out / "adapter"),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss(log.path, out / "loss.png", f"DPO · {cfg.model} · beta={cfg.beta} · lr={cfg.learning_rate}")
    return summary
