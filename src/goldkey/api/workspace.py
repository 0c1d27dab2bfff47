"""The caller's workspace: its details, keys (create, list, revoke) and identity rules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import KeyCreate, KeyCreated, WorkspacePublic
from goldkey.core.clock import utcnow
from goldkey.govern.keys import list_keys, revoke_key
from goldkey.identity.rules import IdentityRules
from goldkey.store.operational import audit_log

router = APIRouter(prefix="/api/v1/workspace", tags=["workspace"])


@router.get("", response_model=WorkspacePublic)
def current(gk: GK, cred: Admin) -> dict[str, Any]:
    """The workspace the admin token belongs to."""
    return gk.workspaces.get(cred.workspace_id)


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, gk: GK, cred: Admin) -> dict[str, Any]:
    """Create a write key or admin token; the secret is shown only in this answer."""
    secret = gk.workspaces.create_key(cred.workspace_id, body.kind, body.label)
    with gk.engine.begin() as conn:
        conn.execute(
            audit_log.insert().values(
                workspace_id=cred.workspace_id,
                actor=f"key:{cred.key_id}",
                action="key.create",
                target=body.kind,
                detail="{}",
                at=utcnow(),
            )
        )
    return {"kind": body.kind, "secret": secret}


class KeyPublic(BaseModel):
    """A key as listed: never its secret nor its hash, only the secret's first characters."""

    key_id: str
    kind: str = Field(description="write | admin")
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    label: str
    created_at: str
    revoked_at: str | None = Field(description="When it was revoked; null while it is live.")


@router.get("/keys", response_model=list[KeyPublic])
async def get_keys(gk: GK, cred: Admin, include_revoked: bool = True) -> list[dict[str, Any]]:
    """The workspace's write keys and admin tokens, newest first (``include_revoked=false``: live ones)."""
    return await run_in_threadpool(list_keys, gk.workspaces, cred.workspace_id, include_revoked=include_revoked)


@router.delete("/keys/{key_id}", response_model=KeyPublic)
def delete_key(key_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Revoke a key: refused from the next request. The row is kept (``revoked_at`` set). 409 for
    the admin token of this request and for the workspace's last live admin token."""
    key = revoke_key(gk.workspaces, cred.workspace_id, key_id, by_key_id=cred.key_id)
    with gk.engine.begin() as conn:
        conn.execute(
            audit_log.insert().values(
                workspace_id=cred.workspace_id,
                actor=f"key:{cred.key_id}",
                action="key.revoke",
                target=key_id,
                detail="{}",
                at=utcnow(),
            )
        )
    return key


@router.get("/identity-rules", response_model=IdentityRules)
def get_rules(gk: GK, cred: Admin) -> IdentityRules:
    """Identity-resolution rules: priority, per-type limits, blocked values, custom types."""
    return gk.workspaces.rules(cred.workspace_id)


@router.put("/identity-rules", response_model=IdentityRules)
def put_rules(rules: IdentityRules, gk: GK, cred: Admin) -> IdentityRules:
    """Replace the identity rules; they apply to identifiers seen from now on."""
    gk.workspaces.set_rules(cred.workspace_id, rules)
    with gk.engine.begin() as conn:
        conn.execute(
            audit_log.insert().values(
                workspace_id=cred.workspace_id,
                actor=f"key:{cred.key_id}",
                action="identity_rules.update",
                target=cred.workspace_id,
                detail=rules.model_dump_json(),
                at=utcnow(),
            )
        )
    return rules
