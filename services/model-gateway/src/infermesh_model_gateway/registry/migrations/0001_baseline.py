"""The registry's tables as the gateway created them before it had migrations.

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


def upgrade() -> None:
    """Create the tables."""
    op.create_table("models", sa.Column("name", sa.Text, primary_key=True), sa.Column("doc", sa.Text, nullable=False))
    op.create_table(
        "versions",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_table(
        "meta", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.BigInteger, nullable=False)
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires", sa.DOUBLE_PRECISION, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        *(
            sa.Column(name, sa.Text, nullable=False)
            for name in ("time", "actor", "action", "target", "before", "after", "reason", "request_id")
        ),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    """Drop the tables."""
    for table in ("audit", "leases", "rollouts", "meta", "versions", "models"):
        op.drop_table(table)
