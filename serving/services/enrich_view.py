"""The reference enrichment client's view of an EnrichmentResult (CONTRACTS.md "the unified POST /enrich").

`client_view(result)` returns the keys that client reads, computed from the seed's keys (which stay as
they are): `models_loaded` / `models_used` (models that answered), `demographics` (age + gender),
`threat` {threats, has_threat, max_severity}, `reid_embedding` (the person embedding), and aliases inside
the seed objects (`pose.pose_class`, `clothing.categories`, `vehicle.type`, `action.top_action`). Applied
by the enrichment services' /enrich and again by the gateway after merging its fan-out (so the keys
describe the whole answer). A key whose model did not run is null (`threat` is always present).
"""

from __future__ import annotations

from typing import Any

SEVERITY_ORDER = ("none", "low", "medium", "high", "critical")


def _first(per_detection: Any) -> dict[str, Any] | None:
    if isinstance(per_detection, dict) and per_detection:
        value = next(iter(per_detection.values()))
        return value if isinstance(value, dict) else None
    return None


def _threat(t: Any) -> dict[str, Any]:
    if not isinstance(t, dict) or t.get("threat_type") in (None, "none"):
        return {"threats": [], "has_threat": False, "max_severity": "none"}
    item = {"threat_type": t.get("threat_type"), "confidence": t.get("confidence"), "severity": t.get("severity"),
            "bbox": t.get("bbox")}
    return {"threats": [item], "has_threat": True, "max_severity": str(t.get("severity") or "low")}


def _demographics(age: dict[str, Any] | None, gender: dict[str, Any] | None) -> dict[str, Any] | None:
    if age is None and gender is None:
        return None
    return {"age_range": (age or {}).get("age_range"), "age_confidence": (age or {}).get("confidence"),
            "gender": (gender or {}).get("gender"), "gender_confidence": (gender or {}).get("confidence")}


def _aliased(obj: Any, aliases: dict[str, Any]) -> Any:
    if not isinstance(obj, dict):
        return obj
    return {**obj, **{k: v for k, v in aliases.items() if k not in obj}}


def client_view(result: dict[str, Any]) -> dict[str, Any]:
    """The keys of the module docstring, from a seed EnrichmentResult."""
    models = result.get("models") or {}
    ran = [m for m, st in models.items() if isinstance(st, dict) and st.get("status") == "ok"]
    reid = _first(result.get("person_embeddings"))
    out: dict[str, Any] = {
        "models_loaded": ran,
        "models_used": ran,
        "demographics": _demographics(_first(result.get("age_classifications")),
                                      _first(result.get("gender_classifications"))),
        "threat": _threat(result.get("threat_detection")),
        "reid_embedding": (reid or {}).get("embedding"),
    }
    pose = result.get("pose")
    if isinstance(pose, dict):
        kps = [k.get("confidence", 0.0) for k in pose.get("keypoints") or [] if isinstance(k, dict)]
        out["pose"] = _aliased(pose, {"pose_class": pose.get("posture"), "is_suspicious": bool(pose.get("alerts")),
                                      "confidence": round(sum(kps) / len(kps), 4) if kps else 0.0})
    clothing = result.get("clothing")
    if isinstance(clothing, dict):
        cats = [c for c in (clothing.get("top_category"), clothing.get("clothing_type")) if c]
        out["clothing"] = _aliased(clothing, {"categories": list(dict.fromkeys(cats))})
    vehicle = result.get("vehicle")
    if isinstance(vehicle, dict):
        out["vehicle"] = _aliased(vehicle, {"type": vehicle.get("vehicle_type"), "make": None, "model": None,
                                            "color": None})
    action = result.get("action")
    if isinstance(action, dict):
        out["action"] = _aliased(action, {"top_action": action.get("action")})
    return out
