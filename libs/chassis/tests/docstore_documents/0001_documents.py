"""The shared document tables, and an audit entry from before them kept with its number.

Revision ID: 0001
"""

from alembic import op

from infermesh_chassis.docstore import copy_audit, create_document_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

KEPT = {
    "seq": 41,
    "id": "kept",
    "time_us": 1764000000000000,
    "actor": "bob",
    "action": "note.upsert",
    "target": "notes/kept",
    "before": "",
    "after": "{}",
    "reason": "",
    "request_id": "",
}


def upgrade() -> None:
    """Create the tables; copy one entry."""
    copy_audit(op.get_bind(), create_document_tables(op.get_bind()), [KEPT])


def downgrade() -> None:
    """Drop the tables."""
    for table in ("store_meta", "audit_log", "documents"):
        op.drop_table(table)
