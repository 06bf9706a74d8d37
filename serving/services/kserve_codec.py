"""KServe v2 tensor codec: JSON and binary-extension tensors in, RESULT / EMBEDDING tensors out.

Pure functions over bytes and numpy (no FastAPI routes, no manager): the routes are serving/services/kserve.py.
- `decode_tensor(t, binary, offset)`: one input tensor (JSON `data` or `binary_data_size` bytes of the
  request body) -> numpy (object array of bytes/str for BYTES); 400 bad_request on any inconsistency.
- `decompress(body, encoding, limit)`: tritonclient's request compression (gzip / deflate), bounded.
- `encode_response(name, req, outputs)`: the v2 response, binary outputs where requested.
- `conversation`, `option_value`, `tensor_option`: TEXT elements and options from tensors/parameters.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
from fastapi.responses import Response

from serving.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

HEADER_LEN = "inference-header-content-length"
VERSION = "1"
_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


def _bytes_elements(raw: bytes, what: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadRequest(f"{what}: truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise BadRequest(f"{what}: BYTES element of {n} bytes runs past the tensor data")
        out.append(raw[i:i + n])
        i += n
    return out


def _serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_tensor(t: dict[str, Any], binary: memoryview | None, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor -> numpy (object array of bytes/str for BYTES); returns the new binary offset."""
    name = t.get("name", "?")
    dt = t.get("datatype")
    shape = t.get("shape")
    if dt not in _DTYPES:
        raise BadRequest(f"input {name}: unsupported datatype {dt!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input {name}: shape must be a list of non-negative integers")
    count = int(np.prod(shape)) if shape else 1
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if binary is None or offset + int(size) > len(binary):
            raise BadRequest(f"input {name}: binary_data_size {size} runs past the request body")
        raw = bytes(binary[offset:offset + int(size)])
        offset += int(size)
        if dt == "BYTES":
            items = _bytes_elements(raw, f"input {name}")
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
    else:
        if "data" not in t:
            raise BadRequest(f"input {name}: no 'data' and no binary_data_size")
        data = t["data"]
        if dt == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            arr = np.empty(flat.size, dtype=object)
            arr[:] = list(flat)
        else:
            try:
                arr = np.asarray(data, dtype=_DTYPES[dt]).reshape(-1)
            except (TypeError, ValueError) as e:
                raise BadRequest(f"input {name}: data does not match {dt}: {e}") from None
    if arr.size != count:
        raise BadRequest(f"input {name}: shape {shape} needs {count} elements, got {arr.size}")
    return arr.reshape(shape), offset


def conversation(x: Any) -> list[dict[str, str]]:
    """A TEXT element: a JSON list of chat messages, or plain text = one user message."""
    try:
        text = x.decode("utf-8") if isinstance(x, bytes) else str(x)
    except UnicodeDecodeError:
        raise BadRequest("TEXT elements must be UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            msgs = json.loads(text)
        except json.JSONDecodeError:
            msgs = None
        if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    return [{"role": "user", "content": text}]


def option_value(v: Any) -> Any:
    if isinstance(v, str) and v.strip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def tensor_option(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
    return arr.tolist()


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if hasattr(x, "model_dump"):
        return x.model_dump()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def result_json(r: Any) -> bytes:
    return json.dumps(r, default=_to_jsonable, separators=(",", ":")).encode()


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """tritonclient's request_compression_algorithm (gzip / deflate), inflated to at most `limit` bytes."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"content-encoding {enc!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"request body is not valid {enc}: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed request exceeds the limit of {limit} bytes")
    return out


def encode_response(name: str, req: dict[str, Any], outputs: dict[str, tuple[str, list[int], Any]]) -> Response:
    params = req.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = req.get("outputs")
    if wanted:
        selected = []
        for o in wanted:
            oname = o.get("name") if isinstance(o, dict) else None
            if oname not in outputs:
                raise BadRequest(f"unknown output {oname!r}; this model produces {', '.join(outputs)}")
            selected.append((oname, bool((o.get("parameters") or {}).get("binary_data", default_binary))))
    else:
        selected = [(o, default_binary) for o in outputs]
    out_json, blobs = [], []
    for oname, binary in selected:
        dt, shape, data = outputs[oname]
        entry: dict[str, Any] = {"name": oname, "datatype": dt, "shape": shape}
        if binary:
            raw = _serialize_bytes(list(data)) if dt == "BYTES" else np.asarray(data).astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = ([d.decode("utf-8") for d in data] if dt == "BYTES"
                             else np.asarray(data).reshape(-1).tolist())
        out_json.append(entry)
    head: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": out_json}
    if "id" in req:
        head["id"] = req["id"]
    head_raw = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(head_raw, media_type="application/json")
    return Response(head_raw + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head_raw))})
