"""Issue 11: closing an LLM token stream (what the SSE route does when the client goes away) stops generation
at the next token: the generator returns, and with it the lease, within 1 s instead of after max_new_tokens."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow


def test_closing_the_stream_stops_generation_within_a_second(hf_llm_zoo):
    from serving.adapters.registry import default_registry
    from serving.vram.devices import CpuDevice

    zoo = hf_llm_zoo  # the transformers backend: the tiny GGUF fixture ends its stories at once (EOS)
    adapter = default_registry().create("nemotron", zoo.models["nemotron"], zoo.models_root, CpuDevice())
    adapter.load()
    try:
        gen = adapter.stream([{"role": "user", "content": "tell me a long story"}], max_new_tokens=2000)
        assert next(gen)  # generation is running in its worker thread
        t0 = time.perf_counter()
        gen.close()  # LeasedStream's cleanup -> TokenStream.aclose -> generator.close()
        assert time.perf_counter() - t0 < 1.0
    finally:
        adapter.unload()
