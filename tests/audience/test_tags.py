"""Tags through the REST API: rule tags (enum, boolean), manual tags from the API and from CSV,
coverage, history as events, and rules over tag changes."""

from __future__ import annotations

from typing import Any

from test_segments import load_people  # tests/audience is on sys.path (rootdir-relative test modules)

Env = Any

TIERS = {
    "name": "value_tier",
    "kind": "rule",
    "value_type": "enum",
    "category": "consumption",
    "owner": "crm-team",
    "description": "消费分层 / spend tier",
    "rules": [
        {"value": "high", "rule": {"kind": "event", "event": "Order Completed", "window": {"last_days": 30},
                                   "where": [{"property": "total", "op": "gte", "value": 500}]}},
        {"value": "mid", "rule": {"kind": "event", "event": "Order Completed"}},
    ],
}


def test_rule_tag_compute_coverage_profile_and_history(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    r = env.client.post("/api/v1/tags", json=TIERS, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["values"] == ["high", "mid"]
    r = env.client.post("/api/v1/tags/value_tier/compute", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["profiles"] == 3 and r.json()["changed"] == 3

    cov = env.client.get("/api/v1/tags/value_tier/coverage", headers=h).json()
    assert cov["total_profiles"] == 5 and cov["tagged"] == 3
    assert {v["value"]: v["profiles"] for v in cov["values"]} == {"high": 1, "mid": 2}

    prof = env.client.get(f"/api/v1/profiles/{ids['u4']}", headers=h).json()
    assert prof["tags"]["value_tier"] == "high"

    # the tag is a field for rules now, and its changes are events
    rule = {"kind": "attribute", "field": "tags.value_tier", "op": "eq", "value": "mid"}
    assert env.client.post("/api/v1/segments/estimate", json={"rule": rule}, headers=h).json()["size"] == 2
    hist = env.client.get("/api/v1/tags/value_tier/history", headers=h).json()
    assert {(x["profile_id"], x["value"], x["previous"]) for x in hist} == {
        (ids["u1"], "mid", None), (ids["u2"], "mid", None), (ids["u4"], "high", None)}
    became_high = {"kind": "event", "event": "Tag Changed", "window": {"last_days": 30}, "where": [
        {"property": "tag", "op": "eq", "value": "value_tier"}, {"property": "value", "op": "eq", "value": "high"}]}
    est = env.client.post("/api/v1/segments/estimate", json={"rule": became_high, "sample": 5}, headers=h).json()
    assert est["examples"] == [ids["u4"]]

    # recomputing with nothing changed writes nothing
    assert env.client.post("/api/v1/tags/value_tier/compute", headers=h).json()["changed"] == 0
    # u1 spends big: recompute moves u1 from mid to high and records the previous value
    env.post("/v1/track", {"userId": "u1", "event": "Order Completed", "properties": {"total": 800}, "messageId": "b"})
    assert env.client.post("/api/v1/tags/value_tier/compute", headers=h).json()["changed"] == 1
    hist = env.client.get(f"/api/v1/tags/value_tier/history?profile_id={ids['u1']}", headers=h).json()
    assert (hist[0]["value"], hist[0]["previous"]) == ("high", "mid")

    # deleting the tag removes it from the profiles and from the field catalog
    assert env.client.delete("/api/v1/tags/value_tier", headers=h).json()["removed_from"] == 3
    assert "value_tier" not in env.client.get(f"/api/v1/profiles/{ids['u4']}", headers=h).json()["tags"]
    r = env.client.post("/api/v1/rules/check", json=rule, headers=h)
    assert r.status_code == 400 and "unknown field" in r.json()["error"]
    # the body may also be {"rule": ...}, as the segment routes take it (before: "Unable to extract
    # tag using discriminator 'kind'")
    wrapped = env.client.post("/api/v1/rules/check", json={"rule": rule}, headers=h)
    assert wrapped.status_code == 400 and wrapped.json()["error"] == r.json()["error"], wrapped.text


def test_boolean_rule_tag_stores_true_only(env: Env) -> None:
    load_people(env)
    h = env.admin_auth()
    tag = {"name": "shanghai", "kind": "rule", "value_type": "boolean", "category": "fixed",
           "rules": [{"rule": {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}}]}
    assert env.client.post("/api/v1/tags", json=tag, headers=h).status_code == 201
    assert env.client.post("/api/v1/tags/shanghai/compute", headers=h).json()["profiles"] == 2
    not_sh = {"kind": "attribute", "field": "tags.shanghai", "op": "is_not_set"}
    assert env.client.post("/api/v1/segments/estimate", json={"rule": not_sh}, headers=h).json()["size"] == 3


def test_manual_tag_from_api_and_csv(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    tag = {"name": "interest", "kind": "manual", "value_type": "enum", "category": "interests",
           "values": ["color_lens", "daily_lens"]}
    assert env.client.post("/api/v1/tags", json=tag, headers=h).status_code == 201
    r = env.client.post("/api/v1/tags/interest/values", headers=h, json={"assignments": [
        {"profile_id": ids["u1"], "value": "color_lens"}, {"phone": "139 1234 0002", "value": "daily_lens"}]})
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == 2
    # one bad row: nothing is written, the error names the row and the field
    r = env.client.post("/api/v1/tags/interest/values", headers=h, json={"assignments": [
        {"profile_id": ids["u3"], "value": "color_lens"}, {"profile_id": ids["u4"], "value": "sunglasses"}]})
    assert r.status_code == 400 and r.json()["record"] == 1 and r.json()["field"] == "value"
    assert "interest" not in env.client.get(f"/api/v1/profiles/{ids['u3']}", headers=h).json()["tags"]

    csv_text = "phone,value\n13912340003,daily_lens\n13900000000,daily_lens\n13912340004,nope\n"
    r = env.client.post("/api/v1/tags/interest/import", headers=h,
                        files={"file": ("list.csv", csv_text.encode("utf-8"))})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert (rep["rows"], rep["profiles"], rep["quarantined"]) == (3, 1, 2)
    q = env.client.get("/api/v1/quarantine", headers=h).json()
    reasons = {x["record"]: x["reason"] for x in q if x["source"] == "tag:interest"}
    # rows numbered as the imports number them (1 = the first row under the header); before: "line 3"
    assert "no profile" in reasons["2"] and "not one of" in reasons["3"]
    cov = env.client.get("/api/v1/tags/interest/coverage", headers=h).json()
    assert {v["value"]: v["profiles"] for v in cov["values"]} == {"color_lens": 1, "daily_lens": 2}
    # a manual tag cannot be computed, a rule tag cannot be set
    assert env.client.post("/api/v1/tags/interest/compute", headers=h).status_code == 400


def test_invalid_tag_definitions(env: Env) -> None:
    load_people(env)
    h = env.admin_auth()
    bad = [
        ({**TIERS, "name": "9lives"}, "name"),
        ({**TIERS, "category": "hobbies"}, "category"),
        ({**TIERS, "rules": [{"value": "high", "rule": {"kind": "attribute", "field": "attributes.nope",
                                                        "op": "is_set"}}]}, "rules[0].rule.field"),
        ({"name": "x", "kind": "manual", "value_type": "enum", "category": "fixed"}, None),
    ]
    for body, field in bad:
        r = env.client.post("/api/v1/tags", json=body, headers=h)
        assert r.status_code == 400, (body, r.text)
        if field:
            assert r.json()["field"] == field, r.json()
    assert env.client.get("/api/v1/tags", headers=h).json() == []


def test_new_tag_is_usable_at_once_and_false_removes(env: Env) -> None:
    ids = load_people(env)
    h = env.admin_auth()
    tag = {"name": "vip", "kind": "manual", "value_type": "boolean", "category": "dynamic"}
    assert env.client.post("/api/v1/tags", json=tag, headers=h).status_code == 201
    # coverage and rules on the new tag work before any value is set
    assert env.client.get("/api/v1/tags/vip/coverage", headers=h).json()["tagged"] == 0
    rule = {"kind": "attribute", "field": "tags.vip", "op": "is_not_set"}
    assert env.client.post("/api/v1/segments/estimate", json={"rule": rule}, headers=h).json()["size"] == 5
    env.client.post("/api/v1/tags/vip/values", headers=h, json={"assignments": [
        {"profile_id": ids["u1"], "value": True}, {"profile_id": ids["u2"], "value": True}]})
    env.client.post("/api/v1/tags/vip/values", headers=h, json={"assignments": [
        {"profile_id": ids["u2"], "value": False}]})
    cov = env.client.get("/api/v1/tags/vip/coverage", headers=h).json()
    assert cov["tagged"] == 1 and cov["values"] == [{"value": True, "profiles": 1}]
