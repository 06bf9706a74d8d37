"""Posture and security alerts from 17 COCO keypoints (seed 003 "Pose Estimation").

Pure functions over keypoints in image pixels (x right, y DOWN), each `(x, y, confidence)`; a keypoint
counts only when its confidence is >= `min_conf` (0.3). Every length is measured in units of the torso
length T = |shoulder midpoint - hip midpoint|, so the rules do not depend on the person's size in the
image. Midpoints use whichever side is visible.

Posture (first rule that matches wins):
1. `unknown`    - no visible shoulder or no visible hip (no torso, nothing can be said).
2. `lying_down` - the torso leans more than 60 degrees from vertical.
3. legs visible (a hip, a knee and an ankle on at least one side):
   - `crouching` - the hips are close to the feet: vertical hip->ankle drop < 0.6 T, or the knees are
     folded below 75 degrees (hip-knee-ankle angle).
   - `sitting`   - the thighs are near horizontal (|hip_y - knee_y| < 0.4 T) while the shins hang down
     (ankle below knee by > 0.4 T).
   - `running`   - feet far apart (horizontal ankle gap >= 0.8 T), or one foot lifted
     (|left_ankle_y - right_ankle_y| >= 0.3 T) with a gap >= 0.4 T.
   - `walking`   - horizontal ankle gap >= 0.35 T.
   - `standing`  - otherwise.
4. legs not visible, torso upright -> `standing`.

Alerts (seed names; any combination):
- `crouching`, `lying_down`: the posture of the same name (hiding / medical emergency).
- `hands_raised`: both wrists above the head (above the nose, or above the shoulders by 0.5 T when the
  nose is not visible) - surrender / robbery.
- `fighting_stance`: both wrists held in a guard between 0.25 T above the nose and 0.4 T below the
  shoulders, both elbows bent below 110 degrees, not hands_raised, and - when both ankles are visible -
  the feet at least 0.4 T apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

COCO_KEYPOINT_NAMES: list[str] = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
POSTURES = ("standing", "walking", "running", "sitting", "crouching", "lying_down")
ALERTS = ("crouching", "lying_down", "hands_raised", "fighting_stance")
MIN_CONF = 0.3

Point = tuple[float, float]
Keypoints = Mapping[str, Point]


def keypoint_dicts(points: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """17 `(x, y, conf)` rows -> the seed's keypoint list `[{"name", "x", "y", "confidence"}]`."""
    if len(points) != len(COCO_KEYPOINT_NAMES):
        raise ValueError(f"expected {len(COCO_KEYPOINT_NAMES)} keypoints, got {len(points)}")
    return [
        {"name": name, "x": float(p[0]), "y": float(p[1]), "confidence": float(p[2]) if len(p) > 2 else 1.0}
        for name, p in zip(COCO_KEYPOINT_NAMES, points, strict=True)
    ]


def visible(keypoints: Sequence[Mapping[str, Any]] | Sequence[Sequence[float]],
            min_conf: float = MIN_CONF) -> dict[str, Point]:
    """{name: (x, y)} of the keypoints with confidence >= min_conf; accepts seed dicts or (x, y, conf) rows."""
    out: dict[str, Point] = {}
    for i, kp in enumerate(keypoints):
        if isinstance(kp, Mapping):
            name, x, y, c = kp["name"], kp["x"], kp["y"], kp.get("confidence", 1.0)
        else:
            name, (x, y), c = COCO_KEYPOINT_NAMES[i], kp[:2], (kp[2] if len(kp) > 2 else 1.0)
        if c >= min_conf:
            out[str(name)] = (float(x), float(y))
    return out


def _mid(kp: Keypoints, a: str, b: str) -> Point | None:
    pts = [kp[n] for n in (a, b) if n in kp]
    if not pts:
        return None
    return (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))


def _angle(a: Point, b: Point, c: Point) -> float:
    """Angle ABC in degrees (180 = straight)."""
    v1, v2 = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
    n1, n2 = math.hypot(*v1), math.hypot(*v2)
    if n1 == 0 or n2 == 0:
        return 180.0
    cos = max(-1.0, min(1.0, (v1[0] * v2[0] + v1[1] * v2[1]) / (n1 * n2)))
    return math.degrees(math.acos(cos))


def torso(kp: Keypoints) -> tuple[Point, Point, float] | None:
    """(shoulder midpoint, hip midpoint, torso length) or None when shoulders or hips are missing."""
    s, h = _mid(kp, "left_shoulder", "right_shoulder"), _mid(kp, "left_hip", "right_hip")
    if s is None or h is None:
        return None
    length = math.hypot(h[0] - s[0], h[1] - s[1])
    return (s, h, length) if length > 0 else None


def torso_tilt_deg(shoulder: Point, hip: Point) -> float:
    """Torso angle from vertical in degrees: 0 upright, 90 horizontal."""
    return math.degrees(math.atan2(abs(hip[0] - shoulder[0]), abs(hip[1] - shoulder[1])))


def _knee_angles(kp: Keypoints) -> list[float]:
    return [
        _angle(kp[f"{side}_hip"], kp[f"{side}_knee"], kp[f"{side}_ankle"])
        for side in ("left", "right")
        if all(f"{side}_{j}" in kp for j in ("hip", "knee", "ankle"))
    ]


def classify_posture(keypoints: Any, min_conf: float = MIN_CONF) -> str:
    """One of POSTURES, or "unknown" when the torso is not visible (rules in the module docstring)."""
    kp = visible(keypoints, min_conf)
    t = torso(kp)
    if t is None:
        return "unknown"
    shoulder, hip, T = t
    if torso_tilt_deg(shoulder, hip) > 60.0:
        return "lying_down"
    knees = _knee_angles(kp)
    if not knees:
        return "standing"
    hip_mid = _mid(kp, "left_hip", "right_hip")
    knee_mid = _mid(kp, "left_knee", "right_knee")
    ankle_mid = _mid(kp, "left_ankle", "right_ankle")
    assert hip_mid and knee_mid and ankle_mid  # a knee angle needs all three on one side
    drop = ankle_mid[1] - hip_mid[1]
    if drop < 0.6 * T or min(knees) < 75.0:
        return "crouching"
    if abs(hip_mid[1] - knee_mid[1]) < 0.4 * T and ankle_mid[1] - knee_mid[1] > 0.4 * T:
        return "sitting"
    if "left_ankle" in kp and "right_ankle" in kp:
        la, ra = kp["left_ankle"], kp["right_ankle"]
        gap, lift = abs(la[0] - ra[0]) / T, abs(la[1] - ra[1]) / T
        if gap >= 0.8 or (lift >= 0.3 and gap >= 0.4):
            return "running"
        if gap >= 0.35:
            return "walking"
    return "standing"


def hands_raised(kp: Keypoints, T: float, shoulder_y: float) -> bool:
    if "left_wrist" not in kp or "right_wrist" not in kp:
        return False
    limit = kp["nose"][1] if "nose" in kp else shoulder_y - 0.5 * T
    return kp["left_wrist"][1] < limit and kp["right_wrist"][1] < limit


def fighting_stance(kp: Keypoints, T: float, shoulder_y: float) -> bool:
    need = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist")
    if not all(n in kp for n in need):
        return False
    top = (kp["nose"][1] if "nose" in kp else shoulder_y - 0.6 * T) - 0.25 * T
    bottom = shoulder_y + 0.4 * T
    for side in ("left", "right"):
        wy = kp[f"{side}_wrist"][1]
        if not top <= wy <= bottom:
            return False
        if _angle(kp[f"{side}_shoulder"], kp[f"{side}_elbow"], kp[f"{side}_wrist"]) >= 110.0:
            return False
    if "left_ankle" in kp and "right_ankle" in kp:
        if abs(kp["left_ankle"][0] - kp["right_ankle"][0]) < 0.4 * T:
            return False
    return True


def security_alerts(keypoints: Any, posture: str | None = None, min_conf: float = MIN_CONF) -> list[str]:
    """The seed's alerts that apply, in ALERTS order (rules in the module docstring)."""
    posture = posture or classify_posture(keypoints, min_conf)
    kp = visible(keypoints, min_conf)
    alerts = [a for a in ("crouching", "lying_down") if posture == a]
    t = torso(kp)
    if t is not None:
        shoulder, _, T = t
        raised = hands_raised(kp, T, shoulder[1])
        if raised:
            alerts.append("hands_raised")
        elif fighting_stance(kp, T, shoulder[1]):
            alerts.append("fighting_stance")
    return alerts


def analyze_pose(points: Sequence[Sequence[float]], min_conf: float = MIN_CONF) -> dict[str, Any]:
    """17 `(x, y, conf)` rows -> the seed's pose object `{"keypoints", "posture", "alerts"}`."""
    kps = keypoint_dicts(points)
    posture = classify_posture(kps, min_conf)
    return {"keypoints": kps, "posture": posture, "alerts": security_alerts(kps, posture, min_conf)}
