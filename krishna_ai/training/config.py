"""The training recipe: `TrainConfig` (a YAML file in configs/, or the sweep's trial), one pydantic model.

Bounds and choices are declared once, on the fields; a recipe that breaks several gets one `ConfigError`
that names every bad setting (file and dotted field). Only the rules that span fields live in the
model validator. `check_data()` is apart: whether the data file exists is a fact about this machine,
not about the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from krishna_ai.core.errors import ConfigError, problems
from krishna_ai.core.schema import Strict

TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
PROJ = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
        "down": "down_proj"}
Positive = Annotated[int, Field(gt=0, strict=True)]

# How a bad value of each field is reported ({v!r} is the value given); pydantic's own text otherwise.
_MESSAGES = {
    "data_format": "{v!r} is not messages, persona, image_folder or preference",
    "method": "{v!r} is not sft or dpo",
    "engine": "{v!r} is not auto, hf or unsloth",
    "quantization": "{v!r} is not none or 4bit",
    "dtype": "{v!r} is not auto, bf16 or fp32 (fp16 overflows in Gemma 3n)",
    "lora.r": "must be a positive integer, got {v!r}",
    "lora.alpha": "must be positive, got {v!r}",
    "lora.dropout": "must be in [0, 1), got {v!r}",
    "learning_rate": "must be in (0, 1), got {v!r}",
    "beta": "must be positive, got {v!r}",
    "epochs": "must be positive (or set max_steps), got {v!r}",
    **{name: "must be a positive integer, got {v!r}" for name in ("batch_size", "grad_accum", "max_seq_length",
                                                                  "save_steps", "save_total_limit")},
}


class LoraSettings(Strict):
    r: Positive = 16
    """LoRA rank: higher = more capacity and memory."""
    alpha: Annotated[float, Field(gt=0)] = 16
    """Scaling numerator (alpha / r, or alpha / sqrt(r) with rslora)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    targets: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    """Projections of the language model's attention/MLP to adapt (never the audio/vision towers)."""
    trainable_tokens: list[str] = Field(default_factory=lambda: list(TURN_TOKENS))
    """Embedding rows trained alongside the LoRA (peft `trainable_token_indices`). A *base* model never
    trained its turn markers: without these rows a fine-tune cannot learn to close its turn. [] = none."""

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        bad = [t for t in targets if t not in PROJ]
        if bad or not targets:
            raise ValueError(f"{bad or 'empty'}; choose from {', '.join(PROJ)}")
        return targets


class TrainConfig(Strict):
    model_config = ConfigDict(validate_assignment=True)

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
    prompts: list[str] = Field(default_factory=list)
    """Extra persona folders to look the persona up in (`--prompts DIR`), before the shipped prompts/."""
    engine: Literal["auto", "hf", "unsloth"] = "hf"
    quantization: Literal["none", "4bit"] = "none"
    """4bit = QLoRA (bitsandbytes nf4 base weights)."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute dtype; auto = bf16 on CUDA, fp32 on CPU. fp16 is refused: it overflows in Gemma 3n."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    """If > 0, overrides epochs."""
    batch_size: Positive = 2
    grad_accum: Positive = 4
    max_seq_length: Positive = 1024
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    lr_scheduler: str = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    gradient_checkpointing: bool = True
    save_steps: Positive = 50
    save_total_limit: Annotated[int, Field(ge=1)] | None = 3
    """Checkpoints kept (None: all)."""
    seed: int = 3407
    limit: Annotated[int, Field(ge=0)] | None = None
    """Use only the first N conversations (smoke runs); 0 or None: all."""
    searchable: dict[str, Any] = Field(default_factory=dict)
    """For `sweep`: parameter -> search space (see configs/)."""

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_defaults(cls, value: Any) -> Any:
        return {} if value is None else value  # `lora:` with every setting commented out: the defaults

    @model_validator(mode="after")
    def _across_fields(self) -> TrainConfig:
        e = []
        if (self.method == "dpo") != (self.data_format == "preference"):
            e.append("method dpo takes data_format preference (chosen/rejected pairs), and only it does; "
                     f"got method {self.method!r} with data_format {self.data_format!r}")
        if self.method == "dpo" and not self.beta > 0:
            e.append("beta: " + _MESSAGES["beta"].format(v=self.beta))
        if self.method == "dpo" and self.quantization != "none":
            e.append("quantization: DPO here refines a LoRA on a bf16/fp32 base; use quantization: none")
        if self.data_format == "persona" and not self.persona:
            e.append("persona: required when data_format is persona")
        if self.max_steps <= 0 and not self.epochs > 0:
            e.append("epochs: " + _MESSAGES["epochs"].format(v=self.epochs))
        if e:
            raise ValueError(problems("", e).lstrip("\n"))
        return self

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
        """Validate a recipe mapping; one ConfigError lists every problem (the data file's too)."""
        errors = _data_problems(raw.get("data", ""))
        try:
            cfg = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(problems(f"{source}: invalid recipe", errors + _translate(exc, raw))) from None
        if errors:
            raise ConfigError(problems(f"{source}: invalid recipe", errors))
        return cfg

    def check_data(self, source: str = "config") -> None:
        """ConfigError unless the data the recipe names is there."""
        errors = _data_problems(self.data)
        if errors:
            raise ConfigError(problems(f"{source}: invalid recipe", errors))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def _data_problems(data: Any) -> list[str]:
    if not data:
        return ["data: required (a JSONL file or an image folder)"]
    if isinstance(data, str) and not Path(data).exists():
        return [f"data: {data} does not exist"]
    return []


def _translate(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """pydantic's errors as this project's messages: `dotted.field: what is wrong`."""
    out = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            model = LoraSettings if name.startswith("lora.") else TrainConfig
            out.append(f"{name}: unknown setting (known: {', '.join(sorted(model.model_fields))})")
        elif not name:  # the cross-field validator: its message lists its own problems
            out.extend(line.removeprefix("  - ") for line in str(err["ctx"]["error"]).splitlines() if line.strip())
        elif name in _MESSAGES:
            out.append(f"{name}: " + _MESSAGES[name].format(v=err.get("input")))
        elif err["type"] == "value_error":
            out.append(f"{name}: {err['ctx']['error']}")
        else:
            out.append(f"{name}: {err['msg']}, got {err.get('input')!r}")
    return list(dict.fromkeys(out))


def default_settings() -> dict[str, Any]:
    """Every settable name (dotted for LoRA) with its default value, which gives its type (for `sweep`)."""
    def defaults(model: type[BaseModel], prefix: str) -> dict[str, Any]:
        return {prefix + name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()}

    return {**defaults(TrainConfig, ""), **defaults(LoraSettings, "lora.")}
