"""KServe v2 / Open Inference Protocol on every service, so `tritonclient.http` works unchanged.

Routes: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready, POST /v2/models/{name}[/versions/{v}]/infer,
POST|GET /v2/repository/index, POST /v2/repository/models/{name}/load|unload (admin token when set).
Errors carry Triton's `{"error": message}` next to the runtime's `error_type` (tritonclient reads `error`).
Readiness: a model is ready when HOT; a COLD/WARM model still serves infer (it loads on demand).

Tensors of infer (one version, "1"), chosen by the model's task (`INPUT_KINDS`):
- image tasks (detect, pose, segment, classify, zero_shot, embed, reid, depth, vlm, quality):
  input `IMAGE`, either BYTES [N] (each element an encoded JPEG/PNG/WebP/BMP — raw bytes with the binary
  extension, base64 text in JSON) or UINT8 [H, W, 3] / [N, H, W, 3] RGB pixels. N results.
- action (X-CLIP): input `FRAMES`, the same encodings; all frames form one clip. 1 result.
- chat (LLM): input `TEXT`, BYTES [N]: each a UTF-8 prompt (one user message) or a JSON list of
  {"role", "content"} messages. N results ({"text", "prompt_tokens", "completion_tokens", "finish_reason"}).
- any other input tensor becomes a predict option named after it in lower case (BYTES -> list of str,
  numbers -> nested lists), and so do the request's non-reserved `parameters` (a string starting with
  `[` or `{` is parsed as JSON): e.g. `parameters: {"confidence": 0.3}`, `{"prompt": "<OCR>"}`,
  `{"labels": "[\"cat\", \"dog\"]"}`. Options the adapter does not accept are a 400.
Outputs: `RESULT`, BYTES [N], each a UTF-8 JSON document of the adapter's result for that input (the
same object the HTTP routes build on), and for embedding results `EMBEDDING`, FP32 [N, D].
Binary outputs when requested per output (`parameters.binary_data`) or for all
(`parameters.binary_data_output`, tritonclient's default when no outputs are named).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import struct
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.errors import BadRequest, InvalidImage, NotFound, PayloadTooLarge, ServingError, UnsupportedMediaType
from serving.imaging import array_to_image, decode_image
from serving.services.common import check_admin, require_manager, require_model
from serving.services.errors import error_response

if TYPE_CHECKING:  # pragma: no cover
    from serving.services.app import ServiceContext

HEADER_LEN = "inference-header-content-length"
VERSION = "1"
_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
_IMAGE_TASKS = ("detect", "pose", "segment", "classify", "zero_shot", "embed", "reid", "depth", "vlm", "quality")
#: task -> (input tensor name, kind)
INPUT_KINDS: dict[str, tuple[str, str]] = {t: ("IMAGE", "image") for t in _IMAGE_TASKS} | {
    "action": ("FRAMES", "frames"),
    "chat": ("TEXT", "text"),
}
_RESERVED = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
             "headers", "binary_data", "binary_data_size"}


def kserve_error(exc: ServingError) -> Response:
    resp = error_response(exc)
    body = json.loads(resp.body)
    body["error"] = exc.message
    return JSONResponse(body, status_code=exc.status_code, headers={k: v for k, v in resp.headers.items()
                                                                    if k.lower() == "retry-after"})


# ---------------------------------------------------------------------------------------- tensor codec
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


def _images_from_tensor(ctx: ServiceContext, arr: np.ndarray, name: str) -> list[Any]:
    if arr.dtype == object:
        items = arr.reshape(-1).tolist()
        out = []
        for i, v in enumerate(items):
            if not isinstance(v, (bytes, str)):
                raise InvalidImage(f"{name}[{i}]: expected encoded image bytes or base64 text")
            out.append(decode_image(v, ctx.limits, f"{name}[{i}]"))
        return out
    if arr.dtype != np.uint8:
        raise InvalidImage(f"{name}: images are BYTES (encoded) or UINT8 [H,W,3]/[N,H,W,3], got {arr.dtype}")
    if arr.ndim == 3:
        return [array_to_image(arr, ctx.limits, name)]
    if arr.ndim == 4:
        return [array_to_image(a, ctx.limits, f"{name}[{i}]") for i, a in enumerate(arr)]
    raise InvalidImage(f"{name}: UINT8 images need shape [H,W,3] or [N,H,W,3], got {list(arr.shape)}")


def _conversation(x: Any) -> list[dict[str, str]]:
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


def _option_value(v: Any) -> Any:
    if isinstance(v, str) and v.strip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def _tensor_option(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
    return arr.tolist()


def _check_options(fn: Any, options: dict[str, Any], model: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"inputs"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise BadRequest(f"model {model!r} does not take option(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join(sorted(accepted)) or 'none'}")


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


# ---------------------------------------------------------------------------------------- router
def model_metadata(ctx: ServiceContext, name: str) -> dict[str, Any]:
    manager = require_manager(ctx)
    require_model(ctx, name)
    spec = manager.model_view(name).spec
    in_name, kind = INPUT_KINDS.get(spec.task, ("IMAGE", "image"))
    outputs = [{"name": "RESULT", "datatype": "BYTES", "shape": [-1]}]
    if spec.task in ("embed", "reid"):
        outputs.append({"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, -1]})
    return {
        "name": name,
        "versions": [VERSION],
        "platform": f"zoo_{spec.family}",
        "inputs": [{"name": in_name, "datatype": "BYTES", "shape": [-1],
                    "parameters": {"also": "UINT8 [H,W,3] or [N,H,W,3]"} if kind != "text" else {}}],
        "outputs": outputs,
        "parameters": {"task": spec.task, "family": spec.family, "priority": spec.priority.name,
                       "tier": manager.model_view(name).tier},
    }


def build_router(ctx: ServiceContext) -> APIRouter:  # noqa: C901 - one route table
    router = APIRouter(prefix="/v2", tags=["kserve-v2"])

    def _version_ok(version: str | None) -> None:
        if version is not None and version not in ("", VERSION):
            raise NotFound(f"version {version!r} not found; the only version is {VERSION}")

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        try:
            zoo_version = importlib.metadata.version("zoo-serving")
        except importlib.metadata.PackageNotFoundError:
            zoo_version = "0"
        return {"name": f"zoo-{ctx.service}", "version": zoo_version,
                "extensions": ["binary_tensor_data", "model_repository"]}

    @router.get("/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> Response:
        from serving.services.app import compute_service_state  # noqa: PLC0415

        st = compute_service_state(ctx)
        ok = st["state"] in ("RUNNING", "DEGRADED")
        return JSONResponse({"ready": ok, "state": st["state"]}, status_code=200 if ok else 503)

    async def _metadata(name: str, version: str | None = None) -> Response:
        try:
            _version_ok(version)
            return JSONResponse(model_metadata(ctx, name))
        except ServingError as e:
            return kserve_error(e)

    async def _ready(name: str, version: str | None = None) -> Response:
        try:
            _version_ok(version)
            manager = require_manager(ctx)
            require_model(ctx, name)
            tier = manager.model_view(name).tier
            if tier == "HOT":
                return JSONResponse({"name": name, "ready": True})
            return JSONResponse({"name": name, "ready": False, "tier": tier,
                                 "error": f"model {name!r} is not loaded (tier {tier}); POST "
                                          f"/v2/repository/models/{name}/load or call infer to load it"},
                                status_code=400)
        except ServingError as e:
            return kserve_error(e)

    async def _infer(name: str, request: Request, version: str | None = None) -> Response:
        try:
            _version_ok(version)
            return await infer(ctx, name, request)
        except ServingError as e:
            return kserve_error(e)

    router.add_api_route("/models/{name}", _metadata, methods=["GET"])
    router.add_api_route("/models/{name}/versions/{version}", _metadata, methods=["GET"])
    router.add_api_route("/models/{name}/ready", _ready, methods=["GET"])
    router.add_api_route("/models/{name}/versions/{version}/ready", _ready, methods=["GET"])
    router.add_api_route("/models/{name}/infer", _infer, methods=["POST"])
    router.add_api_route("/models/{name}/versions/{version}/infer", _infer, methods=["POST"])

    @router.api_route("/repository/index", methods=["GET", "POST"])
    async def repository_index(request: Request) -> Response:
        only_ready = False
        body = await request.body()
        if body:
            try:
                only_ready = bool(json.loads(body).get("ready", False))
            except (json.JSONDecodeError, AttributeError):
                return kserve_error(BadRequest("repository index body must be a JSON object"))
        if ctx.manager is None:
            return JSONResponse([])
        st = ctx.manager.status()
        pending = set(st["pending_loads"])
        out = []
        for m in st["registered_models"]:
            if m["tier"] == "HOT":
                state, reason = "READY", ""
            elif m["name"] in pending:
                state, reason = "LOADING", ""
            elif m["tier"] == "FAILED":
                state, reason = "UNAVAILABLE", m["last_error"] or "load failed"
            elif m["disabled"]:
                state, reason = "UNAVAILABLE", "disabled (thermal state OFF)"
            else:
                state, reason = "UNAVAILABLE", f"{m['tier']}: loads on demand"
            if only_ready and state != "READY":
                continue
            out.append({"name": m["name"], "version": VERSION, "state": state, "reason": reason})
        return JSONResponse(out)

    @router.post("/repository/models/{name}/load")
    async def repository_load(name: str, request: Request) -> Response:
        try:
            check_admin(ctx, request)
            manager = require_manager(ctx)
            require_model(ctx, name)
            await manager.preload(name)
            return JSONResponse({})
        except ServingError as e:
            return kserve_error(e)

    @router.post("/repository/models/{name}/unload")
    async def repository_unload(name: str, request: Request) -> Response:
        try:
            check_admin(ctx, request)
            manager = require_manager(ctx)
            require_model(ctx, name)
            to = "COLD"
            body = await request.body()
            if body:
                try:
                    params = (json.loads(body) or {}).get("parameters") or {}
                except (json.JSONDecodeError, AttributeError):
                    raise BadRequest("unload body must be a JSON object") from None
                if str(params.get("tier", "")).upper() == "WARM":
                    to = "WARM"
            await manager.unload(name, to=to)
            return JSONResponse({})
        except ServingError as e:
            return kserve_error(e)

    return router


async def infer(ctx: ServiceContext, name: str, request: Request) -> Response:
    """Decode the v2 request (JSON or binary extension), run the model, encode RESULT/EMBEDDING."""
    manager = require_manager(ctx)
    require_model(ctx, name)
    spec = manager.model_view(name).spec
    body = _decompress(await request.body(), request.headers.get("content-encoding", ""), ctx.limits.max_body_bytes)
    hlen = request.headers.get(HEADER_LEN)
    if hlen is not None:
        try:
            n = int(hlen)
        except ValueError:
            raise BadRequest(f"{HEADER_LEN} must be an integer") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{HEADER_LEN} {n} is outside the body of {len(body)} bytes")
        header_raw, binary = body[:n], memoryview(body)[n:]
    else:
        header_raw, binary = body, None
    try:
        req = json.loads(header_raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"inference request is not valid JSON: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise BadRequest("inference request needs a non-empty 'inputs' list")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for t in req["inputs"]:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise BadRequest("each input needs a 'name'")
        tensors[t["name"]], offset = decode_tensor(t, binary, offset)

    in_name, kind = INPUT_KINDS.get(spec.task, ("IMAGE", "image"))
    if in_name not in tensors:
        raise BadRequest(f"model {name!r} ({spec.task}) needs input {in_name}; got {', '.join(tensors)}")
    main = tensors.pop(in_name)
    if kind == "image":
        inputs: list[Any] = _images_from_tensor(ctx, main, in_name)
    elif kind == "frames":
        inputs = [_images_from_tensor(ctx, main, in_name)]
    else:
        inputs = [_conversation(x) for x in main.reshape(-1).tolist()]
    options = {k: _option_value(v) for k, v in (req.get("parameters") or {}).items() if k not in _RESERVED}
    options |= {k.lower(): _tensor_option(v) for k, v in tensors.items()}

    async with manager.use(name) as adapter:
        _check_options(adapter.predict, options, name)
        results = await manager.run(adapter.predict, inputs, **options)

    outputs: dict[str, tuple[str, list[int], Any]] = {
        "RESULT": ("BYTES", [len(results)], [result_json(r) for r in results]),
    }
    embs = [r.get("embedding") if isinstance(r, dict) else None for r in results]
    if results and all(isinstance(e, (list, tuple, np.ndarray)) for e in embs):
        arr = np.asarray([np.asarray(e, dtype=np.float32).reshape(-1) for e in embs], dtype=np.float32)
        outputs["EMBEDDING"] = ("FP32", list(arr.shape), arr)
    return encode_response(name, req, outputs)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
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
            entry["data"] = [d.decode("utf-8") for d in data] if dt == "BYTES" else np.asarray(data).reshape(-1).tolist()
        out_json.append(entry)
    head: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": out_json}
    if "id" in req:
        head["id"] = req["id"]
    head_raw = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(head_raw, media_type="application/json")
    return Response(head_raw + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head_raw))})
