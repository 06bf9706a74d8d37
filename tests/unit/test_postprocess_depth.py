"""Depth map, estimated distance and proximity label (seed 003 depth object)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.adapters.postprocess.depth import depth_result, proximity_label, region_of_interest, relative_depth_map


@pytest.mark.parametrize(
    ("d", "label"),
    [(0.0, "very_close"), (1.49, "very_close"), (1.5, "close"), (3.5, "close"), (3.99, "close"), (4.0, "medium"),
     (7.99, "medium"), (8.0, "far"), (50.0, "far")],
)
def test_proximity_bands(d, label):
    assert proximity_label(d) == label


def test_relative_depth_inverts_disparity():
    rel = relative_depth_map(np.array([[10.0, 5.0, 0.0]]))
    assert rel.tolist() == [[0.0, 0.5, 1.0]]
    assert relative_depth_map(np.ones((2, 2))).tolist() == [[0.5, 0.5], [0.5, 0.5]]


def near_left_far_right(h=30, w=30):
    d = np.zeros((h, w), np.float32)
    d[:, : w // 2] = 10.0  # high disparity = near
    return d


def test_bbox_on_near_and_far_halves():
    d = near_left_far_right()
    near = depth_result(d, (0, 0, 10, 30), include_map=False)
    far = depth_result(d, (20, 0, 30, 30), include_map=False)
    assert near == {"depth_map_base64": None, "estimated_distance_m": 0.0, "relative_depth": 0.0,
                    "proximity_label": "very_close", "bbox": {"x1": 0, "y1": 0, "x2": 10, "y2": 30},
                    "min_depth": 0.0, "max_depth": 1.0, "mean_depth": 0.5}
    assert (far["estimated_distance_m"], far["relative_depth"], far["proximity_label"]) == (10.0, 1.0, "far")


def test_seed_example_relative_035_is_35m_close():
    d = np.tile(np.linspace(1.0, 0.0, 21, dtype=np.float32), (5, 1))  # column c has relative depth c/20
    out = depth_result(d, (7, 0, 8, 5), include_map=False)  # column 7 -> 0.35
    assert (out["relative_depth"], out["estimated_distance_m"], out["proximity_label"]) == (0.35, 3.5, "close")
    assert depth_result(d, (7, 0, 8, 5), max_distance_m=20.0, include_map=False)["estimated_distance_m"] == 7.0


def test_default_region_is_frame_centre():
    assert region_of_interest((30, 60), None) == (slice(10, 20), slice(20, 40))
    d = near_left_far_right(30, 30)
    d[10:20, 10:20] = 10.0  # something near in the middle
    assert depth_result(d, include_map=False)["proximity_label"] == "very_close"


def test_depth_map_png_is_image_sized_and_near_is_bright():
    out = depth_result(near_left_far_right(12, 16))
    png = Image.open(io.BytesIO(base64.b64decode(out["depth_map_base64"])))
    assert png.format == "PNG" and png.mode == "L" and png.size == (16, 12)
    arr = np.asarray(png)
    assert arr[0, 0] == 255 and arr[0, -1] == 0
