"""Segments: versioned rule definitions, live estimates with explanations, materialised membership
with size history, overlaps, exports, and real-time membership.

Membership lives in the operational store (``segment_members``), so that "is this profile in the
segment" and paging through members are point reads. ``compute`` materialises a version through
the batch compiler and records a snapshot (size, entered, exited); the real-time worker
(``goldkey.audience.realtime``) keeps members current between computes with the in-memory
evaluator. Every change of membership is also an event (``segment_entered`` /
``segment_exited``) in the profile's event log, so triggers and rules can use it.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from goldkey.audience.catalog import load_catalog
from goldkey.audience.common import (
    batch_member_ids,
    emit_events,
    load_events,
    load_profile_values,
    parse_and_check,
)
from goldkey.audience.facts import FactsCache
from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound
from goldkey.core.ids import new_id
from goldkey.govern import audit
from goldkey.govern.consent import latest_decision
from goldkey.rules.memory import compile_rule
from goldkey.rules.model import parse_rule, rule_to_json
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import (
    identities,
    profiles,
    segment_members,
    segment_snapshots,
    segment_versions,
    segments,
)

S = segments.c
M = segment_members.c


def _seg_dict(r: Any, rule: Any = None) -> dict[str, Any]:
    out = {
        "segment_id": r.segment_id,
        "name": r.name,
        "description": r.description,
        "version": r.version,
        "realtime": bool(r.realtime),
        "size": r.size,
        "computed_at": to_iso(r.computed_at),
        "created_at": to_iso(r.created_at),
        "updated_at": to_iso(r.updated_at),
    }
    if rule is not None:
        out["rule"] = rule
    return out


def mask_phone(phone: str | None) -> str | None:
    """``+8613912345678`` -> ``+86139****5678`` (keeps country code, first three and last four)."""
    if not phone:
        return phone
    if len(phone) <= 7:
        return "*" * len(phone)
    head = 6 if phone.startswith("+86") else 3 + (1 if phone.startswith("+") else 0)
    return phone[:head] + "*" * (len(phone) - head - 4) + phone[-4:]


class SegmentService:
    """Create, version, estimate, compute and read segments of a workspace."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, writer: Any, facts: FactsCache) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.facts = facts
        self._compiled: dict[tuple[str, str, int], Any] = {}

    # -- definitions ------------------------------------------------------------------------
    def create(self, ws: str, name: str, rule: Any, *, description: str = "", realtime: bool = True,
               actor: str = "api") -> dict[str, Any]:
        """Save a new segment (version 1). The rule is checked first; nothing is saved if it fails."""
        name = _check_name(name)
        parsed = parse_and_check(self.engine, self.analytical, ws, rule)
        now = utcnow()
        sid = new_id("seg")
        rule_json = orjson.dumps(rule_to_json(parsed)).decode()
        with self.engine.begin() as c:
            if c.execute(sa.select(S.segment_id).where(S.workspace_id == ws, S.name == name)).first():
                raise Conflict(f"a segment named {name!r} already exists")
            c.execute(segments.insert().values(workspace_id=ws, segment_id=sid, name=name, description=description,
                                               version=1, realtime=realtime, created_at=now, updated_at=now))
            c.execute(segment_versions.insert().values(workspace_id=ws, segment_id=sid, version=1, rule=rule_json,
                                                       created_by=actor, created_at=now))
            _audit(c, ws, actor, "segment.create", sid, {"name": name})
        return self.get(ws, sid)

    def update(self, ws: str, sid: str, *, name: str | None = None, rule: Any = None,
               description: str | None = None, realtime: bool | None = None, actor: str = "api") -> dict[str, Any]:
        """Change a segment; a new rule becomes a new version (old versions are kept)."""
        cur = self._row(ws, sid)
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = _check_name(name)
        if description is not None:
            values["description"] = description
        if realtime is not None:
            values["realtime"] = realtime
        new_rule = None
        if rule is not None:
            parsed = parse_and_check(self.engine, self.analytical, ws, rule)
            new_rule = orjson.dumps(rule_to_json(parsed)).decode()
            old = self._rule_json(ws, sid, cur.version)
            if new_rule != old:
                values["version"] = cur.version + 1
        with self.engine.begin() as c:
            if "name" in values and c.execute(sa.select(S.segment_id).where(
                    S.workspace_id == ws, S.name == values["name"], S.segment_id != sid)).first():
                raise Conflict(f"a segment named {values['name']!r} already exists")
            c.execute(segments.update().where(S.workspace_id == ws, S.segment_id == sid).values(**values))
            if "version" in values:
                c.execute(segment_versions.insert().values(
                    workspace_id=ws, segment_id=sid, version=values["version"], rule=new_rule, created_by=actor,
                    created_at=values["updated_at"]))
            _audit(c, ws, actor, "segment.update", sid, {k: v for k, v in values.items() if k != "updated_at"})
        return self.get(ws, sid)

    def delete(self, ws: str, sid: str, actor: str = "api") -> None:
        """Delete a segment (its versions and snapshots stay for the audit trail; members go)."""
        cur = self._row(ws, sid)
        now = utcnow()

        def run(ctx: Any) -> None:  # on the writer thread, so no compute or real-time round interleaves
            with self.engine.begin() as c:
                # the name is freed for a new segment
                c.execute(segments.update().where(S.workspace_id == ws, S.segment_id == sid).values(
                    deleted_at=now, name=f"{cur.name[:150]} (deleted {sid})"))
                c.execute(segment_members.delete().where(M.workspace_id == ws, M.segment_id == sid))
                _audit(c, ws, actor, "segment.delete", sid, {})

        self.writer.run_command(run)

    def get(self, ws: str, sid: str) -> dict[str, Any]:
        r = self._row(ws, sid)
        return _seg_dict(r, orjson.loads(self._rule_json(ws, sid, r.version)))

    def list(self, ws: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(segments).where(S.workspace_id == ws, S.deleted_at.is_(None))
                             .order_by(S.created_at)).all()
        return [_seg_dict(r) for r in rows]

    def versions(self, ws: str, sid: str) -> list[dict[str, Any]]:
        self._row(ws, sid)
        v = segment_versions.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(segment_versions).where(v.workspace_id == ws, v.segment_id == sid)
                             .order_by(v.version)).all()
        return [{"version": r.version, "rule": orjson.loads(r.rule), "created_by": r.created_by,
                 "created_at": to_iso(r.created_at)} for r in rows]

    def history(self, ws: str, sid: str, limit: int = 200) -> list[dict[str, Any]]:
        """Size over time: one entry per materialisation, newest last."""
        self._row(ws, sid)
        s = segment_snapshots.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(segment_snapshots).where(s.workspace_id == ws, s.segment_id == sid)
                             .order_by(s.snapshot_id.desc()).limit(limit)).all()
        return [{"version": r.version, "size": r.size, "entered": r.entered, "exited": r.exited,
                 "as_of": to_iso(r.as_of), "took_ms": r.took_ms, "created_at": to_iso(r.created_at)}
                for r in reversed(rows)]

    def _row(self, ws: str, sid: str) -> Any:
        with self.engine.connect() as c:
            r = c.execute(sa.select(segments).where(S.workspace_id == ws, S.segment_id == sid,
                                                    S.deleted_at.is_(None))).first()
        if r is None:
            raise NotFound(f"segment {sid!r} not found")
        return r

    def _rule_json(self, ws: str, sid: str, version: int) -> str:
        v = segment_versions.c
        with self.engine.connect() as c:
            return c.execute(sa.select(v.rule).where(v.workspace_id == ws, v.segment_id == sid,
                                                     v.version == version)).scalar_one()

    def rule_of(self, ws: str, sid: str) -> tuple[int, Any]:
        r = self._row(ws, sid)
        return r.version, parse_rule(orjson.loads(self._rule_json(ws, sid, r.version)))

    # -- estimate and explain -----------------------------------------------------------------
    def estimate(self, ws: str, rule: Any, *, as_of: datetime | None = None, sample: int = 3,
                 explain_profiles: list[str] | None = None) -> dict[str, Any]:
        """How many profiles a (draft) rule selects now, with explained examples: a few members, and
        any profiles asked about (``explain_profiles``), each with the clause-by-clause reasons."""
        t0 = time.perf_counter()
        parsed = parse_and_check(self.engine, self.analytical, ws, rule)
        t = as_of_utc(as_of)
        ids = batch_member_ids(self.facts, self.analytical, ws, parsed, t, fresh=False)
        size = ids.num_rows
        info = self.facts.current(ws)
        examples = sorted(ids.column("profile_id").to_pylist()[: max(sample, 0) * 20])[:sample]
        asked = list(dict.fromkeys((explain_profiles or []) + examples))
        return {
            "size": size,
            "total_profiles": info.profiles if info else None,
            "as_of": to_iso(t),
            "took_ms": round((time.perf_counter() - t0) * 1000, 1),
            "examples": examples,
            "explanations": self.explain(ws, parsed, asked, as_of=t) if asked else [],
        }

    def explain(self, ws: str, rule: Any, profile_ids: list[str], *, as_of: datetime | None = None
                ) -> list[dict[str, Any]]:
        """Why each profile is (not) selected by ``rule``: the in-memory evaluator over the profile's
        stored values and its whole event history."""
        t = as_of_utc(as_of)
        catalog = load_catalog(self.engine, ws)
        compiled = compile_rule(rule, catalog)
        values = load_profile_values(self.engine, ws, profile_ids)
        events = load_events(self.analytical, ws, list(values))
        out = []
        for pid in profile_ids:
            if pid not in values:
                out.append({"profile_id": pid, "error": "no live profile with this id in the workspace"})
                continue
            out.append({"profile_id": pid, **compiled.explain(values[pid], events.get(pid, []), t)})
        return out

    # -- materialise --------------------------------------------------------------------------
    def compute(self, ws: str, sid: str, *, as_of: datetime | None = None) -> dict[str, Any]:
        """Materialise the current version: replace the membership, emit entered/exited events,
        record a snapshot. Returns the snapshot."""
        t0 = time.perf_counter()
        version, rule = self.rule_of(ws, sid)
        t = as_of_utc(as_of)
        ids = batch_member_ids(self.facts, self.analytical, ws, rule, t, fresh=True)
        new = set(ids.column("profile_id").to_pylist())
        took = int((time.perf_counter() - t0) * 1000)
        snapshot = {"version": version, "took_ms": took, "as_of": t}
        entered, exited = self.writer.run_command(
            lambda ctx: self._apply(ctx, ws, sid, new, t, full=True, snapshot=snapshot))
        return {"segment_id": sid, "version": version, "size": len(new), "entered": entered, "exited": exited,
                "as_of": to_iso(t), "took_ms": took}

    def compute_all(self, ws: str) -> list[dict[str, Any]]:
        return [self.compute(ws, s["segment_id"]) for s in self.list(ws)]

    def _apply(self, ctx: Any, ws: str, sid: str, members: set[str], at: datetime, *, full: bool,
               scope: set[str] | None = None, snapshot: dict[str, Any] | None = None) -> tuple[int, int]:
        """On the writer thread: make the stored membership of ``sid`` equal ``members`` (within
        ``scope`` profiles when not ``full``), keep the size, record the snapshot of a full compute,
        and emit the change events. A deleted segment is left alone. Returns (entered, exited)."""
        with self.engine.begin() as c:
            if c.execute(sa.select(S.segment_id).where(S.workspace_id == ws, S.segment_id == sid,
                                                       S.deleted_at.is_(None))).first() is None:
                return 0, 0
            q = sa.select(M.profile_id).where(M.workspace_id == ws, M.segment_id == sid)
            if full:
                current = set(c.execute(q).scalars())
            else:
                current = set()
                ids = list(scope or ())
                for i in range(0, len(ids), 500):
                    current |= set(c.execute(q.where(M.profile_id.in_(ids[i : i + 500]))).scalars())
                members = members & (scope or set())
            entered = sorted(members - current)
            exited = sorted(current - members)
            if entered:
                c.execute(segment_members.insert(), [
                    {"workspace_id": ws, "segment_id": sid, "profile_id": p, "entered_at": at} for p in entered])
            for i in range(0, len(exited), 500):
                c.execute(segment_members.delete().where(
                    M.workspace_id == ws, M.segment_id == sid, M.profile_id.in_(exited[i : i + 500])))
            if full:
                now = utcnow()
                c.execute(segments.update().where(S.workspace_id == ws, S.segment_id == sid).values(
                    size=len(members), computed_at=now))
                if snapshot is not None:
                    c.execute(segment_snapshots.insert().values(
                        workspace_id=ws, segment_id=sid, version=snapshot["version"], size=len(members),
                        entered=len(entered), exited=len(exited), as_of=snapshot["as_of"],
                        took_ms=snapshot["took_ms"], created_at=now))
            elif entered or exited:
                c.execute(segments.update().where(S.workspace_id == ws, S.segment_id == sid).values(
                    size=sa.func.coalesce(S.size, 0) + len(entered) - len(exited)))
            rows = [(p, "segment_entered", {"segment_id": sid}) for p in entered]
            rows += [(p, "segment_exited", {"segment_id": sid}) for p in exited]
            if rows:
                with ctx.analytical.transaction() as con:
                    emit_events(ctx.analytical, con, ws, rows, "segments", at)
        return len(entered), len(exited)

    # -- reading members ----------------------------------------------------------------------
    def members(self, ws: str, sid: str, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """A page of members with a few display fields, in a stable order (profile id)."""
        self._row(ws, sid)
        limit = max(1, min(limit, 1000))
        with self.engine.connect() as c:
            total = c.execute(sa.select(sa.func.count()).select_from(
                segment_members.join(profiles, profiles.c.profile_id == M.profile_id)).where(
                M.workspace_id == ws, M.segment_id == sid, profiles.c.merged_into.is_(None))).scalar_one()
            rows = c.execute(
                sa.select(M.profile_id, M.entered_at, profiles.c.attributes)
                .join(profiles, profiles.c.profile_id == M.profile_id)
                .where(M.workspace_id == ws, M.segment_id == sid, profiles.c.merged_into.is_(None))
                .order_by(M.profile_id).limit(limit).offset(offset)
            ).all()
        items = []
        for r in rows:
            a = orjson.loads(r.attributes)
            items.append({"profile_id": r.profile_id, "entered_at": to_iso(r.entered_at),
                          "name": a.get("name"), "email": a.get("email"), "phone": mask_phone(a.get("phone"))})
        return {"total": total, "limit": limit, "offset": offset, "items": items}

    def is_member(self, ws: str, sid: str, pid: str) -> bool:
        with self.engine.connect() as c:
            return c.execute(sa.select(M.profile_id).where(M.workspace_id == ws, M.segment_id == sid,
                                                           M.profile_id == pid)).first() is not None

    def overlap(self, ws: str, sids: list[str]) -> dict[str, Any]:
        """Sizes and pairwise intersections of materialised segments."""
        if not 2 <= len(sids) <= 10:
            raise InvalidInput("give 2 to 10 segment ids", field="segment_ids")
        for sid in sids:
            self._row(ws, sid)
        a, b = segment_members.alias("a"), segment_members.alias("b")
        with self.engine.connect() as c:
            sizes = dict(c.execute(sa.select(M.segment_id, sa.func.count()).where(
                M.workspace_id == ws, M.segment_id.in_(sids)).group_by(M.segment_id)).all())
            pairs = []
            for i, x in enumerate(sids):
                for y in sids[i + 1:]:
                    n = c.execute(sa.select(sa.func.count()).select_from(a.join(
                        b, sa.and_(b.c.workspace_id == a.c.workspace_id, b.c.profile_id == a.c.profile_id)))
                        .where(a.c.workspace_id == ws, a.c.segment_id == x, b.c.segment_id == y)).scalar_one()
                    pairs.append({"a": x, "b": y, "both": n, "only_a": sizes.get(x, 0) - n,
                                  "only_b": sizes.get(y, 0) - n})
        return {"sizes": {s: sizes.get(s, 0) for s in sids}, "pairs": pairs}

    def export_rows(self, ws: str, sid: str, *, kind: str = "csv", mask: bool = True) -> list[list[Any]]:
        """Rows of an export, header first. ``csv``: every member with name, phone, e-mail.
        ``call_list``: only members who may be called for marketing and have a phone: their latest
        ``call`` decision, across every profile merged into them, is granted and no suppression on
        ``call`` or ``*`` stands (a do-not-call entry, a complaint): the send guardrails' own check
        (:meth:`goldkey.activate.guardrails.Guardrails.recheck`), which the call-list channel applies
        too. The phone shown in full or masked (``mask``). Read in one go, so a download holds no
        connection."""
        if kind not in ("csv", "call_list"):
            raise InvalidInput("export kind must be csv or call_list", field="kind")
        self._row(ws, sid)
        show = mask_phone if mask else (lambda p: p)
        ph = identities.alias("ph")
        call_list = kind == "call_list"
        consent = (latest_decision("call", "marketing", M.profile_id) if call_list else sa.null()).label("consent")
        q = (sa.select(M.profile_id, profiles.c.attributes, ph.c.id_value.label("phone"), consent)
             .join(profiles, profiles.c.profile_id == M.profile_id)
             .outerjoin(ph, sa.and_(ph.c.workspace_id == ws, ph.c.profile_id == M.profile_id, ph.c.id_type == "phone"))
             .where(M.workspace_id == ws, M.segment_id == sid, profiles.c.merged_into.is_(None))
             .order_by(M.profile_id, ph.c.id_value))
        with self.engine.connect() as c:
            found = c.execute(q).all()
        stopped: dict[str, str] = {}
        if call_list:
            from goldkey.activate.guardrails import Guardrails

            callable_ = list(dict.fromkeys(r.profile_id for r in found if r.consent == "granted" and r.phone))
            stopped = Guardrails(self.engine).recheck(ws, "call", "marketing", callable_)
        out: list[list[Any]] = [["profile_id", "name", "phone", "city", "member_tier"] if kind == "call_list"
                                else ["profile_id", "name", "phone", "email", "city"]]
        seen: set[str] = set()
        for r in found:
            if r.profile_id in seen:  # several phones: the first one
                continue
            seen.add(r.profile_id)
            a = orjson.loads(r.attributes)
            if call_list:
                if r.consent != "granted" or not r.phone or r.profile_id in stopped:
                    continue
                out.append([r.profile_id, a.get("name"), show(r.phone), a.get("city"), a.get("member_tier")])
            else:
                out.append([r.profile_id, a.get("name"), show(r.phone), a.get("email"), a.get("city")])
        return out

    def export_csv(self, ws: str, sid: str, *, kind: str = "csv", mask: bool = True) -> Iterator[str]:
        """The export as CSV text chunks (UTF-8 with BOM so that Excel opens Chinese names)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        yield "\ufeff"
        for i, row in enumerate(self.export_rows(ws, sid, kind=kind, mask=mask)):
            w.writerow([_cell(v) for v in row])
            if i % 1000 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    def due_for_refresh(self, minutes: float) -> list[tuple[str, str]]:
        """(workspace, segment) pairs never computed or computed more than ``minutes`` ago."""
        from datetime import timedelta

        cutoff = utcnow() - timedelta(minutes=minutes)
        with self.engine.connect() as c:
            rows = c.execute(sa.select(S.workspace_id, S.segment_id).where(
                S.deleted_at.is_(None), sa.or_(S.computed_at.is_(None), S.computed_at < cutoff))
                .order_by(S.computed_at)).all()
        return [(r.workspace_id, r.segment_id) for r in rows]

    # -- real time ----------------------------------------------------------------------------
    def realtime_rules(self, ws: str) -> list[tuple[str, Any]]:
        """(segment_id, compiled rule) of the workspace's real-time segments, compiled once per version."""
        v = segment_versions.c
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(S.segment_id, S.version, v.rule)
                .join(segment_versions, sa.and_(v.workspace_id == S.workspace_id, v.segment_id == S.segment_id,
                                                v.version == S.version))
                .where(S.workspace_id == ws, S.realtime.is_(True), S.deleted_at.is_(None))
            ).all()
        if not rows:
            return []
        catalog = load_catalog(self.engine, ws)
        out = []
        for r in rows:
            key = (ws, r.segment_id, r.version)
            comp = self._compiled.get(key)
            if comp is None or comp.catalog != catalog:
                comp = compile_rule(parse_rule(orjson.loads(r.rule)), catalog)
                self._compiled[key] = comp
            out.append((r.segment_id, comp))
        return out

    def reevaluate(self, ws: str, pids: list[str], *, as_of: datetime | None = None) -> dict[str, tuple[int, int]]:
        """Re-evaluate the real-time segments for profiles ``pids`` with the in-memory evaluator and
        apply the differences. Returns {segment_id: (entered, exited)} for segments that changed."""
        rules = self.realtime_rules(ws)
        if not rules or not pids:
            return {}
        t = as_of_utc(as_of)
        values = load_profile_values(self.engine, ws, pids)
        events = load_events(self.analytical, ws, list(values))
        scope = set(pids)
        # profiles merged into these since they were evaluated leave every segment
        with self.engine.connect() as c:
            for i in range(0, len(pids), 500):
                scope |= set(c.execute(sa.select(profiles.c.profile_id).where(
                    profiles.c.workspace_id == ws, profiles.c.canonical_id.in_(pids[i : i + 500]),
                    profiles.c.merged_into.is_not(None))).scalars())
        changed: dict[str, tuple[int, int]] = {}
        for sid, comp in rules:
            pred = comp.at(t)
            now_in = {p for p, v in values.items() if pred(v, events.get(p, ()))}
            res = self.writer.run_command(
                lambda ctx, sid=sid, now_in=now_in: self._apply(ctx, ws, sid, now_in, t, full=False, scope=scope))
            if res != (0, 0):
                changed[sid] = res
        return changed


_PHONE = re.compile(r"^\+[\d*]+\Z")


def _cell(v: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula (names come from customers)."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") and not _PHONE.match(v):
        return "'" + v
    return v


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not 0 < len(name) <= 200:
        raise InvalidInput("a segment needs a name of 1 to 200 characters", field="name")
    return name


def _audit(c: sa.Connection, ws: str, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    audit.write(c, ws, actor, action, target, detail)


def members_arrow(ids: pa.Table) -> list[str]:
    return ids.column("profile_id").to_pylist()
