"""Client notifications of seed 000's notifier: warm-up started, model ready, model cold/offline, service
state changed; served as server-sent events (sse-starlette) and over a WebSocket by serving.control.api_v2.

`Notifier.publish` is synchronous and never blocks (the thermal controller calls it from its listeners on
the event loop); every subscriber has a bounded queue: when a slow client lets it fill, the oldest
notifications are dropped and counted (`dropped`), so one slow client never holds the controller back.
Concurrency (STYLE.md #5): publish and the queues belong to the event loop; nothing awaits between a
check and a write.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventKind = Literal["warmup_started", "ready", "cold", "offline", "online", "state_change", "target", "error",
                    "service_state"]

#: controller event name -> notification kind
CONTROLLER_EVENTS: dict[str, EventKind] = {
    "warmup": "warmup_started", "ready": "ready", "cold": "cold", "offline": "offline", "online": "online",
    "state_change": "state_change", "target": "target", "error": "error",
}


@dataclass(frozen=True)
class Notification:
    """One notification: what happened, to which model or service, when, and the details."""

    id: int
    event: EventKind
    at: float
    model: str | None = None
    service: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Subscription:
    """One client's bounded queue of notifications."""

    def __init__(self, notifier: Notifier, max_queue: int) -> None:
        self.notifier = notifier
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=max_queue)
        self.dropped = 0

    def offer(self, n: Notification) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(n)

    async def next(self) -> Notification:
        return await self.queue.get()

    def close(self) -> None:
        self.notifier.unsubscribe(self)


class Notifier:
    """Fan-out of notifications to every subscriber (SSE stream or WebSocket)."""

    def __init__(self, clock: Callable[[], float], *, max_queue: int = 256) -> None:
        self.clock = clock
        self.max_queue = max_queue
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.published = 0

    def publish(self, event: EventKind, *, model: str | None = None, service: str | None = None,
                **data: Any) -> Notification:
        n = Notification(next(self._ids), event, self.clock(), model, service, data)
        self.published += 1
        for sub in list(self._subs):
            sub.offer(n)
        return n

    def on_controller_event(self, event: str, fields: dict[str, Any]) -> None:
        """A `ThermalController` listener: its events become notifications (unknown events are an error)."""
        kind = CONTROLLER_EVENTS[event]
        rest = {k: v for k, v in fields.items() if k not in ("model", "service")}
        self.publish(kind, model=fields.get("model"), service=fields.get("service"), **rest)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.max_queue)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def stream(self, sub: Subscription) -> AsyncIterator[Notification]:
        """Notifications of `sub` until the consumer stops iterating (then it unsubscribes)."""
        try:
            while True:
                yield await sub.next()
        finally:
            sub.close()
