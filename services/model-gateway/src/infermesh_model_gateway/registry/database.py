"""The registry's tables, declared once, and its store on SQLite or PostgreSQL (the chassis' docstore).

Models, versions and rollouts are JSON documents in the chassis' shared ``documents`` table (kinds
``model``, ``version`` and ``rollout``; see :mod:`.tables` for their keys and index columns), every
change an entry of its ``audit_log``, and the generation other instances poll its revision. Leases
are not documents (a holder and an expiry, never audited): they keep the ``leases`` table beside
the shared ones. Statements are built with SQLAlchemy, which renders them for the engine. Every
change runs in one write transaction of the :class:`~infermesh_chassis.docstore.DocumentStore`,
serialized across gateway instances.

The schema is Alembic's: the revisions in ``migrations/`` run at open, in one such transaction (``0002``
moved the registry's own tables into the shared ones). A change of the tables below comes with a new
revision there.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import DOUBLE_PRECISION, Column, MetaData, Table, Text

from infermesh_chassis.docstore import DocumentStore, Schema, document_tables, open_store

__all__ = ["SCHEMA", "TABLES", "leases", "metadata", "open_database"]

metadata = MetaData()
"""Every table of the registry."""

TABLES = document_tables(metadata)
"""The shared document tables."""

leases = Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires", DOUBLE_PRECISION, nullable=False),
)

SCHEMA = Schema(metadata, Path(__file__).with_name("migrations"), baseline="0001", baseline_table="models")
"""The tables and their revisions; ``0001`` is the schema the registry created before it had migrations."""

_LOCK_KEY = 0x1F3A_D0C5
"""The PostgreSQL advisory lock every registry write holds."""


async def open_database(url: str) -> DocumentStore:
    """The registry's store at ``sqlite:///path`` or ``postgresql://...``, its schema migrated."""
    return DocumentStore(await open_store(url, SCHEMA, lock_key=_LOCK_KEY, setting="registry_url"), TABLES)
