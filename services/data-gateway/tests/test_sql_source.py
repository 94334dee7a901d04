"""The SQL connector against real SQLite and PostgreSQL: identifiers, and a read cancelled mid-flight.

SQL identifiers are quoted by SQLAlchemy: keywords and quote characters are names, never SQL.
A table, a column and a timestamp column named after SQL keywords serve through the whole
gateway (definitions, push, GetFeatures, the offline read). A table and a column whose names
hold a double quote and a statement can only be reached through the connector (definitions
accept plain names only): the rows round-trip and a bystander table survives. A read cancelled
while PostgreSQL runs it (a caller's timeout) leaves the pool usable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from infermesh_chassis.metrics import Metrics
from infermesh_data_gateway.definitions import ViewDef, load_definitions
from infermesh_data_gateway.gateway import DataGateway, EntityInput, PushInput
from infermesh_data_gateway.settings import Settings
from infermesh_data_gateway.sources import ReadItem, SourceMetrics, SqlSource, sql

NOW = datetime.now(UTC).replace(microsecond=0)

DEFINITIONS = """
project: {{name: identifiers, online_store: db}}
entities:
  customer: {{keys: {{customer_id: INT64}}}}
sources:
  db: {db}
feature_views:
  activity:
    entities: [customer]
    fields: {{spend: FP64, plan: STRING}}
    source: db
    timestamp_field: order
    bindings:
      db: {{table: select, columns: {{spend: from, plan: group}}}}
feature_services:
  model:
    entities: [customer]
    features:
      - {{name: spend, dtype: FP64, field: activity.spend, default: -1}}
      - {{name: pro, dtype: FP32, expr: 'one_hot(activity.plan, ["pro"])', default: [0]}}
"""

INJECTION = 'x"; DROP TABLE bystander; --'


def _micros(stamp: datetime) -> int:
    return int(stamp.timestamp() * 1_000_000)


def _source_def(kind: str, tmp_path: Path, postgres_dsn: str) -> str:
    if kind == "sqlite":
        return f'{{kind: sqlite, path: "{tmp_path / "db.sqlite"}"}}'
    return f'{{kind: postgres, dsn: "{postgres_dsn}"}}'


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, DSN or ""): SQLite in the test's folder, or the session's PostgreSQL (started only when needed)."""
    if request.param == "sqlite":
        return "sqlite", ""
    return "postgres", request.getfixturevalue("postgres_server").dsn


async def test_keywords_as_table_and_column_names_serve(tmp_path: Path, database: tuple[str, str]) -> None:
    kind, dsn = database
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "features.yaml").write_text(DEFINITIONS.format(db=_source_def(kind, tmp_path, dsn)))
    settings = Settings(
        definitions=folder, state_dir=tmp_path / "state", definitions_reload_s=0, metrics={"enabled": False}
    )
    gateway = DataGateway(settings, Metrics("identifiers-test"))
    await gateway.start()
    try:
        old = _micros(NOW - timedelta(hours=2))
        new = _micros(NOW - timedelta(hours=1))
        rows = [
            PushInput({"customer_id": 1}, {"spend": 12.5, "plan": "pro"}, new),
            PushInput({"customer_id": 1}, {"spend": 1.0, "plan": "basic"}, old),  # older: skipped
            PushInput({"customer_id": 2}, {"spend": 3.0, "plan": "basic"}, old),
        ]
        assert await gateway.push("activity", rows) == (2, 1)
        result = await gateway.get_features("model", [EntityInput({"customer_id": 1}), EntityInput({"customer_id": 2})])
        assert [vector.values for vector in result.vectors] == [[12.5, (1.0,)], [3.0, (0.0,)]]
        source = gateway.sources()["db"]
        _, view = gateway.view("activity")
        history = await source.read_offline(view, _micros(NOW - timedelta(hours=3)), None)
        assert sorted(zip(history["customer_id"], history["spend"], history["plan"], strict=True)) == [
            (1, 12.5, "pro"),
            (2, 3.0, "basic"),
        ]
    finally:
        await gateway.stop()


async def _bystander(kind: str, tmp_path: Path, dsn: str, sql: str) -> Any:
    if kind == "sqlite":
        async with aiosqlite.connect(tmp_path / "db.sqlite") as conn:
            cursor = await conn.execute(sql)
            value = await cursor.fetchall()
            await conn.commit()
            return value
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_quote_in_a_name_cannot_inject_sql(tmp_path: Path, database: tuple[str, str]) -> None:
    kind, dsn = database
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "features.yaml").write_text(DEFINITIONS.format(db=_source_def(kind, tmp_path, dsn)))
    definitions = load_definitions(folder)
    plain = definitions.views["activity"]
    # What the definitions refuse to name, the connector must still treat as a name.
    view = dataclasses.replace(
        plain, bindings={"db": {"table": INJECTION, "columns": {"spend": 'sp"end', "plan": "plan; --"}}}
    )
    await _bystander(kind, tmp_path, dsn, "DROP TABLE IF EXISTS bystander")
    await _bystander(kind, tmp_path, dsn, "CREATE TABLE bystander (id INTEGER)")
    await _bystander(kind, tmp_path, dsn, "INSERT INTO bystander VALUES (7)")
    source = SqlSource(definitions.sources["db"], SourceMetrics(Metrics("identifiers-test")))
    try:
        stamp = _micros(NOW - timedelta(hours=1))
        assert await source.write_online(view, [((1,), {"spend": 4.5, "plan": "max"}, stamp)]) == (1, 0)
        assert await source.write_online(view, [((1,), {"spend": 0.0, "plan": "old"}, stamp - 1)]) == (0, 1)
        (record,) = await source.read_online(view, [ReadItem((1,), {})])
        assert record is not None
        assert dict(record.values) == {"spend": 4.5, "plan": "max"}
        assert record.ts == stamp
        history = await source.read_offline(view, None, None)
        assert history[["customer_id", "spend", "plan"]].values.tolist() == [[1, 4.5, "max"]]
        await source.set_watermark(INJECTION, stamp)
        assert await source.get_watermark(INJECTION) == stamp
    finally:
        await source.close()
    assert await _bystander(kind, tmp_path, dsn, "SELECT id FROM bystander") == [(7,)]
    if kind == "sqlite":
        tables = await _bystander(kind, tmp_path, dsn, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        tables = await _bystander(kind, tmp_path, dsn, "SELECT table_name FROM information_schema.tables")
    assert (INJECTION,) in tables


async def test_a_read_cancelled_mid_flight_leaves_the_pool_usable(tmp_path: Path, postgres_server) -> None:
    folder = tmp_path / "defs"
    folder.mkdir()
    source = f'{{kind: postgres, dsn: "{postgres_server.dsn}", pool_size: 1}}'
    (folder / "features.yaml").write_text(DEFINITIONS.replace("table: select", "table: cancelled").format(db=source))
    definitions = load_definitions(folder)
    view = definitions.views["activity"]
    sql = SqlSource(definitions.sources["db"], SourceMetrics(Metrics("identifiers-test")))
    stamp = _micros(NOW - timedelta(hours=1))
    try:
        await sql.write_online(view, [((1,), {"spend": 2.5, "plan": "pro"}, stamp)])
        locker = await asyncpg.connect(postgres_server.dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE cancelled IN ACCESS EXCLUSIVE MODE")
                read = asyncio.ensure_future(sql.read_online(view, [ReadItem((1,), {})]))
                # The read is in flight, waiting for the lock, when it is cancelled.
                waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'cancelled'::regclass"
                for _ in range(1000):
                    if await locker.fetchval(waiting):
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the read never waited for the lock")
                read.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await read
        finally:
            await locker.close()
        # The only pooled connection had a query in flight when it went back: the next read still gets its answer.
        (record,) = await sql.read_online(view, [ReadItem((1,), {})])
        assert record is not None
        assert dict(record.values) == {"spend": 2.5, "plan": "pro"}
    finally:
        await sql.close()


@pytest.fixture
async def sqlite_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SqlSource, ViewDef, list[str]]]:
    """An SQLite source holding one row (its busy timeout 10 s), its view, and every read aiosqlite
    runs in its connection's thread from then on (as its SQL)."""
    folder = tmp_path / "defs"
    folder.mkdir()
    db = f'{{kind: sqlite, path: "{tmp_path / "db.sqlite"}", timeout: 10s}}'
    (folder / "features.yaml").write_text(DEFINITIONS.format(db=db))
    definitions = load_definitions(folder)
    view = definitions.views["activity"]
    source = SqlSource(definitions.sources["db"], SourceMetrics(Metrics("inline-test")))
    try:
        await source.write_online(view, [((1,), {"spend": 2.5, "plan": "pro"}, _micros(NOW - timedelta(hours=1)))])
        reads: list[str] = []
        original = aiosqlite.Connection.execute_fetchall

        def counted(self: aiosqlite.Connection, sql: str, parameters: Any = None) -> Any:
            reads.append(sql)
            return original(self, sql, parameters)

        monkeypatch.setattr(aiosqlite.Connection, "execute_fetchall", counted)
        yield source, view, reads
    finally:
        await source.close()


async def test_an_sqlite_read_runs_on_the_event_loop_without_a_thread_trip(
    sqlite_source: tuple[SqlSource, ViewDef, list[str]],
) -> None:
    source, view, thread_reads = sqlite_source
    for _ in range(3):
        (record,) = await source.read_online(view, [ReadItem((1,), {})])
        assert record is not None and dict(record.values) == {"spend": 2.5, "plan": "pro"}
    assert await source.read_online(view, [ReadItem((2,), {})]) == [None]
    assert thread_reads == []


async def test_an_sqlite_read_over_budget_or_locked_out_finishes_in_the_pools_thread(
    sqlite_source: tuple[SqlSource, ViewDef, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, view, thread_reads = sqlite_source
    with monkeypatch.context() as budget:  # every statement interrupted at its first step
        budget.setattr(sql, "INLINE_BUDGET_S", -1.0)
        budget.setattr(sql, "_PROGRESS_EVERY", 1)
        (record,) = await source.read_online(view, [ReadItem((1,), {})])
    assert record is not None and dict(record.values) == {"spend": 2.5, "plan": "pro"}
    assert len(thread_reads) == 1

    await source.close()  # no connection of the source holds the file, so another can lock it whole
    locker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute('UPDATE "select" SET "from" = 3.5')
    read = asyncio.ensure_future(source.read_online(view, [ReadItem((1,), {})]))
    await asyncio.sleep(0.05)  # the inline read found the file locked; the pool's thread waits for it
    locker.execute("COMMIT")
    locker.close()
    (record,) = await read
    assert record is not None and dict(record.values) == {"spend": 3.5, "plan": "pro"}
    assert len(thread_reads) == 2
