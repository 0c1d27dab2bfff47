"""Imports (customers, orders, products, feedback) and the quarantine of rejected records."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Admin
from goldkey.api.schemas import ErrorBody, ImportPublic, QuarantinedRecord
from goldkey.collect.importer import get_import, list_imports, list_quarantine
from goldkey.core.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["imports"])


@router.post("/imports", response_model=ImportPublic, responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}})
async def create_import(
    gk: GK,
    cred: Admin,
    file: Annotated[UploadFile, File(description="CSV, Excel (.xlsx) or Parquet file")],
    kind: Annotated[str, Form(description="customers | orders | products | feedback")],
    mapping: Annotated[str, Form(description="JSON object: source column -> Goldkey field")] = "{}",
    force: Annotated[bool, Form(description="Import again even if this exact file was imported")] = False,
) -> dict[str, Any]:
    """Import a file; answers when it is written, with rows read / accepted / quarantined."""
    try:
        mapping_obj = orjson.loads(mapping)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", field="mapping") from None
    if not isinstance(mapping_obj, dict) or not all(isinstance(v, str) for v in mapping_obj.values()):
        raise InvalidInput("must be a JSON object of column -> field names", field="mapping")
    name = Path(file.filename or "upload.csv").name[:200] or "upload.csv"
    suffix = Path(name).suffix.lower() if Path(name).suffix.isascii() else ""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix[:10]}"
        with path.open("wb") as f:
            while chunk := await file.read(1 << 20):
                f.write(chunk)
        summary = await run_in_threadpool(
            gk.importer.run, cred.workspace_id, kind, path, mapping_obj, filename=name, force=force
        )
    out = get_import(gk.engine, cred.workspace_id, summary.import_id)
    out["status"] = summary.status
    return out


@router.get("/imports", response_model=list[ImportPublic], responses={401: {"model": ErrorBody}})
def imports_list(gk: GK, cred: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """List the workspace's imports, newest first."""
    return list_imports(gk.engine, cred.workspace_id, limit)


@router.get("/imports/{import_id}", response_model=ImportPublic,
            responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
def import_get(import_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """One import's outcome."""
    return get_import(gk.engine, cred.workspace_id, import_id)


@router.get("/quarantine", response_model=list[QuarantinedRecord],
            responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}})
def quarantine_list(
    gk: GK,
    cred: Admin,
    import_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Rejected records with the reason, the field and the raw record, newest first."""
    return list_quarantine(gk.engine, cred.workspace_id, import_id, limit, offset)
