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
