"""How the manager runs blocking work (adapter load/offload/restore/unload, inference, device probes,
footprint writes): an injected async `Runner`, a worker thread by default, inline for fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Runner = Callable[..., Awaitable[Any]]


async def thread_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Blocking work in a worker thread: the default, so the event loop never blocks."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def inline_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs blocking work on the loop itself: for fakes and the simulation benchmark only."""
    return fn(*args, **kwargs)
