"""The base of every file schema (personas, cards, chat files, recipes): unknown keys are errors, so a
misspelt key fails loudly and names itself instead of being ignored."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from krishna_ai.core.errors import KrishnaError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_json(raw: bytes | str, *, where: str, what: str, limit: int, error: type[KrishnaError]) -> Any:
    """A client's JSON file (a chat export, a character card), refused before parsing when it is over `limit`
    bytes; `error` names `where` and what was wrong."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > limit:
        raise error(f"{where} is {size / 1e6:.1f} MB; {what} may be at most {limit // 2**20} MB")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where} is not JSON: {getattr(exc, 'msg', exc)}") from None
