"""The caller's workspace: its details, keys (create, list, revoke), identity rules and audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody, KeyCreate, KeyCreated, WorkspacePublic
from goldkey.govern.audit import MAX_PAGE, audit, changed_fields, list_entries
from goldkey.govern.keys import list_keys, revoke_key
from goldkey.identity.rules import IdentityRules

router = APIRouter(prefix="/api/v1/workspace", tags=["workspace"])


_E = {"model": ErrorBody}
_ERR: dict[int | str, dict[str, Any]] = {401: _E}
_BAD: dict[int | str, dict[str, Any]] = {400: _E, 401: _E}


@router.get("", response_model=WorkspacePublic, responses=_ERR)
def current(gk: GK, cred: Admin) -> dict[str, Any]:
    """The workspace the admin token belongs to."""
    return gk.workspaces.get(cred.workspace_id)


@router.post("/keys", response_model=KeyCreated, status_code=201, responses=_BAD)
def create_key(body: KeyCreate, gk: GK, cred: Admin) -> dict[str, Any]:
    """Create a write key or admin token; the secret is shown only in this answer."""
    secret = gk.workspaces.create_key(cred.workspace_id, body.kind, body.label)
    audit(gk.engine, cred, "key.create", body.kind, {"label": body.label})
    return {"kind": body.kind, "secret": secret}


class KeyPublic(BaseModel):
    """A key as listed: never its secret nor its hash, only the secret's first characters."""

    key_id: str
    kind: str = Field(description="write | admin")
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    label: str
    created_at: str
    revoked_at: str | None = Field(description="When it was revoked; null while it is live.")


@router.get("/keys", response_model=list[KeyPublic], responses=_ERR)
async def get_keys(gk: GK, cred: Admin, include_revoked: bool = True) -> list[dict[str, Any]]:
    """The workspace's write keys and admin tokens, newest first (``include_revoked=false``: live ones)."""
    return await run_in_threadpool(list_keys, gk.workspaces, cred.workspace_id, include_revoked=include_revoked)


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses={**_ERR, 404: _E, 409: _E})
def delete_key(key_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Revoke a key: refused from the next request. The row is kept (``revoked_at`` set). 409 for
    the admin token of this request and for the workspace's last live admin token."""
    key = revoke_key(gk.workspaces, cred.workspace_id, key_id, by_key_id=cred.key_id)
    audit(gk.engine, cred, "key.revoke", key_id, {"kind": key["kind"], "label": key["label"]})
    return key


@router.get("/identity-rules", response_model=IdentityRules, responses=_ERR)
def get_rules(gk: GK, cred: Admin) -> IdentityRules:
    """Identity-resolution rules: priority, per-type limits, blocked values, custom types."""
    return gk.workspaces.rules(cred.workspace_id)


@router.put("/identity-rules", response_model=IdentityRules, responses=_BAD)
def put_rules(rules: IdentityRules, gk: GK, cred: Admin) -> IdentityRules:
    """Replace the identity rules; they apply to identifiers seen from now on."""
    before = gk.workspaces.rules(cred.workspace_id).model_dump(mode="json")
    gk.workspaces.set_rules(cred.workspace_id, rules)
    # names only: the blocked values are phone numbers and e-mail addresses
    audit(gk.engine, cred, "identity_rules.update", cred.workspace_id,
          {"changed": changed_fields(before, rules.model_dump(mode="json"))})
    return rules


class AuditEntry(BaseModel):
    """One change recorded in the audit trail. ``detail`` never holds a credential: changes of
    configuration name the fields that changed (``{"changed": ["config.port", "secrets.password"]}``)."""

    audit_id: int
    at: str
    actor: str = Field(description="key:<key_id> for an API key, user:<user_id> for a signed-in user")
    action: str = Field(description="e.g. key.create, channel.update, send_policy.update, identity_rules.update")
    target: str = Field(description="The id of the changed object")
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_before: int | None = Field(description="Pass as ``before`` for the next (older) page; null on the last.")


@router.get("/audit", response_model=AuditPage, responses=_BAD)
async def get_audit(gk: GK, cred: Admin, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                    before: int | None = None) -> dict[str, Any]:
    """The workspace's audit trail, newest first, ``limit`` entries a page; ``before`` is the
    ``next_before`` of the previous page (400 when it is not an entry of this workspace)."""
    return await run_in_threadpool(list_entries, gk.engine, cred.workspace_id, limit=limit, before=before)
