"""benchmarks/pipeline.py --quick runs end to end as a user runs it (the real gateway and enrichment services as
`zoo serve` subprocesses on loopback, the LLM step measured separately): the JSON has the documented shape,
every figure is measured (positive, finite), the ratios are the quotients of the reported figures, model-major
enriches every detection without error, and at a budget below the frame's working set no model is loaded more
than once per frame in model-major mode. No timing assertion (the goals are reported, not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_pipeline_benchmark_quick(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == r
    assert r["benchmark"] == "pipeline" and r["setup"]["quick"] is True
    assert r["setup"]["detections_per_frame"] == 8 and r["setup"]["cameras"] == [1, 4]
    assert "not measured on a GPU" in r["setup"]["gpu_note"] and r["machine"]["cores"] >= 1
    for cams in ("1", "4"):
        row = r["modes"][cams]
        assert set(row) == {"per-detection", "model-major", "model-only"}
        for mode, f in row.items():
            assert f["frames"] >= int(cams), (cams, mode, f)
            assert all(positive(f[k]) for k in ("frames_per_s", "p50_frame_ms", "p95_frame_ms",
                                                "enrich_ms_per_frame", "wall_s")), (cams, mode, f)
            assert f["p50_frame_ms"] <= f["p95_frame_ms"]
            assert math.isclose(f["frames_per_s"], f["frames"] / f["wall_s"], rel_tol=0.01)
        assert row["model-major"]["errors"] == 0 and row["model-only"]["errors"] == 0
        mm, pd, mo = row["model-major"], row["per-detection"], row["model-only"]
        fps = r["ratios"]["frames_per_s_vs_per_detection"][cams]
        enr = r["ratios"]["enrich_vs_model_only"][cams]
        assert positive(fps) and positive(enr)
        assert math.isclose(fps, mm["frames_per_s"] / pd["frames_per_s"], rel_tol=0.01)
        assert math.isclose(enr, mm["enrich_ms_per_frame"] / mo["enrich_ms_per_frame"], rel_tol=0.01)
        assert r["goals"]["frames_per_s_vs_per_detection>=3"][cams] is (fps >= 3)
    tight = r["tight_budget"]
    for svc, budget in tight["budget_mb"].items():
        assert 0 < budget < tight["working_set_mb"][svc], svc  # below the frame's working set
    mm = tight["model-major"]
    assert mm["errors"] == 0 and mm["loads_per_frame"] > 0  # the budget forced loads, and they all succeeded
    assert mm["max_loads_per_frame_one_model"] <= 1.0, mm["loads"]
    assert all(v <= tight["frames"] for v in mm["loads"].values())
    assert r["goals"]["tight_max_loads_per_model_per_frame<=1"] is True
    assert positive(r["analyze"]["analyze_ms_per_frame"])  # the LLM step, measured apart from the modes
    assert "model-major / per-detection frames/s" in proc.stderr
