"""zoo.yaml validation and the seed's environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import Priority, load_zoo
from serving.errors import ConfigError, UnsafePath

ZOO = Path(__file__).resolve().parents[2] / "zoo.yaml"
SEED_003_MODELS = {
    "yolo26": 2000, "nemotron": 14700, "florence2": 1200, "clip_vit_l": 800, "threat_detector": 300,
    "pose_estimator": 200, "vitpose": 1500, "demographics_age": 200, "demographics_gender": 200,
    "fashion_clip": 800, "vehicle_classifier": 1500, "pet_classifier": 200, "person_reid": 100,
    "vehicle_damage": 2000, "depth_estimator": 150, "action_recognizer": 2000, "segformer_clothes": 1500,
    "weather_classifier": 200, "violence_classifier": 500, "license_plate": 300, "face_detector": 200,
    "yolo_world": 1500, "plate_ocr": 100,  # seed: paddleocr 100MB
}


def write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(ZOO.read_text())
    mutate(raw)
    p = tmp_path / "zoo.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_repo_zoo_is_valid_and_has_seed_figures():
    zoo = load_zoo(ZOO, env={})
    for name, mb in SEED_003_MODELS.items():
        assert zoo.models[name].vram_mb == mb, name
    assert zoo.models["threat_detector"].priority == Priority.CRITICAL
    assert zoo.models["depth_estimator"].priority == Priority.LOW
    assert zoo.models["action_recognizer"].priority == Priority.LOW
    assert {s: v.port for s, v in zoo.services.items()} == {
        "detection": 8095, "llm": 8091, "florence": 8092, "clip": 8093, "enrichment": 8094,
        "enrichment-light": 8096, "gateway": 8090}
    assert zoo.services["enrichment"].vram_budget_gb == 6.0 and zoo.services["enrichment-light"].gpu == 1
    assert zoo.models_root.is_absolute()


def test_triggers_by_detection_type_and_class():
    zoo = load_zoo(ZOO, env={})
    person = zoo.models_for_detection("person")
    assert {"threat_detector", "pose_estimator", "person_reid", "fashion_clip"} <= set(person)
    assert "depth_estimator" not in person  # gated by the include_depth option
    assert "depth_estimator" in zoo.models_for_detection("person", {"include_depth": True})
    assert set(zoo.models_for_detection("dog")) == {"pet_classifier"}
    car = zoo.models_for_detection("car", service="enrichment")
    assert {"vehicle_classifier", "vehicle_damage", "license_plate"} <= set(car)
    assert "vehicle_damage" not in zoo.models_for_detection("bicycle")


def test_env_overrides(tmp_path):
    (tmp_path / "models" / "vehicle-v2").mkdir(parents=True)
    p = write(tmp_path, lambda raw: raw.update(models_root="./models"))
    zoo = load_zoo(p, service="enrichment", env={
        "VRAM_BUDGET_GB": "3.5", "PORT": "9000", "VEHICLE_MODEL_PATH": str(tmp_path / "models" / "vehicle-v2"),
        "YOLO26_CONFIDENCE": "0.3", "ENRICHMENT_POSE_SERVICE": "heavy"})
    assert zoo.services["enrichment"].vram_budget_gb == 3.5 and zoo.services["enrichment"].port == 9000
    assert zoo.services["enrichment-light"].vram_budget_gb == 1.2  # only the served service
    assert zoo.models["vehicle_classifier"].source == {"hf": "vehicle-v2"}
    assert zoo.models["yolo26"].options["confidence"] == 0.3
    assert zoo.service_of("pose_estimator") == "enrichment"


def test_env_path_outside_models_root_is_rejected(tmp_path):
    p = write(tmp_path, lambda raw: raw.update(models_root="./models"))
    with pytest.raises(UnsafePath):
        load_zoo(p, env={"VEHICLE_MODEL_PATH": "/etc"})


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: r["models"]["yolo26"].update(vram_mb=-1), "models.yolo26.vram_mb"),
        (lambda r: r["models"]["yolo26"].update(priority="URGENT"), "use CRITICAL, HIGH, MEDIUM or LOW"),
        (lambda r: r["models"]["yolo26"]["source"].update(pt="../../etc/passwd"), "must not contain '..'"),
        (lambda r: r["models"]["yolo26"]["source"].update(pt="/abs/model.pt"), "relative to models_root"),
        (lambda r: r["services"]["enrichment"]["models"].append("ghost"), "unknown model 'ghost'"),
        (lambda r: r["services"]["clip"].update(port=8095), "already used"),
        (lambda r: r["services"]["enrichment-light"].update(vram_budget_gb=0.1), "exceeds services.enrichment-light"),
        (lambda r: r["models"]["yolo26"].update(colour="red"), "models.yolo26.colour"),
        (lambda r: r["models"]["yolo26"]["thermal"].update(min_instances=5, max_instances=1), "min_instances"),
    ],
)
def test_invalid_zoo_fails_with_field_path_and_fix(tmp_path, mutate, fragment):
    with pytest.raises(ConfigError) as ei:
        load_zoo(write(tmp_path, mutate), env={})
    assert fragment in ei.value.message


def test_bad_env_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="VRAM_BUDGET_GB"):
        load_zoo(ZOO, service="enrichment", env={"VRAM_BUDGET_GB": "lots"})
    with pytest.raises(ConfigError, match="ENRICHMENT_POSE_SERVICE"):
        load_zoo(ZOO, env={"ENRICHMENT_POSE_SERVICE": "medium"})


def test_zoo_validate_cli(tmp_path):
    from typer.testing import CliRunner

    from serving.cli import app

    ok = CliRunner().invoke(app, ["validate", "--zoo", str(ZOO)])
    assert ok.exit_code == 0 and "enrichment" in ok.output
    bad_zoo = write(tmp_path, lambda r: r["models"]["yolo26"].update(vram_mb=0))
    bad = CliRunner().invoke(app, ["validate", "--zoo", str(bad_zoo)])
    assert bad.exit_code == 2 and "models.yolo26.vram_mb" in bad.output


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda r: r["models"]["yolo26"].update(family="yolov99"), ["models.yolo26.family", "yolo", "causal_lm"]),
        (lambda r: r["models"]["yolo26"].update(task="dance"), ["models.yolo26.task", "detect, pose, segment"]),
        (lambda r: r["services"]["enrichment"].update(policy="fifo"), ["services.enrichment.policy", "priority-gdsf"]),
    ],
)
def test_unknown_family_task_or_policy_is_a_config_error_naming_the_allowed_values(tmp_path, mutate, fragments):
    with pytest.raises(ConfigError) as ei:
        load_zoo(write(tmp_path, mutate), env={})
    for fragment in fragments:
        assert fragment in ei.value.message


def test_every_zoo_family_and_task_is_in_the_torch_free_table():
    from serving.adapters.registry import _BUILTIN, FAMILY_TASKS

    assert set(FAMILY_TASKS) == set(_BUILTIN)
    zoo = load_zoo(ZOO, env={})
    assert all(m.task in FAMILY_TASKS[m.family] for m in zoo.models.values())


def test_overrides_come_from_settings_not_the_process_environment(tmp_path, monkeypatch):
    from serving.settings import Settings

    monkeypatch.setenv("VRAM_BUDGET_GB", "99")  # ignored: the settings given win
    zoo = load_zoo(ZOO, service="enrichment", settings=Settings.from_env({"VRAM_BUDGET_GB": "3.5"}))
    assert zoo.services["enrichment"].vram_budget_gb == 3.5


def test_manager_settings_map_one_to_one_onto_the_manager_constructor():
    import inspect

    from serving.config import ManagerSettings, ServiceSpec
    from serving.vram.manager import OnDemandModelManager

    kwargs = ManagerSettings().manager_kwargs()
    assert len(kwargs) == len(ManagerSettings.model_fields)  # every setting reaches the manager
    assert set(kwargs) <= set(inspect.signature(OnDemandModelManager.__init__).parameters)
    svc = ServiceSpec(kind="detection", port=1, max_inflight=2, max_queue=3, vram_budget_gb=1)
    assert svc.manager_settings().manager_kwargs()["max_queue"] == 3


def test_scheduler_deadlines_default_per_class_and_partial_overrides(tmp_path):
    zoo = load_zoo(ZOO, env={})
    assert [zoo.scheduler.deadline_s(p) for p in Priority] == [0.25, 1.0, 2.0, 5.0]
    assert zoo.models["threat_detector"].max_batch == 16  # the default chunk of a grouped call

    def mutate(raw):
        raw["scheduler"] = {"deadline_ms": {"low": 800}}
        raw["models"]["depth_estimator"]["max_batch"] = 4

    zoo = load_zoo(write(tmp_path, mutate), env={})
    assert zoo.scheduler.deadline_ms == {"CRITICAL": 250.0, "HIGH": 1000.0, "MEDIUM": 2000.0, "LOW": 800.0}
    assert zoo.models["depth_estimator"].max_batch == 4


@pytest.mark.parametrize(("deadlines", "message"), [
    ({"URGENT": 10}, "unknown priority class"),
    ({"HIGH": -1}, "deadline_ms.HIGH"),
    ({"LOW": "soon"}, "deadline_ms.LOW"),
])
def test_scheduler_deadlines_are_validated_with_what_to_change(tmp_path, deadlines, message):
    path = write(tmp_path, lambda raw: raw.__setitem__("scheduler", {"deadline_ms": deadlines}))
    with pytest.raises(ConfigError) as ei:
        load_zoo(path, env={})
    assert "scheduler" in ei.value.message and message in ei.value.message


def test_zoo_validate_prints_the_scheduler_deadlines():
    from typer.testing import CliRunner

    from serving.cli import app

    res = CliRunner().invoke(app, ["validate", "--zoo", str(ZOO)])
    assert res.exit_code == 0, res.output
    assert "scheduler: model-major on" in res.output and "LOW 5000 ms" in " ".join(res.output.split())
