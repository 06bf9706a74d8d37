"""KServe v2 / Open Inference Protocol on every service, so `tritonclient.http` works unchanged.

Routes: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready, POST /v2/models/{name}[/versions/{v}]/infer,
POST|GET /v2/repository/index, POST /v2/repository/models/{name}/load|unload (admin token when set).
Errors are the services' one `ErrorBody` plus Triton's `error` key (`KServeRoute`; tritonclient reads it);
the tensor codec is serving/services/kserve_codec.py.
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
  `{"labels": "[\"cat\", \"dog\"]"}`. A one-element option tensor is a scalar. Options are checked against the
  model family's declared options (serving/adapters/options.py) before any model runs: a wrong type, a value
  out of range or an option the model does not take is a 400.
Outputs: `RESULT`, BYTES [N], each a UTF-8 JSON document of the adapter's result for that input (the
same object the HTTP routes build on), and for embedding results `EMBEDDING`, FP32 [N, D].
Binary outputs when requested per output (`parameters.binary_data`) or for all
(`parameters.binary_data_output`, tritonclient's default when no outputs are named).
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from serving.adapters.options import check_options
from serving.errors import BadRequest, InvalidImage, NotFound
from serving.imaging import array_to_image, decode_image
from serving.services.common import predict, require_admin, require_manager, require_model
from serving.services.context import Ctx, ServiceContext
from serving.services.errors import KServeRoute
from serving.services.health import compute_service_state, is_serving
from serving.services.kserve_codec import (
    HEADER_LEN,
    VERSION,
    check_parameters,
    conversation,
    decode_tensor,
    decompress,
    encode_response,
    option_value,
    result_json,
    tensor_option,
)

_IMAGE_TASKS = ("detect", "pose", "segment", "classify", "zero_shot", "embed", "reid", "depth", "vlm", "quality", "ocr")
#: task -> (input tensor name, kind)
INPUT_KINDS: dict[str, tuple[str, str]] = {t: ("IMAGE", "image") for t in _IMAGE_TASKS} | {
    "action": ("FRAMES", "frames"),
    "chat": ("TEXT", "text"),
}
_RESERVED = {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
             "headers", "binary_data", "binary_data_size"}

router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=KServeRoute)


# ---------------------------------------------------------------------------------------- models
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ServerMetadata(_Open):
    name: str
    version: str
    extensions: list[str]


class Live(_Open):
    live: bool


class Ready(_Open):
    ready: bool
    state: str = Field(description="The service state (RUNNING, DEGRADED, DISABLED, OFFLINE).")


class TensorMetadata(_Open):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(_Open):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ModelReady(_Open):
    """200 when HOT; 400 with `tier` and `error` otherwise (Triton's not-ready answer)."""

    name: str
    ready: bool
    tier: str | None = None
    error: str | None = None


class InferTensor(_Open):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="Row-major elements; absent with parameters.binary_data_size.")
    parameters: dict[str, Any] | None = None


class InferRequestedOutput(_Open):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Open):
    """The JSON header of an inference request (the whole body without the binary extension)."""

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[InferRequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(_Open):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class RepositoryIndexRequest(_Open):
    ready: bool = Field(False, description="Only models that are READY.")


class RepositoryEntry(_Open):
    name: str
    version: str
    state: str = Field(description="READY | LOADING | UNAVAILABLE")
    reason: str


class UnloadRequest(_Open):
    parameters: dict[str, Any] = Field(default_factory=dict, description='{"tier": "warm"} parks it in host RAM.')


def _json_or_binary(model: type[BaseModel], what: str) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": f"{what}: the JSON header ({HEADER_LEN} bytes) then raw tensors."},
    }}}


# ---------------------------------------------------------------------------------------- helpers
def _version_ok(version: str | None) -> None:
    if version is not None and version not in ("", VERSION):
        raise NotFound(f"version {version!r} not found; the only version is {VERSION}")


def model_metadata(ctx: ServiceContext, name: str) -> dict[str, Any]:
    manager = require_manager(ctx)
    require_model(ctx, name)
    view = manager.model_view(name)
    spec = view.spec
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
        "parameters": {"task": spec.task, "family": spec.family, "priority": spec.priority.name, "tier": view.tier},
    }


def _images_from_tensor(ctx: ServiceContext, arr: np.ndarray, name: str) -> list[Any]:
    if arr.dtype == object:
        out = []
        for i, v in enumerate(arr.reshape(-1).tolist()):
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


def _split_header(body: bytes, hlen: str | None) -> tuple[bytes, memoryview | None]:
    if hlen is None:
        return body, None
    try:
        n = int(hlen)
    except ValueError:
        raise BadRequest(f"{HEADER_LEN} must be an integer") from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"{HEADER_LEN} {n} is outside the body of {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _parse_infer(body: bytes, hlen: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header_raw, binary = _split_header(body, hlen)
    try:
        req = json.loads(header_raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"inference request is not valid JSON: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise BadRequest("inference request needs a non-empty 'inputs' list")
    if "id" in req and not isinstance(req["id"], str):
        raise BadRequest("inference request 'id' must be a string")
    req["parameters"] = check_parameters(req.get("parameters"), "request")
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list of {name, parameters?}")
        for o in outputs:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise BadRequest("each requested output needs a 'name'")
            o["parameters"] = check_parameters(o.get("parameters"), f"output {o['name']}")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for t in req["inputs"]:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise BadRequest("each input needs a 'name'")
        if t["name"] in tensors:
            raise BadRequest(f"input {t['name']} is given twice")
        tensors[t["name"]], offset = decode_tensor(t, binary, offset)
    return req, tensors


async def infer(ctx: ServiceContext, name: str, request: Request) -> Response:
    """Decode the v2 request (JSON or binary extension), run the model, encode RESULT/EMBEDDING."""
    manager = require_manager(ctx)
    require_model(ctx, name)
    spec = manager.model_view(name).spec
    body = decompress(await request.body(), request.headers.get("content-encoding", ""), ctx.limits.max_body_bytes)
    req, tensors = _parse_infer(body, request.headers.get(HEADER_LEN))
    in_name, kind = INPUT_KINDS.get(spec.task, ("IMAGE", "image"))
    if in_name not in tensors:
        raise BadRequest(f"model {name!r} ({spec.task}) needs input {in_name}; got {', '.join(tensors)}")
    main = tensors.pop(in_name)
    if kind == "image":
        inputs: list[Any] = _images_from_tensor(ctx, main, in_name)
    elif kind == "frames":
        inputs = [_images_from_tensor(ctx, main, in_name)]
    else:
        inputs = [conversation(x) for x in main.reshape(-1).tolist()]
    options = {k: option_value(v) for k, v in (req.get("parameters") or {}).items() if k not in _RESERVED}
    options |= {k.lower(): tensor_option(v) for k, v in tensors.items()}
    options = check_options(spec.family, options, model=name)  # before any model runs; unknown ones refused

    results = await predict(ctx, name, inputs, **options)

    outputs: dict[str, tuple[str, list[int], Any]] = {
        "RESULT": ("BYTES", [len(results)], [result_json(r) for r in results]),
    }
    embs = [r.get("embedding") if isinstance(r, dict) else None for r in results]
    if results and all(isinstance(e, (list, tuple, np.ndarray)) for e in embs):
        arr = np.asarray([np.asarray(e, dtype=np.float32).reshape(-1) for e in embs], dtype=np.float32)
        outputs["EMBEDDING"] = ("FP32", list(arr.shape), arr)
    return encode_response(name, req, outputs)


async def _json_body(request: Request, what: str) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadRequest(f"{what} body must be a JSON object") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest(f"{what} body must be a JSON object")
    return data


# ---------------------------------------------------------------------------------------- routes
@router.get("", response_model=ServerMetadata)
async def server_metadata(ctx: Ctx) -> dict[str, Any]:
    try:
        zoo_version = importlib.metadata.version("zoo-serving")
    except importlib.metadata.PackageNotFoundError:
        zoo_version = "0"
    return {"name": f"zoo-{ctx.service}", "version": zoo_version,
            "extensions": ["binary_tensor_data", "model_repository"]}


@router.get("/health/live", response_model=Live)
async def live() -> dict[str, Any]:
    return {"live": True}


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(ctx: Ctx) -> JSONResponse:
    state = compute_service_state(ctx)["state"]
    ok = is_serving(state)
    return JSONResponse({"ready": ok, "state": state}, status_code=200 if ok else 503)


async def metadata(ctx: Ctx, name: str, version: str | None = None) -> dict[str, Any]:
    _version_ok(version)
    return model_metadata(ctx, name)


async def model_ready(ctx: Ctx, name: str, version: str | None = None) -> JSONResponse:
    _version_ok(version)
    manager = require_manager(ctx)
    require_model(ctx, name)
    tier = manager.model_view(name).tier
    if tier == "HOT":
        return JSONResponse({"name": name, "ready": True})
    return JSONResponse({"name": name, "ready": False, "tier": tier,
                         "error": f"model {name!r} is not loaded (tier {tier}); POST "
                                  f"/v2/repository/models/{name}/load or call infer to load it"}, status_code=400)


async def model_infer(ctx: Ctx, name: str, request: Request, version: str | None = None) -> Response:
    _version_ok(version)
    return await infer(ctx, name, request)


_INFER_DOC = {"response_model": InferResponse, "openapi_extra": _json_or_binary(InferRequest, "binary extension")}
for _path in ("/models/{name}", "/models/{name}/versions/{version}"):
    router.add_api_route(_path, metadata, methods=["GET"], response_model=ModelMetadata)
    router.add_api_route(_path + "/ready", model_ready, methods=["GET"], response_model=ModelReady,
                         responses={400: {"model": ModelReady}})
    router.add_api_route(_path + "/infer", model_infer, methods=["POST"], **_INFER_DOC)


async def repository_index(ctx: Ctx, request: Request) -> list[dict[str, Any]]:
    only_ready = bool((await _json_body(request, "repository index")).get("ready", False))
    if ctx.manager is None:
        return []
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
    return out


for _method in ("GET", "POST"):
    router.add_api_route("/repository/index", repository_index, methods=[_method], response_model=list[RepositoryEntry],
                         openapi_extra=_json_or_binary(RepositoryIndexRequest, "optional"))


@router.post("/repository/models/{name}/load", response_model=dict[str, Any], dependencies=[Depends(require_admin)])
async def repository_load(ctx: Ctx, name: str) -> dict[str, Any]:
    manager = require_manager(ctx)
    require_model(ctx, name)
    await manager.preload(name)
    return {}


@router.post("/repository/models/{name}/unload", response_model=dict[str, Any], dependencies=[Depends(require_admin)],
             openapi_extra=_json_or_binary(UnloadRequest, "optional"))
async def repository_unload(ctx: Ctx, name: str, request: Request) -> dict[str, Any]:
    manager = require_manager(ctx)
    require_model(ctx, name)
    params = (await _json_body(request, "unload")).get("parameters") or {}
    to = "WARM" if isinstance(params, dict) and str(params.get("tier", "")).upper() == "WARM" else "COLD"
    await manager.unload(name, to=to)
    return {}
