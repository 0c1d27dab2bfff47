"""Collector processes (``goldkey serve --collectors N``): the tracking API on their own port, with
the server's answers, errors and quarantine; a collector that dies is started again; their counts
reach the server's ``/metrics``. (The official SDKs and the SIGKILL durability test also run through
collectors: test_sdk_compat.py, test_durability.py.)"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from served import GOLDKEY, Server, _free_port, children, served


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from served(tmp_path, "Collected", collectors=2)


def _post(srv: Server, path: str, body: Any, key: str | None = None, **headers: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(srv.ingest_url + path, content=raw, auth=(key or srv.write_key, ""),
                      headers={"Content-Type": "application/json", **headers}, timeout=30)


def _collector_pids(srv: Server) -> list[int]:
    """The server's collector processes now."""
    assert srv.proc is not None
    pids = []
    for pid in children(srv.proc.pid):
        try:
            if b"goldkey.collect.collectors" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:  # gone meanwhile
            continue
    return sorted(pids)


def _serving_pids(srv: Server, n: int = 40) -> set[int]:
    """The collectors that answered ``n`` requests, each on a new connection."""
    return {httpx.get(srv.ingest_url + "/healthz").json()["pid"] for _ in range(n)}


@pytest.mark.slow
def test_the_collectors_answer_as_the_server_does(server: Server) -> None:
    # accepted through the collectors, stored by the server, visible in the profile at once
    r = _post(server, "/v1/identify", {"userId": "c1", "traits": {"name": "Chen", "phone": "13912345678"}})
    assert r.status_code == 200 and r.json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
    batch = {"batch": [{"type": "track", "userId": "c1", "event": "Viewed", "messageId": "m-1"},
                       {"type": "track", "event": "No Id", "messageId": "m-2"},
                       {"type": "page", "userId": "c1", "name": "Home", "messageId": "m-3"}]}
    r = _post(server, "/v1/batch", gzip.compress(orjson.dumps(batch)), **{"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2 and r.json()["rejected"] == [
        {"record": 1, "field": "userId", "error": "userId or anonymousId is required"}]
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    prof = httpx.get(server.url + "/api/v1/profiles/lookup", params={"user_id": "c1"}, headers=admin).json()
    assert prof["attributes"]["name"] == "Chen"
    assert {e["event"] for e in prof["events"]} == {None, "Viewed", "Home"}
    # the rejected event is in the server's quarantine, with its reason and the raw event
    q = httpx.get(server.url + "/api/v1/quarantine", headers=admin).json()
    assert [(x["source"], x["field"], x["raw"]["messageId"]) for x in q] == [("tracking", "userId", "m-2")]
    # a retry is de-duplicated by messageId, whichever process takes it (its bad event is rejected again)
    again = _post(server, "/v1/batch", batch)
    assert (again.json()["accepted"], again.json()["duplicates"], len(again.json()["rejected"])) == (0, 2, 1)

    # bad input gets the server's answers, naming the problem
    bad = _post(server, "/v1/track", b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    wrong = _post(server, "/v1/track", {"userId": "c1", "event": 5})
    assert wrong.status_code == 400 and wrong.json()["field"] == "event"
    big = _post(server, "/v1/track", {"userId": "c1", "event": "Big", "properties": {"x": "y" * 40_000}})
    assert big.status_code == 413 and big.json()["code"] == "TooLarge"
    unknown = _post(server, "/v1/track", {"userId": "c1", "event": "E"}, key="gkw_nobody")
    assert unknown.status_code == 401 and unknown.json()["code"] == "Unauthorized"
    admin_key = _post(server, "/v1/track", {"userId": "c1", "event": "E"}, key=server.admin_token)
    assert admin_key.status_code == 401
    # only the tracking API is served on the collectors' port
    elsewhere = httpx.get(server.ingest_url + "/api/v1/profiles", headers=admin)
    assert elsewhere.status_code == 404 and f"port {server.port}" in elsewhere.json()["error"]
    assert httpx.get(server.ingest_url + "/healthz").json()["role"] == "collector"

    # a write key revoked on the server is refused by the collectors from the next request
    made = httpx.post(server.url + "/api/v1/workspace/keys", json={"kind": "write", "label": "shop"},
                      headers=admin).json()
    assert _post(server, "/v1/track", {"userId": "c2", "event": "E"}, key=made["secret"]).status_code == 200
    key_id = next(k["key_id"] for k in httpx.get(server.url + "/api/v1/workspace/keys", headers=admin).json()
                  if k["label"] == "shop")
    assert httpx.delete(server.url + f"/api/v1/workspace/keys/{key_id}", headers=admin).status_code == 200
    for _ in range(10):  # whichever collector takes it
        assert _post(server, "/v1/track", {"userId": "c2", "event": "E"}, key=made["secret"]).status_code == 401

    # every event received and rejected is counted on the server's /metrics (within a second or so)
    def counts() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics").text
        return {x.split()[0]: float(x.split()[1]) for x in text.splitlines()
                if x.startswith(("goldkey_events_received_total ", "goldkey_events_rejected_total "))}

    # received: 1 + 3 + 3 + the one event of a wrong type + 1 with the new key (a body that is not
    # JSON, too large or without a valid write key has no workspace and no events to count);
    # rejected: 1 + 1 + 1
    want = {"goldkey_events_received_total": 9.0, "goldkey_events_rejected_total": 3.0}
    deadline = time.monotonic() + 5
    while counts() != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts() == want


@pytest.mark.slow
def test_a_dead_collector_is_started_again(server: Server) -> None:
    first = _collector_pids(server)
    assert len(first) == 2
    assert _serving_pids(server) == set(first)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/healthz").json()
        pids = _collector_pids(server)
        if health["collectors"] == {"configured": 2, "running": 2} and first[0] not in pids and len(pids) == 2:
            break
        time.sleep(0.2)
    assert health["collectors"] == {"configured": 2, "running": 2}, health
    now = _collector_pids(server)
    assert first[1] in now
    # both collectors take connections again (the kernel spreads new ones over both) and events
    assert _serving_pids(server) == set(now)
    for i in range(20):
        assert _post(server, "/v1/track", {"userId": f"u{i}", "event": "Back"}).status_code == 200

    # a second server cannot take the same collectors' port (it would silently share the traffic)
    other = subprocess.run([GOLDKEY, "serve", "--port", str(_free_port()), "--collectors", "1",
                            "--collect-port", str(server.collect_port), "--data-dir",
                            str(server.data_dir.parent / "other")], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "collect_port" in other.stdout + other.stderr, other.stdout + other.stderr
    # a graceful stop stops the collectors, then the server, without an error
    assert server.proc is not None
    running = _collector_pids(server)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
    assert not [p for p in running if Path(f"/proc/{p}").exists()]
