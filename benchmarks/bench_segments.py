"""Segment benchmark: a rule through the batch compiler (Ibis -> DuckDB) against hand-written SQL.

Builds synthetic data shaped like the eye-care demo market directly in a DuckDB file: profiles
with ``attributes.city/gender/age/member_tier`` and an order summary (the ``orders.*`` built-ins),
and track events ("Product Viewed", "Product Added", "Order Completed" with top-level
``sku``/``category``/``total`` ...), page and screen events, identifies. The data is generated in
bulk with DuckDB SQL (``range()`` and hash-based pseudo randomness, events stored in time order as
ingestion appends them); it does NOT go through the product's ingestion or import paths, which
have their own benchmarks (``bench_ingest.py``, ``bench_import.py``, ``bench_writer.py``). The file
is cached between runs (under the system temp dir, or ``--data-dir``; ``--rebuild`` regenerates).

Then, on one warm DuckDB connection (every figure is the best and the median of several runs, in
wall seconds and in process CPU seconds, with the load average; the compiled query and the
hand-written ones are run round-robin so that a change in the machine's load between them does not
show up as a ratio):

1. the facts table: ``facts_arrow`` over simple row objects holding what ``profile_values`` reads
   (JSON text columns, as the operational store returns them), then the Arrow -> DuckDB table
   write of ``build_facts``; reported in rows/s. The table written is the one queried below.
2. a segment with two attribute and three event conditions::

       city in [上海, 北京, 广州, 深圳, 杭州] and age between 25 and 45
       and did "Order Completed" (category = lens) at least 2 times in the last 90 days
       and did "Product Viewed" in the last 30 days
       and did not "Order Completed" (category = solution) in the last 180 days

   through ``goldkey.rules.batch.members(...).count()`` executed by Ibis (rule check, expression
   building and SQL compilation included; building+compiling and executing the compiled SQL are
   also reported apart), against the same logic hand-written in DuckDB SQL (the fastest of a few
   formulations). Target: compiled within 2x of hand-written on 1M profiles / 10M events.
3. the live estimate as ``Segments.estimate`` runs it (target < 1 s on the default demo, about
   50k profiles / 2M events, the ``--quick`` size): the member ids through the product's
   ``events_for`` view shape (workspace filter, profile-map join), plus loading the events of 3
   example members and explaining them with the in-memory evaluator. The operational-store parts
   (rule parsing and catalog reads, a few ms) are left out.

Targets are printed, never asserted.

Usage::

    python benchmarks/bench_segments.py [--quick] [--profiles 1000000] [--events 10000000]
                                        [--repeat 7] [--data-dir DIR] [--rebuild] [--show-sql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections import namedtuple
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import check_noise, emit_summary, machine_line  # noqa: E402

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
WS = "bench"
GEN_VERSION = 1  # bump when the generator below changes (the cache key)
TARGET_RATIO = 2.0
TARGET_ESTIMATE_S = 1.0
ATTRIBUTES = {
    "attributes.city": "string",
    "attributes.gender": "string",
    "attributes.age": "number",
    "attributes.member_tier": "string",
}
RULE_CITIES = ["上海", "北京", "广州", "深圳", "杭州"]
RULE = {
    "kind": "and",
    "conditions": [
        {"kind": "attribute", "field": "attributes.city", "op": "in", "value": RULE_CITIES},
        {"kind": "attribute", "field": "attributes.age", "op": "between", "value": [25, 45]},
        {
            "kind": "event",
            "event": "Order Completed",
            "count": {"op": "at_least", "n": 2},
            "where": [{"property": "category", "op": "eq", "value": "lens"}],
            "window": {"last_days": 90},
        },
        {"kind": "event", "event": "Product Viewed", "window": {"last_days": 30}},
        {
            "kind": "event",
            "event": "Order Completed",
            "did": False,
            "where": [{"property": "category", "op": "eq", "value": "solution"}],
            "window": {"last_days": 180},
        },
    ],
}


# --------------------------------------------------------------------------- timing


CPU: dict[int, list[float]] = {}  # id(wall list) -> process CPU seconds of the same runs


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; return (wall seconds, last result).

    The process CPU seconds of each run (every DuckDB thread included) are kept in ``CPU`` under
    the wall list's id: on a shared, loaded machine the wall figure swings with the neighbours'
    load while the CPU figure shows the work done."""
    out = None
    for _ in range(warmup):
        out = fn()
    secs = []
    cpu = []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        secs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU[id(secs)] = cpu
    return secs, out


def timed_interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1
) -> dict[str, tuple[list[float], Any]]:
    """Like ``timed`` for several functions, run round-robin (a, b, c, a, b, c ...) so that each
    sees the same share of the neighbours' load: timed one after the other, a ratio between them
    on a shared machine mostly measured how the load changed between the blocks."""
    out: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            out[name] = fn()
    secs: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            out[name] = fn()
            secs[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    for name in fns:
        CPU[id(secs[name])] = cpu[name]
    return {name: (secs[name], out[name]) for name in fns}


def fmt(secs: list[float]) -> str:
    out = f"best {min(secs):.3f} s, median {statistics.median(secs):.3f} s ({len(secs)} runs)"
    cpu = CPU.get(id(secs))
    if cpu:
        out += f"; CPU best {min(cpu):.3f} s, median {statistics.median(cpu):.3f} s"
    return out + f"; load {os.getloadavg()[0]:.1f}"


# --------------------------------------------------------------------------- data


def market_lists() -> tuple[list[tuple[str, str, str, str, float]], list[tuple[str, str]], list[str], list[str]]:
    """Products (sku, name, category, brand, price), pages, tiers and cities of the eye-care demo."""
    from goldkey.demo._base import CITIES
    from goldkey.demo.eyecare import PAGES, PRODUCTS, TIERS

    products = [(p[0], p[1], p[2], p[4], float(p[5])) for p in PRODUCTS]
    # the rule's cities first: the generator below favours the head of the list
    cities = RULE_CITIES + [c[1] for c in CITIES if c[1] not in RULE_CITIES]
    return products, list(PAGES), list(TIERS), cities


def data_file(data_dir: Path, n_prof: int, n_ev: int) -> Path:
    key = zlib.crc32(repr((GEN_VERSION, market_lists(), AS_OF.isoformat())).encode())
    return data_dir / f"segments-{n_prof}p-{n_ev}e-{key:08x}.duckdb"


def generate(path: Path, n_prof: int, n_ev: int) -> None:
    """Write the raw profiles, events and profile map into a new DuckDB file at ``path``."""
    import duckdb
    import pyarrow as pa

    products, pages, tiers, cities = market_lists()
    tmp = path.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.register(
            "_products",
            pa.table(
                {
                    "idx": pa.array(range(len(products)), pa.int64()),
                    "sku": [p[0] for p in products],
                    "pname": [p[1] for p in products],
                    "category": [p[2] for p in products],
                    "brand": [p[3] for p in products],
                    "price": [p[4] for p in products],
                }
            ),
        )
        con.execute("CREATE TABLE products AS SELECT * FROM _products")
        con.register(
            "_pages",
            pa.table(
                {
                    "idx": pa.array(range(len(pages)), pa.int64()),
                    "pname": [p[0] for p in pages],
                    "path": [p[1] for p in pages],
                }
            ),
        )
        con.execute("CREATE TABLE pages AS SELECT * FROM _pages")
        # u(i, k): a pseudo-random number in [0, 1) per row i and stream k
        con.execute("CREATE MACRO u(i, k) AS (hash(i, k) % 1000003)::DOUBLE / 1000003")
        con.execute("CREATE MACRO pid(n) AS 'p' || lpad(n::VARCHAR, 8, '0')")
        con.execute("CREATE MACRO iso(t) AS strftime(t, '%Y-%m-%dT%H:%M:%S+00:00')")
        t = time.perf_counter()
        con.execute(
            f"""
            CREATE TABLE raw_profiles AS
            WITH g AS (
                SELECT i, u(i, 1) AS a, u(i, 2) AS b, u(i, 3) AS c, u(i, 4) AS d, u(i, 5) AS e, u(i, 6) AS f,
                       u(i, 7) AS g, u(i, 8) AS h
                FROM range({n_prof}) r(i))
            SELECT
                pid(i) AS profile_id,
                json_object(
                    'city', CASE WHEN a < 0.92 THEN ($cities)[1 + floor({len(cities)} * pow(b, 1.8))::INT] END,
                    'gender', CASE WHEN c < 0.55 THEN 'female' WHEN c < 0.93 THEN 'male' END,
                    'age', CASE WHEN d < 0.8 THEN 16 + floor(54 * pow(e, 1.3))::INT END,
                    'member_tier', ($tiers)[1 + floor({len(tiers)} * pow(f, 2.2))::INT]
                )::VARCHAR AS attributes,
                '{{}}' AS traits, '{{}}' AS tags, '{{}}' AS scores,
                CASE WHEN g < 0.45 THEN json_object(
                    'orders', 1 + floor(8 * pow(h, 3))::INT,
                    'revenue', round(60 + 3000 * pow(h, 2), 2),
                    'first_order_at', iso(TIMESTAMP '2023-01-01' + to_days(floor(1000 * h)::INT)),
                    'last_order_at', iso(TIMESTAMP '2025-06-01' + to_days(floor(270 * a)::INT)),
                    'skus', [($skus)[1 + floor({len(products)} * c)::INT]],
                    'categories', [($cats)[1 + floor({len(products)} * c)::INT]]
                )::VARCHAR ELSE '{{}}' END AS order_summary,
                CASE WHEN b < 0.6 THEN 'existing' ELSE 'new' END AS origin,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_microseconds((d * 7.5e13)::BIGINT) AS first_seen_at,
                CASE WHEN b < 0.6 THEN 'import:customers' ELSE 'tracking' END AS first_seen_source,
                TIMESTAMPTZ '2025-09-01 00:00:00+00' + to_microseconds((e * 1.5e13)::BIGINT) AS last_seen_at,
                CASE WHEN f < 0.3 THEN ['phone', 'wechat_openid'] WHEN f < 0.9 THEN ['phone']
                     ELSE ['anonymous_id'] END AS identifier_types
            FROM g
            """,
            {
                "cities": cities,
                "tiers": tiers,
                "skus": [p[0] for p in products],
                "cats": [p[2] for p in products],
            },
        )
        print(f"  profiles: {n_prof:,} in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        # event kinds by the stream-2 draw k; profiles skewed (some busy, many quiet); timestamps
        # over the year before AS_OF, denser towards it
        con.execute(
            f"""
            CREATE TABLE events_flat AS
            WITH g AS (
                SELECT i,
                       floor({n_prof} * pow(u(i, 11), 1.4))::BIGINT AS p,
                       u(i, 12) AS k,
                       TIMESTAMPTZ '{AS_OF.isoformat()}'
                         - to_microseconds((pow(u(i, 13), 1.25) * 365 * 86400e6)::BIGINT) AS ts,
                       floor({len(products)} * u(i, 14))::BIGINT AS prod,
                       floor({len(pages)} * pow(u(i, 15), 2))::BIGINT AS page,
                       1 + floor(3 * pow(u(i, 16), 3))::INT AS qty
                FROM range({n_ev}) r(i)),
            e AS (
                SELECT g.i, pid(g.p) AS profile_id, g.ts AS "timestamp",
                  CASE WHEN k < 0.20 THEN 'page' WHEN k < 0.26 THEN 'screen' WHEN k < 0.29 THEN 'identify'
                       ELSE 'track' END AS type,
                  CASE WHEN k < 0.29 THEN NULL
                       WHEN k < 0.57 THEN 'Product Viewed'
                       WHEN k < 0.66 THEN 'Product Added'
                       WHEN k < 0.72 THEN 'Order Completed'
                       WHEN k < 0.74 THEN 'Signed Up'
                       WHEN k < 0.86 THEN 'Search'
                       WHEN k < 0.92 THEN 'Coupon Claimed'
                       ELSE 'Checkout Started' END AS event,
                  CASE WHEN k < 0.26 THEN pg.pname END AS name,
                  CASE
                    WHEN k < 0.20 THEN json_object('title', pg.pname || ' - 明眸', 'path', pg.path,
                                                   'url', 'https://www.mingmou.cn' || pg.path, 'referrer', '')
                    WHEN k < 0.26 THEN json_object('path', pg.path)
                    WHEN k < 0.29 THEN json_object()
                    WHEN k < 0.57 THEN json_object('product_id', pr.sku, 'sku', pr.sku, 'name', pr.pname,
                                                   'category', pr.category, 'brand', pr.brand,
                                                   'price', pr.price, 'currency', 'CNY')
                    WHEN k < 0.66 THEN json_object('product_id', pr.sku, 'sku', pr.sku, 'category', pr.category,
                                                   'price', pr.price, 'quantity', qty)
                    WHEN k < 0.72 THEN json_object('order_id', 'O' || (10000000 + g.i)::VARCHAR, 'sku', pr.sku,
                                                   'category', pr.category, 'total', round(pr.price * qty, 2),
                                                   'revenue', round(pr.price * qty, 2), 'currency', 'CNY')
                    WHEN k < 0.74 THEN json_object('method', CASE WHEN qty = 1 THEN 'wechat' ELSE 'phone' END)
                    WHEN k < 0.86 THEN json_object('query', pr.pname, 'results', (g.i % 80)::INT)
                    WHEN k < 0.92 THEN json_object('coupon_id', 'CP' || (100 + g.i % 900)::VARCHAR,
                                                   'campaign', 'spring')
                    ELSE json_object('value', round(pr.price * qty, 2), 'currency', 'CNY')
                  END AS properties
                FROM g JOIN products pr ON pr.idx = g.prod JOIN pages pg ON pg.idx = g.page)
            SELECT profile_id, type, event, name, "timestamp", properties::JSON AS properties
            FROM e ORDER BY "timestamp", i
            """
        )
        print(f"  events: {n_ev:,} in {time.perf_counter() - t:.1f} s", flush=True)
        # a few merged profiles, so the events_resolved join has rows (each maps to itself here)
        con.execute(
            f"CREATE TABLE profile_map AS SELECT '{WS}' AS workspace_id, profile_id, profile_id AS canonical_id "
            "FROM raw_profiles WHERE hash(profile_id) % 50 = 0"
        )
        # the shape of the analytical store's events_resolved view (one workspace)
        con.execute(
            f"""CREATE VIEW events_resolved AS
                SELECT '{WS}' AS workspace_id, e.*, coalesce(m.canonical_id, e.profile_id) AS canonical_id
                FROM events_flat e LEFT JOIN profile_map m
                  ON m.workspace_id = '{WS}' AND m.profile_id = e.profile_id"""
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, path)


# --------------------------------------------------------------------------- facts


def profile_rows(con: Any) -> tuple[list[Any], dict[str, list[str]]]:
    """The raw profiles as simple row objects with the attributes ``profile_values`` reads, and
    the identifier types per profile (what ``build_facts`` reads from the operational store)."""
    from goldkey.audience.catalog import PROFILE_VALUE_COLUMNS

    # the generated profiles have no model tags (profile_scores.model_tags)
    cols = ", ".join("'{}' AS model_tags" if c == "model_tags" else c for c in PROFILE_VALUE_COLUMNS)
    tbl = con.sql(f"SELECT {cols}, identifier_types FROM raw_profiles ORDER BY profile_id").to_arrow_table()
    row = namedtuple("ProfileRow", PROFILE_VALUE_COLUMNS)  # type: ignore[misc]
    cols = [tbl.column(c).to_pylist() for c in PROFILE_VALUE_COLUMNS]
    rows = list(map(row, *cols))
    id_types = dict(zip(cols[0], tbl.column("identifier_types").to_pylist(), strict=True))
    return rows, id_types


# --------------------------------------------------------------------------- hand-written SQL


def hand_sql(table: str = "events_flat") -> dict[str, str]:
    """The segment's logic written by hand in DuckDB SQL, a few ways; the fastest is the floor.

    ``properties->>'category' = 'lens'`` is exact for these filters: only a JSON string can
    unquote to a word like ``lens``."""
    lo90, lo30, lo180, now = (f"TIMESTAMPTZ '{t.isoformat()}'" for t in window_edges())
    cities = ", ".join(f"'{c}'" for c in RULE_CITIES)
    attrs = f"f.attributes__city IN ({cities}) AND f.attributes__age BETWEEN 25 AND 45"
    counts = f"""
        count(*) FILTER (WHERE event = 'Order Completed' AND "timestamp" >= {lo90}
                         AND properties->>'category' = 'lens') >= 2
        AND count(*) FILTER (WHERE event = 'Product Viewed' AND "timestamp" >= {lo30}) >= 1
        AND count(*) FILTER (WHERE event = 'Order Completed' AND properties->>'category' = 'solution') = 0"""
    scan = f"""FROM {table} WHERE type = 'track' AND event IN ('Order Completed', 'Product Viewed')
                 AND "timestamp" >= {lo180} AND "timestamp" <= {now}"""
    return {
        "aggregate + join": f"""
            SELECT count(*) FROM facts f JOIN (
                SELECT profile_id {scan} GROUP BY profile_id HAVING {counts}
            ) e USING (profile_id) WHERE {attrs}""",
        "attributes first (semi-join)": f"""
            WITH cand AS (SELECT profile_id FROM facts f WHERE {attrs})
            SELECT count(*) FROM (
                SELECT profile_id {scan} AND profile_id IN (SELECT profile_id FROM cand)
                GROUP BY profile_id HAVING {counts})""",
        "exists / not exists": f"""
            SELECT count(*) FROM facts f WHERE {attrs}
              AND f.profile_id IN (
                SELECT profile_id FROM {table} WHERE type = 'track' AND event = 'Order Completed'
                  AND "timestamp" >= {lo90} AND "timestamp" <= {now} AND properties->>'category' = 'lens'
                GROUP BY profile_id HAVING count(*) >= 2)
              AND f.profile_id IN (
                SELECT profile_id FROM {table} WHERE type = 'track' AND event = 'Product Viewed'
                  AND "timestamp" >= {lo30} AND "timestamp" <= {now})
              AND f.profile_id NOT IN (
                SELECT profile_id FROM {table} WHERE type = 'track' AND event = 'Order Completed'
                  AND "timestamp" >= {lo180} AND "timestamp" <= {now}
                  AND properties->>'category' = 'solution')""",
    }


def window_edges() -> tuple[datetime, datetime, datetime, datetime]:
    from goldkey.rules.values import days

    return AS_OF - days(90), AS_OF - days(30), AS_OF - days(180), AS_OF


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50k profiles / 2M events (the default demo's size)")
    ap.add_argument("--profiles", type=int, default=None, help="profiles (default 1000000; quick 50000)")
    ap.add_argument("--events", type=int, default=None, help="events (default 10000000; quick 2000000)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per query (default 7)")
    ap.add_argument("--facts-repeat", type=int, default=3, help="timed runs of the facts build")
    ap.add_argument("--data-dir", type=Path, default=None, help="where the generated DuckDB file is cached")
    ap.add_argument("--rebuild", action="store_true", help="regenerate the data even when cached")
    ap.add_argument("--show-sql", action="store_true", help="print the SQL the batch compiler generates")
    args = ap.parse_args()
    n_prof = args.profiles or (50_000 if args.quick else 1_000_000)
    n_ev = args.events or (2_000_000 if args.quick else 10_000_000)
    repeat = args.repeat or 7

    import duckdb
    import ibis

    from goldkey.audience.catalog import BUILTIN_FIELDS, profile_values
    from goldkey.audience.common import load_events
    from goldkey.audience.facts import events_for, facts_arrow
    from goldkey.rules.batch import members
    from goldkey.rules.memory import compile_rule
    from goldkey.rules.model import parse_rule

    print("== bench_segments: segment rule, batch compiler vs hand-written DuckDB SQL ==")
    print(machine_line().replace("server and load generator share these cores", "one process"))
    check_noise()
    data_dir = args.data_dir or Path(tempfile.gettempdir()) / "goldkey-bench-segments"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_file(data_dir, n_prof, n_ev)
    if args.rebuild or not path.exists():
        print(f"generating {n_prof:,} profiles / {n_ev:,} events into {path} (bulk DuckDB SQL) ...", flush=True)
        t = time.perf_counter()
        generate(path, n_prof, n_ev)
        print(f"  generated in {time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e6:,.0f} MB)", flush=True)
    else:
        print(f"using cached data {path} ({path.stat().st_size / 1e6:,.0f} MB; --rebuild regenerates)")

    raw = duckdb.connect(str(path))
    # the analytical store's ``events`` table shape that ``load_events`` reads (step 3): the
    # generated file holds one workspace's events in ``events_flat``
    raw.execute(f"CREATE OR REPLACE VIEW events AS SELECT '{WS}' AS workspace_id, * FROM events_flat")
    threads = raw.execute("SELECT current_setting('threads')").fetchall()[0][0]
    print(f"DuckDB {duckdb.__version__}, {threads} threads; Ibis {ibis.__version__}; as_of {AS_OF.isoformat()}")
    rows_out: list[dict[str, Any]] = []
    try:
        n_events = raw.execute("SELECT count(*) FROM events_flat").fetchall()[0][0]
        mix = raw.execute(
            "SELECT coalesce(event, type), count(*) FROM events_flat GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        print(f"events: {n_events:,}; " + ", ".join(f"{k} {100 * n / n_events:.0f}%" for k, n in mix))

        # ---- 1. facts table
        catalog = dict(BUILTIN_FIELDS, **ATTRIBUTES)
        t = time.perf_counter()
        prows, id_types = profile_rows(raw)
        print(f"\n[facts] {len(prows):,} profile row objects loaded in {time.perf_counter() - t:.1f} s (untimed)")
        arrow_secs: list[float] = []
        write_secs: list[float] = []
        table = None
        for _ in range(max(1, args.facts_repeat)):
            table = None
            t = time.perf_counter()
            table = facts_arrow(prows, catalog, id_types)
            arrow_secs.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw.register("_facts_src", table)
            try:
                raw.execute("CREATE OR REPLACE TABLE facts AS SELECT * FROM _facts_src")
            finally:
                raw.unregister("_facts_src")
            write_secs.append(time.perf_counter() - t)
        n = table.num_rows if table is not None else 0
        fa_rate = n / min(arrow_secs)
        total_best = min(a + w for a, w in zip(arrow_secs, write_secs, strict=True))
        print(f"  facts_arrow ({len(catalog)} fields): {fmt(arrow_secs)} -> {fa_rate:,.0f} rows/s (best)")
        print(f"  Arrow -> DuckDB table: {fmt(write_secs)}")
        print(f"  facts build (both): best {total_best:.3f} s -> {n / total_best:,.0f} rows/s")
        del table

        # ---- 2. the segment: compiled vs hand-written
        rule = parse_rule(RULE)
        con = ibis.duckdb.from_connection(raw)
        facts_t, events_t = con.table("facts"), con.table("events_flat")

        def build() -> Any:
            return members(rule, catalog, facts_t, events_t, AS_OF).count()

        def compiled_total() -> int:
            return int(build().execute())

        sql = ibis.to_sql(build())
        if args.show_sql:
            print(f"\n-- the compiled SQL:\n{sql}")
        b_secs, _ = timed(lambda: ibis.to_sql(build()), repeat)
        hand_q = hand_sql()
        runs = timed_interleaved(
            {
                "compiled": compiled_total,
                "compiled SQL": lambda: raw.execute(sql).fetchall()[0][0],
                **{name: (lambda q=q: raw.execute(q).fetchall()[0][0]) for name, q in hand_q.items()},
            },
            repeat,
        )
        c_secs, compiled_n = runs["compiled"]
        x_secs, got = runs["compiled SQL"]
        print(f"\n[segment] 2 attribute + 3 event conditions over {n_prof:,} profiles / {n_events:,} events")
        print("  (the compiled query and the hand-written ones are timed round-robin, so they share the load)")
        print(f"  compiled, end to end (members().count() via Ibis): {fmt(c_secs)} -> {compiled_n:,} members")
        print(f"    rule check + expression + SQL compile: {fmt(b_secs)}")
        print(f"    execute the compiled SQL:             {fmt(x_secs)} -> {got:,}")
        hand: dict[str, list[float]] = {}
        for name in hand_q:
            secs, hn = runs[name]
            hand[name] = secs
            flag = "" if hn == compiled_n else f"  (!! {hn:,} members, compiled says {compiled_n:,})"
            print(f"  hand-written SQL, {name + ':':29s} {fmt(secs)}{flag}")
        floor_name = min(hand, key=lambda k: min(hand[k]))
        floor = min(hand[floor_name])
        ratio = min(c_secs) / floor
        ratio_med = statistics.median(c_secs) / statistics.median(hand[floor_name])
        ratio_cpu = min(CPU[id(c_secs)]) / max(min(CPU[id(hand[floor_name])]), 1e-9)
        print(
            f"  ratio compiled / hand-written floor ({floor_name}): {ratio:.2f}x best, {ratio_med:.2f}x median, "
            f"{ratio_cpu:.2f}x best CPU (target <= {TARGET_RATIO:.0f}x; the issue's floor on its machine was 0.12 s)"
        )
        rows_out += [
            {
                "metric": "segment compiled (best)",
                "value": round(min(c_secs), 3),
                "unit": "s",
                "target": "-",
                "met": None,
                "note": f"median {statistics.median(c_secs):.3f} s; {n_prof:,} p / {n_events:,} ev",
            },
            {
                "metric": "segment hand-written SQL (best)",
                "value": round(floor, 3),
                "unit": "s",
                "target": "-",
                "met": None,
                "note": floor_name,
            },
            {
                "metric": "segment compiled / hand-written",
                "value": round(ratio, 2),
                "unit": "x",
                "target": f"<= {TARGET_RATIO:.0f}x",
                "met": ratio <= TARGET_RATIO,
                "note": f"median ratio {ratio_med:.2f}x; CPU-time ratio {ratio_cpu:.2f}x; "
                f"load {os.getloadavg()[0]:.1f}",
            },
        ]

        # ---- 3. the live estimate, through the events_for view shape
        ev_view = events_for(con, WS)

        class _Store:  # what load_events needs of the AnalyticalStore
            def cursor(self) -> Any:
                return raw.cursor()

        store = _Store()
        by_id = {r.profile_id: r for r in prows}
        compiled_rule = compile_rule(rule, catalog)

        def estimate() -> tuple[int, float]:
            ids = members(rule, catalog, facts_t, ev_view, AS_OF).to_pyarrow()
            t_ids = time.perf_counter()
            examples = sorted(ids.column("profile_id").to_pylist()[:60])[:3]
            evs = load_events(store, WS, examples)  # type: ignore[arg-type]
            for pid in examples:
                vals = profile_values(by_id[pid])
                compiled_rule.explain(vals, evs.get(pid, []), AS_OF)
            return ids.num_rows, t_ids

        e_secs: list[float] = []
        id_secs: list[float] = []
        size = 0
        estimate()
        for _ in range(repeat):
            t = time.perf_counter()
            size, t_ids = estimate()
            e_secs.append(time.perf_counter() - t)
            id_secs.append(t_ids - t)
        print(f"\n[estimate] as Segments.estimate runs it, over the events_resolved view ({n_prof:,} profiles)")
        print(f"  member ids (members().to_pyarrow()): {fmt(id_secs)} -> {size:,} ids")
        print(f"  + 3 examples' events loaded and explained: total {fmt(e_secs)}")
        demo_size = n_prof <= 60_000 and n_events <= 2_500_000
        rows_out.append(
            {
                "metric": "segment estimate (best)",
                "value": round(min(e_secs), 3),
                "unit": "s",
                "target": f"< {TARGET_ESTIMATE_S:.0f} s" if demo_size else "-",
                "met": (min(e_secs) < TARGET_ESTIMATE_S) if demo_size else None,
                "note": f"median {statistics.median(e_secs):.3f} s; {n_prof:,} p / {n_events:,} ev",
            }
        )
        rows_out.append(
            {
                "metric": "facts_arrow",
                "value": round(fa_rate),
                "unit": "rows/s",
                "target": "-",
                "met": None,
                "note": f"+ table write: {n / total_best:,.0f} rows/s",
            }
        )
    finally:
        raw.close()
    emit_summary("segments", rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
