"""The one cost model of moving weights between tiers (DESIGN.md §10).

A cold load costs `init_s + bytes / disk_bps` (fixed init: process-side set-up, graph build; then the
read from disk); a warm-tier restore costs `bytes / pinned_bps` (one pinned host -> device copy).
The manager uses it to estimate reload seconds for the policies when nothing was measured yet, the fake
adapters spend exactly these seconds on a virtual clock, and `zoo bench policy` takes its figures
from the command line. Change a default here and every one of them follows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds to bring `nbytes` back onto the device. Bandwidths in bytes/s, times in seconds."""

    init_s: float = 0.5  # fixed cost of a cold load
    disk_bps: float = 1.0e9  # disk -> device, bytes/s
    pinned_bps: float = 12.0e9  # pinned host memory -> device, bytes/s

    def load_s(self, nbytes: int) -> float:
        """A cold load from disk."""
        return self.init_s + nbytes / self.disk_bps

    def restore_s(self, nbytes: int) -> float:
        """A warm-tier restore (one H2D copy)."""
        return nbytes / self.pinned_bps
