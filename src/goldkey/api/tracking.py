"""The tracking API: ``/v1/track|identify|page|screen|group|alias|batch``, compatible with the
Segment and RudderStack HTTP spec, so their SDKs send to Goldkey by changing the host.

A 200 answer means every accepted event is durable (group commit). Invalid events in a batch are
quarantined, listed in the answer and counted as rejected; the rest of the batch is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from goldkey.api.errors import error_parts
from goldkey.api.schemas import ErrorBody, TrackingAck, TrackingBatch, TrackingEvent
from goldkey.collect.tracking import EVENT_TYPES, TrackedEvent, _parse_ts, normalise_event, now_micros
from goldkey.core.clock import utcnow
from goldkey.core.errors import GoldkeyError, InvalidInput, StoreUnavailable, TooLarge, Unauthorized
from goldkey.govern.workspaces import hash_secret
from goldkey.ops.metrics import METRICS
from goldkey.runtime import Goldkey
from goldkey.store.operational import quarantine

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"])
ACK_TIMEOUT_SECONDS = 60

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON or an invalid event (names the field)"},
    401: {"model": ErrorBody, "description": "Missing or unknown write key"},
    413: {"model": ErrorBody, "description": "Event over 32 KB or batch over 4 MB"},
    503: {"model": ErrorBody, "description": "Queue full; retry after the Retry-After seconds"},
}


def _body_doc(model: type) -> dict[str, Any]:
    schema = model.model_json_schema()
    if model is TrackingBatch:
        schema = {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": TrackingEvent.model_json_schema()},
                "sentAt": {"type": "string"},
                "context": {"type": "object"},
                "writeKey": {"type": "string"},
            },
        }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _decoded(encoding: str | None, body: bytes, limit: int, what: str) -> bytes:
    """Undo ``Content-Encoding: gzip`` (RudderStack's SDK gzips by default, Segment's optionally).

    The size limit applies to the decompressed body, which is never inflated beyond it.
    """
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise InvalidInput(f"unsupported Content-Encoding {enc!r}; send gzip (or x-gzip), deflate (zlib-wrapped, "
                           "RFC 1950) or no encoding", field="Content-Encoding")
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:  # a gzip body may hold several members, one after another (RFC 1952 2.2)
        d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        try:
            out = d.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidInput(f"body is not valid {enc} data: {exc}") from None
        size += len(out)
        parts.append(out)
        if size > limit:
            raise TooLarge(f"{what} is over {limit} bytes once decompressed; the limit is {limit}")
        if not d.eof:
            raise InvalidInput(f"body is truncated {enc} data")
        rest = d.unused_data
        if not rest.strip(b"\0"):  # nothing after it but gzip's zero padding
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None


# The JSON parser takes up to 1,024 nested levels, the encoder that stores an event at most 254
# (and the writer wraps an event's properties and traits a few levels deeper still: the profile's
# recent events, its groups): an event nested deeper would be acknowledged and then fail in the group
# commit (a 503 for ever, as the client retries). Events nested deeper than MAX_NESTING levels are
# refused at the door instead, naming their field. A body with fewer brackets than that cannot be
# that deep, so the check costs nothing for an ordinary event.
MAX_NESTING = 200
_DEEP = f"nested deeper than {MAX_NESTING} levels (objects and arrays within each other)"
_ENCODER_DEPTH = 254


def _encodable(obj: Any) -> bool:
    """Whether ``obj`` is at most MAX_NESTING levels deep: it still encodes inside the levels the
    encoder has left (one C-speed encoding, no walk in Python)."""
    for _ in range(_ENCODER_DEPTH - MAX_NESTING):
        obj = [obj]
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return False
    return True


def _deep_field(event: Any) -> str | None:
    """The top-level field of ``event`` nested too deep to be stored (None: none)."""
    if _encodable(event):
        return None
    if isinstance(event, dict):
        for k, v in event.items():
            if not _encodable([v]):
                return str(k)
    return "event"


def _clipped(obj: Any, depth: int = 0) -> Any:
    """``obj`` with what lies deeper than 200 levels replaced by a note (a quarantined raw event)."""
    if depth >= 200 and isinstance(obj, dict | list):
        return f"... ({_DEEP})"
    if isinstance(obj, dict):
        return {k: _clipped(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clipped(v, depth + 1) for v in obj]
    return obj


def raw_text(raw: Any) -> str:
    """A rejected event as the quarantine keeps it (JSON, at most 40,000 characters)."""
    try:
        text = orjson.dumps(raw, default=str).decode()
    except orjson.JSONEncodeError:
        text = orjson.dumps(_clipped(raw), default=str).decode()
    return text[:40_000]


# Authorization header -> the hash of its write key: an SDK sends the same header on every
# request, so the Basic decoding and the hash are done once; the key itself is still checked by
# the workspace service on every request (its cache expires, so a revoked key is refused).
_KEY_HASHES: dict[str, str] = {}
_KEY_HASHES_MAX = 10_000


def _header_workspace(gk: Goldkey, authorization: str | None) -> str | None:
    """The workspace of the write key in the Authorization header; None when the header names no
    key (the key may then come in the body). An unknown or revoked key raises Unauthorized."""
    from goldkey.api.deps import write_key_from_header

    if not authorization:
        return None
    h = _KEY_HASHES.get(authorization)
    if h is None:
        key = write_key_from_header(authorization)
        if not key:
            return None
        h = hash_secret(key)
        ws = gk.workspaces.authenticate_hash(h, "write").workspace_id
        if len(_KEY_HASHES) < _KEY_HASHES_MAX:
            _KEY_HASHES[authorization] = h  # only headers that named a live write key are remembered
        return ws
    return gk.workspaces.authenticate_hash(h, "write").workspace_id


def _body_workspace(gk: Goldkey, data: Any) -> str:
    """The workspace of the ``writeKey`` in the body (RudderStack's), for a request whose header
    named no key."""
    body_key = data.get("writeKey") if isinstance(data, dict) else None
    if not isinstance(body_key, str) or not body_key:
        raise Unauthorized("missing write key: send it as the HTTP Basic user name")
    return gk.workspaces.authenticate_hash(hash_secret(body_key), "write").workspace_id


async def _ingest(
    gk: Goldkey, ws: str, events: list[TrackedEvent], rejected: list[InvalidInput], raw: list[Any]
) -> bytes:
    # The request's valid events are acknowledged first, its rejected ones quarantined after: a
    # request answered 503 (queue full, a store failure) has written nothing, so the client's retry
    # does not quarantine its rejected events twice. A quarantine that fails after the events were
    # stored answers 503 too; the retry's events are then duplicates (not stored again).
    accepted = duplicates = 0
    if events:
        fut = gk.writer.submit_events_async(ws, events, asyncio.get_running_loop())
        try:
            res = await asyncio.wait_for(fut, ACK_TIMEOUT_SECONDS)
        except TimeoutError:
            raise StoreUnavailable(
                f"not acknowledged within {ACK_TIMEOUT_SECONDS} s; retry (a retry is de-duplicated by messageId)"
            ) from None
        except GoldkeyError:
            raise
        except Exception as exc:  # a store failed: nothing of this request was acknowledged
            raise not_stored(exc) from exc
        accepted, duplicates = res.accepted, res.duplicates
    if rejected:
        METRICS.events_rejected.inc(len(rejected))
        rows = quarantine_rows(ws, rejected, raw)
        remote = getattr(gk, "quarantine_async", None)  # a collector process: the server writes them
        try:
            if remote is not None:
                await remote(rows)
            else:
                await run_in_threadpool(insert_quarantine, gk.engine, rows)
        except GoldkeyError:
            raise
        except Exception as exc:
            raise not_quarantined(exc) from exc
    return orjson.dumps(
        {
            "success": True,
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": [e.as_dict() for e in rejected],
        }
    )


def not_stored(exc: BaseException) -> StoreUnavailable:
    """The 503 of a request whose events a store failed to take (nothing of it acknowledged). The
    store's own message (SQL, the event's values) goes to the server log, not to the client."""
    log.error("events not stored: %s: %s", type(exc).__name__, str(exc)[:2000])
    return StoreUnavailable(f"events not stored, retry ({type(exc).__name__}; the server log has the detail)")


def not_quarantined(exc: BaseException) -> StoreUnavailable:
    """The 503 of a request whose valid events were stored but whose rejected ones the quarantine
    failed to take: the retry's valid events are acknowledged as duplicates."""
    log.error("rejected events not quarantined: %s: %s", type(exc).__name__, str(exc)[:2000])
    return StoreUnavailable(f"rejected events not quarantined, retry ({type(exc).__name__}; the server log has the "
                            "detail)")


def quarantine_rows(ws: str, rejected: list[InvalidInput], raw: list[Any]) -> list[dict[str, Any]]:
    """The quarantine rows of a request's rejected events (the reason and the raw event)."""
    now = utcnow()
    width = quarantine.c.field.type.length  # PostgreSQL enforces it
    rows = []
    for e, r in zip(rejected, raw, strict=True):
        field, reason = e.field, e.message
        if field is not None and len(field) > width:
            # a longer field name, which the client chose (a consent channel, a top-level key), is
            # cut; the reason names it whole
            field, reason = field[: width - 1] + "…", f"field {field!r}: {reason}"
        rows.append(dict(workspace_id=ws, source="tracking", import_id=None, record=str(e.record), field=field,
                         value=None, reason=reason, raw=raw_text(r), created_at=now))
    return rows


def insert_quarantine(engine: Any, rows: list[dict[str, Any]]) -> None:
    """Store quarantine rows (from this process's tracking API or a collector's)."""
    with engine.begin() as conn:
        conn.execute(quarantine.insert(), rows)


async def handle(gk: Goldkey, kind: str, body: bytes, authorization: str | None, encoding: str | None,
                 size: int | None = None) -> bytes:
    """Handle one tracking request (``kind``: "batch" or an event type); return the JSON ack.
    ``size``: the body's length when ``body`` holds only its first part (a body over every limit is
    not read whole).

    Raises GoldkeyError subclasses (answered as 4xx/503 with a body naming the problem).
    """
    limit = gk.settings.max_batch_bytes if kind == "batch" else gk.settings.max_event_bytes
    what = "batch" if kind == "batch" else "event"
    received = now_micros()
    # a key in the header is checked before the body is read: an unknown key is a 401 whatever it
    # sent, and nobody unknown makes the server decompress and parse megabytes (a key in the body,
    # RudderStack's writeKey, can only be checked after)
    ws = _header_workspace(gk, authorization)
    n = max(len(body), size or 0)
    if n > limit:
        raise TooLarge(f"{what} is {n} bytes; the limit is {limit}")
    body = _decoded(encoding, body, limit, what)
    data = _parse(body)
    if ws is None:
        ws = _body_workspace(gk, data)
    deep = body.count(b"{") + body.count(b"[") > MAX_NESTING and not _encodable(data)
    if kind != "batch":
        METRICS.events_received.inc()
        try:
            if deep:
                raise InvalidInput(_DEEP, field=_deep_field(data))
            ev = normalise_event(data, received_at=received, forced_type=kind, size=len(body))
        except InvalidInput:
            METRICS.events_rejected.inc()
            raise
        return await _ingest(gk, ws, [ev], [], [])
    if not isinstance(data, dict) or not isinstance(data.get("batch"), list):
        raise InvalidInput("must be a list of events", field="batch")
    items = data["batch"]
    METRICS.events_received.inc(len(items))
    try:  # a batch refused as a whole: each of its events counts as rejected
        if deep and (field := _deep_field({k: v for k, v in data.items() if k != "batch"})) is not None:
            raise InvalidInput(_DEEP, field=field)
        sent_at = _parse_ts(data.get("sentAt"), "sentAt", None) if data.get("sentAt") is not None else None
        ctx = data.get("context")
        if ctx is not None and type(ctx) is not dict:
            raise InvalidInput("must be a JSON object", field="context")
    except InvalidInput:
        METRICS.events_rejected.inc(len(items))
        raise
    small = len(body) <= gk.settings.max_event_bytes
    events: list[TrackedEvent] = []
    rejected: list[InvalidInput] = []
    raw_rejected: list[Any] = []
    max_event = gk.settings.max_event_bytes
    for i, item in enumerate(items):
        try:
            if deep and (field := _deep_field(item)) is not None:
                raise InvalidInput(_DEEP, field=field, record=i)
            events.append(
                normalise_event(
                    item,
                    received_at=received,
                    batch_sent_at=sent_at,
                    batch_context=ctx,
                    record=i,
                    max_event_bytes=max_event,
                    size=0 if small else None,
                )
            )
        except InvalidInput as exc:
            rejected.append(exc)
            raw_rejected.append(item)
    return await _ingest(gk, ws, events, rejected, raw_rejected)


async def _route(request: Request, kind: str) -> Response:
    body = await request.body()
    out = await handle(
        request.app.state.gk,
        kind,
        body,
        request.headers.get("authorization"),
        request.headers.get("content-encoding"),
    )
    return Response(out, media_type="application/json")


@router.post("/v1/batch", response_model=TrackingAck, responses=_ERRORS, openapi_extra=_body_doc(TrackingBatch))
async def batch(request: Request) -> Response:
    """Accept a batch of events (at most 4 MB; each event at most 32 KB)."""
    return await _route(request, "batch")


def _single(event_type: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return await _route(request, event_type)

    endpoint.__name__ = event_type
    endpoint.__doc__ = f"Accept one `{event_type}` event (at most 32 KB)."
    return endpoint


for _t in EVENT_TYPES:
    router.add_api_route(
        f"/v1/{_t}",
        _single(_t),
        methods=["POST"],
        response_model=TrackingAck,
        responses=_ERRORS,
        openapi_extra=_body_doc(TrackingEvent),
        name=f"tracking_{_t}",
    )

TRACKING_PATHS = {f"/v1/{t}": t for t in (*EVENT_TYPES, "batch")}


class TrackingFastPath:
    """ASGI middleware answering ``POST /v1/*`` without the framework's per-request machinery
    (routing, dependency resolution, Request/Response objects): the tracking API is the hot
    path. It runs the same ``handle`` as the documented routes, which stay in the OpenAPI schema."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = TRACKING_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        gk: Goldkey = scope["app"].state.gk
        cap = gk.settings.max_batch_bytes + 1
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if size < cap:
                chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        authorization = encoding = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
        headers = [(b"content-type", b"application/json")]
        try:
            out = await handle(gk, kind, body, authorization, encoding, size)
            status = 200
        except GoldkeyError as exc:
            status, out, extra = error_parts(exc)
            headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        headers.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})
