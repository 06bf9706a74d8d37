"""The pure model-major scheduler (serving/vram/scheduling.py): table-driven, time passed in."""

from __future__ import annotations

import pytest

from serving.vram.scheduling import Hold, ModelState, Pending, Serve, WorkQueues, decide


def queues(*items: tuple[str, str, float, float]) -> WorkQueues:
    q = WorkQueues()
    for key, model, arrived, deadline in items:
        q.add(Pending(key, model, arrived, deadline))
    return q


def test_a_resident_models_queue_is_served_first_whole_and_in_arrival_order():
    q = queues(("b1", "B", 0.0, 1.0), ("a1", "A", 0.1, 5.0), ("a2", "A", 0.2, 5.2))
    d = decide(q, {"A": ModelState(resident=True), "B": ModelState(resident=False, switch_s=0.3)}, 0.2)
    assert d == Serve("A", ("a1", "a2")) and q.models() == ["B"]


def test_batch_limit_chunks_a_group():
    q = queues(*((f"a{i}", "A", 0.0, 1.0) for i in range(5)))
    assert decide(q, {"A": ModelState(resident=True, batch_limit=2)}, 0.0) == Serve("A", ("a0", "a1"))
    assert q.depth("A") == 3


@pytest.mark.parametrize(("now", "expected"), [
    (0.0, Hold(1.5)),  # deadline 2.0 - switch 0.5: hold for company until 1.5
    (1.49, Hold(1.5)),
    (1.5, Serve("B", ("b1", "b2"))),  # the load serves every queued request of B at once
])
def test_non_resident_work_waits_for_company_until_its_latest_start(now, expected):
    q = queues(("b1", "B", 0.0, 2.0), ("b2", "B", 0.4, 2.4))
    assert decide(q, {"B": ModelState(resident=False, switch_s=0.5)}, now) == expected


def test_a_model_that_fits_without_eviction_is_not_held():
    q = queues(("b1", "B", 0.0, 2.0))
    assert decide(q, {"B": ModelState(resident=False, switch_s=0.5, fits=True)}, 0.0) == Serve("B", ("b1",))


def test_start_by_leaves_room_for_every_queue_in_deadline_order_and_the_reserve():
    # B (deadline 1.0, switch 0.3) then C (deadline 1.2, switch 0.4): C needs B's switch first, so the
    # first switch must start by min(1.0 - 0.3, 1.2 - 0.7) = 0.5; a reserve of 0.1 makes that 0.4
    q = queues(("c", "C", 0.0, 1.2), ("b", "B", 0.0, 1.0))
    states = {"B": ModelState(resident=False, switch_s=0.3), "C": ModelState(resident=False, switch_s=0.4)}
    assert decide(q, states, 0.0) == Hold(pytest.approx(0.5))
    assert decide(q, states, 0.0, reserve_s=0.1) == Hold(pytest.approx(0.4))
    assert decide(q, states, 0.4, reserve_s=0.1) == Serve("B", ("b",))  # earliest deadline first


def test_lost_work_goes_first_only_when_it_delays_no_feasible_work():
    # L can no longer meet its deadline; F can, if its switch starts by 2.0 - 0.5 = 1.5
    q = queues(("l", "L", 0.0, 0.2), ("f", "F", 0.0, 2.0))
    states = {"L": ModelState(resident=False, switch_s=1.0), "F": ModelState(resident=False, switch_s=0.5)}
    assert decide(q, states, 0.3) == Serve("L", ("l",))  # 0.3 + 1.0 <= 1.5: L first costs F nothing
    q = queues(("l", "L", 0.0, 0.2), ("f", "F", 0.0, 2.0))
    assert decide(q, states, 1.0) == Hold(1.5)  # 1.0 + 1.0 > 1.5: F goes first, at its latest start
    assert decide(q, states, 1.5) == Serve("F", ("f",))


def test_busy_models_wait_and_an_empty_scheduler_holds_without_a_deadline():
    q = queues(("a", "A", 0.0, 1.0))
    assert decide(q, {"A": ModelState(resident=True, busy=True)}, 0.0) == Hold(None)
    assert decide(WorkQueues(), {}, 0.0) == Hold(None)


def test_remove_drops_a_cancelled_item():
    q = queues(("a1", "A", 0.0, 1.0), ("a2", "A", 0.1, 1.1))
    assert q.remove("A", "a1") and not q.remove("A", "zz") and q.depth("A") == 1
    assert q.remove("A", "a2") and q.models() == []
