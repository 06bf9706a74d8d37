"""Vehicle damage patterns and the LLM context string (seed 003)."""

from __future__ import annotations

import datetime as dt

import pytest

from serving.adapters.postprocess import damage


def det(kind, conf=0.8):
    return {"damage_type": kind, "confidence": conf, "bbox": {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0},
            "has_mask": True, "mask_area": 100}


DAY, NIGHT, EARLY = dt.datetime(2024, 1, 15, 14, 0), dt.datetime(2024, 1, 15, 23, 0), dt.time(5, 59)


@pytest.mark.parametrize(
    ("kinds", "at", "expected"),
    [
        (["glass_shatter", "lamp_broken"], DAY, ["break-in pattern", "likely incident"]),
        (["dent"], NIGHT, ["elevated risk"]),
        (["dent"], DAY, []),
        (["dent"], None, []),
        (["scratch", "dent"], DAY, ["likely incident"]),
        (["scratch", "scratch"], DAY, []),
        (["glass_shatter"], EARLY, ["elevated risk", "critical alert"]),
        (["lamp_broken"], dt.time(22, 0), ["elevated risk", "critical alert"]),
        (["lamp_broken"], dt.time(6, 0), []),
        (["glass_shatter", "lamp_broken"], NIGHT,
         ["break-in pattern", "elevated risk", "likely incident", "critical alert"]),
        ([], NIGHT, []),
    ],
)
def test_patterns(kinds, at, expected):
    assert damage.summarize([det(k) for k in kinds], at)["patterns"] == expected


def test_seed_example_schema_and_context_string():
    out = damage.summarize([det("glass_shatter", 0.87), det("dent", 0.72)], DAY)
    assert out["damage_types"] == ["glass_shatter", "dent"]
    assert out["has_high_security_damage"] is True
    assert out["total_damage_count"] == 2
    assert out["highest_confidence"] == 0.87
    assert out["is_night"] is False
    assert out["context"] == (
        "Vehicle Damage Detected (2 instances):\n"
        "- glass_shatter: 1 instance(s) (avg conf: 87%)\n"
        "- dent: 1 instance(s) (avg conf: 72%)\n"
        "**HIGH SECURITY ALERT**: Suspicious damage types detected"
    )


def test_context_averages_per_type_and_omits_alert_without_high_security_damage():
    text = damage.context_string([det("scratch", 0.5), det("scratch", 0.7), det("dent", 0.9)])
    assert text == (
        "Vehicle Damage Detected (3 instances):\n"
        "- scratch: 2 instance(s) (avg conf: 60%)\n"
        "- dent: 1 instance(s) (avg conf: 90%)"
    )
    assert damage.context_string([]) == ""


def test_no_damage_summary():
    out = damage.summarize([], None)
    assert out["damage_types"] == [] and out["total_damage_count"] == 0
    assert out["highest_confidence"] == 0.0 and out["has_high_security_damage"] is False
    assert out["is_night"] is None
