"""Journeys API: save drafts (validated at save), validate, publish versions, pause / resume, and the
per-node counts the console's canvas shows. Admin token required. The body is
``goldkey.activate.journeys.JourneyDefinition``; a bad graph is a 400 naming the node ids.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.activate.journeys import JourneyDefinition, JourneyService
from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.govern.audit import actor_of

router = APIRouter(tags=["journeys"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody},
                                         409: {"model": ErrorBody}}
_SAVE_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR, 400: {"model": ErrorBody, "description": "Invalid journey: a cycle without a wait, an unreachable "
                                                     "node, a missing branch, an unknown channel or template "
                                                     "variable ... (the message names the node ids)."}}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": inline_schema(JourneyDefinition.model_json_schema())}}}}


def journey_service(gk: Any) -> JourneyService:
    """The instance's journey service (``gk.journeys`` once wired in the runtime; built on demand
    until then)."""
    svc = getattr(gk, "journeys", None)
    if svc is None:
        svc = JourneyService.from_goldkey(gk)
        gk.journeys = svc
    return svc  # type: ignore[no-any-return]


class VersionInfo(BaseModel):
    version: int
    published_at: str | None
    published_by: str


class JourneyPublic(BaseModel):
    journey_id: str
    name: str
    status: str = Field(description="draft | active | paused")
    version: int = Field(description="The published version customers enter (0: never published).")
    definition: dict[str, Any] = Field(description="The draft (the published versions are immutable).")
    versions: list[VersionInfo]
    created_at: str
    updated_at: str


class JourneySummary(BaseModel):
    journey_id: str
    name: str
    status: str
    version: int
    created_at: str
    updated_at: str


class Validation(BaseModel):
    valid: bool
    nodes: int
    edges: int


class NodeStats(BaseModel):
    node_id: str
    type: str
    current: int = Field(description="Customers at this node now (waiting or due).")
    visits: int = Field(description="Steps taken at this node, all entries.")
    outcomes: dict[str, int] = Field(description="Steps by outcome: yes / no, split keys, sent, suppressed ...")


class JourneyStats(BaseModel):
    journey_id: str
    version: int
    status: str
    totals: dict[str, int] = Field(description="entered, active, exited, converted")
    nodes: list[NodeStats]


@router.post("/api/v1/journeys", response_model=JourneyPublic, status_code=201, responses=_SAVE_ERR,
             openapi_extra=_BODY)
async def create_journey(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Save a new journey as a draft after the save-time checks."""
    body = await json_object(request, "the journey", required=True)
    return await run_in_threadpool(journey_service(gk).create, cred.workspace_id, body)


@router.get("/api/v1/journeys", response_model=list[JourneySummary], responses=_ERR)
async def list_journeys(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    """The workspace's journeys, newest first."""
    return await run_in_threadpool(journey_service(gk).list, cred.workspace_id)


@router.get("/api/v1/journeys/{journey_id}", response_model=JourneyPublic, responses=_ERR)
async def get_journey(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """A journey: its draft, status and published versions."""
    return await run_in_threadpool(journey_service(gk).get, cred.workspace_id, journey_id)


@router.put("/api/v1/journeys/{journey_id}", response_model=JourneyPublic, responses=_SAVE_ERR,
            openapi_extra=_BODY)
async def update_journey(journey_id: str, request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Replace the draft (checked as at creation); published versions do not change."""
    body = await json_object(request, "the journey", required=True)
    return await run_in_threadpool(journey_service(gk).update, cred.workspace_id, journey_id, body)


@router.post("/api/v1/journeys/{journey_id}/validate", response_model=Validation, responses=_SAVE_ERR)
async def validate_journey(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Check the stored draft again (a channel, tag or segment it names may have changed)."""
    return await run_in_threadpool(journey_service(gk).check, cred.workspace_id, journey_id)


@router.post("/api/v1/journeys/{journey_id}/publish", response_model=JourneyPublic, responses=_SAVE_ERR)
async def publish_journey(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Freeze the draft as the next version and start admitting customers into it."""
    return await run_in_threadpool(journey_service(gk).publish, cred.workspace_id, journey_id, actor_of(cred))


@router.post("/api/v1/journeys/{journey_id}/pause", response_model=JourneyPublic, responses=_ERR)
async def pause_journey(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Stop admitting and moving customers; everyone keeps their place."""
    return await run_in_threadpool(journey_service(gk).set_status, cred.workspace_id, journey_id, "paused")


@router.post("/api/v1/journeys/{journey_id}/resume", response_model=JourneyPublic, responses=_ERR)
async def resume_journey(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Continue a paused journey."""
    return await run_in_threadpool(journey_service(gk).set_status, cred.workspace_id, journey_id, "active")


@router.get("/api/v1/journeys/{journey_id}/stats", response_model=JourneyStats, responses=_ERR)
async def journey_stats(journey_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Customers at each node now, steps per node by outcome, and entered / exited / converted."""
    return await run_in_threadpool(journey_service(gk).stats, cred.workspace_id, journey_id)
