"""zoo.yaml: the one file that describes services, devices, budgets and models.

Validated once at start-up by pydantic; an invalid file fails with the field path and what to change.
Environment overrides of seed 003 (VRAM_BUDGET_GB, PORT, *_MODEL_PATH, YOLO26_CONFIDENCE,
ENRICHMENT_<MODEL>_SERVICE, and the llama.cpp server's GPU_LAYERS / CTX_SIZE for gguf models; a MODEL_PATH
to a .gguf file runs the LLM on the gguf family, to a checkpoint folder on causal_lm) come from the
process `Settings` (serving/settings.py, the environment read once) and are applied in `load_zoo`, never
later. `load_zoo` also checks `family`, `task` and `policy` against their registries, so a typo is a
ConfigError at start-up, not a 503 retried forever.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.errors import ConfigError, UnsafePath
from serving.llama_env import apply_llama_options
from serving.scheduler_config import SchedulerSettings
from serving.settings import Settings

MB = 1024 * 1024
GB = 1024 * MB

#: YOLO class names the detector keeps (seed 003 SECURITY_CLASSES).
SECURITY_CLASSES = frozenset(
    {"person", "car", "truck", "dog", "cat", "bird", "bicycle", "motorcycle", "bus"}
)
#: COCO class name -> detection type used by the enrichment triggers (seed: person|vehicle|animal|object).
DETECTION_TYPE_OF_CLASS: dict[str, str] = {
    "person": "person",
    "car": "vehicle",
    "truck": "vehicle",
    "bus": "vehicle",
    "motorcycle": "vehicle",
    "bicycle": "vehicle",
    "dog": "animal",
    "cat": "animal",
    "bird": "animal",
}
DETECTION_TYPES = ("person", "vehicle", "animal", "object")


def detection_type_of(label: str) -> str:
    """Map a detector class name (or an already-typed label) to person|vehicle|animal|object."""
    if label in DETECTION_TYPES:
        return label
    return DETECTION_TYPE_OF_CLASS.get(label, "object")


class Priority(enum.IntEnum):
    """Seed 003 priority classes; a larger value is evicted first."""

    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3


class ThermalState(str, enum.Enum):  # noqa: UP042 - StrEnum would change str() of the members
    OFF = "OFF"
    COLD = "COLD"
    WARM = "WARM"
    HOT = "HOT"
    AUTOMATIC = "AUTOMATIC"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ThermalSpec(_Strict):
    """Thermal defaults of a model (seed 000 part 3)."""

    default_state: ThermalState = Field(ThermalState.COLD, description="State at first start-up.")
    warmup_time_s: float = Field(30.0, ge=0, description="Expected seconds from COLD to ready.")
    min_instances: int = Field(0, ge=0, description="SageMaker: instances kept at idle (0 = scale to zero).")
    max_instances: int = Field(1, ge=1, description="SageMaker: upper bound when scaling out.")

    @model_validator(mode="after")
    def _bounds(self) -> ThermalSpec:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances must be <= max_instances; lower min_instances or raise max_instances")
        return self


_SOURCE_KEYS = ("engine", "onnx", "pt", "hf", "gguf", "safetensors", "rec")


def check_relative_model_path(value: str) -> str:
    """A path written in zoo.yaml: relative, no `..`, so it can only name something inside models_root."""
    p = PurePosixPath(value)
    if not value or p.is_absolute() or value.startswith("~") or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r} must be a path relative to models_root (no absolute paths)")
    if ".." in p.parts:
        raise ValueError(f"{value!r} must not contain '..' (paths stay inside models_root)")
    return value


class ModelSpec(_Strict):
    """One model of the zoo."""

    family: str = Field(description="Adapter key in serving.adapters.registry (e.g. yolo, clip, causal_lm).")
    task: str = Field(description="What it does, one of its family's tasks (adapters.registry.FAMILY_TASKS).")
    source: dict[str, str] = Field(
        description="Files relative to models_root by format: engine, onnx, pt (YOLO), hf (a transformers folder), "
        "safetensors; rec: the ppocr family's recogniser replacing the general one (the plate recogniser)."
    )
    hf_id: str | None = Field(None, description="Hub repository of the real weights, used by `zoo pull` only.")
    env_path: str | None = Field(None, description="Env variable overriding the path (seed: VEHICLE_MODEL_PATH).")
    vram_mb: float = Field(gt=0, description="Declared VRAM estimate in MB until a footprint is measured.")
    priority: Priority = Field(Priority.MEDIUM, description="CRITICAL, HIGH, MEDIUM or LOW (seed 003).")
    max_batch: int = Field(16, ge=1, le=4096, description="Most items per adapter call (the scheduler chunks).")
    residency: Literal["always", "on_demand"] = Field("on_demand", description="always = loaded at start.")
    keep_alive_s: float = Field(900.0, ge=0, description="Idle seconds before HOT -> WARM -> COLD (seed 000).")
    triggers: list[str] = Field(default_factory=list, description="Detection types or class names needing it.")
    trigger_option: str | None = Field(None, description="Triggered only when options[trigger_option] is true.")
    aliases: list[str] = Field(default_factory=list, description="Short names for ENRICHMENT_<ALIAS>_SERVICE.")
    capabilities: list[str] = Field(default_factory=list, description="What it can serve, for selection (e.g. pose).")
    fallback: str | None = Field(None, description="Used when this one is not ready (ViTPose -> YOLOv8n-pose).")
    options: dict[str, Any] = Field(default_factory=dict, description="Family settings (labels, prompts, ...).")
    thermal: ThermalSpec = Field(default_factory=ThermalSpec)
    description: str = ""

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.isdigit():
            try:
                return Priority[v.upper()]
            except KeyError:
                raise ValueError(f"priority {v!r}: use CRITICAL, HIGH, MEDIUM or LOW") from None
        return v

    @field_validator("family")
    @classmethod
    def _family_known(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError("family must be a lower-case adapter key such as 'yolo' or 'hf_image_classifier'")
        return v

    @field_validator("source")
    @classmethod
    def _source_paths(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError(f"source needs at least one of {', '.join(_SOURCE_KEYS)}")
        for key, path in v.items():
            if key not in _SOURCE_KEYS:
                raise ValueError(f"unknown source format {key!r}; use one of {', '.join(_SOURCE_KEYS)}")
            check_relative_model_path(path)
        return v

    @property
    def vram_bytes(self) -> int:
        return int(self.vram_mb * MB)


class ManagerSettings(_Strict):
    """How one OnDemandModelManager behaves. The keys sit flat in a zoo.yaml service (a `ServiceSpec` is a
    `ManagerSettings`); `OnDemandModelManager.from_settings` is the one place that turns them into a
    manager, so the services and the SageMaker container cannot drift."""

    vram_budget_gb: float = Field(0.0, ge=0, description="Budget of this manager (env VRAM_BUDGET_GB overrides).")
    host_cache_gb: float = Field(0.0, ge=0, description="Warm tier: host RAM for parked weights.")
    headroom_mb: float = Field(256.0, ge=0, description="Device memory left free for activations and other tenants.")
    safety_factor: float = Field(1.2, ge=1.0, description="Declared vram_mb x this until measured.")
    policy: str = Field("priority-gdsf", description="Eviction policy name (serving.vram.policy.POLICIES).")
    load_concurrency: int = Field(1, ge=1, description="Loads in flight at once on this device (1 = serialized).")
    admission_timeout_s: float = Field(10.0, gt=0, description="How long a load waits for leases to release.")
    sweep_interval_s: float = Field(15.0, gt=0, description="How often the idle sweeper runs.")
    max_inflight: int = Field(4, ge=1, description="Inference calls running at once on this device.")
    max_queue: int = Field(64, ge=0, description="Inference calls waiting beyond max_inflight; more get 503.")
    backoff_base_s: float = Field(2.0, gt=0, description="First retry delay after a failed load (doubles each time).")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay after failed loads.")

    @field_validator("policy")
    @classmethod
    def _policy_known(cls, v: str) -> str:
        from serving.vram.policy import POLICIES  # stdlib-only module: no cycle, no torch

        if v not in POLICIES:
            raise ValueError(f"unknown eviction policy {v!r}; use one of {', '.join(sorted(POLICIES))}")
        return v

    @property
    def vram_budget_bytes(self) -> int:
        return int(self.vram_budget_gb * GB)

    @property
    def host_cache_bytes(self) -> int:
        return int(self.host_cache_gb * GB)

    @property
    def headroom_bytes(self) -> int:
        return int(self.headroom_mb * MB)

    def manager_kwargs(self) -> dict[str, Any]:
        """The tuning keywords of `OnDemandModelManager` these settings stand for (bytes, seconds)."""
        return {
            "budget_bytes": self.vram_budget_bytes, "host_cache_bytes": self.host_cache_bytes,
            "policy": self.policy, "headroom_bytes": self.headroom_bytes, "safety_factor": self.safety_factor,
            "load_concurrency": self.load_concurrency, "admission_timeout_s": self.admission_timeout_s,
            "max_inflight": self.max_inflight, "max_queue": self.max_queue,
            "sweep_interval_s": self.sweep_interval_s, "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
        }

    def manager_settings(self) -> ManagerSettings:
        """Just the manager's part (drops the fields of a subclass such as ServiceSpec)."""
        return ManagerSettings.model_validate(self.model_dump(include=set(ManagerSettings.model_fields)))


class ServiceSpec(ManagerSettings):
    """One per-GPU service process and its manager (the `ManagerSettings` keys sit flat beside these)."""

    kind: Literal["detection", "llm", "florence", "clip", "enrichment", "gateway"] = Field(
        description="Which router module serves it."
    )
    container: str = Field("", description="Container name in compose.gpu.yml (seed 003).")
    port: int = Field(ge=1, le=65535)
    device: str = Field("auto", description="cpu, cuda:N, or auto (cuda:<gpu> when present, else cpu).")
    gpu: int = Field(0, ge=0, description="GPU index used by device=auto and by compose.gpu.yml.")
    models: list[str] = Field(default_factory=list)
    required_models: list[str] = Field(default_factory=list, description="DEGRADED without these (seed 000).")
    upstreams: dict[str, str] = Field(default_factory=dict, description="gateway: service name -> base URL override.")


class ZooConfig(_Strict):
    """The whole zoo."""

    models_root: Path = Field(Path("./models"), description="Where model files live; env ZOO_MODELS_ROOT overrides.")
    services: dict[str, ServiceSpec]
    models: dict[str, ModelSpec]
    #: model -> service name from ENRICHMENT_<MODEL>_SERVICE (heavy -> enrichment, light -> enrichment-light)
    route_overrides: dict[str, str] = Field(default_factory=dict)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description="Model-major scheduling.")

    @model_validator(mode="after")
    def _cross_checks(self) -> ZooConfig:
        ports: dict[int, str] = {}
        owner: dict[str, str] = {}
        for sname, svc in self.services.items():
            if svc.port in ports:
                raise ValueError(f"services.{sname}.port {svc.port} is already used by services.{ports[svc.port]}; "
                                 "pick another port")
            ports[svc.port] = sname
            for m in svc.models:
                if m not in self.models:
                    raise ValueError(f"services.{sname}.models: unknown model {m!r}; add it under models: or remove it")
                if m in owner:
                    raise ValueError(f"model {m!r} is listed by services.{owner[m]} and services.{sname}; "
                                     "a model belongs to one service")
                owner[m] = sname
            self._check_service_budget(sname, svc)
        for mname, spec in self.models.items():
            if spec.fallback and spec.fallback not in self.models:
                raise ValueError(f"models.{mname}.fallback: unknown model {spec.fallback!r}")
        return self

    def _check_service_budget(self, sname: str, svc: ServiceSpec) -> None:
        for m in svc.required_models:
            if m not in svc.models:
                raise ValueError(f"services.{sname}.required_models: {m!r} is not in that service's models")
        if svc.kind == "gateway":
            return
        if svc.models and svc.vram_budget_gb <= 0:
            raise ValueError(f"services.{sname}.vram_budget_gb must be > 0 for a service with models")
        budget = svc.vram_budget_bytes
        for m in svc.models:
            if self.models[m].vram_bytes > budget > 0:
                raise ValueError(
                    f"models.{m}.vram_mb ({self.models[m].vram_mb:g}) exceeds services.{sname}.vram_budget_gb "
                    f"({svc.vram_budget_gb:g} GB); raise the budget or move the model"
                )

    # --- queries ---------------------------------------------------------------------------------
    def service_of(self, model: str) -> str | None:
        if model in self.route_overrides:
            return self.route_overrides[model]
        for sname, svc in self.services.items():
            if model in svc.models:
                return sname
        return None

    def models_of(self, service: str) -> dict[str, ModelSpec]:
        return {m: self.models[m] for m in self.services[service].models}

    def models_for_detection(
        self, label: str, options: Mapping[str, Any] | None = None, service: str | None = None
    ) -> list[str]:
        """Seed `get_models_for_detection_type`: the models a detection of this type/class needs."""
        dtype = detection_type_of(label)
        opts = options or {}
        names = [n for n in self.services[service].models] if service else list(self.models)
        out = []
        for name in names:
            spec = self.models[name]
            if not (dtype in spec.triggers or label in spec.triggers):
                continue
            if spec.trigger_option and not opts.get(spec.trigger_option):
                continue
            out.append(name)
        return out

    def resolve_path(self, model: str, fmt: str) -> Path:
        """Absolute path of one source file of a model, guaranteed inside models_root."""
        spec = self.models[model]
        if fmt not in spec.source:
            raise KeyError(f"{model} has no {fmt} source")
        return resolve_inside(self.models_root, spec.source[fmt])


def resolve_inside(root: Path, path: str | Path) -> Path:
    """Resolve `path` against `root`; raise UnsafePath when it escapes the root."""
    root_r = Path(root).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root_r / p).resolve()
    if full != root_r and root_r not in full.parents:
        raise UnsafePath(f"model path {str(path)!r} resolves outside the models root {str(root_r)!r}")
    return full


# --- loading -------------------------------------------------------------------------------------
_FORMAT_BY_SUFFIX = {".engine": "engine", ".onnx": "onnx", ".pt": "pt", ".gguf": "gguf", ".safetensors": "safetensors"}


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "invalid zoo file:\n" + "\n".join(lines)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], service: str | None) -> None:
    """Seed 003's environment overrides, applied to the raw YAML before validation."""
    models = raw.get("models") or {}
    services = raw.get("services") or {}
    if service and service in services:
        svc = services[service]
        for var, field, conv in (("VRAM_BUDGET_GB", "vram_budget_gb", float), ("PORT", "port", int)):
            if env.get(var):
                try:
                    svc[field] = conv(env[var])
                except ValueError as e:
                    raise ConfigError(f"environment {var}={env[var]!r} is not a valid {conv.__name__}") from e
    for sname, svc in services.items():
        key = "ZOO_" + re.sub(r"[^A-Z0-9]", "_", sname.upper()) + "_VRAM_BUDGET_GB"
        if env.get(key):
            svc["vram_budget_gb"] = float(env[key])
    _apply_model_paths(models, env, Path(raw["models_root"]))
    apply_llama_options(models, env)
    if env.get("YOLO26_CONFIDENCE"):
        for spec in models.values():
            is_yolo26 = "yolo26" in str(spec.get("env_path", "")).lower()
            if spec.get("family") == "yolo" and spec.get("task") == "detect" and is_yolo26:
                spec.setdefault("options", {})["confidence"] = float(env["YOLO26_CONFIDENCE"])
    raw["route_overrides"] = _route_overrides(models, services, env)


def _apply_model_paths(models: dict[str, Any], env: Mapping[str, str], root: Path) -> None:
    """<MODEL>_MODEL_PATH (a model's `env_path`): one file or folder, inside models_root."""
    for spec in models.values():
        var = spec.get("env_path")
        if var and env.get(var):
            full = resolve_inside(root, env[var])  # absolute allowed only inside models_root
            rel = str(full.relative_to(Path(root).resolve()))
            fmt = _FORMAT_BY_SUFFIX.get(full.suffix, "hf")
            spec["source"] = {fmt: rel}
            if fmt == "gguf" and spec.get("family") == "causal_lm":  # seed 003's MODEL_PATH=/models/....gguf
                spec["family"] = "gguf"
            elif fmt == "hf" and spec.get("family") == "gguf":  # a transformers checkpoint folder
                spec["family"] = "causal_lm"


def _route_overrides(models: dict[str, Any], services: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """ENRICHMENT_<MODEL or ALIAS>_SERVICE=heavy|light|<service name> -> {model: service}."""
    route: dict[str, str] = {}
    names = {"heavy": "enrichment", "light": "enrichment-light"}
    for mname, spec in models.items():
        for k in [mname, *spec.get("aliases", [])]:
            var = "ENRICHMENT_" + re.sub(r"[^A-Z0-9]", "_", k.upper()) + "_SERVICE"
            if env.get(var):
                target = names.get(env[var].lower(), env[var])
                if target not in services:
                    raise ConfigError(f"environment {var}={env[var]!r}: use heavy, light or a service name")
                route[mname] = target
    return route


def _check_registries(zoo: ZooConfig) -> None:
    """Every model's family and task must be known (serving.adapters.registry.FAMILY_TASKS)."""
    from serving.adapters.registry import FAMILY_TASKS  # torch-free table

    problems = []
    for name, spec in zoo.models.items():
        tasks = FAMILY_TASKS.get(spec.family)
        if tasks is None:
            problems.append(f"  models.{name}.family: unknown family {spec.family!r}; use one of "
                            f"{', '.join(sorted(FAMILY_TASKS))}")
        elif spec.task not in tasks:
            problems.append(f"  models.{name}.task: family {spec.family!r} has no task {spec.task!r}; use one of "
                            f"{', '.join(tasks)}")
    if problems:
        raise ConfigError("invalid zoo file:\n" + "\n".join(problems))


def load_zoo(
    path: str | Path = "zoo.yaml",
    *,
    service: str | None = None,
    settings: Settings | None = None,
    env: Mapping[str, str] | None = None,
) -> ZooConfig:
    """Read, override from the environment and validate zoo.yaml. Raises ConfigError with field paths.

    The environment comes from `settings` (else `Settings.from_env(env)`; `env=None` reads the process
    environment once, here): ZOO_CONFIG replaces `path`, ZOO_MODELS_ROOT the models_root, and the
    seed's override variables apply (see the module docstring)."""
    if settings is None:
        settings = Settings.from_env(env)
    overrides = settings.overrides
    path = Path(settings.zoo_config) if settings.zoo_config else Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"zoo file {str(path)!r} not found; pass --zoo or set ZOO_CONFIG") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"zoo file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"zoo file {str(path)!r} must be a mapping with services: and models:")
    if service is not None and service not in (raw.get("services") or {}):
        raise ConfigError(f"unknown service {service!r}; known: {', '.join(raw.get('services') or {})}")
    root = Path(settings.zoo_models_root or raw.get("models_root") or "./models")
    raw["models_root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    _apply_env(raw, overrides, service)
    try:
        zoo = ZooConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
    _check_registries(zoo)
    return zoo
