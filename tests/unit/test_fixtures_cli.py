"""`zoo fixtures` end to end on a small zoo: builds, skips what is built, reports failures, rejects names."""

from __future__ import annotations

import textwrap

from typer.testing import CliRunner

from serving.cli import app

ZOO = textwrap.dedent("""
    models_root: ./m
    services:
      light: {kind: enrichment, container: x, port: 9000, device: cpu, vram_budget_gb: 1.0,
              models: [reid, quality, broken]}
    models:
      reid: {family: osnet, task: reid, source: {safetensors: osnet/model.safetensors}, vram_mb: 100}
      quality: {family: image_quality, task: quality, source: {safetensors: brisque/q.safetensors}, vram_mb: 1}
      broken: {family: yolo, task: detect, source: {pt: b/b.pt}, vram_mb: 100}
""")


def test_fixtures_command(tmp_path):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(ZOO)
    runner = CliRunner()
    args = ["fixtures", "--zoo", str(zoo)]

    first = runner.invoke(app, [*args, "--only", "reid,quality"])
    assert first.exit_code == 0, first.output
    assert "2 built, 0 skipped, 0 failed" in first.output
    weights = tmp_path / "m" / "osnet" / "model.safetensors"
    assert weights.stat().st_size > 0 and (tmp_path / "m" / "brisque" / "q.safetensors").exists()
    mtime = weights.stat().st_mtime_ns

    again = runner.invoke(app, [*args, "--only", "reid", "--only", "quality"])
    assert again.exit_code == 0 and "0 built, 2 skipped" in again.output
    assert weights.stat().st_mtime_ns == mtime  # idempotent: nothing rewritten

    forced = runner.invoke(app, [*args, "--only", "reid", "--force"])
    assert forced.exit_code == 0 and "1 built" in forced.output

    everything = runner.invoke(app, args)  # the yolo model without options.fixture_arch cannot be built
    assert everything.exit_code == 1
    assert "broken: failed: ValueError" in everything.output and "2 skipped, 1 failed" in everything.output
    assert not (tmp_path / "m" / "b").exists()

    unknown = runner.invoke(app, [*args, "--only", "nope"])
    assert unknown.exit_code == 2 and "unknown model(s): nope" in unknown.output
