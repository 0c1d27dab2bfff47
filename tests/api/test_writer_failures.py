"""Failures inside a group commit: the failing request alone is refused, the others that shared
its commit are acknowledged, and a commit that failed between the two stores is repaired."""

from __future__ import annotations

import threading
from typing import Any

from goldkey.collect import writer as writer_mod
from goldkey.collect.tracking import normalise_event, now_micros


def _ev(mid: str, **kw: Any) -> Any:
    return normalise_event({"type": "track", "event": "E", "messageId": mid, **kw}, received_at=now_micros())


def _hold(w: Any) -> threading.Event:
    """Keep the writer busy with a command until the returned event is set: the event requests
    submitted meanwhile then share one group commit."""
    release, started = threading.Event(), threading.Event()

    def hold(_: Any) -> None:
        started.set()
        release.wait(10)

    w.submit_command(hold)
    started.wait(5)
    return release


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
    release = _hold(w)
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


def test_prebuilt_event_columns_mix_with_the_writers_own(env: Any) -> None:
    """A collector's requests come with their event-log columns built (``event_table``); in one
    group commit with requests without them, duplicates dropped from either, every stored row has
    its own values and the profile its event resolved to."""
    ws, w = env.ws.workspace_id, env.gk.writer
    w.submit_events(ws, [_ev("seen", userId="a", properties={"n": 0})]).result(10)
    release = _hold(w)
    built = [_ev("b1", userId="a", properties={"n": 1}), _ev("seen", userId="a", properties={"n": 99}),
             _ev("b3", userId="b", properties={"n": 3})]
    cols = writer_mod.event_table([(ws, "tracking", e) for e in built])
    first = w.submit_events(ws, built, columns=cols)
    plain = w.submit_events(ws, [_ev("p1", userId="c", properties={"n": 4}), _ev("b3", userId="b")])
    whole = [_ev("b4", userId="c", properties={"n": 5})]
    last = w.submit_events(ws, whole, columns=writer_mod.event_table([(ws, "tracking", e) for e in whole]))
    release.set()  # the three requests share one group commit
    assert (first.result(10).accepted, first.result(10).duplicates) == (2, 1)
    assert (plain.result(10).accepted, plain.result(10).duplicates) == (1, 1)
    assert last.result(10).accepted == 1
    rows = env.gk.analytical.query(
        "SELECT e.message_id, e.user_id, json_extract(e.properties, '$.n')::INT, p.user_id FROM events e "
        "JOIN (SELECT DISTINCT profile_id, user_id FROM events WHERE message_id IN ('seen', 'p1', 'b3')) p "
        "ON p.profile_id = e.profile_id ORDER BY e.message_id")
    assert rows == [("b1", "a", 1, "a"), ("b3", "b", 3, "b"), ("b4", "c", 5, "c"), ("p1", "c", 4, "c"),
                    ("seen", "a", 0, "a")]
    try:
        w.submit_events(ws, whole, columns=cols)
    except ValueError as exc:
        assert "3 event-log rows for 1 events" in str(exc)
    else:
        raise AssertionError("columns of another length were taken")
