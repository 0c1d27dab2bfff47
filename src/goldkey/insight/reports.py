"""Reports over the event log and the orders: conversion funnels, cohort retention, acquisition
channels. Each is DuckDB SQL over ``events_resolved`` / ``orders_resolved`` whose shape depends only
on counts (how many steps) and fixed keywords; every value, event name, JSON path, period and time
zone is a bound parameter, and names are checked to be word characters before they become paths.

**Funnel** (the "ordered funnel with a conversion window" of product analytics, as in Mixpanel and
Amplitude): a profile enters at its *first* step-1 event in ``[start, end)``; step i (i > 1) is the
earliest event matching step i at or after the profile's step i-1 (the same instant counts) and no later than
``window_days`` after its step 1. Per step: profiles, conversion from the previous step and from step
1 (%), median time from the previous step. Optionally broken down by a property of the step-1
event (``properties.<name>``) or of its context (``context.campaign.source``).

**Cohort retention**: profiles grouped by the period (month or ISO week, in ``tz``) of their first
order or first event; for each period offset 0, 1, 2 ... the number (and %) of the cohort's
profiles active (an order, or any event) in that period. A refunded or cancelled order is no order
here (``goldkey.insight.purchases``).

**Acquisition channels**: each profile's first touch is its earliest event whose context carries
``campaign.source`` (the UTM source; ``campaign.medium`` with it), or the campaign of the context it
was first seen with (``touch="profile"``). Per (source, medium): customers touched, customers who
ordered at or after the touch (conversion %), their revenue, the average ``scores.clv_value`` when
profiles hold one, and, given costs per source, CAC (cost / converted customers) and ROAS.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from goldkey.audience.common import known_events
from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, validated
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.insight.registry import Instant
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import profile_scores, profiles

_WORD = re.compile(r"^[^\W\d]\w{0,99}\Z")
_PATH = re.compile(r"^[^\W\d]\w{0,99}(\.[^\W\d]\w{0,99}){0,4}\Z")


def _validated(model: type[BaseModel], data: Any) -> Any:
    if isinstance(data, model):
        return data
    return validated(model, data or {})


def zone_name(tz: str) -> str:
    """``tz`` when it names a time zone; ValueError otherwise."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    return tz


# --------------------------------------------------------------------------- funnel


class StepFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    property: str = Field(description="a top-level event property")
    value: str | float | bool = Field(description="equal to this (a string, number or boolean JSON value)")

    @field_validator("property")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _WORD.match(v):
            raise ValueError("property must be a name of letters, digits and underscores")
        return v


class FunnelStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(min_length=1, max_length=200, description="a track event name")
    where: list[StepFilter] = Field(default_factory=list, max_length=8)


class FunnelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[FunnelStep] = Field(min_length=2, max_length=10)
    start: Instant = Field(default=None, description="step 1 at or after this (default: end - 30 days)")
    end: Instant = Field(default=None, description="step 1 before this (default: now)")
    window_days: float = Field(default=7, gt=0, le=365, description="every step within N days of step 1")
    breakdown: str | None = Field(default=None, description="`properties.<name>` or `context.<path>` of the "
                                  "step-1 event, e.g. `properties.category`, `context.campaign.source`")

    @field_validator("breakdown")
    @classmethod
    def _breakdown(cls, v: str | None) -> str | None:
        if v is None:
            return v
        src, _, path = v.partition(".")
        if src not in ("properties", "context") or not _PATH.match(path):
            raise ValueError("breakdown is `properties.<name>` or `context.<a.b>` (letters, digits, underscores)")
        return v


def _filter_sql(alias: str, where: list[StepFilter], params: list[Any]) -> str:
    out = ""
    for f in where:
        path = "$." + f.property
        if isinstance(f.value, bool):
            out += f" AND json_extract({alias}.properties, ?) = CAST(? AS JSON)"
            params += [path, "true" if f.value else "false"]
        elif isinstance(f.value, int | float):
            out += (f" AND json_type(json_extract({alias}.properties, ?)) IN ('UBIGINT', 'BIGINT', 'DOUBLE')"
                    f" AND CAST(json_extract({alias}.properties, ?) AS DOUBLE) = ?")
            params += [path, path, float(f.value)]
        else:
            out += f" AND json_type(json_extract({alias}.properties, ?)) = 'VARCHAR'" \
                   f" AND json_extract_string({alias}.properties, ?) = ?"
            params += [path, path, f.value]
    return out


def _funnel_sql(req: FunnelRequest, ws: str, start: datetime, end: datetime) -> tuple[str, list[Any]]:
    n = len(req.steps)
    window = timedelta(days=req.window_days)
    params: list[Any] = [ws, [s.event for s in req.steps], start, end + window]
    # a step may happen at the same instant as the one before it (one batch, second-precision
    # imports), in either order; seq tells a profile's events apart, so no event is two steps
    sql = ["""WITH ev AS (
        SELECT canonical_id AS pid, "timestamp" AS ts, event, properties, context,
               row_number() OVER (PARTITION BY canonical_id ORDER BY "timestamp", received_at, message_id) AS seq
        FROM events_resolved
        WHERE workspace_id = ? AND type = 'track' AND list_contains(?, event)
          AND "timestamp" >= ? AND "timestamp" <= ?)"""]
    bval = "NULL"
    if req.breakdown:
        src, _, path = req.breakdown.partition(".")
        bval = f"arg_min([json_extract_string(e.{src}, ?)], e.ts)[1]"  # a list keeps a NULL value
        params.append("$." + path)
    p1: list[Any] = []
    step1 = _filter_sql("e", req.steps[0].where, p1)
    sql.append(f""", s1 AS (
        SELECT e.pid, min(e.ts) AS t1, min(e.seq) AS q1, {bval} AS bval FROM ev e
        WHERE e.event = ? AND e.ts >= ? AND e.ts < ?{step1} GROUP BY e.pid)""")
    params += [req.steps[0].event, start, end, *p1]
    prev_cols = ["pid", "t1", "q1", "bval"]
    for i in range(2, n + 1):
        pi: list[Any] = []
        filt = _filter_sql("e", req.steps[i - 1].where, pi)
        keys = ", ".join(f"s.{c}" for c in prev_cols)
        used = ", ".join(f"s.q{k}" for k in range(1, i))  # an event is one step, never two
        sql.append(f""", s{i} AS (
            SELECT {keys}, min(e.ts) AS t{i}, min(e.seq) AS q{i} FROM s{i - 1} s LEFT JOIN ev e
              ON e.pid = s.pid AND e.event = ? AND e.ts >= s.t{i - 1} AND e.seq NOT IN ({used})
                 AND e.ts <= s.t1 + CAST(? AS INTERVAL){filt}
            GROUP BY {keys})""")
        params += [req.steps[i - 1].event, window, *pi]
        prev_cols += [f"t{i}", f"q{i}"]
    sql.append(f" SELECT * FROM s{n}")
    return "".join(sql), params


def _funnel_rows(df: pl.DataFrame, req: FunnelRequest) -> list[dict[str, Any]]:
    out = []
    first = df.height
    prev_n = first
    for i, step in enumerate(req.steps, start=1):
        col = f"t{i}"
        reached = df.filter(pl.col(col).is_not_null())
        n = reached.height
        med = None
        if i > 1 and n:
            secs = (reached[col] - reached[f"t{i - 1}"]).dt.total_microseconds() / 1e6
            med = float(secs.median())  # type: ignore[arg-type]
        out.append({"step": i, "event": step.event, "profiles": n,
                    "conversion_pct": round(100 * n / prev_n, 2) if prev_n else 0.0,
                    "overall_pct": round(100 * n / first, 2) if first else 0.0,
                    "median_seconds_from_previous": med})
        prev_n = n
    return out


def funnel(analytical: AnalyticalStore, ws: str, request: FunnelRequest | dict[str, Any]) -> dict[str, Any]:
    """The funnel report (see the module docstring). Unknown events are a clear error."""
    req: FunnelRequest = _validated(FunnelRequest, request)
    events = known_events(analytical, ws)
    for i, s in enumerate(req.steps):
        if s.event not in events:
            events = known_events(analytical, ws, max_age=0)
            if s.event not in events:
                raise InvalidInput(f"event {s.event!r} has never been received in this workspace",
                                   field=f"steps[{i}].event")
    end = as_of_utc(req.end)
    start = as_of_utc(req.start) if req.start else end - timedelta(days=30)
    if start >= end:
        raise InvalidInput("start must be before end", field="start")
    sql, params = _funnel_sql(req, ws, start, end)
    cur = analytical.cursor()
    try:
        df = pl.from_arrow(cur.sql(sql, params=params).to_arrow_table())
    finally:
        cur.close()
    assert isinstance(df, pl.DataFrame)
    out: dict[str, Any] = {"start": to_iso(start), "end": to_iso(end), "window_days": req.window_days,
                           "steps": _funnel_rows(df, req)}
    if req.breakdown:
        groups = []
        for (val,), g in df.group_by("bval", maintain_order=True):
            groups.append({"value": val, "profiles": g.height, "steps": _funnel_rows(g, req)})
        groups.sort(key=lambda g: (-g["profiles"], str(g["value"])))
        out["breakdown"] = {"by": req.breakdown, "groups": groups}
    return out


# --------------------------------------------------------------------------- cohorts


def own_events() -> list[str]:
    """Goldkey's own events (tag and segment changes, lifecycle transitions, messages sent, service
    alerts): not customer activity."""
    from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY

    return list(NOT_CUSTOMER_ACTIVITY)


class CohortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cohort_by: Literal["first_order", "first_event"] = "first_order"
    activity: Literal["order", "event"] = "order"
    period: Literal["month", "week"] = "month"
    periods: int = Field(default=12, ge=1, le=104, description="offsets 0..periods-1")
    start: Instant = Field(default=None, description="cohorts starting at or after this (without an offset: "
                                   "in tz)")
    end: Instant = Field(default=None, description="activity before this (default: now; without an offset: "
                                 "in tz)")
    tz: str | None = Field(default=None, description="time zone of the periods (and of a start or end without an "
                           "offset); default: the workspace's time zone (its send policy's timezone)")

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else zone_name(v)


_COHORT_SQL = """
WITH o AS (
    SELECT canonical_id AS pid, timezone(?, ordered_at) AS lt FROM orders_resolved
    WHERE workspace_id = ? AND ordered_at < ? AND {purchase}
), e AS (
    SELECT canonical_id AS pid, timezone(?, "timestamp") AS lt FROM events_resolved
    WHERE workspace_id = ? AND "timestamp" < ? AND NOT list_contains(?, coalesce(event, ''))
), firsts AS (
    SELECT pid, date_trunc(?, min(lt)) AS cohort FROM {first} GROUP BY pid
), act AS (
    SELECT DISTINCT pid, date_trunc(?, lt) AS period FROM {act}
), sizes AS (
    SELECT cohort, count(*) AS size FROM firsts WHERE cohort >= ? GROUP BY cohort
), kept AS (
    SELECT f.cohort, date_diff(?, f.cohort, a.period) AS off, count(*) AS n
    FROM firsts f JOIN act a ON a.pid = f.pid
    WHERE a.period >= f.cohort AND date_diff(?, f.cohort, a.period) < ?
    GROUP BY ALL
)
-- every cohort, also one whose members never came back (off and n null: all zeros)
SELECT s.cohort, s.size, k.off, k.n
FROM sizes s LEFT JOIN kept k USING (cohort)
ORDER BY s.cohort, k.off"""


def workspace_timezone(gk: Any, ws: str) -> str:
    """The workspace's time zone (its send policy's ``timezone``: the calendar of caps and quiet hours,
    Asia/Shanghai unless set), the default zone of its calendar reports; UTC when there is none."""
    try:
        return str(gk.sender.guardrails.policy(ws).timezone)
    except Exception:  # noqa: BLE001 - no sender (a bare store), or no policy: the reports still work
        return "UTC"


def cohorts(analytical: AnalyticalStore, ws: str, request: CohortRequest | dict[str, Any],
            default_tz: str = "UTC") -> dict[str, Any]:
    """The cohort retention table: counts and % per cohort and period offset (periods in the
    request's ``tz``, else ``default_tz``: the API and CLI give the workspace's)."""
    req: CohortRequest = _validated(CohortRequest, request)
    req = req.model_copy(update={"tz": req.tz or default_tz})
    assert req.tz is not None
    zone = ZoneInfo(req.tz)
    # a start or end without an offset is a wall-clock time in ``tz``, like the periods it bounds
    end = as_of_utc(req.end.replace(tzinfo=zone) if req.end and req.end.tzinfo is None else req.end)
    start = (as_of_utc(req.start.replace(tzinfo=zone) if req.start.tzinfo is None else req.start) if req.start
             else datetime(1970, 1, 1, tzinfo=UTC))
    # a refunded or cancelled order is no purchase: it opens no cohort and is no return
    sql = _COHORT_SQL.format(first="o" if req.cohort_by == "first_order" else "e",
                             act="o" if req.activity == "order" else "e", purchase=status_filter())
    local_start = start.astimezone(ZoneInfo(req.tz)).replace(tzinfo=None)
    params = [req.tz, ws, end, excluded_statuses(), req.tz, ws, end, own_events(), req.period, req.period,
              local_start, req.period, req.period, req.periods]
    cur = analytical.cursor()
    try:
        rows = cur.execute(sql, params).fetchall()
    finally:
        cur.close()
    if not rows:
        what = "orders" if "order" in (req.cohort_by, req.activity) else "events"
        raise InvalidInput(f"no {what} to build cohorts from before {to_iso(end)}", field=req.cohort_by)
    table: dict[Any, dict[str, Any]] = {}
    for cohort, size, off, n in rows:
        c = table.setdefault(cohort, {"cohort": _label(cohort, req.period), "size": int(size),
                                      "counts": [0] * req.periods})
        if off is not None:
            c["counts"][int(off)] = int(n)
    out = []
    local_end = end.astimezone(ZoneInfo(req.tz)).replace(tzinfo=None)
    for cohort_at, c in sorted(table.items()):
        # offsets whose period has not begun by ``end`` are unknown (null), not 0 %; the period that
        # holds ``end`` is still running (``partial_last``)
        if req.period == "month":
            elapsed = (local_end.year - cohort_at.year) * 12 + local_end.month - cohort_at.month + 1
        else:
            elapsed = (local_end - cohort_at).days // 7 + 1
        at_boundary = _period_start(local_end, req.period) == local_end  # end's period has not begun
        if at_boundary:
            elapsed -= 1
        partial = not at_boundary and elapsed <= req.periods
        elapsed = max(1, min(elapsed, req.periods))
        c["counts"] = [n if k < elapsed else None for k, n in enumerate(c["counts"])]
        c["pct"] = [None if n is None else round(100 * n / c["size"], 2) for n in c["counts"]]
        c["periods_elapsed"] = elapsed
        c["partial_last"] = partial
        out.append(c)
    return {"cohort_by": req.cohort_by, "activity": req.activity, "period": req.period, "tz": req.tz,
            "end": to_iso(end), "offsets": list(range(req.periods)), "cohorts": out}


def _period_start(d: datetime, period: str) -> datetime:
    if period == "month":
        return d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day = d.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def _label(d: datetime, period: str) -> str:
    if period == "month":
        return d.strftime("%Y-%m")
    iso = d.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


# --------------------------------------------------------------------------- channels


class ChannelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    touch: Literal["event", "profile"] = Field(
        default="event",
        description="first touch from the earliest event with context.campaign.source, or the profile's first-seen "
                    "context")
    start: Instant = Field(default=None, description="first touches at or after this")
    end: Instant = Field(default=None, description="first touches and orders before this (default: now)")
    costs: dict[str, float] = Field(default_factory=dict, description="spend per source (or `source/medium`)")

    @field_validator("costs")
    @classmethod
    def _costs(cls, v: dict[str, float]) -> dict[str, float]:
        for k, c in v.items():
            if c < 0 or c != c:
                raise ValueError(f"cost of {k!r} must be a non-negative number")
        return v


_TOUCH_EVENT_SQL = """
SELECT canonical_id AS pid,
       arg_min({'s': json_extract_string(context, '$.campaign.source'),
                'm': json_extract_string(context, '$.campaign.medium')}, "timestamp") AS sm,
       min("timestamp") AS touched_at
FROM events_resolved
WHERE workspace_id = ? AND "timestamp" < ? AND json_extract_string(context, '$.campaign.source') IS NOT NULL
GROUP BY canonical_id"""

_CHANNEL_SQL = f"""
WITH t AS (SELECT * FROM _gk_touch WHERE touched_at >= ? AND touched_at < ?),
f AS (  -- each touched profile's first purchase ever: one made before the touch was not acquired by it
    SELECT r.canonical_id AS pid, min(r.ordered_at) AS first_at
    FROM orders_resolved r SEMI JOIN t ON t.pid = r.canonical_id
    WHERE r.workspace_id = ? AND {status_filter("r.status")} GROUP BY 1),
o AS (
    SELECT t.pid, count(DISTINCT r.order_id) AS orders, sum(r.total_amount) AS revenue
    FROM t JOIN orders_resolved r ON r.workspace_id = ? AND r.canonical_id = t.pid
         AND r.ordered_at >= t.touched_at AND r.ordered_at < ? AND {status_filter("r.status")}
    GROUP BY t.pid),
j AS (
    SELECT t.source, t.medium, t.pid, o.pid AS buyer, o.orders, o.revenue, c.clv,
           coalesce(f.first_at < t.touched_at, false) AS existing
    FROM t LEFT JOIN f ON f.pid = t.pid LEFT JOIN o ON o.pid = t.pid LEFT JOIN _gk_clv c ON c.pid = t.pid)
SELECT source, medium, count(*) FILTER (WHERE NOT existing) AS customers,
       count(buyer) FILTER (WHERE NOT existing) AS converted,
       coalesce(sum(revenue) FILTER (WHERE NOT existing), 0) AS revenue,
       coalesce(sum(orders) FILTER (WHERE NOT existing), 0) AS orders,
       avg(clv) FILTER (WHERE NOT existing) AS avg_clv, count(clv) FILTER (WHERE NOT existing) AS with_clv,
       count(*) FILTER (WHERE existing) AS existing_customers,
       coalesce(sum(revenue) FILTER (WHERE existing), 0) AS existing_revenue
FROM j GROUP BY ALL ORDER BY customers DESC, source, medium"""


def _profile_touches(engine: sa.Engine, ws: str) -> pa.Table:
    """First touches from the profiles' first-seen context (``campaign.source``/``medium``)."""
    p = profiles.c
    q = sa.select(p.profile_id, p.first_seen_at, p.first_seen_context).where(
        p.workspace_id == ws, p.merged_into.is_(None), p.first_seen_context.like('%"campaign"%'))
    pids, sources, media, at = [], [], [], []
    with engine.connect() as c:
        for pid, seen, raw in c.execute(q):
            camp = (orjson.loads(raw or "{}") or {}).get("campaign")
            if isinstance(camp, dict) and isinstance(camp.get("source"), str):
                pids.append(pid)
                sources.append(camp["source"])
                media.append(camp.get("medium") if isinstance(camp.get("medium"), str) else None)
                at.append(as_of_utc(seen))
    return pa.table({"pid": pa.array(pids, pa.string()), "source": pa.array(sources, pa.string()),
                     "medium": pa.array(media, pa.string()), "touched_at": pa.array(at, pa.timestamp("us", "UTC"))})


def _clv(engine: sa.Engine, ws: str) -> pa.Table:
    """``scores.clv_value`` of the live profiles that hold one."""
    p, s = profiles.c, profile_scores.c
    q = (sa.select(s.profile_id, s.scores).join(profiles, p.profile_id == s.profile_id)
         .where(s.workspace_id == ws, s.scores.like('%"clv_value"%'), p.workspace_id == ws, p.merged_into.is_(None)))
    pids, vals = [], []
    with engine.connect() as c:
        for pid, raw in c.execute(q):
            v = orjson.loads(raw).get("clv_value")
            if isinstance(v, int | float) and not isinstance(v, bool):
                pids.append(pid)
                vals.append(float(v))
    return pa.table({"pid": pa.array(pids, pa.string()), "clv": pa.array(vals, pa.float64())})


def channels(engine: sa.Engine, analytical: AnalyticalStore, ws: str,
             request: ChannelRequest | dict[str, Any] | None = None) -> dict[str, Any]:
    """Acquisition-channel quality per (source, medium) of the first touch."""
    req: ChannelRequest = _validated(ChannelRequest, request)
    end = as_of_utc(req.end)
    start = as_of_utc(req.start) if req.start else datetime(1970, 1, 1, tzinfo=end.tzinfo)
    clv = _clv(engine, ws)
    cur = analytical.cursor()
    try:
        if req.touch == "event":
            raw = cur.sql(_TOUCH_EVENT_SQL, params=[ws, end]).to_arrow_table()
            sm = raw.column("sm").combine_chunks()
            touches = pa.table({"pid": raw.column("pid"), "source": sm.field("s"), "medium": sm.field("m"),
                                "touched_at": raw.column("touched_at")})
        else:
            touches = _profile_touches(engine, ws)
        cur.register("_gk_touch", touches)
        cur.register("_gk_clv", clv)
        ex = excluded_statuses()
        rows = cur.execute(_CHANNEL_SQL, [start, end, ws, ex, ws, end, ex]).fetchall()
    finally:
        cur.close()
    if not rows:
        where = "events with context.campaign.source" if req.touch == "event" else "profiles first seen with a campaign"
        raise InvalidInput(f"no first touches: the workspace has no {where} before {to_iso(end)}", field="touch")
    # Each row is covered by its own `source/medium` cost or, failing that, by its source's cost. A
    # source's cost is spent on all the rows it covers together: it is never charged in full to each
    # of them (nor split by a made-up rule). The row shows cost, CAC and ROAS only when its cost entry
    # covers it alone; `spend` gives every cost entry's totals over the rows it covers.
    def key_of(source: str, medium: str | None) -> str | None:
        if f"{source}/{medium}" in req.costs:
            return f"{source}/{medium}"
        return source if source in req.costs else None

    covered: dict[str, list[Any]] = {}
    for r in rows:
        k = key_of(r[0], r[1])
        if k is not None:
            covered.setdefault(k, []).append(r)

    def figures(cost: float, converted: int, revenue: float) -> dict[str, Any]:
        return {"cost": cost, "cac": round(cost / converted, 2) if converted else None,
                "roas": round(revenue / cost, 3) if cost else None}

    out = []
    for source, medium, customers, converted, revenue, orders, avg_clv, with_clv, existing, ex_revenue in rows:
        k = key_of(source, medium)
        alone = k is not None and len(covered[k]) == 1
        out.append({"source": source, "medium": medium, "customers": customers, "converted": converted,
                    "conversion_pct": round(100 * converted / customers, 2) if customers else None,
                    "orders": orders, "revenue": round(float(revenue), 2),
                    "revenue_per_customer": round(float(revenue) / customers, 2) if customers else None,
                    "existing_customers": existing, "existing_revenue": round(float(ex_revenue), 2),
                    "avg_clv": None if avg_clv is None else round(float(avg_clv), 2), "customers_with_clv": with_clv,
                    "cost_key": k,
                    **(figures(req.costs[k], converted, float(revenue)) if alone and k is not None else
                       {"cost": None, "cac": None, "roas": None})})
    spend = []
    for k, rs in sorted(covered.items()):
        converted, revenue = sum(r[3] for r in rs), float(sum(r[4] for r in rs))
        spend.append({"key": k, "channels": len(rs), "customers": sum(r[2] for r in rs), "converted": converted,
                      "revenue": round(revenue, 2), **figures(req.costs[k], converted, revenue)})
    unknown_costs = set(req.costs) - set(covered)
    return {"touch": req.touch, "start": to_iso(start) if req.start else None, "end": to_iso(end),
            "clv_available": clv.num_rows > 0, "channels": out, "spend": spend,
            "costs_without_channel": sorted(unknown_costs)}
