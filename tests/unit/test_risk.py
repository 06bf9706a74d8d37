"""Risk analysis: levels, prompt context strings, LLM answer parsing, rule-based score."""

from __future__ import annotations

import json

import pytest

from serving.router import risk
from serving.router.schemas import FrameDetection, level_of


def det(label: str, enrichment: dict | None = None, det_id: str = "det_1", conf: float = 0.9) -> FrameDetection:
    return FrameDetection.model_validate({"class": label, "confidence": conf, "detection_id": det_id,
                                     "bbox": {"x1": 0, "y1": 0, "x2": 10, "y2": 10}, "enrichment": enrichment})


WEAPON = {"threat_detection": {"threat_type": "knife", "confidence": 0.81, "severity": "high", "bbox": [1, 2, 3, 4]}}
NO_THREAT = {"threat_detection": {"threat_type": "none", "confidence": 0.0, "severity": "low", "bbox": None}}
DAMAGE = {"vehicle_damage": {
    "detections": [
        {"damage_type": "glass_shatter", "confidence": 0.87, "bbox": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
        {"damage_type": "dent", "confidence": 0.72, "bbox": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
    ],
    "damage_types": ["glass_shatter", "dent"], "has_high_security_damage": True,
    "total_damage_count": 2, "highest_confidence": 0.87}}


@pytest.mark.parametrize("score,level", [(0, "low"), (29, "low"), (30, "medium"), (59, "medium"),
                                         (60, "high"), (84, "high"), (85, "critical"), (100, "critical")])
def test_level_boundaries(score, level):
    assert level_of(score) == level


def test_damage_context_is_the_seed_string():
    text = risk.damage_context(DAMAGE["vehicle_damage"])
    assert text == (
        "Vehicle Damage Detected (2 instances):\n"
        "- glass_shatter: 1 instance(s) (avg conf: 87%)\n"
        "- dent: 1 instance(s) (avg conf: 72%)\n"
        "**HIGH SECURITY ALERT**: Suspicious damage types detected"
    )


def test_prompt_carries_every_enrichment_fact():
    person = det("person", {
        **WEAPON,
        "pose": {"keypoints": [], "posture": "crouching", "alerts": ["crouching"]},
        "clothing": {"type": "hoodie", "color": "dark", "is_suspicious": True, "is_service_uniform": False},
        "age_classifications": {"det_1": {"age_range": "25-35", "confidence": 0.82, "raw_prediction": 28.5}},
        "gender_classifications": {"det_1": {"gender": "male", "confidence": 0.94}},
        "person_embeddings": {"det_1": {"embedding": [0.1] * 4, "embedding_dimension": 512, "model": "osnet_x0_25"}},
        "depth": {"estimated_distance_m": 3.5, "proximity_label": "close"},
    })
    car = det("car", {**DAMAGE, "vehicle": {"vehicle_type": "pickup_truck", "display_name": "pickup truck",
                                            "confidence": 0.92, "is_commercial": False}}, det_id="det_2")
    msgs = risk.build_messages([person, car], camera_id="front_door", timestamp="2024-01-15T23:10:00Z")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    for fact in ("Camera: front_door", "(night)", "**WEAPON DETECTED**: knife", "Pose: crouching; alerts: crouching",
                 "Clothing: hoodie, dark (SUSPICIOUS)", "Demographics: age 25-35 (82%), male (94%)",
                 "Distance: 3.5 m (close)", "Re-ID", "Vehicle: pickup truck (92%)",
                 "Vehicle Damage Detected (2 instances):", "**HIGH SECURITY ALERT**"):
        assert fact in user, fact
    assert "risk_score" in msgs[0]["content"] and "85-100" in msgs[0]["content"]


def test_prompt_is_capped():
    many = [det("person", NO_THREAT, det_id=f"det_{i}") for i in range(40)]
    msgs = risk.build_messages(many, max_detections=5, max_chars=400)
    assert len(msgs[1]["content"]) < 520
    assert "truncated" in msgs[1]["content"] or "more detections" in msgs[1]["content"]


@pytest.mark.parametrize("text,score,level", [
    ('{"risk_score": 72, "risk_level": "high", "reasons": ["loitering"], "summary": "s"}', 72, "high"),
    ('Sure!\n```json\n{"risk_score": 12.4, "reasons": "nothing odd"}\n```', 12, "low"),
    ('{"note": 1} then {"risk_score": 90, "risk_level": "low"}', 90, "critical"),  # level follows the score
    ("Risk score: 45/100 because someone lingers", 45, "medium"),
])
def test_parse_llm_output(text, score, level):
    a = risk.parse_llm_output(text)
    assert a is not None and a.risk_score == score and a.risk_level == level and a.scoring == "llm"


@pytest.mark.parametrize("text", ["", "gibberish tokens ##", '{"risk_score": 180}', '{"risk_score": "high"}',
                                  "{not json"])
def test_parse_rejects_unusable_output(text):
    assert risk.parse_llm_output(text) is None


def test_rules_empty_frame_is_low():
    a = risk.rule_based([])
    assert a.risk_score == 0 and a.risk_level == "low"


def test_rules_weapon_is_critical():
    a = risk.rule_based([det("person", WEAPON)], timestamp="2024-01-15T14:00:00Z")
    assert a.risk_level == "critical" and a.risk_score >= 90
    assert any("weapon" in r for r in a.reasons)


def test_rules_person_by_day_vs_night_and_suspicious_clothing():
    day = risk.rule_based([det("person", NO_THREAT)], timestamp="2024-01-15T14:00:00Z")
    night = risk.rule_based([det("person", NO_THREAT)], timestamp="2024-01-15T23:30:00Z")
    masked = risk.rule_based([det("person", {"clothing": {"type": "ski mask", "is_suspicious": True}})],
                             timestamp="2024-01-15T23:30:00Z")
    assert day.risk_level == "low" and night.risk_score > day.risk_score
    assert masked.risk_score > night.risk_score and masked.risk_level in ("medium", "high")


def test_rules_service_uniform_lowers_score():
    plain = risk.rule_based([det("person", NO_THREAT)])
    courier = risk.rule_based([det("person", {"clothing": {"type": "UPS uniform", "is_service_uniform": True}})])
    assert courier.risk_score < plain.risk_score


def test_rules_break_in_pattern_at_night_is_critical():
    dmg = {"vehicle_damage": {"damage_types": ["glass_shatter", "lamp_broken"], "has_high_security_damage": True,
                              "detections": [], "total_damage_count": 2}}
    day = risk.rule_based([det("car", dmg)], timestamp="2024-01-15T12:00:00Z")
    night = risk.rule_based([det("car", dmg)], timestamp="2024-01-15T02:00:00Z")
    assert day.risk_level == "high"
    assert night.risk_level == "critical"
    assert any("break-in pattern" in r for r in night.reasons)


def test_rules_pose_and_action_alerts_add_up():
    calm = risk.rule_based([det("person", {"pose": {"posture": "standing", "alerts": []}})])
    fight = risk.rule_based([det("person", {"pose": {"posture": "standing", "alerts": ["fighting_stance"]},
                                            "action": {"action": "fighting", "confidence": 0.9}})])
    assert fight.risk_score - calm.risk_score == 30 + 35


def test_assess_falls_back_when_unparseable():
    a, why = risk.assess([det("person", WEAPON)], "asdf qwer zxcv")
    assert a.scoring == "rule_based_fallback" and why
    assert a.risk_level == "critical"
    assert any("could not be parsed" in r for r in a.reasons)


def test_assess_keeps_llm_score_but_floors_weapons():
    low = json.dumps({"risk_score": 10, "risk_level": "low", "reasons": ["calm"], "summary": "ok"})
    a, why = risk.assess([det("person", NO_THREAT)], low)
    assert why is None and a.scoring == "llm" and a.risk_score == 10
    b, _ = risk.assess([det("person", WEAPON)], low)
    assert b.scoring == "llm" and b.risk_score == risk.WEAPON_FLOOR and b.risk_level == "critical"


def test_rules_count_once_per_frame():
    masked = {"clothing": {"type": "balaclava", "is_suspicious": True}}
    one = risk.rule_based([det("person", masked)])
    many = risk.rule_based([det("person", masked, det_id=f"d{i}") for i in range(8)])
    # 8 people: +15 for the crowd (capped), the clothing rule still counts once
    assert many.risk_score - one.risk_score == 15
    assert "suspicious clothing: balaclava (x8)" in many.reasons
