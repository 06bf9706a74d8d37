"""VEHICLE_SEGMENT_CLASSES -> {vehicle_type, display_name, confidence, is_commercial} (seed 003)."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.vehicle import VEHICLE_SEGMENT_CLASSES, display_name, is_commercial, vehicle_result


def one_hot(label, p=0.92):
    rest = (1 - p) / (len(VEHICLE_SEGMENT_CLASSES) - 1)
    return {c: (p if c == label else rest) for c in VEHICLE_SEGMENT_CLASSES}


def test_seed_example():
    assert vehicle_result(one_hot("pickup_truck")) == {
        "vehicle_type": "pickup_truck", "display_name": "pickup truck", "confidence": 0.92, "is_commercial": False,
        "all_scores": {"pickup_truck": 0.92, "articulated_truck": 0.008, "background": 0.008},
    }


@pytest.mark.parametrize(
    ("cls", "commercial"),
    [("articulated_truck", True), ("single_unit_truck", True), ("work_van", True), ("bus", True), ("car", False),
     ("pickup_truck", False), ("motorcycle", False), ("bicycle", False), ("background", False)],
)
def test_is_commercial(cls, commercial):
    assert is_commercial(cls) is commercial
    assert vehicle_result(one_hot(cls))["is_commercial"] is commercial


@pytest.mark.parametrize(
    ("cls", "name"),
    [("work_van", "work van"), ("non_motorized_vehicle", "non-motorized vehicle"),
     ("single_unit_truck", "single-unit truck"), ("car", "car")],
)
def test_display_name(cls, name):
    assert display_name(cls) == name


def test_label_normalisation_and_empty():
    assert vehicle_result({"Work Van": 0.7, "car": 0.3})["vehicle_type"] == "work_van"
    assert vehicle_result({})["vehicle_type"] == "unknown"


def test_eleven_seed_classes():
    assert len(VEHICLE_SEGMENT_CLASSES) == 11 and VEHICLE_SEGMENT_CLASSES == sorted(VEHICLE_SEGMENT_CLASSES)
