"""The SageMaker container: `zoo sagemaker serve` (what `docker run IMAGE serve` runs).

Contract (SageMaker "Custom Inference Code with Hosting Services" and "Custom Containers Contract for
Multi-Model Endpoints"):

    GET    /ping                      200 with an empty body when ready; 503 (JSON reason) while the
                                      models to preload load or after that failed. Never blocks:
                                      SageMaker's request timeout is 2 s, the container has 4 min to pass.
    POST   /invocations               the default model, or the one named by the option `model`;
                                      bodies in serving/sagemaker/payloads.py (image/jpeg, image/png,
                                      application/json with base64 images)
    POST   /models                    {"model_name", "url"}: register + preload; 409 already loaded,
                                      507 when the VRAM budget cannot hold it, 400 for an artifact
                                      holding no zoo model
    GET    /models                    ?next_page_token=&page_size= -> {"models": [...], "nextPageToken"?}
    GET    /models/{name}             {"modelName", "modelUrl", ...}; 404 when not loaded
    DELETE /models/{name}             unload; 404 when not loaded
    POST   /models/{name}/invoke      as /invocations, for that model; 404 when not loaded

Port: SAGEMAKER_BIND_TO_PORT, else 8080. Root: SAGEMAKER_ROOT (default /opt/ml), holding `model/`
(the endpoint's artifact) and `models/` (multi-model artifacts); the manager's models_root is the root,
so every artifact path stays inside it. Zoo file: ZOO_CONFIG (`zoo deploy` ships it in the artifact,
/opt/ml/model/zoo.yaml), else ZOO_IMAGE_CONFIG (the image's /app/zoo.yaml).

Which models (serving/sagemaker/artifacts.py):
- ZOO_SERVICES=detection,... (set by `zoo deploy`): every model of those services, files in the zoo
  layout of the artifact; `always` models and the default load at start. Default: SAGEMAKER_MODEL, else
  the first required model of the services, else their first model.
- else an artifact in {root}/model: the one zoo model it holds (manifest `zoo-model.json`,
  SAGEMAKER_MODEL as a hint, or its files), registered under its zoo name, loaded at start.
- else none: a multi-model endpoint, whose opaque `model_name`s map to the zoo model each artifact holds.
All share one OnDemandModelManager and one VRAM budget (VRAM_BUDGET_GB, else the budgets of the zoo
services involved, else the device's memory); serving/sagemaker/models.py says how SageMaker's loading
and our eviction cooperate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from serving.adapters.options import check_options
from serving.adapters.registry import AdapterRegistry
from serving.config import GB, MB, ManagerSettings, ZooConfig, load_zoo
from serving.errors import (
    ConfigError,
    Conflict,
    NotFound,
    ServiceUnavailable,
    ServingError,
)
from serving.sagemaker.artifacts import ResolvedArtifact, resolve_artifact, service_models, zoo_name_for
from serving.sagemaker.models import ModelTable, Registered
from serving.sagemaker.payloads import read_payload
from serving.services.app import BodyLimitMiddleware
from serving.services.common import Limits, Stopwatch
from serving.services.errors import install_error_handlers
from serving.settings import Settings
from serving.vram.devices import Device, device_from_spec
from serving.vram.footprints import FootprintStore
from serving.vram.manager import OnDemandModelManager

log = logging.getLogger(__name__)

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"


@dataclass
class SageMakerSettings:
    """What `zoo sagemaker serve` needs, from the process `Settings` (the variables SageMaker and the image
    set, read once) plus command-line overrides."""

    zoo_path: Path = Path("zoo.yaml")  # ZOO_CONFIG
    image_zoo_path: Path | None = None  # ZOO_IMAGE_CONFIG: used when zoo_path does not exist
    root: Path = Path("/opt/ml")  # SAGEMAKER_ROOT: holds model/ and models/
    model: str | None = None  # SAGEMAKER_MODEL: zoo model of /invocations
    services: list[str] = field(default_factory=list)  # ZOO_SERVICES
    device: str = "auto"  # ZOO_DEVICE
    budget_gb: float | None = None  # VRAM_BUDGET_GB
    host_cache_gb: float | None = None  # ZOO_HOST_CACHE_GB
    settings: Settings = field(default_factory=lambda: Settings.from_env({}))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SageMakerSettings:
        """From the process settings; `overrides` that are not None win (command-line options)."""
        s = cls(
            zoo_path=Path(settings.zoo_config or "zoo.yaml"),
            image_zoo_path=Path(settings.zoo_image_config) if settings.zoo_image_config else None,
            services=[x.strip() for x in (settings.zoo_services or "").split(",") if x.strip()],
            root=Path(settings.sagemaker_root or "/opt/ml"),
            model=settings.sagemaker_model or None,
            device=settings.zoo_device or "auto",
            budget_gb=settings.vram_budget_gb,
            host_cache_gb=settings.zoo_host_cache_gb,
            settings=settings,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SageMakerSettings:
        """`Settings.from_env(env)` (the process environment when None), then `from_settings`."""
        return cls.from_settings(Settings.from_env(env), **overrides)

    @property
    def env(self) -> Mapping[str, str]:
        """The environment snapshot taken with the settings (for overrides named from zoo.yaml)."""
        return self.settings.overrides

    def zoo_file(self) -> Path:
        if not self.zoo_path.exists() and self.image_zoo_path and self.image_zoo_path.exists():
            log.warning("zoo file %s not found; using the image's %s", self.zoo_path, self.image_zoo_path)
            return self.image_zoo_path
        return self.zoo_path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"


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
    manager: OnDemandModelManager | None = None
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
@dataclass
class BootPlan:
    """The models a container starts with, which one /invocations uses, which services they come from."""

    models: list[tuple[Registered, ResolvedArtifact]]
    default: str | None
    preload: list[str]
    owners: list[str]


def plan_models(s: SageMakerSettings, zoo: ZooConfig) -> BootPlan:
    """Decide the start-up models (see the module docstring); raises ConfigError/BadRequest."""
    if s.services:
        bases = [zoo.models_root, s.model_dir / "models", s.model_dir]
        found = service_models(zoo, s.root, s.services, bases)
        names = [r.zoo_model for r in found]
        required = [m for sv in s.services for m in zoo.services[sv].required_models]
        default = zoo_name_for(zoo, s.model) if s.model else (required or names or [None])[0]
        if s.model and default not in names:
            raise ConfigError(f"SAGEMAKER_MODEL={s.model} is not a model of ZOO_SERVICES={','.join(s.services)}")
        # loaded at start: `always` and required models, and the default when SAGEMAKER_MODEL names it
        preload = [n for n in names
                   if zoo.models[n].residency == "always" or n in required or (s.model and n == default)]
        models = [(Registered(r.zoo_model, str(r.path), r.zoo_model, r.how), r) for r in found]
        return BootPlan(models, default, preload, list(s.services))
    if s.model_dir.is_dir() and any(s.model_dir.iterdir()):
        r = resolve_artifact(zoo, s.root, s.model_dir, (s.model,))
        owner = zoo.service_of(r.zoo_model)
        reg = Registered(r.zoo_model, str(s.model_dir), r.zoo_model, r.how)
        return BootPlan([(reg, r)], reg.name, [reg.name], [owner] if owner else [])
    if s.model:
        raise ConfigError(f"SAGEMAKER_MODEL={s.model} but {s.model_dir} holds no model artifact")
    return BootPlan([], None, [], [])


async def boot(
    state: ContainerState,
    *,
    device: Device | None = None,
    registry: AdapterRegistry | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    """Plan the models, build the manager, preload; set `ready` or `error` (reported by /ping)."""
    s, zoo = state.settings, state.zoo
    try:
        plan = await asyncio.to_thread(plan_models, s, zoo)
        owners = [zoo.services[o] for o in plan.owners]
        tuning = owners[0].manager_settings() if owners else ManagerSettings()
        if device is None:
            device = await asyncio.to_thread(device_from_spec, s.device, 0)
        if s.budget_gb is not None:
            budget = int(s.budget_gb * GB)
        elif sum(o.vram_budget_gb for o in owners) > 0:
            budget = sum(o.vram_budget_bytes for o in owners)
        else:
            budget = max(await asyncio.to_thread(device.total_bytes) - tuning.headroom_bytes, 0)
        host_gb = s.host_cache_gb if s.host_cache_gb is not None else (
            sum(o.host_cache_gb for o in owners) if owners else 2.0)
        manager = OnDemandModelManager.from_settings(
            {}, tuning, device=device, registry=registry, models_root=s.root, clock=clock,
            budget_bytes=budget, host_cache_bytes=int(host_gb * GB),  # the container's, not one service's
            footprints=FootprintStore(None),  # SageMaker names are opaque: footprints live per process
        )
        table = ModelTable(manager)
        for reg, resolved in plan.models:
            table.register(reg, resolved.spec)
        state.manager, state.table, state.default_model = manager, table, plan.default
        log.info("sagemaker container: device %s, budget %.0f MB, root %s, models %s, default %s",
                 device.name, budget / MB, s.root, list(table.models), plan.default)
        await manager.start()  # `always` models (failures kept for status) and the idle sweeper
        for name in plan.preload:
            await manager.preload(name)
        state.ready = True
    except ServingError as e:
        state.error = e.message
        log.error("sagemaker container failed to start: %s", e.message)
    except Exception as e:  # reported by /ping, never silent
        state.error = f"{type(e).__name__}: {e}"
        log.exception("sagemaker container failed to start")


async def invoke(state: ContainerState, name: str | None, request: Request) -> JSONResponse:
    """Run one request on `name` (None: the payload's `model`, else the default model)."""
    table = state.require_table()
    payload = await read_payload(request, state.limits)
    name = name or payload.model or state.default_model
    if name is None:
        raise NotFound(
            f"no model for /invocations: ship an artifact in {state.settings.model_dir}, set SAGEMAKER_MODEL, "
            "name one with the option `model`, or on a multi-model endpoint call /models/{name}/invoke")
    reg = table.get(name)
    manager = table.manager
    inputs, options = payload.inputs, payload.options
    spec = manager.model_view(name).spec
    options = check_options(spec.family, options, model=name)  # 400 before any model runs
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
    # the container chose its zoo file already (ZOO_CONFIG, else the image's): load exactly that one
    zoo = load_zoo(settings.zoo_file(), settings=settings.settings.model_copy(update={"zoo_config": None}))
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
    app.include_router(router)
    return app


# ------------------------------------------------------------------------------------------- routes
router = APIRouter()


def _state(request: Request) -> ContainerState:
    state: ContainerState = request.app.state.sagemaker
    return state


@router.get("/ping")
async def ping(request: Request) -> Response:
    state = _state(request)
    if state.error:
        return JSONResponse({"status": "failed", "message": state.error}, status_code=503)
    if not state.ready or state.manager is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    if not state.manager.healthy():
        return JSONResponse({"status": "unhealthy", "message": str(state.manager.view().sweeper_error)},
                            status_code=503)
    return Response(status_code=200)


@router.post("/invocations")
async def invocations(request: Request) -> JSONResponse:
    return await invoke(_state(request), None, request)


@router.post("/models")
async def load_model(body: LoadModelRequest, request: Request) -> JSONResponse:
    state = _state(request)
    table = state.require_table()
    if body.model_name in table.models:  # 409 before touching the artifact
        raise Conflict(f"model {body.model_name!r} is already loaded", details={"model": body.model_name})
    hints = (request.headers.get(TARGET_MODEL_HEADER), body.model_name)
    resolved = await asyncio.to_thread(
        resolve_artifact, state.zoo, state.settings.root, body.url, hints, residency="on_demand")
    reg = Registered(body.model_name, body.url, resolved.zoo_model, resolved.how)
    return JSONResponse(await table.load(reg, resolved.spec))


@router.get("/models")
async def list_models(
    request: Request,
    next_page_token: str | None = Query(None),
    page_size: int | None = Query(None, ge=1, le=10_000),
    limit: int | None = Query(None, ge=1, le=10_000),
) -> JSONResponse:
    return JSONResponse(_state(request).require_table().page(next_page_token, page_size or limit))


@router.get("/models/{name}")
async def get_model(name: str, request: Request) -> JSONResponse:
    table = _state(request).require_table()
    return JSONResponse(table.get(name).describe(table.manager))


@router.delete("/models/{name}")
async def unload_model(name: str, request: Request) -> JSONResponse:
    state = _state(request)
    await state.require_table().unload(name)
    if state.default_model == name:
        state.default_model = None
    return JSONResponse({"modelName": name, "status": "unloaded"})


@router.post("/models/{name}/invoke")
async def invoke_model(name: str, request: Request) -> JSONResponse:
    return await invoke(_state(request), name, request)
