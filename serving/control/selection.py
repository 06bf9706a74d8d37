"""Thermal-aware model selection with fallback (seed 001 `select_model` / `selectWithFallback`).

Pure functions over a snapshot of candidates (no I/O, no clock): the thermal controller builds the
snapshot from the zoo, the thermal states and the managers' status, and triggers the background
warm-up the result asks for.

Rules:
- candidates: zoo models whose task equals the requested task (when given) and whose capabilities
  include every requested capability; OFF and unhealthy ones are skipped;
- order: HOT > WARM > COLD by thermal state (AUTOMATIC counts as what it currently is), then by
  residency (on the device, then in the warm tier, then on disk), then by preference, then by name;
- preference: a model that declares `fallback: X` is preferred over X (ViTPose over YOLOv8n-pose);
- the best = the most preferred candidate; when it needs a warm-up (not resident) and a ready
  candidate exists, the ready one is used and the best is warmed in the background; with no ready
  alternative the best is returned with warmup_required.
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
                 "healthy": c.healthy, "ready": c.ready, "warmup_time_s": c.warmup_time_s}
                for c in self.ranked
            ],
            "skipped": self.skipped,
        }


def preference_order(cands: Iterable[SelectionCandidate]) -> list[str]:
    """Models ordered most preferred first: X.fallback = Y puts X before Y (transitively)."""
    cs = {c.name: c for c in cands}
    depth: dict[str, int] = {}

    def chain_len(n: str, seen: frozenset[str] = frozenset()) -> int:
        # how many models prefer n over something: the deeper in a fallback chain, the less preferred
        if n in depth:
            return depth[n]
        parents = [c.name for c in cs.values() if c.fallback == n and c.name not in seen]
        d = 0 if not parents else 1 + max(chain_len(p, seen | {n}) for p in parents)
        depth[n] = d
        return d

    return sorted(cs, key=lambda n: (chain_len(n), n))


def rank(cands: Iterable[SelectionCandidate]) -> list[SelectionCandidate]:
    """HOT > WARM > COLD, then residency, then preference, then name."""
    cands = list(cands)
    pref = {n: i for i, n in enumerate(preference_order(cands))}
    return sorted(cands, key=lambda c: (THERMAL_RANK.get(c.thermal_state, 3), RESIDENCY_RANK.get(c.residency, 3),
                                        pref[c.name], c.name))


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
    by_name = {c.name: c for c in usable}
    best = by_name[preference_order(usable)[0]]
    if best.ready:
        return Selection(best, False, [], ranked, skipped, "preferred model is ready")
    ready = [c for c in ranked if c.ready]
    if ready:
        return Selection(ready[0], False, [best.name], ranked, skipped,
                         f"{best.name} needs a warm-up; using ready {ready[0].name} and warming {best.name}")
    first = ranked[0]
    return Selection(best, True, [], ranked, skipped,
                     "no ready candidate; the preferred model loads on demand" if first is best else
                     f"no ready candidate; {best.name} is preferred and loads on demand")


def candidates_from(
    models: Mapping[str, Any], thermal: Mapping[str, str], residency: Mapping[str, str], healthy: Mapping[str, bool]
) -> list[SelectionCandidate]:
    """Candidates from zoo ModelSpecs, current thermal states, manager tiers and health."""
    out = []
    for name, spec in models.items():
        out.append(SelectionCandidate(
            name=name, task=spec.task, capabilities=frozenset(spec.capabilities),
            thermal_state=thermal.get(name, default_thermal_state(spec).value),
            residency=residency.get(name, "COLD"), healthy=healthy.get(name, True),
            warmup_time_s=spec.thermal.warmup_time_s, fallback=spec.fallback))
    return out
