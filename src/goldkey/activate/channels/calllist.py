"""Outbound-call lists: each customer to call becomes a row for a call centre.

``mode = "file"`` appends to a CSV file (UTF-8 with BOM so Excel opens Chinese names; header
``message_id, profile_id, name, phone, city, member_tier, script``); ``mode = "webhook"`` POSTs each row
as signed JSON like a webhook. Only customers whose ``call`` consent for the purpose is granted reach
this channel -- the guardrails check it with the same rule as the segments' call-list export (the
latest decision across merged profiles; a denial wins a tie).
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field

from goldkey.activate.channels.base import Channel, ChannelConfig, OutboundMessage, SendResult, register
from goldkey.activate.channels.webhook import signed_post
from goldkey.core.errors import InvalidInput

HEADER = ["message_id", "profile_id", "name", "phone", "city", "member_tier", "script"]


class CallListConfig(ChannelConfig):
    mode: Literal["file", "webhook"] = "file"
    path: str | None = Field(None, description="CSV file (mode file): a file name in the workspace's folder of the "
                                             "channel-files directory (an absolute path must lie in it).")
    url: str | None = Field(None, pattern=r"^https?://", description="Call-centre endpoint (mode webhook).")
    rate_per_second: float = Field(1000.0, gt=0)
    receiver_deduplicates: bool = Field(
        False, description="mode webhook: the call centre drops a repeated Idempotency-Key (timeouts are retried).")


@register
class CallListChannel(Channel):
    kind = "call"
    consent_channel = "call"
    address_type = "phone"
    config_model = CallListConfig
    file_fields = ("path",)
    optional_secret_fields = ("signing_secret",)
    config: CallListConfig

    def __init__(self, config: CallListConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets, **kw)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        # a local file append cannot time out half-way; a call centre's endpoint is like a webhook
        self.deduplicates_by_message_id = config.mode == "file" or config.receiver_deduplicates

    @classmethod
    def check(cls, config: CallListConfig, secrets: dict[str, str]) -> None:  # type: ignore[override]
        if config.mode == "file" and not config.path:
            raise InvalidInput("a file call list needs config.path", field="config.path")
        if config.mode == "webhook":
            if not config.url:
                raise InvalidInput("a webhook call list needs config.url", field="config.url")
            if not secrets.get("signing_secret"):
                raise InvalidInput("a webhook call list needs the credential 'signing_secret'",
                                   field="secrets.signing_secret")

    def row(self, message: OutboundMessage) -> list[str]:
        md = message.metadata
        return [message.message_id, message.profile_id, str(md.get("name") or ""), message.to,
                str(md.get("city") or ""), str(md.get("member_tier") or ""), message.text]

    def send(self, message: OutboundMessage) -> SendResult:
        row = self.row(message)
        if self.config.mode == "webhook":
            return signed_post(self, self.config.url or "", orjson.dumps(dict(zip(HEADER, row, strict=True))),
                               message.message_id)
        path = Path(self.config.path or "")
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            with path.open("a", encoding="utf-8", newline="") as f:
                if new:
                    f.write("\ufeff")
                w = csv.writer(f)
                if new:
                    w.writerow(HEADER)
                w.writerow(row)
        return SendResult.sent(message.message_id)
