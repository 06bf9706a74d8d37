"""Reading a request into its schema: images arrive as base64 JSON (seed 003), raw bytes or multipart.

`read_request(request, Schema, limits)` turns any of the three encodings into one validated pydantic
object whose image fields hold `str` (base64, from JSON) or `bytes` (raw / multipart):

- `application/json`: the seed's body, images as base64 strings (a `data:image/...;base64,` prefix is
  accepted);
- `image/jpeg|png|webp|bmp` or `application/octet-stream`: the body is the image (batch schemas get a
  one-element `images`); the other fields come from the query string (`?confidence=0.3`, lists as
  repeated keys or a JSON array, objects as JSON: `?bbox={"x1":0,...}`);
- `multipart/form-data`: file parts named like the schema's image fields (`image`, `images`, `frames`),
  or `file` (the reference detector client's part name) for the schema's first image field; other parts as
  text fields (same coercion as the query string); a text part `payload` holding a JSON object is merged first,
  query-string fields before it (the form wins);
- no body and `?image_base64=...` in the query string (the reference clients' other form): every field from
  the query string, `image_base64` as the image.
  Every part, file or text (a base64 image may travel as text), may be as large as the whole body limit
  (`limits.max_body_bytes`, which the body-size middleware enforces first); Starlette's own 1 MiB text-part
  limit does not apply.
Anything else is 415 unsupported_media_type. A raw body whose declared type is not among
`limits.allowed_formats` is 415 too. Decoding the image fields (limits, formats, EXIF) is
`serving.imaging.decode_image`'s job, called by the routes.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from serving.errors import BadRequest, UnsupportedMediaType
from serving.imaging import DecodeLimits

M = TypeVar("M", bound=BaseModel)
#: the multipart part limit when `limits` carries no body limit (the services' default body limit)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

RAW_IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "application/octet-stream": None,  # sniffed
}


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
        except (json.JSONDecodeError, RecursionError):
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


async def read_request(request: Request, schema: type[M], limits: DecodeLimits) -> M:
    """Parse JSON / raw image / multipart into `schema` (see the module docstring)."""
    mtype = _media_type(request)
    if "image_base64" in request.query_params and mtype not in ("multipart/form-data", *RAW_IMAGE_TYPES):
        return await _read_query(request, schema)
    if mtype == "application/json" or mtype.endswith("+json") or (mtype == "" and not request.query_params):
        return await _read_json(request, schema)
    if mtype in RAW_IMAGE_TYPES:
        return await _read_raw(request, schema, mtype, limits)
    if mtype == "multipart/form-data":
        return await _read_multipart(request, schema, limits)
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'} is not accepted; send application/json (base64 images), "
        "image/jpeg|png|webp (raw bytes) or multipart/form-data",
        details={"content_type": mtype},
    )


async def _read_json(request: Request, schema: type[M]) -> M:
    body = await request.body()
    try:
        data = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: [[[[... nesting
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return schema.model_validate(data)


async def _read_raw(request: Request, schema: type[M], mtype: str, limits: DecodeLimits) -> M:
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


def _image_field(schema: type[BaseModel]) -> str | None:
    return next((f for f in ("image", "images", "frames") if f in schema.model_fields), None)


async def _read_query(request: Request, schema: type[M]) -> M:
    body = await request.body()
    if body.strip() and _media_type(request) in ("application/json", ""):
        raise BadRequest("send the image either as ?image_base64= or in the body, not both")
    pairs = {k: request.query_params.getlist(k) for k in request.query_params.keys() if k != "image_base64"}
    fields = _fields_from_pairs(schema, pairs)
    target = _image_field(schema)
    if target is None:
        raise BadRequest("this route takes no image")
    image = request.query_params["image_base64"]
    fields[target] = [image] if _is_list_field(schema, target) else image
    return schema.model_validate(fields)


def _payload_part(item: str) -> dict[str, Any]:
    try:
        obj = json.loads(item)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(f"multipart 'payload' is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest("multipart 'payload' must be a JSON object")
    return obj


async def _read_multipart(request: Request, schema: type[M], limits: DecodeLimits) -> M:
    part_limit = int(getattr(limits, "max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    try:
        form = await request.form(max_part_size=part_limit)
    except StarletteHTTPException as e:  # malformed multipart (boundary, headers, too many parts)
        raise BadRequest(f"multipart body is malformed: {e.detail}") from None
    except (MultiPartException, ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"multipart body is malformed: {e}") from None
    try:
        pairs: dict[str, list[Any]] = {}
        base: dict[str, Any] = {}
        for key in form.keys():
            for item in form.getlist(key):
                if isinstance(item, UploadFile):
                    pairs.setdefault(key, []).append(await item.read())
                elif key == "payload":
                    base.update(_payload_part(item))
                else:
                    pairs.setdefault(key, []).append(item)
    finally:
        await form.close()
    target = _image_field(schema)
    if "file" in pairs and "file" not in schema.model_fields and target is not None:
        pairs.setdefault(target, []).extend(pairs.pop("file"))
    query = {k: request.query_params.getlist(k) for k in request.query_params.keys()}
    fields = _fields_from_pairs(schema, query) | base | _fields_from_pairs(schema, pairs)
    return schema.model_validate(fields)
