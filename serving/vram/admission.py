"""Admission: room for one load inside the budget and the device's real free memory (DESIGN.md §4).

need = measured footprint if known, else declared vram_mb x safety factor. It fits when the ledger has
room AND the device's real free memory (other tenants included, minus headroom and minus reservations
whose weights have not arrived yet) allows it. Else victims chosen by the policy among unleased models
are evicted through the tier mover; if leases block it, admission waits (bounded, on the manager's
`changed` condition, never sleep-polling) and then fails with `InsufficientVram` (503 + Retry-After).

A part of the manager, on its event loop: the device probe runs through the runner, and everything from
the ledger check to the reservation is synchronous (no `await` in between).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from serving.config import MB
from serving.errors import InsufficientVram
from serving.vram.cost import CostModel
from serving.vram.devices import Device
from serving.vram.entry import HOT, ModelEntry
from serving.vram.ledger import Ledger
from serving.vram.policy import Policy, VictimCandidate, pick_victims
from serving.vram.runner import Runner
from serving.vram.snapshot import Oracle, need_bytes, victim_candidates
from serving.vram.tiers import TierMover


class Admission:
    """Reserves `need` bytes for a model, evicting or waiting as the module docstring says."""

    def __init__(self, *, entries: Mapping[str, ModelEntry], ledger: Ledger, device: Device, runner: Runner,
                 clock: Callable[[], float], policy: Policy, cost: CostModel, oracle: Oracle | None,
                 tiers: TierMover, headroom_bytes: int, safety_factor: float, timeout_s: float,
                 wait_changed: Callable[[float], Awaitable[None]]) -> None:
        self.entries, self.ledger, self.device, self.runner, self.clock = entries, ledger, device, runner, clock
        self.policy, self.cost, self.oracle, self.tiers = policy, cost, oracle, tiers
        self.headroom, self.safety_factor, self.timeout_s = int(headroom_bytes), safety_factor, timeout_s
        self.wait_changed = wait_changed

    def need_bytes(self, e: ModelEntry) -> int:
        return need_bytes(e, self.safety_factor, self.ledger.device.budget)

    def candidates(self, exclude: str) -> list[VictimCandidate]:
        """Every evictable HOT model but `exclude`, as the policy sees it now."""
        return victim_candidates(self.entries.values(), self.ledger, self.cost, self.clock(), exclude=exclude,
                                 oracle=self.oracle)

    async def real_shortfall(self, need: int) -> int:
        """Bytes the device itself lacks (other tenants included), beyond what the ledger knows. The probe
        runs off the loop; the ledger part is computed after it, synchronously."""
        free = await self.runner(self.device.free_bytes)
        pending = sum(max(r - self._owned_estimate(n), 0) for n, r in self.ledger.device.reserved.items())
        return max(need - (free - self.headroom - pending), 0)

    def _owned_estimate(self, name: str) -> int:
        e = self.entries.get(name)
        return self.ledger.device.get(name) if e is not None and e.tier == HOT else 0

    async def admit(self, e: ModelEntry, need: int) -> None:
        """Reserve `need` bytes for `e` in the ledger, or raise InsufficientVram."""
        budget = self.ledger.device.budget
        if need > budget:
            raise InsufficientVram(
                f"model {e.name!r} needs {need / MB:.0f} MB, more than the whole budget ({budget / MB:.0f} MB)",
                details={"model": e.name, "need_mb": need / MB},
                retry_after=60.0,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            real = await self.real_shortfall(need)
            # synchronous from here to the reservation
            shortfall = max(need - self.ledger.device.available, 0, real)
            if shortfall == 0:
                self.ledger.device.reserve(e.name, need)
                return
            victims = pick_victims(self.policy, self.candidates(exclude=e.name), shortfall, self.clock())
            if victims:
                await self.tiers.evict(victims, reason="capacity")
                continue
            left = deadline - loop.time()
            if left <= 0:
                raise InsufficientVram(
                    f"cannot fit {e.name!r} ({need / MB:.0f} MB): {self.ledger.device.available / MB:.0f} MB free "
                    "and the rest is leased or pinned",
                    details={"model": e.name, "need_mb": need / MB,
                             "leased": [n for n, x in self.entries.items() if x.refcount > 0]},
                )
            await self.wait_changed(left)
