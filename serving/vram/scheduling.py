"""The swap-aware model-major scheduler: which model's queued work runs next, and when (pure).

Work for a model is queued per model (`WorkQueues`). At every decision point the caller (the services'
asyncio front in serving/services/model_queue.py, the policy simulation in serving/bench/scheduled.py)
passes a snapshot of the models with queued work (`ModelState`: resident or not, seconds to make it
resident, batch limit, busy) and the time; `decide` returns `Serve(model, keys)` or `Hold(until)`:

1. **A resident model's queue drains first.** If a resident (HOT) model has queued work, serve up to its
   batch limit of it (the earliest head deadline first). A model that fits without evicting anything is
   served at once too: holding it would save no swap. Callers keep a lease on a model while its
   queue is not empty, so queued work protects its model from eviction.
2. **Work for a non-resident model waits for company, within its deadline.** Each item carries a
   deadline (arrival + the added wait its priority class allows, zoo.yaml `scheduler.deadline_ms`). The
   non-resident queues are ordered by earliest deadline; the latest instant the first switch may start so
   that every queue, served in that order one switch after another, still meets its head's deadline is
   `start_by = min_k(deadline_k - sum(switch_s of queues 1..k)) - margin`. Before `start_by` the
   scheduler holds (more work for the same model arrives and is grouped into the same load; work for
   resident models keeps being served); at `start_by` it serves the first queue in deadline order. The
   hold ends a reserve earlier (room for one unforeseen switch, e.g. of work that arrives meanwhile with
   an earlier deadline).
3. **Lost work does not push feasible work past its deadline.** A queue whose head cannot meet its
   deadline any more is served as soon as that does not delay the feasible ones beyond their `start_by`.

No I/O, no clock reads, no asyncio: time comes in as `now`. One owner: a `WorkQueues` is mutated only by
its caller's single task (the front's dispatcher, the simulation loop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from serving.vram.cost import CostModel
    from serving.vram.view import ManagerView, ModelView

#: Added wait each priority class allows by default, seconds (CRITICAL=0 HIGH=1 MEDIUM=2 LOW=3).
DEFAULT_DEADLINES_S: dict[int, float] = {0: 0.25, 1: 1.0, 2: 2.0, 3: 5.0}


@dataclass(frozen=True, slots=True)
class Pending:
    """One queued unit of work (a request, or one item of a request)."""

    key: Hashable
    model: str
    arrived: float
    deadline: float  # arrived + the class's allowed added wait


@dataclass(frozen=True, slots=True)
class ModelState:
    """What the scheduler needs to know of a model with queued work, at the instant of the decision."""

    resident: bool  # HOT: serving it costs no swap
    switch_s: float = 0.0  # estimated seconds to make it resident (restore or cold load); 0 when resident
    batch_limit: int = 0  # most items per call; 0 = no limit
    busy: bool = False  # a call of this model is running (the front serves one chunk per model at a time)
    fits: bool = False  # making it resident evicts nothing: waiting would save no swap, so it is served at once


@dataclass(frozen=True, slots=True)
class Serve:
    """Run `model` on the queued items `keys` (already taken off the queue)."""

    model: str
    keys: tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class Hold:
    """Nothing to start before `until` (None: until new work arrives or a call finishes)."""

    until: float | None


Decision = Serve | Hold


class WorkQueues:
    """Per-model FIFO queues of `Pending` work. Within a model, arrival order is deadline order when the
    class deadline is per model; `take` serves the oldest first."""

    def __init__(self) -> None:
        self._q: dict[str, deque[Pending]] = {}

    def add(self, item: Pending) -> None:
        self._q.setdefault(item.model, deque()).append(item)

    def remove(self, model: str, key: Hashable) -> bool:
        """Drop one queued item (its waiter went away); True if it was queued."""
        q = self._q.get(model)
        if not q:
            return False
        for p in q:
            if p.key == key:
                q.remove(p)
                if not q:
                    del self._q[model]
                return True
        return False

    def take(self, model: str, n: int = 0) -> list[Pending]:
        """Take up to `n` (0 = all) of the oldest items of `model` off its queue."""
        q = self._q.get(model)
        if not q:
            return []
        count = len(q) if n <= 0 else min(n, len(q))
        out = [q.popleft() for _ in range(count)]
        if not q:
            del self._q[model]
        return out

    def head(self, model: str) -> Pending | None:
        q = self._q.get(model)
        return q[0] if q else None

    def earliest_deadline(self, model: str) -> float:
        q = self._q.get(model)
        return min(p.deadline for p in q) if q else float("inf")

    def models(self) -> list[str]:
        """Models with queued work (the ones a caller must describe in `decide`'s `states`)."""
        return list(self._q)

    def depth(self, model: str) -> int:
        q = self._q.get(model)
        return len(q) if q else 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._q.values())

    def __iter__(self) -> Iterator[Pending]:
        for q in self._q.values():
            yield from q


def decide(
    queues: WorkQueues, states: Mapping[str, ModelState], now: float, *, margin_s: float = 0.0,
    reserve_s: float = 0.0,
) -> Decision:
    """The next step (see the module docstring). Takes the served items off `queues`.

    `margin_s` absorbs errors of the switch estimates; `reserve_s` keeps room for one more switch before
    the held work (work that arrives meanwhile with an earlier deadline may have to go first): a hold
    ends `reserve_s` before the last feasible instant. The caller passes e.g. the largest switch estimate
    of its models."""
    ready = [m for m in queues.models() if not states[m].busy]
    if not ready:
        return Hold(None)
    resident = [m for m in ready if states[m].resident or states[m].fits]
    if resident:
        model = min(resident, key=lambda m: (queues.earliest_deadline(m), m))
        return _serve(queues, model, states[model])
    by_deadline = sorted(ready, key=lambda m: (queues.earliest_deadline(m), m))
    feasible = [m for m in by_deadline if queues.earliest_deadline(m) - states[m].switch_s - margin_s >= now]
    lost = [m for m in by_deadline if m not in feasible]
    start_by = float("inf")
    cumulative = 0.0
    for m in feasible:
        cumulative += states[m].switch_s
        start_by = min(start_by, queues.earliest_deadline(m) - cumulative - margin_s)
    start_by -= reserve_s
    if lost and now + states[lost[0]].switch_s <= start_by:
        return _serve(queues, lost[0], states[lost[0]])
    if feasible and start_by <= now:
        return _serve(queues, feasible[0], states[feasible[0]])
    if lost:  # serving the lost one now would push a feasible one late: hold for the feasible one's start
        return Hold(start_by) if start_by > now else _serve(queues, feasible[0], states[feasible[0]])
    return Hold(start_by)


def _serve(queues: WorkQueues, model: str, state: ModelState) -> Serve:
    return Serve(model, tuple(p.key for p in queues.take(model, state.batch_limit)))


def switch_estimate(view: ModelView, cost: CostModel) -> float:
    """Seconds to make a model resident as the manager would spend them: 0 when HOT, a restore when WARM, a
    cold load otherwise (measured times when the manager has them, else the cost model's)."""
    if view.tier == "HOT":
        return 0.0
    if view.tier == "WARM":
        return view.restore_s if view.restore_s is not None else cost.restore_s(view.need_bytes)
    return view.load_s if view.load_s is not None else cost.load_s(view.need_bytes)


def reserve_estimate(views: Iterable[ModelView], cost: CostModel) -> float:
    """The `reserve_s` both callers pass to `decide`: the largest switch any of the models may need now."""
    return max((switch_estimate(v, cost) for v in views), default=0.0)


def model_state(view: ManagerView, name: str, cost: CostModel, *, busy: bool = False) -> ModelState:
    """The `ModelState` of one model from a manager's frozen view (both callers build it here)."""
    m = view.models[name]
    resident = m.tier == "HOT"
    return ModelState(resident=resident, switch_s=switch_estimate(m, cost), busy=busy,
                      fits=not resident and not m.loading and view.budget_bytes - view.used_bytes >= m.need_bytes)
