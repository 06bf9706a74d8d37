"""`segformer`: SegFormer clothes fixture (18 classes) -> per-class pixel fractions and garments."""

from __future__ import annotations

import math

import pytest
from _hf_support import SegmentationResult, check_lifecycle, image, load_adapter

from serving.adapters.base import ImageItem
from serving.adapters.postprocess.clothing import GARMENT_CLASSES, SEGFORMER_CLOTHES_LABELS
from serving.imaging import BBox


@pytest.fixture(scope="module")
def seg(built_models):
    return load_adapter(built_models("segformer_clothes"), "segformer_clothes")


def test_segmentation(seg):
    assert seg.labels == SEGFORMER_CLOTHES_LABELS
    out = seg.predict([image(), ImageItem(image(120, 90), BBox.parse([0, 0, 45, 60]))])
    for r in out:
        SegmentationResult.model_validate(r)
        assert set(r["class_fractions"]) == set(SEGFORMER_CLOTHES_LABELS)
        assert math.isclose(sum(r["class_fractions"].values()), 1.0, abs_tol=1e-3)
        assert set(r["items"]) <= (GARMENT_CLASSES - {"Left-shoe", "Right-shoe"}) | {"Shoes"}


def test_lifecycle(seg):
    check_lifecycle(seg, lambda: seg.predict([image()]))
