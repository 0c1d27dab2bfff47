"""The real-time triggers' delivery process (activate/delivery_process.py): messages are rendered
and sent by a child process while rows and events stay with the server; when the child dies before
it took a round the server sends in-process, and when it dies while sending, the round's messages
are failed as "outcome unknown", never sent twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_triggers import DATA_EVENT, OFFER, grant, lines, make_profiles, mount, sink, track

from goldkey.activate.sender import rate_limit_dir
from goldkey.activate.triggers import TriggerService
from goldkey.store.operational import messages


@pytest.fixture
def svc(env: Any) -> Iterator[TriggerService]:
    mount(env.client.app)
    env.gk.sender.guardrails.set_policy(env.ws.workspace_id, {"quiet_hours": None, "caps": {}})
    s = env.gk.triggers
    s.stop()  # these tests drive the rounds themselves (drain)
    yield s
    s.stop()


def _statuses(env: Any) -> dict[str, tuple[str, str | None]]:
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(messages.c.profile_id, messages.c.status, messages.c.reason)).all()
    return {r.profile_id: (r.status, r.reason) for r in rows}


def _sent_events(env: Any) -> list[str]:
    cur = env.gk.analytical.cursor()
    try:
        return [r[0] for r in cur.execute(
            "SELECT profile_id FROM events WHERE event = 'Message Sent' ORDER BY profile_id").fetchall()]
    finally:
        cur.close()


def test_trigger_messages_go_out_from_the_child_and_in_process_after_it_dies(env: Any, svc: TriggerService,
                                                                             tmp_path: Path) -> None:
    assert svc.child is not None, "a file-backed store delivers from a child process by default"
    ws = env.ws.workspace_id
    pids = make_profiles(env, 3)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    svc.create(ws, {"name": "data 75%", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid,
                    "template": OFFER})
    track(env, "u0", "Data Usage", data_used_pct=80)
    svc.drain()
    child_pid = svc.child.pid
    assert child_pid is not None and child_pid != os.getpid()
    got = lines(out)
    assert [x["profile_id"] for x in got] == [pids[0]] and got[0]["text"].startswith("客户0，流量已用 75%")
    assert _statuses(env)[pids[0]] == ("sent", None)
    assert _sent_events(env) == [pids[0]]  # the child's outcome became the server's event
    # the child took its token from the channel's bucket file, the one the server's sends use
    assert (rate_limit_dir(env.gk.settings.data_dir) / f"{cid}.bucket").stat().st_size == 16
    assert cid not in env.gk.sender._buckets  # not the server's doing

    os.kill(child_pid, signal.SIGKILL)  # between rounds: the next round cannot reach it
    os.waitpid(child_pid, 0)
    track(env, "u1", "Data Usage", data_used_pct=90)
    svc.drain()
    assert svc.child.failed is not None
    assert [x["profile_id"] for x in lines(out)] == [pids[0], pids[1]]
    assert _statuses(env)[pids[1]] == ("sent", None)
    assert _sent_events(env) == sorted([pids[0], pids[1]])


class _Hook(BaseHTTPRequestHandler):
    """A webhook that holds each request until ``release`` (at most ``wait_s``)."""

    arrived = threading.Event()
    release = threading.Event()
    count = 0
    wait_s = 20.0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).count += 1
        type(self).arrived.set()
        type(self).release.wait(self.wait_s)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


class _SlowHook(_Hook):
    """A channel that takes its time (a slow provider, a rate limit); events of its own."""

    arrived = threading.Event()
    release = threading.Event()
    count = 0
    wait_s = 60.0


@contextmanager
def _hooked_trigger(env: Any, svc: TriggerService, hook: type[_Hook]) -> Iterator[list[str]]:
    """A customer with push consent, a webhook channel to ``hook`` on a local server and a real-time
    trigger on it, and one event that fires it; yields the customer's profile ids. At the end the
    hook is released and the server stopped."""
    from goldkey.govern.consent import set_consent

    ws = env.ws.workspace_id
    server = ThreadingHTTPServer(("127.0.0.1", 0), hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pids = make_profiles(env, 1)
        set_consent(env.gk.engine, ws, pids[0], "push", "granted")
        ch = env.gk.sender.channels.save(ws, name=hook.__name__, kind="webhook", secrets={"signing_secret": "s"},
                                         config={"url": f"http://127.0.0.1:{server.server_port}/in"})
        svc.create(ws, {"name": hook.__name__, "kind": "realtime", "event": DATA_EVENT,
                        "channel_id": ch["channel_id"], "template": OFFER})
        track(env, "u0", "Data Usage", data_used_pct=80)
        yield pids
    finally:
        hook.release.set()
        server.shutdown()


def test_a_child_that_dies_while_sending_leaves_the_outcome_unknown_never_resent(env: Any, svc: TriggerService) -> None:
    with _hooked_trigger(env, svc, _Hook) as pids:
        killer_done = threading.Event()

        def kill_when_sending() -> None:
            assert _Hook.arrived.wait(60)
            os.kill(svc.child.pid, signal.SIGKILL)  # the request is in flight: its outcome is unknown
            killer_done.set()

        threading.Thread(target=kill_when_sending, daemon=True).start()
        svc.drain()
        assert killer_done.wait(10)
        _Hook.release.set()
        status, reason = _statuses(env)[pids[0]]
        assert status == "failed" and "outcome unknown" in (reason or "")
        svc.drain()  # nothing is queued any more: the message is never sent a second time
        time.sleep(0.2)
        assert _Hook.count == 1


def test_shutdown_does_not_wait_for_a_slow_delivery_round(env: Any, svc: TriggerService) -> None:
    """A delivery round holds the child's lock while it sends; close() waited for it (up to the
    600 s round timeout), so `goldkey serve` did not exit on SIGTERM while a slow channel sent. It
    now waits a bounded time, then stops the child: the round's message is of unknown outcome,
    never resent, as after a crash."""
    with _hooked_trigger(env, svc, _SlowHook) as pids:
        drainer = threading.Thread(target=svc.drain, daemon=True)
        drainer.start()
        assert _SlowHook.arrived.wait(60)
        t0 = time.monotonic()
        svc.child.close(wait_s=1.0)
        assert time.monotonic() - t0 < 15
        drainer.join(30)
        assert not drainer.is_alive()
        status, reason = _statuses(env)[pids[0]]
        assert status == "failed" and "outcome unknown" in (reason or ""), (status, reason)
