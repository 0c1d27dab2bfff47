"""The operational store: profiles for point lookups, the identity graph, configuration, keys,
quarantine and audit. SQLAlchemy Core over SQLite (WAL, the embedded default) or PostgreSQL.

The schema is declared here once; Alembic migrations (``store/migrations``) create and evolve it.
Every table carries ``workspace_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from goldkey.store.sqlite_writes import SerialisedConnection

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("identity_rules", sa.Text, nullable=False),  # JSON of IdentityRules
    sa.Column("created_at", TS, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.workspace_id"), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # "write" | "admin"
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    # merged_into: the profile this one was merged into (direct parent); canonical_id: the live root.
    sa.Column("merged_into", sa.String(40)),
    sa.Column("canonical_id", sa.String(40), nullable=False),
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("traits", sa.Text, nullable=False, server_default="{}"),
    sa.Column("tags", sa.Text, nullable=False, server_default="{}"),
    # model scores live in profile_scores (migration 0008), not in this wide row
    sa.Column("order_summary", sa.Text, nullable=False, server_default="{}"),
    sa.Column("recent_events", sa.Text, nullable=False, server_default="[]"),
    sa.Column("origin", sa.String(10), nullable=False),  # "existing" (known from CRM) | "new"
    sa.Column("first_seen_at", TS, nullable=False),
    sa.Column("first_seen_source", sa.String(40), nullable=False),  # tracking | import:customers | ...
    sa.Column("first_seen_context", sa.Text, nullable=False, server_default="{}"),
    sa.Column("last_seen_at", TS, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_profiles_canonical", "canonical_id"),
    sa.Index("ix_profiles_workspace", "workspace_id", "last_seen_at"),
    # the live profiles of a workspace without reading their (wide) rows: the model score write-back's
    # scan and its per-profile liveness checks (migration 0008)
    sa.Index("ix_profiles_live", "workspace_id", "merged_into", "profile_id"),
)

identities = sa.Table(
    "identities",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("id_type", sa.String(40), primary_key=True),
    sa.Column("id_value", sa.String(200), primary_key=True),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("first_seen_at", TS, nullable=False),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Index("ix_identities_profile", "profile_id"),
)

merges = sa.Table(
    "merges",
    metadata,
    sa.Column("merge_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("winner_id", sa.String(40), nullable=False),
    sa.Column("loser_id", sa.String(40), nullable=False),
    sa.Column("id_type", sa.String(40), nullable=False),
    sa.Column("id_value", sa.String(200), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: snapshots needed to undo
    sa.Column("created_at", TS, nullable=False),
    sa.Column("undone_at", TS),
    # JSON: the analytical work of an undo not yet done (migration 0012); NULL when none is left
    sa.Column("analytical_pending", sa.Text),
    sa.Index("ix_merges_winner", "workspace_id", "winner_id"),
    sa.Index("ix_merges_loser", "workspace_id", "loser_id"),
)

identity_conflicts = sa.Table(
    "identity_conflicts",
    metadata,
    sa.Column("conflict_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("id_type", sa.String(40), nullable=False),
    sa.Column("id_value", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(300), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_conflicts_profile", "workspace_id", "profile_id"),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("channel", sa.String(40), primary_key=True),
    sa.Column("purpose", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # granted | denied
    sa.Column("source", sa.String(60), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("sku", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(300), nullable=False),
    sa.Column("category", sa.String(100)),
    sa.Column("subcategory", sa.String(100)),
    sa.Column("brand", sa.String(100)),
    sa.Column("price", sa.Float),
    sa.Column("qr_code", sa.String(200)),
    sa.Column("launched_at", sa.Date),
    sa.Column("updated_at", TS, nullable=False),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("feedback_id", sa.String(100), primary_key=True),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("channel", sa.String(60)),
    sa.Column("topic", sa.String(200)),
    sa.Column("text", sa.Text),
    sa.Column("rating", sa.Integer),
    sa.Column("question", sa.Text),
    sa.Column("answer", sa.Text),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("import_id", sa.String(40)),
    # JSON object: identifier type -> normalised value the record named its customer by (an undo of a
    # merge gives the record back to the profile holding them); NULL before migration 0011
    sa.Column("identifiers", sa.Text),
    sa.Index("ix_feedback_profile", "workspace_id", "profile_id", "created_at"),
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("import_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("filename", sa.String(500), nullable=False),
    sa.Column("file_digest", sa.String(64), nullable=False),
    sa.Column("mapping", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | failed | unchanged
    sa.Column("rows_read", sa.Integer, nullable=False, server_default="0"),
    sa.Column("accepted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("quarantined", sa.Integer, nullable=False, server_default="0"),
    sa.Column("duplicates_merged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("finished_at", TS),
    sa.Index("ix_imports_digest", "workspace_id", "kind", "file_digest"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("quarantine_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("source", sa.String(40), nullable=False),  # import:<kind> | tracking
    sa.Column("import_id", sa.String(40)),
    sa.Column("record", sa.String(60)),
    sa.Column("field", sa.String(100)),
    sa.Column("value", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_quarantine_ws", "workspace_id", "created_at"),
    sa.Index("ix_quarantine_import", "import_id"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(60), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    sa.Column("at", TS, nullable=False),
    sa.Index("ix_audit_ws", "workspace_id", "at"),
)


# --------------------------------------------------------------------------- audience (tags, traits, segments)

fields = sa.Table(
    "fields",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),  # attributes.city | traits.x | tags.y | ...
    sa.Column("type", sa.String(10), nullable=False),  # string | number | boolean | datetime | list
    sa.Column("source", sa.String(20), nullable=False),  # inferred | declared | builtin | trait | tag | model
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("updated_at", TS, nullable=False),
)

traits = sa.Table(
    "traits",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("definition", sa.Text, nullable=False),  # JSON of audience.traits.TraitDefinition
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # new | computed | failed
    sa.Column("computed_at", TS),
    sa.Column("computed_as_of", TS),
    sa.Column("error", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(10), nullable=False),  # rule | manual | model
    sa.Column("value_type", sa.String(10), nullable=False),  # enum | boolean | number
    sa.Column("category", sa.String(20), nullable=False),  # fixed | interests | social | consumption | dynamic
    sa.Column("owner", sa.String(100), nullable=False, server_default=""),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("definition", sa.Text, nullable=False, server_default="{}"),  # JSON: rules per value, enum values
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # new | computed | failed
    sa.Column("computed_at", TS),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("segment_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("version", sa.Integer, nullable=False),  # the current version
    sa.Column("realtime", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("size", sa.Integer),
    sa.Column("computed_at", TS),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.UniqueConstraint("workspace_id", "name", name="uq_segments_name"),
)

segment_versions = sa.Table(
    "segment_versions",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("segment_id", sa.String(40), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False, server_default=""),
    sa.Column("created_at", TS, nullable=False),
)

segment_snapshots = sa.Table(
    "segment_snapshots",
    metadata,
    sa.Column("snapshot_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("segment_id", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("entered", sa.Integer, nullable=False),
    sa.Column("exited", sa.Integer, nullable=False),
    sa.Column("as_of", TS, nullable=False),
    sa.Column("took_ms", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Index("ix_segment_snapshots", "workspace_id", "segment_id", "created_at"),
)

segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("segment_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("entered_at", TS, nullable=False),
    sa.Index("ix_segment_members_profile", "workspace_id", "profile_id"),
)


# -- insight: model outputs (migrations 0008, 0010) ---------------------------------------------------
# What the models write per profile, in a narrow row of its own: the scores (``{"churn_risk": 0.42,
# "rfm_r": 5.0, ...}``, the ``scores.*`` fields of rules and of the 360° profile) and the values of
# the model tags (``{"rfm_group": "champions", "lifecycle_stage": "active"}``: tags of kind "model";
# rule and manual tags stay in ``profiles.tags``, and readers see the two as one ``tags`` object). A
# model run rewrites this small row instead of the profile's wide one. At most one row per profile;
# no row means no scores and no model tags. A merged-away profile keeps the row it had before the
# merge (an undo restores from the merge record). On SQLite a WITHOUT ROWID table: the rows live in
# the primary-key b-tree, one b-tree written per upsert instead of two.
profile_scores = sa.Table(
    "profile_scores",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("scores", sa.Text, nullable=False),  # JSON object of numbers
    sa.Column("updated_at", TS, nullable=False),  # when the scores last changed
    sa.Column("model_tags", sa.Text, nullable=False, server_default="{}"),  # JSON object: model tag -> value
    sqlite_with_rowid=False,
)

# -- insight: per-profile model outputs that are not plain numbers (reasons, recommendations, ...) ------
profile_insights = sa.Table(
    "profile_insights",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON: reasons, items, details of this model's output
    sa.Column("updated_at", TS, nullable=False),
)

feedback_insights = sa.Table(
    "feedback_insights",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("feedback_id", sa.String(100), primary_key=True),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("language", sa.String(10), nullable=False),
    sa.Column("sentiment", sa.Float, nullable=False),  # probability the text is positive, 0..1
    sa.Column("label", sa.String(10), nullable=False),  # positive / negative / neutral
    sa.Column("topics", sa.Text, nullable=False),  # JSON list of topic keys
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_feedback_insights_profile", "workspace_id", "profile_id"),
)

# -- activation: channels, the message log, suppressions, send counters (see docs/channels.md) -------
channels = sa.Table(
    "channels",
    metadata,
    sa.Column("channel_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # email | sms | wechat | push | webhook | call | sink
    sa.Column("provider", sa.String(40), nullable=False, server_default=""),  # twilio | aliyun | generic | ...
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON of the channel's config model (no secrets)
    sa.Column("secrets", sa.Text, nullable=False, server_default=""),  # Fernet token of the secrets' JSON
    sa.Column("status", sa.String(20), nullable=False),  # active | disabled
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_channels_name"),
    sa.Index("ix_channels_ws", "workspace_id"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("message_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(40), nullable=False),
    sa.Column("channel_id", sa.String(40), nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),  # the consent channel: email | sms | wechat | ...
    sa.Column("purpose", sa.String(40), nullable=False),
    sa.Column("message_key", sa.String(200), nullable=False),  # de-duplication: one per profile and key
    sa.Column("ref", sa.String(200), nullable=False, server_default=""),  # campaign:<id> | journey:<id>:<step>
    sa.Column("template_id", sa.String(100), nullable=False, server_default=""),
    sa.Column("status", sa.String(20), nullable=False),  # queued | sending | sent | failed | delivered | dead
    sa.Column("reason", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cost", sa.Float),
    sa.Column("address", sa.String(200)),  # masked
    sa.Column("provider_message_id", sa.String(200)),
    sa.Column("claim", sa.String(40)),  # the delivery run that owns a message being sent
    sa.Column("payload", sa.Text),  # the rendered message of a dead-lettered send, for a re-drive
    sa.Column("created_at", TS, nullable=False),
    sa.Column("sent_at", TS),
    sa.Column("delivered_at", TS),
    sa.Column("opened_at", TS),
    sa.Column("clicked_at", TS),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workspace_id", "message_key", "profile_id", name="uq_messages_key"),
    sa.Index("ix_messages_profile", "workspace_id", "profile_id", "created_at"),
    sa.Index("ix_messages_provider", "channel_id", "provider_message_id"),
    sa.Index("ix_messages_status", "workspace_id", "status"),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("channel", sa.String(20), primary_key=True),  # a consent channel, or "*" for every channel
    sa.Column("reason", sa.String(300), nullable=False),
    sa.Column("source", sa.String(60), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS),
)

send_counters = sa.Table(
    "send_counters",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("channel", sa.String(20), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),  # the send's date in the workspace's time zone
    sa.Column("count", sa.Integer, nullable=False),
)

send_policies = sa.Table(
    "send_policies",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),  # JSON of activate.guardrails.SendPolicy
    # bumped by every reservation: its row lock serialises reservations of one workspace (SQLite and
    # PostgreSQL alike), so two campaigns can never both pass a customer's cap
    sa.Column("reservations", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", TS, nullable=False),
)


def timestamp_param(conn: sa.Connection, at: Any) -> Any:
    """``at`` (a datetime) as the DBAPI takes it for a timestamp column of this dialect: for
    statements run on the raw DBAPI cursor (the bulk writes), which SQLAlchemy does not process."""
    proc = TS.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return proc(at) if proc is not None else at


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (SIGKILL); events themselves are made durable
    # in the analytical store's WAL before any acknowledgement.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA cache_size=-200000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_operational_engine(url: str) -> Engine:
    """Return an Engine for ``url``; SQLite gets WAL mode and its parent directory created."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # write transactions of this process queue on a mutex instead of SQLite's sleeping busy
        # handler (store/sqlite_writes.py)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "factory": SerialisedConnection},
                                  pool_size=8, max_overflow=16)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the operational schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# -- campaigns and triggers (activate/campaigns.py, activate/triggers.py; migration 0005) --------------
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("campaign_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("definition", sa.Text, nullable=False),  # JSON of activate.campaigns.CampaignDefinition
    sa.Column("status", sa.String(20), nullable=False),  # draft|scheduled|running|paused|done|cancelled|failed
    sa.Column("run", sa.Integer, nullable=False, server_default="0"),  # the current (or last) run
    sa.Column("next_run_at", TS),  # when the scheduler starts (or resumes) the next run
    sa.Column("error", sa.Text),
    sa.Column("created_by", sa.String(100), nullable=False, server_default="api"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_campaigns_name"),
    sa.Index("ix_campaigns_due", "status", "next_run_at"),
)

campaign_runs = sa.Table(
    "campaign_runs",
    metadata,
    sa.Column("campaign_id", sa.String(40), primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | cancelled | failed
    sa.Column("started_at", TS, nullable=False),  # the attribution clock of the run's holdout
    sa.Column("finished_at", TS),
    sa.Column("targeted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("unmatched", sa.Integer, nullable=False, server_default="0"),  # uploaded identifiers not found
)

campaign_members = sa.Table(
    "campaign_members",
    metadata,
    sa.Column("campaign_id", sa.String(40), primary_key=True),
    sa.Column("run", sa.Integer, primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("arm", sa.String(40), nullable=False),  # a variant key, or "holdout"
    # holdout | pending | queued (message reserved) | suppressed | deferred (quiet hours) | cancelled
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(300)),
    sa.Column("message_id", sa.String(40)),
    sa.Column("retry_at", TS),
    sa.Index("ix_campaign_members_status", "campaign_id", "run", "status"),
)

triggers = sa.Table(
    "triggers",
    metadata,
    sa.Column("trigger_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # realtime | after_event | date
    sa.Column("definition", sa.Text, nullable=False),  # JSON of activate.triggers.TriggerDefinition
    sa.Column("status", sa.String(20), nullable=False),  # active | paused
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_triggers_name"),
)

trigger_firings = sa.Table(
    "trigger_firings",
    metadata,
    sa.Column("workspace_id", sa.String(40), primary_key=True),
    sa.Column("trigger_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("window_key", sa.String(40), primary_key=True),  # at most once per customer and window
    sa.Column("fired_at", TS, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # queued | suppressed | deferred | failed
    sa.Column("reason", sa.String(300)),
    sa.Column("message_id", sa.String(40)),
    sa.Column("latency_ms", sa.Float),  # event committed -> message queued (real-time triggers)
    sa.Column("retry_at", TS),  # deferred by quiet hours: when to send
    sa.Index("ix_trigger_firings_time", "trigger_id", "fired_at"),
)


# -- journeys (activate/journeys.py, activate/journey_engine.py; migration 0006) ------------------------
journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("journey_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("draft", sa.Text, nullable=False),  # JSON of activate.journeys.JourneyDefinition (editable)
    sa.Column("status", sa.String(20), nullable=False),  # draft | active | paused
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),  # the published version; 0 = none
    sa.Column("entry_cursor", TS),  # segment / trigger entries: the last entry time already admitted
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_journeys_name"),
    sa.Index("ix_journeys_status", "status"),
)

journey_versions = sa.Table(
    "journey_versions",
    metadata,
    sa.Column("journey_id", sa.String(40), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("definition", sa.Text, nullable=False),  # immutable once published
    sa.Column("published_by", sa.String(100), nullable=False, server_default="api"),
    sa.Column("published_at", TS, nullable=False),
)

journey_states = sa.Table(
    "journey_states",
    metadata,
    sa.Column("journey_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("entry", sa.Integer, nullable=False),  # 1 for the first entry, 2 after a re-entry ...
    sa.Column("step", sa.Integer, nullable=False),  # steps taken in this entry: the idempotency counter
    sa.Column("node_id", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # active | waiting | exited | converted
    sa.Column("signal", sa.String(20)),  # what ended a wait early: "event"
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),  # failed tries of the current step
    sa.Column("entered_at", TS, nullable=False),
    sa.Column("wake_at", TS),  # when the current node is due (null: waiting for an event only)
    sa.Column("finished_at", TS),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_journey_states_due", "status", "wake_at"),
    sa.Index("ix_journey_states_profile", "workspace_id", "profile_id"),
    sa.Index("ix_journey_states_node", "journey_id", "node_id", "status"),
)

journey_steps = sa.Table(
    "journey_steps",
    metadata,
    sa.Column("journey_id", sa.String(40), primary_key=True),
    sa.Column("profile_id", sa.String(40), primary_key=True),
    sa.Column("entry", sa.Integer, primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),  # (journey, profile, entry, step): a step happens once
    sa.Column("workspace_id", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("node_id", sa.String(100), nullable=False),
    sa.Column("node_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # done | running (an effect claimed, not yet recorded)
    sa.Column("outcome", sa.String(300), nullable=False),  # entered | yes | no | <branch> | sent | suppressed: ...
    sa.Column("next_node", sa.String(100)),
    sa.Column("at", TS, nullable=False),
    sa.Index("ix_journey_steps_node", "journey_id", "node_id"),
)


# -- users and roles (govern/users.py; migration 0007) -------------------------------------------------
# A user is a person, not a workspace's: the workspaces they may open are their grants, each with its
# workspace_id and role. Sessions are stored as the SHA-256 of the token, never the token.
users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(40), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),  # lower-cased
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("password_hash", sa.String(300), nullable=False),  # scrypt$n$r$p$salt$hash
    sa.Column("created_at", TS, nullable=False),
    sa.Column("disabled_at", TS),
)

user_grants = sa.Table(
    "user_grants",
    metadata,
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.user_id"), primary_key=True),
    sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.workspace_id"), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),  # admin | marketer | analyst | viewer
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False, server_default=""),
    sa.Index("ix_user_grants_workspace", "workspace_id"),
)

user_sessions = sa.Table(
    "user_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.user_id"), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),  # sliding: last use + the session lifetime
    sa.Column("last_used_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
    sa.Index("ix_user_sessions_user", "user_id"),
)
