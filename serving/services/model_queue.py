"""The asyncio front of the model-major scheduler: every model run of a service goes through it.

`await scheduler.submit(model, inputs, options)` queues the request under its model and waits for its
results. One dispatcher task asks the pure `decide` (serving/vram/scheduling.py, the same function the
policy simulation replays) what to do next:
- `Serve(model, keys)`: a group task leases the model once (`manager.use`: a load or restore if needed),
  runs the queued requests as few adapter calls as possible (requests with equal options are concatenated,
  then chunked by the model's `max_batch`), scatters the results back per request, and before releasing
  the lease takes whatever queued for that model meanwhile (a resident model's queue drains before its
  lease is released, so queued work protects it from eviction), unless work for another model has
  reached its deadline.
- `Hold(until)`: nothing is due; the dispatcher waits for new work, a finished group, or `until`.
A request's deadline is its arrival plus the added wait its model's priority class allows (zoo.yaml
`scheduler.deadline_ms`).

One owner: the queues and the job table are mutated only on the event loop, each check-and-write with no
`await` in between (the dispatcher and the group tasks share them that way). Time is injected (`clock`,
`sleep`) so tests drive the deadlines without sleeping. Every submitted request gets exactly one outcome:
its results, its group's error, or `Overloaded` when `max_queued` requests already wait; a request whose
caller went away is dropped from its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.errors import Overloaded
from serving.scheduler_config import SchedulerSettings
from serving.vram.scheduling import Hold, ModelState, Pending, WorkQueues, decide, model_state, reserve_estimate

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.manager import OnDemandModelManager

log = logging.getLogger(__name__)


@dataclass
class _Job:
    model: str
    inputs: list[Any]
    options: dict[str, Any]
    future: asyncio.Future[list[Any]]


@dataclass
class SchedulerStats:
    """Counters for tests and metrics: groups served (one lease each) and adapter calls with their sizes."""

    groups: int = 0
    #: (model, items) of the most recent adapter calls
    calls: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=1024))
    served: int = 0  # requests answered


class ModelScheduler:
    """See the module docstring."""

    def __init__(
        self,
        manager: OnDemandModelManager,
        settings: SchedulerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_queued: int = 1024,
        margin_s: float = 0.005,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.max_queued = max_queued
        self.margin_s = margin_s
        self.stats = SchedulerStats()
        self._queues = WorkQueues()
        self._jobs: dict[int, _Job] = {}
        self._busy: set[str] = set()
        self._keys = itertools.count()
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._groups: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if self._dispatcher is None:
            self._wake = asyncio.Event()
            self._dispatcher = asyncio.create_task(self._dispatch(), name="model-scheduler")
            self._dispatcher.add_done_callback(self._dispatcher_done)

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        """Supervision: a dispatcher that died fails every queued request loudly and is restarted by the next
        submit (never a silent stall)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("model scheduler dispatcher failed", exc_info=exc)
        self._dispatcher = None
        for key in list(self._jobs):
            job = self._jobs.pop(key)
            if not job.future.done():
                job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
        self._queues = WorkQueues()

    async def stop(self) -> None:
        """Stop dispatching; groups already running finish; queued requests get Overloaded."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        if self._groups:
            await asyncio.gather(*self._groups, return_exceptions=True)
        for key in list(self._jobs):
            job = self._jobs.pop(key)
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        self._queues = WorkQueues()

    @property
    def queued(self) -> int:
        return len(self._queues)

    def queued_for(self, model: str) -> int:
        return self._queues.depth(model)

    # ------------------------------------------------------------------ API
    async def submit(self, model: str, inputs: list[Any], options: dict[str, Any]) -> list[Any]:
        """Queue one request for `model`; its results, in the order of `inputs`."""
        if self._dispatcher is None:
            self.start()
        if len(self._jobs) >= self.max_queued:
            raise Overloaded(f"{self.max_queued} requests already wait for their models; retry shortly",
                             retry_after=1.0)
        key = next(self._keys)
        now = self.clock()
        priority = self.manager.model_view(model).spec.priority
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._jobs[key] = _Job(model, list(inputs), dict(options), fut)
        self._queues.add(Pending(key, model, now, now + self.settings.deadline_s(priority)))
        self._poke()
        try:
            return await fut
        except asyncio.CancelledError:
            if self._jobs.pop(key, None) is not None:
                self._queues.remove(model, key)
            raise

    # ------------------------------------------------------------------ dispatcher
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _states(self) -> tuple[dict[str, ModelState], float]:  # noqa: D401
        view = self.manager.view()
        cost = self.manager.admission.cost
        states = {m: model_state(view, m, cost, busy=m in self._busy) for m in self._queues.models()}
        return states, reserve_estimate(view.models.values(), cost)

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            states, reserve = self._states()
            decision = decide(self._queues, states, self.clock(), margin_s=self.margin_s, reserve_s=reserve)
            if not isinstance(decision, Hold):
                jobs = [self._jobs.pop(k) for k in decision.keys if k in self._jobs]  # type: ignore[call-overload]
                self._busy.add(decision.model)
                task = asyncio.create_task(self._serve(decision.model, jobs), name=f"serve-{decision.model}")
                self._groups.add(task)
                task.add_done_callback(self._groups.discard)
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {waiter}
            if decision.until is not None:
                waits.add(asyncio.ensure_future(self.sleep(max(0.0, decision.until - self.clock()))))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _overdue_elsewhere(self, model: str) -> bool:
        now = self.clock()
        return any(self._queues.earliest_deadline(m) <= now for m in self._queues.models() if m != model)

    async def _serve(self, model: str, jobs: list[_Job]) -> None:
        try:
            async with self.manager.use(model) as adapter:
                self.stats.groups += 1
                while jobs:
                    await self._run(adapter, model, jobs)
                    if self._overdue_elsewhere(model):
                        break  # the rest of this queue goes through the dispatcher again
                    jobs = [self._jobs.pop(p.key) for p in self._queues.take(model)  # type: ignore[call-overload]
                            if p.key in self._jobs]
        except BaseException as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy.discard(model)
            self._poke()

    async def _run(self, adapter: Any, model: str, jobs: list[_Job]) -> None:
        """Requests with equal options become one input list, run in chunks of the model's `max_batch`."""
        limit = self.manager.model_view(model).spec.max_batch
        by_options: dict[str, list[_Job]] = {}
        for i, job in enumerate(jobs):
            if not job.future.done():
                by_options.setdefault(_options_key(job.options, i), []).append(job)
        for group in by_options.values():
            items = [x for job in group for x in job.inputs]
            try:
                results: list[Any] = []
                for i in range(0, len(items), limit):
                    chunk = items[i:i + limit]
                    out = await self.manager.run(adapter.predict, chunk, **group[0].options)
                    if len(out) != len(chunk):
                        raise RuntimeError(f"{model}: {len(out)} results for {len(chunk)} inputs")
                    self.stats.calls.append((model, len(chunk)))
                    results.extend(out)
            except Exception as exc:  # this options group fails; the others still run
                if self.manager.device.is_oom(exc):
                    raise  # through the lease: the manager's OOM handling, the whole group gets InferenceOOM
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            offset = 0
            for job in group:
                n = len(job.inputs)
                if not job.future.done():
                    job.future.set_result(results[offset:offset + n])
                    self.stats.served += 1
                offset += n


def _options_key(options: dict[str, Any], index: int) -> str:
    """Requests are concatenated only when their options are equal as JSON; options that are not plain JSON
    (e.g. tensors of a KServe request) keep the request in a call of its own."""
    try:
        return json.dumps(options, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return f"#own-call-{index}"
