"""The SageMaker container: `zoo sagemaker serve` (what `docker run IMAGE serve` runs).

Contract (SageMaker "Custom Inference Code with Hosting Services" and "Custom Containers Contract for
Multi-Model Endpoints"):

    GET    /ping                      200 with an empty body when ready; 503 (JSON reason) while the
                                      default model loads or after it failed. Never blocks: SageMaker's
                                      request timeout is 2 s and it gives the container 4 min to pass.
    POST   /invocations               the default model (below): image/jpeg, image/png (raw bytes,
                                      options in X-Amzn-SageMaker-Custom-Attributes "confidence=0.3")
                                      or application/json {"image": "<base64>"} | {"images": [...]} |
                                      {"inputs": [...]}, other keys (and "options": {...}) are options
    POST   /models                    {"model_name", "url"}: register + preload; 409 already loaded,
                                      507 when the VRAM budget cannot hold it, 400 for an artifact
                                      holding no zoo model
    GET    /models                    ?next_page_token=&page_size= -> {"models": [...], "nextPageToken"?}
    GET    /models/{name}             {"modelName", "modelUrl", ...}; 404 when not loaded
    DELETE /models/{name}             unload; 404 when not loaded
    POST   /models/{name}/invoke      as /invocations, for that model; 404 when not loaded

Port: SAGEMAKER_BIND_TO_PORT, else 8080. Root: SAGEMAKER_ROOT (default /opt/ml), holding `model/`
(the single-model artifact) and `models/` (multi-model artifacts); the manager's models_root is the root,
so every artifact path stays inside it.

Model mapping (serving/sagemaker/artifacts.py): the default model of /invocations is the artifact in
{root}/model, identified by its `zoo-model.json` manifest, by env SAGEMAKER_MODEL (a zoo.yaml name or
alias) or by the zoo files it holds; it is registered under its zoo name. A multi-model `model_name`
is opaque: it maps to the zoo model its artifact holds (manifest, then the TargetModel header or the
name as a hint, then the files). All models share one MultiModelManager and one VRAM budget
(VRAM_BUDGET_GB, else the budget of the zoo service that owns the default model, else the device's
memory); see serving/sagemaker/models.py for how SageMaker's loading and our eviction cooperate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from serving.adapters.registry import AdapterRegistry
from serving.config import GB, MB, ServiceSpec, ZooConfig, load_zoo
from serving.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    ServingError,
    UnsupportedMediaType,
)
from serving.sagemaker.artifacts import resolve_artifact
from serving.sagemaker.models import ModelTable, MultiModelManager, Registered
from serving.services.app import BodyLimitMiddleware
from serving.services.common import Limits, Stopwatch
from serving.services.errors import install_error_handlers
from serving.services.images import RAW_IMAGE_TYPES, decode_image, decode_images
from serving.vram.devices import Device, device_from_spec
from serving.vram.footprints import FootprintStore

log = logging.getLogger(__name__)

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
RESERVED_JSON_KEYS = ("image", "images", "inputs", "options")


@dataclass
class SageMakerSettings:
    """What `zoo sagemaker serve` needs; `from_env` reads the variables SageMaker and the image set."""

    zoo_path: Path = Path("zoo.yaml")
    root: Path = Path("/opt/ml")  # SAGEMAKER_ROOT: holds model/ and models/
    model: str | None = None  # SAGEMAKER_MODEL: zoo model of /invocations
    device: str = "auto"  # ZOO_DEVICE
    budget_gb: float | None = None  # VRAM_BUDGET_GB
    host_cache_gb: float | None = None  # ZOO_HOST_CACHE_GB
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SageMakerSettings:
        env = dict(os.environ if env is None else env)

        def num(var: str) -> float | None:
            if not env.get(var):
                return None
            try:
                return float(env[var])
            except ValueError:
                raise ConfigError(f"environment {var}={env[var]!r} is not a number") from None

        s = cls(
            zoo_path=Path(env.get("ZOO_CONFIG") or "zoo.yaml"),
            root=Path(env.get("SAGEMAKER_ROOT") or "/opt/ml"),
            model=env.get("SAGEMAKER_MODEL") or None,
            device=env.get("ZOO_DEVICE") or "auto",
            budget_gb=num("VRAM_BUDGET_GB"),
            host_cache_gb=num("ZOO_HOST_CACHE_GB"),
            env=env,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"


class LoadModelRequest(BaseModel):
    """Body of POST /models (SageMaker multi-model contract)."""

    model_name: str = Field(min_length=1, max_length=1024)
    url: str = Field(min_length=1)


@dataclass
class ContainerState:
    """Mutable state of one container process (owned by its event loop)."""

    settings: SageMakerSettings
    zoo: ZooConfig
    limits: Limits
    manager: MultiModelManager | None = None
    table: ModelTable | None = None
    default_model: str | None = None
    ready: bool = False
    error: str | None = None
    boot_task: asyncio.Task[None] | None = None

    def require_table(self) -> ModelTable:
        if self.error:
            raise ServiceUnavailable(f"the container failed to start: {self.error}")
        if self.table is None:
            raise ServiceUnavailable("the container is still starting", retry_after=2.0)
        return self.table


# ------------------------------------------------------------------------------------------- boot
def _has_artifact(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


async def boot(
    state: ContainerState,
    *,
    device: Device | None = None,
    registry: AdapterRegistry | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    """Resolve the default artifact, build the manager, preload the default model; set ready/error."""
    s, zoo = state.settings, state.zoo
    try:
        resolved = None
        if _has_artifact(s.model_dir):
            resolved = resolve_artifact(zoo, s.root, s.model_dir, (s.model,))
        elif s.model:
            raise ConfigError(f"SAGEMAKER_MODEL={s.model} but {s.model_dir} holds no model artifact")
        owner = zoo.service_of(resolved.zoo_model) if resolved else None
        svc = zoo.services[owner] if owner else ServiceSpec(kind="detection", port=8080)
        if device is None:
            device = await asyncio.to_thread(device_from_spec, s.device, 0)
        headroom = int(svc.headroom_mb * MB)
        if s.budget_gb is not None:
            budget = int(s.budget_gb * GB)
        elif owner and svc.vram_budget_gb > 0:
            budget = svc.vram_budget_bytes
        else:
            budget = max(device.total_bytes() - headroom, 0)
        host_cache = int((s.host_cache_gb if s.host_cache_gb is not None else max(svc.host_cache_gb, 2.0)) * GB)
        manager = MultiModelManager(
            {},
            device=device,
            registry=registry or AdapterRegistry(),
            models_root=s.root,
            budget_bytes=budget,
            host_cache_bytes=host_cache,
            policy=svc.policy,
            headroom_bytes=headroom,
            safety_factor=svc.safety_factor,
            load_concurrency=svc.load_concurrency,
            admission_timeout_s=svc.admission_timeout_s,
            sweep_interval_s=svc.sweep_interval_s,
            footprints=FootprintStore(None),  # SageMaker names are opaque: footprints live per process
            **({"clock": clock} if clock else {}),
        )
        await manager.start()
        state.manager, state.table = manager, ModelTable(manager)
        log.info("sagemaker container: device %s, budget %.0f MB, root %s", device.name, budget / MB, s.root)
        if resolved is not None:
            reg = Registered(resolved.zoo_model, str(s.model_dir), resolved.zoo_model, resolved.how)
            await state.table.load(reg, resolved.spec)
            state.default_model = reg.name
            log.info("default model %s (%s) from %s", reg.name, resolved.how, s.model_dir)
        state.ready = True
    except ServingError as e:
        state.error = e.message
        log.error("sagemaker container failed to start: %s", e.message)
    except Exception as e:  # reported by /ping, never silent
        state.error = f"{type(e).__name__}: {e}"
        log.exception("sagemaker container failed to start")


# ------------------------------------------------------------------------------------------- payloads
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
        except json.JSONDecodeError:
            out[key] = raw
    return out


async def read_payload(request: Request, limits: Limits) -> tuple[list[Any], dict[str, Any]]:
    """The request's inputs (decoded images or raw JSON inputs) and its options."""
    mtype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    options = parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
    body = await request.body()
    if not body:
        raise BadRequest("the request body is empty: send an image or a JSON object")
    if mtype in RAW_IMAGE_TYPES:
        declared = RAW_IMAGE_TYPES[mtype]
        if declared and declared not in limits.allowed_formats:
            raise UnsupportedMediaType(f"content type {mtype} is not accepted")
        return [await asyncio.to_thread(decode_image, body, limits)], options
    if mtype == "application/json" or mtype.endswith("+json"):
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        if not isinstance(data.get("options", {}), dict):
            raise BadRequest('"options" must be a JSON object')
        options |= {k: v for k, v in data.items() if k not in RESERVED_JSON_KEYS}
        options |= data.get("options", {})
        if isinstance(data.get("image"), str):
            return [await asyncio.to_thread(decode_image, data["image"], limits)], options
        if isinstance(data.get("images"), list) and data["images"]:
            if not all(isinstance(v, str) for v in data["images"]):
                raise BadRequest('"images" must be a list of base64 strings')
            return await asyncio.to_thread(decode_images, data["images"], limits), options
        if isinstance(data.get("inputs"), list) and data["inputs"]:
            return list(data["inputs"]), options
        raise BadRequest('JSON body needs "image" (base64), "images" (list of base64) or "inputs" (list)')
    raise UnsupportedMediaType(
        f"content type {mtype or '(none)'} is not accepted; send image/jpeg, image/png or application/json",
        details={"content_type": mtype},
    )


async def invoke(state: ContainerState, name: str, request: Request) -> JSONResponse:
    table = state.require_table()
    reg = table.get(name)
    manager = table.manager
    inputs, options = await read_payload(request, state.limits)
    spec = manager.entry(name).spec
    if "confidence" in spec.options:
        options.setdefault("confidence", spec.options["confidence"])
    with Stopwatch() as sw:
        async with manager.use(name) as adapter:
            outputs = await manager.run(adapter.predict, inputs, **options)
    meta = {"model": name, "zoo_model": reg.zoo_model, "inference_time_ms": sw.ms}
    if len(outputs) == 1 and isinstance(outputs[0], dict):
        return JSONResponse({**outputs[0], **{k: v for k, v in meta.items() if k not in outputs[0]}})
    return JSONResponse({**meta, "results": outputs})


# ------------------------------------------------------------------------------------------- the app
def create_app(
    settings: SageMakerSettings,
    *,
    device: Device | None = None,
    registry: AdapterRegistry | None = None,
    clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The container's app. The zoo file is read now (a bad one fails fast); models load after start."""
    zoo = load_zoo(settings.zoo_path, env=settings.env)
    state = ContainerState(settings=settings, zoo=zoo, limits=Limits.from_env(settings.env))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.boot_task = asyncio.create_task(boot(state, device=device, registry=registry, clock=clock),
                                              name="sagemaker-boot")
        try:
            yield
        finally:
            state.boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.boot_task
            if state.manager is not None:
                await state.manager.stop()

    app = FastAPI(title="zoo SageMaker container", lifespan=lifespan)
    app.state.sagemaker = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.limits.max_body_bytes)

    @app.get("/ping")
    async def ping() -> Response:
        if state.error:
            return JSONResponse({"status": "failed", "message": state.error}, status_code=503)
        if not state.ready or state.manager is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        if not state.manager.healthy():
            return JSONResponse({"status": "unhealthy", "message": str(state.manager.sweeper_error)},
                                status_code=503)
        return Response(status_code=200)

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        state.require_table()
        if state.default_model is None:
            raise NotFound(
                f"no model for /invocations: ship an artifact in {settings.model_dir} (and SAGEMAKER_MODEL) "
                "or, on a multi-model endpoint, call /models/{name}/invoke"
            )
        return await invoke(state, state.default_model, request)

    @app.post("/models")
    async def load_model(body: LoadModelRequest, request: Request) -> JSONResponse:
        table = state.require_table()
        if body.model_name in table.models:  # 409 before touching the artifact
            raise Conflict(f"model {body.model_name!r} is already loaded", details={"model": body.model_name})
        hints = (request.headers.get(TARGET_MODEL_HEADER), body.model_name)
        resolved = await asyncio.to_thread(
            resolve_artifact, state.zoo, settings.root, body.url, hints, residency="on_demand")
        reg = Registered(body.model_name, body.url, resolved.zoo_model, resolved.how)
        return JSONResponse(await table.load(reg, resolved.spec))

    @app.get("/models")
    async def list_models(
        next_page_token: str | None = Query(None),
        page_size: int | None = Query(None, ge=1, le=10_000),
        limit: int | None = Query(None, ge=1, le=10_000),
    ) -> JSONResponse:
        return JSONResponse(state.require_table().page(next_page_token, page_size or limit))

    @app.get("/models/{name}")
    async def get_model(name: str) -> JSONResponse:
        table = state.require_table()
        return JSONResponse(table.get(name).describe(table.manager))

    @app.delete("/models/{name}")
    async def unload_model(name: str) -> JSONResponse:
        table = state.require_table()
        await table.unload(name)
        if state.default_model == name:
            state.default_model = None
        return JSONResponse({"modelName": name, "status": "unloaded"})

    @app.post("/models/{name}/invoke")
    async def invoke_model(name: str, request: Request) -> JSONResponse:
        return await invoke(state, name, request)

    return app

