"""Churn benchmark: train and score the churn classifier on 1M customers.

Goals from the issue (reported, not asserted): training under 2 minutes, scoring 1M customers
under 30 s.

Two parts:

- **classifier** (default): numpy only, 16 numeric columns shaped like
  :func:`goldkey.insight.features.customer_features` (recency, counts, revenue, event counts ...;
  skewed, some missing) and 4 categorical columns, with a churn label drawn from a logistic model
  with an interaction (about 44% positives). The same :class:`goldkey.insight.churn.
  TabularClassifier` pipeline as the product runs (its large-data path above
  ``holdout_calibration_above`` rows: one held-out calibration fold, early stopping, capped rows per
  boosting round; see ``docs/churn.md``). Reported: training; scoring alone (``predict_proba``);
  scoring with the reasons of every customer in one pass (``explain``: probabilities from the summed
  contributions, top-k per row); the per-customer payload JSON (``payloads_json``); the AUC and
  top-decile lift on 100k fresh customers; peak memory.
- **service** (``--service``): the whole product path, ``ChurnService.train_churn`` on a real
  instance (``Goldkey.open`` on a temp dir: SQLite + DuckDB + the writer thread) holding
  ``--customers`` live profiles, 3 orders and 3 events per customer on average, generated in bulk
  straight into the stores (not through the importer; no order lines). Timed per phase through the
  progress callback: features in DuckDB (as of the cutoff), labels, holdout fit + evaluation (the
  features as of the scoring date are computed meanwhile on a helper thread), the refit, scoring
  (probabilities and reasons), the score write-back (the reasons' JSON built meanwhile), the reasons
  write-back. Summed: training (phases up to the refit) and the scoring path (score -> scores and
  reasons written); the feature query as of the scoring date is also timed alone, so that
  "scoring 1M customers" can be given with it.

Every phase reports wall seconds and process CPU seconds (all threads: DuckDB's, LightGBM's and the
writer's count), with the load average, because the machine is shared.

Usage::

    python benchmarks/bench_churn.py [--customers 1000000] [--quick] [--service] [--threads N]
                                     [--runs 1|2] [--recent-events K]

``--recent-events K`` makes the service part's profile rows as wide as real ones (attributes and K
timeline entries; without it their JSON columns are empty, which hides what a write to a wide
profile row costs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from _common import Clock, add_laps, percentiles, wide_profile_texts  # noqa: E402

from goldkey.insight.churn import ClassifierParams, TabularClassifier  # noqa: E402
from goldkey.insight.evaluation import evaluate  # noqa: E402

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


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


def classifier_bench(n: int, threads: int | None) -> dict[str, Any]:
    clock = Clock()
    X, y = synth(n, 0)
    gen = clock.lap()
    print(f"synthetic data: {n:,} customers x {X.shape[1]} features, {y.mean():.1%} churners, {gen}", flush=True)
    params = ClassifierParams(n_jobs=threads)
    clf = TabularClassifier(params).fit(X, y)
    fit = clock.lap()
    print(f"train: {fit}  (target < 120 s; {clf.cv['method']}, blend weight {clf.weight}, "
          f"{clf.cv.get('trees', '?')} trees)", flush=True)
    p = clf.predict_proba(X)
    score = clock.lap()
    print(f"score {n:,} (probabilities only): {score}", flush=True)
    expl = clf.explain(X, top_k=3)
    explain = clock.lap()
    print(f"score + top-3 reasons for {n:,} in one pass: {explain}  (target < 30 s)", flush=True)
    payloads = expl.payloads_json()
    payload = clock.lap()
    print(f"payload JSON for {n:,}: {payload}  ({sum(map(len, payloads)) / n:.0f} bytes a customer)", flush=True)
    del payloads
    Xf, yf = synth(100_000, 1)
    m = evaluate(yf, clf.predict_proba(Xf))
    print(f"fresh 100k: AUC {m['auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  "
          f"top-decile lift {m['top_decile_lift']:.2f}", flush=True)
    return {"customers": n, "features": X.shape[1], "threads": threads, "train": fit, "score": score,
            "score_and_reasons": explain, "payload_json": payload, "method": clf.cv["method"],
            "trees": clf.cv.get("trees"),
            "auc": round(m["auc"], 4), "top_decile_lift": round(m["top_decile_lift"], 3), "mean_p": float(p.mean())}


def _pid(expr: str) -> str:
    return f"'p' || lpad(({expr})::VARCHAR, 8, '0')"


def build_instance(gk: Any, ws: str, n: int, recent: int = 0) -> dict[str, float]:
    """``n`` live profiles (SQLite), 3n orders over two years and 3n events over a year (DuckDB);
    a customer's activity level comes from a hash of its number, so churn has some signal. With
    ``recent`` > 0 each profile row also holds attributes and ``recent`` timeline entries."""
    clock = Clock()
    attributes, recent_events = wide_profile_texts(recent)
    raw = gk.engine.raw_connection()
    try:
        cur = raw.cursor()
        ts = "2024-01-01 00:00:00.000000"
        for lo in range(0, n, 100_000):
            cur.executemany(
                "INSERT INTO profiles (profile_id, workspace_id, canonical_id, attributes, recent_events, origin, "
                "first_seen_at, first_seen_source, last_seen_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, "
                "'existing', ?, 'import:customers', ?, ?, ?)",
                [(f"p{i:08d}", ws, f"p{i:08d}", attributes, recent_events, ts, ts, ts, ts)
                 for i in range(lo, min(lo + 100_000, n))])
            raw.commit()
        raw.commit()
    finally:
        raw.close()
    profiles = clock.lap()
    # customer c's last activity lies `gap` days before AS_OF, gap growing with hash(c) % 100: the
    # low-numbered levels are active recently (not churned), the high ones long ago (churned)
    with gk.analytical.transaction() as con:
        con.execute(
            f"""INSERT INTO orders (workspace_id, order_id, profile_id, ordered_at, total_amount, currency, channel,
                                    status)
               SELECT ?, 'O' || i::VARCHAR, {_pid('c')},
                      CAST(? AS TIMESTAMPTZ) - to_seconds(((hash(c) % 100) * 3 * 86400
                          + hash(i * 7 + 1) % (400 * 86400))::BIGINT),
                      round(((hash(i * 13 + 5) % 200000)::DOUBLE) / 100, 2), 'CNY', 'store', 'paid'
               FROM (SELECT i, CASE WHEN i < ? THEN i ELSE hash(i) % ? END AS c FROM range(?) t(i))""",
            [ws, AS_OF, n, n, 3 * n])
        con.execute(
            f"""INSERT INTO events (workspace_id, message_id, type, event, profile_id, "timestamp", received_at,
                                    properties, context, source)
               SELECT ?, 'm' || i::VARCHAR, 'track',
                      ['Product Viewed', 'Product Added', 'Checkout Started'][(i % 3) + 1], {_pid('c')},
                      CAST(? AS TIMESTAMPTZ) - to_seconds(((hash(c) % 100) * 3 * 86400
                          + hash(i * 11 + 3) % (200 * 86400))::BIGINT),
                      CAST(? AS TIMESTAMPTZ), '{{}}', '{{}}', 'bench'
               FROM (SELECT i, hash(i * 5 + 2) % ? AS c FROM range(?) t(i))""",
            [ws, AS_OF, AS_OF, n, 3 * n])
    gk.analytical.checkpoint()
    return {"profiles_s": profiles["wall_s"], "analytical_s": clock.lap()["wall_s"]}


def _time_reasons(gk: Any, svc: Any, ws: str, n: int = 300) -> dict[str, float]:
    """Milliseconds to read one profile's reasons (the reasons endpoint's read, from the analytical
    store), over ``n`` random scored profiles."""
    import random
    import time

    ids = [r[0] for r in gk.analytical.query(
        "SELECT profile_id FROM profile_reasons WHERE workspace_id = ? USING SAMPLE 1000 ROWS", [ws])]
    took = []
    for pid in random.Random(3).choices(ids, k=n):
        t0 = time.perf_counter()
        got = svc.reasons(ws, pid)
        took.append((time.perf_counter() - t0) * 1000)
        assert got["models"]["churn"]["reasons"] is not None
    return percentiles(took)


def service_bench(n: int, threads: int | None, n_runs: int = 2, recent: int = 0) -> dict[str, Any]:
    from goldkey.insight.churn import ChurnService
    from goldkey.insight.features import customer_features
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    with tempfile.TemporaryDirectory(prefix="goldkey-bench-churn-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp)))
        try:
            ws = gk.workspaces.create("Bench").workspace_id
            built = build_instance(gk, ws, n, recent)
            print(f"built {n:,} profiles ({len(''.join(wide_profile_texts(recent)))} bytes of attributes and recent "
                  f"events each), {3 * n:,} orders, {3 * n:,} events: {built}", flush=True)
            svc = ChurnService.from_goldkey(gk)
            runs = []
            for label in ("first", "second")[:n_runs]:
                phases: list[dict[str, Any]] = []
                clock = Clock()
                total = Clock()
                last = ["start"]

                def progress(what: str, i: int, steps: int, phases: list[dict[str, Any]] = phases,
                             clock: Clock = clock, last: list[str] = last) -> None:
                    if i > 0:
                        phases.append({"phase": last[0], **clock.lap()})
                    last[0] = what

                definition = {"as_of": AS_OF.isoformat(), "classifier": {"n_jobs": threads}}
                rep = svc.train_churn(ws, definition, progress=progress)
                run = {"run": label, "total": total.lap(), "phases": phases,
                       "train": add_laps(phases[:4]), "scoring": add_laps(phases[4:]),
                       "labelled": rep["labelled"], "profiles": rep["profiles"], "auc": round(rep["auc"], 4),
                       "top_decile_lift": round(rep["top_decile_lift"], 3), "scores_written": rep["scores_written"]}
                clock.lap()
                customer_features(gk.analytical, ws, AS_OF, 365, engine=gk.engine)
                run["features_as_of_scoring_date_alone"] = clock.lap()
                run["scoring_with_features"] = add_laps([run["scoring"], run["features_as_of_scoring_date_alone"]])
                runs.append(run)
                print(f"train_churn ({label} run): {run['total']}; labelled {rep['labelled']:,}, scored "
                      f"{rep['profiles']:,}, AUC {rep['auc']:.4f}, lift {rep['top_decile_lift']:.2f}, "
                      f"scores written {rep['scores_written']:,}", flush=True)
                for ph in phases:
                    print(f"    {ph['phase']:62s} wall {ph['wall_s']:7.2f} s  cpu {ph['cpu_s']:7.2f} s  "
                          f"load {ph['load1']}", flush=True)
                for key, what in (("train", "training (features as of the cutoff .. refit)"),
                                  ("scoring", "scoring path (score, reasons, both written)"),
                                  ("features_as_of_scoring_date_alone", "features as of the scoring date, alone"),
                                  ("scoring_with_features", "scoring 1M incl. those features (target < 30 s)")):
                    ph = run[key]
                    print(f"  = {what:60s} wall {ph['wall_s']:7.2f} s  cpu {ph['cpu_s']:7.2f} s  "
                          f"load {ph['load1']}", flush=True)
            lookups = _time_reasons(gk, svc, ws)
            print(f"reasons of one profile (the read of GET .../profiles/{{id}}/reasons, 300 random profiles): "
                  f"{lookups} ms", flush=True)
        finally:
            gk.close()
    return {"customers": n, "build": built, "runs": runs, "reasons_lookup_ms": lookups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k customers")
    ap.add_argument("--service", action="store_true", help="also time ChurnService.train_churn on an instance")
    ap.add_argument("--no-classifier", action="store_true", help="skip the numpy classifier part")
    ap.add_argument("--runs", type=int, default=2, choices=(1, 2), help="service runs (the second: nothing new)")
    ap.add_argument("--threads", type=int, default=None, help="LightGBM threads (default: the classifier's)")
    ap.add_argument("--recent-events", type=int, default=0, metavar="K",
                    help="service: give every profile row attributes and K recent timeline entries (~190 bytes "
                         "each; a real profile keeps 30), so that its row is as wide as a real one (default 0: "
                         "empty JSON columns)")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.customers
    out: dict[str, Any] = {"bench": "churn", "customers": n, "load_at_start": os.getloadavg()}
    if not args.no_classifier:
        out["classifier"] = classifier_bench(n, args.threads)
    if args.service:
        out["service"] = service_bench(n, args.threads, args.runs, args.recent_events)
    out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"peak memory: {out['peak_mb']:,} MB")
    print("BENCH-SUMMARY-JSON:" + json.dumps(out))


if __name__ == "__main__":
    main()
