"""Turn the plan into SageMaker requests (boto3) and, with --apply, send them.

One plan endpoint (services packed on one instance) becomes:
- `create_model`: the BYOC image (serving/sagemaker: GET /ping, POST /invocations on 8080) with the
  zoo's environment (ZOO_SERVICES lists the services the container runs);
- one of three endpoint shapes:
  * serverless — only for CPU-only endpoints within the serverless limits (memory 1024..6144 MB in 1 GB
    steps; serverless inference has no GPU): ProductionVariants[].ServerlessConfig; $0 at idle;
  * scale to zero — endpoints whose models are all COLD/OFF (plan: idle_instances == 0): an instance
    variant with ManagedInstanceScaling MinInstanceCount=0, the model as an inference component, and
    application autoscaling of the component's DesiredCopyCount down to 0 (target tracking) plus a
    step policy with a CloudWatch alarm on NoCapacityInvocationFailures to scale out from zero;
  * always on — endpoints with HOT/WARM models: a classic variant with InitialInstanceCount = the idle
    instance count and autoscaling of DesiredInstanceCount between that and max_instances.
Model and endpoint-config names carry a hash of their content, so a changed plan creates new ones and
`apply` switches an existing endpoint over with update_endpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from serving.config import ZooConfig

SERVERLESS_MAX_MB = 6144
SERVERLESS_STEP_MB = 1024
VARIANT = "AllTraffic"
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/zoo-sagemaker-execution"
DEFAULT_IMAGE = "000000000000.dkr.ecr.us-east-1.amazonaws.com/zoo-serving:latest"


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
    """The requests of one endpoint, in order."""

    endpoint_name: str
    shape: str  # serverless | scale_to_zero | always_on
    requests: list[AwsRequest] = field(default_factory=list)
    model_name: str = ""
    config_name: str = ""
    component_name: str | None = None


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


def serverless_memory_mb(need_gb: float) -> int | None:
    """Serverless memory for a need, or None when it exceeds the serverless limit."""
    mb = max(SERVERLESS_STEP_MB, math.ceil(need_gb * 1024 / SERVERLESS_STEP_MB) * SERVERLESS_STEP_MB)
    return mb if mb <= SERVERLESS_MAX_MB else None


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
) -> list[EndpointDeployment]:
    """The SageMaker requests for every endpoint of a plan (`plan_zoo`), without sending anything."""
    out = []
    for ep in plan["endpoints"]:
        if ep["instance_type"] is None and not ep["cpu_only"]:
            raise ValueError(f"endpoint {ep['endpoint']} fits no instance type; lower its budgets")
        services = ep["services"]
        models = [m for s in services for m in zoo.services[s].models]
        max_instances = max([zoo.models[m].thermal.max_instances for m in models] + [max(1, ep["idle_instances"])])
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
        endpoint_name = aws_name(prefix, ep["endpoint"])
        model_name = aws_name(prefix, ep["endpoint"], _digest(container))
        serverless_mb = serverless_memory_mb(ep["host_need_gb"]) if ep["cpu_only"] else None
        dep = EndpointDeployment(endpoint_name, "", model_name=model_name)
        reqs = dep.requests
        reqs.append(AwsRequest("sagemaker", "create_model", {
            "ModelName": model_name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container}, endpoint_name))
        if serverless_mb is not None:
            dep.shape = "serverless"
            variant = {"VariantName": VARIANT, "ModelName": model_name,
                       "ServerlessConfig": {"MemorySizeInMB": serverless_mb, "MaxConcurrency": max_concurrency}}
            cfg: dict[str, Any] = {"ProductionVariants": [variant]}
        elif ep["scales_to_zero"]:
            dep.shape = "scale_to_zero"
            variant = {"VariantName": VARIANT, "InstanceType": ep["instance_type"], "InitialInstanceCount": 1,
                       "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0,
                                                  "MaxInstanceCount": max_instances},
                       "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}
            cfg = {"ExecutionRoleArn": role_arn, "ProductionVariants": [variant]}
        else:
            dep.shape = "always_on"
            variant = {"VariantName": VARIANT, "ModelName": model_name, "InstanceType": ep["instance_type"],
                       "InitialInstanceCount": max(1, ep["idle_instances"])}
            cfg = {"ProductionVariants": [variant]}
        dep.config_name = aws_name(prefix, ep["endpoint"], _digest(cfg))
        reqs.append(AwsRequest("sagemaker", "create_endpoint_config", {"EndpointConfigName": dep.config_name, **cfg},
                               endpoint_name))
        reqs.append(AwsRequest("sagemaker", "create_endpoint", {
            "EndpointName": endpoint_name, "EndpointConfigName": dep.config_name}, endpoint_name))
        if dep.shape == "scale_to_zero":
            comp = aws_name(prefix, ep["endpoint"], "ic")
            dep.component_name = comp
            gpus = next(i.gpus for i in _instances() if i.name == ep["instance_type"])
            reqs.append(AwsRequest("sagemaker", "create_inference_component", {
                "InferenceComponentName": comp, "EndpointName": endpoint_name, "VariantName": VARIANT,
                "Specification": {"ModelName": model_name, "ComputeResourceRequirements": {
                    "NumberOfAcceleratorDevicesRequired": float(gpus),
                    "MinMemoryRequiredInMb": int(math.ceil(ep["host_need_gb"] * 1024))}},
                "RuntimeConfig": {"CopyCount": 1}}, endpoint_name))
            rid = f"inference-component/{comp}"
            dim = "sagemaker:inference-component:DesiredCopyCount"
            reqs += _autoscaling(rid, dim, 0, max_instances, endpoint_name, comp,
                                 "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution")
        elif dep.shape == "always_on":
            rid = f"endpoint/{endpoint_name}/variant/{VARIANT}"
            reqs += _autoscaling(rid, "sagemaker:variant:DesiredInstanceCount", max(1, ep["idle_instances"]),
                                 max(max_instances, ep["idle_instances"]), endpoint_name, None,
                                 "SageMakerVariantInvocationsPerInstance")
        out.append(dep)
    return out


def _instances():
    from serving.control.instances import INSTANCE_TYPES

    return INSTANCE_TYPES


def _autoscaling(resource_id: str, dimension: str, lo: int, hi: int, endpoint: str, component: str | None,
                 metric: str) -> list[AwsRequest]:
    reqs = [
        AwsRequest("application-autoscaling", "register_scalable_target", {
            "ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": dimension,
            "MinCapacity": lo, "MaxCapacity": hi}, endpoint),
        AwsRequest("application-autoscaling", "put_scaling_policy", {
            "PolicyName": aws_name(endpoint, "target-tracking", limit=256), "ServiceNamespace": "sagemaker",
            "ResourceId": resource_id, "ScalableDimension": dimension, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 5.0 if component else 100.0,
                "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
                "ScaleInCooldown": 300, "ScaleOutCooldown": 60}}, endpoint),
    ]
    if component:  # scale out from zero copies: a step policy fired by requests that found no capacity
        policy = aws_name(endpoint, "scale-from-zero", limit=256)
        reqs.append(AwsRequest("application-autoscaling", "put_scaling_policy", {
            "PolicyName": policy, "ServiceNamespace": "sagemaker", "ResourceId": resource_id,
            "ScalableDimension": dimension, "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Maximum", "Cooldown": 60,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}}, endpoint))
        reqs.append(AwsRequest("cloudwatch", "put_metric_alarm", {
            "AlarmName": aws_name(component, "no-capacity", limit=255),
            "Namespace": "AWS/SageMaker", "MetricName": "NoCapacityInvocationFailures",
            "Dimensions": [{"Name": "InferenceComponentName", "Value": component}],
            "Statistic": "Maximum", "Period": 30, "EvaluationPeriods": 1, "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
            "AlarmActions": [f"<PolicyARN of {policy}>"]}, endpoint))
    return reqs


# --------------------------------------------------------------------------- checking
@lru_cache(maxsize=8)
def _service_model(client: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(client)


def check_request(req: AwsRequest) -> list[str]:
    """Problems of a request against the AWS API model, beyond what botocore's client validates
    (required members, types, min): enums, patterns and max bounds too. [] when valid."""
    model = _service_model(req.client)
    op_name = "".join(p.capitalize() for p in req.operation.split("_"))
    op = model.operation_model(op_name)
    problems: list[str] = []
    _check(op.input_shape, req.params, req.operation, problems)
    return problems


def _check(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    """Append to `problems` what `value` breaks of the botocore `shape` (recursively); one checker per type."""
    checker = _CHECKERS.get(shape.type_name)
    if checker is not None:
        checker(shape, value, where, problems)


def _bounds(meta: dict[str, Any], n: float) -> bool:
    """Inside the shape's [min, max] (either may be absent)."""
    return not ("min" in meta and n < meta["min"] or "max" in meta and n > meta["max"])


def _check_structure(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object")
        return
    for req_name in shape.required_members:
        if req_name not in value:
            problems.append(f"{where}.{req_name}: required")
    for k, v in value.items():
        if k not in shape.members:
            problems.append(f"{where}.{k}: unknown member")
        else:
            _check(shape.members[k], v, f"{where}.{k}", problems)


def _check_list(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    meta = shape.metadata
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list")
        return
    if not _bounds(meta, len(value)):
        problems.append(f"{where}: {len(value)} items outside [{meta.get('min')}, {meta.get('max')}]")
    for i, v in enumerate(value):
        _check(shape.member, v, f"{where}[{i}]", problems)


def _check_map(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    for k, v in (value or {}).items():
        _check(shape.key, k, f"{where}<key>", problems)
        _check(shape.value, v, f"{where}.{k}", problems)


def _check_string(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    meta = shape.metadata
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string")
        return
    if "enum" in meta and value not in meta["enum"]:
        problems.append(f"{where}: {value!r} is not one of the API's values")
    if not _bounds(meta, len(value)):
        problems.append(f"{where}: length {len(value)} outside [{meta.get('min')}, {meta.get('max')}]")
    if "pattern" in meta:
        try:
            ok = re.fullmatch(meta["pattern"], value, flags=re.DOTALL) is not None
        except re.error:  # a Java-only construct: botocore and AWS check it server-side
            ok = True
        if not ok:
            problems.append(f"{where}: {value!r} does not match {meta['pattern']!r}")


def _check_number(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    meta = shape.metadata
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{where}: expected a number")
        return
    if not _bounds(meta, value):
        problems.append(f"{where}: {value} outside [{meta.get('min')}, {meta.get('max')}]")


def _check_boolean(shape: Any, value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, bool):
        problems.append(f"{where}: expected a boolean")


_CHECKERS: dict[str, Callable[[Any, Any, str, list[str]], None]] = {
    "structure": _check_structure,
    "list": _check_list,
    "map": _check_map,
    "string": _check_string,
    "integer": _check_number,
    "long": _check_number,
    "float": _check_number,
    "double": _check_number,
    "boolean": _check_boolean,
}


def check_deployments(deployments: list[EndpointDeployment]) -> list[str]:
    return [p for d in deployments for r in d.requests for p in check_request(r)]


# --------------------------------------------------------------------------- sending
def _exists(exc: Exception) -> bool:
    msg = str(exc)
    return "already exist" in msg.lower() or "Cannot create already existing" in msg


class Deployer:
    """Sends deployments with boto3 clients (injected: `clients[name]`). Idempotent: content-hashed
    models/configs are created once; an existing endpoint is switched with update_endpoint."""

    def __init__(self, clients: dict[str, Any], *, wait_in_service: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> None:
        self.clients = clients
        self.wait_in_service = wait_in_service
        self.log = log

    def _endpoint_exists(self, name: str) -> bool:
        sm = self.clients["sagemaker"]
        try:
            sm.describe_endpoint(EndpointName=name)
            return True
        except sm.exceptions.ClientError as e:
            if "Could not find" in str(e) or "does not exist" in str(e) or "ValidationException" in str(e):
                return False
            raise

    def apply(self, deployments: list[EndpointDeployment]) -> list[dict[str, Any]]:
        done = []
        for dep in deployments:
            exists = self._endpoint_exists(dep.endpoint_name)
            policy_arns: dict[str, str] = {}
            for req in dep.requests:
                client = self.clients[req.client]
                params = json.loads(json.dumps(req.params))
                op = req.operation
                if op == "create_endpoint" and exists:
                    op = "update_endpoint"
                if op == "create_inference_component" and self.wait_in_service:
                    client.get_waiter("endpoint_in_service").wait(EndpointName=dep.endpoint_name)
                if op == "put_metric_alarm":
                    params["AlarmActions"] = [policy_arns.get(a.removeprefix("<PolicyARN of ").rstrip(">"), a)
                                              for a in params["AlarmActions"]]
                try:
                    resp = getattr(client, op)(**params)
                except Exception as e:
                    if op in ("create_model", "create_endpoint_config", "create_inference_component") and _exists(e):
                        self.log(f"{op} {dep.endpoint_name}: exists, kept")
                        continue
                    raise
                if op == "put_scaling_policy":
                    policy_arns[params["PolicyName"]] = resp.get("PolicyARN", "")
                self.log(f"{op} {dep.endpoint_name}")
                done.append({"operation": op, "endpoint": dep.endpoint_name})
        return done

    def destroy(self, deployments: list[EndpointDeployment]) -> list[dict[str, Any]]:
        """Delete components, endpoints, configs and models of these deployments (missing ones skipped)."""
        sm = self.clients["sagemaker"]
        done = []
        for dep in deployments:
            for req in dep.requests:  # autoscaling and alarms first: they reference the endpoint
                try:
                    if req.operation == "register_scalable_target":
                        self.clients[req.client].deregister_scalable_target(**{
                            k: req.params[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")})
                        done.append({"operation": "deregister_scalable_target", "endpoint": dep.endpoint_name})
                    elif req.operation == "put_metric_alarm":
                        self.clients[req.client].delete_alarms(AlarmNames=[req.params["AlarmName"]])
                        done.append({"operation": "delete_alarms", "endpoint": dep.endpoint_name})
                except Exception as e:
                    if "not found" in str(e).lower() or "No scalable target" in str(e) or "does not exist" in str(e):
                        continue
                    raise
            calls: list[tuple[str, dict[str, Any]]] = []
            if dep.component_name:
                calls.append(("delete_inference_component", {"InferenceComponentName": dep.component_name}))
            calls += [("delete_endpoint", {"EndpointName": dep.endpoint_name}),
                      ("delete_endpoint_config", {"EndpointConfigName": dep.config_name}),
                      ("delete_model", {"ModelName": dep.model_name})]
            for op, params in calls:
                try:
                    getattr(sm, op)(**params)
                    done.append({"operation": op, "endpoint": dep.endpoint_name})
                except sm.exceptions.ClientError as e:
                    if "Could not find" in str(e) or "does not exist" in str(e):
                        continue
                    raise
        return done
