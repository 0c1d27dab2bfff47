"""The least role each API route needs: the one table the Caller dependency (``goldkey.api.deps``)
checks.

A route is named by its method and its path as the router declares it (FastAPI's
``route.path_format``, e.g. ``/api/v1/segments/{segment_id}``). The rule for a route is, in order:
its entry in ``EXCEPTIONS``; else the ``AREAS`` entry with the longest prefix that contains the path
(reading methods, GET and HEAD, take the area's ``read`` role, every other method its ``write``
role). A route under no area has no rule: the dependency then refuses it to everyone but admins,
and ``tests/api/test_auth_roles.py`` fails, so a new route is classified when it is added.

Roles, least to most: viewer < analyst < marketer < admin (``goldkey.govern.users.ROLES``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple


class Area(NamedTuple):
    """The roles for the routes under ``prefix``: ``read`` for GET/HEAD, ``write`` for the others."""

    prefix: str
    read: str
    write: str


AREAS: tuple[Area, ...] = (
    Area("/api/v1/profiles", "viewer", "marketer"),  # consent changes; undoing a merge: see EXCEPTIONS
    Area("/api/v1/imports", "viewer", "marketer"),
    Area("/api/v1/quarantine", "viewer", "marketer"),
    Area("/api/v1/workspace", "viewer", "admin"),  # keys, identity rules, users, settings
    Area("/api/v1/fields", "viewer", "marketer"),
    Area("/api/v1/rules", "viewer", "marketer"),
    Area("/api/v1/segments", "viewer", "marketer"),
    Area("/api/v1/tags", "viewer", "marketer"),
    Area("/api/v1/traits", "viewer", "marketer"),
    Area("/api/v1/insights", "viewer", "analyst"),  # running models and reports
    Area("/api/v1/models", "viewer", "analyst"),  # the model registry (reads only)
    Area("/api/v1/channels", "admin", "admin"),  # listing: see EXCEPTIONS
    Area("/api/v1/send-policy", "viewer", "admin"),
    Area("/api/v1/suppressions", "viewer", "marketer"),
    Area("/api/v1/messages", "viewer", "marketer"),
    Area("/api/v1/campaigns", "viewer", "marketer"),
    Area("/api/v1/triggers", "viewer", "marketer"),
    Area("/api/v1/journeys", "viewer", "marketer"),
    Area("/api/v1/console", "viewer", "marketer"),
)

EXCEPTIONS: dict[tuple[str, str], str] = {
    # secrets of the workspace and who may use it
    ("GET", "/api/v1/workspace/keys"): "admin",
    ("GET", "/api/v1/workspace/users"): "admin",
    ("GET", "/api/v1/workspace/audit"): "admin",  # who did what, sign-in attempts included
    # channels are configured by admins; marketers list them (without secrets: the API never
    # returns them) to pick one for a campaign or a journey's send step
    ("GET", "/api/v1/channels"): "marketer",
    # identity resolution is configuration: undoing a merge is an admin's decision
    ("POST", "/api/v1/profiles/merges/{merge_id}/undo"): "admin",
    # questions that change nothing: checking a rule, explaining a membership, estimating a size
    ("POST", "/api/v1/rules/check"): "viewer",
    ("POST", "/api/v1/segments/{segment_id}/explain"): "viewer",
    ("POST", "/api/v1/segments/estimate"): "analyst",
    ("POST", "/api/v1/segments/overlap"): "analyst",
    # a list of customers leaving the system
    ("GET", "/api/v1/segments/{segment_id}/export"): "analyst",
    # insights that save audience configuration
    ("POST", "/api/v1/insights/clusters/{cluster}/segment"): "marketer",
}

READ_METHODS = frozenset({"GET", "HEAD"})


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@functools.lru_cache(maxsize=4096)
def least_role(method: str, path: str) -> str | None:
    """Return the least role that may call ``method path`` (the path as the router declares it),
    or None when the table has no rule for it."""
    method = method.upper()
    role = EXCEPTIONS.get((method, path))
    if role is None and method == "HEAD":
        role = EXCEPTIONS.get(("GET", path))
    if role is not None:
        return role
    best: Area | None = None
    for area in AREAS:
        if _under(path, area.prefix) and (best is None or len(area.prefix) > len(best.prefix)):
            best = area
    if best is None:
        return None
    return best.read if method in READ_METHODS else best.write
