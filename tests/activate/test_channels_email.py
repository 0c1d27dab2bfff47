"""E-mail over SMTP against a real aiosmtpd server: a wrong password fails at once as a refused
login (one AUTH exchange, no 10 s timeout, no retry), the right one delivers; a server that never
answers the login is reported as such."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from goldkey.activate.channels import OutboundMessage, channel_class


@pytest.fixture
def smtp_server() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"auth": [], "mail": []}

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            state["mail"].append(envelope)
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        state["auth"].append((mechanism, data.login))
        # handled=False: aiosmtpd itself answers a refusal with 535 (its default, handled=True, sends
        # nothing and leaves the client waiting -- what made a wrong password look like a timeout)
        return AuthResult(success=data.login == b"gk" and data.password == b"pw", handled=False)

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=auth, auth_require_tls=False)
    ctl.start()
    state["port"] = port
    try:
        yield state
    finally:
        ctl.stop()


def _channel(port: int, password: str, **cfg: Any) -> Any:
    cls = channel_class("email")
    secrets = {"username": "gk", "password": password}
    config = {"host": "127.0.0.1", "port": port, "security": "none", "from_address": "news@brand.example",
              "timeout_seconds": 60, **cfg}
    return cls(cls.validate_config(config, secrets), secrets)


def _msg() -> OutboundMessage:
    return OutboundMessage("out_mail_1", "ws", "prf_1", "c0@example.com", "你好", subject="新品")


def test_wrong_password_is_a_refused_login_not_a_timeout(smtp_server: dict[str, Any]) -> None:
    ch = _channel(smtp_server["port"], "wrong")
    res = ch.send(_msg())
    ch.close()
    # with a 60 s timeout configured, a timeout would say so; the refusal comes from the server's 535
    assert not res.ok and not res.retryable, res
    assert res.reason is not None and res.reason.startswith("SMTP login refused: 535"), res.reason
    assert smtp_server["auth"] == [("PLAIN", b"gk")]  # one AUTH exchange, not every mechanism in turn
    assert smtp_server["mail"] == []


def test_right_password_delivers_and_mechanism_can_be_chosen(smtp_server: dict[str, Any]) -> None:
    ch = _channel(smtp_server["port"], "pw", auth_mechanism="LOGIN")
    res = ch.send(_msg())
    ch.close()
    assert res.ok, res
    assert smtp_server["auth"] == [("LOGIN", b"gk")]
    env = smtp_server["mail"][0]
    assert env.mail_from == "news@brand.example" and env.rcpt_tos == ["c0@example.com"]
    assert b"X-Goldkey-Message-Id: out_mail_1" in env.content
    bad = _channel(smtp_server["port"], "pw", auth_mechanism="CRAM-MD5").send(_msg())
    assert not bad.ok and "not CRAM-MD5" in (bad.reason or "")


def test_a_server_silent_after_auth_is_reported_as_no_answer_to_the_login() -> None:
    silent: dict[str, Any] = {"auth": []}

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        silent["auth"].append(mechanism)
        return AuthResult(success=False)  # handled=True: aiosmtpd sends no reply at all

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    ctl = Controller(_Sink(), hostname="127.0.0.1", port=port, authenticator=auth, auth_require_tls=False)
    ctl.start()
    try:
        res = _channel(port, "pw", timeout_seconds=0.5).send(_msg())
    finally:
        ctl.stop()
    assert not res.ok and res.retryable and "did not answer the login" in (res.reason or ""), res
    assert silent["auth"] == ["PLAIN"]


class _Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"
