"""model scores in a narrow table of their own: profile_scores (moved out of profiles.scores)

A model run rewrote every scored profile's wide row (attributes, traits, tags, order summary,
recent events ...) just to change its scores; now it writes one small row per profile. The upgrade
copies every non-empty ``profiles.scores`` (merged-away profiles included: an undo of a later
merge recombines from them) and drops the column (SQLite: batch mode, the table is rebuilt). It
also adds ``ix_profiles_live`` (workspace, merged_into, profile_id): the write-back finds a
workspace's live profiles and checks that a profile is live from that index, without reading the
wide profile rows. The downgrade puts the column back and copies the scores into it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 19:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_scores",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "profile_id"),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at) "
        "SELECT workspace_id, profile_id, scores, updated_at FROM profiles "
        "WHERE scores IS NOT NULL AND scores <> '{}'"
    )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_column("scores")
        batch_op.create_index("ix_profiles_live", ["workspace_id", "merged_into", "profile_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_live")
        batch_op.add_column(sa.Column("scores", sa.Text(), server_default="{}", nullable=False))
    op.execute(
        "UPDATE profiles SET scores = (SELECT s.scores FROM profile_scores s "
        "WHERE s.workspace_id = profiles.workspace_id AND s.profile_id = profiles.profile_id) "
        "WHERE EXISTS (SELECT 1 FROM profile_scores s "
        "WHERE s.workspace_id = profiles.workspace_id AND s.profile_id = profiles.profile_id)"
    )
    op.drop_table("profile_scores")
