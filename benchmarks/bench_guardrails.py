"""Guardrails benchmark: prepare a campaign to 1M customers (addresses, guardrail check, reservation).

Goal (reported, not asserted): a campaign to 1M customers with guardrails prepared in under 60 s.

"Prepared" is what ``Sender.send`` does before the first message goes out: ``Guardrails.reserve``
with the channel's address type -- in one transaction per chunk, every customer's address, consent
per channel and purpose across merged profiles, suppressions, de-duplication by message key,
frequency caps per day and week, quiet hours in each customer's time zone -- and the ``queued``
message rows and cap counters of the customers that pass. The addresses alone (``load_addresses``)
and a read-only ``Guardrails.check`` of the same audience are timed too, and a second campaign on
the same day (the caps now bite for those already reached). Wall and process CPU seconds and the
load average are printed.

The synthetic data is bulk-created straight into the operational store (SQLite) with DBAPI
``executemany``: profiles (one in a hundred merged into its neighbour; one in five with its own time
zone), a phone identity each, ``sms``/marketing consents (85% granted, 5% denied, the rest none),
1% suppressed and 10% already messaged today. That is NOT how the product writes (profiles come
through the tracking API and the importers, consents through ``govern.consent.set_consent``); it is
acceptable here because the benchmark measures the guardrails, and going through the API would
take hours at this size. The data directory is cached (``--data-dir``) and reused; the messages and
counters a run creates are deleted before the next run.

Usage::

    python benchmarks/bench_guardrails.py [--quick] [--profiles 1000000] [--data-dir DIR] [--rebuild]
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

TARGET_SECONDS = 60.0
WS_NAME = "bench-guardrails"
NOW = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai: outside the default quiet hours
TIMEZONES = ["Asia/Shanghai", "Asia/Tokyo", "Europe/London", "America/New_York", "Asia/Singapore"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(data_dir: Path, n: int) -> None:
    """Create the data dir: a workspace, ``n`` profiles with phones, consents, suppressions, counters."""
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    t0 = time.perf_counter()
    gk = Goldkey.open(Settings(data_dir=data_dir))
    try:
        ws = gk.workspaces.create(WS_NAME).workspace_id
        db = gk.settings.resolved_operational_url().split("///", 1)[-1]
    finally:
        gk.close()
    stamp = "2026-01-01 00:00:00.000000"
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        prof, ident, cons, supp = [], [], [], []
        for i in range(n):
            pid = f"prf_bench_{i:08d}"
            merged = i % 100 == 99
            canon = f"prf_bench_{i - 1:08d}" if merged else pid
            attrs = json.dumps({"name": f"客户{i}", "timezone": TIMEZONES[i % 5]}) if i % 5 == 0 else "{}"
            prof.append((pid, ws, canon if merged else None, canon, attrs, stamp, stamp, stamp, stamp))
            ident.append((ws, "phone", f"+86138{i:08d}", canon, stamp))
            r = i % 20
            if r < 17:
                cons.append((ws, pid, "sms", "marketing", "granted", "bench", stamp))
            elif r == 17:
                cons.append((ws, pid, "sms", "marketing", "denied", "bench", stamp))
            if i % 100 == 7:
                supp.append((ws, pid, "*", "complained", "bench", stamp))
        con.executemany(
            """INSERT INTO profiles (profile_id, workspace_id, merged_into, canonical_id, attributes, traits, tags,
               order_summary, recent_events, origin, first_seen_at, first_seen_source, first_seen_context,
               last_seen_at, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, '{}', '{}', '{}', '[]', 'new', ?, 'tracking', '{}', ?, ?, ?)""", prof)
        con.executemany("INSERT INTO identities (workspace_id, id_type, id_value, profile_id, first_seen_at, source) "
                        "VALUES (?, ?, ?, ?, ?, 'bench')", ident)
        con.executemany("INSERT INTO consents (workspace_id, profile_id, channel, purpose, status, source, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", cons)
        con.executemany("INSERT INTO suppressions (workspace_id, profile_id, channel, reason, source, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", supp)
        con.commit()
    finally:
        con.close()
    print(f"  {n:,} profiles, phones, consents and suppressions in {time.perf_counter() - t0:.1f}s", flush=True)
    (data_dir / "bench-guardrails.json").write_text(
        json.dumps({"profiles": n, "workspace_id": ws, "db": db, "created": datetime.now(UTC).isoformat()}))


def reset(db: str, ws: str, n: int) -> None:
    """Delete the previous run's messages and counters; 10% of customers were messaged today."""
    con = sqlite3.connect(db)
    try:
        con.execute("DELETE FROM messages WHERE workspace_id = ?", [ws])
        con.execute("DELETE FROM send_counters WHERE workspace_id = ?", [ws])
        con.execute("DELETE FROM send_policies WHERE workspace_id = ?", [ws])
        con.executemany("INSERT INTO send_counters (workspace_id, profile_id, channel, day, count) "
                        "VALUES (?, ?, 'sms', '2026-03-04', 1)",
                        [(ws, f"prf_bench_{i:08d}") for i in range(0, n, 10)])
        con.commit()
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k profiles")
    ap.add_argument("--profiles", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--rebuild", action="store_true", help="regenerate the cached data")
    args = ap.parse_args()
    n = args.profiles or (100_000 if args.quick else 1_000_000)
    data_dir = args.data_dir or Path(tempfile.gettempdir()) / f"goldkey-bench-guardrails-{n}"

    print(machine_line())
    check_noise()
    marker = data_dir / "bench-guardrails.json"
    cached = json.loads(marker.read_text()) if marker.exists() else None
    if args.rebuild or not cached or cached.get("profiles") != n:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"building {data_dir} ({n:,} profiles; straight into the operational store)")
        build(data_dir, n)
        cached = json.loads(marker.read_text())
    else:
        print(f"reusing {data_dir} ({n:,} profiles, made {cached['created']})")
    ws, db = cached["workspace_id"], cached["db"]
    reset(db, ws, n)

    from goldkey.activate.guardrails import Guardrails, SendSpec
    from goldkey.activate.sender import load_addresses
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    gk = Goldkey.open(Settings(data_dir=data_dir))
    rows: list[dict[str, Any]] = []
    try:
        g = Guardrails(gk.engine)
        g.set_policy(ws, {"caps": {"sms": {"day": 1}, "*": {"day": 3, "week": 10}}})
        audience = [f"prf_bench_{i:08d}" for i in range(n)]

        def timed(label: str, fn: Any) -> Any:
            c0, t0 = cpu_seconds(), time.perf_counter()
            out = fn()
            s, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            rows.append({"step": label, "seconds": round(s, 2), "cpu": round(cpu, 2)})
            print(f"{label:<44} {s:7.2f}s  CPU {cpu:6.2f}s", flush=True)
            return out

        addresses = timed("1. load addresses (phone identities)", lambda: load_addresses(gk.engine, ws, audience,
                                                                                          "phone"))
        reachable = [p for p in audience if p in addresses]
        v = timed("2. check (read only)", lambda: g.check(ws, "sms", "marketing", reachable, "camp-1", NOW))
        spec = SendSpec("chn_bench", "campaign:bench", "tpl")
        load0 = os.getloadavg()[0]
        res = timed("3. reserve (addresses + check + claim, atomic per chunk)",
                    lambda: g.reserve(ws, "sms", "marketing", audience, "camp-1", spec, NOW, address_type="phone"))
        load1 = os.getloadavg()[0]
        prepared, prepared_cpu = rows[2]["seconds"], rows[2]["cpu"]
        res2 = timed("4. second campaign, same day (caps bite)",
                     lambda: g.reserve(ws, "sms", "marketing", audience, "camp-2", spec, NOW, address_type="phone"))
    finally:
        gk.close()
    reasons: dict[str, int] = {}
    for r in res.suppressed.values():
        k = r.split(":", 1)[0] if r.startswith(("frequency cap", "suppressed")) else r
        reasons[k] = reasons.get(k, 0) + 1
    print(f"\naudience {n:,}: {len(addresses):,} with a phone; check allowed {len(v.allowed):,}; reserved "
          f"{len(res.message_ids):,}; refused {len(res.suppressed):,} {reasons}; second campaign reserved "
          f"{len(res2.message_ids):,}")
    verdict = "meets" if prepared < TARGET_SECONDS else "misses"
    print(f"campaign to {n:,} customers prepared (addresses + reserve) in {prepared:.2f}s wall, {prepared_cpu:.2f}s "
          f"CPU ({verdict} the {TARGET_SECONDS:.0f}s goal); load average {load0:.2f} before, {load1:.2f} after")
    print("(wall seconds depend on how busy the machine is: see the line about other processes above)")
    rows.append({"step": "prepared", "seconds": round(prepared, 2), "cpu": prepared_cpu, "load_avg": round(load1, 2),
                 "reserved": len(res.message_ids)})
    emit_summary("guardrails", rows)


if __name__ == "__main__":
    main()
