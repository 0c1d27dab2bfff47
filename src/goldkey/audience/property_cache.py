"""Typed event properties for batch traits, kept in the analytical store (the property cache).

Computing traits straight from the event log parses every event's JSON properties and groups on
profile-id strings at every refresh (most of the 2.9 CPU-s per million events a refresh of ten traits
took here; benchmarks/bench_traits.py). The cache holds, per
workspace, one row per event some trait may read -- an integer profile key, the time in epoch
microseconds, an integer event kind and one typed column per (property, type) the traits read -- so
a refresh reads narrow typed columns and groups on integers.

It is maintained from the event log, at refresh time and in the refresh's own DuckDB snapshot, not
in the ingestion path: the rows the log gained since the last refresh (DuckDB row ids at or above the
high-water mark; a row id is given at commit, in commit order) are typed and appended. It is rebuilt
from the log when it cannot be trusted:

* the traits read a property, type or event it does not hold;
* the log holds a different number of the workspace's events below the high-water mark than the
  cache counted (rows deleted, or committed out of row-id order);
* a merge was undone since (an unmerge moves events back to the restored profile with ``UPDATE
  events SET profile_id``, the one change the log sees besides appends).

Values are typed exactly as the batch compiler types them (``typed_fragment``), so traits over the
cache equal traits over the log. Names and values reach SQL as bound parameters or Ibis literals;
table names are derived from the workspace id reduced to word characters.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

CACHE_FORMAT = 1  # bump when the cache's layout or typing changes: older caches are rebuilt

_SOURCE_VIEW = "_gk_pc_source"
_SQL_TYPE = {"number": "DOUBLE", "string": "VARCHAR", "boolean": "BOOLEAN", "raw": "VARCHAR"}


# ------------------------------------------------------------------------------ Ibis helpers


def ibis_module() -> Any:
    """Ibis, imported on first use (nothing heavy at import time)."""
    import ibis

    return ibis


_TS_TYPE: Any = None
_UDFS: dict[tuple[str, str], Any] = {}


def ts_type() -> Any:
    """The event log's timestamp type (UTC, microseconds)."""
    global _TS_TYPE
    if _TS_TYPE is None:
        import ibis.expr.datatypes as dt

        _TS_TYPE = dt.Timestamp(timezone="UTC", scale=6)
    return _TS_TYPE


def duckdb_builtin(kind: str, name: str, args: tuple[Any, ...], ret: Any) -> Any:
    """A DuckDB built-in function as an Ibis UDF (arg_min/arg_max compile to ordered aggregates
    otherwise, which sort each group)."""
    key = (kind, f"{name}:{args}:{ret}")
    fn = _UDFS.get(key)
    if fn is None:
        ibis = ibis_module()

        if len(args) == 2:

            def stub(arg: Any, key: Any) -> Any:  # pragma: no cover - the backend's function runs
                raise NotImplementedError

        else:

            def stub(arg: Any) -> Any:  # type: ignore[misc]  # pragma: no cover
                raise NotImplementedError

        stub.__name__ = f"gk_{name}_{len(_UDFS)}"
        maker = ibis.udf.agg.builtin if kind == "agg" else ibis.udf.scalar.builtin
        fn = maker(stub, name=name, signature=(args, ret))
        _UDFS[key] = fn
    return fn


def typed_fragment(frag: Any, kind: str) -> Any:
    """A typed value from a JSON fragment with the rule language's semantics: a number is a JSON
    number (not a boolean, not a numeric string), a string a JSON string; raw is the fragment's JSON
    text (any type, JSON null excluded)."""
    ibis = ibis_module()
    if kind == "number":
        # the fragment's text as a number: a JSON number parses, a string ("12"), true or null not
        return frag.cast("string").try_cast("float64")
    if kind == "string":
        # a JSON string's text without its quotes; only one with escapes needs the JSON decoder
        text = frag.cast("string")
        quoted = text.startswith('"')
        return ibis.cases(
            (quoted & ~text.contains("\\"), text.substr(1, text.length() - 2)),
            (quoted, frag.str),
            else_=ibis.null("string"),
        )
    if kind == "boolean":
        return frag.bool
    text = frag.cast("string")
    return ibis.ifelse(text == "null", ibis.null("string"), text)


def json_path_step(name: str) -> str:
    """A property name as a JSON path step (names are word characters; quoted for any script)."""
    return name if name.isascii() and name.isidentifier() else '"' + name + '"'


def event_key(etype: str) -> str:
    """The column naming an event of type ``etype``: ``event`` for track, ``name`` otherwise."""
    return "event" if etype == "track" else "name"


# ------------------------------------------------------------------------------ the cache


@dataclass(frozen=True)
class CacheNeeds:
    """What the cache must hold: event kinds as (type, event or page/screen name; None = any name of
    the type), and (property, type) columns, type one of number, string, boolean, raw."""

    kinds: frozenset[tuple[str, str | None]]
    columns: frozenset[tuple[str, str]]


@dataclass
class CachedEvents:
    """A refreshed cache, as the aggregation reads it (inside the snapshot it was refreshed in).

    ``rows``: table of (pkey, ts, k, c0, c1 ...); ``keys``: table of (profile_id, pkey);
    ``resolve``: registered Arrow table of (raw, canon) profile keys, the merged-away profiles;
    ``kinds[k]``: the (type, name) of kind code ``k``; ``columns``: (property, type) -> column."""

    rows: str
    keys: str
    resolve: str
    kinds: list[tuple[str, str | None]]
    columns: dict[tuple[str, str], str]
    key_count: int  # profile keys are 0 .. key_count - 1
    rebuilt: str | None  # why the cache was rebuilt (None: appended to)
    appended: int
    seconds: float


def _suffix(ws: str) -> str:
    return re.sub(r"\W", "_", ws)


def cache_tables(ws: str) -> tuple[str, str, str]:
    """The (rows, keys, state) table names of workspace ``ws``."""
    s = _suffix(ws)
    return f"_gk_pc_rows_{s}", f"_gk_pc_keys_{s}", f"_gk_pc_state_{s}"


def _covers(state: dict[str, Any], needs: CacheNeeds) -> bool:
    spec = {(t, n) for t, n in state["spec_kinds"]}
    cols = {(p, k) for p, k, _ in state["columns"]}
    kinds_ok = all((t, n) in spec or (t, None) in spec for t, n in needs.kinds)
    return kinds_ok and needs.columns <= cols


def _load_state(cur: Any, table: str) -> dict[str, Any] | None:
    exists = cur.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary", [table]
    ).fetchone()[0]
    if not exists:
        return None
    row = cur.execute(f'SELECT state FROM "{table}"').fetchone()
    return orjson.loads(row[0]) if row else None


def _save_state(cur: Any, table: str, state: dict[str, Any]) -> None:
    cur.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (state VARCHAR NOT NULL)')
    cur.execute(f'DELETE FROM "{table}"')
    cur.execute(f'INSERT INTO "{table}" VALUES (?)', [orjson.dumps(state).decode()])


def _kind_filter(ev: Any, kinds: list[tuple[str, str | None]]) -> Any:
    """The events of the given kinds, as an Ibis condition (names bound as literals)."""
    ibis = ibis_module()
    names: dict[str, set[str] | None] = {}
    for t, n in kinds:
        got = names.get(t, set())
        if n is None or got is None:
            names[t] = None
        else:
            got.add(n)
            names[t] = got
    parts = []
    for t, wanted in sorted(names.items()):
        c = ev.type == t
        if wanted is not None:
            c = c & ev[event_key(t)].isin(sorted(wanted))
        parts.append(c)
    if not parts:
        return ibis.literal(False)
    return ibis.or_(*parts) if len(parts) > 1 else parts[0]


def _stage_sql(cur: Any, ws: str, since_rowid: int, state: dict[str, Any]) -> str:
    """SQL typing the workspace's events from row id ``since_rowid`` on that the cache holds: pid,
    ts (epoch microseconds), type, key (event or name) and the typed columns; one JSON parse per
    event (``json_extract`` with a list of paths)."""
    ibis = ibis_module()
    import ibis.expr.datatypes as dt

    con = ibis.duckdb.from_connection(cur)
    # the row-id range through a view (Ibis has no row ids); the view lives in this connection only
    cur.execute(
        f'CREATE OR REPLACE TEMP VIEW "{_SOURCE_VIEW}" AS SELECT workspace_id, profile_id, type, event, name, '
        f'"timestamp", properties FROM events WHERE rowid >= {int(since_rowid)}'
    )
    ev = con.table(_SOURCE_VIEW)
    spec = [(t, n) for t, n in state["spec_kinds"]]
    rows = ev.filter((ev.workspace_id == ws) & _kind_filter(ev, spec))
    epoch_us = duckdb_builtin("scalar", "epoch_us", (ts_type(),), dt.int64)
    out: dict[str, Any] = {
        "pid": rows.profile_id,
        "ts": epoch_us(rows.timestamp),
        "type": rows.type,
        "key": ibis.ifelse(rows.type == "track", rows.event, rows.name),
    }
    columns = state["columns"]
    if columns:
        props = sorted({p for p, _, _ in columns})
        at = {p: i for i, p in enumerate(props)}
        paths = ibis.literal([f"$.{json_path_step(p)}" for p in props], type=dt.Array(dt.string))
        multi = duckdb_builtin("scalar", "json_extract", (dt.json, dt.Array(dt.string)), dt.Array(dt.json))
        t1 = rows.select(**out, frags=multi(rows.properties, paths))
        name = "_gk_pc_frags"
        raw = ibis.table(t1.schema(), name=name)
        typed = {col: typed_fragment(raw.frags[at[p]], kind) for p, kind, col in columns}
        t2 = raw.select("pid", "ts", "type", "key", **typed)
        # materialised: one JSON parse per event however many columns read it
        return f'WITH "{name}" AS MATERIALIZED ({ibis.to_sql(t1)}) {ibis.to_sql(t2)}'
    return str(ibis.to_sql(rows.select(**out)))


def refresh_cache(cur: Any, ws: str, needs: CacheNeeds, undone_merges: list[Any]) -> CachedEvents:
    """Bring workspace ``ws``'s cache up to the snapshot of ``cur`` (a cursor inside the caller's
    transaction; the caller commits) and return how to read it. ``undone_merges`` describes the
    undone merges of the workspace (any change of it rebuilds the cache)."""
    t0 = time.perf_counter()
    rows_t, keys_t, state_t = cache_tables(ws)
    state = _load_state(cur, state_t)
    end = cur.execute("SELECT coalesce(max(rowid), -1) + 1 FROM events").fetchone()[0]
    undone = orjson.loads(orjson.dumps(undone_merges, default=str))
    reason: str | None = None
    if state is None:
        reason = "no cache"
    elif state.get("format") != CACHE_FORMAT:
        reason = "cache format changed"
    elif not _covers(state, needs):
        reason = "traits read events or properties the cache does not hold"
    elif state.get("undone") != undone:
        reason = "a merge was undone"
    else:
        below, since = cur.execute(
            "SELECT count(*) FILTER (WHERE rowid < ?), count(*) FILTER (WHERE rowid >= ?) FROM events "
            "WHERE workspace_id = ?", [state["hwm"], state["hwm"], ws],
        ).fetchone()
        if below != state["seen"]:
            reason = f"the log holds {below} events below the mark, the cache counted {state['seen']}"
    if reason is not None:
        spec = sorted(needs.kinds, key=lambda kn: (kn[0], kn[1] or ""))
        columns = [[p, k, f"c{i}"] for i, (p, k) in enumerate(sorted(needs.columns))]
        state = {"format": CACHE_FORMAT, "spec_kinds": [list(kn) for kn in spec], "columns": columns,
                 "kinds": [], "hwm": 0, "seen": 0, "undone": undone, "next_key": 0}
        typed_cols = ", ".join(f"{c} {_SQL_TYPE[k]}" for _, k, c in columns)
        cur.execute(f'CREATE OR REPLACE TABLE "{rows_t}" (pkey INTEGER NOT NULL, ts BIGINT NOT NULL, '
                    f"k INTEGER NOT NULL{', ' + typed_cols if typed_cols else ''})")
        cur.execute(f'CREATE OR REPLACE TABLE "{keys_t}" (profile_id VARCHAR NOT NULL, pkey INTEGER NOT NULL)')
        since = cur.execute("SELECT count(*) FROM events WHERE workspace_id = ?", [ws]).fetchone()[0]
    assert state is not None
    stage = "_gk_pc_stage"
    cur.execute(f'CREATE OR REPLACE TEMP TABLE "{stage}" AS {_stage_sql(cur, ws, state["hwm"], state)}')
    try:
        appended = _append(cur, ws, state, stage, rows_t, keys_t)
    finally:
        cur.execute(f'DROP TABLE IF EXISTS "{stage}"')
        cur.execute(f'DROP VIEW IF EXISTS "{_SOURCE_VIEW}"')
    state["hwm"] = end
    state["seen"] += since
    _save_state(cur, state_t, state)
    resolve = _resolve(cur, ws, keys_t)
    cur.register(f"{rows_t}_resolve", resolve)
    return CachedEvents(
        rows=rows_t, keys=keys_t, resolve=f"{rows_t}_resolve",
        kinds=[(t, n) for t, n in state["kinds"]], columns={(p, k): c for p, k, c in state["columns"]},
        key_count=state["next_key"], rebuilt=reason, appended=appended, seconds=time.perf_counter() - t0,
    )


def _append(cur: Any, ws: str, state: dict[str, Any], stage: str, rows_t: str, keys_t: str) -> int:
    """Append the staged events: new kinds get codes, new profiles (and the live profiles merged
    ones resolve to) get keys; return the rows appended."""
    kinds = [(t, n) for t, n in state["kinds"]]
    known = set(kinds)
    for t, n in cur.execute(f'SELECT DISTINCT type, key FROM "{stage}"').fetchall():
        if (t, n) not in known:
            known.add((t, n))
            kinds.append((t, n))
    state["kinds"] = [list(kn) for kn in kinds]
    # keys: the staged events' profiles and both sides of the profile map (the map changes with
    # every merge; the keys only grow)
    new_keys = cur.execute(
        f"""INSERT INTO "{keys_t}"
            SELECT profile_id, (? + row_number() OVER ())::INTEGER FROM (
              SELECT DISTINCT profile_id FROM (
                SELECT pid AS profile_id FROM "{stage}"
                UNION ALL SELECT canonical_id FROM profile_map WHERE workspace_id = ?
              ) WHERE profile_id NOT IN (SELECT profile_id FROM "{keys_t}")
            )""",
        [state["next_key"], ws],
    ).fetchone()[0]
    state["next_key"] += new_keys
    if state["next_key"] >= 2**31 - 1:
        raise OverflowError("more profiles than integer keys")  # pragma: no cover - 2 billion profiles
    kind_tbl = pa.table({"type": pa.array([t for t, _ in kinds], pa.string()),
                         "key": pa.array([n for _, n in kinds], pa.string()),
                         "k": pa.array(range(len(kinds)), pa.int32())})
    cols = [c for _, _, c in state["columns"]]
    sel = "".join(f", s.{c}" for c in cols)
    cur.register("_gk_pc_kinds", kind_tbl)
    try:
        n = cur.execute(
            f"""INSERT INTO "{rows_t}"
                SELECT k.pkey, s.ts, kd.k{sel} FROM "{stage}" s
                JOIN "{keys_t}" k ON k.profile_id = s.pid
                JOIN _gk_pc_kinds kd ON kd.type = s.type AND kd.key IS NOT DISTINCT FROM s.key"""
        ).fetchone()[0]
    finally:
        cur.unregister("_gk_pc_kinds")
    return int(n)


def _resolve(cur: Any, ws: str, keys_t: str) -> pa.Table:
    """The merged-away profiles' keys and the keys of the live profiles they resolve to (the
    profile map in the caller's snapshot)."""
    return cur.sql(
        f"""SELECT kr.pkey AS raw, kc.pkey AS canon FROM profile_map m
            JOIN "{keys_t}" kr ON kr.profile_id = m.profile_id
            JOIN "{keys_t}" kc ON kc.profile_id = m.canonical_id
            WHERE m.workspace_id = $ws AND m.profile_id <> m.canonical_id""",
        params={"ws": ws},
    ).to_arrow_table()


def drop_cache(cur: Any, ws: str) -> None:
    """Remove workspace ``ws``'s cache (it is rebuilt by the next refresh)."""
    for t in cache_tables(ws):
        cur.execute(f'DROP TABLE IF EXISTS "{t}"')
