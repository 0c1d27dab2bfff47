"""campaigns: campaigns, campaign_runs, campaign_members, triggers, trigger_firings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("run", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_run_at", TS),
        sa.Column("error", sa.Text()),
        sa.Column("created_by", sa.String(length=100), server_default="api", nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_campaigns_name"),
    )
    op.create_index("ix_campaigns_due", "campaigns", ["status", "next_run_at"])
    op.create_table(
        "campaign_runs",
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("targeted", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unmatched", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "run"),
    )
    op.create_table(
        "campaign_members",
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("arm", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=300)),
        sa.Column("message_id", sa.String(length=40)),
        sa.Column("retry_at", TS),
        sa.PrimaryKeyConstraint("campaign_id", "run", "profile_id"),
    )
    op.create_index("ix_campaign_members_status", "campaign_members", ["campaign_id", "run", "status"])
    op.create_table(
        "triggers",
        sa.Column("trigger_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("trigger_id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_triggers_name"),
    )
    op.create_table(
        "trigger_firings",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("trigger_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("window_key", sa.String(length=40), nullable=False),
        sa.Column("fired_at", TS, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=300)),
        sa.Column("message_id", sa.String(length=40)),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("retry_at", TS),
        sa.PrimaryKeyConstraint("workspace_id", "trigger_id", "profile_id", "window_key"),
    )
    op.create_index("ix_trigger_firings_time", "trigger_firings", ["trigger_id", "fired_at"])


def downgrade() -> None:
    op.drop_index("ix_trigger_firings_time", table_name="trigger_firings")
    op.drop_table("trigger_firings")
    op.drop_table("triggers")
    op.drop_index("ix_campaign_members_status", table_name="campaign_members")
    op.drop_table("campaign_members")
    op.drop_table("campaign_runs")
    op.drop_index("ix_campaigns_due", table_name="campaigns")
    op.drop_table("campaigns")
