"""The policies' value functions and tie-breaks, pinned with candidates that differ in one figure at a time.

test_policy.py checks the rules (class order, enough bytes); here each figure a policy weighs (size,
reload seconds, rate, idle time, next use) is varied alone, so inverting its weight changes the answer.
"""

from __future__ import annotations

import math

import pytest

from serving.vram.policy import (
    INF,
    POLICIES,
    VictimCandidate,
    belady_value,
    gdsf_value,
    pick_victims,
    warm_demotion_order,
)

CRIT, HIGH, MED, LOW = 0, 1, 2, 3


def C(name, nbytes, prio=MED, last=0.0, keep=900.0, reload=1.0, rate=0.0, nxt=None, always=False):
    return VictimCandidate(name, nbytes, prio, last, keep, reload, rate, nxt, always)


# ------------------------------------------------------------------ value functions, exactly
def test_gdsf_value_is_rate_times_reload_per_byte_discounted_by_the_root_of_idle_time():
    c = C("m", 400, last=2.0, reload=3.0, rate=5.0)
    assert gdsf_value(c, 10.0) == pytest.approx((5.0 + 1e-9) * 3.0 / 400 / math.sqrt(9.0), rel=1e-12)
    assert gdsf_value(c, 2.0) == pytest.approx((5.0 + 1e-9) * 3.0 / 400, rel=1e-12)  # age 0: no discount


def test_gdsf_value_of_an_unused_model_is_tiny_but_still_ordered_by_reload_and_size():
    cheap, dear = C("cheap", 100, reload=1.0), C("dear", 100, reload=2.0)
    assert gdsf_value(cheap, 0) == pytest.approx(1e-9 / 100, rel=1e-9)
    assert gdsf_value(cheap, 0) < gdsf_value(dear, 0)


def test_gdsf_value_clamps_a_future_last_use_and_a_zero_size():
    c = C("m", 0, last=50.0, reload=2.0, rate=1.0)
    assert gdsf_value(c, 10.0) == pytest.approx((1.0 + 1e-9) * 2.0, rel=1e-12)  # bytes 1, age 0


def test_belady_value_is_reload_per_second_until_next_use_per_byte():
    v = belady_value(10.0)
    assert v(C("m", 200, reload=4.0, nxt=30.0)) == pytest.approx(4.0 / 20.0 / 200, rel=1e-12)
    assert v(C("never", 200, reload=4.0, nxt=INF)) == 0.0
    assert v(C("unknown", 200, reload=4.0, nxt=None)) == 0.0
    assert v(C("overdue", 1, reload=1.0, nxt=5.0)) == pytest.approx(1e6, rel=1e-12)  # clamped at 1 µs
    assert v(C("empty", 0, reload=1.0, nxt=11.0)) == pytest.approx(1.0, rel=1e-12)  # bytes clamped at 1


# ------------------------------------------------------------------ one figure at a time
def test_priority_gdsf_evicts_the_longer_idle_model_when_all_else_is_equal():
    cands = [C("recent", 100, last=9.0, rate=1.0), C("idle", 100, last=1.0, rate=1.0)]
    assert POLICIES["priority-gdsf"](cands, 50, 10.0) == ["idle"]


def test_priority_gdsf_evicts_the_cheaper_reload_when_all_else_is_equal():
    cands = [C("dear", 100, reload=5.0, rate=1.0), C("cheap", 100, reload=0.5, rate=1.0)]
    assert POLICIES["priority-gdsf"](cands, 50, 10.0) == ["cheap"]


def test_priority_gdsf_evicts_the_rarer_model_when_all_else_is_equal():
    cands = [C("often", 100, rate=3.0), C("rare", 100, rate=0.5)]
    assert POLICIES["priority-gdsf"](cands, 50, 10.0) == ["rare"]


def test_priority_gdsf_evicts_the_bigger_model_per_byte_when_all_else_is_equal():
    cands = [C("small", 100, rate=1.0), C("big", 300, rate=1.0)]
    assert POLICIES["priority-gdsf"](cands, 50, 10.0) == ["big"]


def test_gdsf_without_classes_evicts_lowest_value_even_if_critical():
    cands = [C("crit_idle", 100, CRIT, rate=0.0), C("low_busy", 100, LOW, rate=5.0, last=10.0)]
    assert POLICIES["gdsf"](cands, 50, 10.0) == ["crit_idle"]
    assert POLICIES["priority-gdsf"](cands, 50, 10.0) == ["low_busy"]


def test_gdsf_takes_victims_until_exactly_need_and_spares_the_rest():
    cands = [C("a", 100, rate=0.1), C("b", 100, rate=0.2), C("c", 100, rate=0.3)]
    assert POLICIES["gdsf"](cands, 200, 10.0) == ["a", "b"]
    assert POLICIES["gdsf"](cands, 201, 10.0) == ["a", "b", "c"]
    assert POLICIES["gdsf"](cands, 0, 10.0) == []


def test_gdsf_drops_a_cheap_victim_a_later_big_one_made_unneeded():
    cands = [C("small", 100, rate=0.0), C("big", 1000, rate=0.001)]
    assert POLICIES["gdsf"](cands, 900, 10.0) == ["big"]


def test_belady_evicts_the_farther_next_use_first_whatever_the_names():
    # names in reverse alphabetical order of the expected answer
    cands = [C("a_soon", 100, nxt=12.0), C("z_late", 100, nxt=100.0)]
    assert POLICIES["belady"](cands, 50, 10.0) == ["z_late"]


def test_belady_weighs_reload_seconds_against_distance():
    # same next use: the cheaper reload goes; a far, dear one goes before a near, cheap one per value
    cands = [C("a_dear", 100, reload=9.0, nxt=20.0), C("z_cheap", 100, reload=1.0, nxt=20.0)]
    assert POLICIES["belady"](cands, 50, 10.0) == ["z_cheap"]
    cands = [C("a_far_dear", 100, reload=2.0, nxt=110.0), C("z_near_cheap", 100, reload=1.0, nxt=11.0)]
    assert POLICIES["belady"](cands, 50, 10.0) == ["a_far_dear"]  # 2/100 < 1/1


def test_size_lru_weighs_idle_time_by_bytes():
    cands = [C("a_small_idle", 100, last=0.0), C("z_big_recent", 300, last=8.0)]
    # idle x bytes: 10 x 100 = 1000 against 2 x 300 = 600
    assert POLICIES["size-lru"](cands, 50, 10.0) == ["a_small_idle"]
    cands = [C("a_small_idle", 100, last=0.0), C("z_big_recent", 600, last=8.0)]  # 1000 < 1200
    assert POLICIES["size-lru"](cands, 50, 10.0) == ["z_big_recent"]


def test_size_lru_orders_just_used_models_by_size_and_ties_by_name():
    cands = [C("small", 100, last=10.0), C("big", 200, last=12.0)]  # idle 0 (a future last_used clamps)
    assert POLICIES["size-lru"](cands, 50, 10.0) == ["big"]
    cands = [C("b", 100, last=10.0), C("a", 100, last=10.0)]
    assert POLICIES["size-lru"](cands, 50, 10.0) == ["a"]


@pytest.mark.parametrize("policy", ["lru", "ollama", "priority-lru", "priority-gdsf", "belady", "gdsf"])
def test_policies_break_exact_ties_by_name(policy):
    cands = [C("b", 100), C("c", 100), C("a", 100)]
    assert POLICIES[policy](cands, 150, 10.0) == ["a", "b"]


@pytest.mark.parametrize("policy", ["lru", "ollama", "size-lru", "priority-lru"])
def test_ordering_policies_stop_once_the_need_is_covered_exactly(policy):
    cands = [C("a", 100), C("b", 100), C("c", 100)]
    assert POLICIES[policy](cands, 200, 10.0) == ["a", "b"]
    assert POLICIES[policy](cands, 201, 10.0) == ["a", "b", "c"]
    assert POLICIES[policy](cands, 0, 10.0) == []


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_policies_take_a_class_that_covers_need_exactly(policy):
    cands = [C("low", 200, LOW), C("med", 100, MED)]
    assert POLICIES[policy](cands, 200, 10.0) == ["low"]
    assert POLICIES[policy](cands, 201, 10.0) == ["low", "med"]


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_policies_spare_a_boundary_victim_at_exactly_need(policy):
    # the boundary class is MED: low (100) is taken, then from MED the cheapest first until 300 are freed
    cands = [C("low", 100, LOW), C("m1", 100, MED, rate=0.1, nxt=INF), C("m2", 200, MED, rate=0.3, nxt=30.0)]
    assert POLICIES[policy](cands, 300, 10.0) == ["low", "m2"]  # m1 + m2 = 300 >= 200: m1 is not needed
    assert POLICIES[policy](cands, 301, 10.0) == ["low", "m1", "m2"]


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_policies_return_everything_lowest_class_first_when_not_enough(policy):
    cands = [C("crit", 100, CRIT), C("low_b", 100, LOW, rate=0.2, nxt=30.0), C("low_a", 100, LOW, rate=0.1, nxt=INF),
             C("med", 100, MED)]
    assert POLICIES[policy](cands, 1000, 10.0) == ["low_a", "low_b", "med", "crit"]


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_policies_order_lower_classes_by_class_then_value(policy):
    cands = [C("med_b", 100, MED, rate=0.2, nxt=30.0), C("low", 100, LOW), C("med_a", 100, MED, rate=0.1, nxt=INF),
             C("h1", 100, HIGH, rate=0.1, nxt=INF), C("h2", 100, HIGH, rate=0.2, nxt=30.0)]
    assert POLICIES[policy](cands, 350, 10.0) == ["low", "med_a", "med_b", "h1"]


def test_pick_victims_uses_always_models_only_when_the_rest_falls_short_of_need_exactly():
    lru = POLICIES["lru"]
    cands = [C("always", 100, CRIT, always=True), C("other", 200, LOW, last=5.0)]
    assert pick_victims(lru, cands, 200, 10.0) == ["other"]
    assert pick_victims(lru, cands, 201, 10.0) == ["always", "other"]
    assert pick_victims(lru, cands, 300, 10.0) == ["always", "other"]
    assert pick_victims(lru, cands, 301, 10.0) == []


def test_warm_demotion_order_keeps_the_given_order_for_ties():
    warm = [C("b", 10, LOW, last=1.0), C("a", 10, LOW, last=1.0), C("c", 10, MED, last=0.0)]
    assert warm_demotion_order(warm) == ["b", "a", "c"]


def test_size_lru_idle_epsilon_only_breaks_ties_among_just_used_models():
    # idle 1 s x 1 byte outweighs a just-used 1000-byte model: the epsilon is tiny, not a second of idle time
    cands = [C("just_used_big", 1000, last=10.0), C("idle_tiny", 1, last=9.0)]
    assert POLICIES["size-lru"](cands, 1, 10.0) == ["idle_tiny"]


def test_register_adds_a_policy_under_its_name():
    from serving.vram.policy import get_policy, register

    def mine(candidates, need, now):
        return []

    try:
        assert register("mine")(mine) is mine
        assert get_policy("mine") is mine
    finally:
        POLICIES.pop("mine", None)


def test_gdsf_spares_every_cheap_victim_that_a_big_one_made_unneeded():
    cands = [C("a", 100, rate=0.01), C("b", 100, rate=0.02), C("c", 300, rate=0.3)]  # value order a, b, c
    assert POLICIES["gdsf"](cands, 300, 10.0) == ["c"]


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_policies_drop_an_empty_boundary_victim_when_the_need_is_met_exactly(policy):
    cands = [C("low", 100, LOW), C("m0", 0, MED, rate=0.0, nxt=INF), C("m1", 100, MED, rate=0.5, nxt=20.0)]
    assert POLICIES[policy](cands, 200, 10.0) == ["low", "m1"]


def test_an_unknown_policy_error_lists_every_known_one():
    from serving.vram.policy import get_policy

    with pytest.raises(KeyError) as ei:
        get_policy("random")
    assert ei.value.args[0] == f"unknown eviction policy 'random'; known: {', '.join(sorted(POLICIES))}"
