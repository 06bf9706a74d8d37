"""KServe v2 tensor codec: JSON and binary-extension tensors in, RESULT / EMBEDDING tensors out.

Pure functions over bytes and numpy (no FastAPI routes, no manager): the routes are serving/services/kserve.py.
- `decode_tensor(t, binary, offset)`: one input tensor (JSON `data` or `binary_data_size` bytes of the
  request body) -> numpy (object array of bytes/str for BYTES); 400 bad_request on any inconsistency.
- `decompress(body, encoding, limit)`: tritonclient's request compression (gzip / deflate), bounded.
- `encode_response(name, req, outputs)`: the v2 response, binary outputs where requested.
- `conversation`, `option_value`, `tensor_option`: TEXT elements and options from tensors/parameters.
- `check_parameters(p, where)`: a `parameters` object (request, input or output level) of the protocol's
  JSON types (string, number, boolean), with the binary extension's keys of the right type.

Every check happens before any model runs and is a 400 (Triton's `{"error": ...}` body): shape x datatype
against the element count (Python integers, so a huge shape cannot overflow), values within the datatype's
range (UINT8 256, -1 or 300.5 are refused, not wrapped), `binary_data_size` a whole number of elements
inside the body, BYTES elements strings.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
from fastapi.responses import Response

from serving.errors import BadRequest, InvalidNumber, PayloadTooLarge, UnsupportedMediaType

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


#: most elements one input tensor may declare (a 4K RGB frame batch is far below)
MAX_ELEMENTS = 1 << 31
#: binary-extension keys and their JSON types
_BINARY_KEYS: dict[str, type | tuple[type, ...]] = {"binary_data_size": int, "binary_data": bool,
                                                    "binary_data_output": bool}


def check_parameters(params: Any, where: str) -> dict[str, Any]:
    """A KServe `parameters` object: {name: string | number | boolean}; 400 otherwise (module docstring)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} parameters must be a JSON object, got {type(params).__name__}")
    for k, v in params.items():
        if not isinstance(v, (str, int, float, bool)) or v is None:
            raise BadRequest(f"{where} parameter {k!r} must be a string, number or boolean, got {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidNumber(f"{where} parameter {k!r} must be a finite number", details={"field": k})
        want = _BINARY_KEYS.get(k)
        if want is not None and (not isinstance(v, want) or (want is int and (isinstance(v, bool) or v < 0))):
            kind = "a non-negative integer" if want is int else "a boolean"
            raise BadRequest(f"{where} parameter {k!r} must be {kind}, got {v!r}")
    return params


def _element_count(name: str, shape: Any) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest(f"input {name}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)  # Python ints: no overflow
    if count > MAX_ELEMENTS:
        raise BadRequest(f"input {name}: shape {shape} declares {count} elements, more than {MAX_ELEMENTS}")
    return count


def _numbers(name: str, dt: str, data: Any) -> np.ndarray:
    """JSON `data` of a numeric datatype -> a flat array of that datatype, every value in its range."""
    target = np.dtype(_DTYPES[dt])
    try:
        a = np.asarray(data).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting, ints beyond 64 bits
        raise BadRequest(f"input {name}: data is not a regular list of {dt} values: {e}") from None
    if a.size == 0:
        return np.empty(0, dtype=target)
    kind = a.dtype.kind
    if dt == "BOOL":
        if kind != "b":
            raise BadRequest(f"input {name}: BOOL data must hold true/false values")
        return a.astype(np.bool_)
    if kind not in "iuf" or (kind == "f" and target.kind in "iu"):
        what = "integers" if target.kind in "iu" else "numbers"
        raise BadRequest(f"input {name}: {dt} data must hold {what}, got {a.dtype.name} values")
    if target.kind in "iu":
        info = np.iinfo(target)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise BadRequest(f"input {name}: {dt} values must lie in {info.min}..{info.max}, got {lo}..{hi}")
    else:
        finite = a[np.isfinite(a)] if kind == "f" else a
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(target).max):
            raise BadRequest(f"input {name}: a value exceeds the range of {dt}")
    return a.astype(target)


def decode_tensor(t: dict[str, Any], binary: memoryview | None, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor -> numpy (object array of bytes/str for BYTES); returns the new binary offset."""
    name = t.get("name", "?")
    dt = t.get("datatype")
    if not isinstance(dt, str) or dt not in _DTYPES:
        raise BadRequest(f"input {name}: unsupported datatype {dt!r}; use one of {', '.join(_DTYPES)}")
    shape = t.get("shape")
    count = _element_count(name, shape)
    size = check_parameters(t.get("parameters"), f"input {name}").get("binary_data_size")
    if size is not None:
        if binary is None or offset + size > len(binary):
            raise BadRequest(f"input {name}: binary_data_size {size} runs past the request body")
        raw = bytes(binary[offset:offset + size])
        offset += size
        if dt == "BYTES":
            items = _bytes_elements(raw, f"input {name}")
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
        else:
            itemsize = np.dtype(_DTYPES[dt]).itemsize
            if size != count * itemsize:
                raise BadRequest(f"input {name}: shape {shape} of {dt} needs {count * itemsize} bytes, "
                                 f"binary_data_size is {size}")
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
    else:
        if "data" not in t:
            raise BadRequest(f"input {name}: no 'data' and no binary_data_size")
        data = t["data"]
        if not isinstance(data, list):
            data = [data]
        if dt == "BYTES":
            flat = _flat_strings(name, data)
            arr = np.empty(len(flat), dtype=object)
            arr[:] = flat
        else:
            arr = _numbers(name, dt, data)
    if arr.size != count:
        raise BadRequest(f"input {name}: shape {shape} needs {count} elements, got {arr.size}")
    return arr.reshape(shape), offset


def _flat_strings(name: str, data: list[Any]) -> list[str]:
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            if not isinstance(x, str):
                raise BadRequest(f"input {name}: BYTES data must hold strings, got {type(x).__name__}")
            out.append(x)
        else:
            stack.pop()
    return out


def conversation(x: Any) -> list[dict[str, str]]:
    """A TEXT element: a JSON list of chat messages, or plain text = one user message."""
    try:
        text = x.decode("utf-8") if isinstance(x, bytes) else str(x)
    except UnicodeDecodeError:
        raise BadRequest("TEXT elements must be UTF-8") from None
    if text.lstrip().startswith("["):
        try:
            msgs = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # not JSON (or absurdly nested): plain text
            msgs = None
        if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    return [{"role": "user", "content": text}]


def option_value(v: Any) -> Any:
    if isinstance(v, str) and v.strip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except (json.JSONDecodeError, RecursionError):
            return v
    return v


def tensor_option(arr: np.ndarray) -> Any:
    """An option tensor's value: one element is a scalar, more are a list (BYTES as UTF-8 strings)."""
    if arr.dtype == object:
        try:
            items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
        except UnicodeDecodeError:
            raise BadRequest("BYTES option tensors must be UTF-8 text") from None
        return items[0] if arr.size == 1 and arr.ndim <= 1 else items
    return arr.reshape(-1).tolist()[0] if arr.size == 1 and arr.ndim <= 1 else arr.tolist()


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
            selected.append((oname, bool(o.get("parameters", {}).get("binary_data", default_binary))))
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
