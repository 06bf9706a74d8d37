"""The control plane under /api/v2, as seeds 000 and 001 write it: camelCase bodies, registry, services,
notifications. The snake_case routes of serving.control.api stay as they are.

    GET  /api/v2/thermal/models[?service=&state=]     settings:read    {"total", "models": [...]}
    GET  /api/v2/thermal/models/{id}                  settings:read
    PUT  /api/v2/thermal/models/{id}                  settings:write   {"targetState": "WARM"}
    POST /api/v2/thermal/bulk                         settings:write   {"updates": [{"modelId", "targetState"}]}
                                                                       or {"modelIds": [...], "targetState"}
    POST /api/v2/thermal/warm/{id}                    API users (settings:read beyond loopback)   202
    GET  /api/v2/thermal/metrics                      settings:read
    GET  /api/v2/thermal/events                       settings:read    server-sent events (the notifier)
    WS   /api/v2/thermal/ws                           settings:read    the same notifications as JSON messages
    GET  /api/v2/admin/registry/models                settings:read    ?category=&hostingType=&status=
                                                                       &thermalState=&hosting=&capability=
    GET  /api/v2/admin/registry/stats                 settings:read
    GET  /api/v2/services                             settings:read    every service with its state
    GET  /api/v2/services/{id}  (= /api/v2/{id}/status)  settings:read
    PUT  /api/v2/services/{id}                        settings:write   {"adminState": "DISABLED" | "ENABLED"}
    POST /api/v2/select                               settings:read    {"task"?, "capabilities"?, "warmInBackground"?}
`?wait=true` on writes returns once applied. Errors are `ServingError`s rendered by the app's one handler;
bodies are pydantic models (unknown fields ignored, wrong types 422 with error_type).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette.sse import EventSourceResponse

from serving.config import ThermalState
from serving.control.access import Access
from serving.control.catalog import Catalog
from serving.control.notifier import Notifier
from serving.control.registry import filter_rows, registry_rows, registry_stats
from serving.control.services_board import ServiceBoard
from serving.control.thermal import ThermalController
from serving.errors import ServingError

ModelId = Annotated[str, Field(min_length=1, max_length=100)]


#: fields whose value is a map keyed by model, service or state names: those keys are data, kept as they are
ID_KEYED = frozenset({"usage", "errors", "skipped", "services_reachable", "by_current_state", "by_target_state",
                      "states"})


def _camel_key(k: Any) -> Any:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k) if isinstance(k, str) else k


def camel(obj: Any) -> Any:
    """snake_case field names -> camelCase, recursively; names used as keys (ID_KEYED maps) stay."""
    if isinstance(obj, dict):
        return {_camel_key(k): ({kk: camel(vv) for kk, vv in v.items()} if k in ID_KEYED and isinstance(v, dict)
                                else camel(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TargetBody(_Body):
    """PUT /api/v2/thermal/models/{id}."""

    target_state: ThermalState = Field(alias="targetState", description="OFF, COLD, WARM, HOT or AUTOMATIC")

    @field_validator("target_state", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class BulkUpdate(TargetBody):
    model_id: ModelId = Field(alias="modelId")


class BulkBody(_Body):
    """POST /api/v2/thermal/bulk: updates, or model ids with one target state."""

    updates: list[BulkUpdate] | None = Field(None, max_length=500)
    model_ids: list[ModelId] | None = Field(None, alias="modelIds", min_length=1, max_length=500)
    target_state: ThermalState | None = Field(None, alias="targetState")

    @field_validator("target_state", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    def pairs(self) -> list[tuple[str, ThermalState]]:
        if self.updates:
            return [(u.model_id, u.target_state) for u in self.updates]
        if self.model_ids and self.target_state is not None:
            return [(m, self.target_state) for m in self.model_ids]
        from serving.errors import BadRequest  # noqa: PLC0415

        raise BadRequest("give updates: [{modelId, targetState}] or modelIds: [...] with targetState")


class AdminBody(_Body):
    """PUT /api/v2/services/{id}."""

    admin_state: str = Field(alias="adminState", pattern="^(?i:enabled|disabled)$", max_length=10)


class SelectBody(_Body):
    task: str | None = Field(None, max_length=64)
    capabilities: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=32)
    warm_in_background: bool = Field(True, alias="warmInBackground")


def _wait(request: Request) -> bool:
    return request.query_params.get("wait", "").lower() in ("1", "true", "yes")


class V2:
    """Handlers over one controller, its service board, notifier and catalog."""

    def __init__(self, ctl: ThermalController, board: ServiceBoard, notifier: Notifier, catalog: Catalog,
                 access: Access) -> None:
        self.ctl, self.board, self.notifier, self.catalog, self.access = ctl, board, notifier, catalog, access

    async def list_models(self, request: Request, service: str | None = None, state: str | None = None,
                          ) -> dict[str, Any]:
        self.access.read(request)
        views = self.ctl.views()
        if service:
            views = [v for v in views if v["service_id"] == service]
        if state:
            views = [v for v in views if state.upper() in (v["current_state"], v["target_state"])]
        return {"total": len(views), "models": camel(views)}

    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self.access.read(request)
        view = self.ctl.view(model_id)
        view["usage"] = (await self.ctl.usage_summary()).get(model_id, {"requests": 0})
        return camel(view)

    async def put_model(self, model_id: str, body: TargetBody, request: Request) -> dict[str, Any]:
        who = self.access.write(request)
        self.ctl.set_target(model_id, body.target_state, updated_by=who)
        if _wait(request):
            await self.ctl.wait_idle()
        self.board.refresh()
        return camel(self.ctl.view(model_id))

    async def bulk(self, body: BulkBody, request: Request) -> dict[str, Any]:
        who = self.access.write(request)
        pairs = body.pairs()
        for model_id, _ in pairs:  # all or nothing
            self.ctl.get(model_id)
        for model_id, st in pairs:
            self.ctl.set_target(model_id, st, updated_by=who)
        if _wait(request):
            await self.ctl.wait_idle()
        self.board.refresh()
        return {"updated": camel([self.ctl.view(m) for m, _ in pairs])}

    async def warm(self, model_id: str, request: Request) -> JSONResponse:
        self.access.read(request)
        view = self.ctl.request_warm(model_id)
        if _wait(request):
            await self.ctl.wait_idle()
            view = self.ctl.view(model_id)
        return JSONResponse(camel(view), status_code=202)

    async def metrics(self, request: Request) -> dict[str, Any]:
        self.access.read(request)
        return camel(await self.ctl.metrics())

    async def events(self, request: Request) -> EventSourceResponse:
        self.access.read(request)
        sub = self.notifier.subscribe()

        async def gen():  # noqa: ANN202
            async for n in self.notifier.stream(sub):
                yield {"event": n.event, "id": str(n.id), "data": json.dumps(camel(n.to_dict()))}

        return EventSourceResponse(gen(), ping=15)

    async def ws(self, websocket: WebSocket) -> None:
        try:
            self.access.read(websocket)
        except ServingError as exc:
            await websocket.close(code=4401, reason=exc.message[:120])
            return
        await websocket.accept()
        sub = self.notifier.subscribe()
        nxt: asyncio.Future[Any] | None = None
        rcv: asyncio.Future[Any] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(sub.next())
                rcv = asyncio.ensure_future(websocket.receive())
                done, _ = await asyncio.wait({nxt, rcv}, return_when=asyncio.FIRST_COMPLETED)
                if rcv in done:
                    nxt.cancel()
                    if rcv.result().get("type") == "websocket.disconnect":
                        return
                    continue
                rcv.cancel()
                await websocket.send_json(camel(nxt.result().to_dict()))
        except WebSocketDisconnect:
            return
        finally:
            sub.close()
            for t in (nxt, rcv):
                if t is not None and not t.done():
                    t.cancel()
                    with contextlib.suppress(BaseException):
                        await t

    async def registry_models(self, request: Request, category: str | None = None,
                              hosting_type: Annotated[str | None, Query(alias="hostingType")] = None,
                              status: Annotated[str | None, Query(pattern="^(?i:enabled|disabled)$")] = None,
                              thermal_state: Annotated[str | None, Query(alias="thermalState")] = None,
                              hosting: str | None = None, capability: str | None = None) -> dict[str, Any]:
        self.access.read(request)
        rows = filter_rows(registry_rows(self.ctl, self.catalog), category=category, hosting_type=hosting_type,
                           status=status, thermal_state=thermal_state, hosting=hosting, capability=capability)
        return {"total": len(rows), "external": sum(1 for r in rows if r["hosting_type"] == "external"),
                "selfHosted": sum(1 for r in rows if r["hosting_type"] == "self_hosted"), "models": camel(rows)}

    async def registry_stats(self, request: Request) -> dict[str, int]:
        self.access.read(request)
        return registry_stats(registry_rows(self.ctl, self.catalog))

    async def services(self, request: Request) -> dict[str, Any]:
        self.access.read(request)
        self.board.refresh()
        views = self.board.views()
        return {"total": len(views), "services": camel(views)}

    async def service(self, service_id: str, request: Request) -> dict[str, Any]:
        self.access.read(request)
        self.board.refresh()
        return camel(self.board.view(service_id))

    async def set_service(self, service_id: str, body: AdminBody, request: Request) -> dict[str, Any]:
        who = self.access.write(request)
        return camel(await self.board.set_admin(service_id, body.admin_state, updated_by=who))

    async def select(self, body: SelectBody, request: Request) -> dict[str, Any]:
        self.access.read(request)
        sel = await self.ctl.select(body.task, body.capabilities, warm_in_background=body.warm_in_background)
        return camel(sel.to_dict())


def v2_router(ctl: ThermalController, board: ServiceBoard, notifier: Notifier, catalog: Catalog,
              access: Access) -> APIRouter:
    h = V2(ctl, board, notifier, catalog, access)
    r = APIRouter(prefix="/api/v2")
    r.add_api_route("/thermal/models", h.list_models, methods=["GET"])
    r.add_api_route("/thermal/models/{model_id}", h.get_model, methods=["GET"])
    r.add_api_route("/thermal/models/{model_id}", h.put_model, methods=["PUT"])
    r.add_api_route("/thermal/bulk", h.bulk, methods=["POST"])
    r.add_api_route("/thermal/warm/{model_id}", h.warm, methods=["POST"], status_code=202)
    r.add_api_route("/thermal/metrics", h.metrics, methods=["GET"])
    r.add_api_route("/thermal/events", h.events, methods=["GET"], response_class=EventSourceResponse)
    r.add_api_websocket_route("/thermal/ws", h.ws)
    r.add_api_route("/admin/registry/models", h.registry_models, methods=["GET"])
    r.add_api_route("/admin/registry/stats", h.registry_stats, methods=["GET"])
    r.add_api_route("/services", h.services, methods=["GET"])
    r.add_api_route("/services/{service_id}", h.service, methods=["GET"])
    r.add_api_route("/services/{service_id}", h.set_service, methods=["PUT"])
    r.add_api_route("/select", h.select, methods=["POST"])
    r.add_api_route("/{service_id}/status", h.service, methods=["GET"])
    return r
