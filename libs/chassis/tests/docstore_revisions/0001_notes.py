"""Notes and counters, as a store created them before it had migrations.

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
    op.create_table("notes", sa.Column("key", sa.Text, primary_key=True), sa.Column("body", sa.Text, nullable=False))
    op.create_table(
        "counters", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.BigInteger, nullable=False)
    )


def downgrade() -> None:
    """Drop the tables."""
    op.drop_table("counters")
    op.drop_table("notes")
