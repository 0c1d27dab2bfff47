"""Errors shared by every Goldkey package. Each carries what a user needs to fix the input."""

from __future__ import annotations


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
