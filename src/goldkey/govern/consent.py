"""Consent: what each profile agreed to be contacted about, per channel and purpose.

One row per (profile, channel, purpose) holds the latest decision (granted / denied) with its
source and time; every change is audited. Sends and exports check it (``has_consent``); a profile
without a row for a channel has not consented.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.store.operational import audit_log, consents, merges, profiles
from goldkey.store.upsert import upsert

log = logging.getLogger(__name__)

CHANNELS = ("email", "sms", "call", "wechat", "push", "mail")
STATUSES = ("granted", "denied")


def set_consent(engine: sa.Engine, ws: str, profile_id: str, channel: str, status: str, *,
                purpose: str = "marketing", source: str = "api", actor: str = "api",
                on_live: bool = True) -> dict[str, Any]:
    """Record a consent decision for the live profile behind ``profile_id`` (``on_live``), or for
    ``profile_id`` itself, merged away or not (the customer who made it, kept apart from a survivor's
    own decisions: see :func:`record_decisions`)."""
    if channel not in CHANNELS:
        raise InvalidInput(f"channel must be one of {', '.join(CHANNELS)}", field="channel")
    if status not in STATUSES:
        raise InvalidInput("status must be granted or denied", field="status")
    if not purpose or len(purpose) > 40:
        raise InvalidInput("purpose must be 1 to 40 characters", field="purpose")
    now = utcnow()
    with engine.begin() as c:
        r = c.execute(sa.select(profiles.c.canonical_id).where(
            profiles.c.workspace_id == ws, profiles.c.profile_id == profile_id)).first()
        if r is None:
            raise NotFound(f"profile {profile_id!r} not found")
        pid = r.canonical_id if on_live else profile_id
        upsert(c, consents, [{"workspace_id": ws, "profile_id": pid, "channel": channel, "purpose": purpose,
                              "status": status, "source": source[:60], "updated_at": now}],
               keys=["workspace_id", "profile_id", "channel", "purpose"])
        c.execute(audit_log.insert().values(
            workspace_id=ws, actor=actor, action="consent.set", target=pid,
            detail=orjson.dumps({"channel": channel, "purpose": purpose, "status": status, "source": source}).decode(),
            at=now))
    return {"profile_id": pid, "channel": channel, "purpose": purpose, "status": status, "source": source,
            "updated_at": to_iso(now)}


def has_consent(conn: sa.Connection, ws: str, profile_id: str, channel: str, purpose: str = "marketing") -> bool:
    """Whether the profile granted ``channel`` for ``purpose`` (no decision = no consent)."""
    c = consents.c
    r = conn.execute(sa.select(c.status).where(c.workspace_id == ws, c.profile_id == profile_id,
                                               c.channel == channel, c.purpose == purpose)).first()
    return r is not None and r.status == "granted"


def latest_decision(channel: str, purpose: str, customer: Any) -> Any:
    """A correlated SQL expression: the customer's latest ``channel``/``purpose`` decision
    (``'granted'``, ``'denied'`` or NULL when none) across every profile merged into ``customer``
    (a column holding a live profile id). The latest ``updated_at`` wins and a denial wins a tie.

    The one definition of "may we contact this customer": the send guardrails
    (``activate.guardrails``) and the segments' call-list export both use it, in set-based queries
    (one subquery per row, served by ``ix_profiles_canonical`` and the consents key)."""
    merged = profiles.alias("merged")
    k, m = consents.c, merged.c
    denied_first = sa.case((k.status == "denied", 0), else_=1)
    return (sa.select(k.status)
            .select_from(consents.join(merged, m.profile_id == k.profile_id))
            # profile ids are unique across workspaces, so the workspace is matched through the merged
            # profile rather than as a constant: the planner (SQLite keeps no statistics here) then walks
            # from the customer to its merged profiles (ix_profiles_canonical), then their consent rows
            .where(m.canonical_id == customer, k.workspace_id == m.workspace_id,
                   k.channel == channel, k.purpose == purpose)
            .order_by(k.updated_at.desc(), denied_first).limit(1).scalar_subquery())


# --------------------------------------------------------------------------- consent from tracking

#: what an ``identify`` call may say for one channel (Braze/Iterable-style subscription states too; True == 1)
_GRANTED = {True, "granted", "opted_in", "opt_in", "subscribed", "yes", "y", "true", "1", "同意", "是"}
_DENIED = {False, "denied", "opted_out", "opt_out", "unsubscribed", "no", "n", "false", "0", "拒绝", "否"}


def _status_of(value: Any) -> str | None:
    v = value.strip().lower() if isinstance(value, str) else value
    if isinstance(v, bool) or isinstance(v, int | str):
        if v in _GRANTED:
            return "granted"
        if v in _DENIED:
            return "denied"
    return None


def consent_decisions(traits: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Read ``traits.consent`` of an identify call into (channel, purpose, status) decisions.

    Two shapes, as documented in docs/tracking-api.md ("Marketing consent"):
    ``{"sms": true, "email": "denied"}`` (purpose ``marketing``) or
    ``{"sms": {"marketing": true, "service": true}}``. Raises InvalidInput naming the field
    (``traits.consent.<channel>[.<purpose>]``) for an unknown channel or value."""
    raw = traits.get("consent")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InvalidInput("must be an object of channel -> decision", field="traits.consent")
    out: list[tuple[str, str, str]] = []
    for channel, value in raw.items():
        where = f"traits.consent.{channel}"
        if channel not in CHANNELS:
            raise InvalidInput(f"unknown channel; use one of {', '.join(CHANNELS)}", field=where)
        items = value.items() if isinstance(value, dict) else [("marketing", value)]
        for purpose, v in items:
            field = f"{where}.{purpose}" if isinstance(value, dict) else where
            if not isinstance(purpose, str) or not 0 < len(purpose) <= 40:
                raise InvalidInput("a purpose is 1 to 40 characters", field=field)
            status = _status_of(v)
            if status is None:
                raise InvalidInput("must be true/false or granted/denied (opted_in/opted_out)", field=field)
            out.append((channel, purpose, status))
    return out


Decisions = dict[tuple[str, str, str, str], tuple[Any, str, str]]


def keep_newest(latest: Decisions, key: tuple[str, str, str, str], value: tuple[Any, str, str]) -> None:
    """Keep, per (workspace, profile, channel, purpose), the latest decision (time, status, ref);
    a later one at the same time wins."""
    if key not in latest or latest[key][0] <= value[0]:
        latest[key] = value


class ConsentCollector:
    """Records the consent decisions that ``identify`` calls carry (``traits.consent``), on the
    writer's durable commits, before any trigger listening to the same commit decides to send.

    A decision only replaces an older one: events can arrive late (a mobile SDK's queue), and a
    late ``identify`` must not overturn what the customer decided afterwards (an unsubscribe)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.recorded = 0
        self.refused = 0

    def attach(self, writer: Any) -> None:
        """Record the consent of identify events as soon as their operational commit is done,
        before any real-time trigger of the same commit decides (``Writer.early_listeners``)."""
        writer.early_listeners.append(self.on_commit)

    def on_commit(self, stored: list[tuple[str, str, Any]]) -> None:
        from goldkey.collect.tracking import micros_to_datetime

        found: list[tuple[str, str, Any, list[tuple[str, str, str]]]] = []
        for ws, pid, ev in stored:
            if ev.type != "identify" or not ev.traits or "consent" not in ev.traits:
                continue
            try:
                decisions = consent_decisions(ev.traits)
            except InvalidInput as exc:  # tracking validates this at the edge; a stored event is never refused
                self.refused += 1
                log.warning("event %s: consent not recorded: %s", ev.message_id, exc)
                continue
            found.append((ws, pid, ev, decisions))
        if not found:
            return
        with self.engine.begin() as c:
            owner = self._owners(c, found)
            latest: dict[tuple[str, str, str, str], tuple[Any, str, str]] = {}
            for ws, pid, ev, decisions in found:
                # decided no later than received (a clock years ahead must not outrank a later opt-out)
                at = micros_to_datetime(ev.seen_at)
                # the userId decides, as it does for the events an undo moves back: a survivor's own
                # userId is no merged customer's, so the decision stays on the survivor even when the
                # identify also carries the merged-away device's anonymousId
                if ev.user_id:
                    who = owner.get((ws, "user_id", ev.user_id)) or pid
                else:
                    who = owner.get((ws, "anonymous_id", ev.anonymous_id)) or pid
                for channel, purpose, status in decisions:
                    keep_newest(latest, (ws, who, channel, purpose), (at, status, ev.message_id))
            self.recorded += record_decisions(c, latest, source="identify", actor="tracking", on_live=False)

    @staticmethod
    def _owners(c: sa.Connection, found: list[tuple[str, str, Any, list[tuple[str, str, str]]]]
                ) -> dict[tuple[str, str, str], str]:
        """(workspace, id type, value) -> the profile merged into the one an identify was stored on
        that brought its user or anonymous id: the decision is that customer's own, kept on their
        profile so that an undo of the merge gives it back with them (the identifiers moved to the
        survivor; the standing merges' records name whose they were, the earliest merge the
        original holder)."""
        wanted = {(ws, t, v) for ws, _, ev, _ in found
                  for t, v in (("user_id", ev.user_id), ("anonymous_id", ev.anonymous_id)) if v}
        live: dict[str, set[str]] = {}
        for ws, pid, _, _ in found:
            live.setdefault(ws, set()).add(pid)
        owner: dict[tuple[str, str, str], str] = {}
        for ws, pids in live.items():
            owner.update(merged_away_owners(standing_merges(c, ws, pids), wanted))
        return owner


def standing_merges(c: sa.Connection, ws: str, survivors: Iterable[str]) -> list[Any]:
    """The standing merges of ``ws`` whose merged-away profile lives on as one of ``survivors``
    (``workspace_id``, ``loser_id``, ``detail``, and the loser's ``canonical_id``), latest first:
    what :func:`merged_away_owners` reads. One statement per 50,000 survivors, found through
    ``ix_profiles_canonical`` and ``ix_merges_loser``: a workspace's merges are never all read (a
    web-tracked brand merges at every sign-in from a new device)."""
    pids = sorted(set(survivors))
    sqlite = c.dialect.name == "sqlite"
    # SQLite: CROSS JOIN keeps this order (the planner would walk the workspace's merges first)
    found = ("json_each(:ids) AS u CROSS JOIN profiles AS l CROSS JOIN merges AS m WHERE l.canonical_id = u.value"
             if sqlite else "profiles AS l JOIN merges AS m ON true WHERE l.canonical_id = ANY(:ids)")
    sql = sa.text(
        f"SELECT m.workspace_id, m.loser_id, m.detail, l.canonical_id, m.created_at, m.merge_id FROM {found} "
        "AND l.workspace_id = :ws AND l.profile_id <> l.canonical_id "
        "AND m.workspace_id = :ws AND m.loser_id = l.profile_id AND m.undone_at IS NULL").columns(
        merges.c.workspace_id, merges.c.loser_id, merges.c.detail, sa.column("canonical_id", sa.String),
        merges.c.created_at, merges.c.merge_id)
    rows: list[Any] = []
    for lo in range(0, len(pids), 50_000):
        part = pids[lo : lo + 50_000]
        rows += c.execute(sql, {"ws": ws, "ids": orjson.dumps(part).decode() if sqlite else part}).all()
    rows.sort(key=lambda r: (as_utc(r.created_at), r.merge_id), reverse=True)
    return rows


def merged_away_owners(rows: Iterable[Any], wanted: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """(workspace, id type, value) of ``wanted`` -> the merged-away profile that brought that
    identifier to its survivor by one of the standing merges ``rows`` (:func:`standing_merges`,
    latest first: an earlier merge's loser overrides, it held the identifier first): whose a consent
    decision made under it is."""
    owner: dict[tuple[str, str, str], str] = {}
    for r in rows:
        for t, v in orjson.loads(r.detail).get("loser_identities", []):
            if (r.workspace_id, t, v) in wanted:
                owner[(r.workspace_id, t, v)] = r.loser_id
    return owner


def record_decisions(c: sa.Connection, latest: dict[tuple[str, str, str, str], tuple[Any, str, str]], *,
                     source: str, actor: str, on_live: bool = True) -> int:
    """Upsert consent decisions keyed (workspace, profile, channel, purpose) -> (decided at, status,
    reference), where newer than the stored decision; audited. The one bulk path of tracked
    (identify) and imported (CRM file) consent. With ``on_live`` each decision goes to the profile's
    live (canonical) profile; without, to the profile named (a merged-away one keeps its own
    decisions, which :func:`latest_decision` and the 360° profile read across the merge, and which an
    undo of the merge gives back with it). Returns how many decisions changed the record."""
    k = consents.c
    pids = sorted({key[1] for key in latest})
    canon: dict[str, str] = {}
    for i in range(0, len(pids), 500) if on_live else ():
        canon.update(c.execute(sa.select(profiles.c.profile_id, profiles.c.canonical_id)
                               .where(profiles.c.profile_id.in_(pids[i:i + 500]))).all())
    want: dict[tuple[str, str, str, str], tuple[Any, str, str]] = {}
    for (ws, pid, ch, pu), v in latest.items():
        keep_newest(want, (ws, canon.get(pid, pid), ch, pu), v)
    live = sorted({key[1] for key in want})
    have: dict[tuple[str, str, str, str], Any] = {}
    for i in range(0, len(live), 500):
        for r in c.execute(sa.select(k.workspace_id, k.profile_id, k.channel, k.purpose, k.updated_at, k.status,
                                     k.source).where(k.profile_id.in_(live[i:i + 500]))):
            have[(r.workspace_id, r.profile_id, r.channel, r.purpose)] = (as_utc(r.updated_at), r.status, r.source)
    rows, audit = [], []
    now = utcnow()
    for (ws, pid, ch, pu), (at, status, ref) in want.items():
        old = have.get((ws, pid, ch, pu))
        if old is not None and (old[0] > at or (old[0] == at and old[1] in (status, "denied"))):
            continue  # a newer decision stands, a denial wins a tie, or this very one is on record
        rows.append({"workspace_id": ws, "profile_id": pid, "channel": ch, "purpose": pu,
                     "status": status, "source": source, "updated_at": at})
        if old is not None and old[1] == status and source == "import" and old[2] == "import":
            # a file saying again what a file said (a re-import, whose undated denial is dated at
            # each import): the decision stands as of the later date, which an older decision
            # elsewhere must not outrank, and it is no new decision for the audit log (an identify
            # sending its decision again is a decision made again, and audited)
            continue
        audit.append({"workspace_id": ws, "actor": actor, "action": "consent.set", "target": pid,
                      "detail": orjson.dumps({"channel": ch, "purpose": pu, "status": status,
                                              "source": source, "ref": ref}).decode(),
                      "at": now})
    upsert(c, consents, rows, keys=["workspace_id", "profile_id", "channel", "purpose"])
    if audit:
        c.execute(audit_log.insert(), audit)
    return len(rows)
