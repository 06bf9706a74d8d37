"""Risk analysis around the LLM: the prompt, the parsing of its answer, the rule-based score.

Seed 003 "Integration with Risk Analysis": enrichment results feed the LLM prompt — weapons trigger an
immediate critical elevation, demographics give context, pose and clothing inform the behavioural
assessment (suspicious posture, face coverings), vehicle damage comes with its own context string.

Three pure functions, no I/O:
- `build_messages(detections, ...)` -> chat messages (system + user) for the LLM;
- `parse_llm_output(text)` -> RiskAssessment | None (None when the answer holds no usable score);
- `rule_based(detections, ...)` -> RiskAssessment from the table below, used when the LLM output cannot
  be parsed (then `scoring="rule_based_fallback"`) and as a floor for weapons even when it can.

Rule table (additive on the highest base, each rule once per frame at its strongest, clamped to 0-100;
levels from `schemas.level_of`):
  base: person 20, vehicle 10, object 5, animal 3; +5 per extra person (at most +15)
  person at night (22:00-06:00) +15
  clothing suspicious (mask, balaclava, dark hoodie) +20; service uniform -10
  pose alerts: crouching +15, lying_down +20, hands_raised +25, fighting_stance +30; running +10
  action: fighting +35, falling +20, running +10
  violence classifier positive +40
  vehicle damage (seed patterns): high-security type +25, break-in pattern +30, likely incident +10,
    elevated risk (damage at night) +10; critical alert (high-security damage at night) -> floor 85
  person close to the camera (proximity close / very_close) +5
  weapon detected -> floor 90 (critical), also applied on top of a parsed LLM score
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from serving.adapters.postprocess import damage
from serving.router.schemas import FrameDetection, RiskAssessment, level_of

BASE_SCORE = {"person": 20, "vehicle": 10, "object": 5, "animal": 3}
POSE_ALERT_POINTS = {"crouching": 15, "lying_down": 20, "hands_raised": 25, "fighting_stance": 30}
ACTION_POINTS = {"fighting": 35, "falling": 20, "running": 10}
WEAPON_TYPES = {"knife", "gun", "weapon", "pistol", "rifle", "firearm"}
#: seed damage patterns (serving.adapters.postprocess.damage.patterns) -> points
DAMAGE_PATTERN_POINTS = {"break-in pattern": 30, "likely incident": 10, "elevated risk": 10}
WEAPON_FLOOR = 90
NIGHT_DAMAGE_FLOOR = 85

SYSTEM_PROMPT = (
    "You are the risk analyst of a home-security video analytics system. You receive the objects "
    "detected in one camera frame and what the enrichment models found about each of them. Assess "
    "the security risk. Risk score ranges: low 0-29, medium 30-59, high 60-84, critical 85-100. "
    "Weapons are always critical. Answer with one JSON object and nothing else: "
    '{"risk_score": <0-100>, "risk_level": "low|medium|high|critical", '
    '"reasons": ["<short reason>", ...], "summary": "<one sentence>"}'
)


# ------------------------------------------------------------------ helpers over enrichment dicts
def is_night(timestamp: str | None) -> bool:
    """22:00-06:00 in the timestamp's own clock (seed: night-time damage rule)."""
    if not timestamp:
        return False
    try:
        t = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return False
    return bool(damage.is_night(t))


def _enr(d: FrameDetection) -> dict[str, Any]:
    return d.enrichment or {}


def _per_detection(enr: dict[str, Any], key: str, det_id: str) -> dict[str, Any] | None:
    """Seed maps keyed by detection id (age_classifications...); a single entry is taken as ours."""
    m = enr.get(key)
    if not isinstance(m, dict) or not m:
        return None
    if det_id in m and isinstance(m[det_id], dict):
        return m[det_id]
    if len(m) == 1:
        v = next(iter(m.values()))
        return v if isinstance(v, dict) else None
    return None


def weapon_of(enr: dict[str, Any]) -> dict[str, Any] | None:
    """The detected weapon ({threat_type, confidence, severity}) or None."""
    td = enr.get("threat_detection")
    if isinstance(td, dict):
        ttype = str(td.get("threat_type") or "none").lower()
        if ttype != "none" and (ttype in WEAPON_TYPES or td.get("severity") in ("high", "critical")):
            return td
    th = enr.get("threat")
    if isinstance(th, dict) and th.get("detected"):
        return {"threat_type": th.get("threat_type") or th.get("type") or "weapon",
                "confidence": th.get("confidence", 0.0), "severity": th.get("severity", "critical")}
    return None


def _clothing(enr: dict[str, Any]) -> dict[str, Any] | None:
    c = enr.get("clothing")
    return c if isinstance(c, dict) else None


def _pose_alerts(enr: dict[str, Any]) -> tuple[str | None, list[str]]:
    p = enr.get("pose")
    if not isinstance(p, dict):
        return None, []
    alerts = [str(a) for a in p.get("alerts") or []]
    return p.get("posture"), alerts


def _action(enr: dict[str, Any]) -> dict[str, Any] | None:
    a = enr.get("action")
    return a if isinstance(a, dict) and a.get("action") else None


def _damage(enr: dict[str, Any]) -> dict[str, Any] | None:
    dmg = enr.get("vehicle_damage") or enr.get("damage")
    return dmg if isinstance(dmg, dict) else None


def _violent(enr: dict[str, Any]) -> bool:
    v = enr.get("violence")
    if not isinstance(v, dict):
        return False
    if "is_violent" in v:
        return bool(v["is_violent"])
    label = str(v.get("label") or v.get("class") or "").lower()
    return label in ("violence", "violent") and float(v.get("confidence", 1.0)) >= 0.5


# ------------------------------------------------------------------ context strings
def _damage_types(dmg: dict[str, Any]) -> list[str]:
    dets = [d for d in dmg.get("detections") or [] if isinstance(d, dict)]
    return list(dict.fromkeys([str(t) for t in dmg.get("damage_types") or []]
                              + [str(d.get("damage_type")) for d in dets if d.get("damage_type")]))


def damage_context(dmg: dict[str, Any]) -> str:
    """Seed 003 "Context String for LLM" of vehicle damage (serving.adapters.postprocess.damage)."""
    if isinstance(dmg.get("context"), str) and dmg["context"]:
        return dmg["context"]
    dets = [d for d in dmg.get("detections") or [] if isinstance(d, dict) and "damage_type" in d]
    if dets:
        return damage.context_string([{"damage_type": d["damage_type"], "confidence": d.get("confidence", 0.0)}
                                      for d in dets])
    types = _damage_types(dmg)
    if not types:
        return ""
    lines = [f"Vehicle Damage Detected: {', '.join(types)}"]
    if damage.HIGH_SECURITY_DAMAGE & set(types):
        lines.append("**HIGH SECURITY ALERT**: Suspicious damage types detected")
    return "\n".join(lines)


def _pct(x: Any) -> str:
    try:
        return f"{round(100 * float(x))}%"
    except (TypeError, ValueError):
        return "?"


def _demographics_line(enr: dict[str, Any], detection_id: str) -> str | None:
    """"Demographics: age 25-35 (80%), female (90%)" from the per-detection maps or a `demographics` object."""
    age = _per_detection(enr, "age_classifications", detection_id)
    gender = _per_detection(enr, "gender_classifications", detection_id)
    demo = enr.get("demographics") if isinstance(enr.get("demographics"), dict) else {}
    parts = []
    if age or demo.get("age_range"):
        parts.append(f"age {(age or demo).get('age_range')}"
                     + (f" ({_pct(age['confidence'])})" if age and "confidence" in age else ""))
    if gender or demo.get("gender"):
        parts.append(f"{(gender or demo).get('gender')}"
                     + (f" ({_pct(gender['confidence'])})" if gender and "confidence" in gender else ""))
    return "Demographics: " + ", ".join(parts) if parts else None


def _threat_pose_clothing_lines(enr: dict[str, Any]) -> list[str]:
    """The weapon / threat, pose and clothing lines of one detection's enrichment."""
    lines: list[str] = []
    w = weapon_of(enr)
    if w:
        lines.append(f"**WEAPON DETECTED**: {w.get('threat_type')} (conf {_pct(w.get('confidence'))}, "
                     f"severity {w.get('severity', 'critical')})")
    elif "threat_detection" in enr or "threat" in enr:
        lines.append("Threat: none detected")
    posture, alerts = _pose_alerts(enr)
    if posture or alerts:
        lines.append(f"Pose: {posture or 'unknown'}" + (f"; alerts: {', '.join(alerts)}" if alerts else ""))
    c = _clothing(enr)
    if c:
        kind = c.get("type") or c.get("clothing_type") or "unknown"
        flags = [f for f, k in (("SUSPICIOUS", "is_suspicious"), ("service uniform", "is_service_uniform")) if c.get(k)]
        lines.append(f"Clothing: {kind}, {c.get('color', 'unknown colour')}"
                     + (f" ({', '.join(flags)})" if flags else ""))
    return lines


def detection_context(d: FrameDetection) -> list[str]:
    """Context lines of one detection's enrichment, one fact per line."""
    enr = _enr(d)
    lines = _threat_pose_clothing_lines(enr)
    demographics = _demographics_line(enr, d.detection_id)
    if demographics:
        lines.append(demographics)
    a = _action(enr)
    if a:
        lines.append(f"Action: {a['action']} ({_pct(a.get('confidence'))})")
    if _violent(enr):
        lines.append("Violence classifier: violent scene")
    v = enr.get("vehicle")
    if isinstance(v, dict) and (v.get("vehicle_type") or v.get("display_name")):
        lines.append(f"Vehicle: {v.get('display_name') or v.get('vehicle_type')} ({_pct(v.get('confidence'))})"
                     + (", commercial" if v.get("is_commercial") else ""))
    plate = enr.get("license_plate")  # the plate reader's result (serving/services/plate_ocr.py)
    if isinstance(plate, dict) and plate.get("text"):
        lines.append(f"License plate: {plate['text']} (read with {_pct(plate.get('confidence'))} confidence)")
    dmg = _damage(enr)
    if dmg:
        ctx = damage_context(dmg)
        if ctx:
            lines.extend(ctx.splitlines())
    pet = enr.get("pet")
    if isinstance(pet, dict) and (pet.get("pet_type") or pet.get("label")):
        lines.append(f"Animal: {pet.get('pet_type') or pet.get('label')}"
                     + (f", {pet['breed']}" if pet.get("breed") else ""))
    depth = enr.get("depth")
    if isinstance(depth, dict) and depth.get("estimated_distance_m") is not None:
        lines.append(f"Distance: {depth['estimated_distance_m']} m"
                     + (f" ({depth['proximity_label']})" if depth.get("proximity_label") else ""))
    if _per_detection(enr, "person_embeddings", d.detection_id) or enr.get("reid_embedding"):
        lines.append("Re-ID: embedding computed (cross-camera tracking)")
    return lines


def build_messages(
    detections: Sequence[FrameDetection],
    *,
    camera_id: str | None = None,
    timestamp: str | None = None,
    context: str | None = None,
    max_detections: int = 12,
    max_chars: int = 6000,
) -> list[dict[str, str]]:
    """System + user messages for the risk analysis; the user part is capped at `max_chars`."""
    head = [f"Camera: {camera_id or 'unknown'}"]
    if timestamp:
        head.append(f"Time: {timestamp}" + (" (night)" if is_night(timestamp) else ""))
    if context:
        head.append(f"Context: {context}")
    if not detections:
        head.append("Detections: none")
    else:
        head.append(f"Detections ({len(detections)}):")
    body: list[str] = []
    for i, d in enumerate(detections[:max_detections], 1):
        body.append(f"{i}. {d.label} ({d.detection_type}, conf {_pct(d.confidence)})")
        body.extend(f"   - {line}" for line in detection_context(d))
    if len(detections) > max_detections:
        body.append(f"... and {len(detections) - max_detections} more detections")
    user = "\n".join(head + body)
    if len(user) > max_chars:
        user = user[: max_chars - 20] + "\n... (truncated)"
    user += "\n\nAssess the risk of this frame. Answer with the JSON object only."
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ parsing the LLM answer
_SCORE_RE = re.compile(r"risk[_ ]?score[\"']?\s*[:=]\s*(\d{1,3}(?:\.\d+)?)", re.IGNORECASE)


def _json_objects(text: str) -> Iterable[dict[str, Any]]:
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_llm_output(text: str) -> RiskAssessment | None:
    """The assessment in the model's answer (a JSON object, possibly fenced), or None.

    The score decides the level (ranges above); a level that contradicts the score is ignored. A
    plain "risk_score: N" line is accepted when no JSON object carries a score.
    """
    if not text:
        return None
    for obj in _json_objects(text):
        raw = obj.get("risk_score", obj.get("score"))
        try:
            score = float(raw)
        except (TypeError, ValueError):
            continue
        if not 0 <= score <= 100:
            continue
        reasons = obj.get("reasons") or []
        if isinstance(reasons, str):
            reasons = [reasons]
        reasons = [str(r) for r in reasons if str(r).strip()][:10]
        summary = str(obj.get("summary") or obj.get("reasoning") or "")[:1000]
        s = int(round(score))
        return RiskAssessment(risk_score=s, risk_level=level_of(s), reasons=reasons, summary=summary, scoring="llm")
    m = _SCORE_RE.search(text)
    if m and 0 <= float(m.group(1)) <= 100:
        s = int(round(float(m.group(1))))
        return RiskAssessment(risk_score=s, risk_level=level_of(s), reasons=[], summary=text.strip()[:300],
                              scoring="llm")
    return None


# ------------------------------------------------------------------ rules
class _Hits:
    """Rule hits of one frame: each rule counts once (its strongest instance), with how often it fired."""

    def __init__(self) -> None:
        self.points: dict[str, int] = {}
        self.reason: dict[str, str] = {}
        self.count: dict[str, int] = {}

    def add(self, key: str, points: int, reason: str) -> None:
        self.count[key] = self.count.get(key, 0) + 1
        if key not in self.points or points > self.points[key]:
            self.points[key], self.reason[key] = points, reason

    def total(self) -> int:
        return sum(self.points.values())

    def reasons(self) -> list[str]:
        return [r + (f" (x{self.count[k]})" if self.count[k] > 1 else "") for k, r in self.reason.items()]


def _damage_rules(enr: dict[str, Any], night: bool, hits: _Hits) -> int:
    """Vehicle damage hits of one detection; returns the floor they impose (0 when none)."""
    dmg = _damage(enr)
    dtypes = _damage_types(dmg) if dmg else []
    if not dtypes:
        return 0
    found = damage.patterns(dtypes, night)
    if damage.HIGH_SECURITY_DAMAGE & set(dtypes):
        hits.add("damage:high", 25, "high-security vehicle damage")
    for pattern, points in DAMAGE_PATTERN_POINTS.items():
        if pattern in found:
            hits.add(f"damage:{pattern}", points, f"vehicle damage: {pattern}")
    return NIGHT_DAMAGE_FLOOR if "critical alert" in found else 0


def _detection_rules(d: FrameDetection, night: bool, hits: _Hits) -> int:
    """Add one detection's rule hits; returns the floor it imposes (0 when none)."""
    enr = _enr(d)
    floor = 0
    w = weapon_of(enr)
    if w:
        floor = WEAPON_FLOOR
        hits.add("weapon", 0, f"weapon detected: {w.get('threat_type')}")
    c = _clothing(enr)
    if c and c.get("is_suspicious"):
        hits.add("clothing", 20, f"suspicious clothing: {c.get('type') or c.get('clothing_type')}")
    elif c and c.get("is_service_uniform"):
        hits.add("uniform", -10, "service uniform (likely delivery)")
    posture, alerts = _pose_alerts(enr)
    for a in alerts:
        if a in POSE_ALERT_POINTS:
            hits.add(f"pose:{a}", POSE_ALERT_POINTS[a], f"posture alert: {a}")
    if posture == "running" and "running" not in alerts:
        hits.add("pose:running", 10, "person running")
    a = _action(enr)
    if a and str(a["action"]).lower() in ACTION_POINTS and float(a.get("confidence", 1.0)) >= 0.5:
        act = str(a["action"]).lower()
        hits.add(f"action:{act}", ACTION_POINTS[act], f"action: {act}")
    if _violent(enr):
        hits.add("violence", 40, "violence classifier: violent scene")
    floor = max(floor, _damage_rules(enr, night, hits))
    depth = enr.get("depth")
    close = isinstance(depth, dict) and depth.get("proximity_label") in ("close", "very_close")
    if d.detection_type == "person" and close:
        hits.add("close", 5, "person close to the camera")
    return floor


def rule_based(
    detections: Sequence[FrameDetection], *, timestamp: str | None = None, scoring: str = "rule_based"
) -> RiskAssessment:
    """The rule table of the module docstring; each rule counts once per frame (its strongest instance)."""
    night = is_night(timestamp)
    if not detections:
        return RiskAssessment(risk_score=0, risk_level="low", reasons=["no security-relevant objects"],
                              summary="Nothing security-relevant in view.", scoring=scoring)
    types = [d.detection_type or "object" for d in detections]
    score = max(BASE_SCORE.get(t, 5) for t in types)
    persons = types.count("person")
    reasons = ["in view: " + ", ".join(f"{types.count(t)} {t}" for t in dict.fromkeys(types))]
    if persons > 1:
        score += min(15, 5 * (persons - 1))
        reasons.append(f"{persons} people in view")
    if persons and night:
        score += 15
        reasons.append("person present at night")
    hits = _Hits()
    floor = max(_detection_rules(d, night, hits) for d in detections)
    score += hits.total()
    reasons += hits.reasons()
    score = max(0, min(100, max(score, floor)))
    level = level_of(score)
    summary = f"{level.capitalize()} risk: " + "; ".join(reasons[:4]) + "."
    return RiskAssessment(risk_score=score, risk_level=level, reasons=reasons, summary=summary, scoring=scoring)


def assess(
    detections: Sequence[FrameDetection], llm_text: str | None, *, timestamp: str | None = None
) -> tuple[RiskAssessment, str | None]:
    """The final assessment and, when the LLM answer was unusable, why.

    A parsed LLM score is kept but never below the weapon / night-damage floors of the rules.
    """
    rules = rule_based(detections, timestamp=timestamp)
    parsed = parse_llm_output(llm_text or "")
    if parsed is None:
        fb = rules.model_copy(update={"scoring": "rule_based_fallback"})
        fb.reasons = fb.reasons + ["LLM output could not be parsed; rule-based score used"]
        return fb, "no JSON object with a risk_score in the model output"
    floor = 0
    if any(weapon_of(_enr(d)) for d in detections):
        floor = WEAPON_FLOOR
    if parsed.risk_score < floor:
        s = floor
        parsed = parsed.model_copy(update={"risk_score": s, "risk_level": level_of(s),
                                           "reasons": parsed.reasons + ["weapon detected: raised to critical by rule"]})
    return parsed, None
