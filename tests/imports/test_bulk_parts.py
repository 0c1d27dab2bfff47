"""The columnwise pieces of the bulk import agree with the value-by-value code they replace:
identifier normalisation, attribute JSON, timestamps in the stored form; and the fast id
generator keeps the id format, order and uniqueness."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta, timezone

import orjson
import polars as pl
import pytest
import sqlalchemy as sa

from goldkey.collect.importer import _attribute_json_py, _iso, attribute_json
from goldkey.core.ids import new_id, new_ids
from goldkey.identity.graph import IdentityGraph, ts_column, ts_param
from goldkey.identity.rules import IdentityRules
from goldkey.store.operational import metadata, profiles

ID = re.compile(r"^prf_[0-9a-hjkmnp-tv-z]{26}$")

STRINGS = [
    None,
    "abc",
    " abc ",
    "ABC",
    "Unknown",
    "UNKNOWN ",
    "n/a",
    "N/A",
    "-",
    "0",
    "test",
    "",
    "   ",
    "a" * 200,
    "a" * 201,
    " " + "a" * 200,
    "中文",
    "ａｂｃ",
    "\u00a0x\u00a0",
    "x\x1c",
    "\x1cx",
    "İstanbul",
    "x y",
    "tab\there",
    "+8613800138000",
    "+8613800000000",
]
EMAILS = [
    *STRINGS,
    "Wang@Example.com",
    " a@b.co ",
    "a@b",
    "not-an-email",
    "A@B.C",
    "ÄÖ@x.com",
    "a b@x.com",
    "NULL",
    "x@y.z\u00a0",
]
PHONES = [
    *STRINGS,
    "+8613912345678",
    "13912345678",
    "139 1234 5678",
    "+86 139-1234-5678",
    "8613912345678",
    "12345",
    "+12025550123",
    "010-12345678",
    "+861391234567",
    "+86139123456789",
    "+8612345678901",
    "tel:13912345678",
]


@pytest.mark.parametrize(
    ("id_type", "values"),
    [
        ("crm_id", STRINGS),
        ("user_id", STRINGS),
        ("email", EMAILS),
        ("phone", PHONES),
        ("member_card", [1, 0, None, 12345, -7]),
        ("member_card", [1.5, 2.0, None, float("nan")]),
        ("member_card", [True, False, None]),
        ("member_card", [date(2020, 1, 2), None]),
    ],
)
def test_normalised_column_matches_value_by_value(id_type: str, values: list[object]) -> None:
    rules = IdentityRules(blocked_by_type={"phone": ["+8613800138000", "+8613800000000"], "crm_id": ["abc"]})
    graph = IdentityGraph(lambda _ws: rules)
    got = graph.normalised_column("w", id_type, pl.Series("x", values, strict=False)).to_list()
    want = []
    for v in values:
        n = graph.normalised("w", [(id_type, v)] if v is not None else [])
        want.append(n[0][1] if n else None)
    assert got == want


def test_attribute_json_matches_python() -> None:
    df = pl.DataFrame(
        {
            "__record": [1, 2, 3],
            "name": ['王"芳"\n', None, "\u2028x\\"],
            "points": [1, None, -(2**62)],
            "balance": [1506.0, 0.1 + 0.2, float("nan")],
            "flag": [True, False, None],
            "birthday": [date(1979, 4, 12), None, date(5, 1, 2)],
            "registered_at": [
                datetime(2017, 4, 11, 18, 4, tzinfo=UTC),
                datetime(2017, 4, 11, 18, 4, 5, 120, tzinfo=UTC),
                None,
            ],
            "local": [datetime(2020, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=8))), None, None],
            "naive": [datetime(2020, 1, 1, 8, 0, 0, 5), None, None],
            "__dedupe_key": ["a", "b", "c"],
        },
        schema_overrides={"local": pl.Datetime("us", "Asia/Shanghai"), "naive": pl.Datetime("us")},
    ).with_columns(
        pl.struct(pl.Series("备注", ["老客户", None, ""]), pl.Series("name", ["extra name", "only extra", None])).alias(
            "extra"
        )
    )
    got = [orjson.loads(x) for x in attribute_json(df).to_list()]
    want = [orjson.loads(x) for x in _attribute_json_py(df).to_list()]
    assert got == want
    assert want[1]["name"] == "only extra" and "points" not in want[1]  # nulls left out, extra fills gaps
    assert want[0]["name"] == '王"芳"\n' and want[0]["备注"] == "老客户"  # a column wins over extra
    assert got[0]["registered_at"] == "2017-04-11T18:04:00+00:00"


def test_timestamps_in_the_stored_form() -> None:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    values = [datetime(2017, 4, 11, 18, 4, 5, 120, tzinfo=UTC), datetime(5, 1, 2, tzinfo=UTC)]
    with engine.begin() as conn:
        col = ts_column(conn, pl.Series(values, dtype=pl.Datetime("us", "UTC")))
        one = [ts_param(conn)(v) for v in values]
        for i, v in enumerate(values):
            conn.execute(
                profiles.insert().values(
                    profile_id=f"p{i}",
                    workspace_id="w",
                    canonical_id="p",
                    origin="new",
                    first_seen_at=v,
                    first_seen_source="x",
                    last_seen_at=v,
                    created_at=v,
                    updated_at=v,
                )
            )
        stored = conn.exec_driver_sql("SELECT first_seen_at FROM profiles ORDER BY profile_id").scalars().all()
    assert col == one == stored
    assert _iso(pl.Series(values, dtype=pl.Datetime("us", "UTC"))).to_list() == [v.isoformat() for v in values]


def test_ids_keep_format_order_and_uniqueness() -> None:
    a = [new_id("prf") for _ in range(1500)]
    b = new_ids("prf", 3000)
    c = [new_id("prf") for _ in range(10)]
    every = a + b + c
    assert all(ID.match(x) for x in every)
    assert every == sorted(every) and len(set(every)) == len(every)
    assert new_ids("prf", 0) == []


def test_ids_differ_in_a_forked_child() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, ",".join(new_ids("prf", 5)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 1000).decode().split(",")
    mine = new_ids("prf", 5)
    assert not set(child) & set(mine)
    assert {x[14:22] for x in child} != {x[14:22] for x in mine}  # the per-process part
