"""Tags: named labels on profiles, of four kinds and three value types.

- **rule** tags compute their value from the condition language: an ordered list of
  ``{value, rule}`` (the first matching rule gives the value; a boolean tag has one rule, whose
  members get ``true``);
- **manual** tags are set through the API or from a CSV list;
- **model** tags are written by the insight models (they use ``set_values`` like manual tags).

Where the values live: rule and manual tags in the profile row (``profiles.tags``), model tags in
the narrow ``profile_scores`` row beside the model's scores (``profile_scores.model_tags``), so that
a model run setting a tag on a million profiles rewrites small rows, not the wide profile rows
holding attributes, order summary and recent events. Readers see one ``tags`` object
(:func:`goldkey.audience.catalog.profile_values`, the 360° profile, the facts). A tag's kind cannot
change between ``model`` and the others: its values would be in the other place.

Value types: ``enum`` (one of ``values``), ``boolean`` and ``number``. A profile without the tag
has no key: a boolean tag stores ``true`` only, so "not VIP" is ``tags.vip is_not_set``.
Each tag has a category (fixed, interests, social, consumption, dynamic), an owner and a
description; coverage counts profiles per value; every change is a ``Tag Changed`` event
(properties ``tag``, ``value``, ``previous``), so "became VIP in the last 30 days" is a rule.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple

import orjson
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from goldkey.audience.catalog import declare_field, remove_field
from goldkey.audience.common import batch_member_ids, emit_event_columns, emit_events, parse_and_check
from goldkey.audience.facts import FactsCache, facts_for
from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound, loc_path
from goldkey.govern import audit
from goldkey.identity.normalize import normalize_identifier
from goldkey.rules.model import parse_rule, rule_to_json
from goldkey.rules.values import as_of_utc, field_column
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import identities, profiles, quarantine, tags, timestamp_param

T = tags.c
_NAME = re.compile(r"^[^\W\d]\w{0,63}\Z")
CATEGORIES = ("fixed", "interests", "social", "consumption", "dynamic")
_FIELD_TYPE = {"enum": "string", "boolean": "boolean", "number": "number"}


class TagRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str | bool | float = True
    rule: dict[str, Any]


class TagDefinition(BaseModel):
    """A tag as the API takes it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["rule", "manual", "model"]
    value_type: Literal["enum", "boolean", "number"]
    category: Literal["fixed", "interests", "social", "consumption", "dynamic"]
    owner: str = ""
    description: str = ""
    values: list[str] = Field(default_factory=list, description="the allowed values of an enum tag")
    rules: list[TagRule] = Field(default_factory=list, max_length=50)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("a tag name is 1-64 letters, digits or underscores, not starting with a digit")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TagDefinition:
        if self.kind == "rule":
            if not self.rules:
                raise ValueError("a rule tag needs at least one {value, rule}")
            if self.value_type == "number":
                raise ValueError("rule tags are enum or boolean; numbers come from traits or models")
            if self.value_type == "boolean" and (len(self.rules) != 1 or self.rules[0].value is not True):
                raise ValueError("a boolean rule tag has exactly one rule (its members get true)")
            if self.value_type == "enum":
                for r in self.rules:
                    if not isinstance(r.value, str):
                        raise ValueError(f"enum tag values are strings (got {r.value!r})")
                if not self.values:
                    self.values = list(dict.fromkeys(str(r.value) for r in self.rules))
                missing = [r.value for r in self.rules if r.value not in self.values]
                if missing:
                    raise ValueError(f"rule values {missing} are not among the tag's values")
        elif self.rules:
            raise ValueError(f"a {self.kind} tag has no rules")
        if self.value_type == "enum" and not self.values:
            raise ValueError("an enum tag needs its list of values")
        return self


def _validation_error(exc: ValidationError, prefix: str = "") -> InvalidInput:
    """The InvalidInput for a ValidationError: raise it after the ``except`` block, not inside it
    (see goldkey.core.errors.validated)."""
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    loc = loc_path(err["loc"])
    return InvalidInput(err["msg"].removeprefix("Value error, "), field=(prefix + loc) or None)


class TagService:
    """Define, compute and set tags of a workspace."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, writer: Any, facts: FactsCache,
                 realtime: Any = None, region: str = "CN") -> None:
        self.region = region
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.facts = facts
        self.realtime = realtime

    # -- definitions ------------------------------------------------------------------------
    def _validate(self, ws: str, data: dict[str, Any]) -> TagDefinition:
        try:
            d = TagDefinition.model_validate(data)
        except ValidationError as exc:
            problem = _validation_error(exc)
        else:
            problem = None
        if problem is not None:
            raise problem
        for i, r in enumerate(d.rules):
            parsed = parse_and_check(self.engine, self.analytical, ws, r.rule, prefix=f"rules[{i}].rule")
            r.rule = rule_to_json(parsed)
        return d

    def create(self, ws: str, data: dict[str, Any], actor: str = "api") -> dict[str, Any]:
        d = self._validate(ws, data)
        now = utcnow()
        with self.engine.begin() as c:
            if c.execute(sa.select(T.name).where(T.workspace_id == ws, T.name == d.name)).first():
                raise Conflict(f"a tag named {d.name!r} already exists")
            c.execute(tags.insert().values(
                workspace_id=ws, name=d.name, kind=d.kind, value_type=d.value_type, category=d.category,
                owner=d.owner, description=d.description, definition=_def_json(d), version=1, status="new",
                created_at=now, updated_at=now))
            declare_field(c, ws, f"tags.{d.name}", _FIELD_TYPE[d.value_type], "tag", label=d.name,
                          description=d.description)
            _audit(c, ws, actor, "tag.create", d.name)
        self.facts.touch(ws)  # a new field in the catalog
        return self.get(ws, d.name)

    def update(self, ws: str, name: str, data: dict[str, Any], actor: str = "api") -> dict[str, Any]:
        cur = self.get(ws, name)
        merged = {**{k: cur[k] for k in ("name", "kind", "value_type", "category", "owner", "description", "values",
                                         "rules")}, **data, "name": name}
        d = self._validate(ws, merged)
        if (d.kind == "model") != (cur["kind"] == "model"):  # the values live in another place (_column)
            raise InvalidInput(f"tag {name!r} is a {cur['kind']} tag; a model tag cannot become another kind or "
                               "the reverse (delete it and create it again)", field="kind")
        with self.engine.begin() as c:
            c.execute(tags.update().where(T.workspace_id == ws, T.name == name).values(
                kind=d.kind, value_type=d.value_type, category=d.category, owner=d.owner, description=d.description,
                definition=_def_json(d), version=T.version + 1, updated_at=utcnow()))
            declare_field(c, ws, f"tags.{d.name}", _FIELD_TYPE[d.value_type], "tag", label=d.name,
                          description=d.description)
            _audit(c, ws, actor, "tag.update", name)
        self.facts.touch(ws)
        return self.get(ws, name)

    def delete(self, ws: str, name: str, actor: str = "api") -> int:
        """Delete a tag and remove it from every profile; returns how many profiles had it."""
        tag = self.get(ws, name)
        holders = self.holders(ws, name)
        removed = self._write_one(ws, name, {p: None for p in holders}, source="tags", column=_column(tag))
        with self.engine.begin() as c:
            c.execute(tags.delete().where(T.workspace_id == ws, T.name == name))
            remove_field(c, ws, f"tags.{name}")
            _audit(c, ws, actor, "tag.delete", name)
        self.facts.touch(ws)
        return removed

    def get(self, ws: str, name: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            r = c.execute(sa.select(tags).where(T.workspace_id == ws, T.name == name)).first()
        if r is None:
            raise NotFound(f"tag {name!r} not found")
        return _tag_dict(r)

    def list(self, ws: str, category: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(tags).where(T.workspace_id == ws)
        if category:
            q = q.where(T.category == category)
        with self.engine.connect() as c:
            return [_tag_dict(r) for r in c.execute(q.order_by(T.category, T.name))]

    # -- values -----------------------------------------------------------------------------
    def compute(self, ws: str, name: str, *, as_of: datetime | None = None) -> dict[str, Any]:
        """Evaluate a rule tag over every profile and write the changes (with Tag Changed events)."""
        t0 = time.perf_counter()
        tag = self.get(ws, name)
        if tag["kind"] != "rule":
            raise InvalidInput(f"tag {name!r} is a {tag['kind']} tag; only rule tags are computed", field="name")
        t = as_of_utc(as_of)
        new: dict[str, Any] = {}
        for r in tag["rules"]:
            ids = batch_member_ids(self.facts, self.analytical, ws, parse_rule(r["rule"]), t, fresh=True)
            for pid in ids.column("profile_id").to_pylist():
                new.setdefault(pid, r["value"])  # the first matching rule wins
        current = self.holders(ws, name)
        changes = {p: v for p, v in new.items() if current.get(p) != v}
        changes.update({p: None for p in current if p not in new})
        changed = self._write_one(ws, name, changes, source="tags", column=_column(tag))
        with self.engine.begin() as c:
            c.execute(tags.update().where(T.workspace_id == ws, T.name == name).values(
                status="computed", computed_at=utcnow()))
        return {"tag": name, "profiles": len(new), "changed": changed, "as_of": to_iso(t),
                "took_ms": int((time.perf_counter() - t0) * 1000)}

    def compute_all(self, ws: str) -> list[dict[str, Any]]:
        return [self.compute(ws, t["name"]) for t in self.list(ws) if t["kind"] == "rule"]

    def set_values(self, ws: str, name: str, assignments: list[dict[str, Any]], *, source: str = "api",
                   replace: bool = False) -> dict[str, Any]:
        """Set a manual or model tag: each assignment names a profile (``profile_id``, or an
        identifier such as ``{"phone": "139..."}``) and a ``value`` (``null`` removes the tag).
        ``replace`` removes the tag from profiles not in the list. Bad rows are rejected with their
        index and field; nothing is written when any row is bad."""
        tag = self.get(ws, name)
        if tag["kind"] == "rule":
            raise InvalidInput(f"tag {name!r} is computed from its rules; it cannot be set by hand", field="name")
        resolved: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for i, a in enumerate(assignments):
            try:
                pid = self._resolve_profile(ws, a)
                resolved[pid] = self._check_value(tag, a.get("value", True if tag["value_type"] == "boolean" else None),
                                                  allow_none=True)
            except InvalidInput as exc:
                errors.append({"record": i, "field": exc.field, "error": exc.message})
        if errors:
            err = InvalidInput(f"{len(errors)} of {len(assignments)} rows are invalid; first: {errors[0]['error']}",
                               field=errors[0]["field"], record=errors[0]["record"])
            err.errors = errors  # type: ignore[attr-defined]
            raise err
        current = self.holders(ws, name)
        changes = {p: v for p, v in resolved.items() if current.get(p) != v}
        if replace:
            changes.update({p: None for p in current if p not in resolved})
        changed = self._write_one(ws, name, changes, source=source, column=_column(tag))
        return {"tag": name, "rows": len(assignments), "profiles": len(resolved), "changed": changed}

    def import_csv(self, ws: str, name: str, data: bytes, *, replace: bool = False) -> dict[str, Any]:
        """Set a manual tag from a CSV list. Columns: ``profile_id`` or one identifier column
        (``phone``, ``email``, ``user_id``, ``crm_id`` ...), and ``value`` (optional for boolean
        tags). Rows that name no profile, or carry a bad value, go to the quarantine; the rest are set."""
        tag = self.get(ws, name)
        try:
            text = data.decode("utf-8-sig") if data else ""
        except UnicodeDecodeError:
            try:
                text = data.decode("gb18030")  # what Excel on a Chinese Windows saves
            except UnicodeDecodeError:
                raise InvalidInput("the file is neither UTF-8 nor GB18030 text", field="file") from None
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise InvalidInput("the CSV has no header row", field="file")
        good: list[dict[str, Any]] = []
        bad: list[tuple[int, str | None, str, dict[str, Any]]] = []
        for i, row in enumerate(reader, start=1):  # the row number, 1 = the first row under the header, as imports
            a: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "") and k != "value"}
            if "value" in row and row["value"] not in (None, ""):
                a["value"] = _parse_cell(row["value"], tag["value_type"])
            try:
                pid = self._resolve_profile(ws, a)
                value = self._check_value(tag, a.get("value", True if tag["value_type"] == "boolean" else None))
                good.append({"profile_id": pid, "value": value})
            except InvalidInput as exc:
                bad.append((i, exc.field, exc.message, row))
            else:
                if good[-1]["value"] is None:  # "false" in a boolean list: remove the tag
                    good[-1]["value"] = None
        if bad:
            now = utcnow()
            with self.engine.begin() as c:
                c.execute(quarantine.insert(), [
                    {"workspace_id": ws, "source": f"tag:{name}", "import_id": None, "record": str(i),
                     "field": f, "value": str(row.get(f) if f else "")[:1000], "reason": msg,
                     "raw": orjson.dumps(row).decode(), "created_at": now} for i, f, msg, row in bad])
        # a list with rejected rows is incomplete: it sets what it names but removes nobody
        replace_ok = replace and not bad
        report = self.set_values(ws, name, good, source="tags:import", replace=replace_ok) if good or replace_ok else {
            "tag": name, "rows": 0, "profiles": 0, "changed": 0}
        report.update({"rows": len(good) + len(bad), "quarantined": len(bad),
                       "replace_skipped": bool(replace and bad)})
        return report

    def _resolve_profile(self, ws: str, a: dict[str, Any]) -> str:
        if a.get("profile_id"):
            with self.engine.connect() as c:
                r = c.execute(sa.select(profiles.c.canonical_id).where(
                    profiles.c.workspace_id == ws, profiles.c.profile_id == str(a["profile_id"]))).first()
            if r is None:
                raise InvalidInput(f"no profile {a['profile_id']!r} in this workspace", field="profile_id")
            return r.canonical_id
        ids = [(k, v) for k, v in a.items() if k not in ("value", "profile_id")]
        if len(ids) != 1:
            raise InvalidInput("name the profile by profile_id or by exactly one identifier", field="profile_id")
        t, v = ids[0]
        norm = normalize_identifier(t, v, self.region)
        if norm is None:
            raise InvalidInput(f"{v!r} is not a valid {t}", field=t)
        with self.engine.connect() as c:
            r = c.execute(sa.select(identities.c.profile_id).where(
                identities.c.workspace_id == ws, identities.c.id_type == t, identities.c.id_value == norm)).first()
        if r is None:
            raise InvalidInput(f"no profile with {t} {norm!r}", field=t)
        return r.profile_id

    @staticmethod
    def _check_value(tag: dict[str, Any], v: Any, allow_none: bool = False) -> Any:
        if v is None:
            if allow_none:
                return None
            raise InvalidInput("a value is required", field="value")
        vt = tag["value_type"]
        if vt == "boolean":
            if not isinstance(v, bool):
                raise InvalidInput(f"{v!r} is not true/false", field="value")
            return True if v else None  # a boolean tag stores true only: false removes it
        if vt == "number":
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidInput(f"{v!r} is not a number", field="value")
            return float(v)
        if not isinstance(v, str) or v not in tag["values"]:
            raise InvalidInput(f"{v!r} is not one of {tag['values']}", field="value")
        return v

    # -- reading ----------------------------------------------------------------------------
    def coverage(self, ws: str, name: str) -> dict[str, Any]:
        """How many live profiles carry each value of the tag (from the batch facts)."""
        self.get(ws, name)
        info = self.facts.ensure(ws)
        col = field_column(f"tags.{name}")
        with self.analytical.ibis_connection() as con:
            t = facts_for(con, ws)
            rows = t.group_by(value=t[col]).aggregate(profiles=t.count()).to_pyarrow().to_pylist()
        counts = [{"value": r["value"], "profiles": r["profiles"]} for r in rows if r["value"] is not None]
        counts.sort(key=lambda r: -r["profiles"])
        tagged = sum(r["profiles"] for r in counts)
        return {"tag": name, "total_profiles": info.profiles, "tagged": tagged,
                "coverage": round(tagged / info.profiles, 4) if info.profiles else 0.0, "values": counts}

    def history(self, ws: str, name: str, *, profile_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Changes of the tag, newest first (optionally of one profile)."""
        sql = ("SELECT canonical_id, \"timestamp\", properties FROM events_resolved WHERE workspace_id = ? "
               "AND type = 'track' AND event = 'Tag Changed' AND json_extract_string(properties, '$.tag') = ?")
        params: list[Any] = [ws, name]
        if profile_id:
            sql += " AND canonical_id = ?"
            params.append(profile_id)
        sql += " ORDER BY \"timestamp\" DESC LIMIT ?"
        params.append(max(1, min(limit, 1000)))
        out = []
        for pid, ts, props in self.analytical.query(sql, params):
            p = orjson.loads(props)
            out.append({"profile_id": pid, "at": to_iso(ts), "value": p.get("value"), "previous": p.get("previous"),
                        "source": p.get("source")})
        return out

    def holders(self, ws: str, name: str) -> dict[str, Any]:
        """{profile_id: value} of live profiles that carry the tag. Only rows whose ``tags`` (or, for
        a model tag, ``model_tags``) text contains the quoted name are fetched (straight from the
        DBAPI cursor) and parsed."""
        with self.engine.connect() as c:
            kind = c.execute(sa.select(T.kind).where(T.workspace_id == ws, T.name == name)).scalar()
            rows = read_json_rows(c, ws, "model_tags" if kind == "model" else "tags",
                                  containing=orjson.dumps(name).decode())
        loads = orjson.loads
        return {pid: v for pid, raw in rows if (v := loads(raw).get(name)) is not None}

    _holders = holders  # the older private name

    def holders_many(self, ws: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`holders` of several tags, each place their values live read once and each row
        parsed once (RFM's two tags: one pass over a million rows instead of two)."""
        with self.engine.connect() as c:
            kinds = dict(c.execute(sa.select(T.name, T.kind).where(T.workspace_id == ws,
                                                                   T.name.in_(list(names)))).all())
            out: dict[str, dict[str, Any]] = {n: {} for n in names}
            for column in ("tags", "model_tags"):  # a tag that does not exist has no holders
                mine = [n for n in names if n in kinds and ("model_tags" if kinds[n] == "model" else "tags") == column]
                if not mine:
                    continue
                # only rows holding one of the names (e.g. RFM's first run after a lifecycle run: none)
                rows = read_json_rows(c, ws, column, containing=[orjson.dumps(n).decode() for n in mine])
                loads = orjson.loads
                found = [out[n] for n in mine]
                for pid, raw in rows:
                    doc = loads(raw)
                    for n, held in zip(mine, found, strict=True):
                        v = doc.get(n)
                        if v is not None:
                            held[pid] = v
        return out

    def set_model_values(self, ws: str, name: str, values: Mapping[str, Any], source: str, *,
                         current: dict[str, Any] | None = None) -> ModelTagWrite:
        """Set a model's tag on exactly the profiles in ``values`` (live profile ids, e.g. straight
        from ``orders_resolved``; a value of None - or False for a boolean tag - means no value) and
        remove it from every other live profile, with a Tag Changed event per change.

        This is what ``set_values(..., replace=True)`` does, without resolving each row's profile by
        a query (~0.4 ms a row, minutes at 1M customers); every distinct value is checked against
        the tag's type and allowed values first (nothing is written when one is bad). ``current``
        is the holders when the caller has just read them (:meth:`holders`)."""
        return self.set_model_values_many(ws, {name: values}, source, current={name: current})[name]

    def set_model_values_many(self, ws: str, values: Mapping[str, Mapping[str, Any]], source: str, *,
                              current: Mapping[str, dict[str, Any] | None] | None = None
                              ) -> dict[str, ModelTagWrite]:
        """:meth:`set_model_values` for several tags of one model at once (RFM's group and value
        tier): every tag's values are checked before anything is written, then a profile's row is
        written once for all its changed tags (one Tag Changed event per tag changed). Tags stored
        in different places (a model tag beside a manual one) are written one after the other."""
        current = self._current(ws, values, current)
        plans = {name: self._model_changes(ws, name, v, current[name]) for name, v in values.items()}
        changed: dict[str, int] = {}
        for column in sorted({_column(tag) for tag, *_ in plans.values()}):
            mine = {n: p for n, p in plans.items() if _column(p[0]) == column}
            changed.update(self._write(ws, {n: ch for n, (_t, _new, _cur, ch) in mine.items()}, source=source,
                                       expected={n: cur for n, (_t, _new, cur, _ch) in mine.items()}, column=column))
        return {n: ModelTagWrite(n, len(new), cur, ch, changed[n]) for n, (_t, new, cur, ch) in plans.items()}

    def plan_model_values(self, ws: str, values: Mapping[str, Mapping[str, Any]], *,
                          current: Mapping[str, dict[str, Any] | None] | None = None) -> dict[str, ModelTagPlan]:
        """What :meth:`set_model_values_many` would write, without writing it: per tag, the values
        checked against the tag (InvalidInput naming the bad ones; nothing is planned when one is
        bad), the current holders and the changes. For a model that writes its tags together with
        its scores in one pass over its rows (:func:`goldkey.insight.writeback.write_model_outputs`,
        which also emits the Tag Changed events). Every tag must be of kind ``model``."""
        current = self._current(ws, values, current)
        plans = {name: ModelTagPlan(*self._model_changes(ws, name, v, current[name])) for name, v in values.items()}
        for name, plan in plans.items():
            if _column(plan.tag) != "model_tags":
                raise InvalidInput(f"tag {name!r} is a {plan.tag['kind']} tag; only model tags are written with "
                                   "a model's scores", field="name")
        return plans

    def _current(self, ws: str, values: Mapping[str, Any], current: Mapping[str, dict[str, Any] | None] | None
                 ) -> dict[str, dict[str, Any] | None]:
        """The holders of each tag of ``values``: as given in ``current``, the others read in one
        pass (:meth:`holders_many`). A tag that does not exist is left to the caller's checks."""
        given = dict(current or {})
        missing = [n for n in values if given.get(n) is None]
        if len(missing) > 1:
            given.update(self.holders_many(ws, missing))
        return {n: given.get(n) for n in values}

    def _model_changes(self, ws: str, name: str, values: Mapping[str, Any], current: dict[str, Any] | None
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``(tag, new values, current holders, changes)`` of a model's write of one tag, every
        distinct value checked (InvalidInput naming the bad ones)."""
        tag = self.get(ws, name)
        if tag["kind"] == "rule":
            raise InvalidInput(f"tag {name!r} is computed from its rules; a model cannot set it", field="name")
        checked: dict[Any, Any] = {}
        bad = []
        for v in set(values.values()):
            try:
                checked[v] = self._check_value(tag, v, allow_none=True)
            except InvalidInput:
                bad.append(v)
        if bad:
            raise InvalidInput(f"values {sorted(bad, key=repr)} are not among tag {name!r}'s values", field="value")
        if None not in checked.values() and all(type(k) is type(v) and k == v for k, v in checked.items()):
            new = dict(values)  # every value stands as given (the common case): a copy in C
        else:
            new = {p: checked[v] for p, v in values.items() if checked[v] is not None}
        if current is None:
            current = self.holders(ws, name)
        changes: dict[str, Any]
        if not current:  # nobody holds the tag yet (a model's first run): every value is a change
            return tag, new, current, dict(new)
        try:  # set operations on the (profile, value) pairs, in C (a million profiles: ~0.2 s)
            changes = dict(new.items() - current.items())
        except TypeError:  # an unhashable value
            get = current.get
            changes = {p: v for p, v in new.items() if get(p) != v}
        changes.update(dict.fromkeys(current.keys() - new.keys()))
        return tag, new, current, changes

    def _write_one(self, ws: str, name: str, changes: dict[str, Any], *, source: str, column: str = "tags") -> int:
        """:meth:`_write` of one tag: how many profiles changed."""
        return self._write(ws, {name: changes}, source=source, column=column)[name]

    def _write(self, ws: str, changes: Mapping[str, dict[str, Any]], *, source: str,
               expected: Mapping[str, Mapping[str, Any]] | None = None, column: str = "tags") -> dict[str, int]:
        """Apply ``{tag: {profile_id: value or None}}`` on the writer thread, with a Tag Changed
        event per profile and tag changed, to ``column`` (``tags``: the profile rows;
        ``model_tags``: the model outputs' rows, a row created for a profile without one),
        ``WRITE_CHUNK`` profiles per writer command (event commits go on in between): each command
        reads its profiles' tags, writes each changed row once (all its tags) and appends the
        events in one Arrow batch. Returns how many profiles changed, per tag.

        ``expected``: what the caller read as each profile's value of each tag just before (a
        model's write, :meth:`set_model_values`; absent = no value). On SQLite a chunk whose rows
        all still hold exactly that is then written by the database itself, ``json_set`` /
        ``json_remove`` in one ``UPDATE`` per group of profiles with the same values, with no row
        read, parsed and re-serialised in Python (a first model run at 1M profiles writes a million
        tags this way); a chunk where any row differs (a change in between, a profile merged away)
        goes the general way."""
        changed = dict.fromkeys(changes, 0)
        touched = set().union(*changes.values()) if changes else set()
        if not touched:
            return changed
        at = utcnow()
        ids = sorted(touched)
        fast = expected is not None and all(_json_path(n) is not None for n in changes)

        def general(c: sa.Connection, ctx: Any, chunk: list[str]) -> dict[str, int]:
            events: list[tuple[str, str, dict[str, Any]]] = []
            updates: list[tuple[str, str]] = []
            done = dict.fromkeys(changes, 0)
            loads, dumps = orjson.loads, orjson.dumps
            # model tags: live profiles only, so that no row is created for a profile merged away meanwhile
            for pid, raw in read_json_rows(c, ws, column, ids=chunk, live_only=column == "model_tags"):
                cur = loads(raw)
                dirty = False
                for name, tag_changes in changes.items():
                    if pid not in tag_changes:
                        continue
                    prev, new = cur.get(name), tag_changes[pid]
                    if prev == new:
                        continue
                    if new is None:
                        cur.pop(name, None)
                    else:
                        cur[name] = new
                    dirty = True
                    done[name] += 1
                    events.append((pid, "Tag Changed", {"tag": name, "value": new, "previous": prev,
                                                        "source": source}))
                if dirty:
                    updates.append((dumps(cur).decode(), pid))
            if updates:
                update_json_rows(c, column, updates, ws=ws, at=at)
                with ctx.analytical.transaction() as con:
                    emit_events(ctx.analytical, con, ws, events, "tags", at)
            return done

        def run(ctx: Any, chunk: list[str]) -> dict[str, int]:
            if fast and ctx.engine.dialect.name == "sqlite":
                try:
                    with ctx.engine.begin() as c:
                        done = _write_expected(c, ctx, ws, chunk, changes, expected, source, at, column)  # type: ignore[arg-type]
                    if done is not None:
                        return done
                except _Stale:  # rolled back: nothing of the chunk was written
                    pass
            with ctx.engine.begin() as c:
                return general(c, ctx, chunk)

        for i in range(0, len(ids), WRITE_CHUNK):
            done = self.writer.run_command(lambda ctx, chunk=ids[i : i + WRITE_CHUNK]: run(ctx, chunk))
            for name, n in done.items():
                changed[name] += n
        self.facts.touch(ws)
        if self.realtime is not None and any(changed.values()):
            self.realtime.notify(ws, ids)
        return changed


def _json_path(name: str) -> str | None:
    """The SQLite JSON path of a top-level key (None for a name the path syntax cannot quote)."""
    return None if '"' in name or "\\" in name else f'$."{name}"'


def _column(tag: Mapping[str, Any]) -> str:
    """Where a tag's values live: ``model_tags`` (profile_scores) for a model tag, else ``tags``."""
    return "model_tags" if tag["kind"] == "model" else "tags"


# one group of a chunk: ?1 the profile ids (a JSON array), ?2 the workspace, then per tag its JSON
# path, the value read (JSON text; NULL: none) and, when set, the new value (JSON text): ?3, ?4, ?5
# for the first. The ids drive the statement and each profile is found by its key: "+workspace_id"
# keeps SQLite's planner from scanning the workspace once per id (test_writeback checks the plans);
# profile_scores' key starts with the workspace: there "profile_id IN (json_each)" seeks each
# (workspace, profile) pair.
_TAG_TABLE = {"tags": "profiles", "model_tags": "profile_scores"}


@functools.cache
def _tag_update(column: str, removes: tuple[bool, ...]) -> str:
    """The UPDATE of one group: a tag set (``json_set``) or removed (``json_remove``) per entry of
    ``removes``, each guarded by the value read."""
    table = _TAG_TABLE[column]
    expr, guards, i = column, [], 3
    for remove in removes:
        expr = f"json_remove({expr}, ?{i})" if remove else f"json_set({expr}, ?{i}, json(?{i + 2}))"
        guards.append(f"({table}.{column} -> ?{i}) IS ?{i + 1}")
        i += 2 if remove else 3
    where = " AND ".join(guards)
    if table == "profile_scores":
        return (f"UPDATE {table} SET {column} = {expr} WHERE workspace_id = ?2 AND profile_id IN "
                f"(SELECT value FROM json_each(?1)) AND {where}")
    return (f"UPDATE {table} SET {column} = {expr} FROM json_each(?1) AS u WHERE {table}.profile_id = u.value "
            f"AND +{table}.workspace_id = ?2 AND {where}")


# {column: statement} of one tag set / removed, in the two places tags live
_TAG_SET = {c: _tag_update(c, (False,)) for c in _TAG_TABLE}
_TAG_REMOVE = {c: _tag_update(c, (True,)) for c in _TAG_TABLE}
# before a model tag is set on profiles that held no value: an empty row for each live one of them
# without a row (?1 the ids, ?2 the workspace, ?3 the time); json_each drives, each profile found in
# ix_profiles_live (the CROSS JOIN keeps that order)
_MODEL_ROWS = (
    "INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
    "SELECT ?2, p.profile_id, '{}', ?3, '{}' FROM json_each(?1) AS u CROSS JOIN profiles AS p INDEXED BY "
    "ix_profiles_live WHERE p.workspace_id = ?2 AND p.merged_into IS NULL AND p.profile_id = u.value "
    "ON CONFLICT (workspace_id, profile_id) DO NOTHING"
)


class _Stale(Exception):
    """A row no longer holds what the model read: the chunk is rolled back and written the general way."""


def _write_expected(c: sa.Connection, ctx: Any, ws: str, chunk: list[str], changes: Mapping[str, Mapping[str, Any]],
                    expected: Mapping[str, Mapping[str, Any]], source: str, at: datetime,
                    column: str = "tags") -> dict[str, int] | None:
    """:meth:`TagService._write`'s SQLite way for one chunk inside the caller's transaction. The
    chunk's profiles are grouped by what changes for them ((tag, value read, new value) for each
    tag that changes) - a model's tags have a handful of values, so a handful of groups - and each
    group is ONE ``UPDATE`` that sets (``json_set``) or removes (``json_remove``) its tags where
    the row still holds the values read (compared as JSON text; absent = SQL NULL). If a group
    updates fewer rows than it has profiles (a change in between, a profile gone), :class:`_Stale`
    is raised so that the caller's transaction rolls back and the chunk goes the general way.
    Then the Tag Changed events, whose properties are one text per group and tag. Returns how
    many profiles changed per tag (None: a value that cannot be grouped). For model tags
    (``column`` ``model_tags``), when a group of profiles that held none of its tags updates too
    few rows, its live profiles without a ``profile_scores`` row get an empty one and the group's
    statement runs again."""
    groups: dict[tuple[tuple[str, Any, Any], ...], list[str]] = {}
    items = [(name, tag_changes, expected.get(name) or {}) for name, tag_changes in changes.items()]
    try:
        for p in chunk:
            key = tuple((name, was.get(p), tag_changes[p]) for name, tag_changes, was in items if p in tag_changes)
            group = groups.get(key)
            if group is None:
                groups[key] = group = []
            group.append(p)
    except TypeError:  # an unhashable value: not a model tag's
        return None
    dumps = orjson.dumps
    done = dict.fromkeys(changes, 0)
    cur = c.connection.cursor()
    try:
        for key, ids in groups.items():
            statement = _tag_update(column, tuple(after is None for _n, _b, after in key))
            args: list[Any] = [dumps(ids).decode(), ws]
            for name, before, after in key:
                args += [_json_path(name), None if before is None else dumps(before).decode()]
                if after is not None:
                    args.append(dumps(after).decode())
            cur.execute(statement, args)
            n = cur.rowcount
            if n < len(ids) and column == "model_tags" and all(before is None for _n, before, _a in key):
                # profiles without a profile_scores row (e.g. no model scored them): rows for them, then
                # the same statement again (the rows it set already no longer match its "held nothing")
                cur.execute(_MODEL_ROWS, (args[0], ws, timestamp_param(c, at)))
                cur.execute(statement, args)
                n += cur.rowcount
            if n != len(ids):
                raise _Stale
            for name, _b, _a in key:
                done[name] += len(ids)
    finally:
        cur.close()
    pids: list[str] = []
    texts = []
    for key, ids in groups.items():
        for name, before, after in key:
            pids += ids
            texts.append(pa.repeat(pa.scalar(_tag_changed_text(name, before, after, source)), len(ids)))
    with ctx.analytical.transaction() as con:
        emit_event_columns(ctx.analytical, con, ws, pids, pa.repeat(pa.scalar("Tag Changed"), len(pids)),
                           pa.concat_arrays(texts), "tags", at)
    return done


def _tag_changed_text(name: str, before: Any, after: Any, source: str) -> str:
    """The properties' JSON text of a Tag Changed event: ``{"tag", "value", "previous", "source"}``."""
    dumps = orjson.dumps
    return (f'{{"tag":{dumps(name).decode()},"value":{dumps(after).decode()},"previous":{dumps(before).decode()},'
            f'"source":{dumps(source).decode()}}}')


class ModelTagPlan(NamedTuple):
    """A model's planned write of one tag (:meth:`TagService.plan_model_values`)."""

    tag: dict[str, Any]  # the tag's definition
    values: dict[str, Any]  # {profile_id: value} the profiles will carry
    previous: dict[str, Any]  # {profile_id: value} before
    changes: dict[str, Any]  # {profile_id: new value or None}


def tag_change_events(plans: Mapping[str, ModelTagPlan], profile_ids: Sequence[str], source: str
                      ) -> tuple[list[str], list[str], dict[str, int]]:
    """The Tag Changed events (profile ids, properties' JSON texts) of ``plans``' changes on
    ``profile_ids``, one per profile and tag changed, tag by tag, and how many per tag. A model tag
    has a handful of values, so the properties are a handful of texts, each put together once."""
    pids: list[str] = []
    texts: list[str] = []
    counts = dict.fromkeys(plans, 0)
    for name, plan in plans.items():
        changes, previous = plan.changes, plan.previous
        if not changes:
            continue
        before = len(pids)
        made: dict[tuple[Any, Any], str] = {}
        for p in profile_ids:
            if p not in changes:
                continue
            pair = (previous.get(p), changes[p])
            text = made.get(pair)
            if text is None:
                made[pair] = text = _tag_changed_text(name, pair[0], pair[1], source)
            pids.append(p)
            texts.append(text)
        counts[name] = len(pids) - before
    return pids, texts, counts


class ModelTagWrite(NamedTuple):
    """What :meth:`TagService.set_model_values` did."""

    tag: str
    profiles: int  # profiles that carry the tag now
    previous: dict[str, Any]  # {profile_id: value} before
    changes: dict[str, Any]  # {profile_id: new value or None} asked for
    changed: int  # rows written (one Tag Changed event each)


# -- bulk access to the profiles' JSON columns (shared with goldkey.insight.writeback) ----------
WRITE_CHUNK = 50_000  # profiles per writer command
# profiles.tags, and the model tags in profile_scores.model_tags (model scores: goldkey.profiles.scores)
_JSON_COLUMNS = ("tags", "model_tags")


def read_json_rows(conn: sa.Connection, ws: str, column: str, *, ids: Sequence[str] | None = None,
                   containing: str | Sequence[str] | None = None, live_only: bool = True) -> list[tuple[str, str]]:
    """``(profile_id, <column> JSON text)`` of profiles of ``ws`` (live ones when ``live_only``),
    optionally only ``ids`` and/or rows whose text contains ``containing`` (one of them, for
    several); read on the raw DBAPI cursor (SQLAlchemy's per-row handling costs more than the query
    at 1M rows). The ids go as one JSON array (SQLite ``json_each``) or one array parameter (PostgreSQL ``= ANY``).

    ``model_tags`` (profile_scores): with ``ids``, every profile among them with its text (``{}``
    without a row); without, the rows of live profiles (checked in ``ix_profiles_live``)."""
    if column not in _JSON_COLUMNS:
        raise ValueError(f"not a JSON column of profiles: {column!r}")
    sqlite = conn.dialect.name == "sqlite"
    ph = "?" if sqlite else "%s"
    # with ids on SQLite, "+workspace_id" keeps the planner on the primary key (it would otherwise
    # walk the workspace's whole index range for every call: a full scan per chunk at 1M profiles)
    plus = "+" if sqlite and ids is not None else ""
    live = " AND merged_into IS NULL" if live_only else ""
    if column == "tags":
        key, text = "profile_id", "tags"
        sql = f"SELECT profile_id, tags FROM profiles WHERE {plus}workspace_id = {ph}{live}"
    elif ids is not None:  # the profiles (live or not), each with its model tags or {}
        key, text = "p.profile_id", "coalesce(s.model_tags, '{}')"
        sql = (f"SELECT p.profile_id, {text} FROM profiles p LEFT JOIN profile_scores s ON s.workspace_id = "
               f"p.workspace_id AND s.profile_id = p.profile_id WHERE {plus}p.workspace_id = {ph}{live}")
    else:  # the rows of the live profiles, each checked in ix_profiles_live
        key, text = "s.profile_id", "s.model_tags"
        join = ("JOIN profiles p INDEXED BY ix_profiles_live" if sqlite else "JOIN profiles p") if live_only else ""
        on = " ON p.workspace_id = s.workspace_id AND p.profile_id = s.profile_id" if live_only else ""
        sql = f"SELECT s.profile_id, s.model_tags FROM profile_scores s {join}{on} WHERE s.workspace_id = {ph}{live}"
    params: list[Any] = [ws]
    if ids is not None:
        if sqlite:
            sql += f" AND {key} IN (SELECT value FROM json_each(?))"
            params.append(orjson.dumps(list(ids)).decode())
        else:
            sql += f" AND {key} = ANY(%s)"
            params.append(list(ids))
    if containing is not None:
        needles = [containing] if isinstance(containing, str) else list(containing)
        find = "instr" if sqlite else "strpos"
        sql += " AND (" + " OR ".join([f"{find}({text}, {ph}) > 0"] * len(needles)) + ")"
        params.extend(needles)
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    finally:
        cur.close()


def update_json_rows(conn: sa.Connection, column: str, rows: Sequence[tuple[str, str]], *, ws: str | None = None,
                     at: datetime | None = None) -> None:
    """Set ``<column> = json`` for each ``(json, profile_id)`` inside the caller's transaction: one
    prepared statement run for every row (SQLite ``executemany``), or one ``UPDATE ... FROM
    unnest(...)`` (PostgreSQL). ``model_tags`` (workspace ``ws`` needed) are upserted: a profile
    without a ``profile_scores`` row gets one (its ``updated_at``, when its scores changed: ``at``)."""
    if column not in _JSON_COLUMNS:
        raise ValueError(f"not a JSON column of profiles: {column!r}")
    if not rows:
        return
    cur = conn.connection.cursor()
    try:
        if column == "model_tags":
            if ws is None:
                raise ValueError("model_tags rows need their workspace")
            t = timestamp_param(conn, at or utcnow())
            if conn.dialect.name == "sqlite":
                cur.executemany("INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
                                "VALUES (?, ?, '{}', ?, ?) ON CONFLICT (workspace_id, profile_id) DO UPDATE SET "
                                "model_tags = excluded.model_tags", [(ws, pid, t, v) for v, pid in rows])
            else:
                cur.execute("INSERT INTO profile_scores (workspace_id, profile_id, scores, updated_at, model_tags) "
                            "SELECT %s, u.id, '{}', %s, u.v FROM unnest(%s::text[], %s::text[]) AS u(v, id) "
                            "ON CONFLICT (workspace_id, profile_id) DO UPDATE SET model_tags = excluded.model_tags",
                            (ws, t, [r[0] for r in rows], [r[1] for r in rows]))
            return
        if conn.dialect.name == "sqlite":
            cur.executemany(f"UPDATE profiles SET {column} = ? WHERE profile_id = ?", rows)
        else:
            cur.execute(f"UPDATE profiles AS p SET {column} = u.v FROM unnest(%s::text[], %s::text[]) AS u(v, id) "
                        "WHERE p.profile_id = u.id", ([r[0] for r in rows], [r[1] for r in rows]))
    finally:
        cur.close()


def _parse_cell(v: str, vt: str) -> Any:
    v = v.strip()
    if vt == "boolean":
        low = v.lower()
        if low in ("true", "1", "yes", "y", "是"):
            return True
        return False if low in ("false", "0", "no", "n", "否") else v
    if vt == "number":
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _def_json(d: TagDefinition) -> str:
    return orjson.dumps({"values": d.values, "rules": [{"value": r.value, "rule": r.rule} for r in d.rules]}).decode()


def _tag_dict(r: Any) -> dict[str, Any]:
    d = orjson.loads(r.definition)
    return {"name": r.name, "kind": r.kind, "value_type": r.value_type, "category": r.category, "owner": r.owner,
            "description": r.description, "values": d.get("values", []), "rules": d.get("rules", []),
            "version": r.version, "status": r.status, "computed_at": to_iso(r.computed_at),
            "created_at": to_iso(r.created_at), "updated_at": to_iso(r.updated_at)}


def _audit(c: sa.Connection, ws: str, actor: str, action: str, target: str) -> None:
    audit.write(c, ws, actor, action, target)
