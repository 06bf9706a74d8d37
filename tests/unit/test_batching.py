"""DynamicBatcher with an injected clock/sleep and a fake model: batch formation, delay, errors, overload."""

from __future__ import annotations

import asyncio

import pytest

from serving.errors import Overloaded
from serving.services.batching import DynamicBatcher


class FakeTime:
    """clock() reads t; sleep(s) waits until advance() moves t past its deadline (no real waiting)."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, fut in list(self._sleepers):
            if deadline <= self.t and not fut.done():
                fut.set_result(None)
                self._sleepers.remove((deadline, fut))

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())


class FakeModel:
    """Doubles numbers; records each batch; can be told to fail or to block until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [2 * x for x in items]


async def settle(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_concurrent_requests_are_batched_up_to_max_batch():
    ft, model = FakeTime(), FakeModel()
    b = DynamicBatcher(model, max_batch=4, max_delay_s=1.0, clock=ft.clock, sleep=ft.sleep)
    results = await asyncio.gather(*(b.submit(i) for i in range(8)))
    assert results == [2 * i for i in range(8)]
    assert model.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]  # full batches never wait for the delay
    assert b.stats.sizes == [4, 4]
    await b.stop()


async def test_partial_batch_waits_for_max_delay_then_runs():
    ft, model = FakeTime(), FakeModel()
    b = DynamicBatcher(model, max_batch=4, max_delay_s=0.010, clock=ft.clock, sleep=ft.sleep, adaptive=False)
    t1 = asyncio.create_task(b.submit(1))
    await settle()
    assert model.batches == [] and ft.sleeping == 1  # waiting for company
    t2 = asyncio.create_task(b.submit(2))
    await settle()
    assert model.batches == []  # joined the open batch, still below max_batch
    ft.advance(0.009)
    await settle()
    assert model.batches == []
    ft.advance(0.002)  # 11 ms after the first item: the delay has passed
    await settle()
    assert model.batches == [[1, 2]]
    assert await t1 == 2 and await t2 == 4
    await b.stop()


async def test_adaptive_lone_request_does_not_wait_but_concurrency_does():
    ft, model = FakeTime(), FakeModel()
    b = DynamicBatcher(model, max_batch=4, max_delay_s=0.010, clock=ft.clock, sleep=ft.sleep)
    assert await b.submit(1) == 2  # idle service, nothing queued: runs at once, no clock advance needed
    assert model.batches == [[1]] and ft.sleeping == 0
    pair = asyncio.gather(b.submit(2), b.submit(3))  # two at once: concurrency, so the batch waits for more
    await settle()
    assert ft.sleeping == 1
    ft.advance(0.011)
    assert await pair == [4, 6] and model.batches[-1] == [2, 3]
    t = asyncio.create_task(b.submit(4))  # the last batch had company: wait for more
    await settle()
    assert ft.sleeping == 1 and model.batches[-1] == [2, 3]
    ft.advance(0.011)
    await settle()
    assert await t == 8 and model.batches[-1] == [4]
    await b.stop()


async def test_zero_delay_runs_what_is_queued():
    model = FakeModel()
    b = DynamicBatcher(model, max_batch=8, max_delay_s=0.0)
    assert await b.submit(3) == 6
    assert model.batches == [[3]]
    await b.stop()


async def test_max_batch_one_is_batching_off():
    model = FakeModel()
    b = DynamicBatcher(model, max_batch=1, max_delay_s=0.5)
    assert await asyncio.gather(*(b.submit(i) for i in range(3))) == [0, 2, 4]
    assert model.batches == [[0], [1], [2]]
    await b.stop()


async def test_batch_error_reaches_every_waiter_and_worker_survives():
    model = FakeModel()
    model.fail = ValueError("boom")
    b = DynamicBatcher(model, max_batch=4, max_delay_s=0.0)
    outcomes = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert b.stats.failures == 1
    model.fail = None
    assert await b.submit(5) == 10  # the worker is still alive
    await b.stop()


async def test_wrong_result_count_is_an_error_for_the_batch():
    async def bad(items):
        return items[:-1]

    b = DynamicBatcher(bad, max_batch=4, max_delay_s=0.0)
    outcomes = await asyncio.gather(*(b.submit(i) for i in range(2)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    await b.stop()


async def test_full_queue_is_overloaded_with_retry_after():
    model = FakeModel()
    model.gate = asyncio.Event()
    b = DynamicBatcher(model, max_batch=1, max_delay_s=0.0, max_queue=2)
    first = asyncio.create_task(b.submit(0))
    await settle()
    assert model.batches == [[0]]  # running, blocked on the gate
    queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await settle()
    with pytest.raises(Overloaded) as ei:
        await b.submit(3)
    assert ei.value.status_code == 503 and ei.value.retry_after
    model.gate.set()
    assert await first == 0 and [await q for q in queued] == [2, 4]
    await b.stop()


async def test_cancelled_waiter_is_dropped_from_its_batch():
    ft, model = FakeTime(), FakeModel()
    b = DynamicBatcher(model, max_batch=4, max_delay_s=0.010, clock=ft.clock, sleep=ft.sleep, adaptive=False)
    t1 = asyncio.create_task(b.submit(1))
    t2 = asyncio.create_task(b.submit(2))
    await settle()
    t1.cancel()
    await settle()
    ft.advance(0.02)
    await settle()
    assert await t2 == 4
    assert model.batches == [[2]]
    await b.stop()


async def test_on_batch_hook_sees_sizes_and_waits():
    ft, model = FakeTime(), FakeModel()
    seen = []
    b = DynamicBatcher(model, max_batch=2, max_delay_s=0.010, clock=ft.clock, sleep=ft.sleep,
                       on_batch=lambda n, waits: seen.append((n, waits)), adaptive=False)
    t = asyncio.create_task(b.submit(1))
    await settle()
    ft.advance(0.015)
    await settle()
    await t
    assert seen == [(1, [pytest.approx(0.015)])]
    await b.stop()


async def test_stop_fails_queued_items():
    model = FakeModel()
    model.gate = asyncio.Event()
    b = DynamicBatcher(model, max_batch=1, max_delay_s=0.0, max_queue=4)
    running = asyncio.create_task(b.submit(0))
    await settle()
    waiting = asyncio.create_task(b.submit(1))
    await settle()
    stopper = asyncio.create_task(b.stop())
    await settle()
    model.gate.set()
    await stopper
    assert await running == 0
    with pytest.raises(Overloaded):
        await waiting


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        DynamicBatcher(FakeModel(), max_batch=0)
