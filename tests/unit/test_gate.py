"""The inference gate on its own: at most max_inflight calls run, at most max_queue wait, the rest are refused
at once with Overloaded (503 + Retry-After) and an event; the queue count survives errors and cancellations."""

from __future__ import annotations

import asyncio
import threading

import pytest
from _manager_support import until

from serving.errors import Overloaded
from serving.vram import events as ev
from serving.vram.gate import InferenceGate
from serving.vram.runner import inline_runner, thread_runner


async def test_gate_with_no_queue_runs_while_a_slot_is_free_and_refuses_beyond():
    seen: list[ev.ManagerEvent] = []
    gate = InferenceGate(max_inflight=1, max_queue=0, runner=thread_runner, device="fake:0", emit=seen.append)
    assert await gate.run(lambda x: x + 1, 1) == 2  # a free slot: no queue needed
    release = threading.Event()
    running = asyncio.create_task(gate.run(release.wait, 5))
    await until(lambda: gate._sem.locked())
    with pytest.raises(Overloaded) as ei:
        await gate.run(lambda: None)
    assert ei.value.details == {"queued": 0, "max_queue": 0} and ei.value.status_code == 503
    assert str(ei.value) == "0 inference calls already queued on fake:0; retry shortly"
    assert seen == [ev.Overloaded("fake:0", 0, 0)]
    release.set()
    assert await running is True
    assert gate.queued == 0 and not gate._sem.locked()


async def test_gate_counts_the_queue_and_frees_slots_after_errors():
    gate = InferenceGate(max_inflight=1, max_queue=2, runner=inline_runner, device="d", emit=lambda e: None)

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        await gate.run(boom)
    assert await gate.run(lambda a, b=0: a + b, 1, b=2) == 3  # the slot came back; kwargs pass through
    assert gate.queued == 0


async def test_a_cancelled_queued_call_leaves_the_queue():
    gate = InferenceGate(max_inflight=1, max_queue=1, runner=thread_runner, device="d", emit=lambda e: None)
    release = threading.Event()
    running = asyncio.create_task(gate.run(release.wait, 5))
    await until(lambda: gate._sem.locked())
    queued = asyncio.create_task(gate.run(lambda: 1))
    await until(lambda: gate.queued == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert gate.queued == 0
    release.set()
    await running
    assert await gate.run(lambda: 2) == 2


async def test_gate_counts_every_queued_call():
    gate = InferenceGate(max_inflight=1, max_queue=2, runner=thread_runner, device="d", emit=lambda e: None)
    release = threading.Event()
    running = asyncio.create_task(gate.run(release.wait, 5))
    await until(lambda: gate._sem.locked())
    queued = [asyncio.create_task(gate.run(lambda: 1)) for _ in range(2)]
    await until(lambda: gate.queued == 2)
    with pytest.raises(Overloaded):
        await gate.run(lambda: 3)
    release.set()
    assert await asyncio.gather(running, *queued) == [True, 1, 1] and gate.queued == 0
