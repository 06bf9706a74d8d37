"""Seed 001 selection: HOT > WARM > COLD, unhealthy skipped, ready alternative + background warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import load_zoo
from serving.control.selection import SelectionCandidate, candidates_from, preference_order, rank, select
from serving.errors import BadRequest, NotFound, ServiceUnavailable


def c(name, state="COLD", residency="COLD", healthy=True, fallback=None, task="pose", caps=("pose",)):
    return SelectionCandidate(name, task, frozenset(caps), state, residency, healthy, 10.0, fallback)


def test_rank_hot_warm_cold():
    ranked = rank([c("cold"), c("hot", "HOT", "HOT"), c("warm", "WARM", "WARM")])
    assert [x.name for x in ranked] == ["hot", "warm", "cold"]


def test_preference_follows_fallback_chains():
    cands = [c("small"), c("mid", fallback="small"), c("big", fallback="mid")]
    assert preference_order(cands) == ["big", "mid", "small"]


def test_best_ready_is_used_directly():
    s = select([c("vitpose", "HOT", "HOT", fallback="pose"), c("pose", "HOT", "HOT")], capabilities=["pose"])
    assert s.selected.name == "vitpose" and not s.warmup_required and s.warm_in_background == []


def test_ready_alternative_while_the_preferred_warms_in_background():
    s = select([c("vitpose", fallback="pose"), c("pose", "HOT", "HOT")], capabilities=["pose"])
    assert s.selected.name == "pose" and not s.warmup_required and s.warm_in_background == ["vitpose"]
    d = s.to_dict()
    assert d["selected"] == "pose" and d["warming"] == ["vitpose"] and d["candidates"][0]["model"] == "pose"


def test_warm_tier_counts_as_ready():
    s = select([c("vitpose", fallback="pose"), c("pose", "COLD", "WARM")], task="pose")
    assert s.selected.name == "pose" and s.warm_in_background == ["vitpose"]


def test_no_ready_candidate_returns_the_preferred_with_warmup():
    s = select([c("vitpose", fallback="pose"), c("pose")], task="pose")
    assert s.selected.name == "vitpose" and s.warmup_required and s.to_dict()["warmup_time_s"] == 10.0


def test_unhealthy_and_off_are_skipped():
    s = select([c("vitpose", "HOT", "HOT", healthy=False, fallback="pose"), c("off", "OFF"), c("pose")], task="pose")
    assert s.selected.name == "pose" and s.skipped == {"vitpose": "unhealthy", "off": "OFF"}
    with pytest.raises(ServiceUnavailable):
        select([c("a", healthy=False), c("b", "OFF")], task="pose")


def test_filters_and_errors():
    cands = [c("p"), c("d", task="detect", caps=("detect", "open_vocab"))]
    assert select(cands, capabilities=["open_vocab"]).selected.name == "d"
    with pytest.raises(NotFound):
        select(cands, task="depth")
    with pytest.raises(NotFound):
        select(cands, task="pose", capabilities=["open_vocab"])
    with pytest.raises(BadRequest):
        select(cands)


def test_on_the_zoo_vitpose_falls_back_to_yolov8n_pose():
    zoo = load_zoo(Path(__file__).resolve().parents[2] / "zoo.yaml")
    cands = candidates_from(zoo.models, thermal={"pose_estimator": "HOT"}, residency={"pose_estimator": "HOT"},
                            healthy={})
    s = select(cands, capabilities=["pose"])
    assert s.selected.name == "pose_estimator" and s.warm_in_background == ["vitpose"]
    cands = candidates_from(zoo.models, thermal={}, residency={"vitpose": "HOT"}, healthy={})
    assert select(cands, capabilities=["pose"]).selected.name == "vitpose"


def test_on_the_zoo_hot_yolo26_beats_cold_face_detector_for_detect():
    """Issue 13: POST /select {"task": "detect"} returned face_detector (COLD) over yolo26 (HOT) when the
    residency snapshot was unknown (every model read as on disk): thermal order comes first now."""
    zoo = load_zoo(Path(__file__).resolve().parents[2] / "zoo.yaml")
    cands = candidates_from(zoo.models, thermal={"yolo26": "HOT"}, residency={}, healthy={})
    detect = sorted(c.name for c in cands if c.task == "detect")
    assert "face_detector" in detect and detect[0] < "yolo26"  # by name alone face_detector would come first
    s = select(cands, task="detect", capabilities=[])
    assert s.selected.name == "yolo26" and [c.name for c in s.ranked][0] == "yolo26"
    # a COLD model that is resident right now is as hot as a HOT one: then the fallback chain, then latency
    both = {"yolo26": "HOT", "face_detector": "HOT"}
    cands = candidates_from(zoo.models, thermal={"yolo26": "HOT"}, residency=both, healthy={},
                            latency_ms={"yolo26": 12.0, "face_detector": 30.0})
    assert select(cands, task="detect").selected.name == "yolo26"
    cands = candidates_from(zoo.models, thermal={"yolo26": "HOT"}, residency=both, healthy={},
                            latency_ms={"yolo26": 40.0, "face_detector": 3.0})
    assert select(cands, task="detect").selected.name == "face_detector"
    # the HOT one first in order but not resident yet: the ready one serves and the first warms (seed 001)
    cands = candidates_from(zoo.models, thermal={"yolo26": "HOT"}, residency={"face_detector": "HOT"}, healthy={},
                            latency_ms={"yolo26": 12.0, "face_detector": 30.0})
    s = select(cands, task="detect")
    assert s.selected.name == "face_detector" and s.warm_in_background == ["yolo26"]


def test_latency_orders_within_a_heat_class_unknown_last():
    fast = SelectionCandidate("fast", "t", frozenset(), "WARM", "WARM", latency_ms=5.0)
    slow = SelectionCandidate("a_slow", "t", frozenset(), "WARM", "WARM", latency_ms=50.0)
    unknown = SelectionCandidate("0_unknown", "t", frozenset(), "WARM", "WARM")
    hot = SelectionCandidate("z_hot", "t", frozenset(), "HOT", "HOT", latency_ms=500.0)
    assert [c.name for c in rank([unknown, slow, fast, hot])] == ["z_hot", "fast", "a_slow", "0_unknown"]
