"""Turn a plan into SageMaker requests (boto3 calls as data; nothing is sent here).

One deployment = one SageMaker endpoint: a zoo plan endpoint (services packed on one instance, the BYOC
image of serving/sagemaker) or one catalog model (its own `image`, `environment` and the seed's
`instanceType`). Its shape follows the thermal states; by default nothing costs money at idle (seed 004):
- serverless: CPU-only endpoints within the serverless limits (memory 1024..6144 MB in 1 GB steps;
  serverless inference has no GPU): ProductionVariants[].ServerlessConfig; billed per request.
- scale_to_zero (COLD, AUTOMATIC): an instance variant with ManagedInstanceScaling MinInstanceCount=0,
  the model as an inference component, application autoscaling of its DesiredCopyCount between 0 and
  max_instances by target tracking whose scale-in cooldown is the model's scaleToZeroAfterMinutes, a
  step policy + CloudWatch alarm on NoCapacityInvocationFailures to scale out from zero, and an idle
  alarm (no request, served or refused, for scaleToZeroAfterMinutes, checked on 5-minute periods like the
  seed's scheduler) that sets the copies to 0.
- scheduled_zero (WARM, HOT): the same, starting at the state's floor (WARM min, HOT min + buffer), scale
  out only (target tracking with scale-in disabled keeps the floor while active), scaled from zero back
  to the floor, and to zero by the idle alarm: the seed's "scale to zero inactive WARM/HOT models".
- always_on: only with keep_idle (WARM/HOT floors kept at idle): a classic variant whose instances run
  around the clock. `idle_cost_per_hour` reads that from the requests; `zoo deploy` refuses to send it
  without --allow-idle-cost.
Model and endpoint-config names carry a hash of their content, so a changed plan creates new ones and
`Deployer.apply` switches an existing endpoint over with update_endpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from serving.config import ThermalState, ZooConfig
from serving.control.catalog import CatalogModel
from serving.control.instances import get_instance
from serving.control.plan import FitRule, active_instances, idle_instances
from serving.control.plan import serverless_memory_mb as serverless_memory_mb

VARIANT = "AllTraffic"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/zoo-sagemaker-execution"
DEFAULT_IMAGE = "000000000000.dkr.ecr.us-east-1.amazonaws.com/zoo-serving:latest"
#: AWS Deep Learning Containers registry account: the catalog's images are DLC repository:tag names
DLC_ACCOUNT = "763104351884"
CHECK_PERIOD_S = 300  # the seed's scheduler runs every 5 minutes
SHAPES = ("serverless", "scale_to_zero", "scheduled_zero", "always_on")


@dataclass
class AwsRequest:
    """One boto3 call: client name, method name and its parameters."""

    client: str  # sagemaker | application-autoscaling | cloudwatch
    operation: str  # boto3 method, e.g. create_model
    params: dict[str, Any]
    endpoint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "operation": self.operation, "params": self.params}


@dataclass
class EndpointDeployment:
    """The requests of one endpoint, in order, and what it costs."""

    endpoint_name: str
    shape: str  # one of SHAPES
    requests: list[AwsRequest] = field(default_factory=list)
    model_name: str = ""
    config_name: str = ""
    component_name: str | None = None
    instance_type: str | None = None
    billed_per_hour: float = 0.0
    states: dict[str, str] = field(default_factory=dict)
    scale_to_zero_after_minutes: float = 0.0
    rule_suggests: str | None = None  # catalog: the instance rule's choice, shown beside the seed's, never used

    def idle_instances(self) -> int:
        """Instances running with no traffic, read from the requests themselves (not from the plan)."""
        for r in self.requests:
            if r.operation == "register_scalable_target":
                return int(r.params["MinCapacity"]) if "variant" in r.params["ScalableDimension"] else 0
        return 0  # serverless, or an inference component: MinInstanceCount 0 and no floor

    def idle_cost_per_hour(self) -> float:
        return round(self.idle_instances() * self.billed_per_hour, 4)

    def summary(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint_name, "shape": self.shape, "instance_type": self.instance_type,
                "billed_per_hour": self.billed_per_hour, "idle_instances": self.idle_instances(),
                "idle_per_hour": self.idle_cost_per_hour(), "states": self.states,
                "scale_to_zero_after_minutes": self.scale_to_zero_after_minutes,
                **({"rule_suggests": self.rule_suggests} if self.rule_suggests else {})}


def aws_name(*parts: str, limit: int = 63) -> str:
    """[a-zA-Z0-9-] name within SageMaker's 63 characters (a hash keeps truncated names unique)."""
    raw = "-".join(parts)
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", raw).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > limit:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:8]
        name = name[: limit - 9].rstrip("-") + "-" + digest
    return name


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def shape_for(states: list[ThermalState], *, keep_idle: bool) -> str:
    """Instance shape of an endpoint whose live (non-OFF) models are in `states`."""
    kept = any(s in (ThermalState.WARM, ThermalState.HOT) for s in states)
    if kept:
        return "always_on" if keep_idle else "scheduled_zero"
    return "scale_to_zero"


def build_deployments(
    zoo: ZooConfig,
    plan: dict[str, Any],
    *,
    image: str = DEFAULT_IMAGE,
    role_arn: str = DEFAULT_ROLE,
    prefix: str = "zoo",
    model_data_url: str | None = None,
    max_concurrency: int = 5,
    environment: dict[str, str] | None = None,
    keep_idle: bool = False,
) -> list[EndpointDeployment]:
    """The SageMaker requests for every endpoint of a plan (`plan_zoo`), without sending anything."""
    out = []
    for ep in plan["endpoints"]:
        if ep["instance_type"] is None and ep.get("shape") != "serverless":
            raise ValueError(f"endpoint {ep['endpoint']} fits no instance type; lower its budgets")
        services = ep["services"]
        models = [m for s in services for m in zoo.services[s].models]
        states = {m: st for s in plan["services"] if s["endpoint"] == ep["endpoint"] for m, st in s["states"].items()}
        live = [m for m in models if states.get(m) != "OFF"]
        max_instances = max([zoo.models[m].thermal.max_instances for m in live] + [max(1, ep["active_instances"])])
        # read by the SageMaker container (serving/sagemaker/app.py SageMakerSettings.from_env)
        env = {
            "ZOO_CONFIG": "/opt/ml/model/zoo.yaml",
            "ZOO_SERVICES": ",".join(services),
            "ZOO_DEVICE": "cpu" if ep["cpu_only"] else "auto",
            "VRAM_BUDGET_GB": f"{sum(zoo.services[s].vram_budget_gb for s in services):g}",
            "ZOO_HOST_CACHE_GB": f"{sum(zoo.services[s].host_cache_gb for s in services):g}",
            **(environment or {}),
        }
        container: dict[str, Any] = {"Image": image, "Environment": env, "Mode": "SingleModel"}
        if model_data_url:
            container["ModelDataUrl"] = model_data_url
        dep = EndpointDeployment(aws_name(prefix, ep["endpoint"]), "", states=states,
                                 scale_to_zero_after_minutes=ep["scale_to_zero_after_minutes"])
        if ep.get("shape") == "serverless":
            mb = ep["serverless"]["memory_mb"]
            _serverless(dep, prefix, ep["endpoint"], container, role_arn, mb, max_concurrency)
        else:
            shape = shape_for([ThermalState(states[m]) for m in live], keep_idle=keep_idle)
            _instance(dep, prefix, ep["endpoint"], container, role_arn, shape=shape,
                      instance_type=ep["instance_type"], floor=ep["active_instances"],
                      idle=ep["idle_instances"], max_instances=max_instances,
                      memory_mb=int(math.ceil(ep["host_need_gb"] * 1024)))
        out.append(dep)
    return out


def catalog_image(image: str, region: str) -> str:
    """A catalog image (DLC repository:tag) as a full ECR URI in `region`; full URIs are kept."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first):
        return image
    return f"{DLC_ACCOUNT}.dkr.ecr.{region}.amazonaws.com/{image}"


def build_catalog_deployments(
    models: list[tuple[CatalogModel, ThermalState | str]],
    *,
    region: str = "us-east-1",
    role_arn: str = DEFAULT_ROLE,
    prefix: str = "zoo",
    keep_idle: bool = False,
    rule: FitRule = FitRule(),
) -> list[EndpointDeployment]:
    """One endpoint per catalog model with its own image, environment and the seed's instanceType (the
    rule's instance for the summary-only models the seed gives none); a model that needs no GPU and fits
    the serverless memory limit is deployed serverless. OFF models are not deployed."""
    from serving.control.catalog_plan import catalog_choice, catalog_instance  # noqa: PLC0415

    out = []
    for m, state in models:
        st = ThermalState(state)
        if st == ThermalState.OFF:
            continue
        inst, _ = catalog_instance(m, rule)
        if inst is None:
            raise ValueError(f"catalog model {m.id} fits no instance type")
        th = m.thermal
        container = {"Image": catalog_image(m.image, region), "Environment": dict(m.environment),
                     "Mode": "SingleModel"}
        suggestion = catalog_choice(m, rule)
        dep = EndpointDeployment(aws_name(prefix, m.id), "", states={m.id: st.value},
                                 scale_to_zero_after_minutes=th.scale_to_zero_after_minutes,
                                 rule_suggests=suggestion.name if suggestion else None)
        mb = None if m.requires_gpu else serverless_memory_mb(m.gpu_memory_gb)
        if mb is not None:
            _serverless(dep, prefix, m.id, container, role_arn, mb, max_concurrency=5)
            out.append(dep)
            continue
        shape = shape_for([st], keep_idle=keep_idle)
        _instance(dep, prefix, m.id, container, role_arn, shape=shape, instance_type=inst.name,
                  floor=active_instances(st, th.min_instances, th.max_instances, rule.hot_buffer),
                  idle=idle_instances(st, th.min_instances, th.max_instances, rule.hot_buffer, keep_idle=keep_idle),
                  max_instances=th.max_instances,
                  memory_mb=int(min(inst.host_memory_gb * 0.9, max(1.0, m.gpu_memory_gb)) * 1024),
                  price=m.pricing.hourly_rate if (m.pricing and m.instance_type) else None)
        out.append(dep)
    return out


def _create_model(dep: EndpointDeployment, prefix: str, key: str, container: dict[str, Any], role_arn: str) -> None:
    dep.model_name = aws_name(prefix, key, _digest(container))
    dep.requests.append(AwsRequest("sagemaker", "create_model", {
        "ModelName": dep.model_name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container},
        dep.endpoint_name))


def _config_and_endpoint(dep: EndpointDeployment, prefix: str, key: str, cfg: dict[str, Any]) -> None:
    dep.config_name = aws_name(prefix, key, _digest(cfg))
    dep.requests.append(AwsRequest("sagemaker", "create_endpoint_config",
                                   {"EndpointConfigName": dep.config_name, **cfg}, dep.endpoint_name))
    dep.requests.append(AwsRequest("sagemaker", "create_endpoint", {
        "EndpointName": dep.endpoint_name, "EndpointConfigName": dep.config_name}, dep.endpoint_name))


def _serverless(dep: EndpointDeployment, prefix: str, key: str, container: dict[str, Any], role_arn: str,
                memory_mb: int, max_concurrency: int) -> None:
    dep.shape = "serverless"
    _create_model(dep, prefix, key, container, role_arn)
    variant = {"VariantName": VARIANT, "ModelName": dep.model_name,
               "ServerlessConfig": {"MemorySizeInMB": memory_mb, "MaxConcurrency": max_concurrency}}
    _config_and_endpoint(dep, prefix, key, {"ProductionVariants": [variant]})


def _instance(dep: EndpointDeployment, prefix: str, key: str, container: dict[str, Any], role_arn: str, *,
              shape: str, instance_type: str, floor: int, idle: int, max_instances: int, memory_mb: int,
              price: float | None = None) -> None:
    inst = get_instance(instance_type)
    dep.shape, dep.instance_type = shape, instance_type
    dep.billed_per_hour = inst.billed_per_hour if price is None else price
    floor = max(1, floor)
    top = max(max_instances, floor)
    _create_model(dep, prefix, key, container, role_arn)
    if shape == "always_on":
        n = max(1, idle)
        variant = {"VariantName": VARIANT, "ModelName": dep.model_name, "InstanceType": instance_type,
                   "InitialInstanceCount": n}
        _config_and_endpoint(dep, prefix, key, {"ProductionVariants": [variant]})
        rid = f"endpoint/{dep.endpoint_name}/variant/{VARIANT}"
        dep.requests += _target_tracking(rid, "sagemaker:variant:DesiredInstanceCount", n, max(top, n),
                                         dep.endpoint_name, "SageMakerVariantInvocationsPerInstance", 100.0, 300)
        return
    variant = {"VariantName": VARIANT, "InstanceType": instance_type, "InitialInstanceCount": 1,
               "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": top},
               "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}
    _config_and_endpoint(dep, prefix, key, {"ExecutionRoleArn": role_arn, "ProductionVariants": [variant]})
    comp = aws_name(prefix, key, "ic")
    dep.component_name = comp
    dep.requests.append(AwsRequest("sagemaker", "create_inference_component", {
        "InferenceComponentName": comp, "EndpointName": dep.endpoint_name, "VariantName": VARIANT,
        "Specification": {"ModelName": dep.model_name, "ComputeResourceRequirements": {
            "NumberOfAcceleratorDevicesRequired": float(inst.gpus), "MinMemoryRequiredInMb": memory_mb}},
        "RuntimeConfig": {"CopyCount": floor}}, dep.endpoint_name))
    rid = f"inference-component/{comp}"
    dim = "sagemaker:inference-component:DesiredCopyCount"
    window_s = int(round(dep.scale_to_zero_after_minutes * 60))
    dep.requests += _target_tracking(rid, dim, 0, top, dep.endpoint_name,
                                     "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution", 5.0,
                                     max(60, window_s), disable_scale_in=(shape == "scheduled_zero"))
    dep.requests += _step_to(rid, dim, dep.endpoint_name, comp, "scale-from-zero", floor, _no_capacity_alarm(comp))
    dep.requests += _step_to(rid, dim, dep.endpoint_name, comp, "idle-to-zero", 0, _idle_alarm(comp, window_s))


def _target_tracking(resource_id: str, dimension: str, lo: int, hi: int, endpoint: str, metric: str, target: float,
                     scale_in_cooldown_s: int, *, disable_scale_in: bool = False) -> list[AwsRequest]:
    config: dict[str, Any] = {
        "TargetValue": target, "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
        "ScaleInCooldown": scale_in_cooldown_s, "ScaleOutCooldown": 60}
    if disable_scale_in:
        config["DisableScaleIn"] = True
    return [
        AwsRequest("application-autoscaling", "register_scalable_target", {
            "ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": dimension,
            "MinCapacity": lo, "MaxCapacity": hi}, endpoint),
        AwsRequest("application-autoscaling", "put_scaling_policy", {
            "PolicyName": aws_name(endpoint, "target-tracking", limit=256), "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id, "ScalableDimension": dimension, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": config}, endpoint),
    ]


def _step_to(resource_id: str, dimension: str, endpoint: str, component: str, name: str, capacity: int,
             alarm: dict[str, Any]) -> list[AwsRequest]:
    """A step policy setting the copies to `capacity`, fired by the CloudWatch alarm `alarm` on the component."""
    policy = aws_name(endpoint, name, limit=256)
    rising = alarm["ComparisonOperator"].startswith("Greater")
    return [
        AwsRequest("application-autoscaling", "put_scaling_policy", {
            "PolicyName": policy, "ServiceNamespace": "sagemaker", "ResourceId": resource_id,
            "ScalableDimension": dimension, "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ExactCapacity", "MetricAggregationType": "Maximum", "Cooldown": 60,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": capacity} if rising else
                                    {"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": capacity}]}}, endpoint),
        AwsRequest("cloudwatch", "put_metric_alarm", {
            "AlarmName": aws_name(component, name, limit=255), **alarm,
            "AlarmActions": [f"<PolicyARN of {policy}>"]}, endpoint),
    ]


def _no_capacity_alarm(component: str) -> dict[str, Any]:
    """Requests that found no copy: scale out from zero."""
    return {"Namespace": "AWS/SageMaker", "MetricName": "NoCapacityInvocationFailures",
            "Dimensions": [{"Name": "InferenceComponentName", "Value": component}], "Statistic": "Maximum",
            "Period": 30, "EvaluationPeriods": 1, "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing"}


def _idle_alarm(component: str, window_s: int) -> dict[str, Any]:
    """No request at all (served, or refused for want of a copy) for the window, on 5-minute periods: the
    seed's scheduled check. Counting refused requests keeps it from undoing a scale-out from zero."""
    dims = [{"Name": "InferenceComponentName", "Value": component}]

    def stat(qid: str, metric: str) -> dict[str, Any]:
        return {"Id": qid, "ReturnData": False, "MetricStat": {
            "Metric": {"Namespace": "AWS/SageMaker", "MetricName": metric, "Dimensions": dims},
            "Period": CHECK_PERIOD_S, "Stat": "Sum"}}

    return {"Metrics": [stat("served", "Invocations"), stat("refused", "NoCapacityInvocationFailures"),
                        {"Id": "requests", "Expression": "FILL(served, 0) + FILL(refused, 0)",
                         "Label": "requests", "ReturnData": True}],
            "EvaluationPeriods": max(1, math.ceil(window_s / CHECK_PERIOD_S)), "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold", "TreatMissingData": "breaching"}
