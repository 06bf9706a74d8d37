"""Process settings: the environment, read once at start-up and passed down.

This is the only module of `serving/` that reads `os.environ` (STYLE.md #12; import-linter and a test
keep it so). Entry points (the CLI, `zoo serve`, the SageMaker `serve`) call `Settings.from_env()` once
and hand the object to what they build; tests build `Settings(...)` directly instead of patching the
environment.

Two kinds of variables:
- fixed names (`ZOO_ADMIN_TOKEN`, `ZOO_MAX_BODY_MB`, ...) are typed fields below, validated by
  pydantic-settings: a bad value is a `ConfigError` naming the variable, never a silent default;
- seed 003's per-service and per-model overrides (`VRAM_BUDGET_GB`, `<MODEL>_MODEL_PATH`,
  `ENRICHMENT_<MODEL>_SERVICE`, `ZOO_<SERVICE>_URL`, ...) have names built from zoo.yaml; they are kept
  as the frozen `overrides` mapping (a snapshot of the environment taken at the same moment) and
  interpreted by the module that owns them (`serving.config`, `serving.router.fanout`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.errors import ConfigError

_EXPLICIT: ContextVar[bool] = ContextVar("settings_explicit_env", default=False)


class Settings(BaseSettings):
    """Every fixed-name environment variable the product reads. Field name = variable name, lower-cased."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False, env_prefix="",
                                      env_ignore_empty=True)

    # -- zoo file and models
    zoo_config: str | None = Field(None, description="Path of zoo.yaml (default: ./zoo.yaml or --zoo).")
    zoo_models_root: str | None = Field(None, description="Overrides zoo.yaml models_root.")

    # -- security and binding
    zoo_admin_token: str | None = Field(None, description="Bearer token of admin routes; unset = open on loopback.")
    zoo_bind_host: str | None = Field(None, description="Bind address of `serve` (containers set 0.0.0.0).")
    zoo_settings_read_token: str | None = Field(
        None, description="settings:read token of the control plane, required beyond loopback (seed 000).")
    zoo_settings_write_token: str | None = Field(
        None, description="settings:write token of the control plane, required beyond loopback (seed 000).")

    # -- request limits (serving.services limits)
    zoo_max_body_mb: float | None = Field(None, gt=0, description="Largest request body, MB (default 32).")
    zoo_max_pixels: int | None = Field(None, gt=0, description="Largest decoded image, width x height.")
    zoo_image_formats: str | None = Field(None, description="Comma-separated PIL formats accepted.")
    zoo_max_batch: int | None = Field(None, gt=0, description="Images in one batch request.")

    # -- detection dynamic batching
    zoo_batch_max_size: int = Field(8, gt=0, description="Largest detection batch.")
    zoo_batch_max_delay_ms: float = Field(5.0, ge=0, description="Longest wait to fill a batch, ms.")
    zoo_batch_max_queue: int = Field(256, gt=0, description="Queued detection requests before 503.")

    # -- LLM upstream (an external OpenAI-compatible server instead of the local model)
    llm_upstream_url: str | None = None
    llm_upstream_model: str | None = None
    llm_upstream_timeout_s: float | None = Field(None, gt=0)
    llm_upstream_api_key: str | None = None

    # -- enrichment services
    zoo_enrich_siblings: bool = Field(True, description="An enrichment service answers for its sibling's models "
                                                        "(forwarded single routes, merged /enrich); "
                                                        "serving/services/sibling.py.")

    # -- gateway
    zoo_gateway_thermal: bool = Field(True, description="Mount the thermal API on the gateway.")
    zoo_gateway_url: str | None = Field(None, description="Gateway base URL for CLI clients.")
    zoo_thermal_tick_s: float = Field(30.0, gt=0)
    zoo_thermal_idle_check: bool = Field(
        True, description="Seed 000's scheduled check: scale inactive WARM/HOT models to zero after their window.")
    zoo_status_timeout_s: float = Field(5.0, gt=0)
    zoo_enrich_timeout_s: float = Field(30.0, gt=0)
    zoo_detect_timeout_s: float = Field(30.0, gt=0)
    zoo_analyze_timeout_s: float = Field(120.0, gt=0)
    zoo_pipeline_max_detections: int = Field(8, gt=0)
    # gateway: per-upstream circuit breakers and /health prober (serving/router/breaker.py)
    zoo_breaker: bool = Field(True, description="Circuit breakers in front of the gateway's upstreams.")
    zoo_breaker_failures: int = Field(3, ge=1, le=1000, description="Consecutive failures (timeouts, connection "
                                      "errors, failed /health probes) that open an upstream's circuit.")
    zoo_breaker_cooldown_s: float = Field(5.0, gt=0, le=3600, description="An open circuit without a fresh /health "
                                          "verdict lets one trial request through after this long.")
    zoo_breaker_max_cooldown_s: float = Field(60.0, gt=0, le=86400, description="The cooldown doubles per failed "
                                              "trial up to this.")
    zoo_health_probe_interval_s: float = Field(2.0, ge=0, le=3600, description="Seconds between two /health probes "
                                               "of each upstream by the gateway (0: no prober).")
    zoo_health_probe_timeout_s: float = Field(1.0, gt=0, le=60, description="Timeout of one /health probe.")
    zoo_enrich_mode: Literal["model-major", "per-detection"] = Field(
        "model-major", description="How the gateway enriches a frame: one request per service carrying the frame "
                                   "and all its detections (model-major), or one per model per detection.")

    # -- control plane
    database_url: str | None = Field(None, description="SQLAlchemy URL of the control store (default SQLite).")
    aws_region: str = "us-east-1"
    zoo_sagemaker_image: str = ""
    zoo_sagemaker_role_arn: str = ""

    # -- SageMaker container
    sagemaker_bind_to_port: int = Field(8080, gt=0, lt=65536)
    zoo_image_config: str | None = None
    sagemaker_root: str = "/opt/ml"
    sagemaker_model: str | None = None
    zoo_services: str | None = None
    zoo_device: str = "auto"
    vram_budget_gb: float | None = Field(None, gt=0)
    zoo_host_cache_gb: float | None = Field(None, ge=0)

    #: snapshot of the whole environment for overrides whose names come from zoo.yaml (see module doc)
    overrides: Mapping[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("overrides", mode="after")
    @classmethod
    def _freeze(cls, v: Mapping[str, str]) -> Mapping[str, str]:
        return MappingProxyType(dict(v))

    @field_validator("zoo_breaker_max_cooldown_s", mode="after")
    @classmethod
    def _max_cooldown(cls, v: float, info: ValidationInfo) -> float:
        low = info.data.get("zoo_breaker_cooldown_s")
        if low is not None and v < low:
            raise ValueError(f"must be at least ZOO_BREAKER_COOLDOWN_S ({low:g}): raise it or lower the cooldown")
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        """Only the process environment (and keyword arguments), unless `from_env(env)` gave its own mapping."""
        return (init_settings,) if _EXPLICIT.get() else (init_settings, env_settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **fields: Any) -> Settings:
        """Read the process environment (or `env`) once. Raises ConfigError naming the bad variable."""
        source = dict(os.environ if env is None else env)
        known = {k.lower(): v for k, v in source.items() if k.lower() in cls.model_fields and k.lower() != "overrides"}
        known = {k: v for k, v in known.items() if v != ""}  # an empty variable means unset
        try:
            if env is None:
                return cls(**fields, overrides=source)  # pydantic-settings reads os.environ
            token = _EXPLICIT.set(True)  # `env` only: the process environment is not read
            try:
                return cls(**{**known, **fields, "overrides": source})
            finally:
                _EXPLICIT.reset(token)
        except ValidationError as e:
            first = e.errors()[0]
            var = str(first["loc"][0]).upper() if first.get("loc") else "?"
            given = source.get(var, source.get(var.lower()))
            raise ConfigError(f"environment {var}={given!r}: {first['msg']}") from None

    def env(self, name: str, default: str | None = None) -> str | None:
        """An override variable by its exact name (non-empty), else `default`."""
        value = self.overrides.get(name)
        return value if value else default
