"""Seed 003's llama.cpp server variables as options of the zoo's gguf-family models (applied by
serving.config.load_zoo to the raw YAML, from the environment `Settings` read once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.errors import ConfigError

#: seed 003's llama.cpp server variables -> options of the gguf family
_LLAMA_ENV = (("GPU_LAYERS", "n_gpu_layers"), ("CTX_SIZE", "n_ctx"))


def apply_llama_options(models: dict[str, Any], env: Mapping[str, str]) -> None:
    """GPU_LAYERS -> n_gpu_layers, CTX_SIZE -> n_ctx of every gguf-family model."""
    for var, option in _LLAMA_ENV:
        if not env.get(var):
            continue
        try:
            value = int(env[var])
        except ValueError as e:
            raise ConfigError(f"environment {var}={env[var]!r} is not an integer") from e
        if option == "n_ctx" and value < 1:
            raise ConfigError(f"environment {var}={env[var]!r} must be >= 1")
        for spec in models.values():
            if spec.get("family") == "gguf":
                spec.setdefault("options", {})[option] = value
