"""The caller's workspace: its details, keys and identity rules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import KeyCreate, KeyCreated, WorkspacePublic
from goldkey.core.clock import utcnow
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
