"""Profile read benchmark: GET /api/v1/profiles/{id} and /api/v1/profiles/lookup?phone= latency.

Loads a fresh data dir with ~50k profiles the way a brand would: a customers CSV and an orders CSV
through the importer (in-process), then a real ``goldkey serve`` process receives /v1/batch
sessions for part of those customers (identify with their CRM id, then track/page events), so
profiles carry identifiers, attributes, an order summary and recent events.

Then reads random profiles through the HTTP API with a keep-alive client (raw asyncio sockets):
sequentially (one connection) and at modest concurrency (8 connections), reporting
p50/p95/p99/max latency and requests/s. Target (reported, not asserted): p99 < 5 ms.

Usage::

    python benchmarks/bench_profile_read.py [--quick] [--profiles 50000] [--reads 5000]
                                            [--with-events 10000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EventFactory,
    GetSource,
    PySpy,
    Server,
    ThreadCpu,
    check_noise,
    closed_loop,
    create_workspace,
    emit_summary,
    machine_line,
    percentiles,
    thread_names,
)
from bench_import import CUSTOMER_MAP, ORDER_MAP, customers, orders  # noqa: E402

TARGET_P99_MS = 5.0


class SessionSource:
    """One /v1/batch session per customer: identify (CRM id) then track/page events; request i of
    worker w is customer (i - 1) * procs + w, so every customer is sent once."""

    def __init__(self, port: int, auth: str, templates: list[tuple[bytes, int]], procs: int, users: int) -> None:
        self.head = (
            f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.templates, self.procs, self.users = templates, procs, users

    def __call__(self, wid: int, i: int) -> tuple[bytes, int]:
        user = ((i - 1) * self.procs + wid) % self.users
        tpl, n = self.templates[user % len(self.templates)]
        body = EventFactory.fill(tpl, user, f"s-{user}")
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body, n


def session_templates(count: int, events: int) -> list[tuple[bytes, int]]:
    fac = EventFactory(seed=5)
    out = []
    for _ in range(count):
        evs = [fac.event(0, "identify")]
        evs[0]["traits"] = {"crmId": "CRM~U~", "member_tier": "金卡", "city": "广州"}
        evs += [fac.event(k, fac.rng.choice(["track", "track", "page"])) for k in range(1, events)]
        body = json.dumps(
            {"batch": evs, "sentAt": "2025-06-18T12:00:00.000Z"}, ensure_ascii=False, separators=(",", ":")
        ).encode()
        out.append((body, events))
    return out


def measure(label: str, srv: Server, paths: list[str], n: int, conns: int) -> dict[str, Any]:
    src = GetSource(srv.port, paths, srv.admin_auth, seed=len(label))
    closed_loop(srv.port, src, procs=1, conns=conns, seconds=30, max_requests=min(200, n))  # warm-up
    tc = ThreadCpu(srv.proc.pid, srv.thread_names)  # type: ignore[union-attr]
    r = closed_loop(srv.port, src, procs=1, conns=conns, seconds=300, max_requests=n)
    if r.first_error:
        print(f"  first non-200 answer: {r.first_error}")
    pc = percentiles(r.latencies)
    out = {
        "label": label,
        "conns": conns,
        "requests": r.requests,
        "ok": r.ok,
        "non200": dict(r.non200),
        "errors": r.errors,
        "rps": r.requests / r.seconds if r.seconds else 0.0,
        **{k: round(1000 * v, 2) for k, v in pc.items()},
    }
    print(
        f"  {label:24s} {conns:2d} conn: {r.requests:6,} reads ({r.ok:,} ok, non-200 {dict(r.non200) or 0}, "
        f"errors {r.errors}) {out['rps']:7,.0f} req/s   p50 {out['p50']:6.2f} ms  p95 {out['p95']:6.2f} ms  "
        f"p99 {out['p99']:6.2f} ms  max {out['max']:7.2f} ms  (generator CPU {100 * r.generator_cpu / r.seconds:.0f}%)"
        f"\n    {tc.line()}",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profiles", type=int, default=None, help="customers imported (default 50000; quick 5000)")
    ap.add_argument(
        "--with-events",
        type=int,
        default=None,
        help="customers who also send a session of events (default 10000; quick 1000)",
    )
    ap.add_argument("--reads", type=int, default=None, help="reads per measurement (default 5000; quick 1000)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--profile", action="store_true", help="py-spy the server during an extra sequential run")
    args = ap.parse_args()
    n_prof = args.profiles or (3_000 if args.quick else 50_000)
    n_ev = min(n_prof, args.with_events or (500 if args.quick else 10_000))
    n_reads = args.reads or (1_000 if args.quick else 5_000)

    print("== bench_profile_read: 360° profile reads through the HTTP API ==")
    print(machine_line())
    check_noise()
    print("client: Python keep-alive HTTP/1.1 on raw asyncio sockets (1 process)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="goldkey-bench-read-") as tmp:
        work = Path(tmp)
        data = work / "data"
        ws = create_workspace(data, "bench")
        t = time.perf_counter()
        customers(n_prof).write_csv(work / "customers.csv")
        orders(n_prof * 2, n_prof).write_csv(work / "orders.csv")
        from goldkey.runtime import Goldkey
        from goldkey.settings import Settings

        gk = Goldkey.open(Settings(data_dir=data))
        try:
            for kind, mapping in (("customers", CUSTOMER_MAP), ("orders", ORDER_MAP)):
                s = gk.importer.run(ws["workspace_id"], kind, work / f"{kind}.csv", mapping)
                print(f"loaded {kind}: {s.accepted:,} rows accepted", flush=True)
        finally:
            gk.close()
        print(f"import load took {time.perf_counter() - t:.1f} s", flush=True)

        with Server(data) as srv:
            srv.workspace = ws
            srv.start()
            srv.thread_names = thread_names(srv.proc.pid)  # type: ignore[union-attr]
            t = time.perf_counter()
            tpls = session_templates(16, 30)
            r = closed_loop(
                srv.port,
                SessionSource(srv.port, srv.write_auth, tpls, 2, n_ev),
                procs=2,
                conns=16,
                seconds=600,
                max_requests=n_ev,
            )
            print(
                f"sent {r.requests:,} sessions ({r.accepted:,} events accepted, non-200 {dict(r.non200) or 0}) "
                f"in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            if r.first_error:
                print(f"  first non-200 answer: {r.first_error}")
            srv.stop()
            with sqlite3.connect(f"file:{data / 'operational.sqlite'}?mode=ro", uri=True) as con:
                pids = [x for (x,) in con.execute("SELECT profile_id FROM profiles WHERE canonical_id = profile_id")]
                phones = [x for (x,) in con.execute("SELECT id_value FROM identities WHERE id_type = 'phone'")]
                n_ids = con.execute("SELECT count(*) FROM identities").fetchone()[0]
                with_events = con.execute("SELECT count(*) FROM profiles WHERE recent_events != '[]'").fetchone()[0]
                with_orders = con.execute("SELECT count(*) FROM profiles WHERE order_summary != '{}'").fetchone()[0]
            print(
                f"data: {len(pids):,} live profiles, {n_ids:,} identifiers, {with_events:,} with recent events, "
                f"{with_orders:,} with orders; reads pick profiles at random"
            )
            rng = random.Random(1)
            get_paths = [f"/api/v1/profiles/{p}" for p in rng.sample(pids, min(len(pids), 20_000))]
            # callers pass phones as people write them: national 11 digits
            lookup_paths = [
                f"/api/v1/profiles/lookup?phone={p.removeprefix('+86')}"
                for p in rng.sample(phones, min(len(phones), 20_000))
            ]

            srv.start()  # a fresh server process on the loaded data
            # reads are measured in the steady state: a server starts by building the segment facts
            # of every workspace in a background thread (seconds at this size), which competes with
            # the reads for the one core the GIL gives them
            t_wait = time.perf_counter()
            while (time.perf_counter() - t_wait < 180
                   and "goldkey-facts-warm" in thread_names(srv.proc.pid).values()):  # type: ignore[union-attr]
                time.sleep(0.5)
            print(f"waited {time.perf_counter() - t_wait:.1f} s for the server's start-up facts build")
            srv.thread_names = thread_names(srv.proc.pid)  # type: ignore[union-attr]
            results = []
            for conns in (1, args.concurrency):
                results.append(measure("GET /profiles/{id}", srv, get_paths, n_reads, conns))
                results.append(measure("GET lookup?phone=", srv, lookup_paths, n_reads, conns))
            prof_text = None
            if args.profile:
                spy = PySpy(srv.proc.pid, work / "pyspy-read.txt", 10)  # type: ignore[union-attr]
                time.sleep(0.5)
                src = GetSource(srv.port, get_paths, srv.admin_auth, seed=9)
                closed_loop(srv.port, src, procs=1, conns=1, seconds=9)
                prof_text = spy.finish()

    print("results:")
    for res in results:
        ok = res["p99"] < TARGET_P99_MS
        print(
            f"  {res['label']:24s} {res['conns']:2d} conn  p50 {res['p50']:6.2f}  p99 {res['p99']:6.2f} ms  "
            f"{res['rps']:7,.0f} req/s   target p99 < {TARGET_P99_MS:.0f} ms  {'met' if ok else 'MISSED'}"
        )
        rows.append(
            {
                "metric": f"{res['label']} x{res['conns']} p50/p99",
                "value": f"{res['p50']}/{res['p99']}",
                "unit": "ms",
                "target": f"p99 < {TARGET_P99_MS:.0f}",
                "met": ok,
                "note": f"{res['rps']:,.0f} req/s",
            }
        )
    if prof_text:
        print("server profile during sequential GET /profiles/{id} (py-spy):")
        print("\n".join("  " + line for line in prof_text.splitlines()))
    emit_summary("profile_read", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
