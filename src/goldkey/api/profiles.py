"""Profiles: the 360° view by id or by any identifier, merge history and undoing a merge."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody, ProfilePublic, UnmergeResult
from goldkey.core.errors import InvalidInput
from goldkey.identity.graph import UnitOfWork

router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"])
_ERR: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 401: {"model": ErrorBody}}


@router.get("/lookup", response_model=ProfilePublic, responses=_ERR)
def lookup(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    """Find a profile by exactly one identifier given as a query parameter, e.g. `?phone=13912345678`,
    `?user_id=u1`, `?wechat_openid=...` (types: the workspace's identifier types)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "events"]
    if len(params) != 1:
        raise InvalidInput("give exactly one identifier, e.g. ?phone=13912345678", field="query")
    id_type, value = params[0]
    valid = gk.workspaces.rules(cred.workspace_id).all_types()
    if id_type not in valid:
        raise InvalidInput(f"unknown identifier type; use one of {', '.join(valid)}", field=id_type)
    return gk.profiles.lookup(cred.workspace_id, id_type, value)


@router.get("/{profile_id}", response_model=ProfilePublic, responses=_ERR)
def get_profile(profile_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Return the 360° profile; an id that was merged away returns the profile it went into."""
    return gk.profiles.get(cred.workspace_id, profile_id)


@router.post("/merges/{merge_id}/undo", response_model=UnmergeResult, responses={**_ERR, 409: {"model": ErrorBody}})
async def undo_merge(merge_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """Undo a merge: both profiles come back, with their identifiers, events, orders and feedback."""

    def run(ctx: Any) -> dict[str, Any]:
        with ctx.engine.begin() as conn:
            uow = UnitOfWork(conn)
            out = ctx.graph.unmerge(uow, cred.workspace_id, merge_id, actor=f"key:{cred.key_id}")
            ops = uow.map_ops
        from goldkey.collect.writer import apply_map_ops

        with ctx.analytical.write_lock:
            con = ctx.analytical.cursor()
            try:
                con.execute("BEGIN TRANSACTION")
                apply_map_ops(con, ops)
                con.execute("COMMIT")
            finally:
                con.close()
        from goldkey.collect.importer import refresh_order_summaries
        from goldkey.collect.writer import rebuild_recent_events

        pair = [out["winner_id"], out["restored_profile_id"]]
        with ctx.engine.begin() as conn:
            refresh_order_summaries(ctx, conn, cred.workspace_id, pair)
            rebuild_recent_events(ctx, conn, cred.workspace_id, pair)
        return out

    return await run_in_threadpool(gk.writer.run_command, run)
