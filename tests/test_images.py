"""Image validation: decided by content, with a clear message or a correct conversion for each case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from krishna_ai.core.errors import ImageError
from krishna_ai.core.images import load_image


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


# -- every conversion path, pixel-exact (each line is a case that once converted wrongly or not at all) --

def _gray(value) -> tuple[int, int, int]:
    return (value, value, value)


def _int_image(mode: str, values: list[int]) -> Image.Image:
    """A 16×8 image of `mode` ('I;16', 'I;16B', 'I;16L' or 'I'): the left half values[0], the right values[1]."""
    arr = np.zeros((8, 16), dtype=np.int64)
    arr[:, :8], arr[:, 8:] = values
    if mode == "I":
        return Image.fromarray(arr.astype(np.int32), "I")
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    return Image.frombytes(mode, (16, 8), arr.astype(dtype).tobytes())


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", [0, 65535], [0, 255]),
    ("I;16", [32767, 255], [127, 1]),  # 16-bit is scaled from 65535 even when every value is small
    ("I;16B", [65535, 32896], [255, 128]),
    ("I;16L", [65535, 32896], [255, 128]),
    ("I", [0, 255], [0, 255]),  # 32-bit integer holding 8-bit values: kept as they are
    ("I", [200, 255], [200, 255]),
    ("I", [256, 65535], [1, 255]),  # ...and holding 16-bit values: scaled from 65535
    ("I;16", [255, 200], [1, 1]),  # 16-bit whose values all fit 8 bits: still a dark 16-bit image
    ("I;16", [51272, 51271], [200, 199]),  # rounded to the nearest 8-bit level: 51272 / 257 = 199.5019...
    ("I", [-1000, 100000], [0, 255]),  # 32-bit values outside 0-65535 are clipped, never wrapped around
    ("I", [256, 0], [1, 0]),  # one value past 8 bits makes it a 16-bit image
])
def test_integer_images_scaled_to_8bit(mode, values, expected):
    img = load_image(_int_image(mode, values))
    assert img.mode == "RGB" and img.size == (16, 8)
    assert [img.getpixel((0, 0)), img.getpixel((15, 7))] == [_gray(v) for v in expected]


@pytest.mark.parametrize("values, expected", [
    ([0.0, 1.0], [0, 255]),
    ([-1.0, 1.0], [0, 255]),
    ([2.0, 4.0], [0, 255]),  # stretched between its own minimum and maximum
    ([0.25, 0.25], [0, 0]),  # flat: black, not a division by zero
])
def test_float_images_stretched(values, expected):
    arr = np.zeros((8, 16), dtype=np.float32)
    arr[:, :8], arr[:, 8:] = values
    img = load_image(Image.fromarray(arr, "F"))
    assert img.mode == "RGB"
    assert [img.getpixel((0, 0)), img.getpixel((15, 7))] == [_gray(v) for v in expected]


def test_flat_float_image_is_black_without_a_division_by_zero():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 would warn ("invalid value") and turn into NaN
        img = load_image(Image.fromarray(np.full((8, 8), 3.5, dtype=np.float32), "F"))
    assert img.getpixel((0, 0)) == (0, 0, 0)


def test_float_image_midtones():
    arr = np.array([[0.0, 0.5, 1.0] * 4] * 8, dtype=np.float32)
    img = load_image(Image.fromarray(arr, "F"))
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 200, 30, 40] + [0] * (256 * 3 - 6))
    img.paste(0, (0, 0, 8, 16))
    if transparent:
        img.info["transparency"] = 0
    return img


@pytest.mark.parametrize("transparent, left", [(False, (0, 0, 0)), (True, (255, 255, 255))])
def test_palette_images(tmp_path, transparent, left):
    path = tmp_path / "p.png"
    _palette(transparent).save(path, **({"transparency": 0} if transparent else {}))
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == left and img.getpixel((15, 15)) == (200, 30, 40)


@pytest.mark.parametrize("mode, transparent_pixel, opaque_pixel, opaque_rgb", [
    ("RGBA", (10, 20, 30, 0), (10, 20, 30, 255), (10, 20, 30)),
    ("LA", (40, 0), (40, 255), (40, 40, 40)),
    ("PA", (1, 0), (1, 255), (200, 30, 40)),
])
def test_alpha_is_composited_on_white(mode, transparent_pixel, opaque_pixel, opaque_rgb):
    img = Image.new(mode, (16, 16), transparent_pixel)
    if mode == "PA":
        img.putpalette([0, 0, 0, 200, 30, 40] + [0] * (256 * 3 - 6))
    img.paste(opaque_pixel, (8, 0, 16, 16))
    out = load_image(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((15, 15)) == opaque_rgb


def test_half_transparent_blends_with_white():
    out = load_image(Image.new("RGBA", (8, 8), (0, 0, 0, 128)))
    assert out.getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize("mode, pixel, rgb", [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)),
                                             ("RGB", (1, 2, 3), (1, 2, 3))])
def test_plain_modes(mode, pixel, rgb):
    src = Image.new(mode, (8, 8), pixel)
    out = load_image(src)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == rgb
    assert out is not src  # a copy: closing or editing the upload never touches what the model reads


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # turned upright
    r, g, b = out.getpixel((10, 5))
    assert b > 200 and r < 60  # the blue half is now on top


# -- limits: the exact boundary is allowed, one past it is refused, and the message says by how much --

def test_size_limit_boundary_and_message(tmp_path):
    path = save(Image.effect_noise((1100, 1100), 80).convert("RGB"), tmp_path / "big.png")
    size = path.stat().st_size
    assert size > 2**20
    assert load_image(path, max_bytes=size).size == (1100, 1100)
    with pytest.raises(ImageError) as exc:
        load_image(path, max_bytes=2**20)
    assert str(exc.value) == f"image 'big.png' is {size / 2**20:.1f} MB; the limit is 1 MB"
    with pytest.raises(ImageError) as exc:  # just over the limit: enough decimals to tell the two apart
        load_image(path, max_bytes=size - 1)
    shown, limit = str(exc.value).removeprefix("image 'big.png' is ").removesuffix(" MB").split(" MB; the limit is ")
    digits = len(shown.split(".")[1])  # the size is rounded to the decimals shown, no more
    assert float(shown) > float(limit) and abs(float(shown) - size / 2**20) <= 0.5 * 10**-digits + 1e-12
    with pytest.raises(ImageError, match=r"^image 'big.png' is \d\.\d MB; the limit is 0.5 MB$"):
        load_image(path, max_bytes=2**19)


def test_pixel_limit_boundary_and_message(tmp_path):
    path = save(Image.new("RGB", (100, 50)), tmp_path / "wide.png")
    assert load_image(path, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageError) as exc:
        load_image(path, max_pixels=4999)
    assert str(exc.value) == "image 'wide.png' is 100×50 = 5,000 pixels; the limit is 4,999"


def test_smallest_side_boundary(tmp_path):
    assert load_image(save(Image.new("RGB", (8, 8)), tmp_path / "ok.png")).size == (8, 8)
    with pytest.raises(ImageError) as exc:
        load_image(save(Image.new("RGB", (7, 30)), tmp_path / "thin.png"))
    assert str(exc.value) == "image 'thin.png' is only 7×30 pixels; send at least 8×8"


def test_messages_name_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture " * 20)
    with pytest.raises(ImageError) as exc:
        load_image(text)
    assert str(exc.value) == ("'notes.jpg' is not an image this app can read (its content is not "
                              "BMP, GIF, JPEG, PNG, TIFF, WEBP, whatever its name says)")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"^image 'empty.png' is empty \(0 bytes\)$"):
        load_image(empty)
    with pytest.raises(ImageError, match=r"^image 'gone.png' not found$"):
        load_image(tmp_path / "gone.png")
    anim = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    frames[0].save(anim, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"^image 'anim.gif' is animated \(3 frames\); send a still photo$"):
        load_image(anim)


def test_other_formats_refused_by_name(tmp_path):
    path = tmp_path / "icon.png"
    Image.new("RGB", (16, 16)).save(path, format="ICO")
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert str(exc.value) == "'icon.png' is in ICO format; send JPEG, PNG, WebP, GIF, BMP or TIFF"


def test_multi_picture_jpeg_is_a_still_photo(tmp_path):
    """MPO (phone cameras' multi-picture JPEG) has several frames but is not an animation: its first is read."""
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (32, 16), (0, 0, 255)).save(path, "MPO", save_all=True,
                                                 append_images=[Image.new("RGB", (32, 16), (255, 0, 0))])
    with Image.open(path) as img:
        assert (img.format, img.n_frames) == ("MPO", 2)
    out = load_image(path)
    r, g, b = out.getpixel((16, 8))
    assert out.size == (32, 16) and b > 200 and r < 40


def test_too_many_pixels_for_the_decoder_and_unreadable_files(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (64, 64)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses at open above twice this
    with pytest.raises(ImageError) as exc:
        load_image(path, max_pixels=1000)
    assert str(exc.value) == "image 'bomb.png' has too many pixels (limit 1,000)"
    monkeypatch.undo()

    def broken_open(*args, **kwargs):
        raise OSError("read error on the device")

    monkeypatch.setattr(Image, "open", broken_open)
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert str(exc.value) == "image 'bomb.png' could not be opened: read error on the device"


def test_size_message_for_limits_below_a_tenth_of_a_megabyte(tmp_path):
    path = tmp_path / "leaf.png"
    path.write_bytes(b"\0" * 100_000)  # refused on size before its content is read
    with pytest.raises(ImageError) as exc:
        load_image(path, max_bytes=1000)
    assert str(exc.value) == "image 'leaf.png' is 0.095 MB; the limit is 0.001 MB"


def test_truncated_message(tmp_path):
    path = save(Image.effect_noise((64, 64), 40).convert("RGB"), tmp_path / "cut.png", format="PNG")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert str(exc.value).startswith("image 'cut.png' is truncated or corrupt (")
