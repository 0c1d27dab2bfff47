"""The batch profile table holds exactly what the in-memory evaluator reads: ``facts_arrow``
(column by column, with fast paths) against ``profile_values`` + ``coerce`` row by row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from goldkey.audience.catalog import BUILTIN_FIELDS, profile_values
from goldkey.audience.facts import facts_arrow
from goldkey.rules.values import coerce, field_column


@dataclass
class Row:
    profile_id: str
    attributes: str
    traits: str
    tags: str
    scores: str
    order_summary: str
    origin: str
    first_seen_at: datetime
    first_seen_source: str
    last_seen_at: datetime


odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(["42", " 3.5 ", "true", "FALSE", "2026-01-02", "2026-01-02T03:04:05+08:00",
                                          "nan", "inf", "1e400"]),
    st.lists(st.one_of(st.text(max_size=3), st.integers(-1000, 1000)), max_size=3),
)
CATALOG = {**BUILTIN_FIELDS, "attributes.a": "string", "attributes.b": "number", "attributes.c": "boolean",
           "attributes.d": "datetime", "attributes.e": "list", "traits.t": "number", "tags.g": "string",
           "scores.s": "number"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({k: odd_values for k in "abcdetgs"}), min_size=1, max_size=20))
def test_columnwise_facts_match_rowwise_coercion(docs: list[dict[str, Any]]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i, d in enumerate(docs):
        attrs = {k: d[k] for k in "abcde" if d[k] is not None}
        summary = {"orders": 2, "revenue": 10.5, "skus": ["A"], "categories": [],
                   "first_order_at": "2025-12-01T00:00:00Z"} if i % 2 else {}
        rows.append(Row(f"p{i}", orjson.dumps(attrs).decode(), orjson.dumps({"t": d["t"]}).decode(),
                        orjson.dumps({"g": d["g"]}).decode(), orjson.dumps({"s": d["s"]}).decode(),
                        orjson.dumps(summary).decode(), "existing" if i % 3 else "new", t0, "tracking", t0))
    table = facts_arrow(rows, CATALOG, {"p0": ["phone", "crm_id"]})
    for i, r in enumerate(rows):
        vals = profile_values(r)
        if r.profile_id == "p0":
            vals["profile.identifier_types"] = ["crm_id", "phone"]
        for f, t in CATALOG.items():
            got = table.column(field_column(f))[i].as_py()
            want = coerce(vals.get(f), t)
            assert got == want, (f, vals.get(f), got, want)
