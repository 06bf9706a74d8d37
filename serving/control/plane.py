"""The control plane as the gateway mounts it: one public entry, so the HTTP layer knows no control internals.

`ControlPlane.over_http(zoo, urls, client, settings=..., admin_token=...)` builds the thermal controller
over every model service's manager (HTTP), its store (SQLite under models_root unless DATABASE_URL), and
the seed-000 thermal router; the gateway mounts `router` and runs `start()` / `stop()` in its lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import APIRouter

from serving.config import ZooConfig
from serving.control.api import thermal_router
from serving.control.managers import HttpManagerClient
from serving.control.store import ControlStore, database_url
from serving.control.thermal import ThermalController
from serving.settings import Settings


@dataclass
class ControlPlane:
    """Thermal controller + store + router of one gateway."""

    controller: ThermalController
    store: ControlStore
    router: APIRouter

    @classmethod
    def over_http(cls, zoo: ZooConfig, urls: dict[str, str], client: httpx.AsyncClient, *, settings: Settings,
                  admin_token: str | None) -> ControlPlane:
        """`urls`: base URL of every service (serving.router.fanout.service_urls); the gateway's own is skipped."""
        managers = {name: HttpManagerClient(urls[name], client, admin_token=admin_token)
                    for name, spec in zoo.services.items() if spec.kind != "gateway"}
        store = ControlStore(database_url(settings, default_path=Path(zoo.models_root) / ".zoo-control.sqlite3"))
        controller = ThermalController(zoo, managers, store, tick_interval_s=settings.zoo_thermal_tick_s)
        return cls(controller, store, thermal_router(controller, admin_token=admin_token))

    async def start(self) -> None:
        await self.controller.start()

    async def stop(self) -> None:
        """Stop the controller (flushing its pending writes), then close the store."""
        try:
            await self.controller.stop()
        finally:
            self.store.close()
