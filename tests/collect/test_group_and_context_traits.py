"""Whose traits are whose (Segment spec): a ``group`` call's traits describe the group (a company's
name, e-mail, size), so they are stored under ``attributes.$groups.<groupId>`` and never read as the
user's identifiers; the user's own traits may come in ``context.traits`` (mobile SDKs), and a
consent there is validated and recorded like one in ``traits``. Group memberships add up across
calls, trait by trait, and across merged profiles; an identify trait named ``groups`` is the
user's own."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from goldkey.store.operational import consents


def _lookup(env: Any, **q: str) -> dict[str, Any]:
    r = env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_group_traits_are_the_groups_not_the_users_identifiers(env: Any) -> None:
    for i, anon in enumerate(("visitor-1", "visitor-2")):
        r = env.post("/v1/group", {"anonymousId": anon, "groupId": "acme", "messageId": f"g{i}",
                                   "traits": {"name": "Acme", "email": "info@acme.com", "phone": "+8613800138000"}})
        assert r.status_code == 200, r.text
    assert env.post("/v1/identify", {"userId": "dave", "messageId": "i1",
                                     "traits": {"email": "dave@acme.com"}}).status_code == 200
    env.post("/v1/group", {"userId": "dave", "groupId": "acme", "messageId": "g3",
                           "traits": {"email": "info@acme.com"}})
    v1, v2, dave = (_lookup(env, **q) for q in ({"anonymous_id": "visitor-1"}, {"anonymous_id": "visitor-2"},
                                                 {"user_id": "dave"}))
    assert len({v1["profile_id"], v2["profile_id"], dave["profile_id"]}) == 3  # three people, not one
    r = env.client.get("/api/v1/profiles/lookup", params={"email": "info@acme.com"}, headers=env.admin_auth())
    assert r.status_code == 404
    assert v1["attributes"]["$groups"]["acme"]["email"] == "info@acme.com"
    assert "email" not in v1["attributes"]
    # the user's own context.traits on a group call still identify the user
    env.post("/v1/group", {"anonymousId": "visitor-3", "groupId": "acme", "messageId": "g4",
                           "context": {"traits": {"email": "carol@example.com", "name": "Carol"}}})
    carol = _lookup(env, email="carol@example.com")
    assert carol["attributes"]["$groups"] == {"acme": True}  # not Carol's own traits as the group's


def test_group_memberships_add_up_across_calls(env: Any) -> None:
    env.post("/v1/group", {"userId": "u1", "groupId": "g1", "messageId": "a", "traits": {"plan": "pro"}})
    env.post("/v1/group", {"userId": "u1", "groupId": "g2", "messageId": "b", "traits": {"plan": "free"}})
    env.post("/v1/group", {"userId": "u1", "groupId": "g1", "messageId": "c", "traits": {"plan": "team"}})
    assert _lookup(env, user_id="u1")["attributes"]["$groups"] == {"g1": {"plan": "team"}, "g2": {"plan": "free"}}


def test_a_group_call_keeps_the_group_traits_it_does_not_send(env: Any) -> None:
    """The spec: a trait not sent keeps its value. Before, each call replaced the group's traits
    whole, and a call without traits (what both Python SDKs send by default) set the entry to true."""
    env.post("/v1/group", {"userId": "u1", "groupId": "acme", "messageId": "a",
                           "traits": {"name": "Acme", "plan": "enterprise", "employees": 40}})
    env.post("/v1/group", {"userId": "u1", "groupId": "acme", "messageId": "b", "traits": {"employees": 41}})
    env.post("/v1/group", {"userId": "u1", "groupId": "acme", "messageId": "c", "traits": {}})
    env.post("/v1/group", {"userId": "u1", "groupId": "acme", "messageId": "d"})
    # and in one batch, calls of one commit on top of the stored entry
    r = env.post("/v1/batch", {"batch": [
        {"type": "group", "userId": "u1", "groupId": "acme", "messageId": "e", "traits": {"plan": "team"}},
        {"type": "group", "userId": "u1", "groupId": "acme", "messageId": "f"},
        {"type": "group", "userId": "u1", "groupId": "beta", "messageId": "g"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    assert _lookup(env, user_id="u1")["attributes"]["$groups"] == {
        "acme": {"name": "Acme", "plan": "team", "employees": 41}, "beta": True}


def test_an_identify_trait_named_groups_is_the_users_own(env: Any) -> None:
    """Before, a user's own ``groups`` trait and the memberships shared one key: a group call after
    an identify with a list there failed the whole commit (503 on every retry, the batch lost)."""
    r = env.post("/v1/batch", {"batch": [
        {"type": "identify", "userId": "u5", "messageId": "i", "traits": {"groups": ["admins", "beta"]}},
        {"type": "group", "userId": "u5", "groupId": "acme", "messageId": "g", "traits": {"name": "Acme"}}]})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    env.post("/v1/identify", {"userId": "u5", "messageId": "i2", "traits": {"groups": ["admins"]}})
    attrs = _lookup(env, user_id="u5")["attributes"]
    assert attrs["groups"] == ["admins"] and attrs["$groups"] == {"acme": {"name": "Acme"}}
    r = env.post("/v1/identify", {"userId": "u5", "messageId": "i3", "traits": {"$groups": {}}})
    assert r.status_code == 400 and r.json()["field"] == "traits.$groups", r.text


def test_merged_profiles_keep_every_membership_and_an_undo_gives_them_back(env: Any) -> None:
    env.post("/v1/group", {"anonymousId": "dev-9", "groupId": "g1", "messageId": "a", "traits": {"name": "One"}})
    env.post("/v1/group", {"userId": "u9", "groupId": "g2", "messageId": "b", "traits": {"name": "Two"}})
    env.post("/v1/group", {"userId": "u9", "groupId": "g1", "messageId": "c", "traits": {"plan": "pro"}})
    env.post("/v1/identify", {"userId": "u9", "anonymousId": "dev-9", "messageId": "m"})  # the merge
    merged = _lookup(env, user_id="u9")
    assert merged["attributes"]["$groups"] == {"g1": {"name": "One", "plan": "pro"}, "g2": {"name": "Two"}}
    merge_id = merged["merges"][0]["merge_id"]
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    survivor, back = _lookup(env, user_id="u9"), _lookup(env, anonymous_id="dev-9")
    own = {"u9": {"g1": {"plan": "pro"}, "g2": {"name": "Two"}}, "dev-9": {"g1": {"name": "One"}}}
    winner_key = "u9" if survivor["profile_id"] == merged["profile_id"] else "dev-9"
    loser_key = "dev-9" if winner_key == "u9" else "u9"
    by_key = {"u9": survivor, "dev-9": back}
    assert by_key[winner_key]["attributes"]["$groups"] == own[winner_key]
    assert by_key[loser_key]["attributes"]["$groups"] == own[loser_key]


def test_consent_in_context_traits_is_validated_and_recorded(env: Any) -> None:
    r = env.post("/v1/identify", {"userId": "u2", "messageId": "c1",
                                  "context": {"traits": {"consent": {"sms": "maybe"}}}})
    assert r.status_code == 400 and r.json()["field"] == "context.traits.consent.sms", r.text
    r = env.post("/v1/batch", {"batch": [{"type": "identify", "userId": "u2", "messageId": "c2",
                                          "context": {"traits": {"consent": {"sms": "maybe"}}}}]})
    assert r.json()["accepted"] == 0 and r.json()["rejected"][0]["field"] == "context.traits.consent.sms"
    r = env.post("/v1/identify", {"userId": "u2", "messageId": "c3",
                                  "context": {"traits": {"consent": {"sms": False}}}})
    assert r.status_code == 200, r.text
    pid = _lookup(env, user_id="u2")["profile_id"]
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(consents.c.channel, consents.c.status).where(consents.c.profile_id == pid)).all()
    assert [tuple(r) for r in rows] == [("sms", "denied")]
