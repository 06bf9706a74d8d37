"""The typed context of one service process, and the FastAPI dependency that hands it to handlers.

`create_app` (serving/services/app.py) builds one `ServiceContext` and stores it on `app.state.ctx`;
routers are module-level `APIRouter`s whose handlers take `ctx: Ctx` (a dependency reading
`request.app.state.ctx`), so a router module holds no per-app state of its own. What a service adds at
start-up (the detection batcher, the LLM backend, the gateway's fan-out) is set by that service's lifespan
on a typed field below, never in a free-form dict.

State ownership: the fields are written once, at build time or in a lifespan before the first request,
and only read afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import Depends, Request

from serving.config import ServiceSpec, ZooConfig
from serving.services.limits import Limits
from serving.services.metrics import Metrics
from serving.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from serving.control.plane import ControlPlane
    from serving.router.breaker import Breakers, HealthProber
    from serving.router.fanout import EnrichmentRouter
    from serving.router.pipeline import FramePipeline
    from serving.services.activity import ActivityLog
    from serving.services.batching import DynamicBatcher
    from serving.services.llm_backend import LLMBackend
    from serving.services.model_queue import ModelScheduler
    from serving.vram.manager import OnDemandModelManager

#: extra fields merged into GET /health (e.g. the LLM upstream's reachability); may override status/state
HealthProbe = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class GatewayState:
    """What the gateway's lifespan builds: one httpx client shared by the fan-out and the pipeline."""

    client: httpx.AsyncClient
    urls: dict[str, str]
    enricher: EnrichmentRouter
    pipeline: FramePipeline
    #: the thermal controller, its store and router when the thermal API is mounted (started by the lifespan)
    control: ControlPlane | None = None
    #: per-upstream circuit breakers in the client's transport and their /health prober (None when ZOO_BREAKER=0)
    breakers: Breakers | None = None
    prober: HealthProber | None = None


@dataclass
class ServiceContext:
    """Everything a service's handlers need; built once per app by `create_app`."""

    zoo: ZooConfig
    service: str
    spec: ServiceSpec
    settings: Settings
    #: None for the gateway (it hosts no models)
    manager: OnDemandModelManager | None
    limits: Limits
    #: ZOO_ADMIN_TOKEN: admin routes need `Authorization: Bearer <token>` when set
    admin_token: str | None
    metrics: Metrics
    #: injected HTTP transport of outgoing calls (gateway fan-out, LLM upstream); tests pass a MockTransport
    http_transport: httpx.AsyncBaseTransport | None = None
    #: an enrichment service's client for its sibling: `http_transport` behind per-sibling circuit breakers
    #: (serving/services/sibling.py `sibling_circuits`), set by its lifespan
    sibling_client: httpx.AsyncClient | None = None
    #: the detection service's dynamic batcher (serving/services/detection.py), set by its lifespan
    batcher: DynamicBatcher[Any, dict[str, Any]] | None = None
    #: the LLM service's backend (local model or upstream), set by its lifespan
    llm: LLMBackend | None = None
    #: the gateway's fan-out, pipeline and client, set by its lifespan
    gateway: GatewayState | None = None
    #: a service's contribution to GET /health
    health_probe: HealthProbe | None = None
    #: recent manager events for the status page (serving/services/activity.py); None on the gateway
    activity: ActivityLog | None = None
    #: the model-major scheduler every model run goes through (serving/services/model_queue.py); None on the
    #: gateway and when zoo.yaml `scheduler.enabled` is false
    scheduler: ModelScheduler | None = None


def get_context(request: Request) -> ServiceContext:
    """FastAPI dependency: the context of the app serving `request`."""
    return request.app.state.ctx


#: handler parameter type: `async def route(ctx: Ctx, ...)`
Ctx = Annotated[ServiceContext, Depends(get_context)]
