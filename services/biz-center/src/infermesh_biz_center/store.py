"""Durable scenes, experiments and audit log in SQLite, on the chassis' document store.

Objects are stored as the contract's JSON (``json_format``) in the chassis' shared ``documents``
table: kind and name as the document's kind and key, the config version as its version. Every change
runs in one write of the :class:`~infermesh_chassis.docstore.DocumentStore` (``BEGIN IMMEDIATE``): it
re-reads the stored object, checks the expected config version (optimistic concurrency, ABORTED on a
mismatch), writes, appends the audit entry to the shared ``audit_log`` and moves the store's
revision on, so several instances sharing one database file serialize their writes and see each
other's changes by polling :meth:`ConfigStore.revision`. The schema is the Alembic revisions in
``migrations/``, applied at open (``0002`` moved the store's own tables into the shared ones).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import MetaData

from infermesh.common.v1 import common_pb2
from infermesh_chassis.docstore import (
    AuditEntry,
    Document,
    Documents,
    DocumentStore,
    Schema,
    SqliteStore,
    document_tables,
)
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

metadata = MetaData()
TABLES = document_tables(metadata)

SCHEMA = Schema(metadata, Path(__file__).with_name("migrations"), baseline="0001", baseline_table="objects")
"""The tables and their revisions; ``0001`` is the schema the store created before it had migrations."""


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


def _stored(document: Document) -> Stored:
    return Stored(document.kind, document.key, document.version, document.body)


class Objects:
    """Reads of stored objects on one connection (inside a write's transaction, for its checks)."""

    def __init__(self, documents: Documents) -> None:
        self._documents = documents

    async def find(self, kind: str, name: str) -> Stored | None:
        """One stored object, or None."""
        document = await self._documents.get(kind, name)
        return None if document is None else _stored(document)

    async def all(self, kind: str) -> list[Stored]:
        """Every stored object of ``kind``, by name."""
        return [_stored(document) for document in await self._documents.list(kind)]


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

    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    @classmethod
    async def open(cls, path: Path) -> ConfigStore:
        """Open (creating) the database file, and migrate its schema."""
        return cls(DocumentStore(await SqliteStore.open(path, SCHEMA), TABLES))

    async def close(self) -> None:
        """Close the database."""
        await self._store.close()

    async def revision(self) -> int:
        """A number that changes with every write, by any instance."""
        return await self._store.revision()

    async def meta(self, key: str) -> str | None:
        """A stored meta value (e.g. the last applied seed file version)."""
        return await self._store.meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a meta value."""
        await self._store.set_meta(key, value)

    async def all(self, kind: str) -> list[Stored]:
        """Every stored object of ``kind``, by name."""
        async with self._store.read() as documents:
            return await Objects(documents).all(kind)

    async def get(self, kind: str, name: str) -> Stored:
        """One stored object (NOT_FOUND when absent)."""
        async with self._store.read() as documents:
            stored = await Objects(documents).find(kind, name)
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
        documents: Documents, action: str, target: str, *, before: str, after: str, who: AuditRecord
    ) -> common_pb2.AuditEntry:
        entry = await documents.audit(
            action, target, before=before, after=after, actor=who.actor, reason=who.reason, request_id=who.request_id
        )
        return _entry(entry)

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
        async with self._store.write() as documents:
            current = await Objects(documents).find(kind, name)
            self._expect(kind, name, current, expected)
            if check is not None:
                await check(Objects(documents), current)
            if current is not None and unchanged is not None and unchanged(current):
                return current, None
            version = 1 if current is None else current.config_version + 1
            body = render(version)
            await documents.put(kind, name, body, version=version)
            before = current.body if current else ""
            entry = await self._audit(
                documents, f"{kind}.upsert", f"{kind}s/{name}", before=before, after=body, who=who
            )
            return Stored(kind, name, version, body), entry

    async def delete(
        self, kind: str, name: str, *, expected: int | None, who: AuditRecord, check: WriteCheck | None = None
    ) -> tuple[Stored, common_pb2.AuditEntry]:
        """Delete ``(kind, name)``; returns what it was and the audit entry (NOT_FOUND when absent)."""
        async with self._store.write() as documents:
            current = await Objects(documents).find(kind, name)
            if current is None:
                raise NotFound(f"{kind} '{name}' does not exist")
            self._expect(kind, name, current, expected)
            if check is not None:
                await check(Objects(documents), current)
            await documents.delete(kind, name)
            entry = await self._audit(
                documents, f"{kind}.delete", f"{kind}s/{name}", before=current.body, after="", who=who
            )
            return current, entry

    async def audit(
        self, query: common_pb2.AuditFilter, page_size: int, after_seq: int | None
    ) -> tuple[list[common_pb2.AuditEntry], int | None]:
        """Audit entries matching ``query``, newest first, after ``after_seq``; returns (entries, next seq)."""
        entries, next_seq = await self._store.audit_page(
            limit=page_size,
            before_seq=after_seq,
            target_prefix=query.target_prefix,
            actor=query.actor,
            actions=list(query.actions),
            start_us=query.start_time.ToMicroseconds() if query.HasField("start_time") else None,
            end_us=query.end_time.ToMicroseconds() if query.HasField("end_time") else None,
        )
        return [_entry(entry) for entry in entries], next_seq


def _entry(entry: AuditEntry) -> common_pb2.AuditEntry:
    message = common_pb2.AuditEntry(
        id=entry.id,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        before_json=entry.before,
        after_json=entry.after,
        reason=entry.reason,
        request_id=entry.request_id,
    )
    message.time.FromMicroseconds(entry.time_us)
    return message
