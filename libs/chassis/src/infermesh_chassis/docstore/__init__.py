"""A store of records in SQL: SQLite (one file, WAL) or PostgreSQL, through SQLAlchemy Core (async).

What a service's store (the model gateway's registry, say) stands on, whatever its tables:

- :class:`Store` (:func:`open_store`): read connections, and write transactions serialized across every instance and
  process sharing the database (SQLite's ``BEGIN IMMEDIATE``; a PostgreSQL transaction-level
  advisory lock);
- :class:`Schema` and :func:`migrate`: the store's tables and the Alembic revisions that build
  them, applied at open in one write transaction (or down to an older revision, on request); a
  database created before the store had migrations is stamped with a baseline revision instead;
- :func:`upsert`: the engine's own insert-or-update, rendered by SQLAlchemy;
- :class:`DocumentStore`: the document layer on such a store, the one both the business center's
  configuration store and the model gateway's registry keep their records in (below).

The document layer
------------------
:func:`document_tables` declares three tables in a service's metadata: ``documents`` (a text body,
JSON by convention, under ``(kind, key)`` with a per-document ``version``, the store ``revision``
and time of its last write), ``audit_log`` (one entry per change: who, when, what, the target's
documents before and after, why, which request) and ``store_meta`` (small named values, the store's
revision among them). :class:`DocumentStore` reads and writes them: ``get``/``put``/``delete``/
``list`` by kind, audit append and newest-first paging by ``seq``, the current revision (what other
instances poll to reload) and the documents changed since a revision.

Queries stay indexed without a table per kind: a document may fill three generic index columns,
``parent`` (what it belongs to), ``label`` (a short state to filter on) and ``ordinal`` (a number
that orders it), indexed as ``(kind, parent, ordinal)`` and ``(kind, ordinal)``. The registry's
versions are ``parent`` = model and ``ordinal`` = version number (the versions of a model in order,
the highest number, a page before a number: one index range each); its rollouts are ``parent`` =
model, ``label`` = state and ``ordinal`` = creation time (newest first overall or per model, the
active rollout of a model). This was chosen over narrow service tables beside the shared ones: one
write per record instead of two kept in step, and one migration path for every service. State that
is not a document (the registry's leases: a holder and an expiry, no audit) stays in a service table
beside the shared ones, in the same database and transactions. A service adopts the tables with one
Alembic revision that calls :func:`create_document_tables` and moves its rows over, and back on a
downgrade (audit entries keep their ``seq`` through :func:`copy_audit`, so paging tokens already
issued stay valid; :func:`copy_numbered` does the same for the old tables on the way back).

Needs the ``docstore`` extra: ``infermesh-chassis[docstore]``.
"""

try:
    import alembic  # noqa: F401
    import sqlalchemy  # noqa: F401
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"infermesh_chassis.docstore needs the 'docstore' extra: install infermesh-chassis[docstore] ({missing})"
    ) from missing

from infermesh_chassis.docstore._documents import (
    AuditEntry,
    Document,
    Documents,
    DocumentStore,
    DocumentTables,
    copy_audit,
    copy_numbered,
    create_document_tables,
    document_tables,
)
from infermesh_chassis.docstore._migrate import Schema, migrate
from infermesh_chassis.docstore._store import Connection, PostgresStore, SqliteStore, Store, open_store, upsert

__all__ = [
    "AuditEntry",
    "Connection",
    "Document",
    "DocumentStore",
    "DocumentTables",
    "Documents",
    "PostgresStore",
    "Schema",
    "SqliteStore",
    "Store",
    "copy_audit",
    "copy_numbered",
    "create_document_tables",
    "document_tables",
    "migrate",
    "open_store",
    "upsert",
]
