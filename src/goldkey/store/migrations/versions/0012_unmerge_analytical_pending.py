"""merges.analytical_pending: an undone merge's analytical work, until it is done

Undoing a merge commits in the operational store first; the analytical store then has to give the
restored profile back its events and orders. Should that step fail, or the process stop between the
two, the work (a JSON object) stays in this column and the writer does it before its next commit or
at the next start. NULL when there is nothing left to do.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 23:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("merges") as batch:
        batch.add_column(sa.Column("analytical_pending", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("merges") as batch:
        batch.drop_column("analytical_pending")
