"""Journeys on the real stores: save-time validation naming the node ids, an event entry through
/v1/track -> wait -> branch on a rule -> send to a sink channel -> goal, deterministic random
splits, re-entry rules, and a runner killed (SIGKILL) between a send and its state update."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from goldkey.activate.guardrails import Guardrails
from goldkey.activate.journey_engine import JourneyEngine
from goldkey.activate.journeys import JourneyService
from goldkey.app import create_app
from goldkey.core.clock import utcnow
from goldkey.govern.consent import set_consent
from goldkey.runtime import Goldkey
from goldkey.settings import Settings
from goldkey.store.operational import create_operational_engine, journey_states, journey_steps, messages


def open_settings(data: Path) -> Settings:
    return Settings(data_dir=data, group_commit_wait_ms=1.0)

WELCOME = {"template_id": "welcome", "variants": {"zh": {"text": "{{ attributes.name }}，欢迎加入！"}}}
ORIGIN_EXISTING = {"kind": "attribute", "field": "profile.origin", "op": "eq", "value": "existing"}


def mount(app: Any) -> None:
    """Mount the journeys router before the console's catch-all route (until goldkey.app does)."""
    from goldkey.api import journeys as api
    from goldkey.api.console import _is_console

    if any(getattr(r, "path", "") == "/api/v1/journeys" for r in app.routes):
        return
    app.include_router(api.router)
    routes = app.router.routes
    for r in [r for r in routes if _is_console(r)]:
        routes.remove(r)
        routes.append(r)


def engine_for(gk: Any) -> JourneyEngine:
    """The service the API uses and a runner listening to the writer; the test drives the rounds
    (the runtime's runner thread, once wired, is stopped so that it does not race the test)."""
    running = getattr(gk, "journey_engine", None)
    if running is not None:
        running.stop()
        return running  # type: ignore[no-any-return]
    if getattr(gk, "journeys", None) is None:
        gk.journeys = JourneyService(gk)
    eng = JourneyEngine.from_goldkey(gk)
    eng.attach(gk.writer)
    return eng


@pytest.fixture
def eng(env: Any) -> JourneyEngine:
    mount(env.client.app)
    Guardrails(env.gk.engine).set_policy(env.ws.workspace_id, {"caps": {}, "quiet_hours": None})
    return engine_for(env.gk)


def profiles_for(gk: Any, ws: str, n: int) -> list[str]:
    with gk.engine.connect() as c:
        rows = dict(c.execute(sa.text("SELECT id_value, profile_id FROM identities WHERE workspace_id = :w "
                                      "AND id_type = 'user_id'"), {"w": ws}).all())
    return [rows[f"u{i}"] for i in range(n)]


def make_profiles(client: TestClient, auth: dict[str, str], gk: Any, ws: str, n: int,
                  city: Any = lambda i: "上海") -> list[str]:
    batch = [{"type": "identify", "userId": f"u{i}",
              "traits": {"name": f"客户{i}", "phone": f"+86138{i:08d}", "city": city(i)}} for i in range(n)]
    assert client.post("/v1/batch", json={"batch": batch}, headers=auth).status_code == 200
    pids = profiles_for(gk, ws, n)
    for p in pids:
        set_consent(gk.engine, ws, p, "sms", "granted")
    return pids


def track(client: TestClient, auth: dict[str, str], users: list[int], event: str) -> None:
    batch = [{"type": "track", "userId": f"u{i}", "event": event, "properties": {}} for i in users]
    r = client.post("/v1/batch", json={"batch": batch}, headers=auth)
    assert r.status_code == 200, r.text


def sink(gk: Any, ws: str, name: str = "sink.jsonl") -> tuple[str, Path]:
    """A sink channel writing ``name`` in the workspace's folder of the channel-files directory."""
    ch = gk.sender.channels.save(ws, name="sink", kind="sink", config={"path": name, "simulates": "sms"})
    return str(ch["channel_id"]), gk.sender.channels.file_path(ws, ch["config"]["path"])


def sent(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def node(nid: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": nid, "type": type_, "config": config, "position": {"x": 0, "y": 0}}


def edge(a: str, b: str, label: str | None = None) -> dict[str, Any]:
    return {"source": a, "target": b, **({"label": label} if label else {})}


def event_entry(name: str) -> dict[str, Any]:
    return node("start", "entry", kind="event", event={"kind": "event", "event": name})


def journey(name: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"name": name, "graph": {"nodes": nodes, "edges": edges}, **kw}


def message(r: Any) -> str:
    """The error message without the API's ``field '...': `` prefix."""
    body = r.json()
    return str(body["error"]).removeprefix(f"field '{body['field']}': ")


def states(gk: Any, jid: str) -> dict[str, Any]:
    with gk.engine.connect() as c:
        return {r.profile_id: r for r in c.execute(sa.select(journey_states).where(journey_states.c.journey_id == jid))}


# --------------------------------------------------------------------------- validation


def test_bad_graphs_are_rejected_at_save_naming_the_nodes(env: Any, eng: JourneyEngine, tmp_path: Path) -> None:
    h = env.admin_auth()
    loop = journey("loop", [event_entry("Signed Up"), node("c1", "condition", rule=ORIGIN_EXISTING),
                            node("c2", "condition", rule=ORIGIN_EXISTING), node("done", "exit")],
                   [edge("start", "c1"), edge("c1", "done", "yes"), edge("c1", "c2", "no"),
                    edge("c2", "c1", "yes"), edge("c2", "done", "no")])
    r = env.client.post("/api/v1/journeys", json=loop, headers=h)
    assert r.status_code == 400
    assert message(r) == "cycle without a wait through nodes c1, c2: add a wait node on the loop"

    # the same loop through a wait is a legal re-try loop
    loop["graph"]["nodes"].append(node("pause", "wait", duration={"days": 1}))
    loop["graph"]["edges"][3] = edge("c2", "pause", "yes")
    loop["graph"]["edges"].append(edge("pause", "c1"))
    r = env.client.post("/api/v1/journeys", json=loop, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["definition"]["graph"]["nodes"][0]["position"] == {"x": 0.0, "y": 0.0}

    orphan = journey("orphan", [event_entry("Signed Up"), node("done", "exit"), node("lost", "exit"),
                                node("lost2", "wait", duration={"hours": 2})],
                     [edge("start", "done"), edge("lost2", "lost")])
    r = env.client.post("/api/v1/journeys", json=orphan, headers=h)
    assert r.status_code == 400 and message(r) == "unreachable from the entry node 'start': lost, lost2"

    half = journey("half", [event_entry("Signed Up"), node("c", "condition", rule=ORIGIN_EXISTING),
                            node("done", "exit")], [edge("start", "c"), edge("c", "done", "yes")])
    r = env.client.post("/api/v1/journeys", json=half, headers=h)
    assert r.status_code == 400 and message(r) == "node 'c' (condition) needs edges labelled no, yes: " \
                                                         "missing branch no"

    two = journey("two", [event_entry("A"), {**event_entry("B"), "id": "start2"}, node("done", "exit")],
                  [edge("start", "done"), edge("start2", "done")])
    r = env.client.post("/api/v1/journeys", json=two, headers=h)
    assert r.status_code == 400
    assert message(r) == "a journey needs exactly one entry node; found 2: start, start2"

    dangling = journey("dangling", [event_entry("A"), node("done", "exit")], [edge("start", "nowhere")])
    r = env.client.post("/api/v1/journeys", json=dangling, headers=h)
    assert r.status_code == 400 and "target node 'nowhere' does not exist" in message(r)

    ch, _ = sink(env.gk, env.ws.workspace_id)
    bad_tpl = {"template_id": "x", "variants": {"zh": {"text": "{{ attributes.nmae }}"}}}
    sends = journey("sends", [event_entry("A"), node("hello", "send", channel_id=ch, template=bad_tpl),
                              node("done", "exit")], [edge("start", "hello"), edge("hello", "done")])
    r = env.client.post("/api/v1/journeys", json=sends, headers=h)
    assert r.status_code == 400
    assert message(r).startswith("node 'hello' (send): ")
    assert r.json()["field"].startswith("graph.nodes[1].config.template.variants.zh")
    sends["graph"]["nodes"][1]["config"] = {"channel_id": "chn_missing", "template": WELCOME}
    r = env.client.post("/api/v1/journeys", json=sends, headers=h)
    assert r.status_code == 400
    assert message(r) == "node 'hello' (send): channel 'chn_missing' does not exist in this workspace"
    assert r.json()["field"] == "graph.nodes[1].config.channel_id"

    badrule = journey("badrule", [event_entry("A"), node("c", "condition", rule={
        "kind": "attribute", "field": "attributes.nope", "op": "eq", "value": 1}), node("d", "exit")],
        [edge("start", "c"), edge("c", "d", "yes"), edge("c", "d", "no")])
    r = env.client.post("/api/v1/journeys", json=badrule, headers=h)
    assert r.status_code == 400
    assert message(r).startswith("node 'c' (condition): unknown field 'attributes.nope'")
    assert r.json()["field"] == "graph.nodes[1].config.rule.field"

    r = env.client.post("/api/v1/journeys", json=journey("w", [event_entry("A"), node("w", "wait"), node("d", "exit")],
                                                         [edge("start", "w"), edge("w", "d")]), headers=h)
    assert r.status_code == 400 and message(r) == "node 'w' (wait): give exactly one of 'duration' or 'until'"


# --------------------------------------------------------------------------- the whole path


def test_event_entry_wait_branch_send_goal(env: Any, eng: JourneyEngine, tmp_path: Path) -> None:
    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pids = make_profiles(env.client, env.write_auth(), gk, ws, 5, city=lambda i: "上海" if i < 3 else "北京")
    ch, out = sink(gk, ws)
    d = journey("welcome", [
        event_entry("Signed Up"),
        node("day1", "wait", duration={"days": 1}),
        node("sh", "condition", rule={"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}),
        node("hello", "send", channel_id=ch, template=WELCOME),
        node("opened", "wait", until={"kind": "event", "event": "App Opened"}, timeout={"days": 3}),
        node("bought", "goal", event={"kind": "event", "event": "Order Completed"}),
        node("engaged", "exit"), node("silent", "exit"), node("elsewhere", "exit")],
        [edge("start", "day1"), edge("day1", "sh"), edge("sh", "hello", "yes"), edge("sh", "elsewhere", "no"),
         edge("hello", "opened"), edge("opened", "engaged", "event"), edge("opened", "silent", "timeout")])
    r = env.client.post("/api/v1/journeys", json=d, headers=h)
    assert r.status_code == 201, r.text
    jid = r.json()["journey_id"]
    assert r.json()["status"] == "draft" and r.json()["version"] == 0
    track(env.client, env.write_auth(), [0, 1, 2, 3, 4], "Signed Up")  # before publishing: nobody enters
    assert eng.run_once() == 0
    r = env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["status"] == "active"
    assert env.client.post(f"/api/v1/journeys/{jid}/validate", headers=h).json()["valid"] is True

    t0 = utcnow()
    track(env.client, env.write_auth(), [0, 1, 2, 3, 4], "Signed Up")
    assert eng.run_once(t0) == 5  # entered; now waiting a day
    st = states(gk, jid)
    assert {s.node_id for s in st.values()} == {"day1"} and set(st) == set(pids)
    assert eng.run_once(t0 + timedelta(hours=23)) == 0  # not due yet
    stats = env.client.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()
    assert {n["node_id"]: n["current"] for n in stats["nodes"]}["day1"] == 5

    t1 = t0 + timedelta(days=1, minutes=1)
    eng.run_once(t1)
    lines = sent(out)
    assert sorted(x["profile_id"] for x in lines) == sorted(pids[:3])  # only the Shanghai customers
    assert {x["text"] for x in lines} == {f"客户{i}，欢迎加入！" for i in range(3)}
    st = states(gk, jid)
    assert st[pids[3]].status == "exited" and st[pids[3]].node_id == "elsewhere"
    assert st[pids[0]].status == "waiting" and st[pids[0]].node_id == "opened"

    track(env.client, env.write_auth(), [0], "App Opened")
    track(env.client, env.write_auth(), [1], "Order Completed")
    eng.run_once(t1 + timedelta(minutes=5))
    st = states(gk, jid)
    assert (st[pids[0]].status, st[pids[0]].node_id) == ("exited", "engaged")
    assert (st[pids[1]].status, st[pids[1]].node_id) == ("converted", "bought")
    assert (st[pids[2]].status, st[pids[2]].node_id) == ("waiting", "opened")
    eng.run_once(t1 + timedelta(days=3, minutes=10))  # the wait for "App Opened" times out
    st = states(gk, jid)
    assert (st[pids[2]].status, st[pids[2]].node_id) == ("exited", "silent")
    assert len(sent(out)) == 3

    stats = env.client.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()
    assert stats["totals"] == {"entered": 5, "active": 0, "exited": 4, "converted": 1}
    per = {n["node_id"]: n for n in stats["nodes"]}
    assert per["sh"]["outcomes"] == {"yes": 3, "no": 2}
    assert per["hello"]["outcomes"] == {"sent": 3}
    assert per["opened"]["outcomes"] == {"event": 1, "timeout": 1} and per["bought"]["outcomes"] == {"converted": 1}
    assert per["silent"]["visits"] == 1 and per["bought"]["current"] == 0
    with gk.engine.connect() as c:
        keys = c.execute(sa.select(messages.c.message_key, messages.c.ref)).all()
    assert set(keys) == {(f"journey:{jid}:v1:hello:e1", f"journey:{jid}:hello")}

    # pause: nobody enters, resume: they do; the draft is edited without touching version 1
    assert env.client.post(f"/api/v1/journeys/{jid}/pause", headers=h).json()["status"] == "paused"
    d["name"] = "welcome v2"
    r = env.client.put(f"/api/v1/journeys/{jid}", json=d, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["name"] == "welcome v2"
    assert env.client.post(f"/api/v1/journeys/{jid}/resume", headers=h).json()["status"] == "active"
    listed = env.client.get("/api/v1/journeys", headers=h).json()
    assert [j["journey_id"] for j in listed] == [jid]
    assert env.client.get("/api/v1/journeys/jny_nope", headers=h).status_code == 404


def test_runner_thread_moves_customers_on_its_own(env: Any, eng: JourneyEngine) -> None:
    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pids = make_profiles(env.client, env.write_auth(), gk, ws, 3)
    d = journey("live", [event_entry("Signed Up"), node("vip", "condition", rule=ORIGIN_EXISTING),
                         node("a", "exit"), node("b", "exit")],
                [edge("start", "vip"), edge("vip", "a", "yes"), edge("vip", "b", "no")])
    jid = env.client.post("/api/v1/journeys", json=d, headers=h).json()["journey_id"]
    env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)
    eng.start()
    try:
        track(env.client, env.write_auth(), [0, 1, 2], "Signed Up")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = states(gk, jid)
            if len(st) == 3 and {s.status for s in st.values()} == {"exited"}:
                break
            time.sleep(0.1)
    finally:
        eng.stop()
    st = states(gk, jid)
    assert set(st) == set(pids) and {(s.node_id, s.status) for s in st.values()} == {("b", "exited")}
    assert eng.last_error is None


def test_trigger_entry_admits_whoever_the_trigger_fired_for(env: Any, eng: JourneyEngine, tmp_path: Path) -> None:
    from goldkey.activate.triggers import TriggerService

    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pids = make_profiles(env.client, env.write_auth(), gk, ws, 3)
    trig = getattr(gk, "triggers", None)
    if trig is None:
        trig = TriggerService.from_goldkey(gk)
        trig.attach(gk.writer)
    else:
        trig.stop()  # the runtime's worker: this test drives the rounds
    ch, _ = sink(gk, ws)
    t = trig.create(ws, {"name": "流量提醒", "kind": "realtime", "channel_id": ch, "template": WELCOME,
                         "event": {"kind": "event", "event": "Data Usage"}})
    d = journey("after-trigger", [node("start", "entry", kind="trigger", trigger_id=t["trigger_id"]),
                                  node("w", "wait", duration={"hours": 1}), node("done", "exit")],
                [edge("start", "w"), edge("w", "done")])
    jid = env.client.post("/api/v1/journeys", json=d, headers=h).json()["journey_id"]
    env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)
    track(env.client, env.write_auth(), [0, 2], "Data Usage")
    trig.drain()
    eng.run_once()
    assert set(states(gk, jid)) == {pids[0], pids[2]}
    eng.run_once()  # the cursor moved: nobody is admitted twice
    stats = env.client.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()
    assert stats["totals"]["entered"] == 2 and {n["node_id"]: n["current"] for n in stats["nodes"]}["w"] == 2
    bad = journey("bad-trigger", [node("start", "entry", kind="trigger", trigger_id="trg_nope"),
                                  node("done", "exit")], [edge("start", "done")])
    r = env.client.post("/api/v1/journeys", json=bad, headers=h)
    assert r.status_code == 400 and message(r) == "node 'start' (entry): trigger 'trg_nope' does not exist"


def test_goldkeys_own_events_enter_and_convert(env: Any, eng: JourneyEngine) -> None:
    """Lifecycle Stage Changed and Tag Changed are written by model runs and tags straight to the
    event log, not through the writer's commits: before, a journey entered on one (the lifecycle
    doc's win-back: "moved to at_risk") never admitted anybody, and a goal on one never converted."""
    from goldkey.audience.common import emit_events

    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pids = make_profiles(env.client, env.write_auth(), gk, ws, 4)
    to_risk = {"kind": "event", "event": "Lifecycle Stage Changed",
               "where": [{"property": "to", "op": "eq", "value": "at_risk"}]}
    d = journey("win-back", [node("start", "entry", kind="event", event=to_risk),
                             node("w", "wait", duration={"days": 7}),
                             node("back", "goal", event={"kind": "event", "event": "Tag Changed", "where": [
                                 {"property": "tag", "op": "eq", "value": "lifecycle_stage"},
                                 {"property": "to", "op": "eq", "value": "active"}]}),
                             node("done", "exit")],
                [edge("start", "w"), edge("w", "done")])
    r = env.client.post("/api/v1/journeys", json=d, headers=h)
    assert r.status_code == 201, r.text
    jid = r.json()["journey_id"]
    assert env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h).status_code == 200
    with gk.analytical.transaction() as con:
        emit_events(gk.analytical, con, ws, [
            (pids[0], "Lifecycle Stage Changed", {"from": "active", "to": "at_risk"}),
            (pids[1], "Lifecycle Stage Changed", {"from": "at_risk", "to": "active"}),  # not this way
            (pids[2], "Tag Changed", {"tag": "lifecycle_stage", "to": "at_risk"}),  # another event
            (pids[3], "Lifecycle Stage Changed", {"from": None, "to": "at_risk"})], "insight")
    try:
        with gk.analytical.transaction() as con:  # rolled back: nobody enters
            emit_events(gk.analytical, con, ws, [(pids[1], "Lifecycle Stage Changed", {"to": "at_risk"})], "insight")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    t0 = utcnow()
    assert eng.run_once(t0) == 2
    st = states(gk, jid)
    assert set(st) == {pids[0], pids[3]} and {s.node_id for s in st.values()} == {"w"}
    with gk.analytical.transaction() as con:
        emit_events(gk.analytical, con, ws, [(pids[0], "Tag Changed", {"tag": "lifecycle_stage", "to": "active"}),
                                             (pids[3], "Tag Changed", {"tag": "rfm_group", "to": "active"})],
                    "insight")
    eng.run_once(t0 + timedelta(minutes=1))
    st = states(gk, jid)
    assert (st[pids[0]].status, st[pids[0]].node_id) == ("converted", "back")
    assert (st[pids[3]].status, st[pids[3]].node_id) == ("active", "w")  # still waiting its 7 days
    assert eng.last_error is None


# --------------------------------------------------------------------------- splits and re-entry


def test_random_split_is_deterministic_and_proportional(env: Any, eng: JourneyEngine) -> None:
    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    n = 400
    pids = make_profiles(env.client, env.write_auth(), gk, ws, n)
    d = journey("ab", [event_entry("Signed Up"), node("ab", "split", branches=[{"key": "A", "weight": 70},
                                                                                 {"key": "B", "weight": 30}]),
                       node("a", "exit"), node("b", "exit")],
                [edge("start", "ab"), edge("ab", "a", "A"), edge("ab", "b", "B")])
    jid = env.client.post("/api/v1/journeys", json=d, headers=h).json()["journey_id"]
    env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)
    track(env.client, env.write_auth(), list(range(n)), "Signed Up")
    eng.run_once()
    with gk.engine.connect() as c:
        got = dict(c.execute(sa.select(journey_steps.c.profile_id, journey_steps.c.outcome).where(
            journey_steps.c.journey_id == jid, journey_steps.c.node_id == "ab")).all())

    def independent(pid: str) -> str:  # the documented rule: blake2b-64 of "journey:node:profile" / 2^64
        x = int.from_bytes(hashlib.blake2b(f"{jid}:ab:{pid}".encode(), digest_size=8).digest(), "big") / 2**64
        return "A" if x * 100 < 70 else "B"

    assert got == {p: independent(p) for p in pids}
    share = Counter(got.values())["A"] / n
    assert abs(share - 0.7) < 4 * (0.7 * 0.3 / n) ** 0.5  # within 4 standard errors


@pytest.mark.parametrize(("re_entry", "expected"), [
    ({"mode": "never"}, [1, 1, 1]),
    ({"mode": "always"}, [1, 2, 3]),
    ({"mode": "after_days", "days": 1}, [1, 1, 2]),
])
def test_re_entry_rules(env: Any, eng: JourneyEngine, re_entry: dict[str, Any], expected: list[int]) -> None:
    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pid = make_profiles(env.client, env.write_auth(), gk, ws, 1)[0]
    d = journey("ping", [event_entry("Ping"), node("w", "wait", duration={"hours": 1}), node("done", "exit")],
                [edge("start", "w"), edge("w", "done")], re_entry=re_entry)
    jid = env.client.post("/api/v1/journeys", json=d, headers=h).json()["journey_id"]
    env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)
    t = utcnow()
    entries = []
    # ping at t (enter), ping again while inside (never admitted twice at once), finish at t+2h,
    # ping at t+3h (re-entry 'always'), finish, ping 2 days later (re-entry 'after_days' 1)
    for at, ping in ((t, True), (t + timedelta(minutes=30), True), (t + timedelta(hours=2), False),
                     (t + timedelta(hours=3), True), (t + timedelta(hours=5), False),
                     (t + timedelta(days=2, hours=6), True)):
        if ping:
            track(env.client, env.write_auth(), [0], "Ping")
        eng.run_once(at)
        if ping and at != t + timedelta(minutes=30):
            entries.append(states(gk, jid)[pid].entry)
    assert entries == expected
    assert states(gk, jid)[pid].status in ("active", "exited")


class _Hook(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({**body, "key": self.headers["Idempotency-Key"]})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_segment_entry_tag_and_webhook_called_at_most_once(env: Any, eng: JourneyEngine) -> None:
    """Segment members enter; a manual tag is set; a webhook interrupted between the call and the
    state update (the runner raising there) is not called again when the runner resumes."""
    ws, h, gk = env.ws.workspace_id, env.admin_auth(), env.gk
    pids = make_profiles(env.client, env.write_auth(), gk, ws, 5, city=lambda i: "上海" if i < 3 else "北京")
    seg = gk.segments.create(ws, "上海客户", {"kind": "attribute", "field": "attributes.city", "op": "eq",
                                           "value": "上海"})
    gk.segments.compute(ws, seg["segment_id"])
    assert env.client.post("/api/v1/tags", json={"name": "welcomed", "kind": "manual", "value_type": "boolean",
                                                 "category": "dynamic"}, headers=h).status_code == 201
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.calls = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        d = journey("seg", [node("start", "entry", kind="segment", segment_id=seg["segment_id"],
                                 include_existing=True),
                            node("tag", "update_tag", tag="welcomed", value=True),
                            node("hook", "webhook", url=f"http://127.0.0.1:{server.server_port}/crm",
                                 body={"source": "goldkey"}),
                            node("done", "exit")],
                    [edge("start", "tag"), edge("tag", "hook"), edge("hook", "done")])
        r = env.client.post("/api/v1/journeys", json=d, headers=h)
        assert r.status_code == 201, r.text
        jid = r.json()["journey_id"]
        env.client.post(f"/api/v1/journeys/{jid}/publish", headers=h)

        def crash(node_id: str, _pids: Any) -> None:
            if node_id == "hook":
                raise KeyboardInterrupt("simulated crash after the call, before the state moved")

        eng.after_effect = crash
        with pytest.raises(KeyboardInterrupt):
            eng.run_once()
        assert len(_Hook.calls) == 3
        assert {s.node_id for s in states(gk, jid).values()} == {"hook"}
        eng.after_effect = None
        eng.run_once()
        assert len(_Hook.calls) == 3  # not called again
        assert sorted(c["profile_id"] for c in _Hook.calls) == sorted(pids[:3])
        assert all(c["source"] == "goldkey" and c["key"].startswith(f"journey:{jid}:v1:hook:") for c in _Hook.calls)
        st = states(gk, jid)
        assert set(st) == set(pids[:3]) and {s.status for s in st.values()} == {"exited"}
        for p in pids[:3]:
            prof = env.client.get(f"/api/v1/profiles/{p}", headers=h).json()
            assert prof["tags"]["welcomed"] is True
        per = {n["node_id"]: n for n in env.client.get(f"/api/v1/journeys/{jid}/stats", headers=h).json()["nodes"]}
        assert per["hook"]["outcomes"] == {"unknown": 3}
        assert per["tag"]["outcomes"] == {"tag welcomed set": 3}
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- crash and restart


_CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings
    from goldkey.activate.journeys import JourneyService
    from goldkey.activate.journey_engine import JourneyEngine
    gk = Goldkey.open(Settings(data_dir=Path({data!r}), group_commit_wait_ms=1.0))
    eng = getattr(gk, "journey_engine", None)
    if eng is not None:
        eng.stop()  # the runtime's own runner: this script drives the round itself
    else:
        gk.journeys = JourneyService(gk)
        eng = JourneyEngine.from_goldkey(gk)
    gk.journeys.set_status({ws!r}, {jid!r}, "active")  # paused before the hand-over
    def crash(node_id, pids):
        sys.stdout.write(f"effect {{node_id}} {{len(pids)}}\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)   # after the send, before the state moves
    eng.after_effect = crash
    eng.run_once()
    print("not killed")
""")


@pytest.mark.slow
def test_killed_mid_journey_loses_no_step_and_repeats_none(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gk = Goldkey.open(open_settings(data))
    ws_new = gk.workspaces.create("Crash Brand")
    ws = ws_new.workspace_id
    n = 30
    try:
        with TestClient(create_app(gk=gk)) as client:
            mount(client.app)
            Guardrails(gk.engine).set_policy(ws, {"caps": {}, "quiet_hours": None})
            eng = engine_for(gk)
            auth = {"Authorization": "Basic " + base64.b64encode(f"{ws_new.write_key}:".encode()).decode()}
            pids = make_profiles(client, auth, gk, ws, n)
            ch, out = sink(gk, ws)
            d = journey("crash", [event_entry("Signed Up"), node("hello", "send", channel_id=ch, template=WELCOME),
                                  node("tag", "exit")], [edge("start", "hello"), edge("hello", "tag")])
            admin = {"Authorization": f"Bearer {ws_new.admin_token}"}
            jid = client.post("/api/v1/journeys", json=d, headers=admin).json()["journey_id"]
            assert client.post(f"/api/v1/journeys/{jid}/publish", headers=admin).status_code == 200
            track(client, auth, list(range(n)), "Signed Up")
            eng.handle_events(utcnow())  # entered; the send is due
            assert {s.node_id for s in states(gk, jid).values()} == {"hello"}
            assert client.post(f"/api/v1/journeys/{jid}/pause", headers=admin).status_code == 200
    finally:
        gk.close()

    script = _CRASH.format(data=str(data), ws=ws, jid=jid)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert f"effect hello {n}" in proc.stdout
    assert len(sent(out)) == n  # the effect happened ...

    store = create_operational_engine(open_settings(data).resolved_operational_url())
    try:
        with store.connect() as c:
            at = c.execute(sa.select(journey_states.c.node_id, sa.func.count()).where(
                journey_states.c.journey_id == jid).group_by(journey_states.c.node_id)).all()
    finally:
        store.dispose()
    assert dict(at) == {"hello": n}  # ... but the states did not move
    gk = Goldkey.open(open_settings(data))
    try:
        eng = engine_for(gk)
        eng.run_once()
        st = states(gk, jid)
        assert {(s.node_id, s.status) for s in st.values()} == {("tag", "exited")}
        lines = sent(out)
        assert len(lines) == n and sorted(x["profile_id"] for x in lines) == sorted(pids)  # none sent twice
        with gk.engine.connect() as c:
            steps = c.execute(sa.select(journey_steps.c.node_id, sa.func.count()).where(
                journey_steps.c.journey_id == jid).group_by(journey_steps.c.node_id)).all()
            msgs = c.execute(sa.select(messages.c.status, sa.func.count()).group_by(messages.c.status)).all()
        assert dict(steps) == {"start": n, "hello": n, "tag": n}  # every step once
        assert dict(msgs) == {"sent": n}
        assert JourneyService(gk).stats(ws, jid)["totals"] == {"entered": n, "active": 0, "exited": n, "converted": 0}
    finally:
        gk.close()
