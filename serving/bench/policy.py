"""`zoo bench policy`: replay a trace through the real manager on a FakeDevice, once per policy.

Cost model (DESIGN.md §10, serving/vram/cost.py): a cold load costs `init_s + bytes / disk_bps`, a
warm-tier restore `bytes / pinned_bps`; the fake adapters spend that time on a virtual clock and the
manager estimates reload costs with the same `CostModel`, so the figures are exact and repeatable.
The policies compared are every policy registered in serving/vram/policy.py (`POLICIES`).
Requests are replayed in time order; when loads make the replay fall behind, later requests wait (their
added latency includes the queueing), as on a real single-device service.

Trace lines: `{"t": 12.5, "model": "pose_estimator", "ms": 40}` or
`{"t": 12.5, "detections": ["person", "car"], "ms": 40, "options": {...}}` (expanded through the zoo's
triggers for the service).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import platform
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from serving.config import MB, Priority, ZooConfig, load_zoo
from serving.vram.cost import CostModel
from serving.vram.policy import INF, POLICIES

from .replay import replay_manager
from .scheduled import SCHEDULERS, simulate_scheduled, slo_attainment


def read_trace(path: Path) -> list[dict[str, Any]]:
    events = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        ev = json.loads(line)
        if "t" not in ev or ("model" not in ev and "detections" not in ev):
            raise ValueError(f"{path}:{i}: a trace line needs t and model or detections")
        events.append(ev)
    events.sort(key=lambda e: e["t"])
    return events


def expand(events: Iterable[dict[str, Any]], zoo: ZooConfig, service: str) -> list[tuple[float, str, float]]:
    """(t, model, ms) requests for the models of `service`."""
    served = set(zoo.services[service].models)
    out: list[tuple[float, str, float]] = []
    for line in events:
        ms = float(line.get("ms", 0.0))
        if "model" in line:
            if line["model"] in served:
                out.append((float(line["t"]), line["model"], ms))
            continue
        seen: list[str] = []
        for label in line["detections"]:
            for m in zoo.models_for_detection(label, line.get("options"), service=service):
                if m not in seen:
                    seen.append(m)
        out.extend((float(line["t"]), m, ms) for m in seen)
    return out


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


async def simulate(
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
    start = requests[0][0] if requests else 0.0
    positions: dict[str, list[int]] = defaultdict(list)
    for i, (_, m, _) in enumerate(requests):
        positions[m].append(i)
    cursor = {"i": 0}

    def oracle(name: str, now: float) -> float:
        """Time of this model's next request after the one being served (the offline knowledge)."""
        idx = positions.get(name, [])
        j = bisect.bisect_right(idx, cursor["i"])
        return max(requests[idx[j]][0], now) if j < len(idx) else INF

    manager, clock, behaviour, counts = replay_manager(
        specs, zoo.models_root, start=start, policy=policy, budget_bytes=budget_bytes, host_bytes=host_bytes,
        cost=cost, oracle=oracle)
    added: list[float] = []
    by_class: dict[str, list[float]] = defaultdict(list)
    swap_s = 0.0
    for i, (t, model, _ms) in enumerate(requests):
        cursor["i"] = i
        clock.set(t)  # never goes back: a replay that fell behind serves this request late
        before = clock()
        async with manager.use(model):
            pass
        after = clock()
        swap_s += after - before
        added.append((after - t) * 1000.0)
        by_class[Priority(specs[model].priority).name].append(after - t)
        manager.check_invariants()
    loads = sum(behaviour.loads.values())
    restores = sum(behaviour.restores.values())
    bytes_loaded = sum(specs[m].vram_bytes * n for m, n in behaviour.loads.items())
    bytes_restored = sum(specs[m].vram_bytes * n for m, n in behaviour.restores.items())
    await manager.stop()
    return {
        "swap_s": round(swap_s, 4),
        "loads": loads,
        "restores": restores,
        "hits": counts.hits,
        "misses": counts.misses,
        "bytes_loaded": bytes_loaded + bytes_restored,
        "bytes_from_disk": bytes_loaded,
        "p99_added_ms": round(p99(added), 3),
        "misses_by_priority": counts.misses_by_priority,
        "slo_attainment": slo_attainment(by_class, {p.name: zoo.scheduler.deadline_s(p) for p in Priority}),
    }


def run_policy_bench(
    *,
    zoo_path: Path | str,
    service: str,
    trace_path: Path | str,
    budget_mb: float | None = None,
    budget_fraction: float | None = None,
    host_cache_mb: float | None = None,
    cost: CostModel | None = None,
    policies: list[str] | None = None,
    scheduler: str = "fifo",
) -> dict[str, Any]:
    """Replay the trace once per policy (default: every registered one, plus the service's) in arrival order;
    with `scheduler="model-major"` also once per policy through the model-major scheduler, as rows
    `<policy>+model-major`."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    cost = cost or CostModel()
    zoo = load_zoo(zoo_path, env={})
    if service not in zoo.services:
        raise SystemExit(f"unknown service {service!r}")
    requests = expand(read_trace(Path(trace_path)), zoo, service)
    touched = sorted({m for _, m, _ in requests})
    working_set = sum(zoo.models[m].vram_bytes for m in touched)
    if budget_fraction is not None:
        budget = int(budget_fraction * working_set)
    elif budget_mb is not None:
        budget = int(budget_mb * MB)
    else:
        budget = zoo.services[service].vram_budget_bytes
    biggest = max((zoo.models[m].vram_bytes for m in touched), default=0)
    budget = max(budget, biggest)  # every model must fit alone
    host = int(host_cache_mb * MB) if host_cache_mb is not None else zoo.services[service].host_cache_bytes
    default = zoo.services[service].policy
    names = list(policies or POLICIES)
    if default not in names:
        names.append(default)
    results = {
        name: asyncio.run(
            simulate(zoo, service, requests, policy=name, budget_bytes=budget, host_bytes=host, cost=cost))
        for name in names
    }
    if scheduler == "model-major":
        for name in names:
            results[f"{name}+model-major"] = asyncio.run(simulate_scheduled(
                zoo, service, requests, policy=name, budget_bytes=budget, host_bytes=host, cost=cost))
    out: dict[str, Any] = {
        "default": default,
        "service": service,
        "trace": str(trace_path),
        "requests": len(requests),
        "models_touched": touched,
        "working_set_mb": round(working_set / MB, 1),
        "budget_mb": round(budget / MB, 1),
        "host_cache_mb": round(host / MB, 1),
        "cost_model": {"init_s": cost.init_s, "disk_gbps": cost.disk_bps / 1e9, "pinned_gbps": cost.pinned_bps / 1e9},
        "scheduler": scheduler,
        "deadline_ms": dict(zoo.scheduler.deadline_ms),
        "policies": results,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    d = results[default]["swap_s"]
    ratios: dict[str, float | None] = {}
    if "belady" in results:
        ratios["default_vs_belady"] = round(d / results["belady"]["swap_s"], 4) if results["belady"]["swap_s"] else None
    base = [results[p]["swap_s"] for p in ("lru", "ollama") if p in results]
    if base:
        ratios["default_vs_best_of_lru_ollama"] = round(d / min(base), 4) if min(base) else None
    scheduled = results.get(f"{default}+model-major")
    if scheduled is not None and "belady" in results:
        b = results["belady"]["swap_s"]
        ratios["scheduled_default_vs_belady"] = round(scheduled["swap_s"] / b, 4) if b else None
    out["ratios"] = ratios
    return out
