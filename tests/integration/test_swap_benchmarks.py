"""benchmarks/swap.py --quick and benchmarks/gpu_acceptance.py --device cpu --quick run end to end as a user
runs them: the JSON has the documented shape, the figures are positive, GPU-only checks are skipped (never
passed) without a GPU, and the README table is filled from the report. No timing assertions."""

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


def test_swap_quick(tmp_path):
    out = tmp_path / "swap.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "swap.py"), "--quick", "--device", "cpu",
                           "--out", str(out), "--tmp", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == r
    assert r["benchmark"] == "swap" and r["setup"]["quick"] is True and r["setup"]["model_mb"] == 64
    assert "below the 500 MB" in r["setup"]["note"] and "not measured on a GPU" in r["setup"]["gpu_note"]
    assert r["machine"]["cores"] >= 1 and len(r["machine"]["loadavg_1_5_15_at_start"]) == 3
    assert 60 * 2**20 <= r["file_bytes"] and r["param_bytes"] <= r["parked_bytes"] <= r["file_bytes"] + 2**20
    for name, fig in r["figures"].items():
        assert positive(fig["median_s"]) and positive(fig["gbps"]), name
    assert set(r["ratios"]) == {"cold_load_over_raw_read", "restore_over_copy", "offload_over_copy"}
    assert all(positive(v) for v in r["ratios"].values())
    assert r["goal"] == 0.8 and set(r["goal_met"]) == {"cold_load_over_raw_read", "restore_over_copy"}
    assert r["loader"]["loader"] == "zoo-direct" and r["loader"]["direct"] is True
    # one host buffer for every offload of the run: no new buffer after the first offload
    assert r["host_pool"]["allocations"] == r["host_pool"]["allocations_after_first_offload"]
    assert r["host_pool"]["reuses"] >= 2
    # the ratios are printed side by side for a human too
    assert "cold load" in proc.stderr and "raw read" in proc.stderr and "restore" in proc.stderr
    assert not list(tmp_path.glob("tmp*")), "the model file is removed after the run"


def test_gpu_acceptance_cpu_dry_run_skips_every_gpu_check_and_fills_the_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _gpu_checks import CHECKS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- gpu-acceptance:start -->\nSTALE TABLE\n<!-- gpu-acceptance:end -->\ntail\n")
    report_path = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--device", "cpu",
                           "--quick", "--json", str(report_path), "--fill-readme", "--readme", str(readme)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    report = json.loads(report_path.read_text())
    assert json.loads(proc.stdout) == report
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == [name for name, *_ in CHECKS]
    assert report["gpu_measured"] is False and report["device"]["kind"] == "cpu"
    for name, proves, gpu_only, _ in CHECKS:
        c = checks[name]
        assert c["proves"] == proves and c["status"] in ("pass", "fail", "skipped"), c
        if gpu_only:
            assert c["status"] == "skipped" and "not measured on a GPU" in c["detail"], c
    # the CPU-measurable checks ran for real
    cold = checks["cold_load_vs_raw_read"]
    assert cold["status"] in ("pass", "fail") and positive(cold["figures"]["ratio"])
    assert positive(cold["figures"]["raw_read_gbps"]) and cold["figures"]["direct"] is True
    keep = checks["restore_reinitialises_nothing"]
    assert keep["status"] == "pass", keep
    assert keep["figures"]["same_module"] and keep["figures"]["identical_output"]
    summary = report["summary"]
    assert summary == {s: sum(c["status"] == s for c in report["checks"]) for s in ("pass", "fail", "skipped")}
    assert proc.returncode == (1 if summary["fail"] else 0), proc.stderr[-2000:]
    for name in checks:  # progress on stderr, one line per check
        assert f"{name} ..." in proc.stderr
    text = readme.read_text()
    assert "STALE TABLE" not in text and text.endswith("tail\n") and "**Not measured on a GPU**" in text
    assert all(f"`{name}`" in text for name in checks)
