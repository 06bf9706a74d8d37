"""`vitpose`: ViTPose+ (MoE) fixture -> 17 COCO keypoints per person box, posture and alerts from the
shared pose rules."""

from __future__ import annotations

import pytest
from _hf_support import PoseResult, check_lifecycle, image, load_adapter

from serving.adapters.base import ImageItem
from serving.errors import InvalidBBox
from serving.imaging import BBox


@pytest.fixture(scope="module")
def vitpose(built_models):
    return load_adapter(built_models("vitpose"), "vitpose")


def test_pose_per_person(vitpose):
    assert vitpose.num_experts > 1  # ViTPose+ mixture of experts
    frame = image(120, 160)
    box = BBox(x1=20, y1=10, x2=70, y2=110)
    crop, boxed = vitpose.predict([image(), ImageItem(frame, box)])
    for r in (crop, boxed):
        PoseResult.model_validate(r)
    assert crop["bbox"] == {"x1": 0.0, "y1": 0.0, "x2": 72.0, "y2": 96.0}
    assert boxed["bbox"] == {"x1": 20.0, "y1": 10.0, "x2": 70.0, "y2": 110.0}
    # keypoints come back in frame pixels, around the box (ViTPose pads the box by 25 %)
    xs = [k["x"] for k in boxed["keypoints"]]
    ys = [k["y"] for k in boxed["keypoints"]]
    assert 20 - 25 <= min(xs) and max(xs) <= 70 + 25 and 10 - 40 <= min(ys) and max(ys) <= 110 + 40


def test_bad_box(vitpose):
    with pytest.raises(InvalidBBox):
        vitpose.predict([ImageItem(image(), BBox.parse([500, 500, 600, 600]))])


def test_lifecycle(vitpose):
    check_lifecycle(vitpose, lambda: vitpose.predict([image()]))
