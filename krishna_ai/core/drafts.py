"""Personas as text: what the Personas tab edits (and /persona_check, /persona_save). A draft is checked by
the loader itself (core/personas.py), so the errors shown while editing are the ones `python app.py` gives.

    text = persona_text(load_personas()["pet"])          # TOML with absolute paths: loads the same anywhere
    check_persona_text(text)                             # the Persona, or PersonaError listing every problem
    save_persona_text(text, my_prompts_folder)           # validated, written atomically as <id>.toml
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from krishna_ai.core.errors import PersonaError
from krishna_ai.core.personas import PROMPTS_DIR, Persona, load_persona


def persona_text(persona: Persona) -> str:
    """A loaded persona as TOML that loads the same from any folder (its files' paths are absolute)."""
    import tomli_w

    return tomli_w.dumps(persona.model_dump(mode="json", exclude_defaults=True, exclude_none=True))


def check_persona_text(text: str) -> Persona:
    """Validate persona TOML exactly as the loader does (the same errors, named as in a file `<id>.toml`):
    relative paths in it are relative to where it will be saved, so a draft names its files absolutely."""
    import tempfile

    if len(text) > 200_000:
        raise PersonaError(f"the persona is {len(text):,} characters; the limit is 200,000")
    try:
        raw_id = tomllib.loads(text).get("id")
    except tomllib.TOMLDecodeError as exc:
        raise PersonaError(f"not valid TOML: {exc}") from None
    pid = raw_id if isinstance(raw_id, str) and re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", raw_id) else "draft"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{pid}.toml"
        path.write_text(text, encoding="utf-8")
        try:
            return load_persona(path)
        except PersonaError as exc:
            raise PersonaError(str(exc).replace(f"{tmp}{os.sep}", "")) from None


def save_persona_text(text: str, folder: str | Path, *, replace: bool = False) -> tuple[Path, Persona]:
    """Validate and write a persona to folder/<id>.toml (atomically). An id that is already there, or that a
    shipped persona has, is refused unless `replace` (the shipped file is never touched: the saved one, in a
    folder searched after it, takes its place in this install)."""
    from krishna_ai.core.cache import write_text

    persona = check_persona_text(text)
    target = Path(folder) / f"{persona.id}.toml"
    if not replace:
        if target.exists():
            raise PersonaError(f"{target.name} is saved already: confirm to replace it")
        if (PROMPTS_DIR / target.name).exists():
            raise PersonaError(f"{persona.id!r} is a shipped persona: confirm to put yours in its place in this "
                               "install (prompts/ is not changed), or choose another id")
    write_text(target, text if text.endswith("\n") else text + "\n")
    return target, persona
