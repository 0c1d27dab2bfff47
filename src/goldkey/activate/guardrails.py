"""Send guardrails: consent, suppression, frequency caps, quiet hours and de-duplication, in bulk.

Every send passes here. ``Guardrails.check`` answers for a whole audience at once (a handful of
set-based queries per chunk of ``CHUNK`` profiles, never one query per customer):

1. **suppression** — a row in ``suppressions`` for the channel or ``*`` (bounces, complaints, a
   brand's do-not-contact list), unless expired;
2. **consent** — the latest decision for (channel, purpose) across every profile merged into the
   customer must be ``granted`` (no decision = no consent; a denial wins a tie), the rule
   ``govern.consent.has_consent`` and the segments' call-list export also follow;
3. **de-duplication** — a message with the same ``message_key`` already went to the customer;
4. **frequency caps** — per channel and overall (``"*"``), per day and per ISO week, counted in
   ``send_counters`` by the workspace's calendar (``SendPolicy.timezone``);
5. **quiet hours** — in the customer's own time zone (``attributes.timezone``, an IANA name;
   default the workspace's), the customer is *deferred* to the end of the quiet window, not dropped.

``reserve`` is the same check made *atomic with the claim*: in one transaction per chunk it takes
the workspace's reservation lock (an UPDATE of its ``send_policies`` row: SQLite's single writer
lock, a PostgreSQL row lock), re-reads the counters, and for the customers that pass increments
their counters and inserts their ``queued`` message rows (the unique (workspace, message_key,
profile) key makes de-duplication hold even across processes). Two concurrent campaigns therefore
never both pass the same customer's cap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import InvalidInput
from goldkey.core.ids import new_ids
from goldkey.govern.consent import CHANNELS, latest_decision
from goldkey.store.operational import messages, profiles, send_counters, send_policies, suppressions
from goldkey.store.upsert import upsert

CHUNK = 5000  # profiles per IN (...) list (well under SQLite's 32766 parameters)
GUARD_CHUNK = 20_000  # profiles per guardrail query / per reservation transaction (the workspace lock's hold)
OVERALL = "*"

# The audience of one query, per connection: a temporary table joined by the guardrail and address
# queries, so a chunk is one set-based query instead of IN lists of thousands of bound parameters.
AUDIENCE = sa.Table("gk_audience", sa.MetaData(), sa.Column("profile_id", sa.String(40), primary_key=True),
                    prefixes=["TEMPORARY"])


def fill_audience(c: sa.Connection, ids: Sequence[str]) -> sa.Table:
    """Put ``ids`` (distinct) in the connection's temporary ``gk_audience`` table, created on first use
    (SQLite and PostgreSQL temporary tables are private to their connection)."""
    c.execute(sa.text("CREATE TEMPORARY TABLE IF NOT EXISTS gk_audience (profile_id VARCHAR(40) PRIMARY KEY)"))
    c.execute(AUDIENCE.delete())
    if ids:  # straight DBAPI executemany of 1-tuples: SQLAlchemy's per-row parameter handling costs 5x more
        mark = "?" if c.dialect.paramstyle == "qmark" else "%s"
        c.exec_driver_sql(f"INSERT INTO gk_audience (profile_id) VALUES ({mark})", [(p,) for p in ids])
    return AUDIENCE


def json_text(dialect: str, column: Any, key: str) -> Any:
    """``column`` (JSON text) -> the text of its top-level ``key``, on SQLite or PostgreSQL."""
    if dialect == "postgresql":
        return sa.cast(column, sa.JSON)[key].as_string()
    return sa.func.json_extract(column, f"$.{key}")


class Cap(BaseModel):
    """Most messages per day and per week (None: no limit)."""

    model_config = ConfigDict(extra="forbid")
    day: int | None = Field(None, ge=0)
    week: int | None = Field(None, ge=0)


class QuietHours(BaseModel):
    """No marketing message between ``start`` and ``end`` in the customer's local time."""

    model_config = ConfigDict(extra="forbid")
    start: time = time(21, 0)
    end: time = time(8, 0)


class SendPolicy(BaseModel):
    """A workspace's send policy (``GET/PUT /api/v1/send-policy``)."""

    model_config = ConfigDict(extra="forbid")
    timezone: str = Field("Asia/Shanghai", description="The workspace's time zone: calendar of caps, "
                          "and quiet hours of customers without attributes.timezone.")
    caps: dict[str, Cap] = Field(
        default_factory=lambda: {OVERALL: Cap(day=3, week=10)},
        description='Caps per consent channel, and "*" for all channels together.')
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    exempt_purposes: list[str] = Field(
        default_factory=lambda: ["transactional"],
        description="Purposes not counted against caps nor held by quiet hours (consent and suppression apply).")
    tracking_base_url: str = Field("http://127.0.0.1:8000", description="Public base URL of the tracking links.")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("caps")
    @classmethod
    def _cap_keys(cls, v: dict[str, Cap]) -> dict[str, Cap]:
        for k in v:
            if k != OVERALL and k not in CHANNELS:
                raise ValueError(f"caps key {k!r} must be '*' or one of {', '.join(CHANNELS)}")
        return v

    @field_validator("tracking_base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("tracking_base_url must start with http:// or https://")
        return v.rstrip("/")


@dataclass
class Verdict:
    """The outcome of a check: who may be sent to now, who not (with the reason), who later.

    Unpacks as ``allowed, suppressed = verdict``."""

    allowed: list[str] = field(default_factory=list)
    suppressed: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, datetime] = field(default_factory=dict)  # quiet hours: earliest allowed time (UTC)

    def __iter__(self) -> Iterator[Any]:
        yield self.allowed
        yield self.suppressed

    def merge(self, other: Verdict) -> None:
        self.allowed += other.allowed
        self.suppressed.update(other.suppressed)
        self.deferred.update(other.deferred)


@dataclass
class Reservation(Verdict):
    """A check whose allowed customers now hold a ``queued`` message row each."""

    message_ids: dict[str, str] = field(default_factory=dict)  # profile_id -> message_id


@dataclass(frozen=True)
class SendSpec:
    """What a reservation writes on each message row."""

    channel_id: str
    ref: str = ""
    template_id: str = ""
    addresses: dict[str, str] = field(default_factory=dict)  # profile_id -> masked address


def parse_policy(data: Any) -> SendPolicy:
    """Parse a policy document; raise InvalidInput naming the field."""
    try:
        return SendPolicy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(err["msg"].removeprefix("Value error, "), field=loc or "policy") from None


def _chunks(ids: Sequence[str], n: int = GUARD_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(ids), n):
        yield list(ids[i : i + n])


def week_start(d: date) -> date:
    return d - timedelta(days=d.weekday())


class Guardrails:
    """Bulk guardrail checks and atomic reservations over the operational store."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._tz_cache: dict[str, ZoneInfo | None] = {}

    # -- policy ------------------------------------------------------------------------------
    def policy(self, ws: str, conn: sa.Connection | None = None) -> SendPolicy:
        """The workspace's policy (the defaults when none was saved)."""
        q = sa.select(send_policies.c.policy).where(send_policies.c.workspace_id == ws)
        if conn is None:
            with self.engine.connect() as c:
                raw = c.execute(q).scalar()
        else:
            raw = conn.execute(q).scalar()
        return SendPolicy.model_validate(orjson.loads(raw)) if raw else SendPolicy()

    def set_policy(self, ws: str, data: Any) -> SendPolicy:
        """Validate and save the workspace's policy; raise InvalidInput."""
        pol = parse_policy(data)
        with self.engine.begin() as c:
            upsert(c, send_policies, [{"workspace_id": ws, "policy": pol.model_dump_json(), "updated_at": utcnow()}],
                   keys=["workspace_id"])
        return pol

    # -- suppressions -------------------------------------------------------------------------
    def suppress(self, ws: str, profile_ids: Sequence[str], channel: str, reason: str, *, source: str = "api",
                 expires_at: datetime | None = None) -> int:
        """Add (or replace) suppressions of ``profile_ids`` on ``channel`` (``*``: every channel)."""
        if channel != OVERALL and channel not in CHANNELS:
            raise InvalidInput(f"channel must be '*' or one of {', '.join(CHANNELS)}", field="channel")
        if not reason.strip():
            raise InvalidInput("give the reason of the suppression", field="reason")
        now = utcnow()
        rows = [{"workspace_id": ws, "profile_id": p, "channel": channel, "reason": reason[:300],
                 "source": source[:60], "created_at": now, "expires_at": expires_at}
                for p in dict.fromkeys(profile_ids)]
        with self.engine.begin() as c:
            upsert(c, suppressions, rows, keys=["workspace_id", "profile_id", "channel"])
        return len(rows)

    # -- the check ----------------------------------------------------------------------------
    def check(self, ws: str, channel: str, purpose: str, profile_ids: Sequence[str], message_key: str,
              now: datetime | None = None) -> Verdict:
        """Which of ``profile_ids`` may receive ``message_key`` on ``channel`` for ``purpose`` at
        ``now`` (read only: nothing is reserved). Raise InvalidInput for an unknown channel."""
        self._validate(channel, purpose, message_key)
        now = as_utc(now) or utcnow()
        out = Verdict()
        with self.engine.connect() as c:
            pol = self.policy(ws, c)
            for chunk in _chunks(list(dict.fromkeys(profile_ids))):
                out.merge(self._check_chunk(c, pol, ws, channel, purpose, chunk, message_key, now))
        return out

    def reserve(self, ws: str, channel: str, purpose: str, profile_ids: Sequence[str], message_key: str,
                spec: SendSpec, now: datetime | None = None) -> Reservation:
        """Check and, atomically per chunk, claim: counters incremented and a ``queued`` message row
        inserted for each allowed customer. Returns their message ids."""
        self._validate(channel, purpose, message_key)
        now = as_utc(now) or utcnow()
        self._ensure_policy_row(ws)
        out = Reservation()
        for chunk in _chunks(list(dict.fromkeys(profile_ids))):
            with self.engine.begin() as c:
                # the lock: later reservations of this workspace wait until this transaction commits
                c.execute(send_policies.update().where(send_policies.c.workspace_id == ws)
                          .values(reservations=send_policies.c.reservations + 1))
                pol = self.policy(ws, c)
                v = self._check_chunk(c, pol, ws, channel, purpose, chunk, message_key, now)
                if v.allowed:
                    ids = dict(zip(v.allowed, new_ids("out", len(v.allowed)), strict=True))
                    self._claim(c, pol, ws, channel, purpose, message_key, spec, ids, now)
                    out.message_ids.update(ids)
                out.merge(v)
        return out

    def release(self, ws: str, channel: str, purpose: str, profile_ids: Sequence[str], at: datetime) -> None:
        """Give back the cap units of reservations that were never sent (e.g. a cancelled campaign)."""
        pol = self.policy(ws)
        if purpose in pol.exempt_purposes or not profile_ids:
            return
        day = at.astimezone(ZoneInfo(pol.timezone)).date()
        c_ = send_counters.c
        with self.engine.begin() as c:
            for chunk in _chunks(list(profile_ids)):
                c.execute(send_counters.update().where(
                    c_.workspace_id == ws, c_.profile_id.in_(chunk), c_.channel == channel, c_.day == day,
                    c_.count > 0).values(count=c_.count - 1))

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _validate(channel: str, purpose: str, message_key: str) -> None:
        if channel not in CHANNELS:
            raise InvalidInput(f"channel must be one of {', '.join(CHANNELS)}", field="channel")
        if not purpose or len(purpose) > 40:
            raise InvalidInput("purpose must be 1 to 40 characters", field="purpose")
        if not message_key or len(message_key) > 200:
            raise InvalidInput("message_key must be 1 to 200 characters", field="message_key")

    def _ensure_policy_row(self, ws: str) -> None:
        with self.engine.connect() as c:
            found = c.execute(sa.select(send_policies.c.workspace_id).where(send_policies.c.workspace_id == ws)).first()
        if found is None:
            if c.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            with self.engine.begin() as c:
                c.execute(insert(send_policies).values(
                    workspace_id=ws, policy=SendPolicy().model_dump_json(), reservations=0, updated_at=utcnow(),
                ).on_conflict_do_nothing(index_elements=["workspace_id"]))

    def _check_chunk(self, c: sa.Connection, pol: SendPolicy, ws: str, channel: str, purpose: str,
                     ids: list[str], message_key: str, now: datetime) -> Verdict:
        out = Verdict()
        exempt = purpose in pol.exempt_purposes
        ws_tz = ZoneInfo(pol.timezone)
        today = now.astimezone(ws_tz).date()
        fill_audience(c, ids)
        q = self._facts_query(c.dialect.name, ws, channel, purpose, message_key, today, now)
        rows = {r[0]: r for r in c.execute(q)}
        quiet: dict[ZoneInfo, datetime | None] = {}  # the end of the quiet window depends on the zone only
        for pid in ids:
            r = rows.get(pid)
            if r is None or not r.live:
                out.suppressed[pid] = "not a live profile (unknown, or merged into another)"
            elif r.suppressed is not None:
                out.suppressed[pid] = f"suppressed: {r.suppressed}"
            elif r.consent != "granted":
                out.suppressed[pid] = (f"opted out of {channel}/{purpose}" if r.consent == "denied"
                                       else f"no consent for {channel}/{purpose}")
            elif r.dup:
                out.suppressed[pid] = f"duplicate: message {message_key!r} already sent"
            elif not exempt and (why := self._capped(pol, channel, (r.day_ch, r.day_all, r.week_ch, r.week_all))):
                out.suppressed[pid] = why
            elif not exempt and pol.quiet_hours is not None and (
                    until := self._quiet(quiet, pol.quiet_hours, now, self._tz(r.tz) or ws_tz)):
                out.deferred[pid] = until
            else:
                out.allowed.append(pid)
        return out

    @staticmethod
    def _facts_query(dialect: str, ws: str, channel: str, purpose: str, message_key: str, today: date,
                     now: datetime) -> Any:
        """One row per audience member (the temporary ``gk_audience`` table): whether the profile is
        live, its time zone, an active suppression's reason, the latest consent decision, whether
        ``message_key`` already went to it, and its send counts today / this week on ``channel``
        and on every channel. Correlated subqueries on indexed keys: no per-customer round trip."""
        a, p, s, m, k = AUDIENCE.c, profiles.c, suppressions.c, messages.c, send_counters.c
        tz = json_text(dialect, p.attributes, "timezone")
        supp = (sa.select(s.reason).where(s.workspace_id == ws, s.profile_id == a.profile_id,
                                          s.channel.in_([channel, OVERALL]),
                                          sa.or_(s.expires_at.is_(None), s.expires_at > now))
                .limit(1).scalar_subquery())
        dup = sa.exists().where(m.workspace_id == ws, m.message_key == message_key, m.profile_id == a.profile_id)
        start = week_start(today)

        def count(*where: Any) -> Any:
            return sa.func.coalesce(sa.select(sa.func.sum(k.count)).where(
                k.workspace_id == ws, k.profile_id == a.profile_id, *where).scalar_subquery(), 0)

        return (sa.select(a.profile_id, p.profile_id.is_not(None).label("live"), tz.label("tz"),
                          supp.label("suppressed"),
                          latest_decision(channel, purpose, a.profile_id).label("consent"), dup.label("dup"),
                          count(k.channel == channel, k.day == today).label("day_ch"),
                          count(k.day == today).label("day_all"),
                          count(k.channel == channel, k.day >= start, k.day <= today).label("week_ch"),
                          count(k.day >= start, k.day <= today).label("week_all"))
                .select_from(AUDIENCE.outerjoin(profiles, sa.and_(p.profile_id == a.profile_id, p.workspace_id == ws,
                                                                  p.merged_into.is_(None)))))

    def _tz(self, name: str | None) -> ZoneInfo | None:
        if not name or not isinstance(name, str):
            return None
        if name not in self._tz_cache:
            try:
                self._tz_cache[name] = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                self._tz_cache[name] = None
        return self._tz_cache[name]

    @staticmethod
    def latest_consents(c: sa.Connection, ws: str, channel: str, purpose: str, ids: list[str]) -> dict[str, str]:
        """``{live profile id: granted | denied}``: the latest decision across every profile merged
        into it (``govern.consent.latest_decision``); profiles without any decision are absent."""
        fill_audience(c, ids)
        q = sa.select(AUDIENCE.c.profile_id, latest_decision(channel, purpose, AUDIENCE.c.profile_id))
        return {pid: st for pid, st in c.execute(q) if st is not None}

    @staticmethod
    def _capped(pol: SendPolicy, channel: str, n: tuple[int, int, int, int]) -> str | None:
        """The cap ``n`` = (today on channel, today overall, this week on channel, this week overall)
        reaches, as a reason; None when under every cap."""
        day_ch, day_all, week_ch, week_all = n
        for key, day_n, week_n in ((channel, day_ch, week_ch), (OVERALL, day_all, week_all)):
            cap = pol.caps.get(key)
            if cap is None:
                continue
            label = "all channels" if key == OVERALL else key
            if cap.day is not None and day_n >= cap.day:
                return f"frequency cap: {label} {day_n}/{cap.day} today"
            if cap.week is not None and week_n >= cap.week:
                return f"frequency cap: {label} {week_n}/{cap.week} this week"
        return None

    def _quiet(self, cache: dict[ZoneInfo, datetime | None], q: QuietHours, now: datetime,
               tz: ZoneInfo) -> datetime | None:
        if tz not in cache:
            cache[tz] = self._quiet_until(q, now, tz)
        return cache[tz]

    @staticmethod
    def _quiet_until(q: QuietHours, now: datetime, tz: ZoneInfo) -> datetime | None:
        local = now.astimezone(tz)
        t = local.time().replace(tzinfo=None)
        if q.start == q.end:
            return None
        inside = (q.start <= t < q.end) if q.start < q.end else (t >= q.start or t < q.end)
        if not inside:
            return None
        end_day = local.date() if t < q.end else local.date() + timedelta(days=1)
        end = datetime.combine(end_day, q.end, tzinfo=tz)
        return end.astimezone(now.tzinfo)

    @staticmethod
    def _claim(c: sa.Connection, pol: SendPolicy, ws: str, channel: str, purpose: str, message_key: str,
               spec: SendSpec, ids: dict[str, str], now: datetime) -> None:
        """Insert the ``queued`` rows and count the sends: straight DBAPI ``executemany`` of tuples for
        the rows (SQLAlchemy's per-row parameter handling was most of a 1M reservation), then one
        ``INSERT ... SELECT ... ON CONFLICT`` over the audience table for the counters."""
        mark = "?" if c.dialect.paramstyle == "qmark" else "%s"
        to_db = sa.DateTime(timezone=True).bind_processor(c.dialect)
        at = to_db(now) if to_db else now
        cols = ("message_id", "workspace_id", "profile_id", "channel_id", "channel", "purpose", "message_key", "ref",
                "template_id", "status", "attempts", "address", "created_at", "updated_at")
        c.exec_driver_sql(
            f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})",
            [(mid, ws, pid, spec.channel_id, channel, purpose, message_key, spec.ref, spec.template_id, "queued", 0,
              spec.addresses.get(pid), at, at) for pid, mid in ids.items()])
        if purpose in pol.exempt_purposes:
            return
        fill_audience(c, list(ids))
        day = now.astimezone(ZoneInfo(pol.timezone)).date()
        # "WHERE true": SQLite needs it to read ON CONFLICT after INSERT ... SELECT
        c.execute(sa.text(
            "INSERT INTO send_counters (workspace_id, profile_id, channel, day, count) "
            "SELECT :ws, profile_id, :channel, :day, 1 FROM gk_audience WHERE true "
            "ON CONFLICT (workspace_id, profile_id, channel, day) DO UPDATE SET count = send_counters.count + 1"
        ).bindparams(sa.bindparam("day", type_=sa.Date)), {"ws": ws, "channel": channel, "day": day})
