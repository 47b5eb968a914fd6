"""The sampling schema: defaults, bounds with their messages, persona defaults and overrides."""

from __future__ import annotations

import pytest

from krishna_ai.core.errors import ConfigError
from krishna_ai.core.personas import load_persona
from krishna_ai.core.sampling import SamplingParams


def test_defaults_and_none_means_default():
    p = SamplingParams.build(temperature=None, top_k=None)
    assert p == SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.repetition_penalty, p.seed) == (
        1.0, 0.95, 64, 256, 1.0, None)


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.1, "temperature must be between 0 and 2, got -0.1"),
    ("temperature", 2.01, "temperature must be between 0 and 2, got 2.01"),
    ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
    ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
    ("top_k", -1, "top_k must be an integer from 0 to 1000, got -1"),
    ("top_k", 1001, "top_k must be an integer from 0 to 1000, got 1001"),
    ("top_k", 3.5, "top_k must be an integer from 0 to 1000, got 3.5"),
    ("max_new_tokens", 0, "max_new_tokens must be an integer from 1 to 4096, got 0"),
    ("max_new_tokens", 4097, "max_new_tokens must be an integer from 1 to 4096, got 4097"),
    ("repetition_penalty", 0.9, "repetition_penalty must be between 1 and 2, got 0.9"),
    ("repetition_penalty", 2.5, "repetition_penalty must be between 1 and 2, got 2.5"),
    ("dry_multiplier", -0.1, "dry_multiplier must be between 0 and 5, got -0.1"),
    ("dry_multiplier", 5.5, "dry_multiplier must be between 0 and 5, got 5.5"),
    ("seed", "abc", "seed must be an integer, got 'abc'"),
])
def test_each_bound_has_its_message(field, value, message):
    with pytest.raises(ConfigError) as exc:
        SamplingParams.build(**{field: value})
    text = str(exc.value)
    assert text.startswith("invalid sampling parameters:")
    assert message in text


@pytest.mark.parametrize("values", [
    {"temperature": 0.0}, {"temperature": 2.0}, {"top_p": 1.0}, {"top_p": 1e-6}, {"top_k": 0}, {"top_k": 1000},
    {"max_new_tokens": 1}, {"max_new_tokens": 4096}, {"repetition_penalty": 1.0}, {"repetition_penalty": 2.0},
    {"dry_multiplier": 0.0}, {"dry_multiplier": 5.0},
    {"seed": 0}, {"seed": -5},
])
def test_the_bounds_themselves_are_allowed(values):
    p = SamplingParams.build(**values)
    for key, value in values.items():
        assert getattr(p, key) == value


def test_every_bad_value_is_listed_once():
    with pytest.raises(ConfigError) as exc:
        SamplingParams.build(temperature=9, top_p=0, max_new_tokens=0)
    lines = str(exc.value).splitlines()
    assert sum("temperature" in line for line in lines) == 1
    assert any("top_p must be in (0, 1], got 0" in line for line in lines)
    assert any("max_new_tokens must be an integer from 1 to 4096, got 0" in line for line in lines)


def test_unknown_parameters_are_named_sorted():
    with pytest.raises(ConfigError, match=r"^unknown sampling parameter\(s\): min_p, typo$"):
        SamplingParams.build(typo=1, min_p=0.1, temperature=0.5)


@pytest.mark.parametrize("field", ["temperature", "top_k", "max_new_tokens", "seed"])
def test_booleans_are_not_numbers(field):
    with pytest.raises(ConfigError) as exc:
        SamplingParams.build(**{field: True})
    assert f"{field} must be a number, got True" in str(exc.value)
    assert str(exc.value).startswith("invalid sampling parameters:")


def test_persona_defaults_with_overrides(tmp_path):
    persona = load_persona("prompts/aurora.toml")
    base = SamplingParams.for_persona(persona)
    assert base == persona.sampling
    tuned = SamplingParams.for_persona(persona, temperature=0.0, max_new_tokens=None, seed=7)
    assert tuned.temperature == 0.0 and tuned.seed == 7
    assert tuned.max_new_tokens == persona.sampling.max_new_tokens  # None keeps the persona's value
    with pytest.raises(ConfigError, match="top_k must be an integer from 0 to 1000, got 5000"):
        SamplingParams.for_persona(persona, top_k=5000)


def test_validated_rechecks_direct_assignment():
    p = SamplingParams(temperature=0.5)
    assert p.validated() == p
    p.temperature = 7.0  # pydantic does not validate assignment by default
    with pytest.raises(ConfigError, match="temperature must be between 0 and 2, got 7.0"):
        p.validated()


def test_repetition_penalty_looks_back_as_far_as_llama_cpp_does():
    """The transformers engine penalises the reply's last REPETITION_WINDOW tokens, as llama.cpp's sampler
    does (it sees only sampled tokens), not the prompt: the same persona value means the same thing on
    `light` and `light-gguf` (tests/test_llamacpp.py compares the two engines' replies)."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from krishna_ai.core.sampling import REPETITION_WINDOW
    from krishna_ai.runtime.hf import _RecentRepetitionPenalty

    assert REPETITION_WINDOW == 64
    scores = torch.tensor([[2.0, -2.0, 3.0, -1.0, 0.5, 4.0]])
    ids = torch.tensor([[5, 1, 0, 0, 3, 2]])  # a prompt of 1 (token 5), a reply of 5
    out = _RecentRepetitionPenalty(2.0, prompt_length=1, window=4)(ids, scores.clone())
    assert out.tolist() == [[1.0, -2.0, 1.5, -2.0, 0.5, 4.0]]  # sees 0 (twice), 3, 2: not 1, not the prompt's 5
    # before the first reply token nothing is penalised
    assert torch.equal(_RecentRepetitionPenalty(2.0, prompt_length=6)(ids, scores.clone()), scores)
    # a window that covers the whole reply is transformers' own penalty applied to the reply
    whole = _RecentRepetitionPenalty(1.3, prompt_length=1, window=5)(ids, scores.clone())
    assert torch.equal(whole, RepetitionPenaltyLogitsProcessor(1.3)(ids[:, 1:], scores.clone()))


@pytest.mark.parametrize("reply, breakers, allowed, expected", [
    ([1, 2, 3, 9, 1, 2], set(), 2, {3: 1.0}),  # "1 2" seen before, followed by 3: a 2-token repeat
    ([1, 2, 3, 9, 1, 2], set(), 3, {}),  # ... which a 3-token allowance lets through
    ([1, 2, 3, 4, 1, 2, 3], set(), 2, {4: 2.0}),  # 3 tokens repeated: base ** 1
    ([1, 2, 3, 4, 1, 2, 3], {1}, 2, {4: 1.0}),  # a breaker ends the match
    ([1, 2, 3, 4, 1, 2, 7], {7}, 2, {}),  # the last token is a breaker: nothing to extend
    ([1, 2, 7, 1, 2], {7}, 2, {}),  # a breaker is never penalised
    ([1, 2, 3, 0, 2, 4, 1, 2], set(), 2, {3: 1.0}),  # the first 2's match runs 2 tokens back, the second's 1
    ([5], set(), 2, {}),
])
def test_dry_penalties_by_hand(reply, breakers, allowed, expected):
    from krishna_ai.core.sampling import dry_penalties

    assert dry_penalties(reply, breakers, 1.0, base=2.0, allowed_length=allowed) == expected
    assert dry_penalties(reply, breakers, 0.0, base=2.0, allowed_length=allowed) == {}  # 0 = off


def test_dry_penalty_stays_finite_on_a_long_loop():
    import math

    from krishna_ai.core.sampling import dry_penalties

    penalty = dry_penalties([7] * 500, set(), 0.8)[7]
    assert math.isfinite(penalty) and penalty > 1e9


def test_every_field_has_its_message():
    from krishna_ai.core.sampling import _MESSAGES

    assert set(_MESSAGES) == set(SamplingParams.model_fields)
