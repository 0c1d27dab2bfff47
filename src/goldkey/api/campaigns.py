"""Campaigns and triggers API: define, launch, pause, resume, cancel, report; triggers and their
firings and report. An admin token or a signed-in user with the route's role (``goldkey.api.roles``).
Bodies are the definitions of ``goldkey.activate.campaigns`` and ``goldkey.activate.triggers``; a bad
definition is a 400 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.activate.campaigns import CampaignDefinition, CampaignService
from goldkey.activate.triggers import TriggerDefinition, TriggerService
from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.govern.audit import audit

router = APIRouter(tags=["campaigns"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody},
                                         409: {"model": ErrorBody}}
_SAVE_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR, 400: {"model": ErrorBody, "description": "Invalid definition: empty audience, unknown template "
                                                     "variable, channel missing or without credentials ..."}}
_CAMPAIGN_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": inline_schema(CampaignDefinition.model_json_schema())}}}}
_TRIGGER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": inline_schema(TriggerDefinition.model_json_schema())}}}}


def campaign_service(gk: Any) -> CampaignService:
    """The instance's campaign service (``gk.campaigns`` once wired in the runtime; built on demand
    until then, without its scheduler)."""
    svc = getattr(gk, "campaigns", None)
    if svc is None:
        svc = CampaignService.from_goldkey(gk)
        gk.campaigns = svc
    return svc  # type: ignore[no-any-return]


def trigger_service(gk: Any) -> TriggerService:
    """The instance's trigger service (``gk.triggers`` once wired in the runtime; built on demand
    until then, without the writer listener and the timer)."""
    svc = getattr(gk, "triggers", None)
    if svc is None:
        svc = TriggerService.from_goldkey(gk)
        gk.triggers = svc
    return svc  # type: ignore[no-any-return]


class Progress(BaseModel):
    run: int
    targeted: int
    members: dict[str, int] = Field(description="Customers of the run by status: holdout, pending, queued, "
                                                "suppressed, deferred, cancelled.")
    messages: dict[str, int] = Field(description="The run's messages by status: queued, sent, failed ...")
    unmatched: int
    run_status: str | None
    started_at: str | None
    finished_at: str | None


class CampaignPublic(BaseModel):
    campaign_id: str
    name: str
    status: str
    run: int
    next_run_at: str | None
    error: str | None
    definition: dict[str, Any]
    created_at: str
    updated_at: str
    progress: Progress


class CampaignSummary(BaseModel):
    campaign_id: str
    name: str
    status: str
    run: int
    next_run_at: str | None
    created_at: str


class CampaignReport(BaseModel):
    campaign_id: str
    name: str
    run: int
    status: str
    started_at: str | None
    attribution_days: int
    conversion: dict[str, Any]
    window_complete: bool
    window_ends_at: str | None
    arms: list[dict[str, Any]] = Field(description="Per variant and the holdout: the funnel (targeted, "
                                                   "suppressed by reason, sent, delivered, opened, clicked, "
                                                   "converted, revenue, cost, ROI) and the intention-to-treat "
                                                   "figures.")
    uplift: dict[str, Any] = Field(description="Treated (and each variant) vs the holdout: conversion uplift "
                                               "with Newcombe's 95% interval, incremental revenue per customer "
                                               "with Welch's 95% interval.")
    method: dict[str, str]


class TriggerPublic(BaseModel):
    trigger_id: str
    name: str
    kind: str
    status: str
    definition: dict[str, Any]
    firings: dict[str, int]
    created_at: str
    updated_at: str


class TriggerChanged(TriggerPublic):
    changed: list[str] = Field(description="The definition's top-level fields this change altered.")


class TriggerDeleted(BaseModel):
    trigger_id: str
    name: str
    deleted: bool
    queued_messages_not_sent: int = Field(description="Messages the trigger had queued and not sent: they are "
                                                      "not sent now (status failed, reason given).")


class Firing(BaseModel):
    profile_id: str
    window_key: str
    fired_at: str | None
    status: str
    reason: str | None
    message_id: str | None
    latency_ms: float | None
    retry_at: str | None


class FiringPage(BaseModel):
    total: int
    items: list[Firing]


class TriggerReport(BaseModel):
    trigger_id: str
    name: str
    holdout_pct: float
    conversion: dict[str, Any]
    since: str | None
    window_complete: bool = Field(description="Every firing's attribution window has ended.")
    window_ends_at: str | None
    arms: list[dict[str, Any]] = Field(description="treated (firings, messaged, sent, suppressed, deferred, "
                                                   "converted, revenue) and holdout (firings, converted, revenue).")
    uplift: dict[str, Any] = Field(description="Treated vs holdout: conversion uplift per firing with Newcombe's "
                                               "95% interval, incremental revenue per firing with Welch's.")
    method: dict[str, str]


# -- campaigns ----------------------------------------------------------------------------------
@router.post("/api/v1/campaigns", response_model=CampaignPublic, status_code=201, responses=_SAVE_ERR,
             openapi_extra=_CAMPAIGN_BODY)
async def create_campaign(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Save a campaign as a draft after the save-time checks."""
    body = await json_object(request, required=True)
    return await run_in_threadpool(campaign_service(gk).create, cred.workspace_id, body)


@router.get("/api/v1/campaigns", response_model=list[CampaignSummary], responses=_ERR)
async def list_campaigns(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    """The workspace's campaigns, newest first."""
    return await run_in_threadpool(campaign_service(gk).list, cred.workspace_id)


@router.get("/api/v1/campaigns/{campaign_id}", response_model=CampaignPublic, responses=_ERR)
async def get_campaign(campaign_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """A campaign: definition, status and progress of its current run."""
    return await run_in_threadpool(campaign_service(gk).get, cred.workspace_id, campaign_id)


@router.put("/api/v1/campaigns/{campaign_id}", response_model=CampaignPublic, responses=_SAVE_ERR,
            openapi_extra=_CAMPAIGN_BODY)
async def update_campaign(campaign_id: str, request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Replace the definition of a draft, scheduled or paused campaign."""
    body = await json_object(request, required=True)
    return await run_in_threadpool(campaign_service(gk).update, cred.workspace_id, campaign_id, body)


@router.post("/api/v1/campaigns/{campaign_id}/launch", response_model=CampaignPublic, responses=_SAVE_ERR)
async def launch_campaign(campaign_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Start sending now (schedule ``now``) in the background, or schedule the first run."""
    return await run_in_threadpool(campaign_service(gk).launch, cred.workspace_id, campaign_id)


@router.post("/api/v1/campaigns/{campaign_id}/pause", response_model=CampaignPublic, responses=_ERR)
async def pause_campaign(campaign_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Stop sending after the current chunk."""
    return await run_in_threadpool(campaign_service(gk).pause, cred.workspace_id, campaign_id)


@router.post("/api/v1/campaigns/{campaign_id}/resume", response_model=CampaignPublic, responses=_ERR)
async def resume_campaign(campaign_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Continue a paused campaign."""
    return await run_in_threadpool(campaign_service(gk).resume, cred.workspace_id, campaign_id)


@router.post("/api/v1/campaigns/{campaign_id}/cancel", response_model=CampaignPublic, responses=_ERR)
async def cancel_campaign(campaign_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Stop for good; customers not yet sent are not sent."""
    return await run_in_threadpool(campaign_service(gk).cancel, cred.workspace_id, campaign_id)


@router.get("/api/v1/campaigns/{campaign_id}/report", response_model=CampaignReport, responses=_SAVE_ERR)
async def campaign_report(campaign_id: str, gk: GK, cred: Admin, run: int | None = None) -> dict[str, Any]:
    """The funnel per variant and holdout, and the uplift against the holdout (latest run by default)."""
    return await run_in_threadpool(campaign_service(gk).report, cred.workspace_id, campaign_id, run)


# -- triggers -----------------------------------------------------------------------------------
@router.post("/api/v1/triggers", response_model=TriggerPublic, status_code=201, responses=_SAVE_ERR,
             openapi_extra=_TRIGGER_BODY)
async def create_trigger(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Save a real-time, after-event or date trigger (active unless ``active: false``)."""
    body = await json_object(request, required=True)
    return await run_in_threadpool(trigger_service(gk).create, cred.workspace_id, body)


@router.get("/api/v1/triggers", response_model=list[TriggerPublic], responses=_ERR)
async def list_triggers(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    """The workspace's triggers with their firing counts by status."""
    return await run_in_threadpool(trigger_service(gk).list, cred.workspace_id)


@router.get("/api/v1/triggers/{trigger_id}", response_model=TriggerPublic, responses=_ERR)
async def get_trigger(trigger_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """One trigger with its definition and firing counts by status."""
    return await run_in_threadpool(trigger_service(gk).get, cred.workspace_id, trigger_id)


@router.put("/api/v1/triggers/{trigger_id}", response_model=TriggerChanged, responses=_SAVE_ERR,
            openapi_extra=_TRIGGER_BODY)
async def update_trigger(trigger_id: str, request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Replace the trigger's definition (checked as on create; ``active`` sets its status, left out
    it stays as it is). Its firings stay with it: nobody fires twice in one window because of an
    edit. ``changed`` lists the fields that changed, ``active`` among them."""
    body = await json_object(request, required=True)
    out = await run_in_threadpool(trigger_service(gk).update, cred.workspace_id, trigger_id, body)
    audit(gk.engine, cred, "trigger.update", trigger_id, {"changed": out["changed"]})
    return out


@router.post("/api/v1/triggers/{trigger_id}/pause", response_model=TriggerPublic, responses=_ERR)
async def pause_trigger(trigger_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Stop firing (messages already queued are still sent)."""
    out = await run_in_threadpool(trigger_service(gk).set_active, cred.workspace_id, trigger_id, False)
    audit(gk.engine, cred, "trigger.pause", trigger_id)
    return out


@router.post("/api/v1/triggers/{trigger_id}/resume", response_model=TriggerPublic, responses=_ERR)
async def resume_trigger(trigger_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Fire again from now on."""
    out = await run_in_threadpool(trigger_service(gk).set_active, cred.workspace_id, trigger_id, True)
    audit(gk.engine, cred, "trigger.resume", trigger_id)
    return out


@router.delete("/api/v1/triggers/{trigger_id}", response_model=TriggerDeleted, responses=_ERR)
async def delete_trigger(trigger_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Delete the trigger; its firings and sent messages stay, its queued messages are not sent."""
    out = await run_in_threadpool(trigger_service(gk).delete, cred.workspace_id, trigger_id)
    audit(gk.engine, cred, "trigger.delete", trigger_id, {"name": out["name"]})
    return out


@router.get("/api/v1/triggers/{trigger_id}/report", response_model=TriggerReport, responses=_SAVE_ERR)
async def trigger_report(trigger_id: str, gk: GK, cred: Admin, since: datetime | None = None) -> dict[str, Any]:
    """The trigger's effect: conversion within the attribution window after each firing, treated vs
    the holdout, with the uplift and its 95% interval (``since``: only firings from then on)."""
    return await run_in_threadpool(lambda: trigger_service(gk).report(cred.workspace_id, trigger_id, since=since))


@router.get("/api/v1/triggers/{trigger_id}/firings", response_model=FiringPage, responses=_ERR)
async def trigger_firings(trigger_id: str, gk: GK, cred: Admin, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """A page of the trigger's firings, newest first (status, reason, message, latency)."""
    return await run_in_threadpool(trigger_service(gk).firings, cred.workspace_id, trigger_id, limit, offset)
