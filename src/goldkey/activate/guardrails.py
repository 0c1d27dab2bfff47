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

from collections import defaultdict
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
from goldkey.govern.consent import CHANNELS
from goldkey.store.operational import consents, messages, profiles, send_counters, send_policies, suppressions
from goldkey.store.upsert import upsert

CHUNK = 5000  # profiles per query / per reservation transaction (well under SQLite's 32766 parameters)
OVERALL = "*"


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


def _chunks(ids: Sequence[str], n: int = CHUNK) -> Iterator[list[str]]:
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
        live = self._live_timezones(c, ws, ids)
        supp = self._suppressed(c, ws, channel, ids, now)
        consent = self.latest_consents(c, ws, channel, purpose, ids)
        dup = self._already_sent(c, ws, message_key, ids)
        exempt = purpose in pol.exempt_purposes
        counts = {} if exempt else self._counts(c, pol, ws, ids, now)
        ws_tz = ZoneInfo(pol.timezone)
        today = now.astimezone(ws_tz).date()
        for pid in ids:
            if pid not in live:
                out.suppressed[pid] = "not a live profile (unknown, or merged into another)"
            elif pid in supp:
                out.suppressed[pid] = f"suppressed: {supp[pid]}"
            elif consent.get(pid) != "granted":
                out.suppressed[pid] = (f"opted out of {channel}/{purpose}" if consent.get(pid) == "denied"
                                       else f"no consent for {channel}/{purpose}")
            elif pid in dup:
                out.suppressed[pid] = f"duplicate: message {message_key!r} already sent"
            elif not exempt and (why := self._capped(pol, channel, counts.get(pid), today)):
                out.suppressed[pid] = why
            elif not exempt and pol.quiet_hours is not None and (
                    until := self._quiet_until(pol.quiet_hours, now, self._tz(live[pid]) or ws_tz)):
                out.deferred[pid] = until
            else:
                out.allowed.append(pid)
        return out

    def _live_timezones(self, c: sa.Connection, ws: str, ids: list[str]) -> dict[str, str | None]:
        p = profiles.c
        if c.dialect.name == "postgresql":
            tz = sa.cast(p.attributes, sa.JSON)["timezone"].as_string()
        else:
            tz = sa.func.json_extract(p.attributes, "$.timezone")
        rows = c.execute(sa.select(p.profile_id, tz).where(
            p.workspace_id == ws, p.profile_id.in_(ids), p.merged_into.is_(None))).all()
        return {r[0]: r[1] for r in rows}

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
    def _suppressed(c: sa.Connection, ws: str, channel: str, ids: list[str], now: datetime) -> dict[str, str]:
        s = suppressions.c
        rows = c.execute(sa.select(s.profile_id, s.reason, s.expires_at).where(
            s.workspace_id == ws, s.profile_id.in_(ids), s.channel.in_([channel, OVERALL]))).all()
        return {r.profile_id: r.reason for r in rows if r.expires_at is None or as_utc(r.expires_at) > now}

    @staticmethod
    def latest_consents(c: sa.Connection, ws: str, channel: str, purpose: str, ids: list[str]) -> dict[str, str]:
        """``{live profile id: granted | denied}``: the latest decision across every profile merged
        into it (a denial wins a tie); profiles without any decision are absent."""
        k, p = consents.c, profiles.c
        rows = c.execute(sa.select(p.canonical_id, k.status, k.updated_at)
                         .join(profiles, p.profile_id == k.profile_id)
                         .where(k.workspace_id == ws, k.channel == channel, k.purpose == purpose,
                                p.canonical_id.in_(ids))).all()
        latest: dict[str, tuple[datetime, str]] = {}
        for cid, status, at in rows:
            at = as_utc(at)
            prev = latest.get(cid)
            if prev is None or at > prev[0] or (at == prev[0] and status == "denied"):
                latest[cid] = (at, status)
        return {cid: st for cid, (_, st) in latest.items()}

    @staticmethod
    def _already_sent(c: sa.Connection, ws: str, message_key: str, ids: list[str]) -> set[str]:
        m = messages.c
        return set(c.execute(sa.select(m.profile_id).where(
            m.workspace_id == ws, m.message_key == message_key, m.profile_id.in_(ids))).scalars())

    @staticmethod
    def _counts(c: sa.Connection, pol: SendPolicy, ws: str, ids: list[str],
                now: datetime) -> dict[str, dict[tuple[str, date], int]]:
        start = week_start(now.astimezone(ZoneInfo(pol.timezone)).date())
        k = send_counters.c
        out: dict[str, dict[tuple[str, date], int]] = defaultdict(dict)
        for pid, ch, day, n in c.execute(sa.select(k.profile_id, k.channel, k.day, k.count).where(
                k.workspace_id == ws, k.profile_id.in_(ids), k.day >= start)):
            out[pid][(ch, day)] = n
        return out

    @staticmethod
    def _capped(pol: SendPolicy, channel: str, counts: dict[tuple[str, date], int] | None, today: date) -> str | None:
        if not counts:
            counts = {}
        start = week_start(today)
        for key in (channel, OVERALL):
            cap = pol.caps.get(key)
            if cap is None:
                continue
            rel = [(d, n) for (ch, d), n in counts.items() if key == OVERALL or ch == key]
            day_n = sum(n for d, n in rel if d == today)
            week_n = sum(n for d, n in rel if start <= d <= today)
            label = "all channels" if key == OVERALL else key
            if cap.day is not None and day_n >= cap.day:
                return f"frequency cap: {label} {day_n}/{cap.day} today"
            if cap.week is not None and week_n >= cap.week:
                return f"frequency cap: {label} {week_n}/{cap.week} this week"
        return None

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
        c.execute(messages.insert(), [
            {"message_id": mid, "workspace_id": ws, "profile_id": pid, "channel_id": spec.channel_id,
             "channel": channel, "purpose": purpose, "message_key": message_key, "ref": spec.ref,
             "template_id": spec.template_id, "status": "queued", "attempts": 0,
             "address": spec.addresses.get(pid), "created_at": now, "updated_at": now}
            for pid, mid in ids.items()])
        if purpose in pol.exempt_purposes:
            return
        if c.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        day = now.astimezone(ZoneInfo(pol.timezone)).date()
        stmt = insert(send_counters)
        stmt = stmt.on_conflict_do_update(index_elements=["workspace_id", "profile_id", "channel", "day"],
                                          set_={"count": send_counters.c.count + stmt.excluded.count})
        c.execute(stmt, [{"workspace_id": ws, "profile_id": pid, "channel": channel, "day": day, "count": 1}
                         for pid in ids])
