"""The columnwise parts of a customer import agree with the value-by-value rules they stand for:
attribute JSON (quoted text without escaping where a column needs none, columns without any value
left out) and the consent columns (per profile and channel the latest decision, the later row on a
tie, dated consent_updated_at, else registered_at), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import sqlalchemy as sa

from goldkey.collect.importer import _attribute_json_py, attribute_json
from goldkey.store.operational import audit_log, consents, identities


def _frame() -> pl.DataFrame:
    n = 6
    return pl.DataFrame(
        {
            "__record": list(range(1, n + 1)),
            "plain": ["abc", "中文", None, "İstanbul \u2028 x\x7f", "", "a/b"],
            "quotes": ['say "hi"', None, "ok", "ok", "x", "y"],
            "backslash": ["a\\b", "b", None, "c", "d", "e"],
            "control": ["tab\there", "line\nbreak", "\x01", "ok", None, "bell\x07"],
            "nothing": pl.Series([None] * n, dtype=pl.Utf8),
            "points": [1, None, -(2**62), 0, 7, 8],
            "flag": [True, False, None, True, None, False],
            "birthday": [date(1979, 4, 12), None, date(2000, 1, 1), None, None, date(1990, 12, 31)],
            "registered_at": [
                datetime(2017, 4, 11, 18, 4, tzinfo=UTC),
                datetime(2017, 4, 11, 18, 4, 5, 120, tzinfo=UTC),
                None,
                datetime(2020, 1, 1, tzinfo=UTC),
                datetime(2020, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
                None,
            ],
            "naive": [datetime(2020, 1, 1, 8, 0, 0, 5), None, None, None, None, datetime(2021, 2, 3)],
            "consent_sms": ["granted", None, None, None, None, None],  # never an attribute
            "__dedupe_key": ["a", "b", "c", "d", "e", "f"],
        },
        schema_overrides={"naive": pl.Datetime("us")},
    ).with_columns(
        pl.struct(
            pl.Series("备注", ["老客户", None, "", 'q"', None, None]),
            pl.Series("gone", [None] * n, dtype=pl.Utf8),
        ).alias("extra")
    )


def test_attribute_json_is_the_python_encoding_text_for_text() -> None:
    df = _frame()
    got = attribute_json(df).to_list()
    want = _attribute_json_py(df).to_list()
    # the same members in the same order, byte for byte (no floats and no column named like an
    # extra entry here, so orjson's text of the Python dict is the one to match)
    assert got == want
    assert orjson.loads(got[0])["control"] == "tab\there" and orjson.loads(got[0])["quotes"] == 'say "hi"'
    assert all("nothing" not in orjson.loads(x) and "gone" not in orjson.loads(x) for x in got)
    assert all("consent_sms" not in orjson.loads(x) for x in got)
    assert orjson.loads(got[4])["registered_at"] == "2020-01-01T00:00:00.000001+00:00"


def test_attribute_json_columns_with_and_without_escapes_and_overrides() -> None:
    df = _frame().with_columns(
        pl.Series("balance", [1506.0, 0.1 + 0.2, None, -0.0, 1e20, 12.5]),
        pl.struct(
            pl.Series("备注", ["老客户", None, "", 'q"', None, None]),
            pl.Series("plain", ["from extra", "from extra", "from extra", None, None, None]),
        ).alias("extra"),
    )
    got = [orjson.loads(x) for x in attribute_json(df).to_list()]
    want = [orjson.loads(x) for x in _attribute_json_py(df).to_list()]
    assert got == want
    assert got[0]["plain"] == "abc" and got[2]["plain"] == "from extra"  # a column wins over extra


def test_attribute_json_of_nothing() -> None:
    empty = _frame().head(0)
    assert attribute_json(empty).to_list() == []
    only_nulls = pl.DataFrame({"__record": [1, 2], "x": pl.Series([None, None], dtype=pl.Utf8)})
    assert attribute_json(only_nulls).to_list() == ["{}", "{}"]


# -- consent columns ---------------------------------------------------------------------------
HEADER = ["会员编号", "手机号", "注册时间", "短信", "邮件", "同意时间"]
MAPPING = {
    "会员编号": "crm_id",
    "手机号": "phone",
    "注册时间": "registered_at",
    "短信": "consent_sms",
    "邮件": "consent_email",
    "同意时间": "consent_updated_at",
}
ROWS = [
    # C1: a later row (phone only, so not a duplicate of row 1) decides later: it wins
    ["C1", "13900000001", "2024-01-01", "是", "", "2024-02-01 10:00:00"],
    ["", "13900000001", "2024-01-01", "否", "", "2024-03-01 10:00:00"],
    # C2: the same time twice: the later row wins
    ["C2", "13900000002", "2024-01-01", "是", "同意", "2024-02-01 10:00:00"],
    ["", "13900000002", "2024-01-01", "否", "", "2024-02-01 10:00:00"],
    # C3: the later row was decided earlier: the first row's decision stands
    ["C3", "13900000003", "2024-01-01", "退订", "", "2024-05-01 10:00:00"],
    ["", "13900000003", "2024-01-01", "Y", "拒绝", "2024-01-01 10:00:00"],
    # C4: no consent_updated_at: a grant is dated by registered_at, a denial at the import (the file's
    # word now: it wins over the first row's grant although that row registered earlier)
    ["C4", "13900000004", "2024-01-01", "Y", "", ""],
    ["", "13900000004", "2024-06-01", "N", "", ""],
    # C6: undated grants, the later registration wins
    ["C6", "13900000006", "2024-01-01", "N", "", "2023-01-01 10:00:00"],
    ["", "13900000006", "2024-06-01", "Y", "", ""],
    # C5: no decision at all
    ["C5", "13900000005", "2024-01-01", "", "", ""],
]


def _write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def _profile_of(env: Any, crm_id: str) -> str:
    with env.gk.engine.connect() as c:
        return c.execute(
            sa.select(identities.c.profile_id).where(
                identities.c.workspace_id == env.ws.workspace_id,
                identities.c.id_type == "crm_id",
                identities.c.id_value == crm_id,
            )
        ).scalar_one()


def test_consent_columns_keep_the_latest_decision_per_profile(env_any: Any, tmp_path: Path) -> None:
    env = env_any
    ws = env.ws.workspace_id
    before = datetime.now(UTC).replace(tzinfo=None)
    s = env.gk.importer.run(ws, "customers", _write(tmp_path / "crm.csv", ROWS), MAPPING)
    assert (s.rows_read, s.accepted, s.quarantined) == (11, 11, 0)
    p = {c: _profile_of(env, c) for c in ("C1", "C2", "C3", "C4", "C5", "C6")}
    assert len(set(p.values())) == 6  # the phone-only rows joined their customer
    assert list(s.profile_ids) == sorted(set(p.values()))  # sorted, each once
    with env.gk.engine.connect() as c:
        got = {
            (r.profile_id, r.channel): (r.status, r.updated_at.replace(tzinfo=None))
            for r in c.execute(sa.select(consents).where(consents.c.workspace_id == ws))
        }
        refs = {
            (r.target, orjson.loads(r.detail)["channel"]): orjson.loads(r.detail)["ref"]
            for r in c.execute(
                sa.select(audit_log).where(audit_log.c.workspace_id == ws, audit_log.c.action == "consent.set")
            )
        }
    c4 = got.pop((p["C4"], "sms"))
    assert c4[0] == "denied" and before <= c4[1] <= datetime.now(UTC).replace(tzinfo=None)
    assert got == {
        (p["C1"], "sms"): ("denied", datetime(2024, 3, 1, 2)),
        (p["C2"], "sms"): ("denied", datetime(2024, 2, 1, 2)),
        (p["C2"], "email"): ("granted", datetime(2024, 2, 1, 2)),
        (p["C3"], "sms"): ("denied", datetime(2024, 5, 1, 2)),
        (p["C3"], "email"): ("denied", datetime(2024, 1, 1, 2)),
        (p["C6"], "sms"): ("granted", datetime(2024, 5, 31, 16)),
    }
    # the audit names the row each decision came from
    assert refs == {
        (p["C1"], "sms"): "row 2",
        (p["C2"], "sms"): "row 4",
        (p["C2"], "email"): "row 3",
        (p["C3"], "sms"): "row 5",
        (p["C3"], "email"): "row 6",
        (p["C4"], "sms"): "row 8",
        (p["C6"], "sms"): "row 10",
    }
    # a forced re-import of the same file changes nothing
    again = env.gk.importer.run(ws, "customers", tmp_path / "crm.csv", MAPPING, force=True)
    assert again.status == "done"
    with env.gk.engine.connect() as c:
        n = c.execute(
            sa.select(sa.func.count())
            .select_from(audit_log)
            .where(audit_log.c.workspace_id == ws, audit_log.c.action == "consent.set")
        ).scalar_one()
    assert n == 7


def test_a_file_without_consent_values_records_none(env: Any, tmp_path: Path) -> None:
    rows = [[r[0], r[1], r[2], "", "", ""] for r in ROWS if r[0]]
    s = env.gk.importer.run(env.ws.workspace_id, "customers", _write(tmp_path / "none.csv", rows), MAPPING)
    assert s.accepted == 6
    with env.gk.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(consents)).scalar_one() == 0


def test_a_crm_opt_out_without_a_date_stands_against_an_earlier_online_grant(env: Any, tmp_path: Path) -> None:
    """Before, the file's 退订 was dated at the customer's registration (2019) and lost to the grant
    the app had recorded in 2025: the customer the CRM had opted out was texted (found by a review)."""
    ws = env.ws.workspace_id
    r = env.post("/v1/identify", {"userId": "fay", "traits": {"phone": "13600000002", "consent": {"sms": True}},
                                  "timestamp": "2025-03-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    path = tmp_path / "crm.csv"
    path.write_text("phone,registered_at,consent_sms\n13600000002,2019-05-01,退订\n", encoding="utf-8")
    s = env.gk.importer.run(ws, "customers", path, {"phone": "phone", "registered_at": "registered_at",
                                                    "consent_sms": "consent_sms"})
    assert (s.accepted, s.quarantined) == (1, 0)
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(consents.c.status, consents.c.source).where(consents.c.workspace_id == ws)).all()
    assert [tuple(r) for r in rows] == [("denied", "import")]


def test_a_later_file_restating_an_opt_out_moves_its_date(env: Any, tmp_path: Path) -> None:
    """A re-import records no new decision for the audit log, but a later file saying the same must
    still date it later: before (a review of the re-import rule), the 2025 opt-out kept its 2019 date
    and a store's 2022 grant overturned it."""
    mapping = {"crm_id": "crm_id", "consent_sms": "consent_sms", "consent_updated_at": "consent_updated_at"}
    for name, row in (("crm_2019.csv", "C1,退订,2019-01-01 00:00:00"), ("crm_2025.csv", "C1,退订,2025-06-01 00:00:00"),
                      ("store_2022.csv", "C1,同意,2022-03-01 00:00:00")):
        path = tmp_path / name
        path.write_text("crm_id,consent_sms,consent_updated_at\n" + row + "\n", encoding="utf-8")
        s = env.gk.importer.run(env.ws.workspace_id, "customers", path, mapping)
        assert (s.accepted, s.quarantined) == (1, 0)
    with env.gk.engine.connect() as c:
        got = c.execute(sa.select(consents.c.status, consents.c.updated_at)).all()
        audited = c.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.action == "consent.set")).scalar_one()
    assert [(r.status, r.updated_at.replace(tzinfo=None)) for r in got] == [("denied", datetime(2025, 5, 31, 16))]
    assert audited == 1  # the first file's decision; the second restated it, the third was older


def test_a_denial_wins_a_tie(env: Any, tmp_path: Path) -> None:
    """A file with day-only dates: a grant of the same instant as a stored denial does not overwrite it,
    as the send guardrails read a tie (a review of the consent changes)."""
    mapping = {"crm_id": "crm_id", "consent_sms": "consent_sms", "consent_updated_at": "consent_updated_at"}
    for name, row in (("a.csv", "C1,退订,2024-03-01"), ("b.csv", "C1,同意,2024-03-01")):
        path = tmp_path / name
        path.write_text("crm_id,consent_sms,consent_updated_at\n" + row + "\n", encoding="utf-8")
        assert env.gk.importer.run(env.ws.workspace_id, "customers", path, mapping).accepted == 1
    with env.gk.engine.connect() as c:
        assert c.execute(sa.select(consents.c.status)).scalars().all() == ["denied"]
