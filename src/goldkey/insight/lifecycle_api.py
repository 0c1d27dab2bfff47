"""Insights API: lifecycle stages, customer clusters, funnel / cohort / channel reports (see
docs/lifecycle-and-reports.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(lifecycle_api.router)``. Every route
takes an admin token and works in that token's workspace. Request bodies are read as JSON and
validated by the services, so a bad field is a 400 naming it (like ``/api/v1/insights/rfm/run``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.core.errors import InvalidInput
from goldkey.insight import reports
from goldkey.insight.clusters import ClusterDefinition, ClusterService
from goldkey.insight.lifecycle import LifecycleDefinition, LifecycleService

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])

_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody},
                                         400: {"model": ErrorBody, "description": "Invalid request or too little data"}}
_RUN_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR, 409: {"model": ErrorBody, "description": "A non-model tag of the model's tag name exists"}}


def _body_schema(model: Any, required: bool = False) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {"application/json": {
        "schema": inline_schema(model.model_json_schema())}}}}


def lifecycle_service(gk: Any) -> LifecycleService:
    """The instance's lifecycle service (built with the runtime, see ``Goldkey.open``)."""
    svc: LifecycleService = gk.lifecycle
    return svc


def cluster_service(gk: Any) -> ClusterService:
    """The instance's clustering service (built with the runtime, see ``Goldkey.open``)."""
    svc: ClusterService = gk.clusters
    return svc


# --------------------------------------------------------------------------- lifecycle


@router.post("/lifecycle/run", responses=_RUN_ERR, openapi_extra=_body_schema(LifecycleDefinition))
async def run_lifecycle(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Stage every customer (a new model version): writes `scores.lc_*`, the `lifecycle_stage`
    model tag and a `Lifecycle Stage Changed` event per transition. The body is the definition
    (all optional: thresholds, or `stages` with your own rules in evaluation order)."""
    body = await json_object(request)
    return await run_in_threadpool(lifecycle_service(gk).run, cred.workspace_id, body)


@router.get("/lifecycle/summary", responses=_ERR)
def lifecycle_summary(gk: GK, cred: Admin) -> dict[str, Any]:
    """The latest version's profiles per stage (English and Chinese names) and the transition
    matrix `{from: {to: profiles}}` against the previous stages (`none` = no stage)."""
    return lifecycle_service(gk).summary(cred.workspace_id)


# --------------------------------------------------------------------------- clusters


@router.post("/clusters/run", responses=_RUN_ERR, openapi_extra=_body_schema(ClusterDefinition))
async def run_clusters(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Cluster the customers (k-means, k by silhouette; a new model version) and write the
    `cluster` model tag. Returns each cluster's size and description."""
    body = await json_object(request)
    return await run_in_threadpool(cluster_service(gk).run, cred.workspace_id, body)


@router.get("/clusters", responses=_ERR)
def get_clusters(gk: GK, cred: Admin) -> dict[str, Any]:
    """The latest clustering: k, silhouette per k, and per cluster its size, description (en/zh),
    feature means and centroid."""
    return cluster_service(gk).describe_latest(cred.workspace_id)


@router.post("/clusters/{cluster}/segment", responses={**_ERR, 409: {"model": ErrorBody}},
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": {
                 "type": "object", "properties": {"name": {"type": "string"}, "realtime": {"type": "boolean"}}}}}}})
async def save_cluster_segment(cluster: str, request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Save a cluster of the latest clustering as a segment (rule `tags.cluster = <cluster>`).
    Body (optional): `name`, `realtime`."""
    body = await json_object(request)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput("name must be a string", field="name")
    realtime = body.get("realtime", True)
    if not isinstance(realtime, bool):
        raise InvalidInput("realtime must be true or false", field="realtime")
    return await run_in_threadpool(cluster_service(gk).save_segment, cred.workspace_id, cluster, name=name,
                                   realtime=realtime, actor="api")


# --------------------------------------------------------------------------- reports


@router.post("/reports/funnel", responses=_ERR, openapi_extra=_body_schema(reports.FunnelRequest, True))
async def funnel_report(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Conversion funnel over a sequence of track events within a conversion window: profiles per
    step, conversion %, median time between steps; optionally broken down by a property."""
    body = await json_object(request)
    return await run_in_threadpool(reports.funnel, gk.analytical, cred.workspace_id, body)


@router.post("/reports/cohorts", responses=_ERR, openapi_extra=_body_schema(reports.CohortRequest))
async def cohort_report(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Cohort retention table (cohort by first order or first event, per month or week): counts
    and % per period offset, for a heat map."""
    body = await json_object(request)
    return await run_in_threadpool(reports.cohorts, gk.analytical, cred.workspace_id, body,
                                   reports.workspace_timezone(gk, cred.workspace_id))


@router.get("/reports/channels", responses=_ERR)
async def channel_report(
    gk: GK, cred: Admin,
    touch: Annotated[str, Query(description="`event` (first event with a campaign) or `profile` (the profile's "
                                            "first-seen context)")] = "event",
    start: Annotated[str | None, Query(description="first touches at or after (ISO time)")] = None,
    end: Annotated[str | None, Query(description="first touches and orders before (ISO time)")] = None,
    cost: Annotated[list[str] | None, Query(description="spend per channel, repeatable: `cost=wechat:5000` or "
                                                        "`cost=baidu/cpc:800`")] = None,
) -> dict[str, Any]:
    """Acquisition-channel quality by first-touch UTM source / medium: customers, conversion to a
    first order, revenue, average CLV (when `scores.clv_value` exists) and CAC / ROAS given costs."""
    costs: dict[str, float] = {}
    for c in cost or []:
        key, sep, val = c.rpartition(":")
        try:
            costs[key] = float(val)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise InvalidInput(f"cost {c!r} must look like source:amount", field="cost")
    body: dict[str, Any] = {"touch": touch, "costs": costs}
    if start:
        body["start"] = start
    if end:
        body["end"] = end
    return await run_in_threadpool(reports.channels, gk.engine, gk.analytical, cred.workspace_id, body)
