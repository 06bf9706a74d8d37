"""The self-hosted model catalog of seed 000 (38 models), loaded from data/catalog.yaml.

The data file is the seed transcribed; this module only validates it (pydantic) and answers queries.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serving.config import ThermalState
from serving.errors import ConfigError

CATALOG_FILE = "catalog.yaml"


class CatalogThermal(BaseModel):
    """Seed ThermalConfig; min/max instances default to the seed SQL defaults (0 and 3)."""

    model_config = ConfigDict(extra="forbid")
    default_state: ThermalState = ThermalState.COLD
    scale_to_zero_after_minutes: int = Field(15, ge=0)
    warmup_time_s: float = Field(60, ge=0)
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(3, ge=1)


class CatalogPricing(BaseModel):
    """Seed SelfHostedModelPricing: hourly_rate is the billed $/h (75% markup included)."""

    model_config = ConfigDict(extra="forbid")
    hourly_rate: float = Field(ge=0)
    per_image: float | None = None
    per_minute_audio: float | None = None
    per_minute_video: float | None = None
    per_3d_model: float | None = None
    per_request: float | None = None


class CatalogModel(BaseModel):
    """One self-hosted model of seed 000."""

    model_config = ConfigDict(extra="forbid")
    id: str
    display_name: str
    description: str = ""
    category: str
    specialty: str
    image: str
    instance_type: str | None = Field(None, description="The seed's instanceType; null for summary-only rows.")
    environment: dict[str, str] = Field(default_factory=dict)
    parameters: int = 0
    capabilities: list[str] = Field(default_factory=list)
    thermal: CatalogThermal = Field(default_factory=CatalogThermal)
    license: str = ""
    pricing: CatalogPricing | None = None
    min_tier: int = 3
    requires_gpu: bool = True
    gpu_memory_gb: float = Field(gt=0)
    status: str = "active"
    estimated: bool = Field(False, description="gpu_memory_gb is our estimate, not the seed's figure.")
    summary_only: bool = Field(False, description="Named in the seed's summary table only, no listing.")


class Catalog(BaseModel):
    """All catalog models, by id."""

    models: list[CatalogModel]

    def by_id(self) -> dict[str, CatalogModel]:
        return {m.id: m for m in self.models}

    def get(self, model_id: str) -> CatalogModel:
        try:
            return self.by_id()[model_id]
        except KeyError:
            raise KeyError(f"unknown catalog model {model_id!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate the catalog (the packaged data file by default)."""
    if path is None:
        text = resources.files("serving.control").joinpath("data", CATALOG_FILE).read_text()
        where = f"serving/control/data/{CATALOG_FILE}"
    else:
        text = Path(path).read_text()
        where = str(path)
    raw = yaml.safe_load(text)
    try:
        catalog = Catalog.model_validate(raw)
    except Exception as e:
        raise ConfigError(f"invalid catalog {where}: {e}") from e
    ids = [m.id for m in catalog.models]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"invalid catalog {where}: duplicate model ids")
    return catalog


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    return load_catalog()
