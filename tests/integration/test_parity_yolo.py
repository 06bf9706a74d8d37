"""Reference parity of the `yolo` family: every yolo model of zoo.yaml (detect: yolo26, yolo_world, threat,
license plate, face; pose: pose_estimator keypoints; segment: yolo26_seg and vehicle_damage masks) served over
real HTTP equals ultralytics' own `YOLO(path).predict(file)` on the same weights and image files.

The weights are test-local *calibrated* copies (tests/integration/parity_helpers.py `calibrate_yolo`): the random
fixtures give every box one confidence (1.56e-4), so ties would make any ordering or threshold agree. Both sides
load the same copy; the adapter runs the `.onnx` where zoo.yaml has one (its CPU format order), so the
reference loads that same `.onnx`. The reference is given `imgsz` = the size the checkpoint / export records
(320 for the fixtures), the size the adapter serves at (ultralytics' own default for an .onnx is 640, whatever
size it was exported at).
Masks are compared at the input resolution: the reference passes ultralytics' `retina_masks=True`.

Tolerances (same weights, same pixels): boxes and keypoints 0.01 px, confidences 1e-5, mask areas exact, mask
outlines 0.05 px (ours are rounded to 0.1 px). Both sides run with confidence 0.1 and max_det 50.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parity_helpers import Worst, calibrate_yolo, kserve_infer, local_zoo, write_images
from scipy.optimize import linear_sum_assignment
from svc_helpers import running_service

pytestmark = pytest.mark.slow

#: the detection service's own two first (its /detect and /segment serve the first model of their task)
YOLO_MODELS = ["yolo26", "yolo26_seg", "yolo_world", "vehicle_damage", "license_plate", "face_detector",
               "threat_detector", "pose_estimator"]
BOX_TOL, CONF_TOL = 0.01, 1e-5
CONF = 0.1
MAX_DET = 50  # both sides: keeps the mask work small; confidences are distinct, so the cut is the same
WORST = Worst()
note = WORST.note


@pytest.fixture(scope="module")
def env(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo-parity")
    files: dict[str, Path] = {}
    imgsz: dict[str, int] = {}
    for name in YOLO_MODELS:
        spec = zoo.models[name]
        src = Path(zoo.models_root) / spec.source["pt"]
        if not src.exists():
            pytest.skip(f"fixture {src} missing; run `zoo fixtures`")
        onnx = root / spec.source["onnx"] if "onnx" in spec.source else None
        imgsz[name] = calibrate_yolo(src, root / spec.source["pt"], export_onnx=onnx, seed=len(files))
        files[name] = onnx or root / spec.source["pt"]
    z = local_zoo(zoo, root, YOLO_MODELS, "detection")
    images = write_images(root / "images", "PNG")
    with running_service(z, "detection") as (client, app):
        yield {"client": client, "files": files, "imgsz": imgsz, "images": images, "zoo": z, "root": root}
    WORST.report("parity yolo")


_REF: dict[Path, Any] = {}


def reference(path: Path) -> Any:
    """ultralytics' own model object on that file (plain `YOLO`, not the adapter's restricted loader)."""
    if path not in _REF:
        from serving.adapters.yolo import import_ultralytics

        import_ultralytics()
        from ultralytics import YOLO

        _REF[path] = YOLO(str(path), task=None)
    return _REF[path]


def ref_predict(env: dict[str, Any], name: str, image: Path, **kw: Any) -> Any:
    task = env["zoo"].models[name].task
    (r,) = reference(env["files"][name]).predict(str(image), conf=kw.pop("conf", CONF), imgsz=env["imgsz"][name],
                                                 verbose=False,
                                                 retina_masks=task == "segment", **kw)  # fmt: skip
    assert len(r.boxes) <= kw.get("max_det", 300)
    return r


def compare(name: str, ours: list[dict[str, Any]], r: Any, *, keypoints: bool = False, masks: bool = False) -> int:
    """Our detections vs ultralytics' Results, matched one-to-one (Hungarian, on box distance, confidence and
    class: equal confidences may come in either order): same count, classes, boxes, confidences, and keypoints /
    mask areas when asked. Returns the count."""
    ref_boxes = r.boxes.xyxy.cpu().numpy()
    ref_conf = r.boxes.conf.cpu().numpy()
    ref_cls = r.boxes.cls.cpu().numpy().astype(int)
    assert len(ours) == len(ref_boxes), (name, len(ours), len(ref_boxes))
    if not len(ours):
        return 0
    ours_boxes = np.array([[d["bbox"][k] for k in ("x1", "y1", "x2", "y2")] for d in ours], dtype=np.float64)
    if "width" in ours[0]["bbox"]:  # the seed's {x, y, width, height} of /detect
        ours_boxes = np.array([[d["bbox"]["x"], d["bbox"]["y"], d["bbox"]["x"] + d["bbox"]["width"],
                                d["bbox"]["y"] + d["bbox"]["height"]] for d in ours])
    ours_conf = np.array([d["confidence"] for d in ours])
    ours_cls = [d.get("class_id", d["class"]) for d in ours]
    ref_keys = [int(k) if "class_id" in ours[0] else r.names[int(k)] for k in ref_cls]
    # one-to-one matching (boxes of equal confidence may come in either order): a class mismatch costs 1e9
    cost = np.abs(ours_boxes[:, None, :] - ref_boxes[None, :, :]).max(-1) + 1e3 * np.abs(
        ours_conf[:, None] - ref_conf[None, :]) + 1e9 * (np.array(ours_cls, dtype=object)[:, None] != np.array(
        ref_keys, dtype=object)[None, :])
    order_o, order_r = linear_sum_assignment(cost)
    assert all(ours_cls[i] == ref_keys[j] for i, j in zip(order_o, order_r, strict=True)), name
    box_diff = float(np.abs(ours_boxes[order_o] - ref_boxes[order_r]).max())
    conf_diff = float(np.abs(ours_conf[order_o] - ref_conf[order_r]).max())
    assert box_diff <= BOX_TOL and conf_diff <= CONF_TOL, (name, box_diff, conf_diff)
    note(name, box_px=box_diff, confidence=conf_diff)
    if keypoints:
        ref_kp = r.keypoints.data.cpu().numpy()[order_r]
        ours_kp = np.array([[[k["x"], k["y"], k["confidence"]] for k in ours[i]["keypoints"]] for i in order_o])
        kp_diff = float(np.abs(ours_kp - ref_kp)[..., :2].max())
        kc_diff = float(np.abs(ours_kp - ref_kp)[..., 2].max())
        assert kp_diff <= BOX_TOL and kc_diff <= CONF_TOL, (name, kp_diff, kc_diff)
        note(name, keypoint_px=kp_diff, keypoint_conf=kc_diff)
    if masks:
        ref_area = (r.masks.data > 0.5).flatten(1).sum(1).cpu().numpy()[order_r]
        assert r.masks.data.shape[1:] == r.orig_shape  # compared at the input resolution
        ours_area = np.array([ours[i]["mask_area"] for i in order_o])
        assert (ours_area == ref_area).all(), (name, ours_area, ref_area)
        assert ref_area.max() > 0
        note(name, mask_area_px=float(np.abs(ours_area - ref_area).max()))
    return len(ours)


def test_every_yolo_model_matches_ultralytics_predict_over_kserve(env):
    """All eight models through POST /v2/models/{name}/infer, the odd-sized and the portrait image, one request
    each (yolo26 sees all three sizes in the /detect test)."""
    client = env["client"]
    for name in YOLO_MODELS:
        task = env["zoo"].models[name].task
        varied = set()
        for image in env["images"][1:]:
            (ours,) = kserve_infer(client, name, [image.read_bytes()], confidence=CONF, max_det=MAX_DET,
                                   polygons=task == "segment")
            r = ref_predict(env, name, image, max_det=MAX_DET)
            compare(name, ours["detections"], r, keypoints=task == "pose", masks=task == "segment")
            varied |= {round(float(c), 4) for c in r.boxes.conf}
        assert len(varied) >= 3, f"{name}: the comparison is vacuous (confidences {sorted(varied)})"


def test_detect_route_matches_predict(env):
    """The seed route /detect (all classes) against the reference, image by image."""
    for image in env["images"]:
        body = {"image": base64.b64encode(image.read_bytes()).decode(), "confidence": CONF, "all_classes": True,
                "max_detections": 1000}
        resp = env["client"].post("/detect", json=body)
        assert resp.status_code == 200, resp.text
        compare("yolo26 /detect", resp.json()["detections"], ref_predict(env, "yolo26", image))


def test_segment_route_masks_and_outlines_match_predict(env):
    """/segment: boxes, mask areas at the input resolution and the outline (ultralytics' `masks.xy`,
    subsampled to at most 64 points)."""
    for image in env["images"]:
        body = {"image": base64.b64encode(image.read_bytes()).decode(), "confidence": 0.2, "all_classes": True}
        resp = env["client"].post("/segment", json=body)
        assert resp.status_code == 200, resp.text
        dets = resp.json()["detections"]
        r = ref_predict(env, "yolo26_seg", image, conf=0.2)
        n = compare("yolo26_seg /segment", dets, r, masks=True)
        order = np.argsort(-r.boxes.conf.cpu().numpy(), kind="stable")
        for d, i in zip(dets, order[:n], strict=True):
            pts = r.masks.xy[i]
            step = max(1, -(-len(pts) // 64))
            assert len(d["polygon"]) == len(pts[::step])
            if len(pts):
                note("yolo26_seg /segment", polygon_px=float(np.abs(np.array(d["polygon"]) - pts[::step]).max()))
                assert np.abs(np.array(d["polygon"]) - pts[::step]).max() <= 0.05 + BOX_TOL  # rounded to 0.1


def test_mixed_size_batch_equals_one_image_at_a_time(env):
    """/detect/batch with three sizes in one request: each image's result is ultralytics' single-image result
    (a batch must not change the letterbox an image gets)."""
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in env["images"]], "confidence": CONF,
            "all_classes": True, "max_detections": 1000}
    resp = env["client"].post("/detect/batch", json=body)
    assert resp.status_code == 200, resp.text
    for res, image in zip(resp.json()["results"], env["images"], strict=True):
        compare("yolo26 /detect/batch", res["detections"], ref_predict(env, "yolo26", image))
    for name in ("pose_estimator", "vehicle_damage"):  # an .onnx model, through KServe, three sizes in one tensor
        task = env["zoo"].models[name].task
        ours = kserve_infer(env["client"], name, [p.read_bytes() for p in env["images"]], confidence=CONF,
                            max_det=MAX_DET)
        for res, image in zip(ours, env["images"], strict=True):
            compare(f"{name} batch", res["detections"], ref_predict(env, name, image, max_det=MAX_DET),
                    keypoints=task == "pose", masks=task == "segment")


def test_jpeg_decoded_like_ultralytics(env, tmp_path):
    """JPEG files: our decoder (Pillow) and ultralytics' (OpenCV) must give the model the same pixels."""
    images = write_images(tmp_path, "JPEG", seed=10)
    for image in images:
        (ours,) = kserve_infer(env["client"], "yolo26", [image.read_bytes()], confidence=CONF, max_det=MAX_DET)
        compare("yolo26 jpeg", ours["detections"], ref_predict(env, "yolo26", image, max_det=MAX_DET))
