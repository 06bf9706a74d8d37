"""Action score normalisation and the seed's {action, confidence, action_scores}."""

from __future__ import annotations

import math

import pytest

from serving.adapters.postprocess.action import (
    SECURITY_ACTIONS,
    action_result,
    normalise_scores,
    prompt_for,
    softmax,
)


def test_seed_actions_first():
    assert SECURITY_ACTIONS[:5] == ["walking", "running", "fighting", "falling", "loitering"]
    assert prompt_for("running") == "a person running"


def test_softmax():
    assert softmax([0.0, 0.0]) == [0.5, 0.5]
    assert softmax([1000.0, 0.0])[0] == pytest.approx(1.0)  # no overflow
    assert softmax([]) == []


def test_normalise_scores_seed_example_is_stable():
    seed = {"running": 0.87, "walking": 0.08, "fighting": 0.03, "falling": 0.02}
    assert normalise_scores(seed) == seed
    assert list(normalise_scores({"a": 1.0, "b": 2.0, "c": 1.0})) == ["b", "a", "c"]
    assert normalise_scores({"a": 1.0, "b": 2.0, "c": 1.0}) == {"b": 0.5, "a": 0.25, "c": 0.25}
    assert normalise_scores({"a": 3.0, "b": 1.0}, top_k=1) == {"a": 0.75}
    assert normalise_scores({"a": -1.0, "b": 1.0}) == {"b": 1.0, "a": 0.0}
    assert normalise_scores({"a": 0.0}) == {}


def test_action_result_from_logits():
    labels = ["walking", "running", "fighting", "falling"]
    out = action_result(labels, [0.0, 2.0, 0.0, -1.0], top_k=3)
    z = math.exp(2) + 2 + math.exp(-1)
    assert out["action"] == "running" and out["confidence"] == round(math.exp(2) / z, 4)
    assert list(out["action_scores"]) == ["running", "walking", "fighting"]
    assert out["is_suspicious"] is False
    fight = action_result(labels, [0.0, 0.0, 5.0, 0.0])
    assert fight["action"] == "fighting" and fight["is_suspicious"] is True
    assert len(fight["action_scores"]) == 4


def test_action_result_rejects_mismatch():
    with pytest.raises(ValueError):
        action_result(["walking"], [1.0, 2.0])


def test_risk_weight_and_all_scores_for_the_reference_client():
    from serving.adapters.postprocess.action import action_result, risk_weight

    out = action_result(["walking", "breaking in", "custom thing"], [0.0, 5.0, 1.0])
    assert out["action"] == "breaking in" and out["risk_weight"] == 1.0
    assert out["all_scores"] == out["action_scores"] and abs(sum(out["all_scores"].values()) - 1) < 1e-3
    assert risk_weight("a person walking") == 0.1 and 0 < risk_weight("custom thing") < 1
