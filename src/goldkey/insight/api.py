"""Insight API: run the RFM model and read the model registry (see docs/insight.md).

Not yet mounted by ``goldkey.app``: add ``app.include_router(insight_api.router)``. Every route
takes an admin token and works in that token's workspace.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin, json_object
from goldkey.api.schemas import ErrorBody, inline_schema
from goldkey.core.errors import NotFound
from goldkey.insight.rfm import RFMDefinition, RFMService

router = APIRouter(prefix="/api/v1/insights", tags=["insights"])
# the model registry under its own name too: /api/v1/models, /api/v1/models/{name}[/versions|/evaluation]
models_router = APIRouter(prefix="/api/v1/models", tags=["models"])

_ERR: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody}, 401: {"model": ErrorBody},
                                         404: {"model": ErrorBody}}
_RUN_ERR: dict[int | str, dict[str, Any]] = {
    **_ERR,
    400: {"model": ErrorBody, "description": "Invalid definition, or no orders to score"},
    409: {"model": ErrorBody, "description": "A non-model tag named rfm_group / rfm_value_tier exists"},
}


class RFMRunReport(BaseModel):
    """What an RFM run did."""

    model: str
    version: int = Field(description="The model version written with the scores and tags.")
    as_of: str | None
    profiles: int = Field(description="Customers scored.")
    scores_written: int
    group_tag_changed: int
    tier_tag_changed: int
    metrics: dict[str, Any]
    fit_ms: int
    took_ms: int
    timings_ms: dict[str, int] = Field(
        description="Milliseconds per phase: fit (the RFM computation and the model version saved), plan (the "
                    "two model tags' values checked and their current holders read), write (the scores and both "
                    "tags written to the profiles in one pass, with the Tag Changed events; of which write_find: the "
                    "changed profiles found, write_rows: the rows written, write_events: the events appended).")


class ModelMeta(BaseModel):
    """One fitted model version's metadata."""

    workspace_id: str
    name: str
    kind: str
    version: int
    definition: dict[str, Any]
    definition_hash: str
    created_at: str
    metrics: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelMeta]


def rfm_service(gk: Any) -> RFMService:
    """The instance's RFM service (``gk.rfm`` once wired in the runtime; built on demand until then)."""
    svc = getattr(gk, "rfm", None)
    return svc if svc is not None else RFMService.from_goldkey(gk)


_RUN_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": inline_schema(RFMDefinition.model_json_schema())}}}}


@router.post("/rfm/run", response_model=RFMRunReport, responses=_RUN_ERR, openapi_extra=_RUN_BODY)
async def run_rfm(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Fit RFM (a new model version) and write `scores.rfm_*` and the `rfm_group` /
    `rfm_value_tier` model tags to the profiles. The body is the definition (all optional)."""
    body = await json_object(request, "the RFM definition")
    return await run_in_threadpool(rfm_service(gk).run, cred.workspace_id, body)


@router.get("/models", response_model=ModelList, responses=_ERR)
@models_router.get("", response_model=ModelList, responses=_ERR, operation_id="list_models_v1")
def list_models(gk: GK, cred: Admin) -> dict[str, Any]:
    """The latest fitted version of every model of the workspace."""
    return {"models": rfm_service(gk).registry.list(cred.workspace_id)}


@router.get("/models/{name}", response_model=ModelMeta, responses=_ERR)
@models_router.get("/{name}", response_model=ModelMeta, responses=_ERR, operation_id="get_model_v1")
def get_model(name: str, gk: GK, cred: Admin, version: int | None = None) -> dict[str, Any]:
    """A model's latest (or the given) version: definition, metrics, creation time."""
    reg = rfm_service(gk).registry
    return reg.load(cred.workspace_id, name, version, kind=reg.kind_of(cred.workspace_id, name)).meta()


class ModelVersions(BaseModel):
    name: str
    kind: str
    versions: list[ModelMeta]


@router.get("/models/{name}/versions", response_model=ModelVersions, responses=_ERR)
@models_router.get("/{name}/versions", response_model=ModelVersions, responses=_ERR,
                   operation_id="list_model_versions_v1")
def list_model_versions(name: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Every stored version of a model, oldest first: definition, metrics, creation time."""
    reg = rfm_service(gk).registry
    versions = reg.all_versions(cred.workspace_id, name)
    if not versions:
        raise NotFound(f"model {name!r} has no fitted version yet")
    return {"name": name, "kind": versions[-1]["kind"], "versions": versions}
