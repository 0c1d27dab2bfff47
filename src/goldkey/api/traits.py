"""Computed traits: define, list, change, delete and compute them (see docs/traits.md).

Every route takes an admin token and works in that token's workspace. Definitions are validated by
``goldkey.audience.traits.parse_definition``: a bad one is answered 400 with the offending field
(``aggregate``, ``where[0].property`` ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.audience.traits import TraitDefinition
from goldkey.core.errors import InvalidInput
from goldkey.govern.audit import actor_of

router = APIRouter(prefix="/api/v1/traits", tags=["traits"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_WRITE_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR,
    400: {"model": ErrorBody, "description": "Invalid definition (names the field)"},
    409: {"model": ErrorBody, "description": "A trait of that name exists"},
}


class TraitPublic(BaseModel):
    """A trait: its definition and where its computation stands."""

    name: str
    description: str
    field: str = Field(description="The profile field the trait fills, `traits.<name>`.")
    value_type: str = Field(description="number or string")
    incremental: bool = Field(description="Whether arriving events update it between batch runs.")
    definition: dict[str, Any]
    version: int
    status: str = Field(description="new | computed | failed")
    computed_at: datetime | None = None
    computed_as_of: datetime | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class TraitList(BaseModel):
    traits: list[TraitPublic]


class TraitDeleted(BaseModel):
    name: str
    deleted: bool
    profiles_cleared: int


class ComputeRequest(BaseModel):
    """Which traits to compute (all when omitted or empty)."""

    names: list[str] | None = None


class ComputeReport(BaseModel):
    """What a batch computation did."""

    workspace_id: str
    traits: list[str]
    as_of: str | None
    profiles_with_value: dict[str, int]
    profiles_changed: int
    profiles_written: int
    seconds: dict[str, float]


_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(TraitDefinition.model_json_schema())}},
    }
}


async def _json_body(request: Request, *, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise InvalidInput("send the trait definition as a JSON object", field="body")
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", field="body") from None


@router.post("", response_model=TraitPublic, status_code=201, responses=_WRITE_ERR, openapi_extra=_DEFINITION_BODY)
async def create_trait(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Define a trait (see docs/traits.md). It is computed by the next scheduled run, or now with
    `POST /api/v1/traits/compute`."""
    body = await _json_body(request)
    return await run_in_threadpool(gk.traits.create, cred.workspace_id, body, actor=actor_of(cred))


@router.get("", response_model=TraitList, responses=_ERR)
def list_traits(gk: GK, cred: Admin) -> dict[str, Any]:
    """The workspace's traits with their status."""
    return {"traits": gk.traits.list(cred.workspace_id)}


@router.post("/compute", response_model=ComputeReport, responses=_ERR)
async def compute_traits(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Compute traits now (all, or `names`) and write the changed values to the profiles; answers
    with counts and seconds per phase."""
    body = await _json_body(request, required=False)
    try:
        req = ComputeRequest.model_validate(body or {})
    except ValueError as exc:
        raise InvalidInput(f"expected {{'names': [...]}}: {exc}", field="names") from None
    return await run_in_threadpool(gk.traits.compute, cred.workspace_id, req.names or None)


@router.get("/{name}", response_model=TraitPublic, responses=_ERR)
def get_trait(name: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """One trait."""
    return gk.traits.get(cred.workspace_id, name)


@router.put("/{name}", response_model=TraitPublic, responses=_WRITE_ERR, openapi_extra=_DEFINITION_BODY)
async def update_trait(name: str, request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Replace a trait's definition (`name` may be omitted from the body). The version goes up and the
    values are recomputed by the next batch run."""
    body = await _json_body(request)
    return await run_in_threadpool(gk.traits.update, cred.workspace_id, name, body, actor=actor_of(cred))


@router.delete("/{name}", response_model=TraitDeleted, responses=_ERR)
def delete_trait(name: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Delete a trait, its catalog field and its values on every profile."""
    return gk.traits.delete(cred.workspace_id, name, actor=actor_of(cred))
