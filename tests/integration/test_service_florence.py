"""Florence-2 service over loopback with the florence2 fixture (random weights: the generated text is
noise, so result mapping is checked with the processor's real output shapes in pure tests below)."""

from __future__ import annotations

import pytest
from svc_helpers import assert_error, image_bytes, jpeg_b64, running_service

from serving.services.florence import labelled_boxes, ocr_regions
from serving.services.schemas import DenseCaptionResponse, ExtractResponse, FlorenceDetectResponse, OcrResponse

pytestmark = pytest.mark.slow
FAST = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def client(built_models):
    zoo = built_models("florence2")
    with running_service(zoo, "florence", admin_token=None) as (c, _):
        yield c


def ok(resp, model):
    assert resp.status_code == 200, resp.text
    return model.model_validate(resp.json())


def test_extract_caption_and_od(client):
    cap = ok(client.post("/extract", json={"image": jpeg_b64(), "prompt": "<CAPTION>", **FAST}), ExtractResponse)
    assert cap.prompt == "<CAPTION>" and isinstance(cap.result, str) and cap.model == "florence2"
    od = ok(client.post("/extract", json={"image": jpeg_b64(), "prompt": "od", **FAST}), ExtractResponse)
    assert od.prompt == "<OD>" and set(od.parsed) == {"bboxes", "labels"} and isinstance(od.result, str)
    grounding = client.post("/extract", json={"image": jpeg_b64(), "prompt": "<CAPTION_TO_PHRASE_GROUNDING>",
                                              "text_input": "a car", **FAST})
    assert grounding.status_code == 200


def test_ocr_detect_dense_caption(client):
    o = ok(client.post("/ocr", json={"image": jpeg_b64(), "with_regions": True, **FAST}), OcrResponse)
    assert isinstance(o.text, str) and isinstance(o.regions, list)
    raw = ok(client.post("/ocr?max_new_tokens=6", content=image_bytes(), headers={"content-type": "image/jpeg"}),
             OcrResponse)
    assert raw.regions is None
    d = ok(client.post("/detect", json={"image": jpeg_b64(), **FAST}), FlorenceDetectResponse)
    assert d.task == "<OD>"
    ov = ok(client.post("/detect", json={"image": jpeg_b64(), "text_input": "person", **FAST}), FlorenceDetectResponse)
    assert ov.task == "<OPEN_VOCABULARY_DETECTION>"
    ok(client.post("/dense-caption", json={"image": jpeg_b64(), **FAST}), DenseCaptionResponse)


def test_bad_prompt_and_missing_text_then_good(client):
    assert_error(client.post("/extract", json={"image": jpeg_b64(), "prompt": "<NOT_A_TASK>", **FAST}),
                 400, "bad_request")
    assert_error(client.post("/extract", json={"image": jpeg_b64(), "prompt": "<CAPTION_TO_PHRASE_GROUNDING>", **FAST}),
                 400, "bad_request")
    assert_error(client.post("/ocr", json={"image": jpeg_b64(), "max_new_tokens": 5000}), 422, "validation_error")
    assert_error(client.post("/dense-caption", content=b"x", headers={"content-type": "text/csv"}),
                 415, "unsupported_media_type")
    assert client.post("/extract", json={"image": jpeg_b64(), **FAST}).status_code == 200


def test_result_mapping_of_processor_shapes():
    od = {"bboxes": [[1.0, 2.0, 30.0, 40.0], [5, 6, 7, 8]], "labels": ["car", "person"]}
    assert labelled_boxes(od) == [("car", {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}),
                                  ("person", {"x1": 5.0, "y1": 6.0, "x2": 7.0, "y2": 8.0})]
    ov = {"bboxes": [[0, 0, 10, 10]], "bboxes_labels": ["dog"], "polygons": [], "polygons_labels": []}
    assert labelled_boxes(ov) == [("dog", {"x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0})]
    assert labelled_boxes("a caption") == []
    ocr = {"quad_boxes": [[10, 20, 50, 20, 50, 40, 10, 40]], "labels": ["</s>ABC 123"]}
    quad = [10.0, 20.0, 50.0, 20.0, 50.0, 40.0, 10.0, 40.0]
    assert ocr_regions(ocr) == [{"text": "ABC 123", "bbox": quad, "quad_box": quad,
                                 "box": {"x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 40.0}}]
