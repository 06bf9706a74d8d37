"""Threat type and severity from the threat detector's boxes (seed 003 `ThreatDetectionResult`).

Rules:
- A class name maps to a threat type by keyword: gun words (gun, pistol, handgun, rifle, shotgun,
  firearm) -> `gun`; blade words (knife, blade, machete, dagger) -> `knife`; any other class except the
  non-threat ones (person, background, ...) -> `weapon`.
- Base severity by type, raised one level at confidence >= 0.7:
  gun high -> critical, knife medium -> high, weapon low -> medium.
- Two or more threat detections raise the severity of the reported threat one more level (capped at
  critical).
- The reported threat is the most severe; ties go to the more dangerous type (gun > knife > weapon),
  then to the higher confidence. No threat:
  `{"threat_type": "none", "confidence": 0.0, "severity": "low", "bbox": None}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

THREAT_TYPES = ("knife", "gun", "weapon", "none")
SEVERITIES = ("low", "medium", "high", "critical")
HIGH_CONFIDENCE = 0.7
_GUN_WORDS = ("gun", "pistol", "rifle", "firearm")  # handgun, shotgun contain "gun"
_BLADE_WORDS = ("knife", "blade", "machete", "dagger")
NON_THREAT = frozenset({"person", "background", "none", "no_threat", "safe"})
_BASE = {"gun": "high", "knife": "medium", "weapon": "low"}
_DANGER = ("weapon", "knife", "gun")


def threat_type_of(label: str) -> str:
    """gun | knife | weapon for a detector class name, `none` for non-threat classes."""
    name = label.strip().lower()
    if name in NON_THREAT:
        return "none"
    if any(w in name for w in _GUN_WORDS):
        return "gun"
    if any(w in name for w in _BLADE_WORDS):
        return "knife"
    return "weapon"


def _raise(level: str, steps: int = 1) -> str:
    return SEVERITIES[min(len(SEVERITIES) - 1, SEVERITIES.index(level) + steps)]


def severity_of(threat_type: str, confidence: float, n_threats: int = 1) -> str:
    """Severity of one threat (rules in the module docstring)."""
    if threat_type == "none":
        return "low"
    level = _BASE[threat_type]
    if confidence >= HIGH_CONFIDENCE:
        level = _raise(level)
    if n_threats >= 2:
        level = _raise(level)
    return level


def assess(detections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Detections `{"class", "confidence", "bbox": {"x1","y1","x2","y2"}}` -> ThreatDetectionResult."""
    threats = [(threat_type_of(str(d["class"])), d) for d in detections]
    threats = [(t, d) for t, d in threats if t != "none"]
    if not threats:
        return {"threat_type": "none", "confidence": 0.0, "severity": "low", "bbox": None}
    n = len(threats)

    def rank(item: tuple[str, Mapping[str, Any]]) -> tuple[int, int, float]:
        t, d = item
        conf = float(d["confidence"])
        return SEVERITIES.index(severity_of(t, conf, n)), _DANGER.index(t), conf

    kind, det = max(threats, key=rank)
    b = det["bbox"]
    return {
        "threat_type": kind,
        "confidence": float(det["confidence"]),
        "severity": severity_of(kind, float(det["confidence"]), n),
        "bbox": [float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"])],
    }
