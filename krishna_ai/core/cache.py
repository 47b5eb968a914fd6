"""Where the package keeps what it builds, and the one way it writes a file or folder.

Every output that could be mistaken for a finished one if a run died half-way (converted weights,
merged adapters, GGUF files, eval results, recipes) is written next to its target under a temporary
name and renamed into place: a reader sees the old version or the new one, never half of either.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "KRISHNA_AI_CACHE"


def cache_root() -> Path:
    """Where converted models live: $KRISHNA_AI_CACHE, else ~/.cache/krishna_ai."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "krishna_ai")


def _partial(target: Path) -> Path:
    return target.with_name(f"{target.name}.partial-{os.getpid()}")


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target`, on error it is removed.

    With replace=False an existing `target` is an error (FileExistsError) instead of being replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            if not replace:
                raise FileExistsError(f"{target} already exists")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed to `target`, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
