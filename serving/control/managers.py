"""The seam between thermal states and the per-service model managers.

`ManagerSeam` is what the thermal controller drives. Two implementations:
- `InProcessManager`: wraps an `OnDemandModelManager` living in the same process (tests, embedded).
- `HttpManagerClient`: a service's manager over HTTP, the gateway's case:
    POST /models/configure {model, disabled?, pinned?, keep_alive_s?, keep_warm?, thermal_state?}
    POST /models/preload   {model, tier}          -> {"models": [model status], ...}
    POST /models/unload    {model, to: warm|cold} -> {"models": [model status], ...}
    GET  /models/status    (seed 003 schema + extras)
  (serving/services/app.py). Writes carry `Authorization: Bearer <admin token>` when one is given.
  Error bodies {error_type, message} come back as the matching `ServingError` subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx

from serving import errors as E
from serving.errors import ServingError, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager


@runtime_checkable
class ManagerSeam(Protocol):
    """What thermal states need from one service's manager (all async)."""

    async def configure(
        self, name: str, *, disabled: bool | None = None, pinned: bool | None = None,
        keep_alive_s: float | None = None, keep_warm: bool | None = None, thermal_state: str | None = None,
    ) -> None: ...

    async def preload(self, name: str, tier: str = "hot") -> dict[str, Any]:
        """tier="hot": on the device; "warm": on the device when it fits, else in the host warm tier."""
        ...

    async def unload(self, name: str, to: str = "cold") -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...


class InProcessManager:
    """Adapts an in-process `OnDemandModelManager` (sync configure/status) to the async seam."""

    def __init__(self, manager: OnDemandModelManager) -> None:
        self.manager = manager

    async def configure(self, name: str, **fields: Any) -> None:
        self.manager.configure(name, **{k: v for k, v in fields.items() if v is not None})

    async def preload(self, name: str, tier: str = "hot") -> dict[str, Any]:
        if tier.lower() == "warm":
            return await self.manager.prewarm(name)
        return await self.manager.preload(name)

    async def unload(self, name: str, to: str = "cold") -> dict[str, Any]:
        return await self.manager.unload(name, to=to)

    async def status(self) -> dict[str, Any]:
        return self.manager.status()


def _error_classes() -> dict[str, type[ServingError]]:
    out: dict[str, type[ServingError]] = {}
    for obj in vars(E).values():
        if isinstance(obj, type) and issubclass(obj, ServingError):
            out.setdefault(obj.error_type, obj)
    return out


_BY_TYPE = _error_classes()


class HttpManagerClient:
    """A service's manager over HTTP (base_url like http://127.0.0.1:8094). The client is injected."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, timeout_s: float = 120.0,
                 admin_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        try:
            r = await self.client.request(method, url, json=json, timeout=self.timeout_s, headers=self.headers)
        except httpx.TimeoutException as e:
            raise UpstreamTimeout(f"{method} {url} timed out") from e
        except httpx.HTTPError as e:
            raise UpstreamError(f"{method} {url} failed: {e}") from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            cls = _BY_TYPE.get(body.get("error_type", ""), UpstreamError)
            raise cls(body.get("message") or f"{method} {url} -> HTTP {r.status_code}",
                      details={"status": r.status_code})
        return r.json() if r.content else {}

    async def configure(self, name: str, **fields: Any) -> None:
        body = {"model": name} | {k: v for k, v in fields.items() if v is not None}
        await self._call("POST", "/models/configure", body)

    @staticmethod
    def _first(body: dict[str, Any]) -> dict[str, Any]:
        models = body.get("models")
        return models[0] if isinstance(models, list) and models and isinstance(models[0], dict) else body

    async def preload(self, name: str, tier: str = "hot") -> dict[str, Any]:
        return self._first(await self._call("POST", "/models/preload", {"model": name, "tier": tier.lower()}))

    async def unload(self, name: str, to: str = "cold") -> dict[str, Any]:
        return self._first(await self._call("POST", "/models/unload", {"model": name, "to": to.lower()}))

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/models/status")
