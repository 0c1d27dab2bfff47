"""The single writer: every write to the stores goes through one thread, in group commits.

Tracking requests hand their validated events to ``Writer.submit_events`` and wait on the returned
future; the writer gathers what has arrived (up to ``group_commit_max_events`` or
``group_commit_wait_ms``), resolves identities in one operational-store transaction, appends the
events to the analytical store in one DuckDB transaction, and only then completes the futures. So
an acknowledgement always means the event is durable, and many requests share one commit.

Other writes (imports, unmerges) are submitted as commands and run on the same thread, between
group commits, so DuckDB has exactly one writer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from goldkey.collect.tracking import TrackedEvent, micros_to_datetime, now_micros
from goldkey.core.clock import as_utc
from goldkey.core.errors import Overloaded
from goldkey.identity.graph import (
    GROUPS,
    IdentityGraph,
    UnitOfWork,
    _merge_recent,
    executemany,
    fetch_in,
    join_group,
    merged_attributes,
    names_only,
    ts_param,
)
from goldkey.identity.normalize import normalize_identifier
from goldkey.ops.metrics import METRICS
from goldkey.store.analytical import EVENT_SCHEMA, AnalyticalStore
from goldkey.store.operational import profiles

log = logging.getLogger(__name__)

_US_TS = pa.timestamp("us", tz="UTC")
# DuckDB's automatic checkpoint would run inside an acknowledged commit and stall every waiting
# request; the writer checkpoints when idle instead, or when the WAL grows past this size.
IDLE_CHECKPOINT_SECONDS = 2.0
# the longest the writer waits for more requests before a group commit (see Writer._gather)
MAX_GATHER_SECONDS = 0.010
GATHER_ENOUGH_EVENTS = 1_000
FORCED_CHECKPOINT_WAL_BYTES = 256 * 1024 * 1024
WAL_CHECK_SECONDS = 1.0  # how often the writer looks at the WAL's size while busy


@dataclass
class IngestResult:
    """What happened to the events of one request."""

    accepted: int = 0
    duplicates: int = 0


@dataclass
class _EventItem:
    workspace_id: str
    events: list[TrackedEvent]
    source: str
    future: Future[IngestResult] | None = field(default_factory=Future)
    afuture: asyncio.Future[IngestResult] | None = None  # completed on its event loop
    loop: asyncio.AbstractEventLoop | None = None
    # the event-log columns of ``events`` (``event_table``), built by a collector process
    columns: pa.Table | None = None

    def settle(self, result: IngestResult | None, error: BaseException | None, later: dict[Any, list[Any]]) -> None:
        """Complete the waiting request (asyncio futures are gathered per loop in ``later``)."""
        if self.afuture is not None:
            later.setdefault(self.loop, []).append((self.afuture, result, error))
        elif self.future is not None:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]


def _settle_async(pairs: list[tuple[asyncio.Future[IngestResult], IngestResult | None, BaseException | None]]) -> None:
    for fut, result, error in pairs:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]


@dataclass
class _CommandItem:
    fn: Callable[[WriteContext], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class WriteContext:
    """What a command running on the writer thread may use."""

    engine: sa.Engine
    analytical: AnalyticalStore
    graph: IdentityGraph
    writer: Writer


class DedupeWindow:
    """messageIds seen recently, per workspace, for de-duplication (Segment's look-back window)."""

    def __init__(self, hours: int, max_keys: int = 50_000_000) -> None:
        self.window_us = hours * 3_600_000_000
        self.max_keys = max_keys
        self._seen: set[int] = set()
        self._by_time: deque[tuple[int, list[int]]] = deque()

    @staticmethod
    def key(workspace_id: str, message_id: str) -> int:
        return hash((workspace_id, message_id))

    def __contains__(self, k: int) -> bool:
        return k in self._seen

    def add_many(self, at_us: int, keys: list[int]) -> None:
        self._seen.update(keys)
        self._by_time.append((at_us, keys))
        cutoff = at_us - self.window_us
        # bounded by time and, under a sustained flood, by memory: oldest ids are forgotten first
        while self._by_time and (self._by_time[0][0] < cutoff or len(self._seen) > self.max_keys):
            _, old = self._by_time.popleft()
            self._seen.difference_update(old)

    def __len__(self) -> int:
        return len(self._seen)


class Writer:
    """The one thread that writes both stores. Start with ``start()``, stop with ``stop()``."""

    def __init__(
        self,
        engine: sa.Engine,
        analytical: AnalyticalStore,
        graph: IdentityGraph,
        *,
        queue_max_events: int,
        batch_max_events: int,
        wait_ms: float,
        dedupe_hours: int,
        recent_keep: int,
    ) -> None:
        self.engine = engine
        self.analytical = analytical
        self.graph = graph
        self.queue_max_events = queue_max_events
        self.batch_max_events = batch_max_events
        self.wait_s = wait_ms / 1000
        self.recent_keep = recent_keep
        self.dedupe = DedupeWindow(dedupe_hours)
        self._queue: deque[_EventItem | _CommandItem] = deque()
        self._queued_events = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.last_commit_at: float | None = None
        self._last_commit_s = 0.0  # duration of the last group commit
        self._idle = False  # the writer waits for work (and must be woken), under _cond
        self._next_wal_check = 0.0
        self._dirty = False
        self._map_stale = False
        self.last_error: str | None = None
        # when the group commits started failing with none succeeding since (None while they work):
        # the stores answer a SELECT but cannot take writes (a full disk, a read-only file)
        self.failing_since: float | None = None
        # called on the writer thread after each durable group commit with the stored
        # (workspace_id, profile_id, event) triples; must be quick (hand work to another thread)
        self.listeners: list[Callable[[list[tuple[str, str, TrackedEvent]]], None]] = []
        # the same, called as soon as the operational transaction has committed, before the events
        # are appended to the analytical store (~10 ms of DuckDB on the commit path): for listeners
        # that read only the operational store (consent, real-time triggers without event-history
        # conditions). If the append then fails, the requests are refused and their retry is
        # notified again; a listener here must tolerate that.
        self.early_listeners: list[Callable[[list[tuple[str, str, TrackedEvent]]], None]] = []

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Load the de-duplication window from the event log and start the writer thread."""
        self._load_dedupe()
        self._thread = threading.Thread(target=self._run, name="goldkey-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish queued work, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=60)

    def _load_dedupe(self) -> None:
        since = now_micros() - self.dedupe.window_us
        cur = self.analytical.cursor()
        try:
            # minute by minute, each minute's ids stamped with its end: an id is remembered for the
            # window from when it was received (up to a minute more), not from this restart
            tbl = cur.sql(
                "SELECT workspace_id, message_id, epoch_us(received_at) // 60000000 AS minute FROM events "
                "WHERE received_at >= make_timestamp(?::BIGINT) ORDER BY minute",
                params=[since],
            ).to_arrow_table()
        finally:
            cur.close()
        key = DedupeWindow.key
        minutes = tbl.column(2).to_pylist()
        keys = [key(w, m) for w, m in zip(tbl.column(0).to_pylist(), tbl.column(1).to_pylist(), strict=True)]
        lo = 0
        for hi in range(1, len(keys) + 1):
            if hi == len(keys) or minutes[hi] != minutes[lo]:
                self.dedupe.add_many((minutes[lo] + 1) * 60_000_000, keys[lo:hi])
                lo = hi

    @property
    def queue_depth(self) -> int:
        """Events waiting for the writer."""
        return self._queued_events

    # -- submission -------------------------------------------------------------------------
    def submit_events(
        self, workspace_id: str, events: list[TrackedEvent], source: str = "tracking",
        columns: pa.Table | None = None,
    ) -> Future[IngestResult]:
        """Queue events for the next group commit; the future completes once they are durable.
        ``columns``: their event-log columns already built (``event_table``; a collector process
        builds them, so the writer does not).

        Raises Overloaded (nothing queued) when the queue is full.
        """
        if columns is not None and columns.num_rows != len(events):
            raise ValueError(f"{columns.num_rows} event-log rows for {len(events)} events")
        item = _EventItem(workspace_id, events, source, columns=columns)
        self._enqueue(item)
        assert item.future is not None
        return item.future

    def submit_events_async(
        self, workspace_id: str, events: list[TrackedEvent], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[IngestResult]:
        """Like ``submit_events`` for a caller on ``loop``: the asyncio future completes there once
        the events are durable (one wake-up of the loop per group commit, not per request)."""
        fut: asyncio.Future[IngestResult] = loop.create_future()
        self._enqueue(_EventItem(workspace_id, events, "tracking", None, fut, loop))
        return fut

    def _enqueue(self, item: _EventItem) -> None:
        events = item.events
        with self._cond:
            if self._stopping:
                raise Overloaded("server is shutting down", retry_after=5)
            if self._queued_events + len(events) > self.queue_max_events and self._queued_events > 0:
                METRICS.rejected_overload.inc(len(events))
                raise Overloaded(
                    f"ingestion queue full ({self._queued_events} events waiting); retry shortly", retry_after=1
                )
            self._queue.append(item)
            self._queued_events += len(events)
            METRICS.queue_depth.set(self._queued_events)
            # while gathering, the writer wakes at its deadline anyway: waking it for every
            # request would only make it contend for the GIL with the requests' event loop
            if self._idle or self._queued_events >= GATHER_ENOUGH_EVENTS:
                self._cond.notify()

    def submit_command(self, fn: Callable[[WriteContext], Any]) -> Future[Any]:
        """Run ``fn(context)`` on the writer thread; return a future of its result.

        Raises Overloaded when the writer is stopping.
        """
        item = _CommandItem(fn)
        with self._cond:
            if self._stopping:
                raise Overloaded("server is shutting down", retry_after=5)
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def run_command(self, fn: Callable[[WriteContext], Any], timeout: float | None = None) -> Any:
        """Submit a command and wait for its result (re-raising its error)."""
        return self.submit_command(fn).result(timeout=timeout)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        ctx = WriteContext(self.engine, self.analytical, self.graph, self)
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._idle = True
                    try:
                        woken = self._cond.wait(timeout=IDLE_CHECKPOINT_SECONDS)
                    finally:
                        self._idle = False
                    if not woken and self._dirty:
                        break  # idle: fold the WAL into the file while nobody waits on a commit
                if not self._queue and self._stopping:
                    return
                head = self._queue[0] if self._queue else None
            if head is None:
                self._checkpoint()
                continue
            now = time.monotonic()
            if self._dirty and now >= self._next_wal_check:  # a stat() per commit costs a GIL round trip
                self._next_wal_check = now + WAL_CHECK_SECONDS
                if self.analytical.wal_bytes() > FORCED_CHECKPOINT_WAL_BYTES:
                    self._checkpoint()  # never busy enough to let the WAL (and recovery time) grow unbounded
            if isinstance(head, _CommandItem):
                with self._cond:
                    self._queue.popleft()
                try:
                    head.future.set_result(head.fn(ctx))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    self.graph.invalidate()
                    head.future.set_exception(exc)
                continue
            batch = self._gather()
            self._commit_events(batch)

    def _gather(self) -> list[_EventItem]:
        """Take queued event requests for one group commit, waiting up to the gathering window
        for more. The window grows with the last commit's duration (up to ``MAX_GATHER_SECONDS``):
        a commit's fixed costs (two transactions, a DuckDB insert: milliseconds even for one
        event) are then shared by more requests instead of being paid again for a handful."""
        batch: list[_EventItem] = []
        n = 0
        wait = max(self.wait_s, min(MAX_GATHER_SECONDS, 0.5 * self._last_commit_s))
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                while self._queue and isinstance(self._queue[0], _EventItem) and n < self.batch_max_events:
                    item = self._queue.popleft()
                    assert isinstance(item, _EventItem)
                    batch.append(item)
                    n += len(item.events)
                if n >= self.batch_max_events or (self._queue and isinstance(self._queue[0], _CommandItem)):
                    break
                if n >= GATHER_ENOUGH_EVENTS:
                    break  # the fixed costs are shared widely enough: waiting only adds latency
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
        return batch

    def _commit_events(self, batch: list[_EventItem]) -> None:
        t0 = time.perf_counter()
        n_events = sum(len(i.events) for i in batch)
        later: dict[Any, list[Any]] = {}
        try:
            outcomes: list[tuple[_EventItem, IngestResult | None, BaseException | None]]
            try:
                results = self._write_repairing(batch)
                outcomes = [(item, res, None) for item, res in zip(batch, results, strict=True)]
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                log.exception("group commit failed")
                self.last_error = repr(exc)
                METRICS.commit_failures.inc()
                if len(batch) == 1:
                    outcomes = [(batch[0], None, exc)]
                else:
                    # one bad request must not fail the others that shared its commit
                    outcomes = []
                    for item in batch:
                        try:
                            outcomes.append((item, self._write_repairing([item])[0], None))
                        except BaseException as item_exc:  # noqa: BLE001
                            outcomes.append((item, None, item_exc))
            done = [res for _, res, err in outcomes if err is None and res is not None]
            if done:
                self._dirty = True
                self.last_commit_at = time.time()
                self.failing_since = None
                METRICS.events_accepted.inc(sum(r.accepted for r in done))
                METRICS.events_duplicate.inc(sum(r.duplicates for r in done))
            elif self.failing_since is None and any(err is not None for _, _, err in outcomes):
                self.failing_since = time.time()
            for item, res, err in outcomes:
                item.settle(res, err, later)
        finally:
            for loop, pairs in later.items():
                loop.call_soon_threadsafe(_settle_async, pairs)
            with self._cond:
                self._queued_events -= n_events
                METRICS.queue_depth.set(self._queued_events)
            self._last_commit_s = time.perf_counter() - t0
            METRICS.commit_seconds.observe(self._last_commit_s)

    def _checkpoint(self) -> None:
        try:
            self.analytical.checkpoint()
            self._dirty = False
        except Exception:  # noqa: BLE001 - retried at the next idle moment
            log.exception("checkpoint failed")

    def mark_map_stale(self) -> None:
        """Rebuild the analytical profile map before the next commit (a merge committed in the
        operational store did not reach it)."""
        self._map_stale = True

    def _write_repairing(self, batch: list[_EventItem]) -> list[IngestResult]:
        """write_events, first repairing the profile map if an earlier commit failed between the
        operational store's commit and the analytical one."""
        if self._map_stale:
            sync_profile_map(self.engine, self.analytical)
            finish_unmerges(WriteContext(self.engine, self.analytical, self.graph, self))
            self._map_stale = False
        try:
            return self.write_events(batch)
        except BaseException:
            self.graph.invalidate()
            self._map_stale = True
            raise

    # -- the group commit -------------------------------------------------------------------
    def write_events(self, batch: list[_EventItem]) -> list[IngestResult]:
        """Resolve identities and durably store the events of ``batch``; return one result per item."""
        graph = self.graph
        seen = self.dedupe._seen
        results: list[IngestResult] = []
        keep: list[tuple[str, str, TrackedEvent]] = []
        batch_keys: list[int] = []
        in_batch: set[int] = set()
        kept_rows: list[tuple[_EventItem, list[int] | None]] = []  # per item, the rows kept (None: all)
        for item in batch:
            res = IngestResult()
            ws, source = item.workspace_id, item.source
            rows: list[int] | None = None
            for i, ev in enumerate(item.events):
                k = hash((ws, ev.message_id))  # DedupeWindow.key, inlined: once per event
                if k in seen or k in in_batch:
                    res.duplicates += 1
                    if rows is None:
                        rows = list(range(i))
                    continue
                in_batch.add(k)
                batch_keys.append(k)
                keep.append((ws, source, ev))
                if rows is not None:
                    rows.append(i)
            res.accepted = len(item.events) - res.duplicates
            results.append(res)
            kept_rows.append((item, rows))
        if not keep:
            return results

        profile_ids: list[str] = []
        map_ops: list[tuple[str, str, Any, Any]] = []
        with self.engine.begin() as conn:
            uow = UnitOfWork(conn)
            # Events of one batch mostly repeat a few users' identifiers (an SDK batch is one
            # device's queue): normalise and resolve each distinct identifier set once, and an
            # event with the same identifiers as the one before it reuses that one's answers
            # without even building a lookup key.
            norm_memo: dict[Any, list[tuple[str, str]]] = {}
            normalised: list[list[tuple[str, str]]] = []
            wanted: set[tuple[str, str, str]] = set()
            custom_of = {ws: graph.custom_identifiers(ws) for ws in {w for w, _, _ in keep}}
            last_ws: str | None = None
            last_raw: Any = None
            ids: list[tuple[str, str]] = []
            for ws, _, ev in keep:
                raw = ev.identifiers
                custom = custom_of[ws]
                if custom and ev.id_traits:
                    raw = raw + [(name, src[t]) for src in ev.id_traits for name, t in custom
                                 if src.get(t) not in (None, "")]
                if raw != last_raw or ws != last_ws:
                    try:
                        mkey: Any = (ws, *raw)
                        hit = norm_memo.get(mkey)
                    except TypeError:  # an unhashable trait value: not memoised
                        mkey, hit = None, None
                    if hit is None:
                        hit = graph.normalised(ws, raw)
                        if mkey is not None:
                            norm_memo[mkey] = hit
                        wanted.update((ws, t, v) for t, v in hit)
                    ids, last_raw, last_ws = hit, raw, ws
                normalised.append(ids)
            graph.prefetch(conn, wanted)
            pid_memo: dict[Any, str] = {}
            merges_seen = 0
            deltas = uow.deltas
            last_ids: Any = None
            pid = ""
            d = None
            for (ws, source, ev), ids in zip(keep, normalised, strict=True):
                if ev.type == "alias" and ev.previous_id:
                    at = micros_to_datetime(ev.seen_at)
                    pid = graph.resolve(uow, ws, ids, at, source, _first_seen_context(ev))
                    pid = graph.alias(uow, ws, pid, ev.previous_id, at, source)
                    last_ids = None
                    d = deltas.get(pid) or uow.delta(pid)
                elif ids is not last_ids or ws != last_ws:
                    rkey = (ws, *ids)
                    pid = pid_memo.get(rkey)  # type: ignore[assignment]
                    if pid is None:
                        # a returning user's identifiers are all cached with one owner: skip
                        # building the first-seen context that only a new profile needs
                        pid = graph.known_owner(ws, ids) or graph.resolve(
                            uow, ws, ids, micros_to_datetime(ev.seen_at), source, _first_seen_context(ev)
                        )
                        pid_memo[rkey] = pid
                    last_ids, last_ws = ids, ws
                    d = deltas.get(pid) or uow.delta(pid)
                if len(uow.merged) != merges_seen:  # a merge moved profiles: forget resolved sets
                    merges_seen = len(uow.merged)
                    pid_memo.clear()
                    last_ids = None
                    d = deltas.get(pid) or uow.delta(pid)
                assert d is not None
                profile_ids.append(pid)
                seen = ev.seen_at
                if d.last_seen is None or seen > d.last_seen:
                    d.last_seen = seen
                if d.first_seen is None or seen < d.first_seen:
                    d.first_seen, d.first_event = seen, (ev, source)
                if ev.type == "identify" and ev.traits:
                    d.attributes.update(ev.traits)
                    # consent is a decision, not an attribute: the consent listener records it
                    # (newest decision wins, audited); a copy here would go stale at the next change
                    d.attributes.pop("consent", None)
                    for key in ("phone", "email"):
                        if key in ev.traits:
                            norm = normalize_identifier(key, ev.traits[key], graph.region)
                            if norm is not None:
                                d.attributes[key] = norm
                elif ev.type == "group" and ev.group_id:
                    groups = d.attributes.setdefault(GROUPS, {})
                    groups[ev.group_id] = join_group(groups.get(ev.group_id), ev.traits)
                d.recent.append(ev)
            # Each event keeps the profile it resolved to when it arrived, even if that profile
            # was merged later in this batch: the profile map resolves it while the merge stands,
            # and an undo gives the event back to the profile it came from.
            graph.flush(uow)
            self._apply_deltas(conn, uow)
            map_ops = uow.map_ops
        stored = [(ws, pid, ev) for (ws, _, ev), pid in zip(keep, profile_ids, strict=True)]
        # the operational commit is done: profiles, identities and consent state are final, so what
        # decides on them alone starts now, while the events are appended to the event log
        self._notify(self.early_listeners, stored)
        self._append_events(keep, profile_ids, map_ops, kept_rows)
        self.dedupe.add_many(now_micros(), batch_keys)
        self._notify(self.listeners, stored)
        return results

    @staticmethod
    def _notify(listeners: list[Callable[[list[tuple[str, str, TrackedEvent]]], None]],
                stored: list[tuple[str, str, TrackedEvent]]) -> None:
        for listener in listeners:
            try:
                listener(stored)
            except Exception:  # a listener never fails a commit that is already durable
                log.exception("commit listener failed")

    def _apply_deltas(self, conn: sa.Connection, uow: UnitOfWork) -> None:
        """Fold the unit's per-profile changes (recent events, attributes, last seen) into the
        profile rows: one read and one update statement per chunk of profiles.

        Statements run on the DBAPI cursor (as the identity graph's bulk writes do): SQLAlchemy's
        per-row parameter processing cost more than SQLite's work here, for every profile of
        every group commit. The attributes JSON is parsed only when this unit changes it.
        """
        if not uow.deltas:
            return
        ids = list(uow.deltas)
        current: dict[str, tuple[str, str, Any]] = {
            pid: (attrs, recent, first)
            for pid, attrs, recent, first in fetch_in(
                conn,
                "SELECT profile_id, attributes, recent_events, first_seen_at FROM profiles WHERE profile_id IN ({in})",
                [],
                ids,
            )
        }
        ts = ts_param(conn)
        loads, dumps = orjson.loads, orjson.dumps
        keep = self.recent_keep
        rows = []
        for pid, d in uow.deltas.items():
            attrs_raw, recent_raw, first_raw = current[pid]
            first: tuple[Any, Any, Any] = (None, None, None)
            if d.first_seen is not None:
                # an event older than the profile's first-seen time (an offline queue, a batch out of
                # order): the profile was first seen then, there; as a text in SQLite's one format, or
                # an aware datetime from PostgreSQL, compared as such. In the same statement: a second
                # one rewrote the wide row again (a tenth more CPU per /v1/track request when events
                # arrive out of order, as the ingest benchmark's do)
                at = ts(micros_to_datetime(d.first_seen))
                if first_raw is not None and at < first_raw:
                    ev, source = d.first_event
                    first = (at, source, dumps(_first_seen_context(ev)).decode())
            newest = d.recent if len(d.recent) <= keep else sorted(d.recent, key=_ts, reverse=True)[:keep]
            fresh = [_compact(ev, micros_to_datetime(ev.timestamp)) for ev in newest]
            recent = _merge_recent(loads(recent_raw), fresh, keep)
            if d.attributes:
                attrs_raw = dumps(merged_attributes(loads(attrs_raw), d.attributes)).decode()
            ls = ts(micros_to_datetime(d.last_seen)) if d.last_seen is not None else None
            rows.append((attrs_raw, dumps(recent).decode(), ls, ls, *first, pid))
        # last_seen_at only moves forward (a late event never makes a profile look older); first seen
        # only moves back (NULL: unchanged)
        executemany(
            conn,
            "UPDATE profiles SET attributes = ?, recent_events = ?, last_seen_at = CASE WHEN last_seen_at < ? "
            "THEN ? ELSE last_seen_at END, first_seen_at = COALESCE(?, first_seen_at), "
            "first_seen_source = COALESCE(?, first_seen_source), first_seen_context = COALESCE(?, first_seen_context) "
            "WHERE profile_id = ?",
            rows,
        )

    def _append_events(
        self, keep: list[tuple[str, str, TrackedEvent]], profile_ids: list[str], map_ops: list[Any],
        kept_rows: list[tuple[_EventItem, list[int] | None]],
    ) -> None:
        """Append the kept events to the event log (with the profile each resolved to) and mirror
        the unit's merges, in one DuckDB transaction. Items that came with their columns built
        (a collector's) give their kept rows; the others' are built here, one table for all."""
        if all(item.columns is None for item, _ in kept_rows):
            table = event_table(keep)
        else:
            parts: list[pa.Table] = []
            pending: list[tuple[str, str, TrackedEvent]] = []
            for item, rows in kept_rows:
                if item.columns is None:
                    evs = item.events if rows is None else [item.events[i] for i in rows]
                    pending += [(item.workspace_id, item.source, e) for e in evs]
                    continue
                if pending:
                    parts.append(event_table(pending))
                    pending = []
                if rows is None:
                    parts.append(item.columns)
                elif rows:
                    parts.append(item.columns.take(pa.array(rows, pa.int32())))
            if pending:
                parts.append(event_table(pending))
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        table = table.add_column(_PROFILE_AT, EVENT_SCHEMA.field(_PROFILE_AT), pa.array(profile_ids, pa.string()))
        with self.analytical.transaction() as con:
            self.analytical.append("events", table, con)
            apply_map_ops(con, map_ops)


_PROFILE_AT = EVENT_SCHEMA.get_field_index("profile_id")
_NO_PROFILE = pa.schema([f for f in EVENT_SCHEMA if f.name != "profile_id"])


def event_table(keep: list[tuple[str, str, TrackedEvent]]) -> pa.Table:
    """The event-log columns of ``(workspace, source, event)`` rows, without ``profile_id`` (the
    writer adds it once identities are resolved): what the writer builds for the events it takes,
    and a collector process for the events it hands over."""
    dumps = orjson.dumps
    evs = [e for _, _, e in keep]
    n = len(evs)
    string = pa.string()
    binary = pa.binary()

    def text(values: list[Any]) -> pa.Array:
        return pa.array(values, string)

    def json_text(values: list[bytes | None]) -> pa.Array:
        # orjson's output is valid UTF-8: taken as bytes and viewed as strings, which skips
        # the per-value UTF-8 check a string conversion makes (4x cheaper), and never decoded
        return pa.array(values, binary).view(string)

    def stamps(values: list[Any]) -> pa.Array:
        return pa.array(values, _US_TS)  # epoch microseconds taken as they are, no cast

    def same_or_each(values: list[str]) -> pa.Array:
        # a group commit is mostly one workspace and one source: one value repeated
        first = values[0]
        if values.count(first) == n:
            return pa.repeat(pa.scalar(first, string), n)
        return text(values)

    return pa.Table.from_arrays(
        [
            same_or_each([w for w, _, _ in keep]),
            text([e.message_id for e in evs]),
            text([e.type for e in evs]),
            text([e.event for e in evs]),
            text([e.name for e in evs]),
            text([e.user_id for e in evs]),
            text([e.anonymous_id for e in evs]),
            text([e.group_id for e in evs]),
            text([e.previous_id for e in evs]),
            stamps([e.timestamp for e in evs]),
            stamps([e.original_timestamp for e in evs]),
            stamps([e.sent_at for e in evs]),
            stamps([e.received_at for e in evs]),
            json_text([dumps(e.properties) for e in evs]),
            json_text([dumps(e.traits) if e.traits else None for e in evs]),
            json_text([dumps(e.context) for e in evs]),
            same_or_each([s for _, s, _ in keep]),
        ],
        schema=_NO_PROFILE,
    )


def apply_map_ops(con: Any, ops: list[tuple[str, str, Any, Any]]) -> None:
    """Mirror merges and unmerges into the analytical store's profile map (and event owners)."""
    for op, ws, a, b in ops:
        if op == "merge":
            con.execute(
                "UPDATE profile_map SET canonical_id = ? WHERE workspace_id = ? AND canonical_id = ?", [b, ws, a]
            )
            con.execute("DELETE FROM profile_map WHERE workspace_id = ? AND profile_id = ?", [ws, a])
            con.execute("INSERT INTO profile_map VALUES (?, ?, ?)", [ws, a, b])
        elif op == "unmerge":
            loser, winner, subtree = a["loser"], a["winner"], a["subtree"]
            con.execute(
                "DELETE FROM profile_map WHERE workspace_id = ? AND profile_id IN (SELECT unnest(?::VARCHAR[]))",
                [ws, subtree],
            )
            for pid in subtree:
                if pid != loser:
                    con.execute("INSERT INTO profile_map VALUES (?, ?, ?)", [ws, pid, loser])
            # events the loser's identifiers sent after the merge were written to the winner; so were
            # those of the merge's own request or group commit (received before the merge was
            # recorded) that carry only the loser's ids: without the merge they were the loser's
            uids = [v for t, v in a["identities"] if t == "user_id"]
            aids = [v for t, v in a["identities"] if t == "anonymous_id"]
            kept = a.get("winner_identities", [])
            w_uids = [v for t, v in kept if t == "user_id"]
            w_aids = [v for t, v in kept if t == "anonymous_id"]
            # After the merge, userId decides (the identifier of highest priority): an event naming the
            # loser's user_id goes back, one naming only the loser's anonymous_id goes back unless a
            # userId says whose it is (a signed-in survivor on the loser's device keeps its purchase)
            con.execute(
                """UPDATE events SET profile_id = ? WHERE workspace_id = ? AND profile_id = ?
                   AND (user_id IN (SELECT unnest(?::VARCHAR[])) OR anonymous_id IN (SELECT unnest(?::VARCHAR[])))
                   AND ((received_at >= ?
                         AND (user_id IN (SELECT unnest(?::VARCHAR[])) OR user_id IS NULL))
                        OR (received_at >= ? - INTERVAL 10 MINUTE
                            AND coalesce(user_id NOT IN (SELECT unnest(?::VARCHAR[])), true)
                            AND coalesce(anonymous_id NOT IN (SELECT unnest(?::VARCHAR[])), true)))""",
                [loser, ws, winner, uids, aids, a["since"], uids, a["since"], w_uids, w_aids],
            )
            # orders imported while the merge stood that named the loser's identifiers (and none the
            # winner keeps) were the loser's
            moved, kept_set = {tuple(x) for x in a["identities"]}, {tuple(x) for x in kept}
            back = [oid for oid, named in con.execute(
                "SELECT order_id, identifiers FROM orders WHERE workspace_id = ? AND profile_id = ? "
                "AND identifiers IS NOT NULL", [ws, winner]).fetchall()
                if names_only(named, moved, kept_set)]
            if back:
                con.execute("UPDATE orders SET profile_id = ? WHERE workspace_id = ? AND profile_id = ? "
                            "AND order_id IN (SELECT unnest(?::VARCHAR[]))", [loser, ws, winner, back])


def _follow(merged: list[tuple[str, str]]) -> dict[str, str]:
    parent = {loser: winner for winner, loser in merged}
    out = {}
    for p in parent:
        q = p
        while q in parent:
            q = parent[q]
        out[p] = q
    return out


def _ts(ev: TrackedEvent) -> int:
    return ev.timestamp


def compact_event(
    message_id: str, at: datetime, etype: str, name: str | None, properties: dict[str, Any]
) -> dict[str, Any]:
    """Return an event as a profile's recent-events list keeps it (at most 12 properties)."""
    if len(properties) > 12:
        properties = dict(list(properties.items())[:12])
    return {"message_id": message_id, "ts": at.isoformat(), "type": etype, "event": name, "properties": properties}


def _compact(ev: TrackedEvent, at: datetime) -> dict[str, Any]:
    return compact_event(ev.message_id, at, ev.type, ev.event or ev.name, ev.properties)


def _first_seen_context(ev: TrackedEvent) -> dict[str, Any]:
    return _context_fields(ev.context)


def _context_fields(c: dict[str, Any]) -> dict[str, Any]:
    """What a profile keeps of the context of the event it was first seen through."""
    out: dict[str, Any] = {}
    for k in ("ip", "locale", "userAgent"):
        if c.get(k):
            out[k] = c[k]
    for k in ("campaign", "library", "page", "location"):
        v = c.get(k)
        if isinstance(v, dict):
            out[k] = v
    return out


def rebuild_recent_events(ctx: WriteContext, conn: sa.Connection, ws: str, profile_ids: list[str]) -> None:
    """Recompute the recent-events list of live profiles from the event log (after an unmerge)."""
    keep = ctx.writer.recent_keep
    cur = ctx.analytical.cursor()
    try:
        for pid in profile_ids:
            rows = cur.execute(
                """SELECT message_id, "timestamp", type, coalesce(event, name), properties
                   FROM events_resolved WHERE workspace_id = ? AND canonical_id = ?
                   ORDER BY "timestamp" DESC LIMIT ?""",
                [ws, pid, keep],
            ).fetchall()
            recent = [
                compact_event(mid, ts, etype, name, orjson.loads(props) if props else {})
                for mid, ts, etype, name, props in rows
            ]
            conn.execute(
                profiles.update()
                .where(profiles.c.profile_id == pid)
                .values(recent_events=orjson.dumps(recent).decode())
            )
    finally:
        cur.close()


def finish_unmerges(ctx: WriteContext, merge_ids: list[str] | None = None) -> int:
    """Do the analytical side of undone merges (``merge_ids``, or every one still pending, in the
    order they were undone): the restored profile's events and orders go back to it, the profile map
    follows, both profiles' order summaries and timelines are recomputed; then the work is cleared
    from ``merges.analytical_pending``. Returns how many were done.

    The work is written in the undo's own operational transaction, so an analytical failure or a
    crash between the two stores leaves it there for the repair (the writer's next commit, or the
    next start) instead of losing it."""
    from goldkey.collect.importer import refresh_order_summaries
    from goldkey.store.operational import merges

    q = sa.select(merges.c.merge_id, merges.c.workspace_id, merges.c.analytical_pending).where(
        merges.c.analytical_pending.is_not(None))
    if merge_ids is not None:
        q = q.where(merges.c.merge_id.in_(merge_ids))
    with ctx.engine.connect() as conn:
        rows = conn.execute(q.order_by(merges.c.undone_at)).all()
    if not rows:
        return 0
    ops = []
    for r in rows:
        work = orjson.loads(r.analytical_pending)
        work["since"] = datetime.fromisoformat(work["since"])
        ops.append(("unmerge", r.workspace_id, work, None))
    with ctx.analytical.transaction() as con:
        apply_map_ops(con, ops)
    if merge_ids is None:  # a late repair: merges since then moved the map on; rebuild it from the truth
        sync_profile_map(ctx.engine, ctx.analytical)
    with ctx.engine.begin() as conn:
        for _, ws, work, _ in ops:
            pair = [work["winner"], work["loser"]]
            live = dict(conn.execute(sa.select(profiles.c.profile_id, profiles.c.canonical_id).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id.in_(pair))).all())
            now_live = sorted({live[p] for p in pair if p in live})
            refresh_order_summaries(ctx, conn, ws, now_live)
            rebuild_recent_events(ctx, conn, ws, now_live)
            _seen_from_events(ctx, conn, ws, now_live)
            _known_from_kept_records(ctx, conn, ws, now_live)
        conn.execute(merges.update().where(merges.c.merge_id.in_([r.merge_id for r in rows]))
                     .values(analytical_pending=None))
    return len(rows)


def _seen_from_events(ctx: WriteContext, conn: sa.Connection, ws: str, pids: list[str]) -> None:
    """After an undo, date each of the two profiles by its own events (one scan for both times):
    last seen at its latest, as the survivor no longer has the restored profile's later events; and a
    profile first seen through tracking at its earliest, as an older event of the merged-away
    customer received while the merge stood had moved the survivor's first sight back, and the
    restored profile's snapshot did not count its own. A first-seen time from an import (a
    registration date) is left as it is. An event counts as seen no later than it arrived, as on
    ingestion; Goldkey's own events (a model run's Tag Changed, stamped now) are no sight of the
    customer."""
    from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY

    p = profiles.c
    imported = {pid for pid, source in conn.execute(sa.select(p.profile_id, p.first_seen_source)
                                                    .where(p.profile_id.in_(pids)))
                if str(source or "").startswith("import:")}
    seen = 'least("timestamp", received_at)'
    for pid, last, first, source, context in ctx.analytical.query(
            f"SELECT canonical_id, max({seen}), min({seen}), arg_min(source, {seen}), arg_min(context, {seen}) "
            "FROM events_resolved WHERE workspace_id = ? AND canonical_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND NOT (type = 'track' AND event IN (SELECT unnest(?::VARCHAR[]))) GROUP BY 1",
            [ws, pids, list(NOT_CUSTOMER_ACTIVITY)]):
        values: dict[str, Any] = {"last_seen_at": last}
        if pid not in imported:
            values.update(first_seen_at=first, first_seen_source=source, first_seen_context=orjson.dumps(
                _context_fields(orjson.loads(context) if context else {})).decode())
        conn.execute(profiles.update().where(p.profile_id == pid).values(**values))


def _known_from_kept_records(ctx: WriteContext, conn: sa.Connection, ws: str, pids: list[str]) -> None:
    """After an undo, each of the two profiles is a known ("existing") customer when it holds an
    imported order or feedback record, first seen no later than its earliest one: the records went
    where the identifiers they named went, so the dates follow them (the undo itself keeps no
    first-seen time that came from such a record: it cannot tell whose it was)."""
    from goldkey.collect.importer import mark_known
    from goldkey.store.operational import feedback

    earliest: dict[str, tuple[datetime, str]] = {}
    for pid, at in ctx.analytical.query(
            "SELECT canonical_id, min(ordered_at) FROM orders_resolved WHERE workspace_id = ? "
            "AND canonical_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1", [ws, pids]):
        if at is not None:
            earliest[pid] = (as_utc(at), "import:orders")
    f, p = feedback.c, profiles.c
    for pid, at in conn.execute(
            sa.select(p.canonical_id, sa.func.min(f.created_at)).join(profiles, p.profile_id == f.profile_id)
            .where(f.workspace_id == ws, p.canonical_id.in_(pids)).group_by(p.canonical_id)).all():
        at = as_utc(at)
        if at is not None and (pid not in earliest or at < earliest[pid][0]):
            earliest[pid] = (at, "import:feedback")
    ts = ts_param(conn)
    mark_known(conn, {pid: (ts(at), source) for pid, (at, source) in earliest.items()})


def sync_profile_map(engine: sa.Engine, analytical: AnalyticalStore) -> None:
    """Rebuild the analytical profile map from the operational store (the source of truth), so a
    failure or crash between the two stores' commits never leaves events on a merged-away profile."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(profiles.c.workspace_id, profiles.c.profile_id, profiles.c.canonical_id).where(
                profiles.c.canonical_id != profiles.c.profile_id
            )
        ).all()
    with analytical.transaction() as con:
        analytical.rebuild_profile_map(con, [(r.workspace_id, r.profile_id, r.canonical_id) for r in rows])
