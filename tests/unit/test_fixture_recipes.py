"""Trained fixtures: recipe hashes key the cache, pulled weights are never replaced, builds are deterministic."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from serving.fixtures import build_fixtures, is_built, marker_path, read_marker, recipe_hash, scenes
from serving.fixtures.quality import iou, score_scene


def _zoo_with_root(zoo, root, *names):
    z = zoo.model_copy(deep=True)
    z.models_root = str(root)
    z.models = {n: z.models[n] for n in names}
    return z


def test_recipe_hash_follows_the_recipe(zoo):
    age = zoo.models["demographics_age"]
    assert recipe_hash("demographics_age", age) == recipe_hash("demographics_age", age.model_copy(deep=True))
    other = age.model_copy(deep=True)
    other.options = {**other.options, "labels": "gender"}
    assert recipe_hash("demographics_age", other) != recipe_hash("demographics_age", age)
    plate = zoo.models["license_plate"]
    renamed = plate.model_copy(deep=True)
    renamed.options = {**renamed.options, "class_names": ["plate"]}
    assert recipe_hash("license_plate", renamed) != recipe_hash("license_plate", plate)
    # random-weight families have no recipe, so existence alone decides
    assert recipe_hash("depth_estimator", zoo.models["depth_estimator"]) is None
    assert recipe_hash("yolo_world", zoo.models["yolo_world"]) is None


@pytest.mark.slow
def test_built_once_then_skipped_and_rebuilt_when_the_recipe_changes(zoo, tmp_path):
    z = _zoo_with_root(zoo, tmp_path, "demographics_gender")
    assert build_fixtures(z) == {"demographics_gender": "built"}
    marker = read_marker(tmp_path, "demographics_gender")
    assert marker["recipe"] == recipe_hash("demographics_gender", z.models["demographics_gender"])
    assert marker["metrics"]["accuracy"] >= 0.9
    weights = tmp_path / "vit-gender-classifier" / "model.safetensors"
    first = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert build_fixtures(z) == {"demographics_gender": "skipped"}

    # a marker of another recipe (the recipe changed since the build): rebuilt, to the same weights
    marker_path(tmp_path, "demographics_gender").write_text(json.dumps({"recipe": "old"}))
    assert not is_built(z.models["demographics_gender"], tmp_path, "demographics_gender")
    assert build_fixtures(z) == {"demographics_gender": "built"}
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == first  # deterministic

    # real weights from `zoo pull` are never replaced by a fixture, whatever the marker says
    marker_path(tmp_path, "demographics_gender").unlink()
    (tmp_path / "vit-gender-classifier" / ".pull.json").write_text(json.dumps({"repo": "x", "sha": "y"}))
    assert is_built(z.models["demographics_gender"], tmp_path, "demographics_gender")
    assert build_fixtures(z) == {"demographics_gender": "skipped"}


def test_scenes_are_a_function_of_the_seed():
    a = scenes.random_scene(random.Random(7), ["person", "car"], (160, 120), distractors=["gun"])
    b = scenes.random_scene(random.Random(7), ["person", "car"], (160, 120), distractors=["gun"])
    assert a.image.tobytes() == b.image.tobytes()
    assert [(o.cls, o.box, o.labelled) for o in a.objects] == [(o.cls, o.box, o.labelled) for o in b.objects]
    for o in a.objects:
        x1, y1, x2, y2 = o.box
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
        assert a.image.getpixel((x1, y1)) == scenes.CLASS_COLOURS[o.cls]  # the ring is the class colour
        assert o.labelled == (o.cls in ("person", "car"))
        if o.cls == "person":
            assert len(o.keypoints) == 17 and y2 - y1 > x2 - x1


def test_scoring_counts_hits_and_false_detections():
    objs = [scenes.Obj("car", (0, 0, 10, 10)), scenes.Obj("gun", (20, 20, 30, 30), labelled=False)]
    best, false = score_scene(objs, [("car", (0, 0, 10, 11)), ("person", (20, 20, 30, 30))])
    assert best == [pytest.approx(iou((0, 0, 10, 10), (0, 0, 10, 11)))] and false == 1
    assert score_scene(objs, [("person", (0, 0, 10, 10))]) == ([0.0], 1)


def test_a_region_result_is_moved_into_the_pictures_pixels():
    """Boxes, keypoints (shared with the pose summary) and outlines found in a bbox region are given in the
    pixels of the whole picture."""
    from PIL import Image

    from serving.adapters.base import ImageItem
    from serving.adapters.yolo import to_image_pixels
    from serving.imaging import BBox

    kps = [{"name": "nose", "x": 5.0, "y": 6.0, "confidence": 0.9}]
    det = {"bbox": {"x1": 1.0, "y1": 2.0, "x2": 11.0, "y2": 12.0}, "keypoints": kps, "polygon": [[1.0, 2.0]]}
    result = {"detections": [det], "image_width": 50, "image_height": 40, "pose": {"keypoints": kps}}
    item = ImageItem(Image.new("RGB", (200, 100)), BBox(x1=30.7, y1=20.2, x2=80.0, y2=60.0))
    to_image_pixels(result, item)
    assert (result["image_width"], result["image_height"]) == (200, 100)
    assert result["detections"][0]["bbox"] == {"x1": 31.0, "y1": 22.0, "x2": 41.0, "y2": 32.0}  # crop origin (30, 20)
    assert result["pose"]["keypoints"][0]["x"] == 35.0 and result["pose"]["keypoints"][0]["y"] == 26.0
    assert result["detections"][0]["polygon"] == [[31.0, 22.0]]


def test_wide_and_tall_training_pictures_show_objects_as_a_camera_does(zoo):
    """Half the detector's training pictures are wide or tall (long:short up to 3.4, both ways round), and
    their objects are sized by the shorter side, never stretched along the longer one."""
    from serving.fixtures.train_yolo import picture_size, recipe, training_scene

    rec = recipe("yolo26", zoo.models["yolo26"])
    rng = random.Random(3)
    sizes = [picture_size(rng, 96, rec["wide_share"]) for _ in range(400)]
    wide = [s for s in sizes if max(s) > rec["camera_aspect"] * min(s)]
    assert 150 < len(wide) < 250 and {s[0] > s[1] for s in wide} == {True, False}
    assert max(max(s) / min(s) for s in wide) > 3.0
    for i in range(20):
        scene = training_scene(random.Random(i), rec, (96, 30) if i % 2 else (30, 96))
        assert scene.objects
        for o in scene.objects:
            x1, y1, x2, y2 = o.box
            assert max(x2 - x1, y2 - y1) <= 0.9 * 30 + 1, o  # sized by the short side (30)


def test_mask_iou_of_a_box_mask():
    from serving.fixtures.quality import box_mask, mask_iou

    a, b = box_mask((0, 0, 10, 10), (20, 20)), box_mask((0, 0, 10, 5), (20, 20))
    assert a.sum() == 100 and mask_iou(a, b) == 0.5 and mask_iou(a, a) == 1.0
