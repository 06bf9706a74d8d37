"""open_clip SigLIP -> transformers SiglipModel, proven against open_clip itself.

A tiny open_clip SigLIP (the ViT-B-16-SigLIP layout: timm ViT tower with MAP pooling, open_clip's
bidirectional TextTransformer, sigmoid logit bias) is built offline with random weights: its timm tower is
timm's own `vit_base_patch16_siglip_224` entrypoint shrunk by keyword overrides and registered under a new
name, its tokenizer a T5 SentencePiece tokenizer trained locally (the kind timm/ViT-B-16-SigLIP ships).
It is saved in open_clip's hub layout and read back by open_clip through `local-dir:`, so the reference
is exactly what open_clip does with such a folder. Every parameter is perturbed away from its init (LayerNorm
weights, biases, logit bias...) so a swapped or dropped tensor shows in the outputs.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

TIMM_NAME = "vit_zoo_tiny_patch8_siglip_32"
CONTEXT = 16
TEXTS = ["A photo of a person wearing a Dark Hoodie!", "UPS uniform, at night.", "someone loitering near the door",
         "person wearing red clothing", "x " * 40]


def _register_tiny_timm() -> None:
    import timm
    from timm.models import register_model

    if timm.is_model(TIMM_NAME):
        return

    def vit_zoo_tiny_patch8_siglip_32(pretrained: bool = False, **kwargs):
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32, patch_size=8,
                                 embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, **kwargs)

    vit_zoo_tiny_patch8_siglip_32.__module__ = "timm.models.vision_transformer"
    register_model(vit_zoo_tiny_patch8_siglip_32)


def open_clip_config(vocab: int) -> dict:
    return {
        "model_cfg": {
            "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": 32, "timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"context_length": CONTEXT, "vocab_size": vocab, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                         "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 2,
                         "mlp_ratio": 2.0, "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                         "norm_kwargs": {"eps": 1e-6}},
        },
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "squash"},
    }


def build_open_clip_repo(folder: Path, weights: str = "safetensors") -> Path:
    """An open_clip SigLIP hub folder: open_clip_config.json, weights, spiece.model + T5 tokenizer files."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from serving.fixtures import tokenizers

    _register_tiny_timm()
    folder = Path(folder)
    tokenizers.siglip_tokenizer(folder, model_max_length=CONTEXT)  # writes folder/spiece.model
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                             "model_max_length": CONTEXT}))
    t5 = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    t5.save_pretrained(folder)  # tokenizer.json + tokenizer_config.json, as timm/ViT-B-16-SigLIP ships them
    (folder / "open_clip_config.json").write_text(json.dumps(open_clip_config(len(t5))))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")  # no weights yet: open_clip's random init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


def _reference(folder: Path):
    import open_clip

    model = open_clip.create_model(f"local-dir:{folder}").eval()  # loads the saved weights (strict)
    return model, open_clip.get_tokenizer(f"local-dir:{folder}")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_open_clip_repo(tmp_path_factory.mktemp("oc") / "repo")


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    from serving.fixtures.openclip_convert import convert

    root = tmp_path_factory.mktemp("models")
    summary = convert(source, root / "fashion")
    return root, summary


def want_txt_of(model, tokenizer, texts):
    import torch

    with torch.inference_mode():
        return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def _adapter(root: Path):
    from serving.adapters.registry import AdapterRegistry
    from serving.config import ModelSpec
    from serving.vram.devices import CpuDevice

    spec = ModelSpec(family="clip", task="zero_shot", source={"hf": "fashion"}, vram_mb=1,
                     options={"arch": "siglip", "prompt_set": "security_clothing"})
    adapter = AdapterRegistry().create("fashion_clip", spec, root, CpuDevice())
    adapter.load()
    return adapter


def test_converted_model_reproduces_open_clip_embeddings(source, converted):
    import torch
    from transformers import SiglipModel

    root, summary = converted
    assert summary["vision"]["num_attention_heads"] == 2 and summary["vision"]["hidden_act"] == "gelu"
    ref, ref_tok = _reference(source)
    hf = SiglipModel.from_pretrained(root / "fashion", local_files_only=True, use_safetensors=True).eval()

    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = ref_tok(TEXTS)
    with torch.inference_mode():
        want_img, want_txt = ref.encode_image(pixels), ref.encode_text(ids)
        got_img = hf.get_image_features(pixel_values=pixels).pooler_output
        got_txt = hf.get_text_features(input_ids=ids).pooler_output
    img_err = (want_img - got_img).abs().max().item()
    txt_err = (want_txt - got_txt).abs().max().item()
    print(f"unnormalised embeddings, max |open_clip - transformers|: image {img_err:.2e}, text {txt_err:.2e}")
    assert want_img.abs().mean() > 0.1 and want_txt.abs().mean() > 0.1  # not a degenerate all-zero output
    assert img_err < 1e-4 and txt_err < 1e-4
    assert torch.allclose(hf.logit_scale, ref.logit_scale.reshape(1))
    assert torch.allclose(hf.logit_bias, ref.logit_bias.reshape(1))


def test_adapter_on_converted_folder_matches_open_clip(source, converted):
    """Through ClipAdapter unchanged: its tokenizer gives open_clip's ids; text embeddings match to 1e-4;
    image embeddings from the same PIL image through each library's own preprocessing match up to the
    last 8-bit rounding of the resize."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    root, _ = converted
    ref, ref_tok = _reference(source)
    adapter = _adapter(root)
    ids = adapter.processor.tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, ref_tok(TEXTS))

    want_txt = want_txt_of(ref, ref_tok, TEXTS)
    txt_err = (adapter.text_embeddings(TEXTS) - want_txt).abs().max().item()

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    cfg = json.loads((source / "open_clip_config.json").read_text())["preprocess_cfg"]
    tf = open_clip.image_transform(32, is_train=False, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                                   interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    hf_pixels = adapter.processor(images=[image], return_tensors="pt")["pixel_values"]
    pix_err = (hf_pixels - tf(image).unsqueeze(0)).abs().max().item()
    with torch.inference_mode():
        want_img = torch.nn.functional.normalize(ref.encode_image(tf(image).unsqueeze(0)), dim=-1)
    img_err = (adapter.image_embeddings([image]) - want_img).abs().max().item()
    print(f"adapter vs open_clip (normalised): text {txt_err:.2e}; pixels {pix_err:.2e}, image {img_err:.2e}")
    assert txt_err < 1e-4
    assert pix_err <= 2 / 255 + 1e-6  # one 8-bit level after normalising with std 0.5
    assert img_err < 5e-2

    labels = ["a person wearing a dark hoodie", "a delivery uniform", "casual clothing"]
    got = adapter.predict([image], task="classify", labels=labels)[0]["scores"]
    logits = want_img @ want_txt_of(ref, ref_tok, labels).T * ref.logit_scale.exp() + ref.logit_bias
    want = dict(zip(labels, logits.softmax(dim=-1)[0].tolist(), strict=True))
    print(f"zero-shot probabilities: adapter {got}, open_clip {want}")
    assert all(abs(got[k] - want[k]) < 1e-2 for k in labels)


def test_pickle_weights_convert_identically_and_unsafe_pickles_are_refused(source, converted, tmp_path):
    import torch
    from safetensors.torch import load_file

    from serving.fixtures.openclip_convert import ConversionError, convert, load_state

    root, _ = converted
    repo = tmp_path / "bin"
    shutil.copytree(source, repo)
    state = load_file(repo / "open_clip_model.safetensors")
    (repo / "open_clip_model.safetensors").unlink()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, repo / "open_clip_pytorch_model.bin")
    summary = convert(repo, tmp_path / "out")
    assert summary["weights"] == "open_clip_pytorch_model.bin"
    a, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(root / "fashion" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    class Boom:
        def __reduce__(self):
            return (shutil.rmtree, (str(repo),))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps({"x": Boom()}, protocol=2))
    with pytest.raises(ConversionError, match="weights_only"):
        load_state(evil)
    assert repo.exists()  # the pickle's payload never ran


def test_every_tensor_is_mapped_or_the_conversion_fails(source):
    from serving.fixtures.openclip_convert import (
        ConversionError,
        load_state,
        map_state,
        vision_arch,
    )

    state = load_state(source / "open_clip_model.safetensors")
    cfg = json.loads((source / "open_clip_config.json").read_text())["model_cfg"]
    mapped = map_state(dict(state), 2, 2)
    # 4 blocks (2 vision, 2 text) each split a fused weight and bias 1 -> 3 (+4); the MAP head fuses q + kv (-2)
    assert len(mapped) == len(state) + 4 * 4 - 2
    extra = {**state, "text.cls_emb": state["text.ln_final.bias"]}
    with pytest.raises(ConversionError, match="no SiglipModel counterpart.*text.cls_emb"):
        map_state(extra, 2, 2)
    missing = {k: v for k, v in state.items() if k != "text.ln_final.bias"}
    with pytest.raises(ConversionError, match="missing source tensor text.ln_final.bias"):
        map_state(missing, 2, 2)
    trunk_extra = {**state, "visual.trunk.cls_token": state["visual.trunk.attn_pool.latent"]}
    with pytest.raises(ConversionError, match="do not match timm"):
        vision_arch(cfg["vision_cfg"], trunk_extra)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model_cfg"]["text_cfg"].update(pool_type="argmax"), "pool_type"),
    (lambda c: c["model_cfg"]["text_cfg"].update(no_causal_mask=False), "no_causal_mask"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(timm_pool="avg"), "timm_pool"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(timm_proj="linear"), "timm_proj"),
    (lambda c: c["model_cfg"].pop("init_logit_bias"), "init_logit_bias"),
    (lambda c: c["model_cfg"]["text_cfg"].update(tokenizer_kwargs={"clean": "whitespace"}), "canonicalize"),
    (lambda c: c["preprocess_cfg"].update(resize_mode="shortest"), "resize_mode"),
])
def test_unsupported_settings_are_refused_by_name(source, tmp_path, edit, message):
    from serving.fixtures.openclip_convert import ConversionError, convert

    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    cfg = json.loads((repo / "open_clip_config.json").read_text())
    edit(cfg)
    (repo / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=message):
        convert(repo, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_tokenizer_requirement_is_explicit(source, tmp_path):
    from serving.fixtures.openclip_convert import ConversionError, convert

    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    (repo / "spiece.model").unlink()
    with pytest.raises(ConversionError, match=r"spiece\.model.*timm/ViT-B-16-SigLIP"):
        convert(repo, tmp_path / "out")
