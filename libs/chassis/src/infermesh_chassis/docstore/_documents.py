"""Documents, one audit log and a store-wide revision: the tables and API every service's records use."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy import Connection as SyncConnection
from sqlalchemy.sql.elements import ColumnClause

from infermesh_chassis.docstore._store import Connection, Store, upsert

__all__ = [
    "AuditEntry",
    "Document",
    "DocumentStore",
    "DocumentTables",
    "Documents",
    "copy_audit",
    "copy_numbered",
    "create_document_tables",
    "document_tables",
]

_INTEGER = BigInteger().with_variant(Integer, "sqlite")
_AUDIT_TEXT = ("actor", "action", "target", "before", "after", "reason", "request_id")
_REVISION = "revision"


class DocumentTables:
    """The shared tables, declared in one service's metadata, and the statements read most often
    (built once: the revision others poll, the document every write starts from)."""

    def __init__(self, documents: Table, audit: Table, meta: Table) -> None:
        self.documents = documents
        self.audit = audit
        self.meta = meta
        self.revision: Select[tuple[Any]] = select(meta.c.value).where(meta.c.key == _REVISION)
        c = documents.c
        self.document: Select[Any] = select(documents).where(c.kind == bindparam("kind"), c.key == bindparam("key"))


def document_tables(metadata: MetaData) -> DocumentTables:
    """Declare the shared tables in ``metadata`` (beside the service's own tables, if any).

    - ``documents``: one JSON (or other text) ``body`` under ``(kind, key)``, its ``version`` (1, 2, ...
      per document), the store ``revision`` and time (``updated_us``) of its last write, and three
      optional index columns a service fills to query a kind without reading bodies: ``parent`` (what
      the document belongs to), ``label`` (a short state to filter on) and ``ordinal`` (a number that
      orders documents, within their parent or within their kind);
    - ``audit_log``: one row per change, numbered by ``seq`` in commit order;
    - ``store_meta``: small named values, the store's revision among them.
    """
    documents = Table(
        "documents",
        metadata,
        Column("kind", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("version", _INTEGER, nullable=False),
        Column("revision", _INTEGER, nullable=False),
        Column("updated_us", _INTEGER, nullable=False),
        Column("body", Text, nullable=False),
        Column("parent", Text),
        Column("label", Text),
        Column("ordinal", _INTEGER),
        Index("documents_parent", "kind", "parent", "ordinal"),
        Index("documents_ordinal", "kind", "ordinal"),
        Index("documents_revision", "revision"),
    )
    audit = Table(
        "audit_log",
        metadata,
        Column("seq", _INTEGER, primary_key=True),
        Column("id", Text, nullable=False),
        Column("time_us", _INTEGER, nullable=False),
        *(Column(name, Text, nullable=False) for name in _AUDIT_TEXT),
        Index("audit_log_target", "target"),
        sqlite_autoincrement=True,
    )
    meta = Table("store_meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
    return DocumentTables(documents, audit, meta)


def create_document_tables(bind: SyncConnection) -> DocumentTables:
    """Create the shared tables on ``bind`` (an Alembic revision's ``op.get_bind()``), as
    :func:`document_tables` declares them; returns them, for the revision to move data into.

    The one revision of a service that adopts the shared tables calls this. A later change of the
    tables keeps today's declaration for that revision and comes with a helper of its own for the
    revision that makes it.
    """
    tables = document_tables(MetaData())
    for table in (tables.documents, tables.audit, tables.meta):
        table.create(bind)
    return tables


def copy_numbered(bind: SyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` that keep the numbers of ``table``'s autoincrementing primary key; on
    PostgreSQL its sequence then continues after the highest (SQLite's does by itself)."""
    if not rows:
        return
    bind.execute(insert(table), list(rows))
    if bind.dialect.name == "postgresql":
        (key,) = table.primary_key.columns
        sequence = func.pg_get_serial_sequence(table.name, key.name)
        bind.execute(select(func.setval(sequence, select(func.max(key)).scalar_subquery())))


def copy_audit(bind: SyncConnection, tables: DocumentTables, rows: Sequence[dict[str, Any]]) -> None:
    """Insert audit ``rows`` that keep their ``seq`` (paging tokens already issued stay valid)."""
    copy_numbered(bind, tables.audit, rows)


@dataclass(frozen=True, slots=True)
class Document:
    """One stored document."""

    kind: str
    key: str
    version: int
    revision: int
    updated_us: int
    body: str
    parent: str | None
    label: str | None
    ordinal: int | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change as the audit log keeps it: ``before`` and ``after`` are the target's documents
    ("" where it did not exist)."""

    seq: int
    id: str
    time_us: int
    actor: str
    action: str
    target: str
    before: str
    after: str
    reason: str
    request_id: str


def _document(row: Row[Any]) -> Document:
    return Document(
        row.kind, row.key, row.version, row.revision, row.updated_us, row.body, row.parent, row.label, row.ordinal
    )


class Documents:
    """The documents on one connection: reads, and inside :meth:`DocumentStore.write` writes and
    audit entries, at the revision that write gives the store."""

    def __init__(self, tables: DocumentTables, conn: Connection, revision: int | None = None) -> None:
        self.conn = conn
        self.c = tables.documents.c
        """The documents' columns, for the conditions and orders of :meth:`list`."""
        self._tables = tables
        self._revision = revision
        self.changed = False
        """Whether this write put, deleted or audited anything."""

    async def get(self, kind: str, key: str) -> Document | None:
        """One document, or None."""
        row = (await self.conn.execute(self._tables.document, {"kind": kind, "key": key})).first()
        return None if row is None else _document(row)

    async def list(
        self,
        kind: str,
        *where: ColumnElement[bool],
        order_by: Iterable[ColumnElement[Any] | ColumnClause[Any]] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Document]:
        """The documents of ``kind`` meeting ``where`` (conditions on :attr:`c`), by key unless
        ``order_by`` says otherwise."""
        table = self._tables.documents
        query = select(table).where(table.c.kind == kind, *where).order_by(*(tuple(order_by) or (table.c.key,)))
        if limit is not None:
            query = query.limit(limit).offset(offset)
        return [_document(row) for row in await self.conn.execute(query)]

    async def scalar(self, kind: str, column: ColumnElement[Any], *where: ColumnElement[bool]) -> Any:
        """One value over the documents of ``kind`` meeting ``where`` (``func.max(c.ordinal)``, say)."""
        table = self._tables.documents
        return await self.conn.scalar(select(column).where(table.c.kind == kind, *where).limit(1))

    def _writing(self) -> int:
        if self._revision is None:
            raise RuntimeError("documents are written only inside DocumentStore.write()")
        self.changed = True
        return self._revision

    async def put(
        self,
        kind: str,
        key: str,
        body: str,
        *,
        version: int | None = None,
        parent: str | None = None,
        label: str | None = None,
        ordinal: int | None = None,
    ) -> None:
        """Create or replace a document; its version is ``version``, or one more than before (1 when new)."""
        revision = self._writing()
        table = self._tables.documents
        values = {
            "kind": kind,
            "key": key,
            "version": 1 if version is None else version,
            "revision": revision,
            "updated_us": time.time_ns() // 1000,
            "body": body,
            "parent": parent,
            "label": label,
            "ordinal": ordinal,
        }
        columns = ("revision", "updated_us", "body", "parent", "label", "ordinal")
        if version is None:
            await self.conn.execute(upsert(self.conn, table, values, columns, version=table.c.version + 1))
        else:
            await self.conn.execute(upsert(self.conn, table, values, ("version", *columns)))

    async def delete(self, kind: str, key: str) -> None:
        """Delete a document (nothing when there is none)."""
        self._writing()
        table = self._tables.documents
        await self.conn.execute(delete(table).where(table.c.kind == kind, table.c.key == key))

    async def audit(
        self, action: str, target: str, *, before: str, after: str, actor: str, reason: str, request_id: str
    ) -> AuditEntry:
        """Append the audit entry of a change of ``target`` (its documents before and after)."""
        self._writing()
        values = {
            "id": uuid.uuid4().hex,
            "time_us": time.time_ns() // 1000,
            "actor": actor,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            "reason": reason,
            "request_id": request_id,
        }
        result = await self.conn.execute(insert(self._tables.audit).values(values))
        return AuditEntry(seq=int(result.inserted_primary_key[0]), **values)


class DocumentStore:
    """Documents, their audit log and the store's revision, on a :class:`~.Store` (see the package docstring)."""

    def __init__(self, store: Store, tables: DocumentTables) -> None:
        self.store = store
        """The store underneath, for a service's own tables."""
        self.tables = tables

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Documents]:
        """Documents on a read connection."""
        async with self.store.read() as conn:
            yield Documents(self.tables, conn)

    @contextlib.asynccontextmanager
    async def write(self, *, revise: bool = True) -> AsyncIterator[Documents]:
        """A write transaction (serialized across every store sharing the database); when it changed
        anything, the store's revision moves on by one unless ``revise`` is false (a change nobody
        needs to reload for; its documents still carry the next revision)."""
        async with self.store.transaction() as conn:
            revision = await _revision(conn, self.tables) + 1
            documents = Documents(self.tables, conn, revision)
            yield documents
            if documents.changed and revise:
                meta = self.tables.meta
                await conn.execute(upsert(conn, meta, {"key": _REVISION, "value": str(revision)}, ("value",)))

    async def revision(self) -> int:
        """A number that moves on with every revising write, by any store sharing the database."""
        async with self.store.read() as conn:
            return await _revision(conn, self.tables)

    async def changes(self, since: int, kind: str | None = None) -> list[Document]:
        """The documents (of ``kind``) written after revision ``since``, oldest change first (deleted
        ones are in the audit log only)."""
        table = self.tables.documents
        query = select(table).where(table.c.revision > since).order_by(table.c.revision, table.c.kind, table.c.key)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        async with self.store.read() as conn:
            return [_document(row) for row in await conn.execute(query)]

    async def meta(self, key: str) -> str | None:
        """A stored named value, or None."""
        meta = self.tables.meta
        async with self.store.read() as conn:
            value = await conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a named value (not the revision's name; not a revising write)."""
        if key == _REVISION:
            raise ValueError("the store's revision moves only with its writes")
        async with self.store.transaction() as conn:
            await conn.execute(upsert(conn, self.tables.meta, {"key": key, "value": value}, ("value",)))

    async def audit_page(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        target_prefix: str = "",
        actor: str = "",
        actions: Sequence[str] = (),
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> tuple[list[AuditEntry], int | None]:
        """Up to ``limit`` audit entries, newest first, before ``before_seq``, whose target starts with
        ``target_prefix``, by ``actor``, with one of ``actions``, in ``[start_us, end_us)``; and the
        ``before_seq`` of the next page (None on the last)."""
        audit = self.tables.audit
        query = select(audit).order_by(audit.c.seq.desc()).limit(limit + 1)
        if before_seq is not None:
            query = query.where(audit.c.seq < before_seq)
        if target_prefix:
            query = query.where(func.substr(audit.c.target, 1, len(target_prefix)) == target_prefix)
        if actor:
            query = query.where(audit.c.actor == actor)
        if actions:
            query = query.where(audit.c.action.in_(list(actions)))
        if start_us is not None:
            query = query.where(audit.c.time_us >= start_us)
        if end_us is not None:
            query = query.where(audit.c.time_us < end_us)
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        entries = [
            AuditEntry(r.seq, r.id, r.time_us, *(getattr(r, name) for name in _AUDIT_TEXT)) for r in rows[:limit]
        ]
        return entries, (entries[-1].seq if len(rows) > limit else None)


async def _revision(conn: Connection, tables: DocumentTables) -> int:
    return int(await conn.scalar(tables.revision) or 0)
