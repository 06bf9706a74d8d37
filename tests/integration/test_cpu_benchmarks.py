"""The CPU benchmark scripts run end to end with --quick (real servers on loopback, few requests): the JSON
they print has the documented shape and every ratio is a positive finite number. No timing assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
                          check=False, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    return result


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_machine(m: dict) -> None:
    assert m["cpu"] and m["cores"] >= 1 and m["python"]
    assert len(m["loadavg_1_5_15_at_start"]) == 3
    for pkg in ("fastapi", "starlette", "uvicorn"):
        assert m["versions"][pkg], pkg


def test_http_overhead_quick(tmp_path):
    r = run_quick("http_overhead.py", tmp_path / "http.json")
    assert r["benchmark"] == "http_overhead" and r["setup"]["quick"] is True
    check_machine(r["machine"])
    cases = {"starlette_ping", "fastapi_ping", "zoo_ping", "zoo_detect_fake", "zoo_models_status"}
    assert {(row["case"], row["clients"]) for row in r["rows"]} == {(c, n) for c in cases for n in (1, 8)}
    for row in r["rows"]:
        assert row["errors"] == 0 and row["requests"] == r["setup"]["requests_per_cell"], row
        for k in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_us_per_req", "client_cpu_us_per_req"):
            assert positive(row[k]), (row["case"], k, row[k])
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert set(r["ratios"]) == {"clients_1", "clients_8"}
    for per in r["ratios"].values():
        assert set(per) == {f"{c}_vs_starlette_ping" for c in cases - {"starlette_ping"}} | {"zoo_ping_vs_fastapi_ping"}
        for name, q in per.items():
            assert set(q) == {"throughput", "p50", "p99", "server_cpu_per_req"}, name
            assert all(positive(v) for v in q.values()), (name, q)


def test_payload_encodings_quick_with_the_yolo26_fixture(tmp_path, built_models):
    built_models("yolo26")
    r = run_quick("payload_encodings.py", tmp_path / "payload.json")
    assert r["benchmark"] == "payload_encodings" and r["setup"]["model"] == "yolo26"
    check_machine(r["machine"])
    frames = {"640x480 JPEG", "640x480 PNG", "1920x1080 JPEG", "1920x1080 PNG"}
    encodings = {"json_base64", "raw", "multipart"}
    assert {(row["frame"], row["encoding"]) for row in r["rows"]} == {(f, e) for f in frames for e in encodings}
    by = {(row["frame"], row["encoding"]): row for row in r["rows"]}
    for row in r["rows"]:
        for k in ("wire_bytes", "file_bytes", "server_decode_ms", "server_image_decode_ms", "handler_ms",
                  "e2e_p50_ms", "e2e_p99_ms", "response_bytes"):
            assert positive(row[k]), (row["frame"], row["encoding"], k, row[k])
        assert row["wire_bytes"] > row["file_bytes"]  # headers (and base64 / multipart framing) on top
    for f in frames:  # sizes, not timings: base64 carries 4 characters per 3 bytes
        assert by[(f, "json_base64")]["wire_bytes"] > by[(f, "multipart")]["wire_bytes"] > by[(f, "raw")]["wire_bytes"]
        assert by[(f, "raw")]["server_b64_ms"] == 0 and positive(by[(f, "json_base64")]["server_b64_ms"])
    assert set(r["ratios"]) == frames
    for f, per in r["ratios"].items():
        assert set(per) == {"raw_vs_json_base64", "multipart_vs_json_base64"}, f
        for name, q in per.items():
            assert set(q) == {"wire_bytes", "server_decode", "e2e_p50"}, name
            assert all(positive(v) for v in q.values()), (f, name, q)
