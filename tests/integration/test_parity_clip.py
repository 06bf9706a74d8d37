"""Reference parity of the contrastive families: CLIP (clip_vit_l), SigLIP (fashion_clip) and X-CLIP
(action_recognizer) against transformers' own processor + model on the same folders in models/ and the same
image files, as their model cards use them:
  CLIP / SigLIP: `processor(images=...)` -> `get_image_features`, `processor(text=..., padding=True)` (SigLIP:
  `padding="max_length"`) -> `get_text_features`, L2-normalised; zero-shot logits = `model(...).logits_per_image`.
  SigLIP's text tower is given `input_ids` only: SigLIP (big_vision) and FashionSigLIP (open_clip's
  TextTransformer, the zoo model's upstream) were trained and run without a padding mask and pool the last
  position, while transformers 5's SiglipTokenizer also returns an `attention_mask` that `model(**inputs)` would
  apply; `test_siglip_text_mask_matters` shows that difference is real, so the reference follows the upstream.
  X-CLIP: `processor(text=prompts, videos=[frames], padding=True)` -> `model(...).logits_per_video.softmax(-1)`
  (transformers 5's XCLIPProcessor returns the frames flattened, (T, C, H, W): the batch axis is added back).
Our side: /embed (image and text) of the clip service and KServe v2 infer over real HTTP, the adapter directly for
SigLIP's text tower (no HTTP route takes text for it).

Non-vacuity: random-weight fixtures; each image check also requires that swapping red and blue moves the
embedding by at least ten times the tolerance. Tolerances: embeddings (unit vectors) 1e-5 per component,
probabilities 1e-5 (HTTP: 4-decimal rounding, 5e-5).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parity_helpers import Worst, kserve_infer, loaded_hf_adapters, local_zoo, max_abs, scene, write_images
from PIL import Image
from svc_helpers import running_service

from serving.adapters.postprocess import action as action_rules
from serving.imaging import ImageLimits, decode_image

pytestmark = pytest.mark.slow

MODELS = ["clip_vit_l", "fashion_clip", "action_recognizer"]
TEXTS = ["a person in a red jacket", "a parked car", "an empty street at night"]
EMB_TOL, PROB_TOL = 1e-5, 1e-5
WORST = Worst()
note = WORST.note


@pytest.fixture(scope="module")
def env(zoo, tmp_path_factory):
    images = write_images(tmp_path_factory.mktemp("clip-parity"), "PNG")
    adapters = loaded_hf_adapters(zoo, MODELS)
    z = local_zoo(zoo, Path(zoo.models_root), MODELS, "clip")
    with running_service(z, "clip") as (client, _):
        yield {"client": client, "adapters": adapters, "images": images, "zoo": zoo, "refs": {}}
    WORST.report()


def reference(env: dict[str, Any], name: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoProcessor

    if name not in env["refs"]:
        folder = str(Path(env["zoo"].models_root) / env["zoo"].models[name].source["hf"])
        env["refs"][name] = (AutoProcessor.from_pretrained(folder), AutoModel.from_pretrained(folder).eval())
    return env["refs"][name]


def _unit(t: Any) -> np.ndarray:
    t = getattr(t, "pooler_output", t)
    return (t / t.norm(dim=-1, keepdim=True)).detach().numpy()


def ref_image_embedding(env: dict[str, Any], name: str, path: Path) -> np.ndarray:
    import torch

    processor, model = reference(env, name)
    with torch.inference_mode():
        return _unit(model.get_image_features(**processor(images=Image.open(path).convert("RGB"), return_tensors="pt")))


def ref_text_embedding(env: dict[str, Any], name: str, texts: list[str]) -> np.ndarray:
    import torch

    processor, model = reference(env, name)
    with torch.inference_mode():
        return _unit(model.get_text_features(**text_inputs(processor, name, texts)))


def text_inputs(processor: Any, name: str, texts: list[str]) -> dict[str, Any]:
    """The tokenizer's output as the upstream feeds it (module docstring: SigLIP without the padding mask)."""
    if name == "fashion_clip":
        return {"input_ids": processor(text=texts, padding="max_length", return_tensors="pt")["input_ids"]}
    return dict(processor(text=texts, padding=True, return_tensors="pt"))


def swapped(img: Image.Image) -> Image.Image:
    r, g, b = img.split()
    return Image.merge("RGB", (b, g, r))


@pytest.mark.parametrize("name", ["clip_vit_l", "fashion_clip"])
def test_image_embeddings_match(env, name):
    adapter = env["adapters"][name]
    for image in env["images"]:
        expected = ref_image_embedding(env, name, image)[0]
        ours = adapter.image_embeddings([decode_image(image.read_bytes(), ImageLimits())]).numpy()[0]
        moved = adapter.image_embeddings([swapped(decode_image(image.read_bytes(), ImageLimits()))]).numpy()[0]
        assert max_abs(ours, expected) <= EMB_TOL and max_abs(moved, ours) > 10 * EMB_TOL
        note(name, image_embedding=max_abs(ours, expected))
        (http,) = kserve_infer(env["client"], name, [image.read_bytes()], task="embed")
        assert max_abs(http["embedding"], expected) <= EMB_TOL
        note(name, image_embedding_http=max_abs(http["embedding"], expected))


def test_clip_embed_route_image_and_text(env):
    """The clip service's own /embed, image and text, against the reference."""
    client = env["client"]
    for image in env["images"]:
        r = client.post("/embed", json={"image": base64.b64encode(image.read_bytes()).decode()})
        assert r.status_code == 200, r.text
        diff = max_abs(r.json()["embedding"], ref_image_embedding(env, "clip_vit_l", image)[0])
        assert diff <= EMB_TOL
        note("clip_vit_l", image_embedding_embed_route=diff)
    expected = ref_text_embedding(env, "clip_vit_l", TEXTS)
    for text, row in zip(TEXTS, expected, strict=True):
        r = client.post("/embed", json={"text": text})
        assert r.status_code == 200, r.text
        assert max_abs(r.json()["embedding"], row) <= EMB_TOL
        note("clip_vit_l", text_embedding_embed_route=max_abs(r.json()["embedding"], row))
    assert max_abs(expected[0], expected[1]) > 10 * EMB_TOL  # different texts, different embeddings


@pytest.mark.parametrize("name", ["clip_vit_l", "fashion_clip"])
def test_text_embeddings_and_zero_shot_match(env, name):
    """Text tower (padding as the model card: SigLIP pads to max_length) and the zero-shot probabilities:
    our softmax over the prompts must be the softmax of the model's own `logits_per_image`."""
    import torch

    adapter = env["adapters"][name]
    expected = ref_text_embedding(env, name, TEXTS)
    ours = adapter.text_embeddings(TEXTS).numpy()
    assert max_abs(ours, expected) <= EMB_TOL
    note(name, text_embedding=max_abs(ours, expected))
    processor, model = reference(env, name)
    for image in env["images"]:
        pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
        inputs = {**text_inputs(processor, name, TEXTS), "pixel_values": pixels}
        with torch.inference_mode():
            probs = model(**inputs).logits_per_image.softmax(-1)[0].numpy()
        (http,) = kserve_infer(env["client"], name, [image.read_bytes()], task="classify", labels=TEXTS)
        got = np.array([http["scores"][t] for t in TEXTS])
        assert max_abs(got, probs) <= 5e-5 + 1e-7
        note(name, zero_shot_probability_http=max_abs(got, probs))


def test_siglip_text_mask_matters(env):
    """Why the SigLIP reference leaves the padding mask out: with it, the last (pooled) position sees only the
    text, without it every position, as in training; the two embeddings differ far beyond the tolerance."""
    import torch

    processor, model = reference(env, "fashion_clip")
    with_mask = processor(text=TEXTS, padding="max_length", return_tensors="pt")
    with torch.inference_mode():
        masked = _unit(model.get_text_features(**with_mask))
    assert max_abs(masked, ref_text_embedding(env, "fashion_clip", TEXTS)) > 100 * EMB_TOL


def test_xclip_matches_processor_and_model(env):
    """An 8-frame clip (the model's frame count, so no resampling) of a moving scene, over KServe FRAMES."""
    import torch

    name = "action_recognizer"
    adapter = env["adapters"][name]
    processor, model = reference(env, name)
    labels = list(action_rules.SECURITY_ACTIONS)
    prompts = [action_rules.prompt_for(label) for label in labels]
    n = adapter.num_frames
    for seed in (0, 1):
        frames = [scene(224 + 16 * seed, 160, 100 * seed + i) for i in range(n)]
        inputs = processor(text=prompts, videos=[frames], padding=True, return_tensors="pt")
        if inputs["pixel_values"].dim() == 4:
            inputs["pixel_values"] = inputs["pixel_values"].unsqueeze(0)
        with torch.inference_mode():
            probs = model(**inputs).logits_per_video.softmax(-1)[0].numpy()
        (ours,) = adapter.predict([frames], labels=labels, top_k=len(labels))
        got = np.array([ours["action_scores"][k] for k in labels])
        assert max_abs(got, probs) <= 5e-5 + 1e-7 and ours["action"] == labels[int(probs.argmax())]
        (moved,) = adapter.predict([[swapped(f) for f in frames]], labels=labels, top_k=len(labels))
        assert max_abs([moved["action_scores"][k] for k in labels], got) > 10 * PROB_TOL
        note(name, probability=max_abs(got, probs))
        body = {"inputs": [{"name": "FRAMES", "shape": [n], "datatype": "BYTES",
                            "data": [base64.b64encode(_png(f)).decode() for f in frames]}],
                "parameters": {"top_k": len(labels)}}
        r = env["client"].post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, r.text
        import json

        http = json.loads(r.json()["outputs"][0]["data"][0])
        got = np.array([http["action_scores"][k] for k in labels])
        assert max_abs(got, probs) <= 5e-5 + 1e-7
        note(name, probability_http=max_abs(got, probs))


def _png(img: Image.Image) -> bytes:
    from parity_helpers import encoded

    return encoded(img, "PNG")
