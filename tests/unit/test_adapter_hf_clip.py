"""`clip`: CLIP ViT-L/14 (768-d) and FashionSigLIP fixtures: embeddings, zero-shot (free prompts and the
security clothing prompt set), similarity, anomaly; offload -> restore unchanged."""

from __future__ import annotations

import math

import pytest
from _hf_support import ClothingResult, Embedding, check_lifecycle, image, load_adapter
from PIL import ImageOps

from serving.adapters.base import BaselineItem, ImageItem
from serving.errors import BadRequest


@pytest.fixture(scope="module")
def clip(built_models):
    return load_adapter(built_models("clip_vit_l"), "clip_vit_l")


@pytest.fixture(scope="module")
def fashion(built_models):
    return load_adapter(built_models("fashion_clip"), "fashion_clip")


def unit(v):
    return math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)


def test_clip_embeddings_are_768d_and_normalised(clip):
    out = clip.predict([image(), image(seed=1)])  # spec task "embed" is the default
    assert len(out) == 2
    for e in out:
        Embedding.model_validate(e)
        assert e["embedding_dimension"] == 768 == len(e["embedding"]) and unit(e["embedding"])
    assert out[0]["embedding"] != out[1]["embedding"]
    text = clip.predict(["a person at the door"], task="embed_text")[0]
    assert text["embedding_dimension"] == 768 and unit(text["embedding"])


def test_zero_shot_similarity_anomaly(clip):
    labels = ["a person", "a car", "a dog"]
    z = clip.predict([image()], task="classify", labels=labels)[0]
    assert set(z["scores"]) == set(labels) and math.isclose(sum(z["scores"].values()), 1.0, abs_tol=1e-3)
    assert z["label"] == max(z["scores"], key=z["scores"].get)
    s = clip.predict([image()], task="similarity", texts=labels)[0]
    assert s["best_match"] in labels and all(-1.0 <= v <= 1.0 for v in s["similarities"].values())
    base = clip.predict([image()], task="embed")[0]["embedding"]
    same, other = clip.predict([image(), ImageItem(ImageOps.flip(image(seed=5)))], task="anomaly", baseline=base)
    assert same == {"anomaly_score": 0.0, "similarity": 1.0, "is_anomaly": False}
    assert 0.0 <= other["anomaly_score"] <= 1.0 and other["similarity"] < 1.0
    per_item = clip.predict([BaselineItem(image(), baseline=base)], task="anomaly")[0]
    assert per_item["similarity"] == 1.0


def test_bad_requests(clip):
    with pytest.raises(BadRequest):
        clip.predict([image()], task="dance")
    with pytest.raises(BadRequest):
        clip.predict([image()], task="anomaly", baseline=[1.0, 2.0])
    with pytest.raises(BadRequest):
        clip.predict([image()], task="similarity")
    with pytest.raises(BadRequest):
        clip.predict([image()], task="classify")
    with pytest.raises(BadRequest):
        clip.predict([image()], task="similarity", texts=["x"] * 300)


def test_fashion_siglip_clothing_schema(fashion):
    assert type(fashion.model).__name__ == "SiglipModel"
    out = fashion.predict([image(), image(seed=2)])  # spec: zero_shot with prompt_set security_clothing
    for r in out:
        ClothingResult.model_validate(r)
        assert not (r["is_suspicious"] and r["is_service_uniform"])
    emb = fashion.predict([image()], task="embed")[0]
    assert unit(emb["embedding"])


def test_lifecycle(clip, fashion):
    check_lifecycle(clip, lambda: clip.predict([image()], task="classify", labels=["a", "b"]))
    check_lifecycle(fashion, lambda: fashion.predict([image()]))
