"""Campaigns: an audience (a segment or an uploaded list) x message variants x a channel x a
schedule, with a holdout (control group), A/B(n) variants, throttling, progress, and a report of
the funnel and the uplift against the holdout.

**Definition and save-time checks.** ``CampaignDefinition`` (pydantic, ``extra="forbid"``) is
checked when a campaign is saved: an empty segment or an uploaded list that matches nobody, a
template variable that does not exist (``templates.compile_for_workspace``), a channel that does not
exist, is disabled or has no valid credentials, and bad variant weights are each refused with an
``InvalidInput`` naming the field. Nothing is saved when a check fails.

**Assignment** (as PostHog's percentage rollouts and feature-flag variants do it): each customer's
``u = sha256(salt + ":" + profile_id)`` read as a number in [0, 1). ``u < holdout_pct / 100`` is
the holdout; the rest is rescaled to [0, 1) and cut by the variants' cumulative weights. The salt
defaults to the campaign id, so the same customer falls in the same arm on every run of a
recurring campaign and on a re-run after a restart, and two campaigns' holdouts are independent.
Assignments are stored in ``campaign_members`` in bulk (``executemany`` in chunks).

**Launch.** A run takes the audience, assigns it, and sends each variant's customers through
``Sender.send`` (guardrails, reservation, delivery, message log) in chunks of at most the throttle
(messages per minute), pausing between chunks to hold the rate. Every step is recorded in the
store (member status ``pending -> queued | suppressed | deferred``), so a run interrupted by a
restart resumes where it stopped: messages left ``sending`` are failed by
``Sender.recover_interrupted`` (never resent), messages reserved but not yet delivered are
delivered, pending customers are sent. Customers deferred by quiet hours are sent when their quiet
window ends. States: ``draft -> scheduled -> running -> done | paused | cancelled | failed``;
recurring campaigns go back to ``scheduled`` after each run.

**Measurement** (``report``): one DuckDB query over the members (registered as an Arrow table),
the event log (``Message Delivered``, ``Message Opened``, ``Link Clicked`` with the campaign's
``ref``; the conversion event) and ``orders_resolved``. Two windows of ``attribution_days``:

- *after the send* (the funnel): a sent customer converted when the conversion happened within
  the window after their own message was sent; revenue = their orders in that window;
- *from the launch* (the uplift): the holdout received nothing, so it has no send time; its natural
  counterfactual clock is the run's launch. To compare like with like, the uplift compares **every
  customer assigned to a variant** (sent or not: intention to treat) with the holdout, both from
  the launch for the same window. Comparing only the customers who passed the guardrails would
  bias the uplift (opted-out and capped customers differ from the rest, and the holdout still
  contains them).

The uplift of the conversion rate is ``p_treated - p_holdout`` with Newcombe's hybrid score
interval (Newcombe 1998, "Interval estimation for the difference between independent
proportions", method 10: the two Wilson score intervals combined), which keeps its coverage near
95 % for small counts and rates near 0, where the normal (Wald) interval does not. Incremental
revenue per customer is the difference of mean revenue with Welch's t interval (unequal
variances, Welch-Satterthwaite degrees of freedom): revenue per customer is heavily skewed, but the
means of thousands of customers are close to normal, and Welch does not assume equal variances.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import orjson
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from goldkey.activate.sender import Sender, SendReport, SendRequest
from goldkey.activate.templates import CompiledTemplate, compile_for_workspace
from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound, loc_path
from goldkey.core.ids import new_id
from goldkey.identity.normalize import normalize_identifier
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.store.operational import (
    campaign_members,
    campaign_runs,
    campaigns,
    identities,
    messages,
    profiles,
    segment_members,
    segments,
)

log = logging.getLogger(__name__)

HOLDOUT = "holdout"
SEND_CHUNK = 5000  # customers per Sender.send call
INSERT_CHUNK = 20_000  # member rows per executemany
ID_TYPES = ("profile_id", "crm_id", "user_id", "phone", "email", "wechat_openid", "wechat_unionid", "device_id")
ACTIVE = ("scheduled", "running")
C = campaigns.c
R = campaign_runs.c
M = campaign_members.c


# --------------------------------------------------------------------------- the definition


class Variant(BaseModel):
    """One message variant of an A/B(n) test."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Short name of the variant: A, B, ...")
    weight: float = Field(1.0, gt=0, le=1_000_000, description="Relative share of the treated customers.")
    template: dict[str, Any] = Field(description="A message template (see docs/channels.md).")

    @field_validator("key")
    @classmethod
    def _not_holdout(cls, v: str) -> str:
        if v.lower() == HOLDOUT:
            raise ValueError("'holdout' is reserved for the control group")
        return v


class UploadedList(BaseModel):
    """Customers named by one kind of identifier."""

    model_config = ConfigDict(extra="forbid")
    id_type: Literal["profile_id", "crm_id", "user_id", "phone", "email", "wechat_openid", "wechat_unionid",
                     "device_id"] = "profile_id"
    values: list[str] = Field(min_length=1, max_length=2_000_000)


class Audience(BaseModel):
    """Exactly one of a segment or an uploaded list."""

    model_config = ConfigDict(extra="forbid")
    segment_id: str | None = None
    list: UploadedList | None = None

    @model_validator(mode="after")
    def _one(self) -> Audience:
        if (self.segment_id is None) == (self.list is None):
            raise ValueError("give exactly one of segment_id or list")
        return self


class Schedule(BaseModel):
    """When the campaign runs: ``now``, once ``at`` a time, or ``recurring``.

    A recurring schedule is ``every_hours`` N, or ``every_days`` N (at ``time_of_day`` in
    ``timezone``), or ``time_of_day`` on ``weekdays`` (0 = Monday), cron's common cases."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["now", "at", "recurring"] = "now"
    at: datetime | None = Field(None, description="'at': the time; 'recurring': the first run (default: next slot).")
    every_hours: int | None = Field(None, ge=1, le=8760)
    every_days: int | None = Field(None, ge=1, le=366)
    time_of_day: dtime | None = None
    weekdays: list[int] | None = Field(None, min_length=1, max_length=7)
    timezone: str = "Asia/Shanghai"
    until: datetime | None = None
    max_runs: int | None = Field(None, ge=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("weekdays")
    @classmethod
    def _days(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < 0 or d > 6 for d in v):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        return sorted(set(v)) if v else v

    @model_validator(mode="after")
    def _shape(self) -> Schedule:
        if self.kind == "at" and self.at is None:
            raise ValueError("a schedule of kind 'at' needs 'at'")
        if self.kind == "recurring":
            ways = (self.every_hours is not None) + (self.every_days is not None) + (self.weekdays is not None)
            if ways != 1:
                raise ValueError("a recurring schedule needs exactly one of every_hours, every_days or weekdays")
            if self.weekdays is not None and self.time_of_day is None:
                raise ValueError("weekdays need a time_of_day")
            if self.every_hours is not None and self.time_of_day is not None:
                raise ValueError("every_hours does not take a time_of_day")
        elif any(x is not None for x in (self.every_hours, self.every_days, self.weekdays, self.max_runs)):
            raise ValueError("every_hours, every_days, weekdays and max_runs belong to a recurring schedule")
        return self

    def first_run(self, now: datetime) -> datetime:
        """When the first run is due."""
        if self.kind == "now":
            return now
        if self.kind == "at" or self.at is not None:
            return as_utc(self.at) or now
        return self.next_after(now, now - timedelta(microseconds=1))

    def next_after(self, anchor: datetime, after: datetime) -> datetime:
        """The first slot of a recurring schedule strictly after ``after`` (``anchor``: the first run)."""
        if self.every_hours is not None:
            step = timedelta(hours=self.every_hours)
            k = max(0, math.floor((after - anchor) / step) + 1)
            return anchor + k * step
        tz = ZoneInfo(self.timezone)
        tod = self.time_of_day or anchor.astimezone(tz).time().replace(tzinfo=None)
        day = after.astimezone(tz).date()
        anchor_day = anchor.astimezone(tz).date()
        for _ in range(0, 800):
            slot = datetime.combine(day, tod, tz).astimezone(UTC)
            ok = slot > after
            if self.every_days is not None:
                ok = ok and (day - anchor_day).days % self.every_days == 0
            if self.weekdays is not None:
                ok = ok and day.weekday() in self.weekdays
            if ok:
                return slot
            day += timedelta(days=1)
        raise InvalidInput("the recurring schedule has no next slot", field="schedule")  # pragma: no cover


class Conversion(BaseModel):
    """What counts as a response: an event (by name) or any order, within ``attribution_days``."""

    model_config = ConfigDict(extra="forbid")
    event: str | None = Field(None, min_length=1, max_length=200)
    order: bool = False
    attribution_days: int = Field(7, ge=1, le=90)

    @model_validator(mode="after")
    def _one(self) -> Conversion:
        if (self.event is None) == (not self.order):
            raise ValueError("give exactly one of event (an event name) or order: true")
        return self


class CampaignDefinition(BaseModel):
    """A campaign as saved (``POST /api/v1/campaigns``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    audience: Audience
    channel_id: str = Field(min_length=1, max_length=40)
    purpose: str = Field("marketing", min_length=1, max_length=40)
    variants: list[Variant] = Field(min_length=1, max_length=20)
    holdout_pct: float = Field(10.0, ge=0, le=90, description="Share of the audience held back (control group).")
    salt: str | None = Field(None, max_length=100, description="Hash salt of the assignment (default: campaign id).")
    schedule: Schedule = Field(default_factory=Schedule)
    throttle_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    conversion: Conversion
    cost_per_message: float | None = Field(None, ge=0, description="Overrides the channel's price in the report.")
    vars: dict[str, Any] = Field(default_factory=dict, description="vars.<name> passed to every message.")

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[Variant]) -> list[Variant]:
        keys = [x.key for x in v]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"variant keys must be unique; repeated: {', '.join(dup)}")
        return v


def parse_definition(data: Any) -> CampaignDefinition:
    """Parse a campaign document; raise InvalidInput naming the field."""
    try:
        return CampaignDefinition.model_validate(data)
    except ValidationError as exc:  # raised after the block: see goldkey.core.errors.validated
        err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    raise InvalidInput(err["msg"].removeprefix("Value error, "), field=loc_path(err["loc"]) or "campaign")


# --------------------------------------------------------------------------- assignment


def hash_unit(salt: str, profile_id: str) -> float:
    """The customer's deterministic position in [0, 1): the first 8 bytes of sha256(salt:id) / 2^64."""
    d = hashlib.sha256(f"{salt}:{profile_id}".encode()).digest()
    return int.from_bytes(d[:8], "big") / 2.0**64


def assign_arms(profile_ids: Sequence[str], salt: str, holdout_pct: float,
                variants: Sequence[tuple[str, float]]) -> list[str]:
    """The arm of each customer: ``holdout`` or a variant key (stable for the same salt)."""
    h = holdout_pct / 100.0
    total = sum(w for _, w in variants)
    cum, acc = [], 0.0
    for _, w in variants:
        acc += w / total
        cum.append(acc)
    keys = [k for k, _ in variants]
    last = len(keys) - 1
    sha = hashlib.sha256
    out = []
    prefix = f"{salt}:".encode()
    for pid in profile_ids:
        u = int.from_bytes(sha(prefix + pid.encode()).digest()[:8], "big") / 2.0**64
        if u < h:
            out.append(HOLDOUT)
        else:
            out.append(keys[min(bisect.bisect_right(cum, (u - h) / (1.0 - h)), last)])
    return out


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (raise InvalidInput when n = 0)."""
    if n <= 0:
        raise InvalidInput("a proportion needs at least one customer", field="n")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, z: float = 1.959963984540054) -> tuple[float, float, float]:
    """``p1 - p2`` with Newcombe's hybrid score interval (method 10): (difference, low, high)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def welch_diff(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``mean(x) - mean(y)`` with Welch's t interval; the bounds are None with fewer than 2 values
    on a side, or when both sides are constant."""
    from scipy import stats

    d = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
    if len(x) < 2 or len(y) < 2:
        return d, None, None
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return d, d, d
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    t = float(stats.t.ppf(0.5 + level / 2, df))
    return d, d - t * se, d + t * se


# --------------------------------------------------------------------------- the service


def check_channel(sender: Sender, ws: str, channel_id: str) -> None:
    """Raise InvalidInput (field ``channel_id``) when the channel does not exist, is not active,
    or cannot be opened with its stored config and credentials."""
    try:
        info = sender.channels.get(ws, channel_id)
    except NotFound:
        raise InvalidInput(f"channel {channel_id!r} does not exist in this workspace", field="channel_id") from None
    if info.get("status") != "active":
        raise InvalidInput(f"channel {channel_id!r} is {info.get('status')}, not active", field="channel_id")
    try:
        sender.channels.open(ws, channel_id)
    except InvalidInput as exc:
        raise InvalidInput(f"channel {channel_id!r} cannot send: {exc.message} ({exc.field})",
                           field="channel_id") from None


def _norm_reason(reason: str | None) -> str:
    r = reason or "unknown"
    return r.split(":", 1)[0] if r.startswith(("frequency cap", "suppressed", "duplicate")) else r


class CampaignService:
    """Save, validate, launch, throttle, resume and measure campaigns."""

    def __init__(self, gk: Any, sender: Sender, *, tick_seconds: float = 15.0,
                 sleep: Any = None) -> None:
        self.gk = gk
        self.engine: sa.Engine = gk.engine
        self.analytical = gk.analytical
        self.sender = sender
        self.tick_seconds = tick_seconds
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._scheduler: threading.Thread | None = None
        self.last_error: str | None = None

    @classmethod
    def from_goldkey(cls, gk: Any, **kw: Any) -> CampaignService:
        """The campaign service of a running instance (its sender)."""
        sender = getattr(gk, "sender", None) or Sender.from_goldkey(gk)
        return cls(gk, sender, **kw)

    # -- definitions ------------------------------------------------------------------------
    def create(self, ws: str, data: Any, *, actor: str = "api") -> dict[str, Any]:
        """Validate and save a campaign as a draft; raise InvalidInput / Conflict."""
        d = parse_definition(data)
        cid = new_id("cmp")
        self.validate(ws, d)
        now = utcnow()
        with self.engine.begin() as c:
            if c.execute(sa.select(C.campaign_id).where(C.workspace_id == ws, C.name == d.name)).first():
                raise Conflict(f"a campaign named {d.name!r} already exists")
            c.execute(campaigns.insert().values(campaign_id=cid, workspace_id=ws, name=d.name,
                                                definition=d.model_dump_json(), status="draft", run=0,
                                                created_by=actor[:100], created_at=now, updated_at=now))
        return self.get(ws, cid)

    def update(self, ws: str, cid: str, data: Any) -> dict[str, Any]:
        """Replace the definition of a draft, scheduled or paused campaign (validated again)."""
        row = self._row(ws, cid)
        if row.status not in ("draft", "scheduled", "paused"):
            raise Conflict(f"a {row.status} campaign cannot be changed")
        d = parse_definition(data)
        self.validate(ws, d)
        values: dict[str, Any] = {"definition": d.model_dump_json(), "name": d.name, "updated_at": utcnow()}
        if row.status == "scheduled":
            values["next_run_at"] = d.schedule.first_run(utcnow())
        with self.engine.begin() as c:
            if c.execute(sa.select(C.campaign_id).where(C.workspace_id == ws, C.name == d.name,
                                                        C.campaign_id != cid)).first():
                raise Conflict(f"a campaign named {d.name!r} already exists")
            c.execute(campaigns.update().where(C.campaign_id == cid).values(**values))
        return self.get(ws, cid)

    def get(self, ws: str, cid: str) -> dict[str, Any]:
        """A campaign with its definition and progress; raise NotFound."""
        r = self._row(ws, cid)
        return {"campaign_id": r.campaign_id, "name": r.name, "status": r.status, "run": r.run,
                "next_run_at": to_iso(r.next_run_at), "error": r.error,
                "definition": orjson.loads(r.definition), "created_at": to_iso(r.created_at),
                "updated_at": to_iso(r.updated_at), "progress": self.progress(ws, cid, r.run)}

    def list(self, ws: str) -> list[dict[str, Any]]:
        """The workspace's campaigns, newest first (without progress)."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(campaigns).where(C.workspace_id == ws).order_by(C.created_at.desc())).all()
        return [{"campaign_id": r.campaign_id, "name": r.name, "status": r.status, "run": r.run,
                 "next_run_at": to_iso(r.next_run_at), "created_at": to_iso(r.created_at)} for r in rows]

    def definition(self, ws: str, cid: str) -> CampaignDefinition:
        return CampaignDefinition.model_validate_json(self._row(ws, cid).definition)

    def _row(self, ws: str, cid: str) -> Any:
        with self.engine.connect() as c:
            r = c.execute(sa.select(campaigns).where(C.workspace_id == ws, C.campaign_id == cid)).first()
        if r is None:
            raise NotFound(f"campaign {cid!r} not found")
        return r

    # -- validation -------------------------------------------------------------------------
    def validate(self, ws: str, d: CampaignDefinition) -> dict[str, CompiledTemplate]:
        """The save-time checks; returns the compiled template of each variant. Raise InvalidInput
        naming the field: channel, templates, audience (in this order)."""
        self._check_channel(ws, d.channel_id)
        compiled = {}
        for i, v in enumerate(d.variants):
            try:
                compiled[v.key] = compile_for_workspace(self.engine, ws, v.template)
            except InvalidInput as exc:
                raise InvalidInput(exc.message, field=f"variants[{i}].{exc.field or 'template'}") from None
            missing = [n for n in compiled[v.key].template.vars if n not in d.vars]
            if missing:
                raise InvalidInput(f"the template declares vars {', '.join(missing)} but the campaign gives no "
                                   "value for them", field=f"variants[{i}].template.vars")
        # a segment's first member is enough to know it is not empty (reading 1M ids took seconds)
        ids = (self._segment_members(ws, d.audience.segment_id, limit=1) if d.audience.segment_id is not None
               else self.audience(ws, d.audience)[0])
        if not ids:
            where = "audience.segment_id" if d.audience.segment_id else "audience.list.values"
            what = (f"segment {d.audience.segment_id!r} has no members" if d.audience.segment_id
                    else "none of the uploaded identifiers matches a customer")
            raise InvalidInput(f"{what}; a campaign needs at least one customer", field=where)
        return compiled

    def _check_channel(self, ws: str, channel_id: str) -> None:
        check_channel(self.sender, ws, channel_id)

    def audience(self, ws: str, a: Audience) -> tuple[list[str], int]:
        """(live profile ids in a stable order, identifiers that matched nobody)."""
        if a.segment_id is not None:
            return self._segment_members(ws, a.segment_id), 0
        assert a.list is not None
        return self._resolve_list(ws, a.list)

    def _segment_members(self, ws: str, sid: str, limit: int | None = None) -> list[str]:
        with self.engine.connect() as c:
            seg = c.execute(sa.select(segments.c.computed_at, segments.c.deleted_at).where(
                segments.c.workspace_id == ws, segments.c.segment_id == sid)).first()
        if seg is None or seg.deleted_at is not None:
            raise InvalidInput(f"segment {sid!r} does not exist in this workspace", field="audience.segment_id")
        if seg.computed_at is None:
            self.gk.segments.compute(ws, sid)
        sm = segment_members.c
        with self.engine.connect() as c:
            return list(c.execute(
                sa.select(sm.profile_id).join(profiles, profiles.c.profile_id == sm.profile_id)
                .where(sm.workspace_id == ws, sm.segment_id == sid, profiles.c.merged_into.is_(None))
                .order_by(sm.profile_id).limit(limit)).scalars())

    def _resolve_list(self, ws: str, lst: UploadedList) -> tuple[list[str], int]:
        region = self.gk.settings.default_phone_region
        values = list(dict.fromkeys(v for v in lst.values if v))
        found: dict[str, str] = {}
        with self.engine.connect() as c:
            for k in range(0, len(values), 5000):
                chunk = values[k : k + 5000]
                if lst.id_type == "profile_id":
                    q = sa.select(profiles.c.profile_id, profiles.c.canonical_id).where(
                        profiles.c.workspace_id == ws, profiles.c.profile_id.in_(chunk))
                    found.update({r.profile_id: r.canonical_id for r in c.execute(q)})
                    continue
                norm = {normalize_identifier(lst.id_type, v, region) or v: v for v in chunk}
                i = identities.c
                q = sa.select(i.id_value, profiles.c.canonical_id).join(
                    profiles, profiles.c.profile_id == i.profile_id).where(
                    i.workspace_id == ws, i.id_type == lst.id_type, i.id_value.in_(list(norm)))
                found.update({norm[r.id_value]: r.canonical_id for r in c.execute(q)})
        ids = sorted(set(found.values()))
        return ids, len(values) - len(found)

    # -- lifecycle ---------------------------------------------------------------------------
    def launch(self, ws: str, cid: str, *, wait: bool = False) -> dict[str, Any]:
        """Validate again and start (schedule ``now``) or schedule the campaign. ``wait`` runs a due
        run in the calling thread (CLI, tests). Raise Conflict unless it is a draft."""
        row = self._row(ws, cid)
        if row.status != "draft":
            raise Conflict(f"only a draft campaign can be launched; this one is {row.status}")
        d = CampaignDefinition.model_validate_json(row.definition)
        self.validate(ws, d)
        now = utcnow()
        due = d.schedule.first_run(now)
        if d.schedule.until is not None and due > as_utc(d.schedule.until):  # type: ignore[operator]
            raise InvalidInput("the schedule ends before its first run", field="schedule.until")
        with self.engine.begin() as c:
            c.execute(campaigns.update().where(C.campaign_id == cid, C.status == "draft").values(
                status="scheduled", next_run_at=due, updated_at=now))
        if due <= now:
            self._start(ws, cid, wait=wait)
        return self.get(ws, cid)

    def pause(self, ws: str, cid: str) -> dict[str, Any]:
        """Stop sending after the current chunk (scheduled or running campaigns)."""
        return self._transition(ws, cid, ACTIVE, "paused")

    def resume(self, ws: str, cid: str, *, wait: bool = False) -> dict[str, Any]:
        """Continue a paused campaign: its unfinished run, or its schedule."""
        row = self._row(ws, cid)
        if row.status != "paused":
            raise Conflict(f"only a paused campaign can be resumed; this one is {row.status}")
        with self.engine.connect() as c:
            open_run = c.execute(sa.select(R.run).where(R.campaign_id == cid, R.status == "running")).first()
        if open_run is not None:
            self._transition(ws, cid, ("paused",), "running", next_run_at=None)
            self._start(ws, cid, wait=wait, resume=True)
        else:
            d = CampaignDefinition.model_validate_json(row.definition)
            nxt = row.next_run_at or d.schedule.first_run(utcnow())
            self._transition(ws, cid, ("paused",), "scheduled", next_run_at=nxt)
        return self.get(ws, cid)

    def cancel(self, ws: str, cid: str) -> dict[str, Any]:
        """Stop for good: customers not yet sent are marked cancelled."""
        out = self._transition(ws, cid, ("draft", "scheduled", "running", "paused"), "cancelled", next_run_at=None)
        with self.engine.begin() as c:
            c.execute(campaign_members.update().where(M.campaign_id == cid, M.status.in_(["pending", "deferred"]))
                      .values(status="cancelled", reason="campaign cancelled"))
            c.execute(campaign_runs.update().where(R.campaign_id == cid, R.status == "running")
                      .values(status="cancelled", finished_at=utcnow()))
        return out | {"progress": self.progress(ws, cid)}

    def _transition(self, ws: str, cid: str, allowed: Sequence[str], to: str, **values: Any) -> dict[str, Any]:
        row = self._row(ws, cid)
        if row.status not in allowed:
            raise Conflict(f"a {row.status} campaign cannot become {to}")
        with self.engine.begin() as c:
            n = c.execute(campaigns.update().where(C.campaign_id == cid, C.status == row.status)
                          .values(status=to, updated_at=utcnow(), **values)).rowcount
        if not n:
            raise Conflict("the campaign changed meanwhile; try again")
        return self.get(ws, cid)

    def _status(self, cid: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(sa.select(C.status).where(C.campaign_id == cid)).scalar()

    # -- runs --------------------------------------------------------------------------------
    def _start(self, ws: str, cid: str, *, wait: bool = False, resume: bool = False) -> None:
        with self._lock:
            t = self._threads.get(cid)
            if t is not None and t.is_alive():
                return
            t = threading.Thread(target=self._run_safely, args=(ws, cid, resume), name=f"goldkey-campaign-{cid}",
                                 daemon=True)
            self._threads[cid] = t
        if wait:
            with self._lock:
                self._threads.pop(cid, None)
            self._run_safely(ws, cid, resume, raise_errors=True)
        else:
            t.start()

    def _run_safely(self, ws: str, cid: str, resume: bool, raise_errors: bool = False) -> None:
        try:
            self.run(ws, cid, resume=resume)
        except Exception as exc:
            log.exception("campaign %s failed", cid)
            self.last_error = repr(exc)
            msg = exc.message if isinstance(exc, InvalidInput) else f"{type(exc).__name__}: {exc}"
            with self.engine.begin() as c:
                c.execute(campaigns.update().where(C.campaign_id == cid).values(
                    status="failed", error=msg[:2000], updated_at=utcnow()))
                c.execute(campaign_runs.update().where(R.campaign_id == cid, R.status == "running")
                          .values(status="failed", finished_at=utcnow()))
            if raise_errors:
                raise

    def run(self, ws: str, cid: str, *, resume: bool = False) -> None:
        """Run (or resume) the campaign's current run until it is sent, paused or cancelled."""
        row = self._row(ws, cid)
        d = CampaignDefinition.model_validate_json(row.definition)
        templates = self.validate_templates(ws, d)
        with self.engine.connect() as c:
            open_run = c.execute(sa.select(campaign_runs).where(R.campaign_id == cid, R.status == "running")).first()
        if open_run is None:
            if resume or row.status != "scheduled":
                return
            try:
                run = self._new_run(ws, cid, row.run + 1, d)
            except Conflict:
                return  # another thread or process started this run first
        else:
            run = open_run.run
            self.sender.recover_interrupted(ws)
            if open_run.targeted == 0:  # interrupted while assigning: assignment is deterministic, redo it
                self._assign(ws, cid, run, d)
            with self.engine.begin() as c:
                c.execute(campaigns.update().where(C.campaign_id == cid, C.status.in_(ACTIVE)).values(
                    status="running", next_run_at=None, updated_at=utcnow()))
        self._send_pending(ws, cid, run, d, templates)

    def validate_templates(self, ws: str, d: CampaignDefinition) -> dict[str, CompiledTemplate]:
        return {v.key: compile_for_workspace(self.engine, ws, v.template) for v in d.variants}

    def _new_run(self, ws: str, cid: str, run: int, d: CampaignDefinition) -> int:
        now = utcnow()
        with self.engine.begin() as c:
            n = c.execute(campaigns.update().where(C.campaign_id == cid, C.status == "scheduled").values(
                status="running", run=run, next_run_at=None, error=None, updated_at=now)).rowcount
            if not n:
                raise Conflict("the campaign is not scheduled any more")
            c.execute(campaign_runs.insert().values(campaign_id=cid, run=run, workspace_id=ws, status="running",
                                                    started_at=now, targeted=0))
        self._assign(ws, cid, run, d)
        return run

    def _assign(self, ws: str, cid: str, run: int, d: CampaignDefinition) -> None:
        """Take the audience now, assign arms and store the members (chunked executemany)."""
        ids, unmatched = self.audience(ws, d.audience)
        if not ids:
            raise InvalidInput("the audience is empty at launch", field="audience")
        arms = assign_arms(ids, d.salt or cid, d.holdout_pct, [(v.key, v.weight) for v in d.variants])
        with self.engine.begin() as c:
            c.execute(campaign_members.delete().where(M.campaign_id == cid, M.run == run))
        # straight DBAPI executemany of tuples: SQLAlchemy's per-row parameter handling was most of it
        cols = ("campaign_id", "run", "profile_id", "workspace_id", "arm", "status")
        for k in range(0, len(ids), INSERT_CHUNK):
            with self.engine.begin() as c:
                mark = "?" if c.dialect.paramstyle == "qmark" else "%s"
                c.exec_driver_sql(
                    f"INSERT INTO campaign_members ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})",
                    [(cid, run, p, ws, a, HOLDOUT if a == HOLDOUT else "pending")
                     for p, a in zip(ids[k : k + INSERT_CHUNK], arms[k : k + INSERT_CHUNK], strict=True)])
        with self.engine.begin() as c:
            c.execute(campaign_runs.update().where(R.campaign_id == cid, R.run == run).values(
                targeted=len(ids), unmatched=unmatched))

    def _send_pending(self, ws: str, cid: str, run: int, d: CampaignDefinition,
                      templates: dict[str, CompiledTemplate]) -> None:
        chunk = min(SEND_CHUNK, d.throttle_per_minute or SEND_CHUNK)
        last = ""  # keyset over the primary key: each chunk reads forward, never re-sorts the run
        while not self._stop.is_set():
            if self._status(cid) != "running":
                return  # paused or cancelled
            now = utcnow()
            with self.engine.connect() as c:
                rows = c.execute(sa.select(M.profile_id, M.arm).where(
                    M.campaign_id == cid, M.run == run, M.profile_id > last,
                    sa.or_(M.status == "pending", sa.and_(M.status == "deferred", M.retry_at <= now)))
                    .order_by(M.profile_id).limit(chunk)).all()
            if not rows:
                if last:
                    last = ""  # one more pass from the start: deferred customers now due
                    continue
                self._finish_run(ws, cid, run, d)
                return
            last = rows[-1].profile_id
            t0 = time.monotonic()
            by_arm: dict[str, list[str]] = {}
            for r in rows:
                by_arm.setdefault(r.arm, []).append(r.profile_id)
            for arm, pids in by_arm.items():
                self._send_arm(ws, cid, run, d, templates[arm], pids)
            if d.throttle_per_minute:
                rest = t0 + 60.0 * len(rows) / d.throttle_per_minute - time.monotonic()
                if rest > 0:
                    self._sleep(rest)

    def _send_arm(self, ws: str, cid: str, run: int, d: CampaignDefinition, tpl: CompiledTemplate,
                  pids: list[str]) -> None:
        key = f"campaign:{cid}:{run}"
        m = messages.c
        with self.engine.connect() as c:  # reserved before an interruption: book them, deliver the queued
            existing = c.execute(sa.select(m.profile_id, m.message_id, m.status).where(
                m.workspace_id == ws, m.message_key == key, m.profile_id.in_(pids))).all()
        updates = [{"p": r.profile_id, "s": "queued", "r": None, "m": r.message_id, "t": None} for r in existing]
        if existing:
            queued = [r.message_id for r in existing if r.status == "queued"]
            if queued:
                self.sender.deliver(ws, queued, tpl, vars=d.vars)
        done = {r.profile_id for r in existing}
        todo = [p for p in pids if p not in done]
        if todo:
            rep: SendReport = self.sender.send(SendRequest(ws, d.channel_id, tpl, todo, key, purpose=d.purpose,
                                                           ref=f"campaign:{cid}", vars=d.vars))
            updates += [{"p": p, "s": "queued", "r": None, "m": mid, "t": None} for p, mid in rep.message_ids.items()]
            dup = [p for p, reason in rep.suppressed.items() if reason.startswith("duplicate")]
            if dup:  # reserved meanwhile by another run of this campaign (another thread or process)
                with self.engine.connect() as c:
                    mine = dict(c.execute(sa.select(m.profile_id, m.message_id).where(
                        m.workspace_id == ws, m.message_key == key, m.profile_id.in_(dup))).all())
            else:
                mine = {}
            updates += [{"p": p, "s": "queued", "r": None, "m": mid, "t": None} for p, mid in mine.items()]
            updates += [{"p": p, "s": "suppressed", "r": reason[:300], "m": None, "t": None}
                        for p, reason in rep.suppressed.items() if p not in mine]
            updates += [{"p": p, "s": "deferred", "r": f"quiet hours until {to_iso(at)}", "m": None, "t": at}
                        for p, at in rep.deferred.items()]
            booked = set(rep.message_ids) | set(rep.suppressed) | set(rep.deferred)
            updates += [{"p": p, "s": "suppressed", "r": "not sent (no decision returned)", "m": None, "t": None}
                        for p in todo if p not in booked]
        with self.engine.begin() as c:
            c.execute(campaign_members.update().where(
                M.campaign_id == cid, M.run == run, M.profile_id == sa.bindparam("p")).values(
                status=sa.bindparam("s"), reason=sa.bindparam("r"), message_id=sa.bindparam("m"),
                retry_at=sa.bindparam("t")), updates)

    def _finish_run(self, ws: str, cid: str, run: int, d: CampaignDefinition) -> None:
        now = utcnow()
        with self.engine.connect() as c:
            next_retry = c.execute(sa.select(sa.func.min(M.retry_at)).where(
                M.campaign_id == cid, M.run == run, M.status == "deferred")).scalar()
            started = c.execute(sa.select(R.started_at).where(R.campaign_id == cid, R.run == run)).scalar()
        if next_retry is not None:  # customers in quiet hours: the scheduler resumes the run then
            with self.engine.begin() as c:
                c.execute(campaigns.update().where(C.campaign_id == cid, C.status == "running").values(
                    next_run_at=as_utc(next_retry), updated_at=now))
            return
        status, nxt = "done", None
        s = d.schedule
        if s.kind == "recurring":
            anchor = as_utc(s.at) or as_utc(started) or now
            nxt = s.next_after(anchor, max(now, as_utc(started) or now))
            if not ((s.max_runs is not None and run >= s.max_runs)
                    or (s.until is not None and nxt > as_utc(s.until))):  # type: ignore[operator]
                status = "scheduled"
            else:
                nxt = None
        with self.engine.begin() as c:
            c.execute(campaign_runs.update().where(R.campaign_id == cid, R.run == run).values(
                status="done", finished_at=now))
            c.execute(campaigns.update().where(C.campaign_id == cid, C.status == "running").values(
                status=status, next_run_at=nxt, updated_at=now))

    # -- the scheduler -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler thread (``at`` and recurring runs, resumption after a restart)."""
        if self._scheduler is None:
            self._stop.clear()
            self._scheduler = threading.Thread(target=self._loop, name="goldkey-campaign-scheduler", daemon=True)
            self._scheduler.start()

    def stop(self) -> None:
        """Stop the scheduler and the running sends (each stops after its current chunk)."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
            self._scheduler = None
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("campaign scheduler round failed")
            self._stop.wait(self.tick_seconds)

    def tick(self, now: datetime | None = None, *, wait: bool = False) -> list[str]:
        """Start the runs that are due and resume the interrupted ones; returns their campaign ids."""
        now = now or utcnow()
        with self.engine.connect() as c:
            rows = c.execute(sa.select(C.workspace_id, C.campaign_id, C.status).where(
                C.status.in_(ACTIVE), sa.or_(C.next_run_at.is_(None), C.next_run_at <= now))).all()
        started = []
        for r in rows:
            if r.status == "scheduled" and r.campaign_id and self._due(r.campaign_id, now):
                self._start(r.workspace_id, r.campaign_id, wait=wait)
                started.append(r.campaign_id)
            elif r.status == "running":
                with self._lock:
                    t = self._threads.get(r.campaign_id)
                if t is None or not t.is_alive():
                    self._start(r.workspace_id, r.campaign_id, wait=wait, resume=True)
                    started.append(r.campaign_id)
        return started

    def _due(self, cid: str, now: datetime) -> bool:
        with self.engine.connect() as c:
            nxt = c.execute(sa.select(C.next_run_at).where(C.campaign_id == cid)).scalar()
        return nxt is not None and as_utc(nxt) <= now  # type: ignore[operator]

    # -- progress and report -------------------------------------------------------------------
    def progress(self, ws: str, cid: str, run: int | None = None) -> dict[str, Any]:
        """Counts of the run's customers by status, and of its messages by status."""
        if run is None:
            run = self._row(ws, cid).run
        with self.engine.connect() as c:
            members = dict(c.execute(sa.select(M.status, sa.func.count()).where(
                M.campaign_id == cid, M.run == run).group_by(M.status)).all())
            msgs = dict(c.execute(sa.select(messages.c.status, sa.func.count()).where(
                messages.c.workspace_id == ws, messages.c.message_key == f"campaign:{cid}:{run}")
                .group_by(messages.c.status)).all())
            rr = c.execute(sa.select(campaign_runs).where(R.campaign_id == cid, R.run == run)).first()
        return {"run": run, "targeted": sum(members.values()), "members": members, "messages": msgs,
                "unmatched": rr.unmatched if rr else 0, "run_status": rr.status if rr else None,
                "started_at": to_iso(rr.started_at) if rr else None,
                "finished_at": to_iso(rr.finished_at) if rr else None}

    def report(self, ws: str, cid: str, run: int | None = None, *, now: datetime | None = None) -> dict[str, Any]:
        """The run's funnel per arm and the uplift against the holdout (see the module docstring).
        Raise NotFound for an unknown campaign, InvalidInput when it has not run yet."""
        row = self._row(ws, cid)
        run = run or row.run
        d = CampaignDefinition.model_validate_json(row.definition)
        with self.engine.connect() as c:
            rr = c.execute(sa.select(campaign_runs).where(R.campaign_id == cid, R.run == run)).first()
        if rr is None:
            raise InvalidInput(f"campaign {cid!r} has no run {run}" if run else "the campaign has not run yet",
                               field="run")
        members = self._member_table(ws, cid, run)
        per = self.member_outcomes(ws, cid, members, as_utc(rr.started_at), d)  # type: ignore[arg-type]
        now = now or utcnow()
        window_end = as_utc(rr.started_at) + timedelta(days=d.conversion.attribution_days)  # type: ignore[operator]
        arms = [self._arm_report(k, per, d) for k in [v.key for v in d.variants] + [HOLDOUT]]
        return {"campaign_id": cid, "name": row.name, "run": run, "status": row.status,
                "started_at": to_iso(rr.started_at), "attribution_days": d.conversion.attribution_days,
                "conversion": d.conversion.model_dump(exclude_none=True),
                "window_complete": now >= window_end, "window_ends_at": to_iso(window_end),
                "arms": arms, "uplift": self._uplift(per, d), "method": METHOD}

    def _member_table(self, ws: str, cid: str, run: int) -> pa.Table:
        m = messages.c
        q = (sa.select(M.profile_id, M.arm, M.status, M.reason, M.message_id, m.status.label("message_status"),
                       m.sent_at, m.cost)
             .select_from(campaign_members.outerjoin(messages, m.message_id == M.message_id))
             .where(M.campaign_id == cid, M.run == run))
        cols: dict[str, list[Any]] = {k: [] for k in ("profile_id", "arm", "status", "reason", "message_id",
                                                       "message_status", "sent_at", "cost")}
        with self.engine.connect() as c:
            for r in c.execute(q):
                for k, v in zip(cols, r, strict=True):
                    cols[k].append(as_utc(v) if k == "sent_at" else v)
        return pa.table({
            **{k: pa.array(cols[k], pa.string()) for k in ("profile_id", "arm", "status", "reason", "message_id",
                                                            "message_status")},
            "sent_at": pa.array(cols["sent_at"], pa.timestamp("us", tz="UTC")),
            "cost": pa.array(cols["cost"], pa.float64())})

    def member_outcomes(self, ws: str, cid: str, members: pa.Table, started: datetime,
                        d: CampaignDefinition) -> dict[str, np.ndarray]:
        """Per member: arm, status, engagement flags and the conversions/revenue in both windows —
        ONE DuckDB query over the members, the event log and ``orders_resolved``."""
        conv = d.conversion
        # purchases only, as every model and report reads orders: a refund or a cancellation is no
        # conversion and no revenue
        purchase = status_filter("status", "$excluded")
        if conv.order:
            conv_sql = f"""SELECT canonical_id AS pid, ordered_at AS ts FROM orders_resolved
                          WHERE workspace_id = $ws AND ordered_at >= $lo AND ordered_at < $hi AND {purchase}
                            AND canonical_id IN (SELECT profile_id FROM _m)"""
        else:
            conv_sql = """SELECT canonical_id AS pid, "timestamp" AS ts FROM events_resolved
                          WHERE workspace_id = $ws AND type = 'track' AND event = $event
                            AND "timestamp" >= $lo AND "timestamp" < $hi
                            AND canonical_id IN (SELECT profile_id FROM _m)"""
        sql = f"""
        WITH conv AS ({conv_sql}),
        ord AS (SELECT canonical_id AS pid, ordered_at AS ts, total_amount AS amt FROM orders_resolved
                WHERE workspace_id = $ws AND ordered_at >= $lo AND ordered_at < $hi AND {purchase}
                  AND canonical_id IN (SELECT profile_id FROM _m)),
        eng AS (SELECT json_extract_string(properties, '$.message_id') AS mid,
                       max(CASE WHEN event = 'Message Delivered' THEN 1 ELSE 0 END) AS delivered,
                       max(CASE WHEN event = 'Message Opened' THEN 1 ELSE 0 END) AS opened,
                       max(CASE WHEN event = 'Link Clicked' THEN 1 ELSE 0 END) AS clicked
                FROM events WHERE workspace_id = $ws AND type = 'track'
                  AND event IN ('Message Delivered', 'Message Opened', 'Link Clicked')
                  AND "timestamp" >= $lo AND json_extract_string(properties, '$.ref') = $ref
                GROUP BY 1),
        c AS (SELECT _m.profile_id,
                     bool_or(conv.ts >= $lo AND conv.ts < $lo + to_days($days)) AS conv_itt,
                     bool_or(_m.sent_at IS NOT NULL AND conv.ts >= _m.sent_at
                             AND conv.ts < _m.sent_at + to_days($days)) AS conv_sent
              FROM _m JOIN conv ON conv.pid = _m.profile_id GROUP BY 1),
        r AS (SELECT _m.profile_id,
                     sum(CASE WHEN ord.ts < $lo + to_days($days) THEN ord.amt END) AS rev_itt,
                     sum(CASE WHEN _m.sent_at IS NOT NULL AND ord.ts >= _m.sent_at
                              AND ord.ts < _m.sent_at + to_days($days) THEN ord.amt END) AS rev_sent
              FROM _m JOIN ord ON ord.pid = _m.profile_id GROUP BY 1)
        SELECT _m.profile_id, _m.arm, _m.status, _m.reason, _m.message_status, _m.cost,
               coalesce(e.delivered, 0) AS delivered, coalesce(e.opened, 0) AS opened,
               coalesce(e.clicked, 0) AS clicked,
               coalesce(c.conv_itt, false) AS conv_itt, coalesce(c.conv_sent, false) AS conv_sent,
               CASE WHEN c.conv_itt THEN coalesce(r.rev_itt, 0) ELSE 0 END AS rev_itt,
               CASE WHEN c.conv_sent THEN coalesce(r.rev_sent, 0) ELSE 0 END AS rev_sent
        FROM _m LEFT JOIN c USING (profile_id) LEFT JOIN r USING (profile_id)
             LEFT JOIN eng e ON e.mid = _m.message_id
        ORDER BY _m.profile_id"""
        days = conv.attribution_days
        sent = [t for t in members.column("sent_at").to_pylist() if t is not None]
        hi = max([started, *sent]) + timedelta(days=days)
        params: dict[str, Any] = {"ws": ws, "lo": started, "hi": hi, "days": days, "ref": f"campaign:{cid}",
                                  "excluded": excluded_statuses()}
        if not conv.order:
            params["event"] = conv.event
        tbl = self.analytical.query_arrow(sql, params, tables={"_m": members})
        return {name: np.asarray(tbl.column(name).to_numpy(zero_copy_only=False)) for name in tbl.column_names}

    def _arm_report(self, arm: str, per: dict[str, np.ndarray], d: CampaignDefinition) -> dict[str, Any]:
        sel = per["arm"] == arm
        n = int(sel.sum())
        out: dict[str, Any] = {"arm": arm, "targeted": n}
        conv_itt = per["conv_itt"][sel].astype(bool)
        rev_itt = per["rev_itt"][sel].astype(float)
        out["itt"] = {"converted": int(conv_itt.sum()), "conversion_rate": _rate(conv_itt.sum(), n),
                      "revenue": round(float(rev_itt.sum()), 2),
                      "revenue_per_customer": round(float(rev_itt.mean()), 4) if n else None}
        if arm == HOLDOUT:
            return out
        status = per["status"][sel]
        reasons: dict[str, int] = {}
        for r in per["reason"][sel & (per["status"] == "suppressed")]:
            k = _norm_reason(r)
            reasons[k] = reasons.get(k, 0) + 1
        mstat = per["message_status"][sel]
        is_sent = np.isin(mstat, ["sent", "delivered"])
        sent = int(is_sent.sum())
        conv_sent = per["conv_sent"][sel].astype(bool) & is_sent
        revenue = float(per["rev_sent"][sel].astype(float)[is_sent].sum())
        if d.cost_per_message is not None:
            cost = d.cost_per_message * sent
        else:
            cost = float(np.nansum(per["cost"][sel].astype(float)[is_sent]))
        out.update({
            "suppressed": int((status == "suppressed").sum()), "suppressed_by_reason": reasons,
            "deferred": int((status == "deferred").sum()), "pending": int((status == "pending").sum()),
            "cancelled": int((status == "cancelled").sum()),
            "sent": sent, "failed": int(np.isin(mstat, ["failed", "dead"]).sum()),
            "delivered": int(per["delivered"][sel].astype(int).sum()),
            "opened": int(per["opened"][sel].astype(int).sum()),
            "clicked": int(per["clicked"][sel].astype(int).sum()),
            "converted": int(conv_sent.sum()), "conversion_rate": _rate(conv_sent.sum(), sent),
            "revenue": round(revenue, 2), "cost": round(cost, 4),
            "roi": round((revenue - cost) / cost, 4) if cost > 0 else None,
        })
        return out

    def _uplift(self, per: dict[str, np.ndarray], d: CampaignDefinition) -> dict[str, Any]:
        hold = per["arm"] == HOLDOUT
        n0 = int(hold.sum())
        if n0 == 0:
            return {"available": False, "reason": "the campaign has no holdout (holdout_pct = 0)"}
        k0 = int(per["conv_itt"][hold].astype(bool).sum())
        r0 = per["rev_itt"][hold].astype(float)
        groups = [("treated", ~hold)] + [(v.key, per["arm"] == v.key) for v in d.variants]
        out: dict[str, Any] = {"available": True, "holdout": {"n": n0, "converted": k0,
                                                               "conversion_rate": _rate(k0, n0)}}
        for name, sel in groups:
            n1 = int(sel.sum())
            if n1 == 0:
                out[name] = {"n": 0}
                continue
            k1 = int(per["conv_itt"][sel].astype(bool).sum())
            diff, lo, hi = newcombe_diff(k1, n1, k0, n0)
            rd, rlo, rhi = welch_diff(per["rev_itt"][sel].astype(float), r0)
            out[name] = {
                "n": n1, "converted": k1, "conversion_rate": _rate(k1, n1),
                "uplift": round(diff, 6), "uplift_ci95": [round(lo, 6), round(hi, 6)],
                "incremental_conversions": round(diff * n1, 2),
                "incremental_revenue_per_customer": round(rd, 4),
                "incremental_revenue_per_customer_ci95": None if rlo is None else [round(rlo, 4), round(rhi, 4)],
                "incremental_revenue": round(rd * n1, 2),
            }
        return out


METHOD = {
    "assignment": "sha256(salt:profile_id) -> [0,1); below holdout_pct/100 = holdout, the rest by variant weights",
    "funnel": "sent customers; converted within attribution_days after their own send",
    "uplift": "intention to treat: every customer assigned to a variant vs the holdout, both from the run's "
              "launch for attribution_days",
    "uplift_ci": "Newcombe (1998) hybrid score interval, method 10 (two Wilson intervals), 95%",
    "revenue_ci": "Welch t interval of the difference of mean revenue per customer, 95%",
}


def _rate(k: Any, n: int) -> float | None:
    return round(float(k) / n, 6) if n else None
