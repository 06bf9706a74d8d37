"""SageMaker GPU instance types of seed 000 with base and billed price (billed = base x 1.75).

The GPU columns and prices are the seed's table ("AWS SageMaker Instance Pricing (with 75% markup)").
vCPUs and host memory are AWS's published figures for these instance families; the planner uses host
memory because weights are staged through host RAM on a load and parked there in the warm tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

#: seed 002: self-hosted markup 75% -> multiplier 1.75
SELF_HOSTED_MARKUP = Decimal("0.75")


def billed_price(base: float | Decimal, markup: Decimal = SELF_HOSTED_MARKUP) -> float:
    """Base $/h -> billed $/h, rounded half-up to the cent as the seed's table is."""
    value = Decimal(str(base)) * (Decimal(1) + markup)
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class InstanceType:
    """One SageMaker hosting instance type: GPUs, memory and price."""

    name: str
    gpus: int
    gpu_model: str
    gpu_memory_gb: float  # total over all GPUs
    vcpus: int
    host_memory_gb: float
    base_per_hour: float
    best_for: str = ""

    @property
    def per_gpu_memory_gb(self) -> float:
        return self.gpu_memory_gb / self.gpus

    @property
    def billed_per_hour(self) -> float:
        return billed_price(self.base_per_hour)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "gpus": self.gpus,
            "gpu_model": self.gpu_model,
            "gpu_memory_gb": self.gpu_memory_gb,
            "per_gpu_memory_gb": self.per_gpu_memory_gb,
            "vcpus": self.vcpus,
            "host_memory_gb": self.host_memory_gb,
            "base_per_hour": self.base_per_hour,
            "billed_per_hour": self.billed_per_hour,
            "best_for": self.best_for,
        }


#: seed 000 "AWS SageMaker Instance Pricing (with 75% markup)", cheapest first
INSTANCE_TYPES: tuple[InstanceType, ...] = (
    InstanceType("ml.g4dn.xlarge", 1, "T4", 16, 4, 16, 0.74, "Small models, embeddings"),
    InstanceType("ml.g5.xlarge", 1, "A10G", 24, 4, 16, 1.41, "Medium models"),
    InstanceType("ml.g5.2xlarge", 1, "A10G", 24, 8, 32, 1.52, "Medium+ models"),
    InstanceType("ml.g5.4xlarge", 1, "A10G", 24, 16, 64, 2.03, "Large vision models"),
    InstanceType("ml.g5.12xlarge", 4, "A10G", 96, 48, 192, 8.16, "Large LLMs"),
    InstanceType("ml.g5.48xlarge", 8, "A10G", 192, 192, 768, 20.36, "Very large models"),
    InstanceType("ml.p4d.24xlarge", 8, "A100", 320, 96, 1152, 32.77, "Scientific computing"),
)

INSTANCES: dict[str, InstanceType] = {i.name: i for i in INSTANCE_TYPES}


def get_instance(name: str) -> InstanceType:
    try:
        return INSTANCES[name]
    except KeyError:
        raise KeyError(f"unknown instance type {name!r}; known: {', '.join(INSTANCES)}") from None


def by_price() -> list[InstanceType]:
    """Instance types cheapest first (ties: more GPU memory first)."""
    return sorted(INSTANCE_TYPES, key=lambda i: (i.base_per_hour, -i.gpu_memory_gb))
