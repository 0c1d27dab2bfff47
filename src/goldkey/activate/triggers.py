"""Triggers: a message at the customer's moment, in real time or on a timer.

**Real-time triggers** fire on an incoming event and/or a profile state, both written in the rule
language (``docs/rules.md``): ``event`` is an ``event`` condition matched against the event just
committed (e.g. ``Data Usage`` with ``data_used_pct gte 75``); ``condition`` is any rule over the
profile (``attributes.balance lt 5``; event clauses see the profile's history). Both run in the
in-memory evaluator (``goldkey.rules.memory``) right behind the ingestion path: like the real-time
segments (``goldkey.audience.realtime``) the service listens to the writer's durable commits; the
listener only matches the event clause against the committed events and queues the hits (the writer
never waits on a send). A trigger whose ``condition`` reads only the profile listens from
``Writer.early_listeners``, called as soon as the operational transaction commits (the profile, its
identities and any consent the events carried are on record) while the writer appends the events to
the event log; one with event-history clauses listens after that append (``Writer.listeners``), so
the history it reads holds the event. The **real-time worker** takes everything queued,
loads the profiles' current values in one query, evaluates ``condition`` and *reserves* the firings:
one operational-store transaction under the workspace's reservation lock records the firings, runs
the guardrails (consent, suppressions, caps, quiet hours, de-duplication) and writes the ``queued``
message rows and cap counts. That is where its latency ends: from the listener call (the event is
durable) to the commit of the queued message. A separate **delivery worker** sends the reserved
messages through ``Sender.deliver``, which checks consent and suppressions again at send time (an
opt-out between queueing and sending stops the message) and sends each message at most once; by
default the rendering and sending run in a child process of the server
(``activate/delivery_process.py``), so they never take the interpreter from the writer and the
real-time worker, while the claims, row updates and events stay in this process; a
round that never delivered (a crash, a channel error) is swept by the minute loop.

**Time-based triggers** are checked by a loop every minute, with DuckDB queries:

- ``after_event``: ``minutes`` after a matching event A with no matching event B since (abandoned
  cart: ``Product Added`` without ``Order Completed``); the latest A of each customer counts, and A
  events older than ``max_delay_minutes`` past their due time are not fired (after an outage);
- ``date``: a date attribute's day (``yearly``: its anniversary — birthdays, membership anniversaries;
  ``days_before`` N: N days ahead — plan renewal, lens replacement) at ``time_of_day`` in the
  customer's own time zone (``attributes.timezone``, else the trigger's).

**At most once.** Every firing is a row of ``trigger_firings`` whose primary key is (workspace,
trigger, profile, window key): the key is the calendar window of the firing (``window``: ``hour``,
``day``, ``week``, ``month`` in the trigger's time zone, or ``ever``) — a monthly data plan's
"75 % used" offer is ``month`` — and, for a ``date`` trigger, the occurrence's date. A second
firing in the same window is refused: the reservation reads the window's firings under the
workspace's lock and the key backs it up, in any process; the message key
``trigger:<id>:<window>`` makes the guardrails refuse a duplicate as well. A firing the guardrails
suppress is recorded with the reason and not retried in its window; one deferred by quiet hours is
sent when the quiet window ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import orjson
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from goldkey.activate.campaigns import Conversion, check_channel, hash_unit, newcombe_diff, welch_diff
from goldkey.activate.channels.base import Channel, SendResult
from goldkey.activate.delivery_process import DeliveryProcess, DeliveryProcessError
from goldkey.activate.guardrails import (
    AUDIENCE,
    GUARD_CHUNK,
    Prepared,
    Reservation,
    SendSpec,
    audience_addresses,
    driver_value,
    fill_audience,
    mask,
)
from goldkey.activate.sender import Sender
from goldkey.activate.templates import CompiledTemplate, compile_for_workspace
from goldkey.audience.catalog import infer_attribute_fields, load_catalog
from goldkey.audience.common import load_events, load_profile_values, own_events_named, parse_and_check
from goldkey.collect.tracking import micros_to_datetime
from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound, validated
from goldkey.core.ids import new_id
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.ops.metrics import METRICS
from goldkey.rules.memory import CompiledRule, Event, compile_rule
from goldkey.rules.model import EventCondition, SequenceCondition, iter_nodes, parse_rule
from goldkey.rules.values import check_rule, coerce, field_column
from goldkey.store.operational import messages, trigger_firings, triggers

log = logging.getLogger(__name__)

CHANNEL_TTL_SECONDS = 5.0  # how long a real-time round reuses an opened channel
DELIVERY_GATHER_SECONDS = 0.2  # the delivery worker gathers reserved messages this long per round
DELIVERY_MAX_YIELD_SECONDS = 2.0  # ... and waits at most this long for busy real-time rounds
LATENCY_KEEP = 100_000  # real-time firings' latencies kept in memory (the newest)

T = triggers.c
F = trigger_firings.c
HOLDOUT = "holdout"  # the firing status of a customer in the trigger's control group
TRIGGER_REPORT_METHOD = {
    "assignment": "sha256(trigger_id:profile_id) -> [0,1); below holdout_pct/100 = holdout (the same customers "
                  "in every window), decided before the guardrails",
    "unit": "a firing (a customer in one window); its response window starts at the firing",
    "uplift": "intention to treat: every treated firing (messaged, suppressed or deferred) vs the holdout's "
              "firings, each converted if the conversion happened within attribution_days after it",
    "uplift_ci": "Newcombe (1998) hybrid score interval, method 10 (two Wilson intervals), 95%",
    "revenue_ci": "Welch t interval of the difference of mean order revenue per firing, 95%",
}


def held_out(d: TriggerDefinition, trigger_id: str, profile_ids: Sequence[str]) -> list[str]:
    """The customers among ``profile_ids`` in the trigger's control group."""
    if not d.holdout_pct:
        return []
    cut = d.holdout_pct / 100
    return [p for p in profile_ids if hash_unit(trigger_id, p) < cut]


# the hot statements of a reservation, compiled once (``guardrails.Prepared``)
# the firings of the audience's profiles in one window: a primary-key lookup per profile (as a join,
# SQLite's planner read every firing of the trigger and probed the audience: O(firings) a round)
_FIRED = Prepared(lambda _d: sa.select(F.profile_id, F.status).where(
    F.workspace_id == sa.bindparam("ws"), F.trigger_id == sa.bindparam("tid"),
    F.window_key == sa.bindparam("window_key"), F.profile_id.in_(sa.select(AUDIENCE.c.profile_id))))
_RECORD_FIRING = Prepared(lambda _d: trigger_firings.insert().values(
    {col: sa.bindparam(col) for col in ("workspace_id", "trigger_id", "profile_id", "window_key", "fired_at",
                                        "status", "reason", "message_id", "latency_ms", "retry_at")}))


# --------------------------------------------------------------------------- the definition


class FiringWindow(BaseModel):
    """At most one firing per customer per calendar window (in ``timezone``)."""

    model_config = ConfigDict(extra="forbid")
    unit: Literal["hour", "day", "week", "month", "ever"] = "day"
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    def key(self, at: datetime) -> str:
        """The window holding instant ``at``: ``d:2026-11-23``, ``m:2026-11``, ``w:2026-W48`` ..."""
        local = at.astimezone(ZoneInfo(self.timezone))
        if self.unit == "hour":
            return local.strftime("h:%Y-%m-%dT%H")
        if self.unit == "day":
            return local.strftime("d:%Y-%m-%d")
        if self.unit == "week":
            y, w, _ = local.isocalendar()
            return f"w:{y}-W{w:02d}"
        if self.unit == "month":
            return local.strftime("m:%Y-%m")
        return "ever"


class AfterEvent(BaseModel):
    """``minutes`` after event A (``event``) without event B (``without``) since."""

    model_config = ConfigDict(extra="forbid")
    event: dict[str, Any] = Field(description="An event condition of the rule language (A).")
    minutes: int = Field(ge=1, le=60 * 24 * 60)
    without: dict[str, Any] | None = Field(None, description="An event condition (B) that cancels the firing.")
    max_delay_minutes: int = Field(24 * 60, ge=1, le=60 * 24 * 30)


class DateRule(BaseModel):
    """A date attribute's day (or its anniversary), ``days_before`` earlier, at ``time_of_day``."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(description="A datetime field, e.g. attributes.birthday or attributes.plan_renewal_at.")
    yearly: bool = Field(False, description="Every year on the date's month and day (birthdays, anniversaries).")
    days_before: int = Field(0, ge=0, le=365)
    time_of_day: dtime = dtime(9, 0)


class TriggerDefinition(BaseModel):
    """A trigger as saved (``POST /api/v1/triggers``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["realtime", "after_event", "date"]
    event: dict[str, Any] | None = Field(None, description="realtime: an event condition the new event must match.")
    condition: dict[str, Any] | None = Field(None, description="realtime: a rule the profile must satisfy.")
    after: AfterEvent | None = None
    date: DateRule | None = None
    window: FiringWindow = Field(default_factory=FiringWindow)
    channel_id: str = Field(min_length=1, max_length=40)
    purpose: str = Field("marketing", min_length=1, max_length=40)
    template: dict[str, Any]
    vars: dict[str, Any] = Field(default_factory=dict)
    holdout_pct: float = Field(
        0.0, ge=0, le=90,
        description="Share of customers held back (control group): their firings are recorded with status "
                    "'holdout' and get no message. Chosen by sha256(trigger id:profile id), so the same "
                    "customers stay held out in every window.")
    conversion: Conversion | None = Field(
        None, description="What counts as a response within attribution_days of a firing (an event name or any "
                          "order): the report's conversion per arm and the uplift against the holdout.")
    active: bool = True

    @model_validator(mode="after")
    def _shape(self) -> TriggerDefinition:
        if self.kind == "realtime":
            if self.event is None and self.condition is None:
                raise ValueError("a realtime trigger needs an event condition, a profile condition, or both")
            if self.after is not None or self.date is not None:
                raise ValueError("a realtime trigger takes event/condition, not after/date")
        elif self.kind == "after_event":
            if self.after is None or self.event is not None or self.date is not None:
                raise ValueError("an after_event trigger takes 'after' (and optionally 'condition') only")
        elif self.date is None or self.event is not None or self.after is not None:
            raise ValueError("a date trigger takes 'date' (and optionally 'condition') only")
        return self


def parse_trigger(data: Any) -> TriggerDefinition:
    """Parse a trigger document; raise InvalidInput naming the field."""
    return validated(TriggerDefinition, data, field="trigger")


def _event_condition(rule: Any, where: str) -> EventCondition:
    if not isinstance(rule, EventCondition):
        raise InvalidInput("give an event condition ({\"kind\": \"event\", ...})", field=where)
    if rule.window is not None or rule.count is not None or not rule.did:
        raise InvalidInput("the event condition of a trigger matches one event: no window, count or did:false",
                           field=where)
    return rule


@dataclass
class Compiled:
    """A saved trigger, ready to evaluate."""

    trigger_id: str
    workspace_id: str
    d: TriggerDefinition
    template: CompiledTemplate
    event: CompiledRule | None
    condition: CompiledRule | None
    needs_history: bool
    without: CompiledRule | None = None


@dataclass
class Hit:
    """A committed event that matched a real-time trigger's event clause."""

    trigger: Compiled
    profile_id: str
    committed: float  # time.perf_counter() when the listener saw the durable commit
    received_us: int = 0  # when the API received the event (epoch microseconds)


# --------------------------------------------------------------------------- the service


class TriggerService:
    """Define triggers; fire them in real time (writer listener) and on a minute loop."""

    def __init__(self, gk: Any, sender: Sender, *, tick_seconds: float = 60.0) -> None:
        self.gk = gk
        self.engine: sa.Engine = gk.engine
        self.analytical = gk.analytical
        self.sender = sender
        self.tick_seconds = tick_seconds
        self._realtime: dict[str, list[Compiled]] = {}  # ws -> compiled real-time triggers
        self._loaded_at = 0.0
        self._cache_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Hit | None] = queue.SimpleQueue()
        # Goldkey's own events to match (off the writer thread): (workspace, columns, time, committed)
        self._own: queue.SimpleQueue[tuple[str, list[Any], datetime, float] | None] = queue.SimpleQueue()
        # reserved messages handed from the real-time rounds to the delivery worker
        self._outbox: queue.SimpleQueue[tuple[Compiled, list[str]] | None] = queue.SimpleQueue()
        self._channels: dict[tuple[str, str], tuple[float, Channel]] = {}  # (ws, channel id) -> (opened, channel)
        self._realtime_busy = False  # a real-time round is running: the delivery worker waits
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # per real-time firing, the newest LATENCY_KEEP (bounded: a server runs for months); the same
        # figures go to the goldkey_trigger_latency_seconds histogram of /metrics
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)  # event committed -> message queued
        self.received_latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)  # event received by the API -> queued
        self.last_error: str | None = None
        # the delivery worker's rounds go to a child process (activate/delivery_process.py) when set
        self.child: DeliveryProcess | None = None
        settings = getattr(gk, "settings", None)
        if settings is not None and getattr(settings, "trigger_delivery_process", False):
            url = settings.resolved_operational_url()
            if DeliveryProcess.usable(url):
                self.child = DeliveryProcess(url, settings.data_dir, settings.resolved_channel_files_dir())

    @classmethod
    def from_goldkey(cls, gk: Any, **kw: Any) -> TriggerService:
        sender = getattr(gk, "sender", None) or Sender.from_goldkey(gk)
        return cls(gk, sender, **kw)

    # -- definitions ------------------------------------------------------------------------
    def create(self, ws: str, data: Any) -> dict[str, Any]:
        """Validate and save a trigger; raise InvalidInput / Conflict."""
        d = parse_trigger(data)
        self.compile(ws, "new", d)
        tid, now = new_id("trg"), utcnow()
        with self.engine.begin() as c:
            if c.execute(sa.select(T.trigger_id).where(T.workspace_id == ws, T.name == d.name)).first():
                raise Conflict(f"a trigger named {d.name!r} already exists")
            c.execute(triggers.insert().values(trigger_id=tid, workspace_id=ws, name=d.name, kind=d.kind,
                                               definition=d.model_dump_json(),
                                               status="active" if d.active else "paused",
                                               created_at=now, updated_at=now))
        self.reload()
        return self.get(ws, tid)

    def set_active(self, ws: str, tid: str, active: bool) -> dict[str, Any]:
        """Pause (no new firings; messages already queued are still sent) or resume a trigger. The
        stored definition's ``active`` follows, so a definition read back and sent again keeps it."""
        r = self._row(ws, tid)
        d = TriggerDefinition.model_validate_json(r.definition).model_copy(update={"active": active})
        with self.engine.begin() as c:
            self.sender.guardrails.lock(c, ws)  # after any round reserving now; later rounds see the status
            c.execute(triggers.update().where(T.trigger_id == tid).values(
                status="active" if active else "paused", definition=d.model_dump_json(), updated_at=utcnow()))
        self.reload()
        return self.get(ws, tid)

    def update(self, ws: str, tid: str, data: Any) -> dict[str, Any]:
        """Replace a trigger's definition (checked as on create; its ``active`` sets the status).
        Its firings so far stay with it: a customer who fired in a window does not fire again in it."""
        before = self._row(ws, tid)
        if isinstance(data, dict) and "active" not in data:  # left out: the trigger stays as it is
            data = {**data, "active": before.status == "active"}
        d = parse_trigger(data)
        self.compile(ws, tid, d)
        with self.engine.begin() as c:
            self.sender.guardrails.lock(c, ws)
            if c.execute(sa.select(T.trigger_id).where(T.workspace_id == ws, T.name == d.name,
                                                       T.trigger_id != tid)).first():
                raise Conflict(f"a trigger named {d.name!r} already exists")
            c.execute(triggers.update().where(T.trigger_id == tid).values(
                name=d.name, kind=d.kind, definition=d.model_dump_json(),
                status="active" if d.active else "paused", updated_at=utcnow()))
        self.reload()
        out = self.get(ws, tid)
        was = {**orjson.loads(before.definition), "active": before.status == "active"}
        out["changed"] = sorted(k for k, v in d.model_dump(mode="json").items() if was.get(k) != v)
        return out

    def delete(self, ws: str, tid: str) -> dict[str, Any]:
        """Delete a trigger. Its firings and sent messages stay (reports and the audit trail read
        them); messages it queued but had not sent are not sent (failed, with the reason)."""
        r = self._row(ws, tid)
        m = messages.c
        with self.engine.begin() as c:
            # the workspace's reservation lock: a round reserving for this trigger right now commits
            # first (its queued messages are then marked below), and a later one finds it gone
            self.sender.guardrails.lock(c, ws)
            dropped = c.execute(messages.update().where(
                m.workspace_id == ws, m.ref == f"trigger:{tid}", m.status == "queued").values(
                status="failed", reason="trigger deleted before sending", updated_at=utcnow())).rowcount
            c.execute(triggers.delete().where(T.trigger_id == tid))
        self.reload()
        return {"trigger_id": tid, "name": r.name, "deleted": True, "queued_messages_not_sent": int(dropped or 0)}

    def get(self, ws: str, tid: str) -> dict[str, Any]:
        r = self._row(ws, tid)
        with self.engine.connect() as c:
            counts = dict(c.execute(sa.select(F.status, sa.func.count()).where(
                F.workspace_id == ws, F.trigger_id == tid).group_by(F.status)).all())
        return {"trigger_id": r.trigger_id, "name": r.name, "kind": r.kind, "status": r.status,
                "definition": orjson.loads(r.definition), "firings": counts,
                "created_at": to_iso(r.created_at), "updated_at": to_iso(r.updated_at)}

    def list(self, ws: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            ids = c.execute(sa.select(T.trigger_id).where(T.workspace_id == ws).order_by(T.created_at)).scalars().all()
        return [self.get(ws, t) for t in ids]

    def firings(self, ws: str, tid: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of the trigger's firings, newest first."""
        self._row(ws, tid)
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(trigger_firings).where(
                F.workspace_id == ws, F.trigger_id == tid)).scalar_one()
            rows = c.execute(sa.select(trigger_firings).where(F.workspace_id == ws, F.trigger_id == tid)
                             .order_by(F.fired_at.desc()).limit(max(1, min(limit, 1000))).offset(offset)).all()
        return {"total": total, "items": [
            {"profile_id": r.profile_id, "window_key": r.window_key, "fired_at": to_iso(r.fired_at),
             "status": r.status, "reason": r.reason, "message_id": r.message_id, "latency_ms": r.latency_ms,
             "retry_at": to_iso(r.retry_at)} for r in rows]}

    def report(self, ws: str, tid: str, *, since: datetime | None = None,
               now: datetime | None = None) -> dict[str, Any]:
        """The trigger's effect: per arm (treated, holdout) the firings since ``since`` and how many
        converted within the attribution window after their firing, and the uplift of the treated
        arm over the holdout with its 95% interval. Raises InvalidInput when the trigger has no
        conversion goal; the uplift is unavailable without a holdout."""
        r = self._row(ws, tid)
        d = TriggerDefinition.model_validate_json(r.definition)
        if d.conversion is None:
            raise InvalidInput("the trigger has no conversion goal: set conversion (an event name or order: true) "
                               "to measure its effect", field="conversion")
        conv = d.conversion
        m = messages.c
        q = (sa.select(F.profile_id, F.status, F.fired_at, m.status.label("message_status"))
             .select_from(trigger_firings.outerjoin(messages, sa.and_(m.message_id == F.message_id,
                                                                       m.workspace_id == F.workspace_id)))
             .where(F.workspace_id == ws, F.trigger_id == tid))
        if since is not None:
            q = q.where(F.fired_at >= as_utc(since))
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        fired = pa.table({
            "k": pa.array(range(len(rows)), pa.int64()),
            "profile_id": pa.array([x.profile_id for x in rows], pa.string()),
            "fired_at": pa.array([as_utc(x.fired_at) for x in rows], pa.timestamp("us", tz="UTC"))})
        converted = np.zeros(len(rows), bool)
        revenue = np.zeros(len(rows), float)
        if rows:
            lo = min(as_utc(x.fired_at) for x in rows)
            hi = max(as_utc(x.fired_at) for x in rows) + timedelta(days=conv.attribution_days)
            # purchases only (refunds and cancellations are no conversion and no revenue)
            purchase = status_filter("status", "$excluded")
            if conv.order:
                conv_sql = f"""SELECT canonical_id AS pid, ordered_at AS ts FROM orders_resolved
                              WHERE workspace_id = $ws AND ordered_at >= $lo AND ordered_at < $hi AND {purchase}"""
            else:
                conv_sql = """SELECT canonical_id AS pid, "timestamp" AS ts FROM events_resolved
                              WHERE workspace_id = $ws AND type = 'track' AND event = $event
                                AND "timestamp" >= $lo AND "timestamp" < $hi"""
            sql = f"""
            WITH conv AS ({conv_sql}),
            ord AS (SELECT canonical_id AS pid, ordered_at AS ts, total_amount AS amt FROM orders_resolved
                    WHERE workspace_id = $ws AND ordered_at >= $lo AND ordered_at < $hi AND {purchase}),
            c AS (SELECT _f.k FROM _f JOIN conv ON conv.pid = _f.profile_id AND conv.ts >= _f.fired_at
                        AND conv.ts < _f.fired_at + to_days($days) GROUP BY _f.k),
            r AS (SELECT _f.k, sum(ord.amt) AS amt FROM _f JOIN ord ON ord.pid = _f.profile_id
                        AND ord.ts >= _f.fired_at AND ord.ts < _f.fired_at + to_days($days) GROUP BY _f.k)
            SELECT _f.k, c.k IS NOT NULL AS converted, coalesce(r.amt, 0) AS revenue
            FROM _f LEFT JOIN c USING (k) LEFT JOIN r USING (k) ORDER BY _f.k"""
            params: dict[str, Any] = {"ws": ws, "lo": lo, "hi": hi, "days": conv.attribution_days,
                                      "excluded": excluded_statuses()}
            if not conv.order:
                params["event"] = conv.event
            tbl = self.analytical.query_arrow(sql, params, tables={"_f": fired})
            converted = np.asarray(tbl.column("converted").to_numpy(zero_copy_only=False), bool)
            revenue = np.asarray(tbl.column("revenue").to_numpy(zero_copy_only=False), float)
            revenue = np.nan_to_num(revenue)
        status = np.array([x.status for x in rows], dtype=object)
        mstatus = np.array([x.message_status for x in rows], dtype=object)
        hold = status == HOLDOUT
        arms = []
        for name, sel in (("treated", ~hold), (HOLDOUT, hold)):
            n = int(sel.sum())
            k = int(converted[sel].sum())
            arm: dict[str, Any] = {"arm": name, "firings": n, "converted": k,
                                   "conversion_rate": round(k / n, 6) if n else None,
                                   "revenue": round(float(revenue[sel].sum()), 2)}
            if name == "treated":
                arm.update(messaged=int(np.isin(mstatus[sel], ["queued", "sending", "sent", "delivered"]).sum()),
                           sent=int(np.isin(mstatus[sel], ["sent", "delivered"]).sum()),
                           suppressed=int((status[sel] == "suppressed").sum()),
                           deferred=int((status[sel] == "deferred").sum()))
            arms.append(arm)
        n1, n0 = int((~hold).sum()), int(hold.sum())
        if n0 == 0 or n1 == 0:
            uplift: dict[str, Any] = {"available": False, "reason": (
                "the trigger has no holdout (holdout_pct = 0)" if not d.holdout_pct
                else "no firings in one of the arms yet")}
        else:
            k1, k0 = int(converted[~hold].sum()), int(converted[hold].sum())
            diff, lo_ci, hi_ci = newcombe_diff(k1, n1, k0, n0)
            rd, rlo, rhi = welch_diff(revenue[~hold], revenue[hold])
            uplift = {"available": True, "uplift": round(diff, 6), "uplift_ci95": [round(lo_ci, 6), round(hi_ci, 6)],
                      "incremental_conversions": round(diff * n1, 2),
                      "incremental_revenue_per_firing": round(rd, 4),
                      "incremental_revenue_per_firing_ci95": None if rlo is None else [round(rlo, 4), round(rhi, 4)]}
        now = as_utc(now) or utcnow()
        last = max((as_utc(x.fired_at) for x in rows), default=None)
        window_end = last + timedelta(days=conv.attribution_days) if last else None
        return {"trigger_id": tid, "name": r.name, "holdout_pct": d.holdout_pct,
                "conversion": conv.model_dump(exclude_none=True), "since": to_iso(since),
                "window_complete": window_end is not None and now >= window_end,
                "window_ends_at": to_iso(window_end), "arms": arms, "uplift": uplift,
                "method": TRIGGER_REPORT_METHOD}

    def _row(self, ws: str, tid: str) -> Any:
        with self.engine.connect() as c:
            r = c.execute(sa.select(triggers).where(T.workspace_id == ws, T.trigger_id == tid)).first()
        if r is None:
            raise NotFound(f"trigger {tid!r} not found")
        return r

    # -- compile and validate ---------------------------------------------------------------------
    def _rule(self, ws: str, data: Any, prefix: str) -> Any:
        """Parse and check a rule; an event not received yet is allowed (a trigger is usually set up
        before the traffic), everything else is checked as for segments."""
        try:
            return parse_and_check(self.engine, self.analytical, ws, data, prefix=prefix)
        except InvalidInput as exc:
            if not exc.message.startswith("unknown event"):
                raise
        rule = parse_rule(data)
        check_rule(rule, load_catalog(self.engine, ws), None, prefix=prefix)
        return rule

    def compile(self, ws: str, tid: str, d: TriggerDefinition) -> Compiled:
        """Check everything a trigger names (channel, template, rules, date field); raise InvalidInput."""
        check_channel(self.sender, ws, d.channel_id)
        try:
            tpl = compile_for_workspace(self.engine, ws, d.template)
        except InvalidInput as exc:
            raise InvalidInput(exc.message, field=exc.field or "template") from None
        missing = [n for n in tpl.template.vars if n not in d.vars]
        if missing:
            raise InvalidInput(f"the template declares vars {', '.join(missing)} but the trigger gives no value "
                               "for them", field="template.vars")
        catalog = load_catalog(self.engine, ws)
        ev = cond = without = None
        if d.event is not None:
            ev = compile_rule(_event_condition(self._rule(ws, d.event, "event"), "event"), catalog)
        if d.after is not None:
            ev = compile_rule(_event_condition(self._rule(ws, d.after.event, "after.event"), "after.event"), catalog)
            if d.after.without is not None:
                without = compile_rule(_event_condition(self._rule(ws, d.after.without, "after.without"),
                                                        "after.without"), catalog)
        needs_history = False
        if d.condition is not None:
            rule = self._rule(ws, d.condition, "condition")
            cond = compile_rule(rule, catalog)
            needs_history = any(isinstance(n, EventCondition | SequenceCondition) for _, n in iter_nodes(rule))
        if d.date is not None:
            if d.date.field not in catalog:
                infer_attribute_fields(self.engine, ws)  # attributes seen since the last inference
                catalog = load_catalog(self.engine, ws)
            ftype = catalog.get(d.date.field)
            if ftype is None:
                raise InvalidInput(f"unknown field {d.date.field!r}", field="date.field")
            if ftype != "datetime":
                raise InvalidInput(f"{d.date.field} is a {ftype} field; a date trigger needs a datetime field",
                                   field="date.field")
        return Compiled(tid, ws, d, tpl, ev, cond, needs_history, without)

    def active(self, ws: str | None = None, kind: str | None = None) -> list[Compiled]:
        """The active triggers (of a workspace, of a kind), compiled. A trigger that no longer
        compiles (its channel was removed ...) is skipped and logged."""
        q = sa.select(triggers).where(T.status == "active")
        if ws is not None:
            q = q.where(T.workspace_id == ws)
        if kind is not None:
            q = q.where(T.kind == kind)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(T.created_at)).all()
        out = []
        for r in rows:
            try:
                out.append(self.compile(r.workspace_id, r.trigger_id,
                                        TriggerDefinition.model_validate_json(r.definition)))
            except InvalidInput as exc:
                log.warning("trigger %s skipped: %s", r.trigger_id, exc)
        return out

    def reload(self) -> None:
        """Recompile the real-time triggers the listener matches."""
        by_ws: dict[str, list[Compiled]] = {}
        for t in self.active(kind="realtime"):
            by_ws.setdefault(t.workspace_id, []).append(t)
        with self._cache_lock:
            self._realtime = by_ws
            self._loaded_at = time.monotonic()

    # -- real time ----------------------------------------------------------------------------
    def attach(self, writer: Any) -> None:
        """Listen to the writer's durable commits: a trigger whose conditions read only the profile
        as soon as the operational commit is done (after consent is recorded), one with event-history
        conditions once the events are in the event log it reads."""
        writer.early_listeners.append(lambda stored: self._on_commit(stored, history=False))
        writer.listeners.append(lambda stored: self._on_commit(stored, history=True))
        # Goldkey's own events (Tag Changed, Lifecycle Stage Changed, segment_entered, ...) are
        # written by model runs, tags and segments straight to the event log, not through the writer
        analytical = getattr(self.gk, "analytical", None)
        if analytical is not None and self._on_own_events not in analytical.own_event_listeners:
            analytical.own_event_listeners.append(self._on_own_events)

    def _on_own_events(self, ws: str, profile_ids: Any, events: Any, properties: Any, at: datetime) -> None:
        """Goldkey's own events, once committed to the event log: keep those a real-time trigger of
        the workspace names (an Arrow filter on the name, so a million Tag Changed events of a model
        run cost next to nothing when no trigger listens to them) and hand them to the matching
        thread; this runs on the writer thread, under the analytical store's write lock."""
        committed = time.perf_counter()
        with self._cache_lock:
            trig = [t for t in (self._realtime or {}).get(ws, ()) if t.event is not None]
        if not trig:
            return
        cols = own_events_named(profile_ids, events, properties, {(t.d.event or {}).get("event") for t in trig})
        if len(cols[0]):
            self._own.put((ws, cols, at, committed))

    def _match_own(self, ws: str, cols: list[Any], at: datetime, committed: float) -> None:
        """Match kept own events against the workspace's real-time triggers (both kinds: the events
        are in the log) and queue the hits."""
        with self._cache_lock:
            trig = [t for t in (self._realtime or {}).get(ws, ()) if t.event is not None]
        now, loads = utcnow(), orjson.loads
        received = int(at.timestamp() * 1_000_000)
        pids, names, props = (c.to_pylist() for c in cols)
        for pid, name, text in zip(pids, names, props, strict=True):
            e = Event("track", name, at, loads(text) if text else {}, None)
            for t in trig:
                if t.event is not None and t.event.matches({}, [e], max(now, at)):
                    self._queue.put(Hit(t, pid, committed, received))

    def _own_worker(self) -> None:
        while not self._stop.is_set():
            item = self._own.get()
            if item is None:
                return
            try:
                self._match_own(*item)
            except Exception:  # noqa: BLE001 - one batch's failure never stops the thread
                log.exception("matching Goldkey's own events against triggers failed")

    def _on_commit(self, stored: list[tuple[str, str, Any]], history: bool) -> None:
        """On the writer thread: match the event clauses, queue the hits (never blocks on a send).
        ``history``: only the triggers that need (True) or do not need (False) the event log."""
        committed = time.perf_counter()
        with self._cache_lock:
            rt = self._realtime
        if not rt:
            return
        now = utcnow()
        for ws, pid, ev in stored:
            trig = rt.get(ws)
            if not trig:
                continue
            e: Event | None = None
            for t in trig:
                if t.needs_history is not history:
                    continue
                if t.event is not None:
                    if e is None:
                        e = Event(ev.type, ev.event, micros_to_datetime(ev.timestamp), ev.properties or {}, ev.name)
                    if not t.event.matches({}, [e], max(now, e.timestamp)):
                        continue
                self._queue.put(Hit(t, pid, committed, ev.received_at))

    def start(self) -> None:
        """Start the real-time worker and the minute loop."""
        if self._threads:
            return
        self._stop.clear()
        self.reload()
        for target, name in ((self._worker, "goldkey-triggers-realtime"),
                             (self._own_worker, "goldkey-triggers-own-events"),
                             (self._delivery_worker, "goldkey-triggers-delivery"),
                             (self._loop, "goldkey-triggers-timer")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._own.put(None)
        self._outbox.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        if self.child is not None:
            self.child.close()

    def _worker(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                return
            hits = [first]
            while True:
                try:
                    h = self._queue.get_nowait()
                except queue.Empty:
                    break
                if h is None:
                    self._stop.set()
                    break
                hits.append(h)
            self._realtime_busy = True
            try:
                self.process(hits)
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("real-time trigger round failed")
            finally:
                self._realtime_busy = False

    def drain(self, timeout: float = 10.0, *, deliver: bool = True) -> None:
        """Process what is queued now and (``deliver``) send what that reserved, in the calling
        thread (tests, when the workers are not started)."""
        while True:  # own events first: their hits join the queue
            try:
                own = self._own.get_nowait()
            except queue.Empty:
                break
            if own is not None:
                self._match_own(*own)
        hits = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                h = self._queue.get_nowait()
            except queue.Empty:
                break
            if h is not None:
                hits.append(h)
        if hits:
            self.process(hits)
        if not deliver:
            return
        items = []
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                items.append(item)
        if items:
            self._deliver_items(items)

    def process(self, hits: Sequence[Hit]) -> int:
        """Evaluate the profile conditions of queued hits and reserve their messages (the delivery
        worker sends them); returns how many messages were reserved."""
        by_trigger: dict[str, tuple[Compiled, dict[str, tuple[float, int]]]] = {}
        for h in hits:
            t, first = by_trigger.setdefault(h.trigger.trigger_id, (h.trigger, {}))
            first.setdefault(h.profile_id, (h.committed, h.received_us))
        fired = 0
        now = utcnow()
        for t, committed in by_trigger.values():
            pids = list(committed)
            if t.condition is not None:
                values = load_profile_values(self.engine, t.workspace_id, pids)
                events = load_events(self.analytical, t.workspace_id, list(values)) if t.needs_history else {}
                pred = t.condition.at(now)
                pids = [p for p in pids if p in values and pred(values[p], events.get(p, ()))]
            if pids:
                fired += self.fire(t, pids, {t.d.window.key(now): pids}, now, committed, deliver=False)
        return fired

    # -- firing ---------------------------------------------------------------------------------
    def fire(self, t: Compiled, pids: Sequence[str], windows: dict[str, list[str]], now: datetime,
             committed: dict[str, tuple[float, int]] | None = None, *, deliver: bool = True) -> int:
        """Fire ``t`` for ``pids`` (``windows``: window key -> its profiles): reserve each new
        (trigger, profile, window) with its message, then deliver them -- here (``deliver``: the
        timer's rounds) or through the delivery worker (the real-time path, whose latency ends at the
        reservation). Returns how many messages were reserved. ``committed``: per profile, when its
        event was committed (``perf_counter``) and received (epoch µs), for the latency figures."""
        ch = self._channel(t)
        reserved: list[str] = []
        for window_key, group in windows.items():
            ids = list(dict.fromkeys(group))
            for k in range(0, len(ids), GUARD_CHUNK):
                reserved += self._reserve(t, ch, ids[k : k + GUARD_CHUNK], window_key, now, committed)
        if reserved:
            if deliver:
                self.deliver(t, reserved)
            else:
                self._outbox.put((t, reserved))
        return len(reserved)

    def _channel(self, t: Compiled) -> Channel:
        """The trigger's channel, re-opened (its row read) at most every few seconds: a reservation
        needs only its consent channel and address type, and delivery opens it afresh anyway."""
        key = (t.workspace_id, t.d.channel_id)
        hit = self._channels.get(key)
        if hit is None or time.monotonic() - hit[0] > CHANNEL_TTL_SECONDS:
            hit = self._channels[key] = (time.monotonic(), self.sender.channels.open(*key))
        return hit[1]

    def _reserve(self, t: Compiled, ch: Channel, pids: Sequence[str], window_key: str, now: datetime,
                 committed: dict[str, tuple[float, int]] | None = None, *, retry: bool = False) -> list[str]:
        """One transaction under the workspace's reservation lock: the firings of ``pids`` in
        ``window_key`` not recorded yet (``retry``: the ones deferred by quiet hours) are checked by
        the guardrails, their ``queued`` messages and cap counts written, and every firing recorded
        with its outcome. Nothing is sent here. Returns the reserved message ids.

        The lock serialises the reservations of a workspace (SQLite's write lock, a PostgreSQL row
        lock), so reading the existing firings under it and inserting the new ones cannot race
        another worker or process; the (workspace, trigger, profile, window) key stays the backstop."""
        ws, tid = t.workspace_id, t.trigger_id
        key = f"trigger:{tid}:{window_key}"
        guard = self.sender.guardrails
        with self.engine.begin() as c:
            pol = guard.lock(c, ws)
            # a round compiled the trigger before it took the lock: under it, the trigger must still
            # exist and (for new firings) be active, or a delete or pause in between is ignored
            status = c.execute(sa.select(T.status).where(T.trigger_id == tid)).scalar()
            if status is None or (status != "active" and not retry):
                return []
            fill_audience(c, pids)
            existing: dict[str, str] = dict(_FIRED.rows(c, ws=ws, tid=tid, window_key=window_key))
            todo = ([p for p in pids if existing.get(p) == "deferred"] if retry
                    else [p for p in pids if p not in existing])
            if not todo:
                return []
            # the control group: recorded as fired (at most once per window, like the others), never messaged
            held = [] if retry else held_out(t.d, tid, todo)
            if held:
                out_of = set(held)
                todo = [p for p in todo if p not in out_of]
            addresses = audience_addresses(c, ws, ch.address_type) if todo else {}
            reachable = [p for p in todo if p in addresses]
            spec = SendSpec(t.d.channel_id, f"trigger:{tid}", t.template.template.template_id,
                            {p: mask(addresses[p]) or "" for p in reachable})
            res = (guard.reserve_locked(c, pol, ws, ch.consent_channel, t.d.purpose, reachable, key, spec, now,
                                        in_audience=True) if reachable else Reservation())
            at = time.perf_counter()
            rows = [self._firing_row(p, res, ch, committed, at) for p in todo]
            rows += [{"profile_id": p, "status": HOLDOUT, "reason": None, "message_id": None, "latency_ms": None,
                      "retry_at": None} for p in held]
            if retry:
                c.execute(trigger_firings.update().where(
                    F.workspace_id == ws, F.trigger_id == tid, F.window_key == window_key,
                    F.profile_id == sa.bindparam("p")).values(
                    status=sa.bindparam("status"), reason=sa.bindparam("reason"),
                    message_id=sa.bindparam("message_id"), retry_at=sa.bindparam("retry_at")),
                    [{"p": r["profile_id"], "status": r["status"], "reason": r["reason"],
                      "message_id": r["message_id"], "retry_at": r["retry_at"]} for r in rows])
            else:
                self._record_firings(c, ws, tid, window_key, now, rows)
        if committed:  # the messages are durably queued now
            done, now_us = time.perf_counter(), time.time() * 1e6
            from_commit = METRICS.trigger_latency.labels(since="committed")
            from_receipt = METRICS.trigger_latency.labels(since="received")
            for p in res.message_ids:
                ms = (done - committed[p][0]) * 1000
                self.latencies_ms.append(ms)
                from_commit.observe(ms / 1000)
                if committed[p][1]:
                    ms = (now_us - committed[p][1]) / 1000
                    self.received_latencies_ms.append(ms)
                    from_receipt.observe(ms / 1000)
        return list(res.message_ids.values())

    @staticmethod
    def _record_firings(c: sa.Connection, ws: str, tid: str, window_key: str, now: datetime,
                        rows: list[dict[str, Any]]) -> None:
        """Insert the firings of one round: on SQLite one ``INSERT ... SELECT`` over a JSON array (one
        statement: see ``guardrails.Prepared.rows``), elsewhere an ``executemany``."""
        if c.dialect.name != "sqlite":
            for r in rows:
                r.update(workspace_id=ws, trigger_id=tid, window_key=window_key, fired_at=now)
            _RECORD_FIRING.execute_many(c, rows)
            return
        packed = orjson.dumps([(r["profile_id"], r["status"], r["reason"], r["message_id"], r["latency_ms"],
                                driver_value(c.dialect, r["retry_at"]) if r["retry_at"] else None) for r in rows])
        c.connection.cursor().execute(
            "INSERT INTO trigger_firings (workspace_id, trigger_id, window_key, fired_at, profile_id, status, reason, "
            "message_id, latency_ms, retry_at) SELECT ?, ?, ?, ?, json_extract(value, '$[0]'), "
            "json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'), "
            "json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(?)",
            (ws, tid, window_key, driver_value(c.dialect, now), packed.decode()))

    @staticmethod
    def _firing_row(p: str, res: Reservation, ch: Channel, committed: dict[str, tuple[float, int]] | None,
                    at: float) -> dict[str, Any]:
        """A firing's outcome: queued (with its message and the latency so far), deferred by quiet
        hours (with the time to retry), or suppressed (with the reason)."""
        if p in res.message_ids:
            lat = (at - committed[p][0]) * 1000 if committed and p in committed else None
            return {"profile_id": p, "status": "queued", "reason": None, "message_id": res.message_ids[p],
                    "latency_ms": lat, "retry_at": None}
        if p in res.deferred:
            return {"profile_id": p, "status": "deferred", "reason": f"quiet hours until {to_iso(res.deferred[p])}",
                    "message_id": None, "latency_ms": None, "retry_at": res.deferred[p]}
        reason = res.suppressed.get(p) or f"no {ch.address_type} address"
        return {"profile_id": p, "status": "suppressed", "reason": reason[:300], "message_id": None,
                "latency_ms": None, "retry_at": None}

    # -- delivery -------------------------------------------------------------------------------
    def deliver(self, t: Compiled, message_ids: Sequence[str]) -> int:
        """Send reserved messages of ``t`` through its channel (``Sender.deliver``: consent and
        suppressions checked again, at most once); returns how many were sent."""
        return self.sender.deliver(t.workspace_id, list(message_ids), t.template, vars=t.d.vars).sent

    def _delivery_worker(self) -> None:
        """Send what the real-time rounds reserved, batched by trigger, off the latency path (first
        what an earlier process left queued)."""
        try:
            self.deliver_pending()
        except Exception as exc:
            self.last_error = repr(exc)
            log.exception("trigger delivery sweep failed")
        while not self._stop.is_set():
            first = self._outbox.get()
            if first is None:
                return
            # second in line: gather for a moment (bigger, cheaper rounds) and let a real-time round
            # that is running or waiting finish first, as both share the interpreter and the store
            self._stop.wait(DELIVERY_GATHER_SECONDS)
            deadline = time.monotonic() + DELIVERY_MAX_YIELD_SECONDS
            while (self._realtime_busy or not self._queue.empty()) and time.monotonic() < deadline:
                if self._stop.wait(0.005):
                    break
            items = [first]
            while True:
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stop.set()
                    break
                items.append(item)
            try:
                self._deliver_items(items)
            except Exception as exc:  # the messages stay queued: the minute loop's sweep sends them
                self.last_error = repr(exc)
                log.exception("trigger delivery round failed")

    def _deliver_items(self, items: Sequence[tuple[Compiled, list[str]]]) -> int:
        by_trigger: dict[str, tuple[Compiled, list[str]]] = {}
        for t, ids in items:
            by_trigger.setdefault(t.trigger_id, (t, []))[1].extend(ids)
        return sum(self._deliver_round(t, ids) for t, ids in by_trigger.values())

    def _deliver_round(self, t: Compiled, ids: list[str]) -> int:
        """One delivery round of the real-time path: rows claimed and finished here, rendered and sent
        in the child process when there is one (see ``activate/delivery_process.py``)."""
        child = self.child
        if child is None or child.failed is not None:
            return self.deliver(t, ids)

        def send(ws: str, rows: list[Any]) -> list[Any]:
            try:
                return child.send_rows(ws, t.trigger_id, t.d.template, t.d.vars, rows)
            except DeliveryProcessError as exc:
                if not exc.taken:  # nothing left this process: send here
                    return self.sender.send_rows(ws, rows, t.template, t.d.vars, {})
                why = "the delivery process stopped while sending; outcome unknown, not resent"
                return [(r, SendResult.failed(why), 1, None, 0.0) for r in rows]

        return self.sender.deliver(t.workspace_id, ids, t.template, vars=t.d.vars, send=send).sent

    def deliver_pending(self) -> int:
        """Send the trigger messages still ``queued`` (reserved before a restart, or whose delivery
        round failed); returns how many were sent. Run by the minute loop."""
        compiled: dict[str, Compiled] = {}
        with self.engine.connect() as c:
            rows = c.execute(sa.select(triggers)).all()
        for r in rows:
            try:
                compiled[r.trigger_id] = self.compile(r.workspace_id, r.trigger_id,
                                                      TriggerDefinition.model_validate_json(r.definition))
            except InvalidInput as exc:
                log.warning("queued messages of trigger %s not sent: %s", r.trigger_id, exc)
        m = messages.c
        sent = 0
        for ws in sorted({t.workspace_id for t in compiled.values()}):
            with self.engine.connect() as c:
                queued = c.execute(sa.select(m.message_id, m.ref).where(
                    m.workspace_id == ws, m.status == "queued", m.ref.like("trigger:%"))).all()
            groups: dict[str, list[str]] = {}
            for mid, ref in queued:
                groups.setdefault(ref.removeprefix("trigger:"), []).append(mid)
            for tid, ids in groups.items():
                if tid in compiled:
                    sent += self.deliver(compiled[tid], ids)
        return sent

    # -- the minute loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("trigger timer round failed")

    def tick(self, now: datetime | None = None) -> dict[str, int]:
        """Fire the time-based triggers due at ``now`` and the deferred firings; returns
        {trigger_id: messages reserved}."""
        now = as_utc(now) or utcnow()
        out: dict[str, int] = {}
        for t in self.active():
            if t.d.kind == "after_event":
                out[t.trigger_id] = self.run_after_event(t, now)
            elif t.d.kind == "date":
                out[t.trigger_id] = self.run_date(t, now)
        self.retry_deferred(now)
        self.deliver_pending()
        if time.monotonic() - self._loaded_at > 60:
            self.reload()  # triggers changed by another process
        return out

    def _with_condition(self, t: Compiled, pids: list[str], now: datetime) -> list[str]:
        if t.condition is None or not pids:
            return pids
        values = load_profile_values(self.engine, t.workspace_id, pids)
        events = load_events(self.analytical, t.workspace_id, list(values)) if t.needs_history else {}
        pred = t.condition.at(now)
        return [p for p in pids if p in values and pred(values[p], events.get(p, ()))]

    def run_after_event(self, t: Compiled, now: datetime) -> int:
        """Customers whose latest event A is ``minutes`` old or more (at most ``max_delay_minutes``
        more) and who did no event B since."""
        a = t.d.after
        assert a is not None and t.event is not None
        a_rule: EventCondition = t.event.rule
        due = now - timedelta(minutes=a.minutes)
        lo = due - timedelta(minutes=a.max_delay_minutes)
        b_rule: EventCondition | None = t.without.rule if t.without is not None else None
        cur = self.analytical.cursor()
        try:
            rows = cur.execute(
                """SELECT canonical_id, type, event, name, "timestamp", properties FROM events_resolved
                   WHERE workspace_id = ? AND type = ? AND (? IS NULL OR event = ? OR name = ?)
                     AND "timestamp" >= ? AND "timestamp" <= ? ORDER BY "timestamp" """,
                [t.workspace_id, a_rule.type, a_rule.event, a_rule.event, a_rule.event, lo, now]).fetchall()
            latest: dict[str, Event] = {}
            for pid, typ, ev, name, ts, props in rows:
                e = Event(typ, ev, ts, orjson.loads(props) if props else {}, name)
                if t.event.matches({}, [e], now):
                    latest[pid] = e  # ordered by time: the last one wins
            # a later A restarts the clock: only customers whose latest A is due
            due_a = {p: e for p, e in latest.items() if lo <= e.timestamp <= due}
            if not due_a:
                return 0
            cancelled: set[str] = set()
            if b_rule is not None and t.without is not None:
                cur.register("_due", _arrow_ids(list(due_a)))
                rows = cur.execute(
                    """SELECT canonical_id, type, event, name, "timestamp", properties FROM events_resolved
                       WHERE workspace_id = ? AND type = ? AND (? IS NULL OR event = ? OR name = ?)
                         AND "timestamp" >= ? AND canonical_id IN (SELECT pid FROM _due)""",
                    [t.workspace_id, b_rule.type, b_rule.event, b_rule.event, b_rule.event, lo]).fetchall()
                cur.unregister("_due")
                for pid, typ, ev, name, ts, props in rows:
                    if ts > due_a[pid].timestamp and t.without.matches(
                            {}, [Event(typ, ev, ts, orjson.loads(props) if props else {}, name)], now):
                        cancelled.add(pid)
        finally:
            cur.close()
        pids = self._with_condition(t, sorted(set(due_a) - cancelled), now)
        windows: dict[str, list[str]] = {}
        for p in pids:
            windows.setdefault(t.d.window.key(due_a[p].timestamp), []).append(p)
        return self.fire(t, pids, windows, now) if pids else 0

    def run_date(self, t: Compiled, now: datetime) -> int:
        """Customers whose date (or anniversary) minus ``days_before`` is today in their time zone
        and whose local time has reached ``time_of_day``."""
        dr = t.d.date
        assert dr is not None
        info = self.gk.facts.ensure(t.workspace_id)
        col = field_column(dr.field)
        has_tz = info.catalog.get("attributes.timezone") == "string"
        # candidates: the target day is today somewhere on Earth (UTC-12 .. UTC+14), i.e. yesterday,
        # today or tomorrow in UTC; the exact local check follows in Python
        days = [now.date() + timedelta(days=k) for k in (-1, 0, 1)]
        targets = [x + timedelta(days=dr.days_before) for x in days]
        cur = self.analytical.cursor()
        try:
            tz_sql = f', "{field_column("attributes.timezone")}"' if has_tz else ", NULL"
            if dr.yearly:
                md = [x.strftime("%m-%d") for x in targets] + (["02-29"] if any(
                    x.month == 2 and x.day == 28 for x in targets) else [])
                rows = cur.execute(f'SELECT profile_id, "{col}"{tz_sql} FROM "{info.table}" '
                                   f'WHERE strftime("{col}" AT TIME ZONE \'UTC\', \'%m-%d\') IN '
                                   f'(SELECT unnest(?::VARCHAR[]))', [md]).fetchall()
            else:
                rows = cur.execute(f'SELECT profile_id, "{col}"{tz_sql} FROM "{info.table}" '
                                   f'WHERE CAST("{col}" AT TIME ZONE \'UTC\' AS DATE) IN (SELECT unnest(?::DATE[]))',
                                   [targets]).fetchall()
        finally:
            cur.close()
        windows: dict[str, list[str]] = {}
        default_tz = ZoneInfo(t.d.window.timezone)
        for pid, value, tzname in rows:
            when = coerce(value, "datetime")
            if when is None:
                continue
            tz = _zone(tzname) or default_tz
            local = now.astimezone(tz)
            occurrence = _occurrence(when.astimezone(UTC).date(), local.date(), dr.yearly, dr.days_before)
            if occurrence is not None and local.time() >= dr.time_of_day:
                windows.setdefault(f"date:{occurrence.isoformat()}", []).append(pid)
        if not windows:
            return 0
        pids = set(self._with_condition(t, [p for g in windows.values() for p in g], now))
        windows = {k: [p for p in g if p in pids] for k, g in windows.items()}
        return self.fire(t, sorted(pids), {k: g for k, g in windows.items() if g}, now)

    def retry_deferred(self, now: datetime) -> int:
        """Send the firings deferred by quiet hours whose window has ended."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(F.workspace_id, F.trigger_id, F.window_key, F.profile_id).where(
                F.status == "deferred", F.retry_at <= now)).all()
        if not rows:
            return 0
        compiled = {t.trigger_id: t for t in self.active()}
        groups: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            groups.setdefault((r.trigger_id, r.window_key), []).append(r.profile_id)
        n = 0
        for (tid, key), pids in groups.items():
            t = compiled.get(tid)
            if t is None:
                continue
            ch = self.sender.channels.open(t.workspace_id, t.d.channel_id)
            for k in range(0, len(pids), GUARD_CHUNK):
                ids = self._reserve(t, ch, pids[k : k + GUARD_CHUNK], key, now, retry=True)
                if ids:
                    self.deliver(t, ids)
                n += len(ids)
        return n


def _arrow_ids(ids: list[str]) -> Any:
    import pyarrow as pa

    return pa.table({"pid": pa.array(ids, pa.string())})


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _occurrence(value: date, today: date, yearly: bool, days_before: int) -> date | None:
    """The occurrence of ``value`` that fires ``today`` (``days_before`` ahead), or None."""
    target = today + timedelta(days=days_before)
    if not yearly:
        return value if value == target else None
    day = value.day
    if value.month == 2 and day == 29 and not _leap(target.year):
        day = 28  # a 29 February date is celebrated on the 28th in common years
    return target if (target.month, target.day) == (value.month, day) else None


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
