"""An identify call's ``traits.consent`` is recorded as consent decisions, never copied into the
profile's attributes (where it would go stale at the customer's next change of mind), while the
identify's other traits still land there."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.store.operational import consents, identities, profiles


def _profile(env: Any, user_id: str) -> tuple[str, dict[str, Any]]:
    with env.gk.engine.connect() as c:
        pid = c.execute(
            sa.select(identities.c.profile_id).where(
                identities.c.workspace_id == env.ws.workspace_id,
                identities.c.id_type == "user_id",
                identities.c.id_value == user_id,
            )
        ).scalar_one()
        attrs = c.execute(sa.select(profiles.c.attributes).where(profiles.c.profile_id == pid)).scalar_one()
    return pid, orjson.loads(attrs) if isinstance(attrs, str | bytes) else dict(attrs or {})


def test_identify_consent_is_a_decision_not_an_attribute(env: Any) -> None:
    r = env.post(
        "/v1/identify",
        {
            "userId": "c1",
            "messageId": "i1",
            "timestamp": "2026-03-01T10:00:00Z",
            "traits": {"consent": {"sms": True, "email": "opted_out"}, "city": "广州", "member_tier": "金卡"},
        },
    )
    assert r.status_code == 200, r.text
    # a later identify in a batch (one group commit with a plain track) changes the decision only
    r = env.post(
        "/v1/batch",
        {
            "batch": [
                {
                    "type": "identify",
                    "userId": "c1",
                    "messageId": "i2",
                    "timestamp": "2026-03-02T10:00:00Z",
                    "traits": {"consent": {"sms": False}},
                },
                {"type": "track", "userId": "c1", "event": "Viewed", "messageId": "t1"},
            ]
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

    pid, attrs = _profile(env, "c1")
    assert attrs.get("city") == "广州" and attrs.get("member_tier") == "金卡"
    assert "consent" not in attrs
    with env.gk.engine.connect() as c:
        got = {
            (row.channel, row.purpose): row.status
            for row in c.execute(sa.select(consents).where(consents.c.profile_id == pid))
        }
    assert got == {("sms", "marketing"): "denied", ("email", "marketing"): "denied"}
