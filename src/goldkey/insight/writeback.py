"""Write a model's scores back to the operational profile rows.

Every insight model (RFM, CLV, churn, lifecycle, ...) ends the same way: a set of numbers per
profile under ``scores.<field>``, stamped with the model version, written on the writer thread (the
single writer of the operational store), removed from live profiles the model no longer scores,
then the analytical facts marked stale and the real-time segments told which profiles changed.
:func:`write_scores` is that one path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from goldkey.audience.catalog import declare_field
from goldkey.audience.tags import WRITE_CHUNK, read_json_rows, update_json_rows

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
    Goldkey runtime or a service).

    How (fast at 1M profiles): the live profiles' ``scores`` are read once off the writer thread
    (raw DBAPI cursor) and merged in memory to find the rows that would change; only those are
    written, ``WRITE_CHUNK`` per writer command (so event commits go on in between): each command
    re-reads its rows, merges again (a concurrent change is never lost) and writes the changed ones
    in one batch (:func:`goldkey.audience.tags.update_json_rows`)."""
    owned = tuple(owned)
    with gk_parts.writer.engine.connect() as c:
        rows = read_json_rows(c, ws, "scores")
    candidates = [pid for pid, upd in _merged(rows, values, owned, remove_others) if upd is not None]

    def run(ctx: Any, chunk: list[str]) -> list[str]:
        with ctx.engine.begin() as c:
            cur = read_json_rows(c, ws, "scores", ids=chunk)
            updates = [(upd, pid) for pid, upd in _merged(cur, values, owned, remove_others) if upd is not None]
            update_json_rows(c, "scores", updates)
        return [pid for _, pid in updates]

    changed: list[str] = []
    for i in range(0, len(candidates), WRITE_CHUNK):
        changed += gk_parts.writer.run_command(lambda ctx, chunk=candidates[i : i + WRITE_CHUNK]: run(ctx, chunk))
    gk_parts.facts.touch(ws)
    realtime = getattr(gk_parts, "realtime", None)
    if realtime is not None and changed:
        realtime.notify(ws, changed)
    return len(changed)


def write_score_table(gk_parts: Any, ws: str, owned: Iterable[str], tbl: pa.Table,
                      constants: Mapping[str, float] | None = None, *, remove_others: bool = True) -> int:
    """:func:`write_scores` from a columnar result: ``tbl`` has ``profile_id`` and one column per
    score field (nulls remove the field); ``constants`` (e.g. the model version) go to every row."""
    fields = [c for c in tbl.column_names if c != "profile_id"]
    cols = [tbl.column(c).to_pylist() for c in fields]
    extra = tuple((constants or {}).items())
    values = {pid: dict((*zip(fields, vals, strict=True), *extra))
              for pid, *vals in zip(tbl.column("profile_id").to_pylist(), *cols, strict=True)}
    return write_scores(gk_parts, ws, owned, values, remove_others=remove_others)


def _merged(rows: Iterable[tuple[str, str]], values: Mapping[str, Mapping[str, float | None]], owned: tuple[str, ...],
            remove_others: bool) -> Iterator[tuple[str, str | None]]:
    """For each ``(profile_id, scores JSON)``: the new JSON text, or None when nothing changes."""
    loads, dumps = orjson.loads, orjson.dumps
    get = values.get
    for pid, raw in rows:
        s = get(pid)
        if s is None and not remove_others:
            continue
        cur = loads(raw) if raw else {}
        changed = False
        if s is None:
            for k in owned:
                if k in cur:
                    del cur[k]
                    changed = True
        else:
            for k, v in s.items():
                if v is None:
                    if k in cur:
                        del cur[k]
                        changed = True
                else:
                    v = float(v)
                    if not changed and (k not in cur or cur[k] != v):
                        changed = True
                    cur[k] = v
        yield pid, (dumps(cur).decode() if changed else None)


def write_profile_insights(gk_parts: Any, ws: str, model: str, version: int,
                           payloads: Mapping[str, Mapping[str, Any]]) -> int:
    """Replace model ``model``'s per-profile details (reasons, recommended items, ...) with
    ``payloads`` (profile id -> JSON-able dict), on the writer thread, in one transaction. The 360°
    profile shows them under ``insights.<model>``. Returns the number of profiles the model now
    holds details for (``len(payloads)``).

    Only what changed is written (at 1M profiles, deleting and re-inserting every row held the
    writer for tens of seconds): rows of profiles absent from ``payloads`` are deleted, the version
    is set on the model's rows in one statement, and only profiles whose payload text differs are
    inserted or updated (``updated_at`` is when a profile's details last changed)."""
    from goldkey.core.clock import utcnow
    from goldkey.store.operational import profile_insights as t

    now = utcnow()
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    texts = {p: dumps(d, option=opt).decode() for p, d in payloads.items()}

    def run(ctx: Any) -> int:
        with ctx.engine.begin() as c:
            old = dict(c.execute(sa.select(t.c.profile_id, t.c.payload).where(
                t.c.workspace_id == ws, t.c.model == model)).all())
            gone = [p for p in old if p not in texts]
            for i in range(0, len(gone), CHUNK):
                c.execute(t.delete().where(t.c.workspace_id == ws, t.c.model == model,
                                           t.c.profile_id.in_(gone[i : i + CHUNK])))
            c.execute(t.update().where(t.c.workspace_id == ws, t.c.model == model, t.c.version != version)
                      .values(version=version))
            fresh = [{"workspace_id": ws, "profile_id": p, "model": model, "version": version, "payload": x,
                      "updated_at": now} for p, x in texts.items() if p not in old]
            changed = [{"k_profile_id": p, "payload": x, "updated_at": now}
                       for p, x in texts.items() if p in old and old[p] != x]
            for i in range(0, len(fresh), CHUNK):
                c.execute(t.insert(), fresh[i : i + CHUNK])
            upd = (t.update().where(t.c.workspace_id == ws, t.c.model == model,
                                    t.c.profile_id == sa.bindparam("k_profile_id"))
                   .values(payload=sa.bindparam("payload"), updated_at=sa.bindparam("updated_at")))
            for i in range(0, len(changed), CHUNK):
                c.execute(upd, changed[i : i + CHUNK])
        return len(texts)

    return int(gk_parts.writer.run_command(run))


def read_profile_insights(engine: sa.Engine, ws: str, profile_id: str) -> dict[str, Any]:
    """Every model's details for one profile: ``{model: {"version": N, **payload}}``."""
    from goldkey.store.operational import profile_insights as t

    with engine.connect() as c:
        rows = c.execute(sa.select(t.c.model, t.c.version, t.c.payload).where(
            t.c.workspace_id == ws, t.c.profile_id == profile_id)).all()
    return {m: {"version": v, **orjson.loads(p)} for m, v, p in rows}
