"""Tracking ingestion benchmark against a real ``goldkey serve`` process on 127.0.0.1.

(a) /v1/batch throughput: SDK-like batches, each from one simulated user/device (same userId and
    anonymousId, 100-200 mixed track/page/identify events of ~300 bytes with properties, unique
    messageIds), users drawn from a pool (half from a hot set) so identity resolution creates
    profiles and then hits known ones. Reports events/s acknowledged with 200 (durable: the server
    answers only after the group commit).
(b) /v1/track requests/s, one event per request, many concurrent keep-alive connections.
(c) acknowledgement latency p50/p95/p99 at half of each measured maximum, sent open-loop at a fixed
    rate (latency counted from the moment each request was due, so queueing is not hidden).

Finally the server is stopped and the DuckDB file opened read-only: the stored event count must
equal the server's accepted counter, and lie between the events the load generator saw
acknowledged and those plus the events still in flight when wrk cut its connections.

The load generator is ``wrk`` with a generated Lua script (found on PATH; ``--install-wrk`` lets
a run by hand apt-get it) or, failing that, Python processes with raw asyncio sockets and
pre-serialised templates. Latency runs (c) always use the Python fixed-rate sender (wrk is
closed-loop). The server and the generator share the machine's cores.

Targets (reported, not asserted): batch >= 100,000 events/s, single track >= 5,000 req/s,
p99 acknowledgement < 50 ms at half those rates.

Usage::

    python benchmarks/bench_ingest.py [--quick] [--seconds 20] [--users 20000] [--profile]
                                      [--generator auto|wrk|python] [--install-wrk]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EventFactory,
    EventSource,
    LoadResult,
    PySpy,
    Server,
    ThreadCpu,
    check_noise,
    closed_loop,
    cores,
    duckdb_count,
    emit_summary,
    find_wrk,
    machine_line,
    open_loop,
    percentiles,
    run_wrk,
    thread_names,
    wrk_script,
)

TARGET_BATCH_EPS = 100_000
TARGET_TRACK_RPS = 5_000
TARGET_P99_MS = 50.0


class Totals:
    """Events the generator saw acknowledged, and an upper bound of events left unanswered."""

    def __init__(self) -> None:
        self.acked = 0
        self.duplicates = 0
        self.unanswered_max = 0
        self.requests = 0

    def add_py(self, r: LoadResult) -> None:
        self.acked += r.accepted
        self.duplicates += r.duplicates
        self.requests += r.requests + r.errors
        # a request that failed on the socket may or may not have been stored
        self.unanswered_max += r.events_sent - r.accepted - r.duplicates

    def add_wrk(self, w: dict[str, Any]) -> None:
        self.acked += w["accepted"]
        self.duplicates += w["duplicates"]
        self.requests += w["responses"]
        self.unanswered_max += max(0, w["sent_events"] - w["acked_events"])


def _ms(x: float) -> float:
    return round(1000 * x, 2)


def _commits(srv: Server) -> dict[str, float]:
    """Group-commit counters from /metrics: count, total seconds, events, and the histogram's
    cumulative counts at 0.1 s, 0.25 s and 1 s."""
    with urllib.request.urlopen(srv.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name in (
            "goldkey_write_latency_seconds_count",
            "goldkey_write_latency_seconds_sum",
            "goldkey_events_accepted_total",
        ):
            out[name] = float(value)
        elif name.startswith("goldkey_write_latency_seconds_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            if le in ("0.1", "0.25", "1.0"):
                out["le" + le] = float(value)
    return out


def _commit_line(before: dict[str, float], after: dict[str, float], wall: float) -> str:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = d.get("goldkey_write_latency_seconds_count", 0.0)
    if n <= 0:
        return "no group commits"
    secs, ev = d["goldkey_write_latency_seconds_sum"], d["goldkey_events_accepted_total"]
    over = [(lbl, n - d.get(k, n)) for lbl, k in (("100 ms", "le0.1"), ("250 ms", "le0.25"), ("1 s", "le1.0"))]
    return (
        f"group commits: {n:,.0f} ({n / wall:,.1f}/s), mean {1000 * secs / n:,.1f} ms each, "
        f"{ev / n:,.0f} events each; writer busy committing {100 * secs / wall:.0f}% of the time; "
        f"commits over " + ", ".join(f"{lbl}: {c:,.0f}" for lbl, c in over)
    )


def max_rate(
    label: str,
    args: argparse.Namespace,
    srv: Server,
    wrk: str | None,
    templates: list[tuple[bytes, int]],
    path: str,
    conns: int,
    run_id: str,
    totals: Totals,
    workdir: Path,
) -> dict[str, Any]:
    """Closed-loop maximum: every connection sends its next request as soon as the last is answered."""
    users, hot = args.users, max(1, args.users // 10)
    c0 = _commits(srv)
    tc = ThreadCpu(srv.proc.pid, srv.thread_names)  # type: ignore[union-attr]
    (cpu0, kids0), t0 = srv.cpu(), time.perf_counter()
    if wrk:
        headers = {"Authorization": srv.write_auth, "Content-Type": "application/json"}
        w, gen_cpu = run_wrk(
            wrk,
            srv.ingest_url + path,
            wrk_script(templates, users, hot, headers),
            threads=1,
            conns=conns,
            seconds=args.seconds,
            run_id=run_id,
            workdir=workdir,
        )
        secs = w["duration_us"] / 1e6
        totals.add_wrk(w)
        out = {
            "requests": w["responses"],
            "accepted": w["accepted"],
            "duplicates": w["duplicates"],
            "non200": w["non200"],
            "errors": w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"],
            "seconds": secs,
            "p50_ms": w["p50_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000,
        }
    else:
        src = EventSource(srv.ingest_port, path, srv.write_auth, templates, users, hot, run_id)
        r = closed_loop(srv.ingest_port, src, procs=2, conns=conns, seconds=args.seconds)
        totals.add_py(r)
        if r.first_error:
            print(f"  first non-200 answer: {r.first_error}")
        gen_cpu, secs = r.generator_cpu, r.seconds
        pc = percentiles(r.latencies)
        out = {
            "requests": r.requests,
            "accepted": r.accepted,
            "duplicates": r.duplicates,
            "non200": sum(r.non200.values()),
            "errors": r.errors,
            "seconds": secs,
            "p50_ms": _ms(pc["p50"]),
            "p99_ms": _ms(pc["p99"]),
        }
    wall = time.perf_counter() - t0
    cpu1, kids1 = srv.cpu()
    # the server's CPU includes its children's (the collectors, with --collectors)
    server_cpu, kids_cpu = (cpu1 - cpu0) + (kids1 - kids0), kids1 - kids0
    out["threads"] = tc.line()
    out["commits"] = _commit_line(c0, _commits(srv), wall)
    out["server_cpu_pct"] = round(100 * server_cpu / wall)
    out["server_cpu_s"] = round(server_cpu, 2)
    out["wall_s"] = round(wall, 2)
    out["load_avg"] = round(os.getloadavg()[0], 1)
    out["generator_cpu_pct"] = round(100 * gen_cpu / wall)
    out["events_per_s"] = out["accepted"] / secs if secs else 0.0
    out["requests_per_s"] = out["requests"] / secs if secs else 0.0
    # CPU per acknowledged event (batch) or request (track): what the server spends, whatever share
    # of the shared cores it was given
    out["cpu_us_per_event"] = 1e6 * server_cpu / max(1, out["accepted"])
    out["cpu_us_per_request"] = 1e6 * server_cpu / max(1, out["requests"])
    print(
        f"  {label}: {out['requests']:,} requests in {secs:.1f} s -> {out['requests_per_s']:,.0f} req/s, "
        f"{out['events_per_s']:,.0f} events/s acknowledged (dup {out['duplicates']}, non-200 {out['non200']}, "
        f"socket errors {out['errors']}); closed-loop latency p50 {out['p50_ms']:.1f} ms p99 {out['p99_ms']:.1f} ms; "
        f"CPU: server {out['server_cpu_pct']}%{_kids(kids_cpu, wall)}, generator {out['generator_cpu_pct']}% "
        "(of one core)\n"
        f"    server {out['server_cpu_s']} CPU-s in {out['wall_s']} s wall: {out['cpu_us_per_event']:,.1f} us CPU "
        f"per event, {out['cpu_us_per_request']:,.1f} us per request; load average {out['load_avg']}\n"
        f"    {out['threads']}\n    {out['commits']}",
        flush=True,
    )
    return out


def _kids(cpu: float, wall: float) -> str:
    """The children's share of the server's CPU (the collectors'), when there is one."""
    return f" (of which child processes {100 * cpu / wall:.0f}%)" if cpu > 0.05 else ""


def fixed_rate(
    label: str,
    args: argparse.Namespace,
    srv: Server,
    templates: list[tuple[bytes, int]],
    path: str,
    rate: float,
    conns: int,
    run_id: str,
    totals: Totals,
) -> dict[str, Any]:
    src = EventSource(srv.ingest_port, path, srv.write_auth, templates, args.users, max(1, args.users // 10), run_id)
    c0 = _commits(srv)
    tc = ThreadCpu(srv.proc.pid, srv.thread_names)  # type: ignore[union-attr]
    (cpu0, kids0), t0 = srv.cpu(), time.perf_counter()
    r = open_loop(srv.ingest_port, src, rate=rate, seconds=args.seconds, conns=conns)
    wall = time.perf_counter() - t0
    cpu1, kids1 = srv.cpu()
    # the server's CPU includes its children's (the collectors, with --collectors)
    server_cpu, kids_cpu = (cpu1 - cpu0) + (kids1 - kids0), kids1 - kids0
    commits = (
        f"server {server_cpu:.2f} CPU-s{_kids(kids_cpu, wall)} in {wall:.2f} s wall, "
        f"{1e6 * server_cpu / max(1, r.requests):,.1f} us CPU per request; load average {os.getloadavg()[0]:.1f}\n    "
        + tc.line()
        + "\n    "
        + _commit_line(c0, _commits(srv), wall)
    )
    totals.add_py(r)
    if r.first_error:
        print(f"  first non-200 answer: {r.first_error}")
    pc = percentiles(r.latencies)
    sv = percentiles(r.service)
    out = {
        "rate": rate,
        "requests": r.requests,
        "non200": sum(r.non200.values()),
        "errors": r.errors,
        "unanswered": r.unanswered,
        "p50_ms": _ms(pc["p50"]),
        "p95_ms": _ms(pc["p95"]),
        "p99_ms": _ms(pc["p99"]),
        "max_ms": _ms(pc["max"]),
        "service_p99_ms": _ms(sv["p99"]),
        "late_sends": r.late_sends,
        "achieved_rate": r.requests / r.seconds if r.seconds else 0.0,
        "server_cpu_pct": round(100 * server_cpu / wall),
        "generator_cpu_pct": round(100 * r.generator_cpu / wall),
    }
    print(
        f"  {label}: {rate:,.1f} req/s fixed for {args.seconds:.0f} s ({r.requests:,} answered, "
        f"achieved {out['achieved_rate']:,.1f}/s, non-200 {out['non200']}, errors {r.errors}, "
        f"unanswered {r.unanswered}, "
        f"sends > 10 ms late {r.late_sends}): ack latency p50 {out['p50_ms']} ms, p95 {out['p95_ms']} ms, "
        f"p99 {out['p99_ms']} ms, max {out['max_ms']} ms; CPU server {out['server_cpu_pct']}%, "
        f"generator {out['generator_cpu_pct']}%\n    {commits}",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small and short (< 60 s)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each measured phase (default 20; quick 5)")
    ap.add_argument("--users", type=int, default=None, help="distinct simulated users (default 20000; quick 2000)")
    ap.add_argument("--batch-conns", type=int, default=32)
    ap.add_argument("--track-conns", type=int, default=256)
    ap.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--install-wrk", action="store_true", help="apt-get install wrk if missing (by hand only)")
    ap.add_argument("--collectors", type=int, default=0,
                    help="serve with this many collector processes and send the tracking load to their port")
    ap.add_argument("--profile", action="store_true", help="extra runs of (a) and (b) under py-spy, summarised")
    ap.add_argument(
        "--server-prelude",
        default=None,
        help="diagnostics only: Python run in the server process first, e.g. 'import gc; gc.freeze()'",
    )
    args = ap.parse_args()
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.users = args.users or (2_000 if args.quick else 20_000)

    wrk = None
    if args.generator in ("auto", "wrk"):
        wrk = find_wrk(args.install_wrk)
        if wrk is None and args.generator == "wrk":
            print("wrk not found (run with --install-wrk, or apt-get install wrk)")
            return 2
    gen_name = (
        f"wrk ({wrk}, 1 thread, Lua template rotation)"
        if wrk
        else "Python (2 processes, asyncio raw sockets, pre-serialised templates)"
    )
    print("== bench_ingest: tracking API ==")
    print(machine_line())
    check_noise()
    print(f"load generator for (a)/(b): {gen_name}; for (c): Python fixed-rate sender (1 process)")
    if args.server_prelude:
        print(f"DIAGNOSTIC server prelude: {args.server_prelude!r}")

    fac = EventFactory(seed=11)
    n_tpl = 16 if args.quick else 64
    batches = fac.batch_templates(n_tpl)
    tracks = [(t, 1) for t in fac.track_templates(32)]
    filled = [EventFactory.fill(t, 12345, "r-1-123456") for t, _ in batches]
    ev_bytes = sum(len(b) for b in filled) / sum(n for _, n in batches)
    avg_n = sum(n for _, n in batches) / len(batches)
    track_bytes = sum(len(EventFactory.fill(t, 12345, "r-1-123456")) for t, _ in tracks) / len(tracks)
    print(
        f"batches: {len(batches)} templates, {avg_n:.0f} events avg (100-200), ~{ev_bytes:.0f} bytes/event, "
        f"~{sum(len(b) for b in filled) / len(filled) / 1024:.0f} KB/batch; track bodies ~{track_bytes:.0f} bytes; "
        f"{args.users:,} users ({max(1, args.users // 10):,} hot); {args.seconds:.0f} s per phase"
    )

    totals = Totals()
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="goldkey-bench-ingest-") as tmp,
        Server(Path(tmp) / "data", prelude=args.server_prelude, collectors=args.collectors) as srv,
    ):
        srv.create_workspace()
        srv.start()
        work = Path(tmp)
        print(f"server pid {srv.proc.pid} on {srv.url}"  # type: ignore[union-attr]
              + (f"; {args.collectors} collector process(es) on {srv.ingest_url} take the load" if args.collectors
                 else ""))
        srv.thread_names = thread_names(srv.proc.pid)  # type: ignore[union-attr]

        # warm-up (counted in the totals, not in the figures)
        warm = argparse.Namespace(**{**vars(args), "seconds": 2.0})
        max_rate("warm-up", warm, srv, wrk, batches, "/v1/batch", args.batch_conns, "w", totals, work)

        print("(a) /v1/batch maximum throughput")
        a = max_rate("batch", args, srv, wrk, batches, "/v1/batch", args.batch_conns, "a", totals, work)
        print("(b) /v1/track maximum request rate")
        b = max_rate("track", args, srv, wrk, tracks, "/v1/track", args.track_conns, "b", totals, work)

        print("(c) acknowledgement latency at half the measured maximum (open loop, fixed rate)")
        batch_rate = max(1.0, a["events_per_s"] / 2 / avg_n)
        ca = fixed_rate(
            f"batch at {a['events_per_s'] / 2:,.0f} events/s",
            args,
            srv,
            batches,
            "/v1/batch",
            batch_rate,
            64,
            "ca",
            totals,
        )
        track_rate = max(1.0, b["requests_per_s"] / 2)
        cb = fixed_rate("track", args, srv, tracks, "/v1/track", track_rate, 256, "cb", totals)

        profiles_text = []
        if args.profile:
            for label, tpls, path, conns, rid in (
                ("batch", batches, "/v1/batch", args.batch_conns, "pa"),
                ("track", tracks, "/v1/track", args.track_conns, "pb"),
            ):
                secs = min(args.seconds, 15.0)
                spy = PySpy(srv.proc.pid, work / f"pyspy-{rid}.txt", secs + 1)  # type: ignore[union-attr]
                time.sleep(0.5)
                pargs = argparse.Namespace(**{**vars(args), "seconds": secs})
                max_rate(f"{label} (under py-spy)", pargs, srv, wrk, tpls, path, conns, rid, totals, work)
                profiles_text.append((label, spy.finish()))

        # requests wrk cut off may still be in the writer's queue: let it drain before reading
        server_accepted = srv.metric("goldkey_events_accepted_total")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = srv.metric("goldkey_events_accepted_total")
            if now == server_accepted and srv.get_json("/healthz").get("queue_depth", 0) == 0:
                break
            server_accepted = now
        server_dups = srv.metric("goldkey_events_duplicate_total")
        rc = srv.stop()
        stored = duckdb_count(srv.data_dir)
        with sqlite3.connect(f"file:{srv.data_dir / 'operational.sqlite'}?mode=ro", uri=True) as con:
            n_profiles = con.execute("SELECT count(*) FROM profiles").fetchone()[0]
            n_ids = con.execute("SELECT count(*) FROM identities").fetchone()[0]
        if rc not in (0, None):
            print(f"server exited with {rc}:\n{srv.log_tail()}")

    ok_server = stored == int(server_accepted)
    ok_client = totals.acked <= stored <= totals.acked + totals.unanswered_max
    known = 1 - n_profiles / max(1, totals.requests)
    print("verification (server stopped, DuckDB opened read-only):")
    print(
        f"  stored events {stored:,}; server's accepted counter {int(server_accepted):,} "
        f"-> {'EQUAL' if ok_server else 'MISMATCH'}"
    )
    print(
        f"  generator saw {totals.acked:,} acknowledged (+{totals.duplicates} duplicates); at most "
        f"{totals.unanswered_max:,} events were in flight when a run was cut -> stored within "
        f"[acked, acked + in flight]: {'YES' if ok_client else 'NO'}; server duplicates {int(server_dups)}"
    )
    print(
        f"  identity: {n_profiles:,} profiles, {n_ids:,} identifiers; {totals.requests:,} requests, so "
        f"~{100 * known:.0f}% of requests came from a user already known"
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def ack_ok(c: dict[str, Any]) -> bool:  # a latency target is met only if every request was acknowledged
        refused = c.get("non200", 0) + c.get("errors", 0) + c.get("unanswered", 0)
        return c["p99_ms"] < TARGET_P99_MS and refused == 0

    print("results:")
    print(
        f"  (a) batch      {a['events_per_s']:>12,.0f} events/s   target {TARGET_BATCH_EPS:,}  "
        f"{verdict(a['events_per_s'] >= TARGET_BATCH_EPS)}  ({a['cpu_us_per_event']:,.1f} us server CPU per event, "
        f"server at {a['server_cpu_pct']}% of one core, load average {a['load_avg']})"
    )
    print(
        f"  (b) track      {b['requests_per_s']:>12,.0f} req/s      target {TARGET_TRACK_RPS:,}  "
        f"{verdict(b['requests_per_s'] >= TARGET_TRACK_RPS)}  ({b['cpu_us_per_request']:,.1f} us server CPU per "
        f"request, server at {b['server_cpu_pct']}% of one core, load average {b['load_avg']})"
    )
    print(
        f"  (c) batch p99  {ca['p99_ms']:>12,.1f} ms at {a['events_per_s'] / 2:,.0f} events/s   "
        f"target < {TARGET_P99_MS:.0f} ms  {verdict(ack_ok(ca))}"
    )
    print(
        f"  (c) track p99  {cb['p99_ms']:>12,.1f} ms at {track_rate:,.0f} req/s   "
        f"target < {TARGET_P99_MS:.0f} ms  {verdict(ack_ok(cb))}"
    )
    for label, text in profiles_text:
        print(f"server profile during the {label} run (py-spy, CPU-busy samples):")
        print("\n".join("  " + line for line in text.splitlines()))

    gen = "wrk" if wrk else "python"
    rows += [
        {
            "metric": "batch throughput",
            "value": round(a["events_per_s"]),
            "unit": "events/s",
            "target": f">= {TARGET_BATCH_EPS:,}",
            "met": a["events_per_s"] >= TARGET_BATCH_EPS,
            "note": f"{gen}; {a['cpu_us_per_event']:.1f} us CPU/event; {a['server_cpu_s']} CPU-s in {a['wall_s']} s; "
            f"load {a['load_avg']}",
        },
        {
            "metric": "track throughput",
            "value": round(b["requests_per_s"]),
            "unit": "req/s",
            "target": f">= {TARGET_TRACK_RPS:,}",
            "met": b["requests_per_s"] >= TARGET_TRACK_RPS,
            "note": f"{gen}; {b['cpu_us_per_request']:.1f} us CPU/request; {b['server_cpu_s']} CPU-s "
            f"in {b['wall_s']} s; load {b['load_avg']}",
        },
        {
            "metric": "batch ack p50/p95/p99 @ half",
            "value": f"{ca['p50_ms']}/{ca['p95_ms']}/{ca['p99_ms']}",
            "unit": "ms",
            "target": f"p99 < {TARGET_P99_MS:.0f}",
            "met": ack_ok(ca),
            "note": f"{a['events_per_s'] / 2:,.0f} ev/s",
        },
        {
            "metric": "track ack p50/p95/p99 @ half",
            "value": f"{cb['p50_ms']}/{cb['p95_ms']}/{cb['p99_ms']}",
            "unit": "ms",
            "target": f"p99 < {TARGET_P99_MS:.0f}",
            "met": ack_ok(cb),
            "note": f"{track_rate:,.0f} req/s",
        },
        {
            "metric": "stored == acknowledged",
            "value": f"{stored:,}",
            "unit": "events",
            "target": "equal",
            "met": ok_server and ok_client,
            "note": f"server counter {int(server_accepted):,}",
        },
    ]
    emit_summary("ingest", rows)
    print(f"({cores()} cores shared by server and generator)")
    return 0 if ok_server and ok_client else 1


if __name__ == "__main__":
    sys.exit(main())
