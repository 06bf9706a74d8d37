"""Every adapter family declares its options (serving/adapters/options.py), even when it takes none: a family
missing from FAMILY_OPTIONS would silently refuse every option (the gguf LLM once refused max_new_tokens)."""

from __future__ import annotations

from serving.adapters.options import FAMILY_OPTIONS, options_model
from serving.adapters.registry import FAMILY_TASKS


def test_every_family_declares_its_options() -> None:
    assert set(FAMILY_TASKS) - set(FAMILY_OPTIONS) == set()


def test_the_llm_families_take_the_sampling_options() -> None:
    for family in ("causal_lm", "gguf"):
        assert {"max_new_tokens", "temperature", "top_p", "seed"} <= set(options_model(family).model_fields)
    assert {"grammar", "json_schema", "stop"} <= set(options_model("gguf").model_fields)
