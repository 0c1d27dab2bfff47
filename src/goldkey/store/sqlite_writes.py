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

**Checkpoints off the commit path.** SQLite's automatic checkpoint runs inside the commit that
crosses 1,000 WAL pages: that writer copies pages into the database file and syncs both files before
its commit returns — on the ingestion path, tens of milliseconds now and then (the trigger latency
tail on disk). These connections turn the automatic checkpoint off, and a checkpointer thread per
database file runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own twice a second
after writes (passive: it never waits for or blocks a reader or writer). When the last connection
of the file closes, the checkpointer checkpoints once more and closes its own, so SQLite folds and
removes the WAL as it does for any last connection.

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


CHECKPOINT_SECONDS = 0.5
_CHECKPOINTERS: dict[str, _Checkpointer] = {}


class _Checkpointer:
    """The thread that checkpoints one database file's WAL while connections of it are open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.writes = 0  # write transactions ended since the last checkpoint (a hint, not exact)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        with _MUTEXES_GUARD:
            self.users += 1
            if self._thread is None or not self._thread.is_alive():
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="goldkey-sqlite-checkpoint", daemon=True)
                self._thread.start()

    def detach(self) -> None:
        with _MUTEXES_GUARD:
            self.users = max(0, self.users - 1)
            if self.users == 0:
                self._wake.set()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            while True:
                stop = self._wake.wait(CHECKPOINT_SECONDS)
                with _MUTEXES_GUARD:
                    if stop and self.users > 0:  # a connection came back meanwhile: carry on
                        self._wake.clear()
                        stop = False
                    busy, self.writes = self.writes, 0
                if busy or stop:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # tried again after the next writes
                if stop:
                    return
        finally:
            conn.close()


def _checkpointer_for(path: str) -> _Checkpointer:
    with _MUTEXES_GUARD:
        c = _CHECKPOINTERS.get(path)
        if c is None:
            c = _CHECKPOINTERS[path] = _Checkpointer(path)
        return c


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
        memory = path in ("", ":memory:") or path.startswith("file::memory:") or "mode=memory" in path
        self._holds = False
        self._mutex: threading.Lock | None = None
        self._checkpointer: _Checkpointer | None = None
        if not memory:
            full = os.path.abspath(path)
            self._mutex = mutex_for(full)
            super().execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
            self._checkpointer = _checkpointer_for(full)
            self._checkpointer.attach()

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
            self._checkpointer.writes += 1  # type: ignore[union-attr]

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
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                checkpointer.detach()
