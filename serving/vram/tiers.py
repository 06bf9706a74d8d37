"""The tier mover: every change of a model's tier (HOT <-> WARM <-> COLD, FAILED) and its adapter calls.

`TierMover` brings a model up (cold load with measurement, or warm restore), demotes it (offload to the
host tier or unload), makes room in the host tier, loads straight into the host tier and sweeps idle
models. It does not import the manager: the manager composes one and hands it the state it owns (the
entries, the ledger, the set of in-flight loads) plus its seams (device, registry, runner, clock, event
sink). Same concurrency model as the manager (serving/vram/manager.py): it runs on the manager's event
loop, every ledger write is synchronous, and blocking adapter calls go through the runner while the
entry is marked in transition (`busy_future`) or its load is in flight.
Which WARM model leaves the host tier first is the policy's (`policy.warm_demotion_order`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from pathlib import Path

from serving.adapters.base import Adapter
from serving.adapters.registry import AdapterRegistry
from serving.errors import InsufficientVram, ModelLoadFailed
from serving.vram import events as ev
from serving.vram.devices import Device
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.footprints import Footprint, FootprintStore
from serving.vram.ledger import Ledger
from serving.vram.policy import warm_demotion_order
from serving.vram.runner import Runner
from serving.vram.snapshot import warm_candidates


class TierMover:
    """Moves models between tiers; see the module docstring. `loading` is the manager's live set of
    in-flight loads (read only); `load_slot` bounds concurrent loads on the device (host-tier loads too)."""

    def __init__(
        self,
        *,
        entries: Mapping[str, ModelEntry],
        ledger: Ledger,
        device: Device,
        registry: AdapterRegistry,
        models_root: Path,
        footprints: FootprintStore,
        runner: Runner,
        clock: Callable[[], float],
        emit: Callable[[ev.ManagerEvent], None],
        notify: Callable[[], Awaitable[None]],
        loading: Container[str],
        load_slot: asyncio.Semaphore,
        backoff_base_s: float,
        backoff_max_s: float,
    ) -> None:
        self.entries, self.ledger, self.device, self.registry = entries, ledger, device, registry
        self.models_root, self.footprints, self.runner, self.clock = models_root, footprints, runner, clock
        self.emit, self.notify, self.loading, self.load_slot = emit, notify, loading, load_slot
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s

    async def new_adapter(self, e: ModelEntry) -> Adapter:
        """A fresh adapter for `e` (weights not loaded). Off the loop: the first one of a family imports its
        framework (seconds for ultralytics or transformers) and paths are resolved on disk."""
        adapter: Adapter = await self.runner(self.registry.create, e.name, e.spec, self.models_root, self.device)
        return adapter

    # ------------------------------------------------------------------ up: COLD/WARM -> HOT
    async def bring_up(self, e: ModelEntry) -> None:
        """COLD/WARM -> HOT with measurement. The reservation for `e` is already in the ledger."""
        start = self.clock()
        t0 = time.perf_counter()
        before = await self.runner(self.device.allocated_bytes)  # probes off the loop (CUDA may block)
        from_tier = e.tier
        if e.tier == WARM and e.adapter is not None:
            await self.runner(e.adapter.restore)
            self.ledger.host.release(e.name)
            restore_wall = time.perf_counter() - t0
            e.restore_s = max(self.clock() - start, 0.0) or restore_wall
            await self._record_restore(e, e.restore_s)
        else:
            if e.adapter is None:  # single-flight: only this load task touches e now
                e.adapter = await self.new_adapter(e)
            await self.runner(e.adapter.load)
            await self.runner(self.device.reset_peak)
            load_delta = await self.runner(self.device.allocated_bytes) - before
            await self.runner(e.adapter.warmup)
            peak_delta = await self.runner(self.device.peak_bytes) - before
            if not self.device.measures_allocations:
                load_delta = peak_delta = await self.runner(e.adapter.param_bytes)
            own = getattr(e.adapter, "device_bytes", None)  # allocations torch cannot see (llama.cpp, NVML)
            if own is not None:
                outside = int(await self.runner(own))
                load_delta, peak_delta = max(load_delta, outside), max(peak_delta, outside)
            e.load_s = max(self.clock() - start, 0.0) or (time.perf_counter() - t0)
            await self._record_footprint(e, max(load_delta, 0), max(peak_delta, 0))
        e.tier = HOT
        e.failures = 0
        e.last_error = None
        self._fit_reservation(e)
        seconds = time.perf_counter() - t0
        self.emit(ev.Restore(e.name, seconds) if from_tier == WARM else ev.Load(e.name, from_tier, HOT, seconds))

    async def _record_footprint(self, e: ModelEntry, load_bytes: int, peak_bytes: int) -> None:
        assert e.adapter is not None
        e.measured_bytes = max(load_bytes, peak_bytes) or None
        if e.measured_bytes is None:
            return
        fmt, dtype = e.adapter.format or "unknown", e.adapter.dtype
        prev = self.footprints.lookup(e.name, self.device.hardware_name, fmt, dtype)
        info = getattr(e.adapter, "load_info", None)  # serving.adapters.weights.LoadInfo, when the family says
        self.footprints.record(
            Footprint(
                model=e.name, format=fmt, device=self.device.hardware_name, dtype=dtype, load_bytes=load_bytes,
                peak_bytes=peak_bytes, load_s=e.load_s, restore_s=prev.restore_s if prev else None,
                restores=prev.restores if prev else 0, measured_at=self.clock(),
                loader=getattr(info, "loader", None), direct_load=getattr(info, "direct", None),
                load_note=getattr(info, "note", "") or "",
            )
        )
        await self.runner(self.footprints.save)  # file I/O off the loop

    async def _record_restore(self, e: ModelEntry, seconds: float) -> None:
        """A restore's time goes to the footprint's restore_s, apart from the cold load's load_s."""
        assert e.adapter is not None
        changed = self.footprints.record_restore(e.name, self.device.hardware_name, e.adapter.format or "unknown",
                                                 e.adapter.dtype, seconds)
        if changed:
            await self.runner(self.footprints.save)

    def _fit_reservation(self, e: ModelEntry) -> None:
        """After a load, the reservation becomes the measured footprint when that still fits."""
        actual = e.measured_bytes or self.ledger.device.get(e.name)
        if self.ledger.device.fits(actual, replacing=e.name):
            self.ledger.device.reserve(e.name, actual)
        # else: keep the larger reservation already held; the next admission uses the measured figure

    async def fail(self, e: ModelEntry, exc: BaseException) -> None:
        """A failed load leaves no reservation and no half-loaded weights behind; retried after a backoff."""
        self.ledger.device.release(e.name)
        self.ledger.host.release(e.name)
        if e.adapter is not None:
            with contextlib.suppress(Exception):
                await self.runner(e.adapter.unload)
        e.adapter = None
        e.failures += 1
        e.last_error = f"{type(exc).__name__}: {exc}"
        delay = min(self.backoff_base_s * (2 ** (e.failures - 1)), self.backoff_max_s)
        e.next_retry_at = self.clock() + delay
        e.tier = FAILED
        self.emit(ev.LoadFailed(e.name, e.last_error))

    def check_backoff(self, e: ModelEntry) -> None:
        """ModelLoadFailed (503 + Retry-After) while a FAILED model waits for its next retry."""
        if e.tier == FAILED and self.clock() < e.next_retry_at:
            raise ModelLoadFailed(
                f"model {e.name!r} failed to load ({e.last_error}); "
                f"next retry in {e.next_retry_at - self.clock():.1f}s",
                retry_after=max(e.next_retry_at - self.clock(), 0.1),
                details={"model": e.name, "failures": e.failures},
            )

    def load_error(self, e: ModelEntry, exc: BaseException) -> Exception:
        """The error a caller sees for a failed load (typed errors pass through)."""
        if isinstance(exc, (InsufficientVram, ModelLoadFailed)):
            return exc
        retry = max(e.next_retry_at - self.clock(), 0.1)
        return ModelLoadFailed(f"loading {e.name!r} failed: {exc}", retry_after=retry, details={"model": e.name})

    # ------------------------------------------------------------------ down: HOT -> WARM -> COLD
    async def evict(self, names: list[str], reason: str) -> None:
        """Demote each named model that is still HOT, unleased and not in transition (HOT -> WARM/COLD)."""
        for n in names:
            x = self.entries[n]
            if x.tier == HOT and x.refcount == 0 and not x.busy:
                await self.demote(x, WARM, reason=reason)

    async def demote(self, x: ModelEntry, target: str, reason: str) -> None:
        """HOT -> WARM (when the host tier can hold it) or -> COLD; WARM -> COLD."""
        assert x.adapter is not None
        x.busy_future = asyncio.get_running_loop().create_future()
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
            self.emit(ev.Evict(x.name, reason, from_tier, x.tier))
        finally:
            fut, x.busy_future = x.busy_future, None
            fut.set_result(None)
        await self.notify()

    async def _make_host_room(self, x: ModelEntry, estimate: int | None = None) -> bool:
        """Reserve host-tier bytes for x (its parked size, or `estimate` before it is loaded), demoting WARM
        models to COLD in the policy's order until it fits. False when the host tier cannot hold it."""
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
        warm = warm_candidates(self.entries.values(), self.ledger, exclude=x.name, loading=self.loading)
        for name in warm_demotion_order(warm):
            if host.fits(need):
                break
            w = self.entries.get(name)
            if w is not None and w.tier == WARM and not w.busy:  # still WARM after the awaits above
                await self.demote(w, COLD, reason="host_capacity")
        if not host.fits(need):
            return False
        host.reserve(x.name, need)
        return True

    async def sweep(self) -> list[tuple[str, str]]:
        """Demote idle models past keep_alive: HOT -> WARM -> COLD. Returns (model, new tier) pairs."""
        now = self.clock()
        changes = []
        for x in list(self.entries.values()):
            if x.refcount > 0 or x.busy or x.pinned or x.name in self.loading:
                continue
            if x.spec.residency == "always" and x.thermal_state is None:
                continue
            idle = now - x.last_used
            if x.tier == HOT and idle >= x.keep_alive_s:
                await self.demote(x, WARM, reason="idle")
                changes.append((x.name, x.tier))
            elif x.tier == WARM and idle >= 2 * x.keep_alive_s and not x.keep_warm:
                await self.demote(x, COLD, reason="idle")
                changes.append((x.name, x.tier))
        if changes:  # idle means idle: freed weights go back to the OS (malloc_trim, caches, pinned pool)
            await self.runner(self.device.release_host_memory)
        return changes

    # ------------------------------------------------------------------ straight into the host tier
    async def load_to_host(self, e: ModelEntry, estimate: int) -> None:
        """COLD -> WARM without device memory (thermal WARM). Host room first, then the load slot."""
        assert e.adapter is not None
        e.busy_future = asyncio.get_running_loop().create_future()  # requests wait, then restore
        try:
            if not await self._make_host_room(e, estimate):
                raise InsufficientVram(f"the host warm tier cannot hold {e.name!r}", details={"model": e.name})
            t0 = time.perf_counter()
            try:
                async with self.load_slot:
                    await self.runner(e.adapter.load_to_host)
            except BaseException as exc:
                self.ledger.host.release(e.name)
                if not isinstance(exc, Exception):  # cancelled: no reservation left, not a failure
                    raise
                await self.fail(e, exc)
                raise self.load_error(e, exc) from exc
            actual = int(await self.runner(e.adapter.param_bytes)) or estimate
            if self.ledger.host.fits(actual, replacing=e.name):
                self.ledger.host.reserve(e.name, actual)
            e.host_bytes = actual
            e.tier = WARM
            e.failures = 0
            e.last_error = None
            e.last_used = self.clock()
            self.emit(ev.Load(e.name, COLD, WARM, time.perf_counter() - t0))
        finally:
            fut, e.busy_future = e.busy_future, None
            fut.set_result(None)
        await self.notify()
