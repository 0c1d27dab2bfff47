"""Migration 0008 moves model scores out of the wide profile rows into profile_scores, on SQLite
(batch mode: the profiles table is rebuilt) and PostgreSQL, and its downgrade moves them back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from conftest import operational_url
from goldkey.profiles.service import ProfileService
from goldkey.store import operational
from goldkey.store.operational import create_operational_engine


def _alembic(engine: sa.Engine, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(operational.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    with operational_url(request.param) as url:
        e = create_operational_engine(url or f"sqlite:///{tmp_path / 'op.db'}")
        try:
            yield e
        finally:
            e.dispose()


def test_scores_move_to_profile_scores_and_back(engine: sa.Engine) -> None:
    _alembic(engine, "upgrade", "0007")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = sa.table("profiles", *(sa.column(c) for c in (
        "profile_id", "workspace_id", "merged_into", "canonical_id", "scores", "origin", "first_seen_at",
        "first_seen_source", "last_seen_at", "created_at", "updated_at")))
    rows = [("p1", "ws1", None, "p1", '{"churn_risk":0.25,"rfm_r":5.0}'),
            ("p2", "ws1", "p1", "p1", '{"rfm_r":2.0}'),  # merged away: keeps its own (an undo needs them)
            ("p3", "ws1", None, "p3", "{}"),
            ("p4", "ws2", None, "p4", '{"clv_value":12.5}')]
    with engine.begin() as c:
        c.execute(sa.insert(old), [{"profile_id": p, "workspace_id": w, "merged_into": m, "canonical_id": k,
                                    "scores": s, "origin": "new", "first_seen_at": at, "first_seen_source": "tracking",
                                    "last_seen_at": at, "created_at": at, "updated_at": at}
                                   for p, w, m, k, s in rows])

    _alembic(engine, "upgrade", "head")
    assert "scores" not in {col["name"] for col in sa.inspect(engine).get_columns("profiles")}
    with engine.connect() as c:
        got = {(w, p): json.loads(s) for w, p, s in c.execute(sa.text(
            "SELECT workspace_id, profile_id, scores FROM profile_scores"))}
        n_profiles = c.execute(sa.text("SELECT count(*) FROM profiles")).scalar()
    assert got == {("ws1", "p1"): {"churn_risk": 0.25, "rfm_r": 5.0}, ("ws1", "p2"): {"rfm_r": 2.0},
                   ("ws2", "p4"): {"clv_value": 12.5}}
    assert n_profiles == 4  # the rebuilt table kept every row
    # the 360° profile reads them from the new table (the merged-away id answers with the survivor)
    svc = ProfileService(engine)
    assert svc.get("ws1", "p2", events=0)["scores"] == {"churn_risk": 0.25, "rfm_r": 5.0}
    assert svc.get("ws1", "p3", events=0)["scores"] == {}

    _alembic(engine, "downgrade", "0007")
    assert "profile_scores" not in sa.inspect(engine).get_table_names()
    with engine.connect() as c:
        back = {p: json.loads(s) for p, s in c.execute(sa.text("SELECT profile_id, scores FROM profiles"))}
    assert back == {"p1": {"churn_risk": 0.25, "rfm_r": 5.0}, "p2": {"rfm_r": 2.0}, "p3": {}, "p4": {"clv_value": 12.5}}


def test_churn_and_propensity_reasons_leave_profile_insights(engine: sa.Engine) -> None:
    """0009: the reasons moved to the analytical store; the rows they left are deleted, the other
    models' details (recommendations) stay."""
    _alembic(engine, "upgrade", "0008")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    pi = sa.table("profile_insights", *(sa.column(c) for c in (
        "workspace_id", "profile_id", "model", "version", "payload", "updated_at")))
    models = ["churn", "propensity_care", "recommend", "propensityx", "my_churn"]
    with engine.begin() as c:
        c.execute(sa.insert(pi), [{"workspace_id": "ws1", "profile_id": "p1", "model": m, "version": 1,
                                   "payload": "{}", "updated_at": at} for m in models])
    _alembic(engine, "upgrade", "0009")
    with engine.connect() as c:
        left = sorted(r[0] for r in c.execute(sa.text("SELECT model FROM profile_insights")))
    assert left == ["my_churn", "propensityx", "recommend"]


def test_model_tags_move_to_profile_scores_and_back(engine: sa.Engine) -> None:
    """0010: the values of tags of kind model leave the wide profile rows for
    profile_scores.model_tags (a row created where a profile had none; merged-away profiles too);
    rule and manual tags stay. The downgrade puts them back."""
    _alembic(engine, "upgrade", "0009")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    tag_defs = sa.table("tags", *(sa.column(c) for c in (
        "workspace_id", "name", "kind", "value_type", "category", "owner", "description", "definition", "version",
        "status", "created_at", "updated_at")))
    prof = sa.table("profiles", *(sa.column(c) for c in (
        "profile_id", "workspace_id", "merged_into", "canonical_id", "tags", "origin", "first_seen_at",
        "first_seen_source", "last_seen_at", "created_at", "updated_at")))
    ps = sa.table("profile_scores", *(sa.column(c) for c in ("workspace_id", "profile_id", "scores", "updated_at")))
    defs = [("ws1", "stage", "model"), ("ws1", "vip", "manual"), ("ws2", "vip", "model")]
    rows = [("p1", "ws1", None, "p1", {"stage": "active", "vip": True}),
            ("p2", "ws1", "p1", "p1", {"stage": "new"}),  # merged away: moves too (an undo needs it)
            ("p3", "ws1", None, "p3", {"vip": True}),
            ("p4", "ws2", None, "p4", {"vip": True})]  # another workspace, where vip is a model tag
    with engine.begin() as c:
        c.execute(sa.insert(tag_defs), [{"workspace_id": w, "name": n, "kind": k, "value_type": "enum",
                                         "category": "dynamic", "owner": "", "description": "", "definition": "{}",
                                         "version": 1, "status": "new", "created_at": at, "updated_at": at}
                                        for w, n, k in defs])
        c.execute(sa.insert(prof), [{"profile_id": p, "workspace_id": w, "merged_into": m, "canonical_id": k,
                                     "tags": json.dumps(t), "origin": "new", "first_seen_at": at,
                                     "first_seen_source": "tracking", "last_seen_at": at, "created_at": at,
                                     "updated_at": at} for p, w, m, k, t in rows])
        c.execute(sa.insert(ps), [{"workspace_id": "ws1", "profile_id": "p1", "scores": '{"rfm_r":5.0}',
                                   "updated_at": at}])

    _alembic(engine, "upgrade", "head")
    with engine.connect() as c:
        wide = {p: json.loads(t) for p, t in c.execute(sa.text("SELECT profile_id, tags FROM profiles"))}
        narrow = {p: (json.loads(s), json.loads(t)) for p, s, t in c.execute(sa.text(
            "SELECT profile_id, scores, model_tags FROM profile_scores"))}
    assert wide == {"p1": {"vip": True}, "p2": {}, "p3": {"vip": True}, "p4": {}}
    assert narrow == {"p1": ({"rfm_r": 5.0}, {"stage": "active"}), "p2": ({}, {"stage": "new"}),
                      "p4": ({}, {"vip": True})}
    svc = ProfileService(engine)
    assert svc.get("ws1", "p1", events=0)["tags"] == {"vip": True, "stage": "active"}
    assert svc.get("ws2", "p4", events=0)["tags"] == {"vip": True}

    # a merge recorded after the upgrade keeps the model tags apart; the downgrade folds them back
    merges = sa.table("merges", *(sa.column(c) for c in (
        "merge_id", "workspace_id", "winner_id", "loser_id", "id_type", "id_value", "detail", "created_at")))
    before = {"winner_before": {"tags": '{"vip":true}', "model_tags": '{"stage":"active"}'},
              "loser_before": {"tags": "{}", "model_tags": '{"stage":"new"}'}, "subtree": []}
    with engine.begin() as c:
        c.execute(sa.insert(merges).values(merge_id="m1", workspace_id="ws1", winner_id="p1", loser_id="p2",
                                           id_type="user_id", id_value="u1", detail=json.dumps(before),
                                           created_at=at))

    _alembic(engine, "downgrade", "0009")
    assert "model_tags" not in {col["name"] for col in sa.inspect(engine).get_columns("profile_scores")}
    with engine.connect() as c:
        back = {p: json.loads(t) for p, t in c.execute(sa.text("SELECT profile_id, tags FROM profiles"))}
        detail = json.loads(c.execute(sa.text("SELECT detail FROM merges")).scalar_one())
    assert back == {p: t for p, _w, _m, _k, t in rows}
    assert {side: json.loads(detail[side]["tags"]) for side in ("winner_before", "loser_before")} == {
        "winner_before": {"vip": True, "stage": "active"}, "loser_before": {"stage": "new"}}
    assert "model_tags" not in detail["winner_before"] and "model_tags" not in detail["loser_before"]
