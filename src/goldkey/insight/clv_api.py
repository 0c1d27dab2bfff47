"""CLV API: fit the BG/NBD + Gamma-Gamma lifetime-value model and read its summary (docs/clv.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(clv_api.router)``. Every route takes
an admin token and works in that token's workspace.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.insight.clv import CLVDefinition, CLVService

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}}
_RUN_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR,
    400: {"model": ErrorBody, "description": "Invalid definition, too little purchase history, non-positive order "
                                             "values, or a fit that does not converge"},
}


class CLVRunReport(BaseModel):
    """What a CLV run did."""

    model: str
    version: int = Field(description="The model version written with the scores.")
    as_of: str | None
    profiles: int = Field(description="Customers scored.")
    repeat_buyers: int = Field(description="Customers with purchases on two or more days (Gamma-Gamma's sample).")
    scores_written: int = Field(description="Profiles whose scores.clv_* changed.")
    metrics: dict[str, Any] = Field(description="Parameters, log-likelihoods, holdout check, CLV distribution.")
    fit_ms: int
    took_ms: int


class HistogramBucket(BaseModel):
    from_: float = Field(alias="from")
    to: float
    profiles: int


class Decile(BaseModel):
    decile: int = Field(description="1 = the most valuable tenth of the customers.")
    profiles: int
    min: float
    max: float
    mean: float
    sum: float
    share: float = Field(description="Share of the total CLV.")


class CLVDistribution(BaseModel):
    histogram: list[HistogramBucket] = Field(
        description="Equal-width buckets up to the 99th percentile, then one bucket for the top 1 %.")
    deciles: list[Decile]


class CLVSummary(BaseModel):
    """The latest CLV version, for the console."""

    model: str
    version: int
    as_of: str | None
    created_at: str
    definition: dict[str, Any]
    period: str | None = Field(description="The time unit of alpha: day or week.")
    parameters: dict[str, dict[str, float]] = Field(description="bgnbd: r, alpha, a, b; gamma_gamma: p, q, v.")
    metrics: dict[str, Any]
    distribution: CLVDistribution


def clv_service(gk: Any) -> CLVService:
    """The instance's CLV service (built with the runtime, see ``Goldkey.open``)."""
    svc: CLVService = gk.clv
    return svc


_RUN_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": inline_schema(CLVDefinition.model_json_schema())}}}}


@router.post("/clv/run", response_model=CLVRunReport, responses=_RUN_ERR, openapi_extra=_RUN_BODY)
async def run_clv(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Fit BG/NBD + Gamma-Gamma (a new model version) and write `scores.clv_p_alive`,
    `scores.clv_expected_purchases`, `scores.clv_value` and `scores.clv_model_version` to the
    profiles. The body is the definition (all fields optional)."""
    body = await json_object(request, "the CLV definition")
    return await run_in_threadpool(clv_service(gk).run, cred.workspace_id, body)


@router.get("/clv/summary", response_model=CLVSummary, response_model_by_alias=True,
            responses={**_ERR, 404: {"model": ErrorBody, "description": "No CLV model fitted yet"}})
def clv_summary(gk: GK, cred: Admin) -> dict[str, Any]:
    """The latest CLV version: parameters, metrics (holdout check included) and the CLV
    distribution as histogram buckets and deciles."""
    return clv_service(gk).summary(cred.workspace_id)
