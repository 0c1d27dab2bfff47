"""The API behind the console's channels and settings page: keys listed and revoked (a revoked write
key refused at once by the tracking API), channels edited with write-only credentials, and the
channel catalogue the form is drawn from."""

from __future__ import annotations

from typing import Any

import pytest

from goldkey.core.errors import Conflict
from goldkey.govern.keys import revoke_key


def _track(env: Any, key: str) -> int:
    body = {"userId": "u1", "event": "Signed Up", "messageId": f"m-{key[-6:]}"}
    return env.client.post("/v1/track", json=body, headers=env.write_auth(key)).status_code


def test_keys_are_listed_without_secrets_and_revoked_at_once(env: Any) -> None:
    c, auth = env.client, env.admin_auth()
    first = c.get("/api/v1/workspace/keys", headers=auth)
    assert first.status_code == 200
    keys = first.json()
    assert sorted(k["kind"] for k in keys) == ["admin", "write"]
    assert all(k["revoked_at"] is None and "hash" not in str(k) for k in keys)
    assert {k["prefix"] for k in keys} == {env.ws.write_key[:8], env.ws.admin_token[:8]}

    made = c.post("/api/v1/workspace/keys", json={"kind": "write", "label": "web shop"}, headers=auth).json()
    secret = made["secret"]
    listed = c.get("/api/v1/workspace/keys", headers=auth).json()
    new = next(k for k in listed if k["label"] == "web shop")
    assert new["prefix"] == secret[:8] and new["kind"] == "write" and secret not in str(listed)
    assert _track(env, secret) == 200  # the key works (and is now in the authentication cache)

    gone = c.delete(f"/api/v1/workspace/keys/{new['key_id']}", headers=auth)
    assert gone.status_code == 200 and gone.json()["revoked_at"] is not None
    assert _track(env, secret) == 401  # refused from the next request, not after the cache expires
    assert _track(env, env.ws.write_key) == 200  # the other key is untouched
    again = c.delete(f"/api/v1/workspace/keys/{new['key_id']}", headers=auth)
    assert again.status_code == 200 and again.json()["revoked_at"] == gone.json()["revoked_at"]
    live = c.get("/api/v1/workspace/keys", params={"include_revoked": "false"}, headers=auth).json()
    assert new["key_id"] not in {k["key_id"] for k in live}


def test_admin_tokens_cannot_lock_the_workspace_out(env: Any) -> None:
    c, auth = env.client, env.admin_auth()
    mine = next(k for k in c.get("/api/v1/workspace/keys", headers=auth).json() if k["kind"] == "admin")
    refused = c.delete(f"/api/v1/workspace/keys/{mine['key_id']}", headers=auth)
    assert refused.status_code == 409 and "signed in with" in refused.json()["error"]

    second = c.post("/api/v1/workspace/keys", json={"kind": "admin", "label": "second"}, headers=auth).json()
    ok = c.delete(f"/api/v1/workspace/keys/{mine['key_id']}", headers=env.admin_auth(second["secret"]))
    assert ok.status_code == 200
    assert c.get("/api/v1/workspace", headers=auth).status_code == 401  # the revoked token, at once

    keys = c.get("/api/v1/workspace/keys", headers=env.admin_auth(second["secret"])).json()
    last = next(k for k in keys if k["kind"] == "admin" and k["revoked_at"] is None)
    with pytest.raises(Conflict, match="last admin token"):
        revoke_key(env.gk.workspaces, env.ws.workspace_id, last["key_id"], by_key_id=None)


def test_keys_of_another_workspace_are_not_found(env: Any) -> None:
    other = env.gk.workspaces.create("Other Brand")
    theirs = env.client.get("/api/v1/workspace/keys", headers=env.admin_auth(other.admin_token)).json()
    r = env.client.delete(f"/api/v1/workspace/keys/{theirs[0]['key_id']}", headers=env.admin_auth())
    assert r.status_code == 404
    assert _track(env, other.write_key) == 200


def test_a_channel_is_edited_and_its_credentials_stay_write_only(env: Any) -> None:
    c, auth = env.client, env.admin_auth()
    body: dict[str, Any] = {"name": "Mail", "kind": "email", "config": {"host": "smtp.example.com",
                            "from_address": "news@example.com"},
                            "secrets": {"username": "u", "password": "old-Secret-17"}}
    made = c.post("/api/v1/channels", json=body, headers=auth)
    assert made.status_code == 201, made.text
    ch = made.json()
    assert ch["secrets_set"] == ["password", "username"] and "old-Secret-17" not in made.text

    # a new port and name, no secrets sent: the stored ones are kept
    edit = {**body, "name": "Newsletter", "config": {**body["config"], "port": 465, "security": "ssl"}, "secrets": {}}
    r = c.put(f"/api/v1/channels/{ch['channel_id']}", json=edit, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Newsletter" and r.json()["config"]["port"] == 465
    assert r.json()["secrets_set"] == ["password", "username"]
    stored = env.gk.sender.channels.keys.decrypt(
        env.gk.sender.channels._row(env.ws.workspace_id, ch["channel_id"]).secrets)
    assert stored == {"username": "u", "password": "old-Secret-17"}

    # a replaced password is stored, still never returned
    # (secrets in this test are values no random id can contain: "p1" and "p2"
    # once each appeared inside a channel id)
    r = c.put(f"/api/v1/channels/{ch['channel_id']}", json={**edit, "secrets": {"password": "new-Secret-42"}},
              headers=auth)
    assert r.status_code == 200 and "new-Secret-42" not in r.text
    stored = env.gk.sender.channels.keys.decrypt(
        env.gk.sender.channels._row(env.ws.workspace_id, ch["channel_id"]).secrets)
    assert stored == {"username": "u", "password": "new-Secret-42"}

    bad = c.put(f"/api/v1/channels/{ch['channel_id']}", json={**edit, "config": {"host": "h"}}, headers=auth)
    assert bad.status_code == 400 and bad.json()["field"] == "config.from_address"
    other = env.gk.workspaces.create("Other Brand")
    assert c.put(f"/api/v1/channels/{ch['channel_id']}", json=edit,
                 headers=env.admin_auth(other.admin_token)).status_code == 404


def test_channel_kinds_describe_each_form(env: Any) -> None:
    r = env.client.get("/api/v1/console/channel-kinds", headers=env.admin_auth())
    assert r.status_code == 200
    kinds = {(k["kind"], k["provider"]): k for k in r.json()}
    email = kinds[("email", "")]
    assert email["optional_secret_fields"] == ["username", "password"] and email["consent_channel"] == "email"
    assert set(email["config_schema"]["required"]) == {"host", "from_address"}
    assert kinds[("sms", "twilio")]["secret_fields"] == ["auth_token"]
    assert "simulates" in kinds[("sink", "")]["config_schema"]["properties"]
    assert env.client.get("/api/v1/console/channel-kinds").status_code == 401
