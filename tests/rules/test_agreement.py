"""The batch compiler selects exactly the profiles the in-memory evaluator matches.

A property test draws random rule trees (every node kind and operator, nested and/or/not, windows
of every kind including empty ones and non-UTC ``since`` windows, sequences), random profiles (with
missing and wrong-typed stored values) and random events whose timestamps sit exactly on the rule's
edges (window starts and ends, ``as_of``, sequence spans, one microsecond either side), loads them
into DuckDB and compares ``batch.members`` with ``memory.compile_rule(...).matches`` profile by
profile. Example-based tests below pin the tricky cases by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import ibis
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from goldkey.core.errors import InvalidInput
from goldkey.rules.batch import members
from goldkey.rules.memory import Event, compile_rule
from goldkey.rules.model import (
    OPS_BY_TYPE,
    PROPERTY_OPS_BY_TYPE,
    AttributeCondition,
    EventCondition,
    PropertyFilter,
    SequenceCondition,
    iter_nodes,
    parse_rule,
)
from goldkey.rules.values import (
    check_rule,
    coerce,
    days,
    field_column,
    relative_or_absolute,
    to_utc,
    window_bounds,
)

# Ibis 12 calls a DuckDB method that DuckDB 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

CATALOG = {
    "attributes.city": "string",
    "attributes.名字": "string",
    "traits.orders": "number",
    "scores.churn": "number",
    "tags.vip": "boolean",
    "profile.first_seen_at": "datetime",
    "orders.last_order_at": "datetime",
    "attributes.interests": "list",
}
ARROW = {
    "string": pa.string(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "list": pa.list_(pa.string()),
}
US = timedelta(microseconds=1)
ZONES = ["UTC", "Asia/Shanghai", "America/New_York"]
STRINGS = ["Shanghai", "shanghai", "Shang", "hai", "", "上海", "上", "it's", "5", "true", "2026-01-01", "a%_b", "x y"]
NUMBERS = [0, 1, 5, -1, 2.5, 5.0, 100, -0.0, 1e9]
TRACK_EVENTS = ["buy", "view", "signup"]
PAGE_NAMES = ["home", "cart"]
PROPS = ["amount", "plan", "flag", "城市"]

# --------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def db() -> Iterator[tuple[duckdb.DuckDBPyConnection, Any]]:
    raw = duckdb.connect()
    yield raw, ibis.duckdb.from_connection(raw)
    raw.close()


def load(raw: duckdb.DuckDBPyConnection, profiles: dict[str, dict[str, Any]], events: list[tuple[str, Event]]) -> None:
    """Replace the ``profiles`` and ``events`` tables: profile columns typed with ``coerce``, as the
    memory evaluator sees the stored values; properties as JSON."""
    cols: dict[str, pa.Array] = {"profile_id": pa.array(list(profiles), pa.string())}
    for f, ftype in CATALOG.items():
        cols[field_column(f)] = pa.array([coerce(p.get(f), ftype) for p in profiles.values()], ARROW[ftype])
    raw.register("_profiles_src", pa.table(cols))
    raw.execute("CREATE OR REPLACE TABLE profiles AS SELECT * FROM _profiles_src")
    raw.unregister("_profiles_src")
    ev = pa.table(
        {
            "profile_id": pa.array([pid for pid, _ in events], pa.string()),
            "type": pa.array([e.type for _, e in events], pa.string()),
            "event": pa.array([e.event for _, e in events], pa.string()),
            "name": pa.array([e.name for _, e in events], pa.string()),
            "timestamp": pa.array([e.timestamp for _, e in events], pa.timestamp("us", tz="UTC")),
            "properties": pa.array(
                [None if e.properties is None else json.dumps(e.properties, ensure_ascii=False) for _, e in events],
                pa.string(),
            ),
        }
    )
    raw.register("_events_src", ev)
    raw.execute(
        'CREATE OR REPLACE TABLE events AS SELECT profile_id, type, event, name, "timestamp", '
        "CAST(properties AS JSON) AS properties FROM _events_src"
    )
    raw.unregister("_events_src")


def batch_set(db: Any, rule: Any, as_of: datetime) -> set[str]:
    _, con = db
    expr = members(rule, CATALOG, con.table("profiles"), con.table("events"), as_of)
    return set(expr.to_pyarrow().column("profile_id").to_pylist())


def memory_set(
    rule: Any, profiles: dict[str, dict[str, Any]], events: list[tuple[str, Event]], as_of: datetime
) -> set[str]:
    compiled = compile_rule(rule, CATALOG)
    by_profile: dict[str, list[Event]] = {pid: [] for pid in profiles}
    for pid, e in events:
        if pid in by_profile:
            by_profile[pid].append(e)
    return {pid for pid, p in profiles.items() if compiled.matches(p, by_profile[pid], as_of)}


def agree(
    db: Any,
    rule_data: Any,
    profiles: dict[str, dict[str, Any]],
    events: Sequence[tuple[str, Event]],
    as_of: datetime,
) -> set[str]:
    """Load, run both evaluators, assert they agree; return the member set."""
    rule = parse_rule(rule_data)
    check_rule(rule, CATALOG)
    events = list(events)
    load(db[0], profiles, events)
    expected = memory_set(rule, profiles, events, as_of)
    got = batch_set(db, rule, as_of)
    assert got == expected, f"batch {sorted(got)} != memory {sorted(expected)} for {rule_data}"
    return got


# --------------------------------------------------------------------------- strategies

AS_OF = [
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # New York springs forward
    datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2025, 12, 31, 16, 0, tzinfo=UTC),  # midnight, 1 January, in Shanghai
    datetime(2026, 6, 15, 12, 34, 56, 789012, tzinfo=UTC),
    datetime(2026, 11, 1, 5, 59, 59, 999999, tzinfo=UTC),  # New York falls back at 06:00 UTC
    datetime(2026, 2, 23, 15, 59, 59, 999999, tzinfo=UTC),  # a Monday, one microsecond before midnight in Shanghai
]
as_ofs = st.sampled_from(AS_OF) | st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


def moment(as_of: datetime) -> st.SearchStrategy[Any]:
    """A rule moment near ``as_of``: aware or naive datetime, date, or ISO string."""
    offsets = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 3.0, 10.0, 40.0])

    def render(args: tuple[float, int]) -> Any:
        off, style = args
        t = as_of - days(off)
        if style == 0:
            return t
        if style == 1:
            return t.replace(tzinfo=None)
        if style == 2:
            return t.date()
        if style == 3:
            return t.astimezone(ZoneInfo("Asia/Shanghai")).isoformat()
        return t.replace(tzinfo=None).isoformat()

    return st.tuples(offsets, st.integers(0, 4)).map(render)


@st.composite
def windows(draw: Any, as_of: datetime) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["none", "none", "last", "range", "range", "since"]))
    if kind == "none":
        return None
    if kind == "last":
        return {"last_days": draw(st.sampled_from([1, 7, 30, 0.5, 2.25, 1e-3]))}
    tz = draw(st.sampled_from(ZONES))
    if kind == "since":
        return {"since": draw(st.sampled_from(["day", "week", "month", "year"])), "tz": tz}
    offs = sorted(
        draw(st.lists(st.sampled_from([-1.0, 0.0, 0.25, 1.0, 3.0, 10.0]), min_size=2, max_size=2, unique=True))
    )
    hi_off, lo_off = offs  # smaller offset = later moment
    style = draw(st.integers(0, 2))

    def render(off: float) -> Any:
        t = (as_of - days(off)).astimezone(ZoneInfo(tz))
        return [t, t.replace(tzinfo=None), t.date()][style]

    which = draw(st.sampled_from(["both", "start", "end"]))
    w: dict[str, Any] = {"tz": tz}
    if which in ("both", "start"):
        w["start"] = render(lo_off)
    if which in ("both", "end"):
        w["end"] = render(hi_off)
    return w


def scalar_for(ptype: str) -> st.SearchStrategy[Any]:
    if ptype == "string":
        return st.sampled_from(STRINGS)
    if ptype == "number":
        return st.sampled_from(NUMBERS)
    return st.booleans()


@st.composite
def value_for(draw: Any, ftype: str, op: str, as_of: datetime) -> Any:
    if op in ("is_set", "is_not_set"):
        return None
    if ftype == "datetime":
        if op == "within_last_days":
            return draw(st.sampled_from([0.5, 1, 7, 30, 365]))
        if op == "between":
            a, b = draw(moment(as_of)), draw(moment(as_of))
            ta, tb = to_utc(a), to_utc(b)
            return [a, b] if ta <= tb else [b, a]
        if draw(st.booleans()):
            return {"days_ago": draw(st.sampled_from([0, 1, 7, 30.5]))}
        return draw(moment(as_of))
    item = st.sampled_from(STRINGS) if ftype == "list" else scalar_for(ftype)
    if op in ("in", "not_in"):
        return draw(st.lists(item, min_size=1, max_size=3))
    if op == "between":
        a, b = draw(item), draw(item)
        return [min(a, b), max(a, b)]
    return draw(item)


@st.composite
def attributes(draw: Any, as_of: datetime) -> dict[str, Any]:
    f = draw(st.sampled_from(sorted(CATALOG)))
    ftype = CATALOG[f]
    op = draw(st.sampled_from(sorted(OPS_BY_TYPE[ftype])))
    node = {"kind": "attribute", "field": f, "op": op}
    value = draw(value_for(ftype, op, as_of))
    if value is not None:
        node["value"] = value
    return node


@st.composite
def property_filters(draw: Any) -> dict[str, Any]:
    ptype = draw(st.sampled_from(["string", "number", "boolean"]))
    op = draw(st.sampled_from(sorted(PROPERTY_OPS_BY_TYPE[ptype])))
    f: dict[str, Any] = {"property": draw(st.sampled_from(PROPS)), "op": op}
    if op in ("is_set", "is_not_set"):
        f["type"] = ptype
    elif op in ("in", "not_in"):
        f["value"] = draw(st.lists(scalar_for(ptype), min_size=1, max_size=3))
    elif op == "between":
        a, b = draw(scalar_for(ptype)), draw(scalar_for(ptype))
        f["value"] = [min(a, b), max(a, b)]
    else:
        f["value"] = draw(scalar_for(ptype))
    return f


@st.composite
def event_target(draw: Any) -> dict[str, Any]:
    etype = draw(st.sampled_from(["track", "track", "track", "page", "screen"]))
    if etype == "track":
        return {"type": etype, "event": draw(st.sampled_from(TRACK_EVENTS))}
    name = draw(st.sampled_from([*PAGE_NAMES, None]))
    return {"type": etype} if name is None else {"type": etype, "event": name}


@st.composite
def event_conditions(draw: Any, as_of: datetime) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "event", **draw(event_target())}
    if draw(st.integers(0, 4)) == 0:
        node["did"] = False
    elif draw(st.booleans()):
        node["count"] = {"op": draw(st.sampled_from(["at_least", "at_most", "exactly"])), "n": draw(st.integers(0, 3))}
    node["where"] = draw(st.lists(property_filters(), max_size=2))
    w = draw(windows(as_of))
    if w is not None:
        node["window"] = w
    return node


@st.composite
def sequences(draw: Any, as_of: datetime) -> dict[str, Any]:
    steps = []
    for _ in range(draw(st.integers(2, 3))):
        step = draw(event_target())
        if draw(st.integers(0, 3)) == 0:
            step["where"] = [draw(property_filters())]
        steps.append(step)
    node: dict[str, Any] = {"kind": "sequence", "steps": steps, "within_days": draw(st.sampled_from([0.5, 1, 2, 7]))}
    if draw(st.integers(0, 3)) == 0:
        node["did"] = False
    w = draw(windows(as_of)) if draw(st.booleans()) else None
    if w is not None:
        node["window"] = w
    return node


@st.composite
def conditions(draw: Any, as_of: datetime, depth: int = 0) -> dict[str, Any]:
    kinds = ["attribute", "attribute", "event", "event", "sequence", "sequence"]
    if depth < 3:
        kinds += ["and", "or", "not"]
    kind = draw(st.sampled_from(kinds))
    if kind == "attribute":
        return draw(attributes(as_of))
    if kind == "event":
        return draw(event_conditions(as_of))
    if kind == "sequence":
        return draw(sequences(as_of))
    if kind == "not":
        return {"kind": "not", "condition": draw(conditions(as_of, depth + 1))}
    return {"kind": kind, "conditions": draw(st.lists(conditions(as_of, depth + 1), min_size=1, max_size=3))}


def edges(rule: Any, as_of: datetime) -> list[datetime]:
    """Every instant where the rule's outcome can flip."""
    out = {as_of}
    for _, node in iter_nodes(rule):
        if isinstance(node, EventCondition | SequenceCondition):
            lo, end = window_bounds(node.window, as_of)
            out.update(t for t in (lo, end) if t is not None)
        if isinstance(node, SequenceCondition):  # chains that end (or start) on an edge
            span = days(node.within_days)
            out.update([t + d for t in out for d in (span, -span)])
        if isinstance(node, AttributeCondition) and CATALOG[node.field] == "datetime" and node.value is not None:
            vals = node.value if isinstance(node.value, list) else [node.value]
            for v in vals:
                if node.op == "within_last_days":
                    out.add(as_of - days(v))
                else:
                    t = relative_or_absolute(v, as_of)
                    if t is not None:
                        out.add(t)
    return sorted(out)


def near_edges(instants: list[datetime]) -> st.SearchStrategy[datetime]:
    """An edge, or one microsecond either side of it."""
    return st.sampled_from(instants).flatmap(lambda t: st.sampled_from([t, t, t - US, t + US]))


def rule_values(rule: Any) -> dict[str, list[Any]]:
    """The values the rule compares each string, number or list field with."""
    out: dict[str, list[Any]] = {}
    for _, node in iter_nodes(rule):
        if isinstance(node, AttributeCondition) and node.value is not None:
            ftype = CATALOG[node.field]
            vals = node.value if isinstance(node.value, list) else [node.value]
            if ftype == "string":  # the value, and strings that contain it elsewhere than at the start
                out.setdefault(node.field, []).extend([*vals, *("x" + v for v in vals), *(v + "x" for v in vals)])
            elif ftype == "number":
                out.setdefault(node.field, []).extend(vals)
            elif ftype == "list":
                out.setdefault(node.field, []).extend([[v] for v in vals] + [[v, "other"] for v in vals])
    return out


def stored_value(ftype: str, instants: list[datetime], own: list[Any] | None = None) -> st.SearchStrategy[Any]:
    """A stored profile value: mostly of the field's type (often one the rule compares with),
    sometimes of another type (= missing)."""
    wrong = st.sampled_from([None, "garbage", 7, True, ["x"], [], 1.5])
    if own:
        return st.one_of(st.sampled_from(own), stored_value(ftype, instants))
    if ftype == "string":
        right = st.sampled_from(STRINGS)
    elif ftype == "number":
        right = st.sampled_from([*NUMBERS, "5", " 2.5 ", "nan", float("inf"), float("nan")])
    elif ftype == "boolean":
        right = st.sampled_from([True, False, "true", "FALSE", "yes", 1])
    elif ftype == "datetime":
        right = near_edges(instants).flatmap(
            lambda t: st.sampled_from(
                [t, t.replace(tzinfo=None), t.isoformat(), t.astimezone(ZoneInfo("Asia/Shanghai")), t.date()]
            )
        )
    else:
        right = st.lists(st.sampled_from([*STRINGS, 5, None, True]), max_size=3)
    return st.one_of(right, right, right, wrong)


def property_value() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(STRINGS),
        st.sampled_from(NUMBERS),
        st.integers(-10, 10),
        st.booleans(),
        st.none(),
        st.sampled_from([[1, 2], {"amount": 5}, ["5"]]),
    )


def targets(rule: Any) -> list[tuple[str, str | None, list[PropertyFilter]]]:
    """The (type, name, property filters) of every event condition and sequence step of the rule."""
    out: list[tuple[str, str | None, list[PropertyFilter]]] = []
    for _, node in iter_nodes(rule):
        if isinstance(node, EventCondition):
            out.append((node.type, node.event, node.where))
        elif isinstance(node, SequenceCondition):
            out.extend((s.type, s.event, s.where) for s in node.steps)
    return out


def confuse(v: Any) -> Any:
    """The same value with another JSON type (or nearly the same value)."""
    if isinstance(v, bool):
        return "true" if v else 0
    if isinstance(v, int | float):
        return str(v)
    try:
        return float(v)
    except ValueError:
        return v + "x" if v else True


def near(f: PropertyFilter) -> st.SearchStrategy[Any]:
    """Property values around a filter: its own values, the same with another type, anything."""
    vals = f.value if isinstance(f.value, list) else [] if f.value is None else [f.value]
    own = st.sampled_from(vals) if vals else scalar_for(f.value_type or "string")
    if f.value_type == "string":
        own = st.one_of(own, own.map(lambda v: "x" + v))
    return st.one_of(own, own, own.map(confuse), property_value())


@st.composite
def aimed_event(
    draw: Any, etype: str, target: str | None, where: list[PropertyFilter], ts: datetime, exact: bool = False
) -> Event:
    """An event meant for one condition or step: its type, mostly its name (always when ``exact``),
    properties near its filters."""
    odds = 50 if exact else 5
    if etype == "track":
        event, name = (target if draw(st.integers(0, odds)) else draw(st.sampled_from(TRACK_EVENTS))), None
    else:
        event = None
        name = (
            target if target is not None and draw(st.integers(0, odds)) else draw(st.sampled_from([*PAGE_NAMES, None]))
        )
    props = {f.property: draw(near(f)) for f in where if draw(st.integers(0, odds))}
    if draw(st.integers(0, 3)) == 0:
        props[draw(st.sampled_from([*PROPS, "other"]))] = draw(property_value())
    return Event(type=etype, event=event, timestamp=ts, properties=props, name=name)


@st.composite
def worlds(
    draw: Any, rule: Any, as_of: datetime, people: tuple[int, int] = (1, 5), chains: tuple[int, int] = (0, 2)
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, Event]]]:
    """Profiles and events aimed at the rule: events of the rule's types and names, with property
    values at its filters' values, at the rule's edges in time, and chains for its sequences."""
    instants = edges(rule, as_of)
    on_edge = near_edges(instants)
    times = st.one_of(
        on_edge, on_edge, on_edge, st.integers(-3 * 86_400, 45 * 86_400).map(lambda s: as_of - timedelta(seconds=s))
    )
    n = draw(st.integers(*people))
    own = rule_values(rule)
    profiles: dict[str, dict[str, Any]] = {}
    for i in range(n):
        p: dict[str, Any] = {}
        for f, ftype in CATALOG.items():
            if draw(st.integers(0, 4)):
                p[f] = draw(stored_value(ftype, instants, own.get(f)))
        profiles[f"p{i}"] = p
    aims = targets(rule)
    events: list[tuple[str, Event]] = []
    pids = [*profiles, "ghost"]
    for _ in range(draw(st.integers(0, 14))):
        ts = draw(times)
        if aims and draw(st.integers(0, 3)):
            ev = draw(aimed_event(*draw(st.sampled_from(aims)), ts))
        else:
            etype = draw(st.sampled_from(["track", "track", "track", "page", "screen", "identify"]))
            props = draw(
                st.one_of(st.none(), st.dictionaries(st.sampled_from([*PROPS, "other"]), property_value(), max_size=3))
            )
            ev = Event(
                type=etype,
                event=draw(st.sampled_from(TRACK_EVENTS)) if etype == "track" else None,
                timestamp=ts,
                properties=props,  # type: ignore[arg-type]
                name=draw(st.sampled_from([*PAGE_NAMES, None])) if etype in ("page", "screen") else None,
            )
        events.append((draw(st.sampled_from(pids)), ev))
        if draw(st.integers(0, 3)) == 0:  # the same instant again: equal timestamps
            events.append((draw(st.sampled_from(pids)), Event(ev.type, ev.event, ts, ev.properties, ev.name)))
    # chains for sequences: steps at the first step's time plus 0, 1us, the span -1us/0/+1us ...
    for _, node in iter_nodes(rule):
        if not isinstance(node, SequenceCondition):
            continue
        span = days(node.within_days)
        for _ in range(draw(st.integers(*chains))):
            pid = draw(st.sampled_from(pids))
            # offsets from the first step: equal, one microsecond later, the span exactly and either side
            middle = draw(st.sampled_from([timedelta(0), US, span / 2, span - US, span]))
            last = draw(st.sampled_from([middle, middle + US, span - US, span, span + US]))
            lo, end = window_bounds(node.window, as_of)
            starts = [as_of - last, *(t for t in (lo, end and end - US) if t is not None)]
            t1 = draw(st.one_of(near_edges(starts), times))  # ending at as_of, starting at the window's edges
            offsets = [timedelta(0), last] if len(node.steps) == 2 else [timedelta(0), middle, last]
            for step, off in zip(node.steps, offsets, strict=True):
                events.append((pid, draw(aimed_event(step.type, step.event, step.where, t1 + off, exact=True))))
    return profiles, events


def check_drawn(db: Any, data: st.DataObject, rules: Any, **world: Any) -> None:
    as_of = data.draw(as_ofs, label="as_of")
    rule_data = data.draw(rules(as_of), label="rule")
    try:
        rule = parse_rule(rule_data)
        check_rule(rule, CATALOG)
    except (ValidationError, ValueError, InvalidInput):
        assume(False)
    profiles, events = data.draw(worlds(rule, as_of, **world), label="world")
    agree(db, rule_data, profiles, events, as_of)


def examples(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


@examples(150)
@given(data=st.data())
def test_batch_agrees_with_memory(db: Any, data: st.DataObject) -> None:
    """Whole rule trees."""
    check_drawn(db, data, conditions)


@examples(100)
@given(data=st.data())
def test_attribute_conditions_agree(db: Any, data: st.DataObject) -> None:
    """One attribute condition over many profiles: every operator at its edges."""
    check_drawn(db, data, attributes, people=(6, 16))


@examples(60)
@given(data=st.data())
def test_event_conditions_agree(db: Any, data: st.DataObject) -> None:
    """One event condition: counts, property filters, window edges."""
    check_drawn(db, data, event_conditions)


@examples(60)
@given(data=st.data())
def test_sequences_agree(db: Any, data: st.DataObject) -> None:
    """One sequence, with chains at the span's edges and equal timestamps."""
    check_drawn(db, data, sequences, chains=(1, 4))


# --------------------------------------------------------------------------- tricky cases by name

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def track(event: str, at: datetime, **props: Any) -> Event:
    return Event(type="track", event=event, timestamp=at, properties=props)


def test_not_includes_missing_but_ne_does_not(db: Any) -> None:
    profiles = {
        "sh": {"attributes.city": "Shanghai"},
        "bj": {"attributes.city": "Beijing"},
        "none": {},
        "bad": {"attributes.city": 5},
    }
    eq = {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "Shanghai"}
    assert agree(db, {"kind": "not", "condition": eq}, profiles, [], T0) == {"bj", "none", "bad"}
    assert agree(db, {**eq, "op": "ne"}, profiles, [], T0) == {"bj"}
    assert agree(db, {**eq, "op": "is_not_set", "value": None}, profiles, [], T0) == {"none", "bad"}


def test_typed_property_filters(db: Any) -> None:
    profiles = {"num": {}, "str": {}, "bool": {}, "big": {}}
    events = [
        ("num", track("buy", T0 - timedelta(days=1), amount=5)),
        ("str", track("buy", T0 - timedelta(days=1), amount="5")),
        ("bool", track("buy", T0 - timedelta(days=1), amount=True)),
        ("big", track("buy", T0 - timedelta(days=1), amount=5.5)),
    ]
    rule = {"kind": "event", "event": "buy", "where": [{"property": "amount", "op": "gte", "value": 5}]}
    assert agree(db, rule, profiles, events, T0) == {"num", "big"}
    rule = {"kind": "event", "event": "buy", "where": [{"property": "amount", "op": "eq", "value": "5"}]}
    assert agree(db, rule, profiles, events, T0) == {"str"}
    rule = {"kind": "event", "event": "buy", "where": [{"property": "amount", "op": "is_not_set", "type": "number"}]}
    assert agree(db, rule, profiles, events, T0) == {"str", "bool"}


def test_counts_include_profiles_without_events(db: Any) -> None:
    profiles = {"none": {}, "one": {}, "two": {}}
    events = [("one", track("buy", T0)), ("two", track("buy", T0)), ("two", track("buy", T0 - US))]
    base = {"kind": "event", "event": "buy"}
    assert agree(db, {**base, "did": False}, profiles, events, T0) == {"none"}
    assert agree(db, {**base, "count": {"op": "at_most", "n": 1}}, profiles, events, T0) == {"none", "one"}
    assert agree(db, {**base, "count": {"op": "exactly", "n": 0}}, profiles, events, T0) == {"none"}
    assert agree(db, {**base, "count": {"op": "at_least", "n": 0}}, profiles, events, T0) == {"none", "one", "two"}
    assert agree(db, {**base, "count": {"op": "exactly", "n": 2}}, profiles, events, T0) == {"two"}


def test_window_edges(db: Any) -> None:
    lo = T0 - timedelta(days=7)
    profiles = {"edge": {}, "before": {}, "at_as_of": {}, "after": {}}
    events = [
        ("edge", track("buy", lo)),
        ("before", track("buy", lo - US)),
        ("at_as_of", track("buy", T0)),
        ("after", track("buy", T0 + US)),
    ]
    assert agree(db, {"kind": "event", "event": "buy", "window": {"last_days": 7}}, profiles, events, T0) == {
        "edge",
        "at_as_of",
    }
    # start inclusive, end exclusive; a date is midnight in the window's zone
    window = {"start": lo.replace(tzinfo=None).isoformat(), "end": T0.isoformat()}
    assert agree(db, {"kind": "event", "event": "buy", "window": window}, profiles, events, T0) == {"edge"}
    # two windows in one aggregation: each keeps its own edges
    early = {"kind": "event", "event": "buy", "window": {"end": lo.isoformat()}}
    late = {"kind": "event", "event": "buy", "window": {"last_days": 1}}
    rule = {"kind": "or", "conditions": [early, late]}
    assert agree(db, rule, profiles, events, T0) == {"before", "at_as_of"}


def test_since_week_in_shanghai(db: Any) -> None:
    # Monday 2026-02-23 00:00 in Shanghai is 2026-02-22 16:00 UTC
    as_of = datetime(2026, 2, 25, 3, 0, tzinfo=UTC)
    monday = datetime(2026, 2, 22, 16, 0, tzinfo=UTC)
    profiles = {"monday": {}, "sunday": {}}
    events = [("monday", track("buy", monday)), ("sunday", track("buy", monday - US))]
    rule = {"kind": "event", "event": "buy", "window": {"since": "week", "tz": "Asia/Shanghai"}}
    assert agree(db, rule, profiles, events, as_of) == {"monday"}
    rule = {"kind": "event", "event": "buy", "window": {"since": "week"}}  # UTC: Monday 23 Feb 00:00
    assert agree(db, rule, profiles, events, as_of) == set()


def test_sequences(db: Any) -> None:
    span = days(2)
    a = T0 - timedelta(days=5)
    profiles = {"exact": {}, "too_late": {}, "same_instant": {}, "reversed": {}, "three": {}, "greedy": {}}
    events = [
        ("exact", track("view", a)),
        ("exact", track("buy", a + span)),
        ("too_late", track("view", a)),
        ("too_late", track("buy", a + span + US)),
        ("same_instant", track("view", a)),
        ("same_instant", track("buy", a)),
        ("reversed", track("buy", a)),
        ("reversed", track("view", a + US)),
        # view, view, buy within 2 days, with an equal-timestamp pair in the middle
        ("three", track("view", a)),
        ("three", track("view", a + timedelta(hours=1))),
        ("three", track("buy", a + timedelta(hours=1))),
        ("three", track("buy", a + timedelta(hours=2))),
        # only the earliest second step leaves room for the third
        ("greedy", track("view", a)),
        ("greedy", track("view", a + timedelta(days=1, hours=20))),
        ("greedy", track("view", a + timedelta(hours=1))),
        ("greedy", track("buy", a + timedelta(hours=1, minutes=30))),
    ]
    two = {"kind": "sequence", "steps": [{"event": "view"}, {"event": "buy"}], "within_days": 2}
    assert agree(db, two, profiles, events, T0) == {"exact", "three", "greedy"}
    assert agree(db, {**two, "did": False}, profiles, events, T0) == {"too_late", "same_instant", "reversed"}
    three = {"kind": "sequence", "steps": [{"event": "view"}, {"event": "view"}, {"event": "buy"}], "within_days": 2}
    assert agree(db, three, profiles, events, T0) == {"three", "greedy"}
    # the first step must lie in the window; the later ones need not
    windowed = {**two, "window": {"start": a.isoformat(), "end": (a + US).isoformat()}}
    assert agree(db, windowed, profiles, events, T0) == {"exact", "three", "greedy"}
    # nothing after as_of counts
    assert agree(db, two, profiles, events, a + timedelta(hours=1, microseconds=-1)) == set()


def test_attribute_operators(db: Any) -> None:
    profiles = {
        "a": {
            "attributes.city": "Shanghai",
            "attributes.interests": ["golf", "tea"],
            "traits.orders": 5,
            "tags.vip": "true",
            "profile.first_seen_at": "2026-02-28T00:00:00+00:00",
        },
        "b": {
            "attributes.city": "上海",
            "attributes.interests": ["Golf"],
            "traits.orders": "2.5",
            "tags.vip": False,
            "profile.first_seen_at": datetime(2025, 1, 1),
        },
        "c": {"attributes.city": "", "attributes.interests": [], "traits.orders": float("nan"), "tags.vip": "yes"},
        "d": {"profile.first_seen_at": T0 - timedelta(days=30)},
        "e": {"profile.first_seen_at": T0 + US},
    }
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"field": "attributes.city", "op": "starts_with", "value": "Shang"}, {"a"}),
        ({"field": "attributes.city", "op": "starts_with", "value": ""}, {"a", "b", "c"}),
        ({"field": "attributes.city", "op": "contains", "value": "海"}, {"b"}),
        ({"field": "attributes.city", "op": "not_contains", "value": "hai"}, {"b", "c"}),
        ({"field": "attributes.city", "op": "in", "value": ["上海", "x"]}, {"b"}),
        ({"field": "attributes.city", "op": "not_in", "value": ["上海", "x"]}, {"a", "c"}),
        ({"field": "attributes.interests", "op": "contains", "value": "golf"}, {"a"}),
        ({"field": "attributes.interests", "op": "not_contains", "value": "golf"}, {"b"}),
        ({"field": "attributes.interests", "op": "is_set"}, {"a", "b"}),
        ({"field": "traits.orders", "op": "between", "value": [2.5, 5]}, {"a", "b"}),
        ({"field": "traits.orders", "op": "in", "value": [5, 7]}, {"a"}),
        ({"field": "traits.orders", "op": "is_not_set"}, {"c", "d", "e"}),
        ({"field": "tags.vip", "op": "eq", "value": True}, {"a"}),
        ({"field": "tags.vip", "op": "ne", "value": True}, {"b"}),
        ({"field": "profile.first_seen_at", "op": "within_last_days", "value": 2}, {"a"}),
        ({"field": "profile.first_seen_at", "op": "before", "value": {"days_ago": 30}}, {"b"}),
        ({"field": "profile.first_seen_at", "op": "after", "value": "2026-02-28"}, {"e"}),
        ({"field": "profile.first_seen_at", "op": "between", "value": ["2025-01-01", "2026-02-28"]}, {"a", "b", "d"}),
    ]
    for cond, expected in cases:
        assert agree(db, {"kind": "attribute", **cond}, profiles, [], T0) == expected, cond
