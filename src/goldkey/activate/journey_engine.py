"""The journey runner: durable per-customer state machines in the operational store.

Every customer in a journey is one row of ``journey_states`` (journey, profile): the version they
entered, the entry number, the node they are at, a step counter, ``wake_at``. Every step taken is
one row of ``journey_steps`` keyed (journey, profile, entry, step), so a step can be recorded only
once; the state moves in the same transaction that records the step (the transactional-outbox idea,
as in durable workflow engines such as Temporal: the history is the truth and replays are no-ops).

One runner thread does everything, in rounds:

1. events the writer committed (``Writer.listeners``; the listener only queues) and Goldkey's own
   events (Tag Changed, Lifecycle Stage Changed, segment_entered, ...: written by model runs, tags
   and segments straight to the event log, heard through ``AnalyticalStore.own_event_listeners``
   once committed): an event that matches a journey's goal converts its customers (they exit as
   ``converted``, counted); one that matches a ``wait until`` ends that wait; one that matches an
   event entry admits the customer;
2. segment and trigger entries, read from ``segment_members`` / ``trigger_firings`` after the
   journey's ``entry_cursor`` (advanced in the same transaction as the admissions);
3. due customers (``status = 'active' and wake_at <= now``) in batches: pure steps (entry,
   condition, split, wait over, exit) are chained in memory up to the next effect or wait and
   written in one transaction; effects (send, update tag, webhook) run batched per node, then their
   steps and the states' moves are written in one transaction.

**Crash safety.** A crash before an effect's transaction repeats the effect on restart, and each
effect is made idempotent: a send's ``message_key`` is ``journey:<id>:v<version>:<node>:e<entry>``
and the message log is unique per (key, profile), so the repeat finds the message already reserved
(it is delivered if it was still queued, never sent twice); setting a tag to a value twice is the
same as once; a webhook is claimed in ``journey_steps`` (``running``) before the call, and a claim
found on restart is recorded as ``unknown`` and not called again (at most once, like the sender's
``sending`` rows). A crash after the transaction loses nothing: the state has moved.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from goldkey.activate.journeys import CompiledJourney, CompiledNode, JourneyService, compile_journey
from goldkey.activate.sender import Sender, SendRequest
from goldkey.audience.catalog import profile_value_select, profile_values
from goldkey.audience.common import load_events, load_profile_values, own_events_named
from goldkey.collect.tracking import micros_to_datetime
from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import GoldkeyError, InvalidInput
from goldkey.rules.memory import Event
from goldkey.rules.model import AttributeCondition, iter_nodes
from goldkey.store.operational import (
    journey_states,
    journey_steps,
    journeys,
    messages,
    profiles,
    segment_members,
    trigger_firings,
)

log = logging.getLogger(__name__)

J = journeys.c
S = journey_states.c
L = journey_steps.c
EFFECTS = frozenset({"send", "update_tag", "webhook"})
MAX_ATTEMPTS = 5
MAX_CHAIN = 1000  # pure steps per customer per round; the graph has no cycle without a wait


@dataclass
class State:
    """A customer's place in a journey, as read at the start of a round."""

    journey_id: str
    profile_id: str
    workspace_id: str
    version: int
    entry: int
    step: int
    node_id: str
    status: str
    signal: str | None
    attempt: int
    wake_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class StepRow:
    state: State
    step: int
    node: CompiledNode
    outcome: str
    next_node: str | None


def split_bucket(journey_id: str, node_id: str, profile_id: str) -> float:
    """A customer's deterministic position in [0, 1) for a random split (salted hash, as PostHog
    does for percentage rollouts): the same customer always lands in the same branch."""
    h = hashlib.blake2b(f"{journey_id}:{node_id}:{profile_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def choose_branch(node: CompiledNode, journey_id: str, profile_id: str) -> str:
    """The branch key of ``profile_id`` at a split node (proportional to the weights)."""
    branches = node.config.branches
    total = sum(b.weight for b in branches)
    x = split_bucket(journey_id, node.id, profile_id) * total
    acc = 0.0
    for b in branches:
        acc += b.weight
        if x < acc:
            return str(b.key)
    return str(branches[-1].key)


class JourneyEngine:
    """Runs published journeys: admissions, due steps, event wakes, goals."""

    def __init__(self, gk: Any, service: JourneyService, sender: Sender, *, batch: int = 2000,
                 interval: float = 1.0, http: httpx.Client | None = None) -> None:
        self.gk = gk
        self.engine: sa.Engine = gk.engine
        self.analytical = gk.analytical
        self.service = service
        self.sender = sender
        self.batch = batch
        self.interval = interval
        self.http = http or httpx.Client(follow_redirects=False)
        self._compiled: dict[tuple[str, int], CompiledJourney] = {}
        self._reach: dict[tuple[str, int], frozenset[str]] = {}
        self._interest: dict[str, list[tuple[str, int]]] = {}  # ws -> live (journey, version) with events
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[str, str, Event]] = queue.SimpleQueue()
        # own events, as the columns the analytical store announced: (ws, profile ids, names, properties, at)
        self._own: queue.SimpleQueue[tuple[str, Any, Any, Any, datetime]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded_at = 0.0
        self.after_effect: Callable[[str, Sequence[str]], None] | None = None  # crash tests hook in here
        self.steps = 0  # customer-steps taken by this process
        self.last_error: str | None = None
        service.on_change.append(self.reload)

    @classmethod
    def from_goldkey(cls, gk: Any, **kw: Any) -> JourneyEngine:
        service = getattr(gk, "journeys", None) or JourneyService.from_goldkey(gk)
        sender = getattr(gk, "sender", None) or Sender.from_goldkey(gk)
        return cls(gk, service, sender, **kw)

    # -- compiled journeys ------------------------------------------------------------------------
    def compiled(self, ws: str, jid: str, version: int) -> CompiledJourney:
        """The compiled version ``version`` of a journey (cached; versions never change)."""
        key = (jid, version)
        hit = self._compiled.get(key)
        if hit is None:
            data = self.service.version_definition(ws, jid, version)
            hit = self._compiled[key] = compile_journey(self.gk, ws, jid, version, data)
        return hit

    def reload(self) -> None:
        """Re-read which workspaces have live journeys (the listener queues their events only)."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(J.workspace_id, J.journey_id, J.version).where(
                J.status.in_(["active", "paused"]), J.version > 0)).all()
        interest: dict[str, list[tuple[str, int]]] = {}
        for ws, jid, v in rows:
            interest.setdefault(ws, []).append((jid, v))
        with self._lock:
            self._interest = interest
            self._loaded_at = time.monotonic()
        self._wake.set()

    # -- the writer listener ----------------------------------------------------------------------
    def attach(self, writer: Any) -> None:
        """Listen to the writer's durable commits and to Goldkey's own events."""
        writer.listeners.append(self._on_commit)
        analytical = self.analytical
        if analytical is not None and self._on_own_events not in analytical.own_event_listeners:
            analytical.own_event_listeners.append(self._on_own_events)

    def _on_own_events(self, ws: str, profile_ids: Any, events: Any, properties: Any, at: datetime) -> None:
        """Goldkey's own events, once committed to the event log (on the thread that wrote them,
        under the analytical store's write lock): only queued, for a workspace with live journeys;
        the runner thread keeps those a journey names and matches them. The columns are the ones
        the writer built for the log (Arrow arrays or fresh lists), never changed afterwards."""
        with self._lock:
            if ws not in self._interest:
                return
        if len(profile_ids):
            self._own.put((ws, profile_ids, events, properties, at))
            self._wake.set()

    def _on_commit(self, stored: list[tuple[str, str, Any]]) -> None:
        """On the writer thread: queue the events of workspaces with live journeys (never blocks)."""
        with self._lock:
            interest = self._interest
        if not interest:
            return
        queued = False
        for ws, pid, ev in stored:
            if ws in interest:
                self._events.put((ws, pid, Event(ev.type, ev.event, micros_to_datetime(ev.timestamp),
                                                 ev.properties or {}, ev.name)))
                queued = True
        if queued:
            self._wake.set()

    # -- the thread -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self.reload()
            self._thread = threading.Thread(target=self._run, name="goldkey-journeys", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:  # keep going: states are durable, the next round retries
                self.last_error = repr(exc)
                log.exception("journey round failed")

    def run_once(self, now: datetime | None = None, max_rounds: int = 1000) -> int:
        """One round: queued events, segment / trigger entries, then due customers until none is
        due. Returns the customer-steps taken."""
        now = as_utc(now) or utcnow()
        if time.monotonic() - self._loaded_at > 30:
            self.reload()
        n = self.handle_events(now)
        n += self.admit_polled(now)
        for _ in range(max_rounds):
            k = self.run_due(now)
            n += k
            if k == 0:
                break
        return n

    # -- events: goals, wait-until, event entries -------------------------------------------------
    def handle_events(self, now: datetime) -> int:
        """Process the events queued by the listener; returns the steps taken."""
        items: list[tuple[str, str, Event]] = []
        while True:
            try:
                items.append(self._events.get_nowait())
            except queue.Empty:
                break
        by_ws: dict[str, list[tuple[str, Event]]] = {}
        for ws, pid, ev in items:
            by_ws.setdefault(ws, []).append((pid, ev))
        n = 0
        for ws, evs in by_ws.items():
            n += self._inside_events(ws, evs, now)
            n += self._event_entries(ws, evs, now)
        while True:
            try:
                own = self._own.get_nowait()
            except queue.Empty:
                break
            for ws, evs in self._own_events(*own):
                n += self._inside_events(ws, evs, now)
                n += self._event_entries(ws, evs, now)
        return n

    def _listened(self, ws: str) -> set[str | None]:
        """The event names the workspace's live journeys match (entries, waits, goals); None when
        a clause names no event (every event is a candidate)."""
        with self._lock:
            live = list(self._interest.get(ws, ()))
        names: set[str | None] = set()
        for jid, version in live:
            try:
                cj = self.compiled(ws, jid, version)
            except GoldkeyError:
                continue
            for node in (cj.entry, cj.goal, *cj.waits_for_events):
                if node is not None and node.event is not None:
                    names.add(getattr(node.event.rule, "event", None))
        return names

    def _own_events(self, ws: str, profile_ids: Any, events: Any, properties: Any, at: datetime,
                    chunk: int = 5000) -> Iterator[tuple[str, list[tuple[str, Event]]]]:
        """The own events a live journey of ``ws`` names, as ``(ws, [(profile, Event)])`` in chunks
        (a model run can announce a million Tag Changed events; those no journey names are
        dropped first, :func:`goldkey.audience.common.own_events_named`)."""
        names = self._listened(ws)
        if not names:
            return
        cols = own_events_named(profile_ids, events, properties, names)
        loads = orjson.loads
        for lo in range(0, len(cols[0]), chunk):
            pids, evs, props = (c.slice(lo, chunk).to_pylist() for c in cols)
            yield ws, [(p, Event("track", e, at, loads(t) if t else {}, None))
                       for p, e, t in zip(pids, evs, props, strict=True)]

    def _inside_events(self, ws: str, evs: list[tuple[str, Event]], now: datetime) -> int:
        """Goals and wait-until for customers already inside a journey."""
        by_pid: dict[str, list[Event]] = {}
        for pid, ev in evs:
            by_pid.setdefault(pid, []).append(ev)
        states = self._load_states(sa.and_(S.workspace_id == ws, S.profile_id.in_(list(by_pid)),
                                           S.status.in_(["active", "waiting"])))
        converted: list[StepRow] = []
        woken: list[State] = []
        for st in states:
            try:
                cj = self.compiled(ws, st.journey_id, st.version)
            except GoldkeyError as exc:
                log.warning("journey %s v%s cannot run: %s", st.journey_id, st.version, exc)
                continue
            mine = by_pid[st.profile_id]
            if cj.goal is not None and _any_match(cj.goal, mine, now):
                converted.append(StepRow(st, st.step, cj.goal, "converted", None))
                continue
            node = cj.nodes.get(st.node_id)
            if st.status == "waiting" and node is not None and node.event is not None and _any_match(node, mine, now):
                woken.append(st)
        if converted:
            self._commit(converted, {id(r.state): ("converted", r.node.id, None) for r in converted}, now)
        if woken:
            with self.engine.begin() as c:
                c.execute(journey_states.update().where(
                    S.journey_id == sa.bindparam("j"), S.profile_id == sa.bindparam("p"),
                    S.step == sa.bindparam("s"), S.status == "waiting").values(
                    status="active", signal="event", wake_at=now, updated_at=now),
                    [{"j": s.journey_id, "p": s.profile_id, "s": s.step} for s in woken])
        return len(converted)

    def _event_entries(self, ws: str, evs: list[tuple[str, Event]], now: datetime) -> int:
        with self._lock:
            live = list(self._interest.get(ws, ()))
        n = 0
        for jid, version in live:
            if not self._is_active(jid):
                continue
            try:
                cj = self.compiled(ws, jid, version)
            except GoldkeyError as exc:
                log.warning("journey %s v%s cannot run: %s", jid, version, exc)
                continue
            if cj.entry.config.kind != "event":
                continue
            pids = list(dict.fromkeys(pid for pid, ev in evs if _any_match(cj.entry, [ev], now)))
            if pids:
                n += self.enter(cj, pids, now)
        return n

    def _is_active(self, jid: str) -> bool:
        with self.engine.connect() as c:
            return c.execute(sa.select(J.status).where(J.journey_id == jid)).scalar() == "active"

    # -- segment and trigger entries --------------------------------------------------------------
    def admit_polled(self, now: datetime) -> int:
        """Admit the customers who entered a journey's segment, or for whom its trigger fired,
        since the journey's cursor."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(J.workspace_id, J.journey_id, J.version, J.entry_cursor).where(
                J.status == "active", J.version > 0)).all()
        n = 0
        for ws, jid, version, cursor in rows:
            try:
                cj = self.compiled(ws, jid, version)
            except GoldkeyError as exc:
                log.warning("journey %s v%s cannot run: %s", jid, version, exc)
                continue
            kind = cj.entry.config.kind
            if kind == "event":
                continue
            if kind == "segment":
                M = segment_members.c
                q = sa.select(M.profile_id, M.entered_at).where(M.workspace_id == ws,
                                                                M.segment_id == cj.entry.config.segment_id)
                col = M.entered_at
            else:
                F = trigger_firings.c
                q = sa.select(F.profile_id, F.fired_at).where(F.workspace_id == ws,
                                                              F.trigger_id == cj.entry.config.trigger_id)
                col = F.fired_at
            if cursor is not None:
                q = q.where(col > cursor)
            with self.engine.connect() as c:
                found = c.execute(q.order_by(col).limit(50_000)).all()
            if not found:
                continue
            last = max(as_utc(r[1]) for r in found)
            n += self.enter(cj, list(dict.fromkeys(r[0] for r in found)), now, cursor=last)
        return n

    # -- entering ---------------------------------------------------------------------------------
    def enter(self, cj: CompiledJourney, pids: Sequence[str], now: datetime, cursor: datetime | None = None) -> int:
        """Admit ``pids`` (those matching the entry's profile condition, not inside already, and
        allowed by the re-entry rule) at the entry node; returns how many entered. ``cursor``
        advances the journey's entry cursor in the same transaction."""
        pids = self._entry_condition(cj, list(pids), now)
        jid, ws = cj.journey_id, cj.workspace_id
        re = cj.definition.re_entry
        entered = 0
        for k in range(0, max(len(pids), 1), 5000):
            chunk = pids[k : k + 5000]
            with self.engine.begin() as c:
                existing = {r.profile_id: r for r in c.execute(sa.select(
                    S.profile_id, S.entry, S.status, S.finished_at).where(
                    S.journey_id == jid, S.profile_id.in_(chunk)))} if chunk else {}
                new, again = [], []
                for p in chunk:
                    r = existing.get(p)
                    if r is None:
                        new.append(p)
                    elif r.status in ("exited", "converted") and _may_reenter(re.mode, re.days, r.finished_at, now):
                        again.append((p, r.entry + 1))
                first = cj.entry.next[None]
                status, wake = self._arrive(cj, first, now)
                if new:
                    bulk_insert(c, journey_states, [
                        {"journey_id": jid, "profile_id": p, "workspace_id": ws, "version": cj.version, "entry": 1,
                         "step": 1, "node_id": first, "status": status, "signal": None, "attempt": 0,
                         "entered_at": now, "wake_at": wake, "finished_at": None, "updated_at": now} for p in new])
                if again:
                    c.execute(journey_states.update().where(
                        S.journey_id == jid, S.profile_id == sa.bindparam("p")).values(
                        version=cj.version, entry=sa.bindparam("e"), step=1, node_id=first, status=status,
                        signal=None, attempt=0, entered_at=now, wake_at=wake, finished_at=None, updated_at=now),
                        [{"p": p, "e": e} for p, e in again])
                logs = [(p, 1) for p in new] + again
                if logs:
                    bulk_insert(c, journey_steps, [
                        {"journey_id": jid, "profile_id": p, "entry": e, "step": 0, "workspace_id": ws,
                         "version": cj.version, "node_id": cj.entry.id, "node_type": "entry", "status": "done",
                         "outcome": "entered", "next_node": first, "at": now} for p, e in logs])
                if cursor is not None and k + 5000 >= len(pids):
                    c.execute(journeys.update().where(J.journey_id == jid).values(entry_cursor=cursor))
                entered += len(logs)
        self.steps += entered
        return entered

    def _entry_condition(self, cj: CompiledJourney, pids: list[str], now: datetime) -> list[str]:
        node = cj.entry
        if node.rule is None or not pids:
            return pids
        values = load_profile_values(self.engine, cj.workspace_id, pids)
        events = load_events(self.analytical, cj.workspace_id, list(values)) if node.needs_history else {}
        pred = node.rule.at(now)
        return [p for p in pids if p in values and pred(values[p], events.get(p, ()))]

    def _arrive(self, cj: CompiledJourney, node_id: str, now: datetime) -> tuple[str, datetime | None]:
        """(status, wake_at) of a customer arriving at ``node_id``: a wait sets its clock."""
        node = cj.nodes[node_id]
        if node.type != "wait":
            return "active", now
        c = node.config
        if c.duration is not None:
            return "active", now + timedelta(seconds=c.duration.total_seconds)
        return "waiting", now + timedelta(seconds=c.timeout.total_seconds)

    # -- due customers ----------------------------------------------------------------------------
    def _load_states(self, where: Any, limit: int | None = None, order: bool = False) -> list[State]:
        q = sa.select(S.journey_id, S.profile_id, S.workspace_id, S.version, S.entry, S.step, S.node_id, S.status,
                      S.signal, S.attempt, S.wake_at, S.finished_at).where(where)
        if order:
            q = q.order_by(S.wake_at)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as c:
            return [State(*r) for r in c.execute(q)]

    def run_due(self, now: datetime) -> int:
        """Advance up to ``batch`` due customers of active journeys; returns the steps taken."""
        active = sa.select(J.journey_id).where(J.status == "active").scalar_subquery()
        states = self._load_states(sa.and_(S.status.in_(["active", "waiting"]), S.wake_at <= now,
                                           S.journey_id.in_(active)),
                                   limit=self.batch, order=True)
        if not states:
            return 0
        groups: dict[tuple[str, int], list[State]] = {}
        for st in states:
            groups.setdefault((st.journey_id, st.version), []).append(st)
        n = 0
        for (jid, version), group in groups.items():
            try:
                cj = self.compiled(group[0].workspace_id, jid, version)
            except GoldkeyError as exc:  # e.g. its channel was deleted: retry later, do not spin
                log.warning("journey %s v%s cannot run: %s", jid, version, exc)
                self._postpone(group, now, f"journey cannot run: {exc}")
                continue
            n += self._advance(cj, group, now)
        self.steps += n
        return n

    def _advance(self, cj: CompiledJourney, group: list[State], now: datetime) -> int:
        reach = self._condition_reach(cj)
        values, events = self._profile_data(cj, [s.profile_id for s in group if s.node_id in reach])
        rows: list[StepRow] = []
        moves: dict[int, tuple[str, str, datetime | None]] = {}  # id(state) -> (status, node, wake_at)
        at_effect: list[State] = []
        preds: dict[str, Any] = {}
        for st in group:
            node_id, status, wake = st.node_id, st.status, st.wake_at
            step = st.step
            for _ in range(MAX_CHAIN):
                node = cj.nodes[node_id]
                if node.type in EFFECTS:
                    if step == st.step:
                        at_effect.append(st)
                    break
                outcome, nxt = self._pure(cj, node, st, values, events, now, preds)
                rows.append(StepRow(st, step, node, outcome, nxt))
                step += 1
                if nxt is None:
                    status, wake = ("converted" if node.type == "goal" else "exited"), None
                    node_id = node.id
                    break
                node_id = nxt
                status, wake = self._arrive(cj, nxt, now)
                if cj.nodes[nxt].type == "wait":
                    break
            if step != st.step:
                moves[id(st)] = (status, node_id, wake)
        n = self._commit(rows, moves, now) if rows else 0
        # customers who reached an effect in this pass are due now: the next run_due picks them up
        for node_id in {s.node_id for s in at_effect}:
            node = cj.nodes[node_id]
            for entry in {s.entry for s in at_effect if s.node_id == node_id}:
                todo = [s for s in at_effect if s.node_id == node_id and s.entry == entry]
                n += self._effect(cj, node, entry, todo, now)
        return n

    def _condition_reach(self, cj: CompiledJourney) -> frozenset[str]:
        """The nodes from which a condition node can be reached without passing a wait or an effect
        (only customers at those nodes need their profile loaded this round)."""
        key = (cj.journey_id, cj.version)
        hit = self._reach.get(key)
        if hit is None:
            back: dict[str, list[str]] = {}
            for n in cj.nodes.values():
                for t in n.next.values():
                    back.setdefault(t, []).append(n.id)
            seen = {n.id for n in cj.nodes.values() if n.type == "condition"}
            todo = list(seen)
            while todo:
                for src in back.get(todo.pop(), ()):
                    if src in seen or cj.nodes[src].type in EFFECTS:
                        continue
                    seen.add(src)  # a customer at a due wait walks on; one arriving at it stops there
                    if cj.nodes[src].type != "wait":
                        todo.append(src)
            hit = self._reach[key] = frozenset(seen)
        return hit

    def _profile_data(self, cj: CompiledJourney, pids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        conds = [n for n in cj.nodes.values() if n.type == "condition"]
        if not conds or not pids:
            return {}, {}
        fields = {n.field for c in conds for _, n in iter_nodes(c.rule.rule if c.rule else None)
                  if isinstance(n, AttributeCondition)}
        if "profile.identifier_types" in fields:
            values = load_profile_values(self.engine, cj.workspace_id, pids)
        else:
            values = profile_rows(self.engine, cj.workspace_id, pids)
        events = load_events(self.analytical, cj.workspace_id, list(values)) if any(
            n.needs_history for n in conds) else {}
        return values, events

    def _pure(self, cj: CompiledJourney, node: CompiledNode, st: State, values: dict[str, Any],
              events: dict[str, Any], now: datetime, preds: dict[str, Any]) -> tuple[str, str | None]:
        """Run a step without side effects; returns (outcome, next node or None when it ends)."""
        t = node.type
        if t == "entry":
            return "entered", node.next[None]
        if t == "wait":
            if node.event is None:
                return "waited", node.next[None]
            label = "event" if st.signal == "event" else "timeout"
            return label, node.next[label]
        if t == "condition":
            assert node.rule is not None
            pred = preds.get(node.id)
            if pred is None:  # bind the rule to ``now`` once per batch, not per customer
                pred = preds[node.id] = node.rule.at(now)
            ok = pred(values.get(st.profile_id, {}), events.get(st.profile_id, ()))
            label = "yes" if ok else "no"
            return label, node.next[label]
        if t == "split":
            key = choose_branch(node, cj.journey_id, st.profile_id)
            return key, node.next[key]
        if t == "goal":
            return "converted", None
        return "exited", None

    # -- effects ----------------------------------------------------------------------------------
    def _effect(self, cj: CompiledJourney, node: CompiledNode, entry: int, todo: list[State], now: datetime) -> int:
        try:
            if node.type == "send":
                outcomes, deferred = self._send(cj, node, entry, todo, now)
            elif node.type == "update_tag":
                outcomes, deferred = self._update_tag(cj, node, todo), {}
            else:
                outcomes, deferred = self._webhook(cj, node, entry, todo, now), {}
        except Exception as exc:  # noqa: BLE001 - a failed effect is retried with backoff, then recorded
            log.warning("journey %s node %s failed: %s", cj.journey_id, node.id, exc)
            return self._retry_or_fail(cj, node, todo, now, f"{type(exc).__name__}: {exc}")
        if self.after_effect is not None:
            self.after_effect(node.id, [s.profile_id for s in todo])
        rows, moves = [], {}
        nxt = node.next[None]
        for st in todo:
            if st.profile_id in deferred:
                continue
            rows.append(StepRow(st, st.step, node, outcomes[st.profile_id][:300], nxt))
            status, wake = self._arrive(cj, nxt, now)
            moves[id(st)] = (status, nxt, wake)
        if deferred:
            with self.engine.begin() as c:
                c.execute(journey_states.update().where(
                    S.journey_id == cj.journey_id, S.profile_id == sa.bindparam("p"), S.step == sa.bindparam("s"))
                    .values(wake_at=sa.bindparam("w"), updated_at=now),
                    [{"p": s.profile_id, "s": s.step, "w": deferred[s.profile_id]} for s in todo
                     if s.profile_id in deferred])
        return self._commit(rows, moves, now) if rows else 0

    def _send(self, cj: CompiledJourney, node: CompiledNode, entry: int, todo: list[State],
              now: datetime) -> tuple[dict[str, str], dict[str, datetime]]:
        c = node.config
        key = f"journey:{cj.journey_id}:v{cj.version}:{node.id}:e{entry}"
        assert node.template is not None
        pids = [s.profile_id for s in todo]
        rep = self.sender.send(SendRequest(cj.workspace_id, c.channel_id, node.template, pids, key,
                                           purpose=c.purpose, ref=f"journey:{cj.journey_id}:{node.id}", vars=c.vars,
                                           now=now))
        out = {p: "sent" for p in rep.message_ids}
        dups = [p for p, r in rep.suppressed.items() if r.startswith("duplicate")]
        if dups:  # a repeat after a crash: the message exists; deliver it if it was still queued
            out.update(self._recover_messages(cj.workspace_id, key, dups, node))
        for p, r in rep.suppressed.items():
            out.setdefault(p, f"suppressed: {r}")
        return out, dict(rep.deferred)

    def _recover_messages(self, ws: str, key: str, pids: list[str], node: CompiledNode) -> dict[str, str]:
        m = messages.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(m.profile_id, m.message_id, m.status).where(
                m.workspace_id == ws, m.message_key == key, m.profile_id.in_(pids))).all()
        queued = [r.message_id for r in rows if r.status == "queued"]
        if queued:
            assert node.template is not None
            self.sender.deliver(ws, queued, node.template, vars=node.config.vars)
        return {r.profile_id: _message_outcome(r.status) for r in rows}

    def _update_tag(self, cj: CompiledJourney, node: CompiledNode, todo: list[State]) -> dict[str, str]:
        c = node.config
        src = f"journey:{cj.journey_id}"
        try:
            self.gk.tags.set_values(cj.workspace_id, c.tag, [{"profile_id": s.profile_id, "value": c.value}
                                                            for s in todo], source=src)
            return {s.profile_id: f"tag {c.tag} set" for s in todo}
        except InvalidInput:
            pass
        out = {}
        for s in todo:  # one bad row (a merged profile ...) must not hold the others back
            try:
                self.gk.tags.set_values(cj.workspace_id, c.tag, [{"profile_id": s.profile_id, "value": c.value}],
                                        source=src)
                out[s.profile_id] = f"tag {c.tag} set"
            except InvalidInput as exc:
                out[s.profile_id] = f"failed: {exc.message}"
        return out

    def _webhook(self, cj: CompiledJourney, node: CompiledNode, entry: int, todo: list[State],
                 now: datetime) -> dict[str, str]:
        """Claim each call in the step log first: a claim found again (a crash during the call) is
        recorded as unknown and not repeated."""
        c = node.config
        out: dict[str, str] = {}
        fresh: list[State] = []
        with self.engine.begin() as conn:
            for s in todo:
                claim = {"journey_id": cj.journey_id, "profile_id": s.profile_id, "entry": s.entry, "step": s.step}
                found = conn.execute(sa.select(L.status).where(*[L[k] == v for k, v in claim.items()])).scalar()
                if found is not None:
                    out[s.profile_id] = "unknown: interrupted during the call; not repeated"
                    continue
                conn.execute(journey_steps.insert().values(**claim, workspace_id=cj.workspace_id, version=cj.version,
                                                           node_id=node.id, node_type="webhook", status="running",
                                                           outcome="calling", next_node=None, at=now))
                fresh.append(s)
        for s in fresh:
            idem = f"journey:{cj.journey_id}:v{cj.version}:{node.id}:{s.profile_id}:e{entry}"
            body = {**c.body, "journey_id": cj.journey_id, "node_id": node.id, "profile_id": s.profile_id,
                    "entry": entry, "idempotency_key": idem}
            try:
                r = self.http.post(c.url, content=orjson.dumps(body), timeout=c.timeout_seconds,
                                   headers={"Content-Type": "application/json", "Idempotency-Key": idem, **c.headers})
                out[s.profile_id] = f"http {r.status_code}" if r.is_success else f"failed: http {r.status_code}"
            except httpx.HTTPError as exc:
                out[s.profile_id] = f"failed: {type(exc).__name__}: {exc}"
        return out

    def _retry_or_fail(self, cj: CompiledJourney, node: CompiledNode, todo: list[State], now: datetime,
                       reason: str) -> int:
        retry = [s for s in todo if s.attempt + 1 < MAX_ATTEMPTS]
        give_up = [s for s in todo if s.attempt + 1 >= MAX_ATTEMPTS]
        if retry:
            self._postpone(retry, now, reason)
        if not give_up:
            return 0
        nxt = node.next[None]
        rows = [StepRow(s, s.step, node, f"failed: {reason}"[:300], nxt) for s in give_up]
        status, wake = self._arrive(cj, nxt, now)
        moves = {id(s): (status, nxt, wake) for s in give_up}
        return self._commit(rows, moves, now)

    def _postpone(self, states: list[State], now: datetime, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(journey_states.update().where(
                S.journey_id == sa.bindparam("j"), S.profile_id == sa.bindparam("p"), S.step == sa.bindparam("s"))
                .values(attempt=sa.bindparam("a"), wake_at=sa.bindparam("w"), updated_at=now),
                [{"j": s.journey_id, "p": s.profile_id, "s": s.step, "a": s.attempt + 1,
                  "w": now + timedelta(seconds=min(3600, 30 * 2 ** s.attempt))} for s in states])

    # -- the one write ----------------------------------------------------------------------------
    def _commit(self, rows: list[StepRow], moves: dict[int, tuple[str, str, datetime | None]], now: datetime) -> int:
        """Record the steps and move the states in one transaction. A state moves only from the step
        it was read at, so a step is never applied twice."""
        by_state: dict[int, list[StepRow]] = {}
        for r in rows:
            by_state.setdefault(id(r.state), []).append(r)
        logs, updates = [], []
        for sid, rs in by_state.items():
            st = rs[0].state
            status, node_id, wake = moves[sid]
            last = rs[-1].step
            updates.append({"j": st.journey_id, "p": st.profile_id, "old": st.step, "e": st.entry, "step": last + 1,
                            "node": node_id, "status": status, "wake": wake,
                            "fin": now if status in ("exited", "converted") else None})
            for r in rs:
                logs.append({"journey_id": st.journey_id, "profile_id": st.profile_id, "entry": st.entry,
                             "step": r.step, "workspace_id": st.workspace_id, "version": st.version,
                             "node_id": r.node.id, "node_type": r.node.type, "status": "done", "outcome": r.outcome,
                             "next_node": r.next_node, "at": now})
        # customers of a batch mostly make the same move: one UPDATE per move, guarded by the step
        groups: dict[tuple[Any, ...], list[str]] = {}
        for u in updates:
            key = (u["j"], u["old"], u["e"], u["step"], u["node"], u["status"], u["wake"], u["fin"])
            groups.setdefault(key, []).append(u["p"])
        with self.engine.begin() as c:
            moved = 0
            for (j, old, e, step, node_id, status, wake, fin), pids in groups.items():
                for k in range(0, len(pids), 2000):
                    chunk = pids[k : k + 2000]
                    moved += c.execute(journey_states.update().where(
                        S.journey_id == j, S.profile_id.in_(chunk), S.step == old, S.entry == e).values(
                        step=step, node_id=node_id, status=status, wake_at=wake, finished_at=fin, signal=None,
                        attempt=0, updated_at=now)).rowcount
            if moved != len(updates):
                raise RuntimeError("journey states moved under the runner (another runner on the same store?)")
            _upsert_steps(c, logs)
        return len(logs)


def _upsert_steps(c: sa.Connection, logs: list[dict[str, Any]]) -> None:
    """Insert the step log; a webhook's ``running`` claim for the same key becomes ``done``."""
    running = [r for r in logs if r["node_type"] == "webhook"]
    plain = [r for r in logs if r["node_type"] != "webhook"]
    bulk_insert(c, journey_steps, plain)
    for r in running:
        key = [L.journey_id == r["journey_id"], L.profile_id == r["profile_id"], L.entry == r["entry"],
               L.step == r["step"]]
        if c.execute(journey_steps.update().where(*key).values(status="done", outcome=r["outcome"],
                                                                next_node=r["next_node"], at=r["at"])).rowcount == 0:
            c.execute(journey_steps.insert(), [r])


def bulk_insert(c: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """``executemany`` of ``rows`` (all with the same keys) through the driver, with each column's
    bind processor applied once per distinct value: the rows of a batch share their timestamps, and
    Core's per-row parameter processing would otherwise cost more than SQLite's insert itself."""
    if not rows:
        return
    cols = list(rows[0])
    compiled = table.insert().compile(dialect=c.dialect, column_keys=cols)
    positional = compiled.positiontup
    keys = list(positional) if positional is not None else cols
    table_rows = [[r[k] for k in keys] for r in rows]
    for i, k in enumerate(keys):
        proc = table.c[k].type.dialect_impl(c.dialect).bind_processor(c.dialect)
        if proc is None:
            continue
        cache: dict[Any, Any] = {}
        for row in table_rows:
            v = row[i]
            if v is not None:
                hit = cache.get(v)
                if hit is None:
                    hit = cache[v] = proc(v)
                row[i] = hit
    params: list[Any] = ([tuple(r) for r in table_rows] if positional is not None
                         else [dict(zip(keys, r, strict=True)) for r in table_rows])
    c.exec_driver_sql(compiled.string, params)


def profile_rows(engine: sa.Engine, ws: str, pids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{profile_id: {field: value}}`` of the live profiles among ``pids``, like
    ``load_profile_values`` but without ``profile.identifier_types`` (a rule that does not read it
    needs no identity lookup); one primary-key query per 500 profiles."""
    values = profile_value_select()  # the profile columns with its scores
    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as c:
        for i in range(0, len(pids), 500):
            q = values.where(profiles.c.profile_id.in_(list(pids[i : i + 500])),
                             profiles.c.workspace_id == ws, profiles.c.merged_into.is_(None))
            for r in c.execute(q):
                out[r.profile_id] = profile_values(r)
    return out


def _message_outcome(status: str) -> str:
    """A send step's outcome from the status of a message found already in the log (a repeat)."""
    if status in ("queued", "sent", "delivered"):
        return "sent"
    if status == "sending":
        return "unknown: the message was being sent when the runner stopped; not resent"
    return f"failed: message {status}"


def _any_match(node: CompiledNode, events: list[Event], now: datetime) -> bool:
    assert node.event is not None
    return any(node.event.matches({}, [e], max(now, e.timestamp)) for e in events)


def _may_reenter(mode: str, days: float | None, finished_at: datetime | None, now: datetime) -> bool:
    if mode == "always":
        return True
    if mode == "after_days" and finished_at is not None and days is not None:
        return as_utc(finished_at) <= now - timedelta(days=days)  # type: ignore[operator]
    return False


__all__ = ["JourneyEngine", "choose_branch", "split_bucket"]
