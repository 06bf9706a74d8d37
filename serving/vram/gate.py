"""The inference gate: bounded concurrency and a bounded queue in front of the runner (STYLE.md #7).

At most `max_inflight` calls run at once; at most `max_queue` wait; beyond that a call fails at once with
`Overloaded` (503 + Retry-After) and an `events.Overloaded` is emitted. Runs on the manager's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from serving.errors import Overloaded
from serving.vram import events as ev
from serving.vram.runner import Runner


class InferenceGate:
    """`await gate.run(fn, *args)` runs blocking `fn` through `runner` within the bounds above."""

    def __init__(self, *, max_inflight: int, max_queue: int, runner: Runner, device: str,
                 emit: Callable[[ev.ManagerEvent], None]) -> None:
        self.max_inflight, self.max_queue, self.runner, self.device, self.emit = (
            max_inflight, max_queue, runner, device, emit)
        self._sem = asyncio.Semaphore(max_inflight)
        self.queued = 0  # calls waiting for a slot now

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._sem.locked() and self.queued >= self.max_queue:
            self.emit(ev.Overloaded(self.device, self.queued, self.max_queue))
            raise Overloaded(
                f"{self.queued} inference calls already queued on {self.device}; retry shortly",
                details={"queued": self.queued, "max_queue": self.max_queue},
            )
        self.queued += 1
        try:
            await self._sem.acquire()
        finally:
            self.queued -= 1
        try:
            return await self.runner(fn, *args, **kwargs)
        finally:
            self._sem.release()
