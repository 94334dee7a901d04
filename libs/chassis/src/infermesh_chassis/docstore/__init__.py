"""A store of records in SQL: SQLite (one file, WAL) or PostgreSQL, through SQLAlchemy Core (async).

What a service's store (the model gateway's registry, say) stands on, whatever its tables:

- :class:`Store` (:func:`open_store`): read connections, and write transactions serialized across every instance and
  process sharing the database (SQLite's ``BEGIN IMMEDIATE``; a PostgreSQL transaction-level
  advisory lock);
- :class:`Schema` and :func:`migrate`: the store's tables and the Alembic revisions that build
  them, applied at open in one write transaction; a database created before the store had
  migrations is stamped with a baseline revision instead;
- :func:`upsert`: the engine's own insert-or-update, rendered by SQLAlchemy.

Needs the ``docstore`` extra: ``infermesh-chassis[docstore]``.
"""

try:
    import alembic  # noqa: F401
    import sqlalchemy  # noqa: F401
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"infermesh_chassis.docstore needs the 'docstore' extra: install infermesh-chassis[docstore] ({missing})"
    ) from missing

from infermesh_chassis.docstore._migrate import Schema, migrate
from infermesh_chassis.docstore._store import Connection, PostgresStore, SqliteStore, Store, open_store, upsert

__all__ = ["Connection", "PostgresStore", "Schema", "SqliteStore", "Store", "migrate", "open_store", "upsert"]
