"""OpenAPI request bodies generated from the request models, for routes that read their body themselves.

Image routes parse their body with `serving.services.uploads.read_request`, which accepts three encodings
of one pydantic model (JSON with base64 images, a raw image body with the other fields in the query string,
multipart/form-data with file parts). FastAPI cannot infer that from the handler signature, so each such
route declares `openapi_extra=request_body(Model)`: the JSON schema is the model's own, the raw and
multipart forms are derived from it (image fields -> binary parts). Nothing here is hand-written per route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

#: request fields that carry images (base64 text in JSON, binary parts in multipart)
IMAGE_FIELDS = ("image", "images", "frames", "baseline_image")
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream")
_BINARY = {"type": "string", "format": "binary"}


def _multipart_schema(model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if name in IMAGE_FIELDS:
            listy = "array" in str(prop.get("type", "")) or any(
                o.get("type") == "array" for o in prop.get("anyOf", []) if isinstance(o, dict))
            props[name] = {"type": "array", "items": _BINARY} if listy else dict(_BINARY)
        else:
            props[name] = prop
    props["payload"] = {"type": "string", "description": "Optional JSON object of the non-file fields."}
    out = {"type": "object", "properties": props, "required": [r for r in schema.get("required", [])]}
    if "$defs" in schema:
        out["$defs"] = schema["$defs"]
    return out


def request_body(model: type[BaseModel], *, raw: bool = True, multipart: bool = True) -> dict[str, Any]:
    """`openapi_extra` describing `model` as JSON, and (for image models) as a raw image body and multipart."""
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    has_image = any(f in model.model_fields for f in IMAGE_FIELDS)
    if raw and has_image:
        for t in RAW_TYPES:
            content[t] = {"schema": dict(_BINARY)}
    if multipart and has_image:
        content["multipart/form-data"] = {"schema": _multipart_schema(model, schema)}
    return {"requestBody": {"required": True, "content": content,
                            "description": f"{model.__name__}: JSON (base64 images), a raw image (other fields as "
                                           "query parameters) or multipart/form-data."}}
