"""Request decoding: images arrive as base64 JSON (seed 003), raw bytes or multipart, under limits.

`read_request(request, Schema, limits)` turns any of the three encodings into one validated pydantic
object whose image fields hold `str` (base64, from JSON) or `bytes` (raw / multipart):

- `application/json`: the seed's body, images as base64 strings (a `data:image/...;base64,` prefix is
  accepted);
- `image/jpeg|png|webp|bmp` or `application/octet-stream`: the body is the image (batch schemas get a
  one-element `images`); the other fields come from the query string (`?confidence=0.3`, lists as
  repeated keys or a JSON array, objects as JSON: `?bbox={"x1":0,...}`);
- `multipart/form-data`: file parts named like the schema's image fields (`image`, `images`, `frames`),
  other parts as text fields (same coercion as the query string); a text part `payload` holding a JSON
  object is merged first.
Anything else is 415 unsupported_media_type.

`decode_image(value, limits)` then checks, in this order and before decoding pixels: base64 validity
(400 invalid_image), the format sniffed from the bytes (415 unless allowed), the pixel count read from
the header (413 image_too_large: decompression bombs never reach the decoder), then decodes fully
(truncated or corrupt data: 400 invalid_image) and returns an RGB `PIL.Image` with EXIF rotation applied.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import struct
import types
import typing
import warnings
from typing import Any, TypeVar

from fastapi import Request
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from serving.errors import BadRequest, ImageTooLarge, InvalidBBox, InvalidImage, UnsupportedMediaType
from serving.services.common import Limits

M = TypeVar("M", bound=BaseModel)

RAW_IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "application/octet-stream": None,  # sniffed
}
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
IMAGE_FIELDS = ("image", "images", "frames", "baseline_image")


# ---------------------------------------------------------------------------------------- bytes -> image
def _pil_open() -> Any:
    """PIL's own `Image.open`. ultralytics replaces it process-wide with a wrapper that, on an unidentified
    image, tries to install and import a HEIF plugin (pi-heif): an undecodable upload must stay a 400,
    never a pip call or a 500, so hostile bytes go to the original function."""
    opener = Image.open
    if getattr(opener, "__module__", "PIL.Image") != "PIL.Image":
        original = getattr(opener, "__globals__", {}).get("_image_open")
        if callable(original) and getattr(original, "__module__", "") == "PIL.Image":
            return original
    return opener


def b64_to_bytes(value: str, what: str = "image") -> bytes:
    """Decode standard base64 (optional data-URL prefix, whitespace and missing padding tolerated)."""
    s = _DATA_URL.sub("", value.strip(), count=1)
    s = "".join(s.split())  # whitespace out (str.split is ~20x faster than a regex on MB-sized frames)
    if not s:
        raise InvalidImage(f"{what} is empty")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"{what} is not valid base64: {e}") from None


def decode_image(value: str | bytes, limits: Limits, what: str = "image") -> Image.Image:
    """base64 str or raw bytes -> RGB PIL image, with the checks of the module docstring."""
    data = b64_to_bytes(value, what) if isinstance(value, str) else bytes(value)
    if not data:
        raise InvalidImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _pil_open()(io.BytesIO(data), formats=None)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what}: {e}", details={"max_pixels": limits.max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"{what} is not a decodable image: {e}") from None
    fmt = (img.format or "").upper()
    if fmt not in limits.allowed_formats:
        raise UnsupportedMediaType(
            f"{what} format {fmt or 'unknown'} is not accepted; use one of {', '.join(sorted(limits.allowed_formats))}",
            details={"format": fmt},
        )
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"{what} has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise ImageTooLarge(
            f"{what} is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
            details={"width": w, "height": h, "max_pixels": limits.max_pixels},
        )
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise InvalidImage(f"{what} is truncated or corrupt: {e}") from None


async def decode_image_async(value: str | bytes, limits: Limits, what: str = "image") -> Image.Image:
    """`decode_image` in a worker thread: base64 and JPEG/PNG decoding (milliseconds per frame, GIL
    released by PIL) must not stall the event loop that serves every other request."""
    return await asyncio.to_thread(decode_image, value, limits, what)


async def decode_images_async(values: list[str | bytes], limits: Limits, what: str = "images") -> list[Image.Image]:
    return await asyncio.to_thread(decode_images, values, limits, what)


def decode_images(values: list[str | bytes], limits: Limits, what: str = "images") -> list[Image.Image]:
    if len(values) > limits.max_batch_images:
        raise BadRequest(f"{what}: {len(values)} images, at most {limits.max_batch_images} per request",
                         details={"max_batch_images": limits.max_batch_images})
    return [decode_image(v, limits, f"{what}[{i}]") for i, v in enumerate(values)]


def array_to_image(arr: Any, limits: Limits, what: str = "image") -> Image.Image:
    """A UINT8 array [H, W, 3] (or [H, W]) -> RGB image, under the pixel limit."""
    import numpy as np

    a = np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise InvalidImage(f"{what}: expected UINT8 [H, W, 3], got {a.dtype} {list(a.shape)}")
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise InvalidImage(f"{what} has no pixels")
    if h * w > limits.max_pixels:
        raise ImageTooLarge(f"{what} is {w}x{h} pixels, over the limit of {limits.max_pixels}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


# ---------------------------------------------------------------------------------------- bounding boxes
def check_bbox(bbox: Any, size: tuple[int, int], what: str = "bbox") -> tuple[float, float, float, float]:
    """400 invalid_bbox unless x1 < x2, y1 < y2 and the box lies inside the image (width, height)."""
    x1, y1, x2, y2 = (float(getattr(bbox, k)) for k in ("x1", "y1", "x2", "y2"))
    w, h = size
    if not (x2 > x1 and y2 > y1):
        raise InvalidBBox(f"{what} is inverted or empty: need x1 < x2 and y1 < y2, got {[x1, y1, x2, y2]}",
                          details={"bbox": [x1, y1, x2, y2]})
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        raise InvalidBBox(f"{what} {[x1, y1, x2, y2]} lies outside the {w}x{h} image",
                          details={"bbox": [x1, y1, x2, y2], "image_size": [w, h]})
    return x1, y1, x2, y2


def crop(img: Image.Image, bbox: Any | None, what: str = "bbox") -> Image.Image:
    """The region of a validated bbox (the whole image when bbox is None)."""
    if bbox is None:
        return img
    x1, y1, x2, y2 = check_bbox(bbox, img.size, what)
    box = (int(x1), int(y1), max(int(round(x2)), int(x1) + 1), max(int(round(y2)), int(y1) + 1))
    return img.crop(box)


# ---------------------------------------------------------------------------------------- request -> schema
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_list_field(schema: type[BaseModel], name: str) -> bool:
    field = schema.model_fields.get(name)
    if field is None:
        return False
    ann = field.annotation

    def listy(t: Any) -> bool:
        origin = typing.get_origin(t)
        if origin in (list, tuple, set):
            return True
        if origin in (typing.Union, types.UnionType):
            return any(listy(a) for a in typing.get_args(t))
        return False

    return listy(ann)


def _coerce(value: str) -> Any:
    v = value.strip()
    if v[:1] in ("{", "["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return value
    return value


def _fields_from_pairs(schema: type[BaseModel], pairs: dict[str, list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, values in pairs.items():
        values = [_coerce(v) if isinstance(v, str) else v for v in values]
        if _is_list_field(schema, key):
            if len(values) == 1 and isinstance(values[0], list):
                out[key] = values[0]
            else:
                out[key] = values
        else:
            out[key] = values[-1]
    return out


async def read_request(request: Request, schema: type[M], limits: Limits) -> M:
    """Parse JSON / raw image / multipart into `schema` (see the module docstring)."""
    mtype = _media_type(request)
    if mtype == "application/json" or mtype.endswith("+json") or (mtype == "" and not request.query_params):
        body = await request.body()
        try:
            data = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return schema.model_validate(data)
    if mtype in RAW_IMAGE_TYPES:
        declared = RAW_IMAGE_TYPES[mtype]
        if declared and declared not in limits.allowed_formats:
            raise UnsupportedMediaType(f"content type {mtype} is not accepted")
        body = await request.body()
        pairs = {k: request.query_params.getlist(k) for k in request.query_params.keys()}
        fields = _fields_from_pairs(schema, pairs)
        if "image" in schema.model_fields:
            fields["image"] = body
        elif "images" in schema.model_fields:
            fields["images"] = [body]
        elif "frames" in schema.model_fields:
            fields["frames"] = [body]
        else:
            raise UnsupportedMediaType("this route takes no image; send application/json")
        return schema.model_validate(fields)
    if mtype == "multipart/form-data":
        form = await request.form()
        try:
            pairs: dict[str, list[Any]] = {}
            base: dict[str, Any] = {}
            for key in form.keys():
                for item in form.getlist(key):
                    if isinstance(item, UploadFile):
                        pairs.setdefault(key, []).append(await item.read())
                    elif key == "payload":
                        try:
                            obj = json.loads(item)
                        except json.JSONDecodeError as e:
                            raise BadRequest(f"multipart 'payload' is not valid JSON: {e}") from None
                        if not isinstance(obj, dict):
                            raise BadRequest("multipart 'payload' must be a JSON object")
                        base.update(obj)
                    else:
                        pairs.setdefault(key, []).append(item)
        finally:
            await form.close()
        fields = base | _fields_from_pairs(schema, pairs)
        return schema.model_validate(fields)
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'} is not accepted; send application/json (base64 images), "
        "image/jpeg|png|webp (raw bytes) or multipart/form-data",
        details={"content_type": mtype},
    )
