"""model tags move out of the wide profile row into profile_scores.model_tags

A model run (RFM, lifecycle, clusters, text topics ...) set its tag on every profile by rewriting
the profile's wide row (attributes, traits, order summary, recent events: ~2.2 KB on the demo),
which made the tag write the largest part of a 1M-profile RFM + lifecycle run. The values of tags
of kind ``model`` now live in the narrow ``profile_scores`` row beside the scores; rule and manual
tags stay in ``profiles.tags``. The upgrade adds the column and moves every model tag's values
there (merged-away profiles included: an undo of a later merge recombines from them). The
downgrade puts them back into ``profiles.tags`` and drops the column.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 12:00:00
"""

from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_UPSERT = sa.text(
    "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
    "VALUES (:ws, :pid, '{}', :at, :mt) "
    "ON CONFLICT (workspace_id, profile_id) DO UPDATE SET model_tags = excluded.model_tags"
).bindparams(sa.bindparam("at", type_=sa.DateTime(timezone=True)))


def _model_tag_names(conn: sa.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ws, name in conn.execute(sa.text("SELECT workspace_id, name FROM tags WHERE kind = 'model'")):
        out.setdefault(ws, []).append(name)
    return out


def _move_up(conn: sa.Connection, ws: str, names: list[str]) -> None:
    """Move the values of tags ``names`` of workspace ``ws`` from ``profiles.tags`` to
    ``profile_scores.model_tags``."""
    at = datetime.now(UTC)
    rows = conn.execute(sa.text("SELECT p.profile_id, p.tags, s.model_tags FROM profiles p LEFT JOIN "
                                "profile_scores s ON s.workspace_id = p.workspace_id AND s.profile_id = "
                                "p.profile_id WHERE p.workspace_id = :ws AND p.tags <> '{}'"), {"ws": ws}).all()
    plain, model = [], []
    for pid, raw, mraw in rows:
        tags, moved = orjson.loads(raw), orjson.loads(mraw or "{}")
        found = {n: tags.pop(n) for n in names if n in tags}
        if found:
            plain.append({"pid": pid, "tags": orjson.dumps(tags).decode()})
            model.append({"ws": ws, "pid": pid, "at": at, "mt": orjson.dumps({**moved, **found}).decode()})
    if plain:
        conn.execute(sa.text("UPDATE profiles SET tags = :tags WHERE profile_id = :pid"), plain)
        conn.execute(_UPSERT, model)


def upgrade() -> None:
    with op.batch_alter_table("profile_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_tags", sa.Text(), server_default="{}", nullable=False))
    conn = op.get_bind()
    for ws, names in _model_tag_names(conn).items():
        _move_up(conn, ws, names)


def downgrade() -> None:
    """Every model tag value back into its profile's row (whatever the tag definitions say now),
    and into the tags of the merge records written since the upgrade (``winner_before`` /
    ``loser_before`` hold them apart), so that the older code's undo restores them."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT s.profile_id, p.tags, s.model_tags FROM profile_scores s JOIN profiles p "
                                "ON p.profile_id = s.profile_id AND p.workspace_id = s.workspace_id "
                                "WHERE s.model_tags <> '{}'")).all()
    updates = [{"pid": pid, "tags": orjson.dumps({**orjson.loads(raw), **orjson.loads(mraw)}).decode()}
               for pid, raw, mraw in rows]
    if updates:
        conn.execute(sa.text("UPDATE profiles SET tags = :tags WHERE profile_id = :pid"), updates)
    records = []
    for merge_id, raw in conn.execute(sa.text("SELECT merge_id, detail FROM merges")):
        detail = orjson.loads(raw)
        if not any("model_tags" in (detail.get(side) or {}) for side in ("winner_before", "loser_before")):
            continue
        for side in ("winner_before", "loser_before"):
            before = detail.get(side)
            if before and "model_tags" in before:
                before["tags"] = orjson.dumps({**orjson.loads(before["tags"]),
                                               **orjson.loads(before.pop("model_tags") or "{}")}).decode()
        records.append({"mid": merge_id, "detail": orjson.dumps(detail).decode()})
    if records:
        conn.execute(sa.text("UPDATE merges SET detail = :detail WHERE merge_id = :mid"), records)
    with op.batch_alter_table("profile_scores", schema=None) as batch_op:
        batch_op.drop_column("model_tags")
