"""Provider receipts end to end: a Twilio status callback and an Aliyun report (signature / token
checked, computed here from the documented algorithms) become ``Message Delivered`` / ``Message
Failed`` events on the message's profile; a reply "TD" / "退订" / "STOP" unsubscribes the customer
and withdraws the consent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from goldkey.activate.channels.base import Receipt
from goldkey.activate.guardrails import Guardrails, SendSpec
from goldkey.activate.receipts import is_opt_out
from goldkey.govern.consent import set_consent
from goldkey.store.operational import messages, profiles

NOON_SH = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)
SID, TOKEN = "AC" + "b2" * 16, "twilio-token"
CALLBACK = "https://gk.example/api/v1/receipts/"


def _customers(env: Any, phones: list[str]) -> list[str]:
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"phone": p}} for i, p in enumerate(phones)]
    assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    with env.gk.engine.connect() as c:
        return list(c.execute(sa.select(profiles.c.profile_id).where(profiles.c.workspace_id == env.ws.workspace_id)
                              .order_by(profiles.c.profile_id)).scalars())


def _sent(env: Any, cid: str, pids: list[str], pmids: list[str]) -> dict[str, str]:
    """Reserve a message per customer and mark it sent with the provider's id (as the sender does)."""
    ws = env.ws.workspace_id
    for p in pids:
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    res = Guardrails(env.gk.engine).reserve(ws, "sms", "marketing", pids, "promo", SendSpec(cid), NOON_SH)
    with env.gk.engine.begin() as c:
        for p, pm in zip(pids, pmids, strict=True):
            c.execute(messages.update().where(messages.c.message_id == res.message_ids[p]).values(
                status="sent", provider_message_id=pm, sent_at=NOON_SH))
    return res.message_ids


def _events(env: Any) -> list[tuple[str, str, dict[str, Any]]]:
    rows = env.gk.analytical.query("SELECT profile_id, event, properties FROM events WHERE source = 'activate' "
                                   "ORDER BY received_at")
    return [(p, e, json.loads(props) if isinstance(props, str) else props) for p, e, props in rows]


def _twilio_sig(url: str, params: dict[str, str]) -> str:
    """Twilio's documented scheme: the full URL, then each POST parameter name and value, sorted by
    name, HMAC-SHA1 with the auth token, Base64."""
    s = url
    for k in sorted(params):
        s += k + params[k]
    return base64.b64encode(hmac.new(TOKEN.encode(), s.encode("utf-8"), hashlib.sha1).digest()).decode()


def test_twilio_status_callbacks_and_a_stop_reply(env: Any) -> None:
    ws, h = env.ws.workspace_id, env.admin_auth()
    pids = _customers(env, ["+14155550100", "+14155550101"])
    ch = env.client.post("/api/v1/channels", headers=h, json={
        "name": "tw", "kind": "sms", "provider": "twilio", "secrets": {"auth_token": TOKEN},
        "config": {"account_sid": SID, "from_number": "+15005550006", "status_callback_url": CALLBACK + "x"}})
    cid = ch.json()["channel_id"]
    url = CALLBACK + cid
    env.gk.sender.channels.save(ws, name="tw", kind="sms", provider="twilio", channel_id=cid, config={
        "account_sid": SID, "from_number": "+15005550006", "status_callback_url": url})
    mids = _sent(env, cid, pids, ["SM" + "1" * 32, "SM" + "2" * 32])

    def post(params: dict[str, str], sig: str | None = None) -> Any:
        return env.client.post(f"/api/v1/receipts/{cid}", content=urllib.parse.urlencode(params),
                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "X-Twilio-Signature": sig or _twilio_sig(url, params)})

    delivered = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "AccountSid": SID,
                 "To": "+14155550100", "From": "+15005550006"}
    assert post(delivered, sig="forged").status_code == 401
    r = post(delivered)
    assert r.status_code == 200 and r.json()["matched"] == 1, r.text
    assert post(delivered).json()["matched"] == 1  # a repeat: matched, but no second event
    failed = {"MessageSid": "SM" + "2" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003",
              "AccountSid": SID}
    assert post(failed).json()["matched"] == 1
    assert post({"MessageSid": "SM" + "2" * 32, "MessageStatus": "sent", "AccountSid": SID}).json()["matched"] == 0
    with env.gk.engine.connect() as c:
        st = dict(c.execute(sa.select(messages.c.profile_id, messages.c.status)).all())
    assert st == {pids[0]: "delivered", pids[1]: "failed"}
    # a reply "STOP" from the first customer's phone
    reply = {"MessageSid": "SM" + "9" * 32, "From": "+14155550100", "To": "+15005550006", "Body": "STOP",
             "AccountSid": SID, "SmsStatus": "received"}
    assert post(reply).json()["matched"] == 1
    ev = _events(env)
    assert [(p, e) for p, e, _ in ev] == [(pids[0], "Message Delivered"), (pids[1], "Message Failed"),
                                          (pids[0], "Message Replied"), (pids[0], "Unsubscribed")]
    assert ev[1][2]["stage"] == "delivery" and "30003" in ev[1][2]["reason"]
    assert ev[2][2]["text"] == "STOP" and ev[2][2]["message_id"] == mids[pids[0]]
    v = Guardrails(env.gk.engine).check(ws, "sms", "marketing", pids, "next", NOON_SH)
    assert v.suppressed[pids[0]] == "opted out of sms/marketing" and v.allowed == [pids[1]]


def test_aliyun_reports_and_a_chinese_unsubscribe_reply(env: Any) -> None:
    ws = env.ws.workspace_id
    pids = _customers(env, ["+8613800138000", "+8613800138001"])
    cid = env.gk.sender.channels.save(ws, name="ali", kind="sms", provider="aliyun", config={
        "access_key_id": "LTAI", "sign_name": "金钥"}, secrets={"access_key_secret": "s", "receipt_token": "tok"})[
        "channel_id"]
    mids = _sent(env, cid, pids, ["1001^0", "1002^0"])
    report = [
        {"phone_number": "13800138000", "send_time": "2026-03-04 12:00:01", "report_time": "2026-03-04 12:00:05",
         "success": True, "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1", "biz_id": "1001^0",
         "out_id": mids[pids[0]]},
        {"phone_number": "13800138001", "send_time": "2026-03-04 12:00:01", "report_time": "2026-03-04 12:00:09",
         "success": False, "err_code": "MK:0012", "err_msg": "用户关机", "sms_size": "1", "biz_id": "1002^0",
         "out_id": ""},
    ]
    assert env.client.post(f"/api/v1/receipts/{cid}?token=nope", json=report).status_code == 401
    r = env.client.post(f"/api/v1/receipts/{cid}?token=tok", json=report)
    assert r.status_code == 200 and r.json() == {"code": 0, "msg": "ok", "matched": 2, "unmatched": 0}, r.text
    up = [{"phone_number": "13800138001", "send_time": "2026-03-04 12:05:00", "content": "退订", "sign_name": "金钥",
           "dest_code": "1234", "sequence_id": 1}]
    assert env.client.post(f"/api/v1/receipts/{cid}?token=tok", json=up).json()["matched"] == 1
    ev = [(p, e) for p, e, _ in _events(env)]
    assert ev == [(pids[0], "Message Delivered"), (pids[1], "Message Failed"), (pids[1], "Message Replied"),
                  (pids[1], "Unsubscribed")]
    v = Guardrails(env.gk.engine).check(ws, "sms", "marketing", pids, "next", NOON_SH)
    assert v.suppressed[pids[1]] == "opted out of sms/marketing" and v.allowed == [pids[0]]
    bad = env.client.post(f"/api/v1/receipts/{cid}?token=tok", json={"not": "a list"})
    assert bad.status_code == 400 and bad.json()["field"] == "body"
    # without a receipt token nothing proves a push came from Aliyun: a forged 退订 is refused
    bare = env.gk.sender.channels.save(ws, name="ali2", kind="sms", provider="aliyun", config={
        "access_key_id": "LTAI", "sign_name": "金钥"}, secrets={"access_key_secret": "s"})["channel_id"]
    forged = env.client.post(f"/api/v1/receipts/{bare}", json=up)
    assert forged.status_code == 400 and forged.json()["field"] == "secrets.receipt_token", forged.text


def test_opt_out_keywords() -> None:
    assert all(is_opt_out(t) for t in ["TD", "td", " 退订 ", "T", "STOP", "Stop.", "unsubscribe", "退订。"])
    assert not any(is_opt_out(t) for t in ["", None, "谢谢", "don't stop", "TD TD?"])


@pytest.mark.parametrize(("how", "undo_first"), [("link", False), ("link", True), ("reply", True)])
def test_an_unsubscribe_from_the_merged_away_customers_phone_goes_back_with_them(env: Any, how: str,
                                                                                 undo_first: bool) -> None:
    """While two profiles are merged a message may go to the merged-away customer's phone. Before,
    that customer's unsubscribe was recorded on the survivor (overwriting the survivor's own
    consent) and lost with the undo: the customer was texted again on the phone that had opted out
    (found by a review). The same when the merge is undone before the link is tapped, or before a
    退订 reply comes (found by the review of that fix: the reply matched no message at all)."""
    from goldkey.activate.receipts import Receipts
    from goldkey.activate.sender import SendRequest
    from goldkey.activate.templates import compile_for_workspace

    ws, h = env.ws.workspace_id, env.admin_auth()
    env.gk.sender.guardrails.set_policy(ws, {"quiet_hours": None, "caps": {}})
    for body in ({"userId": "wu", "traits": {"phone": "+8613900000009", "name": "Wu"}},
                 {"anonymousId": "dev1", "traits": {"phone": "+8613900000001", "name": "Li"}}):
        assert env.post("/v1/identify", body).status_code == 200

    def pid(**q: str) -> str:
        return str(env.client.get("/api/v1/profiles/lookup", params=q, headers=h).json()["profile_id"])

    wu, li = pid(user_id="wu"), pid(anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    merge = env.client.get(f"/api/v1/profiles/{wu}", headers=h).json()["merges"][0]["merge_id"]
    ch = env.gk.sender.channels.save(ws, name="sink", kind="sink", config={"path": "sms.jsonl", "simulates": "sms"})
    cid, out = ch["channel_id"], env.gk.sender.channels.file_path(ws, ch["config"]["path"])
    tpl = compile_for_workspace(env.gk.engine, ws, {"variants": {"zh": {"text": "优惠 退订: {{ unsubscribe_url }}"}}})
    # sent now (not at a fixed instant): a reply matches a message logged under the survivor only if it
    # went out while the merge stood
    rep = env.gk.sender.send(SendRequest(ws, cid, tpl, [wu], "promo"))
    assert rep.delivery.sent == 1, rep.summary()
    sent = json.loads(out.read_text().splitlines()[0])
    assert sent["to"] == "+8613900000001"  # the smallest phone the survivor holds: Li's

    def consents(p: str) -> dict[str, str]:
        got = env.client.get(f"/api/v1/profiles/{p}", headers=h).json()["consents"]
        return {c["channel"]: c["status"] for c in got}

    def undo() -> None:
        assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200

    if undo_first:
        undo()
    if how == "link":
        token = sent["text"].split("/t/u/")[1].split()[0]
        assert env.client.post(f"/t/u/{token}").status_code == 200
    else:  # what Receipts.provider does with a parsed reply (a sink channel parses none)
        receipts = Receipts(env.gk.sender)
        rc = Receipt("replied", text="退订", from_address="+8613900000001")
        row = receipts._match(ws, cid, "phone", rc)
        assert row is not None and row.message_id == sent["message_id"]
        receipts.record(row, rc)
        receipts.record(row, Receipt("unsubscribed", message_id=row.message_id, from_address=rc.from_address))
    if not undo_first:
        assert consents(wu) == {"sms": "denied"}  # while merged: the latest decision across the merge
        v = Guardrails(env.gk.engine).check(ws, "sms", "marketing", [wu], "next", NOON_SH)
        assert v.suppressed[wu] == "opted out of sms/marketing"
        undo()
    assert consents(li) == {"sms": "denied"} and consents(wu) == {"sms": "granted"}
