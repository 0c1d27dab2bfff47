"""Normalising identifier values so the same person's identifier always looks the same."""

from __future__ import annotations

import re

from goldkey.collect.cleaning import normalise_phone

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_phone(raw: str, region: str = "CN") -> str | None:
    """Return ``raw`` as an E.164 phone number, or None when it is not a valid number."""
    # the same rules (and cache) as imports, so a number matches whichever path it arrived by
    return normalise_phone(raw, region)


def normalize_email(raw: str) -> str | None:
    """Return ``raw`` stripped and lower-cased, or None when it is not an e-mail address."""
    s = raw.strip().lower()
    return s if _EMAIL.match(s) else None


def normalize_identifier(id_type: str, raw: object, region: str = "CN") -> str | None:
    """Return the normal form of an identifier value, or None when it cannot identify anyone."""
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    s = str(raw).strip()
    if not s or len(s) > 200 or not s.isprintable():
        return None
    if id_type == "phone":
        return normalize_phone(s, region)
    if id_type == "email":
        return normalize_email(s)
    return s
