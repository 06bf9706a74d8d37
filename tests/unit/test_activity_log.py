"""The status page's per-service event log (serving/services/activity.py): every manager event type has a
handler, sequence numbers let a reader take only what is new, and the log is bounded."""

from __future__ import annotations

from serving.services.activity import ActivityLog
from serving.vram import events as ev
from serving.vram.fakes import FakeClock


def test_every_event_type_has_a_handler():
    assert set(ActivityLog.HANDLERS) == set(ev.EVENT_TYPES)


def test_sequence_since_and_capacity():
    clock = FakeClock()
    log = ActivityLog(capacity=3, clock=clock)
    log.on_event(ev.Hit("a"))  # counted by the metrics, not logged
    log.on_event(ev.Load("a", "COLD", "HOT", 1.5))
    clock.advance(2)
    log.on_event(ev.Evict("a", "idle", "HOT", "WARM"))
    log.on_event(ev.LoadFailed("b", "boom " * 200))
    log.on_event(ev.Overloaded("cuda:0", 64, 64))
    assert [e.seq for e in log.events] == [2, 3, 4]  # bounded: the oldest went
    assert [(e.type, e.model) for e in log.since(2, 10)] == [("load_failed", "b"), ("overloaded", None)]
    assert log.since(3, 1)[0].type == "overloaded"
    evict = log.events[0]
    assert evict.detail == "HOT -> WARM (idle)" and evict.t == clock()
    assert len(log.events[1].detail) == 300
