"""Errors shared by every Goldkey package. Each carries what a user needs to fix the input."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

_M = TypeVar("_M", bound=BaseModel)


class GoldkeyError(Exception):
    """Base class of Goldkey's own errors."""

    status_code = 500


class InvalidInput(GoldkeyError):
    """A record or request field is wrong; ``record`` and ``field`` say where."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, record: int | str | None = None) -> None:
        self.message = message
        self.field = field
        self.record = record
        where = []
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-able description of the error."""
        return {"record": self.record, "field": self.field, "error": self.message}


class TooLarge(InvalidInput):
    """A body or event exceeds the documented limit."""

    status_code = 413


class Unauthorized(GoldkeyError):
    """Missing or unknown credentials."""

    status_code = 401


class Forbidden(GoldkeyError):
    """Credentials valid, but not for this workspace or action."""

    status_code = 403


class NotFound(GoldkeyError):
    """The named object does not exist in this workspace."""

    status_code = 404


class Conflict(GoldkeyError):
    """The request conflicts with the current state (e.g. undoing a merge out of order)."""

    status_code = 409


class Overloaded(GoldkeyError):
    """The ingestion queue is full: retry after ``retry_after`` seconds; nothing was accepted."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:  # noqa: D107
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(GoldkeyError):
    """A store could not complete the write; nothing was acknowledged, the client should retry."""

    status_code = 503
    retry_after = 2


def validated(model: type[_M], data: Any, *, field: str | None = None, prefix: str | None = None) -> _M:
    """``model.model_validate(data)``, or :class:`InvalidInput` naming the first problem: its message
    (pydantic's "Value error, " prefix dropped) and its location as the field (under ``prefix``;
    ``field`` when the problem has no location).

    The InvalidInput is raised after the ``except`` block, with only strings taken from the
    ValidationError: raised inside it, the InvalidInput would chain to the ValidationError, which
    holds each validator's exception (its traceback, the caller's frames and all they reach) where
    the garbage collector cannot see it (pydantic-core does not traverse it). Any reference cycle
    through the InvalidInput, such as a caller keeping it, would then never be freed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, loc = validation_problem(exc)
    where = ".".join(p for p in (prefix, loc) if p) or field
    raise InvalidInput(message, field=where)


def loc_path(loc: Any) -> str:
    """A pydantic error location as a path: ``graph.nodes[2].config`` (list indexes in brackets)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problem(exc: ValidationError) -> tuple[str, str]:
    """The first problem of a ValidationError as plain strings: (message, dotted location). Raise
    the resulting error after the ``except`` block (see :func:`validated`)."""
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    return err["msg"].removeprefix("Value error, "), ".".join(str(p) for p in err["loc"])
