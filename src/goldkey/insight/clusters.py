"""Customer clustering: k-means over standardised value and behaviour features.

Method (scikit-learn): the per-customer features of :func:`goldkey.insight.features.customer_features`
(recency, orders, revenue, order value, days between orders, breadth, activity ...), as of
``as_of`` over ``lookback_days``; by default only customers with an order in the window. Skewed
features (sample skewness > 1 and no negative value: counts and amounts) are ``log1p``-transformed,
then every feature is standardised (``StandardScaler``); a constant feature carries no information
and is dropped (said in the artifact). ``KMeans`` (k-means++ seeding, fixed ``n_init`` and
``random_state``, so a refit on the same data gives the same clusters) is fitted for every k in
``k_min..k_max`` on a random sample (``sample_size`` customers, fixed seed) and k is the one with
the highest **silhouette** coefficient (Rousseeuw 1987) on that sample; the final model starts
from that k's sample centres and is refined (Lloyd iterations) on every customer, which keeps the
cost of the search independent of the population size. Clusters are numbered ``c1, c2, ...`` by
mean revenue, highest first, so the labels are stable across refits of similar data.

Each cluster gets a description in numbers, in English and Chinese, from the raw (untransformed)
features: spend relative to the average customer, the median interval between orders, the median
days since the last order, and the category its members bought most often relative to everyone
("spends 3.2x the average, orders every 41 days, last ordered 12 days ago (median), 80% bought
lens"). Each run is a registry version (silhouette per k, centroids in standardised and in raw
units, the scaler, sizes, descriptions) and writes the model tag ``cluster`` (value = cluster key;
a ``Tag Changed`` event per change). A cluster is not a rule, so "save as a segment" creates a
segment whose rule is ``tags.cluster = <key>``: it follows the tag, i.e. the latest clustering.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, NotFound, validated
from goldkey.insight.lifecycle import check_model_tag, ensure_model_tag
from goldkey.insight.purchases import excluded_statuses, status_filter
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, RefitEveryHours, one_run_at_a_time
from goldkey.insight.writeback import declare_scores, write_model_table
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore

MODEL_NAME = "clusters"
VERSION_FIELD = "clusters_model_version"  # scores.clusters_model_version: the version of a profile's cluster tag
MODEL_KIND = "kmeans"
CLUSTER_TAG = "cluster"
MAX_K = 12
MIN_CUSTOMERS = 10
DEFAULT_FEATURES = ("recency_days", "order_count", "revenue", "avg_order_value", "avg_days_between_orders",
                    "distinct_categories", "events_90d", "active_days")


class ClusterDefinition(BaseModel):
    """What a clustering run fits (the artifact's definition hash covers it)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="features as of this instant (default: now)")
    lookback_days: int = Field(default=365, ge=7, le=3650)
    features: list[str] = Field(default_factory=lambda: list(DEFAULT_FEATURES), min_length=1,
                                description="columns of goldkey.insight.features.customer_features")
    customers_only: bool = Field(default=True, description="only profiles with an order in the window")
    k_min: int = Field(default=2, ge=2, le=MAX_K)
    k_max: int = Field(default=8, ge=2, le=MAX_K)
    k: int | None = Field(default=None, ge=2, le=MAX_K, description="fix k (no silhouette search)")
    sample_size: int = Field(default=4_000, ge=100, le=50_000, description="customers used to choose k")
    n_init: int = Field(default=4, ge=1, le=20)
    random_state: int = Field(default=42, ge=0, le=2**32 - 1)
    exclude_statuses: list[str] = Field(default_factory=list)
    refit_every_hours: RefitEveryHours = None

    @model_validator(mode="after")
    def _range(self) -> ClusterDefinition:
        if self.k_min > self.k_max:
            raise ValueError("k_min must be <= k_max")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features must be distinct")
        return self

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: ClusterDefinition | dict[str, Any] | None) -> ClusterDefinition:
    if isinstance(data, ClusterDefinition):
        return data
    return validated(ClusterDefinition, data or {})


def load_features(analytical: AnalyticalStore, ws: str, d: ClusterDefinition, as_of: datetime) -> pl.DataFrame:
    """The customers' feature frame (``profile_id`` + the definition's features)."""
    from goldkey.insight.features import customer_features

    df = customer_features(analytical, ws, as_of, d.lookback_days, exclude_statuses=d.exclude_statuses)
    unknown = [f for f in d.features if f not in df.columns or f == "profile_id"]
    if unknown:
        known = ", ".join(c for c in df.columns if c != "profile_id")
        raise InvalidInput(f"unknown feature(s) {unknown}; known: {known}", field="features")
    if d.customers_only:
        df = df.filter(pl.col("order_count") > 0)
    return df.select("profile_id", *d.features)


def prepare(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """log1p the skewed non-negative columns, drop constant ones, standardise. Returns the matrix
    and the transform (which columns were logged / dropped, the scaler's mean and scale)."""
    from scipy.stats import skew
    from sklearn.preprocessing import StandardScaler

    x = x.astype(np.float64, copy=True)
    logged = []
    for j, n in enumerate(names):
        col = x[:, j]
        if col.min() >= 0 and np.ptp(col) > 0 and float(skew(col)) > 1.0:
            x[:, j] = np.log1p(col)
            logged.append(n)
    keep = [j for j in range(x.shape[1]) if np.ptp(x[:, j]) > 0]
    dropped = [names[j] for j in range(len(names)) if j not in keep]
    if not keep:
        raise InvalidInput(f"every feature is constant over these customers ({', '.join(names)}); nothing to "
                           "cluster on", field="features")
    scaler = StandardScaler().fit(x[:, keep])
    z = scaler.transform(x[:, keep])
    return z, {"used": [names[j] for j in keep], "logged": logged, "dropped_constant": dropped,
               "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}


def choose_k(z: np.ndarray, d: ClusterDefinition) -> tuple[int, dict[int, float], np.ndarray | None]:
    """The k of ``k_min..k_max`` with the best silhouette on a fixed random sample (or ``d.k``),
    the silhouette per k, and the centres of the best k on the sample (None when k was given)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n_distinct = len(np.unique(z, axis=0)) if len(z) <= 50_000 else len(z)
    hi = min(d.k_max, len(z) - 1, n_distinct)
    if d.k is not None:
        if d.k > hi:
            raise InvalidInput(f"k={d.k} needs more distinct customers than the {n_distinct} there are", field="k")
        return d.k, {}, None
    if hi < d.k_min:
        raise InvalidInput(f"only {n_distinct} distinct customers: too few for k >= {d.k_min}", field="k_min")
    rng = np.random.default_rng(d.random_state)
    sample = z if len(z) <= d.sample_size else z[rng.choice(len(z), d.sample_size, replace=False)]
    scores: dict[int, float] = {}
    centres: dict[int, np.ndarray] = {}
    for k in range(d.k_min, hi + 1):
        km = KMeans(n_clusters=k, n_init=d.n_init, random_state=d.random_state).fit(sample)
        if len(set(km.labels_.tolist())) < 2:
            continue
        scores[k] = float(silhouette_score(sample, km.labels_))
        centres[k] = km.cluster_centers_
    if not scores:
        raise InvalidInput("no k gives two distinct clusters on these customers", field="features")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores, centres[best]


def _category_shares(analytical: AnalyticalStore, ws: str, labels: pl.DataFrame, as_of: datetime,
                     lookback_days: int, exclude_statuses: list[str] | None = None) -> dict[str, dict[str, float]]:
    """{cluster: {category: share of its customers who bought it}} (and ``_all`` for everyone);
    orders in ``exclude_statuses`` (cancelled, say) do not count, as in the features."""
    from datetime import timedelta

    cur = analytical.cursor()
    try:
        cur.register("_gk_cl", labels.to_arrow())
        rows = cur.execute(
            f"""WITH b AS (
                   SELECT DISTINCT o.canonical_id AS pid, l.category
                   FROM orders_resolved o JOIN order_lines l ON l.workspace_id = o.workspace_id
                        AND l.order_id = o.order_id
                   WHERE o.workspace_id = ? AND o.ordered_at < ? AND o.ordered_at >= ? AND l.category IS NOT NULL
                     AND {status_filter("o.status")})
               SELECT c.cluster, b.category, count(*) FROM b JOIN _gk_cl c ON c.profile_id = b.pid
               GROUP BY ALL""", [ws, as_of, as_of - timedelta(days=lookback_days),
                                 excluded_statuses(exclude_statuses or [])]).fetchall()
        cur.unregister("_gk_cl")
    finally:
        cur.close()
    sizes = dict(labels.group_by("cluster").len().iter_rows())
    out: dict[str, dict[str, float]] = {}
    total: dict[str, int] = {}
    for cl, cat, n in rows:
        out.setdefault(cl, {})[cat] = n / sizes[cl]
        total[cat] = total.get(cat, 0) + n
    out["_all"] = {c: n / labels.height for c, n in total.items()}
    return out


def describe(stats: dict[str, float], overall: dict[str, float], cats: dict[str, float],
             all_cats: dict[str, float]) -> tuple[str, str]:
    """English and Chinese one-line descriptions of a cluster, in numbers."""
    en: list[str] = []
    zh: list[str] = []
    if "revenue" in stats and overall.get("revenue"):
        r = stats["revenue"] / overall["revenue"]
        en.append(f"spends {r:.1f}x the average")
        zh.append(f"消费额是平均水平的{r:.1f}倍")
    if "interval_median" in stats:
        if stats["repeat_share"] >= 0.5:
            en.append(f"orders every {stats['interval_median']:.0f} days")
            zh.append(f"平均每{stats['interval_median']:.0f}天下单一次")
        else:
            en.append(f"{stats['repeat_share']:.0%} ordered more than once")
            zh.append(f"{stats['repeat_share']:.0%}复购")
    if "recency_median" in stats:
        en.append(f"last ordered {stats['recency_median']:.0f} days ago (median)")
        zh.append(f"最近一次下单在{stats['recency_median']:.0f}天前（中位数）")
    if cats:
        cat = max(cats, key=lambda c: (cats[c] / max(all_cats.get(c, 1e-9), 1e-9), cats[c], c))
        en.append(f"{cats[cat]:.0%} bought {cat}")
        zh.append(f"{cats[cat]:.0%}购买过{cat}")
    return ", ".join(en), "，".join(zh)


def fit_clusters(df: pl.DataFrame, d: ClusterDefinition) -> tuple[pl.DataFrame, dict[str, Any], dict[str, Any]]:
    """(labels, artifact, metrics) of a feature frame: ``labels`` has ``profile_id`` and ``cluster``.

    scikit-learn's k-means runs on one OpenMP thread here: on a small, shared machine its spinning
    worker threads made the silhouette search ~8x slower (173 s vs 21 s for k = 2..8 on 4,000 rows
    under load), and one thread costs little on these sizes."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_clusters(df, d)


def _fit_clusters(df: pl.DataFrame, d: ClusterDefinition) -> tuple[pl.DataFrame, dict[str, Any], dict[str, Any]]:
    from sklearn.cluster import KMeans

    if df.height < MIN_CUSTOMERS:
        raise InvalidInput(f"clustering needs at least {MIN_CUSTOMERS} customers with features; there are "
                           f"{df.height}", field="customers")
    names = [c for c in df.columns if c != "profile_id"]
    x = df.select(names).to_numpy().astype(np.float64)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    z, transform = prepare(x, names)
    k, sil, start = choose_k(z, d)
    if start is not None and len(z) > d.sample_size:  # refine the sample's centres on everyone
        km = KMeans(n_clusters=k, init=start, n_init=1, random_state=d.random_state).fit(z)
    else:
        km = KMeans(n_clusters=k, n_init=d.n_init, random_state=d.random_state).fit(z)
    raw = km.labels_
    # number clusters by mean revenue (or the first feature), highest first
    key = names.index("revenue") if "revenue" in names else 0
    means = [x[raw == i, key].mean() for i in range(k)]
    order = sorted(range(k), key=lambda i: (-means[i], i))
    rename = {old: f"c{new + 1}" for new, old in enumerate(order)}
    labels = df.select("profile_id").with_columns(pl.Series("cluster", [rename[int(i)] for i in raw], dtype=pl.Utf8))
    clusters = []
    for old in order:
        m = raw == old
        clusters.append({"cluster": rename[old], "size": int(m.sum()), "share": float(m.mean()),
                         "centroid": dict(zip(transform["used"], km.cluster_centers_[old].tolist(), strict=True)),
                         "means": {n: float(x[m, j].mean()) for j, n in enumerate(names)}})
    artifact = {"features": names, "transform": transform, "k": k, "clusters": clusters,
                "overall_means": {n: float(x[:, j].mean()) for j, n in enumerate(names)}}
    metrics = {"customers": df.height, "k": k, "silhouette": {str(a): round(b, 4) for a, b in sil.items()},
               "silhouette_best": round(sil[k], 4) if k in sil else None, "inertia": float(km.inertia_),
               "sizes": {c["cluster"]: c["size"] for c in clusters}}
    return labels, artifact, metrics


def _raw_stats(df: pl.DataFrame, labels: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per cluster: mean revenue, median order interval of repeat buyers, share of repeat buyers,
    median recency (``_all``: everyone)."""
    j = df.join(labels, on="profile_id")
    out: dict[str, dict[str, float]] = {}
    groups = [("_all", j), *((c, j.filter(pl.col("cluster") == c)) for c in sorted(labels["cluster"].unique()))]
    for c, g in groups:
        s: dict[str, float] = {}
        if "revenue" in g.columns:
            s["revenue"] = float(g["revenue"].mean() or 0)  # type: ignore[arg-type]
        if "order_count" in g.columns and "avg_days_between_orders" in g.columns:
            rep = g.filter(pl.col("order_count") >= 2)
            s["repeat_share"] = rep.height / max(g.height, 1)
            if rep.height:
                s["interval_median"] = float(rep["avg_days_between_orders"].median() or 0)  # type: ignore[arg-type]
        if "recency_days" in g.columns:
            # of buyers only: a customer without an order has a placeholder recency, not a fact
            buyers = g.filter(pl.col("order_count") > 0) if "order_count" in g.columns else g
            if buyers.height:
                s["recency_median"] = float(buyers["recency_days"].median() or 0)  # type: ignore[arg-type]
        out[c] = s
    return out


class ClusterService:
    """Fit the customer clusters of a workspace, tag the customers, save a cluster as a segment."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, tags: Any, segments: Any,
                 registry: ModelRegistry, writer: Any = None, facts: Any = None, realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.tags = tags
        self.segments = segments
        self.registry = registry
        # the write-back's parts (goldkey.insight.writeback)
        self.writer = writer
        self.facts = facts
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> ClusterService:
        return cls(gk.engine, gk.analytical, gk.tags, gk.segments, ModelRegistry(gk.settings.data_dir / "models"),
                   gk.writer, gk.facts, getattr(gk, "realtime", None))

    def fit(self, ws: str, definition: ClusterDefinition | dict[str, Any] | None = None
            ) -> tuple[pl.DataFrame, ModelVersion, dict[str, float]]:
        """Cluster and save a model version (with descriptions); nothing is written to profiles."""
        d = parse_definition(definition)
        t = as_of_utc(d.as_of)
        t0 = time.perf_counter()
        df = load_features(self.analytical, ws, d, t)
        t1 = time.perf_counter()
        labels, artifact, metrics = fit_clusters(df, d)
        t2 = time.perf_counter()
        stats = _raw_stats(df, labels)
        cats = _category_shares(self.analytical, ws, labels, t, d.lookback_days, d.exclude_statuses)
        for c in artifact["clusters"]:
            key = c["cluster"]
            c["description_en"], c["description_zh"] = describe(stats[key], stats["_all"], cats.get(key, {}),
                                                                 cats.get("_all", {}))
            c["stats"] = stats[key]
            c["top_categories"] = dict(sorted(cats.get(key, {}).items(), key=lambda kv: -kv[1])[:5])
        artifact["as_of"] = to_iso(t)
        mv = self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=d.as_json(), artifact=artifact,
                                metrics=metrics)
        return labels, mv, {"features_s": t1 - t0, "fit_s": t2 - t1, "describe_s": time.perf_counter() - t2}

    PHASES = ("fit", "tag")

    @one_run_at_a_time(MODEL_NAME)
    def run(self, ws: str, definition: ClusterDefinition | dict[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Fit, then write the ``cluster`` model tag (removed from customers no longer clustered).
        ``progress`` is called with each phase of :data:`PHASES` as it finishes."""
        step = progress or (lambda _phase: None)
        t0 = time.perf_counter()
        check_model_tag(self.tags, ws, CLUSTER_TAG)
        labels, mv, timing = self.fit(ws, definition)
        step("fit")
        ensure_model_tag(self.tags, ws, {
            "name": CLUSTER_TAG, "kind": "model", "value_type": "enum", "category": "consumption", "owner": "insight",
            "values": [f"c{i}" for i in range(1, MAX_K + 1)],
            "description": f"customer cluster / 客户聚类 (model {MODEL_NAME} v{mv.version}; k-means, "
                           "c1 = highest mean revenue)"})
        values = dict(zip(labels["profile_id"].to_list(), labels["cluster"].to_list(), strict=True))
        # the tag with the version that gave it (c1..ck are renumbered at each fit), in one write of
        # each row; both go from customers no longer clustered
        declare_scores(self.engine, ws, {VERSION_FIELD: f"{MODEL_NAME} model version"}, MODEL_NAME, mv.version)
        plans = self.tags.plan_model_values(ws, {CLUSTER_TAG: values})
        w = write_model_table(self, ws, (VERSION_FIELD,), pa.table({"profile_id": labels["profile_id"].to_arrow()}),
                              {VERSION_FIELD: mv.version}, tags=plans, source=f"model:{MODEL_NAME}:v{mv.version}")
        changed = w.tags[CLUSTER_TAG]
        step("tag")
        return {"model": MODEL_NAME, "version": mv.version, "as_of": mv.artifact["as_of"], "k": mv.metrics["k"],
                "customers": labels.height, "tag_changed": changed, "metrics": mv.metrics,
                "clusters": self._public(mv)["clusters"],
                "timings_ms": {k.removesuffix("_s"): int(v * 1000) for k, v in timing.items()},
                "took_ms": int((time.perf_counter() - t0) * 1000)}

    def latest(self, ws: str) -> ModelVersion:
        return self.registry.load(ws, MODEL_NAME, kind=MODEL_KIND)

    def describe_latest(self, ws: str) -> dict[str, Any]:
        return self._public(self.latest(ws))

    @staticmethod
    def _public(mv: ModelVersion) -> dict[str, Any]:
        a = mv.artifact
        return {"model": MODEL_NAME, "version": mv.version, "as_of": a.get("as_of"), "created_at": mv.created_at,
                "k": a["k"], "features": a["features"], "transform": a["transform"], "metrics": mv.metrics,
                "clusters": [{k: c[k] for k in ("cluster", "size", "share", "description_en", "description_zh",
                                                 "means", "centroid", "top_categories") if k in c}
                             for c in a["clusters"]]}

    def save_segment(self, ws: str, cluster: str, *, name: str | None = None, realtime: bool = True,
                     actor: str = "api") -> dict[str, Any]:
        """Save a cluster of the latest version as a segment: rule ``tags.cluster = <cluster>``."""
        mv = self.latest(ws)
        c = next((c for c in mv.artifact["clusters"] if c["cluster"] == cluster), None)
        if c is None:
            raise NotFound(f"cluster {cluster!r} is not in clusters model v{mv.version} "
                           f"(it has {', '.join(x['cluster'] for x in mv.artifact['clusters'])})")
        try:
            self.tags.get(ws, CLUSTER_TAG)
        except NotFound:
            raise NotFound("the cluster tag has not been written yet: run the clustering (POST /clusters/run) "
                           "before saving a cluster as a segment") from None
        rule = {"kind": "attribute", "field": f"tags.{CLUSTER_TAG}", "op": "eq", "value": cluster}
        desc = (f"cluster {cluster} of clusters model v{mv.version} ({c['size']} customers at fit): "
                f"{c.get('description_en', '')} / {c.get('description_zh', '')}. Follows the cluster tag: a refit "
                "re-assigns customers.")
        seg = self.segments.create(ws, name or f"cluster {cluster} (v{mv.version})", rule, description=desc,
                                   realtime=realtime, actor=actor)
        return {**seg, "rule": rule}
