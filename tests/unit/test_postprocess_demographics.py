"""Age brackets / raw age and gender rules (seed 003 AgeClassificationResult, GenderClassificationResult)."""

from __future__ import annotations

import pytest

from serving.adapters.postprocess.demographics import (
    AGE_BRACKETS,
    AGE_MODEL_LABELS,
    age_result,
    bracket_of_age,
    gender_result,
    normalize_gender,
    parse_age_label,
)


@pytest.mark.parametrize(
    ("label", "span"),
    [("0-2", (0, 3)), ("3-9", (3, 10)), ("10-19", (10, 20)), ("more than 70", (70, 90)), ("70+", (70, 90)),
     ("25", (25, 26)), ("under 5", (0, 5))],
)
def test_parse_age_label(label, span):
    assert parse_age_label(label) == span


def test_parse_age_label_without_number():
    with pytest.raises(ValueError):
        parse_age_label("adult")


def test_seed_brackets_in_order():
    assert list(AGE_BRACKETS) == ["0-12", "13-17", "18-24", "25-35", "36-50", "51-65", "65+"]


@pytest.mark.parametrize(
    ("age", "bracket"),
    [(0, "0-12"), (12.9, "0-12"), (13, "13-17"), (17.5, "13-17"), (24, "18-24"), (28.5, "25-35"), (35.9, "25-35"),
     (36, "36-50"), (65, "51-65"), (66, "65+"), (101, "65+")],
)
def test_bracket_of_age(age, bracket):
    assert bracket_of_age(age) == bracket


def test_all_mass_on_one_model_bin_spreads_over_seed_brackets():
    # "30-39" covers ages 30..39: 6 of its 10 years fall in 25-35, 4 in 36-50
    probs = dict.fromkeys(AGE_MODEL_LABELS, 0.0) | {"30-39": 1.0}
    assert age_result(probs) == {"age_range": "25-35", "confidence": 0.6, "raw_prediction": 35.0}


def test_child_and_senior():
    assert age_result({"0-2": 1.0}) == {"age_range": "0-12", "confidence": 1.0, "raw_prediction": 1.5}
    assert age_result({"more than 70": 1.0}) == {"age_range": "65+", "confidence": 1.0, "raw_prediction": 80.0}


def test_bimodal_distribution_keeps_bracket_mass_and_expected_age():
    # 0-12 gets all of "3-9" (0.5); "60-69" splits 0.3 to 51-65 and 0.2 to 65+
    out = age_result({"3-9": 0.5, "60-69": 0.5})
    assert out["age_range"] == "0-12" and out["confidence"] == 0.5
    assert out["raw_prediction"] == pytest.approx(0.5 * 6.5 + 0.5 * 65.0, abs=0.05)


def test_empty_age_distribution():
    assert age_result({})["age_range"] == "unknown"


@pytest.mark.parametrize(("label", "g"), [("female", "female"), ("Male", "male"), ("woman", "female"), ("man", "male"),
                                          ("LABEL_0", "unknown")])
def test_normalize_gender(label, g):
    assert normalize_gender(label) == g


def test_gender_confident_and_uncertain():
    assert gender_result({"female": 0.8, "male": 0.2}) == {"gender": "female", "confidence": 0.8}
    assert gender_result({"female": 0.45, "male": 0.55}) == {"gender": "unknown", "confidence": 0.55}
    assert gender_result({"female": 0.45, "male": 0.55}, threshold=0.5) == {"gender": "male", "confidence": 0.55}
