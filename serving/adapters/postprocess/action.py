"""Action recognition (X-CLIP) -> seed 003 {action, confidence, action_scores}.

The video-text logits over the label set are normalised with a softmax (the actions are alternatives),
sorted from most to least likely and rounded; `action_scores` keeps the `top_k` best so the LLM context
stays short. `is_suspicious` flags the actions a security analyst cares about.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: the seed's actions first, then the other behaviours worth telling apart at a door or driveway
SECURITY_ACTIONS: list[str] = [
    "walking", "running", "fighting", "falling", "loitering", "standing", "sitting", "crouching",
    "climbing", "breaking in", "vandalizing", "carrying a package", "delivering a package",
    "looking into a window", "riding a bicycle",
]
SUSPICIOUS_ACTIONS = frozenset({"fighting", "falling", "loitering", "climbing", "breaking in", "vandalizing",
                                "looking into a window", "crouching"})
DEFAULT_TOP_K = 5
#: risk weight (0..1) of an action for the security assessment; unknown labels get DEFAULT_RISK_WEIGHT
RISK_WEIGHTS: dict[str, float] = {
    "breaking in": 1.0, "vandalizing": 0.9, "fighting": 0.9, "climbing": 0.8, "looking into a window": 0.7,
    "loitering": 0.6, "crouching": 0.6, "falling": 0.6, "running": 0.4, "walking": 0.1, "standing": 0.1,
    "sitting": 0.1, "carrying a package": 0.2, "delivering a package": 0.1, "riding a bicycle": 0.1,
}
DEFAULT_RISK_WEIGHT = 0.3


def risk_weight(action: str) -> float:
    """The risk weight of an action label (the "a person " prompt prefix is ignored)."""
    key = action.strip().lower().removeprefix("a person ").strip()
    return RISK_WEIGHTS.get(key, DEFAULT_RISK_WEIGHT)


def prompt_for(action: str) -> str:
    """Text fed to X-CLIP for an action label."""
    return f"a person {action}"


def softmax(logits: Sequence[float]) -> list[float]:
    if not logits:
        return []
    m = max(logits)
    exps = [math.exp(x - m) for x in logits]
    s = sum(exps)
    return [e / s for e in exps]


def normalise_scores(scores: Mapping[str, float], top_k: int | None = DEFAULT_TOP_K,
                     digits: int = 4) -> dict[str, float]:
    """Probabilities -> rescaled to sum to 1, sorted descending, the best `top_k`, rounded."""
    total = sum(max(0.0, float(v)) for v in scores.values())
    if total <= 0:
        return {}
    items = sorted(((k, max(0.0, float(v)) / total) for k, v in scores.items()), key=lambda kv: -kv[1])
    if top_k is not None:
        items = items[:top_k]
    return {k: round(v, digits) for k, v in items}


def action_result(labels: Sequence[str], logits: Sequence[float],
                  top_k: int | None = DEFAULT_TOP_K) -> dict[str, object]:
    """{action, confidence, action_scores, is_suspicious} from one clip's logits over `labels`."""
    if len(labels) != len(logits) or not labels:
        raise ValueError("labels and logits must be non-empty and of the same length")
    probs = dict(zip(labels, softmax([float(x) for x in logits]), strict=True))
    best = max(probs, key=lambda k: probs[k])
    scores = normalise_scores(probs, top_k=top_k)
    return {
        "action": best,
        "confidence": round(probs[best], 4),
        "action_scores": scores,
        "all_scores": dict(scores),
        "is_suspicious": best in SUSPICIOUS_ACTIONS,
        "risk_weight": risk_weight(best),
    }
