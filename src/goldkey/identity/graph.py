"""The identity graph: which identifiers belong to which profile, merging under the workspace's
rules, merge history, and undoing a wrong merge.

All writes happen inside a ``UnitOfWork`` owned by the single writer (see ``collect.writer``), so
the in-memory caches here are only touched by that one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import Conflict, NotFound
from goldkey.core.ids import new_id
from goldkey.identity.normalize import normalize_identifier
from goldkey.identity.rules import IdentityRules
from goldkey.store.operational import audit_log, identities, identity_conflicts, merges, profiles

log = logging.getLogger(__name__)

IdKey = tuple[str, str, str]  # (workspace_id, id_type, value)
_MISSING = ""


@dataclass
class ProfileDelta:
    """Changes to one profile gathered during a unit of work, written once at the end."""

    last_seen: int | None = None  # epoch microseconds
    attributes: dict[str, Any] = field(default_factory=dict)
    recent: list[Any] = field(default_factory=list)  # TrackedEvents, compacted when written


@dataclass
class NewProfile:
    workspace_id: str
    profile_id: str
    origin: str
    first_seen_at: datetime
    source: str
    context: dict[str, Any]


@dataclass
class UnitOfWork:
    """One transaction on the operational store plus the analytical side effects it implies."""

    conn: sa.Connection
    new_profiles: dict[str, NewProfile] = field(default_factory=dict)
    new_identities: list[dict[str, Any]] = field(default_factory=list)
    deltas: dict[str, ProfileDelta] = field(default_factory=dict)
    map_ops: list[tuple[str, str, Any, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    merged: list[tuple[str, str]] = field(default_factory=list)  # (winner, loser)
    # identities per profile and type added in this unit (not yet in the database)
    pending_ids: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def delta(self, profile_id: str) -> ProfileDelta:
        d = self.deltas.get(profile_id)
        if d is None:
            d = self.deltas[profile_id] = ProfileDelta()
        return d


def _j(v: Any) -> str:
    return orjson.dumps(v, default=str).decode()


def _row_dict(row: Any) -> dict[str, Any]:
    return {str(k): getattr(row, k) for k in row._fields}


def _merge_recent(a: list[dict[str, Any]], b: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for e in sorted(a + b, key=lambda e: e.get("ts", ""), reverse=True):
        mid = e.get("message_id", "")
        if mid in seen:
            continue
        seen.add(mid)
        out.append(e)
        if len(out) >= keep:
            break
    return out


def combine_order_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Return the order summary of two disjoint order sets (used when profiles merge)."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    firsts = [x for x in (a.get("first_order_at"), b.get("first_order_at")) if x]
    lasts = [x for x in (a.get("last_order_at"), b.get("last_order_at")) if x]
    return {
        "orders": a.get("orders", 0) + b.get("orders", 0),
        "revenue": round(a.get("revenue", 0.0) + b.get("revenue", 0.0), 2),
        "first_order_at": min(firsts) if firsts else None,
        "last_order_at": max(lasts) if lasts else None,
        "skus": sorted(set(a.get("skus", [])) | set(b.get("skus", []))),
        "categories": sorted(set(a.get("categories", [])) | set(b.get("categories", []))),
    }


class IdentityGraph:
    """Resolves identifiers to profiles and keeps the graph consistent under merges."""

    def __init__(self, rules_of: Any, region: str = "CN", recent_keep: int = 30) -> None:
        self._rules_of = rules_of  # callable workspace_id -> IdentityRules
        self.region = region
        self.recent_keep = recent_keep
        self._cache: dict[IdKey, str] = {}

    # -- caches -----------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached identifiers (after a failed unit of work)."""
        self._cache.clear()

    def normalised(self, workspace_id: str, raw: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
        """Return distinct, normalised, unblocked identifiers in the workspace's priority order."""
        rules: IdentityRules = self._rules_of(workspace_id)
        out: dict[tuple[str, str], None] = {}
        for id_type, value in raw:
            v = normalize_identifier(id_type, value, self.region)
            if v is None or rules.is_blocked(id_type, v):
                continue
            out[(id_type, v)] = None
        return sorted(out, key=lambda t: rules.rank(t[0]))

    def custom_identifiers(self, workspace_id: str) -> list[tuple[str, str]]:
        """Return (identifier type, trait name) of the workspace's custom identifier types."""
        rules: IdentityRules = self._rules_of(workspace_id)
        return [(c.name, c.trait) for c in rules.custom]

    def prefetch(self, conn: sa.Connection, keys: Iterable[IdKey]) -> None:
        """Load the owners of identifiers not yet cached, in a few IN queries."""
        by_type: dict[tuple[str, str], list[str]] = {}
        for k in keys:
            if k not in self._cache:
                by_type.setdefault((k[0], k[1]), []).append(k[2])
        for (ws, id_type), values in by_type.items():
            for i in range(0, len(values), 500):
                chunk = values[i : i + 500]
                rows = conn.execute(
                    sa.select(identities.c.id_value, identities.c.profile_id).where(
                        identities.c.workspace_id == ws,
                        identities.c.id_type == id_type,
                        identities.c.id_value.in_(chunk),
                    )
                ).all()
                found = {r.id_value: r.profile_id for r in rows}
                for v in chunk:
                    self._cache[(ws, id_type, v)] = found.get(v, _MISSING)
        if len(self._cache) > 3_000_000:
            self._cache.clear()

    def _owner(self, conn: sa.Connection, key: IdKey) -> str | None:
        pid = self._cache.get(key)
        if pid is None:
            self.prefetch(conn, [key])
            pid = self._cache[key]
        return pid or None

    # -- resolution -------------------------------------------------------------------------
    def resolve(
        self,
        uow: UnitOfWork,
        workspace_id: str,
        ids: list[tuple[str, str]],
        at: datetime,
        source: str,
        context: dict[str, Any] | None = None,
    ) -> str:
        """Return the canonical profile for normalised identifiers ``ids`` (priority order),
        creating a profile, attaching new identifiers and merging profiles as the rules allow."""
        owners: list[str | None] = []
        for id_type, value in ids:
            owners.append(self._owner(uow.conn, (workspace_id, id_type, value)))
        distinct = {o for o in owners if o is not None}
        if len(distinct) == 1 and None not in owners:
            return owners[0]  # type: ignore[return-value]
        rules: IdentityRules = self._rules_of(workspace_id)
        target: str | None = None
        pending: list[tuple[str, str]] = []  # unknown identifiers seen before any owner
        refused: list[tuple[str, str, str]] = []
        # Identifiers are visited in priority order: the highest-priority one that belongs to a
        # profile names the target, but only if that profile can also hold the higher-priority
        # identifiers that nobody owns yet (a family phone must not pull a new user_id into the
        # profile of the person who registered it first).
        for (id_type, value), owner in zip(ids, owners, strict=True):
            if owner is None:
                if target is None:
                    pending.append((id_type, value))
                else:
                    self._attach(uow, workspace_id, target, id_type, value, at, source, rules)
                continue
            if target is None:
                clash = self._clash(uow, owner, pending, rules)
                if clash:
                    refused.append((id_type, value, f"belongs to {owner}, which already holds another {clash}"))
                    continue
                target = owner
                for t, v in pending:
                    self._attach(uow, workspace_id, target, t, v, at, source, rules)
                pending = []
            elif owner != target:
                target = self._try_merge(uow, workspace_id, target, owner, ids, rules)
        if target is None:
            target = new_id("prf")
            uow.new_profiles[target] = NewProfile(
                workspace_id,
                target,
                "existing" if source.startswith("import:") else "new",
                at,
                source,
                context or {},
            )
            uow.pending_ids[target] = {}
            for t, v in pending:
                self._attach(uow, workspace_id, target, t, v, at, source, rules)
        for t, v, reason in refused:
            uow.conflicts.append(
                dict(
                    workspace_id=workspace_id,
                    profile_id=target,
                    id_type=t,
                    id_value=v,
                    reason=f"not linked: {reason}",
                    created_at=utcnow(),
                )
            )
        return target

    def _clash(self, uow: UnitOfWork, owner: str, pending: list[tuple[str, str]], rules: IdentityRules) -> str | None:
        """Return the identifier type ``owner`` could not also hold with ``pending``, or None."""
        extra: dict[str, set[str]] = {}
        for t, v in pending:
            extra.setdefault(t, set()).add(v)
        for t, vals in extra.items():
            if len(self._held(uow, owner, t) | vals) > rules.limit(t):
                return t
        return None

    def _attach(
        self,
        uow: UnitOfWork,
        workspace_id: str,
        target: str,
        id_type: str,
        value: str,
        at: datetime,
        source: str,
        rules: IdentityRules,
    ) -> None:
        held = self._held(uow, target, id_type)
        if value in held:
            return
        if len(held) >= rules.limit(id_type):
            uow.conflicts.append(
                dict(
                    workspace_id=workspace_id,
                    profile_id=target,
                    id_type=id_type,
                    id_value=value,
                    reason=f"not linked: profile already holds {len(held)} {id_type} value(s), the limit",
                    created_at=utcnow(),
                )
            )
            return
        held.add(value)
        uow.new_identities.append(
            dict(
                workspace_id=workspace_id,
                id_type=id_type,
                id_value=value,
                profile_id=target,
                first_seen_at=at,
                source=source,
            )
        )
        self._cache[(workspace_id, id_type, value)] = target

    def _held(self, uow: UnitOfWork, profile_id: str, id_type: str) -> set[str]:
        """Return the values of ``id_type`` the profile holds, including this unit's additions."""
        per = uow.pending_ids.get(profile_id)
        if per is None:
            per = {}
            if profile_id not in uow.new_profiles:
                self.flush(uow)
                rows = uow.conn.execute(
                    sa.select(identities.c.id_type, identities.c.id_value).where(identities.c.profile_id == profile_id)
                ).all()
                for r in rows:
                    per.setdefault(r.id_type, set()).add(r.id_value)
            uow.pending_ids[profile_id] = per
        return per.setdefault(id_type, set())

    def _try_merge(
        self,
        uow: UnitOfWork,
        workspace_id: str,
        a: str,
        b: str,
        ids: list[tuple[str, str]],
        rules: IdentityRules,
    ) -> str:
        """Merge ``b`` into ``a`` (or the other way, the older profile wins) if no identifier
        type would exceed its limit. Return the surviving profile (``a`` when refused)."""
        types = set(rules.all_types())
        for t in types:
            ha, hb = self._held(uow, a, t), self._held(uow, b, t)
            if ha and hb and len(ha | hb) > rules.limit(t):
                link = next(((it, v) for it, v in ids if self._cache.get((workspace_id, it, v)) == b), ids[0])
                uow.conflicts.append(
                    dict(
                        workspace_id=workspace_id,
                        profile_id=a,
                        id_type=link[0],
                        id_value=link[1],
                        reason=f"merge with {b} refused: it would hold {len(ha | hb)} {t} values "
                        f"(limit {rules.limit(t)})",
                        created_at=utcnow(),
                    )
                )
                return a
        link = next(((it, v) for it, v in ids if self._cache.get((workspace_id, it, v)) == b), ids[0])
        return self.merge(uow, workspace_id, a, b, link, actor="identity-resolution")

    # -- merge and unmerge ------------------------------------------------------------------
    def flush(self, uow: UnitOfWork) -> None:
        """Write pending new profiles and identities so SQL sees them."""
        if uow.new_profiles:
            now = utcnow()
            uow.conn.execute(
                profiles.insert(),
                [
                    dict(
                        profile_id=p.profile_id,
                        workspace_id=p.workspace_id,
                        merged_into=None,
                        canonical_id=p.profile_id,
                        origin=p.origin,
                        first_seen_at=p.first_seen_at,
                        first_seen_source=p.source,
                        first_seen_context=_j(p.context),
                        last_seen_at=p.first_seen_at,
                        created_at=now,
                        updated_at=now,
                    )
                    for p in uow.new_profiles.values()
                ],
            )
            uow.new_profiles.clear()
        if uow.new_identities:
            uow.conn.execute(identities.insert(), uow.new_identities)
            uow.new_identities.clear()
        if uow.conflicts:
            uow.conn.execute(identity_conflicts.insert(), uow.conflicts)
            uow.conflicts.clear()

    def _row(self, conn: sa.Connection, profile_id: str) -> sa.Row[Any]:
        row = conn.execute(sa.select(profiles).where(profiles.c.profile_id == profile_id)).first()
        if row is None:
            raise NotFound(f"profile {profile_id} not found")
        return row

    def merge(
        self,
        uow: UnitOfWork,
        workspace_id: str,
        a: str,
        b: str,
        link: tuple[str, str],
        actor: str,
    ) -> str:
        """Merge two live profiles; the one first seen earlier survives. Return the survivor.

        Nothing is lost: attributes are united (on a conflict the more recently seen profile's
        value wins), identities, consents, feedback, orders and events of the loser resolve to the
        winner, and the merge record keeps what is needed to undo it.
        """
        self.flush(uow)
        conn = uow.conn
        ra, rb = self._row(conn, a), self._row(conn, b)
        winner, loser = (ra, rb) if ra.first_seen_at <= rb.first_seen_at else (rb, ra)
        wa, la = orjson.loads(winner.attributes), orjson.loads(loser.attributes)
        newer_first = loser.last_seen_at > winner.last_seen_at
        combined = {**wa, **la} if newer_first else {**la, **wa}
        keys_from_loser = [k for k in la if k not in wa]
        loser_ids = [
            (r.id_type, r.id_value)
            for r in conn.execute(
                sa.select(identities.c.id_type, identities.c.id_value).where(
                    identities.c.profile_id == loser.profile_id
                )
            )
        ]
        subtree = [
            r.profile_id
            for r in conn.execute(sa.select(profiles.c.profile_id).where(profiles.c.canonical_id == loser.profile_id))
        ]
        now = utcnow()
        first_row = winner if winner.first_seen_at <= loser.first_seen_at else loser
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == winner.profile_id)
            .values(
                attributes=_j(combined),
                traits=_j({**orjson.loads(loser.traits), **orjson.loads(winner.traits)}),
                tags=_j({**orjson.loads(loser.tags), **orjson.loads(winner.tags)}),
                scores=_j({**orjson.loads(loser.scores), **orjson.loads(winner.scores)}),
                order_summary=_j(
                    combine_order_summaries(orjson.loads(winner.order_summary), orjson.loads(loser.order_summary))
                ),
                recent_events=_j(
                    _merge_recent(
                        orjson.loads(winner.recent_events), orjson.loads(loser.recent_events), self.recent_keep
                    )
                ),
                origin="existing" if "existing" in (winner.origin, loser.origin) else "new",
                first_seen_at=first_row.first_seen_at,
                first_seen_source=first_row.first_seen_source,
                first_seen_context=first_row.first_seen_context,
                last_seen_at=max(winner.last_seen_at, loser.last_seen_at),
                updated_at=now,
            )
        )
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == loser.profile_id)
            .values(merged_into=winner.profile_id, updated_at=now)
        )
        conn.execute(
            profiles.update().where(profiles.c.canonical_id == loser.profile_id).values(canonical_id=winner.profile_id)
        )
        conn.execute(
            identities.update().where(identities.c.profile_id == loser.profile_id).values(profile_id=winner.profile_id)
        )
        merge_id = new_id("mrg")
        conn.execute(
            merges.insert().values(
                merge_id=merge_id,
                workspace_id=workspace_id,
                winner_id=winner.profile_id,
                loser_id=loser.profile_id,
                id_type=link[0],
                id_value=link[1],
                detail=_j(
                    {
                        "winner_before": _row_dict(winner),
                        "loser_before": _row_dict(loser),
                        "loser_identities": loser_ids,
                        "keys_from_loser": keys_from_loser,
                        "subtree": subtree,
                    }
                ),
                created_at=now,
            )
        )
        conn.execute(
            audit_log.insert().values(
                workspace_id=workspace_id,
                actor=actor,
                action="profile.merge",
                target=winner.profile_id,
                detail=_j({"merge_id": merge_id, "loser_id": loser.profile_id, "link": list(link)}),
                at=now,
            )
        )
        for key in [k for k, v in self._cache.items() if v == loser.profile_id]:
            self._cache[key] = winner.profile_id
        lp = uow.pending_ids.pop(loser.profile_id, None)
        wp = uow.pending_ids.get(winner.profile_id)
        if wp is not None:
            for t, vals in (lp or {}).items():
                wp.setdefault(t, set()).update(vals)
            if lp is None:
                uow.pending_ids.pop(winner.profile_id, None)
        ld = uow.deltas.pop(loser.profile_id, None)
        if ld is not None:
            wd = uow.delta(winner.profile_id)
            wd.attributes = {**ld.attributes, **wd.attributes}
            wd.recent.extend(ld.recent)
            if ld.last_seen and (wd.last_seen is None or ld.last_seen > wd.last_seen):
                wd.last_seen = ld.last_seen
        uow.map_ops.append(("merge", workspace_id, loser.profile_id, winner.profile_id))
        uow.merged.append((winner.profile_id, loser.profile_id))
        return str(winner.profile_id)

    def unmerge(self, uow: UnitOfWork, workspace_id: str, merge_id: str, actor: str) -> dict[str, Any]:
        """Undo a merge: the loser profile comes back with its attributes and identifiers, and its
        events, orders, feedback and consents resolve to it again. Later merges into the winner
        must be undone first when they depend on this one. Return a summary of what moved.

        Raises NotFound for an unknown merge and Conflict when it was undone already or the
        winner has since been merged into another profile.
        """
        self.flush(uow)
        conn = uow.conn
        m = conn.execute(
            sa.select(merges).where(merges.c.merge_id == merge_id, merges.c.workspace_id == workspace_id)
        ).first()
        if m is None:
            raise NotFound(f"merge {merge_id} not found")
        if m.undone_at is not None:
            raise Conflict(f"merge {merge_id} was undone already")
        winner = self._row(conn, m.winner_id)
        if winner.merged_into is not None:
            raise Conflict(
                f"profile {m.winner_id} was merged into {winner.canonical_id} afterwards; undo that merge first"
            )
        detail = orjson.loads(m.detail)
        lb, wb = detail["loser_before"], detail["winner_before"]
        now = utcnow()
        # the loser and everything that had been merged into it resolve to it again
        subtree = self._subtree(conn, m.loser_id)
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == m.loser_id)
            .values(
                merged_into=None,
                attributes=lb["attributes"],
                traits=lb["traits"],
                tags=lb["tags"],
                scores=lb["scores"],
                order_summary=lb["order_summary"],
                recent_events=lb["recent_events"],
                origin=lb["origin"],
                first_seen_at=datetime.fromisoformat(lb["first_seen_at"]),
                first_seen_source=lb["first_seen_source"],
                first_seen_context=lb["first_seen_context"],
                updated_at=now,
            )
        )
        conn.execute(profiles.update().where(profiles.c.profile_id.in_(subtree)).values(canonical_id=m.loser_id))
        attrs = orjson.loads(winner.attributes)
        loser_attrs = orjson.loads(lb["attributes"])
        for k in detail["keys_from_loser"]:
            if k in attrs and attrs[k] == loser_attrs.get(k):
                del attrs[k]
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == m.winner_id)
            .values(
                attributes=_j(attrs),
                traits=wb["traits"],
                tags=wb["tags"],
                scores=wb["scores"],
                order_summary=wb["order_summary"],
                origin=wb["origin"],
                first_seen_at=datetime.fromisoformat(wb["first_seen_at"]),
                first_seen_source=wb["first_seen_source"],
                first_seen_context=wb["first_seen_context"],
                updated_at=now,
            )
        )
        moved_ids = [tuple(x) for x in detail["loser_identities"]]
        for id_type, value in moved_ids:
            conn.execute(
                identities.update()
                .where(
                    identities.c.workspace_id == workspace_id,
                    identities.c.id_type == id_type,
                    identities.c.id_value == value,
                    identities.c.profile_id == m.winner_id,
                )
                .values(profile_id=m.loser_id)
            )
            self._cache[(workspace_id, id_type, value)] = m.loser_id
        conn.execute(merges.update().where(merges.c.merge_id == merge_id).values(undone_at=now))
        conn.execute(
            audit_log.insert().values(
                workspace_id=workspace_id,
                actor=actor,
                action="profile.unmerge",
                target=m.winner_id,
                detail=_j({"merge_id": merge_id, "restored": m.loser_id, "identities": moved_ids}),
                at=now,
            )
        )
        uow.map_ops.append(
            (
                "unmerge",
                workspace_id,
                {
                    "loser": m.loser_id,
                    "winner": m.winner_id,
                    "subtree": subtree,
                    "identities": moved_ids,
                    "since": as_utc(m.created_at),
                },
                None,
            )
        )
        return {
            "merge_id": merge_id,
            "winner_id": m.winner_id,
            "restored_profile_id": m.loser_id,
            "identities_moved": len(moved_ids),
        }

    def _subtree(self, conn: sa.Connection, root: str) -> list[str]:
        out, frontier = [root], [root]
        while frontier:
            rows = conn.execute(sa.select(profiles.c.profile_id).where(profiles.c.merged_into.in_(frontier))).all()
            frontier = [r.profile_id for r in rows]
            out.extend(frontier)
        return out
