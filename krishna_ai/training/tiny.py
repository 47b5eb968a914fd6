"""Tiny random Gemma 3n checkpoints, shaped like E4B, for tests and offline demos.

No Gemma 3n weights can be downloaded here, so the runtime is exercised on a checkpoint built from
the real transformers config classes with E4B's structure (35 layers, 15 KV-shared, every 5th layer
full attention, per-layer FFN widths, activation sparsity on the first layers, AltUp, LAuReL,
per-layer embeddings, a vision and an audio tower) but tiny widths. Every Linear is bitsandbytes
4-bit friendly on CPU (in_features >= 64, out_features % 32 == 0) except the AltUp routers that
`models.SKIP_4BIT` keeps in full precision, as on the real model.

The processor is the real one: the embedded Gemma 3 tokenizer (the same 262,144 text tokens) with
Gemma 3n's image/audio tokens at their real ids, Gemma 3n's chat template, a Siglip image
processor and the Gemma 3n audio feature extractor. The weights are random: replies are noise.

    python -m krishna_ai tiny-gemma3n --out /tmp/tiny-e4b            # multimodal, ~75 MB
    python -m krishna_ai tiny-gemma3n --out /tmp/tiny-text --text-only --layers 5
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from krishna_ai.core.cache import atomic_dir
from krishna_ai.core.errors import ConfigError

# E4B's numbers that the tiny config keeps the shape of.
E4B_LAYERS = 35
E4B_KV_SHARED = 15
E4B_SPARSE_LAYERS = 10
ATTENTION_PATTERN = 5
"""Every 5th layer is full attention; the rest use a sliding window."""

HIDDEN = 64
"""E4B: 2048. 64 is the smallest width bitsandbytes' CPU 4-bit blocks accept."""
FFN = 256
"""E4B: 16384 in every layer (8x hidden is 512 here; 256 keeps the files small)."""
PER_LAYER_INPUT = 64
"""E4B: 256."""
PER_LAYER_VOCAB = 512
"""E4B: 262144. Ids beyond it read row 0 (transformers maps them there), so a small table is enough."""
IMAGE_SIDE = 64
"""test_efficientnet downsamples by 32: a 64 px image gives 2x2 = 4 soft tokens (E4B: 768 px, 256)."""
IMAGE_SOFT_TOKENS = 4
AUDIO_SOFT_TOKENS = 188
"""As E4B: the processor pads every clip to 30 s, which the audio tower turns into 188 tokens."""

TEXT_VOCAB = 262_144
VISION_VOCAB = 128
AUDIO_VOCAB = 128
VOCAB = TEXT_VOCAB + VISION_VOCAB + AUDIO_VOCAB  # 262400, the vocab of every Gemma 3n checkpoint

# Gemma 3n's multimodal tokens and their ids in the real checkpoints (Gemma3nConfig defaults).
SPECIAL_TOKENS = {
    "boi_token": ("<start_of_image>", 255_999),
    "boa_token": ("<start_of_audio>", 256_000),
    "eoi_token": ("<end_of_image>", 262_144),
    "image_token": ("<image_soft_token>", 262_145),
    "eoa_token": ("<end_of_audio>", 262_272),
    "audio_token": ("<audio_soft_token>", 262_273),
}
MAX_SHARD_SIZE = "10MB"
MARKER = "TINY_GEMMA3N.md"

# Gemma 3n's chat template, as shipped with google/gemma-3n-E4B-it: no system role (the system text
# opens the first user turn), strict user/model alternation, image and audio blocks as soft tokens.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def _scaled(e4b_count: int, layers: int, multiple: int = 1) -> int:
    return multiple * round(e4b_count * layers / E4B_LAYERS / multiple)


def tiny_text_config(layers: int = E4B_LAYERS) -> Any:
    """Gemma3nTextConfig with E4B's structure at tiny width; `layers` other than 35 scales the pattern."""
    from transformers import Gemma3nTextConfig

    if not 1 <= layers <= 100:
        raise ConfigError(f"--layers must be between 1 and 100, got {layers}")
    layer_types = ["full_attention" if (i + 1) % ATTENTION_PATTERN == 0 else "sliding_attention"
                   for i in range(layers)]
    # KV sharing comes in whole attention patterns (E4B: 3 x 5), and the layers that compute K/V
    # must still include a full-attention layer for the shared full-attention layers to read.
    kv_shared = _scaled(E4B_KV_SHARED, layers, ATTENTION_PATTERN)
    if "full_attention" in layer_types:
        kv_shared = min(kv_shared, layers - ATTENTION_PATTERN)
    kv_shared = max(0, min(kv_shared, layers - 1))
    sparse = min(_scaled(E4B_SPARSE_LAYERS, layers), layers)
    return Gemma3nTextConfig(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=PER_LAYER_VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=[FFN] * layers,
        num_hidden_layers=layers,
        num_attention_heads=4,  # E4B: 8 heads / 2 KV heads of 256; here 4 / 1 of 32
        num_key_value_heads=1,
        head_dim=32,
        layer_types=layer_types,
        num_kv_shared_layers=kv_shared,
        activation_sparsity_pattern=[0.95] * sparse + [0.0] * (layers - sparse),
        altup_num_inputs=4,
        laurel_rank=64,
        hidden_size_per_layer_input=PER_LAYER_INPUT,
        sliding_window=512,
        max_position_embeddings=32_768,
    )


def tiny_gemma3n_config(layers: int = E4B_LAYERS) -> Any:
    """Gemma3nConfig: the tiny text config plus a timm test vision tower and a 2-layer conformer."""
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nVisionConfig

    vision = Gemma3nVisionConfig(architecture="test_efficientnet", hidden_size=256,
                                 vocab_size=VISION_VOCAB, vocab_offset=TEXT_VOCAB)
    audio = Gemma3nAudioConfig(hidden_size=64, conf_num_hidden_layers=2, conf_num_attention_heads=4,
                               sscp_conv_channel_size=[16, 8], conf_attention_chunk_size=4,
                               conf_attention_context_left=5, vocab_size=AUDIO_VOCAB,
                               vocab_offset=TEXT_VOCAB + VISION_VOCAB)
    ids = {key.replace("_token", "_token_id"): token_id for key, (_, token_id) in SPECIAL_TOKENS.items()}
    return Gemma3nConfig(text_config=tiny_text_config(layers), vision_config=vision, audio_config=audio,
                         vision_soft_tokens_per_image=IMAGE_SOFT_TOKENS,
                         audio_soft_tokens_per_image=AUDIO_SOFT_TOKENS, **ids)


def _gemma3n_tokenizer_json(gemma3_tokenizer: Path, target: Path) -> None:
    """Gemma 3's tokenizer.json with Gemma 3n's multimodal tokens at their real ids (vocab 262400).

    Gemma 3 has `<end_of_image>` at 256000 where Gemma 3n has `<start_of_audio>`; Gemma 3n moves
    `<end_of_image>` to 262144. Ids 262144..262399 (the vision and audio soft-token ranges) are
    added to the BPE vocab itself so they stay contiguous; the unnamed ones become unused tokens.
    """
    data = json.loads(gemma3_tokenizer.read_text(encoding="utf-8"))
    vocab: dict[str, int] = data["model"]["vocab"]
    if len(vocab) != TEXT_VOCAB or vocab.get("<end_of_image>") != 256_000:
        raise ConfigError(f"{gemma3_tokenizer} is not the Gemma 3 tokenizer this builder expects "
                          f"({len(vocab)} tokens)")
    del vocab["<end_of_image>"]
    vocab["<start_of_audio>"] = 256_000
    named = {token_id: text for text, token_id in SPECIAL_TOKENS.values()}
    added = {tok["id"]: tok for tok in data["added_tokens"]}
    for token_id in range(TEXT_VOCAB, VOCAB):
        vocab[named.get(token_id, f"<unused_mm{token_id}>")] = token_id
    for token_id in sorted(named) + list(range(TEXT_VOCAB, VOCAB)):
        text = named.get(token_id, f"<unused_mm{token_id}>")
        added[token_id] = {"id": token_id, "content": text, "single_word": False, "lstrip": False,
                           "rstrip": False, "normalized": False, "special": True}
    data["added_tokens"] = [added[i] for i in sorted(added)]
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _tokenizer(work: Path) -> Any:
    from transformers import AutoTokenizer

    from krishna_ai.runtime.light import ensure_light_checkpoint

    light = ensure_light_checkpoint()
    work.mkdir(parents=True, exist_ok=True)
    _gemma3n_tokenizer_json(light / "tokenizer.json", work / "tokenizer.json")
    shutil.copy(light / "tokenizer_config.json", work / "tokenizer_config.json")
    extra = {key: text for key, (text, _) in SPECIAL_TOKENS.items()}
    tokenizer = AutoTokenizer.from_pretrained(work, extra_special_tokens=extra)
    tokenizer.chat_template = CHAT_TEMPLATE
    wrong = {text: tokenizer.convert_tokens_to_ids(text) for text, token_id in SPECIAL_TOKENS.values()
             if tokenizer.convert_tokens_to_ids(text) != token_id}
    if wrong or len(tokenizer) != VOCAB:
        raise ConfigError(f"tokenizer build went wrong: ids {wrong}, size {len(tokenizer)} (want {VOCAB})")
    return tokenizer


def _processor(tokenizer: Any) -> Any:
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    # The settings of the real checkpoints (transformers' Gemma 3n conversion script), at 64 px.
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
                                           resample=PILImageResampling.BILINEAR, do_normalize=False,
                                           image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    return Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(), image_processor=image_processor,
                            tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                            image_seq_length=IMAGE_SOFT_TOKENS, audio_seq_length=AUDIO_SOFT_TOKENS)


def _generation_config() -> Any:
    from transformers import GenerationConfig

    # As the real instruction-tuned checkpoints: stop at <eos> or <end_of_turn> (106).
    return GenerationConfig(bos_token_id=2, pad_token_id=0, eos_token_id=[1, 106], do_sample=True,
                            temperature=1.0, top_k=64, top_p=0.95)


def build_tiny_gemma3n(out_dir: str | Path, *, text_only: bool = False, layers: int = E4B_LAYERS,
                       seed: int = 0, config: Any = None, device: str | None = None) -> Path:
    """Write a random-weight Gemma 3n checkpoint (bf16, sharded safetensors) and its processor to `out_dir`.

    text_only=True writes a Gemma3nForCausalLM checkpoint with the tokenizer only. `config` (a Gemma3nConfig)
    replaces the tiny shape: `Gemma3nConfig()` is E4B at full size (bench/gpu.py), built on `device`. The folder is
    written next to `out_dir` and renamed into place, so an interrupted build leaves nothing that
    looks complete. An existing `out_dir` is replaced only if it is empty or an earlier tiny build.
    """
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nForConditionalGeneration

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ConfigError(f"{out} exists and is not an earlier tiny Gemma 3n build; choose another --out")
    if config is None:
        config = tiny_text_config(layers) if text_only else tiny_gemma3n_config(layers)
    with atomic_dir(out) as tmp:
        torch.manual_seed(seed)
        cls = Gemma3nForCausalLM if text_only else Gemma3nForConditionalGeneration
        with torch.device(device or "cpu"):  # a full-size build initialises faster on a GPU
            model = cls(config).to(torch.bfloat16)  # bf16 as the real checkpoints; fp16 overflows in Gemma 3n
        model.generation_config = _generation_config()
        model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)
        tokenizer = _tokenizer(tmp / ".tokenizer-work")
        if text_only:
            tokenizer.save_pretrained(tmp)
        else:
            _processor(tokenizer).save_pretrained(tmp)
        shutil.rmtree(tmp / ".tokenizer-work")
        kind = "Gemma3nForCausalLM (text only)" if text_only else "Gemma3nForConditionalGeneration"
        (tmp / MARKER).write_text(
            f"# Random Gemma 3n ({kind})\n\nE4B-shaped ({config.get_text_config().num_hidden_layers} layers, "
            f"{config.get_text_config().num_kv_shared_layers} KV-shared), random weights (seed {seed}), "
            "written by `python -m krishna_ai tiny-gemma3n` for tests; its replies are noise.\n",
            encoding="utf-8")
        if out.exists():  # renamed aside before it is deleted, so an earlier build is never half-deleted at `out`
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            shutil.rmtree(old)
    return out
