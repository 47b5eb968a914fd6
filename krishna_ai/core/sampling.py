"""The one sampling schema: a persona's `[sampling]` table, the UI's sliders, `/chat`, the CLI and eval.

Bounds are declared once, on the fields. A persona file that breaks one fails to load with the file
and field named (pydantic); a request that breaks one gets a `ConfigError` that lists every bad value.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from krishna_ai.core.errors import ConfigError, problems

MAX_NEW_TOKENS = 4096
"""The most new tokens one reply may ask for."""

_MESSAGES = {  # one per field (a test keeps it so)
    "temperature": "temperature must be between 0 and 2",
    "top_p": "top_p must be in (0, 1]",
    "top_k": "top_k must be an integer from 0 to 1000",
    "max_new_tokens": f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}",
    "repetition_penalty": "repetition_penalty must be between 1 and 2",
    "dry_multiplier": "dry_multiplier must be between 0 and 5",
    "seed": "seed must be an integer",
}

REPETITION_WINDOW = 64
"""Reply tokens the repetition penalty looks back over: llama.cpp's `repeat_last_n` default. The in-process
engines count only the reply (llama-cpp-python's sampler never sees the prompt, and the transformers
engine does the same), so a reply may repeat the question's names. llama-server also counts the prompt's
last tokens until the reply fills the window; vLLM and SGLang count every token."""

DRY_BASE = 1.75
DRY_ALLOWED_LENGTH = 2
DRY_BREAKERS = ("\n", ":", '"', "*")
"""DRY's other settings, llama.cpp's defaults (and its author's): a repeat may run 2 tokens for free, each
token past that multiplies the penalty by 1.75, and no match runs across a token that holds a newline, a
colon, a quote or an asterisk (so "Diagnosis:"-style labels and a story's quotes start afresh)."""
_DRY_MAX_EXPONENT = 40  # 1.75**40 ~ 5e9: past any logit margin, and no float overflow on long loops


class SamplingParams(BaseModel):
    """Per-request sampling. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid", strict=False)

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    """0 = greedy; higher = more varied."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    top_k: Annotated[int, Field(ge=0, le=1000, strict=True)] = 64
    """0 disables top-k filtering."""
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS, strict=True)] = 256
    repetition_penalty: Annotated[float, Field(ge=1.0, le=2.0)] = 1.0
    """> 1 makes the reply's last REPETITION_WINDOW tokens less likely: repetition control for small models.
    Both in-process engines weigh the same tokens, so a persona's measured value means one thing there."""
    dry_multiplier: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0
    """DRY ("don't repeat yourself") strength, 0 = off: a token that would make the reply repeat a run of
    its own tokens loses `dry_multiplier * DRY_BASE ** (run - DRY_ALLOWED_LENGTH)` logits (`dry_penalties`).
    It stops a sentence or clause said twice, which a flat repetition penalty cannot do without also
    weighing every name and article; only the reply counts, so retelling a card in the prompt is free."""
    seed: int | None = None

    @classmethod
    def build(cls, **values: Any) -> SamplingParams:
        """Validate `values` (None means the default); ConfigError lists every bad one."""
        values = {k: v for k, v in values.items() if v is not None}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"unknown sampling parameter(s): {', '.join(unknown)}")
        bad = [f"{k} must be a number, got {v!r}" for k, v in values.items() if isinstance(v, bool)]
        if bad:
            raise ConfigError(problems("invalid sampling parameters:", bad))
        try:
            return cls(**values)
        except ValidationError as exc:
            fields = dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"])
            raise ConfigError(problems("invalid sampling parameters:", [
                f"{_MESSAGES[f]}, got {values.get(f)!r}" for f in fields])) from None

    @classmethod
    def for_persona(cls, persona: Any, **overrides: Any) -> SamplingParams:
        """The persona's defaults, with any non-None override applied, validated."""
        base = persona.sampling.model_dump()
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(**base)

    def validated(self) -> SamplingParams:
        """Re-check after attributes were assigned directly."""
        return type(self).build(**self.model_dump())


def dry_penalties(reply: Sequence[int], breakers: Collection[int], multiplier: float,
                  base: float = DRY_BASE, allowed_length: int = DRY_ALLOWED_LENGTH) -> dict[int, float]:
    """DRY's logit penalties for the token after `reply` (the reply's own tokens, prompt excluded), as
    llama.cpp and text-generation-webui compute them: wherever the reply's last token occurred before,
    the token that followed it there would extend a repeat whose length is how far the two occurrences
    agree backwards (stopping at a breaker token); a repeat of `allowed_length` or more costs the
    following token `multiplier * base ** (length - allowed_length)`. Returns {token: penalty}."""
    if multiplier <= 0 or len(reply) < 2 or reply[-1] in breakers:
        return {}
    last, end = reply[-1], len(reply) - 1
    lengths: dict[int, int] = {}
    for i in range(end):
        following = reply[i + 1]
        if reply[i] != last or following in breakers:
            continue
        length = 1
        while length <= i and reply[i - length] == reply[end - length] and reply[end - length] not in breakers:
            length += 1
        lengths[following] = max(length, lengths.get(following, 0))
    return {token: multiplier * base ** min(length - allowed_length, _DRY_MAX_EXPONENT)
            for token, length in lengths.items() if length >= allowed_length}


def breaker_tokens(texts: Sequence[str]) -> frozenset[int]:
    """The ids whose text (`texts[id]`, the tokenizer's decoding of each id) holds a DRY breaker."""
    return frozenset(i for i, text in enumerate(texts) if any(b in text for b in DRY_BREAKERS))
