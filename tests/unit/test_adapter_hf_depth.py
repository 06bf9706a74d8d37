"""`depth_anything`: Depth Anything V2 fixture -> seed depth object (map PNG, distance, proximity)."""

from __future__ import annotations

import base64
import io

import pytest
from _hf_support import DepthResult, check_lifecycle, image, load_adapter
from PIL import Image

from serving.adapters.base import ImageItem
from serving.errors import BadRequest, InvalidBBox
from serving.imaging import BBox


@pytest.fixture(scope="module")
def depth(built_models):
    return load_adapter(built_models("depth_estimator"), "depth_estimator")


def test_depth_estimate_and_object_distance(depth):
    frame, box = image(90, 120), BBox(x1=10, y1=20, x2=60, y2=80)
    whole, obj = depth.predict([frame, ImageItem(frame, box)])
    for r in (whole, obj):
        DepthResult.model_validate(r)
        assert r["estimated_distance_m"] == pytest.approx(r["relative_depth"] * 10.0, abs=0.01)
    assert obj["bbox"] == {"x1": 10.0, "y1": 20.0, "x2": 60.0, "y2": 80.0} and "bbox" not in whole
    png = Image.open(io.BytesIO(base64.b64decode(whole["depth_map_base64"])))
    assert png.size == (120, 90) and png.mode == "L"
    lean = depth.predict([frame], include_map=False, max_distance_m=20.0)[0]
    assert lean["depth_map_base64"] is None
    assert lean["estimated_distance_m"] == pytest.approx(whole["relative_depth"] * 20.0, abs=0.01)


def test_bad_inputs(depth):
    with pytest.raises(InvalidBBox):
        depth.predict([ImageItem(image(), BBox.parse([500, 500, 600, 600]))])
    with pytest.raises(BadRequest):
        depth.predict([image()], max_distance_m=0)


def test_lifecycle(depth):
    check_lifecycle(depth, lambda: depth.predict([image()]))
