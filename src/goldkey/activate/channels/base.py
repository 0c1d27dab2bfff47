"""The channel plugin contract: every way Goldkey reaches a customer implements ``Channel``.

One contract for all channels, in the manner of Datasette's ``hookspecs.py``: the built-in channels
(e-mail over SMTP, SMS provider adapters, WeChat template messages, app push, webhooks, call lists
and the demo's file sink) are written against it and registered with ``register``, exactly as a
third-party plugin would be. A channel

- declares its ``kind``, the consent channel it needs (``consent_channel``), the identifier it
  sends to (``address_type``), its config model and which config keys are secrets;
- validates its configuration at save time (``validate_config``: missing credentials, bad URLs and
  unknown template variables are refused there, never at send time);
- sends one rendered message (``send``) and answers with a ``SendResult`` that says whether a
  failure may be retried without risking a second delivery;
- prices a message (``cost_of``), states its provider rate limit (``rate_limit``) and parses the
  provider's delivery receipts (``parse_receipts``).

Retries, backoff, the message log, guardrails and events are the sender's job
(``goldkey.activate.sender``), so a channel only speaks its provider's protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from goldkey.core.errors import InvalidInput, Unauthorized, validated

ReceiptStatus = Literal["delivered", "failed", "opened", "clicked", "replied", "unsubscribed"]


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered message to one customer, as a channel sends it."""

    message_id: str  # Goldkey's id; adapters pass it to the provider (out-id / idempotency key)
    workspace_id: str
    profile_id: str
    to: str  # the address: e-mail, E.164 phone, WeChat OpenID, device token, or the profile id
    text: str
    subject: str | None = None
    html: str | None = None
    language: str = "zh"
    params: dict[str, str] = field(default_factory=dict)  # provider-template parameters (SMS, WeChat)
    url: str | None = None  # where a tap on the message leads (WeChat, push)
    unsubscribe_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # campaign / journey reference, purpose


@dataclass(frozen=True)
class SendResult:
    """What the provider answered.

    ``retryable`` means the provider certainly did not accept the message (connection refused,
    documented throttling or server errors), or that it de-duplicates by our message id, so trying
    again can never deliver twice. A timeout after the request went out is *not* retryable for a
    provider without de-duplication: the outcome is unknown and a retry might message the customer
    twice.
    """

    ok: bool
    provider_message_id: str | None = None
    reason: str | None = None
    retryable: bool = False
    cost: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def sent(cls, provider_message_id: str | None = None, **detail: Any) -> SendResult:
        return cls(True, provider_message_id, detail=detail)

    @classmethod
    def failed(cls, reason: str, *, retryable: bool = False, **detail: Any) -> SendResult:
        return cls(False, None, reason, retryable, detail=detail)


@dataclass(frozen=True)
class Receipt:
    """A provider's report about one message (delivery receipt, reply ...)."""

    status: ReceiptStatus
    message_id: str | None = None  # ours, when the provider echoes it
    provider_message_id: str | None = None
    at: datetime | None = None
    reason: str | None = None
    text: str | None = None  # a reply's text
    from_address: str | None = None  # who replied (inbound messages carry no message id)


@dataclass(frozen=True)
class RateLimit:
    """How fast the provider accepts messages: a token bucket of ``per_second`` with ``burst``."""

    per_second: float
    burst: int = 1


class ChannelConfig(BaseModel):
    """Settings every channel has. Subclasses add their provider's fields."""

    model_config = ConfigDict(extra="forbid")
    cost_per_message: float = Field(0.0, ge=0, description="Cost of one message (in `currency`).")
    currency: str = Field("CNY", min_length=3, max_length=3)
    rate_per_second: float = Field(50.0, gt=0, description="Most messages per second sent to the provider.")
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="Per-request timeout.")


class Channel(ABC):
    """A way to reach a customer. Subclasses set the class attributes and implement ``send``."""

    kind: ClassVar[str]
    provider: ClassVar[str] = ""
    # the consent / cap / suppression channel (govern.consent.CHANNELS) and the identifier type (or
    # "profile_id") a message goes to; class defaults that a configured instance may override
    consent_channel: str = ""
    address_type: str = ""
    config_model: ClassVar[type[ChannelConfig]] = ChannelConfig
    secret_fields: ClassVar[tuple[str, ...]] = ()  # required secrets
    optional_secret_fields: ClassVar[tuple[str, ...]] = ()
    # config fields naming a file on the server the channel writes: kept inside the workspace's
    # folder of the channel-files directory (``ChannelStore.save``)
    file_fields: ClassVar[tuple[str, ...]] = ()
    # the provider drops a repeated request with the same message id, so a timed-out request may be
    # retried without risking a second delivery (a class default; webhook-style channels set it per
    # instance from their ``receiver_deduplicates`` setting)
    deduplicates_by_message_id: bool = False
    # provider-side templates: the message is the provider template id + parameters, not our text
    uses_provider_template: ClassVar[bool] = False
    # a message that fails after every retry is kept as "dead" with its payload, for a re-drive
    dead_letter: ClassVar[bool] = False
    # sends wait on a provider (network): the sender runs them on its worker threads; a channel
    # that only writes locally says False and is sent to in the delivering thread
    concurrent_sends: ClassVar[bool] = True

    def __init__(self, config: ChannelConfig, secrets: Mapping[str, str], *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.secrets = dict(secrets)
        self._transport = transport
        self._http: httpx.Client | None = None

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: Mapping[str, Any], secrets: Mapping[str, str]) -> ChannelConfig:
        """Return the parsed config; raise InvalidInput naming the field (``config.<x>`` or
        ``secrets.<x>``) when a setting is wrong or a required credential is missing."""
        parsed = validated(cls.config_model, dict(config), prefix="config")
        allowed = set(cls.secret_fields) | set(cls.optional_secret_fields)
        for k in secrets:
            if k not in allowed:
                raise InvalidInput(f"unknown secret for a {cls.kind} channel; expected {sorted(allowed) or 'none'}",
                                   field=f"secrets.{k}")
        for k in cls.secret_fields:
            v = secrets.get(k)
            if not isinstance(v, str) or not v.strip():
                raise InvalidInput(f"a {cls.kind}/{cls.provider or cls.kind} channel needs the credential {k!r}",
                                   field=f"secrets.{k}")
        cls.check(parsed, secrets)
        return parsed

    @classmethod
    def check(cls, config: Any, secrets: Mapping[str, str]) -> None:
        """Cross-field checks of a subclass (raise InvalidInput); none by default."""
        return None

    # -- sending ---------------------------------------------------------------------------
    @abstractmethod
    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message; never raise for a provider failure (return ``SendResult.failed``)."""

    def cost_of(self, message: OutboundMessage) -> float:
        """The cost of ``message`` (default: the configured price per message)."""
        return self.config.cost_per_message

    def rate_limit(self) -> RateLimit:
        """The provider's rate limit as configured."""
        per = self.config.rate_per_second
        return RateLimit(per, max(1, int(per)))

    def parse_receipts(self, body: bytes, headers: Mapping[str, str],
                       query: Mapping[str, str]) -> list[Receipt]:
        """Parse a provider's receipt callback; raise Unauthorized when its signature is wrong and
        InvalidInput when the body is malformed. Channels without receipts refuse."""
        raise InvalidInput(f"{self.kind} channels do not receive delivery receipts", field="channel_id")

    def test_address(self, to: str) -> str:
        """Normalise an address typed by a user for a test send (raise InvalidInput)."""
        if not to.strip():
            raise InvalidInput("give the address to send the test message to", field="to")
        return to.strip()

    def close(self) -> None:
        """Release connections."""
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- helpers for HTTP providers ----------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.config.timeout_seconds, transport=self._transport)
        return self._http

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response | SendResult:
        """Make one HTTP request; a transport failure comes back as a ``SendResult`` that says
        whether a retry is safe (the request never left, or the provider de-duplicates)."""
        try:
            return self.http.request(method, url, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return SendResult.failed(f"could not connect to the provider: {exc}", retryable=True)
        except httpx.TimeoutException as exc:
            reason = f"provider timed out after {self.config.timeout_seconds:g} s ({type(exc).__name__})"
            if self.deduplicates_by_message_id:
                return SendResult.failed(reason, retryable=True)
            return SendResult.failed(reason + "; outcome unknown, not retried so the customer is never "
                                     "messaged twice", retryable=False, outcome_unknown=True)
        except httpx.HTTPError as exc:
            return SendResult.failed(f"HTTP error: {exc}", retryable=False)


def http_status_retryable(status: int) -> bool:
    """Throttling and server errors are worth retrying; other 4xx are our fault and are not."""
    return status == 429 or status >= 500


def hmac_sha256_hex(key: str, payload: bytes) -> str:
    return hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


def sign_payload(secret: str, body: bytes, timestamp: int | None = None) -> tuple[int, str]:
    """Goldkey's webhook signature: ``t=<unix seconds>`` and HMAC-SHA256 of ``"<t>." + body``
    (the scheme Stripe documents for its webhooks)."""
    t = int(time.time()) if timestamp is None else timestamp
    return t, hmac_sha256_hex(secret, f"{t}.".encode() + body)


def verify_signature(secret: str, body: bytes, header: str | None, *, tolerance: int = 300,
                     now: float | None = None) -> None:
    """Check a ``t=...,v1=...`` signature header made by ``sign_payload``; raise Unauthorized."""
    if not header:
        raise Unauthorized("missing signature header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
        sig = parts["v1"]
    except (KeyError, ValueError):
        raise Unauthorized("malformed signature header") from None
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise Unauthorized("signature timestamp outside the tolerance window")
    if not hmac.compare_digest(sig, sign_payload(secret, body, t)[1]):
        raise Unauthorized("signature does not match")


# -- the registry ------------------------------------------------------------------------------
_REGISTRY: dict[tuple[str, str], type[Channel]] = {}


def register(cls: type[Channel]) -> type[Channel]:
    """Register a channel class under (kind, provider); usable as a class decorator."""
    _REGISTRY[(cls.kind, cls.provider)] = cls
    return cls


def channel_class(kind: str, provider: str = "") -> type[Channel]:
    """The registered class for ``kind`` / ``provider``; raise InvalidInput listing what exists."""
    from goldkey.activate import channels as _builtin  # noqa: F401 - registers the built-in channels

    cls = _REGISTRY.get((kind, provider or ""))
    if cls is None and not provider:
        found = [c for (k, _), c in _REGISTRY.items() if k == kind]
        if len(found) == 1:
            cls = found[0]
    if cls is None:
        known = ", ".join(f"{k}/{p}" if p else k for k, p in sorted(_REGISTRY))
        if any(k == kind for k, _ in _REGISTRY):
            raise InvalidInput(f"unknown provider {provider!r} for {kind}; known: {known}", field="provider")
        raise InvalidInput(f"unknown channel kind {kind!r}; known: {known}", field="kind")
    return cls


def registered() -> list[tuple[str, str]]:
    """Every registered (kind, provider)."""
    from goldkey.activate import channels as _builtin  # noqa: F401

    return sorted(_REGISTRY)
