"""Pure snapshot builders: the manager's entries and ledger -> what the policy and the other rooms read.

Nothing here mutates an entry, awaits or does I/O; each function reads the state handed to it at one
instant (the manager calls them synchronously on its event loop, so a snapshot is consistent).
- `victim_candidates`: the HOT models a policy may evict (unleased, not pinned, not in transition), with
  their reload cost from the one `CostModel` when nothing was measured;
- `warm_candidates`: the WARM models the host tier may drop to COLD;
- `model_view`: the frozen `ModelView` of one entry;
- `check_invariants`: the manager's invariants, asserted over one snapshot (tests run it after each step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Container, Iterable, Mapping

from serving.vram.cost import CostModel
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.ledger import Ledger
from serving.vram.policy import VictimCandidate
from serving.vram.view import ModelView

#: decay constant (seconds) of the per-model use rate the policies see
RATE_TAU_S = 600.0

Oracle = Callable[[str, float], float]


def decayed_rate(rate: float, rate_at: float, now: float) -> float:
    """A use rate recorded at `rate_at`, decayed to `now` (exponential, RATE_TAU_S); 0 when never used."""
    if not rate_at:
        return 0.0
    return rate * math.exp(-max(now - rate_at, 0.0) / RATE_TAU_S)


def need_bytes(e: ModelEntry, safety_factor: float, budget: int) -> int:
    """What admission reserves for `e`: its measured footprint, else declared vram x safety factor. The
    margin never makes a model that fits the budget by its own figure unloadable."""
    if e.measured_bytes:
        return int(e.measured_bytes)
    declared = e.spec.vram_bytes
    padded = int(declared * safety_factor)
    return min(padded, budget) if declared <= budget else padded


def reload_seconds(e: ModelEntry, nbytes: int, host_budget: int, cost: CostModel) -> float:
    """Seconds to bring `e` back if evicted now: a warm restore when the host tier could hold it, else a
    cold load; measured figures first, the cost model otherwise."""
    if host_budget >= (e.host_bytes or nbytes):
        return e.restore_s or cost.restore_s(nbytes)
    return e.load_s or cost.load_s(nbytes)


def victim_candidates(
    entries: Iterable[ModelEntry],
    ledger: Ledger,
    cost: CostModel,
    now: float,
    *,
    exclude: str | None = None,
    oracle: Oracle | None = None,
) -> list[VictimCandidate]:
    """Every HOT model that may be evicted now: not `exclude`, unleased, not pinned, not in transition."""
    out = []
    for x in entries:
        if x.name == exclude or x.tier != HOT or x.refcount > 0 or x.busy or x.pinned:
            continue
        nbytes = ledger.device.get(x.name)
        out.append(
            VictimCandidate(
                name=x.name,
                bytes=nbytes,
                priority=int(x.spec.priority),
                last_used=x.last_used,
                keep_alive_s=x.keep_alive_s,
                reload_s=reload_seconds(x, nbytes, ledger.host.budget, cost),
                rate=decayed_rate(x.rate, x.rate_at, now),
                next_use=oracle(x.name, now) if oracle else None,
                always=x.spec.residency == "always",
            )
        )
    return out


def warm_candidates(
    entries: Iterable[ModelEntry], ledger: Ledger, *, exclude: str, loading: Container[str]
) -> list[VictimCandidate]:
    """WARM models the host tier may drop to COLD: not in transition, not kept warm (thermal WARM), not
    `exclude`, not loading. Bytes are their host-tier reservation."""
    return [
        VictimCandidate(name=w.name, bytes=ledger.host.get(w.name), priority=int(w.spec.priority),
                        last_used=w.last_used, keep_alive_s=w.keep_alive_s)
        for w in entries
        if w.tier == WARM and not w.busy and not w.keep_warm and w.name != exclude and w.name not in loading
    ]


def model_view(e: ModelEntry, ledger: Ledger, *, need: int, loading: bool) -> ModelView:
    """The frozen view of one entry (copies only immutable values)."""
    return ModelView(
        name=e.name, spec=e.spec, tier=e.tier, loading=loading, leases=e.refcount,
        reserved_bytes=ledger.device.get(e.name), host_bytes=ledger.host.get(e.name),
        need_bytes=need, measured_bytes=e.measured_bytes, pinned=e.pinned,
        disabled=e.disabled, keep_warm=e.keep_warm, keep_alive_s=e.keep_alive_s,
        thermal_state=e.thermal_state, uses=e.uses, busy_s=e.busy_s, last_used=e.last_used,
        load_s=e.load_s, restore_s=e.restore_s,
        format=e.adapter.format if e.adapter is not None else None, failures=e.failures,
        last_error=e.last_error, next_retry_at=e.next_retry_at,
    )


def check_invariants(entries: Mapping[str, ModelEntry], ledger: Ledger, loading: Collection[str]) -> None:
    """reserved <= budget in both pools; COLD/FAILED/WARM models hold no device reservation unless their load
    is in flight (reserved before the weights arrive); in-flight loads are of known models."""
    ledger.check()
    for n, e in entries.items():
        assert e.refcount >= 0, n
        if e.tier in (COLD, FAILED) and not e.busy and n not in loading:
            assert ledger.device.get(n) == 0, f"{n} is {e.tier} but holds a reservation"
        if e.tier == WARM and n not in loading:
            assert ledger.device.get(n) == 0, f"{n} is WARM but holds VRAM"
    assert set(loading) <= set(entries)
