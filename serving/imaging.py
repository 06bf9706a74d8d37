"""Images in one place: bytes -> RGB pixels under limits, the one `BBox`, and the one crop rule.

Every layer uses this module: the services decode request images with it (HTTP JSON / raw / multipart,
KServe tensors, SageMaker bodies), the adapters crop with it. Nothing here knows HTTP or a model.

Decoding (`decode_image(value, limits)`), in this order and before any pixel is decoded:
  1. base64 validity when `value` is a `str` (a `data:image/...;base64,` prefix, whitespace and missing
     padding are tolerated) -> 400 invalid_image;
  2. the format sniffed from the bytes (the declared content type is not trusted) -> 415
     unsupported_media_type naming the format unless in `limits.allowed_formats` (containers count as the
     format they wrap: a phone's MPO is a JPEG with more frames appended; HEIF/HEIC, which Pillow cannot
     read, are recognised from their `ftyp` box and named too);
  3. the pixel count read from the header -> 413 image_too_large over `limits.max_pixels`
     (decompression bombs never reach the decoder);
  4. full decode of the first frame only (animated GIF/WebP, MPO, multi-page TIFF; truncated or corrupt
     data -> 400 invalid_image), EXIF orientation 1-8 applied, then `to_rgb`.
The result is what adapters take: a `PIL.Image.Image` in mode RGB (8 bits per channel), upright.

`to_rgb` shows the model the picture a viewer would show: CMYK and YCCK JPEGs through Pillow's colour
conversion (Adobe-inverted files included); 16-bit grey (I;16*) scaled by 255/65535, not clipped; 32-bit
integer grey (I) scaled the same way when its values fit 16 bits, else stretched from its min..max; float
grey (F) x255 when in 0..1, else stretched; 1-bit and L greyscale replicated; anything with transparency
(RGBA, LA, La, PA, P or L with a transparent colour) composited over white, the background a browser shows.

Limits are a `DecodeLimits`: any object with `max_pixels`, `allowed_formats` and `max_batch_images`
(the services pass their `serving.services.common.Limits`; `ImageLimits` is the plain default).

Boxes: `BBox` is the seed's pixel box {"x1", "y1", "x2", "y2"} (a [x1, y1, x2, y2] list is accepted by
`BBox.parse`). The one rule for a box against an image (`BBox.check_inside`, used by `crop`): x1 < x2,
y1 < y2 and 0 <= x1, 0 <= y1, x2 <= width, y2 <= height, else 400 invalid_bbox. It is the rule the
services have always applied to client boxes (seed 003 gives none), so a box is never silently clamped;
a caller that wants a box grown or clamped (the pipeline's detection margin) says so with
`BBox.expanded` / `BBox.clamped` before cropping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.errors import (
    BadRequest,
    ImageTooLarge,
    InvalidBBox,
    InvalidImage,
    InvalidNumber,
    UnsupportedMediaType,
)

#: PIL format names accepted by default after sniffing the bytes
DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
#: containers accepted whenever the format they wrap is (Pillow names a multi-picture JPEG "MPO")
CONTAINED = {"MPO": "JPEG"}
#: ISO base media `ftyp` brands of formats Pillow cannot decode here, so a 415 can name them
_FTYP_BRANDS = {b"heic": "HEIF", b"heix": "HEIF", b"hevc": "HEIF", b"heim": "HEIF", b"heis": "HEIF",
                b"hevm": "HEIF", b"hevs": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF",
                b"avis": "AVIF"}
BACKGROUND = (255, 255, 255)
_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)


# ---------------------------------------------------------------------------------------- limits
class DecodeLimits(Protocol):
    """What decoding needs to know; `serving.services.common.Limits` and `ImageLimits` both are one."""

    @property
    def max_pixels(self) -> int: ...

    @property
    def allowed_formats(self) -> frozenset[str]: ...

    @property
    def max_batch_images(self) -> int: ...


@dataclass(frozen=True)
class ImageLimits:
    """Decode-side limits (the defaults are the services' defaults)."""

    #: width x height of one decoded image; larger -> 413 image_too_large, checked from the header
    max_pixels: int = 40_000_000
    #: PIL format names accepted after sniffing the bytes; others -> 415 unsupported_media_type
    allowed_formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    #: images in one batch (`decode_images`); more -> 400 bad_request
    max_batch_images: int = 64


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


def _sniff_unreadable(data: bytes) -> str | None:
    """The name of a format Pillow cannot open here (HEIF/HEIC, AVIF without a plugin), from its `ftyp` box."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12].lower(), "ISO-BMFF")
    return None


def _refuse(what: str, fmt: str, limits: DecodeLimits) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"{what} format {fmt or 'unknown'} is not accepted; use one of {', '.join(sorted(limits.allowed_formats))}",
        details={"format": fmt or "unknown", "accepted": sorted(limits.allowed_formats)},
    )


def decode_image(value: str | bytes, limits: DecodeLimits, what: str = "image") -> Image.Image:
    """base64 str or raw bytes -> upright RGB PIL image, with the checks of the module docstring."""
    data = b64_to_bytes(value, what) if isinstance(value, str) else bytes(value)
    if not data:
        raise InvalidImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _pil_open()(io.BytesIO(data), formats=None)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what}: {e}", details={"max_pixels": limits.max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        other = _sniff_unreadable(data)
        if other is not None:
            raise _refuse(what, other, limits) from None
        # PIL names its file object ("cannot identify image file <_io.BytesIO object at 0x...>"): say what we know
        reason = f"no known image format (starts with {data[:8]!r})" if isinstance(e, UnidentifiedImageError) else e
        raise InvalidImage(f"{what} is not a decodable image: {reason}") from None
    fmt = (img.format or "").upper()
    if fmt not in limits.allowed_formats and CONTAINED.get(fmt) not in limits.allowed_formats:
        raise _refuse(what, fmt, limits)
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"{what} has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise ImageTooLarge(
            f"{what} is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
            details={"width": w, "height": h, "max_pixels": limits.max_pixels},
        )
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # the first frame of an animation, an MPO or a multi-page TIFF
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
        raise InvalidImage(f"{what} is truncated or corrupt: {e}") from None


def _scaled_grey(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float greyscale image as 8-bit L (module docstring: scaled, not clipped)."""
    import numpy as np

    a = np.asarray(img, dtype=np.float64)
    if a.size == 0:
        return Image.new("L", img.size)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        out = a * (255.0 / 65535.0)
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        out = a * 255.0
    elif hi > lo and np.isfinite(hi - lo):
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(a)
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image of any Pillow mode as 8-bit RGB the way a viewer shows it (module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scaled_grey(img).convert("RGB")
    transparent = mode in ("RGBA", "LA", "La", "PA", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info)
    if transparent:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_images(values: Sequence[str | bytes], limits: DecodeLimits, what: str = "images") -> list[Image.Image]:
    """`decode_image` of each value; 400 bad_request over `limits.max_batch_images`."""
    if len(values) > limits.max_batch_images:
        raise BadRequest(f"{what}: {len(values)} images, at most {limits.max_batch_images} per request",
                         details={"max_batch_images": limits.max_batch_images})
    return [decode_image(v, limits, f"{what}[{i}]") for i, v in enumerate(values)]


async def decode_image_async(value: str | bytes, limits: DecodeLimits, what: str = "image") -> Image.Image:
    """`decode_image` in a worker thread: base64 and JPEG/PNG decoding (milliseconds per frame, GIL
    released by PIL) must not stall the event loop that serves every other request."""
    return await asyncio.to_thread(decode_image, value, limits, what)


async def decode_images_async(values: Sequence[str | bytes], limits: DecodeLimits,
                              what: str = "images") -> list[Image.Image]:
    """`decode_images` in a worker thread."""
    return await asyncio.to_thread(decode_images, values, limits, what)


def array_to_image(arr: Any, limits: DecodeLimits, what: str = "image") -> Image.Image:
    """A UINT8 array [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4]) -> RGB image, under the pixel limit."""
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


def rgb(img: Image.Image, what: str = "image") -> Image.Image:
    """A decoded image in mode RGB (`to_rgb` when it is not); 400 invalid_image when `img` is not a
    decoded image at all (bytes, base64, arrays must go through `decode_image` / `array_to_image`)."""
    if not isinstance(img, Image.Image):
        raise InvalidImage(f"{what}: expected a decoded image, got {type(img).__name__}; "
                           "decode bytes, base64 or arrays with serving.imaging first")
    return img if img.mode == "RGB" else to_rgb(img)


# ---------------------------------------------------------------------------------------- boxes
class BBox(BaseModel):
    """Pixel box in the seed's form {"x1", "y1", "x2", "y2"} (x right, y down, x2/y2 exclusive edges).

    Parsed once where a request or a detector result enters (`parse`), then passed on typed; checked
    against an image with `check_inside` (the one rule of the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def parse(cls, value: Any) -> BBox | None:
        """Accept the seed dict form or a [x1, y1, x2, y2] list; None stays None; 400 invalid_bbox otherwise."""
        if value is None or isinstance(value, BBox):
            return value
        if isinstance(value, (list, tuple)):
            if len(value) != 4:
                raise InvalidBBox(f"bbox must have 4 numbers [x1, y1, x2, y2], got {len(value)}")
            value = dict(zip(("x1", "y1", "x2", "y2"), value, strict=True))
        if not isinstance(value, dict):
            raise InvalidBBox("bbox must be an object {x1, y1, x2, y2} or a list of 4 numbers")
        value = cls._corners(value)
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            for err in e.errors():
                if err.get("type") == "finite_number":
                    where = ".".join(str(p) for p in ("bbox", *err.get("loc", ())))
                    raise InvalidNumber(f"{where}: must be a finite number (not NaN or Infinity)",
                                        details={"field": where}) from None
            raise InvalidBBox(f"bbox is not {{x1, y1, x2, y2}} numbers: {value!r}") from None

    @staticmethod
    def _corners(value: dict[str, Any]) -> dict[str, Any]:
        """The corners of a detector's box, which carries {x1..y2} and {x, y, width, height} side by side
        (serving/services/detection.py); a bare {x, y, width, height} is converted."""
        corners = ("x1", "y1", "x2", "y2")
        if all(k in value for k in corners):
            return {k: value[k] for k in corners}
        if all(k in value for k in ("x", "y", "width", "height")) and not any(k in value for k in corners):
            try:
                x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            except (TypeError, ValueError):
                return value
            return {"x1": x, "y1": y, "x2": x + w, "y2": y + h}
        return value

    @classmethod
    def coerce(cls, v: Any) -> Any:
        """A `mode="before"` field validator: a 4-list becomes the dict form, and so does a bare {x, y, width,
        height} of numbers (a detector box's other half, see `_corners`); anything else is left to pydantic."""
        if isinstance(v, (list, tuple)) and len(v) == 4:
            return dict(zip(("x1", "y1", "x2", "y2"), v, strict=True))
        xywh = ("x", "y", "width", "height")
        if (isinstance(v, dict) and not any(k in v for k in ("x1", "y1", "x2", "y2"))
                and all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool) for k in xywh)):
            return {"x1": v["x"], "y1": v["y"], "x2": v["x"] + v["width"], "y2": v["y"] + v["height"]}
        return v

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    def as_tuple(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2

    def check_inside(self, size: tuple[int, int], what: str = "bbox") -> BBox:
        """This box when x1 < x2, y1 < y2 and it lies inside an image of `size` (width, height);
        400 invalid_bbox otherwise."""
        box = self.as_list()
        w, h = size
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise InvalidBBox(f"{what} is inverted or empty: need x1 < x2 and y1 < y2, got {box}",
                              details={"bbox": box})
        if self.x1 < 0 or self.y1 < 0 or self.x2 > w or self.y2 > h:
            raise InvalidBBox(f"{what} {box} lies outside the {w}x{h} image",
                              details={"bbox": box, "image_size": [w, h]})
        return self

    def expanded(self, margin: float) -> BBox:
        """The box grown by `margin` x its width (height) on the left and right (top and bottom)."""
        dx, dy = margin * (self.x2 - self.x1), margin * (self.y2 - self.y1)
        return BBox(x1=self.x1 - dx, y1=self.y1 - dy, x2=self.x2 + dx, y2=self.y2 + dy)

    def clamped(self, size: tuple[int, int]) -> BBox:
        """The part of the box inside an image of `size` (width, height); may be empty (see check_inside)."""
        w, h = size
        return BBox(x1=max(0.0, self.x1), y1=max(0.0, self.y1), x2=min(float(w), self.x2), y2=min(float(h), self.y2))


def pixel_box(bbox: BBox) -> tuple[int, int, int, int]:
    """The integer PIL box of a checked bbox: left/top truncated, right/bottom rounded, at least 1 pixel."""
    x1, y1 = int(bbox.x1), int(bbox.y1)
    return x1, y1, max(int(round(bbox.x2)), x1 + 1), max(int(round(bbox.y2)), y1 + 1)


def crop(img: Image.Image, bbox: BBox | None, what: str = "bbox") -> Image.Image:
    """The region of `bbox` in `img` (the whole image when bbox is None); 400 invalid_bbox unless the box
    passes `BBox.check_inside` (the one rule: never clamped silently)."""
    if bbox is None:
        return img
    return img.crop(pixel_box(bbox.check_inside(img.size, what)))
