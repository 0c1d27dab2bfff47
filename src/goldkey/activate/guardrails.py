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
never both pass the same customer's cap. A caller that must make more than the reservation atomic
(a trigger recording its firing) takes the lock itself (``lock``) and calls ``reserve_locked`` in its
transaction; ``reserve(..., address_type=...)`` looks the addresses up in the same transaction.

``recheck`` is the send-time half: consent and suppressions read again when a reserved message is
about to go out (``Sender.deliver``), so an opt-out between queueing and sending stops it.

The hot statements are compiled once per dialect and run through the DBAPI cursor (``Prepared``):
for a 1M-customer campaign or a real-time trigger round, SQLAlchemy's per-call expression building
and result rows cost several times what SQLite spends on the queries themselves.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import InvalidInput, validated
from goldkey.core.ids import new_ids
from goldkey.govern.consent import CHANNELS, latest_decision
from goldkey.store.operational import identities, messages, profiles, send_counters, send_policies, suppressions
from goldkey.store.upsert import upsert

CHUNK = 5000  # profiles per IN (...) list (well under SQLite's 32766 parameters)
GUARD_CHUNK = 20_000  # profiles per guardrail query / per reservation transaction (the workspace lock's hold)
OVERALL = "*"

# The audience of one query, per connection: a temporary table joined by the guardrail and address
# queries, so a chunk is one set-based query instead of IN lists of thousands of bound parameters.
AUDIENCE = sa.Table("gk_audience", sa.MetaData(), sa.Column("profile_id", sa.String(40), primary_key=True),
                    prefixes=["TEMPORARY"])


class Prepared:
    """A statement built and compiled once per dialect, then run straight through the DBAPI cursor.

    Building, caching and compiling SQLAlchemy expressions cost about 10 ms of CPU per reservation
    (the statements themselves run in well under a millisecond on indexed keys), which a real-time
    trigger pays on every round. The hot statements are therefore written once with named
    ``bindparam``s, compiled once per dialect, and executed with ``exec_driver_sql``; the values
    are converted by ``driver_value`` (dates and datetimes as the column types store them). The
    rows come back as the driver returns them (SQLite booleans are 0/1)."""

    def __init__(self, build: Callable[[str], Any]) -> None:
        self._build = build  # dialect name -> the statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._packed_query: Prepared | None = None

    def _compiled_for(self, d: Any) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        hit = self._compiled.get(d.name)
        if hit is None:
            with self._lock:
                comp = self._build(d.name).compile(dialect=d)
                order = tuple(comp.positiontup) if comp.positiontup is not None else None
                # the literal values the expression holds (anonymous binds), by name
                fixed = {k: b.value for k, b in comp.binds.items() if b.value is not None and not b.required}
                hit = self._compiled[d.name] = (comp.string, order, fixed)
        return hit

    def execute(self, c: sa.Connection, **values: Any) -> Any:
        """Run with ``values`` for the named bind parameters in ``c``'s transaction; returns the DBAPI
        cursor (iterate it or ``fetchall()`` for plain tuples; ``rowcount`` for DML). SQLAlchemy's
        result rows cost three times what SQLite spends on the guardrail query itself."""
        d = c.dialect
        sql, order, fixed = self._compiled_for(d)
        params = {**fixed, **{k: driver_value(d, v) for k, v in values.items()}}
        cur = c.connection.cursor()
        cur.execute(sql, tuple(params[k] for k in order) if order is not None else params)
        return cur

    def rows(self, c: sa.Connection, **values: Any) -> list[tuple[Any, ...]]:
        """The result rows of a SELECT as plain tuples. On SQLite the rows come back packed in one
        JSON array (``json_group_array``): one ``sqlite3_step`` instead of one per row, and the
        driver releases and re-takes the GIL at every step -- with the writer and the delivery
        worker busy in the same process, each re-take can wait a whole switch interval."""
        if c.dialect.name != "sqlite":
            return self.execute(c, **values).fetchall()
        found = self._packed.execute(c, **values).fetchone()
        return [tuple(r) for r in orjson.loads(found[0])] if found and found[0] else []

    @property
    def _packed(self) -> Prepared:
        if self._packed_query is None:
            def build(dialect: str) -> Any:
                sub = self._build(dialect).subquery()
                return sa.select(sa.func.json_group_array(sa.func.json_array(*sub.c)))

            self._packed_query = Prepared(build)
        return self._packed_query

    def execute_many(self, c: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Run once per row of values (a DBAPI ``executemany``)."""
        if not rows:
            return
        d = c.dialect
        sql, order, fixed = self._compiled_for(d)
        many = [{**fixed, **{k: driver_value(d, v) for k, v in r.items()}} for r in rows]
        c.connection.cursor().executemany(sql, [tuple(p[k] for k in order) for p in many] if order is not None
                                          else many)


_PROCESSORS: dict[tuple[str, type], Any] = {}


def driver_value(dialect: Any, value: Any) -> Any:
    """``value`` as the DBAPI takes it for an operational-store column: datetimes as ``TS`` columns
    store them, dates as ``Date`` columns do (SQLite keeps both as text; PostgreSQL takes them as they are)."""
    if isinstance(value, datetime):
        kind: type = datetime
        typ: Any = sa.DateTime(timezone=True)
    elif isinstance(value, date):
        kind, typ = date, sa.Date()
    else:
        return value
    key = (dialect.name, kind)
    if key not in _PROCESSORS:  # the dialect's own type: SQLite's stores SQLAlchemy's text format
        _PROCESSORS[key] = typ.dialect_impl(dialect).bind_processor(dialect)
    proc = _PROCESSORS[key]
    return proc(value) if proc is not None else value


def fill_audience(c: sa.Connection, ids: Sequence[str]) -> sa.Table:
    """Put ``ids`` (distinct) in the connection's temporary ``gk_audience`` table, created on first use
    (SQLite and PostgreSQL temporary tables are private to their connection)."""
    cur = c.connection.cursor()
    cur.execute("CREATE TEMPORARY TABLE IF NOT EXISTS gk_audience (profile_id VARCHAR(40) PRIMARY KEY)")
    cur.execute("DELETE FROM gk_audience")
    if not ids:
        return AUDIENCE
    if c.dialect.name == "sqlite":  # one statement (one step) over a JSON array, see Prepared.rows
        cur.execute("INSERT INTO gk_audience (profile_id) SELECT value FROM json_each(?)",
                    (orjson.dumps(list(ids)).decode(),))
    else:  # straight DBAPI executemany of 1-tuples: SQLAlchemy's per-row parameter handling costs 5x more
        cur.executemany("INSERT INTO gk_audience (profile_id) VALUES (%s)", [(p,) for p in ids])
    return AUDIENCE


def json_text(dialect: str, column: Any, key: str) -> Any:
    """``column`` (JSON text) -> the text of its top-level ``key``, on SQLite or PostgreSQL."""
    if dialect == "postgresql":
        return sa.cast(column, sa.JSON)[key].as_string()
    return sa.func.json_extract(column, f"$.{key}")


def mask(address: str | None) -> str | None:
    """An address as the message log shows it: ``+86138****8000``, ``a***@example.com``."""
    if not address:
        return address
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}***@{domain}"
    if len(address) > 8:
        return address[:-8] + "****" + address[-4:]
    return address[:2] + "***"


def audience_addresses(c: sa.Connection, ws: str, address_type: str) -> dict[str, str]:
    """``load_addresses`` for the profiles already in the connection's audience table (``fill_audience``),
    so a caller holding a transaction reads them in it."""
    if address_type == "profile_id":
        return {p: p for (p,) in c.exec_driver_sql("SELECT profile_id FROM gk_audience")}
    out: dict[str, str] = {}
    for pid, identity, attr in _ADDRESSES.rows(c, ws=ws, id_type=address_type, attr_path=f"$.{address_type}"):
        if identity:
            out[pid] = identity
        elif isinstance(attr, str) and attr.strip():
            out[pid] = attr.strip()
    return out


def _addresses_statement(dialect: str) -> Any:
    """Per audience member: its smallest identifier of type ``id_type``, and its attribute of the
    same name (``attr_path`` on SQLite: ``$.<name>``)."""
    a, i, p = AUDIENCE.c, identities.c, profiles.c
    ws, id_type = sa.bindparam("ws"), sa.bindparam("id_type", type_=sa.String)
    # ``workspace_id || ''`` keeps the identities key out of the plan: SQLite (no statistics on the
    # temporary table) would otherwise walk the workspace's whole (workspace, id_type, value) key
    # range for every customer instead of looking the profile up in ix_identities_profile
    ident = sa.select(sa.func.min(i.id_value)).where(i.profile_id == a.profile_id, i.workspace_id.concat("") == ws,
                                                     i.id_type == id_type).scalar_subquery()
    if dialect == "postgresql":
        attr = sa.cast(p.attributes, sa.JSON).op("->>", return_type=sa.Text)(id_type)
    else:
        attr = sa.func.json_extract(p.attributes, sa.bindparam("attr_path"))
    return (sa.select(a.profile_id, ident, attr)
            .select_from(AUDIENCE.outerjoin(profiles, sa.and_(p.profile_id == a.profile_id, p.workspace_id == ws))))


_ADDRESSES = Prepared(_addresses_statement)


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

    def merge(self, other: Verdict) -> None:
        super().merge(other)
        if isinstance(other, Reservation):
            self.message_ids.update(other.message_ids)


@dataclass(frozen=True)
class SendSpec:
    """What a reservation writes on each message row."""

    channel_id: str
    ref: str = ""
    template_id: str = ""
    addresses: dict[str, str] = field(default_factory=dict)  # profile_id -> masked address


def parse_policy(data: Any) -> SendPolicy:
    """Parse a policy document; raise InvalidInput naming the field."""
    return validated(SendPolicy, data, field="policy")


def _chunks(ids: Sequence[str], n: int = GUARD_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(ids), n):
        yield list(ids[i : i + n])


def week_start(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _customer(column: Any, ws: Any) -> Any:
    """``column`` (a profile id) is one of the audience member's profiles: the live one or any merged
    into it (``canonical_id``). A suppression, a message already sent or a send counted on a profile
    that was later merged away still belongs to the customer, as its consent decisions do
    (:func:`goldkey.govern.consent.latest_decision`)."""
    merged = profiles.alias("merged_from")
    return column.in_(sa.select(merged.c.profile_id).where(merged.c.canonical_id == AUDIENCE.c.profile_id,
                                                            merged.c.workspace_id == ws)
                      .correlate_except(merged))  # the audience row of the outermost statement


def _facts_statement(dialect: str, counts: tuple[bool, bool, bool, bool]) -> Any:
    """One row per audience member (the temporary ``gk_audience`` table): whether the profile is
    live, its time zone, an active suppression's reason, the latest consent decision, whether
    ``message_key`` already went to it and its send counts today / this week on ``channel`` and on
    every channel -- each count only when ``counts`` says a cap needs it (day_ch, day_all, week_ch,
    week_all; 0 otherwise). Correlated subqueries on indexed keys: no per-customer round trip.
    Bind parameters: ws, channel, purpose, message_key, today, week_start, now."""
    a, p, s, m, k = AUDIENCE.c, profiles.c, suppressions.c, messages.c, send_counters.c
    ws, channel, purpose = sa.bindparam("ws"), sa.bindparam("channel"), sa.bindparam("purpose")
    today, start, now = sa.bindparam("today"), sa.bindparam("week_start"), sa.bindparam("now")
    tz = json_text(dialect, p.attributes, "timezone")
    supp = (sa.select(s.reason).where(s.workspace_id == ws, _customer(s.profile_id, ws),
                                      sa.or_(s.channel == channel, s.channel == OVERALL),
                                      sa.or_(s.expires_at.is_(None), s.expires_at > now))
            .limit(1).scalar_subquery())
    dup = sa.exists().where(m.workspace_id == ws, m.message_key == sa.bindparam("message_key"),
                            _customer(m.profile_id, ws))

    def count(*where: Any) -> Any:
        return sa.func.coalesce(sa.select(sa.func.sum(k.count)).where(
            k.workspace_id == ws, _customer(k.profile_id, ws), *where).scalar_subquery(), 0)

    cols = [a.profile_id, p.profile_id.is_not(None).label("live"), tz.label("tz"), supp.label("suppressed"),
            latest_decision(channel, purpose, a.profile_id).label("consent"), dup.label("dup")]
    wheres = {"day_ch": (k.channel == channel, k.day == today), "day_all": (k.day == today,),
              "week_ch": (k.channel == channel, k.day >= start, k.day <= today),
              "week_all": (k.day >= start, k.day <= today)}
    cols += [(count(*where) if need else sa.literal(0)).label(name)
             for (name, where), need in zip(wheres.items(), counts, strict=True)]
    return sa.select(*cols).select_from(AUDIENCE.outerjoin(profiles, sa.and_(
        p.profile_id == a.profile_id, p.workspace_id == ws, p.merged_into.is_(None))))


_FACTS = {counts: Prepared(lambda dialect, counts=counts: _facts_statement(dialect, counts))
          for counts in itertools.product((False, True), repeat=4)}

def _recheck_statement(_dialect: str) -> Any:
    """Per audience member: live, an active suppression's reason, the latest consent decision."""
    a, p, s = AUDIENCE.c, profiles.c, suppressions.c
    ws, channel = sa.bindparam("ws"), sa.bindparam("channel")
    supp = (sa.select(s.reason).where(s.workspace_id == ws, _customer(s.profile_id, ws),
                                      sa.or_(s.channel == channel, s.channel == OVERALL),
                                      sa.or_(s.expires_at.is_(None), s.expires_at > sa.bindparam("now")))
            .limit(1).scalar_subquery())
    return (sa.select(a.profile_id, p.profile_id.is_not(None), supp,
                      latest_decision(channel, sa.bindparam("purpose"), a.profile_id))
            .select_from(AUDIENCE.outerjoin(profiles, sa.and_(p.profile_id == a.profile_id, p.workspace_id == ws,
                                                              p.merged_into.is_(None)))))


_RECHECK = Prepared(_recheck_statement)
_POLICY = Prepared(lambda _d: sa.select(send_policies.c.policy)
                   .where(send_policies.c.workspace_id == sa.bindparam("ws")))
_LOCK = Prepared(lambda _d: send_policies.update().where(send_policies.c.workspace_id == sa.bindparam("ws"))
                 .values(reservations=send_policies.c.reservations + 1))


class _CountSends:
    """One send more per (workspace, profile, channel, day): an upsert run with ``executemany``."""

    @staticmethod
    def sql(dialect: Any) -> str:
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        return ("INSERT INTO send_counters (workspace_id, profile_id, channel, day, count) "
                f"VALUES ({mark}, {mark}, {mark}, {mark}, 1) ON CONFLICT (workspace_id, profile_id, channel, day) "
                "DO UPDATE SET count = send_counters.count + 1")


_COUNT_SENDS = _CountSends()


class Guardrails:
    """Bulk guardrail checks and atomic reservations over the operational store."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._tz_cache: dict[str, ZoneInfo | None] = {}
        self._parsed: dict[str, SendPolicy] = {}  # stored policy JSON -> the parsed policy

    # -- policy ------------------------------------------------------------------------------
    def policy(self, ws: str, conn: sa.Connection | None = None) -> SendPolicy:
        """The workspace's policy (the defaults when none was saved)."""
        if conn is None:
            with self.engine.connect() as c:
                found = _POLICY.execute(c, ws=ws).fetchone()
        else:
            found = _POLICY.execute(conn, ws=ws).fetchone()
        raw = found[0] if found else None
        if not raw:
            return SendPolicy()
        pol = self._parsed.get(raw)
        if pol is None:  # parsed once per stored version: every reservation reads it under the lock
            if len(self._parsed) > 1000:
                self._parsed.clear()
            pol = self._parsed[raw] = SendPolicy.model_validate(orjson.loads(raw))
        return pol

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
                spec: SendSpec, now: datetime | None = None, *, address_type: str | None = None) -> Reservation:
        """Check and, atomically per chunk, claim: counters incremented and a ``queued`` message row
        inserted for each allowed customer. Returns their message ids. With ``address_type`` the
        customers' addresses are looked up in the same transaction (one audience table for both):
        those without one are refused (``no <type> address``) and the others' masked addresses go on
        their rows; without it, ``spec.addresses`` gives them."""
        self._validate(channel, purpose, message_key)
        now = as_utc(now) or utcnow()
        out = Reservation()
        for chunk in _chunks(list(dict.fromkeys(profile_ids))):
            with self.engine.begin() as c:
                pol = self.lock(c, ws)
                if address_type is None:
                    out.merge(self.reserve_locked(c, pol, ws, channel, purpose, chunk, message_key, spec, now))
                    continue
                fill_audience(c, chunk)
                found = audience_addresses(c, ws, address_type)
                reachable = [p for p in chunk if p in found]
                out.suppressed.update({p: f"no {address_type} address" for p in chunk if p not in found})
                masked = SendSpec(spec.channel_id, spec.ref, spec.template_id,
                                  {p: mask(found[p]) or "" for p in reachable})
                if reachable:
                    out.merge(self.reserve_locked(c, pol, ws, channel, purpose, reachable, message_key, masked, now,
                                                  in_audience=True))
        return out

    def lock(self, c: sa.Connection, ws: str) -> SendPolicy:
        """Take the workspace's reservation lock in the caller's transaction ``c`` and return the
        policy read under it: later reservations of this workspace wait until ``c`` commits (SQLite's
        write lock, a PostgreSQL row lock). Callers that must make more than the reservation atomic
        (a trigger's firing rows) take it, then call ``reserve_locked``."""
        if _LOCK.execute(c, ws=ws).rowcount == 0:  # no policy row yet: create it in this transaction, then lock it
            self._insert_policy_row(c, ws)
            _LOCK.execute(c, ws=ws)
        return self.policy(ws, c)

    def reserve_locked(self, c: sa.Connection, pol: SendPolicy, ws: str, channel: str, purpose: str,
                       profile_ids: Sequence[str], message_key: str, spec: SendSpec,
                       now: datetime, *, in_audience: bool = False) -> Reservation:
        """The reservation of ``profile_ids`` (distinct, at most ``GUARD_CHUNK``) inside ``c``, which
        holds the workspace lock (``lock``): check, then the ``queued`` rows and the counters.
        ``in_audience``: the audience table already holds them (and maybe others, ignored)."""
        self._validate(channel, purpose, message_key)
        out = Reservation()
        v = self._check_chunk(c, pol, ws, channel, purpose, list(profile_ids), message_key, now,
                              fill=not in_audience)
        if v.allowed:
            ids = dict(zip(v.allowed, new_ids("out", len(v.allowed)), strict=True))
            self._claim(c, pol, ws, channel, purpose, message_key, spec, ids, now)
            out.message_ids.update(ids)
        Verdict.merge(out, v)
        return out

    def recheck(self, ws: str, channel: str, purpose: str, profile_ids: Sequence[str],
                now: datetime | None = None) -> dict[str, str]:
        """The send-time check of messages reserved earlier: ``{profile_id: reason}`` for the customers
        who may no longer receive on ``channel`` for ``purpose`` (opted out or consent withdrawn,
        suppressed, or no longer a live profile since the reservation). Caps, quiet hours and
        de-duplication were settled by the reservation and are not counted again."""
        now = as_utc(now) or utcnow()
        ids = list(dict.fromkeys(profile_ids))
        out: dict[str, str] = {}
        with self.engine.connect() as c:
            for chunk in _chunks(ids):
                fill_audience(c, chunk)
                for pid, live, suppressed, consent in _RECHECK.rows(c, ws=ws, channel=channel, purpose=purpose,
                                                                    now=now):
                    if not live:
                        out[pid] = "not a live profile any more (merged into another, or deleted)"
                    elif suppressed is not None:
                        out[pid] = f"suppressed: {suppressed}"
                    elif consent != "granted":
                        out[pid] = (f"opted out of {channel}/{purpose}" if consent == "denied"
                                    else f"no consent for {channel}/{purpose}")
            c.rollback()
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

    @staticmethod
    def _insert_policy_row(c: sa.Connection, ws: str) -> None:
        """The default policy row of ``ws`` (the lock's row), unless one exists."""
        if c.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        c.execute(insert(send_policies).values(
            workspace_id=ws, policy=SendPolicy().model_dump_json(), reservations=0, updated_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=["workspace_id"]))

    def _check_chunk(self, c: sa.Connection, pol: SendPolicy, ws: str, channel: str, purpose: str,
                     ids: list[str], message_key: str, now: datetime, *, fill: bool = True) -> Verdict:
        out = Verdict()
        exempt = purpose in pol.exempt_purposes
        ch_cap, all_cap = (None, None) if exempt else (pol.caps.get(channel), pol.caps.get(OVERALL))
        counts = (bool(ch_cap and ch_cap.day is not None), bool(all_cap and all_cap.day is not None),
                  bool(ch_cap and ch_cap.week is not None), bool(all_cap and all_cap.week is not None))
        capped = any(counts)
        ws_tz = ZoneInfo(pol.timezone)
        today = now.astimezone(ws_tz).date()
        if fill:
            fill_audience(c, ids)
        q = _FACTS[counts]
        # plain tuples: profile_id, live, tz, suppressed, consent, dup, day_ch, day_all, week_ch, week_all
        rows = {r[0]: r for r in q.rows(c, ws=ws, channel=channel, purpose=purpose, message_key=message_key,
                                        today=today, week_start=week_start(today), now=now)}
        quiet: dict[ZoneInfo, datetime | None] = {}  # the end of the quiet window depends on the zone only
        quiet_hours = None if exempt else pol.quiet_hours
        allowed, suppressed = out.allowed, out.suppressed
        for pid in ids:
            r = rows.get(pid)
            if r is None or not r[1]:
                suppressed[pid] = "not a live profile (unknown, or merged into another)"
            elif r[3] is not None:
                suppressed[pid] = f"suppressed: {r[3]}"
            elif r[4] != "granted":
                suppressed[pid] = (f"opted out of {channel}/{purpose}" if r[4] == "denied"
                                   else f"no consent for {channel}/{purpose}")
            elif r[5]:
                suppressed[pid] = f"duplicate: message {message_key!r} already sent"
            elif capped and (why := self._capped(pol, channel, r[6:10])):
                suppressed[pid] = why
            elif quiet_hours is not None and (
                    until := self._quiet(quiet, quiet_hours, now, self._tz(r[2]) or ws_tz)):
                out.deferred[pid] = until
            else:
                allowed.append(pid)
        return out

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
        """Insert the ``queued`` rows and count the sends. SQLite: one ``INSERT ... SELECT`` each over a
        JSON array of the varying values (one statement, one step: see ``Prepared.rows``); PostgreSQL:
        DBAPI ``executemany`` of tuples (SQLAlchemy's per-row parameter handling was most of a 1M
        reservation)."""
        at = driver_value(c.dialect, now)
        day = driver_value(c.dialect, now.astimezone(ZoneInfo(pol.timezone)).date())
        count = purpose not in pol.exempt_purposes
        cols = ("message_id", "workspace_id", "profile_id", "channel_id", "channel", "purpose", "message_key", "ref",
                "template_id", "status", "attempts", "address", "created_at", "updated_at")
        cur = c.connection.cursor()
        if c.dialect.name == "sqlite":
            cur.execute(
                f"INSERT INTO messages ({', '.join(cols)}) SELECT json_extract(value, '$[0]'), ?, "
                "json_extract(value, '$[1]'), ?, ?, ?, ?, ?, ?, 'queued', 0, json_extract(value, '$[2]'), ?, ? "
                "FROM json_each(?)",
                (ws, spec.channel_id, channel, purpose, message_key, spec.ref, spec.template_id, at, at,
                 orjson.dumps([(mid, pid, spec.addresses.get(pid)) for pid, mid in ids.items()]).decode()))
            if count:  # "WHERE true": SQLite needs it to read ON CONFLICT after INSERT ... SELECT
                cur.execute(
                    "INSERT INTO send_counters (workspace_id, profile_id, channel, day, count) "
                    "SELECT ?, value, ?, ?, 1 FROM json_each(?) WHERE true "
                    "ON CONFLICT (workspace_id, profile_id, channel, day) "
                    "DO UPDATE SET count = send_counters.count + 1",
                    (ws, channel, day, orjson.dumps(list(ids)).decode()))
            return
        cur.executemany(
            f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            [(mid, ws, pid, spec.channel_id, channel, purpose, message_key, spec.ref, spec.template_id, "queued", 0,
              spec.addresses.get(pid), at, at) for pid, mid in ids.items()])
        if count:
            cur.executemany(_COUNT_SENDS.sql(c.dialect), [(ws, pid, channel, day) for pid in ids])
