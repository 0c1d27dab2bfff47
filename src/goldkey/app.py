"""create_app(settings) -> FastAPI: wiring only."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import PydanticSerializationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from goldkey import __version__
from goldkey.api import (
    activate,
    audience,
    auth,
    campaigns,
    console,
    imports,
    journeys,
    ops,
    profiles,
    tracking,
    traits,
    workspace,
)
from goldkey.api.errors import error_parts
from goldkey.core.errors import GoldkeyError
from goldkey.insight import affinity_api, churn_api, clv_api, lifecycle_api, text_api
from goldkey.insight import api as insight_api
from goldkey.ops.tuning import restore_gc, tune_gc
from goldkey.runtime import Goldkey
from goldkey.settings import Settings

_STATUSES = {int(s) for s in HTTPStatus}


def _plain(errs: Any) -> Any:
    """Pydantic's error list as plain JSON values (an input of any size or type becomes text where
    JSON has no room for it: orjson refuses integers over 64 bits)."""
    try:
        return orjson.loads(orjson.dumps(errs, default=str))
    except TypeError:
        def fit(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: fit(x) for k, x in v.items()}
            if isinstance(v, list):
                return [fit(x) for x in v]
            return str(v) if isinstance(v, int) and not -2**63 <= v < 2**64 else v

        return fit(json.loads(json.dumps(errs, default=str)))


def _error(status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def create_app(settings: Settings | None = None, gk: Goldkey | None = None) -> FastAPI:
    """Return the Goldkey API app. With ``gk`` given, the caller owns its lifecycle; otherwise the
    app opens the stores on start-up and closes them on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = gk is None
        app.state.gk = gk or Goldkey.open(settings or Settings())
        tune_gc()
        warming, stop, collectors = None, threading.Event(), None
        if owned:  # a server of its own (``goldkey serve``): profile facts built before the first estimate
            instance = app.state.gk
            warming = instance.facts.warm([str(w["workspace_id"]) for w in instance.workspaces.list()], stop)
        try:
            if owned and app.state.gk.settings.collectors:  # tracking API processes in front of the writer
                from goldkey.collect.collectors import CollectorPool

                collectors = app.state.gk.collectors = CollectorPool(app.state.gk, app.state.gk.settings).start()
            yield
        finally:
            restore_gc()
            stop.set()
            try:
                if collectors is not None:  # they finish the requests they hold while the writer still runs
                    collectors.stop()
            finally:
                if warming is not None:
                    warming.join(timeout=120)  # a build in progress finishes before the stores close
                if owned:
                    app.state.gk.close()

    app = FastAPI(
        title="Goldkey",
        version=__version__,
        description="Open-source precision-marketing platform: tracking API (Segment/RudderStack "
        "compatible), imports, identity resolution and the 360° customer profile.",
        lifespan=lifespan,
        # no per-request tracing: it would trace every tracking call once an OpenTelemetry SDK
        # is installed; /metrics is the operations interface
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    if gk is not None:
        app.state.gk = gk

    @app.exception_handler(GoldkeyError)
    async def goldkey_error(_: Request, exc: GoldkeyError) -> Response:
        status, body, headers = error_parts(exc)
        return Response(body, status_code=status, media_type="application/json", headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = f"field {loc!r}: " if loc else ""
        msg = f"{what}{first.get('msg', 'invalid')}"
        # the same keys as every other error body (error, field, code, message), plus pydantic's list
        return _error(
            422,
            {
                "error": msg,
                "field": loc or None,
                "code": "RequestValidationError",
                "message": msg,
                "details": _plain(errs),
            },
        )

    @app.exception_handler(UnicodeEncodeError)
    @app.exception_handler(PydanticSerializationError)
    async def not_unicode(_: Request, exc: Exception) -> Response:
        # a JSON body may spell a lone UTF-16 surrogate ("\udc00"): valid JSON, but no text any store
        # or answer can hold; refused when it is about to be stored or echoed, instead of a 500
        if isinstance(exc, PydanticSerializationError) and "surrogate" not in str(exc):
            raise exc
        text = "the request holds text that is not valid Unicode (a lone surrogate such as \\udc00)"
        return _error(400, {"error": text, "field": None, "code": "InvalidInput", "message": text})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's and Starlette's own errors (a body that is not UTF-8, 404, 405) in the same shape
        # as every other error body, instead of {"detail": ...}
        text = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = HTTPStatus(exc.status_code).phrase.replace(" ", "") if exc.status_code in _STATUSES else "HTTPError"
        return _error(exc.status_code, {"error": text, "field": None, "code": code, "message": text},
                      dict(exc.headers) if exc.headers else None)

    for module in (tracking, profiles, imports, workspace, audience, traits, insight_api, activate, ops,
                   clv_api, text_api, lifecycle_api, churn_api, affinity_api, campaigns, journeys):
        app.include_router(module.router)
    app.include_router(insight_api.models_router)  # after churn_api: it adds the evaluation route
    app.include_router(auth.router)  # users: sign-in and the workspace's users
    app.include_router(console.router)  # last: its SPA fallback must never shadow an API route
    app.add_middleware(tracking.TrackingFastPath)
    _document_write_key(app)
    return app


def _document_write_key(app: FastAPI) -> None:
    """Declare the tracking endpoints' HTTP Basic write key in the OpenAPI schema (the hot path
    reads the header itself instead of through a FastAPI security dependency)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["writeKey"] = {
                "type": "http",
                "scheme": "basic",
                "description": "The write key as the user name, empty password (as Segment's SDKs send it).",
            }
            for path, ops_ in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops_.values():
                        op["security"] = [{"writeKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
