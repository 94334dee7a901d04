"""The configuration store's tables as the business center created them before it had migrations.

A database created then (tables, no ``alembic_version``) is stamped with this revision instead of
running it.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_INTEGER = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "objects",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("config_version", _INTEGER, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("seq", _INTEGER, primary_key=True),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("time_us", _INTEGER, nullable=False),
        *(
            sa.Column(name, sa.Text, nullable=False)
            for name in ("actor", "action", "target", "before_json", "after_json", "reason", "request_id")
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("audit_target", "audit", ["target"])
    op.create_table("meta", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False))


def downgrade() -> None:
    """Drop the tables."""
    op.drop_table("meta")
    op.drop_index("audit_target", "audit")
    op.drop_table("audit")
    op.drop_table("objects")
