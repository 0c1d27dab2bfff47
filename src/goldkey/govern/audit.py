"""The audit trail of configuration changes: one writer and one reader of ``audit_log``.

A row says who (``actor``) did what (``action``, e.g. ``channel.update``) to which object
(``target``), when, with a JSON ``detail``. A change of configuration is described by the *names*
of the fields it changed (``{"changed": ["config.port", "secrets.password"]}``, see
``changed_fields``), never by their values: configuration holds credentials (channel secrets) and
personal data (blocked phone numbers of the identity rules), and the audit log is readable by every
admin of the workspace.

Reading is workspace-scoped and newest first, a page at a time (``list_entries``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import InvalidInput
from goldkey.govern.workspaces import Credential
from goldkey.store.operational import audit_log

MAX_PAGE = 1000


def actor_of(cred: Credential) -> str:
    """The ``actor`` recorded for a request made with ``cred``: ``user:<user_id>`` for a signed-in
    user's session, ``key:<key_id>`` for an API key (as ``govern.users`` writes it)."""
    user_id = getattr(cred, "user_id", None)  # sessions of users: see govern/users.py
    return f"user:{user_id}" if user_id else f"key:{cred.key_id}"


def write(conn: sa.Connection, workspace_id: str, actor: str, action: str, target: str,
          detail: Mapping[str, Any] | None = None, *, at: datetime | None = None) -> None:
    """Append one audit row inside the caller's transaction ``conn`` (the one place every
    module writes the audit trail through)."""
    conn.execute(audit_log.insert().values(
        workspace_id=workspace_id, actor=actor[:100], action=action[:60], target=target[:200],
        detail=orjson.dumps(dict(detail or {}), default=str).decode(), at=at or utcnow()))


def audit(engine: sa.Engine, cred: Credential, action: str, target: str,
          detail: Mapping[str, Any] | None = None) -> None:
    """Append one audit row for a change made through the API with ``cred``, in its own
    transaction, in ``cred``'s workspace. ``detail`` must not hold secret values: give the names
    of the changed fields (``changed_fields``)."""
    with engine.begin() as conn:
        write(conn, cred.workspace_id, actor_of(cred), action, target, detail)


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Return the sorted dotted names of the fields that differ between ``before`` and ``after``
    (added, removed or changed). Mappings on both sides are compared key by key
    (``config.port``); anything else, lists included, as a whole."""
    out: list[str] = []
    for key in sorted(set(before) | set(after), key=str):
        name = f"{prefix}{key}"
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out.extend(changed_fields(old, new, f"{name}."))
        elif old != new:
            out.append(name)
    return out


_MISSING = object()


def _entry(row: Any) -> dict[str, Any]:
    try:
        detail = orjson.loads(row.detail) if row.detail else {}
    except orjson.JSONDecodeError:
        detail = {"text": row.detail}
    if not isinstance(detail, dict):
        detail = {"value": detail}
    return {"audit_id": row.audit_id, "at": to_iso(row.at), "actor": row.actor, "action": row.action,
            "target": row.target, "detail": detail}


def list_entries(engine: sa.Engine, workspace_id: str, *, limit: int = 100,
                 before: int | None = None) -> dict[str, Any]:
    """Return a page of the workspace's audit trail, newest first:
    ``{"items": [...], "next_before": id | None}``. ``before`` is the ``next_before`` of the
    previous page (an ``audit_id`` of this workspace); raise InvalidInput naming ``limit`` or
    ``before`` when they are out of range or not an entry of this workspace."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    a = audit_log.c
    q = sa.select(a.audit_id, a.at, a.actor, a.action, a.target, a.detail).where(a.workspace_id == workspace_id)
    with engine.connect() as conn:
        if before is not None:
            at = conn.execute(sa.select(a.at).where(a.workspace_id == workspace_id,
                                                    a.audit_id == before)).scalar_one_or_none()
            if at is None:
                raise InvalidInput(f"no audit entry {before} in this workspace", field="before")
            # keyset on (at, audit_id): the (workspace_id, at) index serves it without sorting the trail
            q = q.where(sa.or_(a.at < at, sa.and_(a.at == at, a.audit_id < before)))
        rows = conn.execute(q.order_by(a.at.desc(), a.audit_id.desc()).limit(limit + 1)).all()
    items = [_entry(r) for r in rows[:limit]]
    return {"items": items, "next_before": items[-1]["audit_id"] if len(rows) > limit else None}
