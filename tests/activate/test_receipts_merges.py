"""Unsubscribes and 退订 replies across merges, undos and chains of merges: the opt-out is the
customer's whose address the message went to, and a reply matches that customer's message
(cases a review of the first version found failing)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from goldkey.activate.channels.base import Receipt
from goldkey.activate.receipts import Receipts
from goldkey.activate.sender import SendRequest
from goldkey.activate.templates import compile_for_workspace
from goldkey.core.clock import utcnow
from goldkey.govern.consent import set_consent

NOON_SH = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)


def _setup(env: Any, people: list[dict[str, Any]],
           simulates: str = "sms") -> tuple[str, dict[str, str], str, Path, Any]:
    ws, h = env.ws.workspace_id, env.admin_auth()
    env.gk.sender.guardrails.set_policy(ws, {"quiet_hours": None, "caps": {}})
    for body in people:
        assert env.post("/v1/identify", body).status_code == 200
    ch = env.gk.sender.channels.save(ws, name="sink", kind="sink", config={"path": "out.jsonl", "simulates": simulates})
    tpl = compile_for_workspace(env.gk.engine, ws, {"variants": {"zh": {"text": "优惠 退订: {{ unsubscribe_url }}"}}})
    return ws, h, ch["channel_id"], env.gk.sender.channels.file_path(ws, ch["config"]["path"]), tpl


def _pid(env: Any, **q: str) -> str:
    return str(env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth()).json()["profile_id"])


def _consents(env: Any, p: str) -> dict[str, str]:
    got = env.client.get(f"/api/v1/profiles/{p}", headers=env.admin_auth()).json()["consents"]
    return {c["channel"]: c["status"] for c in got}


def _merges(env: Any, p: str) -> list[dict[str, Any]]:
    return env.client.get(f"/api/v1/profiles/{p}", headers=env.admin_auth()).json()["merges"]


def _send(env: Any, ws: str, cid: str, out: Path, tpl: Any, pid: str, now: datetime = NOON_SH,
          key: str = "promo") -> dict[str, Any]:
    rep = env.gk.sender.send(SendRequest(ws, cid, tpl, [pid], key, now=now))
    assert rep.delivery.sent == 1, rep.summary()
    return json.loads(out.read_text().splitlines()[-1])


def test_reply_to_a_message_whose_profile_was_merged_away_later(env_any: Any) -> None:
    """Li (anonymous, phone 1) is texted; then Li signs in and is merged into Wu; Li replies 退订."""
    env = env_any
    ws, h, cid, out, tpl = _setup(env, [{"userId": "wu", "traits": {"phone": "+8613900000009"}},
                                        {"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    wu, li = _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    sent = _send(env, ws, cid, out, tpl, li)
    assert sent["to"] == "+8613900000001"
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    receipts = Receipts(env.gk.sender)
    row = receipts._match(ws, cid, "phone", Receipt("replied", text="退订", from_address="+8613900000001"))
    assert row is not None, "the 退订 reply matches no message: Receipts.provider counts it unmatched, no opt-out"


def test_chain_undo_of_the_later_merge_link_after(env_any: Any) -> None:
    """Zhao (C, first seen), Wu (B), Li (A). Li merged into Wu, Wu into Zhao. Texted under Zhao at
    Li's phone. Wu->Zhao undone (Li->Wu stands). Link tapped: the phone is Li's."""
    env = env_any
    ws, h, cid, out, tpl = _setup(env, [{"anonymousId": "devC", "traits": {"email": "zhao@example.com"}},
                                        {"userId": "wu", "traits": {"phone": "+8613900000009"}},
                                        {"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    zhao, wu, li = _pid(env, anonymous_id="devC"), _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (zhao, wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200   # A -> B
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "devC"}).status_code == 200   # B -> C
    ms = _merges(env, zhao)
    sent = _send(env, ws, cid, out, tpl, zhao)
    assert sent["to"] == "+8613900000001"
    bc = next(m for m in ms if m["loser_id"] == wu)
    assert env.client.post(f"/api/v1/profiles/merges/{bc['merge_id']}/undo", headers=h).status_code == 200
    token = sent["text"].split("/t/u/")[1].split()[0]
    assert env.client.post(f"/t/u/{token}").status_code == 200
    ab = next(m for m in _merges(env, wu) if m["loser_id"] == li)
    assert env.client.post(f"/api/v1/profiles/merges/{ab['merge_id']}/undo", headers=h).status_code == 200
    assert _consents(env, li) == {"sms": "denied"}, "Li opted out on her phone, and is texted again after the undo"


def test_masked_email_collision_after_undo(env: Any) -> None:
    """Wu holds amy@example.com, Li alice@example.com (both mask to a***@example.com). Merged,
    emailed at alice (Li's), undone, then the link tapped."""
    ws, h, cid, out, tpl = _setup(env, [{"userId": "wu", "traits": {"email": "amy@example.com"}},
                                        {"anonymousId": "dev1", "traits": {"email": "alice@example.com"}}],
                                  simulates="email")
    wu, li = _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "email", "granted")
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    merge = _merges(env, wu)[0]["merge_id"]
    sent = _send(env, ws, cid, out, tpl, wu)
    assert sent["to"] == "alice@example.com"
    assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200
    token = sent["text"].split("/t/u/")[1].split()[0]
    assert env.client.post(f"/t/u/{token}").status_code == 200
    assert _consents(env, li) == {"email": "denied"}  # Li got the e-mail and opted out


def test_reply_matched_to_the_former_survivors_later_message(env_any: Any) -> None:
    """Li is texted on her own profile (M1); Li and Wu are merged, then the merge is undone; Wu is
    texted on his own phone (M2). Li replies 退订 from her phone: it is M1's reply, not M2's."""
    env = env_any
    ws, h, cid, out, tpl = _setup(env, [{"userId": "wu", "traits": {"phone": "+8613900000009"}},
                                        {"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    wu, li = _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    m1 = _send(env, ws, cid, out, tpl, li)
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    merge = _merges(env, wu)[0]["merge_id"]
    assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200
    m2 = _send(env, ws, cid, out, tpl, wu, now=NOON_SH + timedelta(days=1), key="promo2")
    assert m2["to"] == "+8613900000009"
    receipts = Receipts(env.gk.sender)
    row = receipts._match(ws, cid, "phone", Receipt("replied", text="退订", from_address="+8613900000001"))
    rc = Receipt("replied", text="请问怎么改地址", from_address="+8613900000001")
    receipts.record(row, rc)
    ev = env.gk.analytical.query("SELECT profile_id FROM events WHERE event = 'Message Replied'")
    assert [p for (p,) in ev] == [li]  # her text is on her profile, not on Wu's
    assert row.message_id == m1["message_id"]


def test_an_undo_before_the_message_gives_no_address_back(env: Any) -> None:
    """Li (alice@) merged into Wu (amy@) and undone before anything is sent; Wu is then mailed at
    his own amy@example.com (the same mask, a***@example.com) and taps the link: Li never got a
    message and keeps her grant (only a merge that stood when the message went out counts)."""
    ws, h, cid, out, tpl = _setup(env, [{"userId": "wu", "traits": {"email": "amy@example.com"}},
                                        {"anonymousId": "dev1", "traits": {"email": "alice@example.com"}}],
                                  simulates="email")
    wu, li = _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "email", "granted")
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    merge = _merges(env, wu)[0]["merge_id"]
    assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200
    sent = _send(env, ws, cid, out, tpl, wu)
    token = sent["text"].split("/t/u/")[1].split()[0]
    assert env.client.post(f"/t/u/{token}").status_code == 200
    assert _consents(env, li) == {"email": "granted"}, "Li never got a message, yet is opted out"


def test_a_reply_after_an_undo_and_a_merge_elsewhere(env: Any) -> None:
    """Zhao (first seen), Wu, Li (dev1, phone 1). Li merged into Wu; Wu texted -- at Li's phone
    (the smallest). Undone. Li then signs in as Zhao's account: merged into Zhao. Li replies TD."""
    ws, h, cid, out, tpl = _setup(env, [{"userId": "zhao", "traits": {"email": "zhao@example.com"}},
                                        {"userId": "wu", "traits": {"phone": "+8613900000009"}},
                                        {"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    zhao, wu, li = _pid(env, user_id="zhao"), _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (zhao, wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    sent = _send(env, ws, cid, out, tpl, wu)
    assert sent["to"] == "+8613900000001"  # Li's phone, the smallest the survivor holds
    merge = _merges(env, wu)[0]["merge_id"]
    assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200
    assert env.post("/v1/identify", {"userId": "zhao", "anonymousId": "dev1"}).status_code == 200
    receipts = Receipts(env.gk.sender)
    row = receipts._match(ws, cid, "phone", Receipt("replied", text="TD", from_address="+8613900000001"))
    assert row is not None and row.message_id == sent["message_id"], "Li's TD reply matched nothing: no opt-out"


def test_a_reply_to_a_message_reserved_before_the_merge_and_sent_during_it(env: Any) -> None:
    """A journey round starts (now=T0); Li signs in and is merged into Wu (T1); the round reaches Wu's
    send step and texts Wu -- at Li's phone -- with now=T0. The merge is undone; Li replies TD."""
    ws, h, cid, out, tpl = _setup(env, [{"userId": "wu", "traits": {"phone": "+8613900000009"}},
                                        {"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    wu, li = _pid(env, user_id="wu"), _pid(env, anonymous_id="dev1")
    for p in (wu, li):
        set_consent(env.gk.engine, ws, p, "sms", "granted")
    t0 = utcnow()  # the journey round's now
    assert env.post("/v1/identify", {"userId": "wu", "anonymousId": "dev1"}).status_code == 200
    sent = _send(env, ws, cid, out, tpl, wu, now=t0)
    assert sent["to"] == "+8613900000001"
    merge = _merges(env, wu)[0]["merge_id"]
    assert env.client.post(f"/api/v1/profiles/merges/{merge}/undo", headers=h).status_code == 200
    receipts = Receipts(env.gk.sender)
    row = receipts._match(ws, cid, "phone", Receipt("replied", text="TD", from_address="+8613900000001"))
    assert row is not None and row.message_id == sent["message_id"]


def test_a_reply_is_matched_to_a_message_that_went_out(env_any: Any) -> None:
    """Li gets M1 (marketing); M2 (service), an hour later, is refused by the provider (failed, never
    sent). Her STOP answers M1: before, it was matched to the newer M2 and withdrew the service
    consent, leaving marketing granted (a review of the reply matching)."""
    from goldkey.store.operational import consents, messages

    env = env_any
    ws, h, cid, out, tpl = _setup(env, [{"anonymousId": "dev1", "traits": {"phone": "+8613900000001"}}])
    li = _pid(env, anonymous_id="dev1")
    for purpose in ("marketing", "service"):
        set_consent(env.gk.engine, ws, li, "sms", "granted", purpose=purpose)
    m1 = _send(env, ws, cid, out, tpl, li)
    rep = env.gk.sender.send(SendRequest(ws, cid, tpl, [li], "svc", now=NOON_SH + timedelta(hours=1),
                                         purpose="service"))
    m2 = rep.message_ids[li]
    with env.gk.engine.begin() as c:  # what the sender logs when the provider refuses a send
        c.execute(messages.update().where(messages.c.message_id == m2).values(
            status="failed", sent_at=None, reason="provider: balance"))
    receipts = Receipts(env.gk.sender)
    rc = Receipt("replied", text="STOP", from_address="+8613900000001")
    row = receipts._match(ws, cid, "phone", rc)
    assert row is not None and row.message_id == m1["message_id"]
    receipts.record(row, rc)
    receipts.record(row, Receipt("unsubscribed", message_id=row.message_id, from_address=rc.from_address))
    with env.gk.engine.connect() as c:
        got = c.execute(sa.select(consents.c.purpose, consents.c.status).where(consents.c.profile_id == li)).all()
    assert sorted(tuple(r) for r in got) == [("marketing", "denied"), ("service", "granted")]
