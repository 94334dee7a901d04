"""Stores on SQLite or PostgreSQL: read connections and serialized write transactions."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from infermesh_chassis.docstore._migrate import Schema, migrate
from infermesh_chassis.errors import InvalidArgument

__all__ = ["Connection", "PostgresStore", "SqliteStore", "Store", "open_store", "upsert"]

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


class Store(abc.ABC):
    """One database: read connections and serialized write transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection for reads outside a transaction."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction, exclusive across every instance sharing the database."""

    async def close(self) -> None:
        """Release connections."""
        await self.engine.dispose()


class SqliteStore(Store):
    """SQLite through aiosqlite: one connection, WAL, ``BEGIN IMMEDIATE`` for writes.

    The driver's own transaction handling is off (``isolation_level=None``): reads run outside a
    transaction, and a write begins one itself, taking the database's write lock at once. The one
    connection stays checked out while the store is open (a checkout per read cost more than the
    read).
    """

    def __init__(self, engine: AsyncEngine, conn: Connection) -> None:
        super().__init__(engine)
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, schema: Schema) -> SqliteStore:
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
            store = cls(engine, await engine.connect())
        except BaseException:
            opening.close()
            await engine.dispose()
            raise
        try:
            async with store.transaction() as conn:
                await conn.run_sync(migrate, schema)
        except BaseException:
            await store.close()  # its connection's thread would keep the process from exiting
            raise
        finally:
            opening.close()
        return store

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


class PostgresStore(Store):
    """PostgreSQL through asyncpg (a pool of up to 4); writes hold a transaction-level advisory lock
    on ``lock_key`` (one key per kind of store), reads run outside a transaction."""

    def __init__(self, engine: AsyncEngine, lock_key: int) -> None:
        super().__init__(engine)
        self._lock_key = lock_key
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    async def open(cls, url: str, schema: Schema, *, lock_key: int) -> PostgresStore:
        """Connect (``postgresql://...``), and migrate the schema."""
        engine = create_async_engine(make_url(url).set(drivername="postgresql+asyncpg"), pool_size=4, max_overflow=0)
        store = cls(engine, lock_key)
        try:
            async with store.transaction() as conn:
                await conn.run_sync(migrate, schema)
        except BaseException:
            await engine.dispose()
            raise
        return store

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._reads.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.engine.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(self._lock_key)))
            yield conn


async def open_store(url: str, schema: Schema, *, lock_key: int, setting: str = "url") -> Store:
    """The store at ``sqlite:///path`` or ``postgresql://...``, its schema migrated (INVALID_ARGUMENT
    naming ``setting`` for any other URL)."""
    if url.startswith("sqlite:///"):
        return await SqliteStore.open(Path(url.removeprefix("sqlite://")), schema)
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url, schema, lock_key=lock_key)
    raise InvalidArgument(f"{setting} '{url}' is not sqlite:///<path> or postgresql://...")
