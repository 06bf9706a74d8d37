"""The ledger: the only place that does arithmetic on memory.

Two pools, each with its own budget: `device` (VRAM reserved per model) and `host` (warm-tier bytes per
model). A reservation never takes a pool past its budget: `reserve` and `resize` refuse instead, so
"reserved <= budget" holds at every instant by construction. Not thread-safe by design: only the
manager's event-loop code touches it, synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MB = 1024 * 1024


class LedgerRefused(Exception):
    """A reservation would exceed the pool's budget."""


@dataclass
class Pool:
    """Reservations (bytes per model name) inside one budget (bytes)."""

    name: str
    budget: int
    reserved: dict[str, int] = field(default_factory=dict)

    @property
    def used(self) -> int:
        return sum(self.reserved.values())

    @property
    def available(self) -> int:
        return self.budget - self.used

    def fits(self, nbytes: int, *, replacing: str | None = None) -> bool:
        current = self.reserved.get(replacing, 0) if replacing else 0
        return self.used - current + nbytes <= self.budget

    def reserve(self, name: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("negative reservation")
        if not self.fits(nbytes, replacing=name):
            raise LedgerRefused(
                f"{self.name}: {name} needs {nbytes / MB:.1f} MB, {self.available / MB:.1f} MB of "
                f"{self.budget / MB:.1f} MB available"
            )
        self.reserved[name] = int(nbytes)

    def release(self, name: str) -> int:
        return self.reserved.pop(name, 0)

    def get(self, name: str) -> int:
        return self.reserved.get(name, 0)


class Ledger:
    """VRAM and host warm-tier reservations of one manager."""

    def __init__(self, device_budget: int, host_budget: int) -> None:
        self.device = Pool("device", int(device_budget))
        self.host = Pool("host", int(host_budget))

    def check(self) -> None:
        """Invariant check used by tests after every step."""
        for t in (self.device, self.host):
            assert t.used <= t.budget, f"{t.name} reserved {t.used} > budget {t.budget}"
            assert all(v >= 0 for v in t.reserved.values())
