"""Journey engine benchmark: customer-steps per second through the durable runner.

Goal (reported, not asserted): the engine advances at least 5,000 customer-steps per second.

A customer-step is one node a customer passes: one ``journey_steps`` row written and the customer's
``journey_states`` row moved, in the same transaction. The journey is
``entry (event) -> condition (profile.origin / attributes.city rule) -> split 50/50 -> wait 1 h ->
exit``, so a customer takes 5 steps: 3 in the first round (entry, condition, split; arriving at the
wait), 2 after the wait (wait over, exit). Profiles come through the tracking API (``/v1/batch``
identify calls in-process); the admission is ``JourneyEngine.enter`` (what an event, segment or
trigger entry calls); the rounds are ``JourneyEngine.run_once`` on the real SQLite + DuckDB files.

A second, smaller run times a send node (sink channel: guardrails, message log, rendering, delivery)
to show what an effect step costs; the sender, not the journey engine, bounds that figure.

Usage::

    python benchmarks/bench_journeys.py [--customers 20000] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import check_noise, emit_summary, machine_line  # noqa: E402

TARGET = 5000.0


def make_profiles(client: Any, write_key: str, n: int) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}
    for k in range(0, n, 500):
        batch = [{"type": "identify", "userId": f"u{i}",
                  "traits": {"name": f"客户{i}", "phone": f"+86138{i:08d}", "city": ["上海", "北京", "广州"][i % 3]}}
                 for i in range(k, min(n, k + 500))]
        r = client.post("/v1/batch", json={"batch": batch}, headers=auth)
        assert r.status_code == 200, r.text


def node(nid: str, type_: str, **config: Any) -> dict[str, Any]:
    return {"id": nid, "type": type_, "config": config}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--sends", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 3000 if args.quick else args.customers
    sends = 300 if args.quick else args.sends

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
    from goldkey.store.operational import profiles

    print(machine_line())
    check_noise()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gk-bench-journeys-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp) / "data", group_commit_wait_ms=1.0))
        try:
            ws_new = gk.workspaces.create("bench-journeys")
            ws = ws_new.workspace_id
            with TestClient(create_app(gk=gk)):
                t0 = time.perf_counter()
                make_profiles(TestClient(create_app(gk=gk)), ws_new.write_key, n)
                print(f"{n:,} profiles through /v1/batch in {time.perf_counter() - t0:.1f}s")
            with gk.engine.connect() as c:
                pids = list(c.execute(sa.select(profiles.c.profile_id).where(
                    profiles.c.workspace_id == ws)).scalars())
            # the runtime runs its own journey engine thread; the benchmark drives the rounds itself,
            # so that runner stops first (two runners on one store refuse each other's moves)
            if gk.journey_engine is not None:
                gk.journey_engine.stop()
            svc = gk.journeys or JourneyService(gk)
            eng = JourneyEngine.from_goldkey(gk, batch=5000)
            graph = {"nodes": [
                node("start", "entry", kind="event", event={"kind": "event", "event": "Signed Up"}),
                node("sh", "condition", rule={"kind": "or", "conditions": [
                    {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"},
                    {"kind": "attribute", "field": "profile.origin", "op": "eq", "value": "existing"}]}),
                node("ab", "split", branches=[{"key": "A", "weight": 1}, {"key": "B", "weight": 1}]),
                node("w", "wait", duration={"hours": 1}), node("done", "exit")],
                "edges": [{"source": "start", "target": "sh"}, {"source": "sh", "target": "ab", "label": "yes"},
                          {"source": "sh", "target": "ab", "label": "no"},
                          {"source": "ab", "target": "w", "label": "A"}, {"source": "ab", "target": "w", "label": "B"},
                          {"source": "w", "target": "done"}]}
            jid = svc.create(ws, {"name": "bench", "graph": graph})["journey_id"]
            svc.publish(ws, jid)
            cj = eng.compiled(ws, jid, 1)
            now = utcnow()
            t0 = time.perf_counter()
            entered = eng.enter(cj, pids, now)
            t_enter = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = eng.run_once(now)
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            second = eng.run_once(now + timedelta(hours=2))
            t_second = time.perf_counter() - t0
            steps = entered + first + second
            took = t_enter + t_first + t_second
            stats = svc.stats(ws, jid)
            assert stats["totals"]["exited"] == n, stats["totals"]
            rate = steps / took
            print(f"admission: {entered:,} customers in {t_enter:.2f}s ({entered / t_enter:,.0f}/s)")
            print(f"round 1 (condition, split, arrive at wait): {first:,} steps in {t_first:.2f}s "
                  f"({first / t_first:,.0f}/s)")
            print(f"round 2 (wait over, exit): {second:,} steps in {t_second:.2f}s ({second / t_second:,.0f}/s)")
            verdict = "meets" if rate >= TARGET else "misses"
            print(f"journey engine: {steps:,} customer-steps in {took:.2f}s = {rate:,.0f} customer-steps/s "
                  f"({verdict} the {TARGET:,.0f}/s goal)")
            rows.append({"step": "pure steps", "customers": n, "steps": steps, "seconds": round(took, 3),
                         "steps_per_second": round(rate)})

            # an effect: a send node to a sink channel
            out = Path(tmp) / "sink.jsonl"
            ch = gk.sender.channels.save(ws, name="sink", kind="sink", config={"path": str(out), "simulates": "sms"})
            Guardrails(gk.engine).set_policy(ws, {"caps": {}, "quiet_hours": None})
            for p in pids[:sends]:
                set_consent(gk.engine, ws, p, "sms", "granted")
            g2 = {"nodes": [node("start", "entry", kind="event", event={"kind": "event", "event": "Signed Up"}),
                            node("hello", "send", channel_id=ch["channel_id"], template={
                                "variants": {"zh": {"text": "{{ attributes.name }}，欢迎！"}}}),
                            node("done", "exit")],
                  "edges": [{"source": "start", "target": "hello"}, {"source": "hello", "target": "done"}]}
            jid2 = svc.create(ws, {"name": "bench-send", "graph": g2})["journey_id"]
            svc.publish(ws, jid2)
            cj2 = eng.compiled(ws, jid2, 1)
            t0 = time.perf_counter()
            s2 = eng.enter(cj2, pids[:sends], now) + eng.run_once(now)
            t_send = time.perf_counter() - t0
            lines = len(out.read_bytes().splitlines())
            print(f"send journey: {sends:,} customers, {s2:,} steps, {lines:,} messages delivered to the sink in "
                  f"{t_send:.2f}s ({s2 / t_send:,.0f} steps/s, {lines / t_send:,.0f} messages/s)")
            rows.append({"step": "send node", "customers": sends, "steps": s2, "messages": lines,
                         "seconds": round(t_send, 3)})
        finally:
            gk.close()
    print("(wall seconds depend on how busy the machine is: see the line about other processes above)")
    emit_summary("journeys", rows)


if __name__ == "__main__":
    main()
