"""Whose traits are whose (Segment spec): a ``group`` call's traits describe the group (a company's
name, e-mail, size), so they are stored under ``attributes.groups.<groupId>`` and never read as the
user's identifiers; the user's own traits may come in ``context.traits`` (mobile SDKs), and a
consent there is validated and recorded like one in ``traits``. Group memberships add up across
calls."""

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
    assert v1["attributes"]["groups"]["acme"]["email"] == "info@acme.com"
    assert "email" not in v1["attributes"]
    # the user's own context.traits on a group call still identify the user
    env.post("/v1/group", {"anonymousId": "visitor-3", "groupId": "acme", "messageId": "g4",
                           "context": {"traits": {"email": "carol@example.com", "name": "Carol"}}})
    carol = _lookup(env, email="carol@example.com")
    assert carol["attributes"]["groups"] == {"acme": True}  # not Carol's own traits as the group's


def test_group_memberships_add_up_across_calls(env: Any) -> None:
    env.post("/v1/group", {"userId": "u1", "groupId": "g1", "messageId": "a", "traits": {"plan": "pro"}})
    env.post("/v1/group", {"userId": "u1", "groupId": "g2", "messageId": "b", "traits": {"plan": "free"}})
    env.post("/v1/group", {"userId": "u1", "groupId": "g1", "messageId": "c", "traits": {"plan": "team"}})
    assert _lookup(env, user_id="u1")["attributes"]["groups"] == {"g1": {"plan": "team"}, "g2": {"plan": "free"}}


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
