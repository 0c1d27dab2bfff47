"""The tracking API and the admin API refuse bad input with a clear 4xx naming the problem, never a 5xx.

Runs in-process against a real Goldkey instance (real SQLite and DuckDB files, real writer thread)
through the ``env`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest

if TYPE_CHECKING:
    from conftest import Env

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")


def _ok_event(etype: str = "track", **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"userId": "u1", "messageId": f"m-{uuid.uuid4()}"}
    if etype == "track":
        ev["event"] = "Clicked"
    if etype == "group":
        ev["groupId"] = "g1"
    if etype == "alias":
        ev["previousId"] = "anon-1"
    ev.update(extra)
    return ev


def _raw_post(env: Env, path: str, content: bytes, headers: dict[str, str] | None = None) -> Any:
    h = {"Content-Type": "application/json", **env.write_auth()}
    if headers is not None:
        h = {"Content-Type": "application/json", **headers}
    return env.client.post(path, content=content, headers=h)


def _assert_error(r: Any, status: int, field: str | None = None, *, mentions: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if field is not None:
        assert body.get("field") == field, body
        assert field in body["error"], body
    if mentions is not None:
        assert mentions.lower() in body["error"].lower(), body
    return body


def _count_events(env: Env, workspace_id: str, message_id: str | None = None) -> int:
    if message_id is None:
        rows = env.gk.analytical.query("SELECT count(*) FROM events WHERE workspace_id = ?", [workspace_id])
    else:
        rows = env.gk.analytical.query(
            "SELECT count(*) FROM events WHERE workspace_id = ? AND message_id = ?",
            [workspace_id, message_id],
        )
    return int(rows[0][0])


# -- malformed bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/track", "/v1/identify", "/v1/batch"])
@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"userId": "u1",', b"\xff\xfe\x00garbage", b'{"a": 1} trailing', b"[1, 2"],
)
def test_malformed_json_is_400_naming_the_problem(env: Env, path: str, content: bytes) -> None:
    body = _assert_error(_raw_post(env, path, content), 400, mentions="JSON")
    assert body["field"] is None


@pytest.mark.parametrize("path", ["/v1/track", "/v1/page"])
@pytest.mark.parametrize("content", [b"[]", b"42", b'"a string"', b"null", b"true"])
def test_json_that_is_not_an_object_is_400(env: Env, path: str, content: bytes) -> None:
    _assert_error(_raw_post(env, path, content), 400)


@pytest.mark.parametrize("content", [b"[]", b"{}", b'{"batch": {}}', b'{"batch": "x"}', b'{"batch": null}'])
def test_batch_without_a_list_is_400_field_batch(env: Env, content: bytes) -> None:
    _assert_error(_raw_post(env, "/v1/batch", content), 400, "batch")


# -- wrong types --------------------------------------------------------------------------------


def test_numeric_ids_are_accepted_as_their_text(env: Env) -> None:
    for i, mid in enumerate((42, 1.5)):
        r = env.post("/v1/track", _ok_event("track", userId=7 + i, messageId=mid))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    stored = env.gk.analytical.query("SELECT message_id, user_id FROM events ORDER BY message_id")
    assert [tuple(x) for x in stored] == [("1.5", "8"), ("42", "7")]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"properties": [1, 2, 3]}, "properties"),
        ({"properties": "text"}, "properties"),
        ({"traits": [1]}, "traits"),
        ({"context": "ctx"}, "context"),
        ({"context": {"traits": [1]}}, "context.traits"),
        ({"userId": {"id": 1}}, "userId"),
        ({"userId": [1]}, "userId"),
        ({"userId": True}, "userId"),
        ({"userId": "x" * 201}, "userId"),
        ({"anonymousId": {"a": 1}}, "anonymousId"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2024-13-45T99:00:00Z"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"sentAt": "not a date"}, "sentAt"),
        ({"originalTimestamp": ["2024-01-01"]}, "originalTimestamp"),
        ({"messageId": {"id": 1}}, "messageId"),
        ({"messageId": True}, "messageId"),
        ({"messageId": "m" * 201}, "messageId"),
        ({"name": 12}, "name"),
        ({"type": "identify"}, "type"),
        ({"event": 5}, "event"),
        ({"event": "   "}, "event"),
        ({"event": "e" * 201}, "event"),
    ],
)
def test_wrong_types_are_400_naming_the_field(env: Env, override: dict[str, Any], field: str) -> None:
    r = env.post("/v1/track", _ok_event("track", **override))
    _assert_error(r, 400, field)


@pytest.mark.parametrize("etype", [t for t in EVENT_TYPES if t != "alias"])
def test_missing_user_and_anonymous_id_is_400_field_userid(env: Env, etype: str) -> None:
    ev = _ok_event(etype)
    del ev["userId"]
    _assert_error(env.post(f"/v1/{etype}", ev), 400, "userId")
    _assert_error(env.post(f"/v1/{etype}", {**ev, "userId": "", "anonymousId": None}), 400, "userId")


def test_track_without_event_is_400(env: Env) -> None:
    _assert_error(env.post("/v1/track", {"userId": "u1"}), 400, "event")
    _assert_error(env.post("/v1/track", {"userId": "u1", "event": ""}), 400, "event")


def test_alias_without_previous_id_is_400(env: Env) -> None:
    _assert_error(env.post("/v1/alias", {"userId": "u1"}), 400, "previousId")
    _assert_error(env.post("/v1/alias", {"previousId": "a1"}), 400, "userId")


def test_group_without_group_id_is_400(env: Env) -> None:
    _assert_error(env.post("/v1/group", {"userId": "u1"}), 400, "groupId")


def test_unknown_type_in_batch_is_rejected_naming_type(env: Env) -> None:
    r = env.post("/v1/batch", {"batch": [{"type": "purchase", "userId": "u1"}, {"userId": "u1", "event": "x"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 0
    assert [(x["record"], x["field"]) for x in body["rejected"]] == [(0, "type"), (1, "type")]


def test_none_of_the_bad_requests_stored_anything(env: Env) -> None:
    for ev in ({"userId": {"a": 1}, "event": "x"}, {"event": "x"}, {"userId": "u1", "timestamp": "no"}):
        assert env.post("/v1/track", ev).status_code == 400
    assert _count_events(env, env.ws.workspace_id) == 0


# -- sizes --------------------------------------------------------------------------------------


def test_oversized_single_event_is_413(env: Env) -> None:
    ev = _ok_event("track", properties={"blob": "x" * (33 * 1024)})
    body = _assert_error(env.post("/v1/track", ev), 413)
    assert "32768" in body["error"] or "limit" in body["error"]
    assert _count_events(env, env.ws.workspace_id) == 0


def test_event_just_under_the_limit_is_accepted(env: Env) -> None:
    ev = _ok_event("track", properties={"blob": "x" * (30 * 1024)})
    r = env.post("/v1/track", ev)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


def test_oversized_event_inside_a_batch_is_rejected_not_the_batch(env: Env) -> None:
    big = _ok_event("track", type="track", properties={"blob": "y" * (40 * 1024)})
    small = _ok_event("track", type="track")
    r = env.post("/v1/batch", {"batch": [small, big]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert len(body["rejected"]) == 1 and body["rejected"][0]["record"] == 1
    assert _count_events(env, env.ws.workspace_id) == 1


def test_batch_over_the_limit_is_413(env: Env) -> None:
    # 4 MB (RudderStack's limit): 60 events of 10 KB, over Segment's 500 KB, are accepted
    events = [_ok_event("track", type="track", properties={"blob": "z" * 10_000}) for _ in range(60)]
    r = env.post("/v1/batch", {"batch": events})
    assert r.status_code == 200 and r.json()["accepted"] == 60, r.text
    events = [_ok_event("track", type="track", properties={"blob": "z" * 30_000}) for _ in range(140)]
    body = _assert_error(env.post("/v1/batch", {"batch": events}), 413)
    assert "limit" in body["error"]
    assert _count_events(env, env.ws.workspace_id) == 60


def _nested(levels: int) -> dict[str, Any]:
    """An object ``levels`` objects deep."""
    out: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        out = {"a": out}
    return out


def _deep_text(body: dict[str, Any], field: str, levels: int) -> str:
    """``body`` as JSON text with ``field`` an object ``levels`` deep (the encoders of the test client
    stop short of such depths)."""
    text = orjson.dumps({**body, field: "__DEEP__"}).decode()
    return text.replace('"__DEEP__"', '{"a":' * (levels - 1) + '{"leaf":1}' + "}" * (levels - 1))


def _post_nested(env: Env, path: str, body: dict[str, Any], field: str, levels: int) -> Any:
    return _raw_post(env, path, _deep_text(body, field, levels).encode())


def test_events_nested_too_deep_are_400_and_the_deepest_allowed_are_stored(env: Env) -> None:
    """The parser reads 1,024 levels, the encoder that stores an event only 254: an event nested
    deeper than 200 levels is refused at the door naming its field (never acknowledged and then a
    503 from the commit, or a 500); one of 200 levels is stored everywhere, the profile's recent
    events and groups included."""
    ws = env.ws.workspace_id
    for etype, field in (("track", "properties"), ("identify", "traits"), ("group", "traits")):
        ok = env.post(f"/v1/{etype}", _ok_event(etype, **{field: _nested(199)}))  # the event: 200 levels
        assert ok.status_code == 200 and ok.json()["accepted"] == 1, ok.text
        for levels in (201, 300, 1000):
            _assert_error(_post_nested(env, f"/v1/{etype}", _ok_event(etype), field, levels), 400, field,
                          mentions="nested deeper than 200 levels")
    _assert_error(_post_nested(env, "/v1/page", _ok_event("page"), "context", 300), 400, "context")
    assert _count_events(env, ws) == 3
    pid = env.client.get("/api/v1/profiles/lookup?user_id=u1", headers=env.admin_auth()).json()["profile_id"]
    profile = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth()).json()
    assert len(profile["events"]) == 3 and "g1" in profile["attributes"]["$groups"]
    # in a batch over 32 KB (each event then measured) and under it: the deep event is rejected and
    # quarantined, the others stored
    for pad in (0, 20):
        batch = [_ok_event("track", type="track", properties={"pad": "p" * 1000 * pad}) for _ in range(2)]
        deep = _deep_text(_ok_event("track", type="track"), "properties", 400)
        text = f'{{"batch":[{orjson.dumps(batch[0]).decode()},{deep},{orjson.dumps(batch[1]).decode()}]}}'
        r = _raw_post(env, "/v1/batch", text.encode())
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 2, r.json()
        assert [(x["record"], x["field"]) for x in r.json()["rejected"]] == [(1, "properties")]
    _assert_error(_post_nested(env, "/v1/batch", {"batch": [_ok_event("track", type="track")]}, "context", 300),
                  400, "context")
    assert _count_events(env, ws) == 7
    qr = env.client.get("/api/v1/quarantine", headers=env.admin_auth())
    assert qr.status_code == 200, qr.text
    q = [x for x in qr.json() if x["field"] == "properties"]
    assert len(q) == 2 and q[0]["raw"]["messageId"].startswith("m-")  # kept, clipped below 200 levels
    assert env.client.get("/healthz").json()["status"] == "ok"


# -- authentication and workspace isolation ----------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_no_auth_is_401(env: Env, path: str) -> None:
    body = {"batch": [_ok_event("track", type="track")]} if path == "/v1/batch" else _ok_event("track")
    r = env.client.post(path, json=body)
    _assert_error(r, 401)


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"gkw_doesnotexist:").decode(),
        "Basic " + base64.b64encode(b":").decode(),
        "Basic !!!not-base64!!!",
        "Bearer gkw_doesnotexist",
        "Digest abc",
        "Basic",
    ],
)
def test_unknown_or_malformed_write_key_is_401(env: Env, header: str) -> None:
    r = env.client.post("/v1/track", json=_ok_event("track"), headers={"Authorization": header})
    _assert_error(r, 401)
    assert _count_events(env, env.ws.workspace_id) == 0


def test_unknown_write_key_in_body_is_401(env: Env) -> None:
    r = env.client.post("/v1/batch", json={"writeKey": "gkw_nope", "batch": [_ok_event("track", type="track")]})
    _assert_error(r, 401)


def test_write_key_in_body_is_accepted_like_segment(env: Env) -> None:
    r = env.client.post("/v1/batch", json={"writeKey": env.ws.write_key, "batch": [_ok_event("track", type="track")]})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


def test_admin_token_used_as_write_key_is_401(env: Env) -> None:
    r = env.post("/v1/track", _ok_event("track"), key=env.ws.admin_token)
    _assert_error(r, 401)
    r = env.client.post("/v1/track", json=_ok_event("track"), headers=env.admin_auth())
    _assert_error(r, 401)
    assert _count_events(env, env.ws.workspace_id) == 0


@pytest.mark.parametrize("path", ["/api/v1/profiles/lookup?user_id=u1", "/api/v1/quarantine", "/api/v1/imports"])
def test_write_key_used_on_admin_api_is_401(env: Env, path: str) -> None:
    _assert_error(env.client.get(path, headers=env.admin_auth(env.ws.write_key)), 401)
    _assert_error(env.client.get(path, headers=env.write_auth()), 401)
    _assert_error(env.client.get(path), 401)
    _assert_error(env.client.get(path, headers=env.admin_auth("gka_unknown")), 401)


def test_workspaces_are_isolated(env: Env) -> None:
    b = env.gk.workspaces.create("B")
    a_ws = env.ws.workspace_id
    r = env.post("/v1/identify", {"userId": "only-in-a", "traits": {"email": "a@example.com"}})
    assert r.status_code == 200, r.text
    r = env.post("/v1/track", {"userId": "only-in-b", "event": "x"}, key=b.write_key)
    assert r.status_code == 200, r.text

    # A's write key never makes events land in B: the event is in A, not in B
    assert _count_events(env, a_ws) == 1
    assert _count_events(env, b.workspace_id) == 1
    rows = env.gk.analytical.query("SELECT workspace_id, user_id FROM events ORDER BY user_id")
    assert rows == [(a_ws, "only-in-a"), (b.workspace_id, "only-in-b")]

    # A writeKey in the body cannot redirect the event to another workspace than the header's key
    r = env.client.post(
        "/v1/batch",
        json={"writeKey": b.write_key, "batch": [{"type": "track", "userId": "sneaky", "event": "x"}]},
        headers=env.write_auth(),
    )
    assert r.status_code == 200, r.text
    assert env.gk.analytical.query("SELECT workspace_id FROM events WHERE user_id = 'sneaky'") == [(a_ws,)]

    # B's admin token cannot read A's profiles, and vice versa
    r = env.client.get("/api/v1/profiles/lookup?user_id=only-in-a", headers=env.admin_auth(b.admin_token))
    _assert_error(r, 404)
    r = env.client.get("/api/v1/profiles/lookup?email=a@example.com", headers=env.admin_auth(b.admin_token))
    _assert_error(r, 404)
    own = env.client.get("/api/v1/profiles/lookup?user_id=only-in-a", headers=env.admin_auth())
    assert own.status_code == 200, own.text
    pid = own.json()["profile_id"]
    _assert_error(env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth(b.admin_token)), 404)
    _assert_error(env.client.get("/api/v1/profiles/lookup?user_id=only-in-b", headers=env.admin_auth()), 404)
    assert (
        env.client.get("/api/v1/profiles/lookup?user_id=only-in-b", headers=env.admin_auth(b.admin_token)).status_code
        == 200
    )


# -- partial batches and the quarantine ---------------------------------------------------------


def test_batch_with_invalid_events_accepts_the_rest_and_quarantines_them(env: Env) -> None:
    good = [_ok_event("track", type="track", userId=f"good-{i}") for i in range(3)]
    bad_props = {
        "type": "track",
        "userId": "bad-1",
        "event": "x",
        "properties": [1, 2],
        "messageId": "bad-props",
    }
    no_user = {"type": "track", "event": "x", "messageId": "bad-nouser"}
    bad_ts = {"type": "page", "userId": "bad-3", "timestamp": "soon", "messageId": "bad-ts"}
    not_obj = "just a string"
    batch = [good[0], bad_props, good[1], no_user, bad_ts, not_obj, good[2]]
    r = env.post("/v1/batch", {"batch": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["accepted"] == 3
    assert body["duplicates"] == 0
    got = sorted((x["record"], x["field"]) for x in body["rejected"])
    assert got == [(1, "properties"), (3, "userId"), (4, "timestamp"), (5, None)]
    assert all(x["error"] for x in body["rejected"])
    assert _count_events(env, env.ws.workspace_id) == 3
    stored = {m for (m,) in env.gk.analytical.query("SELECT message_id FROM events")}
    assert stored == {e["messageId"] for e in good}

    q = env.client.get("/api/v1/quarantine", headers=env.admin_auth())
    assert q.status_code == 200, q.text
    rows = [x for x in q.json() if x["source"] == "tracking"]
    assert len(rows) == 4
    by_record = {x["record"]: x for x in rows}
    assert set(by_record) == {"1", "3", "4", "5"}
    assert by_record["1"]["field"] == "properties" and by_record["1"]["raw"] == bad_props
    assert by_record["3"]["field"] == "userId" and by_record["3"]["raw"] == no_user
    assert by_record["4"]["field"] == "timestamp" and by_record["4"]["raw"] == bad_ts
    assert by_record["5"]["raw"] == not_obj
    assert all(x["reason"] for x in rows)

    # another workspace's admin token sees none of it
    b = env.gk.workspaces.create("B")
    qb = env.client.get("/api/v1/quarantine", headers=env.admin_auth(b.admin_token))
    assert qb.status_code == 200 and qb.json() == []


def test_a_request_answered_503_quarantines_nothing_so_its_retry_quarantines_once(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from goldkey.core.errors import Overloaded

    def full(*_a: Any, **_k: Any) -> Any:
        raise Overloaded("ingestion queue full (injected)", retry_after=1)

    body = {"batch": [_ok_event("track", type="track", messageId="ok-1"),
                      {"type": "track", "event": "E", "messageId": "bad-1"}]}
    with monkeypatch.context() as m:
        m.setattr(env.gk.writer, "submit_events_async", full)
        for _ in range(3):
            assert env.post("/v1/batch", body).status_code == 503
    r = env.post("/v1/batch", body)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    rows = [x for x in env.client.get("/api/v1/quarantine", headers=env.admin_auth()).json()
            if x["source"] == "tracking"]
    assert [x["raw"]["messageId"] for x in rows] == ["bad-1"]


def test_batch_of_only_invalid_events_is_200_with_all_rejected(env: Env) -> None:
    r = env.post("/v1/batch", {"batch": [{"type": "track"}, 5, None]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 0
    assert [x["record"] for x in body["rejected"]] == [0, 1, 2]


def test_empty_batch_is_ok(env: Env) -> None:
    r = env.post("/v1/batch", {"batch": []})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": []}


# -- messageId de-duplication ------------------------------------------------------------------


def test_after_a_restart_the_window_still_runs_from_the_first_receipt(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids reloaded at start-up are remembered for the window from when they were received, not
    from the restart (which would stretch the window up to twice its length)."""
    from fastapi.testclient import TestClient

    import goldkey.collect.writer as writer_module
    from conftest import open_settings
    from goldkey.app import create_app
    from goldkey.collect.tracking import now_micros
    from goldkey.runtime import Goldkey

    shift = [0]
    monkeypatch.setattr(writer_module, "now_micros", lambda: now_micros() + shift[0])
    minute = 60_000_000
    gk = Goldkey.open(open_settings(tmp_path, dedupe_window_hours=1))
    ws = gk.workspaces.create("A")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{ws.write_key}:".encode()).decode()}

    def send(c: Any, mid: str) -> dict[str, Any]:
        r = c.post("/v1/track", json={"userId": "u", "event": "E", "messageId": mid}, headers=auth)
        assert r.status_code == 200, r.text
        return r.json()

    with TestClient(create_app(gk=gk)) as c:
        assert send(c, "m1")["accepted"] == 1
    gk.close()
    shift[0] = 50 * minute  # restarted 50 minutes later
    gk = Goldkey.open(open_settings(tmp_path, dedupe_window_hours=1))
    try:
        with TestClient(create_app(gk=gk)) as c:
            assert send(c, "m1")["duplicates"] == 1  # still inside the hour
            shift[0] = 62 * minute  # the hour since m1 was received is over
            assert send(c, "other")["accepted"] == 1
            assert send(c, "m1")["accepted"] == 1
    finally:
        gk.close()


def test_same_message_id_twice_is_stored_once(env: Env) -> None:
    ev = _ok_event("track")
    r1 = env.post("/v1/track", ev)
    assert r1.status_code == 200 and r1.json()["accepted"] == 1 and r1.json()["duplicates"] == 0
    r2 = env.post("/v1/track", ev)
    assert r2.status_code == 200, r2.text
    assert r2.json()["accepted"] == 0 and r2.json()["duplicates"] == 1
    # also as part of a batch, and twice inside the same batch
    r3 = env.post("/v1/batch", {"batch": [{**ev, "type": "track"}, {**ev, "type": "track"}]})
    assert r3.json()["accepted"] == 0 and r3.json()["duplicates"] == 2
    fresh = _ok_event("track", type="track")
    r4 = env.post("/v1/batch", {"batch": [fresh, fresh]})
    assert r4.json()["accepted"] == 1 and r4.json()["duplicates"] == 1
    assert _count_events(env, env.ws.workspace_id, ev["messageId"]) == 1
    assert _count_events(env, env.ws.workspace_id, fresh["messageId"]) == 1


def test_same_message_id_in_two_workspaces_is_not_a_duplicate(env: Env) -> None:
    b = env.gk.workspaces.create("B")
    ev = _ok_event("track")
    assert env.post("/v1/track", ev).json()["accepted"] == 1
    assert env.post("/v1/track", ev, key=b.write_key).json()["accepted"] == 1
    assert _count_events(env, env.ws.workspace_id, ev["messageId"]) == 1
    assert _count_events(env, b.workspace_id, ev["messageId"]) == 1


# -- timestamps --------------------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def test_clock_skew_is_corrected_with_sent_at(env: Env) -> None:
    # The client's clock is wrong: it says the event happened at T and was sent at T+1h, while the
    # server receives it now. The event happened 1h before it was sent: store now - 1h.
    client_t = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)
    ev = _ok_event("track", userId="skewed", timestamp=_iso(client_t), sentAt=_iso(client_t + timedelta(hours=1)))
    before = datetime.now(UTC)
    r = env.post("/v1/track", ev)
    after = datetime.now(UTC)
    assert r.status_code == 200, r.text

    rows = env.gk.analytical.query(
        "SELECT epoch_us(timestamp), epoch_us(original_timestamp), epoch_us(sent_at), epoch_us(received_at) "
        "FROM events WHERE message_id = ?",
        [ev["messageId"]],
    )
    assert len(rows) == 1
    ts_us, orig_us, sent_us, recv_us = rows[0]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ts = epoch + timedelta(microseconds=ts_us)
    received = epoch + timedelta(microseconds=recv_us)
    assert before - timedelta(seconds=1) <= received <= after + timedelta(seconds=1)
    assert ts == received - timedelta(hours=1)
    assert abs(ts - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(minutes=1)
    assert epoch + timedelta(microseconds=orig_us) == client_t
    assert epoch + timedelta(microseconds=sent_us) == client_t + timedelta(hours=1)

    # the profile's recent events show the corrected time too
    p = env.client.get("/api/v1/profiles/lookup?user_id=skewed", headers=env.admin_auth())
    assert p.status_code == 200, p.text
    recent = [e for e in p.json()["events"] if e["message_id"] == ev["messageId"]]
    assert len(recent) == 1
    assert abs(datetime.fromisoformat(recent[0]["ts"]) - ts) < timedelta(milliseconds=1)


def test_batch_level_sent_at_corrects_every_event(env: Env) -> None:
    client_now = datetime(2021, 6, 1, 8, 0, tzinfo=UTC)
    evs = [
        _ok_event("track", type="track", userId="b-skew", timestamp=_iso(client_now - timedelta(minutes=m)))
        for m in (5, 10)
    ]
    r = env.post("/v1/batch", {"batch": evs, "sentAt": _iso(client_now)})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    rows = env.gk.analytical.query(
        "SELECT message_id, epoch_us(received_at) - epoch_us(timestamp) FROM events WHERE user_id = 'b-skew'"
    )
    lag = {m: d for m, d in rows}
    assert lag[evs[0]["messageId"]] == 5 * 60 * 1_000_000
    assert lag[evs[1]["messageId"]] == 10 * 60 * 1_000_000


def test_timestamp_without_sent_at_is_kept(env: Env) -> None:
    t = datetime(2022, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
    ev = _ok_event("track", userId="no-sent", timestamp=_iso(t))
    assert env.post("/v1/track", ev).status_code == 200
    (ts_us,) = env.gk.analytical.query(
        "SELECT epoch_us(timestamp) FROM events WHERE message_id = ?", [ev["messageId"]]
    )[0]
    assert datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us) == t


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [
        ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59+00:00"),
        ("9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00"),
        ("9999-12-31T23:59:59-23:59", None),
        ("0001-01-01T00:00:00+23:59", None),
        ("0001-01-01T00:00:00", None),
        ("9999-12-31T23:59:59.999999", None),
    ],
)
def test_extreme_timestamps_never_500_nor_poison_other_events(env: Env, timestamp: str, sent_at: str | None) -> None:
    ev = _ok_event("track", userId="extreme", timestamp=timestamp)
    if sent_at is not None:
        ev["sentAt"] = sent_at
    r = env.post("/v1/track", ev)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["field"] in ("timestamp", "sentAt"), r.text
    # the same event inside a batch, next to a good event: the good one is always stored
    good = _ok_event("track", type="track", userId="bystander")
    r = env.post("/v1/batch", {"batch": [{**ev, "type": "track", "messageId": f"x-{uuid.uuid4()}"}, good]})
    assert r.status_code == 200, r.text
    assert _count_events(env, env.ws.workspace_id, good["messageId"]) == 1
    # the writer is still healthy
    h = env.client.get("/healthz")
    assert h.status_code == 200, h.text
    assert h.json()["last_error"] is None, h.json()


# -- never a 500 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"userId": "u1", "event": "x", "properties": {"n": 18446744073709551616}}',
        b'{"userId": "u1", "event": "x", "properties": {"n": NaN}}',
        b'{"userId": 1e400, "event": "x"}',
        b'{"userId": "u1", "event": "x", "context": {"device": {"id": {"nested": true}}}}',
        b'{"userId": "u1", "event": "x", "context": {"device": {"id": [1, 2]}}}',
        b'{"userId": "u1", "event": "x", "traits": {"email": {"a": 1}, "phone": [1]}}',
        b'{"userId": "u1", "event": "x", "traits": {"email": 12345, "phone": true}}',
        b'{"userId": "u1", "event": "x", "context": {"traits": {"email": ["x@y.z"]}}}',
        b'{"userId": "\\u0000", "event": "\\u0000"}',
        b'{"userId": "\\ud800", "event": "x"}',
        b'{"userId": 0, "event": "x"}',
        b'{"userId": -1.5, "event": "x"}',
        '{"userId": "用户", "event": "购买", "properties": {"金额": 1}}'.encode(),
    ],
)
def test_odd_but_parseable_values_never_500(env: Env, content: bytes) -> None:
    r = _raw_post(env, "/v1/track", content)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    r = _raw_post(env, "/v1/batch", b'{"batch": [' + content.replace(b"{", b'{"type": "track", ', 1) + b"]}")
    assert r.status_code in (200, 400), (r.status_code, r.text)
    h = env.client.get("/healthz")
    assert h.json()["last_error"] is None, h.json()


@pytest.mark.parametrize(
    "query",
    ["", "user_id=a&email=b", "nope=1", "phone=abc", "email=", "user_id=" + "x" * 5000, "user_id=%00"],
)
def test_bad_lookups_are_4xx(env: Env, query: str) -> None:
    r = env.client.get(f"/api/v1/profiles/lookup?{query}", headers=env.admin_auth())
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json().get("error")


def test_quarantine_query_validation_is_4xx(env: Env) -> None:
    for q in ("limit=0", "limit=100000", "offset=-1", "limit=abc"):
        r = env.client.get(f"/api/v1/quarantine?{q}", headers=env.admin_auth())
        assert 400 <= r.status_code < 500, (q, r.status_code, r.text)


# -- compressed bodies (RudderStack's SDK gzips by default, Segment's optionally) ---------------


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def test_gzip_body_is_accepted(env: Env) -> None:
    ev = _ok_event("track", type="track")
    r = _raw_post(
        env, "/v1/batch", _gz(orjson.dumps({"batch": [ev]})), {**env.write_auth(), "Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    single = _ok_event("track")
    r = _raw_post(env, "/v1/track", _gz(orjson.dumps(single)), {**env.write_auth(), "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert _count_events(env, env.ws.workspace_id) == 2


def test_gzip_bomb_is_413_by_decompressed_size(env: Env) -> None:
    # 10 MB of JSON compresses to ~10 KB: the limits apply to the decompressed body
    bomb = _gz(b'{"batch": [' + b" " * 10_000_000 + b"]}")
    assert len(bomb) < env.gk.settings.max_batch_bytes < 10_000_000
    headers = {**env.write_auth(), "Content-Encoding": "gzip"}
    _assert_error(_raw_post(env, "/v1/batch", bomb, headers), 413)
    small_bomb = _gz(b'{"userId": "u1", "event": "x", "p": "' + b"a" * 40_000 + b'"}')
    assert len(small_bomb) < 32 * 1024
    _assert_error(_raw_post(env, "/v1/track", small_bomb, headers), 413)


@pytest.mark.parametrize(
    ("content", "encoding"),
    [(b"not gzip at all", "gzip"), (b"\x1f\x8b\x08\x00garbage", "gzip"), (b'{"batch": []}', "br")],
)
def test_bad_or_unknown_content_encoding_is_400(env: Env, content: bytes, encoding: str) -> None:
    r = _raw_post(env, "/v1/batch", content, {**env.write_auth(), "Content-Encoding": encoding})
    _assert_error(r, 400)


def test_truncated_gzip_is_400(env: Env) -> None:
    whole = _gz(b'{"batch": [{"type": "track", "userId": "u1", "event": "x"}]}')
    r = _raw_post(env, "/v1/batch", whole[: len(whole) // 2], {**env.write_auth(), "Content-Encoding": "gzip"})
    _assert_error(r, 400)
    assert _count_events(env, env.ws.workspace_id) == 0


def test_gzip_body_of_several_members_is_read_whole(env: Env) -> None:
    # `cat a.gz b.gz` is one valid gzip body (RFC 1952 2.2); gzip.decompress reads it whole, so must we
    first = _ok_event("track", type="track")
    second = _ok_event("track", type="track")
    body = orjson.dumps({"batch": [first, second]})
    cut = len(body) // 2
    headers = {**env.write_auth(), "Content-Encoding": "gzip"}
    r = _raw_post(env, "/v1/batch", _gz(body[:cut]) + _gz(body[cut:]), headers)
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    assert _count_events(env, env.ws.workspace_id, first["messageId"]) == 1
    assert _count_events(env, env.ws.workspace_id, second["messageId"]) == 1


def test_gzip_body_with_trailing_garbage_is_400(env: Env) -> None:
    # before: the bytes after the gzip stream were ignored and the event acknowledged
    headers = {**env.write_auth(), "Content-Encoding": "gzip"}
    whole = _gz(orjson.dumps({"batch": [_ok_event("track", type="track")]}))
    _assert_error(_raw_post(env, "/v1/batch", whole + b"garbage", headers), 400, mentions="gzip")
    assert _count_events(env, env.ws.workspace_id) == 0


def test_gzip_members_together_over_the_limit_are_413(env: Env) -> None:
    headers = {**env.write_auth(), "Content-Encoding": "gzip"}
    half = env.gk.settings.max_batch_bytes * 3 // 5
    member = _gz(b" " * half)  # each under the batch limit, together over it
    body = member + member + _gz(orjson.dumps({"batch": [_ok_event("track", type="track")]}))
    _assert_error(_raw_post(env, "/v1/batch", body, headers), 413)


@pytest.mark.parametrize("blank", [" ", "   ", "\u3000", "\t "])
def test_blank_user_id_is_no_user_id(env: Env, blank: str) -> None:
    # a userId of spaces identified nobody: it was acknowledged, then stored with no identity at all
    ev = _ok_event("track", userId=blank)
    _assert_error(env.client.post("/v1/track", json=ev, headers=env.write_auth()), 400, "userId")
    # with an anonymousId beside it, the event is kept on the anonymous id alone
    ev = _ok_event("track", userId=blank, anonymousId="anon-blank")
    r = env.client.post("/v1/track", json=ev, headers=env.write_auth())
    assert r.status_code == 200, r.text
    rows = env.gk.analytical.query(
        "SELECT user_id, anonymous_id FROM events WHERE workspace_id = ? AND message_id = ?",
        [env.ws.workspace_id, ev["messageId"]],
    )
    assert rows == [(None, "anon-blank")]


@pytest.mark.parametrize("context", [[1, 2], "ctx", 42, True])
def test_batch_context_that_is_not_an_object_is_400(env: Env, context: Any) -> None:
    # before: a batch-level context of the wrong type was dropped without a word
    body = {"batch": [_ok_event("track", type="track")], "context": context}
    _assert_error(env.client.post("/v1/batch", json=body, headers=env.write_auth()), 400, "context")
    assert _count_events(env, env.ws.workspace_id) == 0


def test_batch_context_is_merged_under_each_event_object_by_object(env: Env) -> None:
    # before: an event's context.page replaced the batch's context.page whole, losing its title
    batch_ctx = {"library": {"name": "sdk", "version": "1"}, "page": {"url": "https://a/", "title": "Home"}}
    ev = _ok_event("track", type="track", context={"page": {"url": "https://b/"}, "locale": "zh-CN"})
    plain = _ok_event("track", type="track")
    body = {"batch": [ev, plain], "context": batch_ctx}
    r = env.client.post("/v1/batch", json=body, headers=env.write_auth())
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

    def ctx(mid: str) -> dict[str, Any]:
        rows = env.gk.analytical.query(
            "SELECT context FROM events WHERE workspace_id = ? AND message_id = ?", [env.ws.workspace_id, mid]
        )
        return orjson.loads(rows[0][0])

    got = ctx(ev["messageId"])
    assert got["page"] == {"url": "https://b/", "title": "Home"}
    assert got["library"] == {"name": "sdk", "version": "1"} and got["locale"] == "zh-CN"
    assert ctx(plain["messageId"])["page"] == batch_ctx["page"]


def test_a_rejected_event_with_a_long_field_name_is_quarantined_on_both_stores(env_any: Env) -> None:
    # before, on PostgreSQL: the field name (client-chosen, here a consent channel) overflowed the
    # quarantine's 100-character column: a 503 on every retry, so the SDK retried for ever
    env = env_any
    channel = "x" * 150
    ok = _ok_event("track", type="track")
    bad = _ok_event("identify", type="identify", traits={"consent": {channel: "maybe"}})
    for _ in range(2):  # and a retry is answered the same way (the valid event as a duplicate)
        r = env.client.post("/v1/batch", json={"batch": [ok, bad]}, headers=env.write_auth())
        assert r.status_code == 200, r.text
        assert len(r.json()["rejected"]) == 1
    rows = env.client.get("/api/v1/quarantine", headers=env.admin_auth()).json()
    items = rows["items"] if isinstance(rows, dict) else rows
    assert items and all(len(i["field"]) <= 100 for i in items)
    assert channel in items[0]["reason"]
    assert _count_events(env, env.ws.workspace_id, ok["messageId"]) == 1


@pytest.mark.parametrize("name", ["李\u3000雷", "Ana\u00a0Lima", "👩\u200d💻dev", "co\u00adop", "\u200bzw"])
def test_ids_with_unicode_spaces_joiners_and_soft_hyphens_are_accepted(env: Env, name: str) -> None:
    # before: refused as "contains control characters" (str.isprintable() is False for them)
    ev = _ok_event("track", userId=name)
    r = env.client.post("/v1/track", json=ev, headers=env.write_auth())
    assert r.status_code == 200, r.text
    rows = env.gk.analytical.query("SELECT user_id FROM events WHERE message_id = ?", [ev["messageId"]])
    assert rows == [(name,)]


@pytest.mark.parametrize("bad", ["u\x00", "a\nb", "x\u2028y", "\x1b[31m"])
def test_ids_with_control_characters_are_refused(env: Env, bad: str) -> None:
    _assert_error(env.client.post("/v1/track", json=_ok_event("track", userId=bad), headers=env.write_auth()),
                  400, "userId", mentions="control characters")


def test_numeric_ids_beyond_exact_integers_are_refused_not_collapsed(env: Env) -> None:
    # before: 2 ids 1 apart above 2^64 both became "1.2345678901234568e+29", one person
    for big in (b"123456789012345678901234567890", b"123456789012345678901234567891", b"9007199254740993.0",
                b"0.10000000000000001", b"12.5"):
        body = b'{"userId": ' + big + b', "event": "x", "messageId": "m-' + big + b'"}'
        _assert_error(_raw_post(env, "/v1/track", body, env.write_auth()), 400, "userId", mentions="as strings")
    body = b'{"userId": 9007199254740993, "event": "x", "messageId": "m-int"}'  # a 64-bit int is exact
    r = _raw_post(env, "/v1/track", body, env.write_auth())
    assert r.status_code == 200, r.text
    body = b'{"userId": 12.0, "event": "x", "messageId": "m-float"}'
    assert _raw_post(env, "/v1/track", body, env.write_auth()).status_code == 200
    rows = env.gk.analytical.query("SELECT message_id, user_id FROM events ORDER BY 1")
    assert rows == [("m-float", "12.0"), ("m-int", "9007199254740993")]  # a float id keeps the text it had


def test_page_and_screen_category_is_added_to_the_properties(env: Env) -> None:
    # the spec: "The category of the page, added to the properties object" (it was dropped)
    page = _ok_event("page", name="Pricing", category="Docs", properties={"path": "/pricing"})
    screen = _ok_event("screen", name="Cart", category="Shop")
    own = _ok_event("page", name="X", category="Top", properties={"category": "mine"})
    for path, ev in (("/v1/page", page), ("/v1/screen", screen), ("/v1/page", own)):
        assert env.client.post(path, json=ev, headers=env.write_auth()).status_code == 200
    props = {m: orjson.loads(p) for m, p in env.gk.analytical.query("SELECT message_id, properties FROM events")}
    assert props[page["messageId"]] == {"path": "/pricing", "category": "Docs"}
    assert props[screen["messageId"]] == {"category": "Shop"}
    assert props[own["messageId"]] == {"category": "mine"}  # a property of the same name wins
    _assert_error(env.client.post("/v1/page", json=_ok_event("page", category=5), headers=env.write_auth()),
                  400, "category")


def test_an_unknown_key_in_the_header_is_401_before_the_body_is_read(env: Env) -> None:
    # before: malformed JSON answered 400, a large body 413 and bad gzip 400 to an unknown key
    bad = {"Authorization": "Basic " + base64.b64encode(b"gkw_nope:").decode()}
    for body, extra in ((b"{not json", {}), (b"x" * 5_000_000, {}), (b"\x1f\x8bgarbage", {"Content-Encoding": "gzip"})):
        _assert_error(_raw_post(env, "/v1/batch", body, {**bad, **extra}), 401)
    # a key in the body (RudderStack's writeKey) is still read from the body
    ev = {"batch": [_ok_event("track", type="track")], "writeKey": env.ws.write_key}
    r = _raw_post(env, "/v1/batch", orjson.dumps(ev), {})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def test_a_body_over_the_limit_sent_in_parts_is_refused_with_its_real_size(env: Env) -> None:
    """The tracking fast path stops keeping a body's parts once it passes every limit; the 413 used
    to report the size of the part kept (4,384,768 for a 4,416,622-byte body), not the body's."""
    import asyncio

    from goldkey.api.tracking import TrackingFastPath

    part = b" " * 1_000_000
    parts = [b'{"batch": [' + part] + [part] * 4 + [b"]}"]
    total = sum(len(p) for p in parts)
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    auth = env.write_auth()["Authorization"].encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/batch", "app": env.client.app,
             "headers": [(b"authorization", auth)]}
    asyncio.run(TrackingFastPath(None)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert f"batch is {total} bytes" in orjson.loads(sent[1]["body"])["error"], sent[1]["body"]


def test_an_unknown_content_encoding_names_what_is_accepted(env: Env) -> None:
    r = _raw_post(env, "/v1/batch", b"{}", {**env.write_auth(), "Content-Encoding": "br"})
    body = _assert_error(r, 400)
    assert body["field"] == "Content-Encoding" and "deflate" in body["error"] and "x-gzip" in body["error"]


def test_a_scalar_in_a_batch_is_quarantined_and_the_quarantine_still_lists(env: Env) -> None:
    # before: the bare 7 was stored as the record's raw value and every quarantine page holding it
    # answered 500 (a write key could break the admin listing)
    r = env.post("/v1/batch", {"batch": [{**_ok_event(), "type": "track"}, 7, True, None]})
    assert r.status_code == 200 and [x["record"] for x in r.json()["rejected"]] == [1, 2, 3], r.text
    got = env.client.get("/api/v1/quarantine", headers=env.admin_auth())
    assert got.status_code == 200, got.text
    assert sorted(repr(x["raw"]) for x in got.json()[:3]) == ["7", "None", "True"]


def test_an_import_file_with_none_of_the_kinds_columns_is_400(env: Env) -> None:
    for kind in ("orders", "products", "feedback"):
        r = env.client.post("/api/v1/imports", data={"kind": kind},
                            files={"file": ("x.csv", "订单号,金额\nA1,10\n".encode(), "text/csv")},
                            headers=env.admin_auth())
        assert r.status_code == 400, (kind, r.text)
        assert "none of the file's columns ('订单号', '金额')" in r.json()["error"] and kind in r.json()["error"]


def test_a_huge_integer_in_an_admin_body_is_422_not_500(env: Env) -> None:
    r = env.client.post("/api/v1/workspace/keys", json={"kind": 36893488147419103233}, headers=env.admin_auth())
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "kind" and "36893488147419103233" in str(r.json()["details"])


def test_a_body_that_is_not_utf8_gets_the_error_body_shape(env: Env) -> None:
    r = env.client.post("/api/v1/workspace/keys", content=b"\xff", headers={**env.admin_auth(),
                                                                             "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body.get("code") == "BadRequest" and body["message"] == body["error"], body
    r = env.client.get("/api/v1/no-such-route", headers=env.admin_auth())
    assert r.status_code == 404 and r.json()["code"] == "NotFound"


def test_the_workspace_times_carry_their_zone(env: Env) -> None:
    got = env.client.get("/api/v1/workspace", headers=env.admin_auth()).json()
    assert got["created_at"].endswith("Z") or got["created_at"].endswith("+00:00"), got


def test_a_lone_surrogate_in_an_admin_body_is_400_and_nothing_is_stored(env_any: Env) -> None:
    env = env_any
    h = {**env.admin_auth(), "Content-Type": "application/json"}
    before = env.client.get("/api/v1/workspace/keys", headers=env.admin_auth()).json()
    for path, body, method in (("/api/v1/workspace/keys", b'{"kind": "write", "label": "\\udc00"}', "post"),
                               ("/api/v1/workspace/identity-rules", b'{"blocked_values": ["\\udc00"]}', "put")):
        r = getattr(env.client, method)(path, content=body, headers=h)
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"], (path, r.text)
    assert env.client.get("/api/v1/workspace/keys", headers=env.admin_auth()).json() == before
    rules = env.client.get("/api/v1/workspace/identity-rules", headers=env.admin_auth())
    assert rules.status_code == 200 and "\\udc00" not in rules.text


def test_the_schema_declares_the_answers_these_routes_give(env: Env) -> None:
    """From the review of responses against the schema: generated clients could not tell these
    answers apart (undeclared), and the lookup's identifiers were no parameters at all."""
    spec = env.client.get("/openapi.json").json()["paths"]
    h = env.admin_auth()
    for path, method, status, call in (
        ("/api/v1/profiles/lookup", "get", 400, lambda: env.client.get("/api/v1/profiles/lookup?foo=bar", headers=h)),
        ("/api/v1/workspace/keys/{key_id}", "delete", 404,
         lambda: env.client.delete("/api/v1/workspace/keys/key_nosuch", headers=h)),
        ("/api/v1/workspace/audit", "get", 400, lambda: env.client.get("/api/v1/workspace/audit?before=1", headers=h)),
        ("/api/v1/quarantine", "get", 401, lambda: env.client.get("/api/v1/quarantine")),
        ("/api/v1/insights/models/{name}/versions", "get", 400,
         lambda: env.client.get("/api/v1/insights/models/a%20b/versions", headers=h)),
    ):
        assert call().status_code == status, path
        assert str(status) in spec[path][method]["responses"], (path, status)
    names = {p["name"] for p in spec["/api/v1/profiles/lookup"]["get"]["parameters"]}
    assert {"phone", "user_id", "wechat_openid", "crm_id"} <= names
