"""Request bodies of /invocations and /models/{name}/invoke.

- `image/jpeg`, `image/png` (also webp, bmp, application/octet-stream; the format is sniffed from the
  bytes): the body is one image; options come from `X-Amzn-SageMaker-Custom-Attributes`
  (`confidence=0.3;model=threat_detector`), the only per-request channel SageMaker passes through;
- `application/json`: `{"image": "<base64>"}`, `{"images": ["<base64>", ...]}` or `{"inputs": [...]}`
  (non-image models, e.g. text); every other key, and the keys of `"options": {...}`, are options.
The option `model` picks the model on a container serving several (ZOO_SERVICES); it is not passed on.
Images are decoded by serving.imaging.decode_image under the service limits (400 invalid_image,
413 image_too_large, 415 unsupported_media_type).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from serving.errors import BadRequest, UnsupportedMediaType
from serving.imaging import decode_image, decode_images
from serving.services.common import Limits
from serving.services.uploads import RAW_IMAGE_TYPES

CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
RESERVED_JSON_KEYS = ("image", "images", "inputs", "options")


@dataclass
class Payload:
    """What a request asks for: inputs for `adapter.predict`, its options, and maybe a model."""

    inputs: list[Any]
    options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


def parse_custom_attributes(value: str | None) -> dict[str, Any]:
    """`confidence=0.3;top_k=2` (also comma-separated) -> {"confidence": 0.3, "top_k": 2}."""
    out: dict[str, Any] = {}
    if not value:
        return out
    for part in value.replace(",", ";").split(";"):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        raw = raw.strip()
        try:
            out[key] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            out[key] = raw
    return out


def _payload(inputs: list[Any], options: dict[str, Any]) -> Payload:
    model = options.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise BadRequest('"model" must be a model name')
    return Payload(inputs, options, model)


async def read_payload(request: Request, limits: Limits) -> Payload:
    """Parse the request (see the module docstring)."""
    mtype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    options = parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
    body = await request.body()
    if not body:
        raise BadRequest("the request body is empty: send an image or a JSON object")
    if mtype in RAW_IMAGE_TYPES:
        declared = RAW_IMAGE_TYPES[mtype]
        if declared and declared not in limits.allowed_formats:
            raise UnsupportedMediaType(f"content type {mtype} is not accepted")
        return _payload([await asyncio.to_thread(decode_image, body, limits)], options)
    if mtype == "application/json" or mtype.endswith("+json"):
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        if not isinstance(data.get("options", {}), dict):
            raise BadRequest('"options" must be a JSON object')
        options |= {k: v for k, v in data.items() if k not in RESERVED_JSON_KEYS}
        options |= data.get("options", {})
        if isinstance(data.get("image"), str):
            return _payload([await asyncio.to_thread(decode_image, data["image"], limits)], options)
        if isinstance(data.get("images"), list) and data["images"]:
            if not all(isinstance(v, str) for v in data["images"]):
                raise BadRequest('"images" must be a list of base64 strings')
            return _payload(await asyncio.to_thread(decode_images, data["images"], limits), options)
        if isinstance(data.get("inputs"), list) and data["inputs"]:
            return _payload(list(data["inputs"]), options)
        raise BadRequest('JSON body needs "image" (base64), "images" (list of base64) or "inputs" (list)')
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'} is not accepted; send image/jpeg, image/png or application/json",
        details={"content_type": mtype},
    )
