"""Dynamic batching of concurrent requests (detection), in the style of Triton's dynamic batcher.

A `DynamicBatcher` owns one bounded queue and one worker task. `await batcher.submit(item)` enqueues the
item with a future and waits for its result. The worker takes the first queued item, then keeps
collecting until the batch holds `max_batch` items or `max_delay_s` has passed since that first item
arrived — whichever comes first — and calls `run_batch(items) -> results` once for the whole batch
(one result per item, same order). Adaptive (default): the delay is only spent when the previous batch
held several items or more are already queued, so a lone client never waits for company. Up to
`max_concurrent` batches run at once (1 by default: on a GPU one large batch beats two small ones).

Invariants: every submitted item gets exactly one outcome (its result, the batch's exception, or
`Overloaded` when the queue is full); a waiter that went away (cancelled) is dropped before its batch is
formed; a failing batch never kills the worker. One owner: the queue is only read by the worker task.
Time is injected (`clock`, `sleep`) so tests drive the delay deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from serving.errors import Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future[Any]
    enqueued_at: float


@dataclass
class BatchStats:
    """Counters for tests and metrics: how many batches of which sizes ran."""

    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)
    failures: int = 0

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher(Generic[T, R]):
    """See the module docstring. `max_batch=1` turns batching off while keeping the same code path."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch: int = 8,
        max_delay_s: float = 0.005,
        max_queue: int = 256,
        max_concurrent: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        on_batch: Callable[[int, list[float]], None] | None = None,
        name: str = "batcher",
        adaptive: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_concurrent < 1 or max_delay_s < 0:
            raise ValueError("max_batch, max_queue, max_concurrent must be >= 1 and max_delay_s >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.clock = clock
        self.sleep = sleep
        self.on_batch = on_batch
        self.name = name
        self.adaptive = adaptive
        self._last_size = 0
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending[T]] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._max_concurrent = max_concurrent
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue(self.max_queue)
            self._slots = asyncio.Semaphore(self._max_concurrent)
            self._worker = asyncio.create_task(self._work(), name=f"{self.name}-worker")

    async def stop(self) -> None:
        """Stop collecting; batches already running finish; queued waiters get Overloaded."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(Overloaded(f"{self.name} is shutting down"))

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ------------------------------------------------------------------ API
    async def submit(self, item: T) -> R:
        if self._worker is None:
            self.start()
        assert self._queue is not None
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, fut, self.clock()))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name}: {self.max_queue} requests already queued; retry shortly",
                             retry_after=max(self.max_delay_s * 4, 0.5)) from None
        return await fut

    # ------------------------------------------------------------------ worker
    async def _collect(self) -> list[_Pending[T]]:
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        delay = self.max_delay_s
        if self.adaptive and self._last_size <= 1 and self._queue.empty():
            delay = 0.0  # no sign of concurrency: a lone request does not wait for company
        deadline = first.enqueued_at + delay
        while len(batch) < self.max_batch:
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if len(batch) >= self.max_batch:
                break
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            getter = asyncio.ensure_future(self._queue.get())
            timer = asyncio.ensure_future(self.sleep(remaining))
            done, _ = await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            if getter in done or not getter.cancel():  # cancel() is False when it completed meanwhile
                batch.append(getter.result())
            else:
                break  # the delay passed; a cancelled get leaves any item in the queue
        return batch

    async def _work(self) -> None:
        assert self._slots is not None
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            live = [p for p in batch if not p.future.done()]
            self._last_size = len(batch)
            if not live:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(live), name=f"{self.name}-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending[T]]) -> None:
        assert self._slots is not None
        try:
            started = self.clock()
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.sizes.append(len(batch))
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), [started - p.enqueued_at for p in batch])
                except Exception:
                    log.exception("on_batch hook failed")
            try:
                results = await self.run_batch([p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: run_batch returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # every waiter gets the batch's error
                self.stats.failures += 1
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        finally:
            self._slots.release()
