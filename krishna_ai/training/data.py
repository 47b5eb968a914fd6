"""Training data: conversation JSONL, image-folder classification sets, persona datasets.

Every bad line is reported with its line number and reason, all at once, in one `DataError`;
nothing is silently dropped. Tokenisation puts the loss on assistant tokens only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from krishna_ai.core import schema
from krishna_ai.core.cache import atomic_file
from krishna_ai.core.errors import DataError, ImageError, problems
from krishna_ai.core.images import load_image
from krishna_ai.core.personas import Persona
from krishna_ai.core.prompting import Message, render_prompt, system_text
from krishna_ai.core.records import record_cards, record_teachings

ROLES = {"system", "user", "assistant"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IGNORE_INDEX = -100


def _check_content(content: Any, base: Path, where: str, errors: list[str]) -> Any:
    """Validate a message's content; resolve image paths relative to the data file."""
    if isinstance(content, str):
        if not content.strip():
            errors.append(f"{where}: empty content")
        return content
    if not isinstance(content, list) or not content:
        errors.append(f"{where}: content must be a string or a non-empty list of blocks")
        return content
    blocks = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(block, dict) or block.get("type") not in ("text", "image"):
            errors.append(f"{at}: a block must be {{\"type\": \"text\"|\"image\", ...}}")
            continue
        if block["type"] == "text":
            if not isinstance(block.get("text"), str) or not block["text"].strip():
                errors.append(f"{at}: text block needs a non-empty \"text\"")
            blocks.append({"type": "text", "text": block.get("text", "")})
            continue
        ref = block.get("image") or block.get("path")
        if not isinstance(ref, str) or not ref:
            errors.append(f"{at}: image block needs \"image\": a path relative to the file")
            continue
        path = (base / ref) if not Path(ref).is_absolute() else Path(ref)
        try:
            load_image(path)
        except ImageError as exc:
            errors.append(f"{at}: unreadable image: {exc}")
            continue
        blocks.append({"type": "image", "image": str(path)})
    return blocks


def parse_conversation(obj: Any, base: Path, where: str, errors: list[str]) -> list[Message] | None:
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a JSON object with \"messages\"")
        return None
    unknown = set(obj) - {"messages", "label", "meta"}
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)} (allowed: messages, label, meta)")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        errors.append(f"{where}: \"messages\" must be a non-empty list")
        return None
    n_errors = len(errors)
    out = []
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            errors.append(f"{at}: role must be one of system, user, assistant")
            continue
        if msg["role"] == "system" and i != 0:
            errors.append(f"{at}: a system message may only come first")
        out.append({"role": msg["role"], "content": _check_content(msg.get("content"), base, at, errors)})
    roles = [m["role"] for m in out if m["role"] != "system"]
    if roles and roles[-1] != "assistant":
        errors.append(f"{where}: the last message must be the assistant's (it is what the model learns)")
    if roles and roles[0] != "user":
        errors.append(f"{where}: the first non-system message must be the user's")
    if any(a == b for a, b in zip(roles, roles[1:], strict=False)):
        errors.append(f"{where}: user and assistant turns must alternate")
    return out if len(errors) == n_errors else None


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line; JSON errors collected into one DataError."""
    return schema.read_jsonl(path, DataError)


def load_conversations(path: str | Path) -> list[list[Message]]:
    """A conversation JSONL file, validated line by line (every problem reported at once)."""
    path = Path(path)
    rows = read_jsonl(path)
    errors: list[str] = []
    out = []
    for n, obj in rows:
        conv = parse_conversation(obj, path.parent, f"{path.name}:{n}", errors)
        if conv is not None:
            out.append(conv)
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} problem(s)", errors))
    return out


def load_image_folder(root: str | Path, question: str = "What condition does this maize leaf show?",
                      persona: Persona | None = None) -> list[list[Message]]:
    """A classification set as folders (one sub-folder per label) -> image+question / label conversations."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    labels = sorted(p for p in root.iterdir() if p.is_dir())
    if not labels:
        raise DataError(f"{root}: no label sub-folders (expected ROOT/<label>/<image files>)")
    errors, out = [], []
    for folder in labels:
        label = folder.name.replace("_", " ")
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not files:
            errors.append(f"{folder}: empty label folder")
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                errors.append(f"{f}: not an image file name ({f.suffix or 'no suffix'})")
                continue
            try:
                load_image(f)
            except ImageError as exc:
                errors.append(f"{f}: unreadable image: {exc}")
                continue
            conv: list[Message] = []
            if persona is not None:
                conv.append({"role": "system", "content": system_text(persona)})
            conv += [{"role": "user", "content": [{"type": "image", "image": str(f)},
                                                   {"type": "text", "text": question}]},
                     {"role": "assistant", "content": label}]
            out.append(conv)
    if errors:
        raise DataError(problems(f"{root}: {len(errors)} problem(s)", errors))
    return out


def load_persona_source(path: str | Path) -> list[dict[str, Any]]:
    """Question/answer records (`question`, `answer`, optional `personality`, `label`, `topic`)."""
    path = Path(path)
    errors, out = [], []
    for n, obj in read_jsonl(path):
        where = f"{path.name}:{n}"
        if not isinstance(obj, dict):
            errors.append(f"{where}: expected a JSON object")
            continue
        unknown = set(obj) - {"question", "answer", "personality", "label", "topic", "card", "cards",
                               "teaching"}
        if unknown:
            errors.append(f"{where}: unknown key(s) {sorted(unknown)}")
        for key in ("question", "answer"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                errors.append(f"{where}: \"{key}\" must be a non-empty string")
        out.append(obj)
    if errors:
        raise DataError(problems(f"{path}: {len(errors)} problem(s)", errors))
    return out


def persona_conversations(persona: Persona, records: Iterable[dict[str, Any]]) -> list[list[Message]]:
    """Render records with the persona's own system part (story instruction, retrieved cards) into
    conversations: the prompt a model is trained on is the prompt the app builds."""
    return [[{"role": "system", "content": system_text(persona, r.get("personality"), record_cards(persona, r),
                                                       record_teachings(persona, r))},
             {"role": "user", "content": r["question"]},
             {"role": "assistant", "content": r["answer"]}] for r in records]


def write_jsonl(conversations: Iterable[list[Message]], path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for conv in conversations:
            fh.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
    return path


# -- tokenisation ---------------------------------------------------------------------------

def _images_of(messages: list[Message]) -> list[Any]:
    return [load_image(b["image"]) for m in messages if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "image"]


class TooLong(DataError):
    """A conversation whose last answer ends past max_seq_length (cutting it would cut its end of turn)."""

    def __init__(self, needed: int, max_length: int):
        super().__init__(f"the answer ends at token {needed}, past max_seq_length {max_length}: cut there, it would "
                         "lose its end of turn (raise max_seq_length)")
        self.needed = needed


def encode_all(encoder: ConversationEncoder, conversations: list[list[Message]]) -> list[dict[str, Any]]:
    """Encode every conversation; one DataError for all that would be cut inside their answer."""
    rows, long = [], []
    for conv in conversations:
        try:
            rows.append(encoder.encode(conv))
        except TooLong as exc:
            long.append(exc.needed)
    if long:
        raise DataError(
            f"{len(long)} of {len(conversations)} conversations are longer than max_seq_length {encoder.max_length} "
            f"inside their answer (the longest needs {max(long)} tokens): cut there, they would lose their end of "
            f"turn and the model would never learn to stop. Set max_seq_length to at least {max(long)}.")
    return rows


class ConversationEncoder:
    """Tokenises conversations in the model's chat format with labels on assistant tokens only."""

    def __init__(self, tokenizer: Any, processor: Any | None = None, max_length: int = 1024):
        self.tokenizer = tokenizer
        self.processor = processor
        self.max_length = max_length

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return render_prompt(messages, self.tokenizer, self.processor, add_generation_prompt=add_generation_prompt)

    def _tokenize(self, text: str, images: list[Any]) -> dict[str, Any]:
        if self.processor is not None:
            out = self.processor(text=text, images=images or None, return_tensors="pt",
                                 add_special_tokens=False)
            return {k: v[0] if k in ("input_ids", "attention_mask", "token_type_ids") else v
                    for k, v in out.items()}
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return {"input_ids": ids}

    def encode(self, messages: list[Message]) -> dict[str, Any]:
        """input_ids, attention_mask, labels (-100 except assistant turns), plus pixel inputs if any."""
        import torch

        full = self._tokenize(self._render(messages, add_generation_prompt=False), _images_of(messages))
        ids = full["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            start = self._prefix_len(messages[:i], add_generation_prompt=True)
            end = self._prefix_len(messages[: i + 1], add_generation_prompt=False)
            labels[start:end] = ids[start:end]
        if int((labels != IGNORE_INDEX).sum()) == 0:
            raise DataError("a conversation has no assistant tokens to learn")
        if len(ids) > self.max_length:
            if self.processor is not None and "pixel_values" in full:
                raise DataError(f"a conversation with an image is {len(ids)} tokens; max_length is "
                                f"{self.max_length} (raise max_seq_length)")
            answer_end = int((labels != IGNORE_INDEX).nonzero().max()) + 1
            if answer_end > self.max_length:
                # Cutting into the answer drops its end-of-turn token: the model would never learn to stop.
                raise TooLong(answer_end, self.max_length)
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        out = {k: v for k, v in full.items() if k not in ("input_ids", "attention_mask")}
        out.update(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        return out

    def _prefix_len(self, messages: list[Message], add_generation_prompt: bool) -> int:
        text = self._render(messages, add_generation_prompt=add_generation_prompt)
        return int(self._tokenize(text, _images_of(messages))["input_ids"].shape[0])


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; stack any pixel inputs."""
    import torch

    width = max(len(ex["input_ids"]) for ex in batch)
    out: dict[str, Any] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX),
                      ("token_type_ids", 0)):
        if key not in batch[0]:
            continue
        rows = []
        for ex in batch:
            t = torch.as_tensor(ex[key])
            rows.append(torch.cat([t, torch.full((width - t.shape[0],), fill, dtype=t.dtype)]))
        out[key] = torch.stack(rows)
    for key in batch[0]:
        if key not in out:
            values = [torch.as_tensor(ex[key]) for ex in batch]
            out[key] = torch.cat(values) if values[0].dim() > 0 else torch.stack(values)
    return out
