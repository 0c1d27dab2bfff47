"""Customer lifetime value: BG/NBD purchase counts x Gamma-Gamma order values, discounted.

**Purchase counts: BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way: an
alternative to the Pareto/NBD model", *Marketing Science* 24(2)). While alive a customer buys as a
Poisson process with rate ``lambda ~ Gamma(r, alpha)``; after each repeat purchase she drops out for
good with probability ``p ~ Beta(a, b)``. A customer is summarised by ``x`` (repeat purchases),
``t_x`` (time of the last purchase since the first) and ``T`` (time since the first purchase). The
log-likelihood is their equation (6); :func:`fit_beta_geo` maximises it over the log-parameters
with L-BFGS-B and the analytic gradient (as the ``lifetimes`` library does, time rescaled so
``max(T) = 10`` for conditioning). Per customer: ``P(alive)`` (their eq. (11) note) and the
expected purchases in the next ``t`` periods, eq. (10), with the Gauss hypergeometric function.

**Order value: Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves for
customer base analysis", *JMR* 42(4); Fader & Hardie 2013, "The Gamma-Gamma model of monetary
value"). Order values are ``Gamma(p, nu)`` with ``nu ~ Gamma(q, v)``; the likelihood of a repeat
buyer's mean repeat order value ``zbar`` over ``x`` orders is fitted on repeat buyers only, and the
conditional expectation ``p (v + x zbar) / (p x + q - 1)`` shrinks each customer's mean toward the
population mean ``p v / (q - 1)`` (what a one-time buyer gets).

**CLV**: ``sum_m E[M] * (E[Y(t_m)] - E[Y(t_{m-1})]) / (1 + d)^m`` over monthly steps ``t_m``
(30 days) of the horizon, with the monthly rate ``d`` from the annual one, exactly the
discounted sum of ``lifetimes.GammaGammaFitter.customer_lifetime_value``.

Validation: on the CDNOW sample shipped with ``lifetimes`` these fits reproduce the published
r=0.243, alpha=4.414, a=0.793, b=2.426 (LL -9582.4) and p=6.25, q=3.74, v=15.44 (see
``tests/insight/test_clv.py`` and ``docs/clv.md``).

**Goldkey** (:class:`CLVService`): per live profile, one DuckDB query over ``orders_resolved``
(orders of the ``lookback_days`` before ``as_of``) gives the summary with purchases counted per
distinct UTC day (orders of one day are one purchase, their amounts summed), the mean value of the
repeat days, and the calibration/holdout split used to check the model: the last
``min(horizon_days, lookback_days // 2)`` days are held out, the model refitted on the rest and
its predicted holdout purchases compared with the actual ones (MAE, correlation). The fitted
version goes to the :mod:`goldkey.insight.registry` (kind ``clv``); ``scores.clv_p_alive``,
``scores.clv_expected_purchases`` (over the horizon), ``scores.clv_value`` and
``scores.clv_model_version`` are written back through :func:`goldkey.insight.writeback.write_score_columns`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import orjson
import polars as pl
import sqlalchemy as sa
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, validated
from goldkey.insight.purchases import EXCLUDE_STATUSES_DOC, excluded_statuses, status_filter
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, RefitEveryHours, one_run_at_a_time
from goldkey.insight.writeback import declare_scores, write_score_columns
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore

__all__ = [
    "BetaGeo", "CLVDefinition", "CLVService", "GammaGamma", "customer_lifetime_value", "fit_beta_geo",
    "fit_gamma_gamma", "parse_definition", "summary_from_transactions",
]

MODEL_NAME = "clv"
MODEL_KIND = "clv"
SCORE_FIELDS = ("clv_p_alive", "clv_expected_purchases", "clv_value", "clv_model_version")
MIN_CUSTOMERS = 20
MIN_REPEAT_BUYERS = 10
DAYS_PER_MONTH = 30.0
PERIOD_DAYS = {"day": 1.0, "week": 7.0}
_LOG_BOUND = 9.0  # log-parameters (data rescaled to order 1) live in [-9, 9]; a bound reached = a runaway fit
_MAXITER = 1000
_OPTIONS = {"ftol": 1e-12, "gtol": 1e-7}  # on the mean log-likelihood per customer
_GRAD_OK = 1e-5

Array = NDArray[np.float64]
Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------- inputs


def _as_array(values: ArrayLike, name: str) -> Array:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{name} has {int((~np.isfinite(arr)).sum())} missing or infinite value(s)", field=name)
    return arr


def _check_rft(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[Array, Array, Array]:
    """Validated float arrays (frequency, recency, T). Raises InvalidInput naming the bad column."""
    x, t_x, tt = _as_array(frequency, "frequency"), _as_array(recency, "recency"), _as_array(T, "T")
    if not len(x) == len(t_x) == len(tt):
        raise InvalidInput(f"frequency, recency and T differ in length ({len(x)}, {len(t_x)}, {len(tt)})",
                           field="frequency")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise InvalidInput("frequency must be whole numbers >= 0 (repeat purchases)", field="frequency")
    if np.any(t_x < 0) or np.any(t_x > tt + 1e-9):
        raise InvalidInput("recency must lie between 0 and T", field="recency")
    if np.any((x == 0) & (t_x != 0)):
        raise InvalidInput("recency must be 0 for customers without repeat purchases (frequency 0)", field="recency")
    return x, t_x, tt


# --------------------------------------------------------------------------------------- BG/NBD


@dataclass(frozen=True)
class BetaGeo:
    """A fitted BG/NBD model; time in the unit the data was fitted in (days or weeks)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    n_customers: int
    iterations: int

    def params(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> Array:
        """P(alive at T | x, t_x, T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))."""
        x, t_x, tt = _check_rft(frequency, recency, T)
        return self._p_alive(x, t_x, tt)

    def _p_alive(self, x: Array, t_x: Array, tt: Array) -> Array:
        repeat = x > 0
        log_odds = (np.log(self.a) - np.log(np.where(repeat, self.b + x - 1, 1.0))
                    + (self.r + x) * (np.log(self.alpha + tt) - np.log(self.alpha + t_x)))
        return np.where(repeat, expit(-log_odds), 1.0)

    def expected_purchases(self, t: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> Array:
        """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` periods (FHL 2005, eq. 10)."""
        x, t_x, tt = _check_rft(frequency, recency, T)
        if t < 0:
            raise InvalidInput("the prediction horizon t must be >= 0", field="t")
        return self._expected_many([t], x, t_x, tt)[0]

    def expected_purchases_new_customer(self, t: float) -> float:
        """E[X(t)] of a customer just acquired (FHL 2005, eq. 9):
        (a+b-1)/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b; a+b-1; t/(alpha+t))]."""
        r, al, a, b = self.r, self.alpha, self.a, self.b
        return float((a + b - 1) / (a - 1) * (1 - (al / (al + t)) ** r * hyp2f1(r, b, a + b - 1, t / (al + t))))

    def _expected_many(self, ts: list[float], x: Array, t_x: Array, tt: Array) -> list[Array]:
        """E[Y(t)] for several ``t`` at once. The hypergeometric term depends on (x, T) only, so it
        is computed once per distinct pair (few with whole-day data) and spread back."""
        r, al, a, b = self.r, self.alpha, self.a, self.b
        t_vals, t_inv = np.unique(tt, return_inverse=True)
        x_int = x.astype(np.int64)
        key = x_int * len(t_vals) + t_inv.reshape(-1)
        keys, inv = np.unique(key, return_inverse=True)
        ux = (keys // len(t_vals)).astype(np.float64)
        uT = t_vals[keys % len(t_vals)]
        p_alive = self._p_alive(x, t_x, tt)
        out = []
        for t in ts:
            if t == 0:
                out.append(np.zeros_like(x))
                continue
            z = t / (al + uT + t)
            log_ratio = (r + ux) * (np.log(al + uT) - np.log(al + uT + t))
            bracket = 1.0 - np.exp(log_ratio) * hyp2f1(r + ux, b + ux, a + b + ux - 1, z)
            out.append(((a + b + ux - 1) / (a - 1) * bracket)[inv.reshape(-1)] * p_alive)
        return out


def _dot(u: Array, v: Array) -> float:
    """Inner product without BLAS: a contended multi-threaded BLAS makes ``u @ v`` 100x slower."""
    return float(np.einsum("i,i->", u, v))


def _bgnbd_objective(theta: Array, data: dict[str, Any]) -> tuple[float, Array]:
    """Mean negative log-likelihood of BG/NBD (FHL 2005, eq. 6) and its gradient in log-parameters."""
    r, alpha, a, b = np.exp(theta)
    xs, inv, cnt = data["xs"], data["inv"], data["w_per_x"]
    x, t_x, tt, w, repeat, wsum = data["x"], data["t_x"], data["T"], data["w"], data["repeat"], data["wsum"]
    # terms that depend on x only, per distinct x
    bx1 = np.where(xs > 0, b + xs - 1, 1.0)
    per_x = (gammaln(r + xs) - gammaln(r) + gammaln(a + b) + gammaln(b + xs) - gammaln(b) - gammaln(a + b + xs))
    c4 = np.log(a) - np.log(bx1)
    rx = r + x
    ln_T = np.log(alpha + tt)
    ln_t = np.log(alpha + t_x)
    a3 = -rx * ln_T
    a4 = np.where(repeat, c4[inv] - rx * ln_t, -np.inf)
    ll_row = np.logaddexp(a3, a4)
    w4 = np.exp(a4 - ll_row)  # posterior weight of "dropped out after the last purchase"
    w3 = 1.0 - w4
    ll = _dot(cnt, per_x) + wsum * r * math.log(alpha) + _dot(w, ll_row)
    d_r = (_dot(cnt, digamma(r + xs) - digamma(r)) + wsum * math.log(alpha)
           - _dot(w, w3 * ln_T + w4 * ln_t))
    d_alpha = wsum * r / alpha - _dot(w, rx * (w3 / (alpha + tt) + w4 / (alpha + t_x)))
    w4_per_x = np.bincount(inv, weights=w * w4, minlength=len(xs))
    d_a = _dot(cnt, digamma(a + b) - digamma(a + b + xs)) + float(w4_per_x.sum()) / a
    d_b = (_dot(cnt, digamma(a + b) + digamma(b + xs) - digamma(b) - digamma(a + b + xs))
           - _dot(w4_per_x, np.where(xs > 0, 1.0 / bx1, 0.0)))
    grad = np.array([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return -ll / wsum, -grad / wsum


def bgnbd_log_likelihood(params: dict[str, float], frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> float:
    """The total BG/NBD log-likelihood of the data at ``params`` (r, alpha, a, b)."""
    x, t_x, tt = _check_rft(frequency, recency, T)
    theta = np.log([params["r"], params["alpha"], params["a"], params["b"]])
    nll, _ = _bgnbd_objective(theta, _bgnbd_data(x, t_x, tt, None))
    return -nll * len(x)


def _bgnbd_data(x: Array, t_x: Array, tt: Array, weights: Array | None) -> dict[str, Any]:
    w = np.ones_like(x) if weights is None else weights
    xs, inv = np.unique(x, return_inverse=True)
    inv = inv.reshape(-1)
    return {"x": x, "t_x": t_x, "T": tt, "w": w, "repeat": x > 0, "xs": xs, "inv": inv, "wsum": float(w.sum()),
            "w_per_x": np.bincount(inv, weights=w, minlength=len(xs))}


def _collapse_one_time_buyers(x: Array, t_x: Array, tt: Array, w: Array) -> tuple[Array, Array, Array, Array]:
    """One-time buyers with the same T are identical in the likelihood: keep one weighted row each
    (with whole-day data, a few hundred rows instead of about half the customers)."""
    once = x == 0
    t_once, inv = np.unique(tt[once], return_inverse=True)
    w_once = np.bincount(inv.reshape(-1), weights=w[once], minlength=len(t_once))
    keep = ~once
    zeros = np.zeros_like(t_once)
    return (np.concatenate([x[keep], zeros]), np.concatenate([t_x[keep], zeros]),
            np.concatenate([tt[keep], t_once]), np.concatenate([w[keep], w_once]))


_RUNAWAY_HINTS = {
    "a -> 0": "no customer shows a sign of dropping out", "b -> infinity": "hardly any customer drops out",
    "r -> infinity": "every customer buys at the same rate", "q -> 0": "order values are extremely heavy-tailed",
}


def _check_converged(res: Any, names: list[str], values: Array, model: str) -> None:
    if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
        raise InvalidInput(f"the {model} fit did not converge: the log-likelihood became non-finite", field="orders")
    at_bound = [f"{n} -> {'0' if v < 0 else 'infinity'}" for n, v in zip(names, res.x, strict=True)
                if abs(v) >= _LOG_BOUND - 1e-3]
    if at_bound:
        hint = next((h for k, h in _RUNAWAY_HINTS.items() if k in at_bound), "the data cannot pin the model down")
        no_dropout = "a -> 0" in at_bound or "b -> infinity" in at_bound
        advice = ("BG/NBD is a model of customers who may stop buying without saying so; where nobody is seen "
                  "to stop (regular top-ups, subscriptions) it has nothing to estimate: widen lookback_days to "
                  "take in customers who lapsed, or predict leaving with a churn model" if no_dropout
                  else "use more customers or a longer lookback")
        raise InvalidInput(
            f"the {model} fit did not converge: parameter {', '.join(at_bound)} ({hint}; fitted so far: "
            f"{', '.join(f'{n}={v:.4g}' for n, v in zip(names, values, strict=True))}); {advice}", field="orders")
    # a line search that cannot improve at the optimum ends "ABNORMAL" with a vanishing gradient
    if not res.success and not (res.status == 2 and float(np.abs(res.jac).max()) < _GRAD_OK):
        raise InvalidInput(f"the {model} fit did not converge after {res.nit} iterations: {res.message}",
                           field="orders")


def fit_beta_geo(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, *, weights: ArrayLike | None = None,
                 maxiter: int = _MAXITER) -> BetaGeo:
    """Fit BG/NBD by maximum likelihood; ``frequency`` = repeat purchases, ``recency`` and ``T`` in
    one time unit. ``weights`` counts identical customers. Returns the fitted :class:`BetaGeo`.

    Raises InvalidInput for bad arrays, fewer than :data:`MIN_CUSTOMERS` customers, no repeat
    buyers, or a fit that does not converge (a parameter running to 0 or infinity)."""
    x, t_x, tt = _check_rft(frequency, recency, T)
    w = None if weights is None else _as_array(weights, "weights")
    if w is not None and (len(w) != len(x) or np.any(w < 0)):
        raise InvalidInput("weights must be one count >= 0 per customer", field="weights")
    n = int(len(x) if w is None else w.sum())
    if n < MIN_CUSTOMERS:
        raise InvalidInput(f"only {n} customers; BG/NBD needs at least {MIN_CUSTOMERS}", field="orders")
    if not np.any(x > 0):
        raise InvalidInput("no repeat buyers (every customer bought once): BG/NBD cannot tell buying rate from "
                           "dropout; use a longer lookback", field="orders")
    if float(tt.max()) <= 0:
        raise InvalidInput("every customer's T is 0 (all first purchases on the as-of day)", field="T")
    x, t_x, tt, wc = _collapse_one_time_buyers(x, t_x, tt, np.ones_like(x) if w is None else w)
    scale = 10.0 / float(tt.max())  # as lifetimes: rescale time so max(T) = 10
    data = _bgnbd_data(x, t_x * scale, tt * scale, wc)
    rate = max(float((x * data["w"]).sum()) / float((tt * scale * data["w"]).sum()), 1e-6)
    theta0 = np.log([1.0, 1.0 / rate, 1.0, 1.0])
    res = minimize(_bgnbd_objective, theta0, args=(data,), jac=True, method="L-BFGS-B",
                   bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4,
                   options={"maxiter": maxiter, **_OPTIONS})
    r, alpha, a, b = np.exp(res.x)
    _check_converged(res, ["r", "alpha", "a", "b"], np.array([r, alpha / scale, a, b]), "BG/NBD")
    # the log-likelihood in the caller's time unit
    ll = -float(_bgnbd_objective(np.log([r, alpha / scale, a, b]), _bgnbd_data(x, t_x, tt, wc))[0]) * data["wsum"]
    return BetaGeo(r=float(r), alpha=float(alpha / scale), a=float(a), b=float(b), log_likelihood=ll,
                   n_customers=n, iterations=int(res.nit))


# --------------------------------------------------------------------------------------- Gamma-Gamma


@dataclass(frozen=True)
class GammaGamma:
    """A fitted Gamma-Gamma model of mean repeat order value."""

    p: float
    q: float
    v: float
    log_likelihood: float
    n_customers: int
    iterations: int

    def params(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v}

    @property
    def population_mean(self) -> float:
        """E[M] of a customer with no repeat purchase: p v / (q - 1)."""
        return self.p * self.v / (self.q - 1)

    def expected_order_value(self, frequency: ArrayLike, monetary: ArrayLike) -> Array:
        """E[M | x, zbar] = p (v + x zbar) / (p x + q - 1); the population mean where x = 0."""
        x = _as_array(frequency, "frequency")
        m = np.nan_to_num(np.asarray(monetary, dtype=np.float64).reshape(-1), nan=0.0)
        if len(x) != len(m):
            raise InvalidInput("frequency and monetary differ in length", field="monetary")
        m = np.where(x > 0, m, 0.0)
        return self.p * (self.v + x * m) / (self.p * x + self.q - 1)


def _gg_objective(theta: Array, data: dict[str, Any]) -> tuple[float, Array]:
    """Mean negative log-likelihood of Gamma-Gamma on repeat buyers and its log-parameter gradient."""
    p, q, v = np.exp(theta)
    x, m, ln_m, ln_x, xs, inv, cnt = (data[k] for k in ("x", "m", "ln_m", "ln_x", "xs", "inv", "cnt"))
    n = len(x)
    px = p * x
    ln_xm_v = np.log(x * m + v)
    ll = (_dot(cnt, gammaln(p * xs + q) - gammaln(p * xs)) - n * gammaln(q) + n * q * math.log(v)
          + _dot(px - 1, ln_m) + _dot(px, ln_x) - _dot(px + q, ln_xm_v))
    d_p = _dot(cnt, xs * (digamma(p * xs + q) - digamma(p * xs))) + _dot(x, ln_m + ln_x - ln_xm_v)
    d_q = _dot(cnt, digamma(p * xs + q)) - n * digamma(q) + n * math.log(v) - float(ln_xm_v.sum())
    d_v = n * q / v - float(((px + q) / (x * m + v)).sum())
    return -ll / n, -np.array([d_p * p, d_q * q, d_v * v]) / n


def fit_gamma_gamma(frequency: ArrayLike, monetary: ArrayLike, *, maxiter: int = _MAXITER) -> GammaGamma:
    """Fit Gamma-Gamma on the repeat buyers (``frequency > 0``) with their mean repeat order value.

    Raises InvalidInput when there are no repeat buyers, a repeat buyer's value is zero or negative,
    the fit does not converge, or q <= 1 (the mean order value of a new customer would be infinite)."""
    x_all = _as_array(frequency, "frequency")
    m_all = np.asarray(monetary, dtype=np.float64).reshape(-1)
    if len(x_all) != len(m_all):
        raise InvalidInput("frequency and monetary differ in length", field="monetary")
    repeat = x_all > 0
    x, m = x_all[repeat], m_all[repeat]
    if len(x) == 0:
        raise InvalidInput("no repeat buyers: Gamma-Gamma is fitted on customers with 2+ purchases", field="orders")
    if not np.all(np.isfinite(m)):
        raise InvalidInput(f"{int((~np.isfinite(m)).sum())} repeat buyer(s) have no monetary value", field="monetary")
    if np.any(m <= 0):
        bad = int((m <= 0).sum())
        raise InvalidInput(f"{bad} repeat buyer(s) have a mean repeat order value <= 0 (lowest {m.min():g}); "
                           "Gamma-Gamma needs positive order values", field="monetary")
    if len(x) < 3:
        raise InvalidInput(f"only {len(x)} repeat buyer(s); Gamma-Gamma needs at least 3", field="orders")
    scale = 1.0 / float(m.mean())  # like time in BG/NBD: v is a money scale
    ms = m * scale
    xs, inv = np.unique(x, return_inverse=True)
    inv = inv.reshape(-1)
    data = {"x": x, "m": ms, "ln_m": np.log(ms), "ln_x": np.log(x), "xs": xs, "inv": inv,
            "cnt": np.bincount(inv, minlength=len(xs)).astype(np.float64)}
    theta0 = np.log([1.0, 2.0, float(ms.mean())])
    res = minimize(_gg_objective, theta0, args=(data,), jac=True, method="L-BFGS-B",
                   bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 3, options={"maxiter": maxiter, **_OPTIONS})
    p, q, v = np.exp(res.x)
    _check_converged(res, ["p", "q", "v"], np.array([p, q, v / scale]), "Gamma-Gamma")
    if q <= 1:
        raise InvalidInput(f"Gamma-Gamma fitted q={q:.3g} <= 1: order values are too heavy-tailed for a finite "
                           "mean order value (check for outlier amounts)", field="monetary")
    # the log-likelihood in the caller's money unit
    ll = -float(_gg_objective(np.log([p, q, v / scale]), {**data, "m": m, "ln_m": np.log(m)})[0]) * len(x)
    return GammaGamma(p=float(p), q=float(q), v=float(v / scale), log_likelihood=ll, n_customers=len(x),
                      iterations=int(res.nit))


# --------------------------------------------------------------------------------------- CLV


def monthly_rate(annual: float) -> float:
    """The monthly discount rate equivalent to an annual one: (1 + annual)^(1/12) - 1."""
    return (1.0 + annual) ** (1.0 / 12.0) - 1.0


def customer_lifetime_value(bg: BetaGeo, gg: GammaGamma, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike,
                            monetary: ArrayLike, *, horizon: float, periods_per_month: float,
                            monthly_discount_rate: float) -> tuple[Array, Array, Array]:
    """(CLV, expected purchases over ``horizon``, expected order value) per customer.

    CLV = sum over monthly steps m of E[M] (E[Y(t_m)] - E[Y(t_(m-1))]) / (1 + d)^(t_m / month), with
    t_m = min(m * periods_per_month, horizon): lifetimes' ``customer_lifetime_value`` for a horizon
    of whole months, a shorter last step otherwise. ``horizon`` is in the model's time unit."""
    x, t_x, tt = _check_rft(frequency, recency, T)
    if horizon <= 0 or periods_per_month <= 0:
        raise InvalidInput("horizon and periods_per_month must be > 0", field="horizon_days")
    steps = int(math.ceil(horizon / periods_per_month - 1e-9))
    edges = [min((k + 1) * periods_per_month, horizon) for k in range(steps)]
    cum = bg._expected_many(edges, x, t_x, tt)
    value = gg.expected_order_value(x, monetary)
    clv = np.zeros_like(x)
    prev = np.zeros_like(x)
    for edge, e in zip(edges, cum, strict=True):
        clv += value * (e - prev) / (1.0 + monthly_discount_rate) ** (edge / periods_per_month)
        prev = e
    return clv, cum[-1], value


# --------------------------------------------------------------------------------------- summaries


def summary_from_transactions(customer_ids: ArrayLike, dates: ArrayLike, amounts: ArrayLike, observation_end: date,
                              *, period_days: float = 1.0) -> pl.DataFrame:
    """Per customer from raw transactions up to ``observation_end`` (inclusive): ``frequency``
    (distinct purchase days - 1), ``recency`` (last - first purchase day) and ``T`` (end - first
    day), in periods of ``period_days`` days, and ``monetary`` (mean value of the repeat purchase
    days, each day's amounts summed; 0 for one-time buyers), sorted by customer id.
    Raises InvalidInput when the inputs differ in length or no transaction is on or before the end."""
    ids = np.asarray(customer_ids)
    days = np.asarray(dates).astype("datetime64[D]").astype(np.int64)
    amt = np.asarray(amounts, dtype=np.float64)
    if not len(ids) == len(days) == len(amt):
        raise InvalidInput(f"customer_ids, dates and amounts differ in length ({len(ids)}, {len(days)}, {len(amt)})",
                           field="transactions")
    end = int(np.datetime64(observation_end, "D").astype(np.int64))
    df = pl.DataFrame({"customer_id": ids, "day": days, "amount": amt}).filter(pl.col("day") <= end)
    if df.height == 0:
        raise InvalidInput(f"no transactions on or before {observation_end}", field="transactions")
    daily = df.group_by("customer_id", "day").agg(pl.col("amount").sum()).sort("customer_id", "day")
    s = daily.group_by("customer_id").agg(
        pl.col("day").min().alias("first"), pl.col("day").max().alias("last"), pl.len().alias("n"),
        pl.col("amount").sum().alias("total"), pl.col("amount").first().alias("first_amount"))
    return s.sort("customer_id").select(
        "customer_id", (pl.col("n") - 1).alias("frequency"),
        ((pl.col("last") - pl.col("first")) / period_days).alias("recency"),
        ((end - pl.col("first")) / period_days).alias("T"),
        pl.when(pl.col("n") > 1).then((pl.col("total") - pl.col("first_amount")) / (pl.col("n") - 1))
        .otherwise(0.0).alias("monetary"))


# --------------------------------------------------------------------------------------- definition


class CLVDefinition(BaseModel):
    """The CLV model definition (what the artifact's definition hash covers)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="score as of this instant (default: now)")
    lookback_days: int = Field(default=730, ge=30, le=3650,
                               description="orders of the last N days form the purchase history")
    period: Literal["day", "week"] = Field(default="week", description="the model's time unit")
    horizon_days: int = Field(default=365, ge=1, le=3650, description="CLV and expected purchases over N days")
    discount_rate_annual: float = Field(default=0.1, ge=0, le=1,
                                        description="annual discount rate, applied monthly ((1+r)^(1/12)-1)")
    exclude_statuses: list[str] = Field(default_factory=list, description=EXCLUDE_STATUSES_DOC)
    refit_every_hours: RefitEveryHours = Field(default=24, description="the refit schedule (None: by hand)")

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: CLVDefinition | dict[str, Any] | None) -> CLVDefinition:
    """A validated definition; raises InvalidInput naming the bad field."""
    if isinstance(data, CLVDefinition):
        return data
    return validated(CLVDefinition, data or {})


# --------------------------------------------------------------------------------------- Goldkey data

_SUMMARY_SQL = """
    WITH o AS (
        SELECT canonical_id AS profile_id, CAST(floor(epoch(ordered_at) / 86400) AS BIGINT) AS day, total_amount
        FROM orders_resolved
        WHERE workspace_id = ? AND ordered_at <= ? AND ordered_at > ?{status}
    ), d AS (
        SELECT profile_id, day, sum(total_amount) AS value FROM o GROUP BY profile_id, day
    ), p AS (
        SELECT profile_id, min(day) AS first_day, max(day) AS last_day, count(*) AS n_days,
               sum(value) AS total, arg_min(value, day) AS first_value,
               min(day) FILTER (WHERE day <= ?) AS cal_first, max(day) FILTER (WHERE day <= ?) AS cal_last,
               count(*) FILTER (WHERE day <= ?) AS cal_days, count(*) FILTER (WHERE day > ?) AS holdout_days
        FROM d GROUP BY profile_id
    )
    SELECT profile_id, n_days - 1 AS frequency, last_day - first_day AS recency_days, ? - first_day AS t_days,
           CASE WHEN n_days > 1 THEN (total - first_value) / (n_days - 1) END AS monetary,
           cal_days - 1 AS cal_frequency, cal_last - cal_first AS cal_recency_days, ? - cal_first AS cal_t_days,
           holdout_days AS holdout_purchases
    FROM p ORDER BY profile_id"""


def _day_number(t: datetime) -> int:
    return math.floor(t.timestamp() / 86400)


def holdout_days_of(d: CLVDefinition) -> int:
    """Days held out to check the model: min(horizon_days, lookback_days // 2)."""
    return min(d.horizon_days, d.lookback_days // 2)


def load_summary(analytical: AnalyticalStore, ws: str, d: CLVDefinition, as_of: datetime) -> pl.DataFrame:
    """Per live profile with orders in the window: frequency, recency_days, t_days, monetary and the
    calibration/holdout columns, from ONE query with bound parameters (sorted by profile id).
    Raises InvalidInput when there are no orders in the window."""
    since = as_of - timedelta(days=d.lookback_days)
    end_day = _day_number(as_of)
    cal_end = end_day - holdout_days_of(d)
    status = f" AND {status_filter()}"  # refunds and cancellations are no purchases
    params = [ws, as_of, since, excluded_statuses(d.exclude_statuses), cal_end, cal_end, cal_end, cal_end, end_day,
              cal_end]
    cur = analytical.cursor()
    try:
        tbl = cur.sql(_SUMMARY_SQL.format(status=status), params=params).to_arrow_table()
    finally:
        cur.close()
    df = pl.from_arrow(tbl)
    assert isinstance(df, pl.DataFrame)
    if df.height == 0:
        raise InvalidInput(
            f"no orders to score: workspace has no orders in the {d.lookback_days} days before {to_iso(as_of)}; "
            "import orders first (or widen lookback_days)", field="orders")
    return df


def _check_population(df: pl.DataFrame, d: CLVDefinition) -> None:
    n = df.height
    repeat = df.filter(pl.col("frequency") > 0)
    window = f"in the {d.lookback_days} days before as_of"
    if n < MIN_CUSTOMERS:
        raise InvalidInput(f"only {n} customer(s) have orders {window}; CLV needs at least {MIN_CUSTOMERS} "
                           "(widen lookback_days or import more orders)", field="orders")
    if repeat.height == 0:
        raise InvalidInput(f"no repeat buyers: none of the {n} customers bought on two or more days {window}; "
                           "BG/NBD and Gamma-Gamma need repeat purchases (widen lookback_days)", field="orders")
    if repeat.height < MIN_REPEAT_BUYERS:
        raise InvalidInput(f"only {repeat.height} repeat buyer(s) (orders on 2+ days) among {n} customers {window}; "
                           f"CLV needs at least {MIN_REPEAT_BUYERS}", field="orders")
    bad = repeat.filter(pl.col("monetary") < 0)
    if bad.height:
        ex = bad.row(0, named=True)
        raise InvalidInput(
            f"{bad.height} repeat buyer(s) have a negative mean repeat order value (e.g. profile {ex['profile_id']}: "
            f"{ex['monetary']:g}); Gamma-Gamma needs order values of 0 or more: leave refunds and cancellations "
            "out with exclude_statuses (or their statuses), or fix the amounts", field="monetary")


# --------------------------------------------------------------------------------------- metrics


def value_distribution(values: Array, buckets: int = 10) -> dict[str, Any]:
    """Histogram (``buckets`` equal-width buckets up to the 99th percentile, then one for the top 1%)
    and deciles (customers ranked by value: min, max, mean, sum and share of the total)."""
    v = np.sort(values)
    n = len(v)
    total = float(v.sum())
    p99 = float(np.quantile(v, 0.99)) if n else 0.0
    hist: list[dict[str, Any]] = []
    if n and p99 > v[0]:
        edges = np.linspace(float(v[0]), p99, buckets + 1)
        counts = np.histogram(v[v < p99], bins=edges)[0]
        hist = [{"from": float(edges[i]), "to": float(edges[i + 1]), "profiles": int(counts[i])}
                for i in range(buckets)]
    top = v[v >= p99] if hist else v
    if len(top):
        hist.append({"from": float(top[0]), "to": float(top[-1]), "profiles": int(len(top))})
    deciles = []
    for i, part in enumerate(np.array_split(v[::-1], 10)):
        if len(part):
            s = float(part.sum())
            deciles.append({"decile": i + 1, "profiles": int(len(part)), "min": float(part[-1]),
                            "max": float(part[0]), "mean": s / len(part), "sum": s,
                            "share": s / total if total > 0 else 0.0})
    return {"histogram": hist, "deciles": deciles}


def _holdout_check(df: pl.DataFrame, d: CLVDefinition) -> dict[str, Any]:
    """Refit on the calibration part and compare predicted with actual holdout purchases."""
    h = holdout_days_of(d)
    unit = PERIOD_DAYS[d.period]
    cal = df.filter(pl.col("cal_frequency") >= 0)
    base = {"holdout_days": h, "calibration_customers": cal.height}
    n_repeat = int((cal["cal_frequency"] > 0).sum()) if cal.height else 0
    if cal.height < MIN_CUSTOMERS or n_repeat < MIN_REPEAT_BUYERS:
        return {**base, "skipped": f"not enough history before the holdout ({cal.height} customers, {n_repeat} "
                                   f"repeat buyers; needs {MIN_CUSTOMERS} and {MIN_REPEAT_BUYERS})"}
    x = cal["cal_frequency"].to_numpy().astype(np.float64)
    t_x = cal["cal_recency_days"].to_numpy().astype(np.float64) / unit
    tt = cal["cal_t_days"].to_numpy().astype(np.float64) / unit
    try:
        bg = fit_beta_geo(x, t_x, tt)
    except InvalidInput as exc:
        return {**base, "skipped": f"calibration fit failed: {exc.message}"}
    pred = bg._expected_many([h / unit], x, t_x, tt)[0]
    actual = cal["holdout_purchases"].to_numpy().astype(np.float64)
    corr = float(np.corrcoef(pred, actual)[0, 1]) if pred.std() > 0 and actual.std() > 0 else None
    return {**base, "parameters": bg.params(), "predicted_total": float(pred.sum()),
            "actual_total": float(actual.sum()), "mae": float(np.abs(pred - actual).mean()), "correlation": corr}


# --------------------------------------------------------------------------------------- service


@dataclass(frozen=True)
class CLVScores:
    """Per-customer outputs of one fit, aligned with ``profile_ids``."""

    profile_ids: list[str]
    frequency: Array
    recency: Array
    T: Array
    monetary: Array
    p_alive: Array
    expected_purchases: Array
    expected_order_value: Array
    clv: Array


def score_customers(bg: BetaGeo, gg: GammaGamma, x: Array, t_x: Array, tt: Array, monetary: Array,
                    d: CLVDefinition) -> tuple[Array, Array, Array, Array]:
    """(p_alive, expected purchases over the horizon, expected order value, CLV) per customer."""
    unit = PERIOD_DAYS[d.period]
    clv, purchases, value = customer_lifetime_value(
        bg, gg, x, t_x, tt, monetary, horizon=d.horizon_days / unit, periods_per_month=DAYS_PER_MONTH / unit,
        monthly_discount_rate=monthly_rate(d.discount_rate_annual))
    return bg._p_alive(x, t_x, tt), purchases, value, clv


class CLVService:
    """Fit the CLV model of a workspace and write its scores back to the profiles."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, writer: Any, facts: Any,
                 registry: ModelRegistry, realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.facts = facts
        self.registry = registry
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> CLVService:
        return cls(gk.engine, gk.analytical, gk.writer, gk.facts, ModelRegistry(gk.settings.data_dir / "models"),
                   getattr(gk, "realtime", None))

    def fit(self, ws: str, definition: CLVDefinition | dict[str, Any] | None = None,
            progress: Progress | None = None) -> tuple[CLVScores, ModelVersion]:
        """Fit BG/NBD and Gamma-Gamma, score every customer and save a new model version; nothing is
        written to profiles. Raises InvalidInput (no orders, too few customers or repeat buyers,
        non-positive order values, a fit that does not converge)."""
        say = progress or (lambda _msg: None)
        d = parse_definition(definition)
        t = as_of_utc(d.as_of)
        unit = PERIOD_DAYS[d.period]
        say("reading orders")
        df = load_summary(self.analytical, ws, d, t)
        _check_population(df, d)
        x = df["frequency"].to_numpy().astype(np.float64)
        t_x = df["recency_days"].to_numpy().astype(np.float64) / unit
        tt = df["t_days"].to_numpy().astype(np.float64) / unit
        m = df["monetary"].fill_null(0.0).to_numpy().astype(np.float64)
        # Gamma-Gamma is a model of positive spend: a repeat buyer whose repeat purchases were all
        # free (the demo's trial packs) is left out of its fit and scored by the same formula with a
        # mean of 0, so the prior pulls their expected order value up from 0 (reported in the metrics)
        paid = m > 0
        free_repeat = int(((x > 0) & ~paid).sum())
        if int(((x > 0) & paid).sum()) < 3:
            raise InvalidInput(
                f"{int((x > 0).sum())} repeat buyers, but only {int(((x > 0) & paid).sum())} of them spent anything "
                f"on their repeat purchases ({free_repeat} took free items only); Gamma-Gamma needs at least 3 "
                "with spend", field="monetary")
        say(f"fitting BG/NBD on {df.height} customers")
        bg = fit_beta_geo(x, t_x, tt)
        say(f"fitting Gamma-Gamma on {int(((x > 0) & paid).sum())} repeat buyers")
        gg = fit_gamma_gamma(np.where(paid, x, 0.0), m)
        say("scoring customers")
        p_alive, purchases, value, clv = score_customers(bg, gg, x, t_x, tt, m, d)
        bad = ~(np.isfinite(p_alive) & np.isfinite(purchases) & np.isfinite(clv))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInput(
                f"the fitted model gives no finite prediction for {int(bad.sum())} customer(s) (e.g. profile "
                f"{df['profile_id'][i]}: {int(x[i])} repeat purchases; fitted a={bg.a:.4g}, which must not be 1)",
                field="orders")
        say("checking the model on a holdout period")
        holdout = _holdout_check(df, d)
        repeat = x > 0
        corr = (float(np.corrcoef(x[repeat], m[repeat])[0, 1])
                if repeat.sum() > 2 and x[repeat].std() > 0 and m[repeat].std() > 0 else None)
        metrics = {
            "customers": df.height, "repeat_buyers": int(repeat.sum()),
            "bgnbd": {**bg.params(), "log_likelihood": bg.log_likelihood, "iterations": bg.iterations},
            "gamma_gamma": {**gg.params(), "log_likelihood": gg.log_likelihood, "customers": gg.n_customers,
                            "population_mean_order_value": gg.population_mean,
                            "repeat_buyers_without_spend": free_repeat},
            "frequency_monetary_correlation": corr,
            "p_alive_mean": float(p_alive.mean()), "expected_purchases_total": float(purchases.sum()),
            "clv_total": float(clv.sum()), "clv_mean": float(clv.mean()), "clv_median": float(np.median(clv)),
            "holdout": holdout, "clv_distribution": value_distribution(clv),
        }
        artifact = {"as_of": to_iso(t), "period": d.period, "time_unit_days": unit,
                    "horizon_periods": d.horizon_days / unit,
                    "monthly_discount_rate": monthly_rate(d.discount_rate_annual),
                    "bgnbd": asdict(bg), "gamma_gamma": asdict(gg)}
        say("saving the model version")
        mv = self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=d.as_json(), artifact=artifact,
                                metrics=metrics)
        scores = CLVScores(profile_ids=df["profile_id"].to_list(), frequency=x, recency=t_x, T=tt, monetary=m,
                           p_alive=p_alive, expected_purchases=purchases, expected_order_value=value, clv=clv)
        return scores, mv

    def latest(self, ws: str, definition: CLVDefinition | dict[str, Any] | None = None) -> ModelVersion:
        """The latest fitted version (checked against ``definition`` when given). Raises NotFound."""
        d = None if definition is None else parse_definition(definition).as_json()
        return self.registry.load(ws, MODEL_NAME, kind=MODEL_KIND, definition=d)

    @one_run_at_a_time(MODEL_NAME)
    def run(self, ws: str, definition: CLVDefinition | dict[str, Any] | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
        """Fit, then write ``scores.clv_*`` (with the model version) to the profiles; the report."""
        t0 = time.perf_counter()
        d = parse_definition(definition)
        scores, mv = self.fit(ws, d, progress)
        t_fit = time.perf_counter()
        if progress:
            progress(f"writing scores to {len(scores.profile_ids)} profiles")
        declare_scores(self.engine, ws, {
            "clv_p_alive": "CLV: probability the customer is still active (BG/NBD)",
            "clv_expected_purchases": f"CLV: expected purchases in the next {d.horizon_days} days",
            "clv_value": f"CLV: discounted expected value over the next {d.horizon_days} days",
            "clv_model_version": "CLV model version"}, MODEL_NAME, mv.version)
        # columns, with the version as one number for every row: a new version's rows are then
        # found by the database instead of read and compared in Python (1M profiles: see bench_clv)
        written = write_score_columns(self, ws, SCORE_FIELDS, scores.profile_ids, {
            "clv_p_alive": np.round(scores.p_alive, 4),
            "clv_expected_purchases": np.round(scores.expected_purchases, 4),
            "clv_value": np.round(scores.clv, 2),
            "clv_model_version": mv.version})
        return {"model": MODEL_NAME, "version": mv.version, "as_of": mv.artifact.get("as_of"),
                "profiles": len(scores.profile_ids), "repeat_buyers": mv.metrics["repeat_buyers"],
                "scores_written": written, "metrics": mv.metrics,
                "fit_ms": int((t_fit - t0) * 1000), "took_ms": int((time.perf_counter() - t0) * 1000)}

    def summary(self, ws: str) -> dict[str, Any]:
        """The latest version's parameters, metrics and CLV distribution (for the console).
        Raises NotFound when no version has been fitted."""
        mv = self.latest(ws)
        a = mv.artifact
        params = {"bgnbd": {k: a["bgnbd"][k] for k in ("r", "alpha", "a", "b")},
                  "gamma_gamma": {k: a["gamma_gamma"][k] for k in ("p", "q", "v")}}
        metrics = {k: v for k, v in mv.metrics.items() if k != "clv_distribution"}
        return {"model": MODEL_NAME, "version": mv.version, "as_of": a.get("as_of"), "created_at": mv.created_at,
                "definition": mv.definition, "period": a.get("period"), "parameters": params, "metrics": metrics,
                "distribution": mv.metrics.get("clv_distribution", {"histogram": [], "deciles": []})}

