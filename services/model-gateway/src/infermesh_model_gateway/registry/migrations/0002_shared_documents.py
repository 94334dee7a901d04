"""Models, versions, rollouts, the audit log and the generation move into the chassis' shared tables.

Each ``models``, ``versions`` and ``rollouts`` row becomes a document (kinds ``model``, ``version``
and ``rollout``, keyed and indexed as :mod:`infermesh_model_gateway.registry.tables` says, at
version 1 and the store's revision, updated now); ``audit`` rows become ``audit_log`` rows with
their id as ``seq`` (page tokens already issued stay valid) and their ISO time in microseconds; the
``generation`` becomes the store's revision. ``leases`` stays. The old tables are dropped; a
downgrade moves the rows back.

Revision ID: 0002
Revises: 0001
"""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

from infermesh_chassis.docstore import copy_audit, copy_numbered, create_document_tables, document_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_previous = sa.MetaData()
_models = sa.Table(
    "models", _previous, sa.Column("name", sa.Text, primary_key=True), sa.Column("doc", sa.Text, nullable=False)
)
_versions = sa.Table(
    "versions",
    _previous,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("doc", sa.Text, nullable=False),
)
_meta = sa.Table(
    "meta", _previous, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.BigInteger, nullable=False)
)
_rollouts = sa.Table(
    "rollouts",
    _previous,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)
_audit = sa.Table(
    "audit",
    _previous,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    *(
        sa.Column(name, sa.Text, nullable=False)
        for name in ("time", "actor", "action", "target", "before", "after", "reason", "request_id")
    ),
    sqlite_autoincrement=True,
)
"""The tables as revision 0001 made them (``leases`` stays as it is)."""

_OLD = (_models, _versions, _meta, _rollouts, _audit)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEXT = ("actor", "action", "target", "before", "after", "reason", "request_id")


def _micros(iso: str) -> int:
    when = datetime.fromisoformat(iso)
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


def _insert(bind: sa.Connection, table: sa.Table, rows: list[dict[str, object]]) -> None:
    if rows:
        bind.execute(sa.insert(table), rows)


def upgrade() -> None:
    """Create the shared tables, move the rows, drop the old tables."""
    bind = op.get_bind()
    tables = create_document_tables(bind)
    generation = int(bind.scalar(sa.select(_meta.c.value).where(_meta.c.key == "generation")) or 0)
    _insert(bind, tables.meta, [{"key": "revision", "value": str(generation)}] if generation else [])
    stamp = {"version": 1, "revision": generation, "updated_us": time.time_ns() // 1000}
    documents = [
        {**stamp, "kind": "model", "key": row.name, "body": row.doc, "parent": None, "label": None, "ordinal": None}
        for row in bind.execute(sa.select(_models))
    ]
    documents += [
        {
            **stamp,
            "kind": "version",
            "key": f"{row.model}/{row.version}",
            "body": row.doc,
            "parent": row.model,
            "label": None,
            "ordinal": row.version,
        }
        for row in bind.execute(sa.select(_versions))
    ]
    documents += [
        {
            **stamp,
            "kind": "rollout",
            "key": row.id,
            "body": row.doc,
            "parent": row.model,
            "label": row.state,
            "ordinal": _micros(row.created),
        }
        for row in bind.execute(sa.select(_rollouts))
    ]
    _insert(bind, tables.documents, documents)
    entries = [
        {
            "seq": row.id,
            "id": uuid.uuid4().hex,
            "time_us": _micros(row.time),
            **{name: getattr(row, name) for name in _TEXT},
        }
        for row in bind.execute(sa.select(_audit))
    ]
    copy_audit(bind, tables, entries)
    for table in reversed(_OLD):
        table.drop(bind)


def downgrade() -> None:
    """Create the old tables, move the rows back, drop the shared tables."""
    bind = op.get_bind()
    tables = document_tables(sa.MetaData())
    for table in _OLD:
        table.create(bind)
    revision = bind.scalar(sa.select(tables.meta.c.value).where(tables.meta.c.key == "revision"))
    _insert(bind, _meta, [{"key": "generation", "value": int(revision)}] if revision is not None else [])
    documents = tables.documents.c
    by_kind: dict[str, list[sa.Row[Any]]] = {}
    query = sa.select(
        documents.kind, documents.key, documents.body, documents.parent, documents.label, documents.ordinal
    )
    for row in bind.execute(query):
        by_kind.setdefault(row.kind, []).append(row)
    _insert(bind, _models, [{"name": row.key, "doc": row.body} for row in by_kind.get("model", [])])
    _insert(
        bind,
        _versions,
        [{"model": row.parent, "version": row.ordinal, "doc": row.body} for row in by_kind.get("version", [])],
    )
    _insert(
        bind,
        _rollouts,
        [
            {
                "id": row.key,
                "model": row.parent,
                "state": row.label,
                "created": json.loads(row.body)["created_at"],
                "doc": row.body,
            }
            for row in by_kind.get("rollout", [])
        ],
    )
    entries = [
        {
            "id": row.seq,
            "time": (_EPOCH + timedelta(microseconds=row.time_us)).isoformat(),
            **{name: getattr(row, name) for name in _TEXT},
        }
        for row in bind.execute(sa.select(tables.audit))
    ]
    copy_numbered(bind, _audit, entries)
    for table in (tables.meta, tables.audit, tables.documents):
        table.drop(bind)
