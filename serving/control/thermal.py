"""Thermal states OFF / COLD / WARM / HOT / AUTOMATIC per model, applied to the service managers.

Local meaning of each state (DESIGN.md §8), through the `ManagerSeam`:
- OFF: configure(disabled=True) and unload to disk: requests get 503 `model_disabled`.
- COLD: on demand; the manager's sweeper drops it from the device after keep_alive idle (scale to zero).
- WARM: configure(keep_warm=True) and preload(tier="warm"): on the device when it fits without evicting
  anything, else loaded straight into the host warm tier (no device memory needed).
- HOT: configure(pinned=True) and preload: on-demand loads never evict it.
- AUTOMATIC: moved between COLD, WARM and HOT by request rate (`auto_level`: pure, with hysteresis).

Catalog models (seed 000's 38, `catalog=`) are managed too: their hosting is SageMaker, so applying a
state only records it (current = target at once); `zoo deploy --from-store` realises it.
The seed's scheduled check (`idle_check=True`): a WARM/HOT model with no activity for its scale-to-zero
window (zoo: keep_alive_s; catalog: scaleToZeroAfterMinutes) is applied as COLD with its target kept
(`scaled_to_zero`); its next request re-applies the target.

Observable per model: target and current state, is_transitioning (the managers do not yet show the
residency the state asks for), last_state_change, last_activity, error_message, residency (manager tier).
Targets are persisted (`ControlStore`) and restored on start; usage records go to the same store. The
store is only reached through a `StoreWriter` (write-behind, one worker thread): no database statement
runs on the event loop; `wait_idle()` and `stop()` flush it.

Concurrency (STYLE.md #5): one event loop owns all state; every model has at most one apply task
(single-flight), which re-reads the target after each apply so the latest target wins. Applies that
cannot complete (service unreachable, no VRAM) stay `is_transitioning` with the error and are retried
by `tick()` after `retry_s`. The clock is injected; `tick()` is called by a supervised loop or by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from serving.config import ThermalState, ZooConfig
from serving.control.catalog import Catalog
from serving.control.managers import ManagerSeam
from serving.control.selection import Selection
from serving.control.store import ControlStore, UsageRow
from serving.control.thermal_model import (
    AUTOMATIC,
    COLD,
    HOT,
    LEVELS,
    OFF,
    SAGEMAKER,
    WARM,
    AutoPolicy,
    ModelThermal,
    auto_level,
    inactive_for_scale_to_zero,
    render_view,
    satisfied,
    thermal_records,
    thermal_row,
)
from serving.control.thermal_queries import select_on, thermal_metrics
from serving.control.writer import StoreWriter
from serving.errors import ModelDisabled, ServingError, UnknownModel, UpstreamError, UpstreamTimeout

__all__ = ["AUTOMATIC", "COLD", "HOT", "LEVELS", "OFF", "SAGEMAKER", "WARM", "AutoPolicy", "ModelThermal",
           "ThermalController", "auto_level"]

log = logging.getLogger(__name__)


class ThermalController:
    """Owns the thermal state of every model of a zoo and applies it through the managers."""

    def __init__(
        self,
        zoo: ZooConfig,
        managers: Mapping[str, ManagerSeam],
        store: ControlStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        policy: AutoPolicy = AutoPolicy(),
        retry_s: float = 30.0,
        tick_interval_s: float | None = None,
        catalog: Catalog | None = None,
        idle_check: bool = False,
    ) -> None:
        self.zoo = zoo
        self.managers = dict(managers)
        self.store = store or ControlStore("sqlite://")
        self.writer = StoreWriter(self.store)
        self.clock = clock
        self.policy = policy
        self.retry_s = retry_s
        self.tick_interval_s = tick_interval_s
        self.reachable: dict[str, bool] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.ticker_error: BaseException | None = None
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._counters: dict[str, tuple[int, float]] = {}  # model -> (uses, busy_ms) at the last poll
        self.idle_check = idle_check
        self.statuses: dict[str, dict[str, Any] | None] = {}  # last /models/status per service (None: unreachable)
        self.polled_at: float | None = None
        self.models, self.facts = thermal_records(zoo, catalog, self.clock())

    # ------------------------------------------------------------------ events
    def add_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """fn(event, fields) on state_change, warmup, error (e.g. client notifications, metrics)."""
        self._listeners.append(fn)

    def _emit(self, event: str, **fields: Any) -> None:
        for fn in self._listeners:
            try:
                fn(event, fields)
            except Exception:
                log.exception("thermal listener failed on %s", event)

    # ------------------------------------------------------------------ life cycle
    async def start(self, *, wait: bool = False) -> None:
        """Restore persisted targets (defaults for new models), start applying them, start the ticker.
        The applies run in the background (a gateway must not wait for a large model's preload to
        serve); `wait=True` returns once they are done (or failed and left for `tick` to retry)."""
        rows = await self.writer.read(self.store.load_thermal)
        for name, m in self.models.items():
            row = rows.get(name)
            if row is not None:
                m.target_state = row.target_state
                m.last_activity = row.last_activity
                m.updated_by = row.updated_by
                if row.target_state == AUTOMATIC and row.current_state in LEVELS:
                    m.auto_level = row.current_state
            m.is_transitioning = True
            self._persist(m)
        for name in self.models:
            self._ensure_apply(name)
        if wait:
            await self.wait_idle()
        if self.tick_interval_s and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(), name="thermal-ticker")

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for t in list(self._tasks.values()) + list(self._background):
            t.cancel()
        for t in list(self._tasks.values()) + list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.writer.close()

    def healthy(self) -> bool:
        """False once the ticker died or a store write failed (both are logged)."""
        ticking = self._ticker is None or not self._ticker.done()
        return self.ticker_error is None and self.writer.error is None and ticking

    async def _tick_forever(self) -> None:
        assert self.tick_interval_s
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                await self.tick()
            except Exception as exc:  # supervised: reported by healthy(), never silent
                self.ticker_error = exc
                log.exception("thermal tick failed")

    async def wait_idle(self) -> None:
        """Wait until no apply or background warm-up is in flight and the store has every write."""
        while True:
            pending = [t for t in list(self._tasks.values()) + list(self._background) if not t.done()]
            if not pending:
                break
            await asyncio.gather(*pending, return_exceptions=True)
        await self.writer.flush()

    # ------------------------------------------------------------------ queries
    def get(self, model_id: str) -> ModelThermal:
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModel(f"unknown model {model_id!r}", details={"model": model_id}) from None

    def view(self, model_id: str) -> dict[str, Any]:
        m = self.get(model_id)
        return render_view(m, self.facts[model_id], self.rate_rpm(model_id))

    def views(self) -> list[dict[str, Any]]:
        return [self.view(n) for n in self.models]

    def current_states(self, hosting: str | None = None) -> dict[str, str]:
        """Current states, of every model or of one hosting ("zoo" or "sagemaker")."""
        return {n: m.current_state for n, m in self.models.items() if hosting in (None, self.facts[n].hosting)}

    def rate_rpm(self, model_id: str) -> float:
        m = self.models[model_id]
        self._trim(m)
        return len(m.activity) * 60.0 / self.policy.window_s

    def _trim(self, m: ModelThermal) -> None:
        horizon = self.clock() - self.policy.window_s
        while m.activity and m.activity[0] < horizon:
            m.activity.popleft()

    # ------------------------------------------------------------------ writes
    def set_target(self, model_id: str, state: str | ThermalState, *, updated_by: str | None = None) -> dict[str, Any]:
        """Set a model's target state; the apply runs in the background (see wait_idle)."""
        m = self.get(model_id)
        new = ThermalState(state).value
        m.updated_by = updated_by
        if new != m.target_state or m.idle_zero:
            m.idle_zero = False
            m.target_state = new
            if new == AUTOMATIC:
                m.auto_level = m.current_state if m.current_state in LEVELS else COLD
            m.is_transitioning = True
            m.error_message = None
            m.next_retry_at = 0.0
            self._emit("target", model=model_id, target_state=new)
        self._persist(m)
        self._ensure_apply(model_id)
        return self.view(model_id)

    def record_usage(
        self, model_id: str, operation: str, processing_ms: float, *, bytes_in: int | None = None,
        bytes_out: int | None = None, request_id: str | None = None, count: int = 1,
    ) -> None:
        """A served request: persisted usage record, last_activity, and the rate AUTOMATIC reads."""
        m = self.get(model_id)
        now = self.clock()
        m.last_activity = now
        m.activity.extend([now] * count)
        if count:
            m.latency_ms = processing_ms if m.latency_ms is None else 0.7 * m.latency_ms + 0.3 * processing_ms
        self._trim(m)
        if m.idle_zero:  # traffic again: the scheduled check's scale-to-zero ends, the target is re-applied
            m.idle_zero = False
            m.is_transitioning = True
            self._ensure_apply(model_id)
        self.writer.record_usage(UsageRow(
            model_id=model_id, operation=operation, processing_time_ms=float(processing_ms * count), created_at=now,
            service_id=m.service_id, input_size_bytes=bytes_in, output_size_bytes=bytes_out, request_id=request_id,
            requests=int(count)))
        self._persist(m)

    def _count_usage(self, model_id: str, row: dict[str, Any]) -> None:
        """Requests served since the last poll, from the manager's own counters (every path: gateway,
        direct calls, KServe), become usage records and the request rate AUTOMATIC reads."""
        if "uses" not in row:
            return
        uses, busy = int(row["uses"]), float(row.get("busy_ms") or 0.0)
        before = self._counters.get(model_id)
        self._counters[model_id] = (uses, busy)
        if before is None or uses < before[0]:  # first poll, or the service restarted: new baseline
            return
        delta = uses - before[0]
        if delta > 0:
            self.record_usage(model_id, "infer", (busy - before[1]) / delta, count=delta)

    def request_warm(self, model_id: str) -> dict[str, Any]:
        """POST /thermal/warm: preload now without changing the target (it cools again per its state)."""
        m = self.get(model_id)
        if m.current_state == OFF or m.target_state == OFF:
            raise ModelDisabled(f"model {model_id!r} is OFF; set its thermal state first", details={"model": model_id})
        m.last_activity = self.clock()
        self._persist(m)
        if m.idle_zero:
            m.idle_zero, m.is_transitioning = False, True
            self._ensure_apply(model_id)
        elif m.service_id != SAGEMAKER:
            self._spawn(self._warm(model_id), f"warm:{model_id}")
        return self.view(model_id)

    async def _warm(self, model_id: str) -> None:
        m = self.models[model_id]
        self._emit("warmup", model=model_id, service=m.service_id)
        try:
            st = await self.managers[m.service_id].preload(model_id)
            m.residency = str(st.get("tier", m.residency)) if isinstance(st, dict) else m.residency
            self._emit("ready", model=model_id, service=m.service_id, residency=m.residency)
        except ServingError as exc:
            m.error_message = f"warm-up failed: {exc.message}"
            self._emit("error", model=model_id, message=m.error_message)
            self._persist(m)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ applying
    def _ensure_apply(self, model_id: str) -> None:
        t = self._tasks.get(model_id)
        if t is None or t.done():
            self._tasks[model_id] = asyncio.get_running_loop().create_task(
                self._apply_loop(model_id), name=f"thermal:{model_id}")

    async def _apply_loop(self, model_id: str) -> None:
        m = self.models[model_id]
        while True:
            level = m.level()
            await self._apply(m, level)
            if m.level() == level:
                return

    async def _apply(self, m: ModelThermal, level: str) -> None:
        seam = self.managers.get(m.service_id)
        name = m.model_id
        configured = done = False
        if m.service_id == SAGEMAKER:  # hosted on SageMaker: the state is recorded; `zoo deploy` realises it
            self._record_only(m, level)
            return
        spec = self.zoo.models[m.model_id]
        try:
            if seam is None:
                raise ServingError(f"no manager for service {m.service_id!r}")
            if level == OFF:
                await seam.configure(name, disabled=True, pinned=False, keep_warm=False, thermal_state=OFF)
                configured, m.disabled, m.pinned = True, True, False
                st = await seam.unload(name, to="cold")
            elif level == COLD:
                await seam.configure(name, disabled=False, pinned=False, keep_warm=False,
                                     keep_alive_s=spec.keep_alive_s, thermal_state=COLD)
                configured, m.disabled, m.pinned = True, False, False
                st = None
            else:
                await seam.configure(name, disabled=False, pinned=(level == HOT), keep_warm=True,
                                     keep_alive_s=spec.keep_alive_s, thermal_state=level)
                configured, m.disabled, m.pinned = True, False, level == HOT
                self._emit("warmup", model=name, service=m.service_id, state=level)
                st = await seam.preload(name, tier="hot" if level == HOT else "warm")
                self._emit("ready", model=name, service=m.service_id, state=level,
                           residency=str(st.get("tier")) if isinstance(st, dict) else None)
            if isinstance(st, dict) and "tier" in st:
                m.residency = str(st["tier"])
            done = True
            m.error_message = None
            self.reachable[m.service_id] = True
        except ServingError as exc:
            if isinstance(exc, (UpstreamError, UpstreamTimeout)):
                if self.reachable.get(m.service_id, True):
                    self._emit("offline", service=m.service_id, model=name, message=exc.message)
                self.reachable[m.service_id] = False
            m.error_message = f"{exc.error_type}: {exc.message}"
            m.next_retry_at = self.clock() + self.retry_s
            self._emit("error", model=name, message=m.error_message)
        except Exception as exc:  # a bug in a seam must not kill the controller silently
            log.exception("applying %s to %s failed", level, name)
            m.error_message = f"internal_error: {exc}"
            m.next_retry_at = self.clock() + self.retry_s
        if level != m.current_state and (done or (configured and level != OFF)):
            # the manager follows the new policy once configured, even if a preload is retried later
            self._changed(m, level)
        m.is_transitioning = not done
        self._persist(m)

    def _changed(self, m: ModelThermal, level: str) -> None:
        prev, m.current_state = m.current_state, level
        m.last_state_change = self.clock()
        self._emit("state_change", model=m.model_id, service=m.service_id, from_state=prev, to_state=level,
                   scaled_to_zero=m.idle_zero)
        if level in (COLD, OFF):
            self._emit("cold" if level == COLD else "offline", model=m.model_id, service=m.service_id,
                       scaled_to_zero=m.idle_zero)

    def _record_only(self, m: ModelThermal, level: str) -> None:
        if level != m.current_state:
            self._changed(m, level)
        m.is_transitioning = False
        m.error_message = None
        self._persist(m)

    async def poll(self) -> None:
        """Read every manager's status: residency, pins, usage counters, reachability (no applies)."""
        for service, seam in self.managers.items():
            try:
                st = await seam.status()
            except ServingError as exc:
                if self.reachable.get(service, True):
                    self._emit("offline", service=service, message=exc.message)
                self.reachable[service] = False
                self.statuses[service] = None
                continue
            if self.reachable.get(service) is False:
                self._emit("online", service=service)
            self.reachable[service], self.statuses[service] = True, st
            for r in st.get("registered_models", []):
                m = self.models.get(r["name"])
                if m is None:
                    continue
                m.residency = str(r.get("tier", "HOT" if r.get("loaded") else "COLD"))
                m.pinned = r.get("pinned")
                m.disabled = r.get("disabled")
                self._count_usage(r["name"], r)
            for r in st.get("loaded_models", []):
                m = self.models.get(r["name"])
                if m is not None and r.get("last_used"):
                    with contextlib.suppress(ValueError):
                        t = datetime.fromisoformat(str(r["last_used"]).replace("Z", "+00:00")).timestamp()
                        m.last_activity = max(m.last_activity or 0.0, t)
        self.polled_at = self.clock()

    async def refresh(self, max_age_s: float = 2.0) -> None:
        """Poll the managers unless the last poll is younger than `max_age_s` (selection reads live residency)."""
        if self.polled_at is None or self.clock() - self.polled_at > max_age_s:
            await self.poll()

    async def tick(self) -> None:
        """Poll the managers, move AUTOMATIC models, scale inactive WARM/HOT to zero (idle_check), retry
        transitions that did not complete."""
        now = self.clock()
        await self.poll()
        for name, m in self.models.items():
            if self.idle_check and inactive_for_scale_to_zero(m, self.facts[name], now):
                m.idle_zero = True
                m.is_transitioning = True
                self._ensure_apply(name)
                continue
            if m.target_state == AUTOMATIC:
                new = auto_level(m.auto_level, self.rate_rpm(name), now - m.last_state_change, self.policy)
                if new != m.auto_level:
                    m.auto_level = new
                    m.is_transitioning = True
                    self._ensure_apply(name)
                    continue
            if not satisfied(m) and m.current_state == m.level():
                m.is_transitioning = True
            if m.is_transitioning and now >= m.next_retry_at:
                self._ensure_apply(name)
        await self.wait_idle()

    # ------------------------------------------------------------------ selection and metrics
    async def select(self, task: str | None = None, capabilities: Any = (), *, warm_in_background: bool = True,
                     max_age_s: float = 2.0) -> Selection:
        """Seed 001 selection on live residency (see serving.control.thermal_queries.select_on)."""
        return await select_on(self, task, capabilities, warm_in_background=warm_in_background, max_age_s=max_age_s)

    async def metrics(self, usage_window_s: float = 3600.0) -> dict[str, Any]:
        """GET /thermal/metrics (see serving.control.thermal_queries.thermal_metrics)."""
        return await thermal_metrics(self, usage_window_s)

    # ------------------------------------------------------------------ persistence
    def _persist(self, m: ModelThermal) -> None:
        self.writer.save_thermal(thermal_row(m, self.clock()))

    async def usage_summary(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Per-model usage from the store (read on the store's thread, after pending writes)."""
        return await self.writer.read(self.store.usage_summary, since=since)
