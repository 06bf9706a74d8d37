"""`zoo bench policy --scheduler model-major`: the replay with queueing, grouping and deadlines.

The same pure scheduler as the services (serving/vram/scheduling.py) decides which model's queued work
runs next; the real manager (on a FakeDevice, virtual clock, the one `CostModel`) does the loads,
restores and evictions with the policy under test. One device, one call at a time, as in the FIFO replay:
time advances only through swaps (inference `ms` is not charged, in both replays, so the rows compare
the cost of swapping alone).

Event loop: admit every request that has arrived by now into its model's queue; ask `decide`; `Serve` leases
the model once for the whole group (a load or restore advances the clock, every item of the group is
done when the lease is granted); `Hold(until)` jumps the clock to `until` or the next arrival, whichever
is first. The Belady oracle sees the scheduler's knowledge: a model with queued work is needed now,
otherwise at its next arrival.

An item's added latency is `done - arrived`; it meets its SLO when that is within its class deadline
(zoo.yaml `scheduler.deadline_ms`, by the model's priority).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from serving.config import Priority, ZooConfig
from serving.vram.cost import CostModel
from serving.vram.policy import INF
from serving.vram.scheduling import Hold, Pending, WorkQueues, decide, model_state, reserve_estimate

from .replay import replay_manager

SCHEDULERS = ("fifo", "model-major")


def slo_attainment(latencies_s: dict[str, list[float]], deadlines_s: dict[str, float]) -> dict[str, float]:
    """Per class present: the share of requests whose added latency stayed within the class deadline."""
    return {
        cls: round(sum(1 for x in xs if x <= deadlines_s[cls] + 1e-9) / len(xs), 4)
        for cls, xs in latencies_s.items() if xs
    }


async def simulate_scheduled(
    zoo: ZooConfig,
    service: str,
    requests: list[tuple[float, str, float]],
    *,
    policy: str,
    budget_bytes: int,
    host_bytes: int,
    cost: CostModel,
) -> dict[str, Any]:
    specs = zoo.models_of(service)
    deadlines = {p.name: zoo.scheduler.deadline_s(p) for p in Priority}
    start = requests[0][0] if requests else 0.0
    arrivals: dict[str, list[float]] = defaultdict(list)
    for t, m, _ in requests:
        arrivals[m].append(t)
    queues = WorkQueues()
    admitted = {"i": 0}

    def oracle(name: str, now: float) -> float:
        if queues.depth(name):
            return now
        ts = arrivals.get(name, [])
        j = bisect.bisect_left(ts, requests[admitted["i"]][0]) if admitted["i"] < len(requests) else len(ts)
        return max(ts[j], now) if j < len(ts) else INF

    manager, clock, behaviour, counts = replay_manager(
        specs, zoo.models_root, start=start, policy=policy, budget_bytes=budget_bytes, host_bytes=host_bytes,
        cost=cost, oracle=oracle)
    groups = 0
    latencies: dict[str, list[float]] = defaultdict(list)
    arrived_at: dict[int, tuple[float, str]] = {}
    swap_s = 0.0
    n = len(requests)
    while admitted["i"] < n or len(queues):
        now = clock()
        while admitted["i"] < n and requests[admitted["i"]][0] <= now:
            i = admitted["i"]
            t, model, _ms = requests[i]
            cls = Priority(specs[model].priority).name
            queues.add(Pending(i, model, t, t + deadlines[cls]))
            arrived_at[i] = (t, cls)
            admitted["i"] += 1
        view = manager.view()
        states = {m: model_state(view, m, cost) for m in queues.models()}
        reserve = reserve_estimate(view.models.values(), cost)
        decision = decide(queues, states, now, margin_s=1e-6, reserve_s=reserve)
        if isinstance(decision, Hold):
            nxt = requests[admitted["i"]][0] if admitted["i"] < n else INF
            target = min(nxt, decision.until if decision.until is not None else INF)
            if target == INF:
                raise RuntimeError("scheduler holds queued work forever")  # decide never does this
            clock.set(target)
            continue
        before = clock()
        async with manager.use(decision.model):
            done = clock()
        groups += 1
        swap_s += done - before
        for key in decision.keys:
            t, cls = arrived_at.pop(key)  # type: ignore[call-overload]
            latencies[cls].append(done - t)
        manager.check_invariants()
    await manager.stop()
    added_ms = sorted(x * 1000.0 for xs in latencies.values() for x in xs)
    return {
        "swap_s": round(swap_s, 4),
        "loads": sum(behaviour.loads.values()),
        "restores": sum(behaviour.restores.values()),
        "hits": counts.hits,
        "misses": counts.misses,
        "groups": groups,
        "requests_served": sum(len(xs) for xs in latencies.values()),
        "bytes_loaded": sum(specs[m].vram_bytes * k for m, k in behaviour.loads.items())
        + sum(specs[m].vram_bytes * k for m, k in behaviour.restores.items()),
        "bytes_from_disk": sum(specs[m].vram_bytes * k for m, k in behaviour.loads.items()),
        "p99_added_ms": round(added_ms[min(len(added_ms) - 1, int(round(0.99 * (len(added_ms) - 1))))], 3)
        if added_ms else 0.0,
        "misses_by_priority": counts.misses_by_priority,
        "slo_attainment": slo_attainment(latencies, deadlines),
    }

