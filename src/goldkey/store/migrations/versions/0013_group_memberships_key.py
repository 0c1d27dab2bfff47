"""Group memberships move from the attribute ``groups`` to ``$groups``

Group calls kept a profile's memberships (group id -> the group's traits) in the attribute
``groups``, the name an identify trait may use for the user's own list of groups: the two
overwrote each other, and an identify trait ``groups`` that was no object made the next group call
of that user fail the whole commit. Memberships now live under ``$groups``. This moves every
profile's object-valued ``groups`` attribute there, and the same in the merge records' snapshots
(``winner_before`` / ``loser_before`` attributes, ``keys_from_loser``, ``winner_overwritten``), so
an undo of an earlier merge restores the new key.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25 02:40:00
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

OLD, NEW = "groups", "$groups"


def _move(attrs: dict, old: str, new: str) -> bool:
    if isinstance(attrs.get(old), dict) and new not in attrs:
        attrs[new] = attrs.pop(old)
        return True
    return False


def _rewrite(old: str, new: str) -> None:
    conn = op.get_bind()
    profiles = sa.table("profiles", sa.column("profile_id", sa.String), sa.column("attributes", sa.Text))
    rows = conn.execute(sa.select(profiles.c.profile_id, profiles.c.attributes)
                        .where(profiles.c.attributes.like(f'%"{old}"%'))).all()
    for pid, raw in rows:
        attrs = json.loads(raw)
        if _move(attrs, old, new):
            conn.execute(profiles.update().where(profiles.c.profile_id == pid)
                         .values(attributes=json.dumps(attrs, ensure_ascii=False)))
    merges = sa.table("merges", sa.column("merge_id", sa.String), sa.column("detail", sa.Text))
    for mid, raw in conn.execute(sa.select(merges.c.merge_id, merges.c.detail)
                                 .where(merges.c.detail.like(f'%{old}%'))).all():
        detail = json.loads(raw)
        moved: dict[str, bool] = {}
        for side in ("winner_before", "loser_before"):
            snap = detail.get(side)
            moved[side] = False
            if isinstance(snap, dict) and isinstance(snap.get("attributes"), str):
                attrs = json.loads(snap["attributes"])
                if _move(attrs, old, new):
                    snap["attributes"] = json.dumps(attrs, ensure_ascii=False)
                    moved[side] = True
        changed = any(moved.values())
        # the key lists name the memberships only where the snapshot's value was memberships (an
        # object); a user's own "groups" trait (a list) keeps its name
        keys = detail.get("keys_from_loser")
        if moved["loser_before"] and isinstance(keys, list) and old in keys:
            detail["keys_from_loser"] = [new if k == old else k for k in keys]
        over = detail.get("winner_overwritten")
        if moved["winner_before"] and isinstance(over, dict):
            _move(over, old, new)
        if changed:
            conn.execute(merges.update().where(merges.c.merge_id == mid)
                         .values(detail=json.dumps(detail, ensure_ascii=False)))


def upgrade() -> None:
    _rewrite(OLD, NEW)


def downgrade() -> None:
    _rewrite(NEW, OLD)
