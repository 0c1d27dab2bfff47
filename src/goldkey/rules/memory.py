"""The in-memory evaluator: one profile and its events, in microseconds, with explanations.

``compile_rule(rule, catalog)`` turns a rule into nested closures once; ``matches(profile, events,
as_of)`` then runs them. A profile is a mapping of field (``attributes.city``, ``traits.x`` ...)
to its stored value; values are typed through ``goldkey.rules.values.coerce`` with the catalog's
type, exactly as the batch side types them when it builds its profile table. Events are ``Event``
records (or anything with the same attributes).

This evaluator is the reference for the language's semantics (see ``goldkey.rules.model``); the
batch compiler must select exactly the profiles this one matches (tests/rules prove it).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from goldkey.core.clock import to_iso
from goldkey.rules.model import (
    AndCondition,
    AttributeCondition,
    Count,
    EventCondition,
    NotCondition,
    OrCondition,
    PropertyFilter,
    SequenceCondition,
    SequenceStep,
    Window,
)
from goldkey.rules.values import as_of_utc, coerce, days, relative_or_absolute, to_utc, window_bounds


@dataclass(slots=True)
class Event:
    """An event as the evaluator sees it."""

    type: str
    event: str | None
    timestamp: datetime  # aware UTC
    properties: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None


Predicate = Callable[[Mapping[str, Any], Sequence[Any]], bool]


class CompiledRule:
    """A rule compiled for one catalog. Thread-safe; bind per ``as_of`` is cached for the last instant."""

    def __init__(self, rule: Any, catalog: Mapping[str, str]) -> None:
        self.rule = rule
        self.catalog = dict(catalog)
        self._bound_at: datetime | None = None
        self._pred: Predicate | None = None

    def at(self, as_of: datetime | None = None) -> Predicate:
        """Return the predicate ``(profile, events) -> bool`` for evaluation time ``as_of``."""
        t = as_of_utc(as_of)
        if self._pred is None or t != self._bound_at:
            pred = _compile(self.rule, self.catalog, t)
            self._bound_at, self._pred = t, pred
            return pred
        return self._pred

    def matches(self, profile: Mapping[str, Any], events: Sequence[Any] = (), as_of: datetime | None = None) -> bool:
        """Whether the profile (with its events) satisfies the rule at ``as_of``."""
        return self.at(as_of)(profile, events)

    def explain(self, profile: Mapping[str, Any], events: Sequence[Any] = (), as_of: datetime | None = None) -> dict:
        """The evaluation as a tree: every clause with its result and the values it saw."""
        return _explain(self.rule, self.catalog, profile, events, as_of_utc(as_of), "rule")


def compile_rule(rule: Any, catalog: Mapping[str, str]) -> CompiledRule:
    """Compile a parsed (and checked) rule for the given field catalog."""
    return CompiledRule(rule, catalog)


# --------------------------------------------------------------------------- comparisons

_CMP = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _value_test(op: str, ftype: str, value: Any, as_of: datetime) -> Callable[[Any], bool]:
    """A test on a present, typed value (missing values are handled by the caller)."""
    if op == "is_set":
        return lambda v: True
    if op in _CMP:
        ref = coerce(value, ftype)
        f = _CMP[op]
        return lambda v: f(v, ref)
    if op == "between":
        if ftype == "datetime":
            lo, hi = to_utc(value[0]), to_utc(value[1])
        else:
            lo, hi = coerce(value[0], ftype), coerce(value[1], ftype)
        return lambda v: lo <= v <= hi
    if op in ("in", "not_in"):
        refs = frozenset(coerce(x, ftype) for x in value)
        if op == "in":
            return lambda v: v in refs
        return lambda v: v not in refs
    if op == "contains":
        return lambda v: value in v
    if op == "not_contains":
        return lambda v: value not in v
    if op == "starts_with":
        return lambda v: v.startswith(value)
    if op == "before":
        t = relative_or_absolute(value, as_of)
        return lambda v: v < t
    if op == "after":
        t = relative_or_absolute(value, as_of)
        return lambda v: v > t
    if op == "within_last_days":
        lo = as_of - days(value)
        return lambda v: lo <= v <= as_of
    raise ValueError(f"unknown operator {op!r}")


def _attribute(node: AttributeCondition, catalog: Mapping[str, str], as_of: datetime) -> Predicate:
    ftype = catalog[node.field]
    key = node.field
    if node.op == "is_not_set":
        return lambda p, e: coerce(p.get(key), ftype) is None
    test = _value_test(node.op, ftype, node.value, as_of)
    if ftype == "string":  # coerce of a string field is an isinstance test: skip the call

        def string_pred(p: Mapping[str, Any], e: Sequence[Any]) -> bool:
            v = p.get(key)
            return isinstance(v, str) and test(v)

        return string_pred

    def pred(p: Mapping[str, Any], e: Sequence[Any]) -> bool:
        v = coerce(p.get(key), ftype)
        return v is not None and test(v)

    return pred


def _prop_value(props: Mapping[str, Any], name: str, ptype: str) -> Any:
    v = props.get(name) if props else None
    if v is None:
        return None
    if ptype == "string":
        return v if isinstance(v, str) else None
    if ptype == "number":
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    return v if isinstance(v, bool) else None


def _filter(f: PropertyFilter, as_of: datetime) -> Callable[[Mapping[str, Any]], bool]:
    ptype = f.value_type
    name = f.property
    if f.op == "is_not_set":
        return lambda props: _prop_value(props, name, ptype) is None
    if ptype == "string" and f.op in ("eq", "in"):
        # the common filter (category = lens): only a string equals a string (or is in a set of
        # them), so the typed read and the test collapse into one comparison
        if f.op == "eq":
            ref = coerce(f.value, ptype)
            if isinstance(ref, str):
                return lambda props: bool(props) and props.get(name) == ref
        else:
            refs = frozenset(r for r in (coerce(x, ptype) for x in f.value) if isinstance(r, str))

            def string_in(props: Mapping[str, Any]) -> bool:
                v = props.get(name) if props else None
                return isinstance(v, str) and v in refs

            return string_in
    test = _value_test(f.op, ptype, f.value, as_of)

    def check(props: Mapping[str, Any]) -> bool:
        v = _prop_value(props, name, ptype)
        return v is not None and test(v)

    return check


def _event_matcher(
    etype: str, name: str | None, where: Sequence[PropertyFilter], as_of: datetime
) -> Callable[[Any], bool]:
    filters = [_filter(f, as_of) for f in where]
    by_event = etype == "track"

    def match(ev: Any) -> bool:
        if ev.type != etype:
            return False
        if name is not None and (ev.event if by_event else ev.name) != name:
            return False
        for f in filters:
            if not f(ev.properties):
                return False
        return True

    return match


def _in_window(window: Window | None, as_of: datetime) -> Callable[[datetime], bool]:
    lo, end = window_bounds(window, as_of)
    if lo is not None and end is not None:
        return lambda ts: lo <= ts < end and ts <= as_of
    if lo is not None:
        return lambda ts: lo <= ts <= as_of
    if end is not None:
        return lambda ts: ts < end and ts <= as_of
    return lambda ts: ts <= as_of


def _count_test(c: Count) -> Callable[[int], bool]:
    n = c.n
    if c.op == "at_least":
        return lambda k: k >= n
    if c.op == "at_most":
        return lambda k: k <= n
    return lambda k: k == n


def _counter(
    etype: str, name: str | None, where: Sequence[PropertyFilter], window: Window | None, as_of: datetime
) -> Callable[[Sequence[Any], int], int]:
    """``count(events, limit)``: how many events match (type, name, window, filters), counting no
    further than ``limit`` (the count test is decided by then).

    This loop is the evaluator's hot path (every event of the profile, for every event clause), so
    it tests the name first (the most selective test, a plain attribute comparison) and makes the
    other tests (type, window, property filters: function calls, datetime comparisons) only on the
    events with the clause's name."""
    filters = [_filter(f, as_of) for f in where]
    inside = _in_window(window, as_of)

    def rest(ev: Any) -> bool:
        if ev.type != etype or not inside(ev.timestamp):
            return False
        for f in filters:
            if not f(ev.properties):
                return False
        return True

    if name is None:

        def count_any(events: Sequence[Any], limit: int) -> int:
            k = 0
            for ev in events:
                if rest(ev):
                    k += 1
                    if k >= limit:
                        break
            return k

        return count_any
    if etype == "track":  # a track event's name is in ``event``

        def count_track(events: Sequence[Any], limit: int) -> int:
            k = 0
            for ev in events:
                if ev.event == name and rest(ev):
                    k += 1
                    if k >= limit:
                        break
            return k

        return count_track

    def count_named(events: Sequence[Any], limit: int) -> int:  # page / screen: the name is in ``name``
        k = 0
        for ev in events:
            if ev.name == name and rest(ev):
                k += 1
                if k >= limit:
                    break
        return k

    return count_named


def _event(node: EventCondition, as_of: datetime) -> Predicate:
    count = _counter(node.type, node.event, node.where, node.window, as_of)
    c = node.effective_count
    n = c.n
    if c.op == "at_least":
        return lambda p, events: count(events, n) >= n
    if c.op == "at_most":  # n + 1 matches decide it
        return lambda p, events: count(events, n + 1) <= n
    return lambda p, events: count(events, n + 1) == n


def _sequence_hits(node: SequenceCondition, events: Sequence[Any], as_of: datetime,
                   prepared: tuple[list[Callable[[Any], bool]], Callable[[datetime], bool]] | None = None
                   ) -> list[Any] | None:
    """The first chain of events satisfying the sequence, or None."""
    matchers, first_inside = prepared or _prepare_sequence(node, as_of)
    span = days(node.within_days)
    evs = sorted((ev for ev in events if ev.timestamp <= as_of), key=lambda ev: ev.timestamp)
    for i, e1 in enumerate(evs):
        if not (first_inside(e1.timestamp) and matchers[0](e1)):
            continue
        limit = e1.timestamp + span
        chain = [e1]
        prev_ts = e1.timestamp
        step = 1
        for ev in evs[i + 1 :]:
            if ev.timestamp > limit:
                break
            if ev.timestamp > prev_ts and matchers[step](ev):
                chain.append(ev)
                prev_ts = ev.timestamp
                step += 1
                if step == len(matchers):
                    return chain
        # greedy earliest choice per step is optimal: an earlier match leaves the most room
    return None


def _prepare_sequence(node: SequenceCondition, as_of: datetime
                      ) -> tuple[list[Callable[[Any], bool]], Callable[[datetime], bool]]:
    return [_event_matcher(s.type, s.event, s.where, as_of) for s in node.steps], _in_window(node.window, as_of)


def _sequence(node: SequenceCondition, as_of: datetime) -> Predicate:
    did = node.did
    prepared = _prepare_sequence(node, as_of)  # once per bind, not per profile
    return lambda p, events: (_sequence_hits(node, events, as_of, prepared) is not None) == did


def _compile(node: Any, catalog: Mapping[str, str], as_of: datetime) -> Predicate:
    if isinstance(node, AttributeCondition):
        return _attribute(node, catalog, as_of)
    if isinstance(node, EventCondition):
        return _event(node, as_of)
    if isinstance(node, SequenceCondition):
        return _sequence(node, as_of)
    if isinstance(node, AndCondition):
        parts = [_compile(c, catalog, as_of) for c in node.conditions]
        if len(parts) == 1:
            return parts[0]

        def all_of(p: Mapping[str, Any], e: Sequence[Any]) -> bool:  # a loop: cheaper than all(<genexpr>)
            for f in parts:
                if not f(p, e):
                    return False
            return True

        return all_of
    if isinstance(node, OrCondition):
        parts = [_compile(c, catalog, as_of) for c in node.conditions]
        if len(parts) == 1:
            return parts[0]

        def any_of(p: Mapping[str, Any], e: Sequence[Any]) -> bool:
            for f in parts:
                if f(p, e):
                    return True
            return False

        return any_of
    if isinstance(node, NotCondition):
        inner = _compile(node.condition, catalog, as_of)
        return lambda p, e: not inner(p, e)
    raise TypeError(f"not a condition: {node!r}")


# --------------------------------------------------------------------------- explain


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return to_iso(v)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "model_dump"):
        return v.model_dump(mode="json")
    return v


def _window_desc(w: Window | None, as_of: datetime) -> dict[str, Any]:
    lo, end = window_bounds(w, as_of)
    return {"from": to_iso(lo), "until": to_iso(end), "as_of": to_iso(as_of)}


def _explain(
    node: Any, catalog: Mapping[str, str], profile: Mapping[str, Any], events: Sequence[Any], as_of: datetime, path: str
) -> dict[str, Any]:
    if isinstance(node, AttributeCondition):
        ok = _attribute(node, catalog, as_of)(profile, events)
        seen = coerce(profile.get(node.field), catalog[node.field])
        return {
            "path": path,
            "kind": "attribute",
            "matched": ok,
            "field": node.field,
            "op": node.op,
            "value": _jsonable(node.value),
            "seen": _jsonable(seen),
        }
    if isinstance(node, EventCondition):
        match = _event_matcher(node.type, node.event, node.where, as_of)
        inside = _in_window(node.window, as_of)
        hits = [ev for ev in events if inside(ev.timestamp) and match(ev)]
        c = node.effective_count
        ok = _count_test(c)(len(hits))
        return {
            "path": path,
            "kind": "event",
            "matched": ok,
            "event": node.event,
            "type": node.type,
            "needed": f"{c.op} {c.n}",
            "seen_count": len(hits),
            "last_seen": to_iso(max((ev.timestamp for ev in hits), default=None)),
            "window": _window_desc(node.window, as_of),
        }
    if isinstance(node, SequenceCondition):
        chain = _sequence_hits(node, events, as_of)
        ok = (chain is not None) == node.did
        return {
            "path": path,
            "kind": "sequence",
            "matched": ok,
            "did": node.did,
            "steps": [_step_desc(s) for s in node.steps],
            "within_days": node.within_days,
            "chain": [to_iso(ev.timestamp) for ev in chain] if chain else None,
            "window": _window_desc(node.window, as_of),
        }
    if isinstance(node, AndCondition | OrCondition):
        kids = [
            _explain(c, catalog, profile, events, as_of, f"{path}.conditions[{i}]")
            for i, c in enumerate(node.conditions)
        ]
        agg = all if isinstance(node, AndCondition) else any
        return {"path": path, "kind": node.kind, "matched": agg(k["matched"] for k in kids), "conditions": kids}
    if isinstance(node, NotCondition):
        kid = _explain(node.condition, catalog, profile, events, as_of, f"{path}.condition")
        return {"path": path, "kind": "not", "matched": not kid["matched"], "condition": kid}
    raise TypeError(f"not a condition: {node!r}")


def _step_desc(s: SequenceStep) -> dict[str, Any]:
    return {"type": s.type, "event": s.event, "where": [f.model_dump(mode="json", exclude_none=True) for f in s.where]}
