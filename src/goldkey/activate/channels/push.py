"""App push through JPush (极光推送) REST API v3, a common push service for Chinese apps.

``POST {base}/v3/push`` with HTTP Basic auth (AppKey : Master Secret) and
``{"platform": "all", "audience": {"registration_id": [...]}, "notification": {"alert": ...,
"android": {"title": ..., "extras": ...}, "ios": {"extras": ...}}, "options": {"time_to_live": ...}}``;
success is ``200 {"sendno": "...", "msg_id": "..."}``, an error ``{"error": {"code": 1011, "message":
...}}``. ``sendno`` is set from our message id. JPush does not de-duplicate, so a timed-out request
is not retried; connection failures, 5xx and throttling (code 2002 / HTTP 429) are, with backoff,
and a message that still fails is dead-lettered. The address is the device's registration id,
held as the profile's ``device_id`` identifier.
"""

from __future__ import annotations

import zlib

from pydantic import Field

from goldkey.activate.channels.base import (
    Channel,
    ChannelConfig,
    OutboundMessage,
    SendResult,
    http_status_retryable,
    register,
)


class JPushConfig(ChannelConfig):
    app_key: str = Field(min_length=1, max_length=64)
    base_url: str = "https://api.jpush.cn"
    time_to_live: int = Field(86400, ge=0, le=864000)
    apns_production: bool = True


@register
class JPushChannel(Channel):
    kind = "push"
    provider = "jpush"
    consent_channel = "push"
    address_type = "device_id"
    config_model = JPushConfig
    secret_fields = ("master_secret",)
    dead_letter = True
    config: JPushConfig

    def payload(self, message: OutboundMessage) -> dict[str, object]:
        extras = {"goldkey_message_id": message.message_id, **({"url": message.url} if message.url else {})}
        return {
            "platform": "all",
            "audience": {"registration_id": [message.to]},
            "notification": {"alert": message.text,
                             "android": {"alert": message.text, "title": message.subject or "", "extras": extras},
                             "ios": {"alert": message.text, "extras": extras}},
            # sendno is an int in JPush's API: a stable number derived from our message id
            "options": {"sendno": zlib.crc32(message.message_id.encode()) & 0x7FFFFFFF,
                        "time_to_live": self.config.time_to_live,
                        "apns_production": self.config.apns_production},
        }

    def send(self, message: OutboundMessage) -> SendResult:
        r = self.request("POST", self.config.base_url.rstrip("/") + "/v3/push", json=self.payload(message),
                         auth=(self.config.app_key, self.secrets["master_secret"]))
        if isinstance(r, SendResult):
            return r
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code == 200 and "msg_id" in body:
            return SendResult.sent(str(body["msg_id"]))
        err = body.get("error", {}) if isinstance(body, dict) else {}
        return SendResult.failed(f"JPush {r.status_code} error {err.get('code')}: {err.get('message', r.text[:200])}",
                                 retryable=err.get("code") == 2002 or http_status_retryable(r.status_code))
