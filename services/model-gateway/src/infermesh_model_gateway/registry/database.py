"""The registry's database layer: one small interface over SQLite and PostgreSQL.

Both engines hold the same tables (``models``, ``versions``, ``rollouts``, ``leases``, ``audit``,
``meta``) as JSON documents keyed by their names; every change runs in one transaction,
serialized across gateway instances (SQLite's ``BEGIN IMMEDIATE``; a PostgreSQL
transaction-level advisory lock). Statements use ``?`` placeholders whatever the engine.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiosqlite
import asyncpg

__all__ = ["Connection", "Database", "PostgresDatabase", "SqliteDatabase"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS versions (model TEXT NOT NULL, version BIGINT NOT NULL, doc TEXT NOT NULL, "
    "PRIMARY KEY (model, version))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, model TEXT NOT NULL, state TEXT NOT NULL, "
    "created TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL)",
)
_AUDIT_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL, "
    "action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, reason TEXT NOT NULL, "
    "request_id TEXT NOT NULL)"
)
_AUDIT_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS audit (id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, "
    "action TEXT NOT NULL, target TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL, reason TEXT NOT NULL, "
    "request_id TEXT NOT NULL)"
)


class Connection(abc.ABC):
    """SQL with ``?`` placeholders, whatever the engine."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a query."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None:
        """Run a statement."""


class Database(abc.ABC):
    """One engine: a read connection and serialized write transactions."""

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection for reads outside a transaction."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction, exclusive across every gateway sharing the database."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


class _SqliteConnection(Connection):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._db.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute(sql, args)


class SqliteDatabase(Database):
    """SQLite through aiosqlite: one connection, WAL, ``BEGIN IMMEDIATE`` for writes."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._conn = _SqliteConnection(db)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        """Open (creating) the database file and its tables."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # one process at a time: SQLite answers "database is locked" at once, whatever the busy timeout,
        # to a second process switching a file to WAL meanwhile (an instance's workers start together)
        opening = await asyncio.to_thread(_exclusive, path.with_name(f"{path.name}.open-lock"))
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
            try:
                await db.execute("PRAGMA busy_timeout=10000")
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=FULL")
                for statement in (*_SCHEMA, _AUDIT_SQLITE):
                    await db.execute(statement)
            except BaseException:
                await db.close()  # its thread would keep the process from exiting
                raise
        finally:
            opening.close()
        return cls(db)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._lock:
            yield self._conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def close(self) -> None:
        await self._db.close()


def _exclusive(path: Path) -> IO[bytes]:
    """Open ``path`` and hold an exclusive lock on it (blocking) until the file is closed."""
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _numbered(sql: str) -> str:
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


class _PostgresConnection(Connection):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *args)


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool; writes hold a transaction-level advisory lock."""

    _LOCK_KEY = 0x1F3A_D0C5

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        """Connect and create the tables."""
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            for statement in (*_SCHEMA, _AUDIT_POSTGRES):
                await conn.execute(statement)
        return cls(pool)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn:
            yield _PostgresConnection(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._LOCK_KEY)
            yield _PostgresConnection(conn)

    async def close(self) -> None:
        await self._pool.close()
