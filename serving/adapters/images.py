"""Small, generic image helpers shared by adapters: any accepted image -> PIL RGB, and bbox crops.

Accepted images: a PIL image (any mode), an (H, W), (H, W, 1|3|4) numpy array (uint8, or values clipped
to 0..255), or encoded bytes (JPEG, PNG, ...). Anything else is a 400 `InvalidImage`. A bbox is a
`{"x1","y1","x2","y2"}` mapping or a 4-sequence in pixels; a bad one is a 400 `InvalidBBox`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from serving.errors import InvalidBBox, InvalidImage


def to_rgb(img: Any) -> Any:
    """A PIL image in RGB mode from a PIL image, a numpy array or encoded bytes."""
    from PIL import Image

    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    if isinstance(img, (bytes, bytearray, memoryview)):
        try:
            decoded = Image.open(io.BytesIO(bytes(img)))
            decoded.load()
        except Exception as e:  # PIL raises many exception types for garbage input
            raise InvalidImage(f"cannot decode image bytes: {e}") from None
        return decoded.convert("RGB")
    import numpy as np

    if isinstance(img, np.ndarray):
        arr = img[..., None] if img.ndim == 2 else img
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape[:2]:
            raise InvalidImage(f"image array must be (H, W) or (H, W, 1|3|4), got shape {tuple(img.shape)}")
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")
    raise InvalidImage(f"unsupported image type {type(img).__name__}: send a PIL image, an array or bytes")


def bbox_tuple(bbox: Any) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) floats from a mapping or a 4-sequence; InvalidBBox when malformed or empty."""
    try:
        if isinstance(bbox, Mapping):
            x1, y1, x2, y2 = (float(bbox[k]) for k in ("x1", "y1", "x2", "y2"))
        elif isinstance(bbox, Sequence) and not isinstance(bbox, (str, bytes)) and len(bbox) == 4:
            x1, y1, x2, y2 = (float(v) for v in bbox)
        else:
            raise ValueError("need x1, y1, x2, y2")
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidBBox(f"bad bbox {bbox!r}: {e}") from None
    if not (x2 > x1 and y2 > y1):
        raise InvalidBBox(f"bbox {bbox!r} is empty: need x2 > x1 and y2 > y1")
    return x1, y1, x2, y2


def crop(img: Any, bbox: Any) -> Any:
    """The RGB crop of `img` inside `bbox`, clipped to the image; InvalidBBox when nothing is left."""
    pil = to_rgb(img)
    x1, y1, x2, y2 = bbox_tuple(bbox)
    w, h = pil.size
    left, top = max(0, int(x1)), max(0, int(y1))
    right, bottom = min(w, int(round(x2))), min(h, int(round(y2)))
    if right <= left or bottom <= top:
        raise InvalidBBox(f"bbox {bbox!r} lies outside the {w}x{h} image")
    return pil.crop((left, top, right, bottom))
