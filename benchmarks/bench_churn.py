"""Churn benchmark: train and score the churn classifier on 1M synthetic customers x 20 features.

Goals (reported, not asserted): training under 2 minutes, scoring 1M customers under 30 s.

The data is numpy only: 16 numeric columns shaped like :func:`goldkey.insight.features.
customer_features` (recency, counts, revenue, event counts ...; skewed, some missing) and 4
categorical columns, with a churn label drawn from a logistic model with an interaction (about 44%
positives). The same :class:`goldkey.insight.churn.TabularClassifier` pipeline as the product runs
(above ``holdout_calibration_above`` rows it calibrates on one held-out fold instead of K folds).
Reported: training time, scoring time (probabilities), reasons time for 100k customers, the AUC
and top-decile lift on 100k fresh customers, and the peak memory of the process.

Usage::

    python benchmarks/bench_churn.py [--customers 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from goldkey.insight.churn import TabularClassifier  # noqa: E402
from goldkey.insight.evaluation import evaluate  # noqa: E402


def synth(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    engagement = rng.beta(2, 3, n)
    recency = rng.exponential(30 + 200 * (1 - engagement))
    orders = rng.poisson(1 + 8 * engagement)
    revenue = orders * rng.lognormal(4.5, 0.6, n)
    events = rng.poisson(2 + 60 * engagement)
    cols = {
        "recency_days": np.minimum(recency, 365),
        "order_count": orders,
        "order_count_90d": rng.binomial(orders, 0.3),
        "revenue": revenue,
        "avg_order_value": np.where(orders > 0, revenue / np.maximum(orders, 1), 0),
        "distinct_categories": np.minimum(orders, rng.poisson(2, n)),
        "days_since_first_order": np.minimum(recency + rng.exponential(300, n), 3650),
        "events_total": events,
        "events_7d": rng.binomial(events, 0.05),
        "events_30d": rng.binomial(events, 0.2),
        "events_90d": rng.binomial(events, 0.5),
        "distinct_event_types": np.minimum(events, rng.poisson(4, n)),
        "page_views": rng.binomial(events, 0.6),
        "active_days": rng.binomial(np.maximum(events, 1), 0.4),
        "complaint_count": rng.poisson(0.1 + 0.3 * (1 - engagement)),
        "tenure_noise": rng.normal(size=n),
    }
    df = pd.DataFrame(cols)
    df.loc[rng.random(n) < 0.05, "avg_order_value"] = np.nan
    df["channel"] = rng.choice(["app", "web", "store", "wechat", "tmall"], n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    df["region"] = rng.choice([f"r{i}" for i in range(40)], n)
    df["tier"] = rng.choice(["gold", "silver", "none"], n, p=[0.1, 0.3, 0.6])
    df["gender"] = rng.choice(["f", "m", "u"], n)
    logit = (-1.4 + 1.6 * (cols["recency_days"] / 120) - 0.15 * cols["order_count"]
             - 0.03 * cols["events_30d"] + 0.6 * cols["complaint_count"]
             + 0.8 * ((df["channel"] == "tmall") & (cols["recency_days"] > 60)).to_numpy()
             - 0.5 * (df["tier"] == "gold").to_numpy())
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k customers")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.customers
    t0 = time.perf_counter()
    X, y = synth(n, 0)
    t_gen = time.perf_counter() - t0
    print(f"synthetic data: {n:,} customers x {X.shape[1]} features, {y.mean():.1%} churners, {t_gen:.1f} s")

    t0 = time.perf_counter()
    clf = TabularClassifier().fit(X, y)
    t_fit = time.perf_counter() - t0
    print(f"train: {t_fit:.1f} s  (target < 120 s; {clf.cv['method']}, blend weight {clf.weight})")

    t0 = time.perf_counter()
    p = clf.predict_proba(X)
    t_score = time.perf_counter() - t0
    print(f"score {n:,}: {t_score:.1f} s  (target < 30 s; {n / t_score:,.0f} customers/s)")

    k = min(n, 100_000)
    t0 = time.perf_counter()
    clf.reasons(X.iloc[:k], top_k=3)
    t_reasons = time.perf_counter() - t0
    print(f"reasons for {k:,}: {t_reasons:.1f} s")

    Xf, yf = synth(100_000, 1)
    m = evaluate(yf, clf.predict_proba(Xf))
    print(f"fresh 100k: AUC {m['auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  "
          f"top-decile lift {m['top_decile_lift']:.2f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak_mb:,.0f} MB")
    print("BENCH-SUMMARY-JSON:" + json.dumps({
        "bench": "churn", "customers": n, "features": X.shape[1], "train_s": round(t_fit, 2),
        "score_s": round(t_score, 2), "reasons_100k_s": round(t_reasons, 2), "auc": round(m["auc"], 4),
        "top_decile_lift": round(m["top_decile_lift"], 3), "peak_mb": round(peak_mb), "mean_p": float(p.mean())}))


if __name__ == "__main__":
    main()
