"""Which zoo model a SageMaker model artifact holds, and where its files are.

SageMaker extracts an artifact (model.tar.gz) to /opt/ml/model (single-model endpoint) or to
/opt/ml/models/{model_name}/model (multi-model endpoint, the `url` of POST /models). The zoo model is
found, in this order:

1. a manifest `zoo-model.json` at the top of the artifact: `{"model": "<zoo.yaml name>"}`, optionally
   `"source": {"pt": "weights/best.pt"}` (paths relative to the artifact) and `"options": {...}`
   (merged over the zoo.yaml options, e.g. a different confidence);
2. a hint naming a zoo model or one of its aliases: env SAGEMAKER_MODEL for the single-model endpoint,
   the `X-Amzn-SageMaker-Target-Model` header (`yolo26.tar.gz` -> `yolo26`) or the model_name itself
   for a multi-model endpoint;
3. the files: the one zoo model whose source files the artifact holds, in the zoo layout
   (`yolo26/yolo26m.pt`, as under models/) or flat (`yolo26m.pt` at the top).

An endpoint that `zoo deploy` packs with whole services sets ZOO_SERVICES instead: every model of those
services is registered, its files in the zoo layout of the artifact (`service_models`).

A transformers folder can also sit flat at the top of the artifact (config.json there) when a manifest
or a hint names the model. Every path stays inside the SageMaker root (resolve_inside): the returned
spec's sources are relative to that root, which is the manager's models_root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from serving.config import ModelSpec, ZooConfig, check_relative_model_path, resolve_inside
from serving.errors import BadRequest, ConfigError, UnknownModel, UnsafePath

MANIFEST = "zoo-model.json"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class ResolvedArtifact:
    """A zoo model found in an artifact; `spec.source` is relative to the SageMaker root."""

    zoo_model: str
    spec: ModelSpec
    path: Path  # the artifact directory, absolute
    files: dict[str, Path]  # format -> absolute path of what will be loaded
    how: str  # manifest | hint | files


def hint_name(value: str | None) -> str | None:
    """`models/v2/yolo26.tar.gz` -> `yolo26` (a TargetModel header or a model name)."""
    if not value:
        return None
    base = PurePosixPath(value.strip()).name
    for suffix in _ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base or None


def zoo_name_for(zoo: ZooConfig, hint: str | None) -> str | None:
    """The zoo model a hint names (model name or alias, case-insensitive), else None."""
    if not hint:
        return None
    h = hint.lower().replace("-", "_")
    for name, spec in zoo.models.items():
        if h == name.lower() or h in {a.lower().replace("-", "_") for a in spec.aliases}:
            return name
    return None


def files_in(spec: ModelSpec, art: Path, *, flat_hf: bool) -> dict[str, Path]:
    """Format -> existing path inside `art` for each of the spec's sources (zoo layout, then flat)."""
    found: dict[str, Path] = {}
    for fmt, rel in spec.source.items():
        for cand in (art / rel, art / PurePosixPath(rel).name):
            if cand.exists() and (cand.is_dir() if fmt == "hf" else cand.is_file()):
                found[fmt] = cand
                break
        else:
            if fmt == "hf" and flat_hf and (art / "config.json").is_file():
                found[fmt] = art
    return found


def _read_manifest(art: Path) -> dict[str, Any] | None:
    path = art / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"{MANIFEST} in the artifact is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise BadRequest(f'{MANIFEST} must be a JSON object with "model": "<zoo model name>"')
    if not isinstance(data.get("source", {}), dict) or not isinstance(data.get("options", {}), dict):
        raise BadRequest(f'{MANIFEST}: "source" and "options" must be JSON objects')
    return data


def resolve_artifact(
    zoo: ZooConfig,
    root: Path,
    artifact: str | Path,
    hints: tuple[str | None, ...] = (),
    *,
    residency: str | None = None,
) -> ResolvedArtifact:
    """Find the zoo model in `artifact` (see the module docstring). 400 when none or several match."""
    root_r = Path(root).resolve()
    art = resolve_inside(root_r, artifact)  # UnsafePath (400) outside the root
    if not art.is_dir():
        raise BadRequest(f"model artifact {str(artifact)!r} is not a directory", details={"url": str(artifact)})
    manifest = _read_manifest(art)
    options: dict[str, Any] = {}
    if manifest is not None:
        name = zoo_name_for(zoo, manifest["model"])
        if name is None:
            raise UnknownModel(f"{MANIFEST} names {manifest['model']!r}, which is not a model of zoo.yaml")
        how = "manifest"
        options = dict(manifest.get("options", {}))
        if manifest.get("source"):
            files = {}
            for fmt, rel in manifest["source"].items():
                try:
                    check_relative_model_path(str(rel))
                except ValueError as e:
                    raise BadRequest(f"{MANIFEST} source {fmt}: {e}") from None
                p = resolve_inside(root_r, art / rel)
                if not p.exists():
                    raise BadRequest(f"{MANIFEST} source {fmt}: {rel!r} is not in the artifact")
                files[fmt] = p
        else:
            files = files_in(zoo.models[name], art, flat_hf=True)
    else:
        name = next((n for n in (zoo_name_for(zoo, hint_name(h)) for h in hints) if n), None)
        how = "hint"
        if name is not None:
            files = files_in(zoo.models[name], art, flat_hf=True)
        else:
            how = "files"
            matches = {n: f for n, s in zoo.models.items() if (f := files_in(s, art, flat_hf=False))}
            if len(matches) != 1:
                what = "several zoo models: " + ", ".join(sorted(matches)) if matches else "no zoo model's files"
                raise BadRequest(
                    f"model artifact {str(artifact)!r} holds {what}; add {MANIFEST} with "
                    '{"model": "<zoo model name>"} or name the model (SAGEMAKER_MODEL / TargetModel)',
                    details={"url": str(artifact), "candidates": sorted(matches)},
                )
            ((name, files),) = matches.items()
    spec = zoo.models[name]
    if not files:
        expected = sorted(spec.source.values())
        raise BadRequest(
            f"model artifact {str(artifact)!r} holds none of the files of zoo model {name!r} "
            f"(expected one of {expected}, in the zoo layout or at the top of the artifact)",
            details={"model": name, "expected": expected},
        )
    source = {fmt: str(p.relative_to(root_r)) for fmt, p in files.items()}
    update: dict[str, Any] = {"source": source, "env_path": None, "options": {**spec.options, **options}}
    if residency:
        update["residency"] = residency
    return ResolvedArtifact(zoo_model=name, spec=spec.model_copy(update=update), path=art, files=files, how=how)


def service_models(zoo: ZooConfig, root: Path, services: list[str], bases: list[Path]) -> list[ResolvedArtifact]:
    """Every model of `services` (env ZOO_SERVICES, as `zoo deploy` sets it), with its files looked up in
    the zoo layout under the first of `bases` (zoo.models_root, {root}/model/models, {root}/model) that
    holds any of them; a model with no file anywhere keeps the first base and fails when it is used."""
    root_r = Path(root).resolve()
    inside = []
    for b in bases:
        try:
            inside.append(resolve_inside(root_r, b))
        except UnsafePath:
            continue
    if not inside:
        raise ConfigError(f"none of {[str(b) for b in bases]} lies inside the SageMaker root {root_r}")
    out = []
    for sname in services:
        if sname not in zoo.services:
            raise ConfigError(
                f"ZOO_SERVICES names {sname!r}, which is not a service of zoo.yaml ({', '.join(zoo.services)})")
        for name in zoo.services[sname].models:
            spec = zoo.models[name]
            base = next((b for b in inside if any((b / rel).exists() for rel in spec.source.values())), inside[0])
            files = {fmt: base / rel for fmt, rel in spec.source.items() if (base / rel).exists()}
            source = {fmt: str((base / rel).relative_to(root_r)) for fmt, rel in spec.source.items()}
            out.append(ResolvedArtifact(name, spec.model_copy(update={"source": source}), base, files, "service"))
    return out
