"""Posture and alert rules on hand-built skeletons (pixels, y down; torso length T = 40 unless noted)."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.pose import (
    COCO_KEYPOINT_NAMES,
    analyze_pose,
    classify_posture,
    keypoint_dicts,
    security_alerts,
)

STANDING = {
    "nose": (50, 10), "left_eye": (48, 8), "right_eye": (52, 8), "left_ear": (46, 10), "right_ear": (54, 10),
    "left_shoulder": (40, 30), "right_shoulder": (60, 30), "left_elbow": (38, 50), "right_elbow": (62, 50),
    "left_wrist": (37, 68), "right_wrist": (63, 68), "left_hip": (43, 70), "right_hip": (57, 70),
    "left_knee": (44, 100), "right_knee": (56, 100), "left_ankle": (45, 130), "right_ankle": (55, 130),
}  # fmt: skip


def rows(overrides=None, conf=None):
    pts = {**STANDING, **(overrides or {})}
    conf = conf or {}
    return [(*pts[n], conf.get(n, 0.9)) for n in COCO_KEYPOINT_NAMES]


CASES = {
    "standing": ({}, "standing", []),
    "walking": ({"left_ankle": (38, 130), "right_ankle": (62, 128)}, "walking", []),
    "running": ({"left_ankle": (30, 128), "right_ankle": (72, 115)}, "running", []),
    # side view on a chair: thighs horizontal, shins hanging
    "sitting": ({"left_knee": (75, 72), "right_knee": (78, 72), "left_ankle": (75, 105), "right_ankle": (78, 105)},
                "sitting", []),
    # hips dropped next to the heels, knees folded forward
    "crouching": ({"nose": (50, 45), "left_shoulder": (40, 60), "right_shoulder": (60, 60),
                   "left_elbow": (40, 75), "right_elbow": (60, 75), "left_wrist": (45, 85), "right_wrist": (55, 85),
                   "left_hip": (45, 95), "right_hip": (55, 95), "left_knee": (65, 88), "right_knee": (68, 88),
                   "left_ankle": (50, 112), "right_ankle": (53, 112)}, "crouching", ["crouching"]),
    # body along the ground
    "lying": ({"nose": (5, 105), "left_shoulder": (20, 100), "right_shoulder": (20, 110), "left_hip": (60, 102),
               "right_hip": (60, 112), "left_knee": (90, 102), "right_knee": (90, 112), "left_ankle": (120, 102),
               "right_ankle": (120, 112), "left_elbow": (35, 98), "right_elbow": (35, 114),
               "left_wrist": (50, 98), "right_wrist": (50, 114)}, "lying_down", ["lying_down"]),
    "hands_raised": ({"left_elbow": (36, 15), "right_elbow": (64, 15), "left_wrist": (38, 0),
                      "right_wrist": (62, 0)}, "standing", ["hands_raised"]),
    # guard at chin height, elbows folded, feet apart
    "fighting": ({"left_elbow": (35, 45), "right_elbow": (65, 45), "left_wrist": (45, 25), "right_wrist": (55, 25),
                  "left_ankle": (35, 130), "right_ankle": (65, 130)}, "walking", ["fighting_stance"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_posture_and_alerts(case):
    overrides, posture, alerts = CASES[case]
    pose = analyze_pose(rows(overrides))
    assert pose["posture"] == posture
    assert pose["alerts"] == alerts


def test_guard_with_feet_together_is_not_a_fighting_stance():
    overrides = {**CASES["fighting"][0], "left_ankle": (45, 130), "right_ankle": (55, 130)}
    assert security_alerts(rows(overrides)) == []


def test_low_confidence_hips_make_the_torso_unknown():
    assert classify_posture(rows(conf={"left_hip": 0.1, "right_hip": 0.2})) == "unknown"


def test_legs_out_of_frame_upright_torso_is_standing():
    legs = {n: 0.0 for n in COCO_KEYPOINT_NAMES if n.endswith(("knee", "ankle"))}
    assert classify_posture(rows(conf=legs)) == "standing"


def test_rules_are_scale_invariant():
    big = [(x * 3.0 + 100, y * 3.0 + 50, c) for x, y, c in rows(CASES["running"][0])]
    assert classify_posture(big) == "running"


def test_keypoint_dicts_use_the_17_coco_names():
    kps = keypoint_dicts(rows())
    assert [k["name"] for k in kps] == COCO_KEYPOINT_NAMES
    assert kps[0] == {"name": "nose", "x": 50.0, "y": 10.0, "confidence": 0.9}
    with pytest.raises(ValueError):
        keypoint_dicts(rows()[:5])
