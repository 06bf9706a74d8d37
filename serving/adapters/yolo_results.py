"""Per-image extras of the yolo adapter's results: pose analysis, mask areas and outlines, the vehicle damage
summary and the threat assessment (seed 003 schemas), keyed by task and by capability."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from serving.adapters.postprocess import damage, pose, threat
from serving.errors import BadRequest
from serving.imaging import pixel_box

if TYPE_CHECKING:  # pragma: no cover
    from serving.adapters.yolo import YoloAdapter


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise BadRequest(f"timestamp {value!r} is not an ISO 8601 date-time") from None


def _add_pose(result: dict[str, Any], r: Any, adapter: YoloAdapter, options: Mapping[str, Any]) -> None:
    kps = r.keypoints.data.cpu().tolist() if r.keypoints is not None else []
    for det, points in zip(result["detections"], kps, strict=False):
        det.update(pose.analyze_pose(points))
    best = max(result["detections"], key=lambda d: d["confidence"], default=None)
    result["pose"] = {k: best[k] for k in ("keypoints", "posture", "alerts")} if best and "keypoints" in best else None


#: most points of a mask outline returned with `polygons=True` (longer outlines are subsampled evenly)
MAX_POLYGON_POINTS = 64


def _add_masks(result: dict[str, Any], r: Any, adapter: YoloAdapter, options: Mapping[str, Any]) -> None:
    areas = (r.masks.data > 0.5).flatten(1).sum(1).cpu().tolist() if r.masks is not None else []
    outlines = list(r.masks.xy) if r.masks is not None and options.get("polygons") else []
    for i, det in enumerate(result["detections"]):
        area = int(areas[i]) if i < len(areas) else 0
        det.update(has_mask=area > 0, mask_area=area)
        if options.get("polygons"):
            pts = outlines[i].tolist() if i < len(outlines) else []
            step = max(1, -(-len(pts) // MAX_POLYGON_POINTS))
            det["polygon"] = [[round(float(x), 1), round(float(y), 1)] for x, y in pts[::step]]


def _add_damage(result: dict[str, Any], adapter: YoloAdapter, options: Mapping[str, Any]) -> None:
    at = _parse_time(options.get("timestamp")) or adapter.clock()
    dets = [{**d, "damage_type": d["class"]} for d in result["detections"]]
    result.update(damage.summarize(dets, at))


def _add_threat(result: dict[str, Any], adapter: YoloAdapter, options: Mapping[str, Any]) -> None:
    result["threat"] = threat.assess(result["detections"])


#: task -> extra per-image fields from the raw ultralytics result
TASK_EXTRAS: dict[str, Callable[..., None]] = {"pose": _add_pose, "segment": _add_masks}
#: capability -> summary added to each image result (the seed's schema of that capability)
CAPABILITY_SUMMARIES: dict[str, Callable[..., None]] = {"vehicle_damage": _add_damage, "threat": _add_threat}


def to_image_pixels(result: dict[str, Any], item: Any) -> None:
    """A result computed on `item`'s bbox region, moved into the pixels of the whole image the client sent
    (boxes, keypoints, mask outlines; image_width/height become the image's), in place."""
    dx, dy, _, _ = pixel_box(item.bbox)
    result["image_width"], result["image_height"] = item.image.size
    for det in result["detections"]:
        b = det["bbox"]
        det["bbox"] = {"x1": b["x1"] + dx, "y1": b["y1"] + dy, "x2": b["x2"] + dx, "y2": b["y2"] + dy}
        for kp in det.get("keypoints") or []:  # shared with result["pose"], so moved once
            kp["x"], kp["y"] = kp["x"] + dx, kp["y"] + dy
        if det.get("polygon"):
            det["polygon"] = [[round(x + dx, 1), round(y + dy, 1)] for x, y in det["polygon"]]
