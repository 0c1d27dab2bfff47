"""Guardrails and the send pipeline on the real stores: consent, suppression, caps, quiet hours,
de-duplication, concurrency (hypothesis), SMTP delivery to a real aiosmtpd server, tracking. The
guardrail tests run on SQLite and on PostgreSQL (``env_any``): the reservation is atomic on both."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goldkey.activate.guardrails import Guardrails, SendSpec
from goldkey.activate.sender import Sender, SendRequest
from goldkey.activate.templates import compile_for_workspace, compile_template
from goldkey.audience.catalog import load_catalog
from goldkey.core.errors import InvalidInput
from goldkey.govern.consent import set_consent
from goldkey.store.operational import messages, profiles

NOON_SH = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
NIGHT_SH = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai


def _profiles(env: Any, n: int, tz: str | None = None) -> list[str]:
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"name": f"客户{i}", "email": f"c{i}@example.com",
                                                                 "phone": f"+861380013{i:04d}",
                                                                 **({"timezone": tz} if tz else {})}}
             for i in range(n)]
    r = env.post("/v1/batch", {"batch": batch})
    assert r.status_code == 200, r.text
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(profiles.c.profile_id).where(
            profiles.c.workspace_id == env.ws.workspace_id, profiles.c.merged_into.is_(None))
            .order_by(profiles.c.profile_id)).scalars().all()
    assert len(rows) == n
    return list(rows)


def _grant(env: Any, pids: list[str], channel: str = "sms", status: str = "granted") -> None:
    for p in pids:
        set_consent(env.gk.engine, env.ws.workspace_id, p, channel, status)


def test_each_guardrail_gives_its_reason(env_any: Any) -> None:
    env = env_any  # SQLite and PostgreSQL: the reservation must be atomic on both
    ws = env.ws.workspace_id
    pids = _profiles(env, 6)
    g = Guardrails(env.gk.engine)
    g.set_policy(ws, {"caps": {"sms": {"day": 1}, "*": {"week": 5}}})
    _grant(env, pids[:5])
    _grant(env, [pids[5]], status="denied")
    g.suppress(ws, [pids[0]], "*", "complained")
    spec = SendSpec("chn_x")
    res = g.reserve(ws, "sms", "marketing", pids[1:2], "first", spec, NOON_SH)  # uses pids[1]'s daily cap
    assert list(res.message_ids) == [pids[1]]
    v = g.check(ws, "sms", "marketing", pids + ["prf_unknown"], "second", NOON_SH)
    allowed, suppressed = v
    assert allowed == pids[2:5]
    assert suppressed[pids[0]] == "suppressed: complained"
    assert suppressed[pids[1]] == "frequency cap: sms 1/1 today"
    assert suppressed[pids[5]] == "opted out of sms/marketing"
    assert suppressed["prf_unknown"].startswith("not a live profile")
    assert g.check(ws, "sms", "marketing", [pids[1]], "first", NOON_SH).suppressed[pids[1]].startswith("duplicate")
    assert g.check(ws, "email", "marketing", [pids[2]], "x", NOON_SH).suppressed[pids[2]] == \
        "no consent for email/marketing"
    night = g.check(ws, "sms", "marketing", pids[2:5], "second", NIGHT_SH)
    assert night.allowed == [] and set(night.deferred) == set(pids[2:5])
    assert night.deferred[pids[2]] == datetime(2026, 3, 5, 0, 0, tzinfo=UTC)  # 08:00 Shanghai
    with pytest.raises(InvalidInput, match="channel must be one of"):
        g.check(ws, "fax", "marketing", pids, "k", NOON_SH)


def test_what_a_merged_away_profile_had_still_protects_the_customer(env_any: Any) -> None:
    """A suppression, a message already sent and sends counted against a cap on an anonymous profile
    hold for the customer it is later merged into (as its consent decisions do)."""
    env = env_any
    ws = env.ws.workspace_id
    known = _profiles(env, 2)
    r = env.post("/v1/batch", {"batch": [{"type": "identify", "anonymousId": f"anon{i}"} for i in range(2)]})
    assert r.status_code == 200, r.text
    with env.gk.engine.connect() as c:
        anon = c.execute(sa.select(profiles.c.profile_id).where(
            profiles.c.workspace_id == ws, profiles.c.profile_id.not_in(known))
            .order_by(profiles.c.first_seen_at, profiles.c.profile_id)).scalars().all()
    assert len(anon) == 2
    g = Guardrails(env.gk.engine)
    g.set_policy(ws, {"caps": {"sms": {"day": 1}}})
    _grant(env, known + list(anon))
    g.suppress(ws, [anon[0]], "*", "complained")
    assert list(g.reserve(ws, "sms", "marketing", [anon[1]], "first", SendSpec("chn_x"), NOON_SH).message_ids) == \
        [anon[1]]
    # each visitor logs in: its anonymous profile is merged into the known customer's
    r = env.post("/v1/batch", {"batch": [{"type": "identify", "userId": f"u{i}", "anonymousId": f"anon{i}"}
                                         for i in range(2)]})
    assert r.status_code == 200, r.text
    with env.gk.engine.connect() as c:
        canon = dict(c.execute(sa.select(profiles.c.profile_id, profiles.c.canonical_id).where(
            profiles.c.profile_id.in_(anon))).all())
    live = [canon[a] for a in anon]
    assert set(live) == set(known)  # merged into the known customers
    v = g.check(ws, "sms", "marketing", live, "second", NOON_SH)
    assert v.allowed == []
    assert v.suppressed[live[0]] == "suppressed: complained"
    assert v.suppressed[live[1]] == "frequency cap: sms 1/1 today"
    assert g.check(ws, "sms", "marketing", [live[1]], "first", datetime(2026, 3, 5, 4, 0, tzinfo=UTC)) \
        .suppressed[live[1]].startswith("duplicate")
    # the reservation's own re-check (recheck) sees the suppression too
    res = g.reserve(ws, "sms", "marketing", [live[0]], "third", SendSpec("chn_x"), NOON_SH)
    assert list(res.message_ids) == [] and res.suppressed[live[0]] == "suppressed: complained"


def test_quiet_hours_follow_the_customers_time_zone(env_any: Any) -> None:
    env = env_any  # SQLite and PostgreSQL: the reservation must be atomic on both
    ws = env.ws.workspace_id
    pids = _profiles(env, 2, tz="Europe/London")  # 15:00 UTC is 15:00 in London: not quiet
    _grant(env, pids)
    v = Guardrails(env.gk.engine).check(ws, "sms", "marketing", pids, "k", NIGHT_SH)
    assert v.allowed == pids


def test_reserve_reads_addresses_in_its_transaction_and_recheck_sees_a_later_opt_out(env_any: Any) -> None:
    env = env_any  # SQLite and PostgreSQL: the prepared statements run on both
    ws = env.ws.workspace_id
    pids = _profiles(env, 3)
    _grant(env, pids)
    g = Guardrails(env.gk.engine)
    g.set_policy(ws, {"quiet_hours": None, "caps": {"sms": {"day": 1}}})
    res = g.reserve(ws, "sms", "marketing", pids + ["prf_unknown"], "k1", SendSpec("chn_x"), NOON_SH,
                    address_type="phone")
    assert set(res.message_ids) == set(pids) and res.suppressed == {"prf_unknown": "no phone address"}
    with env.gk.engine.connect() as c:
        stored = dict(c.execute(sa.select(messages.c.profile_id, messages.c.address)).all())
    assert {p: a[-4:] for p, a in stored.items()} == {p: f"13{i:04d}"[-4:] for i, p in enumerate(pids)}
    assert all("****" in a for a in stored.values())  # masked in the message log
    assert g.reserve(ws, "sms", "marketing", pids, "k2", SendSpec("chn_x"), NOON_SH,
                     address_type="phone").suppressed[pids[0]] == "frequency cap: sms 1/1 today"
    assert g.recheck(ws, "sms", "marketing", pids, NOON_SH) == {}
    _grant(env, [pids[0]], status="denied")
    g.suppress(ws, [pids[1]], "sms", "bounced")
    assert g.recheck(ws, "sms", "marketing", pids + ["prf_unknown"], NOON_SH) == {
        pids[0]: "opted out of sms/marketing", pids[1]: "suppressed: bounced",
        "prf_unknown": "not a live profile any more (merged into another, or deleted)"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_send_ever_reaches_an_opted_out_suppressed_or_capped_customer(env_any: Any, data: st.DataObject) -> None:
    env = env_any  # SQLite and PostgreSQL: the reservation must be atomic on both
    """Random consents, suppressions, caps and concurrent campaigns (threads): every reserved
    message goes to a consenting, unsuppressed customer, and no customer exceeds a cap."""
    ws = env.ws.workspace_id
    g = Guardrails(env.gk.engine)
    pids = getattr(env, "_pp", None) or _profiles(env, 30)
    env._pp = pids  # the profiles are created once; every example sets its own decisions
    with env.gk.engine.begin() as c:
        c.execute(sa.text("DELETE FROM consents")), c.execute(sa.text("DELETE FROM suppressions"))
        c.execute(sa.text("DELETE FROM send_counters")), c.execute(sa.text("DELETE FROM messages"))
    status = data.draw(st.lists(st.sampled_from(["granted", "denied", None]), min_size=30, max_size=30))
    for p, s in zip(pids, status, strict=True):
        if s:
            _grant(env, [p], status=s)
    supp = data.draw(st.sets(st.sampled_from(pids), max_size=8))
    if supp:
        g.suppress(ws, list(supp), data.draw(st.sampled_from(["sms", "*"])), "list")
    day_cap = data.draw(st.integers(0, 3))
    week_cap = data.draw(st.integers(0, 4))
    g.set_policy(ws, {"caps": {"sms": {"day": day_cap}, "*": {"week": week_cap}}, "quiet_hours": None})
    n_campaigns = data.draw(st.integers(2, 5))
    audiences = [data.draw(st.lists(st.sampled_from(pids), min_size=1, max_size=30)) for _ in range(n_campaigns)]
    errors: list[BaseException] = []

    def campaign(i: int) -> None:
        try:
            g.reserve(ws, "sms", "marketing", audiences[i], f"camp{i}", SendSpec("chn_x"), NOON_SH)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=campaign, args=(i,)) for i in range(n_campaigns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with env.gk.engine.connect() as c:
        sent = c.execute(sa.select(messages.c.profile_id, messages.c.message_key)).all()
    per: dict[str, int] = {}
    for pid, _ in sent:
        per[pid] = per.get(pid, 0) + 1
    granted = {p for p, s in zip(pids, status, strict=True) if s == "granted"}
    assert {p for p, _ in sent} <= granted - supp
    assert all(n <= min(day_cap, week_cap) for n in per.values()), (per, day_cap, week_cap)
    assert len(sent) == len(set(sent))  # de-duplicated
    # and the caps are reached, not merely respected: each eligible customer got min(cap, #campaigns with them)
    for p in granted - supp:
        asked = sum(p in a for a in audiences)
        assert per.get(p, 0) == min(asked, day_cap, week_cap)


def _sink(env: Any, sender: Sender) -> tuple[str, Path]:
    ch = sender.channels.save(env.ws.workspace_id, name="demo sink", kind="sink",
                              config={"path": "out.jsonl", "simulates": "sms",
                                      "cost_per_message": 0.05})
    return str(ch["channel_id"]), sender.channels.file_path(env.ws.workspace_id, ch["config"]["path"])


def test_send_pipeline_renders_logs_and_emits_events(env_any: Any, tmp_path: Path) -> None:
    env = env_any  # SQLite and PostgreSQL: the delivery's prepared statements run on both
    ws = env.ws.workspace_id
    pids = _profiles(env, 4)
    _grant(env, pids[:3])
    sender = Sender.from_goldkey(env.gk)
    cid, out = _sink(env, sender)
    tpl = compile_for_workspace(env.gk.engine, ws, {"template_id": "t1", "vars": ["coupon"], "variants": {
        "zh": {"text": "{{ attributes.name }}您好，优惠券 {{ vars.coupon }}：{{ link('https://shop.example/p/1') }}"}}})
    req = SendRequest(ws, cid, tpl, pids, "camp1:step1", ref="campaign:camp1", vars={"coupon": "GK10"}, now=NOON_SH)
    rep = sender.send(req)
    assert rep.delivery.sent == 3 and rep.suppressed[pids[3]] == "no consent for sms/marketing"
    assert rep.delivery.cost == pytest.approx(0.15)
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 3 and all("GK10" in x["text"] and "/t/c/" in x["text"] for x in lines)
    assert {x["text"].split("您好")[0] for x in lines} == {"客户0", "客户1", "客户2"}
    again = sender.send(req)  # the same message key: never sent twice
    assert again.delivery.sent == 0 and all(again.suppressed[p].startswith("duplicate") for p in pids[:3])
    assert sender.deliver(ws, list(rep.message_ids.values()), tpl).skipped == 3
    assert len(out.read_bytes().splitlines()) == 3
    rows = env.gk.analytical.query(
        "SELECT event, count(*) FROM events WHERE workspace_id = ? AND event LIKE 'Message%' GROUP BY 1", [ws])
    assert dict(rows) == {"Message Sent": 3}
    # a click through the tracked link: redirect + event
    url = lines[0]["text"].split("：", 1)[1]
    r = env.client.get(url.replace("http://127.0.0.1:8000", ""), follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/1"
    assert env.client.get("/t/c/" + "x" * 40, follow_redirects=False).status_code == 404
    clicks = env.gk.analytical.query("SELECT count(*) FROM events WHERE event = 'Link Clicked'")
    assert clicks == [(1,)]


def test_unknown_template_variable_and_missing_credentials_are_refused_at_save(env: Any) -> None:
    ws = env.ws.workspace_id
    _profiles(env, 1)
    compile_for_workspace(env.gk.engine, ws, {"variants": {"zh": {"text": "{{ attributes.name }}"}}})
    cat = load_catalog(env.gk.engine, ws)
    with pytest.raises(InvalidInput, match=r"attributes.nmae.*did you mean attributes.name") as e:
        compile_template({"variants": {"en": {"text": "Hi {{ attributes.nmae }}"}}, "default_language": "en"}, cat)
    assert e.value.field == "template.variants.en.text"
    with pytest.raises(InvalidInput, match="'coupon' does not exist"):
        compile_template({"variants": {"zh": {"text": "{{ coupon }}"}}}, cat)
    r = env.client.post("/api/v1/channels", headers=env.admin_auth(), json={
        "name": "tw", "kind": "sms", "provider": "twilio",
        "config": {"account_sid": "AC" + "0" * 32, "from_number": "+15005550006"}})
    assert r.status_code == 400 and r.json()["field"] == "secrets.auth_token", r.text
    r = env.client.post("/api/v1/channels", headers=env.admin_auth(), json={
        "name": "tw", "kind": "sms", "provider": "twilio", "secrets": {"auth_token": "s3cret-token"},
        "config": {"account_sid": "AC" + "0" * 32, "from_number": "+15005550006"}})
    assert r.status_code == 201 and "s3cret" not in r.text and r.json()["secrets_set"] == ["auth_token"]
    listed = env.client.get("/api/v1/channels", headers=env.admin_auth())
    assert "s3cret" not in listed.text
    with env.gk.engine.connect() as c:
        stored = c.execute(sa.text("SELECT secrets FROM channels")).scalar()
    assert "s3cret" not in stored


def test_email_over_real_smtp_with_unsubscribe(env: Any) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            got.append(envelope.content)
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        return AuthResult(success=data.login == b"gk" and data.password == b"pw")

    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=auth, auth_require_tls=False)
    ctl.start()
    try:
        ws = env.ws.workspace_id
        pids = _profiles(env, 2)
        _grant(env, pids, "email")
        sender = Sender.from_goldkey(env.gk)
        ch = sender.channels.save(ws, name="mail", kind="email", config={
            "host": "127.0.0.1", "port": port, "security": "none",
            "from_address": "news@brand.example", "from_name": "品牌"}, secrets={"username": "gk", "password": "pw"})
        tpl = compile_for_workspace(env.gk.engine, ws, {"variants": {"zh": {
            "subject": "{{ attributes.name }}，新品上市", "text": "你好",
            "html": "<p>你好 {{ attributes.name }}</p>"}}})
        rep = sender.send(SendRequest(ws, ch["channel_id"], tpl, pids, "launch", now=NOON_SH))
        assert rep.delivery.sent == 2, rep
        msgs = [message_from_bytes(b, policy=policy.default) for b in got]
        assert {m["To"] for m in msgs} == {"c0@example.com", "c1@example.com"}
        m0 = msgs[0]
        assert m0.is_multipart() and m0["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = next(p for p in m0.walk() if p.get_content_type() == "text/html").get_content()
        assert "/t/o/" in html and "你好 客户" in html
        unsub = m0["List-Unsubscribe"].strip("<>").replace("http://127.0.0.1:8000", "")
        assert env.client.get(unsub).status_code == 200  # the confirmation page changes nothing
        assert env.client.post(unsub).status_code == 200
        pid = m0["X-Goldkey-Message-Id"]
        with env.gk.engine.connect() as c:
            prof = c.execute(sa.select(messages.c.profile_id).where(messages.c.message_id == pid)).scalar()
        v = Guardrails(env.gk.engine).check(ws, "email", "marketing", [prof], "next", NOON_SH)
        assert v.suppressed[prof] == "opted out of email/marketing"
    finally:
        ctl.stop()
