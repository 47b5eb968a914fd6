"""The base of every file schema (personas, cards, chat files, recipes): unknown keys are errors, so a
misspelt key fails loudly and names itself instead of being ignored; a regular expression written in a file
(`Regex`) is compiled when the file is read; and the two readers of data files (a client's JSON, a JSONL of
rows), each raising the caller's own error type."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from krishna_ai.core.errors import KrishnaError, problems


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_compiles)]
"""A regular expression as written in a file, refused at load when it does not compile."""


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


def read_jsonl(path: str | Path, error: type[KrishnaError], *, allow_empty: bool = False) -> list[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line of a JSONL file; every bad line is reported at
    once, as `error` (the caller's: DataError for training data, PersonaError for a persona's scope files)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    errors, rows = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}:{n}: not valid JSON ({exc.msg} at column {exc.colno})")
    if errors:
        raise error(problems(f"{path}: {len(errors)} bad line(s)", errors))
    if not rows and not allow_empty:
        raise error(f"{path}: no data lines")
    return rows
