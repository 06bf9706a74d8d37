"""OnDemandModelManager: leases, single-flight loads, admission inside a VRAM budget, tiers.

Concurrency model (STYLE.md #5): one asyncio event loop owns all mutable state. Every check-then-write
on entries and the ledger happens synchronously (no `await` in between); blocking work (adapter load,
offload, restore, unload, inference) runs in worker threads through the injected `runner`, and while it
runs the entry is marked transitional (`busy`) so no one else touches it.

Invariants (tests/unit/test_manager_statemachine.py checks them after every step):
- ledger.device.used <= budget and ledger.host.used <= host budget at every instant;
- a leased model is never a victim (only `refcount == 0`, not busy, not pinned entries are candidates);
- at most one load in flight per model (`_inflight` futures, single-flight);
- a failed load leaves no reservation behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serving.adapters.base import Adapter
from serving.adapters.registry import AdapterRegistry
from serving.config import MB, ModelSpec, ZooConfig
from serving.errors import (
    InferenceOOM,
    InsufficientVram,
    ModelDisabled,
    ModelLoadFailed,
    Overloaded,
    UnknownModel,
)
from serving.vram.devices import Device, device_from_spec
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.footprints import Footprint, FootprintStore
from serving.vram.ledger import Ledger
from serving.vram.policy import get_policy
from serving.vram.status import manager_status, model_status
from serving.vram.tiers import TierMixin
from serving.vram.view import ManagerView, ModelView

log = logging.getLogger(__name__)

Runner = Callable[..., Awaitable[Any]]
Listener = Callable[[str, dict[str, Any]], None]


async def thread_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def inline_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs blocking work on the loop itself: for fakes and the simulation benchmark only."""
    return fn(*args, **kwargs)


class OnDemandModelManager(TierMixin):
    """One manager per service process per device. See the module docstring for the contract."""

    RATE_TAU_S = 600.0  # decay constant of the per-model use rate seen by policies

    def __init__(
        self,
        specs: dict[str, ModelSpec],
        *,
        device: Device,
        registry: AdapterRegistry,
        models_root: Path | str = "models",
        budget_bytes: int,
        host_cache_bytes: int = 0,
        policy: str = "priority-gdsf",
        headroom_bytes: int = 0,
        safety_factor: float = 1.2,
        load_concurrency: int = 1,
        admission_timeout_s: float = 10.0,
        max_inflight: int = 4,
        max_queue: int = 64,
        sweep_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
        runner: Runner = thread_runner,
        footprints: FootprintStore | None = None,
        oracle: Callable[[str, float], float] | None = None,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 300.0,
        disk_bandwidth_bps: float = 1.0e9,
        pinned_bandwidth_bps: float = 12.0e9,
    ) -> None:
        self.device = device
        self.registry = registry
        self.models_root = Path(models_root)
        self.ledger = Ledger(budget_bytes, host_cache_bytes)
        self.policy_name = policy
        self._policy = get_policy(policy)
        self.headroom = int(headroom_bytes)
        self.safety_factor = safety_factor
        self.admission_timeout_s = admission_timeout_s
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock
        self.runner = runner
        self.footprints = footprints or FootprintStore(None)
        self.oracle = oracle
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.disk_bw = disk_bandwidth_bps
        self.pinned_bw = pinned_bandwidth_bps
        self.entries: dict[str, ModelEntry] = {n: ModelEntry(n, s) for n, s in specs.items()}
        self._load_sem = asyncio.Semaphore(load_concurrency)
        self._run_sem = asyncio.Semaphore(max_inflight)
        self.max_queue = max_queue
        self._run_waiting = 0
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._load_tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Condition | None = None
        self._listeners: list[Listener] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.sweeper_error: BaseException | None = None
        for e in self.entries.values():
            fp = self.footprints.lookup(e.name, self.device.model_name)
            if fp:
                e.measured_bytes, e.load_s, e.restore_s = fp.bytes, fp.load_s, fp.restore_s

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_zoo(
        cls,
        zoo: ZooConfig,
        service: str,
        *,
        device: Device | None = None,
        registry: AdapterRegistry | None = None,
        clock: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> OnDemandModelManager:
        svc = zoo.services[service]
        device = device or device_from_spec(svc.device, svc.gpu)
        root = Path(zoo.models_root)
        return cls(
            zoo.models_of(service),
            device=device,
            registry=registry or AdapterRegistry(),
            models_root=root,
            budget_bytes=svc.vram_budget_bytes,
            host_cache_bytes=svc.host_cache_bytes,
            policy=svc.policy,
            headroom_bytes=int(svc.headroom_mb * MB),
            safety_factor=svc.safety_factor,
            load_concurrency=svc.load_concurrency,
            admission_timeout_s=svc.admission_timeout_s,
            max_inflight=svc.max_inflight,
            max_queue=svc.max_queue,
            sweep_interval_s=svc.sweep_interval_s,
            clock=clock or time.time,
            footprints=FootprintStore(root / ".footprints.json"),
            **kwargs,
        )

    # ------------------------------------------------------------------ events
    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _emit(self, event: str, **fields: Any) -> None:
        for fn in self._listeners:
            try:
                fn(event, fields)
            except Exception:  # a broken metrics hook must not break serving
                log.exception("listener failed on %s", event)

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Load `always` models (failures are kept for status and retried later) and start the sweeper."""
        for e in self.entries.values():
            if e.spec.residency == "always" and not e.disabled:
                try:
                    await self.preload(e.name)
                except Exception as exc:
                    log.warning("always-loaded model %s failed to load: %s", e.name, exc)
        if self.sweep_interval_s and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="vram-sweeper")

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for t in list(self._load_tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t
        for e in self.entries.values():
            if e.adapter is not None and not e.busy and e.refcount == 0:
                await self._demote(e, COLD, reason="shutdown")

    async def _sweep_forever(self) -> None:
        assert self.sweep_interval_s
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # supervised: reported by healthy(), never silent
                self.sweeper_error = exc
                log.exception("idle sweeper failed")

    def healthy(self) -> bool:
        return self.sweeper_error is None and (self._sweeper is None or not self._sweeper.done())

    # ------------------------------------------------------------------ configuration (thermal seam)
    def entry(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownModel(f"model {name!r} is not served here; known: {', '.join(self.entries)}") from None

    def configure(
        self,
        name: str,
        *,
        disabled: bool | None = None,
        pinned: bool | None = None,
        keep_alive_s: float | None = None,
        keep_warm: bool | None = None,
        thermal_state: str | None = None,
    ) -> None:
        """The thermal seam: OFF -> disabled, HOT -> pinned, WARM -> keep_warm, COLD -> keep_alive."""
        e = self.entry(name)
        if keep_warm is not None:
            e.keep_warm = keep_warm
        if disabled is not None:
            e.disabled = disabled
        if pinned is not None:
            e.pinned = pinned
        if keep_alive_s is not None:
            e.keep_alive_s = float(keep_alive_s)
        if thermal_state is not None:
            e.thermal_state = thermal_state

    # ------------------------------------------------------------------ leases
    def use(self, name: str) -> contextlib.AbstractAsyncContextManager[Adapter]:
        """Lease a model: loaded (or restored) on demand, never evicted while the lease is held."""
        return self._lease(name, count=True)

    @contextlib.asynccontextmanager
    async def _lease(self, name: str, *, count: bool) -> AsyncIterator[Adapter]:
        e = await self._acquire(name, count=count)
        t0 = time.perf_counter()
        try:
            assert e.adapter is not None
            yield e.adapter
        except BaseException as exc:
            if self.device.is_oom(exc):
                self._on_inference_oom(e)
                raise InferenceOOM(
                    f"out of device memory while running {name}; the model stays loaded, retry later",
                    details={"model": name},
                ) from exc
            raise
        finally:
            e.busy_s += time.perf_counter() - t0
            self._release(e)
            await self._notify()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking inference (inside a lease) on the worker runner: at most `max_inflight` at once,
        at most `max_queue` waiting; beyond that the call fails fast with Overloaded (429 + Retry-After)."""
        if self._run_sem.locked() and self._run_waiting >= self.max_queue:
            self._emit("overloaded")
            raise Overloaded(
                f"{self._run_waiting} inference calls already queued on {self.device.name}; retry shortly",
                details={"queued": self._run_waiting, "max_queue": self.max_queue},
            )
        self._run_waiting += 1
        try:
            await self._run_sem.acquire()
        finally:
            self._run_waiting -= 1
        try:
            return await self.runner(fn, *args, **kwargs)
        finally:
            self._run_sem.release()

    async def _acquire(self, name: str, *, count: bool = True) -> ModelEntry:
        e = self.entry(name)
        while True:
            if e.disabled:
                raise ModelDisabled(f"model {name!r} is OFF (disabled by its thermal state)")
            if e.tier == HOT and not e.busy:
                e.refcount += 1
                self._touch(e, count)
                self._emit("hit", model=name)
                return e
            if e.busy_future is not None:  # being evicted/demoted: wait, then look again
                with contextlib.suppress(Exception):
                    await asyncio.shield(e.busy_future)
                continue
            fut = self._inflight.get(name)
            if fut is None:
                if e.tier == FAILED and self.clock() < e.next_retry_at:
                    raise ModelLoadFailed(
                        f"model {name!r} failed to load ({e.last_error}); next retry in "
                        f"{e.next_retry_at - self.clock():.1f}s",
                        retry_after=max(e.next_retry_at - self.clock(), 0.1),
                        details={"model": name, "failures": e.failures},
                    )
                self._emit("miss", model=name, tier=e.tier)
                fut = self._start_load(e)
            e.waiters += 1
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._release(e)  # the lease was granted to us at completion
                else:
                    e.waiters -= 1
                raise
            except BaseException:
                raise
            self._touch(e, count)
            return e  # the load task granted our lease (refcount += waiters) synchronously

    def _touch(self, e: ModelEntry, count: bool = True) -> None:
        """A request (count=True) feeds the use rate and counters; a preload only refreshes last_used."""
        now = self.clock()
        e.last_used = now
        if not count:
            return
        if e.rate_at:
            e.rate = e.rate * math.exp(-max(now - e.rate_at, 0.0) / self.RATE_TAU_S) + 1.0
        else:
            e.rate = 1.0
        e.rate_at = now
        e.uses += 1

    def _release(self, e: ModelEntry) -> None:
        e.refcount -= 1
        assert e.refcount >= 0, f"lease underflow on {e.name}"
        e.last_used = self.clock()

    def _start_load(self, e: ModelEntry) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._inflight[e.name] = fut

        async def job() -> None:
            try:
                await self._load(e)
            except BaseException as exc:
                e.waiters = 0
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: waiters may all be gone
            else:
                e.refcount += e.waiters  # grant every waiter its lease, synchronously
                e.waiters = 0
                fut.set_result(None)
            finally:
                self._inflight.pop(e.name, None)
                await self._notify()

        task = loop.create_task(job(), name=f"load:{e.name}")
        self._load_tasks.add(task)
        task.add_done_callback(self._load_tasks.discard)
        return fut

    # ------------------------------------------------------------------ preload / unload
    async def preload(self, name: str) -> dict[str, Any]:
        """Make a model HOT without keeping a lease (not counted as a request)."""
        async with self._lease(name, count=False):
            pass
        return self.model_status(name)

    async def unload(self, name: str, to: str = COLD) -> dict[str, Any]:
        """Demote a model to WARM or COLD; waits for its leases to be released (bounded)."""
        e = self.entry(name)
        target = WARM if to.upper() == WARM else COLD
        deadline = asyncio.get_running_loop().time() + self.admission_timeout_s
        while e.refcount > 0 or e.busy or e.name in self._inflight:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise InsufficientVram(f"model {name!r} is in use; cannot unload it now", details={"model": name})
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
        if e.tier in (HOT, WARM) and not (e.tier == WARM and target == WARM):
            await self._demote(e, target, reason="request")
        elif e.tier == FAILED:
            e.tier = COLD
        return self.model_status(name)

    # ------------------------------------------------------------------ the load path
    def need_bytes(self, e: ModelEntry) -> int:
        if e.measured_bytes:
            return int(e.measured_bytes)
        declared = e.spec.vram_bytes
        padded = int(declared * self.safety_factor)
        # the safety margin never makes a model that fits the budget by its own figure unloadable
        return min(padded, self.ledger.device.budget) if declared <= self.ledger.device.budget else padded

    async def _load(self, e: ModelEntry) -> None:
        async with self._load_sem:
            if e.tier == HOT:
                return
            need = self.need_bytes(e)
            await self._admit(e, need)  # reserves `need` in the ledger
            try:
                await self._bring_up(e)
            except BaseException as exc:
                if self.device.is_oom(exc) and not isinstance(exc, asyncio.CancelledError):
                    # OOM on load: evict every evictable model, free the allocator cache, retry once.
                    self._emit("oom", model=e.name, phase="load")
                    await self._evict_all_evictable(exclude=e.name, reason="oom")
                    await self.runner(self.device.empty_cache)
                    try:
                        await self._bring_up(e)
                        return
                    except BaseException as exc2:
                        await self._fail(e, exc2)
                        raise self._load_error(e, exc2) from exc2
                await self._fail(e, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise self._load_error(e, exc) from exc

    def _load_error(self, e: ModelEntry, exc: BaseException) -> Exception:
        if isinstance(exc, (InsufficientVram, ModelLoadFailed)):
            return exc
        retry = max(e.next_retry_at - self.clock(), 0.1)
        return ModelLoadFailed(f"loading {e.name!r} failed: {exc}", retry_after=retry, details={"model": e.name})

    async def _bring_up(self, e: ModelEntry) -> None:
        """COLD/WARM -> HOT with measurement. The reservation for `e` is already in the ledger."""
        start = self.clock()
        t0 = time.perf_counter()
        before = self.device.allocated_bytes()
        from_tier = e.tier
        if e.tier == WARM and e.adapter is not None:
            await self.runner(e.adapter.restore)
            self.ledger.host.release(e.name)
            restore_wall = time.perf_counter() - t0
            e.restore_s = max(self.clock() - start, 0.0) or restore_wall
        else:
            if e.adapter is None:
                e.adapter = self.registry.create(e.name, e.spec, self.models_root, self.device)
            await self.runner(e.adapter.load)
            await self.runner(self.device.reset_peak)
            load_delta = self.device.allocated_bytes() - before
            await self.runner(e.adapter.warmup)
            peak_delta = self.device.peak_bytes() - before
            if not self.device.measures_allocations:
                load_delta = peak_delta = await self.runner(e.adapter.param_bytes)
            e.load_s = max(self.clock() - start, 0.0) or (time.perf_counter() - t0)
            self._record_footprint(e, max(load_delta, 0), max(peak_delta, 0))
        e.tier = HOT
        e.loaded_at = self.clock()
        e.failures = 0
        e.last_error = None
        self._fit_reservation(e)
        self._emit("load", model=e.name, from_tier=from_tier, seconds=time.perf_counter() - t0)

    def _record_footprint(self, e: ModelEntry, load_bytes: int, peak_bytes: int) -> None:
        assert e.adapter is not None
        e.measured_bytes = max(load_bytes, peak_bytes) or None
        if e.measured_bytes is None:
            return
        self.footprints.record(
            Footprint(
                model=e.name,
                format=e.adapter.format or "unknown",
                device=self.device.model_name,
                dtype=e.adapter.dtype,
                load_bytes=load_bytes,
                peak_bytes=peak_bytes,
                load_s=e.load_s,
                restore_s=e.restore_s,
                measured_at=self.clock(),
            )
        )

    def _fit_reservation(self, e: ModelEntry) -> None:
        """After a load, the reservation becomes the measured footprint when that still fits."""
        actual = e.measured_bytes or self.ledger.device.get(e.name)
        if self.ledger.device.fits(actual, replacing=e.name):
            self.ledger.device.reserve(e.name, actual)
        # else: keep the larger reservation already held; the next admission uses the measured figure

    async def _fail(self, e: ModelEntry, exc: BaseException) -> None:
        """A failed load leaves no reservation and no half-loaded weights behind."""
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
        self._emit("load_failed", model=e.name, error=e.last_error)

    # ------------------------------------------------------------------ admission and eviction
    def _real_shortfall(self, need: int) -> int:
        """Bytes the device itself lacks (other tenants included), beyond what the ledger knows."""
        pending = sum(
            max(r - self.device_owned_estimate(n), 0) for n, r in self.ledger.device.reserved.items()
        )
        free = self.device.free_bytes() - self.headroom - pending
        return max(need - free, 0)

    def device_owned_estimate(self, name: str) -> int:
        e = self.entries.get(name)
        if e is None or e.tier != HOT:
            return 0
        return self.ledger.device.get(name)

    async def _admit(self, e: ModelEntry, need: int) -> None:
        if need > self.ledger.device.budget:
            raise InsufficientVram(
                f"model {e.name!r} needs {need / MB:.0f} MB, more than the whole budget "
                f"({self.ledger.device.budget / MB:.0f} MB)",
                details={"model": e.name, "need_mb": need / MB},
                retry_after=60.0,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.admission_timeout_s
        while True:
            shortfall = max(need - self.ledger.device.available, 0)
            shortfall = max(shortfall, self._real_shortfall(need))
            if shortfall == 0:
                self.ledger.device.reserve(e.name, need)
                return
            victims = self._choose_victims(shortfall, exclude=e.name)
            if victims:
                await self._evict(victims, reason="capacity")
                continue
            left = deadline - loop.time()
            if left <= 0:
                raise InsufficientVram(
                    f"cannot fit {e.name!r} ({need / MB:.0f} MB): {self.ledger.device.available / MB:.0f} MB free "
                    "and the rest is leased or pinned",
                    details={"model": e.name, "need_mb": need / MB, "leased": self._leased_names()},
                )
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)

    def _leased_names(self) -> list[str]:
        return [n for n, x in self.entries.items() if x.refcount > 0]

    # ------------------------------------------------------------------ OOM during inference
    def _on_inference_oom(self, e: ModelEntry) -> None:
        current = e.measured_bytes or self.need_bytes(e)
        e.measured_bytes = int(current * 1.25)
        e.inference_ooms += 1
        if self.ledger.device.fits(e.measured_bytes, replacing=e.name):
            self.ledger.device.reserve(e.name, e.measured_bytes)
        self._emit("oom", model=e.name, phase="inference")

    # ------------------------------------------------------------------ views (what other rooms read)
    def _model_view(self, e: ModelEntry) -> ModelView:
        return ModelView(
            name=e.name, spec=e.spec, tier=e.tier, loading=e.name in self._inflight, leases=e.refcount,
            reserved_bytes=self.ledger.device.get(e.name), host_bytes=self.ledger.host.get(e.name),
            need_bytes=self.need_bytes(e), measured_bytes=e.measured_bytes, pinned=e.pinned,
            disabled=e.disabled, keep_warm=e.keep_warm, keep_alive_s=e.keep_alive_s,
            thermal_state=e.thermal_state, uses=e.uses, busy_s=e.busy_s, last_used=e.last_used,
            load_s=e.load_s, restore_s=e.restore_s,
            format=e.adapter.format if e.adapter is not None else None, failures=e.failures,
            last_error=e.last_error, next_retry_at=e.next_retry_at,
        )

    def view(self) -> ManagerView:
        """A frozen, consistent snapshot of the manager (built synchronously on the event loop)."""
        return ManagerView(
            device=self.device.name, device_info=MappingProxyType(dict(self.device.describe())),
            policy=self.policy_name, budget_bytes=self.ledger.device.budget, used_bytes=self.ledger.device.used,
            host_budget_bytes=self.ledger.host.budget, host_used_bytes=self.ledger.host.used,
            inference_queued=self._run_waiting, healthy=self.healthy(),
            sweeper_error=repr(self.sweeper_error) if self.sweeper_error is not None else None,
            models=MappingProxyType({n: self._model_view(e) for n, e in self.entries.items()}),
        )

    def model_view(self, name: str) -> ModelView:
        """One model's view; UnknownModel (404) when it is not served here."""
        return self._model_view(self.entry(name))

    def has(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    # ------------------------------------------------------------------ status
    def model_status(self, name: str) -> dict[str, Any]:
        return model_status(self, name)

    def status(self) -> dict[str, Any]:
        """Seed 003 "Model Status Endpoint" plus tier, footprints, failures and thermal extras."""
        return manager_status(self)

    def check_invariants(self) -> None:
        self.ledger.check()
        for n, e in self.entries.items():
            assert e.refcount >= 0, n
            loading = n in self._inflight  # reserved before the weights arrive: legitimate
            if e.tier in (COLD, FAILED) and not e.busy and not loading:
                assert self.ledger.device.get(n) == 0, f"{n} is {e.tier} but holds a reservation"
            if e.tier == WARM and not loading:
                assert self.ledger.device.get(n) == 0, f"{n} is WARM but holds VRAM"
        assert set(self._inflight) <= set(self.entries)
