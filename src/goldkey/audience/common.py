"""What tags, segments and real-time membership share: batch membership through the compiler,
a profile's events for the in-memory evaluator, the events a workspace has seen, and emitting
Goldkey's own events (``segment_entered``, ``Tag Changed`` ...) into the event log."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from goldkey.audience.catalog import infer_attribute_fields, load_catalog, profile_value_select, profile_values
from goldkey.audience.facts import FactsCache, events_for, facts_for
from goldkey.core.clock import utcnow
from goldkey.core.errors import InvalidInput, loc_path
from goldkey.core.ids import new_ids
from goldkey.rules.memory import Event
from goldkey.rules.model import AttributeCondition, EventCondition, SequenceCondition, iter_nodes, parse_rule
from goldkey.rules.values import check_rule
from goldkey.store.analytical import EVENT_SCHEMA, AnalyticalStore
from goldkey.store.operational import identities, profiles

_US = pa.timestamp("us", tz="UTC")


def parse_and_check(engine: sa.Engine, analytical: AnalyticalStore, ws: str, data: Any,
                    prefix: str = "rule") -> Any:
    """Parse a rule from JSON and check it against the workspace's catalog and events; every
    problem raises InvalidInput naming the clause (``rule.conditions[1].value``)."""
    from pydantic import ValidationError

    err = None
    try:
        rule = parse_rule(data)
    except ValidationError as exc:  # raised after the block: see goldkey.core.errors.validated
        err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    except ValueError as exc:
        raise InvalidInput(str(exc), field=prefix) from None
    if err is not None:
        raise InvalidInput(err["msg"].removeprefix("Value error, "), field=loc_path([prefix, *_clean_loc(err["loc"])]))
    catalog = load_catalog(engine, ws)
    named = {n.field for _, n in iter_nodes(rule) if isinstance(n, AttributeCondition)}
    if any(f.startswith("attributes.") and f not in catalog for f in named):
        infer_attribute_fields(engine, ws)  # attributes seen since the last inference
        catalog = load_catalog(engine, ws)
    events = known_events(analytical, ws)
    named_events = {n.event for _, n in iter_nodes(rule) if isinstance(n, EventCondition) and n.event}
    named_events |= {s.event for _, n in iter_nodes(rule) if isinstance(n, SequenceCondition) for s in n.steps
                     if s.event}
    if named_events - events:
        events = known_events(analytical, ws, max_age=0)  # an event received since the cache was filled
    check_rule(rule, catalog, events, prefix=prefix)
    return rule


_NODE_KINDS = {"attribute", "event", "sequence", "and", "or", "not"}


def _clean_loc(loc: tuple[Any, ...]) -> list[Any]:
    """pydantic's error location without the union members it inserts: the condition kind (the
    discriminator, at the start, after a list index or after ``condition``) and the scalar type
    tried for a ``value`` (everything after ``value`` is dropped)."""
    out: list[Any] = []
    for i, p in enumerate(loc):
        prev = loc[i - 1] if i else None
        if isinstance(p, str) and p in _NODE_KINDS and (i == 0 or isinstance(prev, int) or prev == "condition"):
            continue
        out.append(p)
        if p == "value":
            break
    return out


_events_cache: dict[tuple[int, str], tuple[float, frozenset[str]]] = {}
_events_lock = threading.Lock()


def known_events(analytical: AnalyticalStore, ws: str, max_age: float = 30.0) -> frozenset[str]:
    """The track event names workspace ``ws`` has received (cached for ``max_age`` seconds), plus
    Goldkey's own events."""
    key = (id(analytical), ws)
    with _events_lock:
        hit = _events_cache.get(key)
    if hit and time.monotonic() - hit[0] < max_age and max_age > 0:
        return hit[1]
    rows = analytical.query("SELECT DISTINCT event FROM events WHERE workspace_id = ? AND event IS NOT NULL", [ws])
    names = frozenset([r[0] for r in rows] + list(OWN_EVENTS))
    with _events_lock:
        _events_cache[key] = (time.monotonic(), names)
    return names


OWN_EVENTS = ("segment_entered", "segment_exited", "Tag Changed")
# Events Goldkey records about a customer without the customer doing anything: its own tag and
# segment changes, lifecycle transitions (goldkey.insight.lifecycle.TRANSITION_EVENT), messages sent,
# delivered or failed (goldkey.activate), service alerts (goldkey.insight.text.ALERT_EVENT). Measures
# of customer activity leave them out: churn labels and features, clusters, lookalikes, cohort
# retention, the dashboard's active customers. What a customer did with a message (opened, clicked,
# replied, unsubscribed) is the customer's activity and counts.
NOT_CUSTOMER_ACTIVITY = (*OWN_EVENTS, "Lifecycle Stage Changed", "Message Sent", "Message Delivered", "Message Failed",
                         "Service Alert")


def batch_member_ids(facts: FactsCache, analytical: AnalyticalStore, ws: str, rule: Any, as_of: datetime,
                     *, fresh: bool = False) -> pa.Table:
    """The profiles ``rule`` selects at ``as_of``, by the batch compiler over the facts table, as an
    Arrow table with one column ``profile_id``. ``fresh=True`` (materialisations) rebuilds the facts
    when anything changed since the last build; otherwise plain event traffic may be up to
    ``FactsCache.soft_age`` seconds behind (live estimates)."""
    from goldkey.rules.batch import members

    info = facts.ensure(ws, strict=fresh)
    with analytical.ibis_connection() as con:
        expr = members(rule, info.catalog, facts_for(con, ws), events_for(con, ws), as_of)
        return expr.to_pyarrow()


def batch_count(facts: FactsCache, analytical: AnalyticalStore, ws: str, rule: Any, as_of: datetime,
                *, fresh: bool = False) -> int:
    """How many profiles ``rule`` selects."""
    from goldkey.rules.batch import members

    info = facts.ensure(ws, force=fresh)
    with analytical.ibis_connection() as con:
        expr = members(rule, info.catalog, facts_for(con, ws), events_for(con, ws), as_of)
        return int(expr.count().to_pyarrow().as_py())


def load_profile_values(engine: sa.Engine, ws: str, pids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{profile_id: {field: value}}`` for live profiles among ``pids`` (what the in-memory
    evaluator reads)."""
    out: dict[str, dict[str, Any]] = {}
    values = profile_value_select()
    # ``workspace_id || ''``: SQLite (no statistics) would otherwise pick the workspace index and scan
    # every profile / identity of the workspace per chunk instead of looking the ids up
    with engine.connect() as c:
        for i in range(0, len(pids), 500):
            chunk = list(pids[i : i + 500])
            for r in c.execute(values.where(
                    profiles.c.workspace_id.concat("") == ws, profiles.c.profile_id.in_(chunk),
                    profiles.c.merged_into.is_(None))):
                out[r.profile_id] = profile_values(r)
            for r in c.execute(sa.select(identities.c.profile_id, identities.c.id_type).where(
                    identities.c.workspace_id.concat("") == ws, identities.c.profile_id.in_(chunk))):
                if r.profile_id in out:
                    out[r.profile_id].setdefault("profile.identifier_types", []).append(r.id_type)
    for v in out.values():
        if "profile.identifier_types" in v:
            v["profile.identifier_types"] = sorted(set(v["profile.identifier_types"]))
    return out


def load_events(analytical: AnalyticalStore, ws: str, pids: Iterable[str]) -> dict[str, list[Event]]:
    """Every stored event of the live profiles ``pids`` (merged profiles' events included), as
    evaluator events, oldest first."""
    ids = pa.table({"pid": pa.array(list(pids), pa.string())})
    cur = analytical.cursor()
    try:
        cur.register("_pids", ids)
        # the same rows as events_resolved filtered by canonical id, but the profile map is looked
        # up for these profiles only and the event scan filters on profile_id (pushed into the scan)
        tbl = cur.sql(
            """WITH ids AS (
                   SELECT pid AS profile_id, pid AS canonical_id FROM _pids
                   UNION ALL
                   SELECT m.profile_id, m.canonical_id FROM profile_map m
                   WHERE m.workspace_id = $ws AND m.canonical_id IN (SELECT pid FROM _pids)
                     AND m.profile_id <> m.canonical_id)
               SELECT ids.canonical_id, e.type, e.event, e.name, e."timestamp", e.properties
               FROM events e JOIN ids ON e.profile_id = ids.profile_id
               WHERE e.workspace_id = $ws
               ORDER BY ids.canonical_id, e."timestamp" """,
            params={"ws": ws},
        ).to_arrow_table()
        cur.unregister("_pids")
    finally:
        cur.close()
    out: dict[str, list[Event]] = {}
    loads = orjson.loads
    for pid, typ, ev, name, ts, props in zip(*(tbl.column(i).to_pylist() for i in range(6)), strict=True):
        out.setdefault(pid, []).append(Event(typ, ev, ts, loads(props) if props else {}, name))
    return out


def emit_events(analytical: AnalyticalStore, con: Any, ws: str, rows: list[tuple[str, str, dict[str, Any]]],
                source: str, at: datetime | None = None) -> int:
    """Append Goldkey's own track events ``(profile_id, event, properties)`` inside the caller's
    DuckDB transaction (run on the writer thread). Returns how many were written."""
    if not rows:
        return 0
    dumps = orjson.dumps
    return emit_event_columns(analytical, con, ws, [r[0] for r in rows], [r[1] for r in rows],
                              [dumps(r[2]).decode() for r in rows], source, at)


def own_events_named(profile_ids: Any, events: Any, properties: Any, names: Collection[str | None]
                     ) -> list[pa.Array]:
    """The columns of announced own events (:meth:`AnalyticalStore.announce`: Arrow arrays or
    lists) as Arrow arrays ``[profile ids, names, properties]``, keeping only the events ``names``
    names (one Arrow filter: a model run's million Tag Changed events cost next to nothing when
    nobody listens to them); every event when ``None`` is among them (a clause without an event
    name)."""
    cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c if isinstance(c, pa.Array)
            else pa.array(list(c), pa.string()) for c in (profile_ids, events, properties)]
    if None not in names:
        keep = pc.is_in(cols[1], value_set=pa.array(sorted(names), pa.string()))  # type: ignore[type-var]
        cols = [pc.filter(c, keep) for c in cols]
    return cols


def emit_event_columns(analytical: AnalyticalStore, con: Any, ws: str, profile_ids: Sequence[str] | pa.Array,
                       events: Sequence[str] | pa.Array, properties: Sequence[str] | pa.Array, source: str,
                       at: datetime | None = None) -> int:
    """:func:`emit_events` from columns: one event per profile of ``profile_ids``, named by
    ``events`` and with the JSON object text ``properties`` (lists or Arrow arrays of equal length),
    for callers that build a million events' properties column by column."""
    n = len(profile_ids)
    if len(events) != n or len(properties) != n:
        raise ValueError(f"{n} profiles but {len(events)} event names and {len(properties)} properties")
    if not n:
        return 0
    at = at or utcnow()
    ts = pa.repeat(pa.scalar(at, _US), n)  # not pa.array([at] * n): 24 ms per 50k rows, ~2 s per 4M events
    none = pa.nulls(n, pa.string())

    def text(v: Sequence[str] | pa.Array) -> pa.Array:
        return v.cast(pa.string()) if isinstance(v, pa.Array) else pa.array(v, pa.string())

    table = pa.Table.from_arrays(
        [
            pa.repeat(pa.scalar(ws, pa.string()), n),
            pa.array(new_ids("msg", n), pa.string()),
            pa.repeat(pa.scalar("track", pa.string()), n),
            text(events),
            none,
            text(profile_ids),
            none, none, none, none,
            ts, ts, ts, ts,
            text(properties),
            none,
            pa.repeat(pa.scalar("{}", pa.string()), n),
            pa.repeat(pa.scalar(source, pa.string()), n),
        ],
        schema=EVENT_SCHEMA,
    )
    analytical.append("events", table, con)
    analytical.announce(con, ws, profile_ids, events, properties, at)  # the real-time triggers hear them
    return n
