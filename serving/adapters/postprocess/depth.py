"""Depth Anything V2 (relative) -> seed 003 depth schema {depth_map_base64, estimated_distance_m,
relative_depth, proximity_label}.

The relative model predicts inverse depth (disparity: larger = nearer) up to an unknown scale, so
distances are necessarily approximate: the disparity map is min-max normalised over the frame, turned
into a relative depth in [0, 1] (0 = nearest thing in view, 1 = farthest) and scaled by the camera's
assumed working range `max_distance_m` (default 10 m, a typical doorbell/driveway view; seed example:
relative 0.35 -> 3.5 m -> "close"). The region of interest is the bbox when one is given, else the
centre of the frame; its median is used so a few stray pixels do not move the estimate.
"""

from __future__ import annotations

import base64
import io
from typing import Any

DEFAULT_MAX_DISTANCE_M = 10.0
#: (upper bound in metres, label), checked in order; beyond the last bound -> "far"
PROXIMITY_BANDS: tuple[tuple[float, str], ...] = (
    (1.5, "very_close"),
    (4.0, "close"),
    (8.0, "medium"),
)
FAR = "far"


def proximity_label(distance_m: float) -> str:
    """very_close (< 1.5 m), close (< 4 m), medium (< 8 m), far."""
    for bound, label in PROXIMITY_BANDS:
        if distance_m < bound:
            return label
    return FAR


def relative_depth_map(disparity: Any) -> Any:
    """Disparity (H, W) -> relative depth in [0, 1], 0 = nearest. A flat map is all 0.5."""
    import numpy as np

    d = np.asarray(disparity, dtype=np.float32)
    lo, hi = float(np.nanmin(d)), float(np.nanmax(d))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.full(d.shape, 0.5, dtype=np.float32)
    return 1.0 - (d - lo) / (hi - lo)


def region_of_interest(shape: tuple[int, int], bbox: tuple[float, float, float, float] | None) -> tuple[slice, slice]:
    """Row/column slices of the bbox (clipped, at least one pixel), or the central third of the frame."""
    h, w = shape
    if bbox is None:
        return slice(h // 3, max(h // 3 + 1, 2 * h // 3)), slice(w // 3, max(w // 3 + 1, 2 * w // 3))
    x1, y1, x2, y2 = bbox
    c1, r1 = min(max(int(x1), 0), w - 1), min(max(int(y1), 0), h - 1)
    c2, r2 = max(min(int(round(x2)), w), c1 + 1), max(min(int(round(y2)), h), r1 + 1)
    return slice(r1, r2), slice(c1, c2)


def depth_png_base64(rel: Any) -> str:
    """8-bit grayscale PNG of a relative depth map (near = bright), base64."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(((1.0 - np.clip(rel, 0.0, 1.0)) * 255.0).round().astype(np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def depth_result(
    disparity: Any,
    bbox: tuple[float, float, float, float] | None = None,
    *,
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
    include_map: bool = True,
) -> dict[str, object]:
    """Seed schema from a disparity map at image resolution; bbox in the same pixel space."""
    import numpy as np

    rel = relative_depth_map(disparity)
    rows, cols = region_of_interest(rel.shape, bbox)
    r = float(np.median(rel[rows, cols]))
    distance = round(r * max_distance_m, 2)
    out: dict[str, object] = {
        "depth_map_base64": depth_png_base64(rel) if include_map else None,
        "estimated_distance_m": distance,
        "relative_depth": round(r, 4),
        "proximity_label": proximity_label(distance),
        # statistics of the whole relative depth map (0 = near, 1 = far)
        "min_depth": round(float(rel.min()), 4),
        "max_depth": round(float(rel.max()), 4),
        "mean_depth": round(float(rel.mean()), 4),
    }
    if bbox is not None:
        out["bbox"] = {"x1": bbox[0], "y1": bbox[1], "x2": bbox[2], "y2": bbox[3]}
    return out
