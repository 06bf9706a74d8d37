"""`xclip`: X-CLIP fixture -> seed {action, confidence, action_scores} over multi-frame clips."""

from __future__ import annotations

import math

import pytest
from _hf_support import ActionResult, check_lifecycle, image, load_adapter

from serving.adapters.base import FramesItem
from serving.adapters.postprocess.action import SECURITY_ACTIONS
from serving.adapters.xclip import sample_indices
from serving.errors import BadRequest


@pytest.fixture(scope="module")
def xclip(built_models):
    return load_adapter(built_models("action_recognizer"), "action_recognizer")


def test_sample_indices():
    assert sample_indices(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sample_indices(1, 4) == [0, 0, 0, 0]


def test_actions_over_clips(xclip):
    assert xclip.num_frames == 8
    long_clip = [image(seed=i) for i in range(12)]
    out = xclip.predict([long_clip, FramesItem(tuple(long_clip[:2]))])
    for r in out:
        ActionResult.model_validate(r)
        assert r["action"] in SECURITY_ACTIONS and len(r["action_scores"]) == 5
        assert list(r["action_scores"].values()) == sorted(r["action_scores"].values(), reverse=True)
    custom = xclip.predict([long_clip], labels=["walking", "running"], top_k=None)[0]
    assert set(custom["action_scores"]) == {"walking", "running"}
    assert math.isclose(sum(custom["action_scores"].values()), 1.0, abs_tol=1e-3)


def test_bad_clips(xclip):
    with pytest.raises(BadRequest):
        xclip.predict([[]])
    with pytest.raises(BadRequest):
        xclip.predict([image()])  # a single image is not a list of frames


def test_lifecycle(xclip):
    clip = [image(seed=i) for i in range(8)]
    check_lifecycle(xclip, lambda: xclip.predict([clip]))


def test_label_limits(xclip):
    with pytest.raises(BadRequest):
        xclip.predict([[image()]], labels=[f"action {i}" for i in range(300)])
    with pytest.raises(BadRequest):
        xclip.predict([[image()]], labels=["walking", ""])
