"""Segments through the REST API on a real instance: save-time checks, estimates with explanations,
versions, materialisation with history, members, overlap, exports and real-time membership."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

Env = Any  # tests/conftest.py Env

NOW = datetime.now(UTC)


def _ts(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


PEOPLE = [
    # user, city, age, phone, orders (days ago, total), viewed (days ago)
    ("u1", "上海", 31, "13912340001", [(2, 300.0), (10, 120.0)], [1]),
    ("u2", "上海", 45, "13912340002", [(40, 150.0)], [3, 4]),
    ("u3", "北京", 28, "13912340003", [], [2]),
    ("u4", "北京", 52, "13912340004", [(1, 999.0), (3, 50.0), (5, 20.0)], []),
    ("u5", None, 23, None, [], []),
]


def load_people(env: Env) -> dict[str, str]:
    """Send identifies and events through the tracking API; return user_id -> profile_id."""
    batch = []
    for i, (uid, city, age, phone, orders, viewed) in enumerate(PEOPLE):
        traits = {"age": age, "name": f"用户{i}"}
        if city:
            traits["city"] = city
        if phone:
            traits["phone"] = phone
        batch.append({"type": "identify", "userId": uid, "traits": traits, "messageId": f"id-{uid}",
                      "timestamp": _ts(60)})
        for j, (d, total) in enumerate(orders):
            batch.append({"type": "track", "userId": uid, "event": "Order Completed", "messageId": f"o-{uid}-{j}",
                          "properties": {"total": total, "sku": f"SKU-{j}"}, "timestamp": _ts(d)})
        for j, d in enumerate(viewed):
            batch.append({"type": "track", "userId": uid, "event": "Product Viewed", "messageId": f"v-{uid}-{j}",
                          "properties": {"sku": "SKU-0"}, "timestamp": _ts(d)})
    r = env.post("/v1/batch", {"batch": batch})
    assert r.status_code == 200, r.text
    out = {}
    for uid, *_ in PEOPLE:
        r = env.client.get(f"/api/v1/profiles/lookup?user_id={uid}", headers=env.admin_auth())
        assert r.status_code == 200, r.text
        out[uid] = r.json()["profile_id"]
    return out


BIG_SPENDERS = {
    "kind": "and",
    "conditions": [
        {"kind": "attribute", "field": "attributes.city", "op": "in", "value": ["上海", "北京"]},
        {"kind": "event", "event": "Order Completed", "window": {"last_days": 30},
         "where": [{"property": "total", "op": "gte", "value": 100}]},
    ],
}


def test_estimate_create_compute_members_and_history(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    r = env.client.post("/api/v1/segments/estimate", json={"rule": BIG_SPENDERS, "sample": 2,
                                                           "explain_profiles": [ids["u2"]]}, headers=h)
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["size"] == 2  # u1 (300 two days ago) and u4 (999 yesterday); u2's order is 40 days old
    assert est["total_profiles"] == 5
    why = {e["profile_id"]: e for e in est["explanations"]}
    assert why[ids["u2"]]["matched"] is False
    event_clause = why[ids["u2"]]["conditions"][1]
    assert event_clause["matched"] is False and event_clause["seen_count"] == 0
    assert why[ids["u2"]]["conditions"][0]["seen"] == "上海"
    assert set(est["examples"]) == {ids["u1"], ids["u4"]}

    r = env.client.post("/api/v1/segments", json={"name": "沪京高消费", "rule": BIG_SPENDERS}, headers=h)
    assert r.status_code == 201, r.text
    seg = r.json()
    assert seg["version"] == 1 and seg["size"] is None
    sid = seg["segment_id"]

    r = env.client.post(f"/api/v1/segments/{sid}/compute", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 2  # (entered may be fewer: real-time membership can get there first)

    members = env.client.get(f"/api/v1/segments/{sid}/members?limit=1", headers=h).json()
    assert members["total"] == 2 and len(members["items"]) == 1
    page2 = env.client.get(f"/api/v1/segments/{sid}/members?limit=1&offset=1", headers=h).json()
    assert {members["items"][0]["profile_id"], page2["items"][0]["profile_id"]} == {ids["u1"], ids["u4"]}
    assert "****" in members["items"][0]["phone"]

    # a new version widens the segment; the old version is kept
    wider = {**BIG_SPENDERS, "conditions": [BIG_SPENDERS["conditions"][0],
                                            {**BIG_SPENDERS["conditions"][1], "window": {"last_days": 60}}]}
    r = env.client.patch(f"/api/v1/segments/{sid}", json={"rule": wider}, headers=h)
    assert r.json()["version"] == 2
    assert [v["version"] for v in env.client.get(f"/api/v1/segments/{sid}/versions", headers=h).json()] == [1, 2]
    r = env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()
    assert (r["size"], r["exited"]) == (3, 0)
    hist = env.client.get(f"/api/v1/segments/{sid}/history", headers=h).json()
    assert [(x["version"], x["size"]) for x in hist] == [(1, 2), (2, 3)]

    # membership changes are events in the profiles' timelines
    entered = env.gk.analytical.query(
        "SELECT count(*) FROM events WHERE workspace_id = ? AND event = 'segment_entered'", [env.ws.workspace_id])
    assert entered[0][0] == 3


def test_invalid_rules_point_at_the_clause_and_save_nothing(env: Env) -> None:
    load_people(env)
    h = env.admin_auth()
    cases = [
        ({"kind": "and", "conditions": [{"kind": "attribute", "field": "attributes.cty", "op": "eq", "value": "x"}]},
         "rule.conditions[0].field", "unknown field"),
        ({"kind": "attribute", "field": "attributes.age", "op": "starts_with", "value": "3"}, "rule.op",
         "does not apply"),
        ({"kind": "attribute", "field": "attributes.age", "op": "gt", "value": "thirty"}, "rule.value", "not a number"),
        ({"kind": "event", "event": "Order Completed", "window": {"last_days": -3}}, "rule.window.last_days",
         "greater than 0"),
        ({"kind": "or", "conditions": [{"kind": "event", "event": "Order Complete"}]}, "rule.conditions[0].event",
         "unknown event"),
        ({"kind": "attribute", "field": "attributes.city", "op": "between", "value": ["a"]}, "rule", "two items"),
        ({"kind": "maybe"}, "rule", "kind"),
    ]
    for rule, field, words in cases:
        r = env.client.post("/api/v1/segments", json={"name": "bad", "rule": rule}, headers=h)
        assert r.status_code == 400, (rule, r.text)
        body = r.json()
        assert body["field"].startswith(field), (rule, body)
        assert words in body["error"], (rule, body)
    assert env.client.get("/api/v1/segments", headers=h).json() == []
    # "did you mean" for a misspelt event
    r = env.client.post("/api/v1/rules/check", json={"kind": "event", "event": "Order Complete"}, headers=h)
    assert "Order Completed" in r.json()["error"]


def test_overlap_and_exports(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    shanghai = env.client.post("/api/v1/segments", json={"name": "上海", "rule": {
        "kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}}, headers=h).json()
    buyers = env.client.post("/api/v1/segments", json={"name": "buyers", "rule": {
        "kind": "event", "event": "Order Completed"}}, headers=h).json()
    for s in (shanghai, buyers):
        env.client.post(f"/api/v1/segments/{s['segment_id']}/compute", headers=h)
    ov = env.client.post("/api/v1/segments/overlap", json={"segment_ids": [shanghai["segment_id"],
                                                                            buyers["segment_id"]]}, headers=h).json()
    assert ov["sizes"] == {shanghai["segment_id"]: 2, buyers["segment_id"]: 3}
    assert ov["pairs"][0]["both"] == 2 and ov["pairs"][0]["only_b"] == 1

    r = env.client.get(f"/api/v1/segments/{buyers['segment_id']}/export", headers=h)
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["profile_id", "name", "phone"] and len(rows) == 4
    assert all("****" in row[2] for row in rows[1:])

    # the call list has only members who consented to calls
    r = env.client.put(f"/api/v1/profiles/{ids['u4']}/consents", json={"channel": "call", "status": "granted",
                                                                       "source": "store"}, headers=h)
    assert r.status_code == 200, r.text
    env.client.put(f"/api/v1/profiles/{ids['u1']}/consents", json={"channel": "call", "status": "denied"}, headers=h)
    r = env.client.get(f"/api/v1/segments/{buyers['segment_id']}/export?kind=call_list&mask=false", headers=h)
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row[0] for row in rows[1:]] == [ids["u4"]]
    assert rows[1][2] == "+8613912340004"
    profile = env.client.get(f"/api/v1/profiles/{ids['u4']}", headers=h).json()
    assert any(c["channel"] == "call" and c["status"] == "granted" for c in profile["consents"])


def test_realtime_membership_follows_new_events(env: Env) -> None:
    load_people(env)
    h = env.admin_auth()
    rule = {"kind": "event", "event": "Order Completed", "count": {"op": "at_least", "n": 3},
            "window": {"last_days": 7}}
    seg = env.client.post("/api/v1/segments", json={"name": "frequent", "rule": rule}, headers=h).json()
    sid = seg["segment_id"]
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 1  # u4

    # u1 (one order in the last week) buys twice: within a few seconds u1 is a member, with a
    # segment_entered event
    for mid in ("rt-1", "rt-2"):
        r = env.post("/v1/track", {"userId": "u1", "event": "Order Completed", "properties": {"total": 10},
                                   "messageId": mid})
        assert r.status_code == 200
    u1 = env.client.get("/api/v1/profiles/lookup?user_id=u1", headers=h).json()["profile_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not env.gk.segments.is_member(env.ws.workspace_id, sid, u1):
        time.sleep(0.1)
    assert env.gk.segments.is_member(env.ws.workspace_id, sid, u1)
    assert env.gk.segments.get(env.ws.workspace_id, sid)["size"] == 2
    rows = env.gk.analytical.query(
        "SELECT profile_id FROM events WHERE workspace_id = ? AND event = 'segment_entered' "
        "AND json_extract_string(properties, '$.segment_id') = ?", [env.ws.workspace_id, sid])
    assert u1 in {r[0] for r in rows}


def test_realtime_membership_follows_crm_imports(env: Env, tmp_path: Any) -> None:
    """A CRM import that changes a customer's attributes moves them in and out of real-time
    segments within seconds, as an event would (not at the next scheduled compute)."""
    people = load_people(env)
    h = env.admin_auth()
    ws = env.ws.workspace_id
    rule = {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "广州"}
    sid = env.client.post("/api/v1/segments", json={"name": "guangzhou", "rule": rule}, headers=h).json()["segment_id"]
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 0

    crm = tmp_path / "crm.csv"
    # u3 moves from 北京 to 广州 (matched by user id); a new CRM-only customer lives in 广州 too
    crm.write_text("user_id,crm_id,city\nu3,,广州\n,C-NEW,广州\n", encoding="utf-8")
    summary = env.gk.importer.run(ws, "customers", crm, {})
    assert summary.accepted == 2
    assert "profile_ids" not in summary.as_dict()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and env.gk.segments.get(ws, sid)["size"] < 2:
        time.sleep(0.1)
    assert env.gk.segments.is_member(ws, sid, people["u3"])
    assert env.gk.segments.get(ws, sid)["size"] == 2

    # and back out: u3 moves to 深圳
    crm.write_text("user_id,city\nu3,深圳\n", encoding="utf-8")
    env.gk.importer.run(ws, "customers", crm, {})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and env.gk.segments.is_member(ws, sid, people["u3"]):
        time.sleep(0.1)
    assert not env.gk.segments.is_member(ws, sid, people["u3"])
    rows = env.gk.analytical.query(
        "SELECT event FROM events WHERE workspace_id = ? AND profile_id = ? "
        "AND json_extract_string(properties, '$.segment_id') = ? ORDER BY \"timestamp\"",
        [ws, people["u3"], sid])
    assert [r[0] for r in rows] == ["segment_entered", "segment_exited"]


def test_workspaces_never_see_each_others_segments(env: Env) -> None:
    load_people(env)
    other = env.gk.workspaces.create("Other Brand")
    h = env.admin_auth()
    seg = env.client.post("/api/v1/segments", json={"name": "all buyers", "rule": {
        "kind": "event", "event": "Order Completed"}}, headers=h).json()
    env.client.post(f"/api/v1/segments/{seg['segment_id']}/compute", headers=h)
    oh = env.admin_auth(other.admin_token)
    assert env.client.get(f"/api/v1/segments/{seg['segment_id']}", headers=oh).status_code == 404
    assert env.client.get(f"/api/v1/segments/{seg['segment_id']}/members", headers=oh).status_code == 404
    assert env.client.get("/api/v1/segments", headers=oh).json() == []
    # the other workspace has no events, so the same rule selects nobody there
    r = env.client.post("/api/v1/segments/estimate", json={"rule": {"kind": "attribute", "field": "profile.origin",
                                                                     "op": "is_set"}}, headers=oh)
    assert r.status_code == 200 and r.json()["size"] == 0


@pytest.mark.parametrize("name", ["", "x" * 201])
def test_segment_names_are_checked(env: Env, name: str) -> None:
    r = env.client.post("/api/v1/segments", json={"name": name, "rule": {
        "kind": "attribute", "field": "profile.origin", "op": "is_set"}}, headers=env.admin_auth())
    assert r.status_code == 400 and r.json()["field"] == "name"


def test_recompute_sees_fresh_attributes_and_merges_leave_segments(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    seg = env.client.post("/api/v1/segments", json={"name": "上海", "rule": {
        "kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}}, headers=h).json()
    sid = seg["segment_id"]
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 2
    # u3 moves to Shanghai: a recompute right away sees it (no stale profile facts)
    env.post("/v1/identify", {"userId": "u3", "traits": {"city": "上海"}, "messageId": "move-u3"})
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 3
    # a Shanghai visitor logs in as u4: the visitor's profile is merged away and leaves the segment
    env.post("/v1/identify", {"anonymousId": "anon-9", "traits": {"city": "上海"}, "messageId": "anon-9"})
    visitor = env.client.get("/api/v1/profiles/lookup?anonymous_id=anon-9", headers=h).json()["profile_id"]
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 4
    env.post("/v1/identify", {"userId": "u4", "anonymousId": "anon-9", "messageId": "login-u4"})
    live = env.client.get("/api/v1/profiles/lookup?user_id=u4", headers=h).json()
    assert set(live["merged_from"]) & {visitor, ids["u4"]}, live
    merged = visitor if live["profile_id"] == ids["u4"] else ids["u4"]
    ws = env.ws.workspace_id
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and env.gk.segments.is_member(ws, sid, merged):
        time.sleep(0.1)
    assert not env.gk.segments.is_member(ws, sid, merged)
    page = env.client.get(f"/api/v1/segments/{sid}/members", headers=h).json()
    assert merged not in {m["profile_id"] for m in page["items"]}
    assert page["total"] == env.gk.segments.get(ws, sid)["size"]
    # undoing the merge brings the visitor back: a compute sees it, and so do the real-time segments
    # (before, neither did until some later write touched the two profiles)
    r = env.client.post(f"/api/v1/profiles/merges/{live['merges'][-1]['merge_id']}/undo", headers=h)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not env.gk.segments.is_member(ws, sid, merged):
        time.sleep(0.1)
    assert env.gk.segments.is_member(ws, sid, merged)
    assert env.client.post(f"/api/v1/segments/{sid}/compute", headers=h).json()["size"] == 4


def test_call_list_honours_a_denial_on_a_merged_profile(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    env.client.put(f"/api/v1/profiles/{ids['u2']}/consents", json={"channel": "call", "status": "granted"}, headers=h)
    env.post("/v1/identify", {"anonymousId": "anon-7", "traits": {"name": "访客"}, "messageId": "anon-7"})
    visitor = env.client.get("/api/v1/profiles/lookup?anonymous_id=anon-7", headers=h).json()["profile_id"]
    env.client.put(f"/api/v1/profiles/{visitor}/consents", json={"channel": "call", "status": "denied"}, headers=h)
    env.post("/v1/identify", {"userId": "u2", "anonymousId": "anon-7", "messageId": "login-u2"})
    seg = env.client.post("/api/v1/segments", json={"name": "all", "rule": {
        "kind": "attribute", "field": "profile.origin", "op": "is_set"}}, headers=h).json()
    env.client.post(f"/api/v1/segments/{seg['segment_id']}/compute", headers=h)
    r = env.client.get(f"/api/v1/segments/{seg['segment_id']}/export?kind=call_list", headers=h)
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[1:] == []  # the later denial, given on the visitor's profile merged in, wins
