"""Table tests of every eviction policy (pure functions over frozen snapshots)."""

from __future__ import annotations

import pytest

from serving.vram.policy import INF, POLICIES, VictimCandidate, get_policy

CRIT, HIGH, MED, LOW = 0, 1, 2, 3


def C(name, nbytes, prio=MED, last=0.0, keep=900.0, reload=1.0, rate=0.0, nxt=None):
    return VictimCandidate(name, nbytes, prio, last, keep, reload, rate, nxt)


CASES = [
    # policy, candidates, need, now, expected victims (in order)
    ("lru", [C("a", 100, last=5), C("b", 100, last=1), C("c", 100, last=3)], 150, 10, ["b", "c"]),
    ("lru", [C("a", 100, CRIT, last=1), C("b", 100, LOW, last=2)], 50, 10, ["a"]),  # LRU ignores priority
    ("ollama", [C("a", 100, keep=900), C("b", 100, keep=300), C("c", 100, keep=300)], 150, 10, ["b", "c"]),
    ("ollama", [C("z", 100, keep=60), C("a", 100, keep=900)], 50, 10, ["z"]),
    ("size-lru", [C("small_old", 100, last=0), C("big_new", 1000, last=8)], 50, 10, ["big_new"]),
    ("size-lru", [C("small_old", 100, last=0), C("big_new", 150, last=8)], 50, 10, ["small_old"]),
    # seed 003: (priority descending, last_used ascending): LOW first, CRITICAL last
    ("priority-lru", [C("crit", 100, CRIT, last=0), C("low", 100, LOW, last=9), C("med", 100, MED, last=1)],
     150, 10, ["low", "med"]),
    ("priority-lru", [C("h1", 100, HIGH, last=5), C("h2", 100, HIGH, last=2)], 50, 10, ["h2"]),
    ("priority-lru", [C("a", 10, LOW), C("b", 10, LOW)], 100, 10, ["a", "b"]),  # not enough: everything
]


@pytest.mark.parametrize("policy, cands, need, now, expected", CASES)
def test_policy_table(policy, cands, need, now, expected):
    assert get_policy(policy)(cands, need, now) == expected


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(KeyError, match="priority-lru"):
        get_policy("random")


@pytest.mark.parametrize("policy", ["priority-gdsf", "belady"])
def test_class_rule_lower_class_first_when_it_suffices(policy):
    # a LOW model that is hot and expensive still goes before an idle cheap HIGH one when LOW suffices
    cands = [C("low", 500, LOW, last=9, reload=9, rate=5, nxt=11), C("high", 500, HIGH, last=0, reload=0.1, nxt=INF)]
    assert POLICIES[policy](cands, 400, 10) == ["low"]
    # LOW alone does not suffice: all of LOW goes, then the cheapest HIGH
    cands = [C("low", 100, LOW), C("h_busy", 500, HIGH, last=9, rate=9, reload=5, nxt=11),
             C("h_idle", 500, HIGH, last=0, rate=0.01, reload=5, nxt=INF)]
    assert POLICIES[policy](cands, 400, 10) == ["low", "h_idle"]


def test_priority_gdsf_inside_a_class_keeps_frequent_expensive_models():
    cands = [
        C("frequent", 1000, MED, last=9, reload=3.0, rate=5.0),
        C("rare", 1000, MED, last=8, reload=3.0, rate=0.1),
        C("tiny", 100, MED, last=0, reload=0.6, rate=0.2),
    ]
    assert POLICIES["priority-gdsf"](cands, 900, 10) == ["rare"]  # rare alone suffices
    assert POLICIES["priority-gdsf"](cands, 1050, 10) == ["rare", "tiny"]  # lowest value first


def test_priority_gdsf_drops_victims_that_are_not_needed():
    cands = [C("a", 100, MED, rate=0.0, reload=1), C("b", 1000, MED, rate=0.001, reload=1)]
    # greedy takes a (lowest value) then b; b alone suffices, so a is spared
    assert POLICIES["priority-gdsf"](cands, 900, 10) == ["b"]


def test_belady_evicts_never_used_again_first_then_farthest():
    cands = [C("soon", 100, MED, nxt=11), C("never", 100, MED, nxt=INF), C("later", 100, MED, nxt=50)]
    assert POLICIES["belady"](cands, 150, 10) == ["never", "later"]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_frees_enough_or_returns_all(policy):
    cands = [C(f"m{i}", 100 * (i + 1), i % 4, last=i, rate=i / 10, nxt=20 + i) for i in range(6)]
    for need in (1, 250, 700, 2100, 5000):
        victims = POLICIES[policy](cands, need, 10)
        assert len(set(victims)) == len(victims) and set(victims) <= {c.name for c in cands}
        freed = sum(c.bytes for c in cands if c.name in victims)
        assert freed >= need or len(victims) == len(cands)


@pytest.mark.parametrize("policy", ["priority-lru", "priority-gdsf", "belady"])
def test_class_policies_never_open_a_higher_class_needlessly(policy):
    cands = [C(f"m{i}", 100 * (i + 1), i % 4, last=i, rate=i / 10, nxt=20 + i) for i in range(8)]
    for need in (1, 250, 700, 1500, 3000):
        victims = POLICIES[policy](cands, need, 10)
        by_name = {c.name: c for c in cands}
        worst = min(by_name[v].priority for v in victims)  # the most important class evicted
        lower = [c for c in cands if c.priority > worst]
        assert sum(c.bytes for c in lower) < need, "a lower class alone sufficed"


def test_always_models_are_victims_only_when_the_others_cannot_free_enough():
    from serving.vram.policy import pick_victims

    lru = get_policy("lru")
    always = VictimCandidate("always", 300, CRIT, 0.0, always=True)
    other = VictimCandidate("other", 200, LOW, 5.0)
    assert pick_victims(lru, [always, other], 150, 10) == ["other"]  # although `always` is older
    assert pick_victims(lru, [always, other], 400, 10) == ["always", "other"]  # second pass: everyone
    assert pick_victims(lru, [always, other], 600, 10) == []  # not even all of them: the caller waits


def test_warm_demotion_order_is_lowest_class_then_least_recent():
    from serving.vram.policy import warm_demotion_order

    warm = [C("crit", 10, CRIT, last=0), C("low_new", 10, LOW, last=9), C("low_old", 10, LOW, last=1),
            C("med", 10, MED, last=0)]
    assert warm_demotion_order(warm) == ["low_old", "low_new", "med", "crit"]
