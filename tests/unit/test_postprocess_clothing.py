"""SECURITY_CLOTHING_PROMPTS -> seed clothing object; SegFormer clothes pixel counts -> items."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.clothing import (
    COLOR_PROMPTS,
    SECURITY_CLOTHING_PROMPTS,
    SEGFORMER_CLOTHES_LABELS,
    clothing_result,
    color_of,
    segmentation_result,
)

SEED_PROMPTS = ["person wearing dark hoodie", "person wearing face mask", "person wearing ski mask or balaclava",
                "delivery uniform", "Amazon delivery vest", "FedEx uniform", "UPS uniform",
                "USPS postal worker uniform", "casual clothing", "business attire or suit"]


def probs(**top):
    """A distribution over the security prompts with the given prompt -> probability, rest uniform."""
    named = {k.replace("_", " "): v for k, v in top.items()}
    rest = (1 - sum(named.values())) / (len(SECURITY_CLOTHING_PROMPTS) - len(named))
    return {p: named.get(p, rest) for p in SECURITY_CLOTHING_PROMPTS}


def test_seed_prompts_are_all_there():
    assert set(SEED_PROMPTS) <= set(SECURITY_CLOTHING_PROMPTS)


def test_dark_hoodie_is_the_seed_example():
    rest = {p: 0.15 / 17 for p in SECURITY_CLOTHING_PROMPTS[1:]}
    out = clothing_result({**probs(), "person wearing dark hoodie": 0.85, **rest})
    assert out == {"clothing_type": "hoodie", "color": "dark", "style": "suspicious", "confidence": 0.85,
                   "is_suspicious": True, "is_service_uniform": False,
                   "top_category": "person wearing dark hoodie", "description": "dark hoodie (suspicious)"}


def test_ups_uniform_takes_color_from_color_prompts():
    p = dict.fromkeys(SECURITY_CLOTHING_PROMPTS, 0.02) | {"UPS uniform": 0.66}
    colors = dict.fromkeys(COLOR_PROMPTS, 0.05) | {"person wearing brown clothing": 0.45}
    assert clothing_result(p, colors) == {"clothing_type": "ups_uniform", "color": "brown", "style": "service",
                                          "confidence": 0.66, "is_suspicious": False, "is_service_uniform": True,
                                          "top_category": "UPS uniform", "description": "brown ups uniform (service)"}


def test_face_coverings_together_make_casual_suspicious():
    p = dict.fromkeys(SECURITY_CLOTHING_PROMPTS, 0.0) | {
        "casual clothing": 0.40, "person wearing ski mask or balaclava": 0.30, "person wearing face mask": 0.25,
        "UPS uniform": 0.05}
    out = clothing_result(p, {"person wearing black clothing": 1.0})
    assert out["clothing_type"] == "casual" and out["color"] == "black"
    assert out["is_suspicious"] is True and out["style"] == "suspicious" and out["is_service_uniform"] is False
    assert clothing_result(p, {}, suspicious_threshold=0.6)["is_suspicious"] is False


def test_uniform_is_not_service_when_suspicious_mass_dominates():
    p = dict.fromkeys(SECURITY_CLOTHING_PROMPTS, 0.0) | {"FedEx uniform": 0.35, "person wearing face mask": 0.33,
                                                         "person wearing dark hoodie": 0.32}
    out = clothing_result(p)
    assert out["clothing_type"] == "fedex_uniform" and out["is_suspicious"] and not out["is_service_uniform"]
    assert out["color"] == "unknown"


def test_color_of_accepts_names_and_prompts():
    assert color_of({"red": 0.7, "blue": 0.3}) == "red"
    assert color_of({"person wearing gray clothing": 0.9}) == "gray"
    assert color_of({}) == "unknown"


def test_empty_prompt_probabilities_raise():
    with pytest.raises(ValueError):
        clothing_result({})


def test_segmentation_items_and_fractions():
    counts = dict.fromkeys(SEGFORMER_CLOTHES_LABELS, 0) | {
        "Background": 50, "Upper-clothes": 20, "Pants": 15, "Left-shoe": 3, "Right-shoe": 2, "Face": 5, "Hair": 5}
    out = segmentation_result(counts)
    assert out["items"] == ["Upper-clothes", "Pants", "Shoes"]
    assert out["dominant_item"] == "Upper-clothes"
    assert out["person_fraction"] == 0.5
    assert out["class_fractions"]["Pants"] == 0.15 and sum(out["class_fractions"].values()) == pytest.approx(1.0)
    assert segmentation_result(counts, min_fraction=0.15)["items"] == ["Upper-clothes", "Pants"]


def test_segmentation_background_only_and_empty():
    assert segmentation_result({"Background": 10})["items"] == []
    assert segmentation_result({"Background": 10})["dominant_item"] is None
    with pytest.raises(ValueError):
        segmentation_result({"Background": 0})


def test_eighteen_segformer_classes():
    assert len(SEGFORMER_CLOTHES_LABELS) == 18 and SEGFORMER_CLOTHES_LABELS[0] == "Background"
