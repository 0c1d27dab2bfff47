"""Failures inside a group commit: the failing request alone is refused, the others that shared
its commit are acknowledged, and a commit that failed between the two stores is repaired."""

from __future__ import annotations

import threading
from typing import Any

from goldkey.collect import writer as writer_mod
from goldkey.collect.tracking import normalise_event, now_micros


def _ev(mid: str, **kw: Any) -> Any:
    return normalise_event({"type": "track", "event": "E", "messageId": mid, **kw}, received_at=now_micros())


def test_control_characters_in_ids_are_a_clear_400(env: Any) -> None:
    r = env.post("/v1/track", {"userId": "a\u0000b", "event": "E", "messageId": "m1"})
    assert r.status_code == 400 and r.json()["field"] == "userId"


def test_one_failing_request_does_not_fail_its_neighbours(env: Any, monkeypatch: Any) -> None:
    w = env.gk.writer
    original = w.write_events

    def failing(batch: list[Any]) -> Any:  # fault injection: any commit holding "poison" fails
        if any(e.message_id == "poison" for item in batch for e in item.events):
            raise RuntimeError("injected failure")
        return original(batch)

    monkeypatch.setattr(w, "write_events", failing)
    release, started = threading.Event(), threading.Event()

    def hold(_: Any) -> None:
        started.set()
        release.wait(10)

    w.submit_command(hold)
    started.wait(5)
    good = w.submit_events(env.ws.workspace_id, [_ev("ok-1", userId="u1")])
    bad = w.submit_events(env.ws.workspace_id, [_ev("poison", userId="u2")])
    good2 = w.submit_events(env.ws.workspace_id, [_ev("ok-2", userId="u3")])
    release.set()  # all three now share one group commit
    assert good.result(10).accepted == 1 and good2.result(10).accepted == 1
    assert isinstance(bad.exception(10), RuntimeError)
    stored = {r[0] for r in env.gk.analytical.query("SELECT message_id FROM events")}
    assert stored == {"ok-1", "ok-2"}


def test_profile_map_repaired_after_a_half_done_commit(env: Any, monkeypatch: Any) -> None:
    env.post("/v1/identify", {"userId": "u1", "messageId": "m1"})
    env.post("/v1/track", {"anonymousId": "a1", "event": "E", "messageId": "m2"})
    calls = {"n": 0}
    original = writer_mod.apply_map_ops

    def fail_once(con: Any, ops: Any) -> None:  # the analytical commit fails after the operational one
        calls["n"] += 1
        if ops and calls["n"] == 1:
            raise RuntimeError("injected analytical failure")
        original(con, ops)

    monkeypatch.setattr(writer_mod, "apply_map_ops", fail_once)
    r = env.post("/v1/identify", {"userId": "u1", "anonymousId": "a1", "messageId": "m3"})
    assert r.status_code == 503  # not acknowledged
    r = env.post("/v1/identify", {"userId": "u1", "anonymousId": "a1", "messageId": "m3"})
    assert r.status_code == 200 and r.json()["accepted"] == 1  # the SDK's retry lands
    p = env.client.get("/api/v1/profiles/lookup", params={"user_id": "u1"}, headers=env.admin_auth()).json()
    rows = env.gk.analytical.query(
        "SELECT message_id FROM events_resolved WHERE canonical_id = ? ORDER BY message_id", [p["profile_id"]]
    )
    assert [r[0] for r in rows] == ["m1", "m2", "m3"]
