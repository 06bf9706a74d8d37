"""Pet (ImageNet ResNet-18), weather and violence rules."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.classify import (
    VIOLENCE_MODEL_LABELS,
    WEATHER_MODEL_LABELS,
    is_violent_label,
    normalize_weather,
    pet_result,
    violence_result,
    weather_result,
)


def imagenet(at):
    """1000 ImageNet-ordered labels with probability 0 except {index: (name, p)}."""
    labels = [f"class_{i}" for i in range(1000)]
    for idx, (name, _) in at.items():
        labels[idx] = name
    return {label: (at[i][1] if i in at else 0.0) for i, label in enumerate(labels)}


def test_dog_mass_spread_over_breeds_beats_single_cat_class():
    # 0.3 on one cat class vs 0.2 + 0.2 on two dog breeds: dogs win as a group
    out = pet_result(imagenet({281: ("tabby, tabby cat", 0.3), 207: ("golden retriever", 0.2),
                               208: ("Labrador retriever", 0.2)}))
    assert out == {"pet_type": "dog", "breed": "golden retriever", "confidence": 0.4, "is_household_pet": True}


def test_cat_and_other():
    assert pet_result(imagenet({283: ("Persian cat", 0.9)}))["pet_type"] == "cat"
    other = pet_result(imagenet({10: ("brambling", 0.9), 285: ("Egyptian cat", 0.05)}))
    assert other == {"pet_type": "other", "breed": "unknown", "confidence": 0.9, "is_household_pet": False}


def test_pet_by_name_for_small_label_sets():
    assert pet_result({"cat": 0.3, "dog": 0.7})["pet_type"] == "dog"
    assert pet_result({"kitten": 0.6, "puppy": 0.4})["pet_type"] == "cat"


@pytest.mark.parametrize(
    ("label", "cond"),
    [("rain/storm", "rain"), ("snow/frosty", "snow"), ("foggy/hazy", "fog"), ("cloudy/overcast", "cloudy"),
     ("sun/clear", "clear"), ("sunrise", "clear"), ("lightning", "unknown")],
)
def test_normalize_weather(label, cond):
    assert normalize_weather(label) == cond


def test_weather_result():
    probs = dict(zip(WEATHER_MODEL_LABELS, [0.1, 0.1, 0.6, 0.1, 0.1], strict=True))
    assert weather_result(probs) == {"weather": "rain", "label": "rain/storm", "confidence": 0.6,
                                     "low_visibility": True}
    assert weather_result({"sun/clear": 0.9, "rain/storm": 0.1})["low_visibility"] is False


@pytest.mark.parametrize(("label", "violent"), [("violent", True), ("Violence", True), ("non-violent", False),
                                                ("NonViolence", False), ("non_violence", False), ("fight", True)])
def test_is_violent_label(label, violent):
    assert is_violent_label(label) is violent


def test_violence_result():
    assert violence_result(dict(zip(VIOLENCE_MODEL_LABELS, [0.2, 0.8], strict=True))) == {
        "is_violent": True, "confidence": 0.8, "violence_score": 0.8}
    assert violence_result(dict(zip(VIOLENCE_MODEL_LABELS, [0.7, 0.3], strict=True))) == {
        "is_violent": False, "confidence": 0.7, "violence_score": 0.3}
    low = dict(zip(VIOLENCE_MODEL_LABELS, [0.7, 0.3], strict=True))
    assert violence_result(low, threshold=0.25)["is_violent"] is True
