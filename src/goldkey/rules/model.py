"""The condition language: one typed rule model for tags, segments, triggers and offer eligibility.

A rule is a tree of conditions, serialised as JSON with a ``kind`` on every node:

- ``attribute``: a comparison on one profile field (``attributes.city``, ``traits.orders_90d``,
  ``tags.vip``, ``scores.churn``, ``profile.first_seen_at``, ``orders.revenue`` ...);
- ``event``: did / did not do an event, how many times, with property filters, within a window;
- ``sequence``: event A then event B (then C) within N days;
- ``and`` / ``or`` / ``not``, nested.

Semantics (both evaluators implement exactly these; ``docs/rules.md`` shows them with examples):

- Logic is two-valued. A comparison on a missing value is false, whatever the operator, except
  ``is_not_set``; ``not`` is plain negation. So ``not (city = "Shanghai")`` includes profiles with
  no city, while ``city != "Shanghai"`` does not.
- Values are typed by the field catalog (string, number, boolean, datetime, list). A stored value
  of another type counts as missing (see ``goldkey.rules.values.coerce``).
- Time: every rule is evaluated ``as_of`` an instant (now, by default). Events after ``as_of`` never
  count. ``last_days: N`` covers ``as_of - N days <= timestamp <= as_of`` (both ends included).
  ``start`` is inclusive and ``end`` exclusive; a date without a time means that day's midnight in
  the window's ``tz`` (so ``end: 2026-01-31`` stops at the start of 31 January; write the next day
  to include it).
- Event property filters look at top-level properties; the filter's type comes from its value
  (or ``type``): a number filter matches JSON numbers only, a string filter JSON strings only.
- ``sequence``: there are events e1, e2 (, e3) matching the steps with strictly increasing
  timestamps and ``e_last - e1 <= within_days``; the first step must lie in the window.

Names (fields, properties, events) are never spliced into SQL: the batch compiler binds them
through Ibis as literals, and property and field names are restricted to word characters.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

FieldType = Literal["string", "number", "boolean", "datetime", "list"]

AttributeOp = Literal[
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "is_set",
    "is_not_set",
    "before",
    "after",
    "within_last_days",
]

# which operators each field type accepts
OPS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": frozenset(
        {"eq", "ne", "in", "not_in", "contains", "not_contains", "starts_with", "is_set", "is_not_set"}
    ),
    "number": frozenset({"eq", "ne", "lt", "lte", "gt", "gte", "between", "in", "not_in", "is_set", "is_not_set"}),
    "boolean": frozenset({"eq", "ne", "is_set", "is_not_set"}),
    "datetime": frozenset({"before", "after", "between", "within_last_days", "is_set", "is_not_set"}),
    "list": frozenset({"contains", "not_contains", "is_set", "is_not_set"}),
}
# property filters on events: their type comes from the value, dates are not typed in JSON
PROPERTY_OPS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": OPS_BY_TYPE["string"],
    "number": OPS_BY_TYPE["number"],
    "boolean": OPS_BY_TYPE["boolean"],
}
NO_VALUE_OPS = frozenset({"is_set", "is_not_set"})
LIST_VALUE_OPS = frozenset({"in", "not_in", "between"})

FIELD_SOURCES = ("attributes", "traits", "tags", "scores", "profile", "orders")
_NAME = re.compile(r"^[^\W\d]\w{0,99}\Z")  # a word: letters (any script), digits, underscore
_FIELD = re.compile(r"^(attributes|traits|tags|scores|profile|orders)\.([^\W\d]\w{0,99})\Z")
EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
MAX_DEPTH = 8
MAX_CONDITIONS = 64


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelativeTime(_Node):
    """A moment relative to the evaluation time: ``{"days_ago": 90}``."""

    days_ago: float = Field(ge=0, le=36500)


Scalar = str | float | int | bool | datetime | date


class AttributeCondition(_Node):
    """A comparison on one profile field."""

    kind: Literal["attribute"] = "attribute"
    field: str = Field(description="`source.name`, e.g. `attributes.city`, `traits.orders_90d`, `tags.vip`")
    op: AttributeOp
    value: Scalar | RelativeTime | list[Scalar] | None = None

    @field_validator("field")
    @classmethod
    def _field_name(cls, v: str) -> str:
        if not _FIELD.match(v):
            raise ValueError(
                f"field must be one of {', '.join(FIELD_SOURCES)} followed by '.' and a name of letters, "
                f"digits and underscores (got {v[:120]!r})"
            )
        return v

    @model_validator(mode="after")
    def _value_shape(self) -> AttributeCondition:
        _check_value_shape(self.op, self.value, allow_relative=True)
        return self


class PropertyFilter(_Node):
    """A filter on one top-level event property."""

    property: str
    op: AttributeOp
    value: str | float | int | bool | list[str | float | int | bool] | None = None
    type: Literal["string", "number", "boolean"] | None = Field(
        None, description="the property's JSON type; inferred from the value when omitted"
    )

    @field_validator("property")
    @classmethod
    def _prop_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"property must be a name of letters, digits and underscores (got {v[:120]!r})")
        return v

    @model_validator(mode="after")
    def _value_shape(self) -> PropertyFilter:
        _check_value_shape(self.op, self.value, allow_relative=False)
        t = self.value_type
        if t is None:
            raise ValueError("give 'type' (string, number or boolean) for is_set / is_not_set")
        if self.op not in PROPERTY_OPS_BY_TYPE[t]:
            raise ValueError(f"operator '{self.op}' does not apply to {t} properties")
        for v in _values(self.value):
            if _json_type(v) != t:
                raise ValueError(f"value {v!r} is not a {t}")
        return self

    @property
    def value_type(self) -> str | None:
        """The JSON type this filter compares (declared, or from the value)."""
        if self.type is not None:
            return self.type
        vals = _values(self.value)
        return _json_type(vals[0]) if vals else None


class Window(_Node):
    """A time window for event conditions. Give one of ``last_days``, ``start``/``end`` or ``since``."""

    last_days: float | None = Field(None, gt=0, le=36500)
    start: datetime | date | None = None
    end: datetime | date | None = None
    since: Literal["day", "week", "month", "year"] | None = Field(
        None, description="from the start of the current calendar day/week/month/year in `tz`"
    )
    tz: str = "UTC"

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        kinds = [self.last_days is not None, self.start is not None or self.end is not None, self.since is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of last_days, start/end, or since")
        from goldkey.rules.values import window_bounds_static, zone

        zone(self.tz)  # raises on an unknown zone
        if self.start is not None and self.end is not None:
            lo, hi = window_bounds_static(self)
            if hi <= lo:
                raise ValueError("the window's end must be after its start")
        return self


class Count(_Node):
    """How many matching events: ``at_least`` / ``at_most`` / ``exactly`` ``n``."""

    op: Literal["at_least", "at_most", "exactly"] = "at_least"
    n: int = Field(1, ge=0, le=1_000_000)


class EventCondition(_Node):
    """Did (or did not) do an event, how many times, with which properties, within which window."""

    kind: Literal["event"] = "event"
    event: str | None = Field(None, description="the event name (track) or page/screen name; none = any")
    type: Literal["track", "page", "screen", "identify", "group", "alias"] = "track"
    did: bool = True
    count: Count | None = None
    where: list[PropertyFilter] = Field(default_factory=list, max_length=16)
    window: Window | None = None

    @field_validator("event")
    @classmethod
    def _event_name(cls, v: str | None) -> str | None:
        if v is not None and not (0 < len(v) <= 200):
            raise ValueError("event name must be 1 to 200 characters")
        return v

    @model_validator(mode="after")
    def _did_count(self) -> EventCondition:
        if not self.did and self.count is not None:
            raise ValueError("'did: false' means no matching event; do not give a count with it")
        if self.type == "track" and self.event is None:
            raise ValueError("a track condition needs an event name")
        return self

    @property
    def effective_count(self) -> Count:
        """The count test this condition applies (did not = exactly 0)."""
        if not self.did:
            return Count(op="exactly", n=0)
        return self.count or Count()


class SequenceStep(_Node):
    """One step of a sequence: an event with optional property filters."""

    event: str | None = None
    type: Literal["track", "page", "screen", "identify", "group", "alias"] = "track"
    where: list[PropertyFilter] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _named(self) -> SequenceStep:
        if self.type == "track" and not self.event:
            raise ValueError("a track step needs an event name")
        return self


class SequenceCondition(_Node):
    """Event A then B (then C), each later than the one before, all within ``within_days`` of the first."""

    kind: Literal["sequence"] = "sequence"
    steps: list[SequenceStep] = Field(min_length=2, max_length=3)
    within_days: float = Field(gt=0, le=3650)
    did: bool = True
    window: Window | None = None


class AndCondition(_Node):
    kind: Literal["and"] = "and"
    conditions: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)


class OrCondition(_Node):
    kind: Literal["or"] = "or"
    conditions: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)


class NotCondition(_Node):
    kind: Literal["not"] = "not"
    condition: Condition


Condition = Annotated[
    AttributeCondition | EventCondition | SequenceCondition | AndCondition | OrCondition | NotCondition,
    Field(discriminator="kind"),
]
AndCondition.model_rebuild()
OrCondition.model_rebuild()
NotCondition.model_rebuild()

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Condition)


def parse_rule(data: Any) -> Any:
    """Parse a rule from JSON-able data; raises pydantic.ValidationError naming the clause."""
    rule = _ADAPTER.validate_python(data)
    _check_size(rule)
    return rule


def rule_to_json(rule: Any) -> dict[str, Any]:
    """Serialise a rule to JSON-able data (the inverse of ``parse_rule``)."""
    return _ADAPTER.dump_python(rule, mode="json", exclude_none=True)


def iter_nodes(rule: Any, path: str = "") -> Any:
    """Yield (path, node) for every node of the tree, depth first; paths look like
    ``conditions[1].condition``."""
    yield path, rule
    if isinstance(rule, AndCondition | OrCondition):
        for i, c in enumerate(rule.conditions):
            yield from iter_nodes(c, f"{path}.conditions[{i}]" if path else f"conditions[{i}]")
    elif isinstance(rule, NotCondition):
        yield from iter_nodes(rule.condition, f"{path}.condition" if path else "condition")


def _check_size(rule: Any) -> None:
    def depth(node: Any) -> int:
        if isinstance(node, AndCondition | OrCondition):
            return 1 + max(depth(c) for c in node.conditions)
        if isinstance(node, NotCondition):
            return 1 + depth(node.condition)
        return 1

    if depth(rule) > MAX_DEPTH:
        raise ValueError(f"rule nests deeper than {MAX_DEPTH} levels")
    if sum(1 for _ in iter_nodes(rule)) > 4 * MAX_CONDITIONS:
        raise ValueError(f"rule has more than {4 * MAX_CONDITIONS} clauses")


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return "string"


def _check_value_shape(op: str, value: Any, *, allow_relative: bool) -> None:
    if op in NO_VALUE_OPS:
        if value is not None:
            raise ValueError(f"operator '{op}' takes no value")
        return
    if value is None:
        raise ValueError(f"operator '{op}' needs a value")
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("'between' needs a value of two items [low, high]")
    elif op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"'{op}' needs a non-empty list of values")
        if len(value) > 1000:
            raise ValueError(f"'{op}' takes at most 1000 values")
    elif isinstance(value, list):
        raise ValueError(f"operator '{op}' takes one value, not a list")
    if op == "within_last_days":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError("'within_last_days' needs a positive number of days")
    if isinstance(value, RelativeTime) and (not allow_relative or op not in ("before", "after")):
        raise ValueError("a relative time ({'days_ago': N}) only goes with 'before' or 'after'")
    for v in _values(value):
        if isinstance(v, float) and v != v:
            raise ValueError("NaN is not a value")
        if isinstance(v, str) and len(v) > 1000:
            raise ValueError("values are at most 1000 characters")
