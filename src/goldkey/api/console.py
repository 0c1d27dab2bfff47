"""The web console: the built single-page app at ``/`` and the small aggregates its pages need.

The console (``console/``: React + TypeScript + Vite, Ant Design, ECharts) is built into
``src/goldkey/console_dist/`` (``make console``, or ``npm ci && npm run build`` in ``console/``).
This router serves that build: hashed static assets under ``/assets/`` with a long cache life,
other files of the build by name, and ``index.html`` for every other GET path, so that client-side
routes (``/customers/prf_..``) survive a reload. It is included after every API router, and it
never answers for the API's own prefixes (``/api``, ``/v1``, ``/healthz``, ``/metrics``, ``/docs``,
``/t/`` ...): an unknown path there is a JSON 404, as the API answers. Without a build, ``/`` answers a
page saying how to build it.

``GET /api/v1/console/overview`` is the dashboard's one aggregate that no other endpoint gives:
customers (live profiles of the operational store), active customers in a window, new vs returning
among them, revenue and order counts, and daily / monthly series. Activity is a customer's tracked
events and imported orders, resolved through the identity map (``events_resolved``,
``orders_resolved``); Goldkey's own events (``Tag Changed``, ``segment_entered`` ...) do not count.
``GET /api/v1/console/rfm-grid`` counts live profiles per RFM recency x frequency score (the 5x5 grid
of Fader/Hughes-style RFM segmentation, with the group names of ``goldkey.insight.rfm``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody
from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY
from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import InvalidInput
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.insight.reports import workspace_timezone, zone_name
from goldkey.insight.rfm import GRID, GROUPS
from goldkey.runtime import Goldkey
from goldkey.store.operational import profile_scores, profiles

router = APIRouter(tags=["console"])

#: Path prefixes that belong to the API; the SPA fallback never answers for them.
RESERVED_PREFIXES = ("api", "v1", "healthz", "metrics", "docs", "redoc", "openapi.json", "t")


def dist_dir() -> Path:
    """Where the built console lives: ``$GOLDKEY_CONSOLE_DIR`` or ``goldkey/console_dist``."""
    env = os.environ.get("GOLDKEY_CONSOLE_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "console_dist"


# -- the overview aggregate -------------------------------------------------------------------------


class MonthPoint(BaseModel):
    month: str = Field(description="YYYY-MM (UTC)")
    revenue: float
    orders: int
    customers: int = Field(description="Distinct customers who ordered that month")


class DayPoint(BaseModel):
    day: str = Field(description="YYYY-MM-DD (UTC)")
    active: int


class Overview(BaseModel):
    """The dashboard's figures for one workspace."""

    as_of: str
    timezone: str = Field(description="The time zone whose calendar the days and months follow")
    window_days: int
    customers: int = Field(description="Live profiles (merged-away ones not counted)")
    customers_existing: int = Field(description="Live profiles known from the brand's own records")
    customers_new: int = Field(description="Live profiles first met online")
    active: int = Field(description="Customers with a tracked event or an order in the window")
    active_new: int = Field(description="Active customers whose first activity is in the window")
    active_returning: int = Field(description="Active customers who were active before the window")
    revenue: float = Field(description="Order revenue in the window")
    orders: int = Field(description="Orders in the window")
    buyers: int = Field(description="Distinct customers who ordered in the window")
    revenue_all_time: float
    orders_all_time: int
    currency: str | None = Field(description="The most frequent order currency (None without orders)")
    currencies: int = Field(description="How many distinct currencies the orders use")
    last_activity_at: str | None = Field(description="The latest tracked event or order up to as_of")
    daily_active: list[DayPoint]
    monthly_revenue: list[MonthPoint] = Field(description="The last 12 months up to as_of, oldest first")


_ACTIVITY_SQL = """
WITH act AS (
    SELECT canonical_id AS pid, "timestamp" AS ts FROM events_resolved
    WHERE workspace_id = $ws AND "timestamp" <= $as_of
      AND NOT (type = 'track' AND event IN (SELECT unnest($own)))
    UNION ALL
    SELECT canonical_id, ordered_at FROM orders_resolved WHERE workspace_id = $ws AND ordered_at <= $as_of
), per AS (
    SELECT pid, min(ts) AS first_ts, max(ts) AS last_ts,
           max(ts) FILTER (WHERE ts >= $start) AS in_window FROM act GROUP BY pid
)
SELECT count(in_window), count(in_window) FILTER (WHERE first_ts >= $start), max(last_ts) FROM per
"""

_DAILY_SQL = """
SELECT strftime(date_trunc('day', ts AT TIME ZONE $tz), '%Y-%m-%d') AS d, count(DISTINCT pid) FROM (
    SELECT canonical_id AS pid, "timestamp" AS ts FROM events_resolved
    WHERE workspace_id = $ws AND "timestamp" > $start AND "timestamp" <= $as_of
      AND NOT (type = 'track' AND event IN (SELECT unnest($own)))
    UNION ALL
    SELECT canonical_id, ordered_at FROM orders_resolved
    WHERE workspace_id = $ws AND ordered_at > $start AND ordered_at <= $as_of
) GROUP BY d ORDER BY d
"""

# purchases only (goldkey.insight.purchases), as the profiles' order summaries and every model
_ORDERS_SQL = f"""
SELECT count(*) FILTER (WHERE ordered_at >= $start),
       coalesce(sum(total_amount) FILTER (WHERE ordered_at >= $start), 0),
       count(DISTINCT canonical_id) FILTER (WHERE ordered_at >= $start),
       count(*), coalesce(sum(total_amount), 0), mode(currency), count(DISTINCT currency)
FROM orders_resolved WHERE workspace_id = $ws AND ordered_at <= $as_of AND {status_filter("status", "$excluded")}
"""

_MONTHLY_SQL = f"""
SELECT strftime(date_trunc('month', ordered_at AT TIME ZONE $tz), '%Y-%m') AS m,
       sum(total_amount), count(*), count(DISTINCT canonical_id)
FROM orders_resolved WHERE workspace_id = $ws AND ordered_at > $year_ago AND ordered_at <= $as_of
  AND {status_filter("status", "$excluded")}
GROUP BY m ORDER BY m
"""


def _months(as_of: datetime) -> list[str]:
    """The 12 calendar months ending with ``as_of``'s month (in ``as_of``'s zone), oldest first."""
    y, m = as_of.year, as_of.month
    out = []
    for _ in range(12):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def overview(gk: Goldkey, ws: str, *, days: int = 30, as_of: datetime | None = None,
             tz: str | None = None) -> dict[str, Any]:
    """Compute the dashboard figures of workspace ``ws`` over the ``days`` before ``as_of`` (default
    now); days and months are the calendar's of ``tz`` (default: the workspace's time zone)."""
    tz = tz or workspace_timezone(gk, ws)
    zone = ZoneInfo(tz)
    t = as_utc(as_of) or utcnow()
    start = t - timedelta(days=days)
    local = t.astimezone(zone)
    first_month = _months(local)[0]
    year_ago = datetime(int(first_month[:4]), int(first_month[5:]), 1, tzinfo=zone)
    params = {"ws": ws, "as_of": t, "start": start, "own": list(NOT_CUSTOMER_ACTIVITY)}
    excluded = excluded_statuses()
    cur = gk.analytical.cursor()
    try:
        active, active_new, last = cur.execute(_ACTIVITY_SQL, params).fetchone() or (0, 0, None)
        daily = dict(cur.execute(_DAILY_SQL, {**params, "tz": tz}).fetchall())
        n_win, rev_win, buyers, n_all, rev_all, currency, n_cur = cur.execute(
            _ORDERS_SQL, {"ws": ws, "as_of": t, "start": start, "excluded": excluded}).fetchone()  # type: ignore[misc]
        monthly = {r[0]: r[1:] for r in cur.execute(
            _MONTHLY_SQL, {"ws": ws, "as_of": t, "year_ago": year_ago, "excluded": excluded, "tz": tz}).fetchall()}
    finally:
        cur.close()
    p = profiles.c
    with gk.engine.connect() as c:
        by_origin = dict(c.execute(sa.select(p.origin, sa.func.count()).where(
            p.workspace_id == ws, p.merged_into.is_(None)).group_by(p.origin)).all())
    days_list = [(local - timedelta(days=days - 1 - i)).strftime("%Y-%m-%d") for i in range(days)]
    return {
        "as_of": to_iso(t),
        "timezone": tz,
        "window_days": days,
        "customers": sum(by_origin.values()),
        "customers_existing": by_origin.get("existing", 0),
        "customers_new": by_origin.get("new", 0),
        "active": active,
        "active_new": active_new,
        "active_returning": active - active_new,
        "revenue": round(float(rev_win), 2),
        "orders": n_win,
        "buyers": buyers,
        "revenue_all_time": round(float(rev_all), 2),
        "orders_all_time": n_all,
        "currency": currency,
        "currencies": n_cur,
        "last_activity_at": to_iso(as_utc(last)) if last else None,
        "daily_active": [{"day": d, "active": daily.get(d, 0)} for d in days_list],
        "monthly_revenue": [
            {"month": m, "revenue": round(float(monthly[m][0]), 2), "orders": monthly[m][1], "customers": monthly[m][2]}
            if m in monthly else {"month": m, "revenue": 0.0, "orders": 0, "customers": 0}
            for m in _months(local)
        ],
    }


@router.get("/api/v1/console/overview", response_model=Overview,
            responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}})
async def get_overview(gk: GK, cred: Admin, days: Annotated[int, Query(ge=1, le=366)] = 30,
                       as_of: datetime | None = None,
                       tz: Annotated[str | None, Query(description="Time zone of the days and months (default: "
                                                       "the workspace's, its send policy's timezone)")] = None
                       ) -> dict[str, Any]:
    """The console dashboard's figures: customers, active customers in the last ``days`` days (new vs
    returning), revenue and orders, daily active customers and monthly revenue for the last 12 months,
    by the calendar of the workspace's time zone."""
    if tz is not None:
        try:
            zone_name(tz)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="tz") from None
    return await run_in_threadpool(overview, gk, cred.workspace_id, days=days, as_of=as_of, tz=tz)


class RFMCell(BaseModel):
    r: int = Field(description="Recency score 1-5 (5 = most recent)")
    f: int = Field(description="Frequency score 1-5 (5 = most orders)")
    group: str = Field(description="The RFM group of the cell (goldkey.insight.rfm.GRID)")
    profiles: int


class RFMGroupInfo(BaseModel):
    group: str
    en: str
    zh: str
    description: str
    profiles: int


class RFMGrid(BaseModel):
    """Live profiles per (R, F) score pair of the latest RFM run, with the named groups."""

    version: int | None = Field(description="The RFM model version of the scores (null: RFM never ran)")
    scored: int = Field(description="Live profiles holding an R and an F score")
    cells: list[RFMCell] = Field(description="All 25 cells, r descending then f ascending")
    groups: list[RFMGroupInfo]


def rfm_grid(gk: Goldkey, ws: str) -> dict[str, Any]:
    """Count live profiles of ``ws`` by ``scores.rfm_r`` x ``scores.rfm_f`` (the RFM model's write-back).

    The live profiles' scores rows (``profile_scores``) are streamed from the operational store and
    their JSON parsed here (portable over SQLite and PostgreSQL); only rows whose scores mention
    ``rfm_r`` are read."""
    p, s = profiles.c, profile_scores.c
    counts: dict[tuple[int, int], int] = {}
    versions: dict[int, int] = {}
    with gk.engine.connect() as c:
        rows = c.execution_options(yield_per=5000).execute(
            sa.select(s.scores).join(profiles, p.profile_id == s.profile_id)
            .where(s.workspace_id == ws, s.scores.contains('"rfm_r"'), p.workspace_id == ws, p.merged_into.is_(None)))
        for (raw,) in rows:
            sc = orjson.loads(raw)
            r, f = sc.get("rfm_r"), sc.get("rfm_f")
            if isinstance(r, int | float) and isinstance(f, int | float) and 1 <= r <= 5 and 1 <= f <= 5:
                counts[(int(r), int(f))] = counts.get((int(r), int(f)), 0) + 1
                v = sc.get("rfm_model_version")
                if isinstance(v, int | float):
                    versions[int(v)] = versions.get(int(v), 0) + 1
    cells = [{"r": r, "f": f, "group": GRID[r - 1][f - 1], "profiles": counts.get((r, f), 0)}
             for r in range(5, 0, -1) for f in range(1, 6)]
    by_group: dict[str, int] = {}
    for cell in cells:
        by_group[cell["group"]] = by_group.get(cell["group"], 0) + cell["profiles"]
    return {
        "version": max(versions) if versions else None,
        "scored": sum(counts.values()),
        "cells": cells,
        "groups": [{"group": k, "en": en, "zh": zh, "description": d, "profiles": by_group.get(k, 0)}
                   for k, (en, zh, d) in GROUPS.items()],
    }


@router.get("/api/v1/console/rfm-grid", response_model=RFMGrid, responses={401: {"model": ErrorBody}})
async def get_rfm_grid(gk: GK, cred: Admin) -> dict[str, Any]:
    """The RFM page's 5x5 heat map: live profiles per recency x frequency score and per named group."""
    return await run_in_threadpool(rfm_grid, gk, cred.workspace_id)


class EventProperty(BaseModel):
    name: str
    type: str = Field(description="string | number | boolean: the JSON type most values have")


class EventName(BaseModel):
    event: str
    count: int
    last_at: str | None
    properties: list[EventProperty] = Field(description="Top-level properties seen in a sample of the events")


class EventCatalog(BaseModel):
    events: list[EventName]


_EVENTS_SQL = """
SELECT event, count(*), max("timestamp") FROM events
WHERE workspace_id = $ws AND type = 'track' AND event IS NOT NULL
GROUP BY event ORDER BY count(*) DESC, event LIMIT 500
"""

# property keys and JSON types per event name, over a bounded sample of the log
_PROPS_SQL = """
WITH s AS (
    SELECT event, properties FROM (
        SELECT event, properties FROM events
        WHERE workspace_id = $ws AND type = 'track' AND event IS NOT NULL AND properties IS NOT NULL
    ) USING SAMPLE 50000 ROWS
), k AS (
    SELECT event, properties, unnest(json_keys(properties)) AS key FROM s
        WHERE json_type(properties) = 'OBJECT'
)
SELECT event, key, json_type(json_extract(properties, '$.' || key)) AS t, count(*) AS n
FROM k WHERE regexp_full_match(key, '\\w+')
GROUP BY ALL
"""

_JSON_TYPES = {"BIGINT": "number", "UBIGINT": "number", "DOUBLE": "number", "VARCHAR": "string",
               "BOOLEAN": "boolean"}


def event_catalog(gk: Goldkey, ws: str) -> dict[str, Any]:
    """The track event names of workspace ``ws`` with counts, last time and their properties' types."""
    cur = gk.analytical.cursor()
    try:
        names = cur.execute(_EVENTS_SQL, {"ws": ws}).fetchall()
        props = cur.execute(_PROPS_SQL, {"ws": ws}).fetchall()
    finally:
        cur.close()
    best: dict[tuple[str, str], tuple[int, str]] = {}
    for event, key, jtype, n in props:
        kind = _JSON_TYPES.get(jtype)
        if kind and n > best.get((event, key), (0, ""))[0]:
            best[(event, key)] = (n, kind)
    by_event: dict[str, list[dict[str, str]]] = {}
    for (event, key), (_, kind) in sorted(best.items()):
        by_event.setdefault(event, []).append({"name": key, "type": kind})
    return {"events": [{"event": e, "count": n, "last_at": to_iso(as_utc(last)), "properties": by_event.get(e, [])}
                       for e, n, last in names]}


@router.get("/api/v1/console/events", response_model=EventCatalog, responses={401: {"model": ErrorBody}})
async def get_events(gk: GK, cred: Admin) -> dict[str, Any]:
    """The workspace's track event names (most frequent first) with their properties, for the
    segment builder's pickers."""
    return await run_in_threadpool(event_catalog, gk, cred.workspace_id)


class FieldCoverage(BaseModel):
    total_profiles: int
    fields: dict[str, int] = Field(description="field -> live profiles holding a value")


def field_coverage(gk: Goldkey, ws: str, prefixes: tuple[str, ...] = ("traits.", "tags.")) -> dict[str, Any]:
    """How many live profiles hold a value of each trait and tag field, in one aggregate over the
    workspace's facts table (the same table the tag coverage endpoint and the batch compiler read)."""
    from goldkey.audience.facts import facts_for
    from goldkey.rules.values import field_column

    info = gk.facts.ensure(ws)
    names = sorted(f for f in info.catalog if f.startswith(prefixes))
    if not names:
        return {"total_profiles": info.profiles, "fields": {}}
    with gk.analytical.ibis_connection() as con:
        t = facts_for(con, ws)
        cols = {f"c{i}": t[field_column(f)].notnull().sum() for i, f in enumerate(names)}
        row = t.aggregate(**cols).to_pyarrow().to_pylist()[0]
    return {"total_profiles": info.profiles, "fields": {f: int(row[f"c{i}"] or 0) for i, f in enumerate(names)}}


@router.get("/api/v1/console/coverage", response_model=FieldCoverage, responses={401: {"model": ErrorBody}})
async def get_coverage(gk: GK, cred: Admin) -> dict[str, Any]:
    """How many customers hold a value of each trait and tag (for the tags and traits lists)."""
    return await run_in_threadpool(field_coverage, gk, cred.workspace_id)


# -- the channel form's catalogue ---------------------------------------------------------------------


class ChannelKind(BaseModel):
    """A registered channel class, as the console's channel form needs it."""

    kind: str
    provider: str
    consent_channel: str = Field(description="The consent / cap channel its messages count against.")
    address_type: str = Field(description="The identifier type (or profile_id) a message goes to.")
    secret_fields: list[str] = Field(description="Credentials it requires (write-only).")
    optional_secret_fields: list[str]
    uses_provider_template: bool
    config_schema: dict[str, Any] = Field(description="JSON Schema of its config.")


def channel_kinds() -> list[dict[str, Any]]:
    """Every registered (kind, provider) with its config's JSON Schema and secret names, so the
    console draws each channel's form from the plugin's own declaration (a plugin channel gets a
    form without console changes)."""
    from goldkey.activate.channels.base import channel_class, registered

    out = []
    for kind, provider in registered():
        cls = channel_class(kind, provider)
        out.append({"kind": kind, "provider": provider, "consent_channel": cls.consent_channel,
                    "address_type": cls.address_type, "secret_fields": list(cls.secret_fields),
                    "optional_secret_fields": list(cls.optional_secret_fields),
                    "uses_provider_template": cls.uses_provider_template,
                    "config_schema": cls.config_model.model_json_schema()})
    return out


@router.get("/api/v1/console/channel-kinds", response_model=list[ChannelKind], responses={401: {"model": ErrorBody}})
def get_channel_kinds(cred: Admin) -> list[dict[str, Any]]:
    """The channel kinds this installation can send through, with their settings and credentials."""
    return channel_kinds()


# -- the single-page app ----------------------------------------------------------------------------

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Goldkey console not built</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:4rem auto;padding:0 1rem;color:#1f1f1f;
line-height:1.6}code,pre{background:#f5f5f5;border-radius:4px;padding:.1rem .3rem}pre{padding:.8rem}</style>
</head><body>
<h1>The Goldkey console is not built</h1>
<p>The API is running (see <a href="/docs">/docs</a>), but the web console's files were not found in
<code>{where}</code>.</p>
<p>Build it once (Node.js 18 or later), then reload this page:</p>
<pre>make console
# or, by hand:
cd console &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>控制台尚未构建：请在仓库根目录运行 <code>make console</code>，然后刷新本页。</p>
</body></html>
"""


def _reserved(path: str) -> bool:
    head = path.lstrip("/").split("/", 1)[0]
    return head in RESERVED_PREFIXES


def _inside(root: Path, rel: str) -> Path | None:
    """The file ``rel`` under ``root``, or None when it is missing or escapes ``root``."""
    try:
        target = (root / rel).resolve()
        target.relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return target if target.is_file() else None


def _index(root: Path) -> Response:
    index = root / "index.html"
    if not index.is_file():
        return HTMLResponse(_MISSING.replace("{where}", str(root)), status_code=503)
    return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def console_root() -> Response:
    return _index(dist_dir())


def _is_console(route: Any) -> bool:
    """True for this router's routes, whether the app holds them directly or as an included router."""
    return getattr(route, "path", None) in ("/", "/{path:path}") or getattr(route, "original_router", None) is router


def _api_miss(request: Request, path: str) -> Response:
    """What the API answers for a GET it has no route for: 405 when the path exists for other
    methods (as without this router), else 404."""
    others = [r for r in request.app.router.routes if not _is_console(r)]
    allowed = set()
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        probe = {**request.scope, "method": method}
        if any(r.matches(probe)[0] == Match.FULL for r in others):
            allowed.add(method)
    if allowed:
        allow = {"Allow": ", ".join(sorted(allowed))}
        return _miss(405, f"method GET not allowed for /{path}", "MethodNotAllowed", allow)
    return _miss(404, f"no route /{path}", "NotFound")


def _miss(status: int, text: str, code: str, headers: dict[str, str] | None = None) -> Response:
    """An error body of the API's shape (error, field, code, message)."""
    return JSONResponse({"error": text, "field": None, "code": code, "message": text}, status_code=status,
                        headers=headers)


@router.get("/{path:path}", include_in_schema=False)
async def console_path(request: Request, path: str) -> Response:
    """A file of the build, or index.html for a client-side route; never an API path."""
    if _reserved(path):
        return _api_miss(request, path)
    root = dist_dir()
    found = _inside(root, path) if path else None
    if found is not None:
        hashed = path.startswith("assets/")
        cache = "public, max-age=31536000, immutable" if hashed else "no-cache"
        return FileResponse(found, headers={"Cache-Control": cache})
    if path.startswith("assets/") or path.rsplit("/", 1)[-1].count(".") and not path.endswith(".html"):
        return _miss(404, f"no file {'/' + path!r} in the console build", "NotFound")
    return _index(root)
