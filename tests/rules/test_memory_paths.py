"""The in-memory evaluator's fast paths (name-first event scan, early stop at the count limit,
one-comparison string filters) give the answers the rule language defines.

The agreement property test (test_agreement.py) checks random rules against the batch compiler;
these pin by name the cases the fast paths could get wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from goldkey.rules.memory import Event, compile_rule
from goldkey.rules.model import parse_rule

AS_OF = datetime(2026, 3, 1, tzinfo=UTC)
CATALOG = {"attributes.city": "string", "attributes.age": "number"}


def _ev(days_ago: float, event: str = "Order Completed", props: Any = None, etype: str = "track",
        name: str | None = None) -> Event:
    return Event(etype, event if etype == "track" else None, AS_OF - timedelta(days=days_ago),
                 {} if props is None else props, name)


def _matches(rule: dict[str, Any], events: list[Event], profile: dict[str, Any] | None = None) -> bool:
    return compile_rule(parse_rule(rule), CATALOG).matches(profile or {}, events, AS_OF)


@pytest.mark.parametrize(
    ("op", "n", "hits", "expected"),
    [
        ("at_least", 2, 1, False), ("at_least", 2, 2, True), ("at_least", 2, 5, True), ("at_least", 0, 0, True),
        ("at_most", 2, 2, True), ("at_most", 2, 3, False), ("at_most", 0, 0, True), ("at_most", 0, 1, False),
        ("exactly", 2, 1, False), ("exactly", 2, 2, True), ("exactly", 2, 3, False), ("exactly", 0, 0, True),
    ],
)
def test_count_tests_stop_early_without_changing_the_answer(op: str, n: int, hits: int, expected: bool) -> None:
    events = [_ev(1 + i) for i in range(hits)] + [_ev(2, "Product Viewed"), _ev(400)]  # other name, outside
    rule = {"kind": "event", "event": "Order Completed", "count": {"op": op, "n": n}, "window": {"last_days": 30}}
    assert _matches(rule, sorted(events, key=lambda e: e.timestamp)) is expected


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"category": "lens"}, True),
        ({"category": "solution"}, False),
        ({}, False),
        (None, False),
        ({"category": None}, False),
        ({"category": ["lens"]}, False),
        ({"category": {"x": "lens"}}, False),
    ],
)
def test_string_filters_need_a_string(props: Any, expected: bool) -> None:
    ev = Event("track", "Order Completed", AS_OF - timedelta(days=1), props)
    eq = {"kind": "event", "event": "Order Completed", "where": [{"property": "category", "op": "eq", "value": "lens"}]}
    isin = {"kind": "event", "event": "Order Completed",
            "where": [{"property": "category", "op": "in", "value": ["lens", "frames"]}]}
    assert _matches(eq, [ev]) is expected
    assert _matches(isin, [ev]) is expected


def test_a_number_never_equals_its_string() -> None:
    rule = {"kind": "event", "event": "Order Completed", "where": [{"property": "qty", "op": "eq", "value": "5"}]}
    assert not _matches(rule, [_ev(1, props={"qty": 5})])
    assert _matches(rule, [_ev(1, props={"qty": "5"})])


def test_window_edges_and_as_of() -> None:
    rule = {"kind": "event", "event": "Order Completed", "window": {"last_days": 30}}
    assert _matches(rule, [_ev(30)])  # the window's first instant counts
    assert not _matches(rule, [_ev(30 + 1e-6 / 86400 * 2)])
    assert _matches(rule, [_ev(0)])  # as_of itself counts, a later event does not
    assert not _matches(rule, [Event("track", "Order Completed", AS_OF + timedelta(microseconds=1))])


def test_page_events_match_by_name_and_type() -> None:
    rule = {"kind": "event", "type": "page", "event": "Home"}
    assert _matches(rule, [_ev(1, etype="page", name="Home")])
    assert not _matches(rule, [_ev(1, etype="screen", name="Home")])
    assert not _matches(rule, [_ev(1, "Home")])  # a track event named Home is not a page view
    any_page = {"kind": "event", "type": "page"}
    assert _matches(any_page, [_ev(1, etype="page", name="Other")])


def test_string_attribute_needs_a_string() -> None:
    rule = {"kind": "and", "conditions": [
        {"kind": "attribute", "field": "attributes.city", "op": "in", "value": ["上海"]},
        {"kind": "or", "conditions": [
            {"kind": "attribute", "field": "attributes.age", "op": "gte", "value": 30},
            {"kind": "event", "event": "Order Completed"},
        ]},
    ]}
    assert _matches(rule, [], {"attributes.city": "上海", "attributes.age": 31})
    assert _matches(rule, [_ev(1)], {"attributes.city": "上海", "attributes.age": 20})
    assert not _matches(rule, [], {"attributes.city": "上海", "attributes.age": 20})
    assert not _matches(rule, [_ev(1)], {"attributes.city": ["上海"], "attributes.age": 31})
    assert not _matches(rule, [_ev(1)], {"attributes.age": 31})
