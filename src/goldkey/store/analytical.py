"""The analytical store: the event log, orders and the profile map, in DuckDB (embedded default).

One process owns the DuckDB file. Writes go through Arrow tables in one transaction per group
commit (never row by row); readers take their own cursor. Batch work reaches the data through Ibis
(``ibis_connection``) so that the same expressions run on PySpark later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

log = logging.getLogger(__name__)

EVENT_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("workspace_id", pa.string()),
    ("message_id", pa.string()),
    ("type", pa.string()),
    ("event", pa.string()),
    ("name", pa.string()),
    ("profile_id", pa.string()),
    ("user_id", pa.string()),
    ("anonymous_id", pa.string()),
    ("group_id", pa.string()),
    ("previous_id", pa.string()),
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("original_timestamp", pa.timestamp("us", tz="UTC")),
    ("sent_at", pa.timestamp("us", tz="UTC")),
    ("received_at", pa.timestamp("us", tz="UTC")),
    ("properties", pa.string()),
    ("traits", pa.string()),
    ("context", pa.string()),
    ("source", pa.string()),
]
EVENT_SCHEMA = pa.schema(EVENT_COLUMNS)

_DDL = [
    """CREATE TABLE IF NOT EXISTS events (
        workspace_id VARCHAR NOT NULL, message_id VARCHAR NOT NULL, type VARCHAR NOT NULL,
        event VARCHAR, name VARCHAR, profile_id VARCHAR NOT NULL, user_id VARCHAR, anonymous_id VARCHAR,
        group_id VARCHAR, previous_id VARCHAR, "timestamp" TIMESTAMPTZ NOT NULL,
        original_timestamp TIMESTAMPTZ, sent_at TIMESTAMPTZ, received_at TIMESTAMPTZ NOT NULL,
        properties JSON, traits JSON, context JSON, source VARCHAR NOT NULL)""",
    # profiles merged away -> their live (canonical) profile; mirrors the operational store
    """CREATE TABLE IF NOT EXISTS profile_map (
        workspace_id VARCHAR NOT NULL, profile_id VARCHAR NOT NULL, canonical_id VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        workspace_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, profile_id VARCHAR NOT NULL,
        ordered_at TIMESTAMPTZ NOT NULL, total_amount DOUBLE NOT NULL, currency VARCHAR,
        channel VARCHAR, store VARCHAR, region VARCHAR, status VARCHAR, import_id VARCHAR)""",
    # the identifiers an imported order named its customer by (JSON object, type -> normalised value):
    # an undo of a merge gives the order back to the profile holding them (NULL for older orders)
    "ALTER TABLE orders ADD COLUMN IF NOT EXISTS identifiers VARCHAR",
    """CREATE TABLE IF NOT EXISTS order_lines (
        workspace_id VARCHAR NOT NULL, order_id VARCHAR NOT NULL, line_no INTEGER NOT NULL,
        sku VARCHAR, product_name VARCHAR, category VARCHAR, quantity INTEGER,
        unit_price DOUBLE, line_amount DOUBLE)""",
    # per-profile explanations of a model version's scores (churn / propensity reasons): written in
    # bulk by each scoring run, read one profile at a time (goldkey.insight.writeback)
    """CREATE TABLE IF NOT EXISTS profile_reasons (
        workspace_id VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL,
        profile_id VARCHAR NOT NULL, payload VARCHAR NOT NULL)""",
    """CREATE OR REPLACE VIEW events_resolved AS
        SELECT e.*, coalesce(m.canonical_id, e.profile_id) AS canonical_id
        FROM events e LEFT JOIN profile_map m
          ON m.workspace_id = e.workspace_id AND m.profile_id = e.profile_id""",
    """CREATE OR REPLACE VIEW orders_resolved AS
        SELECT o.*, coalesce(m.canonical_id, o.profile_id) AS canonical_id
        FROM orders o LEFT JOIN profile_map m
          ON m.workspace_id = o.workspace_id AND m.profile_id = o.profile_id""",
]


class AnalyticalStore:
    """Owns the DuckDB connection of one file. ``write_lock`` serialises writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(path))
        self.write_lock = threading.RLock()
        # Goldkey's own events (Tag Changed, Lifecycle Stage Changed, segment_entered, Message Sent,
        # ...) are appended here, not through the writer's event commits: whoever must hear them
        # as they happen (the real-time triggers) listens here. Each listener gets ``(workspace,
        # profile ids, event names, properties JSON texts, time)`` once the transaction that wrote
        # them has committed (see :meth:`announce`).
        self.own_event_listeners: list[Callable[[str, Any, Any, Any, Any], None]] = []
        self._announced: dict[int, list[tuple[str, Any, Any, Any, Any]]] = {}
        with self.write_lock:
            # the writer checkpoints when idle (see collect.writer); automatic checkpoints would
            # land inside acknowledged commits
            self._con.execute("SET wal_autocheckpoint = '4GB'")
            # times in and out in UTC whatever the server's zone: a TIMESTAMPTZ otherwise comes back
            # in local time (stored as such on SQLite after an undo, timelines sorted wrong) and
            # date_trunc would cut days at local midnight
            self._con.execute("SET GLOBAL TimeZone = 'UTC'")
            for ddl in _DDL:
                self._con.execute(ddl)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Return a new cursor for the calling thread (DuckDB connections are not thread-safe)."""
        return self._con.cursor()

    def append(self, table: str, data: pa.Table, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Append an Arrow table to ``table`` (a fixed, known table name) inside the caller's transaction."""
        if table not in {"events", "profile_map", "orders", "order_lines", "profile_reasons"}:
            raise ValueError(f"unknown analytical table {table!r}")
        target = con or self._con
        target.register("_append_src", data)
        try:
            cols = ", ".join(f'"{c}"' for c in data.column_names)
            target.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _append_src")
        finally:
            target.unregister("_append_src")

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a cursor inside BEGIN ... COMMIT under the write lock; roll back on any error
        (a failing rollback never hides the original error)."""
        with self.write_lock:
            con = self.cursor()
            self._announced[id(con)] = []
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    self._announced[id(con)] = []  # rolled back: nothing to tell
                    with suppress(Exception):
                        con.execute("ROLLBACK")
                    raise
            finally:
                con.close()
                announced = self._announced.pop(id(con), None) or []
            for args in announced:
                self._tell(*args)

    def announce(self, con: Any, ws: str, profile_ids: Any, events: Any, properties: Any, at: Any) -> None:
        """Tell :attr:`own_event_listeners` about own events written through ``con`` once its
        transaction commits (at once when ``con`` is not one of :meth:`transaction`'s)."""
        if not self.own_event_listeners:
            return
        pending = self._announced.get(id(con)) if con is not None else None
        if pending is not None:
            pending.append((ws, profile_ids, events, properties, at))
        else:
            self._tell(ws, profile_ids, events, properties, at)

    def _tell(self, *args: Any) -> None:
        for listen in list(self.own_event_listeners):
            try:
                listen(*args)
            except Exception:  # a listener never fails a write that is already durable
                log.exception("own-event listener failed")

    def rebuild_profile_map(self, con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, str]]) -> None:
        """Replace the profile map with ``rows`` of (workspace_id, profile_id, canonical_id),
        inside the caller's transaction."""
        tbl = pa.table(
            {
                "workspace_id": pa.array([r[0] for r in rows], pa.string()),
                "profile_id": pa.array([r[1] for r in rows], pa.string()),
                "canonical_id": pa.array([r[2] for r in rows], pa.string()),
            }
        )
        con.execute("DELETE FROM profile_map")
        self.append("profile_map", tbl, con)

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query with bound parameters on a fresh cursor and return all rows."""
        cur = self.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None, *,
                    tables: dict[str, pa.Table] | None = None) -> pa.Table:
        """Run a read query with named parameters (``$name``) on a fresh cursor, with ``tables``
        (Arrow tables of the caller, e.g. a campaign's members) registered under their names for
        the query only; return the result as one Arrow table."""
        cur = self.cursor()
        try:
            for name, tbl in (tables or {}).items():
                cur.register(name, tbl)
            return cur.sql(sql, params=params or {}).to_arrow_table()
        finally:
            cur.close()  # a closed cursor forgets what was registered on it

    @contextmanager
    def ibis_connection(self) -> Iterator[Any]:
        """Yield an Ibis DuckDB backend over a cursor of this store; the cursor is closed after."""
        import ibis

        cur = self.cursor()
        try:
            yield ibis.duckdb.from_connection(cur)
        finally:
            cur.close()

    def wal_bytes(self) -> int:
        """Return the size of the write-ahead log not yet folded into the database file."""
        try:
            return (self.path.parent / (self.path.name + ".wal")).stat().st_size
        except FileNotFoundError:
            return 0

    def checkpoint(self) -> None:
        """Fold the WAL into the database file."""
        with self.write_lock:
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        """Close the connection (after a checkpoint)."""
        with self.write_lock:
            try:
                self._con.execute("CHECKPOINT")
            finally:
                self._con.close()
