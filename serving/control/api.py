"""HTTP API of the control plane, mounted by the gateway: the thermal API of seed 000 and POST /select.

    GET  /thermal/models              list (optional ?service=, ?state=)
    GET  /thermal/models/{id}         one model + its usage summary
    PUT  /thermal/models/{id}         {"target_state": "WARM"} (seed: {"targetState": ...})   admin
    POST /thermal/bulk                {"updates": [{"model_id", "target_state"}]} or
                                      {"model_ids": [...], "target_state": ...}               admin
    POST /thermal/warm/{id}           request a warm-up (seed: API users, no admin token)      202
    GET  /thermal/metrics             counts by state, transitions, errors, usage, idle cost
    POST /select                      {"task"?, "capabilities"?, "warm_in_background"?: true}

Access (serving.control.access): on loopback reads are open and writes (PUT, bulk) need
`Authorization: Bearer <ZOO_ADMIN_TOKEN>` when a token is configured; bound beyond loopback, reads need
settings:read and writes settings:write (tokens passed in by the app from its `Settings`; this module
reads no environment). The same API under /api/v2 with seed-000 camelCase bodies: serving.control.api_v2.
Handlers raise `ServingError`s; the app's one exception handler renders them as {error_type, message}.
PUT and bulk return at once with is_transitioning; `?wait=true` returns after the managers applied it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.config import ThermalState
from serving.control.access import Access
from serving.control.thermal import ThermalController
from serving.errors import BadRequest

_STATES = ", ".join(s.value for s in ThermalState)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise BadRequest("request body must be a JSON object")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _state_of(body: dict[str, Any], where: str = "") -> ThermalState:
    value = body.get("target_state", body.get("targetState"))
    if value is None:
        raise BadRequest(f"{where}target_state is required (one of {_STATES})")
    try:
        return ThermalState(str(value).upper())
    except ValueError:
        raise BadRequest(f"{where}target_state {value!r} is not one of {_STATES}") from None


def _wait(request: Request) -> bool:
    return request.query_params.get("wait", "").lower() in ("1", "true", "yes")


class ThermalHandlers:
    """The route handlers over one controller (bound methods, so each route stays a small function)."""

    def __init__(self, controller: ThermalController, access: Access) -> None:
        self.controller = controller
        self.access = access
        self.require_admin = access.write

    async def list_models(self, request: Request, service: str | None = None,
                          state: str | None = None) -> dict[str, Any]:
        self.access.read(request)
        models = self.controller.views()
        if service:
            models = [m for m in models if m["service_id"] == service]
        if state:
            models = [m for m in models if state.upper() in (m["current_state"], m["target_state"])]
        return {"total": len(models), "models": models}

    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self.access.read(request)
        view = self.controller.view(model_id)
        view["usage"] = (await self.controller.usage_summary()).get(model_id, {"requests": 0})
        return view

    async def put_model(self, model_id: str, request: Request) -> dict[str, Any]:
        who = self.require_admin(request)
        self.controller.get(model_id)
        state = _state_of(await _json_body(request))
        self.controller.set_target(model_id, state, updated_by=who)
        if _wait(request):
            await self.controller.wait_idle()
        return self.controller.view(model_id)

    async def bulk(self, request: Request) -> dict[str, Any]:
        who = self.require_admin(request)
        pairs = _bulk_pairs(await _json_body(request))
        for model_id, _ in pairs:  # all or nothing: validate every id before changing anything
            self.controller.get(model_id)
        for model_id, state in pairs:
            self.controller.set_target(model_id, state, updated_by=who)
        if _wait(request):
            await self.controller.wait_idle()
        return {"updated": [self.controller.view(m) for m, _ in pairs]}

    async def warm(self, model_id: str, request: Request) -> JSONResponse:
        self.access.read(request)  # seed: API users may request a warm-up
        view = self.controller.request_warm(model_id)
        if _wait(request):
            await self.controller.wait_idle()
            view = self.controller.view(model_id)
        return JSONResponse(view, status_code=202)

    async def metrics(self, request: Request) -> dict[str, Any]:
        self.access.read(request)
        return await self.controller.metrics()

    async def select(self, request: Request) -> dict[str, Any]:
        self.access.read(request)
        body = await _json_body(request)
        task = body.get("task")
        caps = body.get("capabilities", [])
        if task is not None and not isinstance(task, str):
            raise BadRequest("task must be a string")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise BadRequest("capabilities must be a list of strings")
        sel = await self.controller.select(task, caps, warm_in_background=bool(body.get("warm_in_background", True)))
        return sel.to_dict()


def _bulk_pairs(body: dict[str, Any]) -> list[tuple[str, ThermalState]]:
    """(model, state) pairs of a bulk body: {"updates": [{model_id, target_state}]} or {"model_ids", "target_state"}."""
    if "updates" not in body:
        ids = body.get("model_ids", body.get("modelIds"))
        if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
            raise BadRequest("give updates: [{model_id, target_state}] or model_ids: [...] with target_state")
        state = _state_of(body)
        return [(x, state) for x in ids]
    if not isinstance(body["updates"], list) or not body["updates"]:
        raise BadRequest("updates must be a non-empty list of {model_id, target_state}")
    pairs = []
    for i, u in enumerate(body["updates"]):
        if not isinstance(u, dict) or not isinstance(u.get("model_id", u.get("modelId")), str):
            raise BadRequest(f"updates[{i}] needs model_id and target_state")
        pairs.append((u.get("model_id", u.get("modelId")), _state_of(u, f"updates[{i}].")))
    return pairs


def thermal_router(controller: ThermalController, *, admin_token: str | None = None,
                   access: Access | None = None) -> APIRouter:
    """The thermal API and POST /select over `controller`. `access` says who may read and write; without it,
    writes need `admin_token` when it is set and reads are open (loopback)."""
    h = ThermalHandlers(controller, access or Access(admin_token=admin_token))
    router = APIRouter()
    router.add_api_route("/thermal/models", h.list_models, methods=["GET"])
    router.add_api_route("/thermal/models/{model_id}", h.get_model, methods=["GET"])
    router.add_api_route("/thermal/models/{model_id}", h.put_model, methods=["PUT"])
    router.add_api_route("/thermal/bulk", h.bulk, methods=["POST"])
    router.add_api_route("/thermal/warm/{model_id}", h.warm, methods=["POST"], status_code=202)
    router.add_api_route("/thermal/metrics", h.metrics, methods=["GET"])
    router.add_api_route("/select", h.select, methods=["POST"])
    return router
