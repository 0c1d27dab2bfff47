"""feedback.identifiers: the identifiers an imported feedback record named its customer by

A feedback record is stored on the profile its identifiers resolved to when it was imported. If that
was the survivor of a merge that is later undone, the record has to go back to the profile it was
about: the one holding the identifiers it named. The column keeps them (a JSON object, identifier
type -> normalised value); records imported before this revision have none and stay where they are.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("identifiers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("identifiers")
