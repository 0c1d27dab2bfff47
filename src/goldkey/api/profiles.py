"""Profiles: the 360° view by id or by any identifier, merge history and undoing a merge."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from goldkey.api import deps
from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody, ProfilePublic, UnmergeResult
from goldkey.core.errors import InvalidInput
from goldkey.govern.audit import actor_of
from goldkey.govern.workspaces import Credential
from goldkey.identity.graph import UnitOfWork
from goldkey.runtime import Goldkey

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"])
_ERR: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 401: {"model": ErrorBody}}

# Timestamps as pydantic writes them for ProfilePublic: ISO 8601, UTC as "Z"
_JSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


async def _read_admin(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(deps._bearer)]
) -> Credential:
    """deps.admin for the read routes, as an async dependency: FastAPI runs a plain ``def``
    dependency in the thread pool, a hop that costs more than the (cached) check itself. Inline on
    SQLite; on PostgreSQL a key not yet cached is looked up in the database, so there it goes to the
    thread pool as before."""
    if deps.get_gk(request).engine.dialect.name == "sqlite":
        return deps.admin(request, creds)
    return await run_in_threadpool(deps.admin, request, creds)


async def _read_gk(request: Request) -> Goldkey:
    return deps.get_gk(request)


_ReadGK = Annotated[Goldkey, Depends(_read_gk)]
_ReadAdmin = Annotated[Credential, Depends(_read_admin)]
_Events = Annotated[int | None, Query(
    ge=0, le=1000,
    description="How many recent events to return, newest first (default: all that the profile keeps, "
                "recent_events_per_profile)")]


async def _profile_response(gk: Goldkey, read: Callable[[], dict[str, Any]]) -> Response:
    """Run a profile read and answer its JSON.

    The body is the service's dict serialised by orjson, byte for byte what FastAPI's validation
    through ProfilePublic produced (the service builds exactly that shape; tests/profiles check it)
    at a fraction of the cost. On SQLite a read is a few indexed point queries taking tens of
    microseconds, cheaper than the hop to the thread pool, so it runs inline; on a networked
    database (PostgreSQL) it goes to the thread pool so the event loop never waits on the network.
    """
    body = read() if gk.engine.dialect.name == "sqlite" else await run_in_threadpool(read)
    return Response(orjson.dumps(body, option=_JSON_OPTS), media_type="application/json")


_LOOKUP_PARAMS = {"parameters": [
    {"name": t, "in": "query", "required": False, "schema": {"type": "string"},
     "description": f"the profile holding this {t} (give exactly one identifier; custom types work alike)"}
    for t in ("user_id", "anonymous_id", "phone", "email", "wechat_openid", "wechat_unionid", "crm_id", "device_id")]}


@router.get("/lookup", response_model=ProfilePublic, responses={**_ERR, 400: {"model": ErrorBody}},
            openapi_extra=_LOOKUP_PARAMS)
async def lookup(request: Request, gk: _ReadGK, cred: _ReadAdmin, events: _Events = None) -> Response:
    """Find a profile by exactly one identifier given as a query parameter, e.g. `?phone=13912345678`,
    `?user_id=u1`, `?wechat_openid=...` (types: the workspace's identifier types)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "events"]
    if len(params) != 1:
        raise InvalidInput("give exactly one identifier, e.g. ?phone=13912345678", field="query")
    id_type, value = params[0]

    def read() -> dict[str, Any]:
        valid = gk.workspaces.rules(cred.workspace_id).all_types()
        if id_type not in valid:
            raise InvalidInput(f"unknown identifier type; use one of {', '.join(valid)}", field=id_type)
        return gk.profiles.lookup(cred.workspace_id, id_type, value, events=events)

    return await _profile_response(gk, read)


@router.get("/{profile_id}", response_model=ProfilePublic, responses=_ERR)
async def get_profile(profile_id: str, gk: _ReadGK, cred: _ReadAdmin, events: _Events = None) -> Response:
    """Return the 360° profile; an id that was merged away returns the profile it went into."""
    return await _profile_response(gk, lambda: gk.profiles.get(cred.workspace_id, profile_id, events=events))


@router.post("/merges/{merge_id}/undo", response_model=UnmergeResult, responses={**_ERR, 409: {"model": ErrorBody}})
async def undo_merge(merge_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Undo a merge: both profiles come back, with their identifiers, events, orders and feedback."""

    def run(ctx: Any) -> dict[str, Any]:
        from goldkey.collect.writer import finish_unmerges

        with ctx.engine.begin() as conn:
            uow = UnitOfWork(conn)
            out = ctx.graph.unmerge(uow, cred.workspace_id, merge_id, actor=actor_of(cred))
        try:
            finish_unmerges(ctx, [merge_id])
        except Exception:  # noqa: BLE001 - the undo stands (operational store); its analytical part waits
            log.exception("undo of %s: the analytical step failed; the writer repairs it before its next commit",
                          merge_id)
            ctx.writer.mark_map_stale()
            out["analytics_pending"] = True
        return out

    out = await run_in_threadpool(gk.writer.run_command, run)
    # both profiles' values changed outside an event commit: the batch facts are stale and the
    # real-time segments must look at the two again (as after a tag or model write)
    gk.facts.touch(cred.workspace_id)
    realtime = getattr(gk, "realtime", None)
    if realtime is not None:
        realtime.notify(cred.workspace_id, [out["winner_id"], out["restored_profile_id"]])
    return out
