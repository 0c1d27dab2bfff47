"""CLV benchmark: fit BG/NBD + Gamma-Gamma and score 1M simulated customers.

Goal (reported, not asserted): fit + scoring of 1M customers in under 30 s.

The customers are drawn with numpy from the models' own generative processes with known
parameters, so the recovered parameters can be compared with the true ones:

* BG/NBD (Fader, Hardie & Lee 2005): each customer is acquired on a whole day ``T`` days before the
  end (uniform over the lookback); ``lambda ~ Gamma(r, alpha)``, ``p ~ Beta(a, b)``; purchases
  follow a Poisson process; after each repeat purchase the customer drops out with probability
  ``p``. So with ``N ~ Poisson(lambda T)`` latent purchases and ``K ~ Geometric(p)`` purchases
  until dropout, ``x = min(N, K)`` and ``t_x`` is the x-th of N uniform points on ``[0, T]``,
  i.e. ``T * Beta(x, N - x + 1)``.
* Gamma-Gamma: ``nu ~ Gamma(q, v)``; the mean of ``x`` order values ``Gamma(p, nu)`` is
  ``Gamma(p x, x nu)``.

Timed: ``fit_beta_geo``, ``fit_gamma_gamma`` and ``score_customers`` (P(alive), expected purchases
over the horizon, expected order value and the 13-step discounted CLV) with the service's default
definition (weeks, 365-day horizon, 10 % a year). The DuckDB summary query and the write-back to
profiles are NOT timed in this part.

``--service`` times the whole product path instead: ``CLVService.run`` on a real instance
(``Goldkey.open`` on a temp dir: SQLite + DuckDB + the writer thread) holding ``--customers`` live
profiles (built in bulk as ``bench_lifecycle.py`` builds them; ``--recent-events K`` for profile
rows as wide as real ones) and their orders drawn from the same generative processes as above: a
first order ``T`` days before ``as_of``, ``x`` repeat orders spread evenly up to ``t_x``, repeat
order values around the customer's Gamma-Gamma mean. Timed per phase through the run's
progress messages: the summary query over the orders, the BG/NBD and Gamma-Gamma fits, scoring,
the holdout check, saving the version, and the write-back of ``scores.clv_*`` to every profile.
Two runs: the first writes every profile, the second a new version over the same scores.

Usage::

    python benchmarks/bench_clv.py [--customers 1000000] [--seed 1] [--repeat 1]
    python benchmarks/bench_clv.py --service [--customers 1000000] [--recent-events 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from goldkey.insight.clv import CLVDefinition, fit_beta_geo, fit_gamma_gamma, score_customers  # noqa: E402

# true parameters, time in weeks (CDNOW-like), money in CNY
TRUE_BG = {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.5}
TRUE_GG = {"p": 6.0, "q": 3.8, "v": 150.0}
LOOKBACK_DAYS = 730


def simulate(n: int, seed: int) -> dict[str, np.ndarray]:
    """frequency, recency and T (weeks, T on whole days) and mean repeat order value of n customers."""
    rng = np.random.default_rng(seed)
    t_days = rng.integers(1, LOOKBACK_DAYS + 1, size=n)
    tt = t_days / 7.0
    lam = rng.gamma(TRUE_BG["r"], 1.0 / TRUE_BG["alpha"], size=n)
    p_drop = rng.beta(TRUE_BG["a"], TRUE_BG["b"], size=n)
    n_latent = rng.poisson(lam * tt)
    until_dropout = rng.geometric(p_drop)
    x = np.minimum(n_latent, until_dropout)
    repeat = x > 0
    t_x = np.zeros(n)
    t_x[repeat] = tt[repeat] * rng.beta(x[repeat], n_latent[repeat] - x[repeat] + 1)
    nu = rng.gamma(TRUE_GG["q"], 1.0 / TRUE_GG["v"], size=n)
    m = np.zeros(n)
    m[repeat] = rng.gamma(TRUE_GG["p"] * x[repeat], 1.0 / (x[repeat] * nu[repeat]))
    return {"frequency": x.astype(np.float64), "recency": t_x, "T": tt, "monetary": m}


def run(n: int, seed: int) -> dict[str, object]:
    t0 = time.perf_counter()
    data = simulate(n, seed)
    t_sim = time.perf_counter() - t0
    x, t_x, tt, m = data["frequency"], data["recency"], data["T"], data["monetary"]
    t1 = time.perf_counter()
    bg = fit_beta_geo(x, t_x, tt)
    t2 = time.perf_counter()
    gg = fit_gamma_gamma(x, m)
    t3 = time.perf_counter()
    p_alive, purchases, value, clv = score_customers(bg, gg, x, t_x, tt, m, CLVDefinition())
    t4 = time.perf_counter()

    def rel(fit: dict[str, float], true: dict[str, float]) -> dict[str, str]:
        return {k: f"{fit[k]:.4g} (true {true[k]:g}, {100 * (fit[k] / true[k] - 1):+.1f}%)" for k in true}

    return {
        "customers": n, "repeat_buyers": int((x > 0).sum()), "simulate_s": round(t_sim, 2),
        "fit_bgnbd_s": round(t2 - t1, 2), "bgnbd_iterations": bg.iterations,
        "fit_gamma_gamma_s": round(t3 - t2, 2), "gamma_gamma_iterations": gg.iterations,
        "score_s": round(t4 - t3, 2), "fit_and_score_s": round(t4 - t1, 2),
        "bgnbd": rel(bg.params(), TRUE_BG), "gamma_gamma": rel(gg.params(), TRUE_GG),
        "p_alive_mean": round(float(p_alive.mean()), 4),
        "expected_purchases_365d_mean": round(float(purchases.mean()), 4),
        "expected_order_value_mean": round(float(value.mean()), 2), "clv_mean": round(float(clv.mean()), 2),
    }


def _orders(gk: object, ws: str, n: int, seed: int, as_of: object) -> int:
    """Insert the orders of :func:`simulate`'s ``n`` customers (profile ``p%08d``) into DuckDB."""
    import pyarrow as pa

    d = simulate(n, seed)
    x = d["frequency"].astype(np.int64)
    t_days = np.rint(d["T"] * 7).astype(np.int64)
    first = t_days * 86400  # seconds before as_of
    who = np.repeat(np.arange(n), x)
    k = np.arange(len(who)) - np.repeat(np.cumsum(x) - x, x) + 1  # 1..x within a customer
    span = d["recency"][who] * 7 * 86400
    repeat_at = first[who] - np.rint(span * k / x[who]).astype(np.int64)
    rng = np.random.default_rng(seed + 1)
    tbl = pa.table({
        "i": np.concatenate([np.arange(n), who]),
        "secs": np.concatenate([first, repeat_at]),
        "amount": np.round(np.concatenate([rng.gamma(6.0, 25.0, n), d["monetary"][who]]), 2),
    })
    with gk.analytical.transaction() as con:  # type: ignore[attr-defined]
        con.register("_o", tbl)
        con.execute(
            """INSERT INTO orders (workspace_id, order_id, profile_id, ordered_at, total_amount, currency, channel,
                                   status)
               SELECT ?, 'O' || row_number() OVER (), 'p' || lpad(i::VARCHAR, 8, '0'),
                      CAST(? AS TIMESTAMPTZ) - to_seconds(secs), amount, 'CNY', 'store', 'paid' FROM _o""",
            [ws, as_of])
        con.unregister("_o")
    gk.analytical.checkpoint()  # type: ignore[attr-defined]
    return tbl.num_rows


def service(n: int, recent: int, seed: int) -> None:
    """Time ``CLVService.run`` on an instance of ``n`` profiles (see the module docstring)."""
    import tempfile

    from _common import Clock
    from bench_lifecycle import AS_OF, build

    from goldkey.insight.clv import CLVService
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    res: dict[str, object] = {"bench": "clv-service", "customers": n, "recent_events": recent}
    with tempfile.TemporaryDirectory(prefix="goldkey-bench-clv-") as tmp:
        gk = Goldkey.open(Settings(data_dir=Path(tmp)))
        try:
            ws = gk.workspaces.create("Bench").workspace_id
            res["build"] = build(gk, ws, n, 0, 0, recent)
            t0 = time.perf_counter()
            res["orders"] = _orders(gk, ws, n, seed, AS_OF)
            res["build"]["orders_s"] = round(time.perf_counter() - t0, 2)
            print(f"built {n:,} profiles ({recent} timeline entries each), {res['orders']:,} orders: {res['build']}",
                  flush=True)
            svc = CLVService.from_goldkey(gk)
            runs = []
            for label in ("first", "second"):
                phases: list[tuple[str, float]] = []
                t0 = time.perf_counter()
                clock = Clock()
                out = svc.run(ws, {"as_of": AS_OF.isoformat()},
                              progress=lambda msg, ph=phases: ph.append((msg, time.perf_counter())))
                lap = clock.lap()
                marks = [*phases, ("end", time.perf_counter())]
                timed = {marks[i][0].split(" on ")[0].split(" to ")[0]: round(marks[i + 1][1] - marks[i][1], 2)
                         for i in range(len(marks) - 1)}
                run_ = {"run": label, "wall_s": lap["wall_s"], "cpu_s": lap["cpu_s"], "load1": lap["load1"],
                        "fit_s": round(out["fit_ms"] / 1000, 2), "scores_written": out["scores_written"],
                        "profiles": out["profiles"], "phases_s": timed,
                        "before_first_phase_s": round(phases[0][1] - t0, 2) if phases else None}
                runs.append(run_)
                print(f"CLVService.run ({label}): {lap['wall_s']:.1f} s wall, {lap['cpu_s']:.1f} CPU-s, load "
                      f"{lap['load1']}; fit {run_['fit_s']} s; {out['profiles']:,} customers scored, "
                      f"{out['scores_written']:,} profile rows written; phases (s): {timed}", flush=True)
            res["runs"] = runs
        finally:
            gk.close()
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res["goal_s"] = 30.0
    res["meets_goal"] = all(r["wall_s"] < 30.0 for r in runs)
    print(f"goal: fit + scoring (with the write-back) of {n:,} customers under 30 s")
    print("BENCH-SUMMARY-JSON:" + json.dumps(res, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--service", action="store_true", help="time CLVService.run on an instance (with the write-back)")
    ap.add_argument("--recent-events", type=int, default=0, metavar="K",
                    help="--service: profile rows as wide as real ones (K timeline entries)")
    args = ap.parse_args()
    if args.service:
        service(args.customers, args.recent_events, args.seed)
        return
    for i in range(args.repeat):
        out = run(args.customers, args.seed + i)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(out, indent=2))
    print(f"goal: fit + scoring of {args.customers:,} customers under 30 s")


if __name__ == "__main__":
    main()
