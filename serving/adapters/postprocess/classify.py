"""Scene-level classifiers of the enrichment service: pet (ResNet-18 on ImageNet-1k), weather and violence.

Pet: microsoft/resnet-18 predicts the 1000 ImageNet classes; domestic dogs are indices 151-268 and
domestic cats 281-285. The probabilities of each group are summed, so "dog" wins over "cat" even when
the mass is spread over many breeds; the breed is the best class inside the winning group. A model
fine-tuned on plain "cat"/"dog" labels is handled by name.
"""

from __future__ import annotations

from collections.abc import Mapping

DOG_INDICES = range(151, 269)
CAT_INDICES = range(281, 286)
PET_TYPES = ("cat", "dog", "other")

#: prithivMLmods/Weather-Image-Classification label set (the fixture uses it)
WEATHER_MODEL_LABELS = ["cloudy/overcast", "foggy/hazy", "rain/storm", "snow/frosty", "sun/clear"]
#: normalised weather conditions, matched by keyword in the model's label
WEATHER_KEYWORDS: dict[str, tuple[str, ...]] = {
    "rain": ("rain", "storm", "drizzle", "thunder"),
    "snow": ("snow", "frost", "ice", "sleet", "hail"),
    "fog": ("fog", "haz", "mist", "smog"),
    "cloudy": ("cloud", "overcast"),
    "clear": ("sun", "clear", "shine", "sunrise"),
}
#: conditions that reduce camera visibility (context for the risk analysis)
LOW_VISIBILITY = frozenset({"rain", "snow", "fog"})

#: jaranohaal/vit-base-violence-detection label set (the fixture uses it)
VIOLENCE_MODEL_LABELS = ["non-violent", "violent"]
DEFAULT_VIOLENCE_THRESHOLD = 0.5


def pet_group(index: int | None, label: str) -> str:
    """cat / dog / other for one class, by ImageNet index when the model has 1000 classes, else by name."""
    if index is not None:
        if index in DOG_INDICES:
            return "dog"
        if index in CAT_INDICES:
            return "cat"
        return "other"
    t = label.lower()
    if "dog" in t or "puppy" in t:
        return "dog"
    if "cat" in t or "kitten" in t:
        return "cat"
    return "other"


def pet_result(probs: Mapping[str, float], imagenet: bool | None = None) -> dict[str, object]:
    """{pet_type, breed, confidence, is_household_pet} from {label: probability} in class-index order."""
    labels = list(probs)
    if imagenet is None:
        imagenet = len(labels) == 1000
    groups = {"cat": 0.0, "dog": 0.0, "other": 0.0}
    best_in: dict[str, tuple[str, float]] = {}
    for i, label in enumerate(labels):
        g = pet_group(i if imagenet else None, label)
        p = float(probs[label])
        groups[g] += p
        if g not in best_in or p > best_in[g][1]:
            best_in[g] = (label, p)
    pet = max(("dog", "cat"), key=lambda k: groups[k])
    if groups[pet] < groups["other"]:
        pet = "other"
    breed = best_in.get(pet, ("unknown", 0.0))[0]
    return {
        "pet_type": pet,
        "breed": breed.split(",")[0].strip() if pet != "other" else "unknown",  # always a string
        "confidence": round(groups[pet], 4),
        "is_household_pet": pet in ("cat", "dog"),
    }


def normalize_weather(label: str) -> str:
    t = label.lower()
    for condition, keys in WEATHER_KEYWORDS.items():
        if any(k in t for k in keys):
            return condition
    return "unknown"


def weather_result(probs: Mapping[str, float]) -> dict[str, object]:
    """{weather, label, confidence, low_visibility}: probabilities summed per normalised condition."""
    by_condition: dict[str, float] = {}
    best_label: dict[str, tuple[str, float]] = {}
    for label, p in probs.items():
        c = normalize_weather(label)
        by_condition[c] = by_condition.get(c, 0.0) + float(p)
        if c not in best_label or p > best_label[c][1]:
            best_label[c] = (label, float(p))
    if not by_condition:
        return {"weather": "unknown", "label": None, "confidence": 0.0, "low_visibility": False}
    cond = max(by_condition, key=lambda k: by_condition[k])
    return {
        "weather": cond,
        "label": best_label[cond][0],
        "confidence": round(by_condition[cond], 4),
        "low_visibility": cond in LOW_VISIBILITY,
    }


def is_violent_label(label: str) -> bool:
    t = label.lower().replace("_", "-").replace(" ", "-")
    if "non" in t or t.startswith("no-") or "normal" in t or "safe" in t or t == "label-0":
        return False
    return "viol" in t or "fight" in t or t == "label-1"


def violence_result(probs: Mapping[str, float], threshold: float = DEFAULT_VIOLENCE_THRESHOLD) -> dict[str, object]:
    """{is_violent, confidence, violence_score}: violence_score is the summed probability of violent labels."""
    score = sum(float(p) for label, p in probs.items() if is_violent_label(label))
    violent = score >= threshold
    return {
        "is_violent": violent,
        "confidence": round(score if violent else 1.0 - score, 4),
        "violence_score": round(score, 4),
    }
