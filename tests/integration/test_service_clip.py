"""CLIP service over loopback with the clip_vit_l fixture: every endpoint against the response schemas,
the numbers checked for meaning (unit norm, cosine consistency, softmax), bad inputs then a good request."""

from __future__ import annotations

import math

import pytest
from svc_helpers import SeedStatus, assert_error, b64, image_bytes, jpeg_b64, running_service

from serving.services.schemas import (
    AnomalyResponse,
    BatchSimilarityResponse,
    ClassifyResponse,
    EmbedResponse,
    SimilarityResponse,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(built_models):
    zoo = built_models("clip_vit_l")
    with running_service(zoo, "clip", admin_token=None) as (c, _):
        yield c


def ok(resp, model):
    assert resp.status_code == 200, resp.text
    return model.model_validate(resp.json())


def test_embed_image_and_text(client):
    e = ok(client.post("/embed", json={"image": jpeg_b64()}), EmbedResponse)
    assert e.model == "clip_vit_l" and e.embedding_dimension == len(e.embedding) > 0
    assert math.isclose(math.sqrt(sum(x * x for x in e.embedding)), 1.0, rel_tol=1e-4)
    again = ok(client.post("/embed", content=image_bytes(), headers={"content-type": "image/jpeg"}), EmbedResponse)
    assert again.embedding == pytest.approx(e.embedding, abs=1e-5)  # raw bytes = the same image
    t = ok(client.post("/embed", json={"text": "a person at the door"}), EmbedResponse)
    assert t.embedding_dimension == e.embedding_dimension


def test_similarity_agrees_with_embeddings(client):
    img = jpeg_b64()
    s = ok(client.post("/similarity", json={"image": img, "text": "a parked car"}), SimilarityResponse)
    ie = client.post("/embed", json={"image": img}).json()["embedding"]
    te = client.post("/embed", json={"text": "a parked car"}).json()["embedding"]
    assert s.similarity == pytest.approx(sum(a * b for a, b in zip(ie, te, strict=True)), abs=1e-3)
    texts = ["a parked car", "a dog", "an empty street"]
    b = ok(client.post("/batch-similarity", json={"images": [img, jpeg_b64(color=(0, 0, 0))], "texts": texts}),
           BatchSimilarityResponse)
    assert b.count == 2 and set(b.results[0].similarities) == set(texts)
    assert b.results[0].similarities["a parked car"] == pytest.approx(s.similarity, abs=1e-3)
    assert b.results[0].best_score == max(b.results[0].similarities.values())
    one = ok(client.post("/batch-similarity", json={"image": img, "texts": texts}), BatchSimilarityResponse)
    assert one.count == 1


def test_classify_is_a_distribution_over_labels(client):
    labels = ["person", "car", "dog"]
    c = ok(client.post("/classify", json={"image": jpeg_b64(), "labels": labels}), ClassifyResponse)
    assert set(c.scores) == set(labels) and c.label in labels
    assert sum(c.scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert c.confidence == max(c.scores.values())


def test_anomaly_score_against_own_baseline_is_zero(client):
    img = jpeg_b64()
    base = client.post("/embed", json={"image": img}).json()["embedding"]
    a = ok(client.post("/anomaly-score", json={"image": img, "baseline_embedding": base}), AnomalyResponse)
    assert a.anomaly_score == pytest.approx(0.0, abs=1e-3) and a.similarity == pytest.approx(1.0, abs=1e-3)
    assert a.is_anomaly is False
    flipped = [-x for x in base]
    a2 = ok(client.post("/anomaly-score", json={"image": img, "baseline_embedding": flipped, "threshold": 0.5}),
            AnomalyResponse)
    assert a2.anomaly_score == 1.0 and a2.is_anomaly is True


@pytest.mark.parametrize("case", ["both", "neither", "dim", "labels_dup", "no_labels", "bad_image", "images_and_image"])
def test_bad_input_then_good(client, case):
    img = jpeg_b64()
    if case == "both":
        assert_error(client.post("/embed", json={"image": img, "text": "x"}), 400, "bad_request")
    elif case == "neither":
        assert_error(client.post("/embed", json={}), 400, "bad_request")
    elif case == "dim":
        assert_error(client.post("/anomaly-score", json={"image": img, "baseline_embedding": [1.0, 2.0]}),
                     400, "bad_request")
    elif case == "labels_dup":
        assert_error(client.post("/classify", json={"image": img, "labels": ["a", "a"]}), 400, "bad_request")
    elif case == "no_labels":
        assert_error(client.post("/classify", json={"image": img, "labels": []}), 422, "validation_error")
    elif case == "bad_image":
        assert_error(client.post("/similarity", json={"image": b64(b"\x89PNG\r\n\x1a\nxx"), "text": "x"}),
                     400, "invalid_image")
    elif case == "images_and_image":
        assert_error(client.post("/batch-similarity", json={"image": img, "images": [img], "texts": ["a"]}),
                     400, "bad_request")
    assert client.post("/embed", json={"image": img}).status_code == 200


def test_status_and_health(client):
    st = SeedStatus.model_validate(client.get("/models/status").json())
    assert [m.name for m in st.loaded_models] == ["clip_vit_l"]
    assert client.get("/health").json()["state"] == "RUNNING"
    # no admin token configured: admin routes are open
    assert client.post("/models/unload", json={"model": "clip_vit_l"}).status_code == 200
    assert client.post("/embed", json={"image": jpeg_b64()}).status_code == 200  # loads on demand
