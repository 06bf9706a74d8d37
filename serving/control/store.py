"""Persistent control-plane state: thermal targets/states and usage records (seed 000 part 4 schema).

SQLAlchemy Core over SQLite by default (`sqlite:///<path>`); `Settings.database_url` (env DATABASE_URL)
may name any database SQLAlchemy has a driver for (e.g. postgresql+psycopg://...). Every method is a
short synchronous statement: call it from a worker thread, never from the event loop (the thermal
controller goes through `serving.control.writer.StoreWriter`, which owns that thread).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from serving.errors import ConfigError
from serving.settings import Settings

DEFAULT_DB_PATH = "models/.zoo-control.sqlite3"

metadata = MetaData()

thermal_states = Table(
    "thermal_states",
    metadata,
    Column("model_id", String(100), primary_key=True),
    Column("service_id", String(100), nullable=True),
    Column("current_state", String(20), nullable=False, default="COLD"),
    Column("target_state", String(20), nullable=False, default="COLD"),
    Column("is_transitioning", Boolean, nullable=False, default=False),
    Column("last_activity", Float, nullable=True),
    Column("last_state_change", Float, nullable=False),
    Column("error_message", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(100), nullable=True),
)

model_usage = Table(
    "model_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", String(100), nullable=False, index=True),
    Column("service_id", String(100), nullable=True),
    Column("operation", String(100), nullable=False),
    Column("processing_time_ms", Float, nullable=False),
    Column("input_size_bytes", Integer, nullable=True),
    Column("output_size_bytes", Integer, nullable=True),
    Column("request_id", String(100), nullable=True),
    Column("created_at", Float, nullable=False, index=True),
    # one row may aggregate several requests (counters polled from a manager); processing_time_ms is their total
    Column("requests", Integer, nullable=False, default=1),
)


service_admin = Table(
    "service_admin",
    metadata,
    Column("service_id", String(100), primary_key=True),
    Column("admin_state", String(20), nullable=False),  # ENABLED | DISABLED
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(100), nullable=True),
)


@dataclass
class ThermalRow:
    """One model's persisted thermal record."""

    model_id: str
    service_id: str | None
    current_state: str
    target_state: str
    is_transitioning: bool
    last_activity: float | None
    last_state_change: float
    error_message: str | None
    updated_at: float
    updated_by: str | None = None


@dataclass
class UsageRow:
    """One usage record; `requests` > 1 aggregates several requests and `processing_time_ms` is their total."""

    model_id: str
    operation: str
    processing_time_ms: float
    created_at: float
    service_id: str | None = None
    input_size_bytes: int | None = None
    output_size_bytes: int | None = None
    request_id: str | None = None
    requests: int = 1

    def merge(self, other: UsageRow) -> None:
        """Fold `other` (same model and operation) into this aggregate: sums, latest time, no request id."""
        self.processing_time_ms += other.processing_time_ms
        self.requests += other.requests
        self.created_at = max(self.created_at, other.created_at)
        self.input_size_bytes = _add(self.input_size_bytes, other.input_size_bytes)
        self.output_size_bytes = _add(self.output_size_bytes, other.output_size_bytes)
        self.request_id = None


def _add(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b


def database_url(settings: Settings, default_path: str | Path = DEFAULT_DB_PATH) -> str:
    """`settings.database_url` (env DATABASE_URL), else SQLite at `default_path`."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{Path(default_path)}"


class ControlStore:
    """Thermal rows and usage records in one database."""

    def __init__(self, url: str = "sqlite://") -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            else:  # one shared in-memory database for every connection
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except Exception as e:  # unknown dialect, missing driver
            raise ConfigError(f"DATABASE_URL {url!r} cannot be used: {e}") from e
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ thermal rows
    def load_thermal(self) -> dict[str, ThermalRow]:
        with self.engine.connect() as c:
            rows = c.execute(select(thermal_states)).mappings().all()
        return {r["model_id"]: ThermalRow(**dict(r)) for r in rows}

    def save_thermal(self, row: ThermalRow) -> None:
        self.write(rows=[row])

    def write(self, rows: Iterable[ThermalRow] = (), usage: Iterable[UsageRow] = ()) -> None:
        """Upsert thermal rows and insert usage records in one transaction."""
        with self.engine.begin() as c:
            for row in rows:
                values = row.__dict__.copy()
                done = c.execute(update(thermal_states).where(thermal_states.c.model_id == row.model_id)
                                 .values(**values))
                if done.rowcount == 0:
                    c.execute(insert(thermal_states).values(**values))
            records = [u.__dict__.copy() for u in usage]
            if records:
                c.execute(insert(model_usage), records)

    def delete_thermal(self, model_ids: Iterable[str]) -> None:
        with self.engine.begin() as c:
            c.execute(delete(thermal_states).where(thermal_states.c.model_id.in_(list(model_ids))))

    # ------------------------------------------------------------------ service admin states
    def load_service_admin(self) -> dict[str, str]:
        with self.engine.connect() as c:
            rows = c.execute(select(service_admin)).mappings().all()
        return {r["service_id"]: r["admin_state"] for r in rows}

    def save_service_admin(self, service_id: str, admin_state: str, updated_at: float,
                           updated_by: str | None = None) -> None:
        values = {"admin_state": admin_state, "updated_at": updated_at, "updated_by": updated_by}
        with self.engine.begin() as c:
            done = c.execute(update(service_admin).where(service_admin.c.service_id == service_id).values(**values))
            if done.rowcount == 0:
                c.execute(insert(service_admin).values(service_id=service_id, **values))

    # ------------------------------------------------------------------ usage
    def record_usage(
        self,
        model_id: str,
        operation: str,
        processing_time_ms: float,
        *,
        service_id: str | None = None,
        input_size_bytes: int | None = None,
        output_size_bytes: int | None = None,
        request_id: str | None = None,
        created_at: float,
        requests: int = 1,
    ) -> None:
        self.write(usage=[UsageRow(
            model_id=model_id, service_id=service_id, operation=operation,
            processing_time_ms=float(processing_time_ms), input_size_bytes=input_size_bytes,
            output_size_bytes=output_size_bytes, request_id=request_id, created_at=created_at,
            requests=int(requests))])

    def usage(self, model_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(model_usage).order_by(model_usage.c.id.desc()).limit(limit)
        if model_id:
            q = q.where(model_usage.c.model_id == model_id)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings().all()]

    def usage_summary(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Per model: requests, total/avg processing ms, bytes in/out (optionally since a time)."""
        u = model_usage.c
        q = select(u.model_id, func.sum(u.requests).label("requests"), func.sum(u.processing_time_ms).label("ms"),
                   func.sum(u.input_size_bytes).label("bytes_in"), func.sum(u.output_size_bytes).label("bytes_out"),
                   func.max(u.created_at).label("last")).group_by(u.model_id)
        if since is not None:
            q = q.where(u.created_at >= since)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return {
            r["model_id"]: {
                "requests": int(r["requests"]),
                "processing_ms_total": round(float(r["ms"] or 0.0), 3),
                "processing_ms_avg": round(float(r["ms"] or 0.0) / int(r["requests"]), 3) if r["requests"] else 0.0,
                "bytes_in": int(r["bytes_in"] or 0),
                "bytes_out": int(r["bytes_out"] or 0),
                "last_request_at": r["last"],
            }
            for r in rows
        }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
