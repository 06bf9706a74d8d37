"""Reference parity of the transformers vision families: the six image classifiers (`hf_image_classifier`),
Depth Anything (`depth_anything`), SegFormer (`segformer`) and ViTPose+ (`vitpose`), each against the
library's own inference on the same folder in models/ and the same image files:
  classifiers: `pipeline("image-classification")` (all labels); depth: `pipeline("depth-estimation")`;
  segformer and ViTPose: the processor + model + the processor's post-processing, as their model cards show.
Our side: every model once through real HTTP (KServe v2 infer of one enrichment service that hosts them all),
and the adapter directly for full-precision values and for a person box inside a frame (ViTPose).

Non-vacuity: the fixtures have random weights, so before trusting an agreement each test checks that the model
is sensitive to its input: the same image with red and blue swapped must move the output by at least ten times the
tolerance (a channel-order or normalisation fault would show). Tolerances (float32 on one CPU, the same ops):
probabilities 1e-5 and log-probabilities 1e-4 (trained fixtures saturate; sensitivity measured in log space;
HTTP: 4-decimal rounding, 5e-5), depth 1e-4 relative to the map's range, keypoints 1e-3 px and
scores 1e-5, segmentation labels exact.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parity_helpers import Worst, kserve_infer, loaded_hf_adapters, local_zoo, max_abs, write_images
from PIL import Image
from svc_helpers import running_service

from serving.adapters.base import ImageItem
from serving.adapters.postprocess import depth as depth_rules
from serving.imaging import BBox, ImageLimits, decode_image

pytestmark = pytest.mark.slow

CLASSIFIERS = ["vehicle_classifier", "demographics_age", "demographics_gender", "weather_classifier",
               "violence_classifier", "pet_classifier"]
MODELS = [*CLASSIFIERS, "depth_estimator", "segformer_clothes", "vitpose"]
WORST = Worst()
note = WORST.note


@pytest.fixture(scope="module")
def env(zoo, tmp_path_factory):
    images = write_images(tmp_path_factory.mktemp("hf-parity"), "PNG")
    adapters = loaded_hf_adapters(zoo, MODELS)
    z = local_zoo(zoo, Path(zoo.models_root), MODELS, "enrichment")
    with running_service(z, "enrichment") as (client, _):
        yield {"client": client, "adapters": adapters, "images": images, "zoo": zoo}
    WORST.report()


def folder(env: dict[str, Any], name: str) -> str:
    return str(Path(env["zoo"].models_root) / env["zoo"].models[name].source["hf"])


def ours_image(path: Path) -> Image.Image:
    """The picture as our services decode it (bytes -> upright RGB)."""
    return decode_image(path.read_bytes(), ImageLimits())


def _log(p: float) -> float:
    return float(np.log(max(p, 1e-30)))


def swapped(img: Image.Image) -> Image.Image:
    r, g, b = img.split()
    return Image.merge("RGB", (b, g, r))


# --------------------------------------------------------------------------------------------- classifiers
def test_image_classifiers_match_the_pipeline(env):
    from transformers import pipeline

    for name in CLASSIFIERS:
        adapter = env["adapters"][name]
        ref = pipeline("image-classification", model=folder(env, name), device="cpu")
        for image in env["images"]:
            expected = {d["label"]: d["score"] for d in ref(str(image), top_k=len(adapter.labels))}
            (probs,) = adapter.probabilities([ours_image(image)])
            assert set(probs) == set(expected)
            diff = max(abs(probs[k] - expected[k]) for k in expected)
            # in log space too: a trained fixture's softmax saturates (p ~ 1 or ~ 0), where probabilities alone
            # would only compare the argmax; the small ones still carry the logits
            log_diff = max(abs(_log(probs[k]) - _log(expected[k])) for k in expected)
            (moved,) = adapter.probabilities([swapped(ours_image(image))])
            sensitivity = max(abs(_log(moved[k]) - _log(probs[k])) for k in probs)
            assert diff <= 1e-5 and log_diff <= 1e-4 and sensitivity > 10 * 1e-4, (name, diff, log_diff, sensitivity)
            note(name, probability=diff)
            WORST[name]["sensitivity_min"] = min(sensitivity, WORST[name].get("sensitivity_min", sensitivity))
            (http,) = kserve_infer(env["client"], name, [image.read_bytes()], top_k=1000)
            http_diff = max(abs(t["score"] - expected[t["label"]]) for t in http["top_k"])
            assert len(http["top_k"]) == len(expected) and http_diff <= 5e-5 + 1e-6, (name, http_diff)
            note(name, probability_http=http_diff)


# --------------------------------------------------------------------------------------------- depth
def test_depth_matches_the_pipeline(env):
    from transformers import pipeline

    adapter = env["adapters"]["depth_estimator"]
    ref = pipeline("depth-estimation", model=folder(env, "depth_estimator"), device="cpu")
    for image in env["images"]:
        expected = ref(str(image))["predicted_depth"].squeeze().numpy()
        (ours,) = adapter.disparity([ours_image(image)])
        span = float(expected.max() - expected.min())
        diff = max_abs(ours, expected) / span
        (moved,) = adapter.disparity([swapped(ours_image(image))])
        assert ours.shape == expected.shape == (ours_image(image).height, ours_image(image).width)
        assert diff <= 1e-4 and max_abs(moved, ours) / span > 10 * 1e-4, (diff, max_abs(moved, ours) / span)
        note("depth_estimator", relative_depth=diff)
        (http,) = kserve_infer(env["client"], "depth_estimator", [image.read_bytes()])
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(http["depth_map_base64"]))), dtype=np.int16)
        # the reference disparity through our documented map rule (min-max, near = bright)
        want = np.round((1.0 - depth_rules.relative_depth_map(expected)) * 255.0)
        grey = int(np.abs(png - want).max())
        assert grey <= 1, grey
        note("depth_estimator", map_grey_levels_http=grey)


# --------------------------------------------------------------------------------------------- segformer
def test_segformer_matches_processor_and_model(env):
    import torch
    from transformers import AutoImageProcessor, SegformerForSemanticSegmentation

    adapter = env["adapters"]["segformer_clothes"]
    processor = AutoImageProcessor.from_pretrained(folder(env, "segformer_clothes"))
    model = SegformerForSemanticSegmentation.from_pretrained(folder(env, "segformer_clothes")).eval()
    for image in env["images"]:
        pil = Image.open(image).convert("RGB")
        with torch.inference_mode():
            out = model(**processor(images=pil, return_tensors="pt"))
        expected = processor.post_process_semantic_segmentation(out, target_sizes=[(pil.height, pil.width)])[0]
        (ours,) = adapter.label_maps([ours_image(image)])
        (moved,) = adapter.label_maps([swapped(ours_image(image))])
        mismatch = float((ours != expected).float().mean())
        assert mismatch == 0.0, mismatch
        assert float((moved != ours).float().mean()) > 0.01 and len(torch.unique(expected)) >= 2
        note("segformer_clothes", pixels_differing=mismatch)
        (http,) = kserve_infer(env["client"], "segformer_clothes", [image.read_bytes()])
        counts = torch.bincount(expected.flatten().long(), minlength=len(adapter.labels)).tolist()
        want = {label: c / expected.numel() for label, c in zip(adapter.labels, counts, strict=False)}
        diff = max(abs(http["class_fractions"][k] - want[k]) for k in want)
        assert diff <= 5e-5 + 1e-9, diff
        note("segformer_clothes", class_fraction_http=diff)


# --------------------------------------------------------------------------------------------- ViTPose
def _ref_pose(env: dict[str, Any], pil: Image.Image, box: list[float]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoImageProcessor, VitPoseForPoseEstimation

    if "vitpose_ref" not in env:
        env["vitpose_ref"] = (AutoImageProcessor.from_pretrained(folder(env, "vitpose")),
                              VitPoseForPoseEstimation.from_pretrained(folder(env, "vitpose")).eval())
    processor, model = env["vitpose_ref"]
    inputs = processor(pil, boxes=[[box]], return_tensors="pt")
    kwargs = {}
    if getattr(model.config.backbone_config, "num_experts", 1) > 1:
        kwargs["dataset_index"] = torch.tensor([0])  # 0 = COCO, as the model card does
    with torch.inference_mode():
        out = model(**inputs, **kwargs)
    (person,) = processor.post_process_pose_estimation(out, boxes=[[box]])[0]
    return person["keypoints"].numpy(), person["scores"].numpy()


def test_vitpose_matches_processor_and_model(env):
    adapter = env["adapters"]["vitpose"]
    for image in env["images"]:
        pil = ours_image(image)
        w, h = pil.size
        for box in ([0.0, 0.0, float(w), float(h)], [w * 0.2, h * 0.1, w * 0.5, h * 0.7]):  # COCO x, y, w, h
            kp, scores = _ref_pose(env, Image.open(image).convert("RGB"), box)
            bbox = BBox(x1=box[0], y1=box[1], x2=box[0] + box[2], y2=box[1] + box[3])
            (ours,) = adapter.predict([ImageItem(pil, bbox)])
            got = np.array([[k["x"], k["y"]] for k in ours["keypoints"]])
            got_scores = np.array([k["confidence"] for k in ours["keypoints"]])
            (moved,) = adapter.predict([ImageItem(swapped(pil), bbox)])
            moved_scores = np.array([k["confidence"] for k in moved["keypoints"]])
            assert max_abs(got, kp) <= 1e-3 and max_abs(got_scores, scores) <= 1e-5
            assert max_abs(moved_scores, got_scores) > 10 * 1e-5
            note("vitpose", keypoint_px=max_abs(got, kp), keypoint_score=max_abs(got_scores, scores))
        (http,) = kserve_infer(env["client"], "vitpose", [image.read_bytes()])
        kp, scores = _ref_pose(env, Image.open(image).convert("RGB"), [0.0, 0.0, float(w), float(h)])
        got = np.array([[k["x"], k["y"], k["confidence"]] for k in http["keypoints"]])
        assert max_abs(got[:, :2], kp) <= 1e-3 and max_abs(got[:, 2], scores) <= 1e-5
        note("vitpose", keypoint_px_http=max_abs(got[:, :2], kp))


# --------------------------------------------------------------------------------------------- mixed sizes
def test_mixed_size_batches_equal_the_reference_per_image(env):
    """One KServe request with the three sizes: every image's result is the reference's single-image result
    (Depth Anything keeps the aspect ratio, so three sizes cannot share one tensor: it failed before)."""
    from transformers import pipeline

    data = [p.read_bytes() for p in env["images"]]
    depth = pipeline("depth-estimation", model=folder(env, "depth_estimator"), device="cpu")
    for http, image in zip(kserve_infer(env["client"], "depth_estimator", data), env["images"], strict=True):
        expected = depth(str(image))["predicted_depth"].squeeze().numpy()
        want = np.round((1.0 - depth_rules.relative_depth_map(expected)) * 255.0)
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(http["depth_map_base64"]))), dtype=np.int16)
        assert png.shape == want.shape and int(np.abs(png - want).max()) <= 1
        note("depth_estimator", map_grey_levels_http_batch=float(np.abs(png - want).max()))
    name = "vehicle_classifier"
    classify = pipeline("image-classification", model=folder(env, name), device="cpu")
    labels = env["adapters"][name].labels
    for http, image in zip(kserve_infer(env["client"], name, data, top_k=1000), env["images"], strict=True):
        expected = {d["label"]: d["score"] for d in classify(str(image), top_k=len(labels))}
        diff = max(abs(t["score"] - expected[t["label"]]) for t in http["top_k"])
        assert diff <= 5e-5 + 1e-6
        note(name, probability_http_batch=diff)
