"""The control plane as the gateway mounts it: one public entry, so the HTTP layer knows no control internals.

`ControlPlane.over_http(zoo, urls, client, settings=..., admin_token=...)` builds the thermal controller
over every model service's manager (HTTP) and the 38 catalog models, its store (SQLite under models_root
unless DATABASE_URL), the notifier, the service board (zoo and mid-level services), and one router with
the thermal API of seed 000 (/thermal/...) and its /api/v2 form (camelCase bodies, registry stats and
listing, services with admin states, server-sent events); the gateway mounts `router` and runs
`start()` / `stop()` in its lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import APIRouter

from serving.config import ZooConfig
from serving.control.access import Access
from serving.control.api import thermal_router
from serving.control.api_v2 import v2_router
from serving.control.catalog import Catalog, default_catalog
from serving.control.managers import HttpManagerClient, ManagerSeam
from serving.control.notifier import Notifier
from serving.control.services_board import ServiceBoard
from serving.control.store import ControlStore, database_url
from serving.control.thermal import ThermalController
from serving.settings import Settings


@dataclass
class ControlPlane:
    """Thermal controller + store + notifier + service board + router of one gateway."""

    controller: ThermalController
    store: ControlStore
    router: APIRouter
    notifier: Notifier
    board: ServiceBoard

    @classmethod
    def build(cls, zoo: ZooConfig, managers: dict[str, ManagerSeam], store: ControlStore, *, access: Access,
              catalog: Catalog | None = None, **controller_kw: object) -> ControlPlane:
        """The plane over any manager seams (HTTP in the gateway, in-process in tests)."""
        catalog = catalog or default_catalog()
        controller = ThermalController(zoo, managers, store, catalog=catalog, **controller_kw)  # type: ignore[arg-type]
        notifier = Notifier(controller.clock)
        board = ServiceBoard(controller, notifier)

        def on_event(event: str, fields: dict) -> None:
            notifier.on_controller_event(event, fields)
            board.refresh()

        controller.add_listener(on_event)
        router = APIRouter()
        router.include_router(thermal_router(controller, access=access))
        router.include_router(v2_router(controller, board, notifier, catalog, access))
        return cls(controller, store, router, notifier, board)

    @classmethod
    def over_http(cls, zoo: ZooConfig, urls: dict[str, str], client: httpx.AsyncClient, *, settings: Settings,
                  admin_token: str | None) -> ControlPlane:
        """`urls`: base URL of every service (serving.router.fanout.service_urls); the gateway's own is skipped."""
        managers: dict[str, ManagerSeam] = {
            name: HttpManagerClient(urls[name], client, admin_token=admin_token)
            for name, spec in zoo.services.items() if spec.kind != "gateway"}
        store = ControlStore(database_url(settings, default_path=Path(zoo.models_root) / ".zoo-control.sqlite3"))
        access = Access(admin_token=admin_token, read_token=settings.zoo_settings_read_token,
                        write_token=settings.zoo_settings_write_token, bind_host=settings.zoo_bind_host)
        return cls.build(zoo, managers, store, access=access, tick_interval_s=settings.zoo_thermal_tick_s,
                         idle_check=settings.zoo_thermal_idle_check)

    async def start(self) -> None:
        await self.controller.start()
        await self.board.load()

    async def stop(self) -> None:
        """Stop the controller (flushing its pending writes), then close the store."""
        try:
            await self.controller.stop()
        finally:
            self.store.close()
