"""Single-flight loads (STYLE.md #4): one future per model in flight; concurrent misses await it.

A load is: admission (reserve the bytes, evicting or waiting for leases), then a slot on the device
(`load_concurrency`, so loads do not spike memory together), then the tier mover's bring-up. Admission
comes first so a load that waits for leases never holds a slot another model could use. On success the
load grants every waiter its lease synchronously; on failure every waiter gets the error and the
reservation is released (the tier mover's `fail`). OOM during a load evicts every evictable model, frees
the allocator cache and retries once.

A part of the manager, on its event loop; `inflight` is the manager's dict (model -> future).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from serving.vram import events as ev
from serving.vram.admission import Admission
from serving.vram.devices import Device
from serving.vram.entry import HOT, ModelEntry
from serving.vram.runner import Runner
from serving.vram.tiers import TierMover


class Loads:
    """Starts and runs loads; see the module docstring."""

    def __init__(self, *, inflight: dict[str, asyncio.Future[None]], admission: Admission, tiers: TierMover,
                 device: Device, runner: Runner, slot: asyncio.Semaphore,
                 emit: Callable[[ev.ManagerEvent], None], notify: Callable[[], Awaitable[None]]) -> None:
        self.inflight, self.admission, self.tiers, self.device, self.runner = inflight, admission, tiers, device, runner
        self.slot, self.emit, self.notify = slot, emit, notify
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, e: ModelEntry) -> asyncio.Future[None]:
        """Start loading `e` (the caller checked none is in flight); the future resolves when it is HOT."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.inflight[e.name] = fut

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
                self.inflight.pop(e.name, None)
                await self.notify()

        task = loop.create_task(job(), name=f"load:{e.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return fut

    async def drain(self) -> None:
        """Wait for every load in flight to finish (whatever its outcome)."""
        for t in list(self.tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t

    async def _load(self, e: ModelEntry) -> None:
        if e.tier == HOT:
            return
        await self.admission.admit(e, self.admission.need_bytes(e))  # reserves in the ledger
        try:
            await self.slot.acquire()
        except BaseException:
            self.admission.ledger.device.release(e.name)  # cancelled while waiting for the slot
            raise
        try:
            await self._bring_up(e)
        finally:
            self.slot.release()

    async def _bring_up(self, e: ModelEntry) -> None:
        try:
            await self.tiers.bring_up(e)
        except BaseException as exc:
            if self.device.is_oom(exc) and not isinstance(exc, asyncio.CancelledError):
                self.emit(ev.Oom(e.name, "load"))
                await self.tiers.evict([c.name for c in self.admission.candidates(e.name)], reason="oom")
                await self.runner(self.device.empty_cache)
                try:
                    await self.tiers.bring_up(e)
                    return
                except BaseException as exc2:
                    await self.tiers.fail(e, exc2)
                    raise self.tiers.load_error(e, exc2) from exc2
            await self.tiers.fail(e, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self.tiers.load_error(e, exc) from exc
