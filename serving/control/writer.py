"""Write-behind for the control store: the event loop never runs a database statement.

`StoreWriter` sits between the thermal controller (on the event loop) and a `ControlStore` (synchronous
SQLAlchemy). Writes are enqueued without blocking and written by one worker task that hands each batch
to one dedicated thread; reads go to the same thread after every pending write, so a read sees what was
enqueued before it (read-your-writes) and statements never run concurrently on one connection.

Bounded: thermal rows are coalesced per model (the latest row wins, at most one per model), usage records
are kept in order up to `max_pending`; beyond that, a new record is folded into one aggregate per
(model, operation, service) (`UsageRow.merge`), so the usage summary stays exact while memory stays
bounded when the database is slow.

Concurrency (STYLE.md #5): the enqueue methods and the pending buffers belong to the event loop (sync
methods, no await between check and write); the worker task is the only consumer. A failed batch is
logged and kept in `error` (the controller's `healthy()` reports it), never silent. `close()` flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from serving.control.store import ControlStore, ThermalRow, UsageRow

log = logging.getLogger(__name__)
T = TypeVar("T")


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class StoreWriter:
    """Write-behind queue in front of a `ControlStore`; one thread runs every statement in order."""

    def __init__(self, store: ControlStore, *, max_pending: int = 10_000) -> None:
        self.store = store
        self.max_pending = max_pending
        self.error: BaseException | None = None
        self._rows: dict[str, ThermalRow] = {}
        self._usage: list[UsageRow] = []
        self._overflow: dict[tuple[str, str, str | None], UsageRow] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    # ------------------------------------------------------------------ enqueue (sync, on the loop)
    def save_thermal(self, row: ThermalRow) -> None:
        """Queue one model's thermal row; a later row of the same model replaces it."""
        self._rows[row.model_id] = row
        self._kick()

    def record_usage(self, row: UsageRow) -> None:
        """Queue one usage record (folded into an aggregate when `max_pending` are waiting)."""
        if len(self._usage) < self.max_pending:
            self._usage.append(row)
        else:
            key = (row.model_id, row.operation, row.service_id)
            agg = self._overflow.get(key)
            if agg is None:
                self._overflow[key] = UsageRow(**row.__dict__)
            else:
                agg.merge(row)
        self._kick()

    def pending(self) -> int:
        """Rows and records not yet handed to the database."""
        return len(self._rows) + len(self._usage) + len(self._overflow)

    # ------------------------------------------------------------------ awaitables
    async def flush(self) -> None:
        """Return once everything enqueued before this call is written (or its batch failed)."""
        idle = self._drained is None or self._drained.is_set()
        if self.pending() == 0 and (idle or self._worker is None or self._worker.get_loop() is not _loop()):
            return
        self._kick()
        assert self._drained is not None
        while self.pending() or not self._drained.is_set():
            await self._drained.wait()

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store read on the store's thread after every pending write."""
        await self.flush()
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor(), call)

    async def close(self) -> None:
        """Flush, stop the worker and the thread (a later write starts them again)."""
        await self.flush()
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.cancel()
            if worker.get_loop() is _loop():  # a worker of a closed loop is gone with it
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True)

    # ------------------------------------------------------------------ worker
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-store")
        return self._pool

    def _kick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            # first write, or a new event loop (a test client's portal): a fresh worker on this loop
            self._wake, self._drained = asyncio.Event(), asyncio.Event()
            self._worker = loop.create_task(self._run(), name="control-store-writer")
            self._drained.set()
        assert self._wake is not None and self._drained is not None
        if self.pending():
            self._drained.clear()
            self._wake.set()

    def _take(self) -> tuple[list[ThermalRow], list[UsageRow]]:
        rows, usage = list(self._rows.values()), self._usage + list(self._overflow.values())
        self._rows, self._usage, self._overflow = {}, [], {}
        return rows, usage

    async def _run(self) -> None:
        assert self._wake is not None and self._drained is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, usage = self._take()
            if rows or usage:
                try:
                    await loop.run_in_executor(self._executor(), functools.partial(self.store.write, rows, usage))
                except Exception as exc:  # supervised: reported through `error`, never silent
                    self.error = exc
                    log.exception("control store write failed (%d rows, %d usage records lost)", len(rows),
                                  len(usage))
            if self.pending():
                self._wake.set()
            else:
                self._drained.set()
