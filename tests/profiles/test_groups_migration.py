"""Migration 0013 moves group memberships from the attribute ``groups`` to ``$groups`` in the
profiles and in the merge records' snapshots, on SQLite and PostgreSQL, and back on downgrade."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
import test_scores_migration
from test_scores_migration import _alembic

engine = test_scores_migration.engine  # the same fixture: SQLite and PostgreSQL


def test_group_memberships_move_to_their_own_key_and_back(engine: sa.Engine) -> None:
    _alembic(engine, "upgrade", "0012")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    profiles = sa.table("profiles", *(sa.column(c) for c in (
        "profile_id", "workspace_id", "merged_into", "canonical_id", "attributes", "origin", "first_seen_at",
        "first_seen_source", "last_seen_at", "created_at", "updated_at")))
    attrs = {"p1": {"name": "A", "groups": {"acme": {"plan": "pro"}, "beta": True}},
             "p2": {"groups": ["admins"]},  # a user's own list: not memberships, stays
             "p3": {"name": "C"}}
    with engine.begin() as c:
        c.execute(sa.insert(profiles), [{"profile_id": p, "workspace_id": "ws1", "merged_into": None,
                                         "canonical_id": p, "attributes": json.dumps(a), "origin": "new",
                                         "first_seen_at": at, "first_seen_source": "tracking", "last_seen_at": at,
                                         "created_at": at, "updated_at": at} for p, a in attrs.items()])
        detail = {"winner_before": {"attributes": json.dumps({"groups": {"g1": True}})},
                  "loser_before": {"attributes": json.dumps({"groups": {"g2": {"n": 1}}})},
                  "keys_from_loser": ["groups", "name"], "winner_overwritten": {"groups": {"g1": True}}}
        c.execute(sa.text("INSERT INTO merges (merge_id, workspace_id, winner_id, loser_id, id_type, id_value, detail,"
                          " created_at) VALUES ('m1', 'ws1', 'p1', 'p3', 'user_id', 'u', :d, :at)"),
                  {"d": json.dumps(detail), "at": at})
        # a loser whose "groups" was its own list (an identify trait): not memberships, the names stay
        own = {"winner_before": {"attributes": json.dumps({"name": "W"})},
               "loser_before": {"attributes": json.dumps({"groups": ["admins"]})},
               "keys_from_loser": ["groups"], "winner_overwritten": {}}
        c.execute(sa.text("INSERT INTO merges (merge_id, workspace_id, winner_id, loser_id, id_type, id_value, detail,"
                          " created_at) VALUES ('m2', 'ws1', 'p2', 'p3', 'user_id', 'v', :d, :at)"),
                  {"d": json.dumps(own), "at": at})

    def read() -> tuple[dict[str, dict], dict]:
        with engine.connect() as c:
            got = {p: json.loads(a) for p, a in c.execute(sa.text("SELECT profile_id, attributes FROM profiles"))}
            d = json.loads(c.execute(sa.text("SELECT detail FROM merges WHERE merge_id = 'm1'")).scalar_one())
            d2 = json.loads(c.execute(sa.text("SELECT detail FROM merges WHERE merge_id = 'm2'")).scalar_one())
        assert d2["keys_from_loser"] == ["groups"] and json.loads(d2["loser_before"]["attributes"]) == {
            "groups": ["admins"]}
        return got, d

    _alembic(engine, "upgrade", "head")
    got, d = read()
    assert got["p1"] == {"name": "A", "$groups": {"acme": {"plan": "pro"}, "beta": True}}
    assert got["p2"] == {"groups": ["admins"]} and got["p3"] == {"name": "C"}
    assert json.loads(d["winner_before"]["attributes"]) == {"$groups": {"g1": True}}
    assert json.loads(d["loser_before"]["attributes"]) == {"$groups": {"g2": {"n": 1}}}
    assert d["keys_from_loser"] == ["$groups", "name"] and d["winner_overwritten"] == {"$groups": {"g1": True}}
    _alembic(engine, "downgrade", "0012")
    got, d = read()
    assert got == attrs
    assert d["keys_from_loser"] == ["groups", "name"] and d["winner_overwritten"] == {"groups": {"g1": True}}
