"""Operations: health and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from goldkey.api.deps import GK
from goldkey.api.schemas import Health
from goldkey.ops.metrics import METRICS

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(gk: GK, response: Response) -> dict[str, Any]:
    """Store writability, queue depth and lag since the last group commit."""
    op = an = "ok"
    try:
        with gk.engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        op = f"error: {exc}"[:300]
    try:
        gk.analytical.query("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        an = f"error: {exc}"[:300]
    w = gk.writer
    alive = w._thread is not None and w._thread.is_alive()
    failing = w.failing_since
    writes = "ok" if failing is None else f"failing for {round(time.time() - failing, 1)} s: {w.last_error}"[:300]
    status = "ok" if op == "ok" and an == "ok" and alive and failing is None else "degraded"
    if status != "ok":
        response.status_code = 503
    return {
        "status": status,
        "operational_store": op,
        "analytical_store": an if alive else "writer thread not running",
        "writes": writes,
        "queue_depth": w.queue_depth,
        "queue_capacity": w.queue_max_events,
        "seconds_since_last_commit": None if w.last_commit_at is None else round(time.time() - w.last_commit_at, 3),
        "last_error": w.last_error,
        "collectors": None if gk.collectors is None else {"configured": len(gk.collectors.links),
                                                         "running": gk.collectors.running},
    }


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus metrics: events received, accepted, rejected, write latency, queue depth."""
    return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)
