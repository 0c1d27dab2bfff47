"""The identity graph: which identifiers belong to which profile, merging under the workspace's
rules, merge history, and undoing a wrong merge.

All writes happen inside a ``UnitOfWork`` owned by the single writer (see ``collect.writer``), so
the in-memory caches here are only touched by that one thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from typing import Any

import orjson
import polars as pl
import sqlalchemy as sa

from goldkey.core.clock import as_utc, micros_to_datetime, utcnow
from goldkey.core.errors import Conflict, NotFound
from goldkey.core.ids import new_id, new_ids
from goldkey.identity.normalize import normalize_identifier
from goldkey.identity.rules import IdentityRules
from goldkey.profiles.scores import read_scores, set_scores, with_scores
from goldkey.store.operational import (
    audit_log,
    feedback,
    identities,
    identity_conflicts,
    merges,
    profile_scores,
    profiles,
)
from goldkey.store.operational import tags as tag_defs

log = logging.getLogger(__name__)

IdKey = tuple[str, str, str]  # (workspace_id, id_type, value)
_MISSING = ""


@dataclass
class ProfileDelta:
    """Changes to one profile gathered during a unit of work, written once at the end."""

    last_seen: int | None = None  # epoch microseconds
    first_seen: int | None = None  # epoch microseconds of the unit's earliest event of the profile
    first_event: Any = None  # (TrackedEvent, source) of that event
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


def _model_tag_names(conn: sa.Connection, ws: str) -> set[str]:
    """The names of the workspace's tags of kind model (their values live in profile_scores)."""
    return set(conn.execute(sa.select(tag_defs.c.name).where(tag_defs.c.workspace_id == ws,
                                                             tag_defs.c.kind == "model")).scalars())


def _split_tags(before: dict[str, Any], model_names: set[str]) -> tuple[str, str]:
    """A profile's ``(tags, model_tags)`` texts from a merge record's ``winner_before`` /
    ``loser_before``, told apart by ``model_names`` (the workspace's model tags as they are now,
    :func:`_model_tag_names`): a record written before model tags moved to ``profile_scores``
    (migration 0010) has them among the tags, and a tag deleted and created again as another kind
    since the merge has its value in the other place."""
    tags = {**orjson.loads(before["tags"]), **orjson.loads(before.get("model_tags") or "{}")}
    model = {k: tags.pop(k) for k in list(tags) if k in model_names}
    return _j(tags), _j(model)


def names_only(named: str | None, theirs: set[tuple[str, str]], others: set[tuple[str, str]]) -> bool:
    """Whether a record's named identifiers (``named``: JSON object, type -> normalised value) name
    one of ``theirs`` and none of ``others`` (a record naming both stays where it is: it linked them)."""
    if not named:
        return False
    ids = {(t, v) for t, v in orjson.loads(named).items() if v is not None}
    return bool(ids & theirs) and not ids & others


GROUPS = "$groups"
"""The attribute holding a profile's group memberships: group id -> the group's traits (``true``
when no group call sent any). ``$``-named, so an identify trait called ``groups`` is the user's own."""


def join_group(old: Any, new: Any) -> Any:
    """A group's entry after a group call with traits ``new`` (``True`` or ``{}``: none): the traits
    sent are set, the ones not sent keep their value (the spec: "the original value is persisted")."""
    if not isinstance(new, dict) or not new:
        return old if old is not None else True
    return {**old, **new} if isinstance(old, dict) else dict(new)


def join_groups(under: Any, over: Any) -> dict[str, Any]:
    """Two membership objects united: every group of either, ``over``'s traits winning per trait."""
    out = dict(under) if isinstance(under, dict) else {}
    for gid, entry in (over.items() if isinstance(over, dict) else ()):
        out[gid] = join_group(out.get(gid), entry)
    return out


def merged_attributes(attrs: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with ``changes`` applied: each key replaced, except the group memberships
    (:data:`GROUPS`), which are united group by group and trait by trait."""
    out = {**attrs, **changes}
    if GROUPS in attrs and GROUPS in changes:
        out[GROUPS] = join_groups(attrs[GROUPS], changes[GROUPS])
    return out


def _less_loser(current: dict[str, Any], loser: dict[str, Any], winner_before: dict[str, Any],
                survivor_won: bool = True) -> dict[str, Any]:
    """The survivor's ``current`` values without the loser's contribution. The merge took a loser's
    value only for a key the survivor did not have (the survivor's own value wins a conflict): such
    a key still holding it goes away; a key changed since the merge keeps its new value (it was set
    on the survivor). A key the survivor had keeps its current value, even one equal to the loser's:
    that was set on the survivor after the merge (a model run, a marketer), not brought by the
    loser (before, it was reset to the pre-merge value, with no Tag Changed event, and a model's
    new values went back to old ones under the new version)."""
    out = dict(current)
    for k, v in loser.items():
        if k in out and out[k] == v:
            if k not in winner_before:
                del out[k]
            elif not survivor_won:  # the loser's value may have won (group traits: the more recent)
                out[k] = winner_before[k]
    return out


def _less_loser_groups(current: dict[str, Any], loser: dict[str, Any],
                       winner_before: dict[str, Any]) -> dict[str, Any]:
    """:func:`_less_loser` for group memberships, group by group and then trait by trait: a group
    the merge united keeps the winner's own traits and those changed since. Unlike traits and tags,
    a group trait of the more recently seen profile wins a merge, the loser's too: one still holding
    the loser's value goes back to the winner's own."""
    if not (isinstance(current, dict) and isinstance(loser, dict) and isinstance(winner_before, dict)):
        return current  # not memberships (never written so by Goldkey): left as they are
    out = _less_loser(current, loser, winner_before, survivor_won=False)
    for gid, theirs in loser.items():
        now = out.get(gid)
        if isinstance(now, dict) and isinstance(theirs, dict) and now != theirs:
            own = winner_before.get(gid)
            kept = _less_loser(now, theirs, own if isinstance(own, dict) else {}, survivor_won=False)
            if kept:
                out[gid] = kept
            elif gid in winner_before:
                out[gid] = own
            else:
                del out[gid]
    return out


def _seen_until(row: Any, uow: UnitOfWork) -> datetime:
    """A profile's last-seen time with the events of the unit of work not yet written."""
    seen = as_utc(row.last_seen_at)
    assert seen is not None
    pending = uow.deltas.get(row.profile_id)
    if pending is not None and pending.last_seen is not None:
        at = micros_to_datetime(pending.last_seen)
        if at > seen:
            return at
    return seen



def _snapshot_time(v: Any) -> datetime | None:
    """A time of a merge record's profile snapshot (ISO text as stored, or None)."""
    return as_utc(datetime.fromisoformat(v)) if isinstance(v, str) and v else None


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
    by_currency: dict[str, float] = {}
    for side in (a, b):
        for cur, amount in (side.get("revenue_by_currency") or {}).items():
            by_currency[cur] = round(by_currency.get(cur, 0.0) + amount, 2)
    return {
        "orders": a.get("orders", 0) + b.get("orders", 0),
        "revenue": round(a.get("revenue", 0.0) + b.get("revenue", 0.0), 2),
        "first_order_at": min(firsts) if firsts else None,
        "last_order_at": max(lasts) if lasts else None,
        "refunds": a.get("refunds", 0) + b.get("refunds", 0),
        "cancellations": a.get("cancellations", 0) + b.get("cancellations", 0),
        "skus": sorted(set(a.get("skus", [])) | set(b.get("skus", []))),
        "categories": sorted(set(a.get("categories", [])) | set(b.get("categories", []))),
        "revenue_by_currency": dict(sorted(by_currency.items())),
    }


# -- bulk SQL ---------------------------------------------------------------------------------
# Bulk writes bypass SQLAlchemy's per-row parameter processing (its compiled-statement and
# type-converter work costs far more than the database does): statements run on the DBAPI
# cursor of the caller's connection, inside its transaction, with values already in the form
# SQLAlchemy would have stored. SQLite keeps DateTime columns as naive text
# 'YYYY-MM-DD HH:MM:SS.ffffff' (the wall time of the value, which is UTC throughout Goldkey);
# PostgreSQL gets datetimes, or text with an explicit +00:00 that it casts to timestamptz.

_SQLITE_TS = "%Y-%m-%d %H:%M:%S%.6f"


def _is_sqlite(conn: sa.Connection) -> bool:
    return conn.dialect.name == "sqlite"


def executemany(conn: sa.Connection, sql: str, rows: Sequence[Sequence[Any]], chunk: int = 50_000) -> None:
    """Run ``sql`` (``?`` placeholders) once per parameter tuple on the DBAPI cursor of ``conn``."""
    if not rows:
        return
    if not _is_sqlite(conn):
        sql = sql.replace("?", "%s")
    cur = conn.connection.cursor()
    try:
        for i in range(0, len(rows), chunk):
            cur.executemany(sql, rows[i : i + chunk])
    finally:
        cur.close()


def fetch_in(conn: sa.Connection, sql: str, params: Sequence[Any], values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` whose last condition is ``<column> IN ({in})`` for all ``values`` in as few
    statements as the driver allows; return every row. ``?`` are the placeholders of ``params``."""
    if not values:
        return []
    cur = conn.connection.cursor()
    out: list[tuple[Any, ...]] = []
    try:
        if _is_sqlite(conn):
            try:
                limit = conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[union-attr]
            except (AttributeError, sqlite3.Error):  # pragma: no cover - Python < 3.11
                limit = 999
            step = max(1, min(30_000, limit - len(params) - 1))
            for i in range(0, len(values), step):
                chunk = list(values[i : i + step])
                cur.execute(sql.format(**{"in": ",".join("?" * len(chunk))}), [*params, *chunk])
                out += cur.fetchall()
        else:
            text = sql.replace("?", "%s").format(**{"in": "SELECT unnest(%s::text[])"})
            for i in range(0, len(values), 100_000):
                cur.execute(text, [*params, list(values[i : i + 100_000])])
                out += cur.fetchall()
    finally:
        cur.close()
    return [tuple(r) for r in out]


def ts_param(conn: sa.Connection) -> Callable[[datetime | None], Any]:
    """Return a function giving a datetime in the form the connection's bulk statements take."""
    if not _is_sqlite(conn):
        return lambda d: d

    def sqlite_ts(d: datetime | None) -> str | None:
        if d is None:
            return None
        return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - SQLAlchemy's format
            d.year,
            d.month,
            d.day,
            d.hour,
            d.minute,
            d.second,
            d.microsecond,
        )

    return sqlite_ts


def ts_column(conn: sa.Connection, s: pl.Series) -> list[str | None]:
    """Return a Datetime series (aware, or naive UTC) as bulk-statement parameters."""
    if s.dtype.time_zone is not None:  # type: ignore[union-attr]
        s = s.dt.convert_time_zone("UTC")
    if _is_sqlite(conn):
        return s.dt.strftime(_SQLITE_TS).to_list()
    return s.dt.strftime(_SQLITE_TS + "+00:00").to_list()


_COPY_MIN_ROWS = 100  # PostgreSQL: from this many rows on, COPY instead of INSERTs


def _bulk_insert(conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cols = ", ".join(columns)
    if not rows:
        return
    if not _is_sqlite(conn) and len(rows) >= _COPY_MIN_ROWS:
        cur = conn.connection.cursor()
        if hasattr(cur, "copy"):  # psycopg 3: COPY, far cheaper than many INSERTs
            try:
                with cur.copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            finally:
                cur.close()
            return
        cur.close()
    marks = ", ".join("?" * len(columns))
    executemany(conn, f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", rows)


_PROFILE_COLS = (
    "profile_id",
    "workspace_id",
    "canonical_id",
    "attributes",
    "origin",
    "first_seen_at",
    "first_seen_source",
    "first_seen_context",
    "last_seen_at",
    "created_at",
    "updated_at",
)
_IDENTITY_COLS = ("workspace_id", "id_type", "id_value", "profile_id", "first_seen_at", "source")
_CONFLICT_COLS = ("workspace_id", "profile_id", "id_type", "id_value", "reason", "created_at")
# a value that is plain printable ASCII without surrounding blanks and at most 200 long: for these
# ``normalize_identifier``'s strip and length rules change nothing and lower-casing is ASCII's
_PLAIN = r"^[!-~](?:[ -~]{0,198}[!-~])?$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class IdentityGraph:
    """Resolves identifiers to profiles and keeps the graph consistent under merges."""

    def __init__(self, rules_of: Any, region: str = "CN", recent_keep: int = 30) -> None:
        self._rules_of = rules_of  # callable workspace_id -> IdentityRules
        self.region = region
        self.recent_keep = recent_keep
        # (workspace_id, id_type) -> id_value -> owning profile ("" when nobody owns it)
        self._cache: dict[tuple[str, str], dict[str, str]] = {}

    # -- caches -----------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached identifiers (after a failed unit of work)."""
        self._cache.clear()

    def _get(self, key: IdKey) -> str | None:
        sub = self._cache.get((key[0], key[1]))
        return None if sub is None else sub.get(key[2])

    def _set(self, key: IdKey, profile_id: str) -> None:
        sub = self._cache.get((key[0], key[1]))
        if sub is None:
            sub = self._cache[(key[0], key[1])] = {}
        sub[key[2]] = profile_id

    def normalised(self, workspace_id: str, raw: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
        """Return distinct, normalised, unblocked identifiers in the workspace's priority order."""
        rules: IdentityRules = self._rules_of(workspace_id)
        out: dict[tuple[str, str], None] = {}
        for id_type, value in raw:
            v = normalize_identifier(id_type, value, self.region)
            if v is None or rules.is_blocked(id_type, v, self.region):
                continue
            out[(id_type, v)] = None
        return sorted(out, key=lambda t: rules.rank(t[0]))

    def custom_identifiers(self, workspace_id: str) -> list[tuple[str, str]]:
        """Return (identifier type, trait name) of the workspace's custom identifier types."""
        rules: IdentityRules = self._rules_of(workspace_id)
        return [(c.name, c.trait) for c in rules.custom]

    def normalised_column(self, workspace_id: str, id_type: str, values: pl.Series) -> pl.Series:
        """Return ``values`` of one identifier type normalised (as ``normalised`` would), null
        where a value cannot identify anyone or is blocked; vectorised for plain values, value by
        value (once per distinct value) for the rest."""
        rules: IdentityRules = self._rules_of(workspace_id)
        region = self.region

        def one(v: Any) -> str | None:
            n = normalize_identifier(id_type, v, region)
            return None if n is None or rules.is_blocked(id_type, n, region) else n

        def by_value(s: pl.Series) -> pl.Series:
            uniq = s.drop_nulls().unique()
            if uniq.len() == 0:
                return pl.Series(s.name, [None] * s.len(), pl.Utf8)
            return s.replace_strict(uniq, [one(v) for v in uniq.to_list()], default=None, return_dtype=pl.Utf8)

        name = values.name
        if values.dtype != pl.Utf8:
            if values.dtype.is_nested() or values.dtype == pl.Boolean:
                return pl.Series(name, [None] * values.len(), pl.Utf8)
            return by_value(values).alias(name)
        from goldkey.collect.cleaning import _CN_MOBILE  # the phone rules the cleaning uses

        v = pl.col("v")
        plain = v.str.contains(_PLAIN)
        if id_type == "phone":
            # an E.164 CN mobile is its own normal form; anything else is settled value by value
            if _CN_MOBILE is None:
                return by_value(values).alias(name)
            ok = plain & v.str.starts_with("+86") & (v.str.len_bytes() == 14) & v.str.slice(3).str.contains(_CN_MOBILE)
            fast = pl.when(ok).then(v)
        elif id_type == "email":
            low = v.str.to_lowercase()
            ok = plain
            fast = pl.when(plain & low.str.contains(_EMAIL)).then(low)
        else:
            ok = plain
            fast = pl.when(plain).then(v)
        blocked_all = list(rules._blocked_all)
        blocked_typed = list(rules.blocked_for(id_type, region))
        frame = pl.DataFrame({"v": values}).select(fast.alias("n"), (ok | v.is_null()).alias("ok"))
        n = pl.col("n")
        frame = frame.with_columns(
            pl.when(n.str.to_lowercase().is_in(blocked_all) | n.is_in(blocked_typed)).then(None).otherwise(n).alias("n")
        )
        out = frame["n"]
        todo = ~frame["ok"]
        if todo.any():
            out = out.clone().scatter(todo.arg_true(), by_value(values.filter(todo)))
        return out.alias(name)

    def prefetch(self, conn: sa.Connection, keys: Iterable[IdKey]) -> None:
        """Load the owners of identifiers not yet cached, in a few IN queries. Call it at the start
        of a unit of work: a cache grown too large is dropped first."""
        if sum(map(len, self._cache.values())) > 3_000_000:
            self.invalidate()
        self._fill(conn, keys)

    def _fill(self, conn: sa.Connection, keys: Iterable[IdKey]) -> None:
        by_type: dict[tuple[str, str], set[str]] = {}
        for k in keys:
            sub = self._cache.get((k[0], k[1]))
            if sub is None or k[2] not in sub:
                by_type.setdefault((k[0], k[1]), set()).add(k[2])
        for (ws, id_type), values in by_type.items():
            found = self._lookup(conn, ws, id_type, list(values))
            sub = self._cache.setdefault((ws, id_type), {})
            for v in values:
                sub[v] = found.get(v, _MISSING)

    @staticmethod
    def _lookup(conn: sa.Connection, ws: str, id_type: str, values: Sequence[str]) -> dict[str, str]:
        """Return {value: owning profile} of those ``values`` the database knows."""
        rows = fetch_in(
            conn,
            "SELECT id_value, profile_id FROM identities WHERE workspace_id = ? AND id_type = ? AND id_value IN ({in})",
            [ws, id_type],
            values,
        )
        return dict(rows)  # type: ignore[arg-type]

    def _owner(self, conn: sa.Connection, key: IdKey) -> str | None:
        pid = self._get(key)
        if pid is None:
            self._fill(conn, [key])
            pid = self._get(key)
        return pid or None

    def known_owner(self, workspace_id: str, ids: list[tuple[str, str]]) -> str | None:
        """Return the profile owning every one of ``ids`` when the cache already says so (what
        ``resolve`` would return without writing anything), else None: resolve them."""
        owner = None
        cache = self._cache
        for id_type, value in ids:
            sub = cache.get((workspace_id, id_type))
            o = sub.get(value) if sub is not None else None
            if not o or (owner is not None and o != owner):
                return None
            owner = o
        return owner

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
        if not ids and not source.startswith("import:"):
            # tracking events whose ids are all blocked share one profile; an imported record
            # with only blocked ids still stands for one customer and keeps its own
            return self._unidentified(uow, workspace_id, at, source)
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
        merges_before = len(uow.merged)
        for (id_type, value), owner in zip(ids, owners, strict=True):
            if len(uow.merged) != merges_before:  # a merge moved identifiers: owners changed
                owner = self._owner(uow.conn, (workspace_id, id_type, value))
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

    def resolve_many(
        self,
        uow: UnitOfWork,
        workspace_id: str,
        raw_ids: Sequence[tuple[str, pl.Series]],
        at: pl.Series,
        source: str,
        context: dict[str, Any] | None = None,
        attributes: pl.Series | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[str], pl.Series]:
        """Resolve many records at once; return each record's profile (as ``resolve`` would have
        returned it, record by record in order; merges may still move it: follow ``uow.merged``)
        and a mask of the records that created their profile on their own.

        ``raw_ids`` are identifier columns (type, raw values) in the order ``resolve``'s callers
        list them; ``at`` is each record's time (aware). A profile created by one record alone
        starts with that record's ``attributes`` (JSON text) when given.

        Records split three ways, with the same outcome as resolving them one by one:

        * all identifiers already belong to one profile: that profile, nothing to write;
        * no identifier is known, none is shared with a record holding a different set of
          identifiers, and no type exceeds its limit: the records with that set share one new
          profile, created in bulk with its identities (records without any identifier get a
          profile each, as ``resolve`` gives them);
        * everything else (merges, conflicts, partly known records): ``resolve``, in order.
        Profiles and identities created in bulk are written at once (on the unit's connection).
        """
        n = at.len()
        ws = workspace_id
        conn = uow.conn
        rules: IdentityRules = self._rules_of(ws)
        self.flush(uow)  # the database is now the whole truth next to the cache
        if sum(map(len, self._cache.values())) > 3_000_000:
            self.invalidate()
        # one normalised column per identifier type, in priority order
        by_type: dict[str, list[pl.Series]] = {}
        for id_type, series in raw_ids:
            by_type.setdefault(id_type, []).append(self.normalised_column(ws, id_type, series))
        types = sorted(by_type, key=rules.rank)
        cols: dict[str, pl.Series] = {}
        # A type given by several columns: records holding more than one value of it go the
        # record-by-record way (it dedupes and enforces the limit), and so do the records holding
        # any of those values; the others hold one value of the type at most.
        several = pl.Series("several", [False] * n, pl.Boolean)
        for t in types:
            group = by_type[t]
            if len(group) == 1:
                cols[t] = group[0].alias(t)
                continue
            count = pl.select(pl.sum_horizontal([pl.lit(c).is_not_null() for c in group])).to_series()
            cols[t] = pl.select(pl.coalesce([pl.lit(c) for c in group])).to_series().alias(t)
            many = count > 1
            if many.any():
                held = pl.concat([c.filter(many) for c in group]).drop_nulls().unique()
                several = several | many | cols[t].is_in(held.implode()).fill_null(False)
        frame = pl.DataFrame(list(cols.values())) if cols else pl.DataFrame({"_": pl.repeat(0, n, eager=True)})

        # owners: the cache, then the database for the rest
        owner_cols: list[pl.Series] = []
        for t in types:
            col = frame[t]
            if col.null_count() == n:
                continue
            sub = self._cache.get((ws, t))
            in_use = self._type_in_use(conn, ws, t)
            if not sub and not in_use:
                continue  # nobody holds an identifier of this type yet
            vals = col.to_list()
            got: list[str | None] = list(map(sub.get, vals)) if sub else [None] * n
            if in_use:
                unknown = [x for x, g in zip(vals, got, strict=True) if g is None and x is not None]
                found = self._lookup(conn, ws, t, unknown) if unknown else {}
                if found:
                    got = [found.get(x) if g is None and x is not None else g for x, g in zip(vals, got, strict=True)]
            owners = pl.Series(t, got, pl.Utf8)
            owners = pl.select(pl.when(pl.lit(owners) != _MISSING).then(pl.lit(owners))).to_series()
            if owners.null_count() < n:
                owner_cols.append(owners)

        v = [pl.col(t) for t in types]
        o = [pl.lit(c) for c in owner_cols]
        n_ids = pl.sum_horizontal([c.is_not_null() for c in v]) if v else pl.lit(0)
        n_known = pl.sum_horizontal([c.is_not_null() for c in o]) if o else pl.lit(0)
        owner = pl.coalesce(o) if o else pl.lit(None, pl.Utf8)
        one_owner = pl.all_horizontal([c.is_null() | (c == owner) for c in o]) if o else pl.lit(True)
        # a value held by several records: only records with the very same set may share it
        dup = pl.any_horizontal([c.is_not_null() & c.is_duplicated() for c in v]) if v else pl.lit(False)
        rows = frame.with_columns(
            n_ids.alias("n_ids"),
            n_known.alias("n_known"),
            owner.alias("owner"),
            one_owner.alias("one_owner"),
            dup.alias("dup"),
            several.alias("several"),
        ).select("n_ids", "n_known", "owner", "one_owner", "dup", "several")
        key = pl.concat_str(
            [
                pl.when(c.is_not_null()).then(c.str.len_bytes().cast(pl.Utf8) + ":" + c).otherwise(pl.lit("-"))
                for c in v
            ],
            separator="|",
        )
        dups = frame.with_row_index("row").filter(rows["dup"])
        grouped = pl.DataFrame(schema={"row": pl.UInt32, "key": pl.Utf8, "shared": pl.Boolean})
        if dups.height:
            dups = dups.with_columns(key.alias("key"))
            grouped = dups.select(
                "row",
                "key",
                pl.any_horizontal([c.is_not_null() & (pl.col("key").n_unique().over(c) > 1) for c in v]).alias(
                    "shared"
                ),
            )
        rows = rows.with_row_index("row").join(grouped, on="row", how="left", maintain_order="left")
        rows = rows.with_columns(
            pl.when(pl.col("several"))
            .then(pl.lit("slow"))
            .when((pl.col("n_ids") > 0) & (pl.col("n_known") == pl.col("n_ids")) & pl.col("one_owner"))
            .then(pl.lit("known"))
            .when((pl.col("n_known") == 0) & ~pl.col("shared").fill_null(False))
            .then(pl.lit("new"))
            .otherwise(pl.lit("slow"))
            .alias("how"),
        )
        pids: list[str | None] = (
            rows.select(pl.when(pl.col("how") == "known").then(pl.col("owner"))).to_series().to_list()
        )

        # the rest, one by one and in order, exactly as before
        slow_rows = rows.filter(pl.col("how") == "slow")["row"]
        if progress:
            progress(0, n)
        if slow_rows.len():
            raw_slow = [(t, s.gather(slow_rows).to_list()) for t, s in raw_ids]
            slow_ids = [
                self.normalised(ws, [(t, vals[i]) for t, vals in raw_slow if vals[i] is not None])
                for i in range(slow_rows.len())
            ]
            self._fill(conn, {(ws, t, x) for ids in slow_ids for t, x in ids})
            ctx = context or {}
            slow_at = at.gather(slow_rows).to_list()
            step = max(1, slow_rows.len() // 50)
            for i, (r, ids, when) in enumerate(zip(slow_rows.to_list(), slow_ids, slow_at, strict=True)):
                pids[r] = self.resolve(uow, ws, ids, as_utc(when), source, ctx)  # type: ignore[arg-type]
                if progress and i % step == 0:
                    progress(i, n)

        # New profiles: one per identifier set, first seen with the set's first record. Their ids
        # follow the first-seen times, so the profile table's indexes all grow at their end.
        new = rows.filter(pl.col("how") == "new").select("row", "key", "dup")
        shared_sets = new.filter(pl.col("dup"))
        groups = pl.concat(
            [
                new.filter(~pl.col("dup")).select(pl.col("row").alias("first"), pl.lit(1, pl.UInt32).alias("size")),
                shared_sets.group_by("key", maintain_order=True)
                .agg(pl.col("row").first().alias("first"), pl.len().cast(pl.UInt32).alias("size"))
                .select("first", "size"),
            ]
        )
        fresh = pl.Series("fresh", [False] * n, pl.Boolean)
        if groups.height:
            groups = (
                groups.with_columns(at.gather(groups["first"]).alias("at"))
                .sort("at", "first")
                .with_columns(pl.Series("pid", new_ids("prf", groups.height), pl.Utf8))
            )
            new_pids = groups["pid"]
            for r, p in zip(groups["first"].to_list(), new_pids.to_list(), strict=True):
                pids[r] = p
            if shared_sets.height:
                members = shared_sets.join(
                    shared_sets.group_by("key").agg(pl.col("row").min().alias("first")), on="key"
                ).join(groups.select("first", "pid"), on="first")
                for r, p in zip(members["row"].to_list(), members["pid"].to_list(), strict=True):
                    pids[r] = p
            firsts = groups["first"]
            single = groups["size"] == 1
            if attributes is not None:
                attrs = pl.select(
                    pl.when(single).then(attributes.gather(firsts)).otherwise(pl.lit("{}")).fill_null("{}")
                ).to_series()
                fresh = fresh.scatter(firsts.filter(single), True)
            else:
                attrs = pl.repeat("{}", groups.height, eager=True, dtype=pl.Utf8)
            ts = ts_column(conn, groups["at"])
            now = ts_param(conn)(utcnow())
            origin = "existing" if source.startswith("import:") else "new"
            plist = new_pids.to_list()
            _bulk_insert(
                conn,
                profiles,
                _PROFILE_COLS,
                list(
                    zip(
                        plist,
                        repeat(ws),
                        plist,
                        attrs.to_list(),
                        repeat(origin),
                        ts,
                        repeat(source),
                        repeat(_j(context or {})),
                        ts,
                        repeat(now),
                        repeat(now),
                    )
                ),
            )
            held = frame.gather(firsts).with_columns(new_pids, pl.Series("at", ts, pl.Utf8))
            for t in types:
                mine = held.select(t, "pid", "at").filter(pl.col(t).is_not_null())
                if not mine.height:
                    continue
                vals, owners = mine[t].to_list(), mine["pid"].to_list()
                _bulk_insert(
                    conn,
                    identities,
                    _IDENTITY_COLS,
                    list(zip(repeat(ws), repeat(t), vals, owners, mine["at"].to_list(), repeat(source))),
                )
                # as ``_attach`` does (and replacing what the cache said: nobody)
                self._cache.setdefault((ws, t), {}).update(zip(vals, owners, strict=True))
        if progress:
            progress(n, n)
        return pids, fresh  # type: ignore[return-value]

    @staticmethod
    def _type_in_use(conn: sa.Connection, ws: str, id_type: str) -> bool:
        """Return whether the workspace holds any identifier of the type (else none can match)."""
        row = conn.exec_driver_sql(
            "SELECT 1 FROM identities WHERE workspace_id = ? AND id_type = ? LIMIT 1"
            if _is_sqlite(conn)
            else "SELECT 1 FROM identities WHERE workspace_id = %s AND id_type = %s LIMIT 1",
            (ws, id_type),
        ).first()
        return row is not None

    def alias(
        self, uow: UnitOfWork, workspace_id: str, profile_id: str, previous_id: str, at: datetime, source: str
    ) -> str:
        """Apply a Segment ``alias``: the earlier id (a userId or anonymousId) and ``profile_id``
        are one person. An alias is an explicit statement, so it merges even where the per-type
        limits would refuse an inferred link (two user_ids after a user-id change). Return the
        surviving profile."""
        rules: IdentityRules = self._rules_of(workspace_id)
        if profile_id == unidentified_profile_id(workspace_id):
            return profile_id  # the new id is a blocked value: it never links anyone either
        for id_type in ("user_id", "anonymous_id"):
            norm = self.normalised(workspace_id, [(id_type, previous_id)])
            if not norm:
                return profile_id  # a blocked value never links anyone
            owner = self._owner(uow.conn, (workspace_id, *norm[0]))
            if owner is not None:
                if owner == profile_id:
                    return profile_id
                return self.merge(uow, workspace_id, profile_id, owner, norm[0], actor="alias")
        norm = self.normalised(workspace_id, [("anonymous_id", previous_id)])
        self._attach(uow, workspace_id, profile_id, *norm[0], at, source, rules)
        return profile_id

    def _unidentified(self, uow: UnitOfWork, workspace_id: str, at: datetime, source: str) -> str:
        """Return the workspace's profile for events whose identifiers are all blocked values
        (e.g. userId "test"): they are kept, on one profile, instead of one new profile each."""
        pid = unidentified_profile_id(workspace_id)
        if pid in uow.new_profiles:
            return pid
        exists = uow.conn.execute(sa.select(profiles.c.profile_id).where(profiles.c.profile_id == pid)).first()
        if exists is None:
            uow.new_profiles[pid] = NewProfile(workspace_id, pid, "new", at, "unidentified", {})
            uow.pending_ids[pid] = {}
        return pid

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
        self._set((workspace_id, id_type, value), target)

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
                link = next(((it, v) for it, v in ids if self._get((workspace_id, it, v)) == b), ids[0])
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
        link = next(((it, v) for it, v in ids if self._get((workspace_id, it, v)) == b), ids[0])
        return self.merge(uow, workspace_id, a, b, link, actor="identity-resolution")

    # -- merge and unmerge ------------------------------------------------------------------
    def flush(self, uow: UnitOfWork) -> None:
        """Write pending new profiles and identities so SQL sees them."""
        conn = uow.conn
        ts = ts_param(conn)
        if uow.new_profiles:
            now = ts(utcnow())
            rows = []
            for p in uow.new_profiles.values():
                first = ts(p.first_seen_at)
                rows.append(
                    (
                        p.profile_id,
                        p.workspace_id,
                        p.profile_id,
                        "{}",
                        p.origin,
                        first,
                        p.source,
                        _j(p.context),
                        first,
                        now,
                        now,
                    )
                )
            _bulk_insert(conn, profiles, _PROFILE_COLS, rows)
            uow.new_profiles.clear()
        if uow.new_identities:
            _bulk_insert(
                conn,
                identities,
                _IDENTITY_COLS,
                [
                    (
                        i["workspace_id"],
                        i["id_type"],
                        i["id_value"],
                        i["profile_id"],
                        ts(i["first_seen_at"]),
                        i["source"],
                    )
                    for i in uow.new_identities
                ],
            )
            uow.new_identities.clear()
        if uow.conflicts:
            _bulk_insert(
                conn,
                identity_conflicts,
                _CONFLICT_COLS,
                [
                    (c["workspace_id"], c["profile_id"], c["id_type"], c["id_value"], c["reason"], ts(c["created_at"]))
                    for c in uow.conflicts
                ],
            )
            uow.conflicts.clear()

    def _row(self, conn: sa.Connection, profile_id: str) -> sa.Row[Any]:
        # the profile row with its scores and model tags (JSON texts, "{}" for none) from profile_scores
        row = conn.execute(sa.select(profiles, sa.func.coalesce(profile_scores.c.scores, "{}").label("scores"),
                                     sa.func.coalesce(profile_scores.c.model_tags, "{}").label("model_tags"))
                           .select_from(with_scores()).where(profiles.c.profile_id == profile_id)).first()
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
        if ra.merged_into is not None or rb.merged_into is not None or ra.profile_id == rb.profile_id:
            return str(ra.canonical_id)  # merged already (the same pair reached twice)
        winner, loser = (ra, rb) if ra.first_seen_at <= rb.first_seen_at else (rb, ra)
        wa, la = orjson.loads(winner.attributes), orjson.loads(loser.attributes)
        # attributes the loser's events of this same commit set (not written yet) are the loser's
        # too: they join the merge here and its record, so an undo gives them back to the loser
        pending = uow.deltas.get(loser.profile_id)
        if pending is not None and pending.attributes:
            la = merged_attributes(la, pending.attributes)
        # "more recently seen" counts the events of this same commit (not written yet) too: the same
        # events must merge alike whether they came in one batch or one request at a time
        newer_first = _seen_until(loser, uow) > _seen_until(winner, uow)
        # the more recently seen profile's value wins a clash; group memberships are united
        combined = merged_attributes(wa, la) if newer_first else merged_attributes(la, wa)
        keys_from_loser = [k for k in la if k not in wa]
        winner_overwritten = {k: wa[k] for k in la if k in wa and combined[k] != wa[k]}
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
        # the winner's scores and model tags: the union, the winner's own on a conflict (the loser's
        # row keeps its own)
        if loser.scores != "{}" or loser.model_tags != "{}":
            set_scores(conn, workspace_id, winner.profile_id,
                       {**orjson.loads(loser.scores), **orjson.loads(winner.scores)}, now,
                       model_tags={**orjson.loads(loser.model_tags), **orjson.loads(winner.model_tags)})
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
                        "loser_before": {**_row_dict(loser), "attributes": _j(la)},
                        "loser_identities": loser_ids,
                        "keys_from_loser": keys_from_loser,
                        "winner_overwritten": winner_overwritten,
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
        # the cache only names an owner the database (flushed above) agrees with, so the entries
        # naming the loser are among its identities
        for t, v in loser_ids:
            sub = self._cache.get((workspace_id, t))
            if sub is not None and sub.get(v) == loser.profile_id:
                sub[v] = winner.profile_id
        lp = uow.pending_ids.pop(loser.profile_id, None)
        wp = uow.pending_ids.get(winner.profile_id)
        if wp is not None:
            for t, vals in (lp or {}).items():
                wp.setdefault(t, set()).update(vals)
            if lp is None:
                uow.pending_ids.pop(winner.profile_id, None)
        ld = uow.deltas.pop(loser.profile_id, None)
        if ld is not None:
            wd = uow.delta(winner.profile_id)  # its attributes are in the merge already (la)
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
        # a later merge into the winner that was made through one of the identifiers going back to
        # the loser would be left standing on nothing (that profile joined through the loser)
        going = {(t, v) for t, v in detail.get("loser_identities", [])}
        for later in conn.execute(
            sa.select(merges.c.merge_id, merges.c.id_type, merges.c.id_value).where(
                merges.c.workspace_id == workspace_id, merges.c.winner_id == m.winner_id,
                merges.c.undone_at.is_(None), merges.c.merge_id != m.merge_id,
                sa.or_(merges.c.created_at > m.created_at,
                       sa.and_(merges.c.created_at == m.created_at, merges.c.merge_id > m.merge_id)))):
            if (later.id_type, later.id_value) in going:
                raise Conflict(f"merge {later.merge_id} joined its profile through {later.id_type} {later.id_value!r}, "
                               f"which goes back with this undo; undo merge {later.merge_id} first")
        now = utcnow()
        # the loser and everything that had been merged into it resolve to it again
        subtree = self._subtree(conn, m.loser_id)
        model_names = _model_tag_names(conn, workspace_id)
        loser_tags, loser_model_tags = _split_tags(lb, model_names)
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == m.loser_id)
            .values(
                merged_into=None,
                attributes=lb["attributes"],
                traits=lb["traits"],
                tags=loser_tags,
                order_summary=lb["order_summary"],
                recent_events=lb["recent_events"],
                origin=lb["origin"],
                first_seen_at=datetime.fromisoformat(lb["first_seen_at"]),
                first_seen_source=lb["first_seen_source"],
                first_seen_context=lb["first_seen_context"],
                # as before the merge; the undo's analytical step moves it on to its events' latest
                last_seen_at=_snapshot_time(lb.get("last_seen_at")),
                updated_at=now,
            )
        )
        # its scores and model tags as they were before the merge
        set_scores(conn, workspace_id, m.loser_id, lb["scores"], now, model_tags=loser_model_tags)
        conn.execute(profiles.update().where(profiles.c.profile_id.in_(subtree)).values(canonical_id=m.loser_id))
        attrs = orjson.loads(winner.attributes)
        loser_attrs = orjson.loads(lb["attributes"])
        groups_now = attrs.pop(GROUPS, None)
        for k in detail["keys_from_loser"]:
            if k in attrs and attrs[k] == loser_attrs.get(k):
                del attrs[k]
        for k, v in detail.get("winner_overwritten", {}).items():
            if k != GROUPS and attrs.get(k) == loser_attrs.get(k):
                attrs[k] = v  # the loser's value had won the clash: the winner's own comes back
        if groups_now is not None:
            # group by group as above: a group the loser brought goes unless changed since; one whose
            # traits the loser's overwrote gets the winner's own back
            groups = _less_loser_groups(groups_now, loser_attrs.get(GROUPS) or {},
                                        orjson.loads(wb["attributes"]).get(GROUPS) or {})
            if groups:
                attrs[GROUPS] = groups
        # The winner's derived fields: its own state before this merge, combined again with the
        # profiles merged into it later (their rows keep their own pre-merge state), so undoing
        # an early merge never drops what later merges brought.
        others = conn.execute(
            sa.select(profiles).where(profiles.c.canonical_id == m.winner_id, profiles.c.profile_id != m.winner_id)
        ).all()
        # Traits, tags, scores and model tags: the winner's values as they are NOW, less what the
        # loser brought that nobody changed since (the winner's own value, if it had one, comes back);
        # what was set on the survivor after the merge (a marketer's tag, a model run's scores) stays.
        winner_tags, winner_model_tags = _split_tags(wb, model_names)
        current_tags = {**orjson.loads(winner.tags), **orjson.loads(winner.model_tags)}
        now_tags = {k: v for k, v in current_tags.items() if k not in model_names}
        now_model_tags = {k: v for k, v in current_tags.items() if k in model_names}
        traits = _less_loser(orjson.loads(winner.traits), orjson.loads(lb["traits"]), orjson.loads(wb["traits"]))
        tags = _less_loser(now_tags, orjson.loads(loser_tags), orjson.loads(winner_tags))
        scores = _less_loser(orjson.loads(winner.scores), orjson.loads(lb["scores"]), orjson.loads(wb["scores"]))
        model_tags = _less_loser(now_model_tags, orjson.loads(loser_model_tags), orjson.loads(winner_model_tags))
        others_outputs = read_scores(conn, workspace_id, [o.profile_id for o in others], with_model_tags=True)
        # origin and first seen: the winner's own, from before the first merge into it (an earlier
        # merge undone out of order must not leave its loser's origin behind), then the profiles
        # still merged into it
        first_merge = conn.execute(sa.select(merges.c.detail).where(
            merges.c.workspace_id == workspace_id, merges.c.winner_id == m.winner_id)
            .order_by(merges.c.created_at, merges.c.merge_id).limit(1)).scalar_one()
        own = orjson.loads(first_merge)["winner_before"]
        origin = own["origin"]
        first = (as_utc(datetime.fromisoformat(own["first_seen_at"])), own["first_seen_source"],
                 own["first_seen_context"])
        # ... unless the survivor's values now are not the loser's: a customer import after the merge
        # (an earlier registration, "existing") was the survivor's own and stays. Not an order or
        # feedback record's date: those records follow the identifiers they named, which may be the
        # loser's, back with this undo (nothing tells which profile a first-seen time came from)
        now_first = (as_utc(winner.first_seen_at), winner.first_seen_source, winner.first_seen_context)
        loser_first = (as_utc(datetime.fromisoformat(lb["first_seen_at"])), lb["first_seen_source"])
        if now_first[:2] != loser_first and not str(now_first[1]).startswith(("import:orders", "import:feedback")):
            first = now_first
        if winner.origin == "existing" and (lb["origin"] != "existing" or str(first[1]).startswith("import:")):
            origin = "existing"
        for o in others:
            attrs = merged_attributes(orjson.loads(o.attributes), attrs)  # what a profile still merged in brought stays
            traits = {**orjson.loads(o.traits), **traits}
            tags = {**orjson.loads(o.tags), **tags}
            o_scores, o_model_tags = others_outputs.get(o.profile_id, ({}, {}))
            scores = {**o_scores, **scores}
            model_tags = {**o_model_tags, **model_tags}
            if o.origin == "existing":
                origin = "existing"
            seen = as_utc(o.first_seen_at)
            if seen is not None and first[0] is not None and seen < first[0]:
                first = (seen, o.first_seen_source, o.first_seen_context)
        conn.execute(
            profiles.update()
            .where(profiles.c.profile_id == m.winner_id)
            .values(
                attributes=_j(attrs),
                traits=_j(traits),
                tags=_j(tags),
                order_summary=wb["order_summary"],
                origin=origin,
                first_seen_at=first[0],
                first_seen_source=first[1],
                first_seen_context=first[2],
                # not the restored profile's later activity: as before the merge (a survivor known
                # only from the CRM has no events for the undo's analytical step to date it by)
                last_seen_at=_snapshot_time(wb.get("last_seen_at")),
                updated_at=now,
            )
        )
        set_scores(conn, workspace_id, m.winner_id, scores, now, model_tags=model_tags)
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
            self._set((workspace_id, id_type, value), m.loser_id)
        kept_ids = [tuple(r) for r in conn.execute(
            sa.select(identities.c.id_type, identities.c.id_value).where(
                identities.c.workspace_id == workspace_id, identities.c.profile_id == m.winner_id))]
        # feedback imported while the merge stood, naming the loser's identifiers (and none the
        # winner keeps), was about the loser
        moved_set, kept_set = set(moved_ids), set(kept_ids)
        back = [fid for fid, named in conn.execute(
            sa.select(feedback.c.feedback_id, feedback.c.identifiers).where(
                feedback.c.workspace_id == workspace_id, feedback.c.profile_id == m.winner_id,
                feedback.c.identifiers.is_not(None)))
                if names_only(named, moved_set, kept_set)]
        for lo in range(0, len(back), 500):
            conn.execute(feedback.update().where(feedback.c.workspace_id == workspace_id,
                                                 feedback.c.feedback_id.in_(back[lo : lo + 500]))
                         .values(profile_id=m.loser_id))
        work = {
            "loser": m.loser_id,
            "winner": m.winner_id,
            "subtree": subtree,
            "identities": moved_ids,
            # the ids the winner keeps: an event of the merge's own commit, or an order
            # imported while the merge stood, that names none of them but one of the loser's
            # was the loser's (it would have resolved to the loser)
            "winner_identities": kept_ids,
            "since": as_utc(m.created_at).isoformat(),
        }
        # the analytical side of the undo, kept until done (collect.writer.finish_unmerges does it)
        conn.execute(merges.update().where(merges.c.merge_id == merge_id).values(
            undone_at=now, analytical_pending=_j(work)))
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


def unidentified_profile_id(workspace_id: str) -> str:
    """Return the id of the workspace's profile for events with no usable identifier."""
    return "prf_" + workspace_id.split("_", 1)[-1]
