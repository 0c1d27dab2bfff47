"""Computed-traits benchmark: ten typical traits over 10M events and 1M profiles.

Goal (reported, not asserted): refreshing ten traits over 10M events in under 10 s.

The synthetic data is bulk-created straight into the stores: profile rows into the operational
store (SQLite) with one DBAPI ``executemany``, events generated inside DuckDB with one ``INSERT ...
SELECT`` over ``range()``. That is NOT how the product writes (everything goes through the writer and
the tracking API or the importers); it is acceptable here because the benchmark measures the trait
computation, and going through the API would take hours at this size. One profile in a hundred is
merged into its neighbour, so events resolve through the profile map like real ones.

The data directory is cached (``--data-dir``, default a directory under the system temp dir named
after the sizes) and reused by later runs; ``--rebuild`` makes it again.

Then, in-process: the ten traits are (re)created, stored values cleared, and:

1. first computation: every profile gets its values (the write-back writes ~every profile); the
   process has no baseline yet, so every profile's stored traits are read back and compared, and the
   property cache is built from the log if the data directory has none (or appended to);
2. refresh with nothing changed (the steady state of the scheduled refresh: new events appended to
   the property cache, values compared with the first run's baseline in DuckDB);
3. refresh after 1% of profiles received new events (written straight into DuckDB too);
4. incremental path: events for 1,000 profiles through the writer, time until applied.

Usage::

    python benchmarks/bench_traits.py [--quick] [--profiles 1000000] [--events 10000000]
                                      [--data-dir DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _common import check_noise, emit_summary, machine_line  # noqa: E402

TARGET_SECONDS = 10.0
WS_NAME = "bench-traits"

TRAITS: list[dict[str, Any]] = [
    {"name": "orders", "event": "Order Completed", "aggregate": "count"},
    {"name": "orders_90d", "event": "Order Completed", "aggregate": "count", "window": {"last_days": 90}},
    {"name": "revenue", "event": "Order Completed", "aggregate": "sum", "property": "total"},
    {"name": "vip_revenue_365d", "event": "Order Completed", "aggregate": "sum", "property": "total",
     "where": [{"property": "coupon", "op": "eq", "value": "VIP"}], "window": {"last_days": 365}},
    {"name": "avg_order_value", "event": "Order Completed", "aggregate": "avg", "property": "total"},
    {"name": "first_order_category", "event": "Order Completed", "aggregate": "first", "property": "category"},
    {"name": "last_viewed_sku", "event": "Product Viewed", "aggregate": "last", "property": "sku"},
    {"name": "skus_viewed_30d", "event": "Product Viewed", "aggregate": "distinct_count", "property": "sku",
     "window": {"last_days": 30}},
    {"name": "favourite_category", "event": "Product Viewed", "aggregate": "most_frequent", "property": "category"},
    {"name": "days_since_visit", "type": "page", "event": "Home", "aggregate": "days_since_last"},
]


def cpu_seconds() -> float:
    """CPU seconds used by this process so far (all threads: DuckDB's, the writer's, ours)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pid_sql(expr: str) -> str:
    return f"'prf_bench_' || lpad(({expr})::VARCHAR, 8, '0')"


def events_sql(n: int, profiles: int, start: int, now_us: int, days: int = 365) -> str:
    """An INSERT generating events start..start+n inside DuckDB (fixed text; sizes are ints)."""
    span = days * 86_400_000_000
    return f"""
    INSERT INTO events (workspace_id, message_id, type, event, name, profile_id, "timestamp", received_at,
                        properties, source)
    SELECT ?, 'bench-' || i::VARCHAR,
      CASE WHEN i % 10 < 8 THEN 'track' ELSE 'page' END,
      CASE WHEN i % 10 < 8 THEN ['Product Viewed', 'Product Viewed', 'Product Added', 'Order Completed',
                                 'Search'][((i % 5) + 1)::BIGINT] END,
      CASE WHEN i % 10 >= 8 THEN ['Home', 'Cart'][((i % 2) + 1)::BIGINT] END,
      {pid_sql(f"hash(i) % {profiles}")},
      make_timestamp(({now_us} - (hash(i * 7) % {span}))::BIGINT),
      make_timestamp({now_us}::BIGINT),
      json_object('total', round((hash(i * 3) % 100000) / 100.0, 2),
                  'sku', 'SKU-' || (hash(i * 5) % 800)::VARCHAR,
                  'category', ['lens', 'solution', 'frames', 'care', 'kids'][((hash(i * 11) % 5) + 1)::BIGINT],
                  'quantity', (hash(i * 13) % 3) + 1,
                  'coupon', CASE WHEN i % 7 = 0 THEN 'VIP' ELSE '' END)::VARCHAR,
      'bench'
    FROM range({start}, {start + n}) r(i)"""


def build(data_dir: Path, profiles: int, events: int) -> None:
    """Create the data dir: a workspace, ``profiles`` profile rows and ``events`` events."""
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    t0 = time.perf_counter()
    gk = Goldkey.open(Settings(data_dir=data_dir))
    try:
        ws = gk.workspaces.create(WS_NAME).workspace_id
        db = gk.settings.resolved_operational_url().split("///", 1)[-1]
    finally:
        gk.close()
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        rows = []
        for i in range(profiles):
            pid = f"prf_bench_{i:08d}"
            canon = f"prf_bench_{i - 1:08d}" if i % 100 == 99 else pid
            rows.append((pid, ws, canon if canon != pid else None, canon, stamp, stamp, stamp, stamp))
        con.executemany(
            """INSERT INTO profiles (profile_id, workspace_id, merged_into, canonical_id, attributes, traits, tags,
               order_summary, recent_events, origin, first_seen_at, first_seen_source, first_seen_context,
               last_seen_at, created_at, updated_at)
               VALUES (?, ?, ?, ?, '{}', '{}', '{}', '{}', '[]', 'new', ?, 'tracking', '{}', ?, ?, ?)""",
            rows,
        )
        con.commit()
    finally:
        con.close()
    print(f"  {profiles:,} profiles in {time.perf_counter() - t0:.1f}s", flush=True)

    gk = Goldkey.open(Settings(data_dir=data_dir))  # rebuilds the analytical profile map
    try:
        now_us = int(now.timestamp() * 1_000_000)
        step = 2_000_000
        for start in range(0, events, step):
            with gk.analytical.transaction() as cur:
                cur.execute(events_sql(min(step, events - start), profiles, start, now_us), [ws])
            print(f"  {min(start + step, events):,} events ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        gk.close()
    (data_dir / "bench-traits.json").write_text(
        json.dumps({"profiles": profiles, "events": events, "workspace_id": ws, "created": now.isoformat()})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k profiles / 1M events")
    ap.add_argument("--profiles", type=int, default=None)
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--rebuild", action="store_true", help="regenerate the cached data")
    args = ap.parse_args()
    profiles = args.profiles or (100_000 if args.quick else 1_000_000)
    events = args.events or (1_000_000 if args.quick else 10_000_000)
    data_dir = args.data_dir or Path(tempfile.gettempdir()) / f"goldkey-bench-traits-{profiles}-{events}"

    print(machine_line())
    check_noise()
    marker = data_dir / "bench-traits.json"
    cached = json.loads(marker.read_text()) if marker.exists() else None
    if args.rebuild or not cached or cached.get("profiles") != profiles or cached.get("events") != events:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"building {data_dir} ({profiles:,} profiles, {events:,} events; straight into the stores)")
        build(data_dir, profiles, events)
        cached = json.loads(marker.read_text())
    else:
        print(f"reusing {data_dir} ({profiles:,} profiles, {events:,} events, made {cached['created']})")

    from goldkey.audience.facts import FactsCache
    from goldkey.audience.traits import TraitService
    from goldkey.collect.tracking import normalise_event, now_micros
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    ws = cached["workspace_id"]
    gk = Goldkey.open(Settings(data_dir=data_dir))
    rows: list[dict[str, Any]] = []
    try:
        svc = getattr(gk, "traits", None)
        owned = svc is None
        if owned:
            svc = TraitService(gk.engine, gk.analytical, gk.writer, getattr(gk, "facts", None)
                               or FactsCache(gk.engine, gk.analytical))
        else:
            svc.stop()  # no scheduled run in the middle of the measurements
        svc.attach()  # the incremental path, for step 4
        # start from no traits and no stored values (straight SQL: benchmark set-up only)
        from goldkey.store.operational import fields
        from goldkey.store.operational import profiles as profiles_t
        from goldkey.store.operational import traits as traits_t

        with gk.engine.begin() as conn:
            conn.execute(traits_t.delete().where(traits_t.c.workspace_id == ws))
            conn.execute(fields.delete().where(fields.c.workspace_id == ws, fields.c.source == "trait"))
            conn.execute(profiles_t.update().where(profiles_t.c.workspace_id == ws).values(traits="{}"))
        for d in TRAITS:
            svc.create(ws, d)
        print(f"\n{len(TRAITS)} traits: " + ", ".join(f"{d['name']} ({d['aggregate']})" for d in TRAITS))

        def run(label: str) -> dict[str, Any]:
            c0 = cpu_seconds()
            rep = svc.compute(ws)
            cpu = cpu_seconds() - c0
            s = rep["seconds"]
            load = os.getloadavg()[0]
            print(f"{label:<34} aggregate {s['aggregate']:6.2f}s  write-back {s['write_back']:6.2f}s "
                  f"(compare {s['compare']:.2f}s, write {s['write']:.2f}s)  total {s['total']:6.2f}s  "
                  f"CPU {cpu:6.2f}s  changed {rep['profiles_changed']:,}  load {load:.1f}", flush=True)
            rows.append({"run": label, **s, "cpu": round(cpu, 2), "changed": rep["profiles_changed"],
                         "load": round(load, 2)})
            return rep

        run("1. first computation")
        run("2. refresh, nothing changed")
        # 1% of profiles get a new order (straight into DuckDB, as in the set-up)
        n_new = max(1, profiles // 100)
        now_us = now_micros()
        with gk.analytical.transaction() as cur:
            cur.execute(
                f"""INSERT INTO events (workspace_id, message_id, type, event, profile_id, "timestamp", received_at,
                    properties, source)
                    SELECT ?, 'bench-new-' || i::VARCHAR || '-' || {now_us}::VARCHAR, 'track', 'Order Completed',
                           {pid_sql(f"(i * 97) % {profiles}")}, make_timestamp({now_us}::BIGINT),
                           make_timestamp({now_us}::BIGINT), '{{"total": 10.5, "category": "care"}}', 'bench'
                    FROM range({n_new}) r(i)""",
                [ws],
            )
        run(f"3. refresh after {n_new:,} new orders")

        # incremental: events through the writer (the tracking path after HTTP), until applied
        batch = [normalise_event({"type": "track", "event": "Order Completed", "userId": f"bench-live-{i}",
                                  "messageId": f"live-{now_us}-{i}", "properties": {"total": 20}},
                                 received_at=now_micros()) for i in range(1000)]
        t0 = time.perf_counter()
        gk.writer.submit_events(ws, batch).result(timeout=120)
        t1 = time.perf_counter()
        svc.flush(timeout=120)
        t2 = time.perf_counter()
        print(f"4. incremental: 1,000 events committed in {t1 - t0:.2f}s, traits applied {t2 - t1:.2f}s later "
              "(new profiles: first orders)")
        rows.append({"run": "4. incremental 1000 events", "commit": round(t1 - t0, 3), "applied": round(t2 - t1, 3)})
        svc.stop()
    finally:
        gk.close()
    refresh = rows[1]["total"]
    verdict = "meets" if refresh < TARGET_SECONDS else "misses"
    print(f"\nrefresh of {len(TRAITS)} traits over {events:,} events: {refresh:.2f}s ({verdict} the "
          f"{TARGET_SECONDS:.0f}s goal; {rows[1]['cpu']:.1f} CPU seconds); first computation {rows[0]['total']:.2f}s")
    print("(wall seconds depend on how busy the machine is: see the line about other processes above)")
    emit_summary("traits", rows)


if __name__ == "__main__":
    main()
