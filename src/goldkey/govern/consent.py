"""Consent: what each profile agreed to be contacted about, per channel and purpose.

One row per (profile, channel, purpose) holds the latest decision (granted / denied) with its
source and time; every change is audited. Sends and exports check it (``has_consent``); a profile
without a row for a channel has not consented.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.store.operational import audit_log, consents, profiles
from goldkey.store.upsert import upsert

CHANNELS = ("email", "sms", "call", "wechat", "push", "mail")
STATUSES = ("granted", "denied")


def set_consent(engine: sa.Engine, ws: str, profile_id: str, channel: str, status: str, *,
                purpose: str = "marketing", source: str = "api", actor: str = "api") -> dict[str, Any]:
    """Record a consent decision for the live profile behind ``profile_id``."""
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
        pid = r.canonical_id
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
