"""Time helpers. Every timestamp Goldkey stores is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def parse_iso(value: object) -> datetime:
    """Parse an ISO-8601 timestamp (``Z`` or offset; naive means UTC) into an aware UTC datetime.

    Raises ValueError when the value is not a string in ISO-8601 form.
    """
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 string")
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def to_iso(dt: datetime | None) -> str | None:
    """Return ``dt`` as an ISO-8601 UTC string, or None."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_utc(dt: datetime | None) -> datetime | None:
    """Return ``dt`` as aware UTC (SQLite hands back naive UTC datetimes)."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_to_datetime(us: int) -> datetime:
    """Return epoch microseconds (the tracking path's time unit) as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)
