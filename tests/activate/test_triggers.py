"""Triggers on the real stores: real-time firing through /v1/track (once per window, guardrails
respected), a profile-state trigger, the abandoned-cart timer, date triggers in the customer's time
zone, and bad definitions refused at save."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import sqlalchemy as sa

from goldkey.activate.triggers import FiringWindow, TriggerDefinition, TriggerService, _occurrence
from goldkey.govern.consent import set_consent
from goldkey.store.operational import messages, trigger_firings

OFFER = {"template_id": "data_pack",
         "variants": {"zh": {"text": "{{ attributes.name }}，流量已用 75%，加购流量包立减 5 元"}}}
DATA_EVENT = {"kind": "event", "event": "Data Usage",
              "where": [{"property": "data_used_pct", "op": "gte", "value": 75}]}


def mount(app: Any) -> None:
    """Mount the campaigns/triggers router before the console's catch-all route."""
    from goldkey.api import campaigns as api
    from goldkey.api.console import _is_console

    if any(getattr(r, "path", "") == "/api/v1/triggers" for r in app.routes):
        return
    app.include_router(api.router)
    routes = app.router.routes
    for r in [r for r in routes if _is_console(r)]:
        routes.remove(r)
        routes.append(r)


def pids_by_user(env: Any, n: int) -> list[str]:
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.text("SELECT id_value, profile_id FROM identities WHERE workspace_id = :w "
                                 "AND id_type = 'user_id'"), {"w": env.ws.workspace_id}).all()
    by = dict(rows)
    return [by[f"u{i}"] for i in range(n)]


def make_profiles(env: Any, n: int) -> list[str]:
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"name": f"客户{i}", "phone": f"+86138{i:08d}"}}
             for i in range(n)]
    assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    return pids_by_user(env, n)


def grant(env: Any, pids: list[str]) -> None:
    for p in pids:
        set_consent(env.gk.engine, env.ws.workspace_id, p, "sms", "granted")


def sink(env: Any, tmp_path: Path) -> tuple[str, Path]:
    # a file name: the sink writes it in the workspace's folder of the channel-files directory
    ch = env.gk.sender.channels.save(env.ws.workspace_id, name="sink", kind="sink",
                                     config={"path": "sink.jsonl", "simulates": "sms", "cost_per_message": 0.05})
    return str(ch["channel_id"]), env.gk.sender.channels.file_path(env.ws.workspace_id, ch["config"]["path"])


@pytest.fixture
def svc(env: Any) -> Iterator[TriggerService]:
    mount(env.client.app)
    env.gk.sender.guardrails.set_policy(env.ws.workspace_id, {"quiet_hours": None, "caps": {}})
    s = getattr(env.gk, "triggers", None)
    if s is None:
        s = TriggerService.from_goldkey(env.gk)
        s.attach(env.gk.writer)
        env.gk.triggers = s
    else:
        s.stop()  # the runtime's worker and timer: these tests drive the rounds themselves
    yield s
    s.stop()


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def track(env: Any, user: str, event: str, **props: Any) -> None:
    r = env.post("/v1/track", {"userId": user, "event": event, "properties": props})
    assert r.status_code == 200, r.text


def test_realtime_trigger_fires_once_per_window_and_respects_guardrails(env: Any, svc: TriggerService,
                                                                        tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    pids = make_profiles(env, 3)
    grant(env, pids[:2])  # u2 has no consent
    env.gk.sender.guardrails.suppress(ws, [pids[1]], "sms", "complained")
    cid, out = sink(env, tmp_path)
    r = env.client.post("/api/v1/triggers", headers=env.admin_auth(), json={
        "name": "流量 75% 提醒", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid, "template": OFFER,
        "window": {"unit": "month", "timezone": "Asia/Shanghai"}})
    assert r.status_code == 201, r.text
    tid = r.json()["trigger_id"]
    track(env, "u0", "Data Usage", data_used_pct=50)  # below the threshold
    svc.drain()
    assert not out.exists()
    track(env, "u0", "Data Usage", data_used_pct=80)
    track(env, "u1", "Data Usage", data_used_pct=90)
    track(env, "u2", "Data Usage", data_used_pct=99)
    svc.drain()
    got = lines(out)
    assert [x["profile_id"] for x in got] == [pids[0]] and "75%" in got[0]["text"]
    track(env, "u0", "Data Usage", data_used_pct=95)  # the same month: never a second offer
    track(env, "u0", "Data Usage", data_used_pct=99)
    svc.drain()
    assert len(lines(out)) == 1
    page = env.client.get(f"/api/v1/triggers/{tid}/firings", headers=env.admin_auth()).json()
    by = {f["profile_id"]: f for f in page["items"]}
    assert page["total"] == 3
    month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("m:%Y-%m")
    assert by[pids[0]]["status"] == "queued" and by[pids[0]]["window_key"] == month
    assert by[pids[0]]["latency_ms"] is not None and by[pids[0]]["latency_ms"] > 0
    assert by[pids[1]]["status"] == "suppressed" and by[pids[1]]["reason"] == "suppressed: complained"
    assert by[pids[2]]["status"] == "suppressed" and by[pids[2]]["reason"] == "no consent for sms/marketing"
    # granting consent later does not re-fire in this window: at most once per customer and window
    grant(env, [pids[2]])
    track(env, "u2", "Data Usage", data_used_pct=100)
    svc.drain()
    assert len(lines(out)) == 1
    with env.gk.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(trigger_firings)).scalar() == 3
    listed = env.client.get("/api/v1/triggers", headers=env.admin_auth()).json()
    assert listed[0]["firings"] == {"queued": 1, "suppressed": 2}


def test_consent_of_the_same_commit_counts_and_history_triggers_see_the_event(env: Any, svc: TriggerService,
                                                                            tmp_path: Path) -> None:
    """A trigger that reads only the profile is matched as soon as the operational commit is done
    (Writer.early_listeners), after the consent that commit carried is on record, while the events are
    still being appended to the event log; a trigger with an event-history clause is matched once they
    are in it (Writer.listeners), so the event that fired it is counted. Probes listening after each
    phase see what the triggers' listeners saw; the outcomes follow."""
    ws = env.ws.workspace_id
    w = env.gk.writer
    pids = make_profiles(env, 4)
    grant(env, [pids[0], pids[2], pids[3]])
    cid, out = sink(env, tmp_path)
    svc.create(ws, {"name": "流量 75%", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid,
                    "template": OFFER, "window": {"unit": "month"}})
    svc.create(ws, {"name": "两次用包", "kind": "realtime", "channel_id": cid, "template": OFFER,
                    "event": {"kind": "event", "event": "Pack Used"},
                    "condition": {"kind": "event", "event": "Pack Used", "count": {"op": "at_least", "n": 2},
                                  "window": {"last_days": 1}},
                    "window": {"unit": "day"}})
    seen: dict[str, list[Any]] = {"early": [], "late": []}
    hits: list[str] = []

    class Recording(queue.SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is not None:
                hits.append(item.trigger.d.name)
            super().put(item, block, timeout)

    svc._queue = Recording()  # the worker is stopped: drain() reads this queue

    def probe(phase: str) -> Any:
        def look(stored: list[Any]) -> None:
            mids = [ev.message_id for _, _, ev in stored]
            with env.gk.engine.connect() as c:
                consent = dict(c.execute(sa.text(
                    "SELECT profile_id, status FROM consents WHERE channel = 'sms'")).all())
            logged = env.gk.analytical.query("SELECT count(*) FROM events WHERE message_id IN (SELECT unnest(?))",
                                             [mids])[0][0]
            queued = sorted(hits)
            seen[phase].append((consent, logged, len(mids), queued))
        return look

    w.early_listeners.append(probe("early"))
    w.listeners.append(probe("late"))
    try:
        batch = [{"type": "identify", "userId": "u0", "traits": {"consent": {"sms": False}}},
                 {"type": "track", "userId": "u0", "event": "Data Usage", "properties": {"data_used_pct": 90}},
                 {"type": "identify", "userId": "u1", "traits": {"consent": {"sms": True}}},
                 {"type": "track", "userId": "u1", "event": "Data Usage", "properties": {"data_used_pct": 90}},
                 {"type": "track", "userId": "u2", "event": "Pack Used"},
                 {"type": "track", "userId": "u2", "event": "Pack Used"},
                 {"type": "track", "userId": "u3", "event": "Pack Used"}]
        assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    finally:
        w.early_listeners.pop()
        w.listeners.pop()
    (consent, logged, n, queued), = seen["early"]
    assert consent[pids[0]] == "denied" and consent[pids[1]] == "granted"  # recorded before the triggers' turn
    assert n == 7 and logged == 0  # the events were not in the event log yet
    assert queued == ["流量 75%", "流量 75%"]  # the profile-only trigger matched already
    (_, logged, _, queued), = seen["late"]
    assert logged == 7 and queued.count("两次用包") == 3  # the history trigger matched once they were
    svc.drain()
    # the opt-out of the same commit stopped u0's offer, the grant let u1's through; u2 used a pack
    # twice (both uses counted), u3 once
    assert sorted(x["profile_id"] for x in lines(out)) == sorted([pids[1], pids[2]])


def test_an_opt_out_between_queueing_and_sending_stops_the_message(env: Any, svc: TriggerService,
                                                                   tmp_path: Path) -> None:
    """The real-time round only reserves (firing + queued message, consent checked); the delivery
    re-checks consent and suppressions, so a customer who opts out meanwhile gets nothing, and the
    cap unit is given back."""
    ws = env.ws.workspace_id
    env.gk.sender.guardrails.set_policy(ws, {"quiet_hours": None, "caps": {"*": {"day": 3}}})
    pids = make_profiles(env, 3)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    t = svc.create(ws, {"name": "流量 75%", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid,
                        "template": OFFER, "window": {"unit": "month"}})
    for i in range(3):
        track(env, f"u{i}", "Data Usage", data_used_pct=80 + i)
    svc.drain(deliver=False)  # reserved, not sent
    with env.gk.engine.connect() as c:
        queued = dict(c.execute(sa.select(messages.c.profile_id, messages.c.status)).all())
        counted = dict(c.execute(sa.text("SELECT profile_id, count FROM send_counters")).all())
    assert queued == {p: "queued" for p in pids} and counted == {p: 1 for p in pids}
    assert not out.exists()
    set_consent(env.gk.engine, ws, pids[1], "sms", "denied")  # opts out before the delivery
    env.gk.sender.guardrails.suppress(ws, [pids[2]], "*", "complained")
    svc.drain()
    assert [x["profile_id"] for x in lines(out)] == [pids[0]]
    with env.gk.engine.connect() as c:
        rows = {r.profile_id: r for r in c.execute(sa.select(messages.c.profile_id, messages.c.status,
                                                             messages.c.reason))}
        counted = dict(c.execute(sa.text("SELECT profile_id, count FROM send_counters")).all())
        firings = dict(c.execute(sa.select(trigger_firings.c.profile_id, trigger_firings.c.status)).all())
    assert rows[pids[0]].status == "sent"
    assert rows[pids[1]].status == "failed" and "opted out of sms/marketing" in rows[pids[1]].reason
    assert rows[pids[2]].status == "failed" and "suppressed: complained" in rows[pids[2]].reason
    assert counted == {pids[0]: 1, pids[1]: 0, pids[2]: 0}  # the cap units of unsent messages are given back
    assert firings == {p: "queued" for p in pids}  # and they do not fire again this month
    track(env, "u1", "Data Usage", data_used_pct=99)
    svc.drain()
    assert len(lines(out)) == 1
    failed = env.gk.analytical.query(
        "SELECT count(*) FROM events WHERE event = 'Message Failed' AND properties LIKE '%send-check%'")
    assert failed == [(2,)]
    assert svc.get(ws, t["trigger_id"])["firings"] == {"queued": 3}


def test_messages_left_queued_are_delivered_once_after_a_restart(env: Any, svc: TriggerService,
                                                                 tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    pids = make_profiles(env, 2)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    svc.create(ws, {"name": "流量 75%", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid,
                    "template": OFFER})
    track(env, "u0", "Data Usage", data_used_pct=80)
    track(env, "u1", "Data Usage", data_used_pct=90)
    svc.drain(deliver=False)  # reserved; the process stops before its delivery worker sent them
    fresh = TriggerService.from_goldkey(env.gk)  # the next process: nothing in its memory
    assert fresh.deliver_pending() == 2
    assert sorted(x["profile_id"] for x in lines(out)) == sorted(pids)
    assert fresh.deliver_pending() == 0
    svc.drain()  # the first process's hand-over, if it ever ran, finds them sent: never twice
    assert len(lines(out)) == 2


def test_profile_state_trigger_in_the_background_worker(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    pids = make_profiles(env, 2)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    env.post("/v1/identify", {"userId": "u0", "traits": {"balance": 20}})
    svc.create(ws, {"name": "余额不足", "kind": "realtime", "channel_id": cid,
                    "condition": {"kind": "attribute", "field": "attributes.balance", "op": "lt", "value": 5},
                    "template": {"variants": {"zh": {"text": "余额 {{ attributes.balance }} 元，请及时充值"}}}})
    svc.start()
    seen = {since: _latency_count(since) for since in ("received", "committed")}
    env.post("/v1/identify", {"userId": "u0", "traits": {"balance": 3.5}})
    env.post("/v1/identify", {"userId": "u1", "traits": {"balance": 8}})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not lines(out):
        time.sleep(0.05)
    time.sleep(0.3)
    got = lines(out)
    assert [x["profile_id"] for x in got] == [pids[0]] and "3.5" in got[0]["text"]
    assert len(svc.latencies_ms) == 1 and len(svc.received_latencies_ms) == 1 and svc.last_error is None
    # the firing's latency, from the API's receipt and from the commit, is on /metrics for operators
    assert {since: _latency_count(since) - n for since, n in seen.items()} == {"received": 1, "committed": 1}
    assert svc.received_latencies_ms[0] >= svc.latencies_ms[0] > 0
    text = env.client.get("/metrics").text
    assert 'goldkey_trigger_latency_seconds_bucket{le="0.05",since="received"}' in text


def _latency_count(since: str) -> float:
    from goldkey.ops.metrics import METRICS

    return METRICS.registry.get_sample_value("goldkey_trigger_latency_seconds_count", {"since": since}) or 0.0


def test_abandoned_cart_fires_only_without_the_follow_up(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    pids = make_profiles(env, 4)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    track(env, "u0", "Product Added", sku="lens-1")  # abandons the cart
    track(env, "u1", "Product Added", sku="lens-1")
    track(env, "u1", "Order Completed", revenue=199)  # buys: no reminder
    track(env, "u2", "Order Completed", revenue=50)
    track(env, "u2", "Product Added", sku="care-2")  # an order BEFORE the cart does not cancel it
    track(env, "u3", "Product Added", sku="gift", gift=True)  # filtered out by the trigger's where
    t = svc.create(ws, {"name": "购物车提醒", "kind": "after_event", "channel_id": cid,
                        "after": {"event": {"kind": "event", "event": "Product Added",
                                            "where": [{"property": "gift", "op": "is_not_set", "type": "boolean"}]},
                                  "minutes": 30, "without": {"kind": "event", "event": "Order Completed"}},
                        "template": {"variants": {"zh": {"text": "您的购物车还有商品"}}}})
    now = datetime.now(UTC)
    assert svc.tick(now + timedelta(minutes=10)) == {t["trigger_id"]: 0}  # not yet 30 minutes
    assert not out.exists()
    assert svc.tick(now + timedelta(minutes=31)) == {t["trigger_id"]: 2}
    assert sorted(x["profile_id"] for x in lines(out)) == sorted([pids[0], pids[2]])
    assert svc.tick(now + timedelta(minutes=32)) == {t["trigger_id"]: 0}  # once
    assert len(lines(out)) == 2
    # much later than max_delay_minutes: an old cart is not reminded after an outage
    track(env, "u3", "Product Added", sku="lens-9")
    assert svc.tick(now + timedelta(days=3)) == {t["trigger_id"]: 0}


def test_birthday_and_renewal_in_the_customers_time_zone(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    now = datetime(2026, 6, 10, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai, 04:00 in London, 23:00 (9 June) in New York
    users = [("u0", "1990-06-10", "Asia/Shanghai"), ("u1", "1985-06-10", "America/New_York"),
             ("u2", "1992-06-11", "Asia/Shanghai"), ("u3", "1988-06-10", "Europe/London")]
    batch = [{"type": "identify", "userId": u, "traits": {"name": u, "phone": f"+8613800000{i:03d}", "birthday": b,
                                                           "timezone": tz, "plan_renewal_at": "2026-06-13"}}
             for i, (u, b, tz) in enumerate(users)]
    assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    pids = pids_by_user(env, 4)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    bday = svc.create(ws, {"name": "生日祝福", "kind": "date", "channel_id": cid, "purpose": "marketing",
                           "date": {"field": "attributes.birthday", "yearly": True, "time_of_day": "09:00"},
                           "template": {"variants": {"zh": {"text": "生日快乐"}}}})
    renew = svc.create(ws, {"name": "续费提醒", "kind": "date", "channel_id": cid,
                            "date": {"field": "attributes.plan_renewal_at", "days_before": 3, "time_of_day": "08:00"},
                            "template": {"variants": {"zh": {"text": "套餐 3 天后到期"}}}})
    fired = svc.tick(now)
    # u0: 10 June 11:00 local, after 09:00; u1: still 9 June in New York; u2: tomorrow; u3: 04:00 < 09:00
    assert fired[bday["trigger_id"]] == 1
    # renewal 13 June, 3 days before = 10 June: reached 08:00 in Shanghai (u0, u2), not in New York or London
    assert fired[renew["trigger_id"]] == 2
    assert svc.tick(now + timedelta(minutes=1))[bday["trigger_id"]] == 0  # once per occurrence
    later = svc.tick(now + timedelta(hours=15))  # 09:00 in New York on 10 June, 19:00 in London
    assert later[bday["trigger_id"]] == 2
    with env.gk.engine.connect() as c:
        keys = dict(c.execute(sa.select(trigger_firings.c.profile_id, trigger_firings.c.window_key).where(
            trigger_firings.c.trigger_id == bday["trigger_id"])).all())
    assert keys == {pids[0]: "date:2026-06-10", pids[1]: "date:2026-06-10", pids[3]: "date:2026-06-10"}
    with env.gk.engine.connect() as c:
        refs = c.execute(sa.select(messages.c.ref, sa.func.count()).group_by(messages.c.ref)).all()
    assert dict(refs) == {f"trigger:{bday['trigger_id']}": 3, f"trigger:{renew['trigger_id']}": 4}


def test_windows_and_occurrences() -> None:
    w = FiringWindow(unit="week", timezone="Asia/Shanghai")
    assert w.key(datetime(2026, 11, 22, 17, 0, tzinfo=UTC)) == "w:2026-W48"  # Monday 01:00 in Shanghai
    assert FiringWindow(unit="day", timezone="UTC").key(datetime(2026, 1, 1, tzinfo=UTC)) == "d:2026-01-01"
    assert FiringWindow(unit="ever").key(datetime.now(UTC)) == "ever"
    from datetime import date

    assert _occurrence(date(2000, 2, 29), date(2027, 2, 28), True, 0) == date(2027, 2, 28)
    assert _occurrence(date(2000, 2, 29), date(2028, 2, 28), True, 0) is None  # leap year: the 29th
    assert _occurrence(date(2026, 7, 1), date(2026, 6, 24), False, 7) == date(2026, 7, 1)


def test_bad_trigger_definitions_are_refused(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    make_profiles(env, 1)
    cid, _ = sink(env, tmp_path)
    h = env.admin_auth()

    def post(d: dict[str, Any]) -> Any:
        return env.client.post("/api/v1/triggers", json={"name": "t", "channel_id": cid, "template": OFFER, **d},
                               headers=h)

    r = post({"kind": "realtime"})
    assert r.status_code == 400 and "needs an event condition" in r.json()["error"]
    r = post({"kind": "realtime", "condition": {"kind": "attribute", "field": "attributes.balence", "op": "lt",
                                                "value": 5}})
    assert r.status_code == 400 and r.json()["field"] == "condition.field", r.text
    r = post({"kind": "realtime", "event": {"kind": "event", "event": "Data Usage", "window": {"last_days": 3}}})
    assert r.status_code == 400 and "matches one event" in r.json()["error"]
    bad = {"variants": {"zh": {"text": "{{ attributes.x }}"}}}
    r = post({"kind": "realtime", "event": DATA_EVENT, "template": bad})
    assert r.status_code == 400 and r.json()["field"] == "template.variants.zh.text"
    r = post({"kind": "date", "date": {"field": "attributes.name"}})
    assert r.status_code == 400 and "needs a datetime field" in r.json()["error"]
    r = post({"kind": "realtime", "event": DATA_EVENT, "channel_id": "chn_nope"})
    assert r.status_code == 400 and r.json()["field"] == "channel_id"
    r = post({"kind": "realtime", "event": DATA_EVENT, "window": {"unit": "fortnight"}})
    assert r.status_code == 400 and r.json()["field"] == "window.unit"
    assert env.client.get("/api/v1/triggers", headers=h).json() == []
    assert post({"kind": "realtime", "event": DATA_EVENT}).status_code == 201
    assert post({"kind": "realtime", "event": DATA_EVENT}).status_code == 409


def test_trigger_holdout_gets_no_message_and_the_report_measures_uplift(env: Any, svc: TriggerService,
                                                                         tmp_path: Path) -> None:
    """A trigger's control group: the same customers are held out in every window (recorded as
    fired, never messaged), and the report compares conversions after each firing, treated vs
    holdout, with the interval."""
    from goldkey.activate.campaigns import hash_unit, newcombe_diff

    ws = env.ws.workspace_id
    n = 60
    pids = make_profiles(env, n)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    h = env.admin_auth()
    r = env.client.post("/api/v1/triggers", headers=h, json={
        "name": "流量包 with holdout", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid, "template": OFFER,
        "window": {"unit": "month"}, "holdout_pct": 30,
        "conversion": {"order": True, "attribution_days": 7}})
    assert r.status_code == 201, r.text
    tid = r.json()["trigger_id"]
    expected_held = {p for p in pids if hash_unit(tid, p) < 0.30}
    assert 5 < len(expected_held) < n - 5
    for i in range(n):
        track(env, f"u{i}", "Data Usage", data_used_pct=80)
    svc.drain()
    firings = env.client.get(f"/api/v1/triggers/{tid}/firings", headers=h, params={"limit": 1000}).json()["items"]
    held = {f["profile_id"] for f in firings if f["status"] == "holdout"}
    assert held == expected_held
    assert all(f["message_id"] is None for f in firings if f["status"] == "holdout")
    messaged = {x["profile_id"] for x in lines(out)}
    assert messaged == set(pids) - expected_held  # everyone else, nobody held out

    # responses: 10 treated and 2 held-out customers buy after the firing; one treated customer's
    # order from before the firing does not count
    by_pid = dict(zip(pids, (f"u{i}" for i in range(n)), strict=True))
    treated = sorted(set(pids) - expected_held)
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    rows = ["order_id,ordered_at,user_id,sku,category,quantity,unit_price,line_amount"]
    for k, p in enumerate(treated[:10] + sorted(expected_held)[:2]):
        rows.append(f"O{k},{later},{by_pid[p]},DP-3G,data_pack,1,20,20")
    rows.append(f"OLD,{earlier},{by_pid[treated[20]]},DP-3G,data_pack,1,20,20")
    orders = tmp_path / "orders.csv"
    orders.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert env.gk.importer.run(ws, "orders", orders, {}).accepted == 13

    rep = env.client.get(f"/api/v1/triggers/{tid}/report", headers=h)
    assert rep.status_code == 200, rep.text
    rep = rep.json()
    arms = {a["arm"]: a for a in rep["arms"]}
    n1, n0 = n - len(expected_held), len(expected_held)
    assert arms["treated"]["firings"] == n1 and arms["holdout"]["firings"] == n0
    assert arms["treated"]["messaged"] == n1
    assert arms["treated"]["converted"] == 10 and arms["holdout"]["converted"] == 2
    assert arms["treated"]["revenue"] == 200.0 and arms["holdout"]["revenue"] == 40.0
    diff, lo, hi = newcombe_diff(10, n1, 2, n0)
    assert rep["uplift"]["available"] and rep["uplift"]["uplift"] == round(diff, 6)
    assert rep["uplift"]["uplift_ci95"] == [round(lo, 6), round(hi, 6)]
    assert rep["window_complete"] is False

    # another month: the same customers are held out again
    later_month = datetime.now(UTC) + timedelta(days=40)
    assert set(held_out_again(svc, ws, tid, pids, later_month)) == expected_held


def held_out_again(svc: TriggerService, ws: str, tid: str, pids: list[str], at: datetime) -> list[str]:
    """Fire the trigger for ``pids`` in the window holding ``at``; the ones held out there."""
    t = svc.compile(ws, tid, TriggerDefinition.model_validate_json(svc._row(ws, tid).definition))
    svc.fire(t, pids, {t.d.window.key(at): pids}, at)
    page = svc.firings(ws, tid, limit=1000)["items"]
    return [f["profile_id"] for f in page if f["status"] == "holdout" and f["window_key"] == t.d.window.key(at)]


def test_trigger_report_needs_a_conversion_goal(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    make_profiles(env, 1)
    cid, _ = sink(env, tmp_path)
    h = env.admin_auth()
    tid = env.client.post("/api/v1/triggers", headers=h, json={
        "name": "no goal", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid,
        "template": OFFER}).json()["trigger_id"]
    r = env.client.get(f"/api/v1/triggers/{tid}/report", headers=h)
    assert r.status_code == 400 and "conversion" in r.text
    bad = env.client.post("/api/v1/triggers", headers=h, json={
        "name": "bad holdout", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid, "template": OFFER,
        "holdout_pct": 95})
    assert bad.status_code == 400 and "holdout_pct" in bad.text


def test_the_window_firings_lookup_is_by_primary_key_per_profile(env: Any) -> None:
    """The reservation reads the audience's firings in the window under the workspace lock on every
    real-time round: a primary-key lookup per audience profile, never a read of every firing of the
    trigger (which grows with every month the trigger runs)."""
    from goldkey.activate.guardrails import fill_audience
    from goldkey.activate.triggers import _FIRED

    with env.gk.engine.begin() as c:
        fill_audience(c, ["p1", "p2"])
        sql, order, fixed = _FIRED._compiled_for(c.dialect)
        values = {**fixed, "ws": "w", "tid": "t", "window_key": "m:2026-11"}
        plan = " | ".join(r[3] for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql,
                                                           tuple(values[k] for k in order)))
    assert "trigger_firings" in plan and "profile_id=? AND window_key=?" in plan, plan


def _sink_trigger(env: Any, tmp_path: Path, customers: int, unit: str) -> tuple[list[str], Path, dict[str, Any], str]:
    """``customers`` consented customers and a real-time data-usage trigger to a file sink, created
    through the API with a ``unit`` window: (profile ids, the sink's file, the body, trigger id)."""
    pids = make_profiles(env, customers)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    body = {"name": "流量提醒", "kind": "realtime", "event": DATA_EVENT, "channel_id": cid, "template": OFFER,
            "window": {"unit": unit, "timezone": "Asia/Shanghai"}}
    r = env.client.post("/api/v1/triggers", headers=env.admin_auth(), json=body)
    assert r.status_code == 201, r.text
    return pids, out, body, r.json()["trigger_id"]


def test_a_trigger_can_be_paused_resumed_edited_and_deleted(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    """Before, a trigger could only be created: one firing real sends could not be stopped, fixed or
    removed, and its name could not be used again for a corrected one."""
    h = env.admin_auth()
    pids, out, body, tid = _sink_trigger(env, tmp_path, 5, "month")
    r = env.client.post(f"/api/v1/triggers/{tid}/pause", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "paused" and r.json()["definition"]["active"] is False
    # a paused trigger's definition, read back, edited and sent again, stays paused (before: its
    # stored "active": true switched it back on, and neither the answer nor the audit said so)
    edited = {**r.json()["definition"], "vars": {"pack": "5 GB"}}
    r = env.client.put(f"/api/v1/triggers/{tid}", headers=h, json=edited)
    assert (r.json()["status"], r.json()["changed"]) == ("paused", ["vars"]), r.text
    r = env.client.put(f"/api/v1/triggers/{tid}", headers=h, json=body)  # no "active": the status stays
    assert (r.json()["status"], r.json()["changed"]) == ("paused", ["vars"]), r.text
    track(env, "u0", "Data Usage", data_used_pct=80)  # paused: no firing
    svc.drain()
    assert not out.exists()
    assert env.client.post(f"/api/v1/triggers/{tid}/resume", headers=h).json()["status"] == "active"
    track(env, "u1", "Data Usage", data_used_pct=80)
    svc.drain()
    assert [x["profile_id"] for x in lines(out)] == [pids[1]]
    # an edit: the threshold goes up to 95 %; checked as on create, firings stay with the trigger
    stricter = {**body, "event": {**DATA_EVENT, "where": [{"property": "data_used_pct", "op": "gte", "value": 95}]}}
    r = env.client.put(f"/api/v1/triggers/{tid}", headers=h, json=stricter)
    assert r.status_code == 200 and r.json()["changed"] == ["event"], r.text
    bad = env.client.put(f"/api/v1/triggers/{tid}", headers=h, json={**body, "channel_id": "chn_nope"})
    assert bad.status_code == 400 and env.client.get(f"/api/v1/triggers/{tid}", headers=h).json()["definition"][
        "event"]["where"][0]["value"] == 95
    track(env, "u2", "Data Usage", data_used_pct=90)  # below the new threshold
    track(env, "u1", "Data Usage", data_used_pct=99)  # fired in this window already
    svc.drain()
    assert len(lines(out)) == 1
    # deleted with a message queued and not sent: it is not sent; the firings stay
    track(env, "u3", "Data Usage", data_used_pct=99)
    svc.drain(deliver=False)
    r = env.client.delete(f"/api/v1/triggers/{tid}", headers=h)
    assert r.status_code == 200 and r.json()["queued_messages_not_sent"] == 1, r.text
    assert svc.deliver_pending() == 0 and len(lines(out)) == 1
    with env.gk.engine.connect() as c:
        st = c.execute(sa.select(messages.c.status, messages.c.reason).where(
            messages.c.profile_id == pids[3])).one()
        assert tuple(st) == ("failed", "trigger deleted before sending")
        assert c.execute(sa.select(sa.func.count()).select_from(trigger_firings).where(
            trigger_firings.c.trigger_id == tid)).scalar() == 2
    assert env.client.get(f"/api/v1/triggers/{tid}", headers=h).status_code == 404
    assert env.client.post("/api/v1/triggers", headers=h, json=body).status_code == 201  # the name is free
    actions = [e["action"] for e in env.client.get("/api/v1/workspace/audit", headers=h).json()["items"]]
    assert {"trigger.pause", "trigger.resume", "trigger.update", "trigger.delete"} <= set(actions)


def test_a_round_compiled_before_a_delete_or_pause_reserves_nothing_after_it(env: Any, svc: TriggerService,
                                                                             tmp_path: Path) -> None:
    """A round holds the trigger compiled from before a delete or a pause. Under PostgreSQL's MVCC
    the delete did not wait for the round, which then queued messages for a deleted trigger that
    nothing would ever send or fail. Deletes and status changes now take the workspace's reservation
    lock, and a round checks the trigger under it."""
    h = env.admin_auth()
    pids, out, _body, tid = _sink_trigger(env, tmp_path, 3, "day")
    now = datetime.now(UTC)
    compiled = next(t for t in svc.active(env.ws.workspace_id) if t.trigger_id == tid)
    key = compiled.d.window.key(now)
    assert env.client.post(f"/api/v1/triggers/{tid}/pause", headers=h).status_code == 200
    assert svc.fire(compiled, [pids[0]], {key: [pids[0]]}, now) == 0  # paused in between: no firing
    assert env.client.delete(f"/api/v1/triggers/{tid}", headers=h).status_code == 200
    assert svc.fire(compiled, [pids[1]], {key: [pids[1]]}, now) == 0  # deleted in between
    with env.gk.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(messages).where(
            messages.c.ref == f"trigger:{tid}")).scalar() == 0
        assert c.execute(sa.select(sa.func.count()).select_from(trigger_firings).where(
            trigger_firings.c.trigger_id == tid)).scalar() == 0
    assert not out.exists()


def test_goldkeys_own_events_fire_real_time_triggers(env: Any, svc: TriggerService, tmp_path: Path) -> None:
    """A model run's Lifecycle Stage Changed, a Tag Changed or a segment_entered is written straight
    to the event log, not through the writer's commits: before, a real-time trigger on one never
    fired (the lifecycle doc calls "moved back to active" a one-clause trigger rule)."""
    from goldkey.audience.common import emit_events

    pids = make_profiles(env, 4)
    grant(env, pids)
    cid, out = sink(env, tmp_path)
    event = {"kind": "event", "event": "Lifecycle Stage Changed", "where": [
        {"property": "from", "op": "eq", "value": "at_risk"}, {"property": "to", "op": "eq", "value": "active"}]}
    r = env.client.post("/api/v1/triggers", headers=env.admin_auth(), json={
        "name": "欢迎回来", "kind": "realtime", "event": event, "channel_id": cid, "template": OFFER})
    assert r.status_code == 201, r.text
    svc.reload()
    ws = env.ws.workspace_id
    with env.gk.analytical.transaction() as con:
        emit_events(env.gk.analytical, con, ws, [
            (pids[0], "Lifecycle Stage Changed", {"from": "at_risk", "to": "active"}),
            (pids[1], "Lifecycle Stage Changed", {"from": "active", "to": "at_risk"}),
            (pids[1], "Lifecycle Stage Changed", {"from": None, "to": "active"}),  # a first assignment
            (pids[2], "Tag Changed", {"tag": "lifecycle_stage", "to": "active"})], "insight")
    try:
        with env.gk.analytical.transaction() as con:  # rolled back: nothing fires
            emit_events(env.gk.analytical, con, ws, [(pids[3], "Lifecycle Stage Changed", {"to": "active"})], "insight")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    svc.drain()
    sent = lines(out)
    assert [m["profile_id"] for m in sent] == [pids[0]], sent
