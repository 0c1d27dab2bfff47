"""Imports of customers (CRM), orders with order lines, products and feedback from CSV, Excel and
Parquet: read, map columns, clean (``collect.cleaning``), then write through the single writer.

Rejected rows go to the quarantine with their reason; nothing is dropped silently. Re-importing
the same file is idempotent: every kind is keyed (customers by identifiers, orders by order id,
products by SKU, feedback by feedback id), and an identical file with an identical mapping that
was imported already is reported as ``unchanged`` without being written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import sqlalchemy as sa

from goldkey.collect.cleaning import CleaningOptions, CleanResult, Rejection, clean
from goldkey.collect.import_schemas import SCHEMAS, ImportSchema
from goldkey.collect.reading import ImportFileError, MappingError, apply_mapping, file_digest, read_table
from goldkey.collect.writer import WriteContext, Writer
from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import InvalidInput, NotFound
from goldkey.core.ids import new_id
from goldkey.identity.graph import UnitOfWork
from goldkey.ops.metrics import METRICS
from goldkey.store.operational import feedback, imports, products, profiles, quarantine
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return as_utc(v).isoformat()  # type: ignore[union-attr]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


class Importer:
    """Runs imports for one Goldkey instance."""

    def __init__(self, engine: sa.Engine, writer: Writer, region: str = "CN") -> None:
        self.engine = engine
        self.writer = writer
        self.region = region

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
        except (ImportFileError, OSError) as exc:
            raise InvalidInput(str(exc), field="file") from exc
        if progress:
            progress("cleaning", 0, df.height)
        result = clean(df, schema, CleaningOptions(default_region=self.region))
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
            return self._write(ctx, workspace_id, import_id, kind, schema, result, filename, progress)

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
    ) -> ImportSummary:
        df = result.accepted
        map_ops: list[Any] = []
        extra_rejections: list[Rejection] = []
        with ctx.engine.begin() as conn:
            if kind == "products":
                accepted = self._products(conn, ws, df)
            elif kind == "customers":
                accepted, map_ops = self._customers(ctx, conn, ws, df, progress)
            elif kind == "feedback":
                accepted, map_ops = self._feedback(ctx, conn, ws, import_id, df)
            elif kind == "orders":
                accepted, map_ops = self._orders(ctx, conn, ws, import_id, df, progress)
            else:  # pragma: no cover - SCHEMAS and this dispatch are kept in step
                raise InvalidInput(f"unknown import kind {kind!r}", field="kind")
            rejections = list(result.rejected) + extra_rejections
            if rejections:
                conn.execute(
                    quarantine.insert(),
                    [
                        dict(
                            workspace_id=ws,
                            source=f"import:{kind}",
                            import_id=import_id,
                            record=str(r.record),
                            field=r.field,
                            value=None if r.value is None else str(r.value)[:2000],
                            reason=r.reason,
                            raw=orjson.dumps(r.raw, default=str).decode(),
                            created_at=utcnow(),
                        )
                        for r in rejections
                    ],
                )
            conn.execute(
                imports.update()
                .where(imports.c.import_id == import_id)
                .values(
                    status="done",
                    accepted=accepted,
                    quarantined=len(rejections),
                    duplicates_merged=result.duplicates_merged,
                    finished_at=utcnow(),
                )
            )
        if map_ops:
            from goldkey.collect.writer import apply_map_ops

            with ctx.analytical.write_lock:
                con = ctx.analytical.cursor()
                try:
                    apply_map_ops(con, map_ops)
                finally:
                    con.close()
        return ImportSummary(
            import_id, kind, "done", result.rows_read, accepted, len(rejections), result.duplicates_merged, filename
        )

    @staticmethod
    def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        return df.to_dicts()

    def _resolve_rows(
        self,
        ctx: WriteContext,
        uow: UnitOfWork,
        ws: str,
        rows: list[dict[str, Any]],
        at_field: str | None,
        source: str,
        progress: Progress | None = None,
        stage: str = "resolving",
    ) -> list[str]:
        graph = ctx.graph
        present = [f for f in IDENTIFIER_FIELDS if rows and f in rows[0]]
        custom = graph.custom_identifiers(ws)

        def raw_ids(r: dict[str, Any]) -> list[tuple[str, Any]]:
            out = [(f, r[f]) for f in present if r.get(f) is not None]
            if custom:
                extra = r.get("extra")
                if isinstance(extra, str) and extra:
                    extra = orjson.loads(extra)
                for name, trait in custom:
                    v = r.get(trait)
                    if v is None and isinstance(extra, dict):
                        v = extra.get(trait)
                    if v is not None:
                        out.append((name, v))
            return out

        norm = [graph.normalised(ws, raw_ids(r)) for r in rows]
        graph.prefetch(uow.conn, {(ws, t, v) for ids in norm for t, v in ids})
        out = []
        now = utcnow()
        step = max(1, len(rows) // 50)
        for i, (r, ids) in enumerate(zip(rows, norm, strict=True)):
            at = as_utc(r.get(at_field)) if at_field and r.get(at_field) else now
            out.append(graph.resolve(uow, ws, ids, at, source, {"import": source}))
            if progress and i % step == 0:
                progress(stage, i, len(rows))
        if progress:
            progress(stage, len(rows), len(rows))
        return out

    def _products(self, conn: sa.Connection, ws: str, df: pl.DataFrame) -> int:
        now = utcnow()
        cols = [c.name for c in products.columns if c.name not in ("workspace_id", "updated_at")]
        rows = [{**{c: r.get(c) for c in cols}, "workspace_id": ws, "updated_at": now} for r in self._rows(df)]
        upsert(conn, products, rows, ["workspace_id", "sku"])
        return len(rows)

    def _customers(
        self, ctx: WriteContext, conn: sa.Connection, ws: str, df: pl.DataFrame, progress: Progress | None
    ) -> tuple[int, list[Any]]:
        rows = self._rows(df)
        uow = UnitOfWork(conn)
        pids = self._resolve_rows(ctx, uow, ws, rows, "registered_at", "import:customers", progress)
        ctx.graph.flush(uow)
        if uow.merged:
            from goldkey.collect.writer import _follow

            canon = _follow(uow.merged)
            pids = [canon.get(p, p) for p in pids]
        attrs_by_pid: dict[str, dict[str, Any]] = {}
        first_by_pid: dict[str, Any] = {}
        for r, pid in zip(rows, pids, strict=True):
            a = attrs_by_pid.setdefault(pid, {})
            extra = r.get("extra")
            if isinstance(extra, str) and extra:
                extra = orjson.loads(extra)
            if isinstance(extra, dict):
                a.update({k: v for k, v in extra.items() if v is not None})
            for k, v in r.items():
                if k in ("__record", "extra", "__dedupe_key") or v is None:
                    continue
                a[k] = _jsonable(v)
            reg = r.get("registered_at")
            if reg is not None:
                reg = as_utc(reg)
                if pid not in first_by_pid or reg < first_by_pid[pid]:
                    first_by_pid[pid] = reg
        ids = list(attrs_by_pid)
        current = {}
        for i in range(0, len(ids), 500):
            for row in conn.execute(
                sa.select(
                    profiles.c.profile_id,
                    profiles.c.attributes,
                    profiles.c.first_seen_at,
                    profiles.c.first_seen_source,
                    profiles.c.first_seen_context,
                ).where(profiles.c.profile_id.in_(ids[i : i + 500]))
            ):
                current[row.profile_id] = row
        updates = []
        now = utcnow()
        for pid, a in attrs_by_pid.items():
            cur = current[pid]
            merged = {**orjson.loads(cur.attributes), **a}
            first = as_utc(cur.first_seen_at)
            reg = first_by_pid.get(pid)
            earlier = reg is not None and (first is None or reg < first)
            updates.append(
                {
                    "pid": pid,
                    "attrs": orjson.dumps(merged).decode(),
                    "fs": reg if earlier else first,
                    "fss": "import:customers" if earlier else cur.first_seen_source,
                    "fsc": orjson.dumps({"import": "customers", "registered_at": reg.isoformat()}).decode()
                    if earlier
                    else cur.first_seen_context,
                    "now": now,
                }
            )
        stmt = (
            profiles.update()
            .where(profiles.c.profile_id == sa.bindparam("pid"))
            .values(
                attributes=sa.bindparam("attrs"),
                origin="existing",
                first_seen_at=sa.bindparam("fs"),
                first_seen_source=sa.bindparam("fss"),
                first_seen_context=sa.bindparam("fsc"),
                updated_at=sa.bindparam("now"),
            )
        )
        for i in range(0, len(updates), 5000):
            conn.execute(stmt, updates[i : i + 5000])
        return len(rows), uow.map_ops

    def _feedback(
        self, ctx: WriteContext, conn: sa.Connection, ws: str, import_id: str, df: pl.DataFrame
    ) -> tuple[int, list[Any]]:
        rows = self._rows(df)
        uow = UnitOfWork(conn)
        pids = self._resolve_rows(ctx, uow, ws, rows, "created_at", "import:feedback")
        ctx.graph.flush(uow)
        cols = [c.name for c in feedback.columns if c.name not in ("workspace_id", "profile_id", "import_id")]
        out = []
        for r, pid in zip(rows, pids, strict=True):
            d = {c: r.get(c) for c in cols}
            d.update(workspace_id=ws, profile_id=pid, import_id=import_id, status=r.get("status") or "open")
            out.append(d)
        upsert(conn, feedback, out, ["workspace_id", "feedback_id"])
        return len(rows), uow.map_ops

    def _orders(
        self,
        ctx: WriteContext,
        conn: sa.Connection,
        ws: str,
        import_id: str,
        df: pl.DataFrame,
        progress: Progress | None,
    ) -> tuple[int, list[Any]]:
        if df.height == 0:
            return 0, []
        if "line_amount" not in df.columns:
            df = df.with_columns(pl.lit(None, pl.Float64).alias("line_amount"))
        # one customer resolution per order (its first line)
        firsts = df.group_by("order_id", maintain_order=True).first()
        rows = self._rows(firsts)
        uow = UnitOfWork(conn)
        pids = self._resolve_rows(ctx, uow, ws, rows, "ordered_at", "import:orders", progress)
        ctx.graph.flush(uow)
        if uow.merged:
            from goldkey.collect.writer import _follow

            canon = _follow(uow.merged)
            pids = [canon.get(p, p) for p in pids]
        owner = pl.DataFrame({"order_id": firsts["order_id"], "profile_id": pids})
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
            )
        )
        order_ids = orders_out["order_id"].to_list()
        with ctx.analytical.write_lock:
            con = ctx.analytical.cursor()
            try:
                con.execute("BEGIN TRANSACTION")
                ids_tbl = pa.table({"order_id": order_ids})
                con.register("_ids", ids_tbl)
                con.execute(
                    "DELETE FROM orders WHERE workspace_id = ? AND order_id IN (SELECT order_id FROM _ids)", [ws]
                )
                con.execute(
                    "DELETE FROM order_lines WHERE workspace_id = ? AND order_id IN (SELECT order_id FROM _ids)", [ws]
                )
                con.unregister("_ids")
                ctx.analytical.append("orders", orders_out.to_arrow(), con)
                ctx.analytical.append("order_lines", lines_out.to_arrow(), con)
                from goldkey.collect.writer import apply_map_ops

                apply_map_ops(con, uow.map_ops)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()
        refresh_order_summaries(ctx, conn, ws, sorted(set(pids)))
        return df.height, []


def refresh_order_summaries(ctx: WriteContext, conn: sa.Connection, ws: str, profile_ids: list[str]) -> None:
    """Recompute the order summary of the given live profiles from the analytical store."""
    if not profile_ids:
        return
    cur = ctx.analytical.cursor()
    try:
        cur.register("_p", pa.table({"canonical_id": profile_ids}))
        tbl = cur.sql(
            """
            SELECT o.canonical_id, count(*) AS orders, round(sum(o.total_amount), 2) AS revenue,
                   min(o.ordered_at) AS first_order_at, max(o.ordered_at) AS last_order_at,
                   list_sort(list_distinct(flatten(list(l.skus)))) AS skus,
                   list_sort(list_distinct(flatten(list(l.cats)))) AS categories
            FROM orders_resolved o
            JOIN _p USING (canonical_id)
            LEFT JOIN (SELECT order_id, list(sku) FILTER (WHERE sku IS NOT NULL) AS skus,
                              list(category) FILTER (WHERE category IS NOT NULL) AS cats
                       FROM order_lines WHERE workspace_id = ? GROUP BY order_id) l USING (order_id)
            WHERE o.workspace_id = ?
            GROUP BY o.canonical_id
            """,
            params=[ws, ws],
        ).to_arrow_table()
    finally:
        cur.close()
    rows = []
    for r in tbl.to_pylist():
        rows.append(
            {
                "pid": r["canonical_id"],
                "summary": orjson.dumps(
                    {
                        "orders": r["orders"],
                        "revenue": r["revenue"],
                        "first_order_at": as_utc(r["first_order_at"]).isoformat() if r["first_order_at"] else None,
                        "last_order_at": as_utc(r["last_order_at"]).isoformat() if r["last_order_at"] else None,
                        "skus": r["skus"] or [],
                        "categories": r["categories"] or [],
                    }
                ).decode(),
            }
        )
    found = {r["pid"] for r in rows}
    rows += [{"pid": p, "summary": "{}"} for p in profile_ids if p not in found]
    stmt = (
        profiles.update()
        .where(profiles.c.profile_id == sa.bindparam("pid"))
        .values(order_summary=sa.bindparam("summary"))
    )
    for i in range(0, len(rows), 5000):
        conn.execute(stmt, rows[i : i + 5000])


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
