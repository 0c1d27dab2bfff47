"""Insights API: train churn and propensity models, read their evaluation and per-profile reasons
(see docs/churn.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(churn_api.router)``. Every route takes
an admin token and works in that token's workspace. Training runs in a worker thread.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.insight.api import models_router
from goldkey.insight.churn import ChurnDefinition, ChurnService, PropensityDefinition

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_TRAIN_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR,
    400: {"model": ErrorBody, "description": "Invalid definition, unknown event/category, too few labelled "
                                             "customers or a one-class target"},
}


class TrainReport(BaseModel):
    """What a training run did."""

    model: str = Field(description="Registry name: `churn` or `propensity_<name>`.")
    kind: str
    version: int
    as_of: str | None
    cutoff: str | None = Field(description="Features before it, labels from the window after it.")
    score_field: str = Field(description="The `scores.<field>` written on the profiles.")
    labelled: int
    positives: int
    profiles: int = Field(description="Live profiles scored.")
    scores_written: int
    auc: float
    pr_auc: float
    brier: float
    top_decile_lift: float
    blend_weight: float
    fit_ms: int
    took_ms: int


class Evaluation(BaseModel):
    """Holdout metrics and the lift table of every version of a model."""

    name: str
    kind: str
    versions: list[dict[str, Any]]


class ProfileReasons(BaseModel):
    """Scores and reasons of the churn / propensity models for one profile."""

    profile_id: str
    models: dict[str, Any] = Field(description="model -> {version, score, reasons: [{feature, value, "
                                               "contribution, description}]}")


def churn_service(gk: Any) -> ChurnService:
    """The instance's churn and propensity service (built with the runtime, see ``Goldkey.open``)."""
    svc: ChurnService = gk.churn
    return svc


def _schema(model: type[BaseModel], required: bool) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {
        "schema": inline_schema(model.model_json_schema())}}}}


@router.post("/churn/train", response_model=TrainReport, responses=_TRAIN_ERR,
             openapi_extra=_schema(ChurnDefinition, False))
async def train_churn(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Fit a churn model (a new version of `churn`), score every live profile (`scores.churn_risk`)
    and store the per-profile reasons. The body is the definition (all optional)."""
    body = await json_object(request)
    return await run_in_threadpool(churn_service(gk).train_churn, cred.workspace_id, body)


@router.post("/propensity/train", response_model=TrainReport, responses=_TRAIN_ERR,
             openapi_extra=_schema(PropensityDefinition, True))
async def train_propensity(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Fit a propensity model for a target event (`event`) or product category (`category`),
    score every live profile (`scores.propensity_<name>`) and store the reasons."""
    body = await json_object(request)
    return await run_in_threadpool(churn_service(gk).train_propensity, cred.workspace_id, body)


@router.get("/models/{name}/evaluation", response_model=Evaluation, responses={**_ERR, 400: {"model": ErrorBody}})
@models_router.get("/{name}/evaluation", response_model=Evaluation, responses={**_ERR, 400: {"model": ErrorBody}},
                   operation_id="model_evaluation_v1")
def model_evaluation(name: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """AUC, PR-AUC, Brier, top-decile lift and the lift / cumulative gain table of every version."""
    return churn_service(gk).evaluation(cred.workspace_id, name)


@router.get("/profiles/{profile_id}/reasons", response_model=ProfileReasons, responses=_ERR)
def profile_reasons(profile_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """The churn / propensity scores of a profile and the features that pushed each score up."""
    return churn_service(gk).reasons(cred.workspace_id, profile_id, gk.profiles)
