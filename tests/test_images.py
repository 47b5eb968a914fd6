"""Image validation: decided by content, with a clear message or a correct conversion for each case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from krishna_ai.errors import ImageError
from krishna_ai.images import load_image


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_png_named_jpg_is_read_by_content(tmp_path):
    path = save(Image.new("RGB", (32, 24), (0, 128, 0)), tmp_path / "leaf.jpg", format="PNG")
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (32, 24) and img.getpixel((0, 0)) == (0, 128, 0)


def test_cmyk_converted(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", format="JPEG")
    img = load_image(path)
    r, g, b = img.getpixel((8, 8))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_scaled_to_8bit(tmp_path):
    arr = np.full((16, 16), 65535 // 2, dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "deep.png")
    img = load_image(path)
    assert img.mode == "RGB" and abs(img.getpixel((0, 0))[0] - 128) <= 1


def test_transparency_on_white(tmp_path):
    path = save(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), tmp_path / "a.png")
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("case, match", [
    ("empty", "is empty"),
    ("text", "not an image"),
    ("truncated", "truncated or corrupt"),
    ("animated", "animated"),
    ("huge_dims", "pixels; the limit"),
    ("tiny", "only 2×2"),
    ("missing", "not found"),
])
def test_rejections(tmp_path, case, match):
    path = tmp_path / "x.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("definitely not a picture\n" * 10)
    elif case == "truncated":
        save(Image.effect_noise((64, 64), 40).convert("RGB"), path, format="PNG")
        path.write_bytes(path.read_bytes()[:200])
    elif case == "animated":
        frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
        path = tmp_path / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:])
    elif case == "huge_dims":
        save(Image.new("L", (9000, 9000)), path, format="PNG")
    elif case == "tiny":
        save(Image.new("RGB", (2, 2)), path)
    elif case == "missing":
        path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=match):
        load_image(path)


def test_file_size_limit(tmp_path):
    path = save(Image.effect_noise((256, 256), 80).convert("RGB"), tmp_path / "n.png")
    with pytest.raises(ImageError, match="the limit is"):
        load_image(path, max_bytes=1024)
