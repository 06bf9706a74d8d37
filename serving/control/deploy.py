"""Check SageMaker requests against the AWS API model and send them (boto3); see deploy_requests for shapes.

`check_request` validates a request against botocore's service model beyond what the client checks
(enums, patterns, max bounds); `Deployer` sends deployments with injected boto3 clients (create, or
update_endpoint for an existing endpoint; destroy deletes in reverse order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from serving.control.deploy_requests import (
    DEFAULT_IMAGE,
    DEFAULT_ROLE,
    SHAPES,
    VARIANT,
    AwsRequest,
    EndpointDeployment,
    aws_name,
    build_catalog_deployments,
    build_deployments,
    catalog_image,
    serverless_memory_mb,
)

__all__ = ["DEFAULT_IMAGE", "DEFAULT_ROLE", "SHAPES", "VARIANT", "AwsRequest", "Deployer", "EndpointDeployment",
           "aws_name", "build_catalog_deployments", "build_deployments", "catalog_image", "check_deployments",
           "check_request", "serverless_memory_mb"]


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

    def prune(self, prefix: str, keep: set[str]) -> list[dict[str, Any]]:
        """Delete endpoints named `<prefix>-...` that the current deployments do not contain (a service turned
        OFF, a repacked plan): their inference components, scaling targets and alarms, endpoint, config and
        models. Endpoints of other prefixes are never touched."""
        sm, aas, cw = self.clients["sagemaker"], self.clients["application-autoscaling"], self.clients["cloudwatch"]
        names, token = [], None
        while True:
            page = sm.list_endpoints(NameContains=prefix, MaxResults=100, **({"NextToken": token} if token else {}))
            names += [e["EndpointName"] for e in page["Endpoints"]]
            token = page.get("NextToken")
            if not token:
                break
        done = []
        for name in names:
            if not name.startswith(prefix + "-") or name in keep:
                continue
            config = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
            models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config)
                      .get("ProductionVariants", []) if v.get("ModelName")]
            for comp in self._components(name):
                models.append(sm.describe_inference_component(InferenceComponentName=comp)["Specification"]
                              .get("ModelName", ""))
                self._quietly(aas.deregister_scalable_target, ServiceNamespace="sagemaker",
                              ResourceId=f"inference-component/{comp}",
                              ScalableDimension="sagemaker:inference-component:DesiredCopyCount")
                cw.delete_alarms(AlarmNames=[aws_name(comp, n, limit=255) for n in ("scale-from-zero", "idle-to-zero")])
                sm.delete_inference_component(InferenceComponentName=comp)
            self._quietly(aas.deregister_scalable_target, ServiceNamespace="sagemaker",
                          ResourceId=f"endpoint/{name}/variant/{VARIANT}",
                          ScalableDimension="sagemaker:variant:DesiredInstanceCount")
            sm.delete_endpoint(EndpointName=name)
            self._quietly(sm.delete_endpoint_config, EndpointConfigName=config)
            for model in filter(None, models):
                self._quietly(sm.delete_model, ModelName=model)
            self.log(f"pruned {name}")
            done.append({"operation": "prune", "endpoint": name})
        return done

    def _components(self, endpoint: str) -> list[str]:
        try:
            page = self.clients["sagemaker"].list_inference_components(EndpointNameEquals=endpoint)
        except NotImplementedError:  # a SageMaker stand-in without inference components (moto)
            return []
        return [c["InferenceComponentName"] for c in page.get("InferenceComponents", [])]

    @staticmethod
    def _quietly(call: Callable[..., Any], **params: Any) -> None:
        """A delete whose target may already be gone."""
        try:
            call(**params)
        except Exception as e:
            if not any(s in str(e) for s in ("not found", "No scalable target", "does not exist", "Could not find")):
                raise
