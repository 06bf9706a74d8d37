"""Issue 11: every Pillow mode and container a camera or phone produces decodes to the picture a viewer shows
(8-bit RGB, upright, first frame), or is a 415 naming the format. Each test builds the file from a known
picture and compares the decoded pixels with that picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import UnsupportedMediaType
from serving.imaging import ImageLimits, decode_image

LIMITS = ImageLimits()
RED, GREEN, BLUE, YELLOW = (220, 30, 40), (30, 200, 60), (40, 50, 210), (230, 220, 40)


def picture(w: int = 64, h: int = 48) -> Image.Image:
    """Four coloured quadrants: asymmetric, so every flip and rotation is visible, and JPEG-friendly."""
    img = Image.new("RGB", (w, h), RED)
    img.paste(GREEN, (w // 2, 0, w, h // 2))
    img.paste(BLUE, (0, h // 2, w // 2, h))
    img.paste(YELLOW, (w // 2, h // 2, w, h))
    return img


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def diff(a: Image.Image, b: Image.Image) -> float:
    assert a.mode == "RGB" and a.size == b.size, (a.mode, a.size, b.size)
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b.convert("RGB"), np.int16)).mean())


def test_mpo_from_a_phone_is_its_first_jpeg_frame_even_when_only_jpeg_is_accepted():
    first, second = picture(), picture().transpose(Image.Transpose.ROTATE_180)
    data = encoded(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = decode_image(data, ImageLimits(allowed_formats=frozenset({"JPEG"})))
    assert diff(out, first) < 3


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_serve_their_first_frame(fmt):
    first, second = picture(), Image.new("RGB", (64, 48), (0, 0, 0))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encoded(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **kw)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert diff(decode_image(data, LIMITS), first) < 6  # GIF quantises to a palette


def test_cmyk_jpeg_converts_to_the_right_colours():
    ref = picture()
    data = encoded(ref.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert diff(decode_image(data, LIMITS), ref) < 4


def test_ycck_jpeg_converts_to_the_right_colour():
    """An Adobe YCCK JPEG (transform 2): built by storing the YCbCr of the inverted CMY plus K and marking it."""
    target = (200, 40, 90)
    y, cb, cr = Image.new("RGB", (1, 1), tuple(255 - v for v in target)).convert("YCbCr").getpixel((0, 0))
    stored = (y, cb, cr, 255)  # Pillow writes CMYK inverted (Adobe), hence 255 - value below
    data = bytearray(encoded(Image.new("CMYK", (16, 16), tuple(255 - v for v in stored)), "JPEG", quality=100))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2  # APP14 transform: YCCK
    assert Image.open(io.BytesIO(bytes(data))).info.get("adobe_transform") == 2
    out = decode_image(bytes(data), LIMITS)
    assert np.abs(np.asarray(out, np.int16) - np.array(target)).max() <= 3


def test_16_bit_grey_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    data = encoded(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = np.asarray(decode_image(data, LIMITS), np.int16)
    want = np.rint(ramp / 257.0).astype(np.int16)
    assert np.abs(out[:, :, 0] - want).max() <= 1 and out[:, :, 0].max() == 255 and out[:, :, 0].min() == 0
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()


def test_32_bit_integer_grey_tiff_in_16_bit_range_and_beyond():
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.int32)
    data = encoded(Image.fromarray(ramp), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = np.asarray(decode_image(data, LIMITS), np.int16)[:, :, 0]
    assert np.abs(out - np.rint(ramp / 257.0)).max() <= 1
    wide = (ramp.astype(np.int64) * 1000 - 5_000_000).astype(np.int32)  # beyond 16 bits: stretched min..max
    out = np.asarray(decode_image(encoded(Image.fromarray(wide), "TIFF"), LIMITS), np.int16)[:, :, 0]
    assert out.min() == 0 and out.max() == 255 and np.abs(out - np.rint(ramp / 257.0)).max() <= 1


def test_float_grey_tiff():
    unit = np.linspace(0, 1, 64 * 48).reshape(48, 64).astype(np.float32)
    data = encoded(Image.fromarray(unit), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = np.asarray(decode_image(data, LIMITS), np.int16)[:, :, 0]
    assert np.abs(out - np.rint(unit * 255)).max() <= 1 and out.max() == 255


def test_one_bit_png():
    bits = Image.new("1", (64, 48), 0)
    bits.paste(1, (0, 0, 32, 48))
    out = decode_image(encoded(bits, "PNG"), LIMITS)
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((50, 5)) == (0, 0, 0)


def test_la_png_with_transparency_is_composited_over_white():
    la = Image.new("LA", (64, 48), (100, 255))
    la.paste((100, 0), (0, 0, 32, 48))  # left half fully transparent
    out = decode_image(encoded(la, "PNG"), LIMITS)
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((50, 5)) == (100, 100, 100)


def test_rgba_png_half_transparent():
    out = decode_image(encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG"), LIMITS)
    assert out.getpixel((1, 1)) == (127, 127, 127)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_image_with_a_transparent_index(fmt):
    pal = Image.new("P", (64, 48), 1)
    pal.putpalette([0, 0, 0, 30, 200, 60] + [0, 0, 0] * 254)
    pal.paste(0, (0, 0, 32, 48))
    data = encoded(pal, fmt, transparency=0)
    out = decode_image(data, LIMITS)
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((50, 5)) == (30, 200, 60)


def test_pa_image_in_memory_is_composited():
    from serving.imaging import to_rgb

    pa = Image.new("PA", (4, 4))
    pa.putpalette([10, 20, 30] * 256)
    pa.putdata([(0, 0)] * 8 + [(0, 255)] * 8)
    out = to_rgb(pa)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((0, 3)) == (10, 20, 30)


#: EXIF orientation -> how the stored pixels are turned to be shown (TIFF/EXIF spec, independent of Pillow)
SHOWN = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    stored = picture()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, LIMITS)
    want = stored if SHOWN[orientation] is None else stored.transpose(SHOWN[orientation])
    assert out.size == want.size and diff(out, want) < 3


def test_unaccepted_and_unreadable_formats_are_415_naming_the_format():
    with pytest.raises(UnsupportedMediaType) as e:
        decode_image(encoded(picture(), "TGA"), LIMITS)
    assert e.value.details["format"] == "TGA" and "TGA" in e.value.message
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(UnsupportedMediaType) as e:
        decode_image(heic, LIMITS)
    assert e.value.details["format"] == "HEIF"
    with pytest.raises(UnsupportedMediaType) as e:  # a format the deployment turned off
        decode_image(encoded(picture(), "GIF"), ImageLimits(allowed_formats=frozenset({"JPEG", "PNG"})))
    assert e.value.details["format"] == "GIF"
