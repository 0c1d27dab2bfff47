"""A 200 from the tracking API means the events are durable: SIGKILL under load loses no acknowledged event.

Client threads send ``/v1/batch`` requests (100 events each, unique messageIds) to a real
``goldkey serve`` process (once more to its collector processes) as fast as they can and record the
messageIds of every request answered 200. The server is then killed with SIGKILL while requests are
in flight (its collectors must exit with it), restarted on the same data directory (it must come up
cleanly), and stopped gracefully. Every acknowledged messageId must be in the event table exactly
once, and re-sending acknowledged batches after the restart must come back as duplicates without
storing anything twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import served as served_server

THREADS = 4
BATCH = 100
LOAD_SECONDS = 4.0
ROUNDS = 2


class Server(served_server.Server):
    """The served instance, killed with SIGKILL and stopped with checks."""

    def sigkill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "server died before the kill"
        children = served_server.children(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        # its collector processes see their socket close and exit at once, freeing their port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.05)
        assert not [c for c in children if _alive(c)], "child processes outlived the killed server"

    def stop(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("server did not stop within 30 s of SIGTERM") from None
        # uvicorn re-raises the captured SIGTERM once its graceful shutdown is done
        assert rc in (0, -signal.SIGTERM), f"graceful stop exited with {rc}:\n{self.log.read_text()}"
        assert "Traceback" not in self.log.read_text(), self.log.read_text()
        # the shutdown closed the stores: DuckDB checkpointed its write-ahead log into the file
        wal = self.data_dir / "analytical.duckdb.wal"
        assert not wal.exists() or wal.stat().st_size == 0, "DuckDB was not checkpointed on shutdown"


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped: the killed server's children are reparented)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server on its own data directory (not started); indirectly parametrised with a number of
    collectors."""
    for srv in served_server.served(tmp_path, "Durable", getattr(request, "param", 0), cls=Server, start=False):
        assert isinstance(srv, Server)
        yield srv


@dataclass
class Load:
    """What the client threads saw."""

    acked: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # first messageId -> batch
    sent_ids: set[str] = field(default_factory=set)
    failed_in_flight: int = 0
    other_status: list[tuple[int, str]] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)  # 200s that did not accept the whole batch
    lock: threading.Lock = field(default_factory=threading.Lock)


def _make_batch(rng: random.Random, tag: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(BATCH):
        u = rng.randrange(400)
        mid = f"{tag}-{uuid.uuid4()}"
        kind = rng.random()
        if kind < 0.1:
            events.append(
                {
                    "type": "identify",
                    "messageId": mid,
                    "userId": f"user-{u}",
                    "anonymousId": f"anon-{u}",
                    "traits": {"email": f"user{u}@example.com", "tier": u % 3},
                }
            )
        elif kind < 0.2:
            events.append({"type": "page", "messageId": mid, "anonymousId": f"anon-{u}", "name": "Home"})
        else:
            events.append(
                {
                    "type": "track",
                    "messageId": mid,
                    "userId": f"user-{u}",
                    "event": "Viewed",
                    "properties": {"sku": f"SKU-{rng.randrange(1000)}", "price": rng.random() * 100},
                }
            )
    return events


def _sender(srv: Server, load: Load, stop: threading.Event, seed: int, tag: str) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=srv.ingest_url, auth=(srv.write_key, ""), timeout=30) as client:
        while not stop.is_set():
            batch = _make_batch(rng, tag)
            ids = [e["messageId"] for e in batch]
            with load.lock:
                load.sent_ids.update(ids)
            try:
                r = client.post(
                    "/v1/batch",
                    json={"batch": batch, "sentAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                )
            except httpx.HTTPError:
                with load.lock:
                    load.failed_in_flight += 1
                return  # the server is gone
            if r.status_code == 200:
                body = r.json()
                with load.lock:
                    # the whole batch counts as acknowledged: every id of it must be stored. An answer
                    # that accepts fewer is recorded and fails the test in the main thread (an assert
                    # here would only end this thread, with a warning)
                    load.acked[ids[0]] = batch
                    if body.get("accepted") != BATCH or body.get("rejected") != []:
                        load.bad_answers.append(str(body)[:300])
            else:
                with load.lock:
                    load.other_status.append((r.status_code, r.text[:200]))


def _load_then_kill(srv: Server, load: Load, round_no: int) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(srv, load, stop, round_no * 100 + i, f"r{round_no}t{i}"), daemon=True)
        for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)
    # kill while the threads are still sending: requests are in flight, a group commit may be half done
    srv.sigkill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a client thread hung"


def _all_stored(srv: Server) -> tuple[list[str], list[tuple[str, int]]]:
    con = duckdb.connect(str(srv.data_dir / "analytical.duckdb"), read_only=True)
    try:
        ids = [
            m
            for (m,) in con.execute(
                "SELECT message_id FROM events WHERE workspace_id = ?", [srv.workspace_id]
            ).fetchall()
        ]
        dupes = con.execute(
            "SELECT message_id, count(*) FROM events GROUP BY workspace_id, message_id HAVING count(*) > 1 LIMIT 20"
        ).fetchall()
    finally:
        con.close()
    return ids, dupes


@pytest.mark.slow
@pytest.mark.parametrize("server", [0, 2], indirect=True, ids=["server", "2-collectors"])
def test_sigkill_under_load_loses_no_acknowledged_event(server: Server) -> None:
    load = Load()
    server.start()
    for round_no in range(ROUNDS):
        _load_then_kill(server, load, round_no)
        # it must come back cleanly on the same data directory (lock released, WAL replayed)
        took = server.start()
        print(f"restart after kill {round_no + 1}: healthy in {took:.1f} s")
        assert took < 30, f"restart took {took:.1f} s"
        health = httpx.get(server.url + "/healthz", timeout=5).json()
        assert health["status"] == "ok", health

    assert load.other_status == [], load.other_status[:5]
    assert load.bad_answers == [], load.bad_answers[:5]
    assert len(load.acked) >= 10, f"only {len(load.acked)} batches acknowledged: the load was too light"
    assert load.failed_in_flight >= 1, "no request was in flight at the kill"

    # re-sending acknowledged batches after the restarts: all duplicates, nothing stored twice
    batches = list(load.acked.values())
    resend = batches[:3] + batches[-3:]
    with httpx.Client(base_url=server.ingest_url, auth=(server.write_key, ""), timeout=30) as client:
        for b in resend:
            r = client.post("/v1/batch", json={"batch": b})
            assert r.status_code == 200, r.text
            assert r.json() == {"success": True, "accepted": 0, "duplicates": BATCH, "rejected": []}, r.text
        # one batch mixing 50 acknowledged events with 50 new ones
        fresh = _make_batch(random.Random(999), "fresh")[:50]
        r = client.post("/v1/batch", json={"batch": batches[len(batches) // 2][:50] + fresh})
        assert r.status_code == 200, r.text
        assert (r.json()["accepted"], r.json()["duplicates"]) == (50, 50), r.text
    server.stop()

    stored, dupes = _all_stored(server)
    assert dupes == [], f"messageIds stored more than once: {dupes}"
    stored_set = set(stored)
    acked_ids = {e["messageId"] for b in batches for e in b}
    missing = acked_ids - stored_set
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    # whatever else is stored was really sent (in flight at the kill, committed but not answered)
    fresh_ids = {e["messageId"] for e in fresh}
    assert stored_set - acked_ids - fresh_ids <= load.sent_ids
    assert fresh_ids <= stored_set
    assert len(stored) == len(stored_set)

    print(
        f"\nacknowledged {len(acked_ids)} events in {len(batches)} batches over {ROUNDS} kills; "
        f"{len(stored_set - acked_ids - fresh_ids)} unacknowledged in-flight events were stored; "
        f"{load.failed_in_flight} requests cut off by the kills"
    )

    # the data directory opens once more (no leftover lock, the stores agree after the kills)
    server.start()
    server.stop()
