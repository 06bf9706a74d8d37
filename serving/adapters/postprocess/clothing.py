"""Clothing: zero-shot over the seed's SECURITY_CLOTHING_PROMPTS (FashionSigLIP / CLIP) and SegFormer
clothes segmentation.

Zero-shot: each prompt carries what it means (type, style, optional color, suspicious, service
uniform). The image-text logits over the prompt set are turned into a distribution (softmax: the prompts
are alternatives), the best prompt gives type/style/confidence; the color comes from the prompt when it
names one ("dark hoodie") and otherwise from a second zero-shot over COLOR_PROMPTS. `is_suspicious` is
true when the best prompt is suspicious or the suspicious prompts together hold at least
`suspicious_threshold` of the mass (a person half "ski mask", half "dark hoodie" is suspicious even if
"casual clothing" is the single best prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ClothingPrompt:
    """One zero-shot prompt and what a match means."""

    text: str
    clothing_type: str
    style: str  # suspicious | service | casual | formal | athletic | work
    color: str | None = None
    suspicious: bool = False
    service_uniform: bool = False


#: the seed's list, completed with the other common sights at a front door
SECURITY_CLOTHING: tuple[ClothingPrompt, ...] = (
    ClothingPrompt("person wearing dark hoodie", "hoodie", "suspicious", color="dark", suspicious=True),
    ClothingPrompt("person wearing face mask", "face_mask", "suspicious", suspicious=True),
    ClothingPrompt("person wearing ski mask or balaclava", "balaclava", "suspicious", suspicious=True),
    ClothingPrompt("person with hood up hiding their face", "hoodie", "suspicious", suspicious=True),
    ClothingPrompt("person wearing all black clothing and gloves", "all_black", "suspicious", color="black",
                   suspicious=True),
    ClothingPrompt("delivery uniform", "delivery_uniform", "service", service_uniform=True),
    ClothingPrompt("Amazon delivery vest", "amazon_vest", "service", service_uniform=True),
    ClothingPrompt("FedEx uniform", "fedex_uniform", "service", service_uniform=True),
    ClothingPrompt("UPS uniform", "ups_uniform", "service", service_uniform=True),
    ClothingPrompt("USPS postal worker uniform", "usps_uniform", "service", service_uniform=True),
    ClothingPrompt("DHL courier uniform", "dhl_uniform", "service", service_uniform=True),
    ClothingPrompt("utility worker in high visibility vest", "hi_vis_vest", "work", service_uniform=True),
    ClothingPrompt("police or security guard uniform", "security_uniform", "service", service_uniform=True),
    ClothingPrompt("casual clothing", "casual", "casual"),
    ClothingPrompt("business attire or suit", "suit", "formal"),
    ClothingPrompt("athletic wear or running clothes", "athletic", "athletic"),
    ClothingPrompt("person wearing a jacket or coat", "jacket", "casual"),
    ClothingPrompt("person wearing a raincoat", "raincoat", "casual"),
)
SECURITY_CLOTHING_PROMPTS: list[str] = [p.text for p in SECURITY_CLOTHING]
_BY_TEXT = {p.text: p for p in SECURITY_CLOTHING}

COLORS = ("black", "white", "gray", "red", "blue", "green", "yellow", "brown", "orange", "purple", "pink", "beige")
COLOR_PROMPTS: list[str] = [f"person wearing {c} clothing" for c in COLORS]
DEFAULT_SUSPICIOUS_THRESHOLD = 0.5


def prompt_info(text: str) -> ClothingPrompt:
    """Meaning of a prompt; unknown prompts (a custom set) count as plain casual clothing."""
    return _BY_TEXT.get(text, ClothingPrompt(text, text.replace(" ", "_"), "casual"))


def color_of(color_probs: Mapping[str, float]) -> str:
    """Best color from {color prompt or color name: probability}; "unknown" when empty."""
    if not color_probs:
        return "unknown"
    best = max(color_probs, key=lambda k: color_probs[k])
    for c in COLORS:
        if best == c or best == f"person wearing {c} clothing":
            return c
    return best


def clothing_result(
    prompt_probs: Mapping[str, float],
    color_probs: Mapping[str, float] | None = None,
    suspicious_threshold: float = DEFAULT_SUSPICIOUS_THRESHOLD,
) -> dict[str, object]:
    """Seed schema {clothing_type, color, style, confidence, is_suspicious, is_service_uniform}."""
    if not prompt_probs:
        raise ValueError("no prompt probabilities")
    top_text = max(prompt_probs, key=lambda k: prompt_probs[k])
    top = prompt_info(top_text)
    suspicious_mass = sum(p for t, p in prompt_probs.items() if prompt_info(t).suspicious)
    is_suspicious = top.suspicious or suspicious_mass >= suspicious_threshold
    color = top.color or color_of(color_probs or {})
    style = "suspicious" if is_suspicious else top.style
    return {
        "clothing_type": top.clothing_type,
        "color": color,
        "style": style,
        "top_category": top_text,
        "description": describe(color, top.clothing_type, style),
        "confidence": round(float(prompt_probs[top_text]), 4),
        "is_suspicious": is_suspicious,
        "is_service_uniform": top.service_uniform and not is_suspicious,
    }


def describe(color: str | None, clothing_type: str, style: str) -> str:
    """A short human-readable description, e.g. "dark hoodie (suspicious)"."""
    words = " ".join(w for w in (color if color and color != "unknown" else None, clothing_type.replace("_", " ")) if w)
    return f"{words} ({style})" if style and style not in ("unknown", "") else words


# --- SegFormer clothes segmentation (mattmdjaga/segformer_b2_clothes) ------------------------------
SEGFORMER_CLOTHES_LABELS = [
    "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
    "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
]
#: classes that are garments or accessories (the rest is background or the body)
GARMENT_CLASSES = frozenset({"Hat", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
                             "Left-shoe", "Right-shoe", "Bag", "Scarf"})
DEFAULT_MIN_FRACTION = 0.01


def segmentation_result(pixel_counts: Mapping[str, int],
                        min_fraction: float = DEFAULT_MIN_FRACTION) -> dict[str, object]:
    """{class_fractions, items, dominant_item, person_fraction} from {class: pixel count}.

    Fractions are over all pixels; `items` are the garments covering at least `min_fraction` of the
    person (non-background pixels), largest first; left/right shoes count as one "Shoes" item."""
    total = sum(int(c) for c in pixel_counts.values())
    if total <= 0:
        raise ValueError("empty segmentation")
    fractions = {k: round(int(v) / total, 4) for k, v in pixel_counts.items()}
    person = total - int(pixel_counts.get("Background", 0))
    garment_px: dict[str, int] = {}
    for cls, n in pixel_counts.items():
        if cls in GARMENT_CLASSES and n > 0:
            name = "Shoes" if cls in ("Left-shoe", "Right-shoe") else cls
            garment_px[name] = garment_px.get(name, 0) + int(n)
    items = [
        name for name, n in sorted(garment_px.items(), key=lambda kv: -kv[1])
        if person > 0 and n / person >= min_fraction
    ]
    return {
        "class_fractions": fractions,
        "items": items,
        "dominant_item": items[0] if items else None,
        "person_fraction": round(person / total, 4),
    }
