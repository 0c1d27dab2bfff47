"""The official Segment and RudderStack Python SDKs send to a real ``goldkey serve``, changing only the host.

Each test starts its own server process on a fresh data directory, drives one SDK through every call
of the spec (identify, track, page, screen, group, alias) plus enough track calls to force several
batches, flushes, and checks that every message the SDK produced is stored exactly once (counted in
DuckDB after a graceful stop), that the SDK reported no error, that identify traits became profile
attributes and identities, and that alias joined the anonymous and the known visitor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from served import Server, served

N_TRACK = 250


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A served instance; indirectly parametrised with a number of collector processes."""
    yield from served(tmp_path, "SDK Brand", getattr(request, "param", 0))


def _stored(srv: Server) -> list[tuple[str, str, str | None, str | None]]:
    con = duckdb.connect(str(srv.data_dir / "analytical.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT message_id, type, user_id, anonymous_id FROM events WHERE workspace_id = ?",
            [srv.workspace_id],
        ).fetchall()
    finally:
        con.close()


# -- the two SDKs --------------------------------------------------------------------------------


def _segment_client(srv: Server, on_error: Callable[..., None], **kw: Any) -> Any:
    from segment.analytics import Client

    return Client(srv.write_key, host=srv.ingest_url, on_error=on_error, max_retries=2, upload_interval=0.2, **kw)


def _rudder_client(srv: Server, on_error: Callable[..., None], **kw: Any) -> Any:
    from rudderstack.analytics import Client

    # RudderStack's SDK gzips its batches by default; leave it so (only the host is changed).
    return Client(srv.write_key, host=srv.ingest_url, on_error=on_error, max_retries=2, upload_interval=0.2, **kw)


CLIENTS = {"segment": _segment_client, "rudderstack": _rudder_client}


def _drive(client: Any, p: str) -> list[str]:
    """Send every kind of call through ``client`` for users prefixed ``p``; return the messageIds."""
    sent: list[dict[str, Any]] = []

    def keep(result: tuple[bool, dict[str, Any]]) -> None:
        ok, msg = result
        assert ok, msg
        sent.append(msg)

    # an anonymous visitor browses, then signs up: alias links the two ids
    keep(client.page(anonymous_id=f"{p}-anon", name="Home", properties={"path": "/", "title": "Home"}))
    keep(client.track(anonymous_id=f"{p}-anon", event="Product Viewed", properties={"sku": "SKU-1", "price": 99.5}))
    keep(
        client.identify(
            user_id=f"{p}-u1",
            traits={
                "email": f"{p}.Alice@Example.com",
                "phone": "+86 139 1234 5678",
                "name": "Alice",
                "plan": "gold",
            },
        )
    )
    keep(client.alias(previous_id=f"{p}-anon", user_id=f"{p}-u1"))
    keep(client.track(user_id=f"{p}-u1", event="Order Completed", properties={"order_id": "o-1", "total": 199.0}))
    keep(client.page(user_id=f"{p}-u1", name="Checkout", properties={"path": "/checkout"}))
    keep(client.screen(user_id=f"{p}-u1", name="Cart", properties={"items": 2}))
    keep(client.group(user_id=f"{p}-u1", group_id=f"{p}-acme", traits={"name": "Acme", "employees": 40}))
    # enough track calls from many users to need several batches (each SDK uploads 100 per request)
    for i in range(N_TRACK):
        keep(client.track(user_id=f"{p}-bulk-{i % 25}", event="Bulk Event", properties={"i": i, "tags": ["a", "b"]}))
    client.flush()
    client.join()
    return [m["messageId"] for m in sent]


@pytest.mark.slow
@pytest.mark.parametrize("server", [0, 2], indirect=True, ids=["server", "2-collectors"])
@pytest.mark.parametrize("sdk", sorted(CLIENTS))
def test_official_sdk_events_all_land(server: Server, sdk: str) -> None:
    errors: list[tuple[Exception, int]] = []
    client = CLIENTS[sdk](server, lambda exc, batch: errors.append((exc, len(batch))))
    ids = _drive(client, sdk)
    assert errors == [], [str(e) for e, _ in errors]
    assert len(ids) == len(set(ids)) == N_TRACK + 8

    # nothing was rejected into the quarantine
    q = server.admin_get("/api/v1/quarantine")
    assert q.status_code == 200 and q.json() == [], q.text

    # the 360° profile of the signed-up user
    prof = server.lookup(user_id=f"{sdk}-u1")
    ident = {(i["type"], i["value"]) for i in prof["identities"]}
    assert ("user_id", f"{sdk}-u1") in ident
    assert ("email", f"{sdk}.alice@example.com") in ident, ident
    assert ("phone", "+8613912345678") in ident, ident
    # alias joined the anonymous visitor and the user into one profile, with the anonymous history
    assert ("anonymous_id", f"{sdk}-anon") in ident, ident
    assert server.lookup(anonymous_id=f"{sdk}-anon")["profile_id"] == prof["profile_id"]
    assert server.lookup(email=f"{sdk}.alice@example.com")["profile_id"] == prof["profile_id"]
    assert server.lookup(phone="13912345678")["profile_id"] == prof["profile_id"]
    # identify traits are profile attributes; group membership is recorded
    attrs = prof["attributes"]
    assert attrs.get("name") == "Alice" and attrs.get("plan") == "gold", attrs
    # identifier traits may be kept as sent or normalised like the identities
    assert attrs.get("email") in (f"{sdk}.Alice@Example.com", f"{sdk}.alice@example.com"), attrs
    assert attrs.get("phone") in ("+86 139 1234 5678", "+8613912345678"), attrs
    assert f"{sdk}-acme" in attrs.get("$groups", {}), attrs
    kinds = {(e["type"], e["event"]) for e in prof["events"]}
    assert {
        ("page", "Home"),
        ("track", "Product Viewed"),
        ("identify", None),
        ("alias", None),
        ("track", "Order Completed"),
        ("page", "Checkout"),
        ("screen", "Cart"),
        ("group", None),
    } <= kinds, kinds
    assert len(prof["events"]) == 8

    # the bulk users: 10 events each, the newest first in the recent events
    bulk = server.lookup(user_id=f"{sdk}-bulk-3")
    assert len(bulk["events"]) == N_TRACK // 25
    assert sorted(e["properties"]["i"] for e in bulk["events"]) == list(range(3, N_TRACK, 25))
    stamps = [e["ts"] for e in bulk["events"]]
    assert stamps == sorted(stamps, reverse=True), "recent events are not newest first"
    assert bulk["profile_id"] != prof["profile_id"]

    # the server's /metrics counts every event received, also those a collector process received
    # (collectors report their counts every second)
    # (at least: an SDK may send a batch again when an answer is slow)
    deadline, received = time.monotonic() + 5, -1.0
    while time.monotonic() < deadline and received < len(ids):
        text = httpx.get(server.url + "/metrics", timeout=5).text
        received = next(float(x.split()[-1]) for x in text.splitlines()
                        if x.startswith("goldkey_events_received_total "))
        time.sleep(0.2)
    assert received >= len(ids)

    # every message the SDK produced is stored exactly once (count in DuckDB after a graceful stop)
    server.stop()
    rows = _stored(server)
    stored = [r[0] for r in rows]
    assert len(stored) == len(set(stored)), "duplicates stored"
    assert sorted(stored) == sorted(ids)
    by_type: dict[str, int] = {}
    for _, t, _, _ in rows:
        by_type[t] = by_type.get(t, 0) + 1
    assert by_type == {"track": N_TRACK + 2, "page": 2, "identify": 1, "alias": 1, "screen": 1, "group": 1}

    # the server starts again cleanly on the same data and still serves the profile
    server.start()
    assert server.lookup(user_id=f"{sdk}-u1")["profile_id"] == prof["profile_id"]
    server.stop()


def test_segment_sync_mode_and_gzip(server: Server) -> None:
    """Segment's synchronous mode raises on any non-2xx, so a clean run proves every call was accepted;
    its gzip option and RudderStack's non-gzip mode are accepted too."""
    errors: list[Any] = []
    seg_sync = _segment_client(server, lambda e, b: errors.append(e), sync_mode=True)
    seg_sync.identify(user_id="sync-u", traits={"email": "sync@example.com"})
    seg_sync.track(user_id="sync-u", event="Synced", properties={"ok": True})
    seg_gzip = _segment_client(server, lambda e, b: errors.append(e), gzip=True)
    ids = _drive(seg_gzip, "seg-gz")
    rud_plain = _rudder_client(server, lambda e, b: errors.append(e), gzip=False)
    ids += _drive(rud_plain, "rud-plain")
    assert errors == [], [str(e) for e in errors]
    prof = server.lookup(email="sync@example.com")
    assert {e["event"] for e in prof["events"]} == {"Synced", None}
    assert server.lookup(user_id="seg-gz-u1")["attributes"]["plan"] == "gold"
    assert server.lookup(user_id="rud-plain-u1")["attributes"]["plan"] == "gold"
    server.stop()
    stored = {r[0] for r in _stored(server)}
    assert set(ids) <= stored
    assert len(stored) == len(ids) + 2


def test_batches_as_large_as_each_sdk_builds_all_land(server: Server) -> None:
    """RudderStack's SDK fills a batch up to 4 MB (its HTTP API's limit; Segment's SDK stops under
    500 KB): 100 events of ~6 KB, the SDK's default batch, were refused whole as over 500 KB, and
    the SDK drops a batch answered 413 without retrying."""
    errors: list[Any] = []
    pad = "x" * 6000
    for name, make in sorted(CLIENTS.items()):
        client = make(server, lambda e, b: errors.append(e))
        for i in range(100):
            client.track(user_id=f"{name}-big-{i % 7}", event="Big Event", properties={"pad": pad, "i": i},
                         message_id=f"{name}-big-{i}")
        client.flush()
        client.join()
    assert errors == [], [str(e) for e in errors]
    server.stop()
    stored = {r[0] for r in _stored(server)}
    assert {f"{n}-big-{i}" for n in CLIENTS for i in range(100)} <= stored


def test_sdk_errors_are_reported_for_a_wrong_write_key(server: Server) -> None:
    """The on_error callbacks really fire (so an empty error list above means something), with the
    401 as an API error the SDKs understand (they read `code` and `message` from the answer)."""
    for name, make in sorted(CLIENTS.items()):
        errors: list[Any] = []
        client = make(server, lambda e, b, errors=errors: errors.append(e))
        client.write_key = "gkw_wrong"
        for consumer in client.consumers:
            consumer.write_key = "gkw_wrong"
        client.track(user_id="x", event="y")
        client.flush()
        client.join()
        assert len(errors) == 1, (name, errors)
        assert getattr(errors[0], "status", None) == 401, (name, repr(errors[0]))
        assert "key" in str(errors[0]).lower(), (name, str(errors[0]))
