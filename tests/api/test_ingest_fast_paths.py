"""The tracking hot path's shortcuts keep the answers they replace: remembered write keys are still
checked against the store once their cache entry expires, profile updates written through the DBAPI
match what the events say, and the writer's gathering window never holds back an acknowledgement."""

from __future__ import annotations

import base64
import platform
from concurrent.futures import Future
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from goldkey.collect.tracking import normalise_event, now_micros
from goldkey.govern import workspaces as workspaces_module
from goldkey.ops.tuning import tune_malloc
from goldkey.store.operational import api_keys, profiles


def _revoke(env: Any, secret: str) -> None:
    with env.gk.engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.key_hash == workspaces_module.hash_secret(secret))
            .values(revoked_at=sa.func.current_timestamp())
        )


def test_a_revoked_write_key_is_refused_once_its_cache_entry_expires(env: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(workspaces_module, "KEY_CACHE_SECONDS", 0.0)  # every entry is already stale
    body = {"userId": "u1", "event": "Viewed", "messageId": "k1"}
    assert env.post("/v1/track", body).status_code == 200
    assert env.post("/v1/track", {**body, "messageId": "k2"}).status_code == 200  # remembered header
    _revoke(env, env.ws.write_key)
    r = env.post("/v1/track", {**body, "messageId": "k3"})
    assert r.status_code == 401 and "revoked" in r.json()["error"]


def test_a_live_key_stays_accepted_from_the_cache(env: Any) -> None:
    body = {"userId": "u1", "event": "Viewed"}
    for i in range(3):
        r = env.post("/v1/track", {**body, "messageId": f"c{i}"})
        assert r.status_code == 200 and r.json()["accepted"] == 1


def test_an_admin_token_sent_as_write_key_is_refused_every_time(env: Any) -> None:
    auth = "Basic " + base64.b64encode((env.ws.admin_token + ":").encode()).decode()
    for i in range(2):
        r = env.client.post(
            "/v1/track",
            content=orjson.dumps({"userId": "u1", "event": "E", "messageId": f"a{i}"}),
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )
        assert r.status_code == 401 and "not a write key" in r.json()["error"]


def test_profile_rows_follow_the_events_of_one_group_commit(env_any: Any) -> None:
    """Attributes from identify, the newest events first in the recent list, and a last-seen time that
    a late (older) event never moves back, on SQLite and PostgreSQL."""
    env = env_any
    ws = env.ws.workspace_id
    received = now_micros()

    def ev(mid: str, etype: str, ts: str, **kw: Any) -> Any:
        return normalise_event(
            {"type": etype, "userId": "u-prof", "messageId": mid, "timestamp": ts, **kw},
            received_at=received,
        )

    first = [
        ev("p1", "identify", "2025-06-01T10:00:00Z", traits={"email": "A@Example.com", "city": "广州"}),
        ev("p2", "track", "2025-06-02T10:00:00Z", event="Viewed", properties={"sku": "L-1"}),
    ]
    assert env.gk.writer.submit_events(ws, first).result(30).accepted == 2
    late = [ev("p3", "track", "2025-05-01T10:00:00Z", event="Old")]
    assert env.gk.writer.submit_events(ws, late).result(30).accepted == 1
    with env.gk.engine.connect() as conn:
        row = conn.execute(
            sa.select(profiles.c.attributes, profiles.c.recent_events, profiles.c.last_seen_at).where(
                profiles.c.workspace_id == ws, profiles.c.canonical_id == profiles.c.profile_id
            )
        ).one()
    attrs = orjson.loads(row.attributes)
    assert attrs["city"] == "广州" and attrs["email"] == "a@example.com"
    assert [e["message_id"] for e in orjson.loads(row.recent_events)] == ["p2", "p1", "p3"]
    assert row.last_seen_at.strftime("%Y-%m-%d") == "2025-06-02"


def test_a_lone_request_is_acknowledged_without_other_traffic(env: Any) -> None:
    """The writer is woken for the first request of an idle period (later ones it gathers itself)."""
    ws = env.ws.workspace_id
    for i in range(3):
        e = normalise_event(
            {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"l{i}"}, received_at=now_micros()
        )
        fut: Future[Any] = env.gk.writer.submit_events(ws, [e])
        assert fut.result(30).accepted == 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_malloc_applies_on_glibc() -> None:
    assert tune_malloc() is True
