"""The registry's database layer: its tables, and SQLite or PostgreSQL behind SQLAlchemy Core (async).

Both engines hold the same tables (``models``, ``versions``, ``rollouts``, ``leases``, ``audit``,
``meta``), declared once below; records are JSON documents keyed by their names. Statements are
built with SQLAlchemy, which renders them for the engine. Every change runs in one transaction,
serialized across gateway instances (SQLite's ``BEGIN IMMEDIATE``; a PostgreSQL transaction-level
advisory lock).

The schema is Alembic's: the revisions in ``migrations/versions`` run at open (:func:`migrate`), in
one such write transaction. A change of the tables below comes with a new revision there.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    DOUBLE_PRECISION,
    BigInteger,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

__all__ = [
    "Connection",
    "Database",
    "PostgresDatabase",
    "SqliteDatabase",
    "audit",
    "leases",
    "meta",
    "metadata",
    "migrate",
    "models",
    "rollouts",
    "upsert",
    "versions",
]

metadata = MetaData()
"""Every table of the registry (what the migrations in :mod:`.migrations` build)."""

models = Table("models", metadata, Column("name", Text, primary_key=True), Column("doc", Text, nullable=False))
versions = Table(
    "versions",
    metadata,
    Column("model", Text, primary_key=True),
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("doc", Text, nullable=False),
)
meta = Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", BigInteger, nullable=False))
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("model", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("doc", Text, nullable=False),
)
leases = Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires", DOUBLE_PRECISION, nullable=False),
)
audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    *(
        Column(name, Text, nullable=False)
        for name in ("time", "actor", "action", "target", "before", "after", "reason", "request_id")
    ),
    sqlite_autoincrement=True,
)

Connection = AsyncConnection
"""What statements run on: a read connection or a write transaction."""

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert(
    conn: Connection, table: Table, values: Mapping[str, Any], update: Iterable[str] = (), **expressions: Any
) -> Insert:
    """Insert ``values`` into ``table``; where its primary key is taken, set the ``update`` columns to
    the values given and the ``expressions`` columns to theirs instead (the engine's own upsert)."""
    statement = _INSERTS[conn.dialect.name](table).values(values)
    changes = {name: statement.excluded[name] for name in update} | expressions
    return statement.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=changes)


BASELINE = "0001"
"""The revision of the schema the registry had before it had migrations."""


def migrate(conn: SyncConnection) -> None:
    """Bring the schema on ``conn`` to the newest revision, in ``conn``'s transaction.

    A database the gateway created before it had migrations (its tables, no ``alembic_version``) is
    stamped with the :data:`BASELINE` first: it has that schema already.
    """
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    config.attributes["connection"] = conn
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables and "models" in tables:
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")


class Database(abc.ABC):
    """One engine: read connections and serialized write transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection for reads outside a transaction."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction, exclusive across every gateway sharing the database."""

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()


class SqliteDatabase(Database):
    """SQLite through aiosqlite: one connection, WAL, ``BEGIN IMMEDIATE`` for writes.

    The driver's own transaction handling is off (``isolation_level=None``): reads run outside a
    transaction, and a write begins one itself, taking the database's write lock at once. The one
    connection stays checked out while the database is open (a checkout per read cost more than the
    read).
    """

    def __init__(self, engine: AsyncEngine, conn: Connection) -> None:
        super().__init__(engine)
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        """Open (creating) the database file, and migrate its schema."""
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{path}",
            connect_args={"isolation_level": None, "timeout": 10},
            pool_size=1,
            max_overflow=0,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # one process at a time: SQLite answers "database is locked" at once, whatever the busy timeout,
        # to a second process switching a file to WAL meanwhile (an instance's workers start together)
        opening = await asyncio.to_thread(_exclusive, path.with_name(f"{path.name}.open-lock"))
        try:
            database = cls(engine, await engine.connect())
        except BaseException:
            opening.close()
            await engine.dispose()
            raise
        try:
            async with database.transaction() as conn:
                await conn.run_sync(migrate)
        except BaseException:
            await database.close()  # its connection's thread would keep the process from exiting
            raise
        finally:
            opening.close()
        return database

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._lock:
            yield self._conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            await self._conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    async def close(self) -> None:
        await self._conn.close()
        await super().close()


def _sqlite_pragmas(dbapi_connection: Any, _: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _exclusive(path: Path) -> IO[bytes]:
    """Open ``path`` and hold an exclusive lock on it (blocking) until the file is closed."""
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


class PostgresDatabase(Database):
    """PostgreSQL through asyncpg (a pool of up to 4); writes hold a transaction-level advisory lock,
    reads run outside a transaction."""

    _LOCK_KEY = 0x1F3A_D0C5

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """Connect, and migrate the schema."""
        engine = create_async_engine(make_url(url).set(drivername="postgresql+asyncpg"), pool_size=4, max_overflow=0)
        database = cls(engine)
        try:
            async with database.transaction() as conn:
                await conn.run_sync(migrate)
        except BaseException:
            await engine.dispose()
            raise
        return database

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._reads.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.engine.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(self._LOCK_KEY)))
            yield conn
