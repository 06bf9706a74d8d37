"""Reference parity of the generative families: Florence-2 (`florence2`), the LLM on transformers (`causal_lm`)
and the LLM on llama.cpp (`gguf`), each against its library's own call on the same files:
  Florence-2: the model card's `processor(text=task, images=image)` -> `generate(input_ids, pixel_values,
    num_beams=3, do_sample=False)` -> `batch_decode(skip_special_tokens=False)` -> `post_process_generation(text,
    task=task, image_size=(width, height))`; ours over KServe v2 infer (HTTP) and the adapter directly.
  causal LM: `apply_chat_template(messages, add_generation_prompt=True)` -> `generate(do_sample=False)` (greedy)
    -> the new tokens decoded; ours over /v1/chat/completions with temperature 0.
  GGUF: llama-cpp-python's `Llama(model_path, n_ctx).create_chat_completion(messages, temperature=0)`; ours over
    /v1/chat/completions of the llm service on its default (gguf) backend.
Tolerance: none; the same tokens, the same text, the same parsed boxes.

Non-vacuity: the random Florence-2 fixture writes one token (`<loc_260>`) whatever the image, so the test uses a
test-local copy (`florence_copy`) whose shared token embeddings (tied to the output head) are redrawn from
N(0, 1) with a fixed seed and whose decoder cross-attention value / output projections are scaled x30, so the
generated tokens depend on the image and the task and include `<loc_*>` tokens that <OD> parses into pixel
boxes of the image's size. Both sides load that copy. The LLM checks require two prompts to give two different
completions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from parity_helpers import encoded, kserve_infer, local_zoo, scene
from PIL import Image
from svc_helpers import running_service

from serving.adapters.base import PromptItem
from serving.adapters.registry import default_registry
from serving.vram.devices import CpuDevice

pytestmark = pytest.mark.slow

MAX_NEW = 20
PROMPTS = [[{"role": "user", "content": "Is the back door locked?"}],
           [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Two people near a car."}]]


def florence_copy(src: Path, dst: Path) -> None:
    """The test-local Florence-2 copy of the module docstring."""
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(src).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=g))
        scaled = 0
        for name, module in model.named_modules():
            if name.endswith(("encoder_attn.v_proj", "encoder_attn.out_proj")):
                module.weight.mul_(30.0)
                scaled += 1
    assert scaled >= 2, "no decoder cross-attention found"
    model.save_pretrained(dst)
    AutoProcessor.from_pretrained(src).save_pretrained(dst)


@pytest.fixture(scope="module")
def florence(zoo, tmp_path_factory):
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    src = Path(zoo.models_root) / zoo.models["florence2"].source["hf"]
    if not (src / "config.json").exists():
        pytest.skip("Florence-2 fixture missing; run `zoo fixtures`")
    root = tmp_path_factory.mktemp("florence-parity")
    dst = root / zoo.models["florence2"].source["hf"]
    florence_copy(src, dst)
    z = local_zoo(zoo, root, ["florence2"], "florence")
    processor = AutoProcessor.from_pretrained(dst)
    model = Florence2ForConditionalGeneration.from_pretrained(dst).eval()

    def reference(image: Image.Image, task: str, text_input: str = "") -> tuple[str, Any]:
        inputs = processor(text=task + text_input, images=image, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                 max_new_tokens=MAX_NEW, num_beams=3, do_sample=False)
        text = processor.batch_decode(ids, skip_special_tokens=False)[0]
        return text, processor.post_process_generation(text, task=task, image_size=(image.width, image.height))[task]

    with running_service(z, "florence") as (client, _):
        yield {"client": client, "reference": reference, "zoo": z}
    shutil.rmtree(root, ignore_errors=True)


def test_florence_od_over_http_matches_post_process_generation(florence):
    texts = set()
    for seed, (w, h) in enumerate([(320, 240), (370, 240)]):
        image = scene(w, h, seed)
        (ours,) = kserve_infer(florence["client"], "florence2", [encoded(image)], task="<OD>", max_new_tokens=MAX_NEW)
        text, result = florence["reference"](image, "<OD>")
        assert ours["text"] == text
        assert ours["result"] == result and ours["image_size"] == [w, h]
        assert result["bboxes"] and all(0 <= x <= w and 0 <= y <= h for x, y, *_ in result["bboxes"])
        texts.add(text)
    print(f"\nparity florence2 <OD> over HTTP: identical text and boxes ({len(texts)} distinct generations)")
    assert len(texts) == 2, "the generation does not depend on the image: the comparison would be vacuous"


def test_florence_tasks_in_one_mixed_batch_match(florence):
    """<CAPTION> (pure text), <OCR_WITH_REGION> (quad boxes) and <CAPTION_TO_PHRASE_GROUNDING> (a task with text:
    the model card's prompt is the task token + the text) in ONE adapter call, images of three sizes: prompts
    of different lengths are padded together, and each result must still be the reference's for that item."""
    adapter = default_registry().create("florence2", florence["zoo"].models["florence2"],
                                        Path(florence["zoo"].models_root), CpuDevice())
    adapter.load()
    phrase = "a red car parked near the door"
    items = [PromptItem(scene(300, 260, 7), task="<CAPTION>"), PromptItem(scene(260, 300, 8), task="<OCR_WITH_REGION>"),
             PromptItem(scene(320, 200, 9), task="<CAPTION_TO_PHRASE_GROUNDING>", text=phrase)]
    ours = adapter.predict(items, max_new_tokens=MAX_NEW)
    for item, got in zip(items, ours, strict=True):
        text, result = florence["reference"](item.image, item.task, item.text or "")
        assert got["text"] == text and got["result"] == result, item.task
    assert "<loc_" in ours[1]["text"]  # region tokens were generated and parsed
    adapter.unload()


# --------------------------------------------------------------------------------------------- LLMs
def _chat(client: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": MAX_NEW, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def test_causal_lm_greedy_matches_generate(hf_llm_zoo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(hf_llm_zoo.models_root) / hf_llm_zoo.models["nemotron"].source["hf"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    outputs = []
    with running_service(hf_llm_zoo, "llm") as (client, _):
        for messages in PROMPTS:
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)
            new = ids[0, enc["input_ids"].shape[1]:].tolist()
            ours = _chat(client, messages)
            assert ours["choices"][0]["message"]["content"] == tok.decode(new, skip_special_tokens=True)
            assert ours["usage"]["completion_tokens"] == len(new)
            assert ours["usage"]["prompt_tokens"] == enc["input_ids"].shape[1]
            outputs.append(tuple(new))
    print(f"\nparity causal_lm: identical greedy tokens ({sum(map(len, outputs))} tokens over {len(PROMPTS)} prompts)")
    assert outputs[0] != outputs[1]


def test_gguf_matches_llama_cpp_python(zoo, built_models):
    llama_cpp = pytest.importorskip("llama_cpp")
    z = built_models("nemotron")
    spec = z.models["nemotron"]
    assert spec.family == "gguf"
    path = Path(z.models_root) / spec.source["gguf"]
    adapter = default_registry().create("nemotron", spec, Path(z.models_root), CpuDevice())
    ref = llama_cpp.Llama(model_path=str(path), n_ctx=adapter.n_ctx(), verbose=False)
    outputs = []
    with running_service(z, "llm") as (client, _):
        for messages in PROMPTS:
            want = ref.create_chat_completion(messages=messages, temperature=0, max_tokens=MAX_NEW)
            ours = _chat(client, messages)
            assert ours["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
            assert ours["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
            assert ours["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
            outputs.append(want["choices"][0]["message"]["content"])
    print(f"\nparity gguf: identical completions {json.dumps(outputs)[:200]}")
    assert outputs[0] != outputs[1]
