"""Imports of customers (CRM), orders with order lines, products and feedback from CSV, Excel and
Parquet: read, map columns, clean (``collect.cleaning``), then write through the single writer.

Rejected rows go to the quarantine with their reason; nothing is dropped silently. Re-importing
the same file is idempotent: every kind is keyed (customers by identifiers, orders by order id,
products by SKU, feedback by feedback id), and an identical file with an identical mapping that
was imported already is reported as ``unchanged`` without being written again.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import sqlalchemy as sa

from goldkey.collect.cleaning import REFUND_STATUSES, CleaningOptions, CleanResult, Rejection, clean
from goldkey.collect.import_schemas import CONSENT_FIELDS, RECORD, SCHEMAS, ImportSchema
from goldkey.collect.reading import ImportFileError, MappingError, apply_mapping, file_digest, read_table
from goldkey.collect.writer import WriteContext, Writer, _follow
from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.core.ids import new_id
from goldkey.govern.consent import merged_away_owners, record_decisions, standing_merges
from goldkey.identity.graph import UnitOfWork, executemany, fetch_in, ts_column, ts_param
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.ops.metrics import METRICS
from goldkey.store.operational import feedback, imports, products, quarantine
from goldkey.store.upsert import upsert

log = logging.getLogger(__name__)

IDENTIFIER_FIELDS = ("crm_id", "user_id", "phone", "email", "wechat_openid", "wechat_unionid", "device_id")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class ImportSummary:
    """The outcome of one import."""

    import_id: str
    kind: str
    status: str
    rows_read: int
    accepted: int
    quarantined: int
    duplicates_merged: int
    filename: str
    # the profiles this import changed (attributes, consents, orders, feedback); not part of the
    # summary a user sees, handed to the import's profile listeners (real-time segments)
    profile_ids: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("profile_ids", None)
        return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return as_utc(v).isoformat()  # type: ignore[union-attr]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


# -- columnwise building blocks ---------------------------------------------------------------
_NOT_ATTRIBUTES = ("__record", "extra", "__dedupe_key", *CONSENT_FIELDS, "consent_updated_at")


def _utc(e: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A Datetime expression in UTC (naive values are UTC already, as ``as_utc`` takes them)."""
    if dtype.time_zone is None:  # type: ignore[attr-defined]
        return e.dt.replace_time_zone("UTC")
    return e.dt.convert_time_zone("UTC")


def _iso_expr(e: pl.Expr) -> pl.Expr:
    """``datetime.isoformat()`` of aware UTC datetimes (microseconds only when there are any)."""
    return (
        pl.when(e.dt.microsecond() == 0)
        .then(e.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
        .otherwise(e.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
    )


def _iso(s: pl.Series) -> pl.Series:
    return pl.select(_iso_expr(_utc(pl.lit(s), s.dtype))).to_series()


# characters JSON (and orjson) escape inside a string: a text without them is its own JSON body
_JSON_ESCAPED = r'["\\\x00-\x1f]'


def _encoded(e: pl.Expr) -> pl.Expr:
    """The JSON encoding of each value (polars' encoder, as orjson writes it)."""
    return pl.struct(e.alias("v")).struct.json_encode().str.strip_prefix('{"v":').str.strip_suffix("}")


def _json_member(key: str, e: pl.Expr, dtype: pl.DataType, plain: bool) -> pl.Expr | None:
    """``"key":<value as JSON>`` where the value is not null (the encoding of ``_jsonable`` +
    orjson), else null; None when the type needs Python. ``plain``: the (text) values hold no
    character JSON escapes, so quoting them is their encoding. (``concat_str`` is null where any
    part is.)"""
    head = pl.lit(orjson.dumps(key).decode() + ":")
    if dtype == pl.Utf8 and plain:
        return pl.concat_str([head, pl.lit('"'), e, pl.lit('"')])
    if dtype.is_integer():
        return pl.concat_str([head, e.cast(pl.Utf8)])
    if dtype == pl.Boolean:
        return pl.concat_str([head, pl.when(e).then(pl.lit("true")).when(~e).then(pl.lit("false"))])
    if isinstance(dtype, pl.Datetime):
        # isoformat(): microseconds only when there are any
        iso = _utc(e, dtype).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f").str.strip_suffix(".000000")
        return pl.concat_str([head, pl.lit('"'), iso, pl.lit('+00:00"')])
    if dtype == pl.Date:
        return pl.concat_str([head, pl.lit('"'), e.dt.strftime("%Y-%m-%d"), pl.lit('"')])
    if dtype == pl.Utf8 or dtype == pl.Float64 or dtype == pl.Float32:
        text = _encoded(e if dtype == pl.Utf8 else e.cast(pl.Float64))  # "null" for null: guarded
        return pl.when(e.is_not_null()).then(pl.concat_str([head, text]))
    return None


def attribute_json(df: pl.DataFrame) -> pl.Series:
    """Each customer row's attributes as JSON text: the ``extra`` entries, then every other
    column, leaving out nulls (a column's value wins over an ``extra`` entry of the same name).

    Columns (and ``extra`` entries) without any value are left out up front; text values are
    quoted as they are unless the column holds a character JSON escapes."""
    cols = [c for c in df.columns if c not in _NOT_ATTRIBUTES]
    extra_t = df.schema.get("extra")
    if extra_t is not None and not isinstance(extra_t, pl.Struct):
        return _attribute_json_py(df)
    extra_fields = list(extra_t.fields) if isinstance(extra_t, pl.Struct) else []
    # (name, value expression, dtype, condition) of every member that has a value somewhere
    candidates: list[tuple[str, pl.Expr, pl.DataType, pl.Expr | None]] = []
    for f in extra_fields:
        e = pl.col("extra").struct.field(f.name)
        candidates.append((f.name, e, f.dtype, pl.col(f.name).is_null() if f.name in cols else None))
    candidates += [(c, pl.col(c), df.schema[c], None) for c in cols]
    if not candidates or df.height == 0:
        return pl.Series("attributes", ["{}"] * df.height, pl.Utf8)
    probes = [e.is_not_null().any().alias(f"n{i}") for i, (_, e, _, _) in enumerate(candidates)]
    probes += [
        e.str.contains(_JSON_ESCAPED).any().alias(f"x{i}")
        for i, (_, e, t, _) in enumerate(candidates)
        if t == pl.Utf8
    ]
    facts = df.select(probes).row(0, named=True)
    members: list[pl.Expr] = []
    for i, (name, e, dtype, cond) in enumerate(candidates):
        if not facts[f"n{i}"]:
            continue  # no value in any row: no member anywhere
        m = _json_member(name, e, dtype, plain=not facts.get(f"x{i}", True))
        if m is None:
            return _attribute_json_py(df)
        members.append(m if cond is None else pl.when(cond).then(m))
    if not members:
        return pl.Series("attributes", ["{}"] * df.height, pl.Utf8)
    body = pl.concat_str(members, separator=",", ignore_nulls=True)
    return df.select((pl.lit("{") + body + pl.lit("}")).alias("attributes")).to_series()


def _attribute_json_py(df: pl.DataFrame) -> pl.Series:
    out = []
    for r in df.iter_rows(named=True):
        a: dict[str, Any] = {}
        extra = r.get("extra")
        if isinstance(extra, str) and extra:
            extra = orjson.loads(extra)
        if isinstance(extra, dict):
            a.update({k: v for k, v in extra.items() if v is not None})
        for k, v in r.items():
            if k in _NOT_ATTRIBUTES or v is None:
                continue
            a[k] = _jsonable(v)
        out.append(orjson.dumps(a, default=str).decode())
    return pl.Series("attributes", out, pl.Utf8)


def _row_times(df: pl.DataFrame, at_field: str | None) -> pl.Series:
    """Each row's time (``at_field``, UTC; now where missing or without the column)."""
    now = utcnow()
    if at_field and at_field in df.columns and isinstance(df.schema[at_field], pl.Datetime):
        at = df[at_field]
        at = at.dt.replace_time_zone("UTC") if at.dtype.time_zone is None else at.dt.convert_time_zone("UTC")  # type: ignore[union-attr]
        return at.fill_null(now)
    if at_field and at_field in df.columns:  # not a datetime column: value by value
        return pl.Series([as_utc(v) if v else now for v in df[at_field].to_list()], dtype=pl.Datetime("us", "UTC"))
    return pl.repeat(now, df.height, eager=True, dtype=pl.Datetime("us", "UTC"))


def _known_from_records(conn: sa.Connection, pids: list[str], fresh: pl.Series, at: pl.Series, source: str) -> None:
    """The profiles an order or feedback import found rather than created are known to the brand:
    ``existing``, and first seen at their earliest record when that is earlier than what they had
    (``source``, e.g. ``import:orders``). The profiles it created were made so already, so the
    same records give the same origin and first-seen time whichever came first, import or app."""
    frame = pl.DataFrame({"pid": pl.Series(pids, dtype=pl.Utf8), "at": at, "fresh": fresh})
    if frame.height == 0:
        return
    span = frame.group_by("pid", maintain_order=True).agg(pl.col("at").min().alias("first"),
                                                          pl.col("at").max().alias("last"),
                                                          pl.col("fresh").all())
    ids = span["pid"].to_list()
    first_of = dict(zip(ids, ts_column(conn, span["first"]), strict=True))
    # a record dated in the future (a typo, a placeholder) is no activity after the import itself
    last_of = dict(zip(ids, ts_column(conn, span["last"].clip(upper_bound=utcnow())), strict=True))
    found = set(span.filter(pl.col("fresh").not_())["pid"].to_list())
    # only the profiles that change (a re-import, or records of known customers, change none)
    before, after = _time_order(conn)
    stale, later = [], []
    for pid, origin, first, last in fetch_in(
            conn, "SELECT profile_id, origin, first_seen_at, last_seen_at FROM profiles WHERE profile_id IN ({in})",
            [], ids):
        if pid in found and (origin != "existing" or before(first_of[pid], first)):
            stale.append(pid)
        # a record is activity: last seen at the latest one when that is later (a profile this
        # import created was dated by the first of its rows the file held)
        if last is None or after(last_of[pid], last):
            later.append((last_of[pid], pid))
    mark_known(conn, {pid: (first_of[pid], source) for pid in stale})
    executemany(conn, "UPDATE profiles SET last_seen_at = ? WHERE profile_id = ?", later)


def mark_known(conn: sa.Connection, firsts: Mapping[str, tuple[Any, str]]) -> None:
    """Make each profile of ``firsts`` (profile -> (earliest record time as a bulk timestamp
    parameter, see ``ts_column`` / ``ts_param``, and the record's source such as ``import:orders``))
    an ``existing`` customer, first seen at that time when it is earlier than what it had: one
    statement for all of them (an import's found profiles, or the two profiles of an undo)."""
    if not firsts:
        return
    now = ts_param(conn)(utcnow())
    rows = [(t, source, t, orjson.dumps({"import": source}).decode(), t, t, now, pid, t)
            for pid, (t, source) in firsts.items()]
    executemany(
        conn,
        """UPDATE profiles SET origin = 'existing',
               first_seen_source = CASE WHEN ? < first_seen_at THEN ? ELSE first_seen_source END,
               first_seen_context = CASE WHEN ? < first_seen_at THEN ? ELSE first_seen_context END,
               first_seen_at = CASE WHEN ? < first_seen_at THEN ? ELSE first_seen_at END,
               updated_at = ?
           WHERE profile_id = ? AND (origin <> 'existing' OR ? < first_seen_at)""",
        rows,
    )


def _time_order(conn: sa.Connection) -> tuple[Callable[[str, Any], bool], Callable[[str, Any], bool]]:
    """Return ``(before, after)``: is ``ts`` (a bulk timestamp parameter, see ``ts_column``) earlier
    / later than a DateTime value as the DBAPI cursor reads it back?"""
    if conn.dialect.name == "sqlite":  # both text in the same fixed-width form
        return (lambda ts, stored: ts < stored), (lambda ts, stored: ts > stored)
    return (lambda ts, stored: datetime.fromisoformat(ts) < as_utc(stored),  # type: ignore[operator]
            lambda ts, stored: datetime.fromisoformat(ts) > as_utc(stored))  # type: ignore[operator]


def _as_text(values: list[Any]) -> pl.Series:
    """Python values as the text ``normalize_identifier`` reads them as (None where it refuses)."""
    return pl.Series(
        [None if v is None or isinstance(v, (dict, list, bool)) else str(v) for v in values], dtype=pl.Utf8
    )


def _trait_values(df: pl.DataFrame, trait: str) -> pl.Series:
    """A custom identifier's raw values: the column named ``trait``, else the ``extra`` entry."""
    col = df[trait] if trait in df.columns else None
    extra_t = df.schema.get("extra")
    ex = None
    if isinstance(extra_t, pl.Struct):
        if trait in {f.name for f in extra_t.fields}:
            ex = df["extra"].struct.field(trait)
    elif extra_t is not None:  # JSON text: value by value
        vals = []
        for e in df["extra"].to_list():
            if isinstance(e, str) and e:
                e = orjson.loads(e)
            vals.append(e.get(trait) if isinstance(e, dict) else None)
        ex = _as_text(vals)
    if ex is None:
        return col if col is not None else pl.Series(trait, [None] * df.height, pl.Utf8)
    if col is None:
        return ex.alias(trait)
    if col.dtype == ex.dtype:
        return pl.select(pl.coalesce(pl.lit(col), pl.lit(ex))).to_series().alias(trait)
    return _as_text([a if a is not None else b for a, b in zip(col.to_list(), ex.to_list(), strict=True)]).alias(trait)


def identifier_columns(graph: Any, ws: str, df: pl.DataFrame) -> list[tuple[str, pl.Series]]:
    """``(identifier type, raw values)`` of the identifiers ``df``'s rows name their customer by:
    the built-in identifier columns present, then the workspace's custom identifier types (read
    from their traits)."""
    raw: list[tuple[str, pl.Series]] = [(f, df[f]) for f in IDENTIFIER_FIELDS if f in df.columns]
    for name, trait in graph.custom_identifiers(ws):
        raw.append((name, _trait_values(df, trait)))
    return raw


def named_identifiers(graph: Any, ws: str, df: pl.DataFrame) -> pl.Series:
    """Per row of ``df``, the identifiers it names its customer by, normalised as identity
    resolution reads them: a JSON object of identifier type -> value (null where the row left the
    type empty or gave a blocked value). Kept with an imported order or feedback record, so that an
    undo of a merge can give the record back to the profile holding those identifiers."""
    raw = identifier_columns(graph, ws, df)
    if not raw:
        return pl.Series("identifiers", [None] * df.height, dtype=pl.Utf8)
    cols = pl.DataFrame({name: graph.normalised_column(ws, name, s).alias(name) for name, s in raw})
    return cols.select(pl.struct(pl.all()).struct.json_encode().alias("identifiers")).to_series()


class Importer:
    """Runs imports for one Goldkey instance."""

    def __init__(self, engine: sa.Engine, writer: Writer, region: str = "CN") -> None:
        self.engine = engine
        self.writer = writer
        self.region = region
        # called with (workspace_id, kind) after an import wrote something (profile facts go stale)
        self.listeners: list[Callable[[str, str], None]] = []
        # called with (workspace_id, profile_ids) after an import changed those profiles
        self.profile_listeners: list[Callable[[str, list[str]], None]] = []

    def run(
        self,
        workspace_id: str,
        kind: str,
        path: Path,
        mapping: dict[str, str] | None = None,
        *,
        filename: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ) -> ImportSummary:
        """Import ``path`` as ``kind`` into the workspace and return the summary.

        Raises InvalidInput for an unknown kind, an unreadable file or a bad mapping (nothing is
        written then).
        """
        schema = SCHEMAS.get(kind)
        if schema is None:
            raise InvalidInput(f"unknown import kind {kind!r}; use one of {', '.join(SCHEMAS)}", field="kind")
        mapping = mapping or {}
        filename = filename or path.name
        digest = file_digest(path)
        mapping_json = orjson.dumps(mapping, option=orjson.OPT_SORT_KEYS).decode()
        if not force:
            prev = self._previous(workspace_id, kind, digest, mapping_json)
            if prev is not None:
                return ImportSummary(
                    prev.import_id,
                    kind,
                    "unchanged",
                    prev.rows_read,
                    prev.accepted,
                    prev.quarantined,
                    prev.duplicates_merged,
                    filename,
                )
        try:
            df = read_table(path)
            df = apply_mapping(df, mapping, schema)
        except MappingError as exc:
            raise InvalidInput(str(exc), field="mapping") from exc
        except ImportFileError as exc:  # named as the user knows the file (an upload is saved under another name)
            raise InvalidInput(f"{filename}: {exc.message}", field="file") from exc
        except OSError as exc:
            raise InvalidInput(str(exc), field="file") from exc
        if progress:
            progress("cleaning", 0, df.height)
        present = frozenset(df.columns)
        options = CleaningOptions(default_region=self.region, blocked=self._blocked(workspace_id, schema))
        result = clean(df, schema, options)
        import_id = new_id("imp")
        with self.engine.begin() as conn:
            conn.execute(
                imports.insert().values(
                    import_id=import_id,
                    workspace_id=workspace_id,
                    kind=kind,
                    filename=filename,
                    file_digest=digest,
                    mapping=mapping_json,
                    status="running",
                    rows_read=result.rows_read,
                    created_at=utcnow(),
                )
            )
        METRICS.import_rows.labels("read").inc(result.rows_read)

        def write(ctx: WriteContext) -> ImportSummary:
            # The write builds millions of short-lived tuples for the bulk statements; the cyclic
            # collector would walk the growing heap again and again for no garbage (reference
            # counting frees them), so it pauses for the import.
            paused = gc.isenabled()
            gc.disable()
            try:
                return self._write(ctx, workspace_id, import_id, kind, schema, result, filename, progress, present)
            finally:
                if paused:
                    gc.enable()

        try:
            summary: ImportSummary = self.writer.run_command(write)
        except BaseException as exc:
            with self.engine.begin() as conn:
                conn.execute(
                    imports.update()
                    .where(imports.c.import_id == import_id)
                    .values(status="failed", error=repr(exc)[:2000], finished_at=utcnow())
                )
            raise
        METRICS.import_rows.labels("accepted").inc(summary.accepted)
        METRICS.import_rows.labels("quarantined").inc(summary.quarantined)
        for listener in self.listeners:
            listener(workspace_id, kind)
        if summary.profile_ids:
            for profile_listener in self.profile_listeners:
                profile_listener(workspace_id, list(summary.profile_ids))
        return summary

    def _previous(self, ws: str, kind: str, digest: str, mapping_json: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(imports)
                .where(
                    imports.c.workspace_id == ws,
                    imports.c.kind == kind,
                    imports.c.file_digest == digest,
                    imports.c.mapping == mapping_json,
                    imports.c.status == "done",
                )
                .order_by(imports.c.created_at.desc())
            ).first()

    def _blocked(self, ws: str, schema: ImportSchema) -> dict[str, frozenset[str]]:
        """The workspace's blocked identifier values, for the cleaning step's de-duplication."""
        if not schema.identifier_fields:
            return {}
        rules = self.writer.graph._rules_of(ws)
        out = {f: rules.blocked_for(f, self.region) for f in schema.identifier_fields}
        out["*"] = rules.blocked_everywhere
        return out

    # -- on the writer thread --------------------------------------------------------------
    def _write(
        self,
        ctx: WriteContext,
        ws: str,
        import_id: str,
        kind: str,
        schema: ImportSchema,
        result: CleanResult,
        filename: str,
        progress: Progress | None,
        present: frozenset[str] = frozenset(),
    ) -> ImportSummary:
        """``present``: the fields the file has a column for."""
        df = result.accepted
        extra_rejections: list[Rejection] = []
        # Orders go to both stores. The analytical transaction is opened first and committed last,
        # after the operational one: anything that fails before the operational commit rolls back
        # both (before, the orders were committed first and a later failure left them owned by
        # profiles that were never created). Should the analytical commit itself fail, the import
        # is reported failed and runs again cleanly (orders are keyed by order_id).
        try:
            with ExitStack() as duck:
                con = duck.enter_context(ctx.analytical.transaction()) if kind == "orders" else None
                accepted, map_ops, touched, rejections = self._write_operational(
                    ctx, ws, import_id, kind, df, result, present, progress, extra_rejections, con)
        except BaseException:
            ctx.graph.invalidate()  # its cache may name profiles a rolled-back transaction made
            if kind == "orders":
                ctx.writer.mark_map_stale()  # merges the operational side kept may have missed the map
            raise
        if kind == "orders":
            with ctx.engine.begin() as conn:
                conn.execute(imports.update().where(imports.c.import_id == import_id).values(status="done"))
        if map_ops and kind != "orders":
            from goldkey.collect.writer import apply_map_ops

            try:
                with ctx.analytical.transaction() as con:
                    apply_map_ops(con, map_ops)
            except BaseException:
                ctx.writer.mark_map_stale()  # the operational side committed: repair at the next commit
                raise
        refresh_statistics(ctx.engine, kind, accepted)
        return ImportSummary(
            import_id, kind, "done", result.rows_read, accepted, len(rejections), result.duplicates_merged, filename,
            tuple(pl.Series(touched, dtype=pl.Utf8).unique().sort().to_list()),
        )

    def _write_operational(
        self, ctx: WriteContext, ws: str, import_id: str, kind: str, df: pl.DataFrame, result: CleanResult,
        present: frozenset[str], progress: Progress | None, extra_rejections: list[Rejection], con: Any,
    ) -> tuple[int, list[Any], list[str], list[Rejection]]:
        """The operational transaction of an import (with ``con``, the open analytical one of orders)."""
        map_ops: list[Any] = []
        touched: list[str] = []
        if kind in ("products", "feedback"):  # text columns of a bounded length (PostgreSQL enforces them)
            df, too_long = _over_long(df, products if kind == "products" else feedback)
            extra_rejections.extend(too_long)
        with ctx.engine.begin() as conn:
            if kind == "products":
                accepted = self._products(conn, ws, df, present)
            elif kind == "customers":
                accepted, map_ops, touched = self._customers(ctx, conn, ws, df, progress)
            elif kind == "feedback":
                accepted, map_ops, touched = self._feedback(ctx, conn, ws, import_id, df, present)
            elif kind == "orders":
                accepted, map_ops, touched = self._orders(ctx, conn, con, ws, import_id, df, progress)
            else:  # pragma: no cover - SCHEMAS and this dispatch are kept in step
                raise InvalidInput(f"unknown import kind {kind!r}", field="kind")
            rejections = list(result.rejected) + extra_rejections
            if rejections:
                now = ts_param(conn)(utcnow())
                source = f"import:{kind}"
                executemany(
                    conn,
                    "INSERT INTO quarantine (workspace_id, source, import_id, record, field, value, reason, raw,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            ws,
                            source,
                            import_id,
                            str(r.record),
                            r.field,
                            None if r.value is None else str(r.value)[:2000],
                            r.reason,
                            orjson.dumps(r.raw, default=str).decode(),
                            now,
                        )
                        for r in rejections
                    ],
                )
            conn.execute(
                imports.update()
                .where(imports.c.import_id == import_id)
                .values(
                    # orders are done once the analytical side commits too (_write): a crash between
                    # the two leaves the import "running", which the next start marks failed
                    status="running" if con is not None else "done",
                    accepted=accepted,
                    quarantined=len(rejections),
                    duplicates_merged=result.duplicates_merged,
                    finished_at=utcnow(),
                )
            )
        return accepted, map_ops, touched, rejections

    @staticmethod
    def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        return df.to_dicts()

    def _resolve_rows(
        self,
        ctx: WriteContext,
        uow: UnitOfWork,
        ws: str,
        df: pl.DataFrame,
        at_field: str | None,
        source: str,
        progress: Progress | None = None,
        stage: str = "resolving",
        attributes: pl.Series | None = None,
    ) -> tuple[list[str], pl.Series]:
        """Resolve every row's customer in bulk (``IdentityGraph.resolve_many``); return the
        profile of each row and the mask of rows that created their profile on their own."""
        graph = ctx.graph
        raw = identifier_columns(graph, ws, df)
        at = _row_times(df, at_field)

        def report(done: int, total: int) -> None:
            if progress:
                progress(stage, done, total)

        return graph.resolve_many(
            uow, ws, raw, at, source, {"import": source}, attributes=attributes, progress=report if progress else None
        )

    def _products(self, conn: sa.Connection, ws: str, df: pl.DataFrame, present: frozenset[str]) -> int:
        now = utcnow()
        cols = [c.name for c in products.columns if c.name not in ("workspace_id", "updated_at")]
        rows = [{**{c: r.get(c) for c in cols}, "workspace_id": ws, "updated_at": now} for r in self._rows(df)]
        # a product imported again keeps what this file has no column for, and what its cell leaves empty
        fields = [c for c in cols if c in present]
        upsert(conn, products, rows, ["workspace_id", "sku"], only={*fields, "updated_at"}, keep=fields)
        return len(rows)

    def _consents(self, conn: sa.Connection, graph: Any, ws: str, df: pl.DataFrame, pids: list[str]) -> None:
        """Record the file's consent columns (``consent_<channel>``) as marketing consent decisions,
        in the import's transaction. A decision is dated ``consent_updated_at``; without it a denial
        is dated at the import and a grant at ``registered_at`` (else the import). It only replaces
        an older one: a later unsubscribe stands against an old export's grant, and the file's
        opt-out stands against a grant recorded before the import.

        A row is the decision of the customer its highest-priority identifier names: when that
        identifier came to the row's profile with a merged-away profile (a standing merge), the
        decision is recorded on the merged-away profile, as an identify's under its ``userId`` is
        (:class:`goldkey.govern.consent.ConsentCollector`): it counts across the merge while it
        stands, never overwrites the survivor's own decision, and goes back with the customer who
        made it on an undo."""
        cols = [c for c in CONSENT_FIELDS if c in df.columns and df[c].null_count() < df.height]
        if not cols:
            return  # no decision anywhere in the file
        pids = self._consent_owners(conn, graph, ws, df, pids)
        utc = pl.Datetime("us", "UTC")
        now = pl.lit(utcnow(), utc)

        def dated(name: str) -> pl.Series:
            if name not in df.columns:
                return pl.Series(name, [None] * df.height, dtype=utc)
            s = df[name]
            if not isinstance(s.dtype, pl.Datetime):  # not typed by the cleaning: value by value
                s = pl.Series(name, [as_utc(v) for v in s.to_list()], dtype=utc)
            tz = s.dtype.time_zone  # type: ignore[union-attr]
            return (s.dt.replace_time_zone("UTC") if tz is None else s.dt.convert_time_zone("UTC")).alias(name)

        records = df["__record"] if "__record" in df.columns else pl.int_range(0, df.height, eager=True)
        frame = pl.DataFrame({"pid": pl.Series(pids, dtype=pl.Utf8), "stated": dated("consent_updated_at"),
                              "registered": dated("registered_at"), "rec": records})
        # Undated, a denial is the file's word now (a CRM export holds the state it was exported in:
        # dated at registration, an opt-out would lose to any grant recorded since); a grant is
        # dated at registration, so that an old export never overturns a later unsubscribe
        undated = pl.when(pl.col("status") == "denied").then(now).otherwise(pl.col("registered"))
        latest: dict[tuple[str, str, str, str], tuple[Any, str, str]] = {}
        for c in cols:
            # per profile, the latest decision (the later row on a tie), as ``keep_newest`` keeps it;
            # profiles in the order of their first decision
            kept = (
                frame.with_columns(df[c].alias("status"))
                .with_columns(pl.coalesce(pl.col("stated"), undated, now).alias("at"))
                .filter(pl.col("status").is_not_null())
                .with_row_index("i")
                .group_by("pid", maintain_order=True)
                .agg(pl.col("at", "status", "rec").sort_by("at", "i").last())
            )
            channel = CONSENT_FIELDS[c]
            for pid, t, status, rec in zip(
                kept["pid"].to_list(), kept["at"].to_list(), kept["status"].to_list(), kept["rec"].to_list(),
                strict=True,
            ):
                latest[(ws, pid, channel, "marketing")] = (as_utc(t), status, f"row {rec}")
        if latest:
            record_decisions(conn, latest, source="import", actor="import:customers", on_live=False)

    @staticmethod
    def _consent_owners(conn: sa.Connection, graph: Any, ws: str, df: pl.DataFrame, pids: list[str]) -> list[str]:
        """Per row, the profile its consent decision belongs to: the row's (live) profile, or the
        merged-away profile that brought the row's highest-priority identifier to it."""
        merged = standing_merges(conn, ws, pids)
        survivors = {r.canonical_id for r in merged}
        if not survivors:
            return pids  # no row's profile holds a merged-away customer: nothing to look at
        rows = [i for i, p in enumerate(pids) if p in survivors]
        raw = identifier_columns(graph, ws, df[rows])
        rank = graph._rules_of(ws).rank
        # the highest-priority identifier each of those rows names: (type, value)
        top: list[tuple[str, str] | None] = [None] * len(rows)
        for name, series in sorted(raw, key=lambda x: rank(x[0])):
            for k, v in enumerate(graph.normalised_column(ws, name, series).to_list()):
                if v is not None and top[k] is None:
                    top[k] = (name, v)
        owner = merged_away_owners(merged, {(ws, *t) for t in top if t is not None})
        out = list(pids)
        for i, t in zip(rows, top, strict=True):
            if t is not None:
                out[i] = owner.get((ws, *t), out[i])
        return out

    def _customers(
        self, ctx: WriteContext, conn: sa.Connection, ws: str, df: pl.DataFrame, progress: Progress | None
    ) -> tuple[int, list[Any], list[str]]:
        attrs = attribute_json(df)
        uow = UnitOfWork(conn)
        pids, fresh = self._resolve_rows(
            ctx, uow, ws, df, "registered_at", "import:customers", progress, attributes=attrs
        )
        ctx.graph.flush(uow)
        if uow.merged:
            canon = _follow(uow.merged)
            pids = [canon.get(p, p) for p in pids]
        self._consents(conn, ctx.graph, ws, df, pids)
        # Profiles a row created on its own were written with its attributes and registration
        # time already; the others (known customers, several rows of one customer) are merged
        # into what the profile holds.
        rest = fresh.not_()
        if not rest.any():
            return df.height, uow.map_ops, pids
        reg = df["registered_at"] if "registered_at" in df.columns else pl.repeat(None, df.height, eager=True)
        if isinstance(reg.dtype, pl.Datetime):
            reg = reg.dt.replace_time_zone("UTC") if reg.dtype.time_zone is None else reg.dt.convert_time_zone("UTC")
        else:
            reg = pl.Series([as_utc(v) for v in reg.to_list()], dtype=pl.Datetime("us", "UTC"))
        frame = pl.DataFrame({"pid": pids, "attrs": attrs, "reg": reg}).filter(rest)
        loads = orjson.loads
        # the attributes each profile receives: one row's JSON as it is, several rows' merged
        incoming: dict[str, str | dict[str, Any]] = {}
        for pid, a in zip(frame["pid"].to_list(), frame["attrs"].to_list(), strict=True):
            prev = incoming.get(pid)
            if prev is None:
                incoming[pid] = a
            else:
                d = loads(prev) if isinstance(prev, str) else prev
                d.update(loads(a))
                incoming[pid] = d
        firsts = frame.group_by("pid", maintain_order=True).agg(pl.col("reg").min())
        first_reg = dict(
            zip(
                firsts["pid"].to_list(),
                zip(ts_column(conn, firsts["reg"]), _iso(firsts["reg"]).to_list(), strict=True),
                strict=True,
            )
        )
        current = {
            r[0]: r[1:]
            for r in fetch_in(
                conn,
                "SELECT profile_id, attributes, origin, first_seen_at FROM profiles WHERE profile_id IN ({in})",
                [],
                list(incoming),
            )
        }
        before = _time_order(conn)[0]
        now = ts_param(conn)(utcnow())
        updates = []
        for pid, a in incoming.items():
            cur_text, origin, cur_first = current[pid]
            if a == cur_text:  # the very attributes it holds (a re-import of the same row)
                text = cur_text
            else:
                cur = loads(cur_text)
                merged = {**cur, **(loads(a) if isinstance(a, str) else a)}
                text = cur_text if merged == cur else orjson.dumps(merged).decode()
            fs, iso = first_reg[pid]
            earlier = fs is not None and before(fs, cur_first)
            if text is cur_text and origin == "existing" and not earlier:
                continue  # nothing changes (an identical re-import): no write
            ctx_json = orjson.dumps({"import": "customers", "registered_at": iso}).decode() if earlier else None
            updates.append((text, fs, fs, ctx_json, fs, fs, now, pid))
        executemany(
            conn,
            """UPDATE profiles SET attributes = ?, origin = 'existing',
                   first_seen_source = CASE WHEN ? < first_seen_at THEN 'import:customers'
                                            ELSE first_seen_source END,
                   first_seen_context = CASE WHEN ? < first_seen_at THEN ? ELSE first_seen_context END,
                   first_seen_at = CASE WHEN ? < first_seen_at THEN ? ELSE first_seen_at END,
                   updated_at = ?
               WHERE profile_id = ?""",
            updates,
        )
        return df.height, uow.map_ops, pids

    def _feedback(
        self, ctx: WriteContext, conn: sa.Connection, ws: str, import_id: str, df: pl.DataFrame,
        present: frozenset[str],
    ) -> tuple[int, list[Any], list[str]]:
        uow = UnitOfWork(conn)
        pids, fresh = self._resolve_rows(ctx, uow, ws, df, "created_at", "import:feedback")
        ctx.graph.flush(uow)
        if uow.merged:  # a row that merged two profiles: the survivor is the one known since its date
            canon = _follow(uow.merged)
            pids = [canon.get(p, p) for p in pids]
        _known_from_records(conn, pids, fresh, _row_times(df, "created_at"), "import:feedback")
        rows = self._rows(df)
        cols = [c.name for c in feedback.columns
                if c.name not in ("workspace_id", "profile_id", "import_id", "identifiers")]
        named = named_identifiers(ctx.graph, ws, df).to_list()
        out = []
        for r, pid, ids in zip(rows, pids, named, strict=True):
            d = {c: r.get(c) for c in cols}
            d.update(workspace_id=ws, profile_id=pid, import_id=import_id, status=r.get("status") or "open",
                     identifiers=ids)
            out.append(d)
        # a record imported again keeps what this file has no column for (a status file need not
        # repeat the text), and what its cell leaves empty; its owner follows its identifiers
        fields = [c for c in cols if c in present]
        upsert(conn, feedback, out, ["workspace_id", "feedback_id"],
               only={*fields, "profile_id", "import_id", "identifiers"}, keep=fields)
        return len(rows), uow.map_ops, pids

    def _orders(
        self,
        ctx: WriteContext,
        conn: sa.Connection,
        con: Any,
        ws: str,
        import_id: str,
        df: pl.DataFrame,
        progress: Progress | None,
    ) -> tuple[int, list[Any], list[str]]:
        if df.height == 0:
            return 0, [], []
        if "line_amount" not in df.columns:
            df = df.with_columns(pl.lit(None, pl.Float64).alias("line_amount"))
        # one customer resolution per order (its first line), from the columns it reads
        custom = [trait for _, trait in ctx.graph.custom_identifiers(ws)]
        needed = {"order_id", "ordered_at", "extra", *IDENTIFIER_FIELDS, *custom}
        firsts = df.select([c for c in df.columns if c in needed]).group_by("order_id", maintain_order=True).first()
        uow = UnitOfWork(conn)
        pids, fresh = self._resolve_rows(ctx, uow, ws, firsts, "ordered_at", "import:orders", progress)
        ctx.graph.flush(uow)
        if uow.merged:
            canon = _follow(uow.merged)
            pids = [canon.get(p, p) for p in pids]
        _known_from_records(conn, pids, fresh, _row_times(firsts, "ordered_at"), "import:orders")
        owner = pl.DataFrame({"order_id": firsts["order_id"], "profile_id": pl.Series(pids, dtype=pl.Utf8),
                              "identifiers": named_identifiers(ctx.graph, ws, firsts)})
        lines = df.with_columns((pl.int_range(pl.len()).over("order_id") + 1).cast(pl.Int32).alias("line_no"))

        def col(name: str, dtype: pl.DataType) -> pl.Expr:
            return pl.col(name).cast(dtype) if name in lines.columns else pl.lit(None, dtype).alias(name)

        lines_out = lines.select(
            pl.lit(ws).alias("workspace_id"),
            pl.col("order_id"),
            pl.col("line_no"),
            col("sku", pl.Utf8),
            col("product_name", pl.Utf8),
            col("category", pl.Utf8),
            col("quantity", pl.Int32),
            col("unit_price", pl.Float64),
            col("line_amount", pl.Float64),
        )
        orders_out = (
            lines.group_by("order_id", maintain_order=True)
            .agg(
                pl.col("ordered_at").first(),
                pl.col("line_amount").sum().round(2).alias("total_amount"),
                *[col(c, pl.Utf8).first() for c in ("currency", "channel", "store", "region", "status")],
            )
            .join(owner, on="order_id")
            .select(
                pl.lit(ws).alias("workspace_id"),
                "order_id",
                "profile_id",
                pl.col("ordered_at").dt.convert_time_zone("UTC"),
                "total_amount",
                "currency",
                "channel",
                "store",
                "region",
                "status",
                pl.lit(import_id).alias("import_id"),
                "identifiers",
            )
        )
        order_ids = orders_out["order_id"].to_list()
        from goldkey.collect.writer import apply_map_ops

        # in the caller's analytical transaction ``con``, committed after the operational one
        con.register("_ids", pa.table({"order_id": order_ids}))
        try:
            # a re-imported order may have changed hands: its previous owner is recounted too
            previous = con.execute(
                "SELECT DISTINCT canonical_id FROM orders_resolved WHERE workspace_id = ? "
                "AND order_id IN (SELECT order_id FROM _ids)",
                [ws],
            ).fetchall()
            con.execute(
                "DELETE FROM orders WHERE workspace_id = ? AND order_id IN (SELECT order_id FROM _ids)", [ws]
            )
            con.execute(
                "DELETE FROM order_lines WHERE workspace_id = ? AND order_id IN (SELECT order_id FROM _ids)", [ws]
            )
        finally:
            con.unregister("_ids")
        ctx.analytical.append("orders", orders_out.to_arrow(), con)
        ctx.analytical.append("order_lines", lines_out.to_arrow(), con)
        apply_map_ops(con, uow.map_ops)
        affected = set(pl.Series(pids, dtype=pl.Utf8).unique().to_list()) | {r[0] for r in previous}
        refresh_order_summaries(ctx, conn, ws, sorted(affected), con)
        return df.height, [], sorted(affected)


def _over_long(df: pl.DataFrame, table: sa.Table) -> tuple[pl.DataFrame, list[Rejection]]:
    """The rows of ``df`` whose values fit ``table``'s bounded text columns, and a rejection for
    each other row (naming its first value too long): on PostgreSQL one such value failed the whole
    import with a database error; on SQLite it was stored past the column's length."""
    limits = {c.name: c.type.length for c in table.columns
              if isinstance(c.type, sa.String) and c.type.length and c.name in df.columns}
    if not limits or df.height == 0:
        return df, []
    over = pl.any_horizontal([pl.col(c).cast(pl.Utf8).str.len_chars() > n for c, n in limits.items()]).fill_null(False)
    bad = df.filter(over)
    if bad.height == 0:
        return df, []
    out = []
    for row in bad.iter_rows(named=True):
        c, n = next((c, n) for c, n in limits.items() if row.get(c) is not None and len(str(row[c])) > n)
        v = str(row[c])
        out.append(Rejection(record=int(row.get(RECORD) or 0), field=c, value=v[:200] + ("…" if len(v) > 200 else ""),
                             reason=f"field '{c}': {len(v)} characters; at most {n}",
                             raw={k: (None if x is None else str(x)) for k, x in row.items() if k != RECORD}))
    return df.filter(~over), out


def refresh_order_summaries(ctx: WriteContext, conn: sa.Connection, ws: str, profile_ids: list[str],
                            con: Any = None) -> None:
    """Recompute the order summary of the given live profiles from the analytical store (read
    through ``con``, an open analytical transaction, when given: it sees its own writes)."""
    if not profile_ids:
        return
    excluded = excluded_statuses()
    refunds = sorted({r.strip().lower() for r in REFUND_STATUSES})
    cur = ctx.analytical.cursor() if con is None else con
    try:
        cur.register("_p", pa.table({"canonical_id": pa.array(profile_ids, pa.string())}))
        # Only these profiles' orders and their lines are read, not the workspace's; SKUs and
        # categories are made distinct before they are listed (far cheaper than listing per order,
        # flattening and making the lists distinct).
        # Purchases only (goldkey.insight.purchases: a refunded or cancelled order is no purchase),
        # as every model counts them; refunds and cancellations are counted beside them. Revenue is
        # also given per currency: a sum across currencies means nothing.
        tbl = cur.sql(
            f"""
            WITH all_o AS (
                SELECT o.canonical_id, o.order_id, o.total_amount, o.ordered_at,
                       coalesce(nullif(upper(trim(o.currency)), ''), '?') AS currency,
                       lower(trim(coalesce(o.status, ''))) AS st
                FROM orders_resolved o SEMI JOIN _p USING (canonical_id)
                WHERE o.workspace_id = ?),
            o AS (SELECT * FROM all_o WHERE {status_filter("st")}),
            a AS (
                SELECT canonical_id, count(*) AS orders, round(sum(total_amount), 2) AS revenue,
                       epoch_us(min(ordered_at)) AS first_us, epoch_us(max(ordered_at)) AS last_us
                FROM o GROUP BY canonical_id),
            cur AS (
                SELECT canonical_id,
                       to_json(map(list(currency ORDER BY currency), list(amount ORDER BY currency)))::VARCHAR
                           AS revenue_by_currency
                FROM (SELECT canonical_id, currency, round(sum(total_amount), 2) AS amount
                      FROM o GROUP BY canonical_id, currency)
                GROUP BY canonical_id),
            n AS (
                SELECT canonical_id, count(*) FILTER (WHERE list_contains(?, st)) AS refunds,
                       count(*) FILTER (WHERE NOT list_contains(?, st) AND NOT {status_filter("st")})
                           AS cancellations
                FROM all_o GROUP BY canonical_id),
            ol AS (
                SELECT o.canonical_id, l.sku, l.category
                FROM order_lines l JOIN o USING (order_id)
                WHERE l.workspace_id = ?),
            s AS (
                SELECT canonical_id, list(sku ORDER BY sku) AS skus
                FROM (SELECT DISTINCT canonical_id, sku FROM ol WHERE sku IS NOT NULL)
                GROUP BY canonical_id),
            c AS (
                SELECT canonical_id, list(category ORDER BY category) AS categories
                FROM (SELECT DISTINCT canonical_id, category FROM ol WHERE category IS NOT NULL)
                GROUP BY canonical_id)
            SELECT n.canonical_id, coalesce(a.orders, 0) AS orders, coalesce(a.revenue, 0) AS revenue,
                   a.first_us, a.last_us, cur.revenue_by_currency, n.refunds, n.cancellations, s.skus,
                   c.categories
            FROM n LEFT JOIN a USING (canonical_id) LEFT JOIN cur USING (canonical_id)
                LEFT JOIN s USING (canonical_id) LEFT JOIN c USING (canonical_id)
            """,
            params=[ws, excluded, refunds, refunds, excluded, ws],
        ).to_arrow_table()
        cur.unregister("_p")
    finally:
        if con is None:
            cur.close()
    found = pl.from_arrow(tbl)
    assert isinstance(found, pl.DataFrame)
    empty = pl.lit([], pl.List(pl.Utf8))
    when = {c: pl.col(c).cast(pl.Datetime("us", "UTC")) for c in ("first_us", "last_us")}
    summaries = found.select(
        pl.col("canonical_id"),
        pl.struct(
            pl.col("orders").cast(pl.Int64),
            pl.col("revenue").cast(pl.Float64),
            _iso_expr(when["first_us"]).alias("first_order_at"),
            _iso_expr(when["last_us"]).alias("last_order_at"),
            pl.col("refunds").cast(pl.Int64),
            pl.col("cancellations").cast(pl.Int64),
            pl.col("skus").cast(pl.List(pl.Utf8)).fill_null(empty),
            pl.col("categories").cast(pl.List(pl.Utf8)).fill_null(empty),
        )
        .struct.json_encode()
        .str.strip_suffix("}")
        .add(pl.lit(',"revenue_by_currency":'))
        .add(pl.col("revenue_by_currency").fill_null("{}"))
        .add(pl.lit("}"))
        .alias("summary"),
    )
    seen = set(summaries["canonical_id"].to_list())
    missing = [p for p in profile_ids if p not in seen]
    if missing:
        summaries = pl.concat(
            [summaries, pl.DataFrame({"canonical_id": missing, "summary": ["{}"] * len(missing)})],
            how="vertical_relaxed",
        )
    # in key order (neighbouring rows share pages); unchanged summaries are not rewritten
    summaries = summaries.sort("canonical_id")
    s, p = summaries["summary"].to_list(), summaries["canonical_id"].to_list()
    executemany(
        conn,
        "UPDATE profiles SET order_summary = ? WHERE profile_id = ? AND order_summary <> ?",
        list(zip(s, p, s, strict=True)),
    )


def list_quarantine(
    engine: sa.Engine, ws: str, import_id: str | None = None, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Return quarantined records of a workspace (optionally of one import), newest first."""
    q = sa.select(quarantine).where(quarantine.c.workspace_id == ws)
    if import_id:
        q = q.where(quarantine.c.import_id == import_id)
    q = q.order_by(quarantine.c.quarantine_id.desc()).limit(limit).offset(offset)
    with engine.connect() as conn:
        return [
            {
                "quarantine_id": r.quarantine_id,
                "source": r.source,
                "import_id": r.import_id,
                "record": r.record,
                "field": r.field,
                "value": r.value,
                "reason": r.reason,
                "raw": orjson.loads(r.raw),
                "created_at": as_utc(r.created_at),
            }
            for r in conn.execute(q)
        ]


def get_import(engine: sa.Engine, ws: str, import_id: str) -> dict[str, Any]:
    """Return one import's record; raise NotFound."""
    with engine.connect() as conn:
        r = conn.execute(
            sa.select(imports).where(imports.c.workspace_id == ws, imports.c.import_id == import_id)
        ).first()
    if r is None:
        raise NotFound(f"import {import_id} not found")
    return _import_dict(r)


def list_imports(engine: sa.Engine, ws: str, limit: int = 100) -> list[dict[str, Any]]:
    """Return the workspace's imports, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(imports).where(imports.c.workspace_id == ws).order_by(imports.c.created_at.desc()).limit(limit)
        ).all()
    return [_import_dict(r) for r in rows]


def _import_dict(r: Any) -> dict[str, Any]:
    return {
        "import_id": r.import_id,
        "kind": r.kind,
        "filename": r.filename,
        "status": r.status,
        "rows_read": r.rows_read,
        "accepted": r.accepted,
        "quarantined": r.quarantined,
        "duplicates_merged": r.duplicates_merged,
        "error": r.error,
        "mapping": orjson.loads(r.mapping),
        "created_at": as_utc(r.created_at),
        "finished_at": as_utc(r.finished_at),
    }


# the tables an import of each kind grows, besides profiles and identities
_IMPORT_TABLES = {"customers": ("consents",), "orders": (), "products": ("products",), "feedback": ("feedback",)}
ANALYZE_AFTER_ROWS = 1000


def refresh_statistics(engine: Any, kind: str, rows: int) -> None:
    """On PostgreSQL, ANALYZE the tables a bulk import grew. The planner's row estimates otherwise
    stay at what they were before the load until autovacuum gets to it (never, where it is off): a
    real-time trigger's reservation query, planned for "1 row", took seconds on a freshly loaded
    workspace and 5 ms after an ANALYZE. SQLite plans without table statistics here: nothing to do."""
    if engine.dialect.name != "postgresql" or rows < ANALYZE_AFTER_ROWS:
        return
    tables = ("profiles", "identities", *_IMPORT_TABLES.get(kind, ()))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE " + ", ".join(tables))
    except Exception as exc:  # noqa: BLE001 - statistics are an optimisation: the import is done
        log.warning("ANALYZE after the %s import failed: %s", kind, exc)
