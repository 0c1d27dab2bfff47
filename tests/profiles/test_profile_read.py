"""Profile reads through the API: GET /api/v1/profiles/{id} and /lookup.

The routes answer the service's dict serialised with orjson instead of validating it through
ProfilePublic; these tests hold them to that contract (keys, ISO timestamps, the very bytes pydantic
would write), on SQLite (whose reads run on the DBAPI cursor) and on PostgreSQL (through SQLAlchemy).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from goldkey.api.schemas import ConflictPublic, Consent, FeedbackPublic, Identity, MergePublic, ProfilePublic
from goldkey.identity.rules import CustomIdentifier, IdentityRules
from goldkey.profiles.service import ProfileService
from goldkey.store.operational import consents, feedback

T0 = datetime(2025, 1, 1, 8, 30, tzinfo=UTC)


def ident(env: Any, mid: str, key: str | None = None, **kw: Any) -> None:
    r = env.post("/v1/identify", {"messageId": mid, **kw}, key=key)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


def get(env: Any, profile_id: str, token: str | None = None) -> Any:
    return env.client.get(f"/api/v1/profiles/{profile_id}", headers=env.admin_auth(token))


def lookup(env: Any, token: str | None = None, **q: str) -> Any:
    return env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth(token))


def ok(r: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()  # type: ignore[no-any-return]


def add_consent(env: Any, pid: str, channel: str, status: str, at: datetime) -> None:
    with env.gk.engine.begin() as conn:
        conn.execute(
            consents.insert().values(
                workspace_id=env.ws.workspace_id,
                profile_id=pid,
                channel=channel,
                purpose="marketing",
                status=status,
                source="test",
                updated_at=at,
            )
        )


def add_feedback(env: Any, pid: str, fid: str, at: datetime) -> None:
    with env.gk.engine.begin() as conn:
        conn.execute(
            feedback.insert().values(
                workspace_id=env.ws.workspace_id,
                feedback_id=fid,
                profile_id=pid,
                kind="review",
                channel="tmall",
                topic="镜片",
                text="很清晰",
                rating=5,
                status="open",
                created_at=at,
            )
        )


def merged_pair(env: Any) -> tuple[dict[str, Any], str]:
    """A customer (u1, first seen 2025-01-01) and an anonymous visitor who logs in: returns the
    survivor's profile and the merged-away id."""
    ident(env, "m1", userId="u1", traits={"name": "王芳", "phone": "13912345678"}, timestamp=T0.isoformat())
    ident(env, "m2", anonymousId="anon-9", traits={"city": "广州"})
    visitor = ok(lookup(env, anonymous_id="anon-9"))["profile_id"]
    ident(env, "m3", userId="u1", anonymousId="anon-9")
    survivor = ok(lookup(env, user_id="u1"))
    assert survivor["profile_id"] != visitor
    return survivor, visitor


def test_merged_away_id_resolves_to_survivor_with_requested_id(env_any: Any) -> None:
    env = env_any
    survivor, gone = merged_pair(env)
    pid = survivor["profile_id"]
    # consents and feedback recorded on the merged-away profile show on the survivor
    add_consent(env, gone, "sms", "granted", T0)
    add_consent(env, pid, "sms", "denied", T0 + timedelta(days=1))  # newer: wins
    add_consent(env, gone, "email", "granted", T0)
    add_feedback(env, gone, "fb-old", T0)
    add_feedback(env, pid, "fb-new", T0 + timedelta(days=2))

    p = ok(get(env, gone))
    assert p["profile_id"] == pid and p["requested_id"] == gone
    assert p["merged_from"] == [gone]
    assert p["attributes"]["name"] == "王芳" and p["attributes"]["city"] == "广州"
    assert {(i["type"], i["value"]) for i in p["identities"]} >= {("user_id", "u1"), ("anonymous_id", "anon-9")}
    # a stable order on both stores (PostgreSQL gave them by type, SQLite as inserted): first seen first
    seen = [(i["first_seen_at"], i["type"], i["value"]) for i in p["identities"]]
    assert seen == sorted(seen), seen
    assert {(c["channel"], c["status"]) for c in p["consents"]} == {("sms", "denied"), ("email", "granted")}
    assert [c["channel"] for c in p["consents"]] == sorted(c["channel"] for c in p["consents"])
    assert [f["feedback_id"] for f in p["feedback"]] == ["fb-new", "fb-old"]  # newest first
    assert len(p["merges"]) == 1
    m = p["merges"][0]
    assert (m["winner_id"], m["loser_id"]) == (pid, gone) and m["undone_at"] is None
    assert p["first_seen_at"].startswith("2025-01-01")

    # the survivor by its own id: the same profile, requested_id is its own
    own = ok(get(env, pid))
    assert own["requested_id"] == pid
    assert {k: v for k, v in own.items() if k != "requested_id"} == {k: v for k, v in p.items() if k != "requested_id"}


def test_lookup_by_each_identifier_type(env_any: Any) -> None:
    env = env_any
    rules = IdentityRules(custom=[CustomIdentifier(name="member_card", trait="member_card_no")])
    r = env.client.put(
        "/api/v1/workspace/identity-rules",
        content=rules.model_dump_json(),
        headers={**env.admin_auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    ident(
        env,
        "m1",
        userId="u-42",
        anonymousId="anon-42",
        context={"device": {"id": "dev-42"}},
        traits={
            "phone": "139 1234 5678",
            "email": "Wang.Fang@Example.cn",
            "crmId": "CRM-42",
            "wechatOpenId": "oOPEN42",
            "wechatUnionId": "oUNION42",
            "member_card_no": "VIP-42",
        },
    )
    pid = ok(lookup(env, user_id="u-42"))["profile_id"]
    queries = {
        "user_id": ["u-42"],
        "anonymous_id": ["anon-42"],
        "device_id": ["dev-42"],
        # phones and e-mails are normalised as on ingestion
        "phone": ["13912345678", "+8613912345678", "139-1234-5678"],
        "email": ["wang.fang@example.cn", " WANG.FANG@EXAMPLE.CN "],
        "crm_id": ["CRM-42"],
        "wechat_openid": ["oOPEN42"],
        "wechat_unionid": ["oUNION42"],
        "member_card": ["VIP-42"],
    }
    assert set(queries) == set(env.gk.workspaces.rules(env.ws.workspace_id).all_types())
    for id_type, values in queries.items():
        for value in values:
            p = ok(lookup(env, **{id_type: value}))
            assert p["profile_id"] == pid and p["requested_id"] == pid, (id_type, value)
    held = {(i["type"], i["value"]) for i in p["identities"]}
    assert ("phone", "+8613912345678") in held and ("email", "wang.fang@example.cn") in held

    # nobody holds it: 404; not a value of that type: 400; unknown type: 400
    assert lookup(env, user_id="u-43").status_code == 404
    assert lookup(env, phone="12").status_code == 400
    assert lookup(env, loyalty_no="1").status_code == 400


def test_other_workspace_gets_404(env_any: Any) -> None:
    env = env_any
    survivor, gone = merged_pair(env)
    other = env.gk.workspaces.create("Other Brand")
    ident(env, "m1", key=other.write_key, userId="u1", traits={"phone": "13912345678"})
    theirs = ok(lookup(env, token=other.admin_token, user_id="u1"))
    assert theirs["profile_id"] != survivor["profile_id"]

    for pid in (survivor["profile_id"], gone):  # live and merged-away ids of the first workspace
        r = get(env, pid, token=other.admin_token)
        assert r.status_code == 404 and r.json()["code"] == "NotFound", r.text
    r = get(env, theirs["profile_id"])
    assert r.status_code == 404 and r.json()["code"] == "NotFound"
    assert lookup(env, token=other.admin_token, anonymous_id="anon-9").status_code == 404
    # the same identifier finds each workspace's own profile, and only its data
    assert ok(lookup(env, phone="13912345678"))["profile_id"] == survivor["profile_id"]
    p = ok(lookup(env, token=other.admin_token, phone="13912345678"))
    assert p["profile_id"] == theirs["profile_id"] and p["workspace_id"] == other.workspace_id
    assert p["merged_from"] == [] and p["merges"] == [] and "name" not in p["attributes"]
    # no token, or a write key: 401
    assert env.client.get(f"/api/v1/profiles/{gone}").status_code == 401
    assert get(env, gone, token=env.ws.write_key).status_code == 401


def _iso_utc(value: Any) -> None:
    assert isinstance(value, str) and value.endswith("Z"), value
    assert datetime.fromisoformat(value).utcoffset() == timedelta(0)


def test_json_is_exactly_profile_public(env_any: Any) -> None:
    env = env_any
    survivor, gone = merged_pair(env)
    pid = survivor["profile_id"]
    add_consent(env, gone, "sms", "granted", T0 + timedelta(microseconds=250))
    add_feedback(env, pid, "fb-1", T0)
    ident(env, "m4", userId="mum", traits={"phone": "139 1234 5678"})  # held by u1: a conflict on mum
    mum = ok(lookup(env, user_id="mum"))
    assert mum["identity_conflicts"]

    nested = {
        "identities": Identity,
        "consents": Consent,
        "feedback": FeedbackPublic,
        "merges": MergePublic,
        "identity_conflicts": ConflictPublic,
    }
    for r in (get(env, gone), lookup(env, user_id="u1"), lookup(env, user_id="mum")):
        p = ok(r)
        assert list(p) == list(ProfilePublic.model_fields)  # the same keys, in the same order
        for key, model in nested.items():
            for item in p[key]:
                assert list(item) == list(model.model_fields), key
        _iso_utc(p["first_seen_at"])
        _iso_utc(p["last_seen_at"])
        for key, fields in (
            ("identities", ["first_seen_at"]),
            ("consents", ["updated_at"]),
            ("feedback", ["created_at"]),
            ("merges", ["created_at"]),
            ("identity_conflicts", ["created_at"]),
        ):
            for item in p[key]:
                for f in fields:
                    _iso_utc(item[f])
        # the body is byte for byte what FastAPI's validation through ProfilePublic wrote
        assert r.content == ProfilePublic.model_validate_json(r.content).model_dump_json().encode()

    p = ok(get(env, gone))
    assert p["first_seen_at"] == "2025-01-01T08:30:00Z"
    assert [c["updated_at"] for c in p["consents"]] == ["2025-01-01T08:30:00.000250Z"]
    assert [f["created_at"] for f in p["feedback"]] == ["2025-01-01T08:30:00Z"]
    assert p["merges"][0]["undone_at"] is None


def test_direct_sqlite_reads_match_sqlalchemy_reads(env: Any) -> None:
    """On SQLite the service runs its statements on the DBAPI cursor; the same statements through
    SQLAlchemy (the path every other database takes) give the same profile."""
    survivor, gone = merged_pair(env)
    add_consent(env, gone, "sms", "granted", T0)
    add_feedback(env, survivor["profile_id"], "fb-1", T0)
    direct = env.gk.profiles
    assert direct._direct is not None
    via_sqlalchemy = ProfileService(env.gk.engine)
    via_sqlalchemy._direct = None
    ws = env.ws.workspace_id
    for pid in (gone, survivor["profile_id"]):
        assert direct.get(ws, pid) == via_sqlalchemy.get(ws, pid)
    for id_type, value in (("user_id", "u1"), ("phone", "13912345678"), ("anonymous_id", "anon-9")):
        assert direct.lookup(ws, id_type, value) == via_sqlalchemy.lookup(ws, id_type, value)


@pytest.mark.parametrize("bad", ["nobody", "prf_" + "0" * 26, "王 芳", "' OR 1=1 --"])
def test_unknown_ids_are_404(env: Any, bad: str) -> None:
    r = get(env, bad)
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "NotFound"
    with env.gk.engine.connect() as conn:  # nothing was written by a read
        assert conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar() == 0


def test_every_read_query_searches_an_index(env: Any) -> None:
    """A read stays a handful of index searches however large the workspace grows: no statement
    of the service scans a table or a workspace-wide index range."""
    from goldkey.profiles import service

    raw = env.gk.engine.raw_connection()
    try:
        cur = raw.cursor()
        for stmt in service._STATEMENTS:
            sql = env.gk.profiles._direct[id(stmt)].sql
            plan = [row[3] for row in cur.execute("EXPLAIN QUERY PLAN " + sql, ["x"] * sql.count("?"))]
            searches = [step for step in plan if step.startswith(("SEARCH", "SCAN"))]
            assert searches and all(
                step.startswith("SEARCH") and "=?" in step and "(workspace_id=?)" not in step for step in searches
            ), (sql, plan)
    finally:
        raw.close()


def test_events_parameter_limits_the_timeline(env_any: Any) -> None:
    # before: ?events=N was taken out of the identifiers of /lookup and then ignored
    env = env_any
    for i in range(3):
        ident(env, f"e{i}", userId="u-ev", traits={"n": i})
    full = ok(lookup(env, user_id="u-ev"))
    assert len(full["events"]) == 3
    one = ok(env.client.get("/api/v1/profiles/lookup", params={"user_id": "u-ev", "events": 1},
                            headers=env.admin_auth()))
    assert one["events"] == full["events"][:1]
    pid = full["profile_id"]
    none = ok(env.client.get(f"/api/v1/profiles/{pid}", params={"events": 0}, headers=env.admin_auth()))
    assert none["events"] == [] and none["profile_id"] == pid
    for bad in ("-1", "x", "5000"):
        r = env.client.get("/api/v1/profiles/lookup", params={"user_id": "u-ev", "events": bad},
                           headers=env.admin_auth())
        assert 400 <= r.status_code < 500 and "events" in r.text, (bad, r.status_code, r.text)
