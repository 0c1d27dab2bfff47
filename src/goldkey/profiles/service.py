"""The 360° profile read model, served from the operational store (microsecond point lookups).

A read is seven indexed point queries (the profile row comes with its ``profile_scores`` row, an
outer join by primary key). Every statement is built once, here, with bound parameters (no
expanding ``IN``: the merge subtree is a subquery), so SQLAlchemy finds its compiled form in the
engine's cache instead of building and hashing a new statement per read. On SQLite, where a query
runs in a few microseconds and SQLAlchemy's per-execution work would be most of a read's cost, the
statements are compiled once per service and run directly on the DBAPI cursor (sqlite3 keeps them
prepared), with the dialect's own result processors (timestamps); elsewhere (PostgreSQL) they run
through SQLAlchemy as usual. Both paths run the same SQL and yield rows as positional tuples.

The queries over a profile's merge subtree come in two forms: an equality on the profile id (the
usual case, a profile nothing was merged into) and ``IN (SELECT profile_id ... WHERE canonical_id =
:pid)`` for a profile that ids were merged into.

Workspace isolation: every statement is filtered by ``workspace_id``. The one exception is the
subtree query (alone, or as the subquery above), which follows ``canonical_id`` from a profile
already found in the workspace: its rows are checked against the workspace in Python, and the
statements it is a subquery of filter by workspace themselves. (A workspace term in it would lead
SQLite's planner to scan ``ix_profiles_workspace`` instead of searching ``ix_profiles_canonical``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from goldkey.core.clock import as_utc
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.identity.normalize import normalize_identifier
from goldkey.profiles.scores import merged_tags, with_scores
from goldkey.store.operational import (
    consents,
    feedback,
    feedback_insights,
    identities,
    identity_conflicts,
    merges,
    profile_insights,
    profile_scores,
    profiles,
)

_loads = orjson.loads

_WS = sa.bindparam("ws")
_PID = sa.bindparam("pid")

_P = profiles.c
_I = identities.c
# the profile columns a read shows, in the order _assemble unpacks them
_PROFILE_COLS = (
    _P.profile_id,
    _P.origin,
    _P.first_seen_at,
    _P.first_seen_source,
    _P.first_seen_context,
    _P.last_seen_at,
    _P.attributes,
    _P.traits,
    _P.tags,
    profile_scores.c.scores,  # NULL: no scores (the outer join of _PROFILES)
    profile_scores.c.model_tags,  # NULL: no model tags (shown among the tags)
    _P.order_summary,
    _P.recent_events,
)
# profiles with their scores (goldkey.profiles.scores: a narrow table of their own)
_PROFILES = with_scores()
# The live profile for an id: the id's own row when it is live, else the profile it was merged
# into (canonical_id always names the live root, see IdentityGraph.merge). Both in the workspace.
_requested = profiles.alias("requested")
_PROFILE_BY_ID = (
    sa.select(*_PROFILE_COLS)
    .select_from(_PROFILES)
    .join(_requested, _requested.c.canonical_id == _P.profile_id)
    .where(_requested.c.profile_id == _PID, _requested.c.workspace_id == _WS, _P.workspace_id == _WS)
)
# The profile holding an identifier (identities always point at a live profile).
_PROFILE_BY_IDENTIFIER = (
    sa.select(*_PROFILE_COLS)
    .select_from(_PROFILES)
    .join(identities, _I.profile_id == _P.profile_id)
    .where(
        _I.workspace_id == _WS,
        _I.id_type == sa.bindparam("id_type"),
        _I.id_value == sa.bindparam("id_value"),
        _P.workspace_id == _WS,
    )
)
_SUBTREE = sa.select(_P.profile_id, _P.workspace_id).where(_P.canonical_id == _PID)
_SUBTREE_IDS = sa.select(_P.profile_id).where(_P.canonical_id == _PID)
# in the order they were first seen (then by type and value): the same on SQLite and PostgreSQL
_IDENTITIES = sa.select(_I.id_type, _I.id_value, _I.first_seen_at, _I.source).where(
    _I.profile_id == _PID, _I.workspace_id == _WS
).order_by(_I.first_seen_at, _I.id_type, _I.id_value)


def _of(col: sa.ColumnElement[Any], merged: bool) -> sa.ColumnElement[bool]:
    """``col`` names the profile, or (merged) the profile or any profile merged into it."""
    return col.in_(_SUBTREE_IDS) if merged else col == _PID


def _consents(merged: bool) -> sa.Select[Any]:
    c = consents.c
    return sa.select(c.channel, c.purpose, c.status, c.source, c.updated_at).where(
        c.workspace_id == _WS, _of(c.profile_id, merged)
    ).order_by(c.channel, c.purpose)


def _feedback(merged: bool) -> sa.Select[Any]:
    f = feedback.c
    fi = feedback_insights.c
    return (
        sa.select(f.feedback_id, f.kind, f.channel, f.topic, f.text, f.rating, f.status, f.created_at,
                  fi.sentiment, fi.label, fi.topics)
        .select_from(feedback.outerjoin(feedback_insights, sa.and_(fi.workspace_id == f.workspace_id,
                                                                   fi.feedback_id == f.feedback_id)))
        .where(f.workspace_id == _WS, _of(f.profile_id, merged))
        .order_by(f.created_at.desc())
        .limit(20)
    )


def _merges(merged: bool) -> sa.Select[Any]:
    # workspace_id inside each branch of the OR, so that SQLite searches both indexes
    # (ix_merges_winner, ix_merges_loser) instead of scanning all of the workspace's merges
    m = merges.c
    return (
        sa.select(m.merge_id, m.winner_id, m.loser_id, m.id_type, m.id_value, m.created_at, m.undone_at)
        .where(
            sa.or_(
                sa.and_(m.workspace_id == _WS, _of(m.winner_id, merged)),
                sa.and_(m.workspace_id == _WS, _of(m.loser_id, merged)),
            )
        )
        .order_by(m.created_at)
    )


# [False]: the profile alone (nothing merged into it); [True]: with the ids merged into it
_CONSENTS = (_consents(False), _consents(True))
_FEEDBACK = (_feedback(False), _feedback(True))
_MERGES = (_merges(False), _merges(True))
_C = identity_conflicts.c
_CONFLICTS = (
    sa.select(_C.id_type, _C.id_value, _C.reason, _C.created_at)
    .where(_C.workspace_id == _WS, _C.profile_id == _PID)
    .order_by(_C.conflict_id.desc())
    .limit(20)
)
# per-profile model outputs that are not numbers (reasons of a churn score, recommended items ...)
_PI = profile_insights.c
_INSIGHTS = sa.select(_PI.model, _PI.version, _PI.payload).where(_PI.workspace_id == _WS, _PI.profile_id == _PID)
_STATEMENTS = (
    _INSIGHTS,
    _PROFILE_BY_ID,
    _PROFILE_BY_IDENTIFIER,
    _SUBTREE,
    _IDENTITIES,
    *_CONSENTS,
    *_FEEDBACK,
    *_MERGES,
    _CONFLICTS,
)

Rows = Sequence[Sequence[Any]]
Run = Callable[[sa.Select[Any], dict[str, str]], Rows]


class _Compiled:
    """A statement compiled for one dialect: SQL text, its positional arguments (a bind parameter's
    name, or None and a constant such as a LIMIT) and the result processors of its columns."""

    __slots__ = ("args", "processors", "sql")

    def __init__(self, stmt: sa.Select[Any], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert compiled.positiontup is not None, "the direct path needs a positional paramstyle"
        self.sql = compiled.string
        args: list[tuple[str | None, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            # values go to the driver as given: only types the dialect passes through unchanged
            assert bind.type.dialect_impl(dialect).bind_processor(dialect) is None, name
            args.append((name, None) if bind.required else (None, bind.effective_value))
        self.args = tuple(args)
        processors = []
        for i, col in enumerate(stmt.selected_columns):
            proc = col.type.dialect_impl(dialect).result_processor(dialect, None)
            if proc is not None:
                processors.append((i, proc))
        self.processors = tuple(processors)


class ProfileService:
    """Reads whole profiles by id or by any identifier, within one workspace."""

    def __init__(self, engine: Engine, region: str = "CN") -> None:
        self.engine = engine
        self.region = region
        dialect = engine.dialect
        self._direct: dict[int, _Compiled] | None = (
            {id(s): _Compiled(s, dialect) for s in _STATEMENTS} if dialect.name == "sqlite" else None
        )

    def get(self, workspace_id: str, profile_id: str, *, events: int | None = None) -> dict[str, Any]:
        """Return the 360° profile; a merged-away id resolves to the live profile it went into.

        Raises NotFound when no profile of that id exists in the workspace.
        """
        with self._reader() as run:
            rows = run(_PROFILE_BY_ID, {"pid": profile_id, "ws": workspace_id})
            if not rows:
                raise NotFound(f"profile {profile_id} not found")
            return self._assemble(run, workspace_id, rows[0], profile_id, events)

    def lookup(self, workspace_id: str, id_type: str, value: str, *, events: int | None = None) -> dict[str, Any]:
        """Return the profile holding identifier ``id_type=value`` (normalised as on ingestion).

        Raises InvalidInput for a value that cannot be an identifier, NotFound when nobody holds it.
        """
        v = normalize_identifier(id_type, value, self.region)
        if v is None:
            raise InvalidInput(f"{value!r} is not a valid {id_type}", field=id_type)
        with self._reader() as run:
            rows = run(_PROFILE_BY_IDENTIFIER, {"ws": workspace_id, "id_type": id_type, "id_value": v})
            if not rows:
                raise NotFound(f"no profile with {id_type}={v}")
            return self._assemble(run, workspace_id, rows[0], rows[0][0], events)

    @contextmanager
    def _reader(self) -> Iterator[Run]:
        """Yield ``run(statement, params) -> rows`` on one pooled connection."""
        direct = self._direct
        if direct is None:
            with self.engine.connect() as conn:
                yield lambda stmt, params: conn.execute(stmt, params).all()
            return
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()

            def run(stmt: sa.Select[Any], params: dict[str, str]) -> Rows:
                c = direct[id(stmt)]
                cur.execute(c.sql, [params[n] if n is not None else v for n, v in c.args])
                rows = cur.fetchall()
                if c.processors and rows:
                    out = []
                    for r in rows:
                        r = list(r)
                        for i, proc in c.processors:
                            r[i] = proc(r[i])
                        out.append(r)
                    return out
                return rows  # type: ignore[no-any-return]

            try:
                yield run
            finally:
                cur.close()
        finally:
            raw.close()  # back to the pool, which rolls back (ends any read transaction)

    def _assemble(self, run: Run, ws: str, row: Sequence[Any], requested: str, n_events: int | None) -> dict[str, Any]:
        (pid, origin, first_seen_at, first_seen_source, first_seen_context, last_seen_at, attributes, traits, tags,
         scores, model_tags, order_summary, recent_events) = row  # fmt: skip
        key = {"pid": pid, "ws": ws}
        merged_from = [p for p, w in run(_SUBTREE, key) if p != pid and w == ws]
        ids = [
            {"type": t, "value": v, "first_seen_at": as_utc(at), "source": src}
            for t, v, at, src in run(_IDENTITIES, key)
        ]
        merged = bool(merged_from)
        latest: dict[tuple[str, str], Sequence[Any]] = {}
        for c in run(_CONSENTS[merged], key):
            k = (c[0], c[1])
            have = latest.get(k)
            # the newest decision wins and a denial wins a tie: the rule the send guardrails apply
            # (goldkey.govern.consent.latest_decision), so the profile shows what a send will do
            if have is None or c[4] > have[4] or (c[4] == have[4] and c[2] == "denied"):
                latest[k] = c
        fb = run(_FEEDBACK[merged], key)
        merge_rows = run(_MERGES[merged], key)
        conflicts = run(_CONFLICTS, key)
        insights = {m: {"version": v, **_loads(p)} for m, v, p in run(_INSIGHTS, key)}
        return {
            "profile_id": pid,
            "workspace_id": ws,
            "requested_id": requested,
            "merged_from": merged_from,
            "origin": origin,
            "first_seen_at": as_utc(first_seen_at),
            "first_seen_source": first_seen_source,
            "first_seen_context": _loads(first_seen_context),
            "last_seen_at": as_utc(last_seen_at),
            "attributes": _loads(attributes),
            "identities": ids,
            "consents": [
                {"channel": ch, "purpose": pu, "status": st, "source": src, "updated_at": as_utc(at)}
                for ch, pu, st, src, at in latest.values()
            ],
            "traits": _loads(traits),
            "tags": merged_tags(tags, model_tags),
            "scores": _loads(scores) if scores else {},
            "insights": insights,
            "order_summary": _loads(order_summary),
            "events": _loads(recent_events)[:n_events],
            "feedback": [
                {
                    "feedback_id": fid,
                    "kind": kind,
                    "channel": ch,
                    "topic": topic,
                    "text": text,
                    "rating": rating,
                    "status": status,
                    "created_at": as_utc(at),
                    "sentiment": None if label is None else {"positive": sentiment, "label": label,
                                                             "topics": _loads(topics)},
                }
                for fid, kind, ch, topic, text, rating, status, at, sentiment, label, topics in fb
            ],
            "merges": [
                {
                    "merge_id": mid,
                    "winner_id": winner,
                    "loser_id": loser,
                    "linked_by": {"type": t, "value": v},
                    "created_at": as_utc(at),
                    "undone_at": as_utc(undone),
                }
                for mid, winner, loser, t, v, at, undone in merge_rows
            ],
            "identity_conflicts": [
                {"type": t, "value": v, "reason": reason, "created_at": as_utc(at)} for t, v, reason, at in conflicts
            ],
        }
