"""Normalising identifier values so the same person's identifier always looks the same."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

_CN_MOBILE = re.compile(r"^(?:\+?86)?(1[3-9]\d{9})$")
_SEPARATORS = re.compile(r"[\s\-().]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@lru_cache(maxsize=200_000)
def normalize_phone(raw: str, region: str = "CN") -> str | None:
    """Return ``raw`` as an E.164 phone number, or None when it is not a valid number."""
    s = _SEPARATORS.sub("", raw.strip())
    if region == "CN":
        m = _CN_MOBILE.match(s)
        if m:
            return "+86" + m.group(1)
    try:
        num = phonenumbers.parse(s, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str | None:
    """Return ``raw`` stripped and lower-cased, or None when it is not an e-mail address."""
    s = raw.strip().lower()
    return s if _EMAIL.match(s) else None


def normalize_identifier(id_type: str, raw: object, region: str = "CN") -> str | None:
    """Return the normal form of an identifier value, or None when it cannot identify anyone."""
    if raw is None or isinstance(raw, (dict, list, bool)):
        return None
    s = str(raw).strip()
    if not s or len(s) > 200:
        return None
    if id_type == "phone":
        return normalize_phone(s, region)
    if id_type == "email":
        return normalize_email(s)
    return s
