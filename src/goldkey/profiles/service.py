"""The 360° profile read model, served from the operational store (microsecond point lookups)."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from goldkey.core.clock import as_utc
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.identity.normalize import normalize_identifier
from goldkey.store.operational import consents, feedback, identities, identity_conflicts, merges, profiles

_loads = orjson.loads

_P = profiles.c
_PROFILE_SQL = sa.select(profiles).where(_P.profile_id == sa.bindparam("pid"), _P.workspace_id == sa.bindparam("ws"))
_IDS_SQL = sa.select(
    identities.c.id_type, identities.c.id_value, identities.c.first_seen_at, identities.c.source
).where(identities.c.profile_id == sa.bindparam("pid"))
_SUBTREE_SQL = sa.select(_P.profile_id).where(_P.canonical_id == sa.bindparam("pid"))


class ProfileService:
    """Reads whole profiles by id or by any identifier, within one workspace."""

    def __init__(self, engine: Engine, region: str = "CN") -> None:
        self.engine = engine
        self.region = region

    def get(self, workspace_id: str, profile_id: str, *, events: int = 30) -> dict[str, Any]:
        """Return the 360° profile; a merged-away id resolves to the live profile it went into.

        Raises NotFound when no profile of that id exists in the workspace.
        """
        with self.engine.connect() as conn:
            row = conn.execute(_PROFILE_SQL, {"pid": profile_id, "ws": workspace_id}).first()
            if row is None:
                raise NotFound(f"profile {profile_id} not found")
            requested = profile_id
            if row.canonical_id != row.profile_id:
                row = conn.execute(_PROFILE_SQL, {"pid": row.canonical_id, "ws": workspace_id}).first()
                assert row is not None
            return self._assemble(conn, workspace_id, row, requested, events)

    def lookup(self, workspace_id: str, id_type: str, value: str, *, events: int = 30) -> dict[str, Any]:
        """Return the profile holding identifier ``id_type=value`` (normalised as on ingestion).

        Raises InvalidInput for a value that cannot be an identifier, NotFound when nobody holds it.
        """
        v = normalize_identifier(id_type, value, self.region)
        if v is None:
            raise InvalidInput(f"{value!r} is not a valid {id_type}", field=id_type)
        with self.engine.connect() as conn:
            pid = conn.execute(
                sa.select(identities.c.profile_id).where(
                    identities.c.workspace_id == workspace_id,
                    identities.c.id_type == id_type,
                    identities.c.id_value == v,
                )
            ).scalar()
            if pid is None:
                raise NotFound(f"no profile with {id_type}={v}")
            row = conn.execute(_PROFILE_SQL, {"pid": pid, "ws": workspace_id}).first()
            if row is None:
                raise NotFound(f"no profile with {id_type}={v}")
            return self._assemble(conn, workspace_id, row, pid, events)

    def _assemble(self, conn: sa.Connection, ws: str, row: Any, requested: str, n_events: int) -> dict[str, Any]:
        pid = row.profile_id
        subtree = [r.profile_id for r in conn.execute(_SUBTREE_SQL, {"pid": pid})]
        ids = [
            {"type": r.id_type, "value": r.id_value, "first_seen_at": as_utc(r.first_seen_at), "source": r.source}
            for r in conn.execute(_IDS_SQL, {"pid": pid})
        ]
        consent_rows = conn.execute(
            sa.select(consents).where(consents.c.workspace_id == ws, consents.c.profile_id.in_(subtree))
        ).all()
        latest: dict[tuple[str, str], Any] = {}
        for c in consent_rows:
            k = (c.channel, c.purpose)
            if k not in latest or c.updated_at > latest[k].updated_at:
                latest[k] = c
        fb = conn.execute(
            sa.select(feedback)
            .where(feedback.c.workspace_id == ws, feedback.c.profile_id.in_(subtree))
            .order_by(feedback.c.created_at.desc())
            .limit(20)
        ).all()
        merge_rows = conn.execute(
            sa.select(
                merges.c.merge_id,
                merges.c.winner_id,
                merges.c.loser_id,
                merges.c.id_type,
                merges.c.id_value,
                merges.c.created_at,
                merges.c.undone_at,
            )
            .where(merges.c.workspace_id == ws, sa.or_(merges.c.winner_id.in_(subtree), merges.c.loser_id.in_(subtree)))
            .order_by(merges.c.created_at)
        ).all()
        conflicts = conn.execute(
            sa.select(
                identity_conflicts.c.id_type,
                identity_conflicts.c.id_value,
                identity_conflicts.c.reason,
                identity_conflicts.c.created_at,
            )
            .where(identity_conflicts.c.workspace_id == ws, identity_conflicts.c.profile_id == pid)
            .order_by(identity_conflicts.c.conflict_id.desc())
            .limit(20)
        ).all()
        return {
            "profile_id": pid,
            "workspace_id": ws,
            "requested_id": requested,
            "merged_from": [p for p in subtree if p != pid],
            "origin": row.origin,
            "first_seen_at": as_utc(row.first_seen_at),
            "first_seen_source": row.first_seen_source,
            "first_seen_context": _loads(row.first_seen_context),
            "last_seen_at": as_utc(row.last_seen_at),
            "attributes": _loads(row.attributes),
            "identities": ids,
            "consents": [
                {
                    "channel": c.channel,
                    "purpose": c.purpose,
                    "status": c.status,
                    "source": c.source,
                    "updated_at": as_utc(c.updated_at),
                }
                for c in latest.values()
            ],
            "traits": _loads(row.traits),
            "tags": _loads(row.tags),
            "scores": _loads(row.scores),
            "order_summary": _loads(row.order_summary),
            "events": _loads(row.recent_events)[:n_events],
            "feedback": [
                {
                    "feedback_id": f.feedback_id,
                    "kind": f.kind,
                    "channel": f.channel,
                    "topic": f.topic,
                    "text": f.text,
                    "rating": f.rating,
                    "status": f.status,
                    "created_at": as_utc(f.created_at),
                }
                for f in fb
            ],
            "merges": [
                {
                    "merge_id": m.merge_id,
                    "winner_id": m.winner_id,
                    "loser_id": m.loser_id,
                    "linked_by": {"type": m.id_type, "value": m.id_value},
                    "created_at": as_utc(m.created_at),
                    "undone_at": as_utc(m.undone_at),
                }
                for m in merge_rows
            ],
            "identity_conflicts": [
                {"type": c.id_type, "value": c.id_value, "reason": c.reason, "created_at": as_utc(c.created_at)}
                for c in conflicts
            ],
        }
