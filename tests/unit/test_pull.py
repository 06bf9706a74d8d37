"""`zoo pull` against a fake hub on loopback (never a live hub).

The fake implements the endpoints huggingface_hub calls: repo info (`/api/models/{repo}/revision/{rev}`),
the recursive tree listing (`/api/models/{repo}/tree/{rev}`) and HEAD/GET of
`/{repo}/resolve/{rev}/{file}` with the commit, etag and size headers. Repos are folders on disk; the
hub's content for an hf repo is a real fixture checkpoint, so the pulled model must load and predict
through the same adapter.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """repos: {repo_id: folder}; records every request path."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _files(self, repo):
                root = hub.repos[repo]
                return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}

            def _send(self, code, body=b"", headers=None, head=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, head=False):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

            def _route(self, head):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                m = re.fullmatch(r"/api/models/(.+?)/revision/([^/]+)", path)
                if m and m.group(1) in hub.repos:
                    repo = m.group(1)
                    return self._json({"id": repo, "modelId": repo, "sha": SHA, "private": False,
                                       "siblings": [{"rfilename": f} for f in self._files(repo)]}, head)
                m = re.fullmatch(r"/api/models/(.+?)/tree/([^/]+)", path)
                if m and m.group(1) in hub.repos:
                    files = self._files(m.group(1))
                    listing = [{"type": "file", "path": f, "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()]
                    return self._json(listing, head)
                m = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
                if m and m.group(1) in hub.repos:
                    files = self._files(m.group(1))
                    if m.group(3) in files:
                        data = files[m.group(3)].read_bytes()
                        etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                        return self._send(200, data, {"X-Repo-Commit": SHA, "ETag": etag,
                                                      "Content-Type": "application/octet-stream"}, head)
                return self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Isolate huggingface_hub from any user cache/token and from the real hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


def _spec(**kw):
    from serving.config import ModelSpec

    return ModelSpec(**{"task": "classify", "vram_mb": 1, **kw})


def _write_zoo(path: Path, models: dict) -> Path:
    path.write_text(yaml.safe_dump({"models_root": "./models", "services": {}, "models": models}))
    return path


def _hf_repo(root: Path) -> Path:
    """A hub repo holding a real (tiny) ViT age classifier checkpoint, plus files pull must not fetch."""
    from serving.fixtures.hf import build_image_classifier

    spec = _spec(family="hf_image_classifier", source={"hf": "repo"}, options={"arch": "vit", "labels": "age"})
    build_image_classifier("age", spec, root)
    repo = root / "repo"
    (repo / "README.md").write_text("# model card\n")
    (repo / "pytorch_model.bin").write_bytes(b"pickle, never fetched when safetensors exist")
    (repo / "modeling_custom.py").write_text("raise SystemExit('remote code must never be fetched')\n")
    (repo / "onnx").mkdir()
    (repo / "onnx" / "model.onnx").write_bytes(b"not fetched: subfolder")
    return repo


def test_pull_hf_repo_replaces_fixture_and_loads(hub_env):
    from rich.console import Console

    from serving.adapters.registry import AdapterRegistry
    from serving.config import load_zoo
    from serving.fixtures.pull import MARKER, pull_command
    from serving.vram.devices import CpuDevice

    repo = _hf_repo(hub_env / "hub")
    zoo_path = _write_zoo(hub_env / "zoo.yaml", {
        "age": {"family": "hf_image_classifier", "task": "classify", "source": {"hf": "vit-age"},
                "hf_id": "acme/vit-age", "vram_mb": 200, "options": {"arch": "vit", "labels": "age"}},
    })
    target = hub_env / "models" / "vit-age"
    target.mkdir(parents=True)
    (target / "processor_config.json").write_text("{}")  # a stale fixture file the pull must not leave behind
    console = Console(record=True, width=120)
    with FakeHub({"acme/vit-age": repo}) as hub:
        results = pull_command(zoo_path, endpoint=hub.url, console=console)
        assert results == {"age": f"pulled acme/vit-age@{SHA[:12]}"}
        fetched = sorted(p for _, p in hub.requests if "/resolve/" in p)
        again = pull_command(zoo_path, endpoint=hub.url, console=console)
    assert again == {"age": "up to date"}
    names = {Path(p).name for p in fetched}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert not (target / "processor_config.json").exists()
    assert not (target / "pytorch_model.bin").exists() and not (target / "modeling_custom.py").exists()
    assert json.loads((target / MARKER).read_text())["sha"] == SHA
    assert (target / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert "age" in console.export_text()

    zoo = load_zoo(zoo_path, env={})
    adapter = AdapterRegistry().create("age", zoo.models["age"], zoo.models_root, CpuDevice())
    adapter.load()
    from PIL import Image

    out = adapter.predict([Image.new("RGB", (40, 40), (10, 200, 30))])
    assert out[0]["age_range"] in {"0-12", "13-17", "18-24", "25-35", "36-50", "51-65", "65+"}


def test_pull_converts_pickle_only_repo(hub_env):
    import torch
    from safetensors.torch import load_file

    from serving.fixtures.pull import pull_model

    repo = _hf_repo(hub_env / "hub")
    state = load_file(repo / "model.safetensors")
    (repo / "model.safetensors").unlink()
    torch.save(state, repo / "pytorch_model.bin")
    spec = _spec(family="hf_image_classifier", source={"hf": "vit-age"}, hf_id="acme/vit-age",
                 options={"arch": "vit", "labels": "age"})
    root = hub_env / "models"
    with FakeHub({"acme/vit-age": repo}) as hub:
        assert pull_model("age", spec, root, endpoint=hub.url).startswith("pulled")
    converted = load_file(root / "vit-age" / "model.safetensors")
    assert set(converted) == set(state) and all(torch.equal(converted[k], state[k]) for k in state)
    assert not (root / "vit-age" / "pytorch_model.bin").exists()


def test_pull_refuses_remote_code_and_keeps_existing(hub_env):
    from serving.fixtures.pull import PullError, pull_model

    repo = hub_env / "hub" / "custom"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"model_type": "florence2_custom",
                                                  "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    (repo / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    spec = _spec(family="florence2", task="vlm", source={"hf": "flo"}, hf_id="acme/custom")
    root = hub_env / "models"
    (root / "flo").mkdir(parents=True)
    (root / "flo" / "config.json").write_text('{"keep": true}')
    with FakeHub({"acme/custom": repo}) as hub, pytest.raises(PullError, match="trust_remote_code"):
        pull_model("flo", spec, root, endpoint=hub.url)
    assert json.loads((root / "flo" / "config.json").read_text()) == {"keep": True}


def test_pull_file_sources_and_native_repo_mapping(hub_env):
    from serving.fixtures.pull import PullError, pull_model, repo_of

    assert repo_of(_spec(family="florence2", source={"hf": "f"}, hf_id="microsoft/Florence-2-large")) == \
        "florence-community/Florence-2-large"
    repo = hub_env / "hub" / "yolo"
    repo.mkdir(parents=True)
    (repo / "weights.pt").write_bytes(b"pt-bytes")
    (repo / "face.onnx").write_bytes(b"onnx-bytes")
    spec = _spec(family="yolo", task="detect", hf_id="acme/face",
                 source={"engine": "face/face.engine", "onnx": "face/face.onnx", "pt": "face/face.pt"},
                 options={"pull_files": {"pt": "weights.pt"}})
    root = hub_env / "models"
    with FakeHub({"acme/face": repo}) as hub:
        assert pull_model("face", spec, root, endpoint=hub.url).startswith("pulled acme/face@")
        assert (root / "face" / "face.pt").read_bytes() == b"pt-bytes"
        assert (root / "face" / "face.onnx").read_bytes() == b"onnx-bytes"
        assert not (root / "face" / "face.engine").exists()  # engines are built on the GPU, never pulled
        bad = _spec(family="yolo", task="detect", hf_id="acme/face", source={"pt": "plate/plate.pt"})
        with pytest.raises(PullError, match="pull_files"):
            pull_model("plate", bad, root, endpoint=hub.url)


def test_pull_command_reports_failures_without_stopping(hub_env):
    from rich.console import Console

    from serving.fixtures.pull import pull_command

    zoo_path = _write_zoo(hub_env / "zoo.yaml", {
        "missing": {"family": "hf_image_classifier", "task": "classify", "source": {"hf": "m"},
                    "hf_id": "acme/missing", "vram_mb": 1, "options": {"arch": "vit", "labels": "age"}},
        "local": {"family": "osnet", "task": "reid", "source": {"safetensors": "o/model.safetensors"}, "vram_mb": 1},
    })
    with FakeHub({}) as hub:
        results = pull_command(zoo_path, endpoint=hub.url, console=Console(record=True))
    assert list(results) == ["missing"]  # models without an hf_id are not pulled
    assert results["missing"].startswith("failed:")
    with pytest.raises(KeyError):
        pull_command(zoo_path, only=["nope"], endpoint=hub.url, console=Console(record=True))


def _open_clip_hub_repo(root: Path) -> Path:
    """An open_clip SigLIP repo laid out like Marqo/marqo-fashionSigLIP: open_clip weights and tokenizer, plus a
    remote-code wrapper (config.json with auto_map, its .py and its own model.safetensors) never to be fetched."""
    from tests.unit.test_openclip_convert import build_open_clip_repo

    repo = build_open_clip_repo(root / "fashion-siglip")
    (repo / "config.json").write_text(json.dumps({
        "auto_map": {"AutoConfig": "marqo_fashionSigLIP.MarqoFashionSigLIPConfig",
                     "AutoModel": "marqo_fashionSigLIP.MarqoFashionSigLIP"},
        "open_clip_model_name": "hf-hub:acme/fashion-siglip", "model_type": "siglip"}))
    (repo / "marqo_fashionSigLIP.py").write_text("raise SystemExit('remote code must never be fetched')\n")
    (repo / "model.safetensors").write_bytes(b"wrapper weights: never fetched")
    (repo / "README.md").write_text("# model card\n")
    return repo


def test_pull_converts_open_clip_siglip_repo(hub_env):
    import torch
    from PIL import Image
    from rich.console import Console

    from serving.adapters.registry import AdapterRegistry
    from serving.config import load_zoo
    from serving.fixtures.pull import MARKER, pull_command
    from serving.vram.devices import CpuDevice
    from tests.unit.test_openclip_convert import TEXTS, _reference, want_txt_of

    repo = _open_clip_hub_repo(hub_env / "hub")
    zoo_path = _write_zoo(hub_env / "zoo.yaml", {
        "fashion_clip": {"family": "clip", "task": "zero_shot", "source": {"hf": "fashion-clip"},
                         "hf_id": "acme/fashion-siglip", "vram_mb": 800,
                         "options": {"prompt_set": "security_clothing", "arch": "siglip"}},
    })
    target = hub_env / "models" / "fashion-clip"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("an earlier fixture file")
    with FakeHub({"acme/fashion-siglip": repo}) as hub:
        results = pull_command(zoo_path, endpoint=hub.url, console=Console(record=True, width=120))
        assert results == {"fashion_clip": f"pulled acme/fashion-siglip@{SHA[:12]}"}
        fetched = {Path(p).name for _, p in hub.requests if "/resolve/" in p}
        assert pull_command(zoo_path, endpoint=hub.url, console=Console(record=True)) == {"fashion_clip": "up to date"}
    assert fetched == {"config.json", "open_clip_config.json", "open_clip_model.safetensors", "spiece.model",
                       "tokenizer.json", "tokenizer_config.json"}  # config.json: read to see it is a wrapper
    assert json.loads((target / "config.json").read_text())["model_type"] == "siglip"
    assert "auto_map" not in json.loads((target / "config.json").read_text())
    marker = json.loads((target / MARKER).read_text())
    assert marker["converted_from"] == "open_clip" and marker["sha"] == SHA
    assert not (target / "stale.txt").exists() and not (target / "marqo_fashionSigLIP.py").exists()
    assert not list((hub_env / "models").glob(".pull-*"))

    zoo = load_zoo(zoo_path, env={})
    adapter = AdapterRegistry().create("fashion_clip", zoo.models["fashion_clip"], zoo.models_root, CpuDevice())
    adapter.load()
    ref, ref_tok = _reference(repo)
    assert (adapter.text_embeddings(TEXTS) - want_txt_of(ref, ref_tok, TEXTS)).abs().max() < 1e-4
    out = adapter.predict([Image.new("RGB", (40, 40), (10, 200, 30))])[0]  # the security_clothing prompt set
    assert 0.0 <= out["confidence"] <= 1.0 and isinstance(out["is_suspicious"], bool)
    assert torch.isfinite(adapter.image_embeddings([Image.new("RGB", (40, 40))])).all()


def test_pull_open_clip_repo_without_spiece_model_fails_before_downloading(hub_env):
    from serving.fixtures.pull import PullError, pull_model

    repo = _open_clip_hub_repo(hub_env / "hub")
    (repo / "spiece.model").unlink()
    spec = _spec(family="clip", task="zero_shot", source={"hf": "fashion-clip"}, hf_id="acme/fashion-siglip",
                 options={"arch": "siglip"})
    root = hub_env / "models"
    (root / "fashion-clip").mkdir(parents=True)
    (root / "fashion-clip" / "config.json").write_text('{"keep": true}')
    with FakeHub({"acme/fashion-siglip": repo}) as hub:
        with pytest.raises(PullError, match=r"spiece\.model.*options\.pull_repo"):
            pull_model("fashion_clip", spec, root, endpoint=hub.url)
    assert not any("open_clip_model" in p for _, p in hub.requests)  # refused before the weights
    assert json.loads((root / "fashion-clip" / "config.json").read_text()) == {"keep": True}
    assert not list(root.glob(".pull-*"))
