"""Uploaded images: validated by content (never by file name), converted to 8-bit RGB.

Every rejection raises `ImageError` with a message a user can act on; unusual but valid images
(CMYK, 16-bit, palette, transparency, EXIF rotation) are converted correctly instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ImageError

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
MIN_SIDE = 8
FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}


def load_image(source: str | Path | Any, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Any:
    """Open, check and convert an image file (or pass a PIL image through the same checks)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return _to_rgb(source)
    path = Path(source)
    name = path.name
    if not path.is_file():
        raise ImageError(f"image {name!r} not found")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"image {name!r} is empty (0 bytes)")
    if size > max_bytes:
        shown, limit = _megabytes(size, max_bytes)
        raise ImageError(f"image {name!r} is {shown} MB; the limit is {limit} MB")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(
            f"{name!r} is not an image this app can read (its content is not "
            f"{', '.join(sorted(FORMATS - {'MPO'}))}, whatever its name says)"
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(f"image {name!r} has too many pixels (limit {max_pixels:,})") from None
    except OSError as exc:
        raise ImageError(f"image {name!r} could not be opened: {exc}") from None
    with img:
        if img.format not in FORMATS:
            raise ImageError(f"{name!r} is in {img.format} format; send JPEG, PNG, WebP, GIF, BMP or TIFF")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageError(f"image {name!r} is {w}×{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"image {name!r} is only {w}×{h} pixels; send at least {MIN_SIDE}×{MIN_SIDE}")
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and img.format != "MPO":
            raise ImageError(f"image {name!r} is animated ({frames} frames); send a still photo")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"image {name!r} is truncated or corrupt ({exc})") from None
        upright: Image.Image = img
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as they are
            pass
        return _to_rgb(upright)


def _megabytes(size: int, limit: int) -> tuple[str, str]:
    """`size` and `limit` in MB, with as many decimals as it takes to tell them apart (20 MB limits stay "20")."""
    for digits in range(1, 7):
        shown, cap = f"{size / 2**20:.{digits}f}", f"{limit / 2**20:.{digits}f}"
        if shown != cap and float(cap) > 0:
            break
    return shown, cap.rstrip("0").removesuffix(".")


def _to_rgb(img: Any) -> Any:
    """Convert any PIL mode to 8-bit RGB: CMYK, 16/32-bit integer, float, palette, alpha."""
    from PIL import Image

    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        import numpy as np

        arr = np.asarray(img)
        # 16-bit scales from 65535; a 32-bit image holding only 8-bit values keeps them
        full = 255.0 if mode == "I" and arr.max() <= 255 else 65535.0
        img = Image.fromarray(np.clip(arr / full * 255.0 + 0.5, 0, 255).astype("uint8"))
    elif mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype("uint8"))
    if img.mode in ("P", "RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")  # a palette's transparent entry becomes alpha 0
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return img.convert("RGB")  # a copy even when already RGB: the caller may close the upload
