"""E-mail over SMTP (RFC 5321) with the standard library's ``smtplib``.

Messages are ``multipart/alternative`` (text and HTML, RFC 2046) built with ``email.message``,
carry ``Message-ID`` and ``X-Goldkey-Message-Id`` (so bounces can be matched), and the one-click
unsubscribe headers of RFC 2369 / RFC 8058 (``List-Unsubscribe`` + ``List-Unsubscribe-Post``),
which large mailbox providers require of bulk senders. Security: implicit TLS (``ssl``, port 465),
``starttls`` (587) or ``none`` (a local relay). One connection is kept open per channel and reused.

Login is one AUTH exchange with one mechanism, so a wrong password fails at once as "SMTP login
refused" (not retried: it will not get better). Failure classes: a 4xx reply (temporary) or a
refused connection is retried; a 5xx reply (permanent: unknown mailbox ...) is not; a connection
lost after the message data went out has an unknown outcome and is not retried, so a customer never
gets the mail twice.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Literal

from pydantic import Field

from goldkey.activate.channels.base import Channel, ChannelConfig, OutboundMessage, SendResult, register
from goldkey.core.errors import InvalidInput
from goldkey.identity.normalize import normalize_email


class EmailConfig(ChannelConfig):
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    auth: bool = Field(True, description="Log in with secrets.username / secrets.password.")
    auth_mechanism: Literal["auto", "PLAIN", "LOGIN", "CRAM-MD5"] = Field(
        "auto", description="SASL mechanism; auto takes the first of PLAIN, LOGIN, CRAM-MD5 the server offers.")
    from_address: str = Field(min_length=3, max_length=255)
    from_name: str = Field("", max_length=200)
    reply_to: str | None = None
    rate_per_second: float = Field(20.0, gt=0)


@register
class EmailChannel(Channel):
    """SMTP e-mail."""

    kind = "email"
    consent_channel = "email"
    address_type = "email"
    config_model = EmailConfig
    optional_secret_fields = ("username", "password")
    config: EmailConfig

    def __init__(self, config: EmailConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets)
        self._smtp: smtplib.SMTP | None = None
        self._lock = threading.Lock()

    @classmethod
    def check(cls, config: EmailConfig, secrets: dict[str, str]) -> None:  # type: ignore[override]
        if normalize_email(config.from_address) is None:
            raise InvalidInput(f"{config.from_address!r} is not an e-mail address", field="config.from_address")
        if config.auth:
            for k in ("username", "password"):
                if not secrets.get(k):
                    raise InvalidInput(f"an SMTP channel with auth needs the credential {k!r} "
                                       "(or set config.auth to false for a relay without login)", field=f"secrets.{k}")

    def test_address(self, to: str) -> str:
        addr = normalize_email(to)
        if addr is None:
            raise InvalidInput(f"{to!r} is not an e-mail address", field="to")
        return addr

    def build(self, message: OutboundMessage) -> EmailMessage:
        """The MIME message for ``message``."""
        cfg = self.config
        em = EmailMessage()
        em["From"] = formataddr((cfg.from_name, cfg.from_address)) if cfg.from_name else cfg.from_address
        em["To"] = message.to
        em["Subject"] = message.subject or ""
        em["Message-ID"] = make_msgid(idstring=message.message_id, domain=cfg.from_address.rsplit("@", 1)[-1])
        em["X-Goldkey-Message-Id"] = message.message_id
        if cfg.reply_to:
            em["Reply-To"] = cfg.reply_to
        if message.unsubscribe_url:
            em["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
            em["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        em.set_content(message.text)
        if message.html:
            em.add_alternative(message.html, subtype="html")
        return em

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        t = cfg.timeout_seconds
        smtp: smtplib.SMTP
        if cfg.security == "ssl":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=t, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=t)
            if cfg.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
        if cfg.auth:
            try:
                self._login(smtp)
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        """AUTH with one mechanism (RFC 4954). ``smtplib.login`` would try every advertised mechanism
        in turn after a refusal, and some servers never answer the second attempt: a wrong password
        then surfaced as a timeout instead of a refused login."""
        smtp.ehlo_or_helo_if_needed()
        if not smtp.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("the server offers no AUTH; set config.auth to false")
        offered = smtp.esmtp_features["auth"].upper().split()
        want = self.config.auth_mechanism
        mech = next((m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m in offered), None) if want == "auto" else want
        if mech is None or mech not in offered:
            raise smtplib.SMTPNotSupportedError(f"the server offers AUTH {' '.join(offered)}, not {mech or want}")
        smtp.user, smtp.password = self.secrets["username"], self.secrets["password"]
        method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login, "CRAM-MD5": smtp.auth_cram_md5}[mech]
        try:
            smtp.auth(mech, method, initial_response_ok=True)
        except (TimeoutError, smtplib.SMTPServerDisconnected) as exc:
            raise _NoLoginAnswer(f"the SMTP server did not answer the login (AUTH {mech}) within "
                                 f"{self.config.timeout_seconds:g} s: {exc}") from None

    def send(self, message: OutboundMessage) -> SendResult:
        em = self.build(message)
        with self._lock:
            if self._smtp is not None:
                try:  # a kept connection the server closed since: reconnect before any data goes out
                    self._smtp.noop()
                except (OSError, smtplib.SMTPException):
                    self._smtp = None
            try:
                if self._smtp is None:
                    self._smtp = self._connect()
            except smtplib.SMTPAuthenticationError as exc:
                return SendResult.failed(f"SMTP login refused: {exc.smtp_code} {_text(exc.smtp_error)}")
            except smtplib.SMTPNotSupportedError as exc:
                return SendResult.failed(f"SMTP login impossible: {exc}")
            except _NoLoginAnswer as exc:  # nothing was sent yet: safe to retry
                return SendResult.failed(str(exc), retryable=True)
            except (OSError, smtplib.SMTPException) as exc:
                self._smtp = None
                return SendResult.failed(f"could not connect to {self.config.host}:{self.config.port}: {exc}",
                                         retryable=True)
            try:
                refused = self._smtp.send_message(em)
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                return SendResult.failed(f"recipient refused: {code} {_text(text)}", retryable=400 <= code < 500)
            except smtplib.SMTPResponseException as exc:
                return SendResult.failed(f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}",
                                         retryable=400 <= exc.smtp_code < 500)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._smtp = None
                return SendResult.failed(f"connection lost while sending ({exc}); outcome unknown, not retried "
                                         "so the customer is never mailed twice", outcome_unknown=True)
        if refused:
            code, text = next(iter(refused.values()))
            return SendResult.failed(f"recipient refused: {code} {_text(text)}")
        return SendResult.sent(em["Message-ID"])

    def close(self) -> None:
        with self._lock:
            if self._smtp is not None:
                try:
                    self._smtp.quit()
                except (OSError, smtplib.SMTPException):
                    pass
                self._smtp = None


class _NoLoginAnswer(Exception):
    """The server left the AUTH command unanswered."""


def _text(b: bytes | str) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)
