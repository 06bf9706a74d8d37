"""What a model service did lately, for the status page: a bounded log of the manager's events and every
model's full status.

    GET /models/activity?since=N&limit=M   {service, boot, last_seq, events: [...], models: [ModelStatus...]}

`ActivityLog` subscribes to the manager's typed events (serving/vram/events.py) and keeps the last
`capacity` loads, restores, evictions, failures, OOMs and refusals, numbered by `seq` (1, 2, ...). A reader
passes the last `seq` it saw as `since` and gets only what is newer; `boot` changes when the process
restarts, so a reader knows to start over. Hits and misses are counted by the metrics, not logged here
(one per request would drown the rest); `HANDLERS` names every event type so a new one fails a test.

State ownership: the manager emits synchronously on the event loop and the route reads on the same loop,
so the deque needs no lock.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from serving.services.common import require_manager
from serving.services.context import Ctx
from serving.vram import events as ev
from serving.vram.status import ModelStatus, model_status

router = APIRouter(tags=["models"])


class ActivityEvent(BaseModel):
    """One logged manager event."""

    seq: int = Field(description="1, 2, ... in emission order within one process (see `boot`).")
    t: float = Field(description="Seconds since the epoch (the service's clock).")
    type: str = Field(description="load | restore | evict | load_failed | oom | overloaded")
    model: str | None
    detail: str = Field(description="Human-readable: tiers, seconds, reason or error.")


class Activity(BaseModel):
    """GET /models/activity."""

    service: str
    boot: str = Field(description="Changes when the service process restarts (sequence numbers start over).")
    last_seq: int
    events: list[ActivityEvent] = Field(description="Events with seq > since, oldest first.")
    models: list[ModelStatus] = Field(description="Every model's full status (leases, last use, host MB, ...).")


Entry = tuple[str, str | None, str]  # (type, model, detail)


class ActivityLog:
    """A ring buffer of the manager's notable events (see the module docstring)."""

    def __init__(self, capacity: int = 500, clock: Callable[[], float] = time.time) -> None:
        self.events: deque[ActivityEvent] = deque(maxlen=capacity)
        self.seq = 0
        self.boot = uuid.uuid4().hex[:12]
        self.clock = clock

    @classmethod
    def attach(cls, manager: Any, clock: Callable[[], float] | None = None) -> ActivityLog:
        """A log subscribed to `manager`'s events."""
        log = cls(clock=clock or time.time)
        manager.subscribe(log.on_event)
        return log

    def on_event(self, event: ev.ManagerEvent) -> None:
        entry = self.HANDLERS[type(event)](event)
        if entry is None:
            return
        self.seq += 1
        kind, model, detail = entry
        self.events.append(ActivityEvent(seq=self.seq, t=self.clock(), type=kind, model=model, detail=detail))

    def since(self, seq: int, limit: int) -> list[ActivityEvent]:
        newer = [e for e in self.events if e.seq > seq]
        return newer[-limit:]

    #: event type -> (type, model, detail), or None for events counted by the metrics only
    HANDLERS: ClassVar[dict[type, Callable[[Any], Entry | None]]] = {
        ev.Hit: lambda e: None,
        ev.Miss: lambda e: None,
        ev.Load: lambda e: ("load", e.model, f"{e.from_tier} -> {e.to_tier} in {e.seconds:.2f}s"),
        ev.Restore: lambda e: ("restore", e.model, f"WARM -> HOT in {e.seconds:.2f}s"),
        ev.LoadFailed: lambda e: ("load_failed", e.model, e.error[:300]),
        ev.Evict: lambda e: ("evict", e.model, f"{e.from_tier} -> {e.to_tier} ({e.reason})"),
        ev.Oom: lambda e: ("oom", e.model, f"out of memory during {e.phase}"),
        ev.Overloaded: lambda e: ("overloaded", None, f"{e.queued} queued (max {e.max_queue}) on {e.device}"),
    }


@router.get("/models/activity", response_model=Activity)
async def models_activity(ctx: Ctx, since: int = Query(0, ge=0, le=2**53),
                          limit: int = Query(100, ge=1, le=500)) -> dict[str, Any]:
    manager = require_manager(ctx)
    log = ctx.activity
    view = manager.view()
    return {
        "service": ctx.service,
        "boot": log.boot if log else "",
        "last_seq": log.seq if log else 0,
        "events": log.since(since, limit) if log else [],
        "models": [model_status(m) for m in view.models.values()],
    }
