"""Durable scenes, experiments and audit log in SQLite, on the chassis' store.

Objects are stored as the contract's JSON (``json_format``) under ``(kind, name)`` with their
config version. Every change runs in one write transaction of the
:class:`~infermesh_chassis.docstore.Store` (``BEGIN IMMEDIATE``): it re-reads the stored object,
checks the expected config version (optimistic concurrency, ABORTED on a mismatch), writes, appends
the audit entry and bumps the store's revision, so several instances sharing one database file
serialize their writes and see each other's changes by polling :meth:`ConfigStore.revision`. The
schema is the Alembic revisions in ``migrations/``, applied at open.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text, cast, delete, func, insert, select

from infermesh.common.v1 import common_pb2
from infermesh_chassis.docstore import Connection, Schema, SqliteStore, Store, upsert
from infermesh_chassis.errors import Aborted, InvalidArgument, NotFound

__all__ = [
    "SCHEMA",
    "AuditRecord",
    "ConfigStore",
    "Objects",
    "Stored",
    "WriteCheck",
    "decode_token",
    "encode_token",
    "metadata",
]

_INTEGER = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData()
objects = Table(
    "objects",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("config_version", _INTEGER, nullable=False),
    Column("body", Text, nullable=False),
)
audit = Table(
    "audit",
    metadata,
    Column("seq", _INTEGER, primary_key=True),
    Column("id", Text, nullable=False),
    Column("time_us", _INTEGER, nullable=False),
    *(
        Column(name, Text, nullable=False)
        for name in ("actor", "action", "target", "before_json", "after_json", "reason", "request_id")
    ),
    Index("audit_target", "target"),
    sqlite_autoincrement=True,
)
meta = Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))

SCHEMA = Schema(metadata, Path(__file__).with_name("migrations"), baseline="0001", baseline_table="objects")
"""The tables and their revisions; ``0001`` is the schema the store created before it had migrations."""

_REVISION = select(meta.c.value).where(meta.c.key == "revision")


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored object: its JSON body and config version."""

    kind: str
    name: str
    config_version: int
    body: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What a change records besides the object itself."""

    actor: str
    reason: str
    request_id: str


class Objects:
    """Reads of stored objects on one connection (inside a write's transaction, for its checks)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def find(self, kind: str, name: str) -> Stored | None:
        """One stored object, or None."""
        query = select(objects.c.config_version, objects.c.body).where(objects.c.kind == kind, objects.c.name == name)
        row = (await self._conn.execute(query)).first()
        return None if row is None else Stored(kind, name, row.config_version, row.body)

    async def all(self, kind: str) -> list[Stored]:
        """Every stored object of ``kind``, by name."""
        query = select(objects.c.name, objects.c.config_version, objects.c.body).where(objects.c.kind == kind)
        rows = await self._conn.execute(query.order_by(objects.c.name))
        return [Stored(kind, name, version, body) for name, version, body in rows]


WriteCheck = Callable[[Objects, Stored | None], Awaitable[None]]
"""Runs inside a write's transaction with the stored object (None if absent); raises to refuse."""


def encode_token(value: str) -> str:
    """An opaque page token for ``value``."""
    return base64.urlsafe_b64encode(value.encode()).decode()


def decode_token(token: str) -> str:
    """The value inside a page token (INVALID_ARGUMENT when it is not one)."""
    try:
        value = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not value:
        raise InvalidArgument("page.page_token: not a token this service issued")
    return value


class ConfigStore:
    """The store behind the registry (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @classmethod
    async def open(cls, path: Path) -> ConfigStore:
        """Open (creating) the database file, and migrate its schema."""
        return cls(await SqliteStore.open(path, SCHEMA))

    async def close(self) -> None:
        """Close the database."""
        await self._store.close()

    async def revision(self) -> int:
        """A number that changes with every write, by any instance."""
        async with self._store.read() as conn:
            value = await conn.scalar(_REVISION)
        return int(value or 0)

    async def meta(self, key: str) -> str | None:
        """A stored meta value (e.g. the last applied seed file version)."""
        async with self._store.read() as conn:
            value = await conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a meta value."""
        async with self._store.transaction() as conn:
            await conn.execute(upsert(conn, meta, {"key": key, "value": value}, ("value",)))

    async def all(self, kind: str) -> list[Stored]:
        """Every stored object of ``kind``, by name."""
        async with self._store.read() as conn:
            return await Objects(conn).all(kind)

    async def get(self, kind: str, name: str) -> Stored:
        """One stored object (NOT_FOUND when absent)."""
        async with self._store.read() as conn:
            stored = await Objects(conn).find(kind, name)
        if stored is None:
            raise NotFound(f"{kind} '{name}' does not exist")
        return stored

    @staticmethod
    def _expect(kind: str, name: str, current: Stored | None, expected: int | None) -> None:
        if expected is None:
            return
        have = 0 if current is None else current.config_version
        if have != expected:
            state = "does not exist" if current is None else f"is at config version {have}"
            raise Aborted(f"{kind} '{name}' {state}, not {expected}: re-read it and retry")

    @staticmethod
    async def _audit(
        conn: Connection, action: str, target: str, *, before: str, after: str, who: AuditRecord
    ) -> common_pb2.AuditEntry:
        entry = common_pb2.AuditEntry(
            id=uuid.uuid4().hex,
            actor=who.actor,
            action=action,
            target=target,
            before_json=before,
            after_json=after,
            reason=who.reason,
            request_id=who.request_id,
        )
        time_us = time.time_ns() // 1000
        entry.time.FromMicroseconds(time_us)
        await conn.execute(
            insert(audit).values(
                id=entry.id,
                time_us=time_us,
                actor=who.actor,
                action=action,
                target=target,
                before_json=before,
                after_json=after,
                reason=who.reason,
                request_id=who.request_id,
            )
        )
        bump = cast(cast(meta.c.value, BigInteger) + 1, Text)
        await conn.execute(upsert(conn, meta, {"key": "revision", "value": "1"}, value=bump))
        return entry

    async def put(
        self,
        kind: str,
        name: str,
        render: Callable[[int], str],
        *,
        expected: int | None,
        who: AuditRecord,
        check: WriteCheck | None = None,
        unchanged: Callable[[Stored], bool] | None = None,
    ) -> tuple[Stored, common_pb2.AuditEntry | None]:
        """Create or replace ``(kind, name)`` with ``render(new config version)``; returns what is
        stored and the audit entry written (None when nothing changed).

        Nothing is written (no version spent, no audit entry) when ``unchanged(stored)`` says the
        stored object already is what is asked for.
        """
        async with self._store.transaction() as conn:
            current = await Objects(conn).find(kind, name)
            self._expect(kind, name, current, expected)
            if check is not None:
                await check(Objects(conn), current)
            if current is not None and unchanged is not None and unchanged(current):
                return current, None
            version = 1 if current is None else current.config_version + 1
            body = render(version)
            values = {"kind": kind, "name": name, "config_version": version, "body": body}
            await conn.execute(upsert(conn, objects, values, ("config_version", "body")))
            before = current.body if current else ""
            entry = await self._audit(conn, f"{kind}.upsert", f"{kind}s/{name}", before=before, after=body, who=who)
            return Stored(kind, name, version, body), entry

    async def delete(
        self, kind: str, name: str, *, expected: int | None, who: AuditRecord, check: WriteCheck | None = None
    ) -> tuple[Stored, common_pb2.AuditEntry]:
        """Delete ``(kind, name)``; returns what it was and the audit entry (NOT_FOUND when absent)."""
        async with self._store.transaction() as conn:
            current = await Objects(conn).find(kind, name)
            if current is None:
                raise NotFound(f"{kind} '{name}' does not exist")
            self._expect(kind, name, current, expected)
            if check is not None:
                await check(Objects(conn), current)
            await conn.execute(delete(objects).where(objects.c.kind == kind, objects.c.name == name))
            entry = await self._audit(conn, f"{kind}.delete", f"{kind}s/{name}", before=current.body, after="", who=who)
            return current, entry

    async def audit(
        self, query: common_pb2.AuditFilter, page_size: int, after_seq: int | None
    ) -> tuple[list[common_pb2.AuditEntry], int | None]:
        """Audit entries matching ``query``, newest first, after ``after_seq``; returns (entries, next seq)."""
        statement = select(audit).order_by(audit.c.seq.desc()).limit(page_size + 1)
        if after_seq is not None:
            statement = statement.where(audit.c.seq < after_seq)
        if query.target_prefix:
            prefix = query.target_prefix
            statement = statement.where(func.substr(audit.c.target, 1, len(prefix)) == prefix)
        if query.actor:
            statement = statement.where(audit.c.actor == query.actor)
        if query.actions:
            statement = statement.where(audit.c.action.in_(list(query.actions)))
        if query.HasField("start_time"):
            statement = statement.where(audit.c.time_us >= query.start_time.ToMicroseconds())
        if query.HasField("end_time"):
            statement = statement.where(audit.c.time_us < query.end_time.ToMicroseconds())
        async with self._store.read() as conn:
            rows = (await conn.execute(statement)).all()
        entries = []
        for row in rows[:page_size]:
            entry = common_pb2.AuditEntry(
                id=row.id,
                actor=row.actor,
                action=row.action,
                target=row.target,
                before_json=row.before_json,
                after_json=row.after_json,
                reason=row.reason,
                request_id=row.request_id,
            )
            entry.time.FromMicroseconds(row.time_us)
            entries.append(entry)
        next_seq = rows[page_size - 1].seq if len(rows) > page_size else None
        return entries, next_seq
