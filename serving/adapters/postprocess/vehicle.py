"""Vehicle segment classification (seed 003 VEHICLE_SEGMENT_CLASSES) -> {vehicle_type, display_name,
confidence, is_commercial}."""

from __future__ import annotations

from collections.abc import Mapping

#: label set of lxyuan/vit-base-patch16-224-vehicle-segment-classification (seed 003, index order)
VEHICLE_SEGMENT_CLASSES = [
    "articulated_truck", "background", "bicycle", "bus", "car",
    "motorcycle", "non_motorized_vehicle", "pedestrian",
    "pickup_truck", "single_unit_truck", "work_van",
]

#: classes driven for business: freight trucks, work vans and buses (a pickup is usually private)
COMMERCIAL_CLASSES = frozenset({"articulated_truck", "single_unit_truck", "work_van", "bus"})
#: classes that are not a motor vehicle at all
NON_VEHICLE_CLASSES = frozenset({"background", "pedestrian"})

_DISPLAY_OVERRIDES = {"non_motorized_vehicle": "non-motorized vehicle", "single_unit_truck": "single-unit truck"}


def display_name(vehicle_type: str) -> str:
    """Human-readable name: pickup_truck -> "pickup truck"."""
    return _DISPLAY_OVERRIDES.get(vehicle_type, vehicle_type.replace("_", " "))


def is_commercial(vehicle_type: str) -> bool:
    return vehicle_type in COMMERCIAL_CLASSES


def vehicle_result(probs: Mapping[str, float]) -> dict[str, object]:
    """Seed schema from {class: probability}; the class name is normalised to snake_case."""
    if not probs:
        return {"vehicle_type": "unknown", "display_name": "unknown", "confidence": 0.0, "is_commercial": False,
                "all_scores": {}}
    label = max(probs, key=lambda k: probs[k])
    vtype = label.strip().lower().replace(" ", "_").replace("-", "_")
    return {
        "vehicle_type": vtype,
        "display_name": display_name(vtype),
        "confidence": round(float(probs[label]), 4),
        "is_commercial": is_commercial(vtype),
        # the three best classes (what the reference client shows as alternatives)
        "all_scores": {k.strip().lower().replace(" ", "_").replace("-", "_"): round(float(v), 4)
                       for k, v in sorted(probs.items(), key=lambda kv: -kv[1])[:3]},
    }
