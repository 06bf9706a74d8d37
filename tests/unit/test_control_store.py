"""ControlStore: SQLite by default, DATABASE_URL when set, usage aggregation."""

from __future__ import annotations

import pytest

from serving.control.store import ControlStore, ThermalRow, database_url
from serving.errors import ConfigError
from serving.settings import Settings


def test_database_url_defaults_to_sqlite_and_honours_database_url(tmp_path):
    assert database_url(Settings.from_env({}), tmp_path / "c.db") == f"sqlite:///{tmp_path / 'c.db'}"
    url = database_url(Settings.from_env({"DATABASE_URL": "postgresql+psycopg://u@h/db"}))
    assert url == "postgresql+psycopg://u@h/db"
    with pytest.raises(ConfigError):
        ControlStore("nosuchdialect://x")


def test_rows_and_usage_persist_across_connections(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'control.sqlite3'}"
    s = ControlStore(url)
    row = ThermalRow("a", "svc", "COLD", "HOT", True, None, 10.0, None, 10.0, "admin")
    s.save_thermal(row)
    row.current_state, row.is_transitioning = "HOT", False
    s.save_thermal(row)  # update, not a second row
    for i in range(3):
        s.record_usage("a", "classify", 10.0 * (i + 1), service_id="svc", input_size_bytes=100, output_size_bytes=7,
                       created_at=100.0 + i)
    s.record_usage("b", "embed", 1.0, created_at=50.0)
    s.close()

    s2 = ControlStore(url)
    rows = s2.load_thermal()
    assert list(rows) == ["a"] and rows["a"].current_state == "HOT" and rows["a"].updated_by == "admin"
    summary = s2.usage_summary()
    assert summary["a"] == {"requests": 3, "processing_ms_total": 60.0, "processing_ms_avg": 20.0, "bytes_in": 300,
                            "bytes_out": 21, "last_request_at": 102.0}
    assert s2.usage_summary(since=101.0)["a"]["requests"] == 2 and "b" not in s2.usage_summary(since=101.0)
    assert [u["processing_time_ms"] for u in s2.usage("a")] == [30.0, 20.0, 10.0]
    s2.delete_thermal(["a"])
    assert s2.load_thermal() == {}
