"""`zoo deploy`: every request validated against the real AWS API model (botocore Stubber validates the
parameters with the service model before answering), and the create/describe/delete flow on moto."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ParamValidationError
from botocore.stub import Stubber
from moto import mock_aws

from serving.config import ZooConfig, load_zoo
from serving.control.deploy import (
    AwsRequest,
    Deployer,
    aws_name,
    build_deployments,
    check_deployments,
    check_request,
    serverless_memory_mb,
)
from serving.control.plan import plan_zoo

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/zoo-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/zoo-serving:1.0"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:{}/x"

RESPONSES = {
    "create_model": {"ModelArn": ARN.format("model")},
    "create_endpoint_config": {"EndpointConfigArn": ARN.format("endpoint-config")},
    "create_endpoint": {"EndpointArn": ARN.format("endpoint")},
    "update_endpoint": {"EndpointArn": ARN.format("endpoint")},
    "create_inference_component": {"InferenceComponentArn": ARN.format("inference-component")},
    "register_scalable_target": {},
    "put_scaling_policy": {"PolicyARN": "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:p"},
    "put_metric_alarm": {},
}


def clients():
    kw = dict(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    return {n: boto3.client(n, **kw) for n in ("sagemaker", "application-autoscaling", "cloudwatch")}


def small_zoo(*, device: str = "auto", state: str = "HOT", budget_gb: float = 2.0, host_gb: float = 1.0) -> ZooConfig:
    return ZooConfig.model_validate({
        "models_root": "/tmp/zoo-deploy-tests",
        "services": {"det": {"kind": "detection", "port": 18095, "device": device, "vram_budget_gb": budget_gb,
                             "host_cache_gb": host_gb, "models": ["m"], "required_models": ["m"]}},
        "models": {"m": {"family": "yolo", "task": "detect", "source": {"pt": "m.pt"}, "vram_mb": 500,
                         "thermal": {"default_state": state, "min_instances": 1 if state == "HOT" else 0,
                                     "max_instances": 2}}},
    })


def deployments_of(zoo, states=None, keep_idle=False):
    return build_deployments(zoo, plan_zoo(zoo, states, keep_idle=keep_idle), image=IMAGE, role_arn=ROLE,
                             keep_idle=keep_idle)


def all_shapes():
    zoo = load_zoo(ROOT / "zoo.yaml")
    deps = deployments_of(zoo) + deployments_of(zoo, {m: "COLD" for m in zoo.models})
    deps += deployments_of(zoo, keep_idle=True)
    deps += deployments_of(small_zoo(device="cpu", state="COLD", budget_gb=1.0, host_gb=1.0))
    return deps


def test_every_request_is_valid_for_the_aws_api_model():
    deps = all_shapes()
    assert {d.shape for d in deps} == {"always_on", "scale_to_zero", "scheduled_zero", "serverless"}
    cs = clients()
    stubs = {n: Stubber(c) for n, c in cs.items()}
    for s in stubs.values():
        s.activate()
    assert check_deployments(deps) == []  # enums, patterns, max bounds: what botocore's client does not check
    n = 0
    for dep in deps:
        for req in dep.requests:
            stubs[req.client].add_response(req.operation, RESPONSES[req.operation], expected_params=req.params)
            getattr(cs[req.client], req.operation)(**req.params)  # raises ParamValidationError when invalid
            n += 1
    for s in stubs.values():
        s.assert_no_pending_responses()
    assert n >= 20


def test_the_validation_is_real():
    cs = clients()
    with Stubber(cs["sagemaker"]) as stub:
        stub.add_response("create_endpoint_config", RESPONSES["create_endpoint_config"])
        with pytest.raises(ParamValidationError):  # botocore: required members, types, unknown keys, min
            cs["sagemaker"].create_endpoint_config(EndpointConfigName="x", ProductionVariants=[
                {"VariantName": "v", "ModelName": "m", "ServerlessConfig": {"MemorySizeInMB": 2048}}])
    bad = AwsRequest("sagemaker", "create_endpoint_config", {"EndpointConfigName": "bad_name!", "ProductionVariants": [
        {"VariantName": "v", "InstanceType": "ml.g5.3xlarge", "InitialInstanceCount": 1,
         "ServerlessConfig": {"MemorySizeInMB": 8192, "MaxConcurrency": 1}}]})
    problems = "\n".join(check_request(bad))
    assert "ml.g5.3xlarge" in problems and "8192" in problems and "bad_name!" in problems


def test_shapes_follow_the_thermal_states():
    zoo = load_zoo(ROOT / "zoo.yaml")
    deps = deployments_of(zoo)  # shipped zoo.yaml: HOT detector/LLM/Florence/CLIP, the rest COLD
    assert {d.shape for d in deps} == {"scheduled_zero"} and sum(d.idle_cost_per_hour() for d in deps) == 0.0
    cold = deployments_of(zoo, {m: "COLD" for m in zoo.models})
    assert {d.shape for d in cold} == {"scale_to_zero"}
    stz = cold[0]
    ops = [r.operation for r in stz.requests]
    assert ops == ["create_model", "create_endpoint_config", "create_endpoint", "create_inference_component",
                   "register_scalable_target", "put_scaling_policy", "put_scaling_policy", "put_metric_alarm",
                   "put_scaling_policy", "put_metric_alarm"]
    variant = stz.requests[1].params["ProductionVariants"][0]
    assert variant["ManagedInstanceScaling"]["MinInstanceCount"] == 0 and "ModelName" not in variant
    assert stz.requests[4].params["MinCapacity"] == 0
    # scale-in after the model's scaleToZeroAfterMinutes (keep_alive_s 900 s = 15 min), not a fixed 300 s
    tt = stz.requests[5].params["TargetTrackingScalingPolicyConfiguration"]
    assert tt["ScaleInCooldown"] == 900 and "DisableScaleIn" not in tt
    idle_alarm = stz.requests[9].params
    metrics = {q["Id"]: q for q in idle_alarm["Metrics"]}
    assert metrics["served"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert metrics["served"]["MetricStat"]["Period"] == 300 and idle_alarm["EvaluationPeriods"] == 3  # 15 min
    assert metrics["refused"]["MetricStat"]["Metric"]["MetricName"] == "NoCapacityInvocationFailures"
    assert idle_alarm["TreatMissingData"] == "breaching" and idle_alarm["ComparisonOperator"] == "LessThanThreshold"
    to_zero = stz.requests[8].params["StepScalingPolicyConfiguration"]
    assert to_zero["AdjustmentType"] == "ExactCapacity" and to_zero["StepAdjustments"][0]["ScalingAdjustment"] == 0
    model = stz.requests[0].params["PrimaryContainer"]
    assert model["Image"] == IMAGE and "ZOO_SERVICES" in model["Environment"]
    # WARM/HOT: started at the floor, scale-out only while active, to zero by the idle alarm
    hot = next(d for d in deps if "detection" in d.endpoint_name)
    assert hot.requests[3].params["RuntimeConfig"]["CopyCount"] == 2  # HOT: min 1 + buffer 1
    assert hot.requests[5].params["TargetTrackingScalingPolicyConfiguration"]["DisableScaleIn"] is True
    assert hot.requests[6].params["StepScalingPolicyConfiguration"]["StepAdjustments"][0]["ScalingAdjustment"] == 2
    # keep_idle: the classic always-on variant, whose idle cost the requests themselves show
    kept = deployments_of(zoo, keep_idle=True)
    always = next(d for d in kept if d.shape == "always_on")
    assert always.idle_instances() == always.requests[1].params["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert always.idle_cost_per_hour() == pytest.approx(2 * always.billed_per_hour)
    # serverless only where it fits its limits: CPU only and <= 6 GB
    assert serverless_memory_mb(0.5) == 1024 and serverless_memory_mb(6.0) == 6144 and serverless_memory_mb(6.1) is None
    big_cpu = small_zoo(device="cpu", state="COLD", budget_gb=4.0, host_gb=4.0)
    assert deployments_of(big_cpu)[0].shape == "scale_to_zero"  # 8 GB > serverless limit
    assert deployments_of(small_zoo(device="cpu", state="COLD", budget_gb=1, host_gb=1))[0].shape == "serverless"


def test_names_are_valid_and_content_hashed():
    assert aws_name("zoo", "a_b", "c") == "zoo-a-b-c"
    long = aws_name("zoo", "x" * 100)
    assert len(long) <= 63 and long != aws_name("zoo", "x" * 99)
    a = deployments_of(small_zoo())[0]
    b = build_deployments(small_zoo(), plan_zoo(small_zoo()), image=IMAGE + "-new", role_arn=ROLE)[0]
    assert a.endpoint_name == b.endpoint_name and a.model_name != b.model_name


def test_apply_updates_an_existing_endpoint():
    dep = deployments_of(small_zoo(), keep_idle=True)[0]
    cs = clients()
    with Stubber(cs["sagemaker"]) as sm, Stubber(cs["application-autoscaling"]) as aas:
        sm.add_response("describe_endpoint", {
            "EndpointName": dep.endpoint_name, "EndpointArn": ARN.format("endpoint"), "EndpointConfigName": "old",
            "EndpointStatus": "InService", "CreationTime": dt.datetime(2026, 1, 1),
            "LastModifiedTime": dt.datetime(2026, 1, 1)},
            {"EndpointName": dep.endpoint_name})
        sm.add_response("create_model", RESPONSES["create_model"], dep.requests[0].params)
        sm.add_response("create_endpoint_config", RESPONSES["create_endpoint_config"], dep.requests[1].params)
        sm.add_response("update_endpoint", RESPONSES["update_endpoint"],
                        {"EndpointName": dep.endpoint_name, "EndpointConfigName": dep.config_name})
        aas.add_response("register_scalable_target", {}, dep.requests[3].params)
        aas.add_response("put_scaling_policy", RESPONSES["put_scaling_policy"], dep.requests[4].params)
        done = Deployer(cs).apply([dep])
        sm.assert_no_pending_responses()
        aas.assert_no_pending_responses()
    assert [d["operation"] for d in done][:3] == ["create_model", "create_endpoint_config", "update_endpoint"]


def test_scale_to_zero_apply_waits_for_the_endpoint_and_wires_the_alarm_to_the_policy():
    dep = deployments_of(small_zoo(state="COLD"))[0]
    assert dep.shape == "scale_to_zero"
    cs = clients()
    policy_arn = "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:from-zero"
    with Stubber(cs["sagemaker"]) as sm, Stubber(cs["application-autoscaling"]) as aas, Stubber(cs["cloudwatch"]) as cw:
        sm.add_client_error("describe_endpoint", "ValidationException", f"Could not find endpoint {dep.endpoint_name}")
        for r in dep.requests[:3]:
            sm.add_response(r.operation, RESPONSES[r.operation], r.params)
        sm.add_response("describe_endpoint", {  # the endpoint_in_service waiter
            "EndpointName": dep.endpoint_name, "EndpointArn": ARN.format("endpoint"),
            "EndpointConfigName": dep.config_name,
            "EndpointStatus": "InService", "CreationTime": dt.datetime(2026, 1, 1),
            "LastModifiedTime": dt.datetime(2026, 1, 1)},
            {"EndpointName": dep.endpoint_name})
        sm.add_response("create_inference_component", RESPONSES["create_inference_component"], dep.requests[3].params)
        aas.add_response("register_scalable_target", {}, dep.requests[4].params)
        aas.add_response("put_scaling_policy", RESPONSES["put_scaling_policy"], dep.requests[5].params)
        aas.add_response("put_scaling_policy", {"PolicyARN": policy_arn}, dep.requests[6].params)
        cw.add_response("put_metric_alarm", {}, dict(dep.requests[7].params, AlarmActions=[policy_arn]))
        aas.add_response("put_scaling_policy", {"PolicyARN": policy_arn + "-idle"}, dep.requests[8].params)
        cw.add_response("put_metric_alarm", {}, dict(dep.requests[9].params, AlarmActions=[policy_arn + "-idle"]))
        Deployer(cs).apply([dep])
        for s in (sm, aas, cw):
            s.assert_no_pending_responses()


@pytest.mark.parametrize("device,state,shape", [("auto", "HOT", "always_on"), ("cpu", "COLD", "serverless")])
def test_create_describe_delete_on_moto(device, state, shape):
    """moto's SageMaker lists no g5 types and has no update_endpoint nor inference components: the flow runs
    on a zoo it can hold (ml.g4dn.xlarge always-on, and serverless); update is covered by the Stubber tests."""
    zoo = small_zoo(device=device, state=state, budget_gb=1.0, host_gb=1.0)
    deps = deployments_of(zoo, keep_idle=True)
    assert [d.shape for d in deps] == [shape]
    with mock_aws():
        cs = {n: boto3.client(n, region_name=REGION) for n in ("sagemaker", "application-autoscaling", "cloudwatch")}
        Deployer(cs).apply(deps)
        sm = cs["sagemaker"]
        d = sm.describe_endpoint(EndpointName=deps[0].endpoint_name)
        assert d["EndpointConfigName"] == deps[0].config_name and d["EndpointStatus"] == "InService"
        cfg = sm.describe_endpoint_config(EndpointConfigName=deps[0].config_name)["ProductionVariants"][0]
        if shape == "always_on":
            # HOT = min_instances 1 + a buffer of 1, within max_instances 2
            assert cfg["InstanceType"] == "ml.g4dn.xlarge" and cfg["InitialInstanceCount"] == 2
            targets = cs["application-autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")
            t = targets["ScalableTargets"][0]
            assert (t["MinCapacity"], t["MaxCapacity"]) == (2, 2)
        else:
            # budget 1 GB + headroom 0.25 GB + warm tier 1 GB = 2.25 GB -> the next 1 GB step
            assert cfg["ServerlessConfig"]["MemorySizeInMB"] == 3072
        model = sm.describe_model(ModelName=deps[0].model_name)
        assert model["PrimaryContainer"]["Image"] == IMAGE
        destroyed = [d["operation"] for d in Deployer(cs).destroy(deps)]
        assert destroyed[-3:] == ["delete_endpoint", "delete_endpoint_config", "delete_model"]
        assert ("deregister_scalable_target" in destroyed) == (shape == "always_on")
        targets = cs["application-autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")
        assert targets["ScalableTargets"] == []
        with pytest.raises(sm.exceptions.ClientError):
            sm.describe_endpoint(EndpointName=deps[0].endpoint_name)
        assert sm.list_models()["Models"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
        assert Deployer(cs).destroy(deps) == []  # nothing left: deleting again is a no-op
