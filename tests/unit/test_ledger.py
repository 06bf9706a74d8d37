"""The ledger on its own: Pool arithmetic at the budget's edge and Ledger.check() as an oracle."""

from __future__ import annotations

import pytest

from serving.vram.ledger import MB, Ledger, LedgerRefused, Pool


def test_a_reservation_may_fill_the_budget_exactly_but_not_one_byte_more():
    p = Pool("device", 1000)
    p.reserve("a", 600)
    assert p.fits(400) and not p.fits(401)
    p.reserve("b", 400)
    assert (p.used, p.available) == (1000, 0)
    with pytest.raises(LedgerRefused):
        p.reserve("c", 1)
    assert p.reserved == {"a": 600, "b": 400}


def test_a_refused_reservation_says_what_was_asked_and_what_is_left():
    p = Pool("host", 3 * MB)
    p.reserve("a", 2 * MB)
    with pytest.raises(LedgerRefused) as ei:
        p.reserve("b", int(1.5 * MB))
    assert str(ei.value) == "host: b needs 1.5 MB, 1.0 MB of 3.0 MB available"
    assert p.get("b") == 0


def test_resizing_a_reservation_counts_only_the_difference():
    p = Pool("device", 1000)
    p.reserve("a", 700)
    p.reserve("b", 200)
    assert p.fits(800, replacing="a") and not p.fits(801, replacing="a")
    assert not p.fits(800)  # without replacing, a's 700 still count
    p.reserve("a", 800)
    assert p.reserved == {"a": 800, "b": 200}
    with pytest.raises(LedgerRefused):
        p.reserve("b", 201)
    p.reserve("a", 100)  # shrinking always fits
    assert p.used == 300


def test_replacing_an_unknown_name_counts_nothing_back():
    p = Pool("device", 100)
    p.reserve("a", 60)
    assert p.fits(40, replacing="ghost") and not p.fits(41, replacing="ghost")
    assert not p.fits(41, replacing="")


def test_a_negative_reservation_is_an_error_and_zero_is_fine():
    p = Pool("device", 10)
    with pytest.raises(ValueError, match="^negative reservation$"):
        p.reserve("a", -1)
    p.reserve("a", 0)
    assert p.reserved == {"a": 0} and p.available == 10


def test_reserve_stores_whole_bytes():
    p = Pool("device", 10)
    p.reserve("a", 2.0)  # type: ignore[arg-type]
    assert type(p.reserved["a"]) is int


def test_release_returns_what_was_held_and_forgets_it():
    p = Pool("device", 100)
    p.reserve("a", 30)
    assert p.release("a") == 30
    assert p.release("a") == 0
    assert p.get("a") == 0 and p.reserved == {}


def test_ledger_budgets_are_whole_bytes_per_pool():
    led = Ledger(10.9, 5.2)  # type: ignore[arg-type]
    assert (led.device.name, led.device.budget, led.host.name, led.host.budget) == ("device", 10, "host", 5)
    led.device.reserve("a", 10)
    with pytest.raises(LedgerRefused):
        led.host.reserve("a", 6)


def test_check_passes_on_a_full_ledger():
    led = Ledger(100, 50)
    led.device.reserve("a", 100)
    led.host.reserve("a", 50)
    led.host.reserve("b", 0)  # an empty reservation is fine
    led.check()


@pytest.mark.parametrize("pool", ["device", "host"])
def test_check_fails_when_a_pool_is_over_its_budget(pool):
    led = Ledger(100, 50)
    p = getattr(led, pool)
    p.reserved["x"] = p.budget + 1  # what a broken reserve() would leave behind
    with pytest.raises(AssertionError, match=f"{pool} reserved {p.budget + 1} > budget {p.budget}"):
        led.check()


@pytest.mark.parametrize("pool", ["device", "host"])
def test_check_fails_on_a_negative_reservation(pool):
    led = Ledger(100, 50)
    p = getattr(led, pool)
    p.reserved["a"] = 10
    p.reserved["x"] = -1
    with pytest.raises(AssertionError):
        led.check()
