"""The snapshot builders on their own: who is a candidate, with which figures, and the invariant oracle."""

from __future__ import annotations

import pytest

from serving.config import MB, ModelSpec, Priority
from serving.vram.cost import CostModel
from serving.vram.entry import COLD, FAILED, HOT, WARM, ModelEntry
from serving.vram.ledger import Ledger
from serving.vram.snapshot import (
    check_invariants,
    model_view,
    need_bytes,
    reload_seconds,
    victim_candidates,
    warm_candidates,
)


def entry(name, mb=100, tier=HOT, prio=Priority.MEDIUM, **kw) -> ModelEntry:
    spec = ModelSpec(family="fake", task="t", source={"pt": "x"}, vram_mb=mb, priority=prio,
                     **{k: kw.pop(k) for k in ("residency", "keep_alive_s") if k in kw})
    e = ModelEntry(name, spec, tier=tier)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


BUSY = object()  # any non-None busy_future marks a model in transition
COST = CostModel(init_s=1.0, disk_bps=100 * MB, pinned_bps=1000 * MB)


def test_need_bytes_is_the_measured_footprint_else_declared_times_safety():
    assert need_bytes(entry("a", 100, measured_bytes=123), 1.5, 10**12) == 123
    assert need_bytes(entry("a", 100), 1.5, 10**12) == 150 * MB
    assert type(need_bytes(entry("a", 100), 1.5, 10**12)) is int


def test_need_bytes_margin_never_makes_a_model_that_fits_by_its_own_figure_unloadable():
    assert need_bytes(entry("a", 100), 1.5, 120 * MB) == 120 * MB  # padded 150 clipped to the budget
    assert need_bytes(entry("a", 100), 1.5, 100 * MB) == 100 * MB  # exactly the budget still fits
    assert need_bytes(entry("a", 100), 1.5, 99 * MB) == 150 * MB  # does not fit anyway: the padded figure


def test_reload_seconds_is_a_restore_when_the_host_tier_could_hold_it_else_a_load():
    e = entry("a", 100)
    assert reload_seconds(e, 200 * MB, 200 * MB, COST) == pytest.approx(0.2)  # 200 MB at 1000 MB/s
    assert reload_seconds(e, 200 * MB, 200 * MB - 1, COST) == pytest.approx(3.0)  # 1 s + 200 MB at 100 MB/s
    e.host_bytes = 50 * MB  # parks smaller than its device reservation
    assert reload_seconds(e, 200 * MB, 50 * MB, COST) == pytest.approx(0.2)
    e.restore_s, e.load_s = 0.7, 9.0  # measured figures win
    assert reload_seconds(e, 200 * MB, 50 * MB, COST) == 0.7
    assert reload_seconds(e, 200 * MB, 0, COST) == 9.0


def test_victim_candidates_are_the_unleased_idle_hot_models_but_the_excluded_one():
    ledger = Ledger(10**12, 0)
    entries = [
        entry("ok", 100, last_used=5.0, rate=2.0, rate_at=10.0),
        entry("me"), entry("leased", refcount=1), entry("pinned", pinned=True),
        entry("warm", tier=WARM), entry("cold", tier=COLD), entry("failed", tier=FAILED),
        entry("moving", busy_future=BUSY),
        entry("core", residency="always", prio=Priority.CRITICAL, keep_alive_s=33),
    ]
    ledger.device.reserve("ok", 100 * MB)
    ledger.device.reserve("core", 7)
    cands = victim_candidates(entries, ledger, COST, 10.0, exclude="me", oracle=lambda n, now: now + len(n))
    assert [c.name for c in cands] == ["ok", "core"]
    ok, core = cands
    assert (ok.bytes, ok.priority, ok.last_used, ok.keep_alive_s, ok.rate, ok.next_use, ok.always) == (
        100 * MB, 2, 5.0, 900.0, 2.0, 12.0, False)
    assert ok.reload_s == pytest.approx(2.0)  # no host tier: a cold load of 100 MB
    assert (core.bytes, core.priority, core.keep_alive_s, core.always, core.next_use) == (7, 0, 33.0, True, 14.0)
    assert victim_candidates(entries, ledger, COST, 10.0)[0].next_use is None  # no oracle: unknown


def test_warm_candidates_are_warm_models_not_kept_warm_not_moving_not_loading():
    ledger = Ledger(0, 10**9)
    entries = [
        entry("ok", tier=WARM, last_used=3.0, prio=Priority.LOW), entry("hot"),
        entry("kept", tier=WARM, keep_warm=True), entry("me", tier=WARM), entry("loading", tier=WARM),
        entry("moving", tier=WARM, busy_future=BUSY),
    ]
    ledger.host.reserve("ok", 42)
    cands = warm_candidates(entries, ledger, exclude="me", loading={"loading"})
    assert [(c.name, c.bytes, c.priority, c.last_used) for c in cands] == [("ok", 42, 3, 3.0)]


def test_model_view_copies_the_entry_and_the_ledger_figures():
    ledger = Ledger(10**9, 10**9)
    e = entry("a", 100, uses=3, busy_s=1.5, last_used=7.0, failures=2, last_error="x", next_retry_at=9.0,
              measured_bytes=5, keep_warm=True, pinned=True, disabled=True, thermal_state="WARM", load_s=1.5,
              restore_s=0.5)
    ledger.device.reserve("a", 11)
    ledger.host.reserve("a", 22)
    v = model_view(e, ledger, need=33, loading=True)
    assert (v.name, v.tier, v.loading, v.leases, v.reserved_bytes, v.host_bytes, v.need_bytes) == (
        "a", HOT, True, 0, 11, 22, 33)
    assert (v.uses, v.busy_s, v.last_used, v.failures, v.last_error, v.next_retry_at, v.measured_bytes) == (
        3, 1.5, 7.0, 2, "x", 9.0, 5)
    assert (v.keep_warm, v.pinned, v.disabled, v.thermal_state, v.format, v.loaded) == (
        True, True, True, "WARM", None, True)
    assert (v.load_s, v.restore_s) == (1.5, 0.5)


# ------------------------------------------------------------------ the oracle of the state machine
def test_check_invariants_accepts_a_consistent_snapshot():
    ledger = Ledger(100, 100)
    entries = {"hot": entry("hot"), "warm": entry("warm", tier=WARM), "cold": entry("cold", tier=COLD),
               "loading": entry("loading", tier=COLD)}
    ledger.device.reserve("hot", 50)
    ledger.device.reserve("loading", 50)  # reserved before its weights arrive
    ledger.host.reserve("warm", 100)
    check_invariants(entries, ledger, {"loading"})
    check_invariants(entries, ledger, set(entries))  # every model loading at once is fine too


@pytest.mark.parametrize("tier", [COLD, FAILED, WARM])
def test_check_invariants_fails_on_a_device_reservation_of_a_model_off_the_device(tier):
    ledger = Ledger(100, 100)
    ledger.device.reserve("m", 1)
    with pytest.raises(AssertionError, match="m is"):
        check_invariants({"m": entry("m", tier=tier)}, ledger, set())


def test_check_invariants_fails_on_a_negative_lease_count_and_an_unknown_load():
    with pytest.raises(AssertionError):
        check_invariants({"m": entry("m", refcount=-1)}, Ledger(1, 1), set())
    with pytest.raises(AssertionError):
        check_invariants({"m": entry("m")}, Ledger(1, 1), {"ghost"})


def test_check_invariants_runs_the_ledger_check():
    ledger = Ledger(10, 10)
    ledger.device.reserved["m"] = 11
    with pytest.raises(AssertionError, match="device reserved 11 > budget 10"):
        check_invariants({"m": entry("m")}, ledger, set())
