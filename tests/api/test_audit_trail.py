"""The audit trail of configuration changes: keys, channels, send policy and identity rules are
audited by the names of the fields that changed (never a secret's value), and read back through
``GET /api/v1/workspace/audit``, newest first, a page at a time, by the workspace's own admins only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from goldkey.govern.audit import changed_fields, list_entries
from goldkey.store.operational import audit_log

MAIL: dict[str, Any] = {"name": "Mail", "kind": "email",
                        "config": {"host": "smtp.example.com", "from_address": "news@example.com"},
                        "secrets": {"username": "mailer", "password": "s3cret-Pa55"}}


def _audit(env: Any, token: str | None = None, **params: Any) -> dict[str, Any]:
    r = env.client.get("/api/v1/workspace/audit", params=params, headers=env.admin_auth(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _raw_details(env: Any) -> str:
    with env.gk.engine.connect() as c:
        return "\n".join(c.execute(sa.select(audit_log.c.detail)).scalars())


def test_channel_changes_are_audited_by_field_name_without_secrets(env: Any) -> None:
    c, auth = env.client, env.admin_auth()
    made = c.post("/api/v1/channels", json=MAIL, headers=auth)
    assert made.status_code == 201, made.text
    cid = made.json()["channel_id"]
    edit = {**MAIL, "config": {**MAIL["config"], "port": 465, "security": "ssl"},
            "secrets": {"password": "n3w-Pa55word"}}
    assert c.put(f"/api/v1/channels/{cid}", json=edit, headers=auth).status_code == 200

    items = _audit(env)["items"]
    update, create = items[0], items[1]
    assert (update["action"], update["target"]) == ("channel.update", cid)
    assert update["detail"] == {"name": "Mail", "changed": ["config.port", "config.security", "secrets.password"]}
    assert update["actor"] == f"key:{env.gk.workspaces.authenticate(env.ws.admin_token, 'admin').key_id}"
    assert (create["action"], create["target"]) == ("channel.create", cid)
    assert create["detail"]["changed"] == ["config", "kind", "name", "provider", "secrets.password",
                                           "secrets.username"]
    raw = _raw_details(env)
    assert "s3cret-Pa55" not in raw and "n3w-Pa55word" not in raw and "mailer" not in raw

    # a refused update (another workspace's channel) is not audited
    other = env.gk.workspaces.create("Other Brand")
    assert c.put(f"/api/v1/channels/{cid}", json=edit, headers=env.admin_auth(other.admin_token)).status_code == 404
    assert len(_audit(env)["items"]) == len(items)


def test_policy_rules_and_keys_are_audited_without_values(env: Any) -> None:
    c, auth = env.client, env.admin_auth()
    policy = c.get("/api/v1/send-policy", headers=auth).json()
    policy["caps"]["sms"] = {"day": 1, "week": 2}
    assert c.put("/api/v1/send-policy", json=policy, headers=auth).status_code == 200
    rules = c.get("/api/v1/workspace/identity-rules", headers=auth).json()
    rules["blocked_by_type"]["phone"].append("+8613912345678")
    assert c.put("/api/v1/workspace/identity-rules", json=rules, headers=auth).status_code == 200
    secret = c.post("/api/v1/workspace/keys", json={"kind": "write", "label": "shop"}, headers=auth).json()["secret"]
    key_id = next(k["key_id"] for k in c.get("/api/v1/workspace/keys", headers=auth).json() if k["label"] == "shop")
    assert c.delete(f"/api/v1/workspace/keys/{key_id}", headers=auth).status_code == 200

    got = {e["action"]: e for e in _audit(env)["items"]}
    assert got["send_policy.update"]["detail"] == {"changed": ["caps.sms"]}
    assert got["identity_rules.update"]["detail"] == {"changed": ["blocked_by_type.phone"]}
    assert got["key.create"]["detail"] == {"label": "shop"}
    assert got["key.revoke"]["target"] == key_id
    raw = _raw_details(env)
    assert "+8613912345678" not in raw and secret not in raw and secret[:8] not in raw


def test_another_workspace_cannot_read_the_trail(env: Any) -> None:
    c = env.client
    assert c.post("/api/v1/channels", json=MAIL, headers=env.admin_auth()).status_code == 201
    mine = _audit(env)["items"]
    assert [e["action"] for e in mine] == ["channel.create"]

    other = env.gk.workspaces.create("Other Brand")
    assert _audit(env, other.admin_token) == {"items": [], "next_before": None}
    # nor page into it with one of its ids
    r = c.get("/api/v1/workspace/audit", params={"before": mine[0]["audit_id"]},
              headers=env.admin_auth(other.admin_token))
    assert r.status_code == 400 and r.json()["field"] == "before"
    assert c.get("/api/v1/workspace/audit").status_code == 401
    assert c.get("/api/v1/workspace/audit", params={"limit": 0}, headers=env.admin_auth()).status_code in (400, 422)


def test_pages_are_newest_first_and_complete_when_times_tie(env_any: Any) -> None:
    env = env_any
    ws = env.ws.workspace_id
    same = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = datetime(2025, 1, 3, tzinfo=UTC)
    rows = [{"workspace_id": ws, "actor": "key:k", "action": "test.tie", "target": f"t{i}", "detail": "{}",
             "at": same} for i in range(5)]
    rows.append({"workspace_id": ws, "actor": "key:k", "action": "test.later", "target": "last", "detail": "{}",
                 "at": later})
    rows.append({"workspace_id": "ws_other", "actor": "key:x", "action": "test.other", "target": "x",
                 "detail": "{}", "at": later})
    with env.gk.engine.begin() as conn:
        conn.execute(audit_log.insert(), rows)

    seen: list[dict[str, Any]] = []
    before = None
    while True:
        page = list_entries(env.gk.engine, ws, limit=2, before=before)
        seen += page["items"]
        before = page["next_before"]
        if before is None:
            break
    assert [e["target"] for e in seen] == ["last", "t4", "t3", "t2", "t1", "t0"]
    assert seen[0]["at"] == "2025-01-03T00:00:00Z"
    # the same pages through the API
    first = _audit(env, limit=4)
    assert [e["target"] for e in first["items"]] == ["last", "t4", "t3", "t2"]
    rest = _audit(env, limit=4, before=first["next_before"])
    assert [e["target"] for e in rest["items"]] == ["t1", "t0"] and rest["next_before"] is None


def test_changed_fields_names_nested_keys_and_compares_lists_whole() -> None:
    before = {"a": 1, "config": {"port": 25, "host": "h"}, "tags": [1, 2], "gone": True}
    after = {"a": 1, "config": {"port": 465, "host": "h", "tls": True}, "tags": [2, 1], "new": None}
    assert changed_fields(before, after) == ["config.port", "config.tls", "gone", "new", "tags"]
    assert changed_fields({}, {}) == []
