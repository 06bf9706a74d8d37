"""HTTP API of the control plane, mounted by the gateway: the thermal API of seed 000 and POST /select.

    GET  /thermal/models              list (optional ?service=, ?state=)
    GET  /thermal/models/{id}         one model + its usage summary
    PUT  /thermal/models/{id}         {"target_state": "WARM"} (seed: {"targetState": ...})   admin
    POST /thermal/bulk                {"updates": [{"model_id", "target_state"}]} or
                                      {"model_ids": [...], "target_state": ...}               admin
    POST /thermal/warm/{id}           request a warm-up (seed: API users, no admin token)      202
    GET  /thermal/metrics             counts by state, transitions, errors, usage, idle cost
    POST /select                      {"task"?, "capabilities"?, "warm_in_background"?: true}

Writes (PUT, bulk) need `Authorization: Bearer <ZOO_ADMIN_TOKEN>` when a token is configured.
Handlers raise `ServingError`s; the app's one exception handler renders them as {error_type, message}.
PUT and bulk return at once with is_transitioning; `?wait=true` returns after the managers applied it.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.config import ThermalState
from serving.control.thermal import ThermalController
from serving.errors import BadRequest, Unauthorized

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


def admin_guard(token: str | None):
    """A check that raises Unauthorized unless the request carries the admin token (no-op when unset)."""

    def check(request: Request) -> str | None:
        if not token:
            return None
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-admin-token", "")
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("this operation needs the admin token: Authorization: Bearer <ZOO_ADMIN_TOKEN>")
        return "admin"

    return check


def thermal_router(controller: ThermalController, *, admin_token: str | None = None) -> APIRouter:
    """The thermal API and POST /select over `controller`. `admin_token` defaults to $ZOO_ADMIN_TOKEN."""
    token = admin_token if admin_token is not None else os.environ.get("ZOO_ADMIN_TOKEN") or None
    require_admin = admin_guard(token)
    router = APIRouter()

    @router.get("/thermal/models")
    async def list_models(service: str | None = None, state: str | None = None) -> dict[str, Any]:
        models = controller.views()
        if service:
            models = [m for m in models if m["service_id"] == service]
        if state:
            models = [m for m in models if state.upper() in (m["current_state"], m["target_state"])]
        return {"total": len(models), "models": models}

    @router.get("/thermal/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        view = controller.view(model_id)
        view["usage"] = (await controller.usage_summary()).get(model_id, {"requests": 0})
        return view

    @router.put("/thermal/models/{model_id}")
    async def put_model(model_id: str, request: Request) -> dict[str, Any]:
        who = require_admin(request)
        controller.get(model_id)
        state = _state_of(await _json_body(request))
        controller.set_target(model_id, state, updated_by=who)
        if _wait(request):
            await controller.wait_idle()
        return controller.view(model_id)

    @router.post("/thermal/bulk")
    async def bulk(request: Request) -> dict[str, Any]:
        who = require_admin(request)
        body = await _json_body(request)
        pairs: list[tuple[str, ThermalState]] = []
        if "updates" in body:
            if not isinstance(body["updates"], list) or not body["updates"]:
                raise BadRequest("updates must be a non-empty list of {model_id, target_state}")
            for i, u in enumerate(body["updates"]):
                if not isinstance(u, dict) or not isinstance(u.get("model_id", u.get("modelId")), str):
                    raise BadRequest(f"updates[{i}] needs model_id and target_state")
                pairs.append((u.get("model_id", u.get("modelId")), _state_of(u, f"updates[{i}].")))
        else:
            ids = body.get("model_ids", body.get("modelIds"))
            if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
                raise BadRequest("give updates: [{model_id, target_state}] or model_ids: [...] with target_state")
            state = _state_of(body)
            pairs = [(x, state) for x in ids]
        for model_id, _ in pairs:  # all or nothing: validate every id before changing anything
            controller.get(model_id)
        for model_id, state in pairs:
            controller.set_target(model_id, state, updated_by=who)
        if _wait(request):
            await controller.wait_idle()
        return {"updated": [controller.view(m) for m, _ in pairs]}

    @router.post("/thermal/warm/{model_id}", status_code=202)
    async def warm(model_id: str, request: Request) -> JSONResponse:
        view = controller.request_warm(model_id)
        if _wait(request):
            await controller.wait_idle()
            view = controller.view(model_id)
        return JSONResponse(view, status_code=202)

    @router.get("/thermal/metrics")
    async def metrics() -> dict[str, Any]:
        return await controller.metrics()

    @router.post("/select")
    async def select(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        task = body.get("task")
        caps = body.get("capabilities", [])
        if task is not None and not isinstance(task, str):
            raise BadRequest("task must be a string")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise BadRequest("capabilities must be a list of strings")
        sel = controller.select(task, caps, warm_in_background=bool(body.get("warm_in_background", True)))
        return sel.to_dict()

    return router
