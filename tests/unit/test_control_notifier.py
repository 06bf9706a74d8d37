"""The notifier: every controller event has a notification kind, queues are bounded (oldest dropped)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from serving.control import thermal
from serving.control.notifier import CONTROLLER_EVENTS, Notifier
from serving.vram.fakes import FakeClock


def test_every_event_the_controller_emits_is_handled():
    src = Path(thermal.__file__).read_text()
    emitted = set(re.findall(r'_emit\(\s*"([a-z_]+)"', src))
    assert {"warmup", "ready", "cold", "offline", "online", "state_change", "target", "error"} <= emitted
    assert emitted <= set(CONTROLLER_EVENTS), f"unhandled controller events: {emitted - set(CONTROLLER_EVENTS)}"
    n = Notifier(FakeClock())
    with pytest.raises(KeyError):
        n.on_controller_event("made_up", {})  # an event nobody maps is an error, not a silent drop


async def test_queues_are_bounded_and_drop_the_oldest():
    clock = FakeClock()
    n = Notifier(clock, max_queue=3)
    slow, fast = n.subscribe(), n.subscribe()
    got = []
    for i in range(5):
        clock.advance(1)
        n.on_controller_event("state_change", {"model": f"m{i}", "service": "svc", "to_state": "HOT"})
        got.append((await fast.next()).model)
    assert got == ["m0", "m1", "m2", "m3", "m4"] and fast.dropped == 0
    assert slow.dropped == 2 and [(await slow.next()).model for _ in range(3)] == ["m2", "m3", "m4"]
    first = n.publish("service_state", service="perception", from_state="DISABLED", to_state="RUNNING")
    note = await asyncio.wait_for(slow.next(), 1)
    assert note == first and note.to_dict()["data"] == {"from_state": "DISABLED", "to_state": "RUNNING"}
    stream = n.stream(slow)
    n.publish("cold", model="m0")
    assert (await anext(stream)).event == "cold"
    await stream.aclose()  # the consumer stopped: unsubscribed
    assert n.subscribers == 1
