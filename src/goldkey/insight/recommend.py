"""Product recommendations learned from purchases: item-to-item and per customer, evaluated on a
time split against a popularity baseline.

**Data.** The customer x SKU purchase matrix X (1 when the customer bought the SKU in the window;
implicit feedback, no ratings) from ``orders_resolved`` + ``order_lines``.

**Methods.**

- ``popularity``: SKUs ranked by how many customers bought them (the baseline every model must beat).
- ``cosine``: item-based collaborative filtering (Sarwar et al. 2001; Deshpande & Karypis 2004):
  sim(i, j) = |buyers(i) and buyers(j)| / sqrt(|buyers(i)| |buyers(j)|); a customer's score of j
  is the sum of sim(h, j) over the SKUs h they bought.
- ``ease``: EASE, the "embarrassingly shallow autoencoder" (Steck, WWW 2019): the item-item weight
  matrix B minimising ||X - XB||^2 + lambda ||B||^2 with diag(B) = 0 has the closed form
  P = (X'X + lambda I)^-1, B = -P / diag(P) (column-wise), diag(B) = 0; scores are XB. It is an
  implicit-feedback linear model that regularly matches matrix factorisation on top-N tasks and
  needs one n_items x n_items inverse (fine up to a few thousand SKUs).
- ``auto`` (default): all three are evaluated on the time split below and the best recall@10 on one
  half of the test customers wins; every method's figures are reported on the other half, so the
  winner's figures are not flattered by the choice. The chosen method is then refitted on all
  purchases for serving.

**Evaluation.** A cutoff ``test_days`` before ``as_of``: the models learn from purchases up to the
cutoff; each customer who bought before the cutoff and then bought SKUs *new to them* after it is a
test case (SKUs launched after the cutoff included: no method can name them, and they count as
misses for all alike). Recommendations exclude what the customer already bought (discovery, the cross-sell
question); precision@k = hits / k and recall@k = hits / (new SKUs bought), averaged over test
customers, for k = 5 and 10, for every method including the popularity baseline.

Per customer the top-N recommendations, each with a reason (the bought SKU that contributes most),
and the next best product of :func:`goldkey.insight.affinity.next_best_products` are written with
:func:`goldkey.insight.writeback.write_profile_insights` under ``insights.recommend``. Item-to-item
neighbours (cosine, with co-buyer counts) are stored in the model artifact.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import orjson
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, NotFound, validated
from goldkey.insight import affinity
from goldkey.insight.purchases import EXCLUDE_STATUSES_DOC
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, RefitEveryHours, one_run_at_a_time
from goldkey.insight.writeback import read_profile_insights, write_profile_insights
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore

MODEL_NAME = "recommend"
MODEL_KIND = "recommend"
METHODS = ("popularity", "cosine", "ease")
KS = (5, 10)
_CHUNK = 20_000


class RecommendDefinition(BaseModel):
    """How recommendations are trained and evaluated (what the artifact's definition hash covers)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="purchases up to this instant (default: now)")
    lookback_days: int = Field(default=730, ge=1, le=3650, description="purchases of the last N days count")
    exclude_statuses: list[str] = Field(default_factory=list, description=EXCLUDE_STATUSES_DOC)
    method: Literal["auto", "popularity", "cosine", "ease"] = Field(
        default="auto", description="auto: the best recall@10 on one half of the time split's test customers")
    test_days: int = Field(default=90, ge=1, le=730, description="evaluation: the last N days are the test period")
    top_n: int = Field(default=10, ge=1, le=100, description="recommendations written per customer")
    neighbours: int = Field(default=20, ge=1, le=200, description="similar items stored per SKU")
    ease_lambda: float = Field(default=20.0, gt=0, description="EASE L2 regularisation")
    min_customers: int = Field(default=20, ge=2, description="refuse to train on fewer customers")
    consumable_min_repurchase: float = Field(default=0.3, ge=0, le=1,
                                             description="next best: a SKU rebought by this share is a consumable")
    consumable_categories: list[str] = Field(default_factory=list, description="categories always consumable")
    min_gap_confidence: float = Field(default=0.2, ge=0, le=1, description="next best: strongest gap to act on")
    rule_min_support: float = Field(default=0.005, gt=0, le=1, description="next best: support of SKU rules")
    refit_every_hours: RefitEveryHours = None

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: RecommendDefinition | Mapping[str, Any] | None) -> RecommendDefinition:
    """Validate a definition; raises InvalidInput naming the bad field."""
    if isinstance(data, RecommendDefinition):
        return data
    return validated(RecommendDefinition, data or {})


# -- the model ----------------------------------------------------------------------------------------
class Interactions:
    """The binary customer x SKU matrix of a set of order lines."""

    def __init__(self, lines: pl.DataFrame, items: Sequence[str] | None = None) -> None:
        pairs = lines.select("profile_id", "sku").unique()
        self.items = list(items) if items is not None else sorted(pairs["sku"].unique().to_list())
        index = {s: k for k, s in enumerate(self.items)}
        pairs = pairs.filter(pl.col("sku").is_in(list(index)))
        self.users = sorted(pairs["profile_id"].unique().to_list())
        uidx = {p: k for k, p in enumerate(self.users)}
        rows = np.fromiter((uidx[p] for p in pairs["profile_id"].to_list()), np.int64, pairs.height)
        cols = np.fromiter((index[s] for s in pairs["sku"].to_list()), np.int64, pairs.height)
        self.x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self.users), len(self.items)))
        self.user_index = uidx
        self.item_index = index


def cosine_similarity(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(cosine item-item similarity with a zero diagonal, co-buyer counts)."""
    co = (x.T @ x).toarray().astype(np.float64)
    n = np.diag(co).copy()
    norm = np.sqrt(np.outer(n, n))
    sim = np.divide(co, norm, out=np.zeros_like(co), where=norm > 0)
    np.fill_diagonal(sim, 0.0)
    return sim, co


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's item-item weights B (Steck 2019), diag(B) = 0."""
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def fit_weights(x: sp.csr_matrix, method: str, lam: float) -> np.ndarray:
    """The items x items weight matrix of ``method`` (popularity: none, scores come from counts)."""
    if method == "cosine":
        return cosine_similarity(x)[0]
    if method == "ease":
        return ease_weights(x, lam)
    return np.zeros((x.shape[1], x.shape[1]))


def top_n(x: sp.csr_matrix, method: str, weights: np.ndarray, popularity: np.ndarray, n: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Per user (row of ``x``) the ``n`` best unowned items and their scores (chunked: never the full
    users x items score matrix at once). Popularity breaks ties and fills personal scores of 0; items
    of equal score (equally popular) go in item order, so the result follows from the data alone."""
    n = min(n, x.shape[1])
    tie = popularity / (popularity.max() + 1.0) * 1e-6
    out_i = np.zeros((x.shape[0], n), np.int64)
    out_s = np.zeros((x.shape[0], n), np.float64)
    for a in range(0, x.shape[0], _CHUNK):
        xc = x[a:a + _CHUNK]
        scores = (np.tile(popularity.astype(np.float64), (xc.shape[0], 1)) if method == "popularity"
                  else np.asarray(xc @ weights, dtype=np.float64)) + tie
        scores[xc.nonzero()] = -np.inf
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        ps = np.take_along_axis(scores, part, axis=1)
        # items tied with the n-th best at the cut: argpartition keeps an arbitrary few of them; those
        # rows are cut again by a stable sort, so the lower item index (the earlier SKU) wins a tie
        tied = np.flatnonzero((scores >= ps.min(axis=1, keepdims=True)).sum(axis=1) > n)
        if tied.size:
            part[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :n]
            ps[tied] = np.take_along_axis(scores[tied], part[tied], axis=1)
        order = np.lexsort((part, -ps), axis=1)  # best first; equal scores by item index
        out_i[a:a + _CHUNK] = np.take_along_axis(part, order, axis=1)
        out_s[a:a + _CHUNK] = np.take_along_axis(ps, order, axis=1)
    return out_i, out_s


def evaluate(train: pl.DataFrame, test: pl.DataFrame, methods: Sequence[str], lam: float,
             ks: Sequence[int] = KS, select: bool = False) -> dict[str, Any]:
    """Precision@k and recall@k of each method: learn from ``train`` lines, predict the SKUs each
    customer first bought in ``test`` (customers with train purchases and new test SKUs only).

    With ``select`` the test customers are split in two halves by a hash of their id: the
    ``selection`` half's figures are for choosing a method, and ``methods`` reports every method on
    the other half only, so the chosen method's reported figures are not the best of several tries
    on the same customers."""
    inter = Interactions(train)
    known = set(inter.items)
    owned = set(zip(*train.select("profile_id", "sku").unique().to_dict(as_series=False).values(), strict=True))
    # every SKU new to the customer counts, also one launched after the cutoff that no model can
    # name (a miss for all methods alike): leaving them out made recall look better than it is
    new = test.select("profile_id", "sku").unique().filter(pl.col("profile_id").is_in(inter.users))
    truth: dict[str, set[str]] = {}
    for p, s in new.iter_rows():
        if (p, s) not in owned:
            truth.setdefault(p, set()).add(s)
    if not truth:
        raise InvalidInput("no customer bought a new SKU in the test period: nothing to evaluate on; "
                           "lengthen test_days or import more orders", field="test_days")
    users = list(truth)
    chooser = np.array([zlib.crc32(p.encode()) % 2 == 0 for p in users]) if select else np.zeros(len(users), bool)
    if select and (chooser.all() or not chooser.any()):
        raise InvalidInput(f"{len(users)} customer(s) bought a new SKU in the test period: too few to both choose "
                           "a method and report it; lengthen test_days or name the method", field="test_days")
    report = ~chooser
    rows = np.array([inter.user_index[p] for p in users])
    xs = inter.x[rows]
    popularity = np.asarray(inter.x.sum(axis=0)).ravel()
    out: dict[str, Any] = {"test_customers": int(report.sum()),
                           "test_items": sum(len(truth[p]) for p, r in zip(users, report, strict=True) if r),
                           "train_customers": len(inter.users), "methods": {}}
    if select:
        out["selection"] = {"customers": int(chooser.sum()), "methods": {}}
    kmax = max(ks)
    t_rows = np.repeat(np.arange(len(users)), [sum(s in known for s in truth[p]) for p in users])
    t_cols = np.array([inter.item_index[s] for p in users for s in truth[p] if s in known], np.int64)
    tm = sp.csr_matrix((np.ones(len(t_rows), np.float32), (t_rows, t_cols)), shape=(len(users), len(inter.items)))
    n_true = np.array([len(truth[p]) for p in users], np.float64)
    out["test_items_unseen_in_training"] = sum(len(truth[p] - known) for p, r in zip(users, report, strict=True) if r)
    for m in methods:
        t0 = time.perf_counter()
        idx, _ = top_n(xs, m, fit_weights(inter.x, m, lam), popularity, kmax)
        res: dict[str, float] = {}
        sel: dict[str, float] = {}
        for k in ks:
            hits = _hits(tm, idx[:, :k])
            res[f"precision@{k}"] = float(np.mean(hits[report] / k))
            res[f"recall@{k}"] = float(np.mean(hits[report] / n_true[report]))
            if select:
                sel[f"precision@{k}"] = float(np.mean(hits[chooser] / k))
                sel[f"recall@{k}"] = float(np.mean(hits[chooser] / n_true[chooser]))
        res["ms"] = int((time.perf_counter() - t0) * 1000)
        out["methods"][m] = res
        if select:
            out["selection"]["methods"][m] = sel
    return out


def _hits(truth: sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """Per row, how many of the recommended columns ``idx`` are true (chunked dense gathers)."""
    out = np.zeros(idx.shape[0])
    for a in range(0, idx.shape[0], _CHUNK):
        dense = truth[a:a + _CHUNK].toarray()
        out[a:a + _CHUNK] = np.take_along_axis(dense, idx[a:a + _CHUNK], axis=1).sum(axis=1)
    return out


def neighbours(x: sp.csr_matrix, items: Sequence[str], k: int) -> dict[str, list[dict[str, Any]]]:
    """SKU -> its ``k`` most similar SKUs by cosine (with the number of customers who bought both)."""
    sim, co = cosine_similarity(x)
    out: dict[str, list[dict[str, Any]]] = {}
    for i, s in enumerate(items):
        order = [j for j in np.argsort(-sim[i], kind="stable")[:k] if sim[i, j] > 0]
        out[s] = [{"sku": items[j], "cosine": float(sim[i, j]), "co_buyers": int(co[i, j])} for j in order]
    return out


def reasons(x: sp.csr_matrix, weights: np.ndarray, items: Sequence[str], idx: np.ndarray, method: str
            ) -> list[list[str]]:
    """Per user and recommended item: the bought SKU h with the largest weight(h, item) explains it
    (computed in chunks over dense owned-masks; popularity and zero weights say "popular")."""
    label = "cosine" if method == "cosine" else "weight"
    out: list[list[str]] = []
    for a in range(0, x.shape[0], _CHUNK):
        owned = x[a:a + _CHUNK].toarray() > 0
        ic = idx[a:a + _CHUNK]
        best_h = np.zeros(ic.shape, np.int64)
        best_w = np.zeros(ic.shape)
        if method != "popularity":
            for k in range(ic.shape[1]):
                w = np.where(owned, weights[:, ic[:, k]].T, -np.inf)
                best_h[:, k] = np.argmax(w, axis=1)
                best_w[:, k] = w[np.arange(len(w)), best_h[:, k]]
        for r in range(ic.shape[0]):
            out.append([f"customers who bought {items[h]} also buy {items[j]} ({label} {bw:.2f})" if bw > 0
                        else "popular with customers"
                        for h, j, bw in zip(best_h[r].tolist(), ic[r].tolist(), best_w[r].tolist(), strict=True)])
    return out


# -- the service --------------------------------------------------------------------------------------
class RecommendService:
    """Train, evaluate, store and serve recommendations of a workspace."""

    def __init__(self, gk_parts: Any, engine: Any, analytical: AnalyticalStore, registry: ModelRegistry) -> None:
        self.gk_parts = gk_parts  # anything with ``writer`` (write_profile_insights runs on it)
        self.engine = engine
        self.analytical = analytical
        self.registry = registry

    @classmethod
    def from_goldkey(cls, gk: Any) -> RecommendService:
        return cls(gk, gk.engine, gk.analytical, ModelRegistry(gk.settings.data_dir / "models"))

    @one_run_at_a_time(MODEL_NAME)
    def train(self, ws: str, definition: RecommendDefinition | Mapping[str, Any] | None = None,
              progress: Any = None, write: bool = True) -> dict[str, Any]:
        """Evaluate on the time split, refit the chosen method on everything, save a model version,
        and (``write``) store every customer's top-N and next best product. Returns the report.
        Raises InvalidInput with too few customers or nothing to evaluate on."""
        t0 = time.perf_counter()
        d = parse_definition(definition)
        step = _stepper(progress, 5)
        t = as_of_utc(d.as_of)
        lines = affinity.load_lines(self.analytical, ws, until=t, since=t - timedelta(days=d.lookback_days),
                                    exclude_statuses=d.exclude_statuses)
        n_cust = lines["profile_id"].n_unique() if lines.height else 0
        if n_cust < d.min_customers:
            raise InvalidInput(f"too few customers with purchases to learn from: {n_cust} (need at least "
                               f"{d.min_customers}); import more orders or widen lookback_days", field="orders")
        step("evaluate on the time split")
        cutoff = t - timedelta(days=d.test_days)
        train = lines.filter(pl.col("ordered_at") <= cutoff)
        if train["profile_id"].n_unique() < d.min_customers:
            raise InvalidInput(f"too few customers bought before the evaluation cutoff {to_iso(cutoff)}: "
                               f"{train['profile_id'].n_unique()}; shorten test_days", field="test_days")
        methods = list(METHODS) if d.method == "auto" else sorted({"popularity", d.method})
        auto = d.method == "auto"
        ev = evaluate(train, lines.filter(pl.col("ordered_at") > cutoff), methods, d.ease_lambda, select=auto)
        ev["cutoff"] = to_iso(cutoff)
        # chosen on one half of the test customers, reported on the other (evaluate's ``select``)
        chosen = d.method if not auto else max(
            METHODS, key=lambda m: (ev["selection"]["methods"][m]["recall@10"],
                                    ev["selection"]["methods"][m]["precision@10"], m == "popularity"))
        step(f"fit {chosen} on all purchases")
        inter = Interactions(lines)
        weights = fit_weights(inter.x, chosen, d.ease_lambda)
        popularity = np.asarray(inter.x.sum(axis=0)).ravel()
        idx, scores = top_n(inter.x, chosen, weights, popularity, d.top_n)
        step("rules and gaps for the next best product")
        why = reasons(inter.x, weights, inter.items, idx, chosen)
        # a customer who owns nearly every SKU gets fewer than top_n (owned ones score -inf)
        recs = {p: [{"sku": inter.items[j], "score": round(s, 6), "reason": r}
                    for j, s, r in zip(idx[u].tolist(), scores[u].tolist(), why[u], strict=True) if s > -np.inf]
                for u, p in enumerate(inter.users)}
        nb = self._next_best(lines, inter, recs, d)
        base = ev["methods"]["popularity"]
        metrics = {"chosen": chosen, "evaluation": ev, "customers": len(inter.users), "skus": len(inter.items),
                   "recall@10_vs_popularity": (ev["methods"][chosen]["recall@10"] / base["recall@10"]
                                              if base["recall@10"] else None)}
        artifact = {"as_of": to_iso(t), "method": chosen, "items": inter.items, "popularity": popularity.tolist(),
                    "similar": neighbours(inter.x, inter.items, d.neighbours)}
        step("save the model version")
        mv = self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=d.as_json(), artifact=artifact,
                                metrics=metrics)
        written = 0
        if write:
            step("write recommendations to profiles")
            payloads = {p: {"items": recs[p], "next_best": nb.get(p)} for p in inter.users}
            written = write_profile_insights(self.gk_parts, ws, MODEL_NAME, mv.version, payloads)
        return {"model": MODEL_NAME, "version": mv.version, "as_of": to_iso(t), "method": chosen, "metrics": metrics,
                "profiles_written": written, "took_ms": int((time.perf_counter() - t0) * 1000)}

    def _next_best(self, lines: pl.DataFrame, inter: Interactions, recs: Mapping[str, Sequence[Mapping[str, Any]]],
                   d: RecommendDefinition) -> dict[str, dict[str, Any]]:
        rd = affinity.AffinityDefinition(min_support=d.rule_min_support, min_confidence=0.05,
                                         min_transactions=d.min_customers)
        rules, _ = affinity.mine_rules(affinity.transactions(lines, "sku", "customer"), rd, "customers")
        gaps = affinity.category_gaps(lines)
        cons = affinity.consumables(lines, d.consumable_min_repurchase, d.consumable_categories)
        cat_of = dict(lines.select("sku", "category").unique(subset="sku", keep="first").iter_rows())
        hist: dict[str, set[str]] = {}
        x = inter.x.tocsr()
        for u, p in enumerate(inter.users):
            hist[p] = {inter.items[j] for j in x.indices[x.indptr[u]:x.indptr[u + 1]]}
        return affinity.next_best_products(hist, cat_of, rules, gaps, recs, cons,
                                           min_gap_confidence=d.min_gap_confidence)

    def latest(self, ws: str) -> ModelVersion:
        try:
            return self.registry.load(ws, MODEL_NAME, kind=MODEL_KIND)
        except NotFound:
            raise NotFound("no recommendation model yet: train it first (POST /api/v1/insights/recommendations/"
                           "train or `goldkey insight recommend`)") from None

    def for_profile(self, ws: str, profile_id: str) -> dict[str, Any]:
        """The stored recommendations and next best product of a profile; NotFound when it has none."""
        mv = self.latest(ws)
        got = read_profile_insights(self.engine, ws, profile_id).get(MODEL_NAME)
        if got is None:
            raise NotFound(f"no recommendations for profile {profile_id!r}: it had no purchases when model "
                           f"v{mv.version} was trained (or it does not exist)")
        return {"profile_id": profile_id, "version": got["version"], "items": got.get("items", []),
                "next_best": got.get("next_best")}

    def similar(self, ws: str, sku: str, limit: int = 10) -> dict[str, Any]:
        """The SKUs most often bought by the buyers of ``sku`` (cosine); NotFound for an unknown SKU."""
        mv = self.latest(ws)
        sim = mv.artifact["similar"]
        if sku not in sim:
            raise NotFound(f"unknown sku {sku!r}: nobody bought it in model v{mv.version}'s window")
        return {"sku": sku, "version": mv.version, "similar": sim[sku][:limit]}


def _stepper(progress: Any, total: int) -> Any:
    state = {"k": 0}

    def step(label: str) -> None:
        if progress is not None:
            progress(state["k"], total, label)
        state["k"] += 1

    return step
