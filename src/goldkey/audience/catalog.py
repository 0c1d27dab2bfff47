"""The field catalog: every profile field a rule may name, with its type.

Built-in fields (``profile.*``, ``orders.*``) are always there. ``attributes.*`` are inferred from
the profiles' stored values (and may be declared by hand, which wins); ``traits.*``, ``tags.*``
and ``scores.*`` are declared by the trait, tag and model that fill them.

``profile_values(row)`` flattens one profile row into the ``{field: stored value}`` mapping both
evaluators read; ``goldkey.rules.values.coerce`` then types each value by the catalog.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from goldkey.core.clock import utcnow
from goldkey.profiles.scores import merged_tags, with_scores
from goldkey.store.operational import fields, profile_scores, profiles
from goldkey.store.upsert import upsert

BUILTIN_FIELDS: dict[str, str] = {
    "profile.origin": "string",  # existing (known from CRM) | new
    "profile.first_seen_at": "datetime",
    "profile.first_seen_source": "string",
    "profile.last_seen_at": "datetime",
    "profile.identifier_types": "list",  # the identifier types the profile holds (phone, wechat_openid ...)
    "orders.count": "number",
    "orders.revenue": "number",
    "orders.first_order_at": "datetime",
    "orders.last_order_at": "datetime",
    "orders.skus": "list",
    "orders.categories": "list",
}
_ORDER_KEYS = {"orders.count": "orders", "orders.revenue": "revenue", "orders.first_order_at": "first_order_at",
               "orders.last_order_at": "last_order_at", "orders.skus": "skus", "orders.categories": "categories"}
_WORD = re.compile(r"^[^\W\d]\w{0,99}\Z")
_DATEISH = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")

# the profile columns profile_values needs, in this order ("scores" and "model_tags" come from
# profile_scores: use profile_value_select / PROFILE_VALUE_SQL, which join it; profile_values shows the
# model tags among the tags)
PROFILE_VALUE_COLUMNS = (
    "profile_id", "attributes", "traits", "tags", "scores", "model_tags", "order_summary", "origin", "first_seen_at",
    "first_seen_source", "last_seen_at",
)
_SCORE_COLUMNS = ("scores", "model_tags")
# the same as SQL text over ``profiles p LEFT JOIN profile_scores s`` (for raw DBAPI reads)
PROFILE_VALUE_SQL = (
    "SELECT " + ", ".join(f"{'s' if c in _SCORE_COLUMNS else 'p'}.{c}" for c in PROFILE_VALUE_COLUMNS)
    + " FROM profiles p LEFT JOIN profile_scores s ON s.workspace_id = p.workspace_id AND s.profile_id = p.profile_id"
)


def profile_value_select() -> sa.Select[Any]:
    """``SELECT <PROFILE_VALUE_COLUMNS>`` from the profiles joined with their scores (NULL scores: none);
    add the ``where`` of the profiles wanted."""
    cols = [profile_scores.c[c] if c in _SCORE_COLUMNS else profiles.c[c] for c in PROFILE_VALUE_COLUMNS]
    return sa.select(*cols).select_from(with_scores())


def model_tags(row: Mapping[str, Any] | Any) -> Any:
    """The ``model_tags`` of a profile row (None: a row selected without them)."""
    return row.get("model_tags") if isinstance(row, Mapping) else getattr(row, "model_tags", None)


def profile_values(row: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Flatten a profile row (a mapping or a Row with PROFILE_VALUE_COLUMNS) to ``{field: value}``."""
    get = row.get if isinstance(row, Mapping) else (lambda k: getattr(row, k))
    out: dict[str, Any] = {
        "profile.origin": get("origin"),
        "profile.first_seen_at": get("first_seen_at"),
        "profile.first_seen_source": get("first_seen_source"),
        "profile.last_seen_at": get("last_seen_at"),
    }
    for source in ("attributes", "traits", "tags", "scores"):
        raw = merged_tags(get("tags"), model_tags(row)) if source == "tags" else get(source)
        data = orjson.loads(raw) if isinstance(raw, str | bytes) else (raw or {})
        for k, v in data.items():
            out[f"{source}.{k}"] = v
    raw = get("order_summary")
    summary = orjson.loads(raw) if isinstance(raw, str | bytes) else (raw or {})
    if summary:
        for f, k in _ORDER_KEYS.items():
            out[f] = summary.get(k)
    return out


def infer_type(values: Iterable[Any]) -> str | None:
    """The catalog type most of ``values`` have (None when there is no usable value)."""
    kinds: Counter[str] = Counter()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds["boolean"] += 1
        elif isinstance(v, int | float):
            kinds["number"] += 1
        elif isinstance(v, datetime | date):
            kinds["datetime"] += 1
        elif isinstance(v, str):
            kinds["datetime" if _DATEISH.match(v.strip()) else "string"] += 1
        elif isinstance(v, list) and all(isinstance(x, str | int | float) for x in v):
            kinds["list"] += 1
    if not kinds:
        return None
    return kinds.most_common(1)[0][0]


def load_catalog(conn: sa.Connection | sa.Engine, ws: str) -> dict[str, str]:
    """The workspace's catalog: built-ins plus every stored field, as ``{field: type}``."""
    q = sa.select(fields.c.field, fields.c.type).where(fields.c.workspace_id == ws)
    if isinstance(conn, sa.Engine):
        with conn.connect() as c:
            rows = c.execute(q).all()
    else:
        rows = conn.execute(q).all()
    out = dict(BUILTIN_FIELDS)
    out.update({r.field: r.type for r in rows})
    return out


def list_fields(engine: sa.Engine, ws: str) -> list[dict[str, Any]]:
    """The catalog with sources and labels, for the API."""
    with engine.connect() as c:
        rows = c.execute(sa.select(fields).where(fields.c.workspace_id == ws).order_by(fields.c.field)).all()
    out = [{"field": f, "type": t, "source": "builtin", "label": "", "description": ""}
           for f, t in BUILTIN_FIELDS.items()]
    out += [{"field": r.field, "type": r.type, "source": r.source, "label": r.label, "description": r.description}
            for r in rows]
    return out


def declare_field(conn: sa.Connection, ws: str, field: str, ftype: str, source: str, *, label: str = "",
                  description: str = "") -> None:
    """Create or replace one catalog entry (used by traits, tags, models and hand declarations)."""
    upsert(conn, fields, [{"workspace_id": ws, "field": field, "type": ftype, "source": source, "label": label,
                           "description": description, "updated_at": utcnow()}],
           keys=("workspace_id", "field"))


def remove_field(conn: sa.Connection, ws: str, field: str) -> None:
    """Drop one catalog entry (when its trait or tag is deleted)."""
    conn.execute(sa.delete(fields).where(fields.c.workspace_id == ws, fields.c.field == field))


def infer_attribute_fields(engine: sa.Engine, ws: str, sample: int = 20_000) -> dict[str, str]:
    """Infer ``attributes.*`` types from the most recent profiles and record new or changed ones
    (hand-declared types are kept). Returns the inferred ``{field: type}``."""
    with engine.connect() as c:
        rows = c.execute(
            sa.select(profiles.c.attributes)
            .where(profiles.c.workspace_id == ws, profiles.c.merged_into.is_(None))
            .order_by(profiles.c.profile_id.desc())
            .limit(sample)
        ).all()
        known = {r.field: (r.type, r.source) for r in c.execute(
            sa.select(fields.c.field, fields.c.type, fields.c.source).where(fields.c.workspace_id == ws))}
    seen: dict[str, list[Any]] = {}
    for r in rows:
        for k, v in orjson.loads(r.attributes).items():
            if _WORD.match(k) and not isinstance(v, dict):
                seen.setdefault(k, []).append(v)
    inferred = {f"attributes.{k}": t for k, vals in seen.items() if (t := infer_type(vals)) is not None}
    changed = {f: t for f, t in inferred.items() if f not in known or (known[f][1] == "inferred" and known[f][0] != t)}
    if changed:
        with engine.begin() as c:
            for f, t in changed.items():
                declare_field(c, ws, f, t, "inferred")
    return inferred
