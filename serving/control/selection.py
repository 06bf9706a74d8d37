"""Thermal-aware model selection with fallback (seed 001 `select_model` / `selectWithFallback`).

Pure functions over a snapshot of candidates (no I/O, no clock): the thermal controller builds the
snapshot from the zoo, the thermal states and the managers' status, and triggers the background
warm-up the result asks for.

Rules:
- candidates: zoo models whose task equals the requested task (when given) and whose capabilities
  include every requested capability; OFF and unhealthy ones are skipped;
- order (seed 001 `select_model`): HOT > WARM > COLD first, on the live heat of a model = the hotter of
  its thermal state (AUTOMATIC counts as what it currently is) and its residency on the manager (a COLD
  model loaded on demand is as hot as a HOT one right now); then the fallback chain (a model that
  declares `fallback: X` is preferred over X, ViTPose over YOLOv8n-pose); then measured latency (lower
  first, unknown last); then name;
- the best = the first in that order; when it needs a warm-up (not resident) and a ready candidate
  exists, the ready one is used and the best is warmed in the background (seed `selectWithFallback`);
  with no ready alternative the best is returned with warmup_required;
- a selected model that is the fallback of a preferred model not ready yet warms that one in the
  background (DESIGN: fall back to a ready alternative, warm the preferred one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.control.plan import default_thermal_state
from serving.errors import BadRequest, NotFound, ServiceUnavailable

THERMAL_RANK = {"HOT": 0, "WARM": 1, "COLD": 2}
RESIDENCY_RANK = {"HOT": 0, "WARM": 1, "COLD": 2, "FAILED": 3}


@dataclass(frozen=True)
class SelectionCandidate:
    """A frozen view of one model for selection."""

    name: str
    task: str
    capabilities: frozenset[str]
    thermal_state: str  # current thermal state: OFF, COLD, WARM, HOT
    residency: str = "COLD"  # manager tier: HOT (device), WARM (host), COLD (disk), FAILED
    healthy: bool = True
    warmup_time_s: float = 0.0
    fallback: str | None = None
    latency_ms: float | None = None  # measured mean processing time (None: not measured yet)

    @property
    def heat(self) -> int:
        """0 HOT, 1 WARM, 2 COLD: the hotter of the thermal state and the residency."""
        return min(THERMAL_RANK.get(self.thermal_state, 3), RESIDENCY_RANK.get(self.residency, 3))

    @property
    def ready(self) -> bool:
        """Serves without a cold load: resident on the device or in the warm tier, or kept HOT/WARM."""
        return self.residency in ("HOT", "WARM")


@dataclass
class Selection:
    """The outcome: what to use, whether it must warm up, and what to warm in the background."""

    selected: SelectionCandidate
    warmup_required: bool
    warm_in_background: list[str] = field(default_factory=list)
    ranked: list[SelectionCandidate] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected.name,
            "thermal_state": self.selected.thermal_state,
            "residency": self.selected.residency,
            "warmup_required": self.warmup_required,
            "warmup_time_s": self.selected.warmup_time_s if self.warmup_required else None,
            "warming": self.warm_in_background,
            "reason": self.reason,
            "candidates": [
                {"model": c.name, "thermal_state": c.thermal_state, "residency": c.residency,
                 "healthy": c.healthy, "ready": c.ready, "warmup_time_s": c.warmup_time_s,
                 "latency_ms": c.latency_ms}
                for c in self.ranked
            ],
            "skipped": self.skipped,
        }


def chain_depths(cands: Iterable[SelectionCandidate]) -> dict[str, int]:
    """Per model, how deep it sits in a fallback chain: X.fallback = Y gives Y a depth of X's + 1."""
    cs = {c.name: c for c in cands}
    depth: dict[str, int] = {}

    def chain_len(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n in depth:
            return depth[n]
        parents = [c.name for c in cs.values() if c.fallback == n and c.name not in seen]
        d = 0 if not parents else 1 + max(chain_len(p, seen | {n}) for p in parents)
        depth[n] = d
        return d

    for n in cs:
        chain_len(n)
    return depth


def preference_order(cands: Iterable[SelectionCandidate]) -> list[str]:
    """Models ordered most preferred first: X.fallback = Y puts X before Y (transitively), then by name."""
    depth = chain_depths(cands)
    return sorted(depth, key=lambda n: (depth[n], n))


def rank(cands: Iterable[SelectionCandidate]) -> list[SelectionCandidate]:
    """HOT > WARM > COLD (live heat), then the fallback chain, then latency (unknown last), then name."""
    cands = list(cands)
    depth = chain_depths(cands)
    return sorted(cands, key=lambda c: (c.heat, depth[c.name], c.latency_ms is None, c.latency_ms or 0.0, c.name))


def select(
    candidates: Iterable[SelectionCandidate], *, task: str | None = None, capabilities: Iterable[str] = ()
) -> Selection:
    """Pick the model for a task/capabilities; see the module docstring. Raises NotFound when no model can
    do it at all, ServiceUnavailable when every able model is OFF or unhealthy."""
    caps = frozenset(capabilities)
    if not task and not caps:
        raise BadRequest("give a task or at least one capability")
    able = [c for c in candidates if (not task or c.task == task) and caps <= c.capabilities]
    if not able:
        what = f"task {task!r}" if task else "capabilities"
        raise NotFound(f"no model of the zoo serves {what} with capabilities {sorted(caps)}",
                       details={"task": task, "capabilities": sorted(caps)})
    skipped = {}
    usable = []
    for c in able:
        if c.thermal_state == "OFF":
            skipped[c.name] = "OFF"
        elif not c.healthy:
            skipped[c.name] = "unhealthy"
        else:
            usable.append(c)
    if not usable:
        raise ServiceUnavailable("every model able to serve this is OFF or unhealthy", details={"skipped": skipped})
    ranked = rank(usable)
    best = ranked[0]
    # preferred models (fallback chain) of the chosen one that are not ready: warm them in the background
    parents = [c.name for c in ranked if not c.ready and _falls_back_to(c, best.name, usable)]
    if best.ready:
        why = f"; warming preferred {', '.join(parents)}" if parents else ""
        return Selection(best, False, parents, ranked, skipped, "hottest candidate is ready" + why)
    ready = [c for c in ranked if c.ready]
    if ready:
        return Selection(ready[0], False, [best.name], ranked, skipped,
                         f"{best.name} needs a warm-up; using ready {ready[0].name} and warming {best.name}")
    return Selection(best, True, [], ranked, skipped, "no ready candidate; the first in order loads on demand")


def _falls_back_to(c: SelectionCandidate, target: str, cands: list[SelectionCandidate]) -> bool:
    """Does `c` reach `target` through its fallback chain?"""
    by_name = {x.name: x for x in cands}
    seen: set[str] = set()
    cur = c.fallback
    while cur and cur not in seen:
        if cur == target:
            return True
        seen.add(cur)
        nxt = by_name.get(cur)
        cur = nxt.fallback if nxt else None
    return False


def candidates_from(
    models: Mapping[str, Any], thermal: Mapping[str, str], residency: Mapping[str, str], healthy: Mapping[str, bool],
    latency_ms: Mapping[str, float] | None = None,
) -> list[SelectionCandidate]:
    """Candidates from zoo ModelSpecs, current thermal states, manager tiers, health and measured latency."""
    out = []
    for name, spec in models.items():
        out.append(SelectionCandidate(
            name=name, task=spec.task, capabilities=frozenset(spec.capabilities),
            thermal_state=thermal.get(name, default_thermal_state(spec).value),
            residency=residency.get(name, "COLD"), healthy=healthy.get(name, True),
            warmup_time_s=spec.thermal.warmup_time_s, fallback=spec.fallback,
            latency_ms=(latency_ms or {}).get(name)))
    return out
