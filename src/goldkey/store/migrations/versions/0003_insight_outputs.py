"""insight: profile_insights (reasons, recommendations) and feedback_insights (sentiment, topics)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 08:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_insights",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "profile_id", "model"),
    )
    op.create_table(
        "feedback_insights",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("feedback_id", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("language", sa.String(length=10), nullable=False),
        sa.Column("sentiment", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=10), nullable=False),
        sa.Column("topics", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "feedback_id"),
    )
    with op.batch_alter_table("feedback_insights", schema=None) as batch_op:
        batch_op.create_index("ix_feedback_insights_profile", ["workspace_id", "profile_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback_insights", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_insights_profile")
    op.drop_table("feedback_insights")
    op.drop_table("profile_insights")
