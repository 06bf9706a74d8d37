"""FootprintStore on its own: lookups by model and device (and format/dtype), persistence, a corrupt file."""

from __future__ import annotations

import json

from serving.vram.footprints import Footprint, FootprintStore


def fp(model="m", fmt="pt", device="L4", dtype="fp16", load=100, peak=150, at=1.0, **kw) -> Footprint:
    return Footprint(model=model, format=fmt, device=device, dtype=dtype, load_bytes=load, peak_bytes=peak,
                     measured_at=at, **kw)


def test_a_footprint_is_its_larger_figure_and_keyed_by_model_format_device_dtype():
    assert fp(load=100, peak=150).bytes == 150 and fp(load=200, peak=150).bytes == 200
    assert fp().key == "m|pt|L4|fp16"


def test_lookup_returns_the_latest_measurement_of_that_model_on_that_device():
    s = FootprintStore(None)
    s.record(fp(fmt="pt", at=1.0, load=1))
    s.record(fp(fmt="onnx", at=3.0, load=3))
    s.record(fp(fmt="trt", at=2.0, load=2))
    s.record(fp(model="other", at=9.0))
    s.record(fp(device="A100", at=9.0))
    assert s.lookup("m", "L4").load_bytes == 3
    assert s.lookup("m", "L4", fmt="trt").load_bytes == 2
    assert s.lookup("m", "L4", dtype="fp32") is None
    assert s.lookup("m", "L4", fmt="pt", dtype="fp16").load_bytes == 1
    assert s.lookup("m", "H100") is None and s.lookup("x", "L4") is None


def test_a_new_measurement_of_the_same_key_replaces_the_old():
    s = FootprintStore(None)
    s.record(fp(load=1, at=1.0))
    s.record(fp(load=2, at=0.5))
    assert s.lookup("m", "L4").load_bytes == 2


def test_save_writes_every_footprint_and_a_new_store_reads_them_back(tmp_path):
    path = tmp_path / "a" / "b" / ".footprints.json"  # missing parents are created
    s = FootprintStore(path)
    s.record(fp(load_s=1.5, restore_s=0.25))
    s.record(fp(model="n", at=2.0))
    s.save()
    data = json.loads(path.read_text())
    assert data["version"] == 1 and sorted(data["footprints"]) == ["m|pt|L4|fp16", "n|pt|L4|fp16"]
    assert [p.name for p in path.parent.iterdir()] == [".footprints.json"]  # the temp file was renamed
    back = FootprintStore(path).lookup("m", "L4")
    assert back == fp(load_s=1.5, restore_s=0.25)


def test_a_store_without_a_path_keeps_footprints_in_memory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = FootprintStore(None)
    s.record(fp())
    s.save()
    assert s.path is None and list(tmp_path.iterdir()) == []


def test_a_corrupt_file_starts_empty_and_is_overwritten(tmp_path):
    path = tmp_path / ".footprints.json"
    path.write_text("{not json")
    s = FootprintStore(path)
    assert s.lookup("m", "L4") is None
    path.write_text(json.dumps({"footprints": {"k": {"model": "m", "unknown_field": 1}}}))
    assert FootprintStore(path).lookup("m", "L4") is None
    s.record(fp())
    s.save()
    assert FootprintStore(path).lookup("m", "L4") == fp()


def test_a_missing_file_is_an_empty_store(tmp_path):
    assert FootprintStore(tmp_path / "none.json").lookup("m", "L4") is None


def test_save_writes_its_temp_file_beside_the_target_so_the_rename_is_atomic(tmp_path, monkeypatch):
    # the system temp dir may be another filesystem, where a rename is not atomic (or fails): never used
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "no-such-dir"))
    s = FootprintStore(tmp_path / ".footprints.json")
    s.record(fp())
    s.save()
    assert FootprintStore(tmp_path / ".footprints.json").lookup("m", "L4") == fp()


def test_a_file_without_footprints_is_an_empty_store(tmp_path):
    path = tmp_path / ".footprints.json"
    path.write_text(json.dumps({"version": 1}))
    assert FootprintStore(path).lookup("m", "L4") is None


def test_of_two_measurements_made_at_the_same_instant_the_first_recorded_wins():
    s = FootprintStore(None)
    s.record(fp(fmt="pt", at=5.0, load=1))
    s.record(fp(fmt="onnx", at=5.0, load=2))
    assert s.lookup("m", "L4").load_bytes == 1
