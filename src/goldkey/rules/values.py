"""Typed values and time bounds shared by both evaluators, and the save-time check of a rule.

Everything that decides a value's type or a window's edges lives here, once: the batch compiler
and the in-memory evaluator both call these functions, so they cannot drift apart.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from goldkey.core.errors import InvalidInput
from goldkey.rules.model import (
    OPS_BY_TYPE,
    AttributeCondition,
    EventCondition,
    RelativeTime,
    SequenceCondition,
    Window,
    iter_nodes,
)

# --------------------------------------------------------------------------- values


def coerce(value: Any, ftype: str) -> Any:
    """Return ``value`` as the catalog type ``ftype``, or None when it is missing or of another type.

    string: str. number: int/float (not bool, not NaN/inf) or a numeric string, as float.
    boolean: bool, or the strings "true"/"false". datetime: datetime/date/ISO string, as aware UTC
    with microsecond precision. list: a non-empty list, its items as strings.
    """
    if value is None:
        return None
    if ftype == "string":
        return value if isinstance(value, str) else None
    if ftype == "number":
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            try:
                f = float(value)
            except OverflowError:  # an int beyond float's range
                return None
        elif isinstance(value, str):
            try:
                f = float(value.strip())
            except (ValueError, OverflowError):
                return None
        else:
            return None
        return f if math.isfinite(f) else None
    if ftype == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return None
    if ftype == "datetime":
        return to_utc(value)
    if ftype == "list":
        if isinstance(value, list | tuple) and value:
            return [v if isinstance(v, str) else str(v) for v in value if v is not None] or None
        return None
    raise ValueError(f"unknown field type {ftype!r}")


def to_utc(value: Any, tz: str = "UTC") -> datetime | None:
    """Return ``value`` (datetime, date or ISO string) as aware UTC; naive values are in ``tz``."""
    if type(value) is datetime and tz == "UTC":  # the common case, fast
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    return dt.astimezone(UTC)


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name``; raises ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def days(n: float) -> timedelta:
    """``n`` days as a timedelta, rounded to whole microseconds (the stores' precision)."""
    return timedelta(microseconds=round(n * 86_400_000_000))


def relative_or_absolute(value: Any, as_of: datetime) -> datetime | None:
    """A datetime rule value: ``{"days_ago": N}`` relative to ``as_of``, or an absolute moment."""
    if isinstance(value, RelativeTime):
        return as_of - days(value.days_ago)
    return to_utc(value)


def window_bounds_static(w: Window) -> tuple[datetime | None, datetime | None]:
    """The absolute (start, end) of a start/end window, in UTC."""
    return (_bound(w.start, w.tz) if w.start is not None else None, _bound(w.end, w.tz) if w.end is not None else None)


def _bound(v: datetime | date, tz: str) -> datetime:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=zone(tz))
        return v.astimezone(UTC)
    return datetime(v.year, v.month, v.day, tzinfo=zone(tz)).astimezone(UTC)


def window_bounds(w: Window | None, as_of: datetime) -> tuple[datetime | None, datetime | None]:
    """Return (lo, end) of a window evaluated at ``as_of``: events count when
    ``lo <= ts`` (if lo), ``ts < end`` (if end) and always ``ts <= as_of``."""
    if w is None:
        return None, None
    if w.last_days is not None:
        return as_of - days(w.last_days), None
    if w.since is not None:
        local = as_of.astimezone(zone(w.tz))
        if w.since == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        elif w.since == "week":
            start = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        elif w.since == "month":
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        else:
            start = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        # re-localise: a DST change between the start and now shifts the offset
        start = start.replace(tzinfo=None).replace(tzinfo=zone(w.tz))
        return start.astimezone(UTC), None
    return window_bounds_static(w)


def as_of_utc(as_of: datetime | None) -> datetime:
    """The evaluation instant as aware UTC with microsecond precision (now when None)."""
    if as_of is None:
        return datetime.now(UTC)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return as_of.astimezone(UTC)


# --------------------------------------------------------------------------- save-time check


def check_rule(
    rule: Any,
    catalog: Mapping[str, str],
    known_events: Iterable[str] | None = None,
    *,
    prefix: str = "rule",
) -> None:
    """Check a parsed rule against a workspace's field catalog (field -> type) and, when given,
    the event names it has seen. Raises InvalidInput whose ``field`` is the clause's path."""
    events = set(known_events) if known_events is not None else None
    for path, node in iter_nodes(rule):
        where = f"{prefix}.{path}" if path else prefix
        if isinstance(node, AttributeCondition):
            _check_attribute(node, catalog, where)
        elif isinstance(node, EventCondition):
            _check_event_name(node.type, node.event, events, where)
        elif isinstance(node, SequenceCondition):
            for i, step in enumerate(node.steps):
                _check_event_name(step.type, step.event, events, f"{where}.steps[{i}]")


def _check_event_name(etype: str, name: str | None, events: set[str] | None, where: str) -> None:
    if etype != "track" or events is None or name is None or name in events:
        return
    close = difflib.get_close_matches(name, sorted(events), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InvalidInput(f"unknown event {name!r}: this workspace has never received it{hint}", field=f"{where}.event")


def _check_attribute(node: AttributeCondition, catalog: Mapping[str, str], where: str) -> None:
    ftype = catalog.get(node.field)
    if ftype is None:
        close = difflib.get_close_matches(node.field, sorted(catalog), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidInput(f"unknown field {node.field!r}{hint}", field=f"{where}.field")
    if node.op not in OPS_BY_TYPE[ftype]:
        allowed = ", ".join(sorted(OPS_BY_TYPE[ftype]))
        raise InvalidInput(
            f"operator '{node.op}' does not apply to {node.field} ({ftype}); use one of: {allowed}",
            field=f"{where}.op",
        )
    if node.op in ("is_set", "is_not_set"):
        return
    if node.op == "within_last_days":
        return  # shape checked by the model: a positive number
    values = node.value if isinstance(node.value, list) else [node.value]
    for v in values:
        if not _fits(v, ftype):
            raise InvalidInput(
                f"value {_show(v)} is not a {_item_type(ftype)} (field {node.field} is {ftype})", field=f"{where}.value"
            )
    if node.op == "between":
        lo, hi = (coerce(v, ftype) if ftype != "datetime" else to_utc(v) for v in values)
        if lo is not None and hi is not None and lo > hi:
            raise InvalidInput("'between' needs low <= high", field=f"{where}.value")


def _item_type(ftype: str) -> str:
    return "string" if ftype == "list" else ftype


def _fits(v: Any, ftype: str) -> bool:
    if ftype == "string" or ftype == "list":
        return isinstance(v, str)
    if ftype == "number":
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if ftype == "boolean":
        return isinstance(v, bool)
    if ftype == "datetime":
        return isinstance(v, RelativeTime) or (not isinstance(v, bool | int | float) and to_utc(v) is not None)
    return False


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def field_column(field: str) -> str:
    """The column that holds ``field`` in a batch profile table (``attributes.city`` ->
    ``attributes__city``). Field names are word characters (see the model), so this is unique."""
    return field.replace(".", "__", 1)


# the Arrow / Ibis type of each catalog type in a batch profile table
BATCH_TYPES = {"string": "string", "number": "float64", "boolean": "boolean", "datetime": "timestamp('UTC', 6)",
               "list": "array<string>"}
