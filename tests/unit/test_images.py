"""serving.imaging and the adapters' typed items: decoding to upright RGB under limits, the one BBox, the one
crop rule (a box must lie inside the image: 400 invalid_bbox, never clamped silently), with 4xx errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.adapters.base import FramesItem, ImageItem, frames_item, image_item, regions
from serving.errors import BadRequest, ImageTooLarge, InvalidBBox, InvalidImage, UnsupportedMediaType
from serving.imaging import BBox, ImageLimits, array_to_image, crop, decode_image, decode_images, rgb


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_decoded_images_are_rgb_from_pil_arrays_and_bytes():
    # issue 11: transparency is composited over white (what a viewer shows), no longer dropped
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 40))
    assert rgb(rgba).mode == "RGB" and rgb(rgba).getpixel((0, 0)) == (217, 218, 220)
    assert rgb(Image.new("RGBA", (4, 3), (10, 20, 30, 255))).getpixel((0, 0)) == (10, 20, 30)
    gray = np.full((3, 4), 7, dtype=np.uint8)
    assert array_to_image(gray, ImageLimits()).size == (4, 3)
    assert array_to_image(gray, ImageLimits()).getpixel((1, 1)) == (7, 7, 7)
    data = png(Image.new("RGB", (5, 6), (1, 2, 3)))
    assert decode_image(data, ImageLimits()).getpixel((4, 5)) == (1, 2, 3)
    assert decode_image(base64.b64encode(data).decode(), ImageLimits()).getpixel((4, 5)) == (1, 2, 3)


@pytest.mark.parametrize("bad", [b"not an image", np.zeros((0, 4, 3), np.uint8), np.zeros((2, 2, 5)), "x.jpg", 3])
def test_garbage_is_invalid_image(bad):
    with pytest.raises(InvalidImage):
        rgb(bad)  # adapters take decoded images only
    with pytest.raises(InvalidImage):
        image_item(bad)
    with pytest.raises(InvalidImage):
        if isinstance(bad, np.ndarray):
            array_to_image(bad, ImageLimits())
        elif isinstance(bad, (bytes, str)):
            decode_image(bad, ImageLimits())
        else:
            rgb(bad)


def test_decode_limits_formats_and_orientation():
    with pytest.raises(ImageTooLarge):
        decode_image(png(Image.new("RGB", (50, 50))), ImageLimits(max_pixels=2000))
    with pytest.raises(UnsupportedMediaType):
        decode_image(png(Image.new("RGB", (5, 5))), ImageLimits(allowed_formats=frozenset({"JPEG"})))
    with pytest.raises(BadRequest):
        decode_images([png(Image.new("RGB", (5, 5)))] * 3, ImageLimits(max_batch_images=2))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), ImageLimits()).size == (20, 40)


def test_crop_is_the_region_of_a_box_inside_the_image():
    img = Image.new("RGB", (100, 50))
    assert crop(img, BBox.parse({"x1": 10, "y1": 5, "x2": 40, "y2": 45})).size == (30, 40)
    assert crop(img, BBox.parse([90, 40, 100, 50])).size == (10, 10)
    assert crop(img, BBox.parse([10.2, 5, 10.4, 6])).size == (1, 1)  # at least one pixel
    assert crop(img, None) is img
    assert BBox.parse([1, 2, 3, 4]).as_tuple() == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("bad", [{"x1": 1}, [1, 2, 3], [5, 5, 5, 9], "1,2,3,4", [200, 0, 300, 10], [90, 40, 150, 80],
                                 [-5, 0, 20, 20]])
def test_bad_bboxes_are_invalid_bbox(bad):
    """One rule: a box partly or wholly outside the image is a 400, as the services always answered."""
    with pytest.raises(InvalidBBox):
        crop(Image.new("RGB", (100, 50)), BBox.parse(bad))


def test_items_check_their_bbox_once_and_crop_on_demand():
    frame = Image.new("RGB", (100, 50), (9, 9, 9))
    item = ImageItem(frame, BBox(x1=10, y1=5, x2=40, y2=45))
    assert item.region.size == (30, 40) and item.region is item.region  # cropped once, when asked
    assert image_item(frame).region is frame and image_item(item) is item
    assert [r.size for r in regions([frame, item])] == [(100, 50), (30, 40)]
    with pytest.raises(InvalidBBox):
        ImageItem(frame, BBox(x1=0, y1=0, x2=101, y2=10))
    clip = frames_item([frame, frame])
    assert isinstance(clip, FramesItem) and len(clip.frames) == 2
    assert [f.size for f in FramesItem((frame,), BBox(x1=0, y1=0, x2=5, y2=5)).regions] == [(5, 5)]
    with pytest.raises(InvalidBBox):
        FramesItem((frame, Image.new("RGB", (4, 4))), BBox(x1=0, y1=0, x2=5, y2=5))
    with pytest.raises(BadRequest):
        frames_item(frame)  # a single image is not a clip


def test_pipeline_margin_boxes_are_expanded_then_clamped_explicitly():
    box = BBox(x1=10, y1=10, x2=30, y2=50).expanded(0.5).clamped((35, 60))
    assert box.as_tuple() == (0.0, 0.0, 35.0, 60.0)
    assert crop(Image.new("RGB", (35, 60)), box).size == (35, 60)
