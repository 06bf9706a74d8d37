"""Request image decoding: base64 forms, formats, pixel limit before decoding, truncation, bboxes,
and the three request encodings parsed into one schema."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from PIL import Image

from serving.errors import ImageTooLarge, InvalidBBox, InvalidImage, UnsupportedMediaType
from serving.services.common import Limits
from serving.services.errors import install_error_handlers
from serving.services.images import array_to_image, b64_to_bytes, check_bbox, crop, decode_image, read_request
from serving.services.schemas import BBox, BatchDetectRequest, ClassifyImageRequest

LIM = Limits(max_pixels=1_000_000)


def img_bytes(w=64, h=48, fmt="PNG", color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, fmt)
    return buf.getvalue()


def claimed_size_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    d = bytearray(buf.getvalue())
    i = d.index(b"IHDR")
    d[i + 4:i + 12] = struct.pack(">II", w, h)
    d[i + 17:i + 21] = struct.pack(">I", zlib.crc32(bytes(d[i:i + 17])) & 0xFFFFFFFF)
    return bytes(d)


def test_base64_forms():
    raw = img_bytes()
    s = base64.b64encode(raw).decode()
    assert b64_to_bytes(s) == raw
    assert b64_to_bytes("data:image/png;base64," + s) == raw
    assert b64_to_bytes(s.rstrip("=")) == raw  # missing padding tolerated
    assert b64_to_bytes(s[:40] + "\n" + s[40:]) == raw  # line breaks tolerated
    for bad in ("", "   ", "abc$def", "####"):
        with pytest.raises(InvalidImage):
            b64_to_bytes(bad)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_decode_allowed_formats_to_rgb(fmt):
    img = decode_image(img_bytes(fmt=fmt), LIM)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert decode_image(base64.b64encode(img_bytes(fmt=fmt)).decode(), LIM).size == (64, 48)


def test_disallowed_format_is_415():
    with pytest.raises(UnsupportedMediaType):
        decode_image(img_bytes(fmt="GIF"), LIM)
    with pytest.raises(UnsupportedMediaType):
        decode_image(img_bytes(fmt="PNG"), Limits(allowed_formats=frozenset({"JPEG"})))


def test_pixel_limit_checked_from_header_before_decoding():
    with pytest.raises(ImageTooLarge) as ei:
        decode_image(claimed_size_png(2000, 2000), LIM)  # 4 MP claimed; the data is 1 pixel
    assert ei.value.details["width"] == 2000 and ei.value.status_code == 413
    with pytest.raises(ImageTooLarge):
        decode_image(claimed_size_png(100_000, 100_000), LIM)  # beyond PIL's own bomb guard too


def test_truncated_and_garbage_are_invalid_image():
    import ultralytics.utils.patches  # noqa: F401 - its Image.open patch must not turn garbage into a 500

    data = img_bytes(200, 200, "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], LIM)
    with pytest.raises(InvalidImage):
        decode_image(b"definitely not an image", LIM)
    with pytest.raises(InvalidImage):
        decode_image(b"", LIM)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), LIM).size == (20, 40)


def test_array_to_image():
    assert array_to_image(np.zeros((10, 20, 3), np.uint8), LIM).size == (20, 10)
    assert array_to_image(np.zeros((10, 20), np.uint8), LIM).mode == "RGB"
    with pytest.raises(InvalidImage):
        array_to_image(np.zeros((10, 20, 3), np.float32), LIM)
    with pytest.raises(InvalidImage):
        array_to_image(np.zeros((10, 20, 5), np.uint8), LIM)
    with pytest.raises(ImageTooLarge):
        array_to_image(np.zeros((1001, 1000, 3), np.uint8), LIM)


@pytest.mark.parametrize("box,ok", [
    ((0, 0, 64, 48), True), ((10, 5, 20, 30), True),
    ((20, 5, 10, 30), False),  # inverted x
    ((10, 30, 20, 5), False),  # inverted y
    ((10, 10, 10, 20), False),  # empty
    ((-1, 0, 10, 10), False), ((0, 0, 65, 10), False), ((0, 0, 10, 49), False),  # outside
])
def test_check_bbox(box, ok):
    b = BBox(x1=box[0], y1=box[1], x2=box[2], y2=box[3])
    if ok:
        assert check_bbox(b, (64, 48)) == tuple(float(v) for v in box)
        assert crop(Image.new("RGB", (64, 48)), b).size == (box[2] - box[0], box[3] - box[1])
    else:
        with pytest.raises(InvalidBBox):
            check_bbox(b, (64, 48))


def _app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/one")
    async def one(request: Request):
        req = await read_request(request, ClassifyImageRequest, LIM)
        return {"size": list(decode_image(req.image, LIM).size), "bbox": req.bbox and req.bbox.model_dump(),
                "options": req.options}

    @app.post("/many")
    async def many(request: Request):
        req = await read_request(request, BatchDetectRequest, LIM)
        return {"n": len(req.images), "confidence": req.confidence, "classes": req.classes}

    return TestClient(app)


def test_read_request_three_encodings():
    c = _app()
    raw = img_bytes()
    s = base64.b64encode(raw).decode()
    j = c.post("/one", json={"image": s, "bbox": [1, 2, 30, 40], "options": {"top_k": 2}}).json()
    assert j == {"size": [64, 48], "bbox": {"x1": 1, "y1": 2, "x2": 30, "y2": 40}, "options": {"top_k": 2}}
    r = c.post('/one?bbox={"x1":1,"y1":2,"x2":30,"y2":40}&options={"top_k":2}', content=raw,
               headers={"content-type": "image/png"}).json()
    assert r == j
    m = c.post("/one", files={"image": ("a.png", raw, "image/png")},
               data={"payload": '{"options": {"top_k": 2}}', "bbox": "[1, 2, 30, 40]"}).json()
    assert m == j
    many = c.post("/many?confidence=0.25&classes=car&classes=person", content=raw,
                  headers={"content-type": "application/octet-stream"}).json()
    assert many == {"n": 1, "confidence": 0.25, "classes": ["car", "person"]}
    many = c.post("/many", files=[("images", ("a.png", raw)), ("images", ("b.png", raw))],
                  data={"classes": '["dog"]'}).json()
    assert many == {"n": 2, "confidence": None, "classes": ["dog"]}


def test_read_request_rejections():
    c = _app()
    assert c.post("/one", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert c.post("/one", content=img_bytes(), headers={"content-type": "image/gif"}).status_code == 415
    r = c.post("/one", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_type"] == "bad_request"
    r = c.post("/one", json={"image": "x", "unknown": 1})
    assert r.status_code == 422 and r.json()["error_type"] == "validation_error"
    r = c.post("/one", files={"image": ("a.png", img_bytes())}, data={"payload": "[not json"})
    assert r.status_code == 400
