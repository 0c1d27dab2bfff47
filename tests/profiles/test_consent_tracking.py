"""Marketing consent carried by identify calls (``traits.consent``) lands in the consent table the
send guardrails read, on SQLite and PostgreSQL: newer decisions win, a late older identify does not
overturn them, merged profiles keep their decisions on the survivor, every change is audited, and a
malformed consent is refused at the edge naming the field, with nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from goldkey.govern.consent import consent_decisions, latest_decision
from goldkey.store.operational import audit_log, consents, identities


def _consents(env: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(consents).where(consents.c.workspace_id == env.ws.workspace_id)).all()
    return {(r.profile_id, r.channel, r.purpose): (r.status, r.source) for r in rows}


def _pid(env: Any, user_id: str) -> str:
    with env.gk.engine.connect() as c:
        return c.execute(sa.select(identities.c.profile_id).where(
            identities.c.workspace_id == env.ws.workspace_id, identities.c.id_type == "user_id",
            identities.c.id_value == user_id)).scalar_one()


def _identify(env: Any, user_id: str, consent: Any, ts: str, mid: str, **traits: Any) -> Any:
    return env.post("/v1/identify", {"userId": user_id, "messageId": mid, "timestamp": ts,
                                     "traits": {"consent": consent, **traits}})


def test_identify_consent_recorded_newest_wins(env_any: Any) -> None:
    env = env_any
    r = _identify(env, "u1", {"sms": True, "email": "opted_out", "wechat": {"marketing": "是", "service": True}},
                  "2026-03-01T10:00:00Z", "m1")
    assert r.status_code == 200, r.text
    pid = _pid(env, "u1")
    got = _consents(env)
    assert got[(pid, "sms", "marketing")] == ("granted", "identify")
    assert got[(pid, "email", "marketing")] == ("denied", "identify")
    assert got[(pid, "wechat", "marketing")] == ("granted", "identify")
    assert got[(pid, "wechat", "service")] == ("granted", "identify")

    # the customer opts out later; an SDK's delayed, older identify must not overturn that
    assert _identify(env, "u1", {"sms": False}, "2026-03-05T10:00:00Z", "m2").status_code == 200
    assert _identify(env, "u1", {"sms": True}, "2026-03-02T10:00:00Z", "m3").status_code == 200
    assert _consents(env)[(pid, "sms", "marketing")] == ("denied", "identify")

    # the guardrails' rule ("may we contact") follows
    from goldkey.govern.consent import has_consent

    with env.gk.engine.connect() as c:
        assert not has_consent(c, env.ws.workspace_id, pid, "sms")
        assert has_consent(c, env.ws.workspace_id, pid, "wechat")
        audited = c.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.workspace_id == env.ws.workspace_id, audit_log.c.action == "consent.set",
            audit_log.c.target == pid)).scalar_one()
    assert audited == 5  # 4 first decisions + the opt-out; the stale identify changed nothing
    assert env.gk.consent.recorded == 5


def test_consent_follows_merges(env: Any) -> None:
    # an anonymous visitor consents to SMS; a known customer (with push consent) later logs in on that device:
    # the two profiles merge and both decisions are the customer's
    assert env.post("/v1/identify", {"anonymousId": "dev-1", "messageId": "m1", "timestamp": "2026-03-01T10:00:00Z",
                                     "traits": {"consent": {"sms": True}}}).status_code == 200
    assert env.post("/v1/identify", {"userId": "k1", "messageId": "m0", "timestamp": "2026-02-01T10:00:00Z",
                                     "traits": {"consent": {"push": True}}}).status_code == 200
    assert env.post("/v1/track", {"userId": "k1", "anonymousId": "dev-1", "event": "Signed In", "messageId": "m2",
                                  "timestamp": "2026-03-01T11:00:00Z"}).status_code == 200
    from goldkey.store.operational import profiles

    live = _pid(env, "k1")
    with env.gk.engine.connect() as c:
        canon = c.execute(sa.select(profiles.c.canonical_id).where(profiles.c.profile_id == live)).scalar()
        with_consent = {r.profile_id for r in c.execute(sa.select(consents.c.profile_id))}
        canon_of = {r.profile_id: r.canonical_id for r in c.execute(
            sa.select(profiles.c.profile_id, profiles.c.canonical_id).where(profiles.c.profile_id.in_(with_consent)))}
    assert set(canon_of.values()) == {canon}

    with env.gk.engine.connect() as c:  # the guardrails look across every profile merged into the customer
        for channel in ("sms", "push"):
            granted = c.execute(sa.select(latest_decision(channel, "marketing", sa.literal(canon)))).scalar()
            assert granted == "granted", channel


@pytest.mark.parametrize("consent, field", [
    ({"fax": True}, "traits.consent.fax"),
    ({"sms": "maybe"}, "traits.consent.sms"),
    ({"sms": {"marketing": 2}}, "traits.consent.sms.marketing"),
    (["sms"], "traits.consent"),
])
def test_bad_consent_names_the_field(consent: Any, field: str) -> None:
    from goldkey.core.errors import InvalidInput

    with pytest.raises(InvalidInput) as e:
        consent_decisions({"consent": consent})
    assert e.value.field == field


def test_bad_consent_refused_at_the_edge(env: Any) -> None:
    r = _identify(env, "u9", {"sms": "maybe"}, "2026-03-01T10:00:00Z", "bad1")
    assert r.status_code == 400, r.text
    assert "traits.consent.sms" in r.text
    assert _consents(env) == {}
