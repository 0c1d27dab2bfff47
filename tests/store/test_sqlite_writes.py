"""The operational store's SQLite write mutex (store/sqlite_writes.py): write transactions of one
process queue on it instead of meeting SQLite's sleeping busy handler; reads never wait on it."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from goldkey.store.operational import create_operational_engine


def _engine(tmp_path: Path) -> sa.Engine:
    engine = create_operational_engine(f"sqlite:///{tmp_path / 'op.db'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        c.exec_driver_sql("INSERT INTO t VALUES ('a', 0)")
    return engine


def test_a_second_writer_waits_for_the_first_instead_of_failing(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []
    errors: list[BaseException] = []

    def first() -> None:
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE t SET v = v + 1 WHERE k = 'a'")
            holding.set()
            release.wait(10)
            order.append("first commits")

    def second() -> None:
        try:
            with engine.connect() as c:
                # without the mutex SQLite would answer "database is locked" at once: no busy wait here
                c.exec_driver_sql("PRAGMA busy_timeout = 0")
                c.exec_driver_sql("UPDATE t SET v = v + 10 WHERE k = 'a'")
                order.append("second wrote")
                c.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = threading.Thread(target=first)
    a.start()
    assert holding.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert b.is_alive(), "the second writer went ahead while the first held its transaction"
    # a read is not held up by the open write transaction
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT v FROM t WHERE k = 'a'").scalar() == 0
    release.set()
    a.join(10)
    b.join(10)
    assert not errors, errors
    assert order == ["first commits", "second wrote"]
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT v FROM t WHERE k = 'a'").scalar() == 11


def test_the_mutex_is_given_back_after_rollback_error_and_autocommit(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    # a transaction rolled back by an error
    try:
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE t SET v = 5 WHERE k = 'a'")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    # a statement that fails before any transaction starts
    with engine.connect() as c:
        try:
            c.exec_driver_sql("INSERT INTO t VALUES ('a', 1)")  # duplicate key
        except sa.exc.IntegrityError:
            c.rollback()
    # DDL outside a transaction (pysqlite runs it in autocommit)
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("CREATE TABLE u (x INTEGER)")
    finally:
        raw.close()

    done = threading.Event()

    def writer() -> None:
        with engine.connect() as c:
            c.exec_driver_sql("PRAGMA busy_timeout = 0")
            c.exec_driver_sql("UPDATE t SET v = 7 WHERE k = 'a'")
            c.commit()
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    assert done.wait(10), "a writer waited on a mutex nobody holds"
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT v FROM t WHERE k = 'a'").scalar() == 7


def test_checkpoints_run_beside_the_commits_not_inside_them(tmp_path: Path) -> None:
    """A commit never folds the WAL into the database (that would sync both files inside it): the
    file's checkpointer thread does it after the writes, and the last close removes the WAL."""
    import time

    engine = _engine(tmp_path)
    db = tmp_path / "op.db"
    wal = tmp_path / "op.db-wal"
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    size0 = db.stat().st_size
    with engine.begin() as c:  # ~4 MB: four times SQLite's automatic checkpoint threshold
        c.exec_driver_sql("CREATE TABLE big (k INTEGER PRIMARY KEY, v TEXT)")
        c.exec_driver_sql("WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 4000) "
                          "INSERT INTO big SELECT k, printf('%.1000c', 'x') FROM n")
    assert wal.stat().st_size > 4_000_000
    deadline = time.monotonic() + 10
    while db.stat().st_size < size0 + 4_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size >= size0 + 4_000_000, "the checkpointer did not fold the WAL into the file"
    engine.dispose()
    deadline = time.monotonic() + 10
    while wal.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not wal.exists(), "the last connection's close did not remove the WAL"
    with create_operational_engine(f"sqlite:///{db}").connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM big").scalar() == 4000
