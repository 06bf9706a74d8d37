"""Model administration routes of every model service (the manager's public methods over HTTP).

    GET  /models/status       manager.status() (seed 003 "Model Status Endpoint" + extras)
    POST /models/preload      {"model": name} | {"models": [...]}, "tier": hot|warm, or ?model_name=NAME (admin)
    POST /models/unload       {"model": name} | {"models": [...], "to": "cold"|"warm"} (admin)
    POST /models/configure    {model, disabled?, pinned?, keep_alive_s?, keep_warm?, thermal_state?} (admin)
Admin routes need `Authorization: Bearer <ZOO_ADMIN_TOKEN>` when a token is configured (401 otherwise).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.errors import BadRequest
from serving.services.common import require_admin, require_manager, require_model
from serving.services.context import Ctx
from serving.vram.status import ManagerStatus

router = APIRouter(tags=["models"])


class ModelsRequest(BaseModel):
    """Body of /models/preload and /models/unload: one model or a list."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, max_length=200, description="One model name.")
    models: list[str] | None = Field(None, max_length=256, description="Several model names.")
    to: str = Field("cold", pattern="^(?i:cold|warm)$",
                    description="unload only: demote to cold (disk) or warm (host RAM).")
    tier: str = Field("hot", pattern="^(?i:hot|warm)$",
                      description="preload only: hot = on the device; warm = on the device when it fits without "
                                  "evicting anything, else straight into the host warm tier.")

    @model_validator(mode="after")
    def _one_of(self) -> ModelsRequest:
        if not self.model and not self.models:
            raise ValueError("give 'model' or 'models'")
        return self

    def names(self) -> list[str]:
        return ([self.model] if self.model else []) + list(self.models or [])


class ConfigureRequest(BaseModel):
    """Body of /models/configure (the thermal seam of the control plane)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str = Field(max_length=200)
    disabled: bool | None = None
    pinned: bool | None = None
    keep_alive_s: float | None = Field(None, ge=0, le=365 * 86400.0,
                                       description="Idle seconds before unloading (finite, at most a year).")
    keep_warm: bool | None = None
    thermal_state: str | None = Field(None, pattern="^(OFF|COLD|WARM|HOT|AUTOMATIC)$")


class ModelsActionResponse(BaseModel):
    """Answer of /models/preload and /models/unload: each model's status after the action."""

    model_config = ConfigDict(extra="allow")
    status: str = Field(description="loaded | unloaded")
    models: list[dict[str, Any]] = Field(description="manager.model_status of each model, in request order.")
    vram_used_mb: float


class ModelStatus(BaseModel):
    """One model's status (manager.model_status): name, tier, footprint, thermal fields, ..."""

    model_config = ConfigDict(extra="allow")
    name: str


@router.get("/models/status", response_model=ManagerStatus)
async def models_status(ctx: Ctx) -> dict[str, Any]:
    return require_manager(ctx).status()


@router.post("/models/preload", response_model=ModelsActionResponse, dependencies=[Depends(require_admin)])
async def models_preload(ctx: Ctx, body: Annotated[ModelsRequest | None, Body()] = None,
                         model_name: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    """JSON body, or `?model_name=NAME` without a body (the reference enrichment client's form)."""
    manager = require_manager(ctx)
    if body is None:
        if not model_name:
            raise BadRequest("give {'model': name} or ?model_name=NAME")
        body = ModelsRequest(model=model_name)
    names = [require_model(ctx, n) for n in body.names()]
    load = manager.prewarm if body.tier.lower() == "warm" else manager.preload
    results = await asyncio.gather(*(load(n) for n in names))
    return {"status": "loaded", "models": list(results), "vram_used_mb": manager.status()["vram_used_mb"]}


@router.post("/models/unload", response_model=ModelsActionResponse, dependencies=[Depends(require_admin)])
async def models_unload(body: ModelsRequest, ctx: Ctx) -> dict[str, Any]:
    manager = require_manager(ctx)
    names = [require_model(ctx, n) for n in body.names()]
    results = [await manager.unload(n, to=body.to.upper()) for n in names]
    return {"status": "unloaded", "models": results, "vram_used_mb": manager.status()["vram_used_mb"]}


@router.post("/models/configure", response_model=ModelStatus, dependencies=[Depends(require_admin)])
async def models_configure(body: ConfigureRequest, ctx: Ctx) -> dict[str, Any]:
    manager = require_manager(ctx)
    require_model(ctx, body.model)
    manager.configure(body.model, **body.model_dump(exclude={"model"}, exclude_none=True))
    return manager.model_status(body.model)

