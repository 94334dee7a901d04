"""Scenes, experiments, the audit log and the meta values move into the chassis' shared tables.

``objects`` rows become ``documents`` (kind and name as kind and key, the config version as the
document's version, at the store's revision, updated now); ``audit`` rows become ``audit_log`` rows
with the same ``seq`` (page tokens already issued stay valid); ``meta`` (the revision, the seed
version) becomes ``store_meta``. The old tables are dropped. One way: a downgrade would lose the
entries written since.

Revision ID: 0002
Revises: 0001
"""

import time

import sqlalchemy as sa
from alembic import op

from infermesh_chassis.docstore import copy_audit, create_document_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_objects = sa.table("objects", *(sa.column(name) for name in ("kind", "name", "config_version", "body")))
_audit = sa.table(
    "audit",
    *(
        sa.column(name)
        for name in (
            "seq",
            "id",
            "time_us",
            "actor",
            "action",
            "target",
            "before_json",
            "after_json",
            "reason",
            "request_id",
        )
    ),
)
_meta = sa.table("meta", sa.column("key"), sa.column("value"))


def upgrade() -> None:
    """Create the shared tables, move the rows, drop the old tables."""
    bind = op.get_bind()
    tables = create_document_tables(bind)
    meta = {row.key: row.value for row in bind.execute(sa.select(_meta))}
    if meta:
        bind.execute(sa.insert(tables.meta), [{"key": key, "value": value} for key, value in meta.items()])
    now_us = time.time_ns() // 1000
    documents = [
        {
            "kind": row.kind,
            "key": row.name,
            "version": row.config_version,
            "revision": int(meta.get("revision", 0)),
            "updated_us": now_us,
            "body": row.body,
        }
        for row in bind.execute(sa.select(_objects))
    ]
    if documents:
        bind.execute(sa.insert(tables.documents), documents)
    entries = [
        {
            "seq": row.seq,
            "id": row.id,
            "time_us": row.time_us,
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "before": row.before_json,
            "after": row.after_json,
            "reason": row.reason,
            "request_id": row.request_id,
        }
        for row in bind.execute(sa.select(_audit))
    ]
    copy_audit(bind, tables, entries)
    op.drop_index("audit_target", "audit")
    for table in ("meta", "audit", "objects"):
        op.drop_table(table)


def downgrade() -> None:
    """Refused: the shared tables may hold more than the old ones could be given back."""
    raise NotImplementedError("revision 0002 of the configuration store is one way")
