"""Threat type and severity rules (seed 003 ThreatDetectionResult)."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.threat import SEVERITIES, THREAT_TYPES, assess, severity_of, threat_type_of


def det(cls, conf, x1=10.0):
    return {"class": cls, "confidence": conf, "bbox": {"x1": x1, "y1": 5.0, "x2": x1 + 20, "y2": 45.0}}


@pytest.mark.parametrize(
    ("label", "kind"),
    [("gun", "gun"), ("Handgun", "gun"), ("rifle", "gun"), ("knife", "knife"), ("Machete", "knife"),
     ("weapon", "weapon"), ("baseball_bat", "weapon"), ("person", "none")],
)
def test_threat_type_of(label, kind):
    assert threat_type_of(label) == kind


@pytest.mark.parametrize(
    ("kind", "conf", "n", "severity"),
    [("gun", 0.5, 1, "high"), ("gun", 0.9, 1, "critical"), ("knife", 0.5, 1, "medium"), ("knife", 0.7, 1, "high"),
     ("weapon", 0.3, 1, "low"), ("weapon", 0.8, 1, "medium"), ("knife", 0.5, 2, "high"), ("gun", 0.9, 3, "critical"),
     ("none", 0.0, 1, "low")],
)
def test_severity_table(kind, conf, n, severity):
    assert severity_of(kind, conf, n) == severity


def test_no_threat():
    assert assess([]) == {"threat_type": "none", "confidence": 0.0, "severity": "low", "bbox": None}
    assert assess([det("person", 0.99)])["threat_type"] == "none"


def test_most_severe_threat_wins_over_higher_confidence():
    out = assess([det("knife", 0.95, x1=0.0), det("gun", 0.6, x1=50.0)])
    # two threats: gun high -> critical; knife 0.95 high -> critical; tie on severity, the gun is more dangerous
    assert out["threat_type"] == "gun" and out["severity"] == "critical" and out["confidence"] == 0.6
    out = assess([det("knife", 0.9, x1=0.0), det("knife", 0.95, x1=50.0)])
    assert out["confidence"] == 0.95 and out["bbox"][0] == 50.0
    out = assess([det("weapon", 0.95, x1=0.0), det("gun", 0.6, x1=50.0)])
    assert out == {"threat_type": "gun", "confidence": 0.6, "severity": "critical", "bbox": [50.0, 5.0, 70.0, 45.0]}


def test_schema_values():
    out = assess([det("knife", 0.4)])
    assert out["threat_type"] in THREAT_TYPES and out["severity"] in SEVERITIES
    assert out == {"threat_type": "knife", "confidence": 0.4, "severity": "medium", "bbox": [10.0, 5.0, 30.0, 45.0]}
