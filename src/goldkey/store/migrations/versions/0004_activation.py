"""activation: channels, messages (the message log), suppressions, send_counters, send_policies

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("provider", sa.String(length=40), server_default="", nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("secrets", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("channel_id"),
        sa.UniqueConstraint("workspace_id", "name", name="uq_channels_name"),
    )
    op.create_index("ix_channels_ws", "channels", ["workspace_id"])
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("message_key", sa.String(length=200), nullable=False),
        sa.Column("ref", sa.String(length=200), server_default="", nullable=False),
        sa.Column("template_id", sa.String(length=100), server_default="", nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("address", sa.String(length=200), nullable=True),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("claim", sa.String(length=40), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("opened_at", TS, nullable=True),
        sa.Column("clicked_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
        sa.UniqueConstraint("workspace_id", "message_key", "profile_id", name="uq_messages_key"),
    )
    op.create_index("ix_messages_profile", "messages", ["workspace_id", "profile_id", "created_at"])
    op.create_index("ix_messages_provider", "messages", ["channel_id", "provider_message_id"])
    op.create_index("ix_messages_status", "messages", ["workspace_id", "status"])
    op.create_table(
        "suppressions",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("source", sa.String(length=60), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("workspace_id", "profile_id", "channel"),
    )
    op.create_table(
        "send_counters",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "profile_id", "channel", "day"),
    )
    op.create_table(
        "send_policies",
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("reservations", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id"),
    )


def downgrade() -> None:
    op.drop_table("send_policies")
    op.drop_table("send_counters")
    op.drop_table("suppressions")
    op.drop_index("ix_messages_status", table_name="messages")
    op.drop_index("ix_messages_provider", table_name="messages")
    op.drop_index("ix_messages_profile", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_channels_ws", table_name="channels")
    op.drop_table("channels")
