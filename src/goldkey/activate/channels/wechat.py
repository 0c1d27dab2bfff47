"""WeChat official-account template messages (模板消息) and customer-service messages (客服消息),
by the official account API.

- Access token: ``GET {base}/cgi-bin/token?grant_type=client_credential&appid=APPID&secret=APPSECRET``
  answers ``{"access_token": "...", "expires_in": 7200}``; it is cached until shortly before it
  expires and fetched again when a call answers errcode 40001 (invalid credential), 40014 (invalid
  token) or 42001 (token expired) -- the send is then repeated once with the new token.
- Send: ``POST {base}/cgi-bin/message/template/send?access_token=TOKEN`` with
  ``{"touser": OPENID, "template_id": ..., "url": ..., "client_msg_id": ..., "data": {key: {"value": ...}}}``;
  success is ``{"errcode": 0, "errmsg": "ok", "msgid": ...}``. ``client_msg_id`` is our message id:
  WeChat sends one message per (openid, client_msg_id), so a retry after a timeout cannot deliver twice.
- Receipts: WeChat posts the ``TEMPLATESENDJOBFINISH`` event (XML) to the account's server URL,
  signed with ``signature = SHA1(sorted(token, timestamp, nonce))``.

``base_url`` is configurable so tests (and API proxies) can stand in for api.weixin.qq.com.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from pydantic import Field

from goldkey.activate.channels.base import (
    Channel,
    ChannelConfig,
    OutboundMessage,
    Receipt,
    SendResult,
    http_status_retryable,
    register,
)
from goldkey.core.errors import InvalidInput, Unauthorized

TOKEN_ERRORS = {40001, 40014, 42001}
RETRYABLE_ERRORS = {-1, 45009, 45011}  # system busy, API frequency limits
EXPIRY_MARGIN_SECONDS = 300


class WeChatConfig(ChannelConfig):
    appid: str = Field(pattern=r"^wx[0-9a-zA-Z]{10,30}$")
    template_id: str | None = Field(None, description="Default template id when the message has none.")
    base_url: str = "https://api.weixin.qq.com"
    miniprogram_appid: str | None = None
    miniprogram_pagepath: str | None = None


@register
class WeChatTemplate(Channel):
    """Template messages of a WeChat official account."""

    kind = "wechat"
    provider = "template"
    consent_channel = "wechat"
    address_type = "wechat_openid"
    config_model = WeChatConfig
    secret_fields = ("appsecret",)
    optional_secret_fields = ("server_token",)
    deduplicates_by_message_id = True
    uses_provider_template = True
    config: WeChatConfig

    def __init__(self, config: WeChatConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets, **kw)  # type: ignore[arg-type]
        self._token: str | None = None
        self._expires = 0.0
        self._token_lock = threading.Lock()

    def _url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    def access_token(self, *, refresh: bool = False) -> str | SendResult:
        """The cached access token, fetched when missing, expiring or ``refresh``."""
        with self._token_lock:
            if not refresh and self._token and time.monotonic() < self._expires:
                return self._token
            r = self.request("GET", self._url("/cgi-bin/token"), params={
                "grant_type": "client_credential", "appid": self.config.appid, "secret": self.secrets["appsecret"]})
            if isinstance(r, SendResult):
                return r
            body = r.json() if r.headers.get("content-type", "").startswith(("application/json", "text/plain")) \
                else {}
            if "access_token" not in body:
                return SendResult.failed(f"WeChat token error {body.get('errcode', r.status_code)}: "
                                         f"{body.get('errmsg', r.text[:200])}",
                                         retryable=body.get("errcode") in RETRYABLE_ERRORS
                                         or http_status_retryable(r.status_code))
            self._token = str(body["access_token"])
            self._expires = time.monotonic() + max(0, int(body.get("expires_in", 7200)) - EXPIRY_MARGIN_SECONDS)
            return self._token

    def payload(self, message: OutboundMessage) -> dict[str, object]:
        cfg = self.config
        data: dict[str, object] = {
            "touser": message.to,
            "template_id": message.metadata.get("provider_template") or cfg.template_id,
            "client_msg_id": message.message_id,
            "data": {k: {"value": v} for k, v in message.params.items()},
        }
        if message.url:
            data["url"] = message.url
        if cfg.miniprogram_appid:
            data["miniprogram"] = {"appid": cfg.miniprogram_appid, "pagepath": cfg.miniprogram_pagepath or ""}
        return data

    send_path = "/cgi-bin/message/template/send"

    def send(self, message: OutboundMessage) -> SendResult:
        if not (message.metadata.get("provider_template") or self.config.template_id):
            return SendResult.failed("no WeChat template id: set the template's provider_template")
        return self.post_with_token(self.payload(message))

    def post_with_token(self, payload: dict[str, object]) -> SendResult:
        """POST ``payload`` to ``send_path`` with the access token; a token error (40001 ...) fetches
        a new token and sends once more."""
        for attempt in (1, 2):
            token = self.access_token(refresh=attempt == 2)
            if isinstance(token, SendResult):
                return token
            r = self.request("POST", self._url(self.send_path), params={"access_token": token}, json=payload)
            if isinstance(r, SendResult):
                return r
            try:
                body = r.json()
            except ValueError:
                body = {}
            code = body.get("errcode", -2 if r.status_code != 200 else 0)
            if code == 0:
                return SendResult.sent(str(body["msgid"]) if "msgid" in body else None)
            if code in TOKEN_ERRORS and attempt == 1:
                continue  # the token was revoked or expired early: fetch a new one and send again
            return SendResult.failed(f"WeChat errcode {code}: {body.get('errmsg', r.text[:200])}",
                                     retryable=code in RETRYABLE_ERRORS or http_status_retryable(r.status_code))
        raise AssertionError("unreachable")

    def parse_receipts(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Receipt]:
        token = self.secrets.get("server_token")
        if not token:
            raise InvalidInput("set secrets.server_token (the account's server token) to receive WeChat events",
                               field="secrets.server_token")
        want = hashlib.sha1("".join(sorted([token, query.get("timestamp", ""), query.get("nonce", "")])).encode())
        if not hmac.compare_digest(want.hexdigest(), query.get("signature", "")):
            raise Unauthorized("WeChat signature does not match")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise InvalidInput("a WeChat event is XML", field="body") from None
        if root.findtext("Event") != "TEMPLATESENDJOBFINISH":
            return []
        status = root.findtext("Status") or ""
        ok = status == "success"
        return [Receipt("delivered" if ok else "failed", provider_message_id=root.findtext("MsgID"),
                        reason=None if ok else status)]


@register
class WeChatCustomerService(WeChatTemplate):
    """Customer-service messages (客服消息) of an official account: our own text, allowed within 48
    hours of the customer's last interaction with the account (otherwise errcode 45015, not retried).

    ``POST {base}/cgi-bin/message/custom/send?access_token=TOKEN`` with ``{"touser": OPENID,
    "msgtype": "text", "text": {"content": ...}}``; the same access-token handling as template
    messages. The API has no de-duplication key, so a timed-out request is not retried."""

    provider = "custom"
    uses_provider_template = False
    deduplicates_by_message_id = False
    send_path = "/cgi-bin/message/custom/send"

    def payload(self, message: OutboundMessage) -> dict[str, object]:
        return {"touser": message.to, "msgtype": "text", "text": {"content": message.text}}

    def send(self, message: OutboundMessage) -> SendResult:
        return self.post_with_token(self.payload(message))
