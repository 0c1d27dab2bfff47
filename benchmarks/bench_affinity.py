"""Cross-sell benchmark: association rules, recommendations and lookalikes at 100k-1M customers.

The synthetic market has latent structure: every customer belongs to one of 60 hidden taste
clusters, each a Dirichlet distribution over 200 SKUs in 8 categories; a customer places
1 + Poisson(3) orders over 540 days with one or two lines each. Orders and lines are written straight
into a DuckDB file through ``AnalyticalStore.append`` (Arrow), the analytical store's own schema;
the operational store is not involved, so the write-back to profiles is NOT timed.

Timed, per size:

- ``affinity``: ``AffinityService.run`` (load lines, FP-growth + rules for baskets and customer
  histories by SKU and by category with mlxtend, category gaps, registry save);
- ``recommend``: ``RecommendService.train(write=False)`` (time-split evaluation of popularity,
  cosine and EASE, refit of the best on everything, top-10 per customer with reasons, rules and
  gaps for the next best product of every customer, registry save);
- ``lookalike``: features (``feature_frame``), the held-out validation and the final PU scoring
  of every customer for a seed of 2,000 customers of one taste cluster.

Usage::

    python benchmarks/bench_affinity.py [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from goldkey.insight.affinity import AffinityService  # noqa: E402
from goldkey.insight.lookalike import LookalikeRequest, feature_frame, pu_scores, validate  # noqa: E402
from goldkey.insight.lookalike import _matrix as feature_matrix  # noqa: E402
from goldkey.insight.recommend import RecommendService  # noqa: E402
from goldkey.insight.registry import ModelRegistry  # noqa: E402
from goldkey.store.analytical import AnalyticalStore  # noqa: E402

WS = "ws_bench"
AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
N_SKUS, N_CATS, N_CLUSTERS = 200, 8, 60


def build(store: AnalyticalStore, n: int, seed: int = 7) -> tuple[np.ndarray, dict[str, int]]:
    """Write the market; returns each customer's hidden cluster and the row counts."""
    r = np.random.default_rng(seed)
    cluster = r.integers(0, N_CLUSTERS, n)
    taste = r.dirichlet(np.full(N_SKUS, 0.08), N_CLUSTERS) * 0.8 + r.dirichlet(np.ones(N_SKUS)) * 0.2
    cum = np.cumsum(taste, axis=1)
    n_orders = 1 + r.poisson(3, n)
    o_cust = np.repeat(np.arange(n), n_orders)
    n_o = len(o_cust)
    o_ts = AS_OF - timedelta(days=540)
    secs = r.integers(0, 540 * 86400, n_o)
    n_lines = 1 + (r.random(n_o) < 0.45)
    l_order = np.repeat(np.arange(n_o), n_lines)
    u = r.random(len(l_order))
    cl = cluster[o_cust[l_order]]
    sku = np.minimum((cum[cl] < u[:, None]).sum(axis=1), N_SKUS - 1)
    # one order never lists a SKU twice
    keep = np.ones(len(l_order), bool)
    keep[1:] = ~((l_order[1:] == l_order[:-1]) & (sku[1:] == sku[:-1]))
    l_order, sku = l_order[keep], sku[keep]
    oid = np.char.add("O", np.arange(n_o).astype(str))
    price = r.uniform(10, 300, N_SKUS).round(2)
    ts = pa.array([o_ts + timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", tz="UTC"))
    orders = pa.table({"workspace_id": pa.array([WS] * n_o), "order_id": pa.array(oid),
                       "profile_id": pa.array(np.char.add("p", o_cust.astype(str))), "ordered_at": ts,
                       "total_amount": pa.array(np.bincount(l_order, weights=price[sku], minlength=n_o))})
    lines = pa.table({"workspace_id": pa.array([WS] * len(l_order)), "order_id": pa.array(oid[l_order]),
                      "line_no": pa.array(np.ones(len(l_order), np.int32)),
                      "sku": pa.array(np.char.add("SKU", sku.astype(str))),
                      "category": pa.array(np.char.add("cat", (sku % N_CATS).astype(str))),
                      "quantity": pa.array(np.ones(len(l_order), np.int32)), "unit_price": pa.array(price[sku]),
                      "line_amount": pa.array(price[sku])})
    with store.transaction() as con:
        store.append("orders", orders, con)
        store.append("order_lines", lines, con)
    return cluster, {"customers": n, "orders": n_o, "lines": len(l_order)}


def timed(label: str, fn: object, out: dict[str, object]) -> object:
    t0 = time.perf_counter()
    res = fn()  # type: ignore[operator]
    out[label] = round(time.perf_counter() - t0, 2)
    print(f"  {label}: {out[label]} s", flush=True)
    return res


def run_size(n: int, tmp: Path) -> dict[str, object]:
    store = AnalyticalStore(tmp / f"bench_{n}.duckdb")
    reg = ModelRegistry(tmp / f"models_{n}")
    out: dict[str, object] = {}
    print(f"{n:,} customers", flush=True)
    cluster, counts = timed("build_s", lambda: build(store, n), out)  # type: ignore[misc]
    out.update(counts)
    aff = timed("affinity_s", lambda: AffinityService(store, reg).run(
        WS, {"as_of": AS_OF.isoformat(), "min_support": 0.002}), out)
    out["rules"] = aff["metrics"]["rules"]  # type: ignore[index]
    rec = timed("recommend_s", lambda: RecommendService(None, None, store, reg).train(
        WS, {"as_of": AS_OF.isoformat()}, write=False), out)
    ev = rec["metrics"]["evaluation"]  # type: ignore[index]
    out["recommend_method"] = rec["method"]  # type: ignore[index]
    out["recommend_eval"] = {m: {k: round(v, 4) for k, v in r.items() if k != "ms"} for m, r in ev["methods"].items()}
    out["recommend_test_customers"] = ev["test_customers"]

    def lookalike() -> dict[str, object]:
        t0 = time.perf_counter()
        df = feature_frame(store, WS, AS_OF, 365)
        t_feat = time.perf_counter() - t0
        pids = np.array(df["profile_id"].to_list())
        target = np.array([int(p[1:]) for p in pids])
        members = np.flatnonzero(cluster[target] == 0)
        seed = np.random.default_rng(1).choice(members, min(2000, len(members) // 2), replace=False)
        positive = np.zeros(len(pids), bool)
        positive[seed] = True
        x = feature_matrix(df)
        req = LookalikeRequest(profile_ids=["x"], top_n=len(members) - len(seed))
        t1 = time.perf_counter()
        v = validate(x, seed, req, req.top_n)
        t_val = time.perf_counter() - t1
        t2 = time.perf_counter()
        score, _, _ = pu_scores(x, positive, req)
        t_score = time.perf_counter() - t2
        cand = np.flatnonzero(~positive)
        top = cand[np.argsort(-score[cand])][: req.top_n]
        precision = float(np.mean(cluster[target[top]] == 0))
        return {"features_s": round(t_feat, 2), "validation_s": round(t_val, 2), "score_s": round(t_score, 2),
                "profiles": len(pids), "features": int(x.shape[1]), "auc": round(v["auc"], 3),
                "recall_at_n": round(v["recall_at_n"], 3), "random_recall_at_n": round(v["random_recall_at_n"], 4),
                "precision_top_n": round(precision, 3), "base_rate": round(len(members) / len(pids), 4)}

    out["lookalike"] = timed("lookalike_s", lookalike, out)
    out["peak_rss_mb"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated customer counts")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gk-bench-affinity-") as d:
        for n in (int(s) for s in args.sizes.split(",")):
            results[n] = run_size(n, Path(d))
            print(json.dumps(results[n], indent=1, default=str), flush=True)
    print("BENCH-SUMMARY-JSON:" + json.dumps(results, default=str))


if __name__ == "__main__":
    main()
