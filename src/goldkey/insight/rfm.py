"""RFM and value tiers.

Per live profile (``orders_resolved.canonical_id``), over the orders of the last
``lookback_days`` before ``as_of``:

- **recency_days**: whole days from the last order to ``as_of`` (floor);
- **frequency**: number of distinct orders;
- **monetary**: sum of ``total_amount``.

Each becomes a quintile score 1-5 with ``NTILE(5)`` (5 = best: most recent, most frequent, highest
spend). The ordering is total, so ties are broken deterministically: by the value, then by profile
id ascending (among equal values the profile with the greater id gets the higher tile). All three,
the named group and the value tier come out of ONE DuckDB query with bound parameters.

Named groups come from the R x F score grid widely published with RFM segmentation (the
10-segment "RFM segment map" of R score x F score, e.g. Putler's RFM segments as popularised by the
``seg_map`` regex table ``[1-2][1-2] hibernating, [1-2][3-4] at_risk, [1-2]5 cant_loose,
3[1-2] about_to_sleep, 33 need_attention, [3-4][4-5] loyal_customers, 41 promising,
51 new_customers, [4-5][2-3] potential_loyalists, 5[4-5] champions``). Goldkey makes one change:
cell R=1, F=1 is **lost** (the lowest cell, as in the ``rfm`` R package's "Lost" segment) rather
than hibernating. See :data:`GRID` and ``docs/insight.md``.

Value tiers: configurable thresholds on monetary (``value_tiers``, highest first wins).

:class:`RFMService` fits (saves a versioned artifact with the quintile cut points and the group
counts as metrics, in the :mod:`goldkey.insight.registry`), then writes ``scores.rfm_r``,
``scores.rfm_f``, ``scores.rfm_m`` and ``scores.rfm_model_version`` on the profiles (on the writer
thread) and the model tags ``rfm_group`` and ``rfm_value_tier`` (through the tag service's write
path, so each change is a ``Tag Changed`` event with source ``model:rfm:v<N>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from goldkey.audience.tags import ModelTagPlan
from goldkey.core.clock import to_iso
from goldkey.core.errors import Conflict, InvalidInput, NotFound, validated
from goldkey.insight.purchases import EXCLUDE_STATUSES_DOC, excluded_statuses, status_filter
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, RefitEveryHours, one_run_at_a_time
from goldkey.insight.writeback import ModelWrite, declare_scores, write_model_table
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore

MODEL_NAME = "rfm"
MODEL_KIND = "rfm"
GROUP_TAG = "rfm_group"
TIER_TAG = "rfm_value_tier"
SCORE_FIELDS = ("rfm_r", "rfm_f", "rfm_m", "rfm_model_version")

# group key -> (English name, Chinese name, description)
GROUPS: dict[str, tuple[str, str, str]] = {
    "champions": ("Champions", "冠军客户（重要价值客户）", "bought recently, buy often"),
    "loyal_customers": ("Loyal customers", "忠诚客户", "buy often, fairly recently"),
    "potential_loyalists": ("Potential loyalists", "潜力客户", "recent, a few orders"),
    "new_customers": ("New customers", "新客户", "very recent, one order"),
    "promising": ("Promising", "有潜力的新客户", "recent, one order"),
    "need_attention": ("Need attention", "需要关注客户", "middling recency and frequency"),
    "about_to_sleep": ("About to sleep", "即将沉睡客户", "middling recency, few orders"),
    "at_risk": ("At risk", "流失风险客户", "bought often, but long ago"),
    "cant_lose_them": ("Can't lose them", "重要挽留客户（不能失去）", "bought most often, but long ago"),
    "hibernating": ("Hibernating", "沉睡客户", "long ago, few orders"),
    "lost": ("Lost", "流失客户", "longest ago, fewest orders"),
}


def _grid() -> list[list[str]]:
    """GRID[r-1][f-1] -> group key."""
    g = [["" for _ in range(5)] for _ in range(5)]
    for r in range(1, 6):
        for f in range(1, 6):
            if r <= 2:
                k = "cant_lose_them" if f == 5 else "at_risk" if f >= 3 else "hibernating"
                if r == 1 and f == 1:
                    k = "lost"
            elif r == 3:
                k = "loyal_customers" if f >= 4 else "need_attention" if f == 3 else "about_to_sleep"
            elif r == 4:
                k = "loyal_customers" if f >= 4 else "potential_loyalists" if f >= 2 else "promising"
            else:
                k = "champions" if f >= 4 else "potential_loyalists" if f >= 2 else "new_customers"
            g[r - 1][f - 1] = k
    return g


GRID: list[list[str]] = _grid()


def group_of(r: int, f: int) -> str:
    """The named group of an R score and an F score (1-5 each)."""
    return GRID[r - 1][f - 1]


class ValueTier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    min_monetary: float = Field(ge=0, description="a profile with monetary >= this is in the tier")


DEFAULT_TIERS = [ValueTier(name="high", min_monetary=5000), ValueTier(name="medium", min_monetary=1000),
                 ValueTier(name="low", min_monetary=0)]


class RFMDefinition(BaseModel):
    """The RFM model definition (what the artifact's definition hash covers)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="score as of this instant (default: now)")
    lookback_days: int = Field(default=365, ge=1, le=3650, description="orders of the last N days count")
    exclude_statuses: list[str] = Field(default_factory=list, description=EXCLUDE_STATUSES_DOC)
    value_tiers: list[ValueTier] = Field(default_factory=lambda: list(DEFAULT_TIERS),
                                         description="monetary thresholds; the highest matching tier wins")
    refit_every_hours: RefitEveryHours = Field(default=24, description="the refit schedule (None: by hand)")

    @field_validator("value_tiers")
    @classmethod
    def _tiers(cls, v: list[ValueTier]) -> list[ValueTier]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("value tier names must be unique")
        return sorted(v, key=lambda t: -t.min_monetary)

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: RFMDefinition | dict[str, Any] | None) -> RFMDefinition:
    if isinstance(data, RFMDefinition):
        return data
    return validated(RFMDefinition, data or {})


def _rfm_sql(n_tiers: int) -> str:
    status = f" AND {status_filter()}"  # refunds and cancellations are no purchases
    tier_case = "NULL"
    if n_tiers:
        tier_case = "CASE " + " ".join("WHEN monetary >= ? THEN ?" for _ in range(n_tiers)) + " ELSE NULL END"
    # orders are unique per (workspace, order_id): the importer, their only writer, deletes a
    # re-imported order before appending it (as lifecycle's feature query relies on), so count(*)
    # counts distinct orders; count(DISTINCT order_id) cost a third of the query at 1M customers
    return f"""
        WITH base AS (
            SELECT canonical_id AS profile_id, max(ordered_at) AS last_order_at,
                   count(*) AS frequency, sum(total_amount) AS monetary
            FROM orders_resolved
            WHERE workspace_id = ? AND ordered_at <= ? AND ordered_at > ?{status}
            GROUP BY canonical_id
        ), rec AS (
            SELECT *, CAST(floor((epoch(CAST(? AS TIMESTAMPTZ)) - epoch(last_order_at)) / 86400) AS BIGINT)
                      AS recency_days
            FROM base
        ), q AS (
            SELECT *,
                NTILE(5) OVER (ORDER BY recency_days DESC, profile_id ASC) AS r_score,
                NTILE(5) OVER (ORDER BY frequency ASC, profile_id ASC) AS f_score,
                NTILE(5) OVER (ORDER BY monetary ASC, profile_id ASC) AS m_score
            FROM rec
        )
        SELECT profile_id, last_order_at, recency_days, frequency, monetary,
               CAST(r_score AS TINYINT) AS r_score, CAST(f_score AS TINYINT) AS f_score,
               CAST(m_score AS TINYINT) AS m_score,
               list_extract(CAST(? AS VARCHAR[]), CAST((r_score - 1) * 5 + f_score AS INTEGER)) AS rfm_group,
               {tier_case} AS value_tier
        FROM q ORDER BY profile_id"""


MIN_CUSTOMERS = 5  # quintiles of fewer: some scores impossible, the rest only the tie-breaker's order


def compute_rfm(analytical: AnalyticalStore, ws: str, definition: RFMDefinition | dict[str, Any] | None = None,
                as_of: datetime | None = None) -> pa.Table:
    """RFM of every live profile with orders in the window, as an Arrow table (one row per
    profile, sorted by profile id). Raises InvalidInput when there are no orders to score."""
    d = parse_definition(definition)
    t = as_of_utc(as_of or d.as_of)
    since = t - timedelta(days=d.lookback_days)
    params: list[Any] = [ws, t, since, excluded_statuses(d.exclude_statuses), t, [k for row in GRID for k in row]]
    for tier in d.value_tiers:
        params += [tier.min_monetary, tier.name]
    cur = analytical.cursor()
    try:
        tbl = cur.sql(_rfm_sql(len(d.value_tiers)), params=params).to_arrow_table()
    finally:
        cur.close()
    if tbl.num_rows == 0:
        raise InvalidInput(
            f"no orders to score: workspace has no orders in the {d.lookback_days} days before {to_iso(t)}; "
            "import orders first (or widen lookback_days)", field="orders")
    if tbl.num_rows < MIN_CUSTOMERS:
        raise InvalidInput(
            f"too few customers to score: {tbl.num_rows} with orders in the {d.lookback_days} days before "
            f"{to_iso(t)}; quintile scores need at least {MIN_CUSTOMERS} (one per score): import more orders "
            "or widen lookback_days", field="orders")
    for col, what in (("recency_days", "recency (days since the last order)"),
                      ("frequency", "frequency (orders)"), ("monetary", "monetary value")):
        lo, hi = pc.min_max(tbl.column(col)).values()
        if lo.as_py() == hi.as_py():
            # quintiles of one value would be the tie-breaker's order alone: a "champion" by profile id
            raise InvalidInput(
                f"every one of the {tbl.num_rows} customers has the same {what}: {lo.as_py()}; RFM cannot rank "
                "them on it (their scores would follow the profile ids). Wait for more varied orders (repeat "
                "purchases, other dates) or widen lookback_days", field="orders")
    return tbl


def fit_summary(tbl: pa.Table) -> tuple[dict[str, Any], dict[str, Any]]:
    """(artifact, metrics) of a scored table: quintile cut points per score and group counts."""
    df = pl.from_arrow(tbl)
    assert isinstance(df, pl.DataFrame)
    cuts: dict[str, list[dict[str, Any]]] = {}
    tie_broken: dict[str, int] = {}
    for score, col in (("r", "recency_days"), ("f", "frequency"), ("m", "monetary")):
        # customers of one value spread over several scores: the tie-breaker (profile id), not their
        # data, put them in one quintile or the next (most one-order customers on F, typically)
        spread = df.group_by(col).agg(pl.col(f"{score}_score").n_unique().alias("k"), pl.len().alias("n"))
        tie_broken[score] = int(spread.filter(pl.col("k") > 1)["n"].sum())
        agg = (df.group_by(f"{score}_score").agg(pl.col(col).min().alias("min"), pl.col(col).max().alias("max"),
                                                  pl.len().alias("profiles"))
               .sort(f"{score}_score"))
        cuts[score] = [{"score": int(r[f"{score}_score"]), "min": r["min"], "max": r["max"],
                        "profiles": int(r["profiles"])} for r in agg.iter_rows(named=True)]
    groups = {k: 0 for k in GROUPS}
    for g, n in df.group_by("rfm_group").len().iter_rows():
        groups[g] = int(n)
    tiers = {str(k): int(n) for k, n in df.group_by("value_tier").len().iter_rows() if k is not None}
    metrics = {"profiles": df.height, "groups": groups, "value_tiers": tiers, "tie_broken": tie_broken,
               "recency_days_median": float(df["recency_days"].median() or 0),
               "frequency_mean": float(df["frequency"].mean() or 0),  # type: ignore[arg-type]
               "monetary_sum": float(df["monetary"].sum())}
    artifact = {"cut_points": cuts, "grid": GRID,
                "groups": {k: {"en": v[0], "zh": v[1], "description": v[2]} for k, v in GROUPS.items()}}
    return artifact, metrics


class RFMService:
    """Fit the RFM model of a workspace and write its scores and tags back to the profiles."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, writer: Any, tags: Any, facts: Any,
                 registry: ModelRegistry, realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.tags = tags
        self.facts = facts
        self.registry = registry
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> RFMService:
        return cls(gk.engine, gk.analytical, gk.writer, gk.tags, gk.facts,
                   ModelRegistry(gk.settings.data_dir / "models"), getattr(gk, "realtime", None))

    def fit(self, ws: str, definition: RFMDefinition | dict[str, Any] | None = None
            ) -> tuple[pa.Table, ModelVersion]:
        """Score every customer and save a new model version; nothing is written to profiles."""
        d = parse_definition(definition)
        t = as_of_utc(d.as_of)
        tbl = compute_rfm(self.analytical, ws, d, t)
        artifact, metrics = fit_summary(tbl)
        artifact["as_of"] = to_iso(t)
        mv = self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=d.as_json(), artifact=artifact,
                                metrics=metrics)
        return tbl, mv

    def latest(self, ws: str, definition: RFMDefinition | dict[str, Any] | None = None) -> ModelVersion:
        """The latest fitted version (checked against ``definition`` when given)."""
        d = None if definition is None else parse_definition(definition).as_json()
        return self.registry.load(ws, MODEL_NAME, kind=MODEL_KIND, definition=d)

    @one_run_at_a_time(MODEL_NAME)
    def run(self, ws: str, definition: RFMDefinition | dict[str, Any] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Fit, then write scores and model tags (with the model version) to the profiles.
        ``progress(stage, done, total)`` follows the stages (for a progress bar)."""
        t0 = time.perf_counter()
        step = progress or (lambda _s, _i, _n: None)
        d = parse_definition(definition)
        self._check_tags(ws, d)  # before anything is saved: a clash with a hand-made tag fails early
        step("scoring customers", 0, 3)
        tbl, mv = self.fit(ws, d)
        step("planning the tags", 1, 3)
        t_fit = time.perf_counter()
        declare_scores(self.engine, ws, {"rfm_r": "RFM recency score 1-5", "rfm_f": "RFM frequency score 1-5",
                                         "rfm_m": "RFM monetary score 1-5", "rfm_model_version": "RFM model version"},
                       MODEL_NAME, mv.version)
        self._ensure_tags(ws, d, mv.version)
        source = f"model:{MODEL_NAME}:v{mv.version}"
        pids = tbl.column("profile_id").to_pylist()
        groups = tbl.column("rfm_group").to_pylist()
        tiers = tbl.column("value_tier").to_pylist()
        plans = self.tags.plan_model_values(ws, {GROUP_TAG: dict(zip(pids, groups, strict=True)),
                                                 TIER_TAG: dict(zip(pids, tiers, strict=True))})
        t_plan = time.perf_counter()
        # the scores and both tags in one write of each profile's row
        step(f"writing scores and tags of {tbl.num_rows} customers", 2, 3)
        w = self._write_scores(ws, tbl, mv.version, plans, source)
        step("done", 3, 3)
        t_end = time.perf_counter()
        return {"model": MODEL_NAME, "version": mv.version, "as_of": mv.artifact.get("as_of"),
                "profiles": tbl.num_rows, "scores_written": w.written, "group_tag_changed": w.tags[GROUP_TAG],
                "tier_tag_changed": w.tags[TIER_TAG], "metrics": mv.metrics,
                "fit_ms": int((t_fit - t0) * 1000), "took_ms": int((t_end - t0) * 1000),
                "timings_ms": {"fit": int((t_fit - t0) * 1000), "plan": int((t_plan - t_fit) * 1000),
                               "write": int((t_end - t_plan) * 1000),
                               **{f"write_{k}": v for k, v in w.timings_ms.items()}}}

    # -- write-back -----------------------------------------------------------------------------
    def _tag_specs(self, d: RFMDefinition, version: int | None) -> dict[str, dict[str, Any]]:
        v = f" (model {MODEL_NAME} v{version})" if version else ""
        return {
            GROUP_TAG: {"name": GROUP_TAG, "kind": "model", "value_type": "enum", "category": "consumption",
                        "owner": "insight", "values": list(GROUPS),
                        "description": "RFM group / RFM客户分群: " + ", ".join(
                            f"{k}={zh}" for k, (_, zh, _) in GROUPS.items()) + v},
            TIER_TAG: {"name": TIER_TAG, "kind": "model", "value_type": "enum", "category": "consumption",
                       "owner": "insight", "values": [t.name for t in d.value_tiers] or ["none"],
                       "description": "value tier by RFM monetary / 价值分层: " + ", ".join(
                           f"{t.name}>={t.min_monetary:g}" for t in d.value_tiers) + v},
        }

    def _check_tags(self, ws: str, d: RFMDefinition) -> None:
        for name in self._tag_specs(d, None):
            try:
                cur = self.tags.get(ws, name)
            except NotFound:
                continue
            if cur["kind"] != "model":
                raise Conflict(f"tag {name!r} exists as a {cur['kind']} tag; the RFM model writes a model tag "
                               "of that name: rename or delete the existing tag")

    def _ensure_tags(self, ws: str, d: RFMDefinition, version: int) -> None:
        for name, spec in self._tag_specs(d, version).items():
            try:
                cur = self.tags.get(ws, name)
            except NotFound:
                self.tags.create(ws, spec, actor="insight")
                continue
            # keep values that profiles may still hold until replace=True clears them
            values = list(dict.fromkeys([*spec["values"], *cur["values"]]))
            self.tags.update(ws, name, {"values": values, "description": spec["description"]}, actor="insight")

    def _write_scores(self, ws: str, tbl: pa.Table, version: int, plans: Mapping[str, ModelTagPlan],
                      source: str) -> ModelWrite:
        """Set scores.rfm_* on the scored profiles and remove them from live profiles no longer
        scored, with the model's tags (``plans``) in the same row writes (one shared write-back
        path)."""
        cols = tbl.select(["profile_id", "r_score", "f_score", "m_score"]).rename_columns(
            ["profile_id", "rfm_r", "rfm_f", "rfm_m"])
        return write_model_table(self, ws, SCORE_FIELDS, cols, {"rfm_model_version": version}, tags=plans,
                                 source=source)
