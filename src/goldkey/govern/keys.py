"""Listing and revoking a workspace's API keys (write keys and admin tokens).

Keys are created by ``WorkspaceService.create_key`` (the secret is shown once, only its SHA-256 hash
is stored). Listing shows what a person needs to recognise a key -- its kind, label, the first
characters of the secret (``prefix``) and when it was created or revoked -- never the hash.
Revoking sets ``revoked_at`` (the row stays, for the audit trail) and drops the key from the
service's authentication cache, so the next request with it is refused at once.

Two revocations are refused, because they would lock people out: the admin token the request
itself was made with (sign in with another one to revoke it) and the last live admin token of the
workspace (no-one could reach its API any more).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, NotFound
from goldkey.govern.workspaces import WorkspaceService
from goldkey.store.operational import api_keys


def _public(row: Any) -> dict[str, Any]:
    return {"key_id": row.key_id, "kind": row.kind, "prefix": row.prefix, "label": row.label,
            "created_at": to_iso(row.created_at), "revoked_at": to_iso(row.revoked_at)}


def list_keys(service: WorkspaceService, workspace_id: str, *, include_revoked: bool = True) -> list[dict[str, Any]]:
    """Return the workspace's keys, newest first: key_id, kind, prefix, label, created_at,
    revoked_at (ISO strings; ``revoked_at`` is None for a live key)."""
    k = api_keys.c
    q = sa.select(k.key_id, k.kind, k.prefix, k.label, k.created_at, k.revoked_at).where(k.workspace_id == workspace_id)
    if not include_revoked:
        q = q.where(k.revoked_at.is_(None))
    with service.engine.connect() as conn:
        rows = conn.execute(q.order_by(k.created_at.desc(), k.key_id)).all()
    return [_public(r) for r in rows]


def revoke_key(service: WorkspaceService, workspace_id: str, key_id: str, *, by_key_id: str | None) -> dict[str, Any]:
    """Revoke ``key_id`` of the workspace and return it as ``list_keys`` shows it.

    Revoking a key already revoked returns it unchanged. Raises NotFound for a key of another
    workspace or none, Conflict for the caller's own admin token or the last live admin token.
    """
    k = api_keys.c
    with service.engine.begin() as conn:
        row = conn.execute(sa.select(api_keys).where(k.workspace_id == workspace_id, k.key_id == key_id)).first()
        if row is None:
            raise NotFound(f"key {key_id!r} not found")
        if row.revoked_at is not None:
            return _public(row)
        if key_id == by_key_id:
            raise Conflict("this is the admin token you are signed in with; revoke it with another admin token")
        if row.kind == "admin":
            live = conn.execute(sa.select(sa.func.count()).select_from(api_keys).where(
                k.workspace_id == workspace_id, k.kind == "admin", k.revoked_at.is_(None))).scalar_one()
            if live <= 1:
                raise Conflict("the last admin token of a workspace cannot be revoked")
        conn.execute(api_keys.update().where(k.key_id == key_id).values(revoked_at=utcnow()))
        row = conn.execute(sa.select(api_keys).where(k.key_id == key_id)).one()
    service.forget(row.key_hash)
    return _public(row)
