"""The simulated service both replays share (serving/bench/policy.py FIFO, serving/bench/scheduled.py
model-major): the real manager on a fake device and fake adapters under an injected clock, and a listener
counting its hits and misses (by priority class)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import ModelSpec, Priority
from serving.vram import events as ev
from serving.vram.cost import CostModel
from serving.vram.devices import FakeDevice
from serving.vram.fakes import FakeBehaviour, FakeClock, fake_registry
from serving.vram.manager import OnDemandModelManager, inline_runner


@dataclass
class HitCounts:
    """Hits and misses of the manager's events; misses by the model's priority class name."""

    specs: Mapping[str, ModelSpec]
    hits: int = 0
    misses: int = 0
    misses_by_priority: dict[str, int] = field(default_factory=lambda: {p.name: 0 for p in Priority})

    def __call__(self, event: ev.ManagerEvent) -> None:
        if isinstance(event, ev.Hit):
            self.hits += 1
        elif isinstance(event, ev.Miss):
            self.misses += 1
            self.misses_by_priority[Priority(self.specs[event.model].priority).name] += 1


def replay_manager(specs: Mapping[str, ModelSpec], models_root: Path, *, start: float, policy: str, budget_bytes: int,
                   host_bytes: int, cost: CostModel, oracle: Callable[[str, float], float]
                   ) -> tuple[OnDemandModelManager, FakeClock, FakeBehaviour, HitCounts]:
    """(manager, its clock set to `start`, the fake adapters' behaviour (loads and restores per model), its
    hit counts): a device 4x the budget (the budget binds, not the
    device), no safety factor or headroom, loads inline; `oracle` (next use of a model) only for `belady`."""
    clock = FakeClock(start)
    behaviour = FakeBehaviour(clock=clock, cost=cost)
    manager = OnDemandModelManager(
        specs, device=FakeDevice(budget_bytes * 4 + 1), registry=fake_registry(behaviour), models_root=models_root,
        budget_bytes=budget_bytes, host_cache_bytes=host_bytes, policy=policy, safety_factor=1.0, headroom_bytes=0,
        clock=clock, runner=inline_runner, oracle=oracle if policy == "belady" else None, admission_timeout_s=1.0,
        cost=cost,
    )
    counts = HitCounts(specs)
    manager.subscribe(counts)
    return manager, clock, behaviour, counts
