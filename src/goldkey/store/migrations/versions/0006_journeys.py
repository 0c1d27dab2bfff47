"""journeys: journeys, journey_versions, journey_states, journey_steps

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("journey_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("draft", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("entry_cursor", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("journey_id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_journeys_name"),
    )
    op.create_index("ix_journeys_status", "journeys", ["status"])
    op.create_table(
        "journey_versions",
        sa.Column("journey_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("published_by", sa.String(length=100), server_default="api", nullable=False),
        sa.Column("published_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "version"),
    )
    op.create_table(
        "journey_states",
        sa.Column("journey_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entry", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("signal", sa.String(length=20)),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("entered_at", TS, nullable=False),
        sa.Column("wake_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "profile_id"),
    )
    op.create_index("ix_journey_states_due", "journey_states", ["status", "wake_at"])
    op.create_index("ix_journey_states_profile", "journey_states", ["workspace_id", "profile_id"])
    op.create_index("ix_journey_states_node", "journey_states", ["journey_id", "node_id", "status"])
    op.create_table(
        "journey_steps",
        sa.Column("journey_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("entry", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=100), nullable=False),
        sa.Column("node_type", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("outcome", sa.String(length=300), nullable=False),
        sa.Column("next_node", sa.String(length=100)),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "profile_id", "entry", "step"),
    )
    op.create_index("ix_journey_steps_node", "journey_steps", ["journey_id", "node_id"])


def downgrade() -> None:
    op.drop_index("ix_journey_steps_node", table_name="journey_steps")
    op.drop_table("journey_steps")
    op.drop_index("ix_journey_states_node", table_name="journey_states")
    op.drop_index("ix_journey_states_profile", table_name="journey_states")
    op.drop_index("ix_journey_states_due", table_name="journey_states")
    op.drop_table("journey_states")
    op.drop_table("journey_versions")
    op.drop_index("ix_journeys_status", table_name="journeys")
    op.drop_table("journeys")
