"""Models, versions, rollouts, the audit log and the generation move into the chassis' shared tables.

Each ``models``, ``versions`` and ``rollouts`` row becomes a document (kinds ``model``, ``version``
and ``rollout``, keyed and indexed as :mod:`infermesh_model_gateway.registry.tables` says, at
version 1 and the store's revision, updated now); ``audit`` rows become ``audit_log`` rows with
their id as ``seq`` (page tokens already issued stay valid) and their ISO time in microseconds; the
``generation`` becomes the store's revision. ``leases`` stays. The old tables are dropped. One way:
a downgrade would lose the entries written since.

Revision ID: 0002
Revises: 0001
"""

import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from infermesh_chassis.docstore import copy_audit, create_document_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_models = sa.table("models", sa.column("name"), sa.column("doc"))
_versions = sa.table("versions", sa.column("model"), sa.column("version"), sa.column("doc"))
_rollouts = sa.table("rollouts", *(sa.column(name) for name in ("id", "model", "state", "created", "doc")))
_meta = sa.table("meta", sa.column("key"), sa.column("value"))
_audit = sa.table(
    "audit",
    *(
        sa.column(name)
        for name in ("id", "time", "actor", "action", "target", "before", "after", "reason", "request_id")
    ),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(iso: str) -> int:
    when = datetime.fromisoformat(iso)
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


def upgrade() -> None:
    """Create the shared tables, move the rows, drop the old tables."""
    bind = op.get_bind()
    tables = create_document_tables(bind)
    generation = int(bind.scalar(sa.select(_meta.c.value).where(_meta.c.key == "generation")) or 0)
    if generation:
        bind.execute(sa.insert(tables.meta).values(key="revision", value=str(generation)))
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
    if documents:
        bind.execute(sa.insert(tables.documents), documents)
    entries = [
        {
            "seq": row.id,
            "id": uuid.uuid4().hex,
            "time_us": _micros(row.time),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "before": row.before,
            "after": row.after,
            "reason": row.reason,
            "request_id": row.request_id,
        }
        for row in bind.execute(sa.select(_audit))
    ]
    copy_audit(bind, tables, entries)
    for table in ("audit", "rollouts", "meta", "versions", "models"):
        op.drop_table(table)


def downgrade() -> None:
    """Refused: the shared tables may hold more than the old ones could be given back."""
    raise NotImplementedError("revision 0002 of the registry is one way")
