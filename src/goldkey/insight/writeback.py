"""Write a model's scores back to the operational profile rows.

Every insight model (RFM, CLV, churn, lifecycle, ...) ends the same way: a set of numbers per
profile under ``scores.<field>``, stamped with the model version, written on the writer thread (the
single writer of the operational store), removed from live profiles the model no longer scores,
then the analytical facts marked stale and the real-time segments told which profiles changed.
:func:`write_scores` is that one path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.audience.catalog import declare_field
from goldkey.store.operational import profiles

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

    ``values`` maps a live profile id to ``{field: number}``; ``owned`` names every field the model
    writes: on profiles absent from ``values`` (when ``remove_others``) those fields are removed, so
    a profile no longer scored does not keep a stale score. ``gk_parts`` is anything with
    ``writer``, ``facts`` and optionally ``realtime`` attributes (the Goldkey runtime or a service).
    """
    owned = tuple(owned)
    new = {p: {k: (None if v is None else float(v)) for k, v in d.items()} for p, d in values.items()}

    def run(ctx: Any) -> list[str]:
        changed: list[str] = []
        updates: list[dict[str, str]] = []
        with ctx.engine.begin() as c:
            q = sa.select(profiles.c.profile_id, profiles.c.scores).where(
                profiles.c.workspace_id == ws, profiles.c.merged_into.is_(None))
            for pid, raw in c.execute(q):
                s = new.get(pid)
                if s is None and not remove_others:
                    continue
                cur = orjson.loads(raw) if raw else {}
                before = dict(cur)
                if s is None:
                    for k in owned:
                        cur.pop(k, None)
                else:
                    for k, v in s.items():
                        if v is None:
                            cur.pop(k, None)
                        else:
                            cur[k] = v
                if cur != before:
                    updates.append({"pid": pid, "scores": orjson.dumps(cur).decode()})
                    changed.append(pid)
            stmt = (profiles.update().where(profiles.c.profile_id == sa.bindparam("pid"))
                    .values(scores=sa.bindparam("scores")))
            for i in range(0, len(updates), CHUNK):
                c.execute(stmt, updates[i : i + CHUNK])
        return changed

    changed = gk_parts.writer.run_command(run)
    gk_parts.facts.touch(ws)
    realtime = getattr(gk_parts, "realtime", None)
    if realtime is not None and changed:
        realtime.notify(ws, changed)
    return len(changed)


def write_profile_insights(gk_parts: Any, ws: str, model: str, version: int,
                           payloads: Mapping[str, Mapping[str, Any]]) -> int:
    """Replace model ``model``'s per-profile details (reasons, recommended items, ...) with
    ``payloads`` (profile id -> JSON-able dict), on the writer thread. The 360° profile shows them
    under ``insights.<model>``. Returns the number of rows written."""
    from goldkey.core.clock import utcnow
    from goldkey.store.operational import profile_insights

    now = utcnow()
    rows = [{"workspace_id": ws, "profile_id": p, "model": model, "version": version,
             "payload": orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY).decode(), "updated_at": now}
            for p, d in payloads.items()]

    def run(ctx: Any) -> int:
        with ctx.engine.begin() as c:
            c.execute(profile_insights.delete().where(profile_insights.c.workspace_id == ws,
                                                      profile_insights.c.model == model))
            for i in range(0, len(rows), CHUNK):
                c.execute(profile_insights.insert(), rows[i : i + CHUNK])
        return len(rows)

    return int(gk_parts.writer.run_command(run))


def read_profile_insights(engine: sa.Engine, ws: str, profile_id: str) -> dict[str, Any]:
    """Every model's details for one profile: ``{model: {"version": N, **payload}}``."""
    from goldkey.store.operational import profile_insights as t

    with engine.connect() as c:
        rows = c.execute(sa.select(t.c.model, t.c.version, t.c.payload).where(
            t.c.workspace_id == ws, t.c.profile_id == profile_id)).all()
    return {m: {"version": v, **orjson.loads(p)} for m, v, p in rows}
