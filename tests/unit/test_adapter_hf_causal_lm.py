"""`causal_lm`: Nemotron-H fixture with a locally trained tokenizer and chat template: predict and
token streaming agree, finish reasons and token counts are right."""

from __future__ import annotations

import pytest
from _hf_support import ChatResult, check_lifecycle, load_adapter

from serving.errors import BadRequest

MSGS = [{"role": "system", "content": "You are a home security analyst."},
        {"role": "user", "content": "A person in a dark hoodie at the front door at night."}]


@pytest.fixture(scope="module")
def llm(hf_llm_zoo):
    return load_adapter(hf_llm_zoo, "nemotron")


def drain(gen):
    pieces = []
    while True:
        try:
            pieces.append(next(gen))
        except StopIteration as stop:
            return pieces, stop.value


def test_architecture_and_template(llm):
    assert type(llm.model).__name__ == "NemotronHForCausalLM"
    prompt = llm.tokenizer.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>system\n" in prompt


def test_predict_batch(llm):
    out = llm.predict([MSGS, MSGS[1:]], max_new_tokens=6)
    for r in out:
        ChatResult.model_validate(r)
        assert r["completion_tokens"] <= 6
        assert r["finish_reason"] == ("length" if r["completion_tokens"] == 6 else "stop")
    assert out[0]["prompt_tokens"] > out[1]["prompt_tokens"]


def test_stream_matches_predict(llm):
    want = llm.predict([MSGS], max_new_tokens=8)[0]
    pieces, info = drain(llm.stream(MSGS, max_new_tokens=8))
    assert "".join(pieces) == want["text"]
    assert info == {k: want[k] for k in ("prompt_tokens", "completion_tokens", "finish_reason")}


def test_sampling_is_seeded(llm):
    a = llm.predict([MSGS], max_new_tokens=6, temperature=0.9, seed=3)
    b = llm.predict([MSGS], max_new_tokens=6, temperature=0.9, seed=3)
    assert a == b


@pytest.mark.parametrize(
    ("messages", "opts"),
    [([], {}), ([{"role": "robot", "content": "x"}], {}), ([{"role": "user", "content": 3}], {}),
     (MSGS, {"max_new_tokens": 0}), (MSGS, {"temperature": -1}), (MSGS, {"max_new_tokens": 10_000_000})],
)
def test_bad_requests(llm, messages, opts):
    with pytest.raises(BadRequest):
        llm.predict([messages], **opts)


def test_stream_errors_reach_the_consumer(llm):
    with pytest.raises(BadRequest):
        drain(llm.stream([{"role": "user"}]))


def test_lifecycle(llm):
    check_lifecycle(llm, lambda: llm.predict([MSGS], max_new_tokens=5))
