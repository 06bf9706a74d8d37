"""Eviction and demotion between tiers (HOT -> WARM -> COLD), and the idle sweeper.

A mixin of `OnDemandModelManager`, kept apart so the manager module holds leases, loads and admission
only. Same concurrency model: runs on the manager's event loop; blocking adapter calls go through the
manager's runner while the entry is marked busy.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from serving.errors import InsufficientVram, ModelDisabled, ModelLoadFailed
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.policy import Candidate

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager


class TierMixin:
    """Victim choice (through the policy), demotion to the host warm tier or to disk, idle sweeping, and
    loading straight into the host tier (thermal WARM without device room)."""

    def _candidates(self: OnDemandModelManager, exclude: str, *, include_always: bool) -> list[Candidate]:
        now = self.clock()
        out = []
        for x in self.entries.values():
            if x.name == exclude or x.tier != HOT or x.refcount > 0 or x.busy or x.pinned:
                continue
            if x.spec.residency == "always" and not include_always:
                continue
            nbytes = self.ledger.device.get(x.name)
            host_ok = self.ledger.host.budget >= (x.host_bytes or nbytes)
            reload_s = (x.restore_s or nbytes / self.pinned_bw) if host_ok else (
                x.load_s or 0.5 + nbytes / self.disk_bw)
            rate = x.rate * math.exp(-max(now - x.rate_at, 0.0) / self.RATE_TAU_S) if x.rate_at else 0.0
            out.append(
                Candidate(
                    name=x.name,
                    bytes=nbytes,
                    priority=int(x.spec.priority),
                    last_used=x.last_used,
                    keep_alive_s=x.keep_alive_s,
                    reload_s=reload_s,
                    rate=rate,
                    next_use=(self.oracle(x.name, now) if self.oracle else None),
                )
            )
        return out

    def _choose_victims(self, shortfall: int, exclude: str) -> list[str]:
        now = self.clock()
        for include_always in (False, True):  # `always` models only if nothing else frees room
            cands = self._candidates(exclude, include_always=include_always)
            if sum(c.bytes for c in cands) >= shortfall:
                return self._policy(cands, shortfall, now)
        return []

    async def _evict(self, names: list[str], reason: str) -> None:
        for n in names:
            x = self.entries[n]
            if x.tier == HOT and x.refcount == 0 and not x.busy:
                await self._demote(x, WARM, reason=reason)

    async def _evict_all_evictable(self, exclude: str, reason: str) -> None:
        names = [c.name for c in self._candidates(exclude, include_always=True)]
        await self._evict(names, reason)

    async def _demote(self, x: ModelEntry, target: str, reason: str) -> None:
        """HOT -> WARM (when the host tier can hold it) or -> COLD; WARM -> COLD."""
        assert x.adapter is not None
        loop = asyncio.get_running_loop()
        x.busy_future = loop.create_future()
        from_tier = x.tier
        try:
            if x.tier == HOT and target == WARM and await self._make_host_room(x):
                await self.runner(x.adapter.offload)
                x.tier = WARM
                self.ledger.device.release(x.name)
            else:
                await self.runner(x.adapter.unload)
                self.ledger.device.release(x.name)
                self.ledger.host.release(x.name)
                x.adapter = None
                x.tier = COLD
            self._emit("evict", model=x.name, reason=reason, from_tier=from_tier, to_tier=x.tier)
        finally:
            fut, x.busy_future = x.busy_future, None
            fut.set_result(None)
        await self._notify()

    async def _make_host_room(self, x: ModelEntry, estimate: int | None = None) -> bool:
        """Reserve host-tier bytes for x (its parked size, or `estimate` before it is loaded), demoting the
        least recently used WARM models to COLD."""
        assert x.adapter is not None
        if estimate is not None:
            need = estimate
        else:
            if x.host_bytes is None:
                x.host_bytes = int(await self.runner(x.adapter.param_bytes)) or self.ledger.device.get(x.name)
            need = x.host_bytes
        host = self.ledger.host
        if need > host.budget:
            return False
        warm = sorted(
            (w for w in self.entries.values()
             if w.tier == WARM and not w.busy and not w.keep_warm and w.name != x.name
             and w.name not in self._inflight),
            key=lambda w: (-int(w.spec.priority), w.last_used),
        )
        for w in warm:
            if host.fits(need):
                break
            await self._demote(w, COLD, reason="host_capacity")
        if not host.fits(need):
            return False
        host.reserve(x.name, need)
        return True

    # ------------------------------------------------------------------ idle sweeper
    async def sweep(self) -> list[tuple[str, str]]:
        """Demote idle models past keep_alive: HOT -> WARM -> COLD. Returns (model, new tier) pairs."""
        now = self.clock()
        changes = []
        for x in list(self.entries.values()):
            if x.refcount > 0 or x.busy or x.pinned or x.name in self._inflight:
                continue
            if x.spec.residency == "always" and x.thermal_state is None:
                continue
            idle = now - x.last_used
            if x.tier == HOT and idle >= x.keep_alive_s:
                await self._demote(x, WARM, reason="idle")
                changes.append((x.name, x.tier))
            elif x.tier == WARM and idle >= 2 * x.keep_alive_s and not x.keep_warm:
                await self._demote(x, COLD, reason="idle")
                changes.append((x.name, x.tier))
        return changes

    # ------------------------------------------------------------------ straight into the host tier
    async def prewarm(self: OnDemandModelManager, name: str) -> dict[str, Any]:
        """Thermal WARM: on the device when it fits without evicting anything, else straight into the
        host warm tier (no device memory) so the first request costs one restore, not a disk load."""
        e = self.entry(name)
        if e.disabled:
            raise ModelDisabled(f"model {name!r} is OFF (disabled by its thermal state)")
        need = self.need_bytes(e)
        if e.tier == HOT:
            return self.model_status(name)
        if need <= self.ledger.device.available and self._real_shortfall(need) == 0:
            try:
                return await self.preload(name)
            except InsufficientVram:
                pass  # the room went to other loads meanwhile (pinned or leased): park it on the host
        if e.tier == WARM or e.busy or name in self._inflight:
            return self.model_status(name)
        if e.tier == FAILED and self.clock() < e.next_retry_at:
            raise ModelLoadFailed(f"model {name!r} failed to load ({e.last_error})",
                                  retry_after=max(e.next_retry_at - self.clock(), 0.1), details={"model": name})
        if e.adapter is None:
            e.adapter = self.registry.create(e.name, e.spec, self.models_root, self.device)
        if not e.adapter.supports_host_load:
            return await self.preload(name)  # this family can only be loaded through the device
        await self._load_to_host(e, e.host_bytes or need)
        return self.model_status(name)

    async def _load_to_host(self: OnDemandModelManager, e: ModelEntry, estimate: int) -> None:
        assert e.adapter is not None
        e.busy_future = asyncio.get_running_loop().create_future()  # requests wait, then restore
        try:
            if not await self._make_host_room(e, estimate):
                raise InsufficientVram(f"the host warm tier cannot hold {e.name!r}", details={"model": e.name})
            t0 = time.perf_counter()
            try:
                await self.runner(e.adapter.load_to_host)
            except Exception as exc:
                self.ledger.host.release(e.name)
                await self._fail(e, exc)
                raise self._load_error(e, exc) from exc
            actual = int(await self.runner(e.adapter.param_bytes)) or estimate
            if self.ledger.host.fits(actual, replacing=e.name):
                self.ledger.host.reserve(e.name, actual)
            e.host_bytes = actual
            e.tier = WARM
            e.failures = 0
            e.last_error = None
            e.last_used = self.clock()
            self._emit("load", model=e.name, from_tier=COLD, to_tier=WARM, seconds=time.perf_counter() - t0)
        finally:
            fut, e.busy_future = e.busy_future, None
            fut.set_result(None)
        await self._notify()
