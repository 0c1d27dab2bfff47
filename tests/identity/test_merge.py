"""Identity resolution: merges under the workspace's rules, merge history, unmerge, and the merge
bugs users of other CDPs report (lost properties, events left on the old id, double counts)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from goldkey.identity.rules import CustomIdentifier, IdentityRules
from goldkey.store.operational import audit_log


def ident(env: Any, mid: str, **kw: Any) -> None:
    r = env.post("/v1/identify", {"messageId": mid, **kw})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


def track(env: Any, mid: str, event: str = "Viewed", **kw: Any) -> None:
    r = env.post("/v1/track", {"messageId": mid, "event": event, **kw})
    assert r.status_code == 200, r.text


def lookup(env: Any, **q: str) -> dict[str, Any]:
    r = env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()


def resolved_events(env: Any, profile_id: str) -> list[str]:
    rows = env.gk.analytical.query(
        "SELECT message_id FROM events_resolved WHERE workspace_id = ? AND canonical_id = ? ORDER BY message_id",
        [env.ws.workspace_id, profile_id],
    )
    return [r[0] for r in rows]


def test_anonymous_visitor_merges_into_known_customer_without_losing_anything(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1", traits={"name": "王芳", "phone": "13912345678"}, timestamp="2025-01-01T00:00:00Z")
    track(env, "m2", anonymousId="anon-9", properties={"sku": "LENS-1"})
    ident(env, "m3", anonymousId="anon-9", traits={"city": "广州"})
    before = lookup(env, anonymous_id="anon-9")
    assert before["profile_id"] != lookup(env, user_id="u1")["profile_id"]

    # the visitor logs in: the anonymous profile joins the customer's
    ident(env, "m4", userId="u1", anonymousId="anon-9")
    p = lookup(env, user_id="u1")
    assert lookup(env, anonymous_id="anon-9")["profile_id"] == p["profile_id"]
    # no lost properties: both sides' attributes survive
    assert p["attributes"]["name"] == "王芳"
    assert p["attributes"]["city"] == "广州"
    # no events left on the old id: the timeline and the event log resolve to the survivor
    assert {"m1", "m2", "m3", "m4"} <= {e["message_id"] for e in p["events"]}
    assert resolved_events(env, p["profile_id"]) == ["m1", "m2", "m3", "m4"]
    # the merged-away id still answers, with the survivor
    old = env.client.get(f"/api/v1/profiles/{before['profile_id']}", headers=env.admin_auth()).json()
    assert old["profile_id"] == p["profile_id"] and old["requested_id"] == before["profile_id"]
    assert before["profile_id"] in p["merged_from"]
    assert len(p["merges"]) == 1 and p["merges"][0]["linked_by"]["type"] in ("anonymous_id", "user_id")
    # the older profile survives, and it was first seen when the customer was
    assert p["first_seen_at"].startswith("2025-01-01")


def test_shared_phone_does_not_collapse_different_users(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="dad", traits={"phone": "13911112222"})
    ident(env, "m2", userId="mum", traits={"phone": "139 1111 2222"})
    dad, mum = lookup(env, user_id="dad"), lookup(env, user_id="mum")
    assert dad["profile_id"] != mum["profile_id"]
    assert lookup(env, phone="13911112222")["profile_id"] == dad["profile_id"]
    assert any("not linked" in c["reason"] for c in mum["identity_conflicts"])
    assert "phone" not in {i["type"] for i in mum["identities"]}


def test_limit_on_values_of_one_type(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1", traits={"email": "a@x.com"})
    ident(env, "m2", userId="u1", traits={"email": "b@x.com"})
    ident(env, "m3", userId="u1", traits={"email": "c@x.com"})
    ident(env, "m4", userId="u1", traits={"email": "d@x.com"})  # limit 3
    p = lookup(env, user_id="u1")
    assert sorted(i["value"] for i in p["identities"] if i["type"] == "email") == ["a@x.com", "b@x.com", "c@x.com"]
    assert any(c["value"] == "d@x.com" for c in p["identity_conflicts"])


def test_blocked_values_never_link(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1", traits={"phone": "13800138000", "email": "unknown"})
    ident(env, "m2", userId="u2", traits={"phone": "13800138000"})
    a, b = lookup(env, user_id="u1"), lookup(env, user_id="u2")
    assert a["profile_id"] != b["profile_id"]
    assert {i["type"] for i in a["identities"]} == {"user_id"}
    r = env.client.get("/api/v1/profiles/lookup", params={"phone": "13800138000"}, headers=env.admin_auth())
    assert r.status_code == 404


def test_a_blocked_value_blocks_what_it_names_however_it_was_typed(env: Any) -> None:
    """A call-centre number entered without its country code and an e-mail in capitals still block
    the identifiers they name (which are compared in their normal form, +86..., lower case)."""
    c, auth = env.client, env.admin_auth()
    rules = c.get("/api/v1/workspace/identity-rules", headers=auth).json()
    rules["blocked_by_type"]["phone"] = ["139 1234 5678"]
    rules["blocked_by_type"]["email"] = ["Front.Desk@Example.com"]
    assert c.put("/api/v1/workspace/identity-rules", json=rules, headers=auth).status_code == 200
    ident(env, "m1", userId="u1", traits={"phone": "+86 139-1234-5678", "email": "front.desk@example.com"})
    ident(env, "m2", userId="u2", traits={"phone": "13912345678", "email": "FRONT.DESK@example.com"})
    a, b = lookup(env, user_id="u1"), lookup(env, user_id="u2")
    assert a["profile_id"] != b["profile_id"]
    assert {i["type"] for i in a["identities"]} == {"user_id"}


def test_unmerge_restores_both_profiles_and_their_events(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1", traits={"name": "A", "tier": "gold"})
    track(env, "m2", userId="u1")
    ident(env, "m3", anonymousId="dev-1", traits={"nickname": "B"})
    track(env, "m4", anonymousId="dev-1")
    ident(env, "m5", userId="u1", anonymousId="dev-1")  # a wrong merge (a shared tablet)
    merged = lookup(env, user_id="u1")
    merge_id = merged["merges"][0]["merge_id"]
    loser = merged["merges"][0]["loser_id"]
    track(env, "m6", anonymousId="dev-1")  # after the merge, sent with the loser's identifier

    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert r.json()["restored_profile_id"] == loser
    a, b = lookup(env, user_id="u1"), lookup(env, anonymous_id="dev-1")
    assert a["profile_id"] != b["profile_id"] and b["profile_id"] == loser
    assert a["attributes"] == {"name": "A", "tier": "gold"}
    assert b["attributes"] == {"nickname": "B"}
    assert resolved_events(env, a["profile_id"]) == ["m1", "m2", "m5"]
    assert resolved_events(env, b["profile_id"]) == ["m3", "m4", "m6"]
    assert {e["message_id"] for e in a["events"]} == {"m1", "m2", "m5"}
    assert {e["message_id"] for e in b["events"]} == {"m3", "m4", "m6"}
    assert b["merges"][0]["undone_at"] is not None
    # undoing twice is a conflict, not a 500
    assert env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth()).status_code == 409
    with env.gk.engine.connect() as conn:
        actions = [r.action for r in conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.audit_id))]
    assert actions == ["profile.merge", "profile.unmerge"]


def test_merge_chain_and_undo_in_order(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1")
    ident(env, "m2", anonymousId="a1")
    ident(env, "m3", anonymousId="a2", traits={"email": "z@x.com"})
    ident(env, "m4", userId="u1", anonymousId="a1")
    ident(env, "m5", userId="u1", anonymousId="a2")
    p = lookup(env, email="z@x.com")
    assert p["profile_id"] == lookup(env, anonymous_id="a1")["profile_id"] == lookup(env, user_id="u1")["profile_id"]
    assert len(p["merged_from"]) == 2
    assert sorted(resolved_events(env, p["profile_id"])) == ["m1", "m2", "m3", "m4", "m5"]


def test_custom_identifier_type_links_profiles(env_any: Any) -> None:
    env = env_any
    rules = IdentityRules(custom=[CustomIdentifier(name="member_card", trait="member_card_no")])
    r = env.client.put(
        "/api/v1/workspace/identity-rules",
        content=rules.model_dump_json(),
        headers={**env.admin_auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    ident(env, "m1", userId="u1", traits={"member_card_no": "VIP-001"})
    ident(env, "m2", anonymousId="kiosk-7", traits={"member_card_no": "VIP-001"})
    assert lookup(env, member_card="VIP-001")["profile_id"] == lookup(env, user_id="u1")["profile_id"]
    assert lookup(env, anonymous_id="kiosk-7")["profile_id"] == lookup(env, user_id="u1")["profile_id"]


def test_workspaces_are_isolated(env_any: Any) -> None:
    env = env_any
    other = env.gk.workspaces.create("Other Brand")
    ident(env, "m1", userId="u1", traits={"phone": "13912345678"})
    r = env.post("/v1/identify", {"messageId": "m1", "userId": "u1", "traits": {"city": "上海"}}, key=other.write_key)
    assert r.json()["accepted"] == 1  # same messageId in another workspace is not a duplicate
    mine = lookup(env, user_id="u1")
    theirs = env.client.get(
        "/api/v1/profiles/lookup", params={"user_id": "u1"}, headers=env.admin_auth(other.admin_token)
    ).json()
    assert mine["profile_id"] != theirs["profile_id"]
    assert "city" not in mine["attributes"] and "phone" not in theirs["attributes"]
    r = env.client.get(f"/api/v1/profiles/{mine['profile_id']}", headers=env.admin_auth(other.admin_token))
    assert r.status_code == 404


def test_one_merge_per_pair_even_when_several_ids_link_it(env_any: Any) -> None:
    env = env_any
    ident(env, "m1", userId="u1")
    ident(env, "m2", anonymousId="a1", traits={"email": "e@x.com"})
    ident(env, "m3", userId="u1", anonymousId="a1", traits={"email": "e@x.com"})
    p = lookup(env, user_id="u1")
    assert len(p["merges"]) == 1
    assert resolved_events(env, p["profile_id"]) == ["m1", "m2", "m3"]  # each once


def test_undo_restores_an_overwritten_attribute_and_keeps_later_merges(env: Any, tmp_path: Any) -> None:
    ident(env, "m1", userId="u1", traits={"name": "Alice"}, timestamp="2022-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", traits={"name": "Bob"})
    ident(env, "m3", userId="u1", anonymousId="a1")
    first = lookup(env, user_id="u1")["merges"][0]["merge_id"]
    # a later merge brings a CRM customer (existing) into the same profile
    env.gk.importer.run(env.ws.workspace_id, "customers", _crm(tmp_path), {})
    ident(env, "m4", userId="u1", traits={"crm_id": "C9"})
    assert lookup(env, user_id="u1")["origin"] == "existing"
    r = env.client.post(f"/api/v1/profiles/merges/{first}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    p = lookup(env, user_id="u1")
    assert p["attributes"]["name"] == "Alice"
    assert lookup(env, anonymous_id="a1")["attributes"]["name"] == "Bob"
    assert p["origin"] == "existing" and lookup(env, crm_id="C9")["profile_id"] == p["profile_id"]


def _crm(tmp_path: Any) -> Any:
    f = tmp_path / "crm.csv"
    f.write_text("crm_id,name,registered_at\nC9,Carol,2023-01-01\n", encoding="utf-8")
    return f


def test_events_of_a_batch_go_back_with_their_profile_on_undo(env: Any) -> None:
    ident(env, "m1", userId="u1")
    r = env.post(
        "/v1/batch",
        {
            "batch": [
                {"type": "track", "anonymousId": "a1", "event": "E", "messageId": "m2"},
                {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m3"},
            ]
        },
    )
    assert r.json()["accepted"] == 2
    p = lookup(env, user_id="u1")
    merge_id = p["merges"][0]["merge_id"]
    assert env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth()).status_code == 200
    assert resolved_events(env, lookup(env, anonymous_id="a1")["profile_id"]) == ["m2"]


def test_alias_from_one_user_id_to_another_merges(env: Any) -> None:
    ident(env, "m1", userId="old-id", traits={"email": "o@x.com"})
    r = env.post("/v1/alias", {"previousId": "old-id", "userId": "new-id", "messageId": "m2"})
    assert r.status_code == 200
    p = lookup(env, user_id="new-id")
    assert p["profile_id"] == lookup(env, user_id="old-id")["profile_id"]
    assert p["merges"] and not p["identity_conflicts"]


def test_blocked_only_ids_share_one_unidentified_profile(env: Any) -> None:
    for i in range(3):
        assert env.post("/v1/track", {"userId": "test", "event": "E", "messageId": f"t{i}"}).status_code == 200
    owners = env.gk.analytical.query("SELECT DISTINCT profile_id FROM events WHERE message_id LIKE 't%'")
    assert len(owners) == 1


def test_an_alias_to_a_blocked_user_id_links_nobody(env: Any) -> None:
    """alias(previousId=<a real visitor>, userId="test"): "test" is blocked, so the visitor is not
    merged into the workspace's unidentified profile (which would then collect every blocked-id
    event of the workspace on that visitor)."""
    track(env, "t0", userId="test")  # the unidentified profile exists
    track(env, "v1", anonymousId="visitor-1")
    ident(env, "v2", anonymousId="visitor-1", traits={"name": "Real Person"})
    assert env.post("/v1/alias", {"previousId": "visitor-1", "userId": "test", "messageId": "al1"}).status_code == 200
    for i in range(3):
        track(env, f"junk{i}", userId="undefined")
    v = lookup(env, anonymous_id="visitor-1")
    assert v["merged_from"] == [] and v["merges"] == []
    assert resolved_events(env, v["profile_id"]) == ["v1", "v2"]
    assert v["attributes"]["name"] == "Real Person"


def test_the_profile_shows_the_consent_the_guardrails_apply_on_a_tie(env: Any) -> None:
    """Decisions of the same time on two merged profiles: a denial wins, in the 360° profile as in
    the send guardrails."""
    from goldkey.govern.consent import latest_decision

    at = "2025-03-01T08:00:00Z"
    ident(env, "w1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    ident(env, "c1", userId="u1", timestamp=at, traits={"consent": {"sms": True}})
    ident(env, "c2", anonymousId="a1", timestamp=at, traits={"consent": {"sms": False}})
    ident(env, "m1", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    assert p["merged_from"]
    shown = {(c["channel"], c["purpose"]): c["status"] for c in p["consents"]}
    with env.gk.engine.connect() as c:
        applied = c.execute(sa.select(latest_decision("sms", "marketing", sa.literal(p["profile_id"])))).scalar()
    assert shown[("sms", "marketing")] == applied == "denied"


def test_scores_merge_as_a_union_and_undo_restores_both(env_any: Any) -> None:
    """Model scores (the narrow profile_scores table): a merge gives the survivor the union of both
    profiles' scores, its own winning a clash; the rules' view of the profile sees them; undoing the
    merge gives each profile its own scores back and keeps what a later merge brought."""
    from goldkey.audience.common import load_profile_values
    from goldkey.insight.writeback import write_scores
    from goldkey.store.operational import profile_scores

    env, ws = env_any, env_any.ws.workspace_id
    ident(env, "m1", userId="u1", timestamp="2022-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", timestamp="2023-01-01T00:00:00Z")
    ident(env, "m3", anonymousId="a2", timestamp="2023-06-01T00:00:00Z")
    u1, a1, a2 = (lookup(env, **q)["profile_id"] for q in ({"user_id": "u1"}, {"anonymous_id": "a1"},
                                                           {"anonymous_id": "a2"}))
    write_scores(env.gk, ws, ("x", "y"), {u1: {"x": 1, "y": 1}, a1: {"y": 2}})
    write_scores(env.gk, ws, ("z",), {a1: {"z": 3}})
    write_scores(env.gk, ws, ("w",), {a2: {"w": 5}})

    ident(env, "m4", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    assert p["profile_id"] == u1 and a1 in p["merged_from"]
    assert p["scores"] == {"x": 1.0, "y": 1.0, "z": 3.0}  # the union; the survivor's y wins
    assert load_profile_values(env.gk.engine, ws, [u1])[u1]["scores.z"] == 3.0
    ident(env, "m5", userId="u1", anonymousId="a2")  # a later merge into the same profile
    assert lookup(env, user_id="u1")["scores"] == {"x": 1.0, "y": 1.0, "z": 3.0, "w": 5.0}
    # a model run writes live profiles only; the merged-away ones keep their own rows
    write_scores(env.gk, ws, ("z",), {u1: {"z": 4}})
    with env.gk.engine.connect() as c:
        rows = dict(c.execute(sa.select(profile_scores.c.profile_id, profile_scores.c.scores)
                              .where(profile_scores.c.workspace_id == ws)).all())
    assert set(rows) == {u1, a1, a2} and json.loads(rows[a1]) == {"y": 2.0, "z": 3.0}

    first = next(m["merge_id"] for m in lookup(env, user_id="u1")["merges"] if m["loser_id"] == a1)
    r = env.client.post(f"/api/v1/profiles/merges/{first}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    # the survivor: its own scores, the later merge's, and what was written on it after the merge
    # (z, a model run on the survivor: not the loser's value, so it stays until the next run)
    assert lookup(env, user_id="u1")["scores"] == {"x": 1.0, "y": 1.0, "z": 4.0, "w": 5.0}
    assert lookup(env, anonymous_id="a1")["scores"] == {"y": 2.0, "z": 3.0}
    # a model that no longer scores a profile removes its fields (the row stays, empty)
    write_scores(env.gk, ws, ("x", "y"), {u1: {"x": 1, "y": 1}})
    write_scores(env.gk, ws, ("z",), {})
    assert lookup(env, anonymous_id="a1")["scores"] == {}
    assert lookup(env, user_id="u1")["scores"] == {"x": 1.0, "y": 1.0, "w": 5.0}
    # ... and gets scores again later
    write_scores(env.gk, ws, ("z",), {a1: {"z": 6}})
    assert lookup(env, anonymous_id="a1")["scores"] == {"z": 6.0}


def test_model_tags_live_beside_the_scores_merge_as_a_union_and_undo_restores_both(env_any: Any) -> None:
    """Model tags are written to the narrow profile_scores row (model_tags), not to the wide profile
    row; every reader sees them among the tags. A merge gives the survivor the union (its own value
    winning a clash) and an undo gives each profile its own back, also from a merge record written
    before the move (model tags then sat among the profile's tags)."""
    from goldkey.audience.common import load_profile_values
    from goldkey.store.operational import merges, profile_scores, profiles

    env, ws = env_any, env_any.ws.workspace_id
    tags = env.gk.tags
    tags.create(ws, {"name": "stage", "kind": "model", "value_type": "enum", "category": "dynamic",
                     "values": ["new", "active"]})
    tags.create(ws, {"name": "seg", "kind": "model", "value_type": "enum", "category": "dynamic",
                     "values": ["a", "b"]})
    tags.create(ws, {"name": "vip", "kind": "manual", "value_type": "boolean", "category": "fixed"})
    ident(env, "m1", userId="u1", timestamp="2022-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", timestamp="2023-01-01T00:00:00Z")
    u1, a1 = lookup(env, user_id="u1")["profile_id"], lookup(env, anonymous_id="a1")["profile_id"]
    tags.set_model_values(ws, "stage", {u1: "active", a1: "new"}, "model:test:v1")
    tags.set_model_values(ws, "seg", {a1: "b"}, "model:test:v1")
    tags.set_values(ws, "vip", [{"profile_id": a1, "value": True}])

    with env.gk.engine.connect() as c:
        wide = dict(c.execute(sa.select(profiles.c.profile_id, profiles.c.tags)
                              .where(profiles.c.workspace_id == ws)).all())
        narrow = dict(c.execute(sa.select(profile_scores.c.profile_id, profile_scores.c.model_tags)
                                .where(profile_scores.c.workspace_id == ws)).all())
    assert json.loads(wide[u1]) == {} and json.loads(wide[a1]) == {"vip": True}
    assert json.loads(narrow[u1]) == {"stage": "active"} and json.loads(narrow[a1]) == {"stage": "new", "seg": "b"}
    assert lookup(env, anonymous_id="a1")["tags"] == {"vip": True, "stage": "new", "seg": "b"}
    assert tags.holders(ws, "stage") == {u1: "active", a1: "new"}
    assert load_profile_values(env.gk.engine, ws, [a1])[a1]["tags.seg"] == "b"
    # the batch evaluator (facts) sees them too
    r = env.client.post("/api/v1/segments/estimate", headers=env.admin_auth(),
                        json={"rule": {"kind": "attribute", "field": "tags.stage", "op": "eq", "value": "new"}})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 1

    ident(env, "m3", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    assert p["profile_id"] == u1 and p["tags"] == {"vip": True, "stage": "active", "seg": "b"}
    assert tags.holders(ws, "seg") == {u1: "b"}  # the merged-away profile is no holder
    merge_id = next(m["merge_id"] for m in p["merges"] if m["loser_id"] == a1)
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert lookup(env, user_id="u1")["tags"] == {"stage": "active"}
    assert lookup(env, anonymous_id="a1")["tags"] == {"vip": True, "stage": "new", "seg": "b"}

    # a merge record from before migration 0010: the model tags are among loser_before's tags
    ident(env, "m4", userId="u1", anonymousId="a1")
    merge_id = next(m["merge_id"] for m in lookup(env, user_id="u1")["merges"] if m["undone_at"] is None)
    with env.gk.engine.begin() as c:
        detail = json.loads(c.execute(sa.select(merges.c.detail).where(merges.c.merge_id == merge_id)).scalar_one())
        for side in ("loser_before", "winner_before"):
            before = detail[side]
            before["tags"] = json.dumps({**json.loads(before["tags"]), **json.loads(before.pop("model_tags"))})
        c.execute(merges.update().where(merges.c.merge_id == merge_id).values(detail=json.dumps(detail)))
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    with env.gk.engine.connect() as c:
        wide_tags = json.loads(c.execute(sa.select(profiles.c.tags).where(profiles.c.profile_id == a1)).scalar_one())
    assert wide_tags == {"vip": True}  # the model tags went back to their own place
    assert lookup(env, anonymous_id="a1")["tags"] == {"vip": True, "stage": "new", "seg": "b"}
    assert lookup(env, user_id="u1")["tags"] == {"stage": "active"}
    # a tag deleted and created again as another kind while merged: the undo puts the value where
    # the tag's values live now
    ident(env, "m5", userId="u1", anonymousId="a1")
    merge_id = next(m["merge_id"] for m in lookup(env, user_id="u1")["merges"] if m["undone_at"] is None)
    tags.delete(ws, "seg")
    tags.create(ws, {"name": "seg", "kind": "manual", "value_type": "enum", "category": "dynamic",
                     "values": ["a", "b"]})
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert tags.holders(ws, "seg") == {a1: "b"}
    with env.gk.engine.connect() as c:
        wide_tags = json.loads(c.execute(sa.select(profiles.c.tags).where(profiles.c.profile_id == a1)).scalar_one())
    assert wide_tags == {"vip": True, "seg": "b"}
    # a model tag stays a model tag
    from goldkey.core.errors import InvalidInput

    try:
        tags.update(ws, "stage", {"kind": "manual"})
    except InvalidInput as exc:
        assert exc.field == "kind"
    else:
        raise AssertionError("a model tag became a manual one")


def _undo(env: Any, merge_id: str) -> None:
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text


def test_undo_keeps_what_was_set_on_the_survivor_after_the_merge(env_any: Any) -> None:
    """A marketer's tag and a model's score set on the surviving profile after a merge are the
    survivor's: undoing the merge does not reset them to the snapshot taken at the merge."""
    from goldkey.insight.writeback import declare_scores, write_scores

    env, ws, h = env_any, env_any.ws.workspace_id, env_any.admin_auth()
    ident(env, "m1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", traits={"city": "Shanghai"})
    ident(env, "m3", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    r = env.client.post("/api/v1/tags", json={"name": "vip", "kind": "manual", "value_type": "boolean",
                                              "category": "fixed"}, headers=h)
    assert r.status_code in (200, 201), r.text
    r = env.client.post("/api/v1/tags/vip/values", json={"assignments": [{"user_id": "u1", "value": True}]},
                        headers=h)
    assert r.status_code == 200, r.text
    declare_scores(env.gk.engine, ws, {"churn_risk": "churn risk"}, "churn", 1)
    write_scores(env.gk, ws, ["churn_risk"], {p["profile_id"]: {"churn_risk": 0.9}})
    _undo(env, p["merges"][0]["merge_id"])
    w = lookup(env, user_id="u1")
    assert w["tags"] == {"vip": True} and w["scores"]["churn_risk"] == 0.9
    assert "city" not in w["attributes"]  # what the loser brought went back with it
    assert lookup(env, anonymous_id="a1")["attributes"]["city"] == "Shanghai"


def test_undoing_merges_out_of_order_leaves_nothing_of_either_loser(env: Any, tmp_path: Any) -> None:
    """A (a CRM customer with a tag) then M merged into W; undoing A's merge, then M's: W gets its own
    origin back and none of A's tags (M's merge snapshot was taken while A was merged in); an
    attribute that A and a profile still merged in both brought stays."""
    ws, h = env.ws.workspace_id, env.admin_auth()
    ident(env, "w1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    f = tmp_path / "crm.csv"
    f.write_text("crm_id,name,registered_at\nC1,Carol,2024-06-01\n")
    assert env.gk.importer.run(ws, "customers", f, {}).status == "done"
    assert env.client.post("/api/v1/tags", json={"name": "vip", "kind": "manual", "value_type": "boolean",
                                                 "category": "fixed"}, headers=h).status_code in (200, 201)
    r = env.client.post("/api/v1/tags/vip/values", json={"assignments": [{"crm_id": "C1", "value": True}]},
                        headers=h)
    assert r.status_code == 200, r.text
    ident(env, "m1", userId="u1", traits={"crm_id": "C1"})  # A into W
    ident(env, "x1", anonymousId="a-m", traits={"age": 30})
    ident(env, "m2", userId="u1", anonymousId="a-m")  # M into W
    ident(env, "x2", anonymousId="a-n", traits={"name": "Carol"})  # N brings what A brought, and stays
    ident(env, "m3", userId="u1", anonymousId="a-n")
    p = lookup(env, user_id="u1")
    assert p["origin"] == "existing" and p["tags"] == {"vip": True}
    by = {m["linked_by"]["value"]: m["merge_id"] for m in p["merges"]}
    _undo(env, by["C1"])
    _undo(env, by["a-m"])
    w, a = lookup(env, user_id="u1"), lookup(env, crm_id="C1")
    assert (w["origin"], w["tags"]) == ("new", {})
    assert (a["origin"], a["tags"]) == ("existing", {"vip": True})
    assert w["attributes"].get("name") == "Carol" and "age" not in w["attributes"]


def test_undo_moves_back_the_losers_events_of_the_merges_own_batch(env_any: Any) -> None:
    """An event after the merging one in the same batch (received before the merge was recorded)
    that carries only the loser's ids goes back to the loser; the merging event itself, carrying
    the winner's user id, stays with the winner."""
    env = env_any
    ident(env, "m1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1")
    r = env.post("/v1/batch", {"batch": [
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m3"},  # merges a1 into u1
        {"type": "track", "anonymousId": "a1", "event": "E", "messageId": "m4"},
        {"type": "track", "userId": "u1", "event": "E", "messageId": "m5"},
    ]})
    assert r.json()["accepted"] == 3
    track(env, "m6", anonymousId="a1")
    p = lookup(env, user_id="u1")
    _undo(env, p["merges"][0]["merge_id"])
    w, a = lookup(env, user_id="u1")["profile_id"], lookup(env, anonymous_id="a1")["profile_id"]
    assert resolved_events(env, w) == ["m1", "m3", "m5"]
    assert resolved_events(env, a) == ["m2", "m4", "m6"]


def test_what_the_loser_said_in_the_merges_own_batch_is_the_losers_on_undo(env_any: Any) -> None:
    """An identify of the loser earlier in the batch that merges it: its traits join the merge and go
    back to the loser on undo (the survivor gets its own name back, the city it never had goes)."""
    env = env_any
    ident(env, "m1", userId="u1", traits={"name": "Alice"}, timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", traits={"nickname": "B"})
    r = env.post("/v1/batch", {"batch": [
        {"type": "identify", "anonymousId": "a1", "traits": {"city": "Shanghai", "name": "Bob"}, "messageId": "m3"},
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m4"},
    ]})
    assert r.json()["accepted"] == 2
    p = lookup(env, user_id="u1")
    assert p["attributes"] == {"name": "Bob", "nickname": "B", "city": "Shanghai"}  # the newer profile's name
    _undo(env, p["merges"][0]["merge_id"])
    assert lookup(env, user_id="u1")["attributes"] == {"name": "Alice"}
    assert lookup(env, anonymous_id="a1")["attributes"] == {"nickname": "B", "city": "Shanghai", "name": "Bob"}


def test_undo_gives_back_orders_and_feedback_imported_while_the_merge_stood(env_any: Any, tmp_path: Any) -> None:
    """An order and a feedback record naming the loser's crm_id, imported while a wrong merge stood,
    were stored on the survivor; undoing the merge gives them back to the loser (its order summary
    follows). A record naming ids of both stays with the survivor: it is what linked them."""
    env, ws = env_any, env_any.ws.workspace_id
    ident(env, "m1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", traits={"crm_id": "C1"})
    ident(env, "m3", userId="u1", anonymousId="a1")  # the wrong merge: C1's profile into u1's
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,crm_id,user_id,ordered_at,sku,line_amount\n"
                      "O1,C1,,2025-02-01,SKU1,100\nO2,,u1,2025-02-02,SKU2,50\nO3,C1,u1,2025-02-03,SKU3,7\n")
    assert env.gk.importer.run(ws, "orders", orders, {}).accepted == 3
    fb = tmp_path / "feedback.csv"
    fb.write_text("feedback_id,crm_id,user_id,kind,text,created_at\n"
                  "F1,C1,,complaint,lens broke,2025-02-01\nF2,,u1,review,great,2025-02-02\n")
    assert env.gk.importer.run(ws, "feedback", fb, {}).accepted == 2
    p = lookup(env, user_id="u1")
    assert p["order_summary"]["orders"] == 3 and len(p["feedback"]) == 2
    _undo(env, p["merges"][0]["merge_id"])
    w, c1 = lookup(env, user_id="u1"), lookup(env, crm_id="C1")
    assert (w["order_summary"]["orders"], w["order_summary"]["revenue"]) == (2, 57.0)
    assert (c1["order_summary"]["orders"], c1["order_summary"]["revenue"]) == (1, 100.0)
    assert [f["feedback_id"] for f in w["feedback"]] == ["F2"]
    assert [f["feedback_id"] for f in c1["feedback"]] == ["F1"]
    owners = dict(env.gk.analytical.query("SELECT order_id, canonical_id FROM orders_resolved WHERE workspace_id = ?",
                                          [ws]))
    assert owners == {"O1": c1["profile_id"], "O2": w["profile_id"], "O3": w["profile_id"]}


def _wrong_merge(env: Any) -> tuple[str, str]:
    ident(env, "m1", userId="u1", traits={"name": "A"})
    ident(env, "m3", anonymousId="dev-1", traits={"nickname": "B"})
    ident(env, "m5", userId="u1", anonymousId="dev-1")  # a wrong merge (a shared tablet)
    merged = lookup(env, user_id="u1")
    track(env, "m6", anonymousId="dev-1")  # after the merge, with the loser's id: written to the winner
    return merged["merges"][0]["merge_id"], merged["merges"][0]["loser_id"]


def _pending(env: Any) -> list[str]:
    from goldkey.store.operational import merges

    with env.gk.engine.connect() as conn:
        q = sa.select(merges.c.merge_id).where(merges.c.analytical_pending.is_not(None))
        return [r[0] for r in conn.execute(q)]


def test_an_undo_whose_analytical_step_fails_is_finished_by_the_writer(env: Any, monkeypatch: Any) -> None:
    # before: the undo committed in the operational store, the analytical step failed (a 500), and
    # nothing repaired it: the loser's events after the merge stayed with the winner for good
    from goldkey.collect import writer as writer_mod

    merge_id, loser = _wrong_merge(env)
    original = writer_mod.apply_map_ops

    def fails(con: Any, ops: Any) -> None:  # fault injection: the analytical store refuses the write
        if any(op[0] == "unmerge" for op in ops):
            raise OSError(28, "No space left on device")
        original(con, ops)

    monkeypatch.setattr(writer_mod, "apply_map_ops", fails)
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200 and r.json()["analytics_pending"] is True, r.text
    assert _pending(env) == [merge_id]
    assert lookup(env, anonymous_id="dev-1")["profile_id"] == loser  # the undo stands
    monkeypatch.setattr(writer_mod, "apply_map_ops", original)
    track(env, "m7", userId="u1")  # the writer's next commit repairs first
    assert _pending(env) == []
    assert resolved_events(env, loser) == ["m3", "m6"]
    assert {e["message_id"] for e in lookup(env, anonymous_id="dev-1")["events"]} == {"m3", "m6"}
    assert resolved_events(env, lookup(env, user_id="u1")["profile_id"]) == ["m1", "m5", "m7"]


def test_after_an_undo_the_survivor_is_last_seen_at_its_own_events(env: Any) -> None:
    # before: the survivor kept the restored profile's later activity as its own last-seen time
    ident(env, "m1", userId="u1", timestamp="2025-01-01T00:00:00Z")
    ident(env, "m3", anonymousId="dev-1", timestamp="2025-02-01T00:00:00Z")
    ident(env, "m5", userId="u1", anonymousId="dev-1", timestamp="2025-03-01T00:00:00Z")
    merged = lookup(env, user_id="u1")
    track(env, "m6", anonymousId="dev-1", timestamp="2025-06-01T00:00:00Z")  # the loser's, on the winner
    assert lookup(env, user_id="u1")["last_seen_at"].startswith("2025-06-01")
    r = env.client.post(f"/api/v1/profiles/merges/{merged['merges'][0]['merge_id']}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert lookup(env, user_id="u1")["last_seen_at"].startswith("2025-03-01")
    assert lookup(env, anonymous_id="dev-1")["last_seen_at"].startswith("2025-06-01")


def test_an_undo_cut_off_before_its_analytical_step_is_finished_at_the_next_start(tmp_path: Any) -> None:
    # a crash between the two stores' commits: the work is in the undo's own transaction
    from fastapi.testclient import TestClient

    from conftest import Env
    from goldkey.app import create_app
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings
    from goldkey.store.operational import merges

    gk = Goldkey.open(Settings(data_dir=tmp_path))
    ws = gk.workspaces.create("A")
    with TestClient(create_app(gk=gk)) as client:
        env = Env(gk, client, ws)
        merge_id, loser = _wrong_merge(env)
        r = client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
        assert r.status_code == 200 and r.json()["analytics_pending"] is False
        assert _pending(env) == [] and resolved_events(env, loser) == ["m3", "m6"]
        # put the state back to "operational side committed, analytical side not done"
        winner = lookup(env, user_id="u1")["profile_id"]
        with gk.analytical.transaction() as con:
            con.execute("UPDATE events SET profile_id = ? WHERE message_id = 'm6'", [winner])
        with gk.engine.begin() as conn:
            since = conn.execute(sa.select(merges.c.created_at).where(merges.c.merge_id == merge_id)).scalar_one()
            detail = {"loser": loser, "winner": winner, "subtree": [loser], "identities": [["anonymous_id", "dev-1"]],
                      "winner_identities": [["user_id", "u1"]], "since": str(since).replace(" ", "T")}
            conn.execute(merges.update().where(merges.c.merge_id == merge_id)
                         .values(analytical_pending=json.dumps(detail)))
        assert resolved_events(env, loser) == ["m3"]
    gk.close()
    gk = Goldkey.open(Settings(data_dir=tmp_path))
    try:
        with TestClient(create_app(gk=gk)) as client:
            env = Env(gk, client, ws)
            assert _pending(env) == [] and resolved_events(env, loser) == ["m3", "m6"]
    finally:
        gk.close()


def _import(env: Any, tmp_path: Any, kind: str, text: str) -> None:
    f = tmp_path / f"{kind}-{len(list(tmp_path.iterdir()))}.csv"
    f.write_text(text, encoding="utf-8")
    s = env.gk.importer.run(env.ws.workspace_id, kind, f, {})
    assert s.status == "done" and s.quarantined == 0, s


def test_undo_keeps_the_events_the_survivor_sent_under_its_user_id(env_any: Any) -> None:
    """After a wrong merge (a shared tablet), the signed-in customer's SDK sends userId AND the
    tablet's anonymousId: by priority those events are the customer's. Before, the undo gave them
    (a purchase among them) to the anonymous profile."""
    env = env_any
    ident(env, "m1", userId="u1", traits={"name": "A"}, timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="dev-1", traits={"nickname": "B"})
    ident(env, "m3", userId="u1", anonymousId="dev-1")  # the wrong merge
    merge_id = lookup(env, user_id="u1")["merges"][0]["merge_id"]
    track(env, "m4", "Order Completed", userId="u1", anonymousId="dev-1", properties={"revenue": 99})
    track(env, "m5", userId="u1")
    track(env, "m6", anonymousId="dev-1")  # the tablet, nobody signed in: the loser's again
    assert env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth()).status_code == 200
    a, b = lookup(env, user_id="u1"), lookup(env, anonymous_id="dev-1")
    assert resolved_events(env, a["profile_id"]) == ["m1", "m3", "m4", "m5"]
    assert resolved_events(env, b["profile_id"]) == ["m2", "m6"]


def test_undo_keeps_what_a_customer_import_made_of_the_survivor(env_any: Any, tmp_path: Any) -> None:
    """A CRM import after the merge made the survivor an existing customer first seen at its
    registration; undoing the (unrelated) merge put it back to "new", first seen on the web."""
    env = env_any
    ident(env, "w1", userId="u1", timestamp="2024-06-01T00:00:00Z")
    ident(env, "a1", anonymousId="anon-1", traits={"nickname": "x"}, timestamp="2024-07-01T00:00:00Z")
    ident(env, "m1", userId="u1", anonymousId="anon-1", timestamp="2024-08-01T00:00:00Z")
    _import(env, tmp_path, "customers", "user_id,name,registered_at\nu1,Alice,2019-03-01\n")
    p = lookup(env, user_id="u1")
    assert (p["origin"], p["first_seen_source"]) == ("existing", "import:customers")
    r = env.client.post(f"/api/v1/profiles/merges/{p['merges'][0]['merge_id']}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    after = lookup(env, user_id="u1")
    assert {k: after[k] for k in ("origin", "first_seen_at", "first_seen_source")} == {
        k: p[k] for k in ("origin", "first_seen_at", "first_seen_source")}
    back = lookup(env, anonymous_id="anon-1")
    assert (back["origin"], back["first_seen_source"]) == ("new", "tracking")


def test_the_more_recently_seen_value_wins_alike_in_one_batch_or_one_by_one(env_any: Any) -> None:
    """Before, the loser's newest identify in the merging batch did not count as "more recent"."""
    env = env_any
    names = {}
    for mode in ("single", "batch"):
        u, a = f"{mode}-u", f"{mode}-a"
        ident(env, f"{mode}-1", userId=u, traits={"name": "Alice"}, timestamp="2024-01-01T00:00:00Z")
        ident(env, f"{mode}-2", anonymousId=a, traits={"name": "Bob"}, timestamp="2025-01-01T00:00:00Z")
        track(env, f"{mode}-3", userId=u, timestamp="2025-06-01T00:00:00Z")  # the customer seen last, in June
        later = [{"type": "identify", "anonymousId": a, "messageId": f"{mode}-4", "traits": {"name": "Robert"},
                  "timestamp": "2025-07-01T00:00:00Z"},
                 {"type": "identify", "userId": u, "anonymousId": a, "messageId": f"{mode}-5",
                  "timestamp": "2025-07-01T00:00:01Z"}]
        if mode == "batch":
            assert env.post("/v1/batch", {"batch": later}).json()["accepted"] == 2
        else:
            for ev in later:
                assert env.post("/v1/batch", {"batch": [ev]}).json()["accepted"] == 1
        names[mode] = lookup(env, user_id=u)["attributes"]["name"]
    assert names == {"single": "Robert", "batch": "Robert"}


def test_custom_identifiers_are_read_like_the_built_in_ones(env_any: Any) -> None:
    """From context.traits beside the event's traits (mobile SDKs), never from a group call's traits
    (the company's card merged two strangers who visited it)."""
    env = env_any
    rules = env.client.get("/api/v1/workspace/identity-rules", headers=env.admin_auth()).json()
    rules["custom"] = [{"name": "member_card", "trait": "member_card_no", "limit": 1}]
    assert env.client.put("/api/v1/workspace/identity-rules", json=rules, headers=env.admin_auth()).status_code == 200
    ident(env, "m1", userId="u1", traits={"name": "Li"},
          context={"traits": {"member_card_no": "C-1", "phone": "13912345678"}})
    ids = {(i["type"], i["value"]) for i in lookup(env, user_id="u1")["identities"]}
    assert {("member_card", "C-1"), ("phone", "+8613912345678")} <= ids
    for i, visitor in enumerate(("visitor-7", "visitor-8")):
        r = env.post("/v1/group", {"messageId": f"g{i}", "anonymousId": visitor, "groupId": "acme",
                                   "traits": {"name": "ACME Ltd", "member_card_no": "CORP-9"}})
        assert r.status_code == 200, r.text
    v7, v8 = lookup(env, anonymous_id="visitor-7"), lookup(env, anonymous_id="visitor-8")
    assert v7["profile_id"] != v8["profile_id"]
    assert {i["type"] for i in v7["identities"]} == {"anonymous_id"}


def test_a_merge_a_later_merge_joined_through_cannot_be_undone_first(env_any: Any) -> None:
    """A+B (wrong), then C joined only through B's anonymous id: undoing A+B alone would leave C on
    A with nothing linking them. It is refused, naming the merge to undo first; in that order both go."""
    env = env_any
    ident(env, "m1", userId="u1", traits={"name": "A"}, timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", traits={"nickname": "B"}, timestamp="2024-02-01T00:00:00Z")
    ident(env, "m3", anonymousId="a2", traits={"email": "c@x.com"}, timestamp="2024-03-01T00:00:00Z")
    b_id, c_id = lookup(env, anonymous_id="a1")["profile_id"], lookup(env, anonymous_id="a2")["profile_id"]
    ident(env, "m4", userId="u1", anonymousId="a1")
    ident(env, "m5", anonymousId="a1", traits={"email": "c@x.com"})
    ms = {m["loser_id"]: m["merge_id"] for m in lookup(env, user_id="u1")["merges"]}
    r = env.client.post(f"/api/v1/profiles/merges/{ms[b_id]}/undo", headers=env.admin_auth())
    assert r.status_code == 409 and ms[c_id] in r.json()["error"], r.text
    for loser in (c_id, b_id):
        r = env.client.post(f"/api/v1/profiles/merges/{ms[loser]}/undo", headers=env.admin_auth())
        assert r.status_code == 200, r.text
    assert len({lookup(env, **q)["profile_id"] for q in ({"user_id": "u1"}, {"anonymous_id": "a1"},
                                                          {"email": "c@x.com"})}) == 3


def test_times_read_from_the_analytical_store_are_utc_whatever_the_server_zone(tmp_path: Any, monkeypatch: Any) -> None:
    """Run in Asia/Shanghai, DuckDB handed TIMESTAMPTZ values back in local time: stored on SQLite
    as if UTC after an undo (last seen 8 hours late), timelines mixed +08:00 and +00:00."""
    import time

    from goldkey.store.analytical import AnalyticalStore

    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        store = AnalyticalStore(tmp_path / "a.duckdb")
        cur = store.cursor()
        (at,) = cur.execute("SELECT TIMESTAMPTZ '2025-06-01 00:00:00+00'").fetchone()
        day = cur.execute("SELECT CAST(date_trunc('day', TIMESTAMPTZ '2025-06-01 20:00:00+00') AS VARCHAR)").fetchone()
        cur.close()
        store.close()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert at.utcoffset().total_seconds() == 0 and at.hour == 0
    assert day[0].startswith("2025-06-01 00:00:00")


def test_undo_does_not_keep_a_first_seen_time_from_an_order_that_goes_back(env_any: Any, tmp_path: Any) -> None:
    """An order imported after a wrong merge, found through the merged profile's phone, dated the
    survivor to 2017; the undo gives the order back, so the date goes too."""
    env = env_any
    ident(env, "w1", userId="u1", timestamp="2018-01-01T00:00:00Z")
    _import(env, tmp_path, "customers", "phone,name,registered_at\n13912345678,Li,2019-03-01\n")
    ident(env, "m1", userId="u1", traits={"phone": "13912345678"})  # the wrong merge
    merge_id = lookup(env, user_id="u1")["merges"][0]["merge_id"]
    _import(env, tmp_path, "orders", "order_id,phone,ordered_at,sku,line_amount\nO1,13912345678,2017-05-01,LENS,300\n")
    assert lookup(env, user_id="u1")["first_seen_source"] == "import:orders"
    assert env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth()).status_code == 200
    w, lo = lookup(env, user_id="u1"), lookup(env, phone="13912345678")
    assert (w["origin"], w["first_seen_source"]) == ("new", "tracking")
    assert w["first_seen_at"].startswith("2018-01-01") and lo["order_summary"]["orders"] == 1


def test_undo_keeps_the_first_seen_time_of_an_order_that_stays(env_any: Any, tmp_path: Any) -> None:
    """The other side: an order found through the survivor's own phone stays with it, so after the
    undo it is still the existing customer first seen at that order (the undo re-derives it from
    the records each profile holds)."""
    env = env_any
    ident(env, "w1", userId="u1", traits={"phone": "13912345678"}, timestamp="2018-01-01T00:00:00Z")
    ident(env, "a1", anonymousId="dev-1", traits={"nickname": "x"}, timestamp="2018-06-01T00:00:00Z")
    ident(env, "m1", userId="u1", anonymousId="dev-1")  # the wrong merge
    merge_id = lookup(env, user_id="u1")["merges"][0]["merge_id"]
    _import(env, tmp_path, "orders", "order_id,phone,ordered_at,sku,line_amount\nO1,13912345678,2017-05-01,LENS,300\n")
    assert env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth()).status_code == 200
    w, lo = lookup(env, user_id="u1"), lookup(env, anonymous_id="dev-1")
    assert (w["origin"], w["first_seen_source"], w["first_seen_at"][:10]) == ("existing", "import:orders", "2017-04-30")
    assert w["order_summary"]["orders"] == 1 and (lo["origin"], lo["first_seen_source"]) == ("new", "tracking")


def test_a_record_that_merges_profiles_dates_the_survivor(env_any: Any, tmp_path: Any) -> None:
    """Orders and feedback alike: the first row finds the phone's profile (2019), the second merges
    it into the e-mail's; the survivor is the customer known since 2019 (feedback marked the
    merged-away row instead)."""
    env = env_any
    files = {"orders": "order_id,email,phone,ordered_at,sku,line_amount\n"
                       "O1,,13912345678,2019-05-01,LENS,300\nO2,a@x.com,13912345678,2024-06-01,LENS,300\n",
             "feedback": "feedback_id,email,phone,kind,text,created_at\n"
                         "F1,,13912345678,complaint,broke,2019-05-01\nF2,a@x.com,13912345678,review,ok,2024-06-01\n"}
    for i, (kind, text) in enumerate(files.items()):
        ident(env, f"{kind}-1", userId=f"u{i}", traits={"email": "a@x.com" if not i else "b@x.com"},
              timestamp="2025-01-01T00:00:00Z")
        ident(env, f"{kind}-2", anonymousId=f"anon-{i}", traits={"phone": f"1391234567{8 - i}"},
              timestamp="2025-02-01T00:00:00Z")
        own = text.replace("a@x.com", "a@x.com" if not i else "b@x.com").replace("13912345678", f"1391234567{8 - i}")
        _import(env, tmp_path, kind, own)
        p = lookup(env, user_id=f"u{i}")
        assert lookup(env, anonymous_id=f"anon-{i}")["profile_id"] == p["profile_id"]
        assert (p["origin"], p["first_seen_at"][:10]) == ("existing", "2019-04-30"), (kind, p)


def test_merged_order_summaries_add_refunds_cancellations_and_currencies() -> None:
    from goldkey.identity.graph import combine_order_summaries

    a = {"orders": 2, "revenue": 120.0, "refunds": 1, "cancellations": 0, "skus": ["A"], "categories": ["lens"],
         "first_order_at": "2024-01-10T02:00:00+00:00", "last_order_at": "2024-03-01T02:00:00+00:00",
         "revenue_by_currency": {"CNY": 100.0, "USD": 20.0}}
    b = {"orders": 1, "revenue": 30.5, "refunds": 0, "cancellations": 2, "skus": ["B"], "categories": ["solution"],
         "first_order_at": "2023-12-01T02:00:00+00:00", "last_order_at": "2023-12-01T02:00:00+00:00",
         "revenue_by_currency": {"CNY": 30.5}}
    c = combine_order_summaries(a, b)
    assert (c["orders"], c["revenue"], c["refunds"], c["cancellations"]) == (3, 150.5, 1, 2)
    assert c["revenue_by_currency"] == {"CNY": 130.5, "USD": 20.0}
    assert (c["first_order_at"], c["last_order_at"]) == (b["first_order_at"], a["last_order_at"])


def test_a_consent_decision_made_while_merged_goes_back_with_its_customer(env_any: Any, tmp_path: Any) -> None:
    """Before, a restored customer's opt-out made while the merge stood was written over the
    survivor's own decision and stayed with the survivor after the undo: the customer who had
    unsubscribed could be e-mailed again, and the survivor showed a decision it never made."""
    env = env_any
    _import(env, tmp_path, "customers", "crm_id,phone,email,name,registered_at,consent_email\n"
                                        "C4,13655554444,dave@example.com,Dave,2021-05-05,是\n")
    ident(env, "u1", userId="u-100", traits={"email": "u100@example.com", "consent": {"email": True}},
          timestamp="2025-03-01T00:00:00Z")
    ident(env, "u2", userId="u-100", traits={"phone": "13655554444"}, timestamp="2025-03-05T00:00:00Z")
    dave = lookup(env, crm_id="C4")
    assert len(dave["merges"]) == 1
    ident(env, "u3", userId="u-100", traits={"consent": {"email": False}}, timestamp="2025-03-07T00:00:00Z")
    merged = lookup(env, crm_id="C4")["consents"]
    assert [(c["channel"], c["status"]) for c in merged] == [("email", "denied")]  # the latest, while merged
    with env.gk.engine.connect() as c:
        from goldkey.govern.consent import latest_decision

        assert c.execute(sa.select(latest_decision("email", "marketing", sa.literal(dave["profile_id"])))).scalar() \
            == "denied"
    _undo(env, dave["merges"][0]["merge_id"])
    u, d = lookup(env, user_id="u-100"), lookup(env, crm_id="C4")
    assert [(c["channel"], c["status"], c["source"]) for c in u["consents"]] == [("email", "denied", "identify")]
    assert [(c["channel"], c["status"], c["source"]) for c in d["consents"]] == [("email", "granted", "import")]


def test_an_imported_consent_decision_for_a_merged_away_customer_goes_back_with_them(env_any: Any,
                                                                                    tmp_path: Any) -> None:
    """Before, a customers file's opt-out for the merged-away customer (the row names their
    user_id) was written over the survivor's own decision and stayed there after the undo, as an
    identify's did until the fix above."""
    env = env_any
    _import(env, tmp_path, "customers", "crm_id,phone,email,name,registered_at,consent_email\n"
                                        "C4,13655554444,dave@example.com,Dave,2021-05-05,是\n")
    ident(env, "u1", userId="u-100", traits={"email": "u100@example.com", "consent": {"email": True}},
          timestamp="2025-03-01T00:00:00Z")
    ident(env, "u2", userId="u-100", traits={"phone": "13655554444"}, timestamp="2025-03-05T00:00:00Z")
    dave = lookup(env, crm_id="C4")
    assert len(dave["merges"]) == 1
    # the merged-away customer's opt-out (their user_id leads), and one of Dave's own (his crm_id)
    _import(env, tmp_path, "customers", "crm_id,user_id,email,consent_email,consent_sms,consent_updated_at\n"
                                        ",u-100,u100@example.com,否,,2025-03-07\n"
                                        "C4,,,,是,2025-03-08\n")
    merged = lookup(env, crm_id="C4")
    assert {c["channel"]: c["status"] for c in merged["consents"]} == {"email": "denied", "sms": "granted"}
    _undo(env, dave["merges"][0]["merge_id"])
    u, d = lookup(env, user_id="u-100"), lookup(env, crm_id="C4")
    assert [(c["channel"], c["status"], c["source"]) for c in u["consents"]] == [("email", "denied", "import")]
    assert sorted((c["channel"], c["status"]) for c in d["consents"]) == [("email", "granted"), ("sms", "granted")]


def test_after_an_undo_a_survivor_without_events_is_last_seen_as_before(env_any: Any, tmp_path: Any) -> None:
    env = env_any
    _import(env, tmp_path, "customers", "crm_id,phone,name,registered_at\nC7,13655557777,Carol,2022-06-30\n")
    before = lookup(env, crm_id="C7")["last_seen_at"]
    ident(env, "v0", userId="v-9", timestamp="2025-03-31T00:00:00Z")
    ident(env, "v1", userId="v-9", traits={"phone": "13655557777"}, timestamp="2025-04-01T00:00:00Z")
    track(env, "v2", userId="v-9", timestamp="2025-04-02T00:00:00Z")
    merged = lookup(env, crm_id="C7")
    assert merged["last_seen_at"].startswith("2025-04-02")
    _undo(env, merged["merges"][0]["merge_id"])
    assert lookup(env, crm_id="C7")["last_seen_at"] == before
    assert lookup(env, user_id="v-9")["last_seen_at"].startswith("2025-04-02")


def test_first_seen_is_the_earliest_event_and_decides_the_survivor(env_any: Any) -> None:
    """Before, a profile was first seen at the first event received: an offline-queued event
    older than it left first_seen_at after an event in its own timeline, and the wrong profile
    survived a later merge ("the one first seen earlier survives")."""
    env = env_any
    r = env.post("/v1/batch", {"batch": [
        {"type": "track", "messageId": "b1", "userId": "u1", "event": "App Opened", "timestamp": "2025-06-02T01:00:00Z",
         "context": {"page": {"url": "https://x/second"}}},
        {"type": "track", "messageId": "b2", "userId": "u1", "event": "App Installed",
         "timestamp": "2025-05-01T01:00:00Z", "context": {"page": {"url": "https://x/first"}}}]})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    p = lookup(env, user_id="u1")
    assert p["first_seen_at"].startswith("2025-05-01T01:00:00")
    assert p["first_seen_context"]["page"]["url"] == "https://x/first"
    track(env, "b3", anonymousId="dev-1", timestamp="2025-05-20T00:00:00Z")
    track(env, "b4", userId="u1", anonymousId="dev-1", timestamp="2025-06-03T00:00:00Z")
    merged = lookup(env, user_id="u1")
    assert merged["profile_id"] == p["profile_id"] and merged["first_seen_at"].startswith("2025-05-01")
    # a later, still older event moves it back again; a newer one does not
    track(env, "b5", userId="u1", timestamp="2025-04-01T00:00:00Z")
    track(env, "b6", userId="u1", timestamp="2025-07-01T00:00:00Z")
    assert lookup(env, user_id="u1")["first_seen_at"].startswith("2025-04-01")


def test_a_clock_years_ahead_locks_in_neither_consent_nor_last_seen(env_any: Any) -> None:
    env = env_any
    ident(env, "f1", userId="u1", traits={"consent": {"sms": True}}, timestamp="2030-01-01T00:00:00Z")
    ident(env, "f2", userId="u1", traits={"consent": {"sms": False}})  # the customer's opt-out, clock right
    p = lookup(env, user_id="u1")
    assert [(c["channel"], c["status"]) for c in p["consents"]] == [("sms", "denied")]
    assert p["last_seen_at"] < "2030", p["last_seen_at"]


def test_undo_keeps_a_value_set_on_the_survivor_that_equals_the_merged_profiles(env_any: Any) -> None:
    """Before: the survivor's own tag (a) won the merge; set to b afterwards (the merged profile's
    value too), the undo put it back to a without a Tag Changed event; a model's new scores went
    back to the old ones under the new version the same way."""
    from goldkey.insight.writeback import declare_scores, write_scores

    env, ws, h = env_any, env_any.ws.workspace_id, env_any.admin_auth()
    r = env.client.post("/api/v1/tags", json={"name": "tier", "kind": "manual", "value_type": "enum",
                                              "values": ["a", "b"], "category": "fixed"}, headers=h)
    assert r.status_code in (200, 201), r.text
    ident(env, "m1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1")
    r = env.client.post("/api/v1/tags/tier/values", json={"assignments": [{"user_id": "u1", "value": "a"}]},
                        headers=h)
    assert r.status_code == 200, r.text
    a1 = lookup(env, anonymous_id="a1")["profile_id"]
    r = env.client.post("/api/v1/tags/tier/values", json={"assignments": [{"profile_id": a1, "value": "b"}]},
                        headers=h)
    assert r.status_code == 200, r.text
    declare_scores(env.gk.engine, ws, {"r": "r", "v": "version"}, "rfm", 1)
    u1 = lookup(env, user_id="u1")["profile_id"]
    write_scores(env.gk, ws, ["r", "v"], {u1: {"r": 1, "v": 2}, a1: {"r": 4, "v": 2}})
    ident(env, "m3", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    assert p["tags"]["tier"] == "a" and p["scores"]["r"] == 1  # the survivor's own won
    r = env.client.post("/api/v1/tags/tier/values", json={"assignments": [{"user_id": "u1", "value": "b"}]},
                        headers=h)
    assert r.status_code == 200, r.text
    write_scores(env.gk, ws, ["r", "v"], {u1: {"r": 4, "v": 3}})  # a new model version, after the merge
    _undo(env, p["merges"][0]["merge_id"])
    w = lookup(env, user_id="u1")
    assert w["tags"]["tier"] == "b" and (w["scores"]["r"], w["scores"]["v"]) == (4, 3)
    assert lookup(env, anonymous_id="a1")["tags"]["tier"] == "b"


def test_undo_gives_back_a_group_trait_the_merged_profile_had_overwritten(env: Any) -> None:
    # group traits go to the more recently seen profile at a merge, the merged one's too: the undo
    # must give the survivor its own back (a review of this session's _less_loser change)
    ident(env, "m1", userId="u1", timestamp="2024-01-01T00:00:00Z")
    for mid, who, plan, at in (("g1", {"userId": "u1"}, "free", "2024-01-02"), ("g2", {"anonymousId": "a1"}, "pro",
                                                                                 "2024-06-01")):
        r = env.post("/v1/group", {"messageId": mid, **who, "groupId": "acme", "traits": {"plan": plan},
                                   "timestamp": f"{at}T00:00:00Z"})
        assert r.status_code == 200, r.text
    ident(env, "m3", userId="u1", anonymousId="a1", timestamp="2024-06-02T00:00:00Z")
    p = lookup(env, user_id="u1")
    _undo(env, p["merges"][0]["merge_id"])
    assert lookup(env, user_id="u1")["attributes"]["$groups"] == {"acme": {"plan": "free"}}
    assert lookup(env, anonymous_id="a1")["attributes"]["$groups"] == {"acme": {"plan": "pro"}}


def test_a_signed_in_survivors_opt_out_on_the_merged_device_stays_with_the_survivor(env_any: Any) -> None:
    # every identify a signed-in customer's SDK sends from the device that caused the merge carries
    # the survivor's userId and the merged device's anonymousId: the userId decides whose it is
    env = env_any
    ident(env, "m1", userId="u1", traits={"email": "u1@example.com", "consent": {"email": True}},
          timestamp="2024-01-01T00:00:00Z")
    ident(env, "m2", anonymousId="a1", timestamp="2024-02-01T00:00:00Z")
    ident(env, "m3", userId="u1", anonymousId="a1", timestamp="2024-02-02T00:00:00Z")
    p = lookup(env, user_id="u1")
    ident(env, "m4", userId="u1", anonymousId="a1", traits={"consent": {"email": False}},
          timestamp="2024-02-03T00:00:00Z")
    _undo(env, p["merges"][0]["merge_id"])
    assert [(c["channel"], c["status"]) for c in lookup(env, user_id="u1")["consents"]] == [("email", "denied")]
    assert lookup(env, anonymous_id="a1")["consents"] == []


def test_an_undo_and_an_import_keep_last_seen_out_of_the_future(env_any: Any, tmp_path: Any) -> None:
    env = env_any
    ident(env, "f1", userId="u1", timestamp="2030-01-01T00:00:00Z")  # a client clock years ahead
    ident(env, "f2", anonymousId="a1")
    ident(env, "f3", userId="u1", anonymousId="a1")
    p = lookup(env, user_id="u1")
    _undo(env, p["merges"][0]["merge_id"])
    assert lookup(env, user_id="u1")["last_seen_at"] < "2030"
    _import(env, tmp_path, "orders", "order_id,ordered_at,user_id,sku,quantity,unit_price\n"
                                     "F1,2099-01-01 10:00,u1,S,1,10\n")
    assert lookup(env, user_id="u1")["last_seen_at"] < "2030"


def test_after_an_undo_each_is_first_seen_at_its_own_earliest_event(env_any: Any) -> None:
    # an offline-queued older event of the merged-away customer, received while the merge stood,
    # moved the survivor's first seen back; the undo gave the event back but kept the date
    env = env_any
    ident(env, "e1", userId="u1", timestamp="2025-05-01T00:00:00Z")
    track(env, "e2", anonymousId="a1", timestamp="2025-05-10T00:00:00Z")
    ident(env, "e3", userId="u1", anonymousId="a1", timestamp="2025-05-11T00:00:00Z")
    p = lookup(env, user_id="u1")
    track(env, "e4", anonymousId="a1", timestamp="2025-04-01T00:00:00Z",
          context={"page": {"url": "https://x/a1-offline"}})
    assert lookup(env, user_id="u1")["first_seen_at"].startswith("2025-04-01")  # merged: the earliest of both
    _undo(env, p["merges"][0]["merge_id"])
    u, a = lookup(env, user_id="u1"), lookup(env, anonymous_id="a1")
    assert u["first_seen_at"].startswith("2025-05-01") and u["first_seen_context"].get("page") is None, u
    assert a["first_seen_at"].startswith("2025-04-01") and a["first_seen_context"]["page"]["url"].endswith("offline")
