"""Webhooks: a signed JSON POST per message to a partner's URL.

The body is ``{"message_id", "profile_id", "text", "subject", "params", "url", "metadata"}``; the
headers carry ``Idempotency-Key`` (our message id) and ``X-Goldkey-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>." + body>`` (Stripe's documented scheme; the timestamp defeats replays). Refused connections, 429 and 5xx answers
are retried with exponential backoff by the sender; a message that still fails is dead-lettered
(status ``dead`` with its payload kept, listed by ``GET /api/v1/messages?status=dead`` and sent again
by ``POST /api/v1/messages/redrive``). A request that timed out after it went out has an unknown
outcome: it is retried only when the receiver declares that it drops repeats of an
``Idempotency-Key`` (``receiver_deduplicates: true``); otherwise it fails at once, so the receiver
never gets the message twice. Receivers verify with ``verify_signature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import orjson
from pydantic import Field

from goldkey.activate.channels.base import (
    Channel,
    ChannelConfig,
    OutboundMessage,
    Receipt,
    SendResult,
    http_status_retryable,
    register,
    sign_payload,
    verify_signature,
)
from goldkey.activate.channels.sms import parse_generic_receipts


class WebhookConfig(ChannelConfig):
    url: str = Field(pattern=r"^https?://", description="Where each message is POSTed.")
    consent_channel: Literal["email", "sms", "wechat", "push", "call"] = Field(
        "push", description="The consent (and caps) the receiver's messages fall under.")
    receiver_deduplicates: bool = Field(
        False, description="The receiver drops a repeated Idempotency-Key, so a timed-out request may be retried.")


def signed_post(channel: Channel, url: str, body: bytes, message_id: str) -> SendResult:
    """POST ``body`` signed with the channel's ``signing_secret``."""
    t, sig = sign_payload(channel.secrets["signing_secret"], body)
    r = channel.request("POST", url, content=body, headers={
        "Content-Type": "application/json", "Idempotency-Key": message_id, "X-Goldkey-Signature": f"t={t},v1={sig}"})
    if isinstance(r, SendResult):
        return r
    if 200 <= r.status_code < 300:
        return SendResult.sent(message_id)
    return SendResult.failed(f"{url} answered {r.status_code}: {r.text[:300]}",
                             retryable=http_status_retryable(r.status_code))


@register
class WebhookChannel(Channel):
    kind = "webhook"
    consent_channel = "push"
    address_type = "profile_id"
    config_model = WebhookConfig
    secret_fields = ("signing_secret",)
    dead_letter = True
    config: WebhookConfig

    def __init__(self, config: WebhookConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets, **kw)  # type: ignore[arg-type]
        self.consent_channel = config.consent_channel
        self.deduplicates_by_message_id = config.receiver_deduplicates

    def send(self, message: OutboundMessage) -> SendResult:
        body = orjson.dumps({"message_id": message.message_id, "profile_id": message.profile_id,
                             "text": message.text, "subject": message.subject, "params": message.params,
                             "url": message.url, "metadata": message.metadata})
        return signed_post(self, self.config.url, body, message.message_id)

    def parse_receipts(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Receipt]:
        verify_signature(self.secrets["signing_secret"], body, headers.get("x-goldkey-signature"))
        return parse_generic_receipts(body)
