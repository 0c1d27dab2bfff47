"""Computed traits: per-profile aggregates of events (or order lines) over a time window.

A trait is a definition (``TraitDefinition``) stored in the operational ``traits`` table, a field
``traits.<name>`` in the catalog, and a value in each qualifying live profile's ``traits`` JSON.

Batch (``TraitService.compute``): per source (events, order lines) ONE grouped aggregation for all
requested traits that keep a fixed-size state per profile (count, sum, avg, min, max, first, last,
days_since_last), plus one (profile, value) grouping per distinct_count / most_frequent trait; built
with Ibis (names and values are bound as literals, never spliced into SQL) and run by DuckDB on a
snapshot of the event log. Each trait is a conditional aggregate (``CASE WHEN <match> THEN <value>
END``). Event traits read the property cache (``goldkey.audience.property_cache``): the typed
properties of the events, with integer profile keys, appended to from the log at each run, so a
refresh neither parses JSON nor groups on strings. The values are compared with the last run's
values of the same traits (a DuckDB baseline) plus the profiles changed since by anything else
(incremental updates, merges, other runs); the first run of a process compares with every profile's
stored traits. Only changed profiles are written back, in chunks of ``WRITE_CHUNK`` through the
writer thread, so the write-back is serialised with event commits without holding them up for long.
A profile with no matching event has no value: the key is removed.

Incremental (``attach``): after each durable commit the writer hands the stored events to a
listener that only queues them; a background thread applies them in batches through
``writer.submit_command`` (read-modify-write of the touched profiles' traits JSON). Definitions that
allow it (on events: count, sum, min, max, first, last, days_since_last) are updated within
moments of the event. Windowed values only grow between batch runs (an event is counted when it
arrives inside the window; that it later falls out of the window is corrected by the scheduled
batch refresh); avg, distinct_count, most_frequent and order-line traits are batch only.

Batch and incremental meet exactly: the batch pins a DuckDB snapshot on the writer thread, so it
knows which queued events its snapshot holds (their sequence numbers are below the pin); at
write-back it re-applies the incremental events that arrived after the pin and were already applied
to the rows it overwrites, and the incremental path skips, for the traits just written, events the
snapshot already counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from goldkey.audience.catalog import declare_field, remove_field
from goldkey.audience.facts import FactsCache, events_for
from goldkey.audience.property_cache import (
    CachedEvents,
    CacheNeeds,
    duckdb_builtin,
    ibis_module,
    json_path_step,
    refresh_cache,
    ts_type,
    typed_fragment,
)
from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import Conflict, GoldkeyError, InvalidInput, NotFound, Overloaded, loc_path
from goldkey.govern import audit
from goldkey.identity.graph import fetch_in
from goldkey.rules.memory import _event_matcher
from goldkey.rules.model import _NAME, EVENT_TYPES, PropertyFilter, Window
from goldkey.rules.values import as_of_utc, window_bounds
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import merges, traits

log = logging.getLogger(__name__)

Aggregate = Literal[
    "count", "sum", "avg", "min", "max", "first", "last", "distinct_count", "most_frequent", "days_since_last"
]
AGGREGATES: tuple[str, ...] = (
    "count", "sum", "avg", "min", "max", "first", "last", "distinct_count", "most_frequent", "days_since_last",
)
# aggregates whose value an arriving event can update on its own (events source only)
INCREMENTAL_AGGREGATES = frozenset({"count", "sum", "min", "max", "first", "last", "days_since_last"})
_NO_PROPERTY = frozenset({"count", "days_since_last"})
_NUMBER_RESULT = frozenset({"count", "sum", "avg", "distinct_count", "days_since_last"})

# order-line traits read these columns (order lines joined with their order); name -> type
ORDER_LINE_COLUMNS: dict[str, str] = {
    "order_id": "string",
    "sku": "string",
    "product_name": "string",
    "category": "string",
    "quantity": "number",
    "unit_price": "number",
    "line_amount": "number",
    "channel": "string",
    "store": "string",
    "region": "string",
    "currency": "string",
    "status": "string",
}

_TRAIT_NAME = re.compile(r"^[^\W\d]\w{0,63}\Z")
DAY_US = 86_400_000_000
# an event timestamped this long before the batch horizon is late: it does not replace `last`
# incrementally (the next batch run places it)
LATE_EVENT_SECONDS = 300
_SUM_DIGITS = 6  # sums and averages are rounded to this many decimals (stable write-back)
WRITE_CHUNK = 50_000  # profiles written per writer command (event commits go on in between)
# more candidate profiles than this: their stored traits are read with one scan, not by id
FULL_READ_CANDIDATES = 200_000
# DuckDB groups on integer keys of up to this many bits through an array (its default: 12 bits);
# the property cache's dense profile keys use it up to 16M profiles
PERFECT_HASH_BITS = (12, 24)
MAX_BASELINES = 4  # per workspace (one per set of traits computed together)
MERGE_MARGIN = timedelta(minutes=10)  # merges this long before a baseline's snapshot count as after it


_derived = property  # the model has a field called `property`


def _err(message: str, path: str) -> PydanticCustomError:
    return PydanticCustomError("trait", "{message}", {"message": message, "path": path})


class TraitDefinition(BaseModel):
    """What a trait computes. See docs/traits.md for the semantics and examples."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="letters, digits and underscores, at most 64; the field is `traits.<name>`")
    description: str = Field("", max_length=2000)
    source: Literal["events", "order_lines"] = Field(
        "events", description="`events` (tracking events) or `order_lines` (imported order lines with their order)"
    )
    type: Literal["track", "page", "screen", "identify", "group", "alias"] | None = Field(
        None, validate_default=True, description="event type (events only; default track)"
    )
    event: str | None = Field(
        None, validate_default=True, description="event name (track) or page/screen name; none = any (not for track)"
    )
    aggregate: Aggregate
    property: str | None = Field(
        None,
        validate_default=True,
        description="event property, or order-line column; required except for count and days_since_last",
    )
    value_type: Literal["string", "number"] | None = Field(
        None,
        validate_default=True,
        description="the property's type for min/max (default number) and first/last/most_frequent (default "
        "string); order-line columns have their own type",
    )
    where: list[PropertyFilter] = Field(
        default_factory=list, max_length=16, description="property filters (order lines: column filters)"
    )
    window: Window | None = Field(None, description="only events in this time window count")
    refresh_every_minutes: int = Field(60, ge=1, le=43200, description="batch refresh schedule")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TRAIT_NAME.match(v):
            raise ValueError("a trait name is a letter or underscore, then letters, digits or underscores (at most 64)")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("source") == "order_lines" and v is not None:
            raise ValueError("order-line traits take no event type")
        return v

    @field_validator("event")
    @classmethod
    def _event(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("source") == "order_lines":
            if v is not None:
                raise ValueError("order-line traits take no event name")
            return v
        if v is not None and not (0 < len(v) <= 200):
            raise ValueError("event name must be 1 to 200 characters")
        if v is None and (info.data.get("type") or "track") == "track":
            raise ValueError("a track trait needs an event name")
        return v

    @field_validator("property")
    @classmethod
    def _property(cls, v: str | None, info: ValidationInfo) -> str | None:
        agg = info.data.get("aggregate")
        if agg is None:
            return v
        if agg in _NO_PROPERTY:
            if v is not None:
                raise ValueError(f"'{agg}' takes no property (filter events with 'where')")
            return v
        if v is None:
            raise ValueError(f"'{agg}' needs a property")
        if info.data.get("source") == "order_lines":
            if v not in ORDER_LINE_COLUMNS:
                raise ValueError(f"not an order-line column; use one of: {', '.join(ORDER_LINE_COLUMNS)}")
        elif not _NAME.match(v):
            raise ValueError("property must be a name of letters, digits and underscores")
        if agg in ("sum", "avg") and info.data.get("source") == "order_lines" and ORDER_LINE_COLUMNS[v] != "number":
            raise ValueError(f"'{agg}' needs a number column")
        return v

    @field_validator("value_type")
    @classmethod
    def _value_type(cls, v: str | None, info: ValidationInfo) -> str | None:
        agg = info.data.get("aggregate")
        if agg is None or v is None:
            return v
        if agg in _NUMBER_RESULT and agg != "distinct_count" and v != "number":
            raise ValueError(f"'{agg}' gives a number")
        if agg == "distinct_count":
            raise ValueError("distinct_count counts values of any type; give no value_type")
        prop = info.data.get("property")
        if info.data.get("source") == "order_lines" and prop in ORDER_LINE_COLUMNS and ORDER_LINE_COLUMNS[prop] != v:
            raise ValueError(f"order-line column {prop!r} is a {ORDER_LINE_COLUMNS[prop]}")
        return v

    @field_validator("where")
    @classmethod
    def _where(cls, v: list[PropertyFilter], info: ValidationInfo) -> list[PropertyFilter]:
        if info.data.get("source") != "order_lines":
            return v
        for i, f in enumerate(v):
            ctype = ORDER_LINE_COLUMNS.get(f.property)
            if ctype is None:
                raise _err(
                    f"not an order-line column; use one of: {', '.join(ORDER_LINE_COLUMNS)}", f"where[{i}].property"
                )
            if f.value_type != ctype:
                raise _err(f"column {f.property!r} is a {ctype}, the filter a {f.value_type}", f"where[{i}].value")
        return v

    # -- derived -----------------------------------------------------------------------------------
    @_derived
    def input_type(self) -> str | None:
        """The type of the value the aggregate reads: number, string, raw (any JSON value) or None."""
        agg = self.aggregate
        if agg in _NO_PROPERTY:
            return None
        if self.source == "order_lines":
            return ORDER_LINE_COLUMNS[self.property or ""]
        if agg in ("sum", "avg"):
            return "number"
        if agg == "distinct_count":
            return "raw"
        if self.value_type is not None:
            return self.value_type
        return "number" if agg in ("min", "max") else "string"

    @_derived
    def result_type(self) -> str:
        """The catalog type of the trait's value."""
        if self.aggregate in _NUMBER_RESULT:
            return "number"
        return self.input_type or "number"

    @_derived
    def incremental(self) -> bool:
        """Whether arriving events update this trait between batch runs."""
        return self.source == "events" and self.aggregate in INCREMENTAL_AGGREGATES

    @_derived
    def event_type(self) -> str:
        return self.type or "track"


def parse_definition(data: Any, *, name: str | None = None) -> TraitDefinition:
    """Validate a trait definition (JSON-able data or a model); raise InvalidInput naming the field
    (``aggregate``, ``where[0].property``, ``window.last_days`` ...)."""
    if isinstance(data, TraitDefinition):
        data = data.model_dump(mode="json", exclude_none=True)
    if not isinstance(data, dict):
        raise InvalidInput("a trait definition is a JSON object", field="body")
    if name is not None:
        if data.get("name", name) != name:
            raise InvalidInput("a trait cannot be renamed; create a new one", field="name")
        data = {**data, "name": name}
    try:
        return TraitDefinition.model_validate(data)
    except ValidationError as exc:  # raised after the block: see goldkey.core.errors.validated
        e = exc.errors(include_url=False, include_input=False)[0]
        ctx = e.get("ctx") or {}
        path = ctx.get("path") if isinstance(ctx.get("path"), str) else loc_path(e.get("loc", ()))
        msg = ctx.get("message") if isinstance(ctx.get("message"), str) else e.get("msg", "invalid")
        msg = str(msg).removeprefix("Value error, ")
        del e, ctx
    raise InvalidInput(msg, field=path or None)


# ================================================================================ batch compiler


_ibis = ibis_module
_ts_type = ts_type
_builtin = duckdb_builtin
_extract = typed_fragment
_json_key = json_path_step


def _stub1(arg: Any, spec: Any) -> Any:  # pragma: no cover - the backend's function runs
    raise NotImplementedError


def _ts_lit(t: datetime) -> Any:
    return _ibis().literal(t, type=_ts_type())


@dataclass
class _Spec:
    """One trait in a batch: its definition and its column in the result."""

    name: str
    defn: TraitDefinition
    col: str


def _lit(value: Any, kind: str) -> Any:
    ibis = _ibis()
    if kind == "number":
        return ibis.literal(float(value), type="float64")
    if kind == "boolean":
        return ibis.literal(bool(value), type="boolean")
    return ibis.literal(str(value), type="string")


def _filter_expr(f: PropertyFilter, x: Any) -> Any:
    """One property filter on a typed value column ``x`` (null = missing)."""
    op = f.op
    kind = f.value_type or "string"
    if op == "is_not_set":
        return x.isnull()
    if op == "is_set":
        return x.notnull()
    v = f.value
    if op in ("eq", "ne", "lt", "lte", "gt", "gte"):
        lit = _lit(v, kind)
        cmp = {"eq": x == lit, "ne": x != lit, "lt": x < lit, "lte": x <= lit, "gt": x > lit, "gte": x >= lit}[op]
        return x.notnull() & cmp
    if op == "between":
        assert isinstance(v, list)
        return x.notnull() & (x >= _lit(v[0], kind)) & (x <= _lit(v[1], kind))
    if op in ("in", "not_in"):
        assert isinstance(v, list)
        values = [_lit(i, kind) for i in v]
        return x.isin(values) if op == "in" else x.notnull() & x.notin(values)
    if op == "contains":
        return x.notnull() & x.contains(str(v))
    if op == "not_contains":
        return x.notnull() & ~x.contains(str(v))
    if op == "starts_with":
        return x.notnull() & x.startswith(str(v))
    raise ValueError(f"operator {op!r} does not apply to event properties")  # pragma: no cover - validated


def _prefilter(base: Any, defs: list[TraitDefinition], as_of: datetime, source: str) -> Any:
    """The rows any of the traits may read, in terms DuckDB pushes into the scan: the event types
    and names, and the widest window."""
    ibis = _ibis()
    ts = base.timestamp
    cond = ts <= _ts_lit(as_of)
    bounds = [window_bounds(d.window, as_of) for d in defs]
    if all(lo is not None for lo, _ in bounds):
        cond = cond & (ts >= _ts_lit(min(lo for lo, _ in bounds)))  # type: ignore[type-var]
    if all(end is not None for _, end in bounds):
        cond = cond & (ts < _ts_lit(max(end for _, end in bounds)))  # type: ignore[type-var]
    if source != "events":
        return cond
    names: dict[str, set[str] | None] = {}
    for d in defs:
        got = names.get(d.event_type, set())
        if d.event is None or got is None:
            names[d.event_type] = None
        else:
            got.add(d.event)
            names[d.event_type] = got
    parts = []
    for etype, wanted in sorted(names.items()):
        c = base.type == etype
        if wanted is not None:
            col = base.event if etype == "track" else base.name
            c = c & col.isin(sorted(wanted))
        parts.append(c)
    return cond & (ibis.or_(*parts) if len(parts) > 1 else parts[0])


def _window_cond(ts: Any, w: Window | None, as_of: datetime) -> Any:
    lo, end = window_bounds(w, as_of)
    cond = ts <= _ts_lit(as_of)
    if lo is not None:
        cond = cond & (ts >= _ts_lit(lo))
    if end is not None:
        cond = cond & (ts < _ts_lit(end))
    return cond


PER_VALUE = frozenset({"distinct_count", "most_frequent"})


def _rows_sql(base: Any, specs: list[_Spec], as_of: datetime, source: str,
              name: str) -> tuple[str, dict[tuple[str, str], str]]:
    """SQL for the rows ``specs`` may read, one per event (or order line): ``profile_id``, ``ts``
    (epoch microseconds), ``b_<col>`` (the trait's type, name and window match) and one typed column
    per (property, type) read for values or filters; returns the SQL and those columns' names.

    Every property is extracted in ONE parse of the row's JSON (``json_extract`` with a list of
    paths) in a MATERIALIZED common table expression ``name``, and typed in the query over it. The
    materialisation is what keeps it one parse: as a plain projection DuckDB would inline the
    extraction into every expression that reads it and parse the JSON once per reader. All the
    aggregations of one source then read the result (see ``TraitService._aggregate``), so the
    events are scanned and parsed once per refresh, not once per aggregation.
    """
    ibis = _ibis()
    import ibis.expr.datatypes as dt

    def basic(tbl: Any, d: TraitDefinition) -> Any:
        cond = _window_cond(tbl.timestamp, d.window, as_of)
        if source == "events":
            cond = (tbl.type == d.event_type) & cond
            if d.event is not None:
                cond = cond & ((tbl.event if d.event_type == "track" else tbl.name) == d.event)
        return cond

    rows = base.filter(_prefilter(base, [s.defn for s in specs], as_of, source))
    needs: dict[tuple[str, str], list[_Spec]] = {}
    for s in specs:
        d = s.defn
        if d.property is not None and d.input_type is not None:
            needs.setdefault((d.property, d.input_type), []).append(s)
        for f in d.where:
            needs.setdefault((f.property, f.value_type or "string"), []).append(s)
    value_col = {key: f"v{i}" for i, key in enumerate(sorted(needs))}

    epoch_us = _builtin("scalar", "epoch_us", (_ts_type(),), dt.int64)
    level1: dict[str, Any] = {"profile_id": rows.profile_id, "ts": epoch_us(rows.timestamp)}
    for s in specs:
        level1[f"b_{s.col}"] = basic(rows, s.defn).fill_null(False)
    frag_at: dict[str, int] = {}
    if source == "events" and needs:
        names = sorted({prop for prop, _ in needs})
        frag_at = {p: i for i, p in enumerate(names)}
        paths = ibis.literal([f"$.{_json_key(p)}" for p in names], type=dt.Array(dt.string))
        multi = _builtin("scalar", "json_extract", (dt.json, dt.Array(dt.string)), dt.Array(dt.json))
        level1["frags"] = multi(rows.properties, paths)
    elif needs:
        for prop in {prop for prop, _ in needs}:
            level1[f"c_{prop}"] = rows[prop]
    t1 = rows.select(**level1)

    raw = ibis.table(t1.schema(), name=name)
    keep = ["profile_id", "ts", *(f"b_{s.col}" for s in specs)]
    typed: dict[str, Any] = {}
    for (prop, kind), col in value_col.items():
        if source == "events":
            # typed only on the rows of a trait that reads it
            readers = [raw[f"b_{r.col}"] for r in {id(r): r for r in needs[(prop, kind)]}.values()]
            when = ibis.or_(*readers) if len(readers) > 1 else readers[0]
            value = _extract(raw.frags[frag_at[prop]], kind)
            typed[col] = ibis.ifelse(when, value, ibis.null(value.type()))
        else:
            c = raw[f"c_{prop}"]
            typed[col] = c.cast("float64") if kind == "number" else c
    out = raw.select(*keep, **typed)
    return f'WITH "{name}" AS MATERIALIZED ({ibis.to_sql(t1)}) {ibis.to_sql(out)}', value_col


def cache_needs(defs: Iterable[TraitDefinition]) -> CacheNeeds:
    """What the property cache must hold for event traits ``defs``: their event kinds and the
    (property, type) of every value and filter they read."""
    kinds: set[tuple[str, str | None]] = set()
    columns: set[tuple[str, str]] = set()
    for d in defs:
        if d.source != "events":
            continue
        kinds.add((d.event_type, d.event))
        if d.property is not None and d.input_type is not None:
            columns.add((d.property, d.input_type))
        for f in d.where:
            columns.add((f.property, f.value_type or "string"))
    return CacheNeeds(frozenset(kinds), frozenset(columns))


def _cached_rows(con: Any, cached: CachedEvents, specs: list[_Spec], as_of: datetime
                 ) -> tuple[Any, dict[tuple[str, str], str]]:
    """The rows ``specs`` read, from the property cache, in the shape ``_aggregate_source`` takes:
    ``profile_id`` (the live profile's integer key), ``ts``, ``b_<col>`` (type, name and window
    match) and one typed column per (property, type); returns the Ibis table and those columns."""
    ibis = _ibis()
    c = con.table(cached.rows)
    r = con.table(cached.resolve)
    as_of_us = _micros(as_of)

    def codes(d: TraitDefinition) -> list[int]:
        return [i for i, (t, n) in enumerate(cached.kinds) if t == d.event_type and (d.event is None or n == d.event)]

    def in_window(ts: Any, w: Window | None) -> Any:
        lo, end = window_bounds(w, as_of)
        cond = ts <= as_of_us
        if lo is not None:
            cond = cond & (ts >= _micros(lo))
        if end is not None:
            cond = cond & (ts < _micros(end))
        return cond

    every = sorted({k for s in specs for k in codes(s.defn)})
    bounds = [window_bounds(s.defn.window, as_of) for s in specs]
    pre = c.k.isin(every) if every else ibis.literal(False)
    pre = pre & (c.ts <= as_of_us)
    if all(lo is not None for lo, _ in bounds):
        pre = pre & (c.ts >= _micros(min(lo for lo, _ in bounds)))  # type: ignore[type-var]
    if all(end is not None for _, end in bounds):
        pre = pre & (c.ts < _micros(max(end for _, end in bounds)))  # type: ignore[type-var]
    f = c.filter(pre)
    j = f.left_join(r, f.pkey == r.raw)
    cols: dict[str, Any] = {"profile_id": ibis.coalesce(j.canon, j.pkey), "ts": j.ts}
    for s in specs:
        ks = codes(s.defn)
        cols[f"b_{s.col}"] = (j.k.isin(ks) & in_window(j.ts, s.defn.window)) if ks else ibis.literal(False)
    needs: set[tuple[str, str]] = set()
    for s in specs:
        d = s.defn
        if d.property is not None and d.input_type is not None:
            needs.add((d.property, d.input_type))
        for flt in d.where:
            needs.add((flt.property, flt.value_type or "string"))
    value_col = {key: f"v{i}" for i, key in enumerate(sorted(needs))}
    for key, col in value_col.items():
        cols[col] = j[cached.columns[key]]
    return j.select(**cols), value_col


def _match(t: Any, s: _Spec, value_col: dict[tuple[str, str], str]) -> Any:
    """The trait's full match on a row: type, name and window, and its property filters."""
    match = t[f"b_{s.col}"]
    for f in s.defn.where:
        match = match & _filter_expr(f, t[value_col[(f.property, f.value_type or "string")]])
    return match


def _aggregate_simple(t: Any, value_col: dict[tuple[str, str], str], specs: list[_Spec], as_of: datetime) -> Any:
    """ONE grouped aggregation for all the traits of a source that keep a fixed-size state per
    profile (count, sum, avg, min, max, first, last, days_since_last): ``CASE WHEN match THEN value
    END`` per trait over the rows of ``_rows``."""
    ibis = _ibis()
    import ibis.expr.datatypes as dt

    aggs: dict[str, Any] = {}
    days_cols: list[str] = []
    for s in specs:
        d = s.defn
        match = _match(t, s, value_col)
        x = t[value_col[(d.property, d.input_type)]] if d.property is not None and d.input_type else None
        agg = d.aggregate
        if agg == "count":
            aggs[s.col] = t.ts.count(where=match).nullif(0)
        elif agg == "days_since_last":
            # on epoch microseconds: max() of a TIMESTAMPTZ is many times slower in DuckDB
            aggs[s.col] = ibis.ifelse(match, t.ts, ibis.null(dt.int64)).max()
            days_cols.append(s.col)
        else:
            assert x is not None
            val = ibis.ifelse(match, x, ibis.null(x.type()))
            if agg == "sum":
                aggs[s.col] = val.sum().round(_SUM_DIGITS).cast("float64")
            elif agg == "avg":
                aggs[s.col] = val.mean().round(_SUM_DIGITS).cast("float64")
            elif agg == "min":
                aggs[s.col] = val.min()
            elif agg == "max":
                aggs[s.col] = val.max()
            else:  # first, last
                key = ibis.ifelse(match & x.notnull(), t.ts, ibis.null(dt.int64))
                fn = _builtin("agg", "arg_min" if agg == "first" else "arg_max", (x.type(), dt.int64), x.type())
                aggs[s.col] = fn(val, key)
    out = t.group_by("profile_id").aggregate(**aggs)
    if days_cols:
        as_of_us = ibis.literal(_micros(as_of), type="int64")
        out = out.mutate(**{c: ((as_of_us - out[c]) // DAY_US).cast("int64") for c in days_cols})
    return out


def _aggregate_per_value(t: Any, value_col: dict[tuple[str, str], str], s: _Spec) -> Any:
    """A distinct_count or most_frequent trait: rows counted per (profile, value), then per profile
    the number of values, or the value with the highest count (of equals the greatest: DuckDB's
    mode() breaks ties by arrival order, which changes from run to run)."""
    ibis = _ibis()
    import ibis.expr.datatypes as dt

    d = s.defn
    x = t[value_col[(d.property or "", d.input_type or "string")]]
    counted = (
        t.filter(_match(t, s, value_col) & x.notnull())
        .select(pid=t.profile_id, v=x)
        .group_by(["pid", "v"])
        .aggregate(n=ibis._.count())
    )
    if d.aggregate == "distinct_count":
        return counted.group_by("pid").aggregate(**{s.col: counted.count().cast("int64")}).rename(profile_id="pid")
    vtype = x.type()
    pick = _builtin("agg", "arg_max", (vtype, dt.Struct({"n": dt.int64, "v": vtype})), vtype)
    best = pick(counted.v, ibis.struct({"n": counted.n, "v": counted.v}))
    return counted.group_by("pid").aggregate(**{s.col: best}).rename(profile_id="pid")


def _aggregate_source(t: Any, value_col: dict[tuple[str, str], str], specs: list[_Spec], as_of: datetime
                      ) -> list[Any]:
    """The aggregations of one source: one grouped aggregation for all fixed-state traits, and one
    (profile, value) grouping per distinct_count / most_frequent trait. Each is a table of
    ``profile_id`` and the traits' columns."""
    simple = [s for s in specs if s.defn.aggregate not in PER_VALUE]
    parts = [_aggregate_simple(t, value_col, simple, as_of)] if simple else []
    parts += [_aggregate_per_value(t, value_col, s) for s in specs if s.defn.aggregate in PER_VALUE]
    return parts


def _order_lines_for(con: Any, ws: str) -> Any:
    """The workspace's order lines with their order's live profile and time, as Ibis."""
    ol = con.table("order_lines")
    o = con.table("orders_resolved")
    ol = ol.filter(ol.workspace_id == ws)
    o = o.filter(o.workspace_id == ws).select(
        oid=o.order_id, profile_id=o.canonical_id, timestamp=o.ordered_at, channel=o.channel, store=o.store,
        region=o.region, currency=o.currency, status=o.status,
    )
    j = ol.join(o, ol.order_id == o.oid)
    return j.select(
        profile_id=j.profile_id, timestamp=j.timestamp, order_id=j.order_id, sku=j.sku, product_name=j.product_name,
        category=j.category, quantity=j.quantity, unit_price=j.unit_price, line_amount=j.line_amount,
        channel=j.channel, store=j.store, region=j.region, currency=j.currency, status=j.status,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _micros(t: datetime) -> int:
    """Epoch microseconds of an aware (or naive UTC) datetime."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


# ================================================================================ values in Python


def _prop_value(props: Any, name: str, kind: str) -> Any:
    """The typed value of an event property (the batch's ``_extract`` semantics)."""
    v = props.get(name) if isinstance(props, dict) else None
    if v is None:
        return None
    if kind == "number":
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        f = float(v)
        return f if math.isfinite(f) else None
    if kind == "string":
        return v if isinstance(v, str) else None
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass
class _LiveTrait:
    """A computed, incrementally maintained trait as the applier uses it."""

    ws: str
    name: str
    defn: TraitDefinition
    version: int
    horizon_us: int
    match: Callable[[Any], bool]


def _apply_event(d: dict[str, Any], t: _LiveTrait, ev: Any, now_us: int, lo_end: tuple[Any, Any],
                 last_ts: dict[tuple[str, str], int], pid: str) -> bool:
    """Apply one matching event to the traits dict ``d`` of profile ``pid``; return whether the
    event is inside the trait's window (and so was applied)."""
    ts = ev.timestamp
    if ts > now_us:
        return False
    lo, end = lo_end
    if lo is not None and ts < lo:
        return False
    if end is not None and ts >= end:
        return False
    defn = t.defn
    name = t.name
    agg = defn.aggregate
    cur = d.get(name)
    if agg == "count":
        d[name] = (int(cur) if _is_number(cur) else 0) + 1
        return True
    if agg == "days_since_last":
        days = max(0, (now_us - ts) // DAY_US)
        d[name] = days if not _is_number(cur) else min(int(cur), days)
        return True
    v = _prop_value(ev.properties, defn.property or "", defn.input_type or "string")
    if v is None:
        return True
    ok = isinstance(cur, str) if defn.input_type == "string" else _is_number(cur)
    if agg == "sum":
        d[name] = round((float(cur) if _is_number(cur) else 0.0) + v, _SUM_DIGITS)
    elif agg == "min":
        d[name] = v if not ok or v < cur else cur
    elif agg == "max":
        d[name] = v if not ok or v > cur else cur
    elif agg == "first":
        if not ok:
            d[name] = v
    elif agg == "last":
        key = (pid, name)
        if ts >= t.horizon_us - LATE_EVENT_SECONDS * 1_000_000 and ts >= last_ts.get(key, ts):
            d[name] = v
            last_ts[key] = ts
    return True


@dataclass(order=True)
class _Queued:
    seq: int
    ws: str = field(compare=False)
    profile_id: str = field(compare=False)
    event: Any = field(compare=False)


@dataclass
class _Baseline:
    """The values a batch run wrote (a DuckDB table of profile_id and the traits' columns), against
    which the next run of the same traits finds its changes instead of reading every profile's traits
    JSON back from the operational store.

    Valid only while this process sees every other change to those JSONs: ``dirty`` collects the
    profiles the incremental path, merges and other runs changed since; they are compared in full.
    A process starts without baselines (its first run compares every profile)."""

    table: str
    since: datetime | None  # the snapshot time of the run that wrote it; None until that run succeeded
    dirty: set[str]
    used: float = 0.0


@dataclass
class _Pin:
    """A batch run's DuckDB snapshot and where it stands in the incremental stream."""

    cursor: Any
    seq0: int
    log_start: int
    at: datetime
    ws: str = ""
    sig: str = ""
    undone: list[Any] = field(default_factory=list)  # the workspace's undone merges (count, latest)
    dirty: set[str] | None = None  # profiles to compare besides the baseline's changes; None: compare all
    baseline: _Baseline = field(default_factory=lambda: _Baseline("", None, set()))
    evicted: list[str] = field(default_factory=list)  # baseline tables to drop


def _signature(specs: list[_Spec], versions: dict[str, int]) -> str:
    """What a baseline is the values of: the traits (names, versions, definitions) in column order."""
    data = [[s.name, versions[s.name], s.defn.model_dump(mode="json", exclude_none=True)] for s in specs]
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _baseline_table(ws: str, sig: str) -> str:
    return "_gk_trait_base_" + re.sub(r"\W", "_", ws) + "_" + sig[:16]


def _executemany_count(conn: sa.Connection, sql: str, rows: Sequence[Sequence[Any]], chunk: int = 20_000,
                       progress: Callable[[int], None] | None = None) -> int:
    """Run ``sql`` (``?`` placeholders) for every row on the raw DBAPI cursor; return the rows changed."""
    if not rows:
        return 0
    if conn.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    cur = conn.connection.cursor()
    total = 0
    try:
        for i in range(0, len(rows), chunk):
            cur.executemany(sql, rows[i : i + chunk])
            total += max(cur.rowcount or 0, 0)
            if progress is not None:
                progress(min(i + chunk, len(rows)))
    finally:
        cur.close()
    return total


_UPDATE_TRAITS = "UPDATE profiles SET traits = ? WHERE profile_id = ?"
_UPDATE_TRAITS_CAS = "UPDATE profiles SET traits = ? WHERE profile_id = ? AND traits = ? AND merged_into IS NULL"


# ================================================================================ the service


class TraitService:
    """Define, compute and maintain computed traits.

    ``compute`` runs in the caller's thread (the DuckDB part) and writes back on the writer thread;
    ``attach`` / ``start`` add the incremental path and the schedule.
    """

    def __init__(
        self,
        engine: sa.Engine,
        analytical: AnalyticalStore,
        writer: Any,
        facts: FactsCache | None = None,
        *,
        tick_seconds: float = 30.0,
        apply_delay: float = 0.02,
        apply_batch: int = 20_000,
        max_queue: int = 2_000_000,
    ) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.facts = facts
        self.tick_seconds = tick_seconds
        self.apply_delay = apply_delay
        self.apply_batch = apply_batch
        self.max_queue = max_queue
        self._lock = threading.RLock()
        self._ws_locks: dict[str, threading.Lock] = {}
        # incremental state
        self._live: dict[str, list[_LiveTrait]] = {}
        self._interest: dict[str, set[tuple[str, str | None]]] = {}
        self._skip_below: dict[tuple[str, str], int] = {}
        self._cond = threading.Condition()
        self._queue: deque[_Queued] = deque()
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._applied_seq = 0
        self._overflowed: set[str] = set()
        self._log: list[tuple[int, str, str, Any]] = []  # (seq, ws, live profile, event) while computes run
        self._log_base = 0  # absolute index of _log[0]
        self._pins: dict[int, _Pin] = {}
        self._baselines: dict[str, dict[str, _Baseline]] = {}  # workspace -> signature -> baseline
        self._pin_ids = itertools.count(1)
        self._attached = False
        self._stopping = False
        self._applier: threading.Thread | None = None
        self._scheduler: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._last_attempt: dict[tuple[str, str], datetime] = {}
        self._loaded_at = 0.0
        # called with (workspace, profile ids) after incremental updates landed (real-time segments
        # re-evaluate those profiles: a segment on a trait follows the trait within seconds)
        self.on_applied: list[Callable[[str, list[str]], None]] = []

    # ---------------------------------------------------------------------------- definitions
    def create(self, ws: str, definition: Any, *, actor: str = "system") -> dict[str, Any]:
        """Create a trait; raise InvalidInput (naming the field) or Conflict when the name is taken."""
        defn = parse_definition(definition)
        now = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(traits.c.name).where(traits.c.workspace_id == ws, traits.c.name == defn.name)
            ).first()
            if exists is not None:
                raise Conflict(f"a trait named {defn.name!r} exists; update it with PUT or choose another name")
            conn.execute(
                traits.insert().values(
                    workspace_id=ws, name=defn.name, definition=self._dump(defn), description=defn.description,
                    version=1, status="new", computed_at=None, computed_as_of=None, error=None, created_at=now,
                    updated_at=now,
                )
            )
            self._declare(conn, ws, defn)
            self._audit(conn, ws, actor, "trait.create", defn.name, {"version": 1})
        self._reload()
        return self.get(ws, defn.name)

    def update(self, ws: str, name: str, definition: Any, *, actor: str = "system") -> dict[str, Any]:
        """Replace a trait's definition (the version goes up; values are recomputed by the next
        batch run, and incremental updates pause until then). Raises NotFound / InvalidInput."""
        defn = parse_definition(definition, name=name)
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(traits.c.version).where(traits.c.workspace_id == ws, traits.c.name == name)
            ).first()
            if row is None:
                raise NotFound(f"no trait named {name!r}")
            version = row.version + 1
            conn.execute(
                traits.update()
                .where(traits.c.workspace_id == ws, traits.c.name == name)
                .values(definition=self._dump(defn), description=defn.description, version=version, status="new",
                        computed_at=None, computed_as_of=None, error=None, updated_at=now)
            )
            self._declare(conn, ws, defn)
            self._audit(conn, ws, actor, "trait.update", name, {"version": version})
        self._reload()
        return self.get(ws, name)

    def get(self, ws: str, name: str) -> dict[str, Any]:
        """One trait with its definition and computation status; raise NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(traits).where(traits.c.workspace_id == ws, traits.c.name == name)).first()
        if row is None:
            raise NotFound(f"no trait named {name!r}")
        return self._public(row)

    def list(self, ws: str) -> list[dict[str, Any]]:
        """All traits of a workspace, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(traits).where(traits.c.workspace_id == ws).order_by(traits.c.name)).all()
        return [self._public(r) for r in rows]

    def definition(self, ws: str, name: str) -> TraitDefinition:
        """The parsed definition of a trait; raise NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(traits.c.definition).where(traits.c.workspace_id == ws, traits.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no trait named {name!r}")
        return TraitDefinition.model_validate_json(row.definition)

    def delete(self, ws: str, name: str, *, actor: str = "system") -> dict[str, Any]:
        """Delete a trait, its catalog field and its values on every profile; raise NotFound."""

        def run(ctx: Any) -> int:
            with ctx.engine.begin() as conn:
                gone = conn.execute(traits.delete().where(traits.c.workspace_id == ws, traits.c.name == name))
                if not gone.rowcount:
                    raise NotFound(f"no trait named {name!r}")
                remove_field(conn, ws, f"traits.{name}")
                # candidates by a LIKE on the key (``_`` may match any character: checked below)
                raw = conn.connection.cursor()
                try:
                    sql = "SELECT profile_id, traits FROM profiles WHERE workspace_id = ? AND traits LIKE ?"
                    if conn.dialect.name != "sqlite":
                        sql = sql.replace("?", "%s")
                    raw.execute(sql, [ws, f'%"{name}"%'])
                    rows = raw.fetchall()
                finally:
                    raw.close()
                updates = []
                for pid, text in rows:
                    d = orjson.loads(text)
                    if name in d:
                        del d[name]
                        updates.append((orjson.dumps(d).decode(), pid))
                _executemany_count(conn, _UPDATE_TRAITS, updates)
                self._audit(conn, ws, actor, "trait.delete", name, {"profiles": len(updates)})
                return len(updates)

        cleared = self.writer.run_command(run)
        self._forget_baselines(ws)  # the values were removed behind the baselines' back
        with self._lock:
            self._skip_below.pop((ws, name), None)
        self._reload()
        self._touch(ws)
        return {"name": name, "deleted": True, "profiles_cleared": cleared}

    @staticmethod
    def _dump(defn: TraitDefinition) -> str:
        return defn.model_dump_json(exclude_none=True)

    @staticmethod
    def _declare(conn: sa.Connection, ws: str, defn: TraitDefinition) -> None:
        declare_field(conn, ws, f"traits.{defn.name}", defn.result_type, "trait", label=defn.name,
                      description=defn.description)

    @staticmethod
    def _audit(conn: sa.Connection, ws: str, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        audit.write(conn, ws, actor, action, target, detail)

    @staticmethod
    def _public(row: Any) -> dict[str, Any]:
        defn = TraitDefinition.model_validate_json(row.definition)
        return {
            "name": row.name,
            "description": row.description,
            "field": f"traits.{row.name}",
            "value_type": defn.result_type,
            "incremental": defn.incremental,
            "definition": orjson.loads(row.definition),
            "version": row.version,
            "status": row.status,
            "computed_at": as_utc(row.computed_at),
            "computed_as_of": as_utc(row.computed_as_of),
            "error": row.error,
            "created_at": as_utc(row.created_at),
            "updated_at": as_utc(row.updated_at),
        }

    def _touch(self, ws: str, *, soft: bool = False) -> None:
        """Tell the facts cache the workspace's profiles changed (soft: the drift of live traffic,
        rebuilt at most every few seconds; see FactsCache)."""
        if self.facts is None:
            return
        if soft:
            try:
                self.facts.touch(ws, soft=True)
                return
            except TypeError:  # a cache without soft touches
                pass
        self.facts.touch(ws)

    # ---------------------------------------------------------------------------- batch
    def compute(
        self,
        ws: str,
        names: Iterable[str] | None = None,
        as_of: datetime | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Compute traits of workspace ``ws`` (all, or ``names``) as of ``as_of`` (now) and write
        the changed values back. Returns counts and seconds per phase. Raises NotFound for an unknown
        name; a failing computation marks the traits failed (with the error) and raises."""
        t0 = time.perf_counter()
        wanted = sorted(set(names)) if names else None
        with self._ws_lock(ws):
            with self.engine.connect() as conn:
                q = sa.select(traits).where(traits.c.workspace_id == ws)
                if wanted is not None:
                    q = q.where(traits.c.name.in_(wanted))
                rows = conn.execute(q.order_by(traits.c.name)).all()
            if wanted is not None:
                missing = sorted(set(wanted) - {r.name for r in rows})
                if missing:
                    raise NotFound(f"no trait named {missing[0]!r}")
            if not rows:
                return self._report(ws, [], None, 0, 0, {}, t0, 0.0, 0.0, 0.0)
            specs = [_Spec(r.name, TraitDefinition.model_validate_json(r.definition), f"t{i}")
                     for i, r in enumerate(rows)]
            versions = {r.name: r.version for r in rows}
            try:
                return self._compute(ws, specs, versions, as_of, progress, t0)
            except Conflict:
                raise
            except Exception as exc:
                if len(specs) > 1 and not isinstance(exc, GoldkeyError):
                    # one bad trait must not hold the others back: compute them one by one
                    log.warning("computing %d traits of %s together failed (%s); one by one", len(specs), ws, exc)
                    reports = []
                    first_error: Exception | None = None
                    for s in specs:
                        try:
                            reports.append(self._compute(ws, [s], {s.name: versions[s.name]}, as_of, progress,
                                                         time.perf_counter()))
                        except Exception as one:  # noqa: BLE001 - recorded on the trait
                            first_error = first_error or one
                    if first_error is not None:
                        raise first_error from exc
                    return self._merge_reports(ws, reports, t0)
                raise

    def _compute(self, ws: str, specs: list[_Spec], versions: dict[str, int], as_of: datetime | None,
                 progress: Callable[[str, int, int], None] | None, t0: float) -> dict[str, Any]:
        names = [s.name for s in specs]
        if progress:
            progress("aggregating", 0, 1)
        token = next(self._pin_ids)
        sig = _signature(specs, versions)
        needs = self._cache_needs(ws) if any(s.defn.source == "events" for s in specs) else None
        t_pin = time.perf_counter()
        pin = self.writer.run_command(lambda ctx: self._pin(ctx, token, ws, sig))
        pin_s = time.perf_counter() - t_pin
        tmp = f"_gk_trait_values_{token}"
        curname = f"_gk_trait_current_{token}"
        try:
            if pin.evicted:
                self._forget_tables(pin.evicted)
            when = as_of_utc(as_of) if as_of is not None else pin.at
            try:
                t_agg = time.perf_counter()
                full = pin.dirty is None
                # without a baseline the stored values are read from the operational store while
                # DuckDB aggregates
                with ThreadPoolExecutor(1, thread_name_prefix="goldkey-traits-read") as pool:
                    reading = pool.submit(self._current, ws) if full else None
                    counts = self._aggregate(pin, ws, specs, when, tmp, needs)
                    current = reading.result() if reading is not None else None
                if progress:
                    progress("comparing", 0, 1)
                agg_s = time.perf_counter() - t_agg
                t_cmp = time.perf_counter()
                diff: list[str] | None = None
                if current is None:
                    diff = self._baseline_diff(pin.cursor, specs, tmp, pin.baseline.table)
                    if diff is None:  # the baseline table is gone: compare with every profile
                        current = self._current(ws)
                    else:
                        candidates = sorted(set(diff) | (pin.dirty or set()))
                        current = (self._current(ws) if len(candidates) > FULL_READ_CANDIDATES
                                   else self._current_of(ws, candidates))
                rows = self._new_rows(self._changed_rows(pin.cursor, specs, tmp, curname, current), specs)
                cmp_s = time.perf_counter() - t_cmp
                if progress:
                    progress("writing", 0, max(1, len(rows)))
                t_wr = time.perf_counter()

                written = self._write_back(ws, specs, versions, pin, tmp, rows, when, progress)
                self._save_baseline(pin, tmp, diff)
                wr_s = time.perf_counter() - t_wr
            except Exception as exc:
                self._forget_baseline(ws, sig)
                if not isinstance(exc, Conflict | Overloaded):  # not the definitions' fault
                    self._mark_failed(ws, names, versions, exc)
                raise
        finally:
            with self._lock:
                self._pins.pop(token, None)
                if not self._pins:
                    self._log_base += len(self._log)
                    self._log.clear()
            with contextlib.suppress(Exception):
                pin.cursor.execute("ROLLBACK")
            with contextlib.suppress(Exception):
                pin.cursor.close()
        self._reload()
        if written:
            self._touch(ws)
        if progress:
            progress("done", 1, 1)
        return self._report(ws, names, when, len(rows), written, counts, t0, agg_s, cmp_s, wr_s, pin_s)

    def _cache_needs(self, ws: str) -> CacheNeeds:
        """What the property cache holds for workspace ``ws``: what ALL its event traits read, so that
        computing any subset of them (the schedule computes the due ones) never rebuilds it."""
        with self.engine.connect() as conn:
            defs = conn.execute(sa.select(traits.c.definition).where(traits.c.workspace_id == ws)).scalars().all()
        return cache_needs(TraitDefinition.model_validate_json(d) for d in defs)

    def _pin(self, ctx: Any, token: int, ws: str, sig: str) -> _Pin:
        """On the writer thread: open a DuckDB snapshot holding exactly the events committed so far
        (every queued incremental event below ``seq0``), and take the baseline's dirty profiles
        (those changed since it was written, merges included) and the undone merges."""
        undone, merged = self._merges(ctx.engine, ws, None)
        cur = ctx.analytical.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            cur.execute("SELECT count(*) FROM events WHERE false").fetchall()
            cur.execute("SELECT count(*) FROM orders WHERE false").fetchall()
        except Exception:
            cur.close()
            raise
        with self._lock:
            pin = _Pin(cur, self._last_seq + 1, self._log_base + len(self._log), utcnow())
            self._pins[token] = pin  # from now on applied events are logged for this run's write-back
            pin.ws, pin.sig, pin.undone = ws, sig, undone
            known = self._baselines.setdefault(ws, {})
            base = known.get(sig)
            if base is not None and base.since is not None:
                pin.dirty, base.dirty = base.dirty, set()
                since = base.since
            else:
                base = _Baseline(_baseline_table(ws, sig), None, set())
                since = None
                while len(known) >= MAX_BASELINES:  # the least recently used goes
                    old = min(known, key=lambda k: known[k].used)
                    pin.evicted.append(known.pop(old).table)
                known[sig] = base
            base.used = time.monotonic()
            pin.baseline = base
        if since is not None:
            # merged and unmerged profiles: their stored traits changed outside this service's sight
            _, merged = self._merges(ctx.engine, ws, since - MERGE_MARGIN)
            assert pin.dirty is not None
            pin.dirty.update(merged)
        return pin

    @staticmethod
    def _merges(engine: sa.Engine, ws: str, since: datetime | None) -> tuple[list[Any], set[str]]:
        """The workspace's undone merges (count, latest) and the profiles of merges made or undone
        since ``since``."""
        with engine.connect() as conn:
            n, last = conn.execute(sa.select(sa.func.count(), sa.func.max(merges.c.undone_at)).where(
                merges.c.workspace_id == ws, merges.c.undone_at.is_not(None))).one()
            touched: set[str] = set()
            if since is not None:
                for w, lo in conn.execute(sa.select(merges.c.winner_id, merges.c.loser_id).where(
                        merges.c.workspace_id == ws,
                        sa.or_(merges.c.created_at >= since, merges.c.undone_at >= since))):
                    touched.update((w, lo))
        return [int(n), to_iso(as_utc(last)) if last is not None else None], touched

    def _aggregate(self, pin: _Pin, ws: str, specs: list[_Spec], as_of: datetime, tmp: str,
                   needs: CacheNeeds | None) -> dict[str, int]:
        """Aggregate every trait into the temp table ``tmp`` (profile_id, t0, t1 ...); return how many
        profiles have a value, per trait. Event traits read the property cache, brought up to the
        pinned snapshot first; its changes are committed once every aggregation has read it."""
        cur = pin.cursor
        ibis = _ibis()
        con = ibis.duckdb.from_connection(cur)
        by_source: dict[str, list[_Spec]] = {}
        for s in specs:
            by_source.setdefault(s.defn.source, []).append(s)
        registered: list[str] = []
        tables: list[pa.Table] = []
        try:
            for source, group in by_source.items():
                t0 = time.perf_counter()
                if source == "events":
                    assert needs is not None
                    cached = refresh_cache(cur, ws, needs, pin.undone)
                    registered.append(cached.resolve)
                    if cached.rebuilt:
                        log.info("property cache of %s rebuilt (%s) in %.2fs", ws, cached.rebuilt, cached.seconds)
                    log.debug("property cache of %s: %d rows appended in %.2fs", ws, cached.appended,
                              cached.seconds)
                    bits = max(1, cached.key_count).bit_length()
                    if PERFECT_HASH_BITS[0] < bits <= PERFECT_HASH_BITS[1]:
                        # group on the dense integer keys through an array, not a hash table (4-5x
                        # less CPU for a million profiles); this cursor's setting only
                        cur.execute(f"SET perfect_ht_threshold = {int(bits)}")
                    t, value_col = _cached_rows(con, cached, group, as_of)
                    parts = _aggregate_source(t, value_col, group, as_of)
                    tables.append(self._join_parts(cur, con, parts, [s.col for s in group], f"{tmp}_{source}",
                                                   keys=cached.keys))
                else:
                    tables.append(_aggregate_rows(cur, con, _order_lines_for(con, ws), group, as_of, source, tmp,
                                                  registered))
                log.debug("traits of %s aggregated in %.2fs", source, time.perf_counter() - t0)
            try:
                # end the snapshot: keeps the cache's new rows (nothing else was written); what
                # follows reads the values or writes baselines in transactions of its own
                cur.execute("COMMIT")
            except Exception:  # noqa: BLE001 - the values stand; the next run redoes the cache
                log.warning("could not keep the property cache of %s", ws, exc_info=True)
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
            cols = [s.col for s in specs]
            values = tables[0] if len(tables) == 1 else self._outer_join(cur, con, tables, cols, f"{tmp}_src")
            values = values.select(["profile_id", *cols])
        finally:
            for n in registered:
                with contextlib.suppress(Exception):
                    cur.unregister(n)
        cur.register(tmp, values)
        return {s.name: len(values) - values.column(s.col).null_count for s in specs}

    @staticmethod
    def _join_parts(cur: Any, con: Any, parts: list[Any], cols: list[str], prefix: str,
                    keys: str | None = None) -> pa.Table:
        """Run each aggregation and join them on the profile (with ``keys``, a table of
        (profile_id, pkey): translated from integer keys to profile ids)."""
        ibis = _ibis()
        # each aggregation on its own (a query runs on every core; one big query of joined
        # aggregations, or a CREATE TABLE AS, does not), then joined on the profile as Arrow
        tables = []
        for i, p in enumerate(parts):
            t0 = time.perf_counter()
            tables.append(cur.sql(str(ibis.to_sql(p))).to_arrow_table())
            log.debug("trait aggregation %d/%d: %d profiles in %.2fs", i + 1, len(parts), len(tables[-1]),
                      time.perf_counter() - t0)
        return TraitService._outer_join(cur, con, tables, cols, prefix, keys)

    @staticmethod
    def _outer_join(cur: Any, con: Any, tables: list[pa.Table], cols: list[str], prefix: str,
                    keys: str | None = None) -> pa.Table:
        """Full outer join of Arrow tables on ``profile_id`` (each holding some of ``cols``)."""
        ibis = _ibis()
        t0 = time.perf_counter()
        if len(tables) == 1 and keys is None:
            return tables[0]
        names = [f"{prefix}_part{i}" for i in range(len(tables))]
        for n, tbl in zip(names, tables, strict=True):
            cur.register(n, tbl)
        try:
            regs = [con.table(n) for n in names]
            j = regs[0]
            ids = [regs[0].profile_id]
            for r in regs[1:]:
                key = ibis.coalesce(*ids) if len(ids) > 1 else ids[0]
                j = j.outer_join(r, key == r.profile_id)
                ids.append(r.profile_id)
            owner = {c: r for r in regs for c in r.columns if c != "profile_id"}
            expr = j.select(profile_id=ibis.coalesce(*ids) if len(ids) > 1 else ids[0],
                            **{c: owner[c][c] for c in cols})
            sql = str(ibis.to_sql(expr))
            if keys is not None:  # integer keys -> profile ids (names are ours)
                sql = (f'SELECT k.profile_id, {", ".join(f"x.{c}" for c in cols)} FROM ({sql}) x '
                       f'JOIN "{keys}" k ON k.pkey = x.profile_id')
            out = cur.sql(sql).to_arrow_table()
        finally:
            for n in names:
                with contextlib.suppress(Exception):
                    cur.unregister(n)
        log.debug("trait aggregations joined in %.2fs", time.perf_counter() - t0)
        return out

    # ---------------------------------------------------------------------------- baselines
    def _baseline_diff(self, cur: Any, specs: list[_Spec], tmp: str, table: str) -> list[str] | None:
        """The profiles whose computed values differ from the baseline's (None: no baseline table)."""
        exists = cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary",
                             [table]).fetchone()[0]
        if not exists:
            return None
        differs = " OR ".join(f"v.{s.col} IS DISTINCT FROM b.{s.col}" for s in specs)
        rows = cur.execute(
            f'SELECT coalesce(v.profile_id, b.profile_id) FROM "{tmp}" v FULL OUTER JOIN "{table}" b '
            f"ON v.profile_id = b.profile_id WHERE v.profile_id IS NULL OR b.profile_id IS NULL OR {differs}"
        ).fetchall()
        return [r[0] for r in rows]

    def _save_baseline(self, pin: _Pin, tmp: str, diff: list[str] | None) -> None:
        """Keep the values just written as the baseline of the next run (``diff``: the profiles whose
        values changed since the last baseline; None: replace it whole)."""
        cur, table = pin.cursor, pin.baseline.table
        try:
            if diff is None or len(diff) > FULL_READ_CANDIDATES:
                cur.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM "{tmp}"')
            elif diff:
                cur.execute("BEGIN TRANSACTION")
                cur.execute(f'DELETE FROM "{table}" WHERE profile_id IN (SELECT unnest(?::VARCHAR[]))', [diff])
                cur.execute(f'INSERT INTO "{table}" SELECT * FROM "{tmp}" '
                            "WHERE profile_id IN (SELECT unnest(?::VARCHAR[]))", [diff])
                cur.execute("COMMIT")
        except Exception:  # noqa: BLE001 - the values are written; the next run compares in full
            log.warning("could not keep the trait baseline of %s", pin.ws, exc_info=True)
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            self._forget_baseline(pin.ws, pin.sig)
            return
        with self._lock:
            pin.baseline.since = pin.at

    def _forget_baseline(self, ws: str, sig: str) -> None:
        with self._lock:
            self._baselines.get(ws, {}).pop(sig, None)

    def _forget_baselines(self, ws: str) -> None:
        """Drop every baseline of ``ws`` (profiles' traits changed in a way no dirty set records)."""
        with self._lock:
            gone = [b.table for b in self._baselines.pop(ws, {}).values()]
        if gone:
            self._forget_tables(gone)

    def _forget_tables(self, tables: list[str]) -> None:
        """Drop baseline tables (on a cursor of their own: outside any snapshot)."""
        cur = self.analytical.cursor()
        try:
            for t in tables:
                with contextlib.suppress(Exception):
                    cur.execute(f'DROP TABLE IF EXISTS "{t}"')
        finally:
            cur.close()

    def _mark_dirty(self, ws: str, pids: Iterable[str], *, except_sig: str | None = None) -> None:
        """Record that these profiles' stored traits changed (for every baseline of ``ws``, but the
        one of ``except_sig``, whose batch wrote exactly its values)."""
        with self._lock:
            bases = [b for sig, b in self._baselines.get(ws, {}).items() if sig != except_sig]
            if not bases:
                return
            pids = set(pids)
            for b in bases:
                b.dirty |= pids

    def _current_of(self, ws: str, pids: list[str]) -> pa.Table:
        """These live profiles of the workspace with their traits JSON."""
        with self.engine.connect() as conn:
            rows = fetch_in(conn, "SELECT profile_id, traits FROM profiles WHERE workspace_id = ? "
                            "AND merged_into IS NULL AND profile_id IN ({in})", [ws], pids)
        return pa.table({"profile_id": pa.array([r[0] for r in rows], pa.string()),
                         "traits": pa.array([r[1] for r in rows], pa.string())})

    def _current(self, ws: str) -> pa.Table:
        """Every live profile of the workspace with its traits JSON."""
        with self.engine.connect() as conn:
            raw = conn.connection.cursor()
            try:
                sql = "SELECT profile_id, traits FROM profiles WHERE workspace_id = ? AND merged_into IS NULL"
                if conn.dialect.name != "sqlite":
                    sql = sql.replace("?", "%s")
                raw.execute(sql, [ws])
                rows = raw.fetchall()
            finally:
                raw.close()
        return pa.table({"profile_id": pa.array([r[0] for r in rows], pa.string()),
                         "traits": pa.array([r[1] for r in rows], pa.string())})

    def _changed_rows(
        self, cur: Any, specs: list[_Spec], tmp: str, curname: str, current: pa.Table
    ) -> tuple[list[str], list[str], list[list[Any]]]:
        """The live profiles whose stored values differ from the computed ones: (ids, stored JSON,
        one list of new values per trait)."""
        ibis = _ibis()
        con = ibis.duckdb.from_connection(cur)
        cur.register(curname, current)
        try:
            import ibis.expr.datatypes as dt

            c = con.table(curname)
            v = con.table(tmp)
            j = c.left_join(v, c.profile_id == v.profile_id)
            # the stored JSON parsed once per profile into one JSON fragment per trait
            shape = dt.Struct({s.name: dt.json for s in specs})
            transform = ibis.udf.scalar.builtin(
                _stub1, name="json_transform", signature=((dt.string, dt.string), shape)
            )
            j = j.select("profile_id", "traits", *[s.col for s in specs],
                         stored=transform(j.traits, orjson.dumps({s.name: "JSON" for s in specs}).decode()))
            flags = []
            for s in specs:
                new = j[s.col]
                frag = j.stored[s.name]
                # a number compares as a JSON number (a stored string is a change), a string as a string
                old = frag.cast("string").try_cast("float64") if s.defn.result_type == "number" else frag.str
                flags.append(ibis.ifelse(new.isnull(), frag.notnull(), old.isnull() | (old != new)))
            changed = ibis.or_(*flags) if len(flags) > 1 else flags[0]
            out = j.filter(changed).select("profile_id", "traits", *[s.col for s in specs]).order_by("profile_id")
            tbl = cur.sql(str(ibis.to_sql(out))).to_arrow_table()
        finally:
            with contextlib.suppress(Exception):
                cur.unregister(curname)
        return (tbl.column("profile_id").to_pylist(), tbl.column("traits").to_pylist(),
                [tbl.column(s.col).to_pylist() for s in specs])

    @staticmethod
    def _new_rows(
        changed: tuple[list[str], list[str], list[list[Any]]], specs: list[_Spec]
    ) -> list[tuple[str, str, str]]:
        """(new JSON, profile id, stored JSON) of each changed profile: the stored JSON with the
        computed traits set, or removed where the profile has no value."""
        pids, olds, cols = changed
        names = [s.name for s in specs]
        loads, dumps = orjson.loads, orjson.dumps
        rows: list[tuple[str, str, str]] = []
        for i, pid in enumerate(pids):
            d = loads(olds[i])
            for k, name in enumerate(names):
                val = cols[k][i]
                if val is None:
                    d.pop(name, None)
                else:
                    d[name] = val
            rows.append((dumps(d).decode(), pid, olds[i]))
        return rows

    def _write_back(self, ws: str, specs: list[_Spec], versions: dict[str, int], pin: _Pin, tmp: str,
                    prepared: list[tuple[str, str, str]], as_of: datetime,
                    progress: Callable[[str, int, int], None] | None) -> int:
        """Write the changed values through the writer, ``WRITE_CHUNK`` profiles per command so that
        event commits go on in between: compare-and-set on the JSON the values were compared with.
        A last command redoes every profile the incremental path touched since the snapshot (and any
        a compare-and-set missed), then records the traits' status. Returns the profiles written."""
        failed: set[str] = set()
        done = 0
        total = len(prepared)
        for i in range(0, total, WRITE_CHUNK):
            chunk = prepared[i : i + WRITE_CHUNK]
            done += self.writer.run_command(
                lambda ctx, chunk=chunk: self._write_chunk(ctx, ws, specs, versions, pin, chunk, failed)
            )
            if progress:
                progress("writing", min(i + WRITE_CHUNK, total), max(1, total))
        return done + self.writer.run_command(
            lambda ctx: self._finish_write(ctx, ws, specs, versions, pin, tmp, as_of, failed)
        )

    def _logged(self, ws: str, pin: _Pin) -> list[tuple[int, str, str, Any]]:
        """The incremental events applied (or skipped) in ``ws`` since the pin."""
        with self._lock:
            start = pin.log_start - self._log_base
            return [e for e in self._log[max(0, start):] if e[1] == ws]

    @staticmethod
    def _check_versions(conn: sa.Connection, ws: str, versions: dict[str, int]) -> None:
        now = dict(conn.execute(
            sa.select(traits.c.name, traits.c.version).where(traits.c.workspace_id == ws,
                                                              traits.c.name.in_(list(versions)))
        ).all())
        stale = [n for n in versions if now.get(n) != versions[n]]
        if stale:
            raise Conflict(f"trait {stale[0]!r} changed or was deleted while it was computed; compute again")

    def _write_chunk(self, ctx: Any, ws: str, specs: list[_Spec], versions: dict[str, int], pin: _Pin,
                     chunk: list[tuple[str, str, str]], failed: set[str]) -> int:
        """On the writer thread: compare-and-set one chunk; rows changed since they were read (by
        the incremental path or a merge) are left to ``_finish_write``."""
        touched = {e[2] for e in self._logged(ws, pin)}
        rows = [r for r in chunk if r[1] not in touched] if touched else chunk
        # other sets of traits computed together have baselines these profiles no longer match
        self._mark_dirty(ws, [r[1] for r in rows], except_sig=pin.sig)
        with ctx.engine.begin() as conn:
            self._check_versions(conn, ws, versions)
            done = _executemany_count(conn, _UPDATE_TRAITS_CAS, rows)
            if done != len(rows):
                current = dict(fetch_in(conn, "SELECT profile_id, traits FROM profiles WHERE profile_id IN ({in})",
                                        [], [r[1] for r in rows]))
                failed.update(r[1] for r in rows if current.get(r[1]) != r[0])
        return done

    def _finish_write(self, ctx: Any, ws: str, specs: list[_Spec], versions: dict[str, int], pin: _Pin, tmp: str,
                      as_of: datetime, failed: set[str]) -> int:
        """On the writer thread: redo the profiles the incremental path touched since the snapshot
        (batch value, then the events that came after the snapshot again) and those a
        compare-and-set missed; record the traits' status; from now on the incremental path skips,
        for these traits, the events the snapshot held."""
        names = [s.name for s in specs]
        entries = self._logged(ws, pin)
        redo = {e[2] for e in entries} | failed
        live = {s.name: self._live_trait(ws, s.name, s.defn, versions[s.name], as_of)
                for s in specs if s.defn.incremental}
        done = 0
        with ctx.engine.begin() as conn:
            self._check_versions(conn, ws, versions)
            if redo:
                done = self._redo(conn, ws=ws, pin=pin, tmp=tmp, specs=specs, pids=sorted(redo), entries=entries,
                                  live=live)
            conn.execute(
                traits.update()
                .where(traits.c.workspace_id == ws, traits.c.name.in_(names))
                .values(status="computed", computed_at=utcnow(), computed_as_of=as_of, error=None)
            )
        with self._lock:
            for n in names:
                self._skip_below[(ws, n)] = pin.seq0
                self._last_attempt.pop((ws, n), None)
        return done

    def _redo(self, conn: sa.Connection, *, ws: str, pin: _Pin, tmp: str, specs: list[_Spec], pids: list[str],
              entries: list[tuple[int, str, str, Any]], live: dict[str, _LiveTrait]) -> int:
        """Write the batch values onto the profiles' current JSON, then re-apply the incremental events
        that arrived after the snapshot (for the traits of this batch)."""
        cur = pin.cursor
        found = cur.sql(
            f'SELECT * FROM "{tmp}" WHERE profile_id IN (SELECT unnest(?::VARCHAR[]))', params=[pids]
        ).to_arrow_table().to_pylist()
        values = {r["profile_id"]: r for r in found}
        rows = fetch_in(
            conn, "SELECT profile_id, traits FROM profiles WHERE merged_into IS NULL AND workspace_id = ? "
            "AND profile_id IN ({in})", [ws], pids,
        )
        after = [e for e in entries if e[0] >= pin.seq0]
        now = utcnow()
        now_us = _micros(now)
        bounds = {n: _bounds_us(t.defn.window, now) for n, t in live.items()}
        last_ts: dict[tuple[str, str], int] = {}
        updates = []
        for pid, text in rows:
            d = orjson.loads(text)
            before = dict(d)
            got = values.get(pid, {})
            for s in specs:
                val = got.get(s.col)
                if val is None:
                    d.pop(s.name, None)
                else:
                    d[s.name] = val
            for _seq, _ws, epid, ev in after:
                if epid != pid:
                    continue
                for n, t in live.items():
                    if t.match(ev):
                        _apply_event(d, t, ev, now_us, bounds[n], last_ts, pid)
            if d != before:
                updates.append((orjson.dumps(d).decode(), pid))
        self._mark_dirty(ws, pids)  # batch values plus later events: not the baseline's
        return _executemany_count(conn, _UPDATE_TRAITS, updates)

    def _mark_failed(self, ws: str, names: list[str], versions: dict[str, int], exc: BaseException) -> None:
        log.error("computing traits %s of %s failed: %s", names, ws, exc)
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                for n in names:
                    conn.execute(
                        traits.update()
                        .where(traits.c.workspace_id == ws, traits.c.name == n, traits.c.version == versions[n])
                        .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
                    )
        except Exception:  # noqa: BLE001 - the original error is what the caller needs
            log.exception("could not record the failure")
        with self._lock:
            for n in names:
                self._last_attempt[(ws, n)] = now

    @staticmethod
    def _report(ws: str, names: list[str], as_of: datetime | None, changed: int, written: int,
                counts: dict[str, int], t0: float, agg_s: float, cmp_s: float, wr_s: float,
                pin_s: float = 0.0) -> dict[str, Any]:
        return {
            "workspace_id": ws,
            "traits": names,
            "as_of": to_iso(as_of),
            "profiles_with_value": counts,
            "profiles_changed": changed,
            "profiles_written": written,
            "seconds": {
                "snapshot": round(pin_s, 3),  # waiting for the writer to pin the DuckDB snapshot
                "aggregate": round(agg_s, 3),  # the grouped aggregation(s) in DuckDB
                "compare": round(cmp_s, 3),  # reading the stored values and finding the changed ones
                "write": round(wr_s, 3),  # writing them, on the writer thread
                "write_back": round(cmp_s + wr_s, 3),
                "total": round(time.perf_counter() - t0, 3),
            },
        }

    def _merge_reports(self, ws: str, reports: list[dict[str, Any]], t0: float) -> dict[str, Any]:
        out = self._report(ws, [], None, 0, 0, {}, t0, 0.0, 0.0, 0.0)
        for r in reports:
            out["traits"] += r["traits"]
            out["as_of"] = r["as_of"]
            out["profiles_with_value"].update(r["profiles_with_value"])
            out["profiles_changed"] += r["profiles_changed"]
            out["profiles_written"] += r["profiles_written"]
            for k in ("snapshot", "aggregate", "compare", "write", "write_back"):
                out["seconds"][k] = round(out["seconds"][k] + r["seconds"][k], 3)
        return out

    def _ws_lock(self, ws: str) -> threading.Lock:
        with self._lock:
            return self._ws_locks.setdefault(ws, threading.Lock())

    # ---------------------------------------------------------------------------- schedule
    def due(self, now: datetime | None = None) -> dict[str, list[str]]:
        """The traits whose batch refresh is due at ``now``, by workspace: never computed (new),
        ``refresh_every_minutes`` elapsed since the last computation (or failed attempt), or
        incremental traits of a workspace whose queue overflowed."""
        now = as_of_utc(now)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(traits.c.workspace_id, traits.c.name, traits.c.definition, traits.c.status,
                                          traits.c.computed_at, traits.c.updated_at)).all()
        with self._lock:
            overflowed = set(self._overflowed)
            attempts = dict(self._last_attempt)
        out: dict[str, list[str]] = {}
        for r in rows:
            defn = TraitDefinition.model_validate_json(r.definition)
            every = timedelta(minutes=defn.refresh_every_minutes)
            last = attempts.get((r.workspace_id, r.name)) or as_utc(r.computed_at)
            is_due = (
                (r.status == "new" and (r.workspace_id, r.name) not in attempts)
                or last is None
                or last + every <= now
                or (r.workspace_id in overflowed and defn.incremental)
            )
            if is_due:
                out.setdefault(r.workspace_id, []).append(r.name)
        return out

    def run_due(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Compute every trait that is due at ``now`` (see ``due``); return the reports. A failing
        workspace is logged and recorded on its traits; the others still run."""
        reports = []
        for ws, names in self.due(now).items():
            with self._lock:
                self._overflowed.discard(ws)
            try:
                reports.append(self.compute(ws, names))
            except Exception:  # noqa: BLE001 - recorded on the traits; the schedule goes on
                log.exception("scheduled computation of traits %s in %s failed", names, ws)
        return reports

    def start(self) -> None:
        """Attach the incremental path and start the scheduler thread (call ``stop`` before the
        writer stops)."""
        self.attach()
        if self._scheduler is None:
            self._stop_event.clear()
            self._scheduler = threading.Thread(target=self._schedule_loop, name="goldkey-traits-schedule", daemon=True)
            self._scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the scheduler, apply what is queued and detach from the writer."""
        self._stop_event.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=timeout)
            self._scheduler = None
        self.detach(timeout=timeout)

    def _schedule_loop(self) -> None:
        while not self._stop_event.wait(self.tick_seconds):
            try:
                self.run_due()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("trait schedule failed")

    # ---------------------------------------------------------------------------- incremental
    def attach(self) -> None:
        """Register the writer listener and start the thread that applies incremental updates."""
        with self._lock:
            if self._attached:
                return
            self._attached = True
            self._stopping = False
        self._reload()
        self.writer.listeners.append(self._on_commit)
        self._applier = threading.Thread(target=self._apply_loop, name="goldkey-traits-apply", daemon=True)
        self._applier.start()

    def detach(self, timeout: float = 30.0) -> None:
        """Unregister the listener; the queued events are applied first (while the writer runs)."""
        with self._lock:
            if not self._attached:
                return
            self._attached = False
        with contextlib.suppress(ValueError):
            self.writer.listeners.remove(self._on_commit)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._applier is not None:
            self._applier.join(timeout=timeout)
            self._applier = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued so far has been applied; return False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            while self._applied_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._attached:
                    return self._applied_seq >= target
                self._cond.wait(min(left, 0.1))
        return True

    def _on_commit(self, stored: list[tuple[str, str, Any]]) -> None:
        """Writer listener (on the writer thread, after a durable commit): queue the events some
        incremental trait may want; never blocks."""
        interest = self._interest
        if not interest:
            return
        keep = []
        for ws, pid, ev in stored:
            want = interest.get(ws)
            if not want:
                continue
            etype = ev.type
            key = ev.event if etype == "track" else ev.name
            if (etype, key) in want or (etype, None) in want:
                keep.append((ws, pid, ev))
        if not keep:
            return
        with self._cond:
            if len(self._queue) + len(keep) > self.max_queue:
                with self._lock:
                    self._overflowed.update(ws for ws, _, _ in keep)
                log.warning("trait queue full: %d events left to the next batch refresh", len(keep))
                return
            for ws, pid, ev in keep:
                seq = next(self._seq)
                self._queue.append(_Queued(seq, ws, pid, ev))
            with self._lock:
                self._last_seq = seq
            self._cond.notify()

    def _apply_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(5.0)
                    if time.monotonic() - self._loaded_at > 30:
                        break
                if not self._queue and self._stopping:
                    return
            if not self._queue:
                with contextlib.suppress(Exception):
                    self._reload()
                continue
            if not self._stopping and self.apply_delay:
                time.sleep(self.apply_delay)  # let a burst gather into one write
            with self._cond:
                n = min(len(self._queue), self.apply_batch)
                items = [self._queue.popleft() for _ in range(n)]
            try:
                touched = self.writer.run_command(lambda ctx, items=items: self._apply(ctx, items))
            except Exception:  # noqa: BLE001 - corrected by the next batch refresh
                log.exception("applying %d incremental trait updates failed", len(items))
                touched = set()
                with self._lock:
                    self._overflowed.update(i.ws for i in items)
            for ws in touched:
                self._touch(ws, soft=True)
            if touched and self.on_applied:
                changed: dict[str, set[str]] = {}
                for it in items:
                    if it.ws in touched:
                        changed.setdefault(it.ws, set()).add(it.profile_id)
                for ws, pids in changed.items():
                    for cb in self.on_applied:
                        with contextlib.suppress(Exception):
                            cb(ws, sorted(pids))
            with self._cond:
                self._applied_seq = max(self._applied_seq, items[-1].seq)
                self._cond.notify_all()

    def _apply(self, ctx: Any, items: list[_Queued]) -> set[str]:
        """On the writer thread: apply queued events to the live profiles' traits JSON."""
        with ctx.engine.begin() as conn:
            canon = dict(fetch_in(conn, "SELECT profile_id, canonical_id FROM profiles WHERE profile_id IN ({in})",
                                  [], sorted({i.profile_id for i in items})))
            live = self._live
            now = utcnow()
            now_us = _micros(now)
            bounds: dict[tuple[str, str], tuple[Any, Any]] = {}
            ops: dict[str, list[tuple[_LiveTrait, Any]]] = {}
            with self._lock:
                skip = dict(self._skip_below)
                if self._pins:  # a batch run is in flight: it re-applies these at its write-back
                    self._log.extend((i.seq, i.ws, canon.get(i.profile_id, i.profile_id), i.event) for i in items)
            for it in items:
                pid = canon.get(it.profile_id, it.profile_id)
                for t in live.get(it.ws, ()):
                    if it.seq < skip.get((it.ws, t.name), 0) or not t.match(it.event):
                        continue
                    ops.setdefault(pid, []).append((t, it.event))
            if not ops:
                return set()
            rows = fetch_in(conn, "SELECT profile_id, traits, workspace_id FROM profiles WHERE profile_id IN ({in})",
                            [], sorted(ops))
            last_ts: dict[tuple[str, str], int] = {}
            updates = []
            touched = set()
            changed: dict[str, list[str]] = {}
            for pid, text, ws in rows:
                d = orjson.loads(text)
                before = dict(d)
                for t, ev in sorted(ops[pid], key=lambda o: o[1].timestamp):
                    key = (t.ws, t.name)
                    if key not in bounds:
                        bounds[key] = _bounds_us(t.defn.window, now)
                    _apply_event(d, t, ev, now_us, bounds[key], last_ts, pid)
                if d != before:
                    updates.append((orjson.dumps(d).decode(), pid))
                    touched.add(ws)
                    changed.setdefault(ws, []).append(pid)
            for ws, pids in changed.items():
                self._mark_dirty(ws, pids)
            _executemany_count(conn, _UPDATE_TRAITS, updates)
        return touched

    @staticmethod
    def _live_trait(ws: str, name: str, defn: TraitDefinition, version: int, horizon: datetime) -> _LiveTrait:
        return _LiveTrait(ws, name, defn, version, _micros(horizon),
                          _event_matcher(defn.event_type, defn.event, defn.where, horizon))

    def _reload(self) -> None:
        """Rebuild the incremental state (which traits are live, which events interest them)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(traits.c.workspace_id, traits.c.name, traits.c.definition,
                                          traits.c.version, traits.c.computed_at, traits.c.computed_as_of)).all()
        live: dict[str, list[_LiveTrait]] = {}
        interest: dict[str, set[tuple[str, str | None]]] = {}
        for r in rows:
            defn = TraitDefinition.model_validate_json(r.definition)
            if not defn.incremental:
                continue
            interest.setdefault(r.workspace_id, set()).add((defn.event_type, defn.event))
            if r.computed_at is not None:
                horizon = as_utc(r.computed_as_of) or as_utc(r.computed_at)
                assert horizon is not None
                live.setdefault(r.workspace_id, []).append(
                    self._live_trait(r.workspace_id, r.name, defn, r.version, horizon)
                )
        self._live = live
        self._interest = interest
        self._loaded_at = time.monotonic()


def _bounds_us(w: Window | None, now: datetime) -> tuple[int | None, int | None]:
    lo, end = window_bounds(w, now)
    return (_micros(lo) if lo is not None else None, _micros(end) if end is not None else None)


def _aggregate_rows(cur: Any, con: Any, base: Any, group: list[_Spec], as_of: datetime, source: str, tmp: str,
                    registered: list[str]) -> pa.Table:
    """The traits ``group`` of one source aggregated from the rows of ``base`` (Ibis) as of
    ``as_of``: the rows every trait reads, scanned and typed once (see _rows_sql) into a table
    registered on ``cur`` (its name appended to ``registered``, for the caller to unregister), then
    one aggregation per shape, joined on the profile."""
    name = f"{tmp}_rows_{source}"
    sql, value_col = _rows_sql(base, group, as_of, source, f"{tmp}_raw_{source}")
    cur.register(name, cur.sql(sql).to_arrow_table())
    registered.append(name)
    parts = _aggregate_source(con.table(name), value_col, group, as_of)
    return TraitService._join_parts(cur, con, parts, [s.col for s in group], f"{tmp}_{source}")


def values_as_of(engine: sa.Engine, analytical: AnalyticalStore, ws: str, names: Sequence[str],
                 as_of: datetime) -> tuple[pa.Table, dict[str, TraitDefinition]]:
    """The values the computed traits ``names`` of workspace ``ws`` had ``as_of`` a past (or the
    present) instant, from the events and order lines before it, written nowhere: a table of
    ``profile_id`` (live profiles with at least one value) and one column per name, and the
    definitions. What a batch refresh as of ``as_of`` would store, for the models that learn from
    traits as of a cutoff (the stored values are as of their last refresh). Reads the events
    directly, not the property cache (which belongs to the refreshes). Raises NotFound for an
    unknown name."""
    wanted = list(dict.fromkeys(names))
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(sa.select(traits).where(traits.c.workspace_id == ws,
                                                                        traits.c.name.in_(wanted)))}
    missing = [n for n in wanted if n not in rows]
    if missing:
        raise NotFound(f"no trait named {missing[0]!r}")
    specs = [_Spec(n, TraitDefinition.model_validate_json(rows[n].definition), f"t{i}") for i, n in enumerate(wanted)]
    at = as_of_utc(as_of)
    ibis = _ibis()
    tmp = f"_gk_trait_asof_{next(_AS_OF_IDS)}"
    cur = analytical.cursor()
    registered: list[str] = []
    try:
        con = ibis.duckdb.from_connection(cur)
        tables = []
        for source in ("events", "order_lines"):
            group = [s for s in specs if s.defn.source == source]
            if not group:
                continue
            base = events_for(con, ws) if source == "events" else _order_lines_for(con, ws)
            tables.append(_aggregate_rows(cur, con, base, group, at, source, tmp, registered))
        cols = [s.col for s in specs]
        values = tables[0] if len(tables) == 1 else TraitService._outer_join(cur, con, tables, cols, f"{tmp}_src")
    finally:
        for n in registered:
            with contextlib.suppress(Exception):
                cur.unregister(n)
        cur.close()
    values = values.select(["profile_id", *cols]).rename_columns(["profile_id", *wanted])
    return values, {s.name: s.defn for s in specs}


_AS_OF_IDS = itertools.count(1)


__all__ = [
    "AGGREGATES",
    "EVENT_TYPES",
    "INCREMENTAL_AGGREGATES",
    "ORDER_LINE_COLUMNS",
    "TraitDefinition",
    "TraitService",
    "parse_definition",
]
