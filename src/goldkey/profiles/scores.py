"""A profile's model scores: the narrow ``profile_scores`` table.

Scores (``{"churn_risk": 0.42, "rfm_r": 5.0, ...}``, the ``scores.*`` fields) live in a row of their
own per profile, not in the wide profile row, so that a model run rewrites small rows only (the
bulk write of a model run is :func:`goldkey.insight.writeback.write_score_patches`). A profile
without a row has no scores; a row whose scores were all removed stays, holding ``{}`` (rows are
never deleted: a bulk write updates in place the rows its read found). Readers join the
table to ``profiles`` by ``(workspace_id, profile_id)`` (:func:`with_scores`); this module also holds
the point reads and writes of the identity graph's merge and undo. The same row holds the
profile's model tags (``model_tags``, see :mod:`goldkey.audience.tags`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import utcnow
from goldkey.store.operational import profile_scores, profiles
from goldkey.store.upsert import upsert

_S = profile_scores.c


def with_scores(base: sa.FromClause = profiles) -> sa.Join:
    """``base`` (``profiles`` or an alias of it) LEFT JOIN ``profile_scores``: select
    ``profile_scores.c.scores`` from it (NULL: no scores)."""
    return base.outerjoin(profile_scores, sa.and_(_S.workspace_id == base.c.workspace_id,
                                                  _S.profile_id == base.c.profile_id))


def merged_tags(tags: Any, model_tags: Any) -> dict[str, Any]:
    """A profile's tags as readers see them: its rule and manual tags (``profiles.tags``) with its
    model tags (``profile_scores.model_tags``), each a JSON text, a dict or None."""
    loads = orjson.loads
    mine = loads(tags) if isinstance(tags, str | bytes) else dict(tags or {})
    if model_tags and model_tags != "{}":
        mine.update(loads(model_tags) if isinstance(model_tags, str | bytes) else model_tags)
    return mine


def read_scores(conn: sa.Connection, ws: str, profile_ids: Sequence[str], *, with_model_tags: bool = False
                ) -> dict[str, Any]:
    """``{profile_id: scores}`` of the profiles among ``profile_ids`` that have a row (merged-away
    profiles included: their rows keep what they held before the merge); ``with_model_tags``:
    ``{profile_id: (scores, model tags)}``."""
    out: dict[str, Any] = {}
    ids = list(profile_ids)
    loads = orjson.loads
    for i in range(0, len(ids), 500):
        for pid, raw, tags in conn.execute(sa.select(_S.profile_id, _S.scores, _S.model_tags).where(
                _S.workspace_id == ws, _S.profile_id.in_(ids[i : i + 500]))):
            out[pid] = (loads(raw), loads(tags)) if with_model_tags else loads(raw)
    return out


def set_scores(conn: sa.Connection, ws: str, profile_id: str, scores: Mapping[str, Any] | str,
               at: datetime | None = None, *, model_tags: Mapping[str, Any] | str | None = None) -> None:
    """Replace a profile's scores (a mapping or its JSON text) inside the caller's transaction, and
    its model tags when ``model_tags`` is given. Empty values empty an existing row (``{}``) and
    create none: rows are never deleted, so that a model's bulk write can update in place the rows
    it found (see :mod:`goldkey.insight.writeback`)."""
    doc = orjson.loads(scores) if isinstance(scores, str | bytes) else dict(scores)
    tags = None if model_tags is None else (
        orjson.loads(model_tags) if isinstance(model_tags, str | bytes) else dict(model_tags))
    when = at or utcnow()
    if not doc and not tags:
        values: dict[str, Any] = {"scores": "{}", "updated_at": when}
        if tags is not None:
            values["model_tags"] = "{}"
        changed = _S.scores != "{}" if tags is None else sa.or_(_S.scores != "{}", _S.model_tags != "{}")
        conn.execute(profile_scores.update().where(_S.workspace_id == ws, _S.profile_id == profile_id, changed)
                     .values(**values))
        return
    row: dict[str, Any] = {"workspace_id": ws, "profile_id": profile_id, "scores": orjson.dumps(doc).decode(),
                           "updated_at": when}
    if tags is not None:
        row["model_tags"] = orjson.dumps(tags).decode()
    upsert(conn, profile_scores, [row], keys=["workspace_id", "profile_id"])
