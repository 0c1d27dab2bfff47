"""The batch side's view of profiles and events, in the analytical store.

``build_facts`` copies a workspace's live profiles from the operational store into one DuckDB
table with a typed column per catalog field (``goldkey.rules.values.field_column``), typed with
the same ``coerce`` the in-memory evaluator uses. Segments, tags and estimates then run the batch
compiler over that table and the resolved event log (``events_for``). The table is rebuilt in
full when the profiles or the catalog changed since the last build (``FactsCache``); a build
costs about 20 s per million profiles here (benchmarks/bench_segments.py).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from goldkey.audience.catalog import (
    _ORDER_KEYS,
    PROFILE_VALUE_COLUMNS,
    PROFILE_VALUE_SQL,
    infer_attribute_fields,
    load_catalog,
    model_tags,
    profile_value_select,
)
from goldkey.profiles.scores import merged_tags
from goldkey.rules.values import coerce, field_column
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import identities, profiles

log = logging.getLogger(__name__)

_ARROW = {"string": pa.string(), "number": pa.float64(), "boolean": pa.bool_(),
          "datetime": pa.timestamp("us", tz="UTC"), "list": pa.list_(pa.string())}


def facts_table_name(ws: str) -> str:
    """The DuckDB table holding workspace ``ws``'s profile facts (workspace ids are ours, but the
    name is still reduced to word characters)."""
    return "facts_" + re.sub(r"\W", "_", ws)


@dataclass
class FactsInfo:
    table: str
    profiles: int
    catalog: dict[str, str]
    seconds: float


_Row = namedtuple("_Row", PROFILE_VALUE_COLUMNS)  # type: ignore[misc]


def _profile_rows(engine: sa.Engine, ws: str) -> tuple[list[Any], dict[str, list[str]]]:
    """The live profiles' value columns (their scores joined from ``profile_scores``) and each
    profile's identifier types.

    On SQLite the rows come straight from the driver (SQLAlchemy's per-row timestamp processing
    costs more than the query): timestamps then arrive as the stored text, which ``coerce`` reads
    to the same aware UTC datetimes."""
    q = profile_value_select().where(profiles.c.workspace_id == ws, profiles.c.merged_into.is_(None))
    qi = sa.select(identities.c.profile_id, identities.c.id_type).where(identities.c.workspace_id == ws).distinct()
    id_types: dict[str, list[str]] = {}
    with engine.connect() as c:
        if c.dialect.name == "sqlite":
            raw = c.connection.driver_connection
            assert raw is not None
            rows = [_Row(*r) for r in raw.execute(
                f"{PROFILE_VALUE_SQL} WHERE p.workspace_id = ? AND p.merged_into IS NULL", (ws,))]
            pairs = raw.execute("SELECT DISTINCT profile_id, id_type FROM identities WHERE workspace_id = ?", (ws,))
        else:
            rows = c.execute(q).all()
            pairs = c.execute(qi)
        for pid, t in pairs:
            id_types.setdefault(pid, []).append(t)
    return rows, id_types


def _num(v: Any) -> float | None:
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else None
    if t is int:
        try:
            return float(v)
        except OverflowError:
            return None
    return coerce(v, "number")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


_FAST = {"string": _str, "number": _num}

_BUILTIN_COLUMN = {"profile.origin": "origin", "profile.first_seen_at": "first_seen_at",
                   "profile.first_seen_source": "first_seen_source", "profile.last_seen_at": "last_seen_at"}


def facts_arrow(rows: list[Any], catalog: dict[str, str], id_types: dict[str, list[str]] | None = None) -> pa.Table:
    """Profile rows -> the typed Arrow table (one column per catalog field).

    Column by column: each JSON column is parsed once per row, then each field's values are typed
    with ``coerce`` (or a fast path that gives exactly the same answer), so the table holds what
    ``profile_values`` + ``coerce`` give the in-memory evaluator."""
    names = sorted(catalog)
    ids = [r.profile_id for r in rows]
    parsed: dict[str, list[dict[str, Any]]] = {}

    def source(name: str) -> list[dict[str, Any]]:
        if name not in parsed:
            loads = orjson.loads
            # the model tags (profile_scores.model_tags) are tags too
            parsed[name] = ([merged_tags(r.tags, model_tags(r)) for r in rows] if name == "tags" else
                            [loads(getattr(r, name) or "{}") for r in rows])
        return parsed[name]

    id_types = id_types or {}
    arrays = [pa.array(ids, pa.string())]
    for f in names:
        ftype = catalog[f]
        conv = _FAST.get(ftype) or (lambda v, t=ftype: coerce(v, t))
        if f in _BUILTIN_COLUMN:
            raw = [getattr(r, _BUILTIN_COLUMN[f]) for r in rows]
        elif f == "profile.identifier_types":
            raw = [sorted(t) if (t := id_types.get(pid)) else None for pid in ids]
        else:
            src, key = f.split(".", 1)
            if src == "orders":
                docs = source("order_summary")
                key = _ORDER_KEYS.get(f, key)
            elif src in ("attributes", "traits", "tags", "scores"):
                docs = source(src)
            else:
                docs = []
            raw = [d.get(key) for d in docs] if docs else [None] * len(rows)
        arrays.append(pa.array([conv(v) for v in raw], _ARROW[ftype]))
    return pa.Table.from_arrays(arrays, names=["profile_id"] + [field_column(f) for f in names])


def build_facts(engine: sa.Engine, analytical: AnalyticalStore, ws: str) -> FactsInfo:
    """Rebuild workspace ``ws``'s facts table from the operational store."""
    t0 = time.perf_counter()
    infer_attribute_fields(engine, ws)
    catalog = load_catalog(engine, ws)
    rows, id_types = _profile_rows(engine, ws)
    table = facts_arrow(rows, catalog, id_types)
    name = facts_table_name(ws)
    with analytical.transaction() as con:
        con.register("_facts_src", table)
        try:
            con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _facts_src')
        finally:
            con.unregister("_facts_src")
    return FactsInfo(name, table.num_rows, catalog, time.perf_counter() - t0)


class FactsCache:
    """Rebuilds a workspace's facts only when something changed since the last build.

    ``touch(ws)`` marks a workspace changed by a definition-level write (tags, traits, imports,
    declared fields): the next ``ensure`` rebuilds. ``touch(ws, soft=True)`` marks the drift of
    ordinary event traffic (last-seen times, identify traits): the next ``ensure`` rebuilds only
    when the last build is older than ``soft_age`` seconds, so estimates stay fast under load.
    """

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, soft_age: float = 30.0) -> None:
        self.engine = engine
        self.analytical = analytical
        self.soft_age = soft_age
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._built: dict[str, tuple[float, int, FactsInfo]] = {}  # ws -> (monotonic, generation, info)
        self._generation: dict[str, int] = {}
        self._soft: set[str] = set()

    def touch(self, ws: str, *, soft: bool = False) -> None:
        with self._lock:
            if soft:
                self._soft.add(ws)
            else:
                self._generation[ws] = self._generation.get(ws, 0) + 1

    def attach(self, writer: Any) -> None:
        """Soft-touch the workspaces of every commit of the writer."""
        def on_commit(stored: list[tuple[str, str, Any]]) -> None:
            with self._lock:
                self._soft.update({ws for ws, _, _ in stored})

        writer.listeners.append(on_commit)

    def ensure(self, ws: str, *, force: bool = False, strict: bool = False) -> FactsInfo:
        """The workspace's facts, rebuilt when changed. ``strict`` (materialisations) also rebuilds
        for plain event traffic since the last build; otherwise that drift is allowed for
        ``soft_age`` seconds (live estimates). A changed field catalog always rebuilds."""
        with self._lock:
            gen = self._generation.get(ws, 0)
            built = self._built.get(ws)
            soft = ws in self._soft
        if (not force and built is not None and built[1] == gen
                and not (soft and (strict or time.monotonic() - built[0] >= self.soft_age))
                and load_catalog(self.engine, ws) == built[2].catalog):
            return built[2]
        with self._build_lock:  # one build at a time; a waiting caller reuses the fresh build
            with self._lock:
                built2 = self._built.get(ws)
            if (not force and built2 is not None and built2 is not built
                    and built2[1] == self._generation.get(ws, 0) and not (strict and ws in self._soft)):
                return built2[2]
            with self._lock:
                self._soft.discard(ws)
            info = build_facts(self.engine, self.analytical, ws)
            with self._lock:
                self._built[ws] = (time.monotonic(), gen, info)
        return info

    def warm(self, workspaces: list[str], stop: threading.Event) -> threading.Thread:
        """Build the facts of ``workspaces`` in a background thread, so that a server's first live
        estimate is as fast as the next (a build takes seconds at the demo's size). Stops between
        workspaces once ``stop`` is set; a failed build is left to the next ``ensure``."""
        def run() -> None:
            for ws in workspaces:
                if stop.is_set():
                    return
                try:
                    self.ensure(ws)
                except Exception:  # noqa: BLE001 - the next estimate builds (and reports) it
                    log.debug("warming the facts of %s failed", ws, exc_info=True)

        t = threading.Thread(target=run, name="goldkey-facts-warm", daemon=True)
        t.start()
        return t

    def current(self, ws: str) -> FactsInfo | None:
        """The last build, stale or not (None when never built)."""
        with self._lock:
            b = self._built.get(ws)
        return b[2] if b else None


def events_for(con: Any, ws: str) -> Any:
    """The workspace's events as the batch compiler wants them (Ibis table on ``con``): the live
    profile id, type, event, name, timestamp and properties."""
    ev = con.table("events_resolved")
    return ev.filter(ev.workspace_id == ws).select(
        profile_id=ev.canonical_id, type=ev.type, event=ev.event, name=ev.name, timestamp=ev.timestamp,
        properties=ev.properties,
    )


def facts_for(con: Any, ws: str) -> Any:
    """The workspace's facts table as an Ibis table on ``con``."""
    return con.table(facts_table_name(ws))
