"""`florence2`: native Florence-2 fixture runs every seed prompt through generate and the processor's
post-processing; output shapes per task are the processor's."""

from __future__ import annotations

import pytest
from _hf_support import check_lifecycle, image, load_adapter

from serving.adapters.base import PromptItem
from serving.adapters.florence2 import SEED_TASKS
from serving.errors import BadRequest

SHAPES = {
    "<CAPTION>": str, "<DETAILED_CAPTION>": str, "<OCR>": str,
    "<OD>": {"bboxes", "labels"}, "<DENSE_REGION_CAPTION>": {"bboxes", "labels"},
    "<OCR_WITH_REGION>": {"quad_boxes", "labels"},
}


@pytest.fixture(scope="module")
def florence(built_models):
    return load_adapter(built_models("florence2"), "florence2")


def check_shape(task, result):
    want = SHAPES[task]
    if want is str:
        assert isinstance(result, str)
        return
    assert set(result) >= want and len(result["labels"]) == len(result[sorted(want - {"labels"})[0]])
    for box in result.get("bboxes", []):
        assert len(box) == 4
    for quad in result.get("quad_boxes", []):
        assert len(quad) == 8


def test_every_seed_prompt(florence):
    assert set(SEED_TASKS) <= set(florence.tasks)
    items = [PromptItem(image(), task=t) for t in SEED_TASKS]
    out = florence.predict(items, max_new_tokens=12, num_beams=1)
    assert [r["task"] for r in out] == list(SEED_TASKS)
    for r in out:
        check_shape(r["task"], r["result"])
        assert r["image_size"] == [72, 96] and isinstance(r["text"], str)


def test_post_processing_of_generated_text_is_the_processors(florence):
    od = florence.parse("<OD>", "</s><s>car<loc_54><loc_375><loc_906><loc_707>door<loc_710><loc_276><loc_908>"
                                "<loc_537></s>", (1000, 1000))
    assert od == {"bboxes": [[54, 375, 906, 707], [710, 276, 908, 537]], "labels": ["car", "door"]}
    ocr = florence.parse("<OCR_WITH_REGION>", "</s><s>ABC 123<loc_100><loc_100><loc_300><loc_100><loc_300><loc_200>"
                         "<loc_100><loc_200></s>", (500, 500))
    assert ocr["labels"] == ["ABC 123"] and ocr["quad_boxes"] == [[50, 50, 150, 50, 150, 100, 50, 100]]
    assert florence.parse("<CAPTION>", "</s><s>A person at a door.</s>", (10, 10)) == "A person at a door."


def test_bad_tasks(florence):
    with pytest.raises(BadRequest):
        florence.predict([image()], task="<DANCE>")
    with pytest.raises(BadRequest):
        florence.predict([image()], task="<CAPTION_TO_PHRASE_GROUNDING>")
    with pytest.raises(BadRequest):
        florence.predict([image()], max_new_tokens=0)


def test_lifecycle(florence):
    check_lifecycle(florence, lambda: florence.predict([image()], task="<OD>", max_new_tokens=8, num_beams=2))
