"""Activation API: channels (credentials write-only), send policy, suppressions, the message log,
provider receipts, and the public tracking endpoints (open pixel, click redirect, unsubscribe).

Admin routes take an
admin token; ``/t/...`` are public and authorised by their signed token alone; receipts are
authorised by the provider's signature (``Channel.parse_receipts``).
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import datetime
from html import escape
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.activate.receipts import Receipts
from goldkey.activate.sender import Sender
from goldkey.api.deps import GK, Admin
from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.govern.audit import audit, changed_fields
from goldkey.store.operational import messages

router = APIRouter(tags=["activation"])

MESSAGE_STATUSES = ("queued", "sending", "sent", "delivered", "failed", "dead")
_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def activation(gk: Any) -> tuple[Sender, Receipts]:
    """The instance's sender and receipts (built with the runtime, see ``Goldkey.open``)."""
    if gk.sender is None or gk.receipts is None:  # pragma: no cover - Goldkey.open always builds them
        raise NotFound("activation is not available in this instance")
    return gk.sender, gk.receipts


class ChannelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="email | sms | wechat | push | webhook | call | sink")
    provider: str = Field("", description="sms: twilio | aliyun | generic; wechat: template; push: jpush")
    config: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, description="Write-only: never returned.")


class ChannelPublic(BaseModel):
    channel_id: str
    name: str
    kind: str
    provider: str
    config: dict[str, Any]
    secrets_set: list[str] = Field(description="Names of the stored secrets (never their values).")
    status: str
    created_at: str
    updated_at: str


class ChannelTest(BaseModel):
    to: str
    text: str = Field(min_length=1)
    subject: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    provider_template: str | None = None


class SuppressionCreate(BaseModel):
    profile_ids: list[str] = Field(min_length=1, max_length=100_000)
    channel: str = Field("*", description="A consent channel, or * for every channel.")
    reason: str = Field(min_length=1, max_length=300)
    expires_at: datetime | None = None


@router.post("/api/v1/channels", response_model=ChannelPublic, status_code=201)
async def create_channel(body: ChannelCreate, gk: GK, cred: Admin) -> dict[str, Any]:
    """Configure a channel; the config and credentials are validated now (400 names the field)."""
    sender, _ = activation(gk)
    ch = await run_in_threadpool(sender.channels.save, cred.workspace_id, name=body.name, kind=body.kind,
                                 provider=body.provider, config=body.config, secrets=body.secrets)
    await run_in_threadpool(audit, gk.engine, cred, "channel.create", ch["channel_id"],
                            {"name": ch["name"], "changed": _channel_changes({}, ch, body.secrets)})
    return ch


@router.get("/api/v1/channels", response_model=list[ChannelPublic])
async def list_channels(gk: GK, cred: Admin) -> list[dict[str, Any]]:
    sender, _ = activation(gk)
    return sender.channels.list(cred.workspace_id)


@router.put("/api/v1/channels/{channel_id}", response_model=ChannelPublic)
async def update_channel(channel_id: str, body: ChannelCreate, gk: GK, cred: Admin) -> dict[str, Any]:
    """Replace a channel's name and config, validated as on create; secrets left out keep their
    stored values (the console never sees them, so it sends only the ones a user typed)."""
    sender, _ = activation(gk)
    before = await run_in_threadpool(sender.channels.get, cred.workspace_id, channel_id)
    ch = await run_in_threadpool(sender.channels.save, cred.workspace_id, name=body.name, kind=body.kind,
                                 provider=body.provider, config=body.config, secrets=body.secrets,
                                 channel_id=channel_id)
    await run_in_threadpool(audit, gk.engine, cred, "channel.update", channel_id,
                            {"name": ch["name"], "changed": _channel_changes(before, ch, body.secrets)})
    return ch


def _channel_changes(before: dict[str, Any], after: dict[str, Any], secrets: dict[str, str]) -> list[str]:
    """Names of the changed fields of a channel; a secret sent counts as changed (by name only:
    its value never reaches the audit log)."""
    fields = ("name", "kind", "provider", "config")
    changed = changed_fields({k: before[k] for k in fields if k in before}, {k: after[k] for k in fields})
    return changed + sorted(f"secrets.{k}" for k, v in secrets.items() if v is not None)


@router.post("/api/v1/channels/{channel_id}/test")
async def test_channel(channel_id: str, body: ChannelTest, gk: GK, cred: Admin) -> dict[str, Any]:
    """Send one test message to an address (no guardrails, not logged)."""
    sender, _ = activation(gk)
    res = await run_in_threadpool(sender.test, cred.workspace_id, channel_id, body.to, body.text, body.subject,
                                  body.params, body.provider_template)
    return {"ok": res.ok, "provider_message_id": res.provider_message_id, "reason": res.reason}


@router.get("/api/v1/send-policy")
async def get_policy(gk: GK, cred: Admin) -> dict[str, Any]:
    sender, _ = activation(gk)
    return sender.guardrails.policy(cred.workspace_id).model_dump(mode="json")


@router.put("/api/v1/send-policy")
async def put_policy(request: Request, gk: GK, cred: Admin) -> dict[str, Any]:
    sender, _ = activation(gk)
    data = await request.json()

    def save() -> dict[str, Any]:
        before = sender.guardrails.policy(cred.workspace_id).model_dump(mode="json")
        after = sender.guardrails.set_policy(cred.workspace_id, data).model_dump(mode="json")
        audit(gk.engine, cred, "send_policy.update", cred.workspace_id, {"changed": changed_fields(before, after)})
        return after

    return await run_in_threadpool(save)


@router.post("/api/v1/suppressions")
async def add_suppressions(body: SuppressionCreate, gk: GK, cred: Admin) -> dict[str, int]:
    sender, _ = activation(gk)
    n = await run_in_threadpool(sender.guardrails.suppress, cred.workspace_id, body.profile_ids, body.channel,
                                body.reason, source="api", expires_at=body.expires_at)
    return {"suppressed": n}


@router.get("/api/v1/messages")
async def list_messages(gk: GK, cred: Admin, profile_id: str | None = None, status: str | None = None,
                        ref: str | None = None, limit: int = 100) -> dict[str, Any]:
    """The message log, newest first (addresses masked). ``status=dead`` lists the dead letters:
    messages of dead-letter channels (webhook, push) that failed after every retry, with the reason."""
    if status is not None and status not in MESSAGE_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(MESSAGE_STATUSES)}", field="status")
    m = messages.c
    q = sa.select(m.message_id, m.profile_id, m.channel_id, m.channel, m.purpose, m.message_key, m.ref,
                  m.template_id, m.status, m.reason, m.attempts, m.cost, m.address, m.created_at, m.sent_at,
                  m.delivered_at, m.opened_at, m.clicked_at).where(m.workspace_id == cred.workspace_id)
    if profile_id:
        q = q.where(m.profile_id == profile_id)
    if status:
        q = q.where(m.status == status)
    if ref:
        q = q.where(m.ref == ref)
    with gk.engine.connect() as c:
        rows = c.execute(q.order_by(m.created_at.desc()).limit(max(1, min(limit, 1000)))).all()
    out = []
    for r in rows:
        d = dict(r._mapping)
        for k in ("created_at", "sent_at", "delivered_at", "opened_at", "clicked_at"):
            d[k] = to_iso(d[k])
        out.append(d)
    return {"messages": out}


@router.get("/api/v1/messages/{message_id}")
async def get_message(message_id: str, gk: GK, cred: Admin) -> dict[str, Any]:
    """One message of the log; a dead letter includes the payload a re-drive sends again."""
    m = messages.c
    with gk.engine.connect() as c:
        row = c.execute(sa.select(messages).where(m.workspace_id == cred.workspace_id,
                                                  m.message_id == message_id)).first()
    if row is None:
        raise NotFound(f"message {message_id!r} not found")
    d = {k: v for k, v in row._mapping.items() if k not in ("claim", "workspace_id")}
    for k in ("created_at", "sent_at", "delivered_at", "opened_at", "clicked_at", "updated_at"):
        d[k] = to_iso(d[k])
    d["payload"] = orjson.loads(d["payload"]) if d["payload"] else None
    if d["payload"]:  # the log shows masked addresses only
        d["payload"]["to"] = d["address"]
    return d


class Redrive(BaseModel):
    message_ids: list[str] = Field(min_length=1, max_length=10_000)


@router.post("/api/v1/messages/redrive")
async def redrive(body: Redrive, gk: GK, cred: Admin) -> dict[str, Any]:
    """Send dead-lettered messages again from their stored payload (each at most once more), to
    customers who may still be sent them (consent and suppressions are checked again)."""
    sender, _ = activation(gk)
    rep = await run_in_threadpool(sender.redrive, cred.workspace_id, body.message_ids)
    return asdict(rep)


@router.post("/api/v1/receipts/{channel_id}")
async def provider_receipt(channel_id: str, request: Request, gk: GK) -> dict[str, Any]:
    """A provider's delivery-receipt or reply callback, verified by the provider's signature.
    Answers ``{"code": 0, "msg": "ok", ...}`` (the acknowledgement Aliyun's push expects)."""
    _, receipts = activation(gk)
    from goldkey.store.operational import channels

    with gk.engine.connect() as c:
        ws = c.execute(sa.select(channels.c.workspace_id).where(channels.c.channel_id == channel_id)).scalar()
    if ws is None:
        raise NotFound(f"channel {channel_id!r} not found")
    body = await request.body()
    counts = await run_in_threadpool(receipts.provider, ws, channel_id, body, dict(request.headers),
                                     dict(request.query_params))
    return {"code": 0, "msg": "ok", **counts}


@router.get("/t/o/{token}.gif", include_in_schema=False)
async def open_pixel(token: str, gk: GK) -> Response:
    _, receipts = activation(gk)
    try:
        await run_in_threadpool(receipts.open, token)
    except NotFound:  # a pixel always answers, so a forged token learns nothing
        pass
    return Response(_GIF, media_type="image/gif", headers={"Cache-Control": "no-store"})


@router.get("/t/c/{token}", include_in_schema=False)
async def click(token: str, gk: GK) -> RedirectResponse:
    _, receipts = activation(gk)
    url = await run_in_threadpool(receipts.click, token)
    return RedirectResponse(url, status_code=302)


@router.get("/t/u/{token}", include_in_schema=False)
async def unsubscribe_page(token: str, gk: GK) -> HTMLResponse:
    """A confirmation page (a GET never changes anything; mail clients prefetch links)."""
    _, receipts = activation(gk)
    row = await run_in_threadpool(receipts.unsubscribe_target, token)
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>Unsubscribe / 退订</title>"
        f"<form method=post><p>Stop {escape(row.channel)} messages ({escape(row.purpose)})? / 不再接收此类消息？</p>"
        f"<button type=submit>Unsubscribe / 退订</button></form>")


@router.post("/t/u/{token}", include_in_schema=False)
async def unsubscribe(token: str, gk: GK) -> HTMLResponse:
    """One-click unsubscribe (RFC 8058) and the confirmation form's target."""
    _, receipts = activation(gk)
    await run_in_threadpool(receipts.unsubscribe, token)
    return HTMLResponse("<!doctype html><meta charset=utf-8><p>You are unsubscribed. / 您已退订。</p>")
