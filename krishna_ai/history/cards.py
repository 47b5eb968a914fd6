"""Character cards: import a SillyTavern Character Card V2 (JSON, or a PNG carrying it) as a persona file,
and export a persona as a V2 card.

    python -m krishna_ai persona import card.png [--id ID] [--out prompts]
    python -m krishna_ai persona export krishna -o krishna.card.png      # or .json

Mapping (spec: github.com/malfoyslastname/character-card-spec-v2):
    name                        → name (and the id, slugged, unless --id)
    system_prompt, description,
    personality, scenario       → system_prompt, in that order ({{original}} dropped)
    mes_example                 → the system prompt's "Example exchanges", and the {{user}} lines → examples
    first_mes                   → greeting
    post_history_instructions   → constraints (krishna_ai states rules in the system part: it has no
                                   slot after the history)
    creator_notes               → description (first line)
    alternate_greetings, character_book (lorebook), tags, creator, extensions
                                → no equivalent: listed in the report, kept as comments where short
{{char}} becomes the name and {{user}} "the user" ("you" in the greeting). An export carries what
the persona states (system part, rules, story instruction, greeting, examples) and its sampling under
extensions.krishna_ai; its knowledge bank, adapters and style checks have no place in a card.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from krishna_ai.core.errors import PersonaError, problems
from krishna_ai.core.personas import Persona
from krishna_ai.core.schema import read_json

MAX_CARD_PIXELS = 4096 * 4096
MAX_CARD_BYTES = 20 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CardData(BaseModel):
    """The V2 `data` object (unknown keys are allowed: cards carry many app-specific extras)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = []
    character_book: dict[str, Any] | None = None
    tags: list[str] = []
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = {}


@dataclass
class Imported:
    persona: Persona
    toml: str
    not_carried: list[str] = field(default_factory=list)
    """What the card had that a persona cannot hold (said to the user)."""


def read_card(raw: bytes, where: str = "the card") -> CardData:
    """The card's data from JSON or a PNG's `chara` (V2) / `ccv3` text chunk; PersonaError says what is wrong."""
    if len(raw) > MAX_CARD_BYTES:  # before a PNG is decoded
        raise PersonaError(f"{where} is {len(raw) / 1e6:.1f} MB; a card may be at most {MAX_CARD_BYTES // 2**20} MB")
    if raw.startswith(PNG_SIGNATURE):
        raw = _png_card(raw, where)
    obj = read_json(raw, where=where, what="a card", limit=MAX_CARD_BYTES, error=PersonaError)
    if not isinstance(obj, dict):
        raise PersonaError(f"{where}: a character card is a JSON object")
    spec = obj.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = obj.get("data")
        if not isinstance(data, dict):
            raise PersonaError(f"{where}: {spec} card without a \"data\" object")
    elif spec is None and "name" in obj and "first_mes" in obj:  # a V1 card: the fields at the top level
        data = obj
    else:
        raise PersonaError(f"{where}: not a Character Card V2 (spec is {spec!r}, expected 'chara_card_v2')")
    try:
        return CardData.model_validate(data)
    except ValidationError as exc:
        items = [f"data.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise PersonaError(problems(f"{where}: invalid character card", items)) from None


def _png_card(raw: bytes, where: str) -> bytes:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > MAX_CARD_PIXELS:
                raise PersonaError(f"{where}: the PNG is {img.width}×{img.height} pixels; a card image may have at "
                                   f"most {MAX_CARD_PIXELS:,} (a portrait is far smaller)")
            img.load()
            chunks = dict(getattr(img, "text", {}) or {})
    except Image.DecompressionBombError:
        raise PersonaError(f"{where}: the PNG declares more pixels than any card image has") from None
    except ValueError as exc:  # Pillow's own limit on a text chunk that decompresses too large
        raise PersonaError(f"{where}: a PNG text chunk is too large to read ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PersonaError(f"{where}: a broken PNG ({exc})") from None
    text = chunks.get("ccv3") or chunks.get("chara")
    if not text:
        raise PersonaError(f"{where}: a PNG without a character card (no 'chara' text chunk)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PersonaError(f"{where}: the PNG's 'chara' chunk is not base64-encoded JSON") from None


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    s = re.sub(r"^[^a-z]+", "", s)
    return s[:40].strip("-")


def _macros(text: str, name: str, user: str = "the user") -> str:
    text = re.sub(r"\{\{\s*char\s*\}\}|<BOT>", lambda _: name, text, flags=re.IGNORECASE)  # a name is no regex
    return re.sub(r"\{\{\s*user\s*\}\}|<USER>", lambda _: user, text, flags=re.IGNORECASE).strip()


def _comment(text: str, limit: int = 200) -> str:
    """Card text made safe for one TOML comment line (a newline in it would start a key of its own)."""
    return " ".join(str(text).split())[:limit]


def _examples(mes_example: str, name: str) -> tuple[str, list[str]]:
    """(the example exchanges as text for the system part, the user's lines as example questions)."""
    blocks = [b.strip() for b in re.split(r"<START>", mes_example, flags=re.IGNORECASE) if b.strip()]
    questions = []
    for block in blocks:
        for line in block.splitlines():
            m = re.match(r"\s*(\{\{\s*user\s*\}\}|<USER>)\s*:\s*(.+)", line, flags=re.IGNORECASE)
            if m:
                questions.append(_macros(m.group(2), name, "you"))
    text = "\n\n".join(_macros(b, name, "User") for b in blocks)
    return text, questions


def card_to_persona(card: CardData, persona_id: str | None = None) -> Imported:
    """The persona a card describes, validated, and its TOML text."""
    import tomli_w

    name = card.name.strip()
    pid = persona_id or slug(name)
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", pid or ""):
        raise PersonaError(f"cannot make a persona id from the name {name!r}: pass --id (lowercase letters, digits, -)")
    parts = []
    if card.system_prompt.strip():
        parts.append(_macros(re.sub(r"\{\{\s*original\s*\}\}", "", card.system_prompt), name))
    if card.description.strip():
        parts.append(_macros(card.description, name))
    if card.personality.strip():
        parts.append(f"{name}'s personality: {_macros(card.personality, name)}")
    if card.scenario.strip():
        parts.append(f"Scenario: {_macros(card.scenario, name)}")
    examples_text, questions = _examples(card.mes_example, name)
    if re.search(rf"^\s*{re.escape(name)}\s*:", examples_text, flags=re.MULTILINE):  # exchanges, not questions only
        parts.append(f"Example exchanges:\n{examples_text}")
    if not parts:
        parts.append(f"You are {name}.")
    greeting = _macros(card.first_mes, name, "you") or f"Hello, I am {name}."
    notes = _macros(card.creator_notes, name).splitlines()
    description = (notes[0] if notes else "") or (f"{name} (imported character card)")
    raw: dict[str, Any] = {"id": pid, "name": name, "description": description[:300], "greeting": greeting,
                           "system_prompt": "\n\n".join(parts)}
    rules = [line.strip().removeprefix("- ").strip() for line in
             _macros(card.post_history_instructions, name).splitlines() if line.strip()]
    if rules:
        raw["constraints"] = rules
    ours = card.extensions.get("krishna_ai") if isinstance(card.extensions, dict) else None
    if isinstance(ours, dict) and isinstance(ours.get("examples"), list):
        questions = [q for q in ours["examples"] if isinstance(q, str)]
    if questions:
        raw["examples"] = questions[:5]
    if isinstance(ours, dict) and isinstance(ours.get("sampling"), dict):
        raw["sampling"] = {k: v for k, v in ours["sampling"].items() if v is not None}  # one we exported
    try:
        persona = Persona.model_validate(raw)
    except ValidationError as exc:
        items = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise PersonaError(problems("the card does not make a valid persona", items)) from None
    lost = []
    if card.alternate_greetings:
        lost.append(f"alternate_greetings ({len(card.alternate_greetings)}): a persona has one greeting")
    if card.character_book:
        n = len(card.character_book.get("entries") or [])
        lost.append(f"character_book ({n} entries): lorebooks have no equivalent (knowledge banks need sourced cards)")
    other = {k: v for k, v in card.extensions.items() if k != "krishna_ai"} if card.extensions else {}
    if other:
        lost.append(f"extensions ({', '.join(sorted(other))}): app-specific data of other tools")
    if card.model_extra:
        lost.append(f"unknown fields ({', '.join(sorted(card.model_extra))})")
    header = [f"# Imported from the character card {_comment(name)!r}"
              + (f" by {_comment(card.creator, 80)}" if card.creator else "")
              + (f", version {_comment(card.character_version, 40)}" if card.character_version else "") + "."]
    if card.tags:
        header.append("# tags: " + _comment(", ".join(card.tags)))
    header += [f"# not carried: {_comment(item)}" for item in lost]
    header.append(f"# Try it:  python -m krishna_ai ask --persona {pid} \"Hello\"")
    return Imported(persona, "\n".join(header) + "\n" + tomli_w.dumps(raw), lost)


def import_card(path: str | Path, out_dir: str | Path, persona_id: str | None = None, *,
                existing: set[str] | None = None, force: bool = False) -> tuple[Path, Imported]:
    """Write the card's persona to out_dir/<id>.toml (validated by loading it back, written atomically)."""
    from krishna_ai.core.cache import write_text
    from krishna_ai.core.personas import load_persona

    path = Path(path)
    if not path.is_file():
        raise PersonaError(f"{path}: no such file")
    imported = card_to_persona(read_card(path.read_bytes(), path.name), persona_id)
    pid = imported.persona.id
    target = Path(out_dir) / f"{pid}.toml"
    if not force and (target.exists() or pid in (existing or set())):
        raise PersonaError(f"a persona {pid!r} exists already: pass --id NEW_ID (or --force to replace it)")
    with tempfile.TemporaryDirectory() as tmp:  # it must load as a persona before it goes where the app looks
        check = Path(tmp) / target.name
        check.write_text(imported.toml, encoding="utf-8")
        if load_persona(check) != imported.persona:
            raise PersonaError(f"{path.name}: the persona file written from this card does not read back the same")
    write_text(target, imported.toml)
    return target, imported


def persona_to_card(persona: Persona) -> dict[str, Any]:
    """A V2 card of what the persona states: its prompt (with the story instruction when it tells one from a
    list), rules as post-history instructions, greeting; sampling and example questions ride along under
    extensions.krishna_ai, so an import here gives the persona back."""
    system = persona.system_prompt.strip()
    if persona.knowledge is None and persona.story_instruction(None):
        system += "\n\n" + (persona.story_instruction(None) or "")
    return {
        "spec": "chara_card_v2", "spec_version": "2.0",
        "data": {
            "name": persona.name, "description": "", "personality": "", "scenario": "",
            "first_mes": persona.greeting, "mes_example": "",
            "creator_notes": f"{persona.description}\n\nExported from krishna_ai persona {persona.id!r}. Not "
                             "carried: its knowledge bank, LoRA adapters and style checks.",
            "system_prompt": system, "post_history_instructions": "\n".join(f"- {c}" for c in persona.constraints),
            "alternate_greetings": [], "tags": ["krishna_ai"], "creator": "krishna_ai", "character_version": "1",
            "extensions": {"krishna_ai": {"id": persona.id, "examples": persona.examples,
                                          "sampling": persona.sampling.model_dump(exclude_none=True)}},
        },
    }


def write_card(persona: Persona, target: str | Path, image: str | Path | None = None) -> Path:
    """The card as JSON (.json) or inside a PNG's `chara` chunk (.png; `image` or a plain portrait)."""
    from PIL import Image, PngImagePlugin

    from krishna_ai.core.cache import atomic_file

    target = Path(target)
    card = persona_to_card(persona)
    text = json.dumps(card, ensure_ascii=False, indent=1)
    with atomic_file(target) as tmp:
        if target.suffix.lower() == ".png":
            img = Image.open(image).convert("RGB") if image else Image.new("RGB", (400, 600), (46, 64, 120))
            info = PngImagePlugin.PngInfo()
            info.add_text("chara", base64.b64encode(text.encode()).decode())
            img.save(tmp, format="PNG", pnginfo=info)
        elif target.suffix.lower() == ".json":
            tmp.write_text(text + "\n", encoding="utf-8")
        else:
            raise PersonaError(f"{target.name}: a card is written as .json or .png")
    return target
