"""Vehicle damage (seed 003 "Vehicle Damage Detection"): the seed's result schema, its suspicious-pattern
rules and the context string handed to the LLM.

Pattern rules (each a pure function; all that apply are reported, in this order):
- `break-in pattern`  - glass_shatter and lamp_broken both present.
- `elevated risk`     - night (22:00 <= hour or hour < 06:00) and any damage.
- `likely incident`   - two or more distinct damage types.
- `critical alert`    - night and a high-security type (glass_shatter, lamp_broken).
Night rules apply only when the time of the observation is known (`at` given).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DAMAGE_CLASSES: list[str] = ["crack", "dent", "glass_shatter", "lamp_broken", "scratch", "tire_flat"]
HIGH_SECURITY_DAMAGE: frozenset[str] = frozenset({"glass_shatter", "lamp_broken"})
NIGHT_START_HOUR, NIGHT_END_HOUR = 22, 6


def is_night(at: dt.datetime | dt.time | None) -> bool | None:
    """True between 22:00 and 06:00 (local time of the camera), None when the time is unknown."""
    if at is None:
        return None
    return at.hour >= NIGHT_START_HOUR or at.hour < NIGHT_END_HOUR


def break_in_pattern(types: Iterable[str]) -> bool:
    return {"glass_shatter", "lamp_broken"} <= set(types)


def elevated_risk(types: Iterable[str], night: bool | None) -> bool:
    return bool(night) and bool(set(types))


def likely_incident(types: Iterable[str]) -> bool:
    return len(set(types)) >= 2


def critical_alert(types: Iterable[str], night: bool | None) -> bool:
    return bool(night) and bool(HIGH_SECURITY_DAMAGE & set(types))


def patterns(types: Iterable[str], night: bool | None) -> list[str]:
    """Names of the suspicious patterns that apply (rules in the module docstring)."""
    types = list(types)
    rules = (
        ("break-in pattern", break_in_pattern(types)),
        ("elevated risk", elevated_risk(types, night)),
        ("likely incident", likely_incident(types)),
        ("critical alert", critical_alert(types, night)),
    )
    return [name for name, hit in rules if hit]


def context_string(detections: Sequence[Mapping[str, Any]]) -> str:
    """The seed's LLM context block; "" when there is no damage. Types in order of first appearance."""
    if not detections:
        return ""
    stats: dict[str, list[float]] = {}
    for d in detections:
        stats.setdefault(str(d["damage_type"]), []).append(float(d["confidence"]))
    lines = [f"Vehicle Damage Detected ({len(detections)} instances):"]
    for kind, confs in stats.items():
        avg = round(100 * sum(confs) / len(confs))
        lines.append(f"- {kind}: {len(confs)} instance(s) (avg conf: {avg}%)")
    if HIGH_SECURITY_DAMAGE & stats.keys():
        lines.append("**HIGH SECURITY ALERT**: Suspicious damage types detected")
    return "\n".join(lines)


def summarize(detections: Sequence[Mapping[str, Any]], at: dt.datetime | dt.time | None = None) -> dict[str, Any]:
    """Detections `{"damage_type", "confidence", "bbox", "has_mask", "mask_area"}` -> the seed's damage
    result, plus `patterns`, `is_night` and `context` (the LLM string)."""
    types = list(dict.fromkeys(str(d["damage_type"]) for d in detections))
    night = is_night(at)
    return {
        "detections": [dict(d) for d in detections],
        "damage_types": types,
        "has_high_security_damage": bool(HIGH_SECURITY_DAMAGE & set(types)),
        "total_damage_count": len(detections),
        "highest_confidence": max((float(d["confidence"]) for d in detections), default=0.0),
        "patterns": patterns(types, night),
        "is_night": night,
        "context": context_string(detections),
    }
