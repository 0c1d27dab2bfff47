"""Campaign benchmark: a campaign to 1M customers, segment members -> assignment -> guardrails ->
queued, then delivered to a sink channel.

The customers are **bulk-created for this benchmark only**: profiles (with a name and a phone
identifier), granted SMS consent and a materialised segment holding all of them are written straight
into the operational store with ``executemany`` (the ingestion and import paths have their own
benchmarks). Everything after that is the product's code path: ``CampaignService.create`` (the
save-time checks: channel, templates against the catalog, the segment's members) and
``CampaignService.launch`` (members -> deterministic salted assignment -> ``campaign_members`` ->
``Sender.send`` per chunk of 5,000: guardrails and the atomic reservation of ``queued`` message
rows, then rendering and delivery to a sink channel writing to /dev/null, the message-log updates
and the ``Message Sent`` events).

Two measurements. (1) The campaign **prepared** for all customers, stage by stage with the
product's functions: the run, the segment's members, the salted assignment and the member rows
(``CampaignService._new_run``), then per chunk of 5,000 exactly what ``Sender.send`` does before it
delivers: the addresses and ``Guardrails.reserve`` (consent, suppressions, caps, de-duplication, and
the ``queued`` message rows). Target: under 60 s for 1M customers. (2) A full launch
(``CampaignService.launch``, delivery included) of ``--deliver`` customers, for the end-to-end rate.
Targets are printed, never asserted.

Usage::

    python benchmarks/bench_campaign.py [--profiles 1000000] [--holdout 10] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_summary, machine_line  # noqa: E402

STAGES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])


def _wrap(owner: Any, name: str, label: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            s = STAGES[label]
            s[0] += time.perf_counter() - t0
            s[1] += 1

    setattr(owner, name, timed)


def bulk_customers(gk: Any, ws: str, n: int) -> str:
    """Write ``n`` profiles, phone identifiers, granted SMS consent and a computed segment holding
    them all (benchmark set-up only); returns the segment id."""
    import orjson
    import sqlalchemy as sa

    from goldkey.activate.guardrails import driver_value
    from goldkey.store.operational import consents, identities, profiles, segment_members, segment_versions, segments

    now = datetime.now(UTC)
    sid = "seg_bench_all"
    chunk = 50_000
    for k in range(0, n, chunk):
        ids = [f"prf_b{i:09d}" for i in range(k, min(n, k + chunk))]
        with gk.engine.begin() as c:  # straight DBAPI executemany: set-up only, minutes faster at 1M
            at = driver_value(c.dialect, now)

            def insert(table: Any, rows: list[tuple[Any, ...]], c: Any = c) -> None:
                cols = [col.name for col in table.columns][: len(rows[0])]
                mark = "?" if c.dialect.paramstyle == "qmark" else "%s"
                c.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(cols)}) "
                                  f"VALUES ({', '.join([mark] * len(cols))})", rows)

            c.execute(profiles.insert(), [{
                "profile_id": p, "workspace_id": ws, "merged_into": None, "canonical_id": p,
                "attributes": orjson.dumps({"name": f"客户{p[-6:]}", "phone": f"+86139{p[-8:]}"}).decode(),
                "origin": "new", "first_seen_at": now, "first_seen_source": "bench", "last_seen_at": now,
                "created_at": now, "updated_at": now} for p in ids])
            insert(identities, [(ws, "phone", f"+86139{p[-8:]}", p, at, "bench") for p in ids])
            insert(consents, [(ws, p, "sms", "marketing", "granted", "bench", at) for p in ids])
            insert(segment_members, [(ws, sid, p, at) for p in ids])
    with gk.engine.begin() as c:
        c.execute(segments.insert().values(workspace_id=ws, segment_id=sid, name="all (bench)", version=1,
                                           realtime=False, size=n, computed_at=now, created_at=now, updated_at=now))
        c.execute(segment_versions.insert().values(
            workspace_id=ws, segment_id=sid, version=1, created_by="bench", created_at=now,
            rule=orjson.dumps({"kind": "attribute", "field": "profile.origin", "op": "eq", "value": "new"}).decode()))
        assert c.execute(sa.select(sa.func.count()).select_from(profiles)).scalar() == n
    return sid


def prepare(gk: Any, svc: Any, ws: str, cid: str) -> tuple[float, float]:
    """The launch's preparation, stage by stage with the product's functions: the run and its
    members (``_new_run``: audience, assignment, member rows), then per chunk of ``SEND_CHUNK`` what
    ``Sender.send`` does before delivering: ``Guardrails.reserve`` with the channel's address type
    (addresses, guardrails and the queued rows in one transaction per chunk). Returns the wall and
    the process CPU seconds of the whole preparation."""
    import sqlalchemy as sa

    from goldkey.activate.campaigns import SEND_CHUNK
    from goldkey.activate.guardrails import SendSpec
    from goldkey.store.operational import campaign_members, campaigns

    d = svc.definition(ws, cid)
    with gk.engine.begin() as c:
        c.execute(campaigns.update().where(campaigns.c.campaign_id == cid).values(status="scheduled"))
    t0, c0 = time.perf_counter(), cpu_seconds()
    run = svc._new_run(ws, cid, 1, d)
    t_assign, c_assign = time.perf_counter() - t0, cpu_seconds() - c0
    m = campaign_members.c
    t1, c1 = time.perf_counter(), cpu_seconds()
    with gk.engine.connect() as c:
        pending = c.execute(sa.select(m.profile_id).where(m.campaign_id == cid, m.run == run,
                                                          m.status == "pending")).scalars().all()
    ch = gk.sender.channels.open(ws, d.channel_id)
    queued = 0
    now = datetime.now(UTC)
    spec = SendSpec(d.channel_id, f"campaign:{cid}", "bench")
    for k in range(0, len(pending), SEND_CHUNK):
        res = gk.sender.guardrails.reserve(ws, ch.consent_channel, d.purpose, pending[k : k + SEND_CHUNK],
                                           f"campaign:{cid}:{run}", spec, now, address_type=ch.address_type)
        queued += len(res.message_ids)
    t_guard, c_guard = time.perf_counter() - t1, cpu_seconds() - c1
    print(f"  run + audience + assignment + {len(pending):,} pending member rows: {t_assign:6.1f} s "
          f"(CPU {c_assign:.1f} s)")
    print(f"  addresses + guardrails + reservation: {queued:,} messages queued in {t_guard:6.1f} s "
          f"(CPU {c_guard:.1f} s; chunks of {SEND_CHUNK:,})")
    return t_assign + t_guard, c_assign + c_guard


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=1_000_000)
    ap.add_argument("--holdout", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="100,000 customers")
    ap.add_argument("--deliver", type=int, default=5000, help="customers of the full launch (delivery included)")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.profiles

    from goldkey.activate.campaigns import CampaignService
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="gk-bench-campaign-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp)))
        try:
            ws = gk.workspaces.create("bench").workspace_id
            t0 = time.perf_counter()
            sid = bulk_customers(gk, ws, n)
            print(f"set-up (bulk-created for the benchmark only): {n:,} customers in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            gk.sender.guardrails.set_policy(ws, {"quiet_hours": None, "caps": {"*": {"day": 3}}})
            ch = gk.sender.channels.save(ws, name="sink", kind="sink",
                                         config={"path": "/dev/null", "simulates": "sms", "cost_per_message": 0.04})
            if gk.campaigns is not None:  # the runtime's scheduler would resume the run prepared below
                gk.campaigns.stop()
            svc = CampaignService.from_goldkey(gk)
            tpl = {"template_id": "bench", "vars": ["coupon"], "variants": {"zh": {
                "text": "{{ attributes.name }}您好，流量包优惠券 {{ vars.coupon }}"}}}
            body = {"name": "bench", "audience": {"segment_id": sid}, "channel_id": ch["channel_id"],
                    "variants": [{"key": "A", "weight": 1, "template": tpl},
                                 {"key": "B", "weight": 1, "template": tpl}],
                    "holdout_pct": args.holdout, "vars": {"coupon": "GK5"},
                    "conversion": {"order": True, "attribution_days": 7}}
            t0 = time.perf_counter()
            camp = svc.create(ws, body)
            t_create = time.perf_counter() - t0
            print(f"save (checks: channel, templates, the segment's {n:,} members): {t_create:.1f} s", flush=True)
            load0 = os.getloadavg()[0]
            prepared, prepared_cpu = prepare(gk, svc, ws, camp["campaign_id"])
            load1 = os.getloadavg()[0]
            print(f"\nprepared (members -> assignment -> guardrails -> queued) for {n:,} customers: "
                  f"{prepared:.1f} s wall, {prepared_cpu:.1f} s CPU (target < 60 s for 1M); load average "
                  f"{load0:.2f} before, {load1:.2f} after", flush=True)
            t0 = time.perf_counter()
            rep = svc.report(ws, camp["campaign_id"])
            t_report = time.perf_counter() - t0
            print(f"report (one DuckDB query over {n:,} members + aggregation): {t_report:.1f} s; "
                  f"arms {[(a['arm'], a['targeted']) for a in rep['arms']]}", flush=True)
            m = min(args.deliver, n)
            small = {**body, "name": "bench-deliver", "audience": {"list": {"id_type": "profile_id", "values": [
                f"prf_b{i:09d}" for i in range(m)]}}}
            camp2 = svc.create(ws, small)
            STAGES.clear()
            _wrap(gk.sender.guardrails, "reserve", "guardrails + reservation")
            _wrap(gk.sender, "deliver", "delivery (render, sink, message log, events)")
            t0 = time.perf_counter()
            done = svc.launch(ws, camp2["campaign_id"], wait=True)
            t_launch = time.perf_counter() - t0
            sent = done["progress"]["messages"].get("sent", 0)
            print(f"\nfull launch through Sender.send of {m:,} customers (fresh caps: each customer's 2nd message "
                  f"today): {t_launch:.1f} s, {sent:,} sent = {sent / t_launch:,.0f} msg/s end to end")
            for label, (sec, calls) in STAGES.items():
                print(f"  {label:<46} {sec:6.1f} s  ({calls} calls)")
            emit_summary("bench_campaign", [{"profiles": n, "save_s": round(t_create, 2),
                                             "prepared_s": round(prepared, 2),
                                             "prepared_cpu_s": round(prepared_cpu, 2), "load_avg": round(load1, 2),
                                             "report_s": round(t_report, 2),
                                             "deliver_n": m, "deliver_msg_per_s": round(sent / t_launch)}])
        finally:
            gk.close()


if __name__ == "__main__":
    main()
