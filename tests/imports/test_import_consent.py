"""Marketing consent from a CRM file's consent columns (``consent_<channel>``): recorded on the live
profile in the import's transaction (SQLite and PostgreSQL), dated by ``consent_updated_at`` /
``registered_at``, never overturning a newer decision, idempotent on a forced re-import, kept out of
the profile's attributes; a value that is neither yes nor no is quarantined naming the column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from test_importer import lookup, write_csv

from goldkey.store.operational import audit_log, consents

MAPPING = {"会员编号": "crm_id", "手机号": "phone", "注册时间": "registered_at", "短信营销": "consent_sms",
           "邮件营销": "consent_email", "同意时间": "consent_updated_at"}
HEADER = list(MAPPING)


def _decisions(env: Any) -> dict[tuple[str, str], tuple[str, str]]:
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(consents).where(consents.c.workspace_id == env.ws.workspace_id)).all()
    return {(r.profile_id, r.channel): (r.status, r.source) for r in rows}


def _audits(env: Any) -> int:
    with env.gk.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.workspace_id == env.ws.workspace_id, audit_log.c.action == "consent.set")).scalar_one()


def test_crm_consent_columns(env_any: Any, tmp_path: Path) -> None:
    env = env_any
    f = write_csv(tmp_path / "crm.csv", HEADER, [
        ["C1", "13900000001", "2024-01-01", "是", "否", "2024-02-01 10:00:00"],
        ["C2", "13900000002", "2024-01-01", "Y", "", ""],
        ["C3", "13900000003", "2024-01-01", "退订", "同意", ""],
        ["C4", "13900000004", "2024-01-01", "", "", ""],
        ["C5", "13900000005", "2024-01-01", "maybe", "", ""],  # neither yes nor no: quarantined
    ])
    s = env.gk.importer.run(env.ws.workspace_id, "customers", f, MAPPING)
    assert (s.rows_read, s.accepted, s.quarantined) == (5, 4, 1)
    p = {c: lookup(env, crm_id=c)["profile_id"] for c in ("C1", "C2", "C3", "C4")}
    got = _decisions(env)
    assert got[(p["C1"], "sms")] == ("granted", "import") and got[(p["C1"], "email")] == ("denied", "import")
    assert got[(p["C2"], "sms")] == ("granted", "import") and (p["C2"], "email") not in got
    assert got[(p["C3"], "sms")] == ("denied", "import") and got[(p["C3"], "email")] == ("granted", "import")
    assert not [k for k in got if k[0] == p["C4"]]
    assert "consent_sms" not in lookup(env, crm_id="C1")["attributes"]
    q = env.client.get("/api/v1/quarantine", params={"import_id": s.import_id}, headers=env.admin_auth()).json()
    assert [r["field"] for r in q] == ["consent_sms"] and "maybe" in (q[0]["value"] or q[0]["reason"])
    n = _audits(env)
    assert n == 5

    # C2 unsubscribes afterwards (a tracked identify now); the CRM file, dated earlier, is imported again
    r = env.post("/v1/identify", {"userId": "u-c2", "messageId": "x1", "timestamp": "2026-01-01T00:00:00Z",
                                  "traits": {"phone": "13900000002", "consent": {"sms": False}}})
    assert r.status_code == 200, r.text
    forced = env.gk.importer.run(env.ws.workspace_id, "customers", f, MAPPING, force=True)
    assert forced.status == "done"
    got = _decisions(env)
    live_c2 = lookup(env, crm_id="C2")["profile_id"]
    assert got[(live_c2, "sms")] == ("denied", "identify")  # the newer opt-out stands
    assert got[(p["C1"], "sms")] == ("granted", "import")
    assert _audits(env) == n + 1  # the opt-out only: re-importing the same decisions changes nothing
