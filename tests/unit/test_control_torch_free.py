"""The gateway and the control plane run on the torch-free core (pyproject `dependencies`, the gateway
image's EXTRAS=core): importing them and building the gateway app must not need the `models` extra.

A fresh interpreter blocks torch, torchvision, transformers and ultralytics with a `sys.meta_path`
finder, so a stray top-level import anywhere on those paths fails here instead of in the gateway image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "torchvision", "transformers", "ultralytics")

PROGRAM = """
import importlib.abc, json, sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the core)", name=name)
        return None


sys.meta_path.insert(0, Blocker())

import serving.cli  # every CLI command module registers without the models extra
import serving.control.api
import serving.control.commands
import serving.control.deploy
import serving.control.plan
import serving.control.selection
import serving.control.service_state
import serving.control.thermal
import serving.router.fanout
import serving.router.pipeline
from serving.config import load_zoo
from serving.services.app import create_app

zoo = load_zoo("zoo.yaml")
app = create_app(zoo, "gateway")
paths = sorted(app.openapi()["paths"])
print(json.dumps({"paths": paths, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_gateway_and_control_plane_import_without_torch(tmp_path):
    shutil.copy(ROOT / "zoo.yaml", tmp_path / "zoo.yaml")  # the gateway's control store lands under tmp_path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(ROOT), DATABASE_URL="sqlite://")
    proc = subprocess.run([sys.executable, "-c", PROGRAM, ",".join(BLOCKED)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    for path in ("/enrich", "/pipeline/frame", "/thermal/models", "/thermal/models/{model_id}", "/select", "/health"):
        assert path in out["paths"], f"the gateway lacks {path}: {out['paths']}"


def test_the_core_dependencies_carry_no_model_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    heavy = {"torch", "torchvision", "transformers", "ultralytics", "onnxruntime", "timm", "safetensors", "tokenizers"}
    assert not core & heavy, f"model libraries in the core: {core & heavy}"
    models = " ".join(extras["models"])
    assert all(h in models for h in heavy), "the models extra lost a model library"
    assert any(d.startswith("zoo-serving[models]") for d in extras["dev"]), "dev must keep everything tests need"
