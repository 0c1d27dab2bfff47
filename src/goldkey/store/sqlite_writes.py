"""One write transaction at a time per SQLite file in this process, handed over without sleeping.

SQLite allows one writer per database file. When a second connection wants to write while another
holds the write lock, SQLite's busy handler makes it *sleep* and retry, on a fixed back-off schedule
(1, 2, 5, 10, 15, 20, 25 ... 100 ms). Inside one Goldkey process several threads write the
operational store — the writer's group commits (the ingestion path), the real-time trigger worker's
reservations, the delivery worker, journeys, imports — so each collision cost a sleep that outlasts
the transaction it waited for: a 4 ms commit held up the next writer for 8, 18 or 33 ms, and the
ingestion path paid it on every group commit that met a trigger reservation (the trigger latency
tail measured in ``benchmarks/bench_triggers.py``).

The connections this module makes queue on a process-wide mutex per database file instead: a
connection takes it before the first statement that can write (anything that is not a ``SELECT``,
``PRAGMA`` or ``EXPLAIN``; pysqlite opens its implicit transaction there) and gives it back when the
transaction ends (commit, rollback, close) or when the statement ran outside a transaction. The
waiter wakes the moment the holder commits. Reads never take it (WAL readers do not block).

Other processes (a CLI import beside a server) still meet SQLite's busy handler, as before. The
mutex is taken with the same timeout as ``busy_timeout``; a connection that could not get it in time
goes on and lets SQLite decide (so a thread that waits on another while holding a write transaction
fails as it did before, after the timeout, instead of hanging).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

BUSY_TIMEOUT_SECONDS = 10.0

_MUTEXES: dict[str, threading.Lock] = {}
_MUTEXES_GUARD = threading.Lock()
_READS = ("SELECT", "PRAGMA", "EXPLAIN")


def mutex_for(path: str) -> threading.Lock:
    """The process-wide write mutex of the SQLite database at ``path``."""
    with _MUTEXES_GUARD:
        m = _MUTEXES.get(path)
        if m is None:
            m = _MUTEXES[path] = threading.Lock()
        return m


def _writes(sql: str) -> bool:
    head = sql.lstrip()[:7].upper()
    return not head.startswith(_READS)


class SerialisedCursor(sqlite3.Cursor):
    """A cursor whose statements take the connection's write mutex when they may write."""

    connection: SerialisedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> SerialisedCursor:  # type: ignore[override]
        conn = self.connection
        conn._enter(sql)
        try:
            return super().execute(sql, parameters)  # type: ignore[return-value]
        finally:
            conn._settle()

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> SerialisedCursor:  # type: ignore[override]
        conn = self.connection
        conn._enter(sql)
        try:
            return super().executemany(sql, seq_of_parameters)  # type: ignore[return-value]
        finally:
            conn._settle()

    def executescript(self, sql_script: str, /) -> SerialisedCursor:  # type: ignore[override]
        conn = self.connection
        conn._enter("SCRIPT")
        try:
            return super().executescript(sql_script)  # type: ignore[return-value]
        finally:
            conn._settle()


class SerialisedConnection(sqlite3.Connection):
    """A pysqlite connection that holds its file's write mutex for the length of a write
    transaction. Made by ``sqlite3.connect(..., factory=SerialisedConnection)``; the mutex is found
    by the database's path."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        path = str(database)
        memory = path in ("", ":memory:") or path.startswith("file::memory:")
        self._mutex: threading.Lock | None = None if memory else mutex_for(os.path.abspath(path))
        self._holds = False

    def _enter(self, sql: str) -> None:
        if self._mutex is None or self._holds or not _writes(sql):
            return
        if self._mutex.acquire(timeout=BUSY_TIMEOUT_SECONDS):
            self._holds = True

    def _settle(self) -> None:
        """Give the mutex back once no transaction is open (it ended, or the statement ran alone)."""
        if self._holds and not self.in_transaction:
            self._holds = False
            self._mutex.release()  # type: ignore[union-attr]

    def cursor(self, factory: Any = SerialisedCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:  # type: ignore[override]
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Any:  # type: ignore[override]
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._settle()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._settle()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holds:
                self._holds = False
                self._mutex.release()  # type: ignore[union-attr]
