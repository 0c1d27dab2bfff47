"""Operations: health, Prometheus metrics, and backpressure (503 + Retry-After, never a drop)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import Env
from goldkey.app import create_app
from goldkey.runtime import Goldkey
from goldkey.settings import Settings


def test_healthz_and_metrics(env: Any) -> None:
    h = env.client.get("/healthz")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "ok" and body["queue_depth"] == 0 and body["queue_capacity"] > 0
    env.post("/v1/track", {"userId": "u1", "event": "Viewed", "messageId": "m1"})
    env.post("/v1/track", {"userId": "u1", "event": "", "messageId": "m2"})
    text = env.client.get("/metrics").text
    assert "goldkey_events_accepted_total" in text and "goldkey_write_latency_seconds_bucket" in text
    assert "goldkey_queue_depth" in text and "goldkey_events_rejected_total" in text
    assert env.client.get("/healthz").json()["seconds_since_last_commit"] is not None


@pytest.fixture
def small_queue(tmp_path: Path) -> Iterator[Env]:
    gk = Goldkey.open(Settings(data_dir=tmp_path, ingest_queue_max_events=5, group_commit_wait_ms=1))
    ws = gk.workspaces.create("B")
    with TestClient(create_app(gk=gk)) as client:
        yield Env(gk, client, ws)
    gk.close()


def test_full_queue_answers_503_with_retry_after_and_loses_nothing(small_queue: Env) -> None:
    env = small_queue
    release = threading.Event()
    started = threading.Event()

    def hold(_: Any) -> None:  # occupies the writer so that events pile up
        started.set()
        release.wait(30)

    env.gk.writer.submit_command(hold)
    started.wait(5)
    first = env.gk.writer.submit_events(env.ws.workspace_id, [_event(f"q{i}") for i in range(5)])
    r = env.post("/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "over"}]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "queue full" in r.json()["error"]
    release.set()
    assert first.result(10).accepted == 5
    # the client retries, as the SDKs do, and the event lands once
    r = env.post("/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": "over"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    n = env.gk.analytical.query("SELECT count(*) FROM events")[0][0]
    assert n == 6


def _event(mid: str) -> Any:
    from goldkey.collect.tracking import normalise_event, now_micros

    return normalise_event({"type": "track", "userId": "u", "event": "E", "messageId": mid}, received_at=now_micros())


def test_healthz_is_503_while_writes_fail_and_ok_again_after(env: Any, monkeypatch: Any) -> None:
    # before: the stores answered SELECT 1, so /healthz said "ok" while every event got a 503
    an = env.gk.analytical
    original = an.append

    def full_disk(*args: Any, **kwargs: Any) -> Any:  # fault injection: the event log cannot grow
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(an, "append", full_disk)
    r = env.client.post("/v1/track", json={"userId": "u1", "event": "E", "messageId": "m1"}, headers=env.write_auth())
    assert r.status_code == 503, r.text
    h = env.client.get("/healthz")
    assert h.status_code == 503, h.text
    body = h.json()
    assert body["status"] == "degraded" and body["operational_store"] == "ok"
    assert body["writes"].startswith("failing for") and "No space left" in body["writes"]
    monkeypatch.setattr(an, "append", original)
    r = env.client.post("/v1/track", json={"userId": "u1", "event": "E", "messageId": "m1"}, headers=env.write_auth())
    assert r.status_code == 200, r.text
    h = env.client.get("/healthz")
    assert h.status_code == 200 and h.json()["writes"] == "ok" and "No space left" in h.json()["last_error"]


def _counter(env: Any, name: str) -> float:
    for line in env.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_accepted_and_duplicate_counters_count(env: Any) -> None:
    names = ("goldkey_events_accepted_total", "goldkey_events_duplicate_total")
    before = {n: _counter(env, n) for n in names}
    batch = [{"type": "track", "userId": "u1", "event": "E", "messageId": f"acc-{i}"} for i in range(5)]
    for _ in range(2):  # the second time, all five are duplicates
        assert env.client.post("/v1/batch", json={"batch": batch}, headers=env.write_auth()).status_code == 200
    after = {n: _counter(env, n) for n in names}
    assert after[names[0]] - before[names[0]] == 5 and after[names[1]] - before[names[1]] == 5


def test_a_batch_refused_whole_counts_every_event_rejected(env: Any) -> None:
    # before: its events were counted as received and never as rejected, accepted or refused
    names = ("goldkey_events_received_total", "goldkey_events_rejected_total", "goldkey_events_accepted_total")
    before = {n: _counter(env, n) for n in names}
    batch = [{"type": "track", "userId": "u1", "event": "E", "messageId": f"m{i}"} for i in range(3)]
    for extra in ({"sentAt": "not a time"}, {"context": [1]}):
        r = env.client.post("/v1/batch", json={"batch": batch, **extra}, headers=env.write_auth())
        assert r.status_code == 400, r.text
    after = {n: _counter(env, n) for n in names}
    assert after[names[0]] - before[names[0]] == 6
    assert after[names[1]] - before[names[1]] == 6
    assert after[names[2]] == before[names[2]]
