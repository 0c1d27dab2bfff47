"""Segments, tags and the field catalog: thin routes over goldkey.audience services.

Rules travel as JSON (see docs/rules.md). Every service call is blocking work (DuckDB, the
operational store, the writer thread), so it runs in the thread pool.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody
from goldkey.audience.catalog import declare_field, list_fields
from goldkey.audience.common import parse_and_check
from goldkey.core.errors import InvalidInput
from goldkey.govern.audit import actor_of

router = APIRouter(prefix="/api/v1", tags=["audience"])
_ERR: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody}, 401: {"model": ErrorBody},
                                         404: {"model": ErrorBody}, 409: {"model": ErrorBody}}

_RULE_DOC = "A rule of the condition language (docs/rules.md), e.g. " \
    '{"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}'


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Unique within the workspace")
    rule: dict[str, Any] = Field(description=_RULE_DOC)
    description: str = ""
    realtime: bool = Field(True, description="Keep membership current as events arrive (segment_entered/exited)")


class SegmentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    rule: dict[str, Any] | None = Field(None, description="A new rule makes a new version")
    description: str | None = None
    realtime: bool | None = None


class EstimateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: dict[str, Any] = Field(description=_RULE_DOC)
    as_of: datetime | None = Field(None, description="Evaluate at this instant (default: now)")
    sample: int = Field(3, ge=0, le=20, description="How many example members to explain")
    explain_profiles: list[str] = Field(default_factory=list, max_length=20,
                                        description="Profiles to explain (why they are or are not selected)")


class OverlapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segment_ids: list[str]


class FieldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field(description="attributes.<name>")
    type: str = Field(description="string | number | boolean | datetime | list")
    label: str = ""
    description: str = ""


class TagValuesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignments: list[dict[str, Any]] = Field(
        description='[{"profile_id": "prf_..", "value": "gold"}, {"phone": "139..", "value": "silver"}]; '
        "value null removes the tag", max_length=100_000)
    replace: bool = Field(False, description="Remove the tag from every profile not in the list")


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(description="email | sms | call | wechat | push | mail")
    status: str = Field(description="granted | denied")
    purpose: str = "marketing"
    source: str = Field("api", description="Where the decision was given (form, store, call centre ...)")


@router.put("/profiles/{profile_id}/consents", tags=["profiles"], responses=_ERR)
async def put_consent(gk: GK, cred: Admin, profile_id: str, body: ConsentIn) -> dict[str, Any]:
    """Record a profile's consent decision for a channel (shown in the 360° profile, enforced on sends
    and call-list exports)."""
    from goldkey.govern.consent import set_consent

    return await run_in_threadpool(set_consent, gk.engine, cred.workspace_id, profile_id, body.channel,
                                   body.status, purpose=body.purpose, source=body.source, actor=actor_of(cred))


# -- fields ---------------------------------------------------------------------------------------


@router.get("/fields", tags=["fields"])
async def get_fields(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    """The field catalog: every field a rule may name, with its type and where it comes from."""
    return await run_in_threadpool(list_fields, gk.engine, cred.workspace_id)


@router.put("/fields", tags=["fields"], responses=_ERR)
async def put_field(gk: GK, cred: Admin, body: FieldIn) -> dict[str, Any]:
    """Declare the type of an attribute (a declared type wins over the inferred one)."""
    if not body.field.startswith("attributes."):
        raise InvalidInput("only attributes.* fields are declared by hand; traits and tags declare their own",
                           field="field")
    if body.type not in ("string", "number", "boolean", "datetime", "list"):
        raise InvalidInput("type must be string, number, boolean, datetime or list", field="type")
    from goldkey.rules.model import _FIELD

    if not _FIELD.match(body.field):
        raise InvalidInput("an attribute name is letters, digits and underscores", field="field")

    def run() -> dict[str, Any]:
        with gk.engine.begin() as c:
            declare_field(c, cred.workspace_id, body.field, body.type, "declared", label=body.label,
                          description=body.description)
        gk.facts.touch(cred.workspace_id)
        return body.model_dump()

    return await run_in_threadpool(run)


@router.post("/rules/check", tags=["rules"], responses=_ERR)
async def check_rule(gk: GK, cred: Admin, rule: dict[str, Any]) -> dict[str, Any]:
    """Check a rule against the workspace (fields, types, events) without saving anything. The body
    is the rule itself, or ``{"rule": {...}}`` as the segment routes take it."""
    if set(rule) == {"rule"} and isinstance(rule["rule"], dict):
        rule = rule["rule"]
    await run_in_threadpool(parse_and_check, gk.engine, gk.analytical, cred.workspace_id, rule)
    return {"valid": True}


# -- segments -------------------------------------------------------------------------------------


@router.post("/segments", tags=["segments"], status_code=201, responses=_ERR)
async def create_segment(gk: GK, cred: Admin, body: SegmentIn) -> dict[str, Any]:
    """Create a segment (version 1). An invalid rule is rejected with the clause's path; nothing is saved."""
    return await run_in_threadpool(gk.segments.create, cred.workspace_id, body.name, body.rule,
                                   description=body.description, realtime=body.realtime, actor=actor_of(cred))


@router.get("/segments", tags=["segments"])
async def list_segments(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    return await run_in_threadpool(gk.segments.list, cred.workspace_id)


@router.post("/segments/estimate", tags=["segments"], responses=_ERR)
async def estimate_segment(gk: GK, cred: Admin, body: EstimateIn) -> dict[str, Any]:
    """Live size of a draft rule, with example members explained clause by clause."""
    return await run_in_threadpool(gk.segments.estimate, cred.workspace_id, body.rule, as_of=body.as_of,
                                   sample=body.sample, explain_profiles=body.explain_profiles)


@router.post("/segments/overlap", tags=["segments"], responses=_ERR)
async def overlap(gk: GK, cred: Admin, body: OverlapIn) -> dict[str, Any]:
    """Sizes and pairwise overlaps of materialised segments."""
    return await run_in_threadpool(gk.segments.overlap, cred.workspace_id, body.segment_ids)


@router.get("/segments/{segment_id}", tags=["segments"], responses=_ERR)
async def get_segment(gk: GK, cred: Admin, segment_id: str) -> dict[str, Any]:
    return await run_in_threadpool(gk.segments.get, cred.workspace_id, segment_id)


@router.patch("/segments/{segment_id}", tags=["segments"], responses=_ERR)
async def update_segment(gk: GK, cred: Admin, segment_id: str, body: SegmentPatch) -> dict[str, Any]:
    """Change a segment; a changed rule becomes a new version."""
    return await run_in_threadpool(gk.segments.update, cred.workspace_id, segment_id, name=body.name,
                                   rule=body.rule, description=body.description, realtime=body.realtime,
                                   actor=actor_of(cred))


@router.delete("/segments/{segment_id}", tags=["segments"], status_code=204, responses=_ERR)
async def delete_segment(gk: GK, cred: Admin, segment_id: str) -> None:
    await run_in_threadpool(gk.segments.delete, cred.workspace_id, segment_id, actor_of(cred))


@router.get("/segments/{segment_id}/versions", tags=["segments"], responses=_ERR)
async def segment_versions(gk: GK, cred: Admin, segment_id: str) -> list[dict[str, Any]]:
    return await run_in_threadpool(gk.segments.versions, cred.workspace_id, segment_id)


@router.post("/segments/{segment_id}/compute", tags=["segments"], responses=_ERR)
async def compute_segment(gk: GK, cred: Admin, segment_id: str) -> dict[str, Any]:
    """Materialise the membership now (a snapshot: size, entered, exited)."""
    return await run_in_threadpool(gk.segments.compute, cred.workspace_id, segment_id)


@router.get("/segments/{segment_id}/history", tags=["segments"], responses=_ERR)
async def segment_history(gk: GK, cred: Admin, segment_id: str) -> list[dict[str, Any]]:
    """Size over time, one entry per materialisation."""
    return await run_in_threadpool(gk.segments.history, cred.workspace_id, segment_id)


@router.get("/segments/{segment_id}/members", tags=["segments"], responses=_ERR)
async def segment_members(gk: GK, cred: Admin, segment_id: str,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                          offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """A page of members (phones masked)."""
    return await run_in_threadpool(gk.segments.members, cred.workspace_id, segment_id, limit=limit, offset=offset)


@router.post("/segments/{segment_id}/explain", tags=["segments"], responses=_ERR)
async def explain_members(gk: GK, cred: Admin, segment_id: str, profile_ids: list[str]) -> list[dict[str, Any]]:
    """Why each profile is or is not in the segment (current version, now)."""
    if not 1 <= len(profile_ids) <= 50:
        raise InvalidInput("give 1 to 50 profile ids", field="profile_ids")

    def run() -> list[dict[str, Any]]:
        _, rule = gk.segments.rule_of(cred.workspace_id, segment_id)
        return gk.segments.explain(cred.workspace_id, rule, profile_ids)

    return await run_in_threadpool(run)


@router.get("/segments/{segment_id}/export", tags=["segments"], responses=_ERR)
async def export_segment(gk: GK, cred: Admin, segment_id: str,
                         kind: Annotated[str, Query(description="csv | call_list")] = "csv",
                         mask: Annotated[bool, Query(description="Mask phone numbers")] = True) -> StreamingResponse:
    """The members as CSV; ``call_list`` keeps only members who consented to calls, are not suppressed
    on call or * (a do-not-call entry) and have a phone."""
    await run_in_threadpool(gk.segments.get, cred.workspace_id, segment_id)
    if kind not in ("csv", "call_list"):
        raise InvalidInput("kind must be csv or call_list", field="kind")
    chunks = gk.segments.export_csv(cred.workspace_id, segment_id, kind=kind, mask=mask)
    return StreamingResponse(chunks, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{segment_id}-{kind}.csv"'})


# -- tags -----------------------------------------------------------------------------------------


@router.post("/tags", tags=["tags"], status_code=201, responses=_ERR)
async def create_tag(gk: GK, cred: Admin, body: dict[str, Any]) -> dict[str, Any]:
    """Create a tag: ``{name, kind: rule|manual|model, value_type: enum|boolean|number, category,
    owner, description, values, rules: [{value, rule}]}``."""
    return await run_in_threadpool(gk.tags.create, cred.workspace_id, body, actor_of(cred))


@router.get("/tags", tags=["tags"])
async def list_tags(gk: GK, cred: Admin, category: str | None = None) -> list[dict[str, Any]]:
    return await run_in_threadpool(gk.tags.list, cred.workspace_id, category)


@router.get("/tags/{name}", tags=["tags"], responses=_ERR)
async def get_tag(gk: GK, cred: Admin, name: str) -> dict[str, Any]:
    return await run_in_threadpool(gk.tags.get, cred.workspace_id, name)


@router.patch("/tags/{name}", tags=["tags"], responses=_ERR)
async def update_tag(gk: GK, cred: Admin, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return await run_in_threadpool(gk.tags.update, cred.workspace_id, name, body, actor_of(cred))


@router.delete("/tags/{name}", tags=["tags"], responses=_ERR)
async def delete_tag(gk: GK, cred: Admin, name: str) -> dict[str, Any]:
    """Delete a tag and remove it from every profile."""
    removed = await run_in_threadpool(gk.tags.delete, cred.workspace_id, name, actor_of(cred))
    return {"deleted": name, "removed_from": removed}


@router.post("/tags/{name}/compute", tags=["tags"], responses=_ERR)
async def compute_tag(gk: GK, cred: Admin, name: str) -> dict[str, Any]:
    """Evaluate a rule tag over every profile now."""
    return await run_in_threadpool(gk.tags.compute, cred.workspace_id, name)


@router.post("/tags/{name}/values", tags=["tags"], responses=_ERR)
async def set_tag_values(gk: GK, cred: Admin, name: str, body: TagValuesIn) -> dict[str, Any]:
    """Set a manual (or model) tag on listed profiles; all rows are checked before anything is written."""
    return await run_in_threadpool(gk.tags.set_values, cred.workspace_id, name, body.assignments,
                                   replace=body.replace)


@router.post("/tags/{name}/import", tags=["tags"], responses=_ERR)
async def import_tag_values(gk: GK, cred: Admin, name: str,
                            file: Annotated[UploadFile, File(description="CSV: profile_id or identifier, value")],
                            replace: Annotated[bool, Form()] = False) -> dict[str, Any]:
    """Set a manual tag from a CSV list; rows naming no profile go to the quarantine."""
    data = await file.read()
    return await run_in_threadpool(gk.tags.import_csv, cred.workspace_id, name, data, replace=replace)


@router.get("/tags/{name}/coverage", tags=["tags"], responses=_ERR)
async def tag_coverage(gk: GK, cred: Admin, name: str) -> dict[str, Any]:
    """How many profiles carry each value."""
    return await run_in_threadpool(gk.tags.coverage, cred.workspace_id, name)


@router.get("/tags/{name}/history", tags=["tags"], responses=_ERR)
async def tag_history(gk: GK, cred: Admin, name: str, profile_id: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Changes of the tag (Tag Changed events), newest first."""
    await run_in_threadpool(gk.tags.get, cred.workspace_id, name)
    return await run_in_threadpool(gk.tags.history, cred.workspace_id, name, profile_id=profile_id, limit=limit)
