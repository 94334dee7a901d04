"""The configuration store: its schema from an empty file, and a file created before it had migrations
adopted with its objects, audit entries and revision, moved into the chassis' shared document tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from infermesh.common.v1 import common_pb2
from infermesh_biz_center.store import SCHEMA, AuditRecord, ConfigStore, Objects, Stored, metadata
from infermesh_chassis.docstore import migrate
from infermesh_chassis.errors import Aborted, FailedPrecondition

_PREVIOUS_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  config_version INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL,
  time_us INTEGER NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  before_json TEXT NOT NULL,
  after_json TEXT NOT NULL,
  reason TEXT NOT NULL,
  request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
"""The tables as the store created them at every open before its schema was migrated by Alembic."""

WHO = AuditRecord("alice", "test", "req-1")


def _schema(path: Path) -> tuple[str | None, list[Any]]:
    """The file's Alembic revision, and how its tables differ from the ones the store declares."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            return context.get_current_revision(), compare_metadata(context, metadata)
    finally:
        engine.dispose()


async def test_an_empty_file_gets_the_schema_and_writes_are_versioned_and_audited(tmp_path: Path):
    path = tmp_path / "config.db"
    store = await ConfigStore.open(path)
    try:
        first, entry = await store.put("scene", "home", lambda v: f'{{"v": {v}}}', expected=0, who=WHO)
        assert (first.config_version, first.body) == (1, '{"v": 1}')
        assert entry is not None
        assert (entry.action, entry.target, entry.actor) == ("scene.upsert", "scenes/home", "alice")
        with pytest.raises(Aborted, match="is at config version 1, not 0"):
            await store.put("scene", "home", lambda v: "{}", expected=0, who=WHO)
        assert await store.revision() == 1
    finally:
        await store.close()
    assert _schema(path) == ("0002", [])


async def test_a_check_reads_inside_the_transaction_and_a_refusal_writes_nothing(tmp_path: Path):
    store = await ConfigStore.open(tmp_path / "config.db")

    async def needs_a_scene(objects: Objects, current: Stored | None) -> None:
        if await objects.find("scene", "home") is None:
            raise FailedPrecondition("scene 'home' does not exist")

    try:
        with pytest.raises(FailedPrecondition):
            await store.put("experiment", "ab", lambda v: "{}", expected=None, who=WHO, check=needs_a_scene)
        assert (await store.all("experiment"), await store.revision()) == ([], 0)
        await store.put("scene", "home", lambda v: "{}", expected=None, who=WHO)
        await store.put("experiment", "ab", lambda v: "{}", expected=None, who=WHO, check=needs_a_scene)
        assert [s.name for s in await store.all("experiment")] == ["ab"]
    finally:
        await store.close()


async def test_a_file_created_before_migrations_is_adopted_with_its_data(tmp_path: Path):
    path = tmp_path / "config.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_PREVIOUS_SCHEMA)
        conn.execute("INSERT INTO objects VALUES ('scene', 'home', 3, '{\"name\": \"home\"}')")
        conn.execute(
            "INSERT INTO audit (id, time_us, actor, action, target, before_json, after_json, reason, request_id)"
            " VALUES ('e1', 1764000000000000, 'bob', 'scene.upsert', 'scenes/home', '', '{}', 'seed', '')"
        )
        conn.execute("INSERT INTO meta VALUES ('revision', '5'), ('seed_version', '2')")
    conn.close()

    store = await ConfigStore.open(path)
    try:
        assert (await store.get("scene", "home")).config_version == 3
        assert (await store.revision(), await store.meta("seed_version")) == (5, "2")
        await store.put("scene", "home", lambda v: "{}", expected=3, who=WHO)
        assert await store.revision() == 6
        entries, _ = await store.audit(common_pb2.AuditFilter(target_prefix="scenes/"), 10, None)
        assert [(e.actor, e.action) for e in entries] == [("alice", "scene.upsert"), ("bob", "scene.upsert")]
        assert entries[1].time.ToMicroseconds() == 1764000000000000
        newest, token = await store.audit(common_pb2.AuditFilter(), 1, None)
        assert [e.actor for e in newest] == ["alice"] and token is not None
        assert [e.id for e in (await store.audit(common_pb2.AuditFilter(), 1, token))[0]] == ["e1"]
        assert (await store.audit(common_pb2.AuditFilter(), 10, 1))[0] == [], "the old entry kept its seq, 1"
    finally:
        await store.close()
    # the old tables are gone; what is there is what the store declares
    assert _schema(path) == ("0002", [])


async def test_a_file_at_the_previous_revision_moves_its_rows_into_the_shared_tables(tmp_path: Path):
    path = tmp_path / "config.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            migrate(conn, SCHEMA, "0001")
            conn.exec_driver_sql("INSERT INTO objects VALUES ('scene', 'home', 3, '{}'), ('experiment', 'ab', 1, '{}')")
            for n in range(1, 3):
                conn.exec_driver_sql(
                    "INSERT INTO audit (id, time_us, actor, action, target, before_json, after_json, reason,"
                    f" request_id) VALUES ('e{n}', {n}, 'bob', 'scene.upsert', 'scenes/home', '', '{{}}', '', 'r{n}')"
                )
            conn.exec_driver_sql("INSERT INTO meta VALUES ('revision', '2'), ('seed_version', 'v1')")
    finally:
        engine.dispose()

    store = await ConfigStore.open(path)
    try:
        assert [(s.kind, s.name, s.config_version) for s in await store.all("scene")] == [("scene", "home", 3)]
        assert [s.name for s in await store.all("experiment")] == ["ab"]
        assert (await store.revision(), await store.meta("seed_version")) == (2, "v1")
        await store.delete("experiment", "ab", expected=1, who=WHO)
        assert await store.revision() == 3
        entries, token = await store.audit(common_pb2.AuditFilter(), 2, None)
        assert [(e.action, e.request_id) for e in entries] == [("experiment.delete", "req-1"), ("scene.upsert", "r2")]
        assert token == 2, "the copied entries kept their seq"
        assert [e.id for e in (await store.audit(common_pb2.AuditFilter(), 2, token))[0]] == ["e1"]
    finally:
        await store.close()
    assert _schema(path) == ("0002", [])


async def test_a_downgrade_moves_the_rows_back_and_an_upgrade_moves_them_again(tmp_path: Path):
    path = tmp_path / "config.db"
    store = await ConfigStore.open(path)
    try:
        await store.put("scene", "home", lambda v: f'{{"v": {v}}}', expected=None, who=WHO)
        await store.put("scene", "home", lambda v: f'{{"v": {v}}}', expected=None, who=WHO)
        await store.set_meta("seed_version", "v3")
    finally:
        await store.close()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            migrate(conn, SCHEMA, "0001")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT * FROM objects").all() == [("scene", "home", 2, '{"v": 2}')]
            audit = conn.exec_driver_sql("SELECT seq, actor, before_json, after_json FROM audit ORDER BY seq").all()
            assert audit == [(1, "alice", "", '{"v": 1}'), (2, "alice", '{"v": 1}', '{"v": 2}')]
            meta = conn.exec_driver_sql("SELECT key, value FROM meta ORDER BY key").all()
            assert meta == [("revision", "2"), ("seed_version", "v3")]
    finally:
        engine.dispose()
    assert _schema(path)[0] == "0001"

    store = await ConfigStore.open(path)
    try:
        assert (await store.get("scene", "home")).config_version == 2
        await store.put("scene", "home", lambda v: "{}", expected=2, who=WHO)
        assert (await store.revision(), await store.meta("seed_version")) == (3, "v3")
        entries, _ = await store.audit(common_pb2.AuditFilter(), 10, None)
        assert [e.after_json for e in entries] == ["{}", '{"v": 2}', '{"v": 1}']
    finally:
        await store.close()
    assert _schema(path) == ("0002", [])
