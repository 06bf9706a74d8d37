"""OnDemandModelManager: leases, single-flight loads, admission inside a VRAM budget, tiers.

Who owns state (STYLE.md #5): the manager, alone. One asyncio event loop owns `entries`, the `ledger`,
`_inflight` and the counters; every check-then-write on them happens synchronously (no `await` in
between). The manager is composed, not inherited; it builds its parts and hands them its state:
- `snapshot`: pure builders, entries -> policy candidates (with the one `CostModel`) and frozen views;
- `policy`: chooses victims (pure; the `always` two-pass rule and the WARM order live there);
- `admission.Admission`: reserves room for a load, evicting through the tier mover or waiting for leases;
- `loads.Loads`: single-flight loads: admission first, then a load slot, then the bring-up;
- `tiers.TierMover`: every tier change and adapter call (it does not import the manager);
- `gate.InferenceGate`: bounded inference concurrency and queue;
- `status`: renders the frozen `ManagerView` into the pydantic `ManagerStatus` (the seed's status JSON).
Blocking work (adapter load, offload, restore, unload, inference, device probes, footprint writes) runs
through the injected `runner`; while it runs the entry is marked transitional (`busy`) or its load is in
flight, so no one else touches it. Other rooms read `view()` / `model_view()` and call public methods.

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
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serving.adapters.base import Adapter
from serving.adapters.registry import AdapterRegistry
from serving.config import ManagerSettings, ModelSpec, ZooConfig
from serving.errors import Conflict, InferenceOOM, InsufficientVram, ModelBusy, ModelDisabled, UnknownModel
from serving.vram import events as ev
from serving.vram.admission import Admission
from serving.vram.cost import CostModel
from serving.vram.devices import Device, device_from_spec
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.footprints import FootprintStore
from serving.vram.gate import InferenceGate
from serving.vram.ledger import Ledger
from serving.vram.loads import Loads
from serving.vram.pinned import STAGING_RESERVE
from serving.vram.policy import get_policy
from serving.vram.runner import Runner, inline_runner, thread_runner
from serving.vram.snapshot import Oracle, check_invariants, decayed_rate, model_view
from serving.vram.status import manager_status, model_status
from serving.vram.tiers import TierMover
from serving.vram.view import ManagerView, ModelView

__all__ = ["OnDemandModelManager", "Runner", "inline_runner", "thread_runner"]

log = logging.getLogger(__name__)

Subscriber = Callable[[ev.ManagerEvent], None]


class OnDemandModelManager:
    """One manager per service process per device. See the module docstring for the contract.

    Build it with `from_settings` (or `from_zoo`) so every process reads the same `ManagerSettings`; the
    keyword constructor stays for tests and the simulation (bytes, seconds).
    """

    def __init__(
        self, specs: dict[str, ModelSpec], *, device: Device, registry: AdapterRegistry,
        models_root: Path | str = "models", budget_bytes: int, host_cache_bytes: int = 0,
        policy: str = "priority-gdsf", headroom_bytes: int = 0, safety_factor: float = 1.2,
        load_concurrency: int = 1, admission_timeout_s: float = 10.0, max_inflight: int = 4, max_queue: int = 64,
        sweep_interval_s: float | None = None, clock: Callable[[], float] = time.time,
        runner: Runner = thread_runner, footprints: FootprintStore | None = None, oracle: Oracle | None = None,
        backoff_base_s: float = 2.0, backoff_max_s: float = 300.0, cost: CostModel | None = None,
    ) -> None:
        self.device = device
        self.ledger = Ledger(budget_bytes, host_cache_bytes)
        device.host_pool.max_bytes = host_cache_bytes + STAGING_RESERVE  # pooled host buffers: the warm tier
        self.policy_name = policy
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock
        self.runner = runner
        self.footprints = footprints or FootprintStore(None)
        self.entries: dict[str, ModelEntry] = {}
        self._load_sem = asyncio.Semaphore(load_concurrency)
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._changed: asyncio.Condition | None = None
        self._subscribers: list[Subscriber] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._device_info: dict[str, Any] = {"name": device.name, "kind": device.kind}
        self.sweeper_error: BaseException | None = None
        self.admission_timeout_s = admission_timeout_s
        self.gate = InferenceGate(max_inflight=max_inflight, max_queue=max_queue, runner=runner, device=device.name,
                                  emit=self._emit)
        self.tiers = TierMover(
            entries=self.entries, ledger=self.ledger, device=device, registry=registry,
            models_root=Path(models_root), footprints=self.footprints, runner=runner, clock=clock,
            emit=self._emit, notify=self._notify, loading=self._inflight, load_slot=self._load_sem,
            backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s,
        )
        self.admission = Admission(
            entries=self.entries, ledger=self.ledger, device=device, runner=runner, clock=clock,
            policy=get_policy(policy), cost=cost or CostModel(), oracle=oracle, tiers=self.tiers,
            headroom_bytes=headroom_bytes, safety_factor=safety_factor, timeout_s=admission_timeout_s,
            wait_changed=self._wait_changed,
        )
        self.loads = Loads(inflight=self._inflight, admission=self.admission, tiers=self.tiers, device=device,
                           runner=runner, slot=self._load_sem, emit=self._emit, notify=self._notify)
        for name, spec in specs.items():
            self._add_entry(name, spec)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(
        cls, specs: dict[str, ModelSpec], settings: ManagerSettings, *, device: Device,
        registry: AdapterRegistry | None = None, models_root: Path | str = "models",
        clock: Callable[[], float] | None = None, **seams: Any,
    ) -> OnDemandModelManager:
        """The one mapping from `ManagerSettings` (zoo.yaml units: GB, MB, seconds) to a manager. `seams`:
        runner, footprints, oracle, cost (and budget/host overrides in bytes, for the SageMaker container)."""
        return cls(specs, device=device, registry=registry or AdapterRegistry(), models_root=models_root,
                   clock=clock or time.time, **(settings.manager_kwargs() | seams))

    @classmethod
    def from_zoo(
        cls, zoo: ZooConfig, service: str, *, device: Device | None = None, registry: AdapterRegistry | None = None,
        clock: Callable[[], float] | None = None, **seams: Any,
    ) -> OnDemandModelManager:
        """The manager of one zoo.yaml service (its models, its `ManagerSettings`, footprints on disk)."""
        svc = zoo.services[service]
        root = Path(zoo.models_root)
        return cls.from_settings(
            zoo.models_of(service), svc.manager_settings(), device=device or device_from_spec(svc.device, svc.gpu),
            registry=registry, models_root=root, clock=clock,
            **({"footprints": FootprintStore(root / ".footprints.json")} | seams),
        )

    # ------------------------------------------------------------------ the set of models
    def _add_entry(self, name: str, spec: ModelSpec) -> ModelEntry:
        e = ModelEntry(name, spec)
        fp = self.footprints.lookup(name, self.device.hardware_name)
        if fp:
            e.measured_bytes, e.load_s, e.restore_s = fp.bytes, fp.load_s, fp.restore_s
        self.entries[name] = e
        return e

    def register(self, name: str, spec: ModelSpec) -> None:
        """Serve one more model (COLD until used). Conflict (409) when the name is already served."""
        if name in self.entries:
            raise Conflict(f"model {name!r} is already loaded", details={"model": name})
        self._add_entry(name, spec)

    async def retire(self, name: str) -> None:
        """Stop serving a model: OFF (new leases get 503), wait for its leases (bounded by
        admission_timeout_s), unload to COLD, forget it. ModelBusy (503) when it stays in use."""
        e = self.entry(name)
        e.disabled = True  # no new leases from here on
        try:
            for _ in range(3):
                await self.unload(name, to=COLD)
                # synchronous from here: nobody can lease a disabled entry in between
                if e.refcount == 0 and not e.busy and name not in self._inflight and e.tier == COLD:
                    break
            else:
                raise ModelBusy(f"model {name!r} is still in use; cannot unload it now", details={"model": name})
        except BaseException:
            e.disabled = False
            raise
        if self.entries.get(name) is e:
            del self.entries[name]
        await self._notify()

    # ------------------------------------------------------------------ events
    def subscribe(self, fn: Subscriber) -> None:
        """Call `fn(event)` for every `serving.vram.events` instance, synchronously on the loop."""
        self._subscribers.append(fn)

    def _emit(self, event: ev.ManagerEvent) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:  # a broken metrics hook must not break serving
                log.exception("subscriber failed on %r", event)

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait_changed(self, timeout: float) -> None:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Load `always` models (failures are kept for status and retried later) and start the sweeper."""
        await self.refresh_device_info()
        for e in list(self.entries.values()):
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
        await self.loads.drain()
        for e in list(self.entries.values()):
            if e.adapter is not None and not e.busy and e.refcount == 0:
                await self.tiers.demote(e, COLD, reason="shutdown")

    async def _sweep_forever(self) -> None:
        assert self.sweep_interval_s
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
                await self.refresh_device_info()
            except Exception as exc:  # supervised: reported by healthy(), never silent
                self.sweeper_error = exc
                log.exception("idle sweeper failed")

    async def sweep(self) -> list[tuple[str, str]]:
        """Demote idle models past keep_alive: HOT -> WARM -> COLD. Returns (model, new tier) pairs."""
        return await self.tiers.sweep()

    async def refresh_device_info(self) -> None:
        """Probe the device off the loop (`describe()` may call CUDA/NVML); views read the cached copy."""
        self._device_info = dict(await self.runner(self.device.describe))

    def healthy(self) -> bool:
        return self.sweeper_error is None and (self._sweeper is None or not self._sweeper.done())

    # ------------------------------------------------------------------ configuration (thermal seam)
    def entry(self, name: str) -> ModelEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownModel(f"model {name!r} is not served here; known: {', '.join(self.entries)}") from None

    def configure(self, name: str, *, disabled: bool | None = None, pinned: bool | None = None,
                  keep_alive_s: float | None = None, keep_warm: bool | None = None,
                  thermal_state: str | None = None) -> None:
        """The thermal seam: OFF -> disabled, HOT -> pinned, WARM -> keep_warm, COLD -> keep_alive."""
        e = self.entry(name)
        changes = {"keep_warm": keep_warm, "disabled": disabled, "pinned": pinned, "thermal_state": thermal_state,
                   "keep_alive_s": None if keep_alive_s is None else float(keep_alive_s)}
        for attr, value in changes.items():
            if value is not None:
                setattr(e, attr, value)

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
        """Run blocking inference (inside a lease) through the `InferenceGate`: at most `max_inflight` at
        once, at most `max_queue` waiting; beyond that Overloaded (503 + Retry-After) at once."""
        return await self.gate.run(fn, *args, **kwargs)

    async def _acquire(self, name: str, *, count: bool = True) -> ModelEntry:
        e = self.entry(name)
        while True:
            if e.disabled:
                raise ModelDisabled(f"model {name!r} is OFF (disabled by its thermal state)")
            if e.tier == HOT and not e.busy:
                e.refcount += 1
                self._touch(e, count)
                self._emit(ev.Hit(name))
                return e
            if e.busy_future is not None:  # being evicted/demoted: wait, then look again
                with contextlib.suppress(Exception):
                    await asyncio.shield(e.busy_future)
                continue
            fut = self._inflight.get(name)
            if fut is None:
                self.tiers.check_backoff(e)
                self._emit(ev.Miss(name, e.tier))
                fut = self.loads.start(e)
            e.waiters += 1
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._release(e)  # the lease was granted to us at completion
                else:
                    e.waiters -= 1
                raise
            self._touch(e, count)
            return e  # the load task granted our lease (refcount += waiters) synchronously

    def _touch(self, e: ModelEntry, count: bool = True) -> None:
        """A request (count=True) feeds the use rate and counters; a preload only refreshes last_used."""
        now = self.clock()
        e.last_used = now
        if not count:
            return
        e.rate = decayed_rate(e.rate, e.rate_at, now) + 1.0
        e.rate_at = now
        e.uses += 1

    def _release(self, e: ModelEntry) -> None:
        e.refcount -= 1
        assert e.refcount >= 0, f"lease underflow on {e.name}"
        e.last_used = self.clock()

    # ------------------------------------------------------------------ preload / prewarm / unload
    async def preload(self, name: str) -> dict[str, Any]:
        """Make a model HOT without keeping a lease (not counted as a request)."""
        async with self._lease(name, count=False):
            pass
        return self.model_status(name)

    async def prewarm(self, name: str) -> dict[str, Any]:
        """Thermal WARM: on the device when it fits without evicting anything, else straight into the
        host warm tier (no device memory) so the first request costs one restore, not a disk load."""
        e = self.entry(name)
        if e.disabled:
            raise ModelDisabled(f"model {name!r} is OFF (disabled by its thermal state)")
        need = self.need_bytes(e)
        if e.tier == HOT:
            return self.model_status(name)
        if need <= self.ledger.device.available and await self.admission.real_shortfall(need) == 0:
            try:
                return await self.preload(name)
            except InsufficientVram:
                pass  # the room went to other loads meanwhile (pinned or leased): park it on the host
        if e.tier == WARM or e.busy or name in self._inflight:
            return self.model_status(name)
        self.tiers.check_backoff(e)
        if e.adapter is None:
            adapter = await self.tiers.new_adapter(e)
            if e.adapter is not None or e.tier not in (COLD, FAILED) or e.busy or name in self._inflight:
                return self.model_status(name)  # someone else moved it meanwhile
            e.adapter = adapter
        if not e.adapter.supports_host_load:
            return await self.preload(name)  # this family can only be loaded through the device
        await self.tiers.load_to_host(e, e.host_bytes or need)
        return self.model_status(name)

    async def unload(self, name: str, to: str = COLD) -> dict[str, Any]:
        """Demote a model to WARM or COLD; waits for its leases (bounded), else ModelBusy (503)."""
        e = self.entry(name)
        target = WARM if to.upper() == WARM else COLD
        deadline = asyncio.get_running_loop().time() + self.admission_timeout_s
        while e.refcount > 0 or e.busy or e.name in self._inflight:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise ModelBusy(f"model {name!r} is in use; cannot unload it now", details={"model": name})
            await self._wait_changed(left)
        if e.tier in (HOT, WARM) and not (e.tier == WARM and target == WARM):
            await self.tiers.demote(e, target, reason="request")
        elif e.tier == FAILED:
            e.tier = COLD
        return self.model_status(name)

    def need_bytes(self, e: ModelEntry) -> int:
        """Bytes admission reserves for `e` (measured footprint, else declared x safety factor)."""
        return self.admission.need_bytes(e)

    # ------------------------------------------------------------------ OOM during inference
    def _on_inference_oom(self, e: ModelEntry) -> None:
        """OOM during inference: the request fails (503), the model stays, its footprint is raised."""
        e.measured_bytes = int((e.measured_bytes or self.need_bytes(e)) * 1.25)
        if self.ledger.device.fits(e.measured_bytes, replacing=e.name):
            self.ledger.device.reserve(e.name, e.measured_bytes)
        self._emit(ev.Oom(e.name, "inference"))

    # ------------------------------------------------------------------ views (what other rooms read)
    def _model_view(self, e: ModelEntry) -> ModelView:
        return model_view(e, self.ledger, need=self.need_bytes(e), loading=e.name in self._inflight)

    def view(self) -> ManagerView:
        """A frozen, consistent snapshot of the manager (built synchronously, no device probe)."""
        return ManagerView(
            device=self.device.name, device_info=MappingProxyType(dict(self._device_info)),
            policy=self.policy_name, budget_bytes=self.ledger.device.budget, used_bytes=self.ledger.device.used,
            host_budget_bytes=self.ledger.host.budget, host_used_bytes=self.ledger.host.used,
            inference_queued=self.gate.queued, max_inflight=self.gate.max_inflight,
            max_queue=self.gate.max_queue, healthy=self.healthy(),
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

    def model_status(self, name: str) -> dict[str, Any]:
        """One model's status JSON (`serving.vram.status.ModelStatus`)."""
        return model_status(self.model_view(name)).model_dump()

    def status(self) -> dict[str, Any]:
        """Seed 003 "Model Status Endpoint" plus extras (`serving.vram.status.ManagerStatus`)."""
        return manager_status(self.view()).model_dump()

    def check_invariants(self) -> None:
        """Assert the module docstring's invariants (tests call it after every step)."""
        check_invariants(self.entries, self.ledger, self._inflight)
