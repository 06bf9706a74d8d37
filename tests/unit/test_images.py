"""Shared image helpers: decoding to RGB and bbox crops, with 4xx errors for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.adapters.images import bbox_tuple, crop, to_rgb
from serving.errors import InvalidBBox, InvalidImage


def test_to_rgb_accepts_pil_arrays_and_bytes():
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 40))
    assert to_rgb(rgba).mode == "RGB" and to_rgb(rgba).getpixel((0, 0)) == (10, 20, 30)
    gray = np.full((3, 4), 7, dtype=np.uint8)
    assert to_rgb(gray).size == (4, 3) and to_rgb(gray).getpixel((1, 1)) == (7, 7, 7)
    floats = np.full((2, 2, 3), 300.0)
    assert to_rgb(floats).getpixel((0, 0)) == (255, 255, 255)
    buf = io.BytesIO()
    Image.new("RGB", (5, 6), (1, 2, 3)).save(buf, format="PNG")
    assert to_rgb(buf.getvalue()).getpixel((4, 5)) == (1, 2, 3)


@pytest.mark.parametrize("bad", [b"not an image", np.zeros((0, 4, 3), np.uint8), np.zeros((2, 2, 5)), "x.jpg", 3])
def test_to_rgb_rejects_garbage(bad):
    with pytest.raises(InvalidImage):
        to_rgb(bad)


def test_crop_clips_to_the_image():
    img = Image.new("RGB", (100, 50))
    assert crop(img, {"x1": 10, "y1": 5, "x2": 40, "y2": 45}).size == (30, 40)
    assert crop(img, [90, 40, 150, 80]).size == (10, 10)
    assert bbox_tuple([1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("bad", [{"x1": 1}, [1, 2, 3], [5, 5, 5, 9], "1,2,3,4", [200, 0, 300, 10]])
def test_bad_bboxes_are_invalid_bbox(bad):
    with pytest.raises(InvalidBBox):
        crop(Image.new("RGB", (100, 50)), bad)
