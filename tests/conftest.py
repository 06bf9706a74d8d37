"""Shared pytest fixtures. Keep this file small: per-area fixtures live next to their tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo():
    """The repository's zoo.yaml, validated, without environment overrides."""
    from serving.config import load_zoo

    return load_zoo(REPO / "zoo.yaml", env={})


@pytest.fixture(scope="session")
def built_models(zoo):
    """`built_models("yolo26", ...)` builds the missing fixtures of those models into models_root (idempotent:
    `make test` runs `zoo fixtures` first, so this is usually a no-op) and returns the zoo."""
    from serving.fixtures import build_fixtures

    def build(*names: str):
        results = build_fixtures(zoo, names)
        failed = {n: r for n, r in results.items() if r not in ("built", "skipped")}
        if failed:
            pytest.fail(f"fixture build failed: {failed}")
        return zoo

    return build


@pytest.fixture(scope="session")
def hf_llm_zoo(zoo):
    """zoo.yaml with its LLM on the transformers backend (`family: causal_lm`, the Nemotron-H checkpoint folder
    fixture), the other choice zoo.yaml offers besides gguf; the fixture is built if missing."""
    from serving.fixtures import build_fixtures

    z = zoo.model_copy(deep=True)
    spec = z.models["nemotron"]
    spec.family, spec.source = "causal_lm", {"hf": "nemotron"}
    spec.options = {k: v for k, v in spec.options.items() if k not in ("n_ctx", "n_gpu_layers")}
    results = build_fixtures(z, ["nemotron"])
    if results["nemotron"] not in ("built", "skipped"):
        pytest.fail(f"fixture build failed: {results}")
    return z
