"""The same batch expressions select the same profiles on PySpark (local mode) as on DuckDB.

Realistic segments (attributes, events with property filters and windows, sequences, negation)
over a few hundred profiles and a few thousand events; DuckDB, Spark and the in-memory evaluator
must agree, and every segment must select some profiles but not all.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import ibis
import pyarrow as pa
import pytest

from goldkey.rules.batch import members
from goldkey.rules.memory import Event, compile_rule
from goldkey.rules.model import parse_rule
from goldkey.rules.values import check_rule, coerce, field_column

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'future.infer_string' option is deprecated"),
]

CATALOG = {
    "attributes.city": "string",
    "attributes.phone": "string",
    "traits.orders_90d": "number",
    "scores.churn": "number",
    "tags.vip": "boolean",
    "profile.first_seen_at": "datetime",
    "attributes.interests": "list",
}
SPARK_TYPES = {
    "string": "string",
    "number": "double",
    "boolean": "boolean",
    "datetime": "timestamp",
    "list": "array<string>",
}
ARROW = {
    "string": pa.string(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "list": pa.list_(pa.string()),
}
AS_OF = datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
OOLONG = 'tea "oolong" \\ 乌龙'  # quotes, a backslash and CJK inside a JSON string

SEGMENTS: dict[str, dict[str, Any]] = {
    "big cities, repeat buyers": {
        "kind": "and",
        "conditions": [
            {"kind": "attribute", "field": "attributes.city", "op": "in", "value": ["Shanghai", "Beijing"]},
            {"kind": "attribute", "field": "traits.orders_90d", "op": "gte", "value": 3},
        ],
    },
    "two big orders this month": {
        "kind": "event",
        "event": "Order Completed",
        "count": {"op": "at_least", "n": 2},
        "where": [{"property": "amount", "op": "gte", "value": 100}],
        "window": {"last_days": 30},
    },
    "not seen this week": {
        "kind": "not",
        "condition": {"kind": "event", "event": "Product Viewed", "window": {"since": "week", "tz": "Asia/Shanghai"}},
    },
    "viewed then bought": {
        "kind": "sequence",
        "steps": [
            {"event": "Product Viewed", "where": [{"property": "category", "op": "eq", "value": "tea"}]},
            {"event": "Order Completed"},
        ],
        "within_days": 2,
        "window": {"last_days": 60},
    },
    "signup, view, buy within two weeks": {
        "kind": "sequence",
        "steps": [{"event": "Signed Up"}, {"event": "Product Viewed"}, {"event": "Order Completed"}],
        "within_days": 14,
    },
    "vip or at risk, no coupon page": {
        "kind": "and",
        "conditions": [
            {
                "kind": "or",
                "conditions": [
                    {"kind": "attribute", "field": "tags.vip", "op": "eq", "value": True},
                    {"kind": "attribute", "field": "scores.churn", "op": "gt", "value": 0.7},
                ],
            },
            {
                "kind": "event",
                "type": "page",
                "event": "coupons",
                "did": False,
                "window": {"start": "2026-02-01", "end": "2026-03-01", "tz": "Asia/Shanghai"},
            },
        ],
    },
    "golfers on mobile, new": {
        "kind": "and",
        "conditions": [
            {"kind": "attribute", "field": "attributes.interests", "op": "contains", "value": "golf"},
            {"kind": "attribute", "field": "attributes.phone", "op": "starts_with", "value": "+86"},
            {"kind": "attribute", "field": "profile.first_seen_at", "op": "within_last_days", "value": 120},
            {"kind": "event", "type": "screen", "where": [{"property": "os", "op": "in", "value": ["ios", "android"]}]},
        ],
    },
    "tea lovers": {
        "kind": "or",
        "conditions": [
            {
                "kind": "event",
                "event": "Product Viewed",
                "count": {"op": "at_least", "n": 3},
                "where": [
                    {"property": "category", "op": "starts_with", "value": "tea"},
                    {"property": "category", "op": "not_in", "value": ["teapot"]},
                ],
            },
            {
                "kind": "event",
                "event": "Product Viewed",
                "count": {"op": "exactly", "n": 2},
                "where": [{"property": "category", "op": "eq", "value": OOLONG}],
            },
        ],
    },
    "few cheap orders, flag not set": {
        "kind": "and",
        "conditions": [
            {
                "kind": "event",
                "event": "Order Completed",
                "count": {"op": "at_most", "n": 1},
                "where": [{"property": "coupon", "op": "is_not_set", "type": "boolean"}],
            },
            {
                "kind": "event",
                "event": "Order Completed",
                "count": {"op": "exactly", "n": 0},
                "where": [{"property": "amount", "op": "between", "value": [200, 1000]}],
            },
            {
                "kind": "not",
                "condition": {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "Shanghai"},
            },
        ],
    },
}


def make_data(seed: int = 7) -> tuple[dict[str, dict[str, Any]], list[tuple[str, Event]]]:
    rnd = random.Random(seed)
    cities = ["Shanghai", "Beijing", "Shenzhen", "Chengdu", None, 42]
    profiles: dict[str, dict[str, Any]] = {}
    for i in range(300):
        p: dict[str, Any] = {
            "attributes.city": rnd.choice(cities),
            "attributes.phone": rnd.choice(["+8613800000000", "+14155550000", None, ""]),
            "traits.orders_90d": rnd.choice([0, 1, 2, 3, 5, 8, "4", None, "n/a"]),
            "scores.churn": rnd.choice([round(rnd.random(), 2), None]),
            "tags.vip": rnd.choice([True, False, None, "true"]),
            "profile.first_seen_at": rnd.choice(
                [AS_OF - timedelta(days=rnd.randint(0, 400), seconds=rnd.randint(0, 86_399)), None, "2025-12-01"]
            ),
            "attributes.interests": rnd.choice([["golf", "tea"], ["tea"], ["golf"], [], None]),
        }
        profiles[f"u{i:03d}"] = {k: v for k, v in p.items() if v is not None}
    names = ["Product Viewed"] * 4 + ["Order Completed"] * 2 + ["Signed Up"]
    events: list[tuple[str, Event]] = []
    for _ in range(3000):
        pid = f"u{rnd.randrange(320):03d}"  # some events belong to profiles we do not have
        ts = AS_OF - timedelta(seconds=rnd.randint(-86_400, 90 * 86_400))
        kind = rnd.random()
        if kind < 0.8:
            name = rnd.choice(names)
            props: dict[str, Any] = {}
            if name == "Order Completed":
                props["amount"] = rnd.choice([50, 120, 300.5, "150", 999])
                if rnd.random() < 0.3:
                    props["coupon"] = rnd.choice([True, False, "yes"])
            elif name == "Product Viewed":
                props["category"] = rnd.choice(["tea", "golf", "Tea", 5, OOLONG, "teapot", "5"])
            events.append((pid, Event(type="track", event=name, timestamp=ts, properties=props)))
        elif kind < 0.9:
            page = rnd.choice(["coupons", "home"])
            events.append(
                (pid, Event(type="page", event=None, name=page, timestamp=ts, properties={"path": "/" + page}))
            )
        else:
            props = {"os": rnd.choice(["ios", "android", "web", 1])}
            events.append((pid, Event(type="screen", event=None, name="Home", timestamp=ts, properties=props)))
    return profiles, events


def _profile_rows(profiles: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {"profile_id": list(profiles)}
    for f, ftype in CATALOG.items():
        cols[field_column(f)] = [coerce(p.get(f), ftype) for p in profiles.values()]
    return cols


def _event_rows(events: list[tuple[str, Event]]) -> dict[str, list[Any]]:
    return {
        "profile_id": [pid for pid, _ in events],
        "type": [e.type for _, e in events],
        "event": [e.event for _, e in events],
        "name": [e.name for _, e in events],
        "timestamp": [e.timestamp for _, e in events],
        "properties": [json.dumps(e.properties, ensure_ascii=False) for _, e in events],
    }


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, dict[str, Any]], list[tuple[str, Event]]]:
    return make_data()


@pytest.fixture(scope="module")
def duck(data: Any) -> Iterator[tuple[Any, Any]]:
    profiles, events = data
    raw = duckdb.connect()
    pcols = _profile_rows(profiles)
    schema = pa.schema([("profile_id", pa.string())] + [(field_column(f), ARROW[t]) for f, t in CATALOG.items()])
    raw.register("_p", pa.table(pcols, schema=schema))
    raw.execute("CREATE TABLE profiles AS SELECT * FROM _p")
    ecols = _event_rows(events)
    raw.register("_e", pa.table({**ecols, "timestamp": pa.array(ecols["timestamp"], pa.timestamp("us", tz="UTC"))}))
    raw.execute("CREATE TABLE events AS SELECT * REPLACE (CAST(properties AS JSON) AS properties) FROM _e")
    con = ibis.duckdb.from_connection(raw)
    yield con.table("profiles"), con.table("events")
    raw.close()


@pytest.fixture(scope="module")
def spark(data: Any) -> Iterator[tuple[Any, Any]]:
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("PySpark needs a Java runtime (no `java` on PATH and no JAVA_HOME)")
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("goldkey-rules-test")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        profiles, events = data
        pcols = _profile_rows(profiles)
        pschema = ", ".join(["profile_id string"] + [f"{field_column(f)} {SPARK_TYPES[t]}" for f, t in CATALOG.items()])
        # cached once, so that the queries do not ship the Python rows to the executors again
        pdf = session.createDataFrame(list(zip(*pcols.values(), strict=True)), pschema).cache()
        pdf.count()
        pdf.createOrReplaceTempView("profiles")
        ecols = _event_rows(events)
        eschema = "profile_id string, type string, event string, name string, timestamp timestamp, properties string"
        edf = session.createDataFrame(list(zip(*ecols.values(), strict=True)), eschema).cache()
        edf.count()
        edf.createOrReplaceTempView("events")
        con = ibis.pyspark.connect(session)
        ev = con.table("events")
        # Spark has no JSON type: the string column is presented to Ibis as JSON
        yield con.table("profiles"), ev.mutate(properties=ev.properties.cast("json"))
    finally:
        session.stop()


def _ids(expr: Any) -> set[str]:
    return set(expr.to_pyarrow().column("profile_id").to_pylist())


@pytest.mark.parametrize("segment", list(SEGMENTS))
def test_spark_matches_duckdb(segment: str, data: Any, duck: Any, spark: Any) -> None:
    rule = parse_rule(SEGMENTS[segment])
    check_rule(rule, CATALOG)
    on_duck = _ids(members(rule, CATALOG, *duck, AS_OF))
    on_spark = _ids(members(rule, CATALOG, *spark, AS_OF))
    assert on_spark == on_duck
    profiles, events = data
    compiled = compile_rule(rule, CATALOG)
    by_profile: dict[str, list[Event]] = {pid: [] for pid in profiles}
    for pid, e in events:
        by_profile.setdefault(pid, []).append(e)
    assert on_duck == {pid for pid, p in profiles.items() if compiled.matches(p, by_profile[pid], AS_OF)}
    assert 0 < len(on_duck) < len(profiles), f"{segment}: {len(on_duck)} of {len(profiles)}"
