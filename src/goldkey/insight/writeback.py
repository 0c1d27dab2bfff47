"""Write a model's scores back to the operational store.

Every insight model (RFM, CLV, churn, lifecycle, ...) ends the same way: a set of numbers per
profile under ``scores.<field>``, stamped with the model version, written on the writer thread (the
single writer of the operational store), removed from live profiles the model no longer scores,
then the analytical facts marked stale and the real-time segments told which profiles changed.
:func:`write_score_patches` is that one path (:func:`write_scores`, :func:`write_score_columns` and
:func:`write_score_table` build its input).

Where: a profile's scores are one JSON object in the narrow ``profile_scores`` table (one row per
profile that has scores, :mod:`goldkey.profiles.scores`), not in the wide profile row: a model run
rewrites ~100-byte rows instead of rows holding the attributes, traits, tags, order summary and
recent events (churn at 1M profiles of ~2.2 KB: scores and reasons written in 18.7-20 s instead of
42-58 s; see docs/churn.md).

How (fast at 1M profiles): a model's new values for a profile are a **JSON merge patch**
(RFC 7396: ``{"churn_risk": 0.42, "churn_risk_model_version": 3.0}``, ``null`` removes a field,
numbers printed as the shortest text that reads back the same float). The rows a patch changes are
found off the writer thread. When every patch sets the model's new version, a row that does not
hold that version changes whatever else it holds: the database scans the rows once for the
version's text, and only the rows that hold it (a rerun of the same version: compared field by
field) or whose profile the model no longer scores (its fields removed) are read into Python; a
new version at 1M profiles reads no row's JSON. Without a version every live profile's scores are
read and compared. Only the rows that change go to the writer thread, ``WRITE_CHUNK`` profiles per
command (event commits go on in between), where the database applies each patch to the row as it
is then: SQLite ``UPDATE ... SET scores = json_patch(scores, ?)`` by primary key for a profile
that has a row, ``INSERT ... SELECT`` from the live profile for one that has none (one prepared
statement each, ``executemany``); PostgreSQL ``jsonb_strip_nulls(scores::jsonb || patch)`` from
``unnest`` arrays, then the profiles without a row inserted. A row a removal leaves empty stays
(``{}``): rows are never deleted, so a row the scan found is still there to be updated. That a
profile is live is checked in ``ix_profiles_live`` (workspace, merged_into, profile_id), never by
reading the wide profile row. A concurrent change to another field is never lost, and nothing is
merged and re-serialised in Python.

A model that also sets model tags (RFM's group and value tier, the lifecycle stage) writes them in
the same statements: the ``profile_scores`` row holds a profile's model tags beside its scores, so
:func:`write_model_outputs` applies the tags' merge patch to ``model_tags`` in the statement that
patches ``scores`` and appends the Tag Changed events of each chunk after writing it, instead of a
second pass over the same rows for the tags.

Per-profile details that are not numbers go to one of two places:

- recommended items and other details the 360° profile shows under ``insights.<model>`` go to the
  operational ``profile_insights`` table (:func:`write_profile_insight_texts`), one row per profile
  and model;
- the reasons of a churn or propensity score (one JSON text per scored profile, every run, for
  every live profile) go to the analytical store's ``profile_reasons`` table
  (:func:`write_profile_reasons`): appended through Arrow in a few large transactions, they cost
  ~1 s at 1M profiles where one upsert per profile into the operational store cost 7-10 s on the
  writer thread, the single biggest part of a scoring run (docs/churn.md). They are read one
  profile at a time (:func:`read_profile_reasons`, a few ms) by the reasons endpoint, which the
  console's profile page calls beside the profile itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from goldkey.audience.catalog import declare_field
from goldkey.audience.common import emit_event_columns
from goldkey.audience.tags import WRITE_CHUNK, ModelTagPlan, tag_change_events
from goldkey.insight.registry import note_writeback

CHUNK = 5000


def declare_scores(engine: sa.Engine, ws: str, fields: Mapping[str, str], model: str, version: int) -> None:
    """Declare ``scores.<field>`` (numbers) in the workspace's field catalog so rules can use them.
    ``fields`` maps each field to its human label."""
    with engine.begin() as c:
        for f, label in fields.items():
            declare_field(c, ws, f"scores.{f}", "number", "model", label=label,
                          description=f"written by model {model} v{version}")


def write_scores(gk_parts: Any, ws: str, owned: Iterable[str], values: Mapping[str, Mapping[str, float | None]],
                 *, remove_others: bool = True) -> int:
    """Set ``scores`` fields on profiles and return how many rows changed.

    ``values`` maps a live profile id to ``{field: number}`` (None removes the field); ``owned``
    names every field the model writes: on profiles absent from ``values`` (when ``remove_others``)
    those fields are removed, so a profile no longer scored does not keep a stale score.
    ``gk_parts`` is anything with ``writer``, ``facts`` and optionally ``realtime`` attributes (the
    Goldkey runtime or a service). Numbers are stored as floats."""
    dumps = orjson.dumps
    patches = [dumps({k: None if v is None else float(v) for k, v in s.items()}).decode() for s in values.values()]
    return write_score_patches(gk_parts, ws, owned, list(values), patches, remove_others=remove_others)


def write_score_columns(gk_parts: Any, ws: str, owned: Iterable[str], profile_ids: Sequence[str] | pl.Series,
                        columns: Mapping[str, Any], *, remove_others: bool = True) -> int:
    """:func:`write_scores` from columns: ``columns`` maps a field to one number per profile of
    ``profile_ids`` (an array; NaN or null removes the field) or to one number for every profile
    (the model version)."""
    return _write_columns(gk_parts, ws, owned, profile_ids, columns, remove_others=remove_others).written


def _write_columns(gk_parts: Any, ws: str, owned: Iterable[str], profile_ids: Sequence[str] | pl.Series,
                   columns: Mapping[str, Any], *, remove_others: bool = True,
                   tags: Mapping[str, ModelTagPlan] | None = None, source: str = "model") -> ModelWrite:
    """:func:`write_score_columns`, with the model's tags (:func:`write_model_outputs`)."""
    # a number every row gets (the model version) lets rows stored without it skip the comparison; as
    # SQLite's json_patch keeps it ("f":3.0) or PostgreSQL's jsonb prints it ("f": 3.0)
    const = next(((f, v) for f, v in columns.items() if v is not None and np.isscalar(v) and np.isfinite(v)), None)
    hint = None
    if const is not None:
        key, num = orjson.dumps(const[0]).decode(), _number_text(const[1])
        hint = (f"{key}:{num}", f"{key}: {num}")
    # sorted by profile id here, the patches built in that order: write_score_patches' key order
    # (in_key_order) without a second pass over a million patch texts
    ids = profile_ids if isinstance(profile_ids, pl.Series) else pl.Series(profile_ids, dtype=pl.String)
    for f, v in columns.items():
        if v is not None and not np.isscalar(v) and len(v) != len(ids):
            raise ValueError(f"score column {f!r} has {len(v)} values for {len(ids)} profiles")
    order = ids.arg_sort()
    take = order.to_numpy()
    cols = {f: v if v is None or np.isscalar(v) else np.asarray(v, dtype=np.float64)[take] for f, v in columns.items()}
    return write_model_outputs(gk_parts, ws, owned, ids.gather(order).to_list(), score_patches(len(ids), cols),
                               remove_others=remove_others, hint=hint, in_order=True, tags=tags, source=source)


def write_score_table(gk_parts: Any, ws: str, owned: Iterable[str], tbl: pa.Table,
                      constants: Mapping[str, float] | None = None, *, remove_others: bool = True) -> int:
    """:func:`write_scores` from a columnar result: ``tbl`` has ``profile_id`` and one column per
    score field (nulls remove the field); ``constants`` (e.g. the model version) go to every row."""
    return write_model_table(gk_parts, ws, owned, tbl, constants, remove_others=remove_others).written


def write_model_table(gk_parts: Any, ws: str, owned: Iterable[str], tbl: pa.Table,
                      constants: Mapping[str, float] | None = None, *, remove_others: bool = True,
                      tags: Mapping[str, ModelTagPlan] | None = None, source: str = "model") -> ModelWrite:
    """:func:`write_score_table` with the model's tags (``tags``, the plans of
    :meth:`goldkey.audience.tags.TagService.plan_model_values`) in the same row writes, with their
    Tag Changed events (``source``): :func:`write_model_outputs`."""
    cols: dict[str, Any] = {c: pc.cast(tbl.column(c), pa.float64()).to_numpy(zero_copy_only=False)
                            for c in tbl.column_names if c != "profile_id"}
    cols.update(constants or {})
    ids = pl.Series(pc.cast(tbl.column("profile_id"), pa.string()).combine_chunks())
    return _write_columns(gk_parts, ws, owned, ids, cols, remove_others=remove_others, tags=tags, source=source)


def in_key_order(ids: Sequence[str], *columns: Sequence[str]) -> tuple[list[str], ...]:
    """``ids`` and the parallel text ``columns`` reordered by profile id, the order of the tables'
    primary keys. A chunk written in key order touches a run of neighbouring B-tree pages instead
    of one page per row: a model's results come in the order its feature query produced them,
    which is no order at all (churn scores, 200k profiles: 4.9 s -> 1.9 s written)."""
    order = pl.Series(ids, dtype=pl.String).arg_sort()
    return tuple(pl.Series(c, dtype=pl.String).gather(order).to_list() for c in (ids, *columns))


def _number_text(v: Any) -> str:
    if v is None:
        return "null"
    return orjson.dumps(float(v)).decode()  # NaN / inf: null


def score_patches(n: int, columns: Mapping[str, Any]) -> list[str]:
    """One JSON merge patch per row: ``{"field": number, ...}`` from ``columns`` (arrays of ``n``
    numbers, NaN or null for "remove", or one number for every row), built column by column
    (floats printed as the shortest text that reads back the same, as ``orjson`` does)."""
    parts: list[pl.Expr] = []
    for i, (field, v) in enumerate(columns.items()):
        parts.append(pl.lit(("{" if i == 0 else ",") + orjson.dumps(field).decode() + ":"))
        if v is None or np.isscalar(v):
            parts.append(pl.lit(_number_text(v)))
            continue
        s = pl.Series(np.asarray(v, dtype=np.float64), dtype=pl.Float64, nan_to_null=False)
        if s.len() != n:
            raise ValueError(f"score column {field!r} has {s.len()} values for {n} profiles")
        parts.append(pl.when(s.is_finite()).then(s.cast(pl.String)).otherwise(pl.lit("null")))
    if not parts:
        return ["{}"] * n
    parts.append(pl.lit("}"))
    out = pl.select(pl.concat_str(parts)).to_series()
    return out.to_list() if out.len() == n else [out[0]] * n  # only constants: one row


def read_live_scores(gk_parts: Any, ws: str) -> list[tuple[str, str | None]]:
    """``(profile_id, scores JSON)`` of every live profile of ``ws`` (None: no ``profile_scores`` row
    yet), read on a raw DBAPI cursor: what :func:`write_score_patches` compares a model's new values
    with."""
    with gk_parts.writer.engine.connect() as conn:
        ph = "?" if conn.dialect.name == "sqlite" else "%s"
        cur = conn.connection.cursor()
        try:
            cur.execute("SELECT p.profile_id, s.scores FROM profiles p LEFT JOIN profile_scores s "
                        "ON s.workspace_id = p.workspace_id AND s.profile_id = p.profile_id "
                        f"WHERE p.workspace_id = {ph} AND p.merged_into IS NULL", (ws,))
            return cur.fetchall()
        finally:
            cur.close()


_NO_ROW = object()
_Chunk = tuple[list[str], list[str], list[bool]]


def _changing(rows: list[tuple[str, str | None]], ids: Sequence[str], patches: Sequence[str],
              owned: tuple[str, ...], remove_others: bool, chunk: int) -> Iterator[_Chunk]:
    """The ``(ids, patches, has_row)`` that change a live profile's scores, in chunks of at most
    ``chunk`` profiles (``rows``: what the live profiles hold now, None without a row): the given
    patches that set a different value or remove a present field, and with ``remove_others`` the
    removal of the ``owned`` fields from the other live profiles holding one; ``has_row`` tells
    whether the profile had a ``profile_scores`` row. A generator, so that the first chunks are
    written while the next are found. (Patches that all set a model version go through
    :func:`_changing_hinted` instead, which reads no row it need not compare.)"""
    current = dict(rows)
    del rows
    loads = orjson.loads
    out: _Chunk = ([], [], [])
    for pid, patch in zip(ids, patches, strict=True):
        raw = current.pop(pid, _NO_ROW)
        if raw is _NO_ROW:  # not a live profile of the workspace (merged away, unknown): nothing to write
            continue
        if raw is None:  # no scores yet: a patch setting anything creates the row
            if not any(v is not None for v in loads(patch).values()):
                continue
        elif not _differs(loads(raw), loads(patch)):  # type: ignore[arg-type]
            continue
        out[0].append(pid)
        out[1].append(patch)
        out[2].append(raw is not None)
        if len(out[0]) >= chunk:
            yield out
            out = ([], [], [])
    if remove_others and owned:
        gone = orjson.dumps(dict.fromkeys(owned)).decode()
        quoted = [orjson.dumps(k).decode() for k in owned]
        for pid, raw in current.items():
            if raw is not None and any(q in raw for q in quoted) and any(k in loads(raw) for k in owned):
                out[0].append(pid)
                out[1].append(gone)
                out[2].append(True)
                if len(out[0]) >= chunk:
                    yield out
                    out = ([], [], [])
    if out[0]:
        yield out


def _scan_scores(gk_parts: Any, ws: str, hint: tuple[str, ...], owned: tuple[str, ...], scored: set[str] | None
                 ) -> tuple[set[str], dict[str, str], list[str]]:
    """What :func:`_changing_hinted` needs of the workspace's ``profile_scores`` rows: the ids of
    every row, the text of the rows that hold ``hint`` (the model version being written: usually
    none) and the ids of the rows outside ``scored`` that hold one of the ``owned`` fields (none
    when ``scored`` is None: nothing is removed). The database scans the rows once for the version
    (one text search each, in the form that store prints numbers) and for the version's field:
    only rows holding that field are candidates for a removal (a model writes its fields with its
    version, so a row without it - another model's scores, only model tags - holds nothing of this
    model's). Only the rows holding the version or candidates outside ``scored`` (usually few) are
    read into Python."""
    with gk_parts.writer.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        ph, find = ("?", "instr") if sqlite else ("%s", "strpos")
        version = hint[0] if sqlite or len(hint) == 1 else hint[1]  # '"f":3.0' (json_patch) / '"f": 3.0' (jsonb)
        cur = conn.connection.cursor()
        try:
            # 2: holds this version; 1: holds the model's version field (another version), so maybe
            # its other fields; 0: neither (the model writes its fields with its version: nothing of
            # the model's to remove)
            key = version[: version.rindex(":") + 1]  # '"f":'
            cur.execute(f"SELECT profile_id, CASE WHEN {find}(scores, {ph}) > 0 THEN 2 WHEN {find}(scores, {ph}) > 0 "
                        f"THEN 1 ELSE 0 END FROM profile_scores WHERE workspace_id = {ph}", (version, key, ws))
            rows = cur.fetchall()
            existing = {r[0] for r in rows}
            hinted = {r[0] for r in rows if r[1] == 2}
            others = {r[0] for r in rows if r[1]} - scored if scored is not None else set()
            want = hinted | others
            texts: dict[str, str] = {}
            if len(want) > 20_000:  # many: one scan, kept in Python
                cur.execute(f"SELECT profile_id, scores FROM profile_scores WHERE workspace_id = {ph}", (ws,))
                texts = {pid: raw for pid, raw in cur.fetchall() if pid in want}
            else:
                some = sorted(want)
                for lo in range(0, len(some), 500):
                    part = some[lo : lo + 500]
                    cur.execute(f"SELECT profile_id, scores FROM profile_scores WHERE workspace_id = {ph} "
                                f"AND profile_id IN ({', '.join([ph] * len(part))})", (ws, *part))
                    texts.update(cur.fetchall())
        finally:
            cur.close()
    loads = orjson.loads
    quoted = [orjson.dumps(k).decode() for k in owned]
    holding = sorted(p for p in others if p in texts and any(q in texts[p] for q in quoted)
                     and any(k in loads(texts[p]) for k in owned))
    return existing, {p: texts[p] for p in hinted if p in texts}, holding


def _changing_hinted(gk_parts: Any, ws: str, ids: Sequence[str], patches: Sequence[str], owned: tuple[str, ...],
                     remove_others: bool, chunk: int, hint: tuple[str, ...]) -> Iterator[_Chunk]:
    """:func:`_changing` when every patch sets ``hint``'s number (a model version): a stored row
    without it changes whatever it holds, so only the rows holding it (a rerun of the same version)
    are read and compared field by field; the others' JSON is never read (a new version at 1M
    profiles: one scan of ids and flags instead of a million texts parsed in Python). Profiles that
    are not live are left to the writing statements, which skip them (they check liveness)."""
    existing, texts, holding = _scan_scores(gk_parts, ws, hint, owned, set(ids) if remove_others else None)
    loads = orjson.loads
    for lo in range(0, len(ids), chunk):
        part_ids, part_patches = list(ids[lo : lo + chunk]), list(patches[lo : lo + chunk])
        if texts:  # rows already at this version: written only if a field differs
            keep = [i for i, pid in enumerate(part_ids) if pid not in texts or _differs(loads(texts[pid]),
                                                                                       loads(part_patches[i]))]
            part_ids, part_patches = [part_ids[i] for i in keep], [part_patches[i] for i in keep]
        if part_ids:
            yield part_ids, part_patches, [pid in existing for pid in part_ids]
    if holding:
        patch = orjson.dumps(dict.fromkeys(owned)).decode()
        for lo in range(0, len(holding), chunk):
            part = holding[lo : lo + chunk]
            yield part, [patch] * len(part), [True] * len(part)


def _differs(doc: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether applying ``patch`` (a JSON merge patch of numbers and nulls) changes ``doc``."""
    return any((k in doc) if v is None else (doc.get(k) != v) for k, v in patch.items())


# SQLite, a profile that has a row: the patch applied to the row as it is then, by primary key, if the
# profile is still live (a row is never deleted, so the row found by the read is still there). Liveness
# is a search of ix_profiles_live, which holds every column it needs: the wide profile row is not read
# (the planner would take the primary key and read it).
_SQLITE_UPDATE = (
    "UPDATE profile_scores SET scores = json_patch(scores, ?1), updated_at = ?4 "
    "WHERE workspace_id = ?3 AND profile_id = ?2 AND EXISTS (SELECT 1 FROM profiles INDEXED BY ix_profiles_live "
    "WHERE workspace_id = ?3 AND merged_into IS NULL AND profile_id = ?2)"
)
# the same with the model's tags (?5, a merge patch of profile_scores.model_tags) in the same row write
_SQLITE_UPDATE_TAGS = (
    "UPDATE profile_scores SET scores = json_patch(scores, ?1), model_tags = json_patch(model_tags, ?5), "
    "updated_at = ?4 "
    "WHERE workspace_id = ?3 AND profile_id = ?2 AND EXISTS (SELECT 1 FROM profiles INDEXED BY ix_profiles_live "
    "WHERE workspace_id = ?3 AND merged_into IS NULL AND profile_id = ?2)"
)
# SQLite, a profile without a row: inserted if the profile is a live one of the workspace (a search of
# ix_profiles_live), the patch applied to {} (nulls dropped); a row created meanwhile (another model's
# write) gets the patch applied to what it holds.
_SQLITE_INSERT = (
    "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at) "
    "SELECT ?3, profile_id, json_patch('{}', ?1), ?4 FROM profiles INDEXED BY ix_profiles_live "
    "WHERE workspace_id = ?3 AND merged_into IS NULL AND profile_id = ?2 "
    "ON CONFLICT (workspace_id, profile_id) DO UPDATE SET scores = json_patch(profile_scores.scores, ?1), "
    "updated_at = ?4 WHERE json_patch(profile_scores.scores, ?1) IS NOT profile_scores.scores"
)
_SQLITE_INSERT_TAGS = (
    "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
    "SELECT ?3, profile_id, json_patch('{}', ?1), ?4, json_patch('{}', ?5) FROM profiles INDEXED BY ix_profiles_live "
    "WHERE workspace_id = ?3 AND merged_into IS NULL AND profile_id = ?2 "
    "ON CONFLICT (workspace_id, profile_id) DO UPDATE SET scores = json_patch(profile_scores.scores, ?1), "
    "model_tags = json_patch(profile_scores.model_tags, ?5), updated_at = ?4 "
    "WHERE json_patch(profile_scores.scores, ?1) IS NOT profile_scores.scores "
    "OR json_patch(profile_scores.model_tags, ?5) IS NOT profile_scores.model_tags"
)
# PostgreSQL: every existing row of the chunk patched (jsonb), then the live profiles without one inserted;
# model_tags patched by the third array (all '{}' when the model writes no tag)
_PG_UPDATE = (
    "UPDATE profile_scores AS s SET scores = jsonb_strip_nulls(s.scores::jsonb || u.patch::jsonb)::text, "
    "model_tags = jsonb_strip_nulls(s.model_tags::jsonb || u.tags::jsonb)::text, "
    "updated_at = %(at)s FROM unnest(%(ids)s::text[], %(patches)s::text[], %(tags)s::text[]) AS u(id, patch, tags), "
    "profiles AS p "
    "WHERE s.workspace_id = %(ws)s AND s.profile_id = u.id AND p.profile_id = u.id AND p.workspace_id = %(ws)s "
    "AND p.merged_into IS NULL "
    "AND (s.scores::jsonb IS DISTINCT FROM jsonb_strip_nulls(s.scores::jsonb || u.patch::jsonb) "
    "OR s.model_tags::jsonb IS DISTINCT FROM jsonb_strip_nulls(s.model_tags::jsonb || u.tags::jsonb))"
)
_PG_INSERT = (
    "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
    "SELECT %(ws)s, u.id, jsonb_strip_nulls(u.patch::jsonb)::text, %(at)s, jsonb_strip_nulls(u.tags::jsonb)::text "
    "FROM unnest(%(ids)s::text[], %(patches)s::text[], %(tags)s::text[]) AS u(id, patch, tags) "
    "JOIN profiles AS p ON p.profile_id = u.id AND p.workspace_id = %(ws)s AND p.merged_into IS NULL "
    "WHERE jsonb_strip_nulls(u.patch::jsonb) <> '{}'::jsonb OR jsonb_strip_nulls(u.tags::jsonb) <> '{}'::jsonb "
    "ON CONFLICT (workspace_id, profile_id) DO NOTHING"
)
# the live profiles among a chunk's (SQLite: ?1 the ids as a JSON array, ?2 the workspace)
_SQLITE_LIVE = ("SELECT p.profile_id FROM json_each(?1) AS u CROSS JOIN profiles AS p INDEXED BY ix_profiles_live "
                "WHERE p.workspace_id = ?2 AND p.merged_into IS NULL AND p.profile_id = u.value")
_PG_LIVE = "SELECT profile_id FROM profiles WHERE workspace_id = %s AND merged_into IS NULL AND profile_id = ANY(%s)"


def _apply_patches(conn: sa.Connection, ws: str, ids: Sequence[str], patches: Sequence[str],
                   has_row: Sequence[bool], tags: Sequence[str] | None = None) -> int:
    """Patch the scores of the live profiles ``ids`` of ``ws`` inside the caller's transaction (a row
    created for a profile without one, ``has_row`` False), and their model tags with ``tags`` (one
    merge patch per profile, ``{}`` for none) when given; the number of profiles whose row changed
    (SQLite: an update counts a live profile's row even if the patches left it as it was). A row a
    removal leaves empty stays (``{}``)."""
    from goldkey.core.clock import utcnow
    from goldkey.store.operational import timestamp_param

    at = timestamp_param(conn, utcnow())
    cur = conn.connection.cursor()
    try:
        if conn.dialect.name != "sqlite":
            args = {"ws": ws, "at": at, "ids": list(ids), "patches": list(patches),
                    "tags": list(tags) if tags is not None else ["{}"] * len(ids)}
            cur.execute(_PG_UPDATE, args)
            changed = max(0, int(cur.rowcount))
            if not all(has_row):
                cur.execute(_PG_INSERT, args)
                changed += max(0, int(cur.rowcount))
            return changed
        changed = 0
        statements = ((_SQLITE_UPDATE, True), (_SQLITE_INSERT, False)) if tags is None else \
            ((_SQLITE_UPDATE_TAGS, True), (_SQLITE_INSERT_TAGS, False))
        for sql, want in statements:
            if tags is None:
                rows = [(p, i, ws, at) for i, p, h in zip(ids, patches, has_row, strict=True) if h is want]
            else:
                rows = [(p, i, ws, at, t) for i, p, h, t in zip(ids, patches, has_row, tags, strict=True) if h is want]
            if rows:
                cur.executemany(sql, rows)
                changed += max(0, int(cur.rowcount))
        return changed
    finally:
        cur.close()


def _live_among(conn: sa.Connection, ws: str, ids: Sequence[str]) -> set[str]:
    """The live profiles of ``ws`` among ``ids`` (read inside the caller's transaction)."""
    cur = conn.connection.cursor()
    try:
        if conn.dialect.name == "sqlite":
            cur.execute(_SQLITE_LIVE, (orjson.dumps(list(ids)).decode(), ws))
        else:
            cur.execute(_PG_LIVE, (ws, list(ids)))
        return {r[0] for r in cur.fetchall()}
    finally:
        cur.close()


def write_score_patches(gk_parts: Any, ws: str, owned: Iterable[str], profile_ids: Sequence[str],
                        patches: Sequence[str], *, remove_others: bool = True,
                        hint: tuple[str, ...] | None = None, in_order: bool = False) -> int:
    """Apply one JSON merge patch (``{"field": number or null}``) to the ``scores`` of each live
    profile of ``profile_ids`` and, when ``remove_others``, remove the ``owned`` fields from every
    other live profile holding one; returns how many rows changed (their ids go to the real-time
    segments). :func:`write_model_outputs` without tags.

    The rows a patch would change are found off the writer thread: with ``hint`` (the texts,
    ``"field":number`` / ``"field": number``, of a model version every patch sets) by
    :func:`_changing_hinted`, otherwise by reading every live profile's scores
    (:func:`read_live_scores`) and comparing. Only those go to the writer thread in key order
    (:func:`in_key_order`; ``in_order``: the caller sorted them already), ``WRITE_CHUNK`` per
    command, one command at a time, once every change is found. The database applies each patch
    to the row as it is then (a concurrent change to another field is never lost); a row found
    unchanged is not written even if it changed in between."""
    return write_model_outputs(gk_parts, ws, owned, profile_ids, patches, remove_others=remove_others, hint=hint,
                               in_order=in_order).written


class ModelWrite(NamedTuple):
    """What :func:`write_model_outputs` did."""

    written: int  # profile_scores rows changed (scores, model tags or both)
    tags: dict[str, int]  # per tag: profiles whose value changed (one Tag Changed event each)
    # milliseconds: find (the changes found, off the writer thread), rows (the writer commands' row
    # writes), events (their Tag Changed events)
    timings_ms: dict[str, int] = {}


def _tag_patches(plans: Mapping[str, ModelTagPlan]) -> dict[str, str]:
    """One merge patch of ``model_tags`` per profile a plan changes: ``{"tag": value, ...}``, null
    for a tag removed. Put together from a handful of fragments per tag (``"tag":value``)."""
    dumps = orjson.dumps
    parts: dict[str, str] = {}
    for name, plan in plans.items():
        if not plan.changes:
            continue
        key = dumps(name).decode() + ":"
        frag = {v: key + dumps(v).decode() for v in set(plan.changes.values())}
        if not parts:
            parts = {p: frag[v] for p, v in plan.changes.items()}
            continue
        get = parts.get
        for p, v in plan.changes.items():
            have = get(p)
            parts[p] = frag[v] if have is None else f"{have},{frag[v]}"
    return {p: f"{{{t}}}" for p, t in parts.items()}


def _with_tags(changes: Iterable[_Chunk], plans: Mapping[str, ModelTagPlan], chunk: int
               ) -> Iterator[tuple[list[str], list[str], list[bool], list[str]]]:
    """The score changes with each profile's model tag patch (``{}`` for none), chunk by chunk, then
    the profiles whose tags alone change (in key order, chunks of at most ``chunk``; written by the
    statement for a profile without a row, which updates the row it finds). A dictionary lookup per
    profile: no table of a million profile ids built and joined."""
    patches = _tag_patches(plans)
    pop = patches.pop
    for ids, score_patches_, has_row in changes:
        yield ids, score_patches_, has_row, [pop(p, "{}") for p in ids]
    rest = sorted(patches)
    for lo in range(0, len(rest), chunk):
        part = rest[lo : lo + chunk]
        yield part, ["{}"] * len(part), [False] * len(part), [patches[p] for p in part]


def write_model_outputs(gk_parts: Any, ws: str, owned: Iterable[str], profile_ids: Sequence[str],
                        patches: Sequence[str], *, tags: Mapping[str, ModelTagPlan] | None = None,
                        source: str = "model", remove_others: bool = True, hint: tuple[str, ...] | None = None,
                        in_order: bool = False) -> ModelWrite:
    """A model's scores (:func:`write_score_patches`) and its model tags (``tags``, the plans of
    :meth:`goldkey.audience.tags.TagService.plan_model_values`) in ONE write of each profile's
    ``profile_scores`` row, which holds both: the scores' merge patch and the tags' merge patch of a
    profile in one statement, instead of a pass over the rows for the scores and another for the
    tags (a first RFM + lifecycle run at 1M profiles rewrote every row four times; now twice).
    Each writer command appends the Tag Changed events (``source``) of its live profiles whose tags
    it changed, one per profile and tag, after its rows are written.

    The tags are written as the plans say without comparing the row's value first: a model's tags
    are written by the model alone, and a tag value that a merge of profiles brought in meanwhile is
    replaced by the model's, as a score is."""
    note_writeback(ws)  # the run's outputs start to land: a failure from here keeps its version
    owned = tuple(owned)
    if len(profile_ids) != len(patches):
        raise ValueError(f"{len(profile_ids)} profiles but {len(patches)} score patches")
    t0 = time.perf_counter()
    spent = {"rows": 0.0, "events": 0.0}
    if not in_order:
        profile_ids, patches = in_key_order(profile_ids, patches)
    changes: Iterable[Any] = (
        _changing_hinted(gk_parts, ws, profile_ids, patches, owned, remove_others, WRITE_CHUNK, hint)
        if hint is not None else
        _changing(read_live_scores(gk_parts, ws), profile_ids, patches, owned, remove_others, WRITE_CHUNK))
    plans = dict(tags or {})
    if any(p.changes for p in plans.values()):
        changes = _with_tags(changes, plans, WRITE_CHUNK)
    else:
        plans = {}
    from goldkey.core.clock import utcnow

    at = utcnow()

    def run(ctx: Any, chunk: tuple[Any, ...]) -> tuple[int, dict[str, int]]:
        t = time.perf_counter()
        with ctx.engine.begin() as c:
            n = _apply_patches(c, ws, *chunk)
            if not plans:
                spent["rows"] += time.perf_counter() - t
                return n, {}
            ids = chunk[0]
            # who is live now (the statements skip the others): every profile when each row was written
            live = ids if n == len(ids) else [p for p in ids if p in _live_among(c, ws, ids)]
        t2 = time.perf_counter()
        pids, texts, counts = tag_change_events(plans, live, source)
        if pids:
            with ctx.analytical.transaction() as con:
                emit_event_columns(ctx.analytical, con, ws, pids, pa.repeat(pa.scalar("Tag Changed"), len(pids)),
                                   texts, "tags", at)
        spent["rows"] += t2 - t
        spent["events"] += time.perf_counter() - t2
        return n, counts

    # every chunk found first, then written one command on the writer thread at a time (event commits
    # go on in between). Not the next chunk found while the previous one is written: Python work on
    # this thread takes the GIL from the writer thread between every two rows it binds (1M profiles:
    # ~12 s written that way against ~9 s found, then written)
    chunks = list(changes)
    found = time.perf_counter() - t0
    written = 0
    per_tag = dict.fromkeys(plans, 0)
    changed: list[str] = []
    for chunk in chunks:
        n, counts = gk_parts.writer.run_command(lambda ctx, chunk=chunk: run(ctx, chunk))
        written += n
        for name, count in counts.items():
            per_tag[name] += count
        changed.extend(chunk[0])
    gk_parts.facts.touch(ws)
    realtime = getattr(gk_parts, "realtime", None)
    if realtime is not None and changed:
        realtime.notify(ws, changed)
    return ModelWrite(written, {**dict.fromkeys(tags or {}, 0), **per_tag},
                      {"find": int(found * 1000), **{k: int(v * 1000) for k, v in spent.items()}})


def write_profile_insights(gk_parts: Any, ws: str, model: str, version: int,
                           payloads: Mapping[str, Mapping[str, Any]]) -> int:
    """Replace model ``model``'s per-profile details (reasons, recommended items, ...) with
    ``payloads`` (profile id -> JSON-able dict): :func:`write_profile_insight_texts` of their JSON."""
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return write_profile_insight_texts(gk_parts, ws, model, version, list(payloads),
                                       [dumps(d, option=opt).decode() for d in payloads.values()])


def write_profile_insight_texts(gk_parts: Any, ws: str, model: str, version: int, profile_ids: Sequence[str],
                                texts: Sequence[str]) -> int:
    """Replace model ``model``'s per-profile details with ``texts`` (the JSON object of each
    profile of ``profile_ids``), on the writer thread. The 360° profile shows them under
    ``insights.<model>``. Returns the number of profiles the model now holds details for.

    Only what changed is written: one upsert per profile (``INSERT ... ON CONFLICT DO UPDATE ...
    WHERE`` the version or the text differs; ``updated_at`` is when a profile's details last
    changed), ``WRITE_CHUNK`` profiles per writer command so that event commits go on in between;
    then the rows of profiles absent from ``profile_ids`` are deleted. While it runs, a reader may
    see some profiles at the new version and others at the previous one."""
    note_writeback(ws)  # the run's outputs start to land: a failure from here keeps its version
    from goldkey.core.clock import utcnow
    from goldkey.store.operational import profile_insights as t
    from goldkey.store.operational import timestamp_param

    if len(profile_ids) != len(texts):
        raise ValueError(f"{len(profile_ids)} profiles but {len(texts)} payloads")
    ids, payloads = in_key_order(profile_ids, texts)
    now = utcnow()
    with gk_parts.writer.engine.connect() as c:
        ph = "?" if c.dialect.name == "sqlite" else "%s"
        cur = c.connection.cursor()
        try:
            cur.execute(f"SELECT profile_id FROM profile_insights WHERE workspace_id = {ph} AND model = {ph}",
                        (ws, model))
            old = [r[0] for r in cur.fetchall()]
        finally:
            cur.close()
    keep = set(ids)
    gone = [p for p in old if p not in keep]
    update = ("DO UPDATE SET version = excluded.version, payload = excluded.payload, updated_at = CASE WHEN "
              "profile_insights.payload = excluded.payload THEN profile_insights.updated_at ELSE excluded.updated_at "
              "END WHERE profile_insights.version <> excluded.version OR profile_insights.payload <> excluded.payload")

    def upsert(ctx: Any, lo: int) -> None:
        with ctx.engine.begin() as c:
            sqlite = c.dialect.name == "sqlite"
            at = timestamp_param(c, now)
            chunk_ids, chunk_texts = ids[lo : lo + WRITE_CHUNK], payloads[lo : lo + WRITE_CHUNK]
            cur = c.connection.cursor()
            try:
                if sqlite:
                    cur.executemany(
                        "INSERT INTO profile_insights (workspace_id, profile_id, model, version, payload, updated_at) "
                        f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace_id, profile_id, model) {update}",
                        [(ws, p, model, version, x, at) for p, x in zip(chunk_ids, chunk_texts, strict=True)])
                else:
                    cur.execute(
                        "INSERT INTO profile_insights (workspace_id, profile_id, model, version, payload, updated_at) "
                        "SELECT %s, u.id, %s, %s, u.payload, %s FROM unnest(%s::text[], %s::text[]) AS u(id, payload) "
                        f"ON CONFLICT (workspace_id, profile_id, model) {update}",
                        (ws, model, version, at, chunk_ids, chunk_texts))
            finally:
                cur.close()

    def delete(ctx: Any, chunk: list[str]) -> None:
        with ctx.engine.begin() as c:
            c.execute(t.delete().where(t.c.workspace_id == ws, t.c.model == model, t.c.profile_id.in_(chunk)))

    for i in range(0, len(ids), WRITE_CHUNK):
        gk_parts.writer.run_command(lambda ctx, lo=i: upsert(ctx, lo))
    for i in range(0, len(gone), CHUNK):
        gk_parts.writer.run_command(lambda ctx, chunk=gone[i : i + CHUNK]: delete(ctx, chunk))
    return len(ids)


def read_profile_insights(engine: sa.Engine, ws: str, profile_id: str) -> dict[str, Any]:
    """Every model's details for one profile: ``{model: {"version": N, **payload}}``."""
    from goldkey.store.operational import profile_insights as t

    with engine.connect() as c:
        rows = c.execute(sa.select(t.c.model, t.c.version, t.c.payload).where(
            t.c.workspace_id == ws, t.c.profile_id == profile_id)).all()
    return {m: {"version": v, **orjson.loads(p)} for m, v, p in rows}


REASONS_CHUNK = 250_000


def write_profile_reasons(analytical: Any, ws: str, model: str, version: int, profile_ids: Sequence[str] | pa.Array,
                          payloads: Sequence[str] | pa.Array | pl.Series) -> int:
    """Replace model ``model``'s per-profile reasons in the analytical store with ``payloads``
    (the JSON object of each profile of ``profile_ids``, e.g. ``{"score": 0.42, "reasons": [...]}``)
    and return how many profiles it now holds reasons for.

    The rows go in profile-id order (so a profile's lookup skips all row groups but one), in
    transactions of ``REASONS_CHUNK`` rows under the store's write lock (event commits go on in
    between); then the model's rows of older versions are deleted (a newer run that overlapped
    this one keeps its rows; this run's rows it could not delete are older than its own, left to
    the next run). While it runs a profile may have rows of two versions: readers take the newest
    (:func:`read_profile_reasons`).

    No index on ``profile_id``: DuckDB's ART index made one profile's read 1 ms instead of 3-4 ms
    (zone maps over the sorted rows), but deleting a million rows of the previous version through it
    took 29 s at 1M."""
    note_writeback(ws)  # the run's outputs start to land: a failure from here keeps its version
    ids = profile_ids if isinstance(profile_ids, pa.Array) else pa.array(profile_ids, pa.string())
    texts = (payloads.to_arrow() if isinstance(payloads, pl.Series) else
             payloads if isinstance(payloads, pa.Array) else pa.array(payloads, pa.string()))
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} profiles but {len(texts)} payloads")
    # the constant columns dictionary-encoded: one value and n zero indices, no copy of it per row
    zeros = pa.array(np.zeros(len(ids), dtype=np.int32))
    tbl = pa.table({"workspace_id": pa.DictionaryArray.from_arrays(zeros, pa.array([ws], pa.string())),
                    "model": pa.DictionaryArray.from_arrays(zeros, pa.array([model], pa.string())),
                    "version": pa.DictionaryArray.from_arrays(zeros, pa.array([int(version)], pa.int32())),
                    "profile_id": pc.cast(ids, pa.string()), "payload": pc.cast(texts, pa.string())})
    tbl = tbl.sort_by("profile_id")
    params = {"ws": ws, "model": model, "version": int(version)}
    with analytical.transaction() as con:  # a version written before (an interrupted run) starts over
        con.execute("DELETE FROM profile_reasons WHERE workspace_id = $ws AND model = $model AND version = $version",
                    params)
    for lo in range(0, tbl.num_rows, REASONS_CHUNK):
        with analytical.transaction() as con:
            analytical.append("profile_reasons", tbl.slice(lo, REASONS_CHUNK), con)
    with analytical.transaction() as con:  # older versions only: a newer run's rows are never touched
        con.execute("DELETE FROM profile_reasons WHERE workspace_id = $ws AND model = $model AND version < $version",
                    params)
    return tbl.num_rows


def read_profile_reasons(analytical: Any, ws: str, profile_id: str) -> dict[str, Any]:
    """Every model's reasons for one profile, the newest version of each:
    ``{model: {"version": N, **payload}}``."""
    cur = analytical.cursor()
    try:
        rows = cur.execute(
            "SELECT model, version, payload FROM profile_reasons WHERE profile_id = $pid AND workspace_id = $ws",
            {"ws": ws, "pid": profile_id}).fetchall()
    finally:
        cur.close()
    newest: dict[str, tuple[int, str]] = {}
    for m, v, p in rows:  # the newest version picked here: cheaper than a GROUP BY in DuckDB
        if m not in newest or v > newest[m][0]:
            newest[m] = (v, p)
    return {m: {"version": v, **orjson.loads(p)} for m, (v, p) in sorted(newest.items())}
