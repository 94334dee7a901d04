"""The registry's tables, declared once, and its store on SQLite or PostgreSQL (the chassis' docstore).

Both engines hold the same tables (``models``, ``versions``, ``rollouts``, ``leases``, ``audit``,
``meta``); records are JSON documents keyed by their names. Statements are built with SQLAlchemy,
which renders them for the engine. Every change runs in one write transaction of the
:class:`~infermesh_chassis.docstore.Store`, serialized across gateway instances.

The schema is Alembic's: the revisions in ``migrations/`` run at open, in one such transaction. A
change of the tables below comes with a new revision there.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import DOUBLE_PRECISION, BigInteger, Column, Integer, MetaData, Table, Text

from infermesh_chassis.docstore import Schema, Store, open_store

__all__ = ["SCHEMA", "audit", "leases", "meta", "metadata", "models", "open_database", "rollouts", "versions"]

metadata = MetaData()
"""Every table of the registry."""

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

SCHEMA = Schema(metadata, Path(__file__).with_name("migrations"), baseline="0001", baseline_table="models")
"""The tables and their revisions; ``0001`` is the schema the registry created before it had migrations."""

_LOCK_KEY = 0x1F3A_D0C5
"""The PostgreSQL advisory lock every registry write holds."""


async def open_database(url: str) -> Store:
    """The registry's store at ``sqlite:///path`` or ``postgresql://...``, its schema migrated."""
    return await open_store(url, SCHEMA, lock_key=_LOCK_KEY, setting="registry_url")
