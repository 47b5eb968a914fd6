"""Images as saved chats keep them: checked, decoded and re-encoded by the server, named by their content.

A chat's image is written into the data folder (`HistoryStore`) only as a `SavedImage`: what a client uploaded
is never kept byte for byte, so nothing served back from the data folder is the client's file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from krishna_ai.core.errors import ImageError
from krishna_ai.history.schema import MAX_IMAGE_BYTES


def check_image_size(path: str | Path) -> None:
    """ImageError unless `path` is a readable file of at most MAX_IMAGE_BYTES (checked before anything is saved)."""
    src = Path(path)
    try:
        if not src.is_file():
            raise ImageError(f"the image {src.name!r} is not a file")
        size = src.stat().st_size
    except OSError as exc:
        raise ImageError(f"the image {src.name!r} cannot be read: {exc.strerror}") from None
    if size > MAX_IMAGE_BYTES:
        raise ImageError(f"the image is {size / 1e6:.1f} MB; at most {MAX_IMAGE_BYTES // 2**20} MB is saved")


@dataclass(frozen=True)
class SavedImage:
    """An uploaded image as the data folder keeps it: decoded (every check of `core.images.load_image`),
    re-encoded by this server — JPEG stays JPEG, anything else becomes PNG — and named after the new bytes'
    hash. Nothing a client sent is kept byte for byte: not its file name, not its extension, not its metadata
    (EXIF, GPS), not whatever a polyglot file hid after the pixels."""

    data: bytes
    name: str

    @classmethod
    def of(cls, path: str | Path) -> SavedImage:
        import io

        from krishna_ai.core.images import load_image

        check_image_size(path)
        img = load_image(path, max_bytes=MAX_IMAGE_BYTES)
        jpeg = _is_jpeg(path)
        out = io.BytesIO()
        if jpeg:
            img.save(out, format="JPEG", quality=92)
        else:
            img.save(out, format="PNG", optimize=False)
        data = out.getvalue()
        return cls(data, f"{hashlib.sha256(data).hexdigest()[:32]}.{'jpg' if jpeg else 'png'}")


def _is_jpeg(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"
