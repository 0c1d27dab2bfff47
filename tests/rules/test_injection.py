"""User text in a rule is data, never SQL.

Injection strings in every user-supplied place of a rule (event names, page names, string values,
in-lists, contains / starts_with values, property filter values, sequence steps) compile and run,
select exactly what the in-memory evaluator selects, and leave the tables in place. Names that
reach the query as identifiers or JSON paths (fields, properties) are rejected by the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import ibis
import pyarrow as pa
import pytest
from pydantic import ValidationError

from goldkey.rules.batch import members
from goldkey.rules.memory import Event, compile_rule
from goldkey.rules.model import EventCondition, PropertyFilter, parse_rule
from goldkey.rules.values import check_rule, coerce, field_column

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = {"attributes.city": "string", "tags.labels": "list", "traits.n": "number"}
INJECTIONS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE events; --',
    "'); DROP TABLE profiles; --",
    "\\",
    "\\'",
    "'",
    '"',
    "$.a",
    "$[*]",
    "$..*",
    "a.b['c']",
    "%",
    "_",
    "${x}",
    "{{x}}",
    "\n\r\t",
    "上海 🙂 é ﷽ \u200b",
    "\u202eRTL",
    "x" * 1000,
]
EVENT_NAMES = [s[:200] for s in INJECTIONS]
LITERAL_CITY = "' OR 1=1 --"
LITERAL_EVENT = '"; DROP TABLE events; --'

PROFILES: dict[str, dict[str, Any]] = {
    "plain": {"attributes.city": "Shanghai", "tags.labels": ["golf"], "traits.n": 1},
    "literal": {"attributes.city": LITERAL_CITY, "tags.labels": ["\\", "$.a"], "traits.n": 2},
    "empty": {},
}
EVENTS: list[tuple[str, Event]] = [
    ("plain", Event("track", "buy", AS_OF - timedelta(days=1), {"a": "x", "b": 1})),
    ("plain", Event("page", None, AS_OF - timedelta(days=1), {"a": "y"}, name="home")),
    ("literal", Event("track", LITERAL_EVENT, AS_OF - timedelta(days=2), {"a": "' OR 1=1 --", "b": "\\"})),
    ("literal", Event("track", "buy", AS_OF - timedelta(days=1), {"a": "$.a"})),
]


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[duckdb.DuckDBPyConnection, Any]]:
    raw = duckdb.connect()
    cols = {"profile_id": pa.array(list(PROFILES), pa.string())}
    arrow = {"string": pa.string(), "list": pa.list_(pa.string()), "number": pa.float64()}
    for f, ftype in CATALOG.items():
        cols[field_column(f)] = pa.array([coerce(p.get(f), ftype) for p in PROFILES.values()], arrow[ftype])
    raw.register("_p", pa.table(cols))
    raw.execute("CREATE TABLE profiles AS SELECT * FROM _p")
    raw.unregister("_p")
    ev = pa.table(
        {
            "profile_id": [pid for pid, _ in EVENTS],
            "type": [e.type for _, e in EVENTS],
            "event": [e.event for _, e in EVENTS],
            "name": [e.name for _, e in EVENTS],
            "timestamp": pa.array([e.timestamp for _, e in EVENTS], pa.timestamp("us", tz="UTC")),
            "properties": [json.dumps(e.properties, ensure_ascii=False) for _, e in EVENTS],
        }
    )
    raw.register("_e", ev)
    raw.execute("CREATE TABLE events AS SELECT * REPLACE (CAST(properties AS JSON) AS properties) FROM _e")
    raw.unregister("_e")
    yield raw, ibis.duckdb.from_connection(raw)
    raw.close()


def rules_with(s: str) -> list[dict[str, Any]]:
    """Every place of a rule where user text goes, filled with ``s``."""
    name = s[:200]
    city = "attributes.city"
    return [
        {"kind": "event", "event": name},
        {"kind": "event", "event": name, "did": False},
        {"kind": "event", "type": "page", "event": name},
        {"kind": "event", "type": "screen", "event": name, "count": {"op": "at_most", "n": 0}},
        {"kind": "attribute", "field": city, "op": "eq", "value": s},
        {"kind": "attribute", "field": city, "op": "ne", "value": s},
        {"kind": "attribute", "field": city, "op": "in", "value": [s, "Shanghai' --"]},
        {"kind": "attribute", "field": city, "op": "not_in", "value": [s]},
        {"kind": "attribute", "field": city, "op": "contains", "value": s},
        {"kind": "attribute", "field": city, "op": "not_contains", "value": s},
        {"kind": "attribute", "field": city, "op": "starts_with", "value": s},
        {"kind": "attribute", "field": "tags.labels", "op": "contains", "value": s},
        {"kind": "attribute", "field": "tags.labels", "op": "not_contains", "value": s},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "eq", "value": s}]},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "ne", "value": s}]},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "in", "value": [s, "x"]}]},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "not_in", "value": [s]}]},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "contains", "value": s}]},
        {"kind": "event", "event": "buy", "where": [{"property": "a", "op": "starts_with", "value": s}]},
        {"kind": "event", "event": name, "where": [{"property": "b", "op": "not_contains", "value": s}]},
        {
            "kind": "sequence",
            "steps": [{"event": name}, {"event": "buy", "where": [{"property": "a", "op": "eq", "value": s}]}],
            "within_days": 7,
        },
        {"kind": "not", "condition": {"kind": "event", "event": name, "window": {"last_days": 30}}},
    ]


def _memory(rule: Any) -> set[str]:
    compiled = compile_rule(rule, CATALOG)
    return {
        pid for pid, p in PROFILES.items() if compiled.matches(p, [e for owner, e in EVENTS if owner == pid], AS_OF)
    }


@pytest.mark.parametrize("s", INJECTIONS, ids=lambda s: repr(s[:20]))
def test_injected_values_are_data(db: Any, s: str) -> None:
    raw, con = db
    for data in rules_with(s):
        rule = parse_rule(data)
        check_rule(rule, CATALOG)
        expr = members(rule, CATALOG, con.table("profiles"), con.table("events"), AS_OF)
        got = set(expr.to_pyarrow().column("profile_id").to_pylist())
        assert got == _memory(rule), data
    assert raw.execute("SELECT count(*) FROM events").fetchall() == [(len(EVENTS),)]
    assert raw.execute("SELECT count(*) FROM profiles").fetchall() == [(len(PROFILES),)]


def test_literal_matches_are_exact(db: Any) -> None:
    _, con = db

    def run(data: dict[str, Any]) -> set[str]:
        rule = parse_rule(data)
        expr = members(rule, CATALOG, con.table("profiles"), con.table("events"), AS_OF)
        got = set(expr.to_pyarrow().column("profile_id").to_pylist())
        assert got == _memory(rule)
        return got

    assert run({"kind": "attribute", "field": "attributes.city", "op": "eq", "value": LITERAL_CITY}) == {"literal"}
    assert run({"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "' OR '1'='1"}) == set()
    assert run({"kind": "event", "event": LITERAL_EVENT}) == {"literal"}
    assert run({"kind": "attribute", "field": "tags.labels", "op": "contains", "value": "$.a"}) == {"literal"}
    assert run({"kind": "attribute", "field": "attributes.city", "op": "contains", "value": "%"}) == set()
    assert run({"kind": "attribute", "field": "attributes.city", "op": "starts_with", "value": "_"}) == set()
    where = [{"property": "b", "op": "eq", "value": "\\"}]
    assert run({"kind": "event", "event": LITERAL_EVENT, "where": where}) == {"literal"}


BAD_NAMES = [
    "a' OR 1=1 --",
    'a"; DROP TABLE events; --',
    "a\\",
    "$.a",
    "a.b",
    "a[0]",
    "a b",
    "a-b",
    "",
    "1a",
    "a\n",
    "a\u202e",
    "x" * 101,
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=lambda s: repr(s[:20]))
def test_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_rule({"kind": "attribute", "field": f"attributes.{bad}", "op": "is_set"})
    with pytest.raises(ValidationError):
        parse_rule({"kind": "event", "event": "buy", "where": [{"property": bad, "op": "eq", "value": "x"}]})
    with pytest.raises(ValidationError):
        parse_rule(
            {
                "kind": "sequence",
                "steps": [
                    {"event": "a"},
                    {"event": "b", "where": [{"property": bad, "op": "is_set", "type": "string"}]},
                ],
                "within_days": 1,
            }
        )


@pytest.mark.parametrize("field", ["attributes", "city", "secrets.city", "attributes.city; --", " attributes.city"])
def test_field_sources_are_rejected(field: str) -> None:
    with pytest.raises(ValidationError):
        parse_rule({"kind": "attribute", "field": field, "op": "is_set"})


def test_oversized_text_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_rule({"kind": "event", "event": "x" * 201})
    with pytest.raises(ValidationError):
        parse_rule({"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "x" * 1001})


def test_compiler_refuses_unvalidated_property_names(db: Any) -> None:
    """Defence in depth: a filter built without validation never reaches a JSON path."""
    _, con = db
    f = PropertyFilter.model_construct(property="a') OR 1=1 --", op="eq", value="x", type=None)
    rule = EventCondition.model_construct(
        kind="event", event="buy", type="track", did=True, count=None, where=[f], window=None
    )
    with pytest.raises(ValueError, match="bad property name"):
        members(rule, CATALOG, con.table("profiles"), con.table("events"), AS_OF)
    f = PropertyFilter.model_construct(property="a\n", op="eq", value="x", type=None)
    with pytest.raises(ValueError, match="bad property name"):
        members(rule.model_copy(update={"where": [f]}), CATALOG, con.table("profiles"), con.table("events"), AS_OF)
