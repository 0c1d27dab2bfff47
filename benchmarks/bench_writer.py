"""In-process benchmark of the ingestion write path, without HTTP: what the single writer can do.

Builds the same SDK-like batches as ``bench_ingest.py``, parses and normalises them as the tracking
API does (timed separately: that part runs on the server's event loop), then submits them to the
writer of a ``Goldkey`` opened on a fresh temp data dir, keeping ``--inflight`` requests queued
(as concurrent HTTP clients would) and waiting for every durable acknowledgement.

Prints events/s through the writer and where the writer's time goes: inclusive wall time of the
group-commit stages (identity normalisation, prefetch, resolution, operational-store writes,
Arrow building, the DuckDB insert and its COMMIT), measured by wrapping those functions in this
process only. A diagnostic for the ingestion figures of ``bench_ingest.py``.

Usage::

    python benchmarks/bench_writer.py [--quick] [--events 300000] [--users 20000] [--inflight 32]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EventFactory, UserPicker, check_noise, emit_summary, machine_line  # noqa: E402

STAGES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0.0])  # seconds, calls, slowest call
COMMIT_TIMES: list[float] = []


def _wrap(owner: Any, name: str, label: str) -> None:
    fn = getattr(owner, name, None)
    if fn is None:
        return

    @functools.wraps(fn)
    def timed(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            s = STAGES[label]
            d = time.perf_counter() - t
            s[0] += d
            s[1] += 1
            s[2] = max(s[2], d)

    setattr(owner, name, timed)


class _TimedCursor:
    """Forwards to a DuckDB cursor, timing COMMIT and INSERT statements."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, *a: Any, **kw: Any) -> Any:
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        label = {"COMMIT": "duckdb COMMIT", "INSERT": "duckdb INSERT (from Arrow)"}.get(head)
        t = time.perf_counter()
        try:
            return self._cur.execute(sql, *a, **kw)
        finally:
            if label == "duckdb COMMIT":
                COMMIT_TIMES.append(time.perf_counter() - t)
            if label:
                s = STAGES[label]
                d = time.perf_counter() - t
                s[0] += d
                s[1] += 1
                s[2] = max(s[2], d)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def instrument() -> None:
    from goldkey.collect import writer as w
    from goldkey.identity.graph import IdentityGraph
    from goldkey.store.analytical import AnalyticalStore

    _wrap(w.Writer, "write_events", "write_events (whole group commit)")
    _wrap(w.Writer, "_apply_deltas", "  _apply_deltas (read+merge+update profiles)")
    _wrap(w.Writer, "_append_events", "  _append_events (Arrow + DuckDB txn)")
    _wrap(IdentityGraph, "normalised", "  graph.normalised")
    _wrap(IdentityGraph, "prefetch", "  graph.prefetch")
    _wrap(IdentityGraph, "resolve", "  graph.resolve")
    _wrap(IdentityGraph, "flush", "  graph.flush (insert profiles/identities)")
    _wrap(w, "_compact", "  _compact (recent-event entry)")
    _wrap(w, "_first_seen_context", "  _first_seen_context")
    orig = AnalyticalStore.cursor

    def cursor(self: Any) -> Any:
        return _TimedCursor(orig(self))

    AnalyticalStore.cursor = cursor  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int, default=None, help="events to write (default 300000; quick 40000)")
    ap.add_argument("--users", type=int, default=None, help="distinct users (default 20000; quick 2000)")
    ap.add_argument("--inflight", type=int, default=32, help="requests kept queued at the writer")
    ap.add_argument(
        "--duckdb-set",
        default=None,
        help="diagnostics: a DuckDB setting applied after open, e.g. \"wal_autocheckpoint='10GB'\"",
    )
    args = ap.parse_args()
    n_events = args.events or (40_000 if args.quick else 300_000)
    users = args.users or (2_000 if args.quick else 20_000)

    from goldkey.collect.tracking import normalise_event, now_micros
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    print("== bench_writer: the single writer in-process (no HTTP) ==")
    print(machine_line().replace("server and load generator share these cores", "one process"))
    check_noise()
    fac = EventFactory(seed=11)
    templates = fac.batch_templates(32 if args.quick else 64)
    pick = UserPicker(users, max(1, users // 10), seed=3)
    bodies: list[bytes] = []
    total = 0
    i = 0
    while total < n_events:
        tpl, n = templates[i % len(templates)]
        bodies.append(EventFactory.fill(tpl, pick(), f"w-{i}"))
        total += n
        i += 1

    # what the API does on the event loop per request: parse the body, normalise every event
    t = time.perf_counter()
    requests: list[list[Any]] = []
    for body in bodies:
        data = orjson.loads(body)
        received = now_micros()
        requests.append(
            [normalise_event(e, received_at=received, record=k, size=0) for k, e in enumerate(data["batch"])]
        )
    parse_s = time.perf_counter() - t
    print(
        f"parse + normalise (API side, one thread): {total:,} events in {parse_s:.2f} s -> "
        f"{total / parse_s:,.0f} events/s ({1e6 * parse_s / total:.1f} us/event)"
    )

    instrument()
    with tempfile.TemporaryDirectory(prefix="goldkey-bench-writer-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp) / "data"))
        try:
            ws = gk.workspaces.create("bench").workspace_id
            if args.duckdb_set:
                print(f"DIAGNOSTIC: SET {args.duckdb_set}")
                gk.analytical.cursor().execute(f"SET {args.duckdb_set}")
            t = time.perf_counter()
            pending: list[Any] = []
            accepted = 0
            for evs in requests:
                pending.append(gk.writer.submit_events(ws, evs))
                if len(pending) >= args.inflight:
                    accepted += pending.pop(0).result(timeout=600).accepted
            for f in pending:
                accepted += f.result(timeout=600).accepted
            secs = time.perf_counter() - t
        finally:
            gk.close()
    eps = accepted / secs
    wall = STAGES["write_events (whole group commit)"]
    commits = COMMIT_TIMES
    if commits:
        print(
            f"DuckDB COMMIT: {len(commits)} commits, median {1000 * sorted(commits)[len(commits) // 2]:.1f} ms, "
            f"slowest {', '.join(f'{1000 * c:.0f}' for c in sorted(commits)[-5:][::-1])} ms "
            "(outliers: DuckDB runs its automatic WAL checkpoint inside COMMIT; compare "
            "--duckdb-set \"wal_autocheckpoint='10GB'\")"
        )
    print(
        f"writer: {accepted:,} events from {len(requests):,} requests durably written in {secs:.2f} s -> "
        f"{eps:,.0f} events/s; {wall[1]} group commits, {accepted / max(1, wall[1]):,.0f} events each, "
        f"mean {1000 * wall[0] / max(1, wall[1]):.1f} ms"
    )
    print("writer time by stage (inclusive wall seconds; indented stages run inside write_events):")
    for label, (s, n, slowest) in STAGES.items():
        print(
            f"  {label:48s} {s:8.2f} s  {100 * s / secs:5.1f}%  {n:8,} calls  "
            f"{1e6 * s / max(1, accepted):7.1f} us/event  slowest call {1000 * slowest:7.1f} ms"
        )
    emit_summary(
        "writer",
        [
            {
                "metric": "writer in-process",
                "value": round(eps),
                "unit": "events/s",
                "target": "-",
                "met": None,
                "note": f"{wall[1]} commits",
            },
            {
                "metric": "API parse+normalise",
                "value": round(total / parse_s),
                "unit": "events/s",
                "target": "-",
                "met": None,
                "note": "one thread",
            },
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
