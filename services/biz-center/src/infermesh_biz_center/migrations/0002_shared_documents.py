"""Scenes, experiments, the audit log and the meta values move into the chassis' shared tables.

``objects`` rows become ``documents`` (kind and name as kind and key, the config version as the
document's version, at the store's revision, updated now); ``audit`` rows become ``audit_log`` rows
with the same ``seq`` (page tokens already issued stay valid); ``meta`` (the revision, the seed
version) becomes ``store_meta``. The old tables are dropped; a downgrade moves the rows back.

Revision ID: 0002
Revises: 0001
"""

import time

import sqlalchemy as sa
from alembic import op

from infermesh_chassis.docstore import copy_audit, copy_numbered, create_document_tables, document_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_INTEGER = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_previous = sa.MetaData()
_objects = sa.Table(
    "objects",
    _previous,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("config_version", _INTEGER, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
_audit = sa.Table(
    "audit",
    _previous,
    sa.Column("seq", _INTEGER, primary_key=True),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("time_us", _INTEGER, nullable=False),
    *(
        sa.Column(name, sa.Text, nullable=False)
        for name in ("actor", "action", "target", "before_json", "after_json", "reason", "request_id")
    ),
    sa.Index("audit_target", "target"),
    sqlite_autoincrement=True,
)
_meta = sa.Table(
    "meta", _previous, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False)
)
"""The tables as revision 0001 made them."""

_RENAMED = {"before_json": "before", "after_json": "after"}
"""The audit columns whose names changed."""


def _insert(bind: sa.Connection, table: sa.Table, rows: list[dict[str, object]]) -> None:
    if rows:
        bind.execute(sa.insert(table), rows)


def upgrade() -> None:
    """Create the shared tables, move the rows, drop the old tables."""
    bind = op.get_bind()
    tables = create_document_tables(bind)
    meta = {row.key: row.value for row in bind.execute(sa.select(_meta))}
    _insert(bind, tables.meta, [{"key": key, "value": value} for key, value in meta.items()])
    stamp = {"revision": int(meta.get("revision", 0)), "updated_us": time.time_ns() // 1000}
    documents = [
        {**stamp, "kind": row.kind, "key": row.name, "version": row.config_version, "body": row.body}
        for row in bind.execute(sa.select(_objects))
    ]
    _insert(bind, tables.documents, documents)
    entries = [
        {_RENAMED.get(name, name): value for name, value in row._mapping.items()}
        for row in bind.execute(sa.select(_audit))
    ]
    copy_audit(bind, tables, entries)
    for table in (_meta, _audit, _objects):
        table.drop(bind)


def downgrade() -> None:
    """Create the old tables, move the rows back, drop the shared tables."""
    bind = op.get_bind()
    tables = document_tables(sa.MetaData())
    for table in (_objects, _audit, _meta):
        table.create(bind)
    _insert(bind, _meta, [dict(row._mapping) for row in bind.execute(sa.select(tables.meta))])
    documents = sa.select(
        tables.documents.c.kind, tables.documents.c.key, tables.documents.c.version, tables.documents.c.body
    )
    _insert(
        bind,
        _objects,
        [
            {"kind": kind, "name": key, "config_version": version, "body": body}
            for kind, key, version, body in bind.execute(documents)
        ],
    )
    back = {new: old for old, new in _RENAMED.items()}
    copy_numbered(
        bind,
        _audit,
        [
            {back.get(name, name): value for name, value in row._mapping.items()}
            for row in bind.execute(sa.select(tables.audit))
        ],
    )
    for table in (tables.meta, tables.audit, tables.documents):
        table.drop(bind)
