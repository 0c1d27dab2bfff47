"""Identifiers: time-ordered, URL-safe, unique without coordination.

An id is a prefix, ``_`` and 26 Crockford base32 characters (lower case): 10 for the milliseconds
since the epoch (48 bits), 8 for a random number drawn once per process (40 bits, drawn again in a
forked child) and 8 for a per-process counter that starts at a random value (40 bits). Ids of one
prefix sort by creation time (to the millisecond; within one process strictly by creation), two
processes collide only if they draw the same 40-bit number and their counters overlap in the same
millisecond, and making one costs a counter increment and a few table look-ups instead of
``os.urandom`` and a base32 loop per id.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# every 10-bit value as two base32 characters: 40 bits are four look-ups
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_MASK40 = (1 << 40) - 1


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def _b32_40(n: int) -> str:
    p = _PAIRS
    return p[n >> 30] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]


class _State:
    """The per-process part of every id: the random middle and the counter."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.node = _b32_40(int.from_bytes(os.urandom(5), "big"))
        # start low enough that the counter never wraps in a process's lifetime
        self.counter = itertools.count(int.from_bytes(os.urandom(5), "big") >> 1)
        self.ms = -1
        self.ms_text = ""
        self.lock = threading.Lock()


_state = _State()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_state.reseed)


def _ms_text() -> str:
    ms = time.time_ns() // 1_000_000
    st = _state
    if ms != st.ms:
        st.ms_text = _b32(ms, 10)
        st.ms = ms
    return st.ms_text


def new_id(prefix: str) -> str:
    """Return a new id like ``prf_01jd...``: a prefix, 48 bits of milliseconds and 80 bits that
    make it unique (a per-process random number and a counter).

    Ids of one prefix sort by creation time.
    """
    st = _state
    with st.lock:  # the time text and the counter must advance together
        head = _ms_text()
        n = next(st.counter)
    return f"{prefix}_{head}{st.node}{_b32_40(n & _MASK40)}"


def new_ids(prefix: str, n: int) -> list[str]:
    """Return ``n`` new ids at once (all of the current millisecond, in creation order)."""
    if n <= 0:
        return []
    st = _state
    with st.lock:
        head = f"{prefix}_{_ms_text()}{st.node}"
        first = next(st.counter)
        # claim the whole range: the counter continues after it
        st.counter = itertools.count(first + n)
    p = _PAIRS
    out: list[str] = []
    c, end = first, first + n
    while c < end:  # blocks of up to 1024 ids share all but the last two characters
        lo = c & 1023
        take = min(1024 - lo, end - c)
        m = c & _MASK40
        mid = head + p[m >> 30] + p[(m >> 20) & 1023] + p[(m >> 10) & 1023]
        out += [mid + x for x in p[lo : lo + take]]
        c += take
    return out


def new_secret(prefix: str) -> str:
    """Return a new random secret (write keys, admin tokens) with a readable prefix."""
    return f"{prefix}_{secrets.token_urlsafe(24)}"
