"""Identifiers: time-ordered, URL-safe, unique without coordination."""

from __future__ import annotations

import os
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """Return a new id like ``prf_01jd...``: a prefix, 48 bits of milliseconds and 80 random bits.

    Ids of one prefix sort by creation time.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_b32(ms, 10)}{_b32(rand, 16)}"


def new_secret(prefix: str) -> str:
    """Return a new random secret (write keys, admin tokens) with a readable prefix."""
    return f"{prefix}_{secrets.token_urlsafe(24)}"
