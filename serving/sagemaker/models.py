"""The SageMaker model table over one OnDemandModelManager.

SageMaker's multi-model endpoint loads and unloads models by name (POST /models, DELETE
/models/{name}); our manager evicts by priority inside the VRAM budget. They cooperate this way:

- "loaded" for SageMaker means *registered here*: an entry of the manager, in any tier. POST /models
  registers the model and preloads it (HOT); making room evicts unleased models by the manager's policy
  (HOT -> WARM, still registered, so SageMaker keeps routing to them and the next invoke restores them
  from the host tier with one copy).
- When even eviction cannot make room (the model is larger than the budget, or every other model is
  leased or pinned) the load fails with 507, the model is *not* registered, and SageMaker unloads
  models it considers unused and retries: its LRU and our budget then agree.
- DELETE /models/{name} retires the model (`OnDemandModelManager.retire`): OFF (new requests get 503),
  wait for its leases, free it (COLD), forget it; still in use after the wait: 503 `model_busy`.

One owner for mutable state (STYLE.md #5): the manager owns its models (`register` / `retire` are its
public methods); this table owns only SageMaker's names and urls, on the event loop, and `register` is
synchronous, with no `await` between check and write.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from serving.config import ModelSpec
from serving.errors import BadRequest, Conflict, InsufficientStorage, InsufficientVram, NotFound
from serving.vram.manager import OnDemandModelManager


@dataclass
class Registered:
    """One SageMaker model: its opaque name, its url and the zoo model it maps to."""

    name: str
    url: str
    zoo_model: str
    how: str  # manifest | hint | files | service

    def describe(self, manager: OnDemandModelManager) -> dict[str, Any]:
        status = manager.model_status(self.name)
        return {
            "modelName": self.name,
            "modelUrl": self.url,
            "zooModel": self.zoo_model,
            "tier": status["tier"],
            "vram_mb": status["vram_mb"],
            "priority": status["priority"],
            "last_used": status["last_used"],
        }


class ModelTable:
    """model_name -> Registered, in registration order, with SageMaker's pagination."""

    DEFAULT_PAGE_SIZE = 100

    def __init__(self, manager: OnDemandModelManager) -> None:
        self.manager = manager
        self.models: dict[str, Registered] = {}

    def get(self, name: str) -> Registered:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"model {name!r} is not loaded", details={"model": name}) from None

    def register(self, reg: Registered, spec: ModelSpec) -> None:
        """Register without loading (ZOO_SERVICES models: on demand, or at start when `always`)."""
        if reg.name in self.models:
            raise Conflict(f"model {reg.name!r} is already loaded", details={"model": reg.name})
        self.manager.register(reg.name, spec)
        self.models[reg.name] = reg

    async def load(self, reg: Registered, spec: ModelSpec) -> dict[str, Any]:
        """Register and preload; 409 if the name is known, 507 if the budget cannot hold it."""
        if reg.name in self.models:
            raise Conflict(f"model {reg.name!r} is already loaded", details={"model": reg.name})
        self.manager.register(reg.name, spec)  # 409 as well while the same name is still loading
        try:
            await self.manager.preload(reg.name)
        except InsufficientVram as e:
            await self._forget(reg.name)
            raise InsufficientStorage(e.message, details=e.details, retry_after=e.retry_after) from e
        except BaseException:
            await self._forget(reg.name)
            raise
        self.models[reg.name] = reg
        return reg.describe(self.manager)

    async def _forget(self, name: str) -> None:
        if self.manager.has(name):
            await self.manager.retire(name)

    async def unload(self, name: str) -> None:
        self.get(name)
        await self.manager.retire(name)
        self.models.pop(name, None)

    def page(self, next_page_token: str | None, page_size: int | None) -> dict[str, Any]:
        """One page of loaded models; `nextPageToken` only when more remain."""
        size = self.DEFAULT_PAGE_SIZE if page_size is None else page_size
        if size < 1:
            raise BadRequest("page_size must be >= 1")
        start = decode_token(next_page_token)
        names = list(self.models)
        chunk = names[start : start + size]
        body: dict[str, Any] = {"models": [{"modelName": n, "modelUrl": self.models[n].url} for n in chunk]}
        if start + size < len(names):
            body["nextPageToken"] = encode_token(start + size)
        return body


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        offset = int(value)
        if kind != "o" or offset < 0:
            raise ValueError(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(f"next_page_token {token!r} is not a token this container issued") from None
    return offset

