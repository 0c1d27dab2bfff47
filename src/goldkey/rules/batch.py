"""The batch compiler: a rule becomes one Ibis expression over a profile table and an event table.

``members(rule, catalog, profiles, events, as_of)`` returns a table with one column, ``profile_id``:
every profile the rule selects, once, exactly as ``goldkey.rules.memory`` would select it profile by
profile (tests/rules/test_agreement.py proves it). The same expression runs on DuckDB and on PySpark.

Shape of the query (the cost is one pass over the events, whatever the rule):

- when the rule reads events, the conjuncts of its top-level ``and`` that read none (attribute
  conditions, and ``and``/``or``/``not`` of them) filter the profile table first, and only the
  events of the profiles left are read (a semi-join, which DuckDB applies in the events' scan): a
  profile they reject is out whatever its events;
- every ``event`` condition of the rule becomes a conditional count in ONE grouped aggregation over
  the events that can matter (``timestamp <= as_of``, inside the union of the windows, of the
  types and names the rule mentions); identical event conditions share a count;
- every ``sequence`` becomes a self-join of the events matching its steps (the earliest second step
  per first step for three-step sequences), reduced to the distinct profiles that have a chain;
- the profile table (only the columns the rule reads) is left-joined to those once each, and the
  rule is one boolean expression over the row: attribute conditions are column predicates, event
  conditions compare a count, sequences test a flag. Every leaf is coalesced to false, so ``not``
  is plain negation (two-valued logic, as in the model's docstring). Each join adds at most one
  row per profile, so the result has one row per selected profile without a ``distinct``.

Nothing from the rule is ever spliced into SQL: values, event names and property names are Ibis
literals (property names are also restricted to word characters by the model). Window edges and
relative times are computed here, in Python, with ``goldkey.rules.values`` and bound as literals.

Event properties: ``events.properties`` is a JSON column (or a string holding JSON). On DuckDB the
typed unwraps of Ibis (``.str`` / ``.float`` / ``.bool``) check the JSON type. Every JSON read
costs, so before the counts (and in each sequence step) every distinct property is extracted once
per event into a column (``properties -> '$.name'``, only on the events of the types and names
whose filters read it), every distinct (property, type) unwrapped once from that, and the filters
compare those columns (a missing or other-typed value is NULL there, so a test on it is false
without a separate presence test). On PySpark, Ibis reads a property with
``get_json_object``, which strips the quotes of strings (so ``"5"`` would pass for the number 5 and
a plain string breaks its unwrap UDF); there the property's raw JSON text is read with the
``$[*].name`` path over ``[properties]``, which keeps strings quoted, and typed from it (in each
filter).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import ibis
import ibis.expr.operations as ops
import ibis.expr.types as ir

from goldkey.rules.model import (
    AndCondition,
    AttributeCondition,
    EventCondition,
    NotCondition,
    OrCondition,
    PropertyFilter,
    SequenceCondition,
    SequenceStep,
    Window,
)
from goldkey.rules.values import (
    as_of_utc,
    check_rule,
    coerce,
    days,
    field_column,
    relative_or_absolute,
    to_utc,
    window_bounds,
)

__all__ = ["members"]

_WORD = re.compile(r"[^\W\d]\w*")  # used with fullmatch: no newline slips past a `$`
_TS = "timestamp('UTC', 6)"


def members(rule: Any, catalog: Mapping[str, str], profiles: ir.Table, events: ir.Table, as_of: datetime) -> ir.Table:
    """Return a table with one column `profile_id`: every profile of `profiles` the rule selects.

    ``profiles`` has one row per ``profile_id`` (so the result has one per selected profile) and,
    for each catalog field the rule uses, the column ``field_column(field)`` typed per
    ``BATCH_TYPES`` (NULL = missing). ``events`` has
    ``profile_id``, ``type``, ``event``, ``name``, ``timestamp`` (UTC) and ``properties`` (JSON, or a
    string of JSON). ``rule`` is a parsed rule; it is checked against ``catalog`` first
    (``check_rule``, raising ``InvalidInput``), since a rule that does not fit the catalog has no
    batch meaning.
    """
    check_rule(rule, catalog)
    return _Compiler(catalog, events, as_of_utc(as_of)).members(rule, profiles)


# --------------------------------------------------------------------------- literals


def _ts(value: datetime) -> ir.TimestampScalar:
    return ibis.literal(value, type=_TS)


def _lit(value: Any, ftype: str) -> ir.Scalar:
    if ftype == "number":
        return ibis.literal(float(value), type="float64")
    if ftype == "boolean":
        return ibis.literal(bool(value), type="boolean")
    if ftype == "datetime":
        return _ts(value)
    return ibis.literal(value, type="string")


# --------------------------------------------------------------------------- value tests


def _value_test(v: ir.Value, op: str, ftype: str, value: Any, as_of: datetime) -> ir.BooleanValue:
    """The test ``op value`` on a present typed value ``v`` (mirrors ``memory._value_test``)."""
    if op == "is_set":
        return ibis.literal(True)
    if op in ("eq", "ne", "lt", "lte", "gt", "gte"):
        ref = coerce(value, ftype)
        if ref is None:  # memory compares with None: only != holds (check_rule rejects these rules)
            return ibis.literal(op == "ne")
        lit = _lit(ref, ftype)
        return {
            "eq": lambda: v == lit,
            "ne": lambda: v != lit,
            "lt": lambda: v < lit,
            "lte": lambda: v <= lit,
            "gt": lambda: v > lit,
            "gte": lambda: v >= lit,
        }[op]()
    if op == "between":
        if ftype == "datetime":
            lo, hi = to_utc(value[0]), to_utc(value[1])
        else:
            lo, hi = coerce(value[0], ftype), coerce(value[1], ftype)
        if lo is None or hi is None:
            raise ValueError(f"'between' bounds {value!r} are not {ftype} values")
        return (v >= _lit(lo, ftype)) & (v <= _lit(hi, ftype))
    if op in ("in", "not_in"):
        refs = sorted({r for r in (coerce(x, ftype) for x in value) if r is not None}, key=repr)
        if not refs:
            return ibis.literal(op == "not_in")
        hit = v.isin([_lit(r, ftype) for r in refs])
        return hit if op == "in" else ~hit
    if op in ("contains", "not_contains"):
        if ftype != "list" and value == "":  # every string contains ""
            return ibis.literal(op == "contains")
        hit = v.contains(ibis.literal(str(value) if ftype == "list" else value, type="string"))
        return hit if op == "contains" else ~hit
    if op == "starts_with":
        return ibis.literal(True) if value == "" else v.startswith(ibis.literal(value, type="string"))
    if op in ("before", "after"):
        t = relative_or_absolute(value, as_of)
        if t is None:
            raise ValueError(f"{value!r} is not a moment")
        return v < _ts(t) if op == "before" else v > _ts(t)
    if op == "within_last_days":
        return (v >= _ts(as_of - days(value))) & (v <= _ts(as_of))
    raise ValueError(f"unknown operator {op!r}")


def _leaf(
    present: ir.BooleanValue | None, v: ir.Value, op: str, ftype: str, value: Any, as_of: datetime
) -> ir.BooleanValue:
    """A two-valued leaf: missing values fail every operator except ``is_not_set``.

    ``present`` None means NULL is the only missing state of ``v``: a comparison on NULL is NULL,
    coalesced to false, so the value (a JSON extraction, say) need not be computed twice."""
    if op == "is_not_set":
        return (~(v.notnull() if present is None else present)).fill_null(True)
    test = _value_test(v, op, ftype, value, as_of)
    if present is None and isinstance(test.op(), ops.Literal):  # is_set, or a test that does not read v
        present = v.notnull()
    return (test if present is None else present & test).fill_null(False)


def _where(pred: ir.BooleanValue) -> ir.BooleanValue:
    """``pred`` as a filter: a row with a NULL test is dropped like one with a false test, so an
    outer ``fill_null(False)`` goes (the engine then sees the plain test, e.g. an IN it can push
    into the scan)."""
    op = pred.op()
    if isinstance(op, ops.Coalesce) and len(op.arg) == 2:
        last = op.arg[1]
        if isinstance(last, ops.Literal) and last.value is False:
            return op.arg[0].to_expr()
    return pred


def _present(col: ir.Value, ftype: str) -> ir.BooleanValue:
    """Whether a profile column holds a value, as ``coerce`` sees it (NaN/inf and [] are missing)."""
    if ftype == "number":
        return col.notnull() & ~col.isnan() & ~col.isinf()
    if ftype == "list":
        return col.notnull() & (col.length() > 0)
    return col.notnull()


# --------------------------------------------------------------------------- event properties


@ibis.udf.scalar.builtin(name="get_json_object")
def _get_json_object(doc: str, path: str) -> str:  # pragma: no cover - a SQL builtin (Spark)
    """Spark's get_json_object."""


def _check_name(name: str) -> None:
    if not _WORD.fullmatch(name):  # the model already guarantees it; never build a path otherwise
        raise ValueError(f"bad property name {name[:120]!r}")


class _Props:
    """Typed top-level event properties: the JSON value of the filter's type, or NULL."""

    def __init__(self, events: ir.Table) -> None:
        try:
            backend = events._find_backend(use_default=False).name
        except Exception:  # an unbound table: compile for the default dialect
            backend = None
        self.spark = backend == "pyspark"

    def value(self, t: ir.Table, name: str, ptype: str) -> ir.Value:
        if self.spark:
            _check_name(name)
            return self._spark(t["properties"], name, ptype)
        return self.typed(self.item(t, name), ptype)

    @staticmethod
    def item(t: ir.Table, name: str) -> ir.Value:
        """DuckDB: the property's JSON value (``properties -> '$.name'``), NULL when absent."""
        _check_name(name)
        props = t["properties"]
        if props.type().is_string():
            props = props.cast("json")
        return props[ibis.literal(name, type="string")]

    @staticmethod
    def typed(item: ir.Value, ptype: str) -> ir.Value:
        """DuckDB: a JSON value as ``ptype`` when it is a JSON value of that type, else NULL."""
        if ptype == "string":
            return item.str
        if ptype == "number":
            return item.float
        return item.bool

    @staticmethod
    def _spark(props: ir.Value, name: str, ptype: str) -> ir.Value:
        text = props.cast("string")
        # the raw JSON text of the value (strings keep their quotes under a wildcard path)
        raw = _get_json_object(ibis.literal("[").concat(text, ibis.literal("]")), ibis.literal("$[*]." + name))
        first = raw.substr(0, 1)
        if ptype == "string":
            unquoted = _get_json_object(ibis.literal("[").concat(raw, ibis.literal("]")), ibis.literal("$[0]"))
            return ibis.ifelse(first == ibis.literal('"'), unquoted, ibis.null("string"))
        if ptype == "number":
            is_number = first.isin([ibis.literal(c) for c in "-0123456789"])
            return ibis.ifelse(is_number.fill_null(False), raw.try_cast("float64"), ibis.null("float64"))
        return ibis.cases(
            (raw == ibis.literal("true"), ibis.literal(True)),
            (raw == ibis.literal("false"), ibis.literal(False)),
            else_=ibis.null("boolean"),
        )


# --------------------------------------------------------------------------- the compiler

_Key = tuple[str, str]  # (property, type)


def _conjuncts(node: Any) -> list[Any]:
    """The conditions that must all hold for ``node`` to hold (nested ``and`` flattened)."""
    if isinstance(node, AndCondition):
        return [c for sub in node.conditions for c in _conjuncts(sub)]
    return [node]


def _reads_events(node: Any) -> bool:
    """Whether ``node`` has an event or sequence condition anywhere below it."""
    if isinstance(node, AndCondition | OrCondition):
        return any(_reads_events(c) for c in node.conditions)
    if isinstance(node, NotCondition):
        return _reads_events(node.condition)
    return isinstance(node, EventCondition | SequenceCondition)


@dataclass
class _Plan:
    """What a rule needs: its event counts and sequence flags, keyed by their content."""

    counts: dict[str, tuple[str, EventCondition]] = field(default_factory=dict)
    sequences: dict[str, tuple[str, SequenceCondition]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # column -> type

    def count_column(self, node: EventCondition) -> str:
        key = node.model_dump_json(include={"type", "event", "where", "window"})
        if key not in self.counts:
            self.counts[key] = (f"_gk_e{len(self.counts)}", node)
        return self.counts[key][0]

    def sequence_column(self, node: SequenceCondition) -> str:
        key = node.model_dump_json(exclude={"did", "kind"})
        if key not in self.sequences:
            self.sequences[key] = (f"_gk_s{len(self.sequences)}", node)
        return self.sequences[key][0]


class _Compiler:
    def __init__(self, catalog: Mapping[str, str], events: ir.Table, as_of: datetime) -> None:
        self.catalog = catalog
        self.events = events
        self.as_of = as_of
        self.props = _Props(events)
        self.keep: ir.Table | None = None  # the profiles whose events can matter (None: all)

    # ---- the whole query

    def members(self, rule: Any, profiles: ir.Table) -> ir.Table:
        plan = _Plan()
        parts = [(c, self._tree(c, plan)) for c in _conjuncts(rule)]  # the rule holds when all hold
        cols = ["profile_id", *(c for c in plan.fields if c != "profile_id")]
        t = profiles.select(*cols)
        # the conjuncts that read no events decide alone: filter the profiles by them first and
        # read only those profiles' events (a semi-join under the events' scan)
        alone = [build for c, build in parts if not _reads_events(c)]
        if alone and (plan.counts or plan.sequences):
            t = t.filter(*(_where(build(t)) for build in alone))
            self.keep = t.select("profile_id")
            parts = [(c, build) for c, build in parts if _reads_events(c)]
        if plan.counts:
            agg = self._counts(plan)
            names = [c for c, _ in plan.counts.values()]
            t = t.left_join(agg, t["profile_id"] == agg["profile_id"]).select(
                *(t[c] for c in cols), *(agg[c] for c in names)
            )
            cols += names
        for col, node in plan.sequences.values():
            hits = self._sequence(node).mutate(**{col: ibis.literal(True)})
            t = t.left_join(hits, t["profile_id"] == hits["profile_id"]).select(*(t[c] for c in cols), hits[col])
            cols.append(col)
        # one row per profile already: the profile table has one per profile_id and every join
        # adds at most one row (counts are grouped by profile, sequence hits distinct)
        return t.filter(*(_where(build(t)) for _, build in parts)).select("profile_id")

    def _tree(self, node: Any, plan: _Plan) -> Callable[[ir.Table], ir.BooleanValue]:
        """Record what ``node`` needs in ``plan``; return a builder of its predicate on the joined row."""
        if isinstance(node, AttributeCondition):
            ftype = self.catalog[node.field]
            col = field_column(node.field)
            plan.fields[col] = ftype

            def attribute(t: ir.Table) -> ir.BooleanValue:
                v = t[col]
                return _leaf(_present(v, ftype), v, node.op, ftype, node.value, self.as_of)

            return attribute
        if isinstance(node, EventCondition):
            col = plan.count_column(node)
            c = node.effective_count

            def event(t: ir.Table) -> ir.BooleanValue:
                k = t[col].fill_null(0)
                n = ibis.literal(c.n, type="int64")
                test = k >= n if c.op == "at_least" else k <= n if c.op == "at_most" else k == n
                return test.fill_null(False)

            return event
        if isinstance(node, SequenceCondition):
            col = plan.sequence_column(node)
            did = node.did

            def sequence(t: ir.Table) -> ir.BooleanValue:
                hit = t[col].fill_null(False)
                return hit if did else ~hit

            return sequence
        if isinstance(node, AndCondition | OrCondition):
            parts = [self._tree(c, plan) for c in node.conditions]
            both = isinstance(node, AndCondition)

            def combine(t: ir.Table) -> ir.BooleanValue:
                out = parts[0](t)
                for p in parts[1:]:
                    out = (out & p(t)) if both else (out | p(t))
                return out

            return combine
        if isinstance(node, NotCondition):
            inner = self._tree(node.condition, plan)
            return lambda t: ~inner(t)
        raise TypeError(f"not a condition: {node!r}")

    # ---- events

    @staticmethod
    def _kind(t: ir.Table, etype: str, name: str | None) -> ir.BooleanValue:
        """The event is of type ``etype`` and (when given) named ``name`` (NULL when it has no name)."""
        pred = t["type"] == ibis.literal(etype, type="string")
        if name is not None:
            pred &= (t["event"] if etype == "track" else t["name"]) == ibis.literal(name, type="string")
        return pred

    def _match(
        self, t: ir.Table, etype: str, name: str | None, where: list[PropertyFilter], typed: Mapping[_Key, str]
    ) -> ir.BooleanValue:
        """Type, name and property filters of one event condition or step (two-valued).

        A property is read from its column in ``typed`` (see ``_with_props``) when it has one."""
        pred = self._kind(t, etype, name)
        for f in where:
            ptype = f.value_type
            col = typed.get((f.property, ptype))
            v = t[col] if col is not None else self.props.value(t, f.property, ptype)
            pred &= _leaf(None, v, f.op, ptype, f.value, self.as_of)
        return pred.fill_null(False)

    def _with_props(
        self, ev: ir.Table, uses: list[tuple[str, str | None, list[PropertyFilter]]]
    ) -> tuple[ir.Table, dict[_Key, str]]:
        """DuckDB: ``ev`` with every property that ``uses`` (type, name, filters) read, read once.

        Each distinct property becomes a JSON column (one parse of ``properties`` per row), only
        on the rows of the kinds whose filters read it (no other matcher looks at it there); each
        distinct (property, type) becomes a typed column over it, which the matchers compare.
        Returns the table and ``{(property, type): column}``. PySpark: ``ev`` as is, ``{}``."""
        if self.props.spark:
            return ev, {}
        readers: dict[str, set[tuple[str, str | None]]] = {}
        keys: dict[_Key, None] = {}
        for etype, name, where in uses:
            for f in where:
                readers.setdefault(f.property, set()).add((etype, name))
                keys.setdefault((f.property, f.value_type), None)
        if not keys:
            return ev, {}
        kinds = {(etype, name) for etype, name, _ in uses}
        items: dict[str, str] = {}
        json_cols: dict[str, ir.Value] = {}
        for prop, by in readers.items():
            item = self.props.item(ev, prop)
            if not all(k in by or (k[0], None) in by for k in kinds):  # some candidates never read it
                guard = None
                for etype, name in sorted(by, key=repr):
                    k = self._kind(ev, etype, name)
                    guard = k if guard is None else guard | k
                item = ibis.ifelse(guard, item, ibis.null(item.type()))
            items[prop] = f"_gk_j{len(items)}"
            json_cols[items[prop]] = item
        ev = ev.mutate(**json_cols)
        typed = {key: f"_gk_v{i}" for i, key in enumerate(keys)}
        values = {typed[(prop, ptype)]: self.props.typed(ev[items[prop]], ptype) for prop, ptype in keys}
        return ev.mutate(**values), typed

    def _in_window(self, t: ir.Table, window: Window | None) -> ir.BooleanValue | None:
        lo, end = window_bounds(window, self.as_of)
        pred = None
        if lo is not None:
            pred = t["timestamp"] >= _ts(lo)
        if end is not None:
            pred = t["timestamp"] < _ts(end) if pred is None else pred & (t["timestamp"] < _ts(end))
        return pred

    def _candidates(self, nodes: list[tuple[str, str | None, Window | None]]) -> ir.Table:
        """The events up to ``as_of`` that any of ``(type, name, window)`` could count (of the
        profiles in ``self.keep``, when set)."""
        ev = self.events
        pred = ev["timestamp"] <= _ts(self.as_of)
        bounds = [window_bounds(w, self.as_of) for _, _, w in nodes]
        if all(lo is not None for lo, _ in bounds):
            pred &= ev["timestamp"] >= _ts(min(lo for lo, _ in bounds))
        if all(end is not None for _, end in bounds):
            pred &= ev["timestamp"] < _ts(max(end for _, end in bounds))
        by_type: dict[str, set[str] | None] = {}
        for etype, name, _ in nodes:
            if name is None or (etype in by_type and by_type[etype] is None):
                by_type[etype] = None
            else:
                by_type.setdefault(etype, set()).add(name)  # type: ignore[union-attr]
        kinds = None
        for etype, names in sorted(by_type.items()):
            k = ev["type"] == ibis.literal(etype, type="string")
            if names is not None:
                col = ev["event"] if etype == "track" else ev["name"]
                k &= col.isin([ibis.literal(n, type="string") for n in sorted(names)])
            kinds = k if kinds is None else kinds | k
        if kinds is not None:
            pred &= kinds
        if self.keep is not None:
            pred &= ev["profile_id"].isin(self.keep["profile_id"])
        return ev.filter(pred)

    def _counts(self, plan: _Plan) -> ir.Table:
        """One grouped aggregation: the number of matching events per profile for every event condition."""
        nodes = [n for _, n in plan.counts.values()]
        ev = self._candidates([(n.type, n.event, n.window) for n in nodes])
        ev, typed = self._with_props(ev, [(n.type, n.event, n.where) for n in nodes])
        metrics = {}
        for col, node in plan.counts.values():
            pred = self._match(ev, node.type, node.event, node.where, typed)
            window = self._in_window(ev, node.window)
            if window is not None:
                pred = pred & window
            metrics[col] = ev.count(where=pred)
        return ev.group_by("profile_id").aggregate(**metrics)

    def _step(self, step: SequenceStep, window: Window | None) -> ir.Table:
        """The distinct (profile, timestamp) of events matching one step (the first one in its window)."""
        ev = self._candidates([(step.type, step.event, window)])
        ev, typed = self._with_props(ev, [(step.type, step.event, step.where)])
        pred = self._match(ev, step.type, step.event, step.where, typed)
        if window is not None:
            pred &= self._in_window(ev, window)
        return ev.filter(pred).select("profile_id", ts=ev["timestamp"]).distinct()

    def _sequence(self, node: SequenceCondition) -> ir.Table:
        """The distinct profiles with a chain e1 < e2 (< e3), e_last - e1 <= within_days, e1 in the window."""
        span = ibis.interval(microseconds=days(node.within_days) // timedelta(microseconds=1))
        first = self._step(node.steps[0], node.window)
        first = first.mutate(until=first["ts"] + span)
        second = self._step(node.steps[1], None)
        chains = first.join(
            second,
            [first["profile_id"] == second["profile_id"], second["ts"] > first["ts"], second["ts"] <= first["until"]],
        )
        if len(node.steps) == 2:
            return chains.select(first["profile_id"]).distinct()
        # greedy: the earliest second step after each first step leaves the most room for the third
        pairs = chains.group_by(first["profile_id"], first["ts"], first["until"]).aggregate(t2=second["ts"].min())
        third = self._step(node.steps[2], None)
        chains3 = pairs.join(
            third,
            [pairs["profile_id"] == third["profile_id"], third["ts"] > pairs["t2"], third["ts"] <= pairs["until"]],
        )
        return chains3.select(pairs["profile_id"]).distinct()
