"""`gguf`: the tiny GGUF fixture through llama-cpp-python (real llama.cpp on the CPU): chat and raw prompts,
streaming equals the plain answer at temperature 0, grammar / JSON Schema honoured, bad input is a 400,
tokenize round trip, the warm tier; and, with a fake `Llama`, GPU_LAYERS / CTX_SIZE reaching llama.cpp.
The llama.cpp tests skip only when llama-cpp-python is not installed (it builds from source)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.adapters.base import LoadContext, PromptText
from serving.adapters.gguf import GgufAdapter
from serving.config import load_zoo
from serving.errors import BadRequest

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python is not installed (pip install "
                                                       "llama-cpp-python builds it from source)")
CHAT = [{"role": "user", "content": "Anyone at the door?"}]
CHATML = "<|im_start|>user\nAnyone at the door?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llm(built_models):
    from _hf_support import load_adapter

    zoo = built_models("nemotron")
    assert zoo.models["nemotron"].family == "gguf"
    if not HAS_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    adapter = load_adapter(zoo, "nemotron")
    yield adapter
    adapter.unload()


def drain(gen):
    pieces = []
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as stop:
            return pieces, stop.value


@needs_llama
def test_chat_and_raw_prompt(llm):
    (chat,) = llm.predict([CHAT], max_new_tokens=6)
    assert isinstance(chat["text"], str) and 0 < chat["completion_tokens"] <= 6 and chat["prompt_tokens"] > 0
    (raw,) = llm.predict([PromptText(CHATML)], max_new_tokens=6)
    assert raw["finish_reason"] in ("stop", "length") and raw["prompt_tokens"] == len(llm.tokenize(CHATML, True))
    assert llm.chat_template() and "<|im_start|>" in llm.chat_template()


@needs_llama
def test_stream_equals_plain_at_temperature_zero(llm):
    (plain,) = llm.predict([PromptText(CHATML)], max_new_tokens=8, temperature=0)
    pieces, info = drain(llm.stream(PromptText(CHATML), max_new_tokens=8, temperature=0))
    assert "".join(pieces) == plain["text"] and info["finish_reason"] == plain["finish_reason"]


@needs_llama
def test_json_schema_and_grammar_are_honoured(llm):
    schema = {"type": "object", "properties": {"risk_score": {"type": "integer"}}, "required": ["risk_score"]}
    (out,) = llm.predict([PromptText(CHATML)], max_new_tokens=48, json_schema=schema)
    if out["finish_reason"] == "stop":
        assert isinstance(json.loads(out["text"])["risk_score"], int)
    else:  # cut by the token limit: still the schema's shape so far
        assert out["text"].lstrip().startswith('{') and "risk_score" in out["text"]
    (yes,) = llm.predict([PromptText(CHATML)], max_new_tokens=4, grammar='root ::= "yes" | "no"')
    assert yes["text"] in ("yes", "no")
    with pytest.raises(BadRequest):
        llm.predict([PromptText(CHATML)], max_new_tokens=4, grammar="root ::= (")


@needs_llama
def test_bad_inputs_are_400(llm):
    with pytest.raises(BadRequest):
        llm.predict([PromptText("")])
    with pytest.raises(BadRequest):
        llm.predict([PromptText("x " * 50)], max_new_tokens=llm.context_window())
    with pytest.raises(BadRequest):
        llm.predict([[{"role": "wizard", "content": "x"}]])
    with pytest.raises(BadRequest):
        llm.predict([CHAT], max_new_tokens=0)


@needs_llama
def test_token_ids_outside_the_vocabulary_are_400_not_an_abort(llm):
    # llama.cpp aborts the whole process on an unknown id; found by the OpenAPI fuzzer through /detokenize
    n_vocab = int(llm.llm.n_vocab())
    for ids in ([n_vocab], [-1], [0, 2**31 - 1]):
        with pytest.raises(BadRequest, match="token ids"):
            llm.detokenize(ids)
    assert isinstance(llm.detokenize([0, 1]), str)


@needs_llama
def test_tokenize_round_trip_and_warm_tier(llm):
    ids = llm.tokenize("person at the door")
    assert ids and llm.detokenize(ids) == "person at the door"
    (before,) = llm.predict([PromptText(CHATML)], max_new_tokens=5)
    llm.offload()
    llm.restore()
    (after,) = llm.predict([PromptText(CHATML)], max_new_tokens=5)
    assert after == before and llm.param_bytes() > 0 and llm.metadata()["backend"] == "llama.cpp"


class FakeLlama:
    """llama_cpp.Llama's constructor signature, recording what it was given."""

    opened: list[dict] = []

    def __init__(self, **kw):
        FakeLlama.opened.append(kw)


def test_gpu_layers_and_ctx_size_reach_llama_cpp(tmp_path: Path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    repo = Path(__file__).resolve().parents[2]
    zoo = load_zoo(repo / "zoo.yaml", env={"GPU_LAYERS": "35", "CTX_SIZE": "131072", "ZOO_MODELS_ROOT": str(tmp_path),
                                           "MODEL_PATH": str(tmp_path / "m.gguf")})
    spec = zoo.models["nemotron"]
    assert spec.family == "gguf" and spec.source == {"gguf": "m.gguf"}
    assert spec.options["n_gpu_layers"] == 35 and spec.options["n_ctx"] == 131072
    FakeLlama.opened.clear()
    cuda = SimpleNamespace(kind="cuda", name="cuda:0", process_bytes=lambda: 0)
    ctx = LoadContext(name="nemotron", spec=spec, models_root=tmp_path, device=cuda,
                      paths={"gguf": tmp_path / "m.gguf"})
    a = GgufAdapter(ctx, llama_factory=FakeLlama)
    a.load()
    a.offload()  # WARM: no layer on the GPU
    a.restore()
    assert [o["n_gpu_layers"] for o in FakeLlama.opened] == [35, 0, 35]
    assert all(o["n_ctx"] == 131072 and o["model_path"].endswith("m.gguf") for o in FakeLlama.opened)
    cpu = GgufAdapter(LoadContext(name="nemotron", spec=spec, models_root=tmp_path,
                                  device=SimpleNamespace(kind="cpu", name="cpu"), paths={"gguf": tmp_path / "m.gguf"}),
                      llama_factory=FakeLlama)
    cpu.load()
    assert FakeLlama.opened[-1]["n_gpu_layers"] == 0  # no GPU: every layer on the CPU


def test_model_path_to_a_folder_runs_on_transformers(tmp_path: Path):
    (tmp_path / "ckpt").mkdir()
    repo = Path(__file__).resolve().parents[2]
    zoo = load_zoo(repo / "zoo.yaml", env={"ZOO_MODELS_ROOT": str(tmp_path), "MODEL_PATH": str(tmp_path / "ckpt")})
    assert zoo.models["nemotron"].family == "causal_lm" and zoo.models["nemotron"].source == {"hf": "ckpt"}
