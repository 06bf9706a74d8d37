"""Age and gender from classifier probabilities (seed 003 AgeClassificationResult /
GenderClassificationResult).

Age models predict their own bins (nateraw/vit-age-classifier: "0-2", "3-9", ..., "more than 70"); the
seed wants its brackets 0-12, 13-17, 18-24, 25-35, 36-50, 51-65, 65+ plus `raw_prediction` in years.
Each model bin's probability is spread uniformly over the ages it covers and summed per seed bracket;
the bracket with the most mass wins, its mass is the confidence, and the expected age is the raw
prediction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: seed brackets: label -> [lo, hi) in years (hi of the last is the assumed upper age)
AGE_BRACKETS: dict[str, tuple[float, float]] = {
    "0-12": (0.0, 13.0),
    "13-17": (13.0, 18.0),
    "18-24": (18.0, 25.0),
    "25-35": (25.0, 36.0),
    "36-50": (36.0, 51.0),
    "51-65": (51.0, 66.0),
    "65+": (66.0, 90.0),
}
MAX_AGE = 90.0

#: label set of nateraw/vit-age-classifier (the fixture uses it too)
AGE_MODEL_LABELS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
#: label set of rizvandwiki/gender-classification
GENDER_MODEL_LABELS = ["female", "male"]
GENDERS = ("male", "female", "unknown")
DEFAULT_GENDER_THRESHOLD = 0.6


def parse_age_label(label: str) -> tuple[float, float]:
    """Years covered by a model label as [lo, hi): "3-9" -> (3, 10), "more than 70" / "70+" -> (70, 90),
    "25" -> (25, 26). Raises ValueError for a label without a number."""
    text = label.strip().lower()
    nums = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]
    if not nums:
        raise ValueError(f"age label {label!r} has no number")
    if len(nums) >= 2:
        return nums[0], nums[1] + 1.0
    n = nums[0]
    if "+" in text or "more" in text or "over" in text or "above" in text or ">" in text:
        return n, max(MAX_AGE, n + 1.0)
    if "less" in text or "under" in text or "below" in text or "<" in text:
        return 0.0, n
    return n, n + 1.0


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def bracket_of_age(age: float) -> str:
    """Seed bracket containing an age in years."""
    for name, (lo, hi) in AGE_BRACKETS.items():
        if lo <= age < hi:
            return name
    return "65+" if age >= 66 else "0-12"


def age_result(probs: Mapping[str, float]) -> dict[str, object]:
    """{age_range, confidence, raw_prediction} from {model label: probability}."""
    mass = dict.fromkeys(AGE_BRACKETS, 0.0)
    expected = 0.0
    total = 0.0
    for label, p in probs.items():
        lo, hi = parse_age_label(label)
        width = hi - lo
        expected += p * (lo + hi) / 2.0
        total += p
        for name, span in AGE_BRACKETS.items():
            mass[name] += p * _overlap((lo, hi), span) / width
    if total <= 0:
        return {"age_range": "unknown", "confidence": 0.0, "raw_prediction": None}
    best = max(mass, key=lambda k: mass[k])
    return {
        "age_range": best,
        "confidence": round(mass[best] / total, 4),
        "raw_prediction": round(expected / total, 1),
    }


def normalize_gender(label: str) -> str:
    """male / female / unknown from a model label (female, woman, Male, LABEL_1 ...)."""
    t = label.strip().lower()
    if t in ("female", "woman", "women", "f", "girl") or t.startswith("fem"):
        return "female"
    if t in ("male", "man", "men", "m", "boy"):
        return "male"
    return "unknown"


def gender_result(probs: Mapping[str, float], threshold: float = DEFAULT_GENDER_THRESHOLD) -> dict[str, object]:
    """{gender, confidence}: the most probable of male/female, "unknown" when its probability is below
    `threshold` (the confidence is still reported)."""
    scores = {"male": 0.0, "female": 0.0}
    for label, p in probs.items():
        g = normalize_gender(label)
        if g in scores:
            scores[g] += p
    best = max(scores, key=lambda k: scores[k])
    conf = scores[best]
    return {"gender": best if conf >= threshold else "unknown", "confidence": round(conf, 4)}
