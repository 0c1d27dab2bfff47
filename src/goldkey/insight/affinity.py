"""Product affinity: association rules, category gaps and the next best product per customer.

**Transactions.** Two kinds are mined, each at two item levels (SKU and category):

- *basket*: the distinct items of one order (``order_lines`` of one ``order_id``);
- *customer*: every distinct item a live profile (``orders_resolved.canonical_id``) ever bought in
  the window (its purchase history as one set).

**Association rules** (Agrawal, Imielinski & Swami 1993; Agrawal & Srikant 1994). Rules with
longer itemsets (``max_len`` > 2) come from `mlxtend <https://rasbt.github.io/mlxtend/>`_: frequent
itemsets by FP-growth (Han, Pei & Yin 2000, ``mlxtend.frequent_patterns.fpgrowth``), then
``association_rules``. Pair rules (the default) are counted exactly from the co-occurrence matrix
X'X of the sparse transaction x item matrix, which gives mlxtend's numbers (a test checks it) at a
fraction of its cost (see :func:`mine_rules`). For a rule X -> Y over N transactions:

- support(X -> Y) = n(X and Y) / N, the share of all transactions holding both;
- confidence = n(X and Y) / n(X), the estimated P(Y | X);
- lift = confidence / support(Y): 1 means independence, 3 means "three times as likely as usual";
- leverage = support(X and Y) - support(X) support(Y); conviction = (1 - support(Y)) / (1 - confidence)
  (Brin et al. 1997), infinite (``None`` here) for a rule that never fails.

**Category gaps** ("bought A, never B") are counted over the customers' category sets: for every
ordered pair of categories, how many customers bought A, how many of them also bought B, and how
many never did. The share of A-buyers who also buy B (the confidence of A -> B at customer level)
says how natural the pairing is; the "never" count is the size of the cross-sell audience. Each
pair also names the B product that A-buyers who do buy B chose most often: the offer for the gap.

**Next best product** (:func:`next_best_products`) combines, per customer, in this order:
(1) a category gap whose pairing is strong (confidence >= ``min_gap_confidence``): the gap's offer,
best-ranked by the recommender within that category; (2) the strongest applicable SKU rule of the
customer-level rules; (3) the recommender's top item. Items the customer already owns are excluded
unless they are *consumables*: an item is a consumable when at least ``consumable_min_repurchase``
of its buyers bought it in two or more different orders, or when that share pooled over its
category's SKUs does (measured on the data, so a new lens is a consumable like the other lenses;
in the demo eye-care brand about 40 % of lens and solution buyers rebuy the same SKU, under 12 % of
accessory buyers), or when its category is listed in ``consumable_categories``.
Every choice carries its reason ("customers who buy X also buy Y, lift 3.2").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, NotFound, validated
from goldkey.insight.purchases import EXCLUDE_STATUSES_DOC, excluded_statuses, status_filter
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, RefitEveryHours, one_run_at_a_time
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore

MODEL_NAME = "affinity"
MODEL_KIND = "affinity"
LEVELS = ("sku", "category")
SCOPES = ("basket", "customer")
Level = Literal["sku", "category"]
Scope = Literal["basket", "customer"]
# dense one-hot matrices up to this many cells; sparse (mlxtend's sparse path) above
_DENSE_CELLS = 50_000_000


class AffinityDefinition(BaseModel):
    """What an affinity run mines (what the artifact's definition hash covers)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="orders up to this instant (default: now)")
    lookback_days: int = Field(default=730, ge=1, le=3650, description="orders of the last N days count")
    exclude_statuses: list[str] = Field(default_factory=list, description=EXCLUDE_STATUSES_DOC)
    min_support: float = Field(default=0.01, gt=0, le=1, description="minimum itemset support (share of transactions)")
    min_confidence: float = Field(default=0.05, ge=0, le=1, description="minimum rule confidence")
    min_lift: float = Field(default=0.0, ge=0, description="minimum rule lift (0: keep all)")
    max_len: int = Field(default=2, ge=2, le=4, description="largest itemset (antecedent + consequent)")
    max_rules: int = Field(default=5000, ge=1, le=100_000, description="keep the rules of highest lift")
    min_transactions: int = Field(default=20, ge=2, description="refuse to mine fewer transactions")
    refit_every_hours: RefitEveryHours = None

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: AffinityDefinition | Mapping[str, Any] | None) -> AffinityDefinition:
    """Validate a definition; raises InvalidInput naming the bad field."""
    if isinstance(data, AffinityDefinition):
        return data
    return validated(AffinityDefinition, data or {})


# -- data ---------------------------------------------------------------------------------------------
NO_CATEGORY = "(none)"
"""The category of an order line that has none: counted in the rules, never offered as a gap."""


def load_lines(analytical: AnalyticalStore, ws: str, *, until: datetime, since: datetime | None = None,
               exclude_statuses: Sequence[str] = (), profile_id: str | None = None) -> pl.DataFrame:
    """Order lines with their live profile: ``profile_id, order_id, ordered_at, sku, category``
    (orders in ``(since, until]``, of one profile when given, lines without a SKU dropped, category
    ``(none)`` when missing)."""
    status = ""
    params: list[Any] = [ws, until]
    if since is not None:
        status += " AND o.ordered_at > ?"
        params.append(since)
    if profile_id is not None:
        status += " AND o.canonical_id = ?"
        params.append(profile_id)
    status += f" AND {status_filter('o.status')}"  # refunds and cancellations are no purchases
    params.append(excluded_statuses(exclude_statuses))
    params.append(ws)
    sql = f"""
        SELECT o.canonical_id AS profile_id, o.order_id, o.ordered_at, l.sku,
               coalesce(nullif(trim(l.category), ''), '{NO_CATEGORY}') AS category
        FROM orders_resolved o JOIN order_lines l ON l.order_id = o.order_id AND l.workspace_id = o.workspace_id
        WHERE o.workspace_id = ? AND o.ordered_at <= ?{status} AND l.workspace_id = ?
          AND l.sku IS NOT NULL AND trim(l.sku) <> ''"""
    cur = analytical.cursor()
    try:
        tbl = cur.sql(sql, params=params).to_arrow_table()
    finally:
        cur.close()
    df = pl.from_arrow(tbl)
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.col("ordered_at").dt.convert_time_zone("UTC"))


def transactions(lines: pl.DataFrame, level: Level, scope: Scope) -> pl.DataFrame:
    """Distinct (``tid``, ``item``) pairs: a basket is one order, a customer history one profile."""
    tid = "order_id" if scope == "basket" else "profile_id"
    return lines.select(pl.col(tid).alias("tid"), pl.col(level).alias("item")).unique()


def incidence(pairs: pl.DataFrame) -> tuple[sp.csr_matrix, list[str], int]:
    """A transactions x items 0/1 sparse matrix, the item names (sorted) and the transaction count."""
    items = sorted(pairs["item"].unique().to_list())
    codes = pairs.with_columns(
        (pl.col("tid").rank("dense") - 1).cast(pl.Int64).alias("t"),
        pl.col("item").replace_strict(items, list(range(len(items))), return_dtype=pl.Int32).alias("i"))
    n_tx = int(pairs["tid"].n_unique())
    t = codes["t"].to_numpy()
    m = sp.csr_matrix((np.ones(len(t), dtype=np.bool_), (t, codes["i"].to_numpy())), shape=(n_tx, len(items)))
    return m, items, n_tx


# -- association rules --------------------------------------------------------------------------------
def mine_rules(pairs: pl.DataFrame, d: AffinityDefinition, what: str) -> tuple[list[dict[str, Any]], int]:
    """Rules of one (level, scope), sorted by lift then confidence then support. Returns (rules,
    transaction count); raises InvalidInput when there are fewer than ``min_transactions``.

    Pair rules (``max_len`` 2, the default) are counted exactly from the item co-occurrence matrix
    X'X of the sparse incidence matrix (:func:`pair_rules`); longer itemsets use mlxtend's FP-growth
    and ``association_rules``. Both give the same pair rules (a test checks it); the matrix path is
    what makes 1M customers feasible: mlxtend's FP-growth is pure Python (about 4 s per rule set
    at 20k customers on the benchmark machine, linear in the transactions)."""
    m, items, n_tx = incidence(pairs)
    if n_tx < d.min_transactions:
        raise InvalidInput(f"too few {what} to mine: {n_tx} (need at least {d.min_transactions}); import more "
                           "orders or widen lookback_days", field="orders")
    if d.max_len == 2:
        return pair_rules(m, items, n_tx, d), n_tx
    return mlxtend_rules(m, items, n_tx, d), n_tx


def pair_rules(m: sp.csr_matrix, items: Sequence[str], n_tx: int, d: AffinityDefinition) -> list[dict[str, Any]]:
    """All rules {a} -> {b} from the co-occurrence counts, with the same thresholds as mlxtend."""
    x = m.astype(np.float64)
    co = np.rint((x.T @ x).toarray()).astype(np.int64)
    n = np.diag(co).copy()
    np.fill_diagonal(co, 0)
    a, b = np.nonzero(co >= max(1, math.ceil(d.min_support * n_tx - 1e-9)))
    both = co[a, b]
    support = both / n_tx
    keep = support >= d.min_support
    a, b, both, support = a[keep], b[keep], both[keep], support[keep]
    sa, sb = n[a] / n_tx, n[b] / n_tx
    conf = both / n[a]
    lift = conf / sb
    keep = (conf >= d.min_confidence) & (lift >= d.min_lift)
    a, b, both, support, sa, sb, conf, lift = (v[keep] for v in (a, b, both, support, sa, sb, conf, lift))
    order = np.lexsort((-support, -conf, -lift))[: d.max_rules]
    out = []
    for k in order.tolist():
        out.append({"antecedent": [items[a[k]]], "consequent": [items[b[k]]], "support": float(support[k]),
                    "confidence": float(conf[k]), "lift": float(lift[k]),
                    "leverage": float(support[k] - sa[k] * sb[k]),
                    "conviction": None if conf[k] >= 1 else float((1 - sb[k]) / (1 - conf[k])),
                    "count": int(both[k]), "antecedent_support": float(sa[k]), "consequent_support": float(sb[k])})
    return out


def mlxtend_rules(m: sp.csr_matrix, items: Sequence[str], n_tx: int, d: AffinityDefinition) -> list[dict[str, Any]]:
    """Rules of itemsets up to ``max_len`` by mlxtend (FP-growth, then association_rules)."""
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    if n_tx * len(items) <= _DENSE_CELLS:
        onehot = pd.DataFrame(m.toarray(), columns=list(items))
    else:
        onehot = pd.DataFrame.sparse.from_spmatrix(m.astype(np.bool_), columns=list(items))
    freq = fpgrowth(onehot, min_support=d.min_support, use_colnames=True, max_len=d.max_len)
    if len(freq) == 0 or int((freq["itemsets"].map(len) >= 2).sum()) == 0:
        return []
    rules = association_rules(freq, num_itemsets=n_tx, metric="confidence", min_threshold=d.min_confidence,
                              return_metrics=["antecedent support", "consequent support", "support", "confidence",
                                              "lift", "leverage", "conviction"])
    if d.min_lift > 0:
        rules = rules[rules["lift"] >= d.min_lift]
    rules = rules.sort_values(["lift", "confidence", "support"], ascending=False).head(d.max_rules)
    out = []
    for r in rules.itertuples(index=False):
        conv = float(r.conviction)
        out.append({
            "antecedent": sorted(r.antecedents), "consequent": sorted(r.consequents),
            "support": float(r.support), "confidence": float(r.confidence), "lift": float(r.lift),
            "leverage": float(r.leverage), "conviction": conv if math.isfinite(conv) else None,
            "count": int(round(float(r.support) * n_tx)),
        })
    return _with_supports(out, rules)


def _with_supports(out: list[dict[str, Any]], rules: pd.DataFrame) -> list[dict[str, Any]]:
    """Fill antecedent / consequent support from the named columns (itertuples mangles names with spaces)."""
    for row, a, c in zip(out, rules["antecedent support"].tolist(), rules["consequent support"].tolist(), strict=True):
        row["antecedent_support"] = float(a)
        row["consequent_support"] = float(c)
    return out


def filter_rules(rules: Sequence[Mapping[str, Any]], *, min_support: float = 0.0, min_confidence: float = 0.0,
                 min_lift: float = 0.0, antecedent: str | None = None, consequent: str | None = None,
                 limit: int = 100) -> list[dict[str, Any]]:
    """The stored rules that pass the thresholds and (when given) hold an item on either side."""
    out = []
    for r in rules:
        if r["support"] < min_support or r["confidence"] < min_confidence or r["lift"] < min_lift:
            continue
        if antecedent is not None and antecedent not in r["antecedent"]:
            continue
        if consequent is not None and consequent not in r["consequent"]:
            continue
        out.append(dict(r))
        if len(out) >= limit:
            break
    return out


# -- category gaps ------------------------------------------------------------------------------------
def category_gaps(lines: pl.DataFrame) -> list[dict[str, Any]]:
    """For every ordered pair (A, B) of categories: customers who bought A (``a_buyers``), who also
    bought B (``both``), who never bought B (``never_b``), the share ``both / a_buyers``
    (confidence), the lift of that share over B's share of all buyers, the customers whose ONLY
    category is A (``only_a``), and the B product most often chosen by customers who bought both
    (``offer_sku``). Lines without a category take no part: "(none)" is no category to offer."""
    lines = lines.filter(pl.col("category") != NO_CATEGORY)
    pairs = transactions(lines, "category", "customer")
    m, cats, n_cust = incidence(pairs)
    x = m.astype(np.int64)
    co = (x.T @ x).toarray()
    n = np.diag(co).astype(np.int64)
    ncat = np.asarray(x.sum(axis=1)).ravel()
    only = np.asarray(x[ncat == 1].sum(axis=0)).ravel()
    offers = _gap_offers(lines)
    out = []
    for a in range(len(cats)):
        for b in range(len(cats)):
            if a == b or n[a] == 0:
                continue
            both = int(co[a, b])
            conf = float(both / n[a])
            base = float(n[b] / n_cust)
            out.append({"category_a": cats[a], "category_b": cats[b], "a_buyers": int(n[a]), "both": both,
                        "never_b": int(n[a] - both), "confidence": conf, "lift": conf / base if base else None,
                        "only_a": int(only[a]), "offer_sku": offers.get((cats[a], cats[b]))})
    out.sort(key=lambda g: (-g["never_b"], g["category_a"], g["category_b"]))
    return out


def _gap_offers(lines: pl.DataFrame) -> dict[tuple[str, str], str]:
    """(A, B) -> the B-category SKU bought by most customers who bought both A and B (ties: SKU)."""
    cust_cat = lines.select("profile_id", "category").unique()
    cust_sku = lines.select("profile_id", "sku", "category").unique()
    joined = cust_cat.rename({"category": "category_a"}).join(cust_sku, on="profile_id")
    joined = joined.filter(pl.col("category_a") != pl.col("category"))
    top = (joined.group_by("category_a", "category", "sku").len()
           .sort(["len", "sku"], descending=[True, False])
           .group_by("category_a", "category", maintain_order=True).first())
    return {(r["category_a"], r["category"]): r["sku"] for r in top.iter_rows(named=True)}


def customer_gaps(categories: set[str], gaps: Sequence[Mapping[str, Any]], min_confidence: float = 0.0
                  ) -> list[dict[str, Any]]:
    """The gaps of one customer who bought ``categories``: for every category B never bought, the
    strongest pairing A -> B among the customer's categories (highest confidence), best first. A
    pairing nobody has bought (confidence 0) is no reason to offer B."""
    best: dict[str, Mapping[str, Any]] = {}
    for g in gaps:
        if (g["category_a"] in categories and g["category_b"] not in categories and g["both"] > 0
                and g["category_b"] != NO_CATEGORY and g["confidence"] >= min_confidence):
            cur = best.get(g["category_b"])
            if cur is None or g["confidence"] > cur["confidence"]:
                best[g["category_b"]] = g
    out = [{"category": b, "because_of": g["category_a"], "confidence": g["confidence"], "lift": g["lift"],
            "offer_sku": g["offer_sku"], "reason": gap_reason(g)} for b, g in best.items()]
    out.sort(key=lambda r: -r["confidence"])
    return out


def gap_reason(g: Mapping[str, Any]) -> str:
    return (f"{g['confidence']:.0%} of customers who buy {g['category_a']} also buy {g['category_b']}; "
            f"this customer never bought {g['category_b']}")


def rule_reason(r: Mapping[str, Any]) -> str:
    return (f"customers who buy {' + '.join(r['antecedent'])} also buy {' + '.join(r['consequent'])}, "
            f"lift {r['lift']:.1f}, confidence {r['confidence']:.0%}")


# -- consumables --------------------------------------------------------------------------------------
def repurchase_rates(lines: pl.DataFrame, by: Literal["sku", "category"] = "sku") -> dict[str, float]:
    """Share of (customer, SKU) purchases made in two or more different orders, per SKU or pooled
    over the SKUs of each category."""
    per = lines.select("profile_id", "sku", "category", "order_id").unique().group_by(
        "profile_id", "sku", "category").len()
    agg = per.group_by(by).agg((pl.col("len") >= 2).mean().alias("rate"))
    return {r[by]: float(r["rate"]) for r in agg.iter_rows(named=True)}


def consumables(lines: pl.DataFrame, min_repurchase: float, categories: Sequence[str] = ()) -> set[str]:
    """SKUs that may be offered again to customers who own them: the SKU's own repurchase rate or
    its category's pooled rate (robust for new SKUs with little history) reaches ``min_repurchase``,
    or its category is listed in ``categories``."""
    by_sku = repurchase_rates(lines, "sku")
    by_cat = repurchase_rates(lines, "category")
    cat_of = dict(lines.select("sku", "category").unique(subset="sku", keep="first").iter_rows())
    listed = set(categories)
    return {s for s, r in by_sku.items()
            if r >= min_repurchase or by_cat.get(cat_of.get(s, ""), 0.0) >= min_repurchase or cat_of.get(s) in listed}


# -- next best product --------------------------------------------------------------------------------
def next_best_products(histories: Mapping[str, set[str]], cat_of: Mapping[str, str],
                       sku_rules: Sequence[Mapping[str, Any]], gaps: Sequence[Mapping[str, Any]],
                       recommended: Mapping[str, Sequence[Mapping[str, Any]]], consumable: set[str], *,
                       min_gap_confidence: float = 0.2) -> dict[str, dict[str, Any]]:
    """Profile id -> ``{sku, category, source, reason}`` (see the module docstring for the order:
    strong category gap, then SKU rule, then the recommender). ``histories`` maps a profile to the
    SKUs it bought, ``sku_rules`` are customer-level SKU rules, ``recommended`` the recommender's
    ranked items per profile (``{"sku", "score", "reason"}``)."""
    by_antecedent: dict[str, list[Mapping[str, Any]]] = {}
    for r in sku_rules:
        if len(r["consequent"]) == 1:
            for a in r["antecedent"]:
                by_antecedent.setdefault(a, []).append(r)
    out: dict[str, dict[str, Any]] = {}
    gap_cache: dict[frozenset[str], list[dict[str, Any]]] = {}  # few distinct category sets
    for pid, owned in histories.items():
        recs = [r for r in recommended.get(pid, ()) if r["sku"] not in owned or r["sku"] in consumable]
        cats = frozenset(cat_of[s] for s in owned if s in cat_of)
        if cats not in gap_cache:
            gap_cache[cats] = customer_gaps(set(cats), gaps, min_gap_confidence)
        choice = _gap_choice(gap_cache[cats], cat_of, recs)
        if choice is None:
            choice = _rule_choice(owned, by_antecedent, consumable)
        if choice is None and recs:
            r = recs[0]
            choice = {"sku": r["sku"], "source": "recommender", "reason": r.get("reason") or "recommended",
                      "score": r.get("score")}
        if choice is not None:
            choice["category"] = cat_of.get(choice["sku"])
            out[pid] = choice
    return out


def _gap_choice(mine: Sequence[Mapping[str, Any]], cat_of: Mapping[str, str], recs: Sequence[Mapping[str, Any]]
                ) -> dict[str, Any] | None:
    if not mine:
        return None
    g = mine[0]
    in_cat = [r for r in recs if cat_of.get(r["sku"]) == g["category"]]
    sku = in_cat[0]["sku"] if in_cat else g["offer_sku"]
    if sku is None:
        return None
    return {"sku": sku, "source": "category_gap", "reason": g["reason"], "score": g["confidence"]}


def _rule_choice(owned: set[str], by_antecedent: Mapping[str, Sequence[Mapping[str, Any]]],
                 consumable: set[str]) -> dict[str, Any] | None:
    best: Mapping[str, Any] | None = None
    for s in owned:
        for r in by_antecedent.get(s, ()):
            y = r["consequent"][0]
            if (y in owned and y not in consumable) or not set(r["antecedent"]) <= owned:
                continue
            if best is None or (r["confidence"], r["lift"]) > (best["confidence"], best["lift"]):
                best = r
    if best is None:
        return None
    return {"sku": best["consequent"][0], "source": "rule", "reason": rule_reason(best), "score": best["confidence"]}


# -- the service --------------------------------------------------------------------------------------
class AffinityService:
    """Mine rules and gaps of a workspace, store them as a model version, and read them back."""

    def __init__(self, analytical: AnalyticalStore, registry: ModelRegistry) -> None:
        self.analytical = analytical
        self.registry = registry

    @classmethod
    def from_goldkey(cls, gk: Any) -> AffinityService:
        return cls(gk.analytical, ModelRegistry(gk.settings.data_dir / "models"))

    def lines(self, ws: str, d: AffinityDefinition) -> tuple[pl.DataFrame, datetime]:
        """The order lines the definition covers; raises InvalidInput when there are none."""
        t = as_of_utc(d.as_of)
        lines = load_lines(self.analytical, ws, until=t, since=t - timedelta(days=d.lookback_days),
                           exclude_statuses=d.exclude_statuses)
        if lines.height == 0:
            raise InvalidInput(f"no order lines with a SKU in the {d.lookback_days} days before {to_iso(t)}; "
                               "import orders first (or widen lookback_days)", field="orders")
        return lines, t

    @one_run_at_a_time(MODEL_NAME)
    def run(self, ws: str, definition: AffinityDefinition | Mapping[str, Any] | None = None,
            progress: Any = None) -> dict[str, Any]:
        """Mine the four rule sets and the category gaps; save them as a new model version.
        ``progress(step, total, label)`` is called between steps. Returns the run's report."""
        t0 = time.perf_counter()
        d = parse_definition(definition)
        lines, t = self.lines(ws, d)
        rules: dict[str, list[dict[str, Any]]] = {}
        counts: dict[str, int] = {}
        steps = [(lv, sc) for sc in SCOPES for lv in LEVELS]
        for k, (lv, sc) in enumerate(steps):
            if progress is not None:
                progress(k, len(steps) + 1, f"rules {sc}/{lv}")
            what = "orders (baskets)" if sc == "basket" else "customers"
            rules[f"{sc}_{lv}"], counts[f"{sc}_{lv}"] = mine_rules(transactions(lines, lv, sc), d, what)
        if progress is not None:
            progress(len(steps), len(steps) + 1, "category gaps")
        gaps = category_gaps(lines)
        metrics = {"transactions": counts, "rules": {k: len(v) for k, v in rules.items()},
                   "customers": int(lines["profile_id"].n_unique()), "orders": int(lines["order_id"].n_unique()),
                   "skus": int(lines["sku"].n_unique()), "categories": int(lines["category"].n_unique()),
                   "fit_ms": int((time.perf_counter() - t0) * 1000)}
        artifact = {"as_of": to_iso(t), "rules": rules, "gaps": gaps}
        mv = self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=d.as_json(), artifact=artifact,
                                metrics=metrics)
        if progress is not None:
            progress(len(steps) + 1, len(steps) + 1, "saved")
        return {"model": MODEL_NAME, "version": mv.version, "as_of": to_iso(t), "metrics": metrics,
                "took_ms": int((time.perf_counter() - t0) * 1000)}

    def latest(self, ws: str) -> ModelVersion:
        """The latest mined version; NotFound (saying how to make one) when there is none."""
        try:
            return self.registry.load(ws, MODEL_NAME, kind=MODEL_KIND)
        except NotFound:
            raise NotFound("no affinity model yet: run it first (POST /api/v1/insights/affinity/run "
                           "or `goldkey insight affinity`)") from None

    def rules(self, ws: str, *, scope: Scope = "basket", level: Level = "sku", **filters: Any) -> dict[str, Any]:
        """Stored rules of (scope, level) filtered by :func:`filter_rules`."""
        if scope not in SCOPES:
            raise InvalidInput(f"scope must be one of {list(SCOPES)}", field="scope")
        if level not in LEVELS:
            raise InvalidInput(f"level must be one of {list(LEVELS)}", field="level")
        mv = self.latest(ws)
        rows = mv.artifact["rules"][f"{scope}_{level}"]
        limit = int(filters.pop("limit", 100))
        matched = filter_rules(rows, **filters, limit=len(rows) or 1)
        return {"version": mv.version, "scope": scope, "level": level,
                "transactions": mv.metrics["transactions"][f"{scope}_{level}"],
                "matched": len(matched), "rules": matched[:limit]}

    def gaps(self, ws: str, *, category_a: str | None = None, category_b: str | None = None,
             profile_id: str | None = None, min_confidence: float = 0.0) -> dict[str, Any]:
        """Stored category gaps (filtered), or one customer's own gaps when ``profile_id`` is given."""
        mv = self.latest(ws)
        gaps: list[dict[str, Any]] = mv.artifact["gaps"]
        cats = {g["category_a"] for g in gaps} | {g["category_b"] for g in gaps}
        for v in (category_a, category_b):
            if v is not None and v not in cats:
                raise NotFound(f"no category {v!r} in the affinity model (known: {sorted(cats)})")
        out: dict[str, Any] = {"version": mv.version}
        if profile_id is not None:
            owned = self._categories_of(ws, profile_id, mv)
            out["profile_id"] = profile_id
            out["categories"] = sorted(owned)
            out["gaps"] = customer_gaps(owned, gaps, min_confidence)
            return out
        out["gaps"] = [g for g in gaps if (category_a is None or g["category_a"] == category_a)
                       and (category_b is None or g["category_b"] == category_b) and g["confidence"] >= min_confidence]
        return out

    def _categories_of(self, ws: str, profile_id: str, mv: ModelVersion) -> set[str]:
        """The categories the customer bought, by the model's own rules: purchases only (no refund,
        cancellation or excluded status), from the start of the model's window (``lookback_days``
        before its ``as_of``) up to now, so a purchase since the model was fitted closes its gap."""
        d = parse_definition(mv.definition)
        since = datetime.fromisoformat(mv.artifact["as_of"]) - timedelta(days=d.lookback_days)
        lines = load_lines(self.analytical, ws, until=datetime.now(UTC), since=since,
                           exclude_statuses=d.exclude_statuses, profile_id=profile_id)
        owned = set(lines["category"].to_list())
        if not owned:
            raise NotFound(f"profile {profile_id!r} has no purchase in this workspace since {to_iso(since)} (the "
                           f"affinity model's {d.lookback_days} days before {mv.artifact['as_of']})")
        return owned - {NO_CATEGORY}
