"""SMS through HTTP provider adapters, each building its provider's real request and signature.

- ``twilio`` (international): ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP
  Basic auth (Account SID : Auth Token) and a form body (``To``, ``From`` or
  ``MessagingServiceSid``, ``Body``, ``StatusCallback``); success is ``201`` with the message resource
  (``sid``, ``status``), an error ``4xx`` with ``{"code": 21211, "message": ..., "status": 400}``.
  Status callbacks (``MessageStatus`` = delivered / undelivered / failed / read, ``ErrorCode``) and
  incoming messages (``From``, ``Body``: replies such as STOP) are posted to
  ``status_callback_url`` (our ``/api/v1/receipts/{channel_id}``) and verified with
  ``X-Twilio-Signature`` = Base64(HMAC-SHA1(auth token, URL + the sorted POST parameters, each name
  followed by its value)), as Twilio documents.
- ``aliyun`` (China): the Dysmsapi ``SendSms`` RPC call (Version 2017-05-25) signed as Alibaba
  Cloud's RPC signature v1 documents: the parameters sorted, each percent-encoded (RFC 3986, space
  as %20, ``*`` as %2A, ``~`` kept), joined as the canonical query string;
  ``StringToSign = GET&%2F&percentEncode(canonical)``; ``Signature = Base64(HMAC-SHA1(secret + "&",
  StringToSign))``. Mainland numbers go without +86, others as country code + number. Success is
  ``{"Code": "OK", "BizId": ...}``; throttling (``isv.BUSINESS_LIMIT_CONTROL``) and other business
  errors are not retried (Aliyun counts them against the day's quota), system errors are. Delivery
  reports (SmsReport: a JSON list with ``biz_id``, ``out_id``, ``success``, ``err_code``) and replies
  (SmsUp: ``phone_number``, ``content``) arrive as Aliyun's HTTP batch push, which is not signed:
  set the secret ``receipt_token`` and put ``?token=<it>`` in the push URL (without it receipts are
  refused: anyone knowing the channel id could otherwise forge a delivery report or a 退订 reply).
- ``generic``: ``POST`` JSON to any gateway, signed like Goldkey's webhooks (``X-Goldkey-Signature:
  t=...,v1=HMAC-SHA256``) with ``Idempotency-Key`` = our message id; a timed-out request is retried
  only when the gateway is declared to drop repeats (``receiver_deduplicates``).

The cost of a message is its price times its parts: 160 GSM-7 characters (153 per part when
split) or 70 UCS-2 characters (67 per part) -- any Chinese character makes a message UCS-2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
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
from goldkey.core.errors import InvalidInput, Unauthorized
from goldkey.identity.normalize import normalize_phone

GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
           "¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€")


def sms_parts(text: str) -> int:
    """How many SMS parts ``text`` takes (GSM-7: 160/153, otherwise UCS-2: 70/67)."""
    if all(ch in GSM7 for ch in text):
        n, single, multi = len(text), 160, 153
    else:
        n, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if n <= single else -(-n // multi)


class SmsChannel(Channel):
    """What SMS adapters share: phone addresses and cost per part."""

    kind = "sms"
    consent_channel = "sms"
    address_type = "phone"

    def cost_of(self, message: OutboundMessage) -> float:
        return self.config.cost_per_message * sms_parts(message.text)

    def test_address(self, to: str) -> str:
        phone = normalize_phone(to)
        if phone is None:
            raise InvalidInput(f"{to!r} is not a phone number", field="to")
        return phone


# -- Twilio ---------------------------------------------------------------------------------------
class TwilioConfig(ChannelConfig):
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    from_number: str | None = Field(None, description="E.164 sender number (or give messaging_service_sid).")
    messaging_service_sid: str | None = Field(None, pattern=r"^MG[0-9a-fA-F]{32}$")
    base_url: str = "https://api.twilio.com"
    status_callback_url: str | None = Field(None, description="Our receipt URL Twilio posts status changes to.")
    currency: str = "USD"


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's request signature of a POST to ``url`` with form ``params``."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


@register
class TwilioSms(SmsChannel):
    provider = "twilio"
    config_model = TwilioConfig
    secret_fields = ("auth_token",)
    config: TwilioConfig

    @classmethod
    def check(cls, config: TwilioConfig, secrets: Mapping[str, str]) -> None:  # type: ignore[override]
        if not config.from_number and not config.messaging_service_sid:
            raise InvalidInput("give from_number or messaging_service_sid", field="config.from_number")

    def send(self, message: OutboundMessage) -> SendResult:
        cfg = self.config
        form = {"To": message.to, "Body": message.text}
        if cfg.messaging_service_sid:
            form["MessagingServiceSid"] = cfg.messaging_service_sid
        else:
            form["From"] = cfg.from_number or ""
        if cfg.status_callback_url:
            form["StatusCallback"] = cfg.status_callback_url
        r = self.request("POST", f"{cfg.base_url.rstrip('/')}/2010-04-01/Accounts/{cfg.account_sid}/Messages.json",
                         data=form, auth=(cfg.account_sid, self.secrets["auth_token"]))
        if isinstance(r, SendResult):
            return r
        body = _json(r)
        if r.status_code in (200, 201):
            return SendResult.sent(str(body.get("sid")), status=body.get("status"))
        return SendResult.failed(f"Twilio {r.status_code} error {body.get('code')}: {body.get('message', r.text)}",
                                 retryable=http_status_retryable(r.status_code))

    def parse_receipts(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Receipt]:
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        url = self.config.status_callback_url
        if not url:
            raise InvalidInput("set config.status_callback_url to receive Twilio status callbacks", field="config")
        sig = headers.get("x-twilio-signature", "")
        if not hmac.compare_digest(sig, twilio_signature(self.secrets["auth_token"], url, params)):
            raise Unauthorized("X-Twilio-Signature does not match")
        if "MessageStatus" not in params and "Body" in params:  # an incoming SMS to our number: a reply
            return [Receipt("replied", provider_message_id=params.get("MessageSid"), text=params["Body"],
                            from_address=normalize_phone(params.get("From", "")) or params.get("From"))]
        status = params.get("MessageStatus", "")
        mapped = {"delivered": "delivered", "undelivered": "failed", "failed": "failed", "read": "opened"}.get(status)
        if mapped is None:
            return []  # queued / sent / sending: nothing new for the customer's timeline
        reason = f"Twilio error {params['ErrorCode']}" if params.get("ErrorCode") else None
        return [Receipt(mapped, provider_message_id=params.get("MessageSid"), reason=reason)]  # type: ignore[arg-type]


# -- Aliyun (Alibaba Cloud Dysmsapi) --------------------------------------------------------------------
class AliyunConfig(ChannelConfig):
    access_key_id: str = Field(min_length=1, max_length=100)
    sign_name: str = Field(min_length=1, max_length=50, description="The approved SMS signature (签名).")
    template_code: str | None = Field(None, description="Default TemplateCode (SMS_...) when the template has none.")
    region_id: str = "cn-hangzhou"
    base_url: str = "https://dysmsapi.aliyuncs.com"


def percent_encode(s: str) -> str:
    """Alibaba Cloud's percent-encoding (RFC 3986 unreserved characters kept)."""
    return urllib.parse.quote(s, safe="-_.~")


def aliyun_signature(secret: str, params: Mapping[str, str], method: str = "GET") -> str:
    """The RPC signature (v1, HMAC-SHA1) of ``params``."""
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))
    to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()).decode()


_ALIYUN_RETRYABLE = {"isp.SYSTEM_ERROR", "ServiceUnavailable", "Throttling", "Throttling.User", "InternalError"}


def aliyun_phone(e164: str) -> str:
    """Mainland numbers without +86; others as country code + number (Aliyun's format)."""
    return e164[3:] if e164.startswith("+86") else e164.lstrip("+")


def aliyun_to_e164(number: str) -> str | None:
    """An Aliyun phone number (mainland without +86, others with the country code) in E.164."""
    digits = number.strip().lstrip("+")
    if len(digits) == 11 and digits.startswith("1"):
        digits = "86" + digits
    return normalize_phone("+" + digits)


@register
class AliyunSms(SmsChannel):
    provider = "aliyun"
    config_model = AliyunConfig
    secret_fields = ("access_key_secret",)
    optional_secret_fields = ("receipt_token",)
    uses_provider_template = True
    config: AliyunConfig

    def params_for(self, message: OutboundMessage, *, nonce: str | None = None,
                   timestamp: str | None = None) -> dict[str, str]:
        """The signed query parameters of a SendSms call."""
        cfg = self.config
        code = message.metadata.get("provider_template") or cfg.template_code
        params = {
            "AccessKeyId": cfg.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "OutId": message.message_id,
            "PhoneNumbers": aliyun_phone(message.to),
            "RegionId": cfg.region_id,
            "SignName": cfg.sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": nonce or uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "TemplateCode": str(code or ""),
            "TemplateParam": json.dumps(message.params, ensure_ascii=False, separators=(",", ":")),
            "Timestamp": timestamp or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
        }
        params["Signature"] = aliyun_signature(self.secrets["access_key_secret"], params)
        return params

    def send(self, message: OutboundMessage) -> SendResult:
        if not (message.metadata.get("provider_template") or self.config.template_code):
            return SendResult.failed("no Aliyun TemplateCode: set the template's provider_template")
        r = self.request("GET", self.config.base_url.rstrip("/") + "/", params=self.params_for(message))
        if isinstance(r, SendResult):
            return r
        body = _json(r)
        code = str(body.get("Code", ""))
        if r.status_code == 200 and code == "OK":
            return SendResult.sent(str(body.get("BizId")), request_id=body.get("RequestId"))
        return SendResult.failed(f"Aliyun {code or r.status_code}: {body.get('Message', r.text)}",
                                 retryable=code in _ALIYUN_RETRYABLE or http_status_retryable(r.status_code))

    def parse_receipts(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Receipt]:
        token = self.secrets.get("receipt_token")
        if not token:  # Aliyun's push is not signed: without the token anyone could forge a report or a 退订 reply
            raise InvalidInput("set secrets.receipt_token and put ?token=<it> in Aliyun's push URL to receive "
                               "SMS reports and replies (the push is not signed)", field="secrets.receipt_token")
        if not hmac.compare_digest(query.get("token", ""), token):
            raise Unauthorized("the Aliyun push URL's token does not match secrets.receipt_token")
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput("an Aliyun SMS report is a JSON list", field="body") from None
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise InvalidInput("an Aliyun SMS report is a JSON list of objects", field="body")
        out = []
        for it in items:
            if "content" in it and "success" not in it:  # SmsUp: a reply from the customer
                out.append(Receipt("replied", text=str(it["content"]), from_address=aliyun_to_e164(
                    str(it.get("phone_number", "")))))
                continue
            ok = it.get("success") in (True, "true")
            out.append(Receipt("delivered" if ok else "failed", message_id=it.get("out_id") or None,
                               provider_message_id=it.get("biz_id"),
                               reason=None if ok else f"{it.get('err_code')}: {it.get('err_msg')}"))
        return out


# -- a generic HTTP JSON gateway --------------------------------------------------------------------
class GenericSmsConfig(ChannelConfig):
    url: str = Field(pattern=r"^https?://", description="The gateway's send URL.")
    receiver_deduplicates: bool = Field(
        False, description="The gateway drops a repeated Idempotency-Key, so a timed-out request may be retried.")


@register
class GenericSms(SmsChannel):
    provider = "generic"
    config_model = GenericSmsConfig
    secret_fields = ("signing_secret",)
    config: GenericSmsConfig

    def __init__(self, config: GenericSmsConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets, **kw)  # type: ignore[arg-type]
        self.deduplicates_by_message_id = config.receiver_deduplicates

    def send(self, message: OutboundMessage) -> SendResult:
        body = orjson.dumps({"message_id": message.message_id, "to": message.to, "text": message.text,
                             "params": message.params})
        t, sig = sign_payload(self.secrets["signing_secret"], body)
        r = self.request("POST", self.config.url, content=body, headers={
            "Content-Type": "application/json", "Idempotency-Key": message.message_id,
            "X-Goldkey-Signature": f"t={t},v1={sig}"})
        if isinstance(r, SendResult):
            return r
        if 200 <= r.status_code < 300:
            return SendResult.sent(str(_json(r).get("id") or message.message_id))
        return SendResult.failed(f"gateway answered {r.status_code}: {r.text[:300]}",
                                 retryable=http_status_retryable(r.status_code))

    def parse_receipts(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Receipt]:
        verify_signature(self.secrets["signing_secret"], body, headers.get("x-goldkey-signature"))
        return parse_generic_receipts(body)


def parse_generic_receipts(body: bytes) -> list[Receipt]:
    """``{"message_id"|"provider_message_id", "status", "reason"?, "text"?}`` or a list of them."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the receipt body is not JSON", field="body") from None
    out = []
    for i, it in enumerate(data if isinstance(data, list) else [data]):
        status = it.get("status") if isinstance(it, dict) else None
        if status not in ("delivered", "failed", "opened", "clicked", "replied", "unsubscribed"):
            raise InvalidInput("status must be delivered, failed, opened, clicked, replied or unsubscribed",
                               field="status", record=i)
        out.append(Receipt(status, message_id=it.get("message_id"), provider_message_id=it.get("provider_message_id"),
                           reason=it.get("reason"), text=it.get("text")))
    return out


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
