"""Settings: the environment is read once, an explicit mapping is the only source, bad values name the variable."""

from __future__ import annotations

import pytest

from serving.errors import ConfigError
from serving.settings import Settings


def test_explicit_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_ADMIN_TOKEN", "from-process")
    s = Settings.from_env({"ZOO_MAX_PIXELS": "1234"})
    assert s.zoo_admin_token is None
    assert s.zoo_max_pixels == 1234
    assert Settings.from_env().zoo_admin_token == "from-process"


def test_empty_variable_means_unset_and_defaults_hold() -> None:
    s = Settings.from_env({"ZOO_BATCH_MAX_SIZE": "", "ZOO_ADMIN_TOKEN": ""})
    assert s.zoo_batch_max_size == 8
    assert s.zoo_admin_token is None


def test_bad_value_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"ZOO_MAX_PIXELS='many'"):
        Settings.from_env({"ZOO_MAX_PIXELS": "many"})
    with pytest.raises(ConfigError, match="ZOO_BATCH_MAX_SIZE"):
        Settings.from_env({"ZOO_BATCH_MAX_SIZE": "0"})


def test_overrides_keep_dynamic_names_and_are_frozen() -> None:
    s = Settings.from_env({"VRAM_BUDGET_GB": "4", "ENRICHMENT_POSE_SERVICE": "light"})
    assert s.env("ENRICHMENT_POSE_SERVICE") == "light"
    assert s.env("MISSING", "dflt") == "dflt"
    with pytest.raises(TypeError):
        s.overrides["X"] = "1"  # type: ignore[index]
