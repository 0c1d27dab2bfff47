"""InvalidInput from a pydantic ValidationError: the first problem, named, and nothing kept alive."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from goldkey.core.errors import InvalidInput, validated


class _Window(BaseModel):
    days: int = 7

    @field_validator("days")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("days must be positive")
        return v


class _Holder:
    """Stands for what a caller's frame reaches (a service, its stores and connections)."""


def _parse(holder: _Holder, data: Any) -> _Window:
    return validated(_Window, data, prefix="window")


def test_the_first_problem_is_named() -> None:
    with pytest.raises(InvalidInput) as info:
        _parse(_Holder(), {"days": 0})
    assert info.value.message == "days must be positive" and info.value.field == "window.days"
    with pytest.raises(InvalidInput) as info:
        validated(_Window, [], field="body")
    assert info.value.field == "body"  # no location: the given field
    assert validated(_Window, {"days": 3}).days == 3


def test_a_kept_error_keeps_nothing_alive() -> None:
    """pydantic-core holds a validator's exception where the garbage collector cannot see it; an
    InvalidInput chained to that ValidationError, kept by a frame its traceback reaches, made a
    cycle the collector could not free: the caller's frames (in the product: the service, its
    stores and their DuckDB connection) lived until the interpreter exited."""
    refs: list[weakref.ref[_Holder]] = []

    def caller() -> None:
        holder = _Holder()
        refs.append(weakref.ref(holder))
        try:
            _parse(holder, {"days": -1})
        except InvalidInput as exc:
            kept = exc  # still in this frame when it returns: a cycle through the error
            assert kept.__context__ is None

    caller()
    gc.collect()
    assert refs[0]() is None


def test_locations_read_as_paths() -> None:
    from goldkey.core.errors import loc_path

    assert loc_path(("graph", "nodes", 2, "config", "duration")) == "graph.nodes[2].config.duration"
    assert loc_path((0, "value")) == "[0].value"
    assert loc_path(["rules[1].rule", "conditions", 0]) == "rules[1].rule.conditions[0]"
    assert loc_path(()) == ""
