"""Every HTTP provider adapter against a local HTTP server started by the test.

The server checks each request independently of our code -- the URL and body format, and the
signature recomputed here from the provider's documented algorithm (Twilio's Basic auth, Alibaba
Cloud's RPC signature as its Java sample builds it, JPush's Basic auth, WeChat's access token, the
HMAC of Goldkey's webhooks) -- and answers the provider's documented success and error bodies.
Then the sender's policy: retries with backoff for retryable failures, none for the others, never
a second request after a timeout whose outcome is unknown, dead letters listed and re-driven by
the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from goldkey.activate.channels import OutboundMessage, channel_class
from goldkey.activate.sender import Sender, SendRequest
from goldkey.activate.templates import compile_for_workspace
from goldkey.govern.consent import set_consent
from goldkey.store.operational import messages, profiles


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


Reply = tuple[int, Any]  # status, JSON body (or bytes)


@dataclass
class Provider:
    """A local provider: ``handle`` answers each request; every request is recorded."""

    handle: Callable[[Req], Reply]
    requests: list[Req] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def provider() -> Iterator[Callable[[Callable[[Req], Reply]], Provider]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handle: Callable[[Req], Reply]) -> Provider:
        prov = Provider(handle)

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Req(self.command, parsed.path, dict(urllib.parse.parse_qsl(parsed.query)),
                          {k.lower(): v for k, v in self.headers.items()}, body)
                prov.requests.append(req)
                status, out = prov.handle(req)
                data = out if isinstance(out, bytes) else json.dumps(out, ensure_ascii=False).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        prov.url = f"http://127.0.0.1:{srv.server_address[1]}"
        return prov

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _channel(kind: str, provider: str, config: dict[str, Any], secrets: dict[str, str]) -> Any:
    cls = channel_class(kind, provider)
    return cls(cls.validate_config(config, secrets), secrets)


def _msg(to: str, text: str = "您好，新品上市", **kw: Any) -> OutboundMessage:
    return OutboundMessage(kw.pop("message_id", "out_test_1"), "ws_x", "prf_1", to, text, **kw)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- Twilio ------------------------------------------------------------------------------------------
SID, TOKEN = "AC" + "a1" * 16, "twilio-auth-token"


def twilio_server(req: Req) -> Reply:
    """Twilio's Messages resource: Basic auth with the Account SID, a form body, 201 or 400/21211."""
    if req.path != f"/2010-04-01/Accounts/{SID}/Messages.json" or req.method != "POST":
        return 404, {"code": 20404, "message": "The requested resource was not found", "status": 404}
    if req.headers.get("authorization") != _basic(SID, TOKEN):
        return 401, {"code": 20003, "message": "Authenticate", "status": 401}
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    form = req.form()
    if not form.get("To", "").startswith("+1"):
        return 400, {"code": 21211, "message": f"The 'To' number {form.get('To')} is not a valid phone number.",
                     "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
    return 201, {"sid": "SM" + "0" * 31 + str(len(req.body) % 10), "status": "queued", "to": form["To"],
                 "from": form["From"], "body": form["Body"], "account_sid": SID}


def test_twilio_request_format_auth_and_errors(provider: Any) -> None:
    prov = provider(twilio_server)
    ch = _channel("sms", "twilio", {"account_sid": SID, "from_number": "+15005550006", "base_url": prov.url,
                                    "status_callback_url": "https://gk.example/api/v1/receipts/chn_1"},
                  {"auth_token": TOKEN})
    ok = ch.send(_msg("+14155550100", "Hello from Goldkey"))
    assert ok.ok and ok.provider_message_id.startswith("SM"), ok
    form = prov.requests[0].form()
    assert form == {"To": "+14155550100", "From": "+15005550006", "Body": "Hello from Goldkey",
                    "StatusCallback": "https://gk.example/api/v1/receipts/chn_1"}
    bad = ch.send(_msg("+8613800138000"))
    assert not bad.ok and not bad.retryable and "21211" in (bad.reason or ""), bad
    wrong = _channel("sms", "twilio", {"account_sid": SID, "from_number": "+15005550006", "base_url": prov.url},
                     {"auth_token": "not-the-token"}).send(_msg("+14155550100"))
    assert not wrong.ok and not wrong.retryable and "20003" in (wrong.reason or "")


# -- Aliyun ------------------------------------------------------------------------------------------
AK_ID, AK_SECRET = "LTAI5tTestKeyId", "test-access-key-secret"


def aliyun_signature_as_documented(secret: str, params: dict[str, str]) -> str:
    """Alibaba Cloud's RPC signature, as its documentation's Java sample builds it: URLEncoder
    (application/x-www-form-urlencoded) then '+' -> %20, '*' -> %2A, %7E -> '~'."""
    def enc(v: str) -> str:
        return urllib.parse.quote_plus(v, safe="", encoding="utf-8").replace("+", "%20").replace(
            "*", "%2A").replace("%7E", "~")

    canonical = "&".join(f"{enc(k)}={enc(params[k])}" for k in sorted(params))
    string_to_sign = "GET&" + enc("/") + "&" + enc(canonical)
    return base64.b64encode(hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()).decode()


def aliyun_server(req: Req) -> Reply:
    q = dict(req.query)
    sig = q.pop("Signature", "")
    if not hmac.compare_digest(sig, aliyun_signature_as_documented(AK_SECRET, q)):
        return 400, {"Code": "SignatureDoesNotMatch", "Message": "Specified signature is not matched with our "
                     "calculation.", "RequestId": "8906582E-6722"}
    assert q["Action"] == "SendSms" and q["Version"] == "2017-05-25" and q["SignatureMethod"] == "HMAC-SHA1"
    assert q["SignatureVersion"] == "1.0" and q["Format"] == "JSON" and q["AccessKeyId"] == AK_ID
    if q["PhoneNumbers"] == "13900000000":
        return 200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发分钟级流控Permits:1",
                     "RequestId": "A2B1-LIMIT"}
    return 200, {"Code": "OK", "Message": "OK", "BizId": "900619746936498440^0", "RequestId": "F655A8D5-B967"}


def test_aliyun_signature_format_and_flow_control(provider: Any) -> None:
    prov = provider(aliyun_server)
    ch = _channel("sms", "aliyun", {"access_key_id": AK_ID, "sign_name": "金钥商城", "base_url": prov.url},
                  {"access_key_secret": AK_SECRET})
    msg = _msg("+8613800138000", params={"name": "张三 *~", "code": "A+B/1"},
               metadata={"provider_template": "SMS_154950909"})
    ok = ch.send(msg)
    assert ok.ok and ok.provider_message_id == "900619746936498440^0", ok
    q = prov.requests[0].query
    assert q["PhoneNumbers"] == "13800138000" and q["SignName"] == "金钥商城" and q["OutId"] == "out_test_1"
    assert json.loads(q["TemplateParam"]) == {"name": "张三 *~", "code": "A+B/1"}
    assert q["TemplateCode"] == "SMS_154950909"
    limited = ch.send(_msg("+8613900000000", metadata={"provider_template": "SMS_154950909"}))
    assert not limited.ok and not limited.retryable and "isv.BUSINESS_LIMIT_CONTROL" in (limited.reason or "")
    forged = _channel("sms", "aliyun", {"access_key_id": AK_ID, "sign_name": "金钥商城", "base_url": prov.url},
                      {"access_key_secret": "wrong"}).send(msg)
    assert not forged.ok and "SignatureDoesNotMatch" in (forged.reason or "")
    assert "TemplateCode" in (ch.send(_msg("+8613800138000")).reason or "")  # no template: refused before sending
    assert len(prov.requests) == 3


# -- generic HMAC gateway ------------------------------------------------------------------------------
def test_generic_gateway_hmac_and_idempotency_key(provider: Any) -> None:
    secret = "gateway-secret"

    def gateway(req: Req) -> Reply:
        t, v1 = (dict(p.split("=", 1) for p in req.headers["x-goldkey-signature"].split(",")) [k]
                 for k in ("t", "v1"))
        want = hmac.new(secret.encode(), f"{t}.".encode() + req.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(v1, want) or abs(time.time() - int(t)) > 300:
            return 401, {"error": "bad signature"}
        if req.json()["to"] == "+8613000000000":
            return 422, {"error": "number blocked"}
        return 200, {"id": "gw-" + req.headers["idempotency-key"]}

    prov = provider(gateway)
    ch = _channel("sms", "generic", {"url": prov.url + "/send"}, {"signing_secret": secret})
    ok = ch.send(_msg("+8613800138000", params={"k": "v"}))
    assert ok.ok and ok.provider_message_id == "gw-out_test_1"
    assert prov.requests[0].json() == {"message_id": "out_test_1", "to": "+8613800138000", "text": "您好，新品上市",
                                       "params": {"k": "v"}}
    assert prov.requests[0].headers["idempotency-key"] == "out_test_1"
    bad = ch.send(_msg("+8613000000000"))
    assert not bad.ok and not bad.retryable and "422" in (bad.reason or "")
    forged = _channel("sms", "generic", {"url": prov.url + "/send"}, {"signing_secret": "other"}).send(_msg("+1"))
    assert not forged.ok and "401" in (forged.reason or "")


# -- WeChat ---------------------------------------------------------------------------------------------
APPID, APPSECRET = "wx1234567890abcdef", "wechat-app-secret"


def test_wechat_template_token_refresh_and_unsubscribed_user(provider: Any) -> None:
    state: dict[str, Any] = {"issued": 0, "valid": "", "reject_all": False}

    def wechat(req: Req) -> Reply:
        if req.path == "/cgi-bin/token":
            if req.query != {"grant_type": "client_credential", "appid": APPID, "secret": APPSECRET}:
                return 200, {"errcode": 40013, "errmsg": "invalid appid"}
            state["issued"] += 1
            state["valid"] = f"TOKEN{state['issued']}"
            return 200, {"access_token": state["valid"], "expires_in": 7200}
        assert req.path == "/cgi-bin/message/template/send" and req.method == "POST"
        if req.query.get("access_token") != state["valid"] or state["reject_all"]:
            return 200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        body = req.json()
        assert set(body) >= {"touser", "template_id", "client_msg_id", "data"}
        if body["touser"] == "o-unsubscribed":
            return 200, {"errcode": 43004, "errmsg": "require subscribe hint"}
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": 200228332}

    prov = provider(wechat)
    ch = _channel("wechat", "template", {"appid": APPID, "base_url": prov.url}, {"appsecret": APPSECRET})
    msg = _msg("oXYZ-openid-1", params={"first": "您的订单已发货", "keyword1": "SF123"}, url="https://shop.example/o/1",
               metadata={"provider_template": "TPL_shipping"})
    ok = ch.send(msg)
    assert ok.ok and ok.provider_message_id == "200228332"
    sent = prov.requests[-1].json()
    assert sent == {"touser": "oXYZ-openid-1", "template_id": "TPL_shipping", "client_msg_id": "out_test_1",
                    "url": "https://shop.example/o/1",
                    "data": {"first": {"value": "您的订单已发货"}, "keyword1": {"value": "SF123"}}}
    assert ch.send(msg).ok and state["issued"] == 1  # the token is cached
    state["valid"] = "REVOKED-ELSEWHERE"  # another system fetched a new token: ours is now invalid (40001)
    n = len(prov.requests)
    again = ch.send(msg)
    assert again.ok and state["issued"] == 2
    assert [r.path for r in prov.requests[n:]] == ["/cgi-bin/message/template/send", "/cgi-bin/token",
                                                   "/cgi-bin/message/template/send"]
    n = len(prov.requests)
    unsub = ch.send(_msg("o-unsubscribed", params={"first": "x"}, metadata={"provider_template": "TPL_shipping"}))
    assert not unsub.ok and not unsub.retryable and "43004" in (unsub.reason or "")
    assert len(prov.requests) == n + 1  # no retry, no token refresh
    state["reject_all"] = True  # tokens that never work: refreshed once, then the send fails
    n = len(prov.requests)
    dead = ch.send(msg)
    assert not dead.ok and "40001" in (dead.reason or "") and len(prov.requests) == n + 3


def test_wechat_customer_service_message(provider: Any) -> None:
    def wechat(req: Req) -> Reply:
        if req.path == "/cgi-bin/token":
            return 200, {"access_token": "T1", "expires_in": 7200}
        assert req.path == "/cgi-bin/message/custom/send" and req.query["access_token"] == "T1"
        if req.json()["touser"] == "o-silent":
            return 200, {"errcode": 45015, "errmsg": "response out of time limit or subscription is canceled"}
        return 200, {"errcode": 0, "errmsg": "ok"}

    prov = provider(wechat)
    ch = _channel("wechat", "custom", {"appid": APPID, "base_url": prov.url}, {"appsecret": APPSECRET})
    assert ch.send(_msg("oXYZ-openid-1", "会员日，全场九折")).ok
    assert prov.requests[-1].json() == {"touser": "oXYZ-openid-1", "msgtype": "text",
                                        "text": {"content": "会员日，全场九折"}}
    late = ch.send(_msg("o-silent"))
    assert not late.ok and not late.retryable and "45015" in (late.reason or "")


# -- JPush ---------------------------------------------------------------------------------------------
def test_jpush_basic_auth_payload_and_errors(provider: Any) -> None:
    def jpush(req: Req) -> Reply:
        if req.headers.get("authorization") != _basic("appkey123", "master-secret"):
            return 401, {"error": {"code": 1004, "message": "Authen failed"}}
        body = req.json()
        if body["audience"] == {"registration_id": ["unknown-device"]}:
            return 400, {"error": {"code": 1011, "message": "cannot find user by this audience"}}
        return 200, {"sendno": str(body["options"]["sendno"]), "msg_id": "54043195528475"}

    prov = provider(jpush)
    ch = _channel("push", "jpush", {"app_key": "appkey123", "base_url": prov.url}, {"master_secret": "master-secret"})
    ok = ch.send(_msg("1a0018970a6bdc", "新品到货", subject="金钥", url="gk://p/1"))
    assert ok.ok and ok.provider_message_id == "54043195528475"
    body = prov.requests[0].json()
    assert prov.requests[0].path == "/v3/push" and body["platform"] == "all"
    assert body["notification"]["android"] == {"alert": "新品到货", "title": "金钥",
                                               "extras": {"goldkey_message_id": "out_test_1", "url": "gk://p/1"}}
    bad = ch.send(_msg("unknown-device"))
    assert not bad.ok and not bad.retryable and "1011" in (bad.reason or "")


# -- the sender's policy: retries, timeouts, dead letters --------------------------------------------------
def _customers(env: Any, n: int, channel: str) -> list[str]:
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"name": f"客户{i}", "phone": f"+1415555{i:04d}"}}
             for i in range(n)]
    assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    with env.gk.engine.connect() as c:
        pids = list(c.execute(sa.select(profiles.c.profile_id).where(profiles.c.workspace_id == env.ws.workspace_id)
                              .order_by(profiles.c.profile_id)).scalars())
    for p in pids:
        set_consent(env.gk.engine, env.ws.workspace_id, p, channel, "granted")
    return pids


NOON_SH = __import__("datetime").datetime(2026, 3, 4, 4, 0, tzinfo=__import__("datetime").UTC)


def _send(env: Any, sender: Sender, cid: str, pids: list[str], key: str) -> Any:
    tpl = compile_for_workspace(env.gk.engine, env.ws.workspace_id, {"variants": {"zh": {
        "text": "{{ attributes.name }}，新品上市"}}})
    return sender.send(SendRequest(env.ws.workspace_id, cid, tpl, pids, key, now=NOON_SH))


def _rows(env: Any) -> dict[str, Any]:
    with env.gk.engine.connect() as c:
        return {r.profile_id: r for r in c.execute(sa.select(messages))}


def test_webhook_retries_with_backoff_then_dead_letter_and_redrive(env: Any, provider: Any) -> None:
    secret = "hook-secret"
    plan: dict[str, list[int]] = {}  # message id -> statuses still to answer

    def hook(req: Req) -> Reply:
        t, v1 = (dict(p.split("=", 1) for p in req.headers["x-goldkey-signature"].split(","))[k] for k in ("t", "v1"))
        assert hmac.compare_digest(v1, hmac.new(secret.encode(), f"{t}.".encode() + req.body,
                                                hashlib.sha256).hexdigest())
        body = req.json()
        assert req.headers["idempotency-key"] == body["message_id"]
        todo = plan.setdefault(body["profile_id"], [])
        return (todo.pop(0), {"ok": False}) if todo else (200, {"ok": True})

    prov = provider(hook)
    pids = _customers(env, 3, "push")
    slept: list[float] = []
    sender = Sender.from_goldkey(env.gk, sleep=slept.append, max_attempts=4, backoff_base=0.5)
    cid = sender.channels.save(env.ws.workspace_id, name="hook", kind="webhook", config={"url": prov.url + "/in"},
                               secrets={"signing_secret": secret})["channel_id"]
    plan[pids[0]] = [503, 502]  # recovers on the third attempt
    plan[pids[1]] = [500, 503, 429, 503]  # never recovers: dead after 4 attempts
    plan[pids[2]] = [400]  # our fault: not retried
    rep = _send(env, sender, cid, pids, "k1")
    assert (rep.delivery.sent, rep.delivery.dead) == (1, 2), rep.delivery
    per = {p: sum(r.json()["profile_id"] == p for r in prov.requests) for p in pids}
    assert per == {pids[0]: 3, pids[1]: 4, pids[2]: 1}
    # backoff: exponential with equal jitter, base 0.5 s: attempt n waits in [d/2, d] with d = 0.5 * 2^(n-1)
    backoffs = [s for s in slept if s >= 0.2]
    assert len(backoffs) == 2 + 3
    for s in backoffs:
        assert any(d / 2 <= s <= d for d in (0.5, 1.0, 2.0)), backoffs
    rows = _rows(env)
    assert rows[pids[0]].status == "sent" and rows[pids[0]].attempts == 3
    assert rows[pids[1]].status == "dead" and "gave up after 4 attempts" in rows[pids[1]].reason
    assert rows[pids[2]].status == "dead" and rows[pids[2]].attempts == 1 and "400" in rows[pids[2]].reason
    # the dead letters through the API
    r = env.client.get("/api/v1/messages", params={"status": "dead"}, headers=env.admin_auth())
    assert r.status_code == 200 and {m["profile_id"] for m in r.json()["messages"]} == {pids[1], pids[2]}
    one = env.client.get(f"/api/v1/messages/{rows[pids[1]].message_id}", headers=env.admin_auth()).json()
    assert one["payload"]["text"] == "客户1，新品上市" and one["reason"].startswith("http")
    assert env.client.get("/api/v1/messages", params={"status": "lost"}, headers=env.admin_auth()).json()[
        "field"] == "status"
    # re-drive once the receiver is fixed: sent exactly once more
    n = len(prov.requests)
    r = env.client.post("/api/v1/messages/redrive", json={"message_ids": [rows[pids[1]].message_id]},
                        headers=env.admin_auth())
    assert r.status_code == 200 and r.json()["sent"] == 1, r.text
    assert len(prov.requests) == n + 1 and _rows(env)[pids[1]].status == "sent"
    events = env.gk.analytical.query("SELECT event, count(*) FROM events WHERE event LIKE 'Message%' GROUP BY 1")
    assert dict(events) == {"Message Sent": 2, "Message Failed": 2}
    # a customer who opted out after the message died is not sent it on a re-drive (before, the
    # re-drive skipped the send-time re-check every other delivery makes)
    set_consent(env.gk.engine, env.ws.workspace_id, pids[2], "push", "denied")
    n = len(prov.requests)
    r = env.client.post("/api/v1/messages/redrive", json={"message_ids": [rows[pids[2]].message_id]},
                        headers=env.admin_auth())
    assert r.status_code == 200 and (r.json()["sent"], r.json()["failed"]) == (0, 1), r.text
    assert len(prov.requests) == n
    row = _rows(env)[pids[2]]
    assert (row.status, row.reason) == ("failed", "not sent: opted out of push/marketing after it was queued")


def test_timeout_after_the_request_went_out_is_never_sent_twice(env: Any, provider: Any) -> None:
    def slow(req: Req) -> Reply:
        time.sleep(1.2)
        return twilio_server(req)

    prov = provider(slow)
    pids = _customers(env, 2, "sms")
    sender = Sender.from_goldkey(env.gk, sleep=lambda s: None, max_attempts=4)
    cid = sender.channels.save(env.ws.workspace_id, name="tw", kind="sms", provider="twilio", config={
        "account_sid": SID, "from_number": "+15005550006", "base_url": prov.url, "timeout_seconds": 0.3},
        secrets={"auth_token": TOKEN})["channel_id"]
    rep = _send(env, sender, cid, pids, "k1")
    assert rep.delivery.failed == 2 and rep.delivery.sent == 0
    time.sleep(1.5)  # let the slow handlers finish: they must not have been called again
    assert len(prov.requests) == 2
    for row in _rows(env).values():
        assert row.status == "failed" and row.attempts == 1 and "outcome unknown" in row.reason
    # sending the same message again is refused by de-duplication, not attempted
    assert _send(env, sender, cid, pids, "k1").delivery.sent == 0 and len(prov.requests) == 2


def test_timeouts_are_retried_only_for_a_receiver_that_drops_repeats(env: Any, provider: Any) -> None:
    calls: dict[str, int] = {}

    def hook(req: Req) -> Reply:
        key = req.headers["idempotency-key"]
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            time.sleep(1.0)  # the first attempt times out
        return 200, {"ok": True}

    prov = provider(hook)
    pids = _customers(env, 1, "push")
    sender = Sender.from_goldkey(env.gk, sleep=lambda s: None, max_attempts=3)
    plain = sender.channels.save(env.ws.workspace_id, name="plain", kind="webhook", secrets={"signing_secret": "s"},
                                 config={"url": prov.url, "timeout_seconds": 0.3})["channel_id"]
    dedup = sender.channels.save(env.ws.workspace_id, name="dedup", kind="webhook", secrets={"signing_secret": "s"},
                                 config={"url": prov.url, "timeout_seconds": 0.3,
                                         "receiver_deduplicates": True})["channel_id"]
    assert _send(env, sender, plain, pids, "a").delivery.dead == 1
    assert _send(env, sender, dedup, pids, "b").delivery.sent == 1
    time.sleep(1.2)
    assert sorted(calls.values()) == [1, 2]  # the declared de-duplicating receiver saw the same key twice


def test_refused_connection_is_retried_then_failed_with_the_reason(env: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    pids = _customers(env, 1, "sms")
    slept: list[float] = []
    sender = Sender.from_goldkey(env.gk, sleep=slept.append, max_attempts=3, backoff_base=0.1)
    cid = sender.channels.save(env.ws.workspace_id, name="gw", kind="sms", provider="generic",
                               config={"url": f"http://127.0.0.1:{port}/send"},
                               secrets={"signing_secret": "s"})["channel_id"]
    rep = _send(env, sender, cid, pids, "k")
    assert rep.delivery.failed == 1
    row = _rows(env)[pids[0]]
    assert row.attempts == 3 and "could not connect" in row.reason and "gave up after 3 attempts" in row.reason
    assert len([s for s in slept if s >= 0.05]) == 2
