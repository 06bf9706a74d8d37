"""Eviction policies: pure functions over a frozen snapshot.

A `Policy` is `(candidates, need_bytes, now) -> list[str]`: names in eviction order whose bytes add up
to at least `need_bytes`, or every candidate when even that is not enough (the manager then waits or
fails). The manager calls it through `pick_victims`. No torch, no I/O, no clock reads: everything a
policy may use is in `VictimCandidate`.

Rules every policy obeys, applied here and nowhere else (the manager only builds the snapshot):
- `pick_victims`: `always` models are candidates only when the others cannot free enough (two passes);
- `warm_demotion_order`: which WARM models leave the host tier first (lowest class, then least recent).

Adding a policy = one `@register("name")` function here (build it from `_class_rule` and `_by_value` to keep
the seed's class rule); zoo.yaml validation and `zoo bench policy` read the registry, nothing else changes.

Registered policies (select with a service's `policy:` in zoo.yaml, or `zoo bench policy --policies`):
- `lru`            plain least-recently-used (Ray Serve multiplexing, llama.cpp router).
- `ollama`         shortest keep_alive first, then name (Ollama's findRunnerToUnload).
- `size-lru`       size-weighted LRU: largest idle-time x bytes first (ModelMesh-like).
- `priority-lru`   seed 003: sort by (priority descending, last_used ascending); CRITICAL last.
- `gdsf`           GreedyDual-Size-Frequency without the class rule (what the rule costs, in the benchmark).
- `priority-gdsf`  ours: the seed's class rule, and inside it GreedyDual-Size-Frequency: evict the
                   lowest expected reload cost per byte (use rate x reload seconds / bytes).
- `belady`         offline reference: knows each model's next use; same class rule; evicts the one
                   whose reload is needed latest per second of cost (never-again first).

The class rule (seed 003): a lower class (LOW=3 ... CRITICAL=0) is always evicted before a higher one
when evicting the lower class suffices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True, slots=True)
class VictimCandidate:
    """What a policy may know of one evictable (unleased, not pinned, not in transition) model.
    Built by `serving.vram.snapshot` from the manager's entries; bytes are the ledger's reservation."""

    name: str
    bytes: int
    priority: int  # 0 CRITICAL ... 3 LOW
    last_used: float
    keep_alive_s: float = 900.0
    #: seconds to bring it back after eviction (warm restore when it would be parked, else cold load)
    reload_s: float = 1.0
    #: decayed uses per second at `now`
    rate: float = 0.0
    #: time of next use, known only to the offline reference (None = unknown, INF = never)
    next_use: float | None = None
    #: residency `always` (zoo.yaml): evicted only when nothing else frees enough (`pick_victims`)
    always: bool = False


Policy = Callable[[Sequence[VictimCandidate], int, float], list[str]]
POLICIES: dict[str, Policy] = {}


def register(name: str) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown eviction policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None


def _take_in_order(ordered: Sequence[VictimCandidate], need: int) -> list[str]:
    """Walk an ordering and stop as soon as the freed bytes cover `need`."""
    out: list[str] = []
    freed = 0
    for c in ordered:
        if freed >= need:
            break
        out.append(c.name)
        freed += c.bytes
    return out


def _minimal(chosen: list[VictimCandidate], need: int) -> list[VictimCandidate]:
    """Drop victims that are not needed, most valuable first (the order of `chosen` is least valuable first)."""
    total = sum(c.bytes for c in chosen)
    keep = list(chosen)
    for c in reversed(chosen):
        if total - c.bytes >= need:
            keep.remove(c)
            total -= c.bytes
    return keep


def _class_rule(candidates: Sequence[VictimCandidate], need: int) -> list[VictimCandidate]:
    """The candidates a class-respecting policy may choose from: classes from LOW upwards, just enough."""
    allowed: list[VictimCandidate] = []
    for prio in sorted({c.priority for c in candidates}, reverse=True):
        allowed.extend(c for c in candidates if c.priority == prio)
        if sum(c.bytes for c in allowed) >= need:
            break
    return allowed


def _by_value(allowed: Sequence[VictimCandidate], need: int, value: Callable[[VictimCandidate], float]) -> list[str]:
    """Lowest value first; only cross into a higher class after every lower one is taken."""
    if sum(c.bytes for c in allowed) < need:
        return [c.name for c in sorted(allowed, key=lambda c: (-c.priority, value(c), c.name))]
    top = min(c.priority for c in allowed)  # the highest class that had to be opened
    lower = [c for c in allowed if c.priority != top]
    boundary = sorted((c for c in allowed if c.priority == top), key=lambda c: (value(c), c.name))
    lower_sorted = sorted(lower, key=lambda c: (-c.priority, value(c), c.name))
    need_from_boundary = need - sum(c.bytes for c in lower)
    chosen: list[VictimCandidate] = []
    freed = 0
    for c in boundary:
        if freed >= need_from_boundary:
            break
        chosen.append(c)
        freed += c.bytes
    # every lower-class candidate is needed by construction; trim only the boundary class
    return [c.name for c in lower_sorted] + [c.name for c in _minimal(chosen, need_from_boundary)]


def lru(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _take_in_order(sorted(candidates, key=lambda c: (c.last_used, c.name)), need)


def ollama(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _take_in_order(sorted(candidates, key=lambda c: (c.keep_alive_s, c.name)), need)


def size_lru(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _take_in_order(
        sorted(candidates, key=lambda c: (-(max(now - c.last_used, 0.0) + 1e-3) * c.bytes, c.name)), need
    )


def priority_lru(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _take_in_order(sorted(candidates, key=lambda c: (-c.priority, c.last_used, c.name)), need)


def gdsf_value(c: VictimCandidate, now: float) -> float:
    """Expected reload seconds per byte if evicted now: GreedyDual-Size-Frequency's cost x frequency / size,
    with the frequency discounted by idle time (1/sqrt(age)) so a burst that ended stops protecting a model.
    The square root was chosen on the three traces in benchmarks/ (see benchmarks/README.md)."""
    age = max(now - c.last_used, 0.0)
    return (c.rate + 1e-9) * c.reload_s / max(c.bytes, 1) / math.sqrt(age + 1.0)


def priority_gdsf(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _by_value(_class_rule(candidates, need), need, lambda c: gdsf_value(c, now))


def belady_value(now: float) -> Callable[[VictimCandidate], float]:
    def value(c: VictimCandidate) -> float:
        if c.next_use is None or c.next_use == INF:
            return 0.0
        return c.reload_s / max(c.next_use - now, 1e-6) / max(c.bytes, 1)

    return value


def belady(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    return _by_value(_class_rule(candidates, need), need, belady_value(now))


def gdsf(candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    """GreedyDual-Size-Frequency without the class rule: measures what the seed's rule costs."""
    chosen: list[VictimCandidate] = []
    freed = 0
    for c in sorted(candidates, key=lambda c: (gdsf_value(c, now), c.name)):
        if freed >= need:
            break
        chosen.append(c)
        freed += c.bytes
    return [c.name for c in _minimal(chosen, need)]


def pick_victims(policy: Policy, candidates: Sequence[VictimCandidate], need: int, now: float) -> list[str]:
    """The `always` rule around any policy: first among the non-`always` candidates; only when they cannot
    free `need` bytes, among all of them. [] when even all of them are not enough (the caller waits)."""
    for include_always in (False, True):
        pool = [c for c in candidates if include_always or not c.always]
        if sum(c.bytes for c in pool) >= need:
            return policy(pool, need, now)
    return []


def warm_demotion_order(warm: Sequence[VictimCandidate]) -> list[str]:
    """WARM -> COLD order when the host tier needs room: lowest class first (LOW before CRITICAL), then least
    recently used; ties keep the given order. The caller demotes in this order until the new bytes fit."""
    return [c.name for c in sorted(warm, key=lambda c: (-c.priority, c.last_used))]


# Registered here, not by decorator, so the mutation tool (tools/mutation.py) mutates their bodies too.
for _name, _fn in {
    "lru": lru, "ollama": ollama, "size-lru": size_lru, "priority-lru": priority_lru,
    "priority-gdsf": priority_gdsf, "belady": belady, "gdsf": gdsf,
}.items():
    register(_name)(_fn)
