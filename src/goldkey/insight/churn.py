"""Churn risk and purchase propensity: a calibrated tabular classifier with per-customer reasons.

**The classifier** (:class:`TabularClassifier`, generic over any table of numeric and categorical
columns):

1. *Design matrix*: numeric columns as they are (missing values stay NaN for the trees); each
   categorical column one-hot encoded over its ``max_categories`` most frequent training values
   (rarer and unseen ones share an ``__other__`` column when there is one, else all zeros). Constant columns are
   dropped; a matrix with nothing left is refused.
2. *Two models on it*: gradient-boosted trees (LightGBM, Ke et al., NeurIPS 2017; shallow trees,
   small learning rate: chosen by 5-fold cross-validation on the training part of the telco data
   against LightGBM defaults, scikit-learn's GradientBoosting and HistGradientBoosting, see
   ``docs/churn.md``) and an L2 logistic regression (medians for missing values, ``log1p`` on skewed
   non-negative columns, standardised).
3. *Blend and calibration*: the score is ``w * trees_logit + (1 - w) * logistic_logit``. ``w``
   (from ``blend_weights``) and the calibration map are fitted on **out-of-fold** logits of a
   stratified K-fold on the training data only (as ``CalibratedClassifierCV(ensemble=False)``
   does), then both models are refitted on all of it. Calibration is Platt's sigmoid (default; it
   keeps the order, so AUC and lift are unchanged) or isotonic regression (Zadrozny & Elkan, 2002).
   **Large data** (above ``holdout_calibration_above`` rows, 100k): one stratified held-out
   calibration fold (``calibration_fraction``) replaces the K folds and the K-member ensemble; both
   models are fitted on a stratified sample of at most ``large_max_fit_rows`` (200k) of the other
   rows; the trees use ``large_learning_rate`` (0.1) and stop early on the calibration fold's log
   loss (at most ``n_estimators``). Why: on 1M synthetic customers the holdout AUC was the same
   (0.8464-0.8465) whether the trees saw 200k, 300k or 900k rows, at 0.03 x 400 trees or 0.1 with
   early stopping, while the fit cost grows with rows x trees (540 s before, ~12 CPU-s after).
   LightGBM stays on one thread by default: with 2 threads on the loaded shared 2-core machine the
   same fit took 3.6x the CPU and twice the wall time (OpenMP threads spinning on each other).
   The telco-sized path (K folds, the ensemble) is unchanged.
4. *Reasons*: the blended logit is additive over the original columns: the trees' exact
   TreeSHAP contributions (LightGBM ``pred_contrib=True``, Lundberg et al., 2020; one-hot columns
   summed back to their column) plus the logistic terms ``coef * standardised value``, weighted by
   ``w`` and scaled by the sigmoid slope. A customer's reasons are the columns that pushed the score
   up most, with the value and the column's human description. From 100k rows the TreeSHAP values
   come from per-pattern tables computed once from the trees (:mod:`goldkey.insight.treeshap`,
   exactly equal to ``pred_contrib``; 1.9 CPU-s at 1M rows where the previous per-tree path cost
   9.2). :meth:`TabularClassifier.explain` gives the probabilities and the top-k reasons in one
   pass, block by block (the probabilities are the calibrated sum of the contributions, so the
   trees are walked once), and :class:`Explanation` renders every row's reasons as JSON column by
   column (polars), without a Python object per reason: at 1M customers scoring with reasons costs
   ~5 CPU-s where scoring alone through LightGBM's ``predict`` cost ~9 and the reasons ~31 more.

**Goldkey** (:class:`ChurnService`): features are :func:`goldkey.insight.features.customer_features`
as of a cutoff ``as_of - horizon_days``; labels come from the window ``[cutoff, as_of)`` after it:

- churn: a customer active before the cutoff (any order or event, or with ``activity="orders"``
  any order) with no order and no event (``"orders"``: no order) in the window is a churner (1);
- propensity: 1 when the profile did event ``event`` / bought category ``category`` in the window.

A stratified holdout (``test_fraction``) measures AUC, PR-AUC, Brier and the lift table
(:mod:`goldkey.insight.evaluation`); the model is then refitted on every labelled customer
(``refit_full``), saved in the registry (kind ``churn`` / ``propensity``) with those metrics, and
every live profile is scored on features as of ``as_of`` (computed by DuckDB on a helper thread
while the classifier fits): ``scores.churn_risk`` / ``scores.propensity_<name>`` and
``scores.<field>_model_version`` through :func:`goldkey.insight.writeback.write_score_columns`
(while the reasons' JSON is built), the reasons meanwhile to the analytical store through
:func:`~goldkey.insight.writeback.write_profile_reasons` (read back per profile by the reasons endpoint).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY
from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, NotFound, validated
from goldkey.insight.evaluation import evaluate
from goldkey.insight.features import (
    attribute_features,
    customer_features,
    describe,
    feature_columns,
    trait_features,
    with_profile_features,
)
from goldkey.insight.purchases import EXCLUDE_STATUSES_DOC, excluded_statuses, status_filter
from goldkey.insight.registry import AsOf, ModelRegistry, ModelVersion, one_run_at_a_time, run_lock
from goldkey.insight.treeshap import ROW_BLOCK, ShapTables
from goldkey.insight.writeback import (
    declare_scores,
    read_profile_reasons,
    write_profile_reasons,
    write_score_columns,
)
from goldkey.rules.values import as_of_utc

Progress = Callable[[str, int, int], None]
OTHER = "__other__"


class ClassifierParams(BaseModel):
    """Settings of :class:`TabularClassifier` (defaults chosen by cross-validation, see the module doc)."""

    model_config = ConfigDict(extra="forbid")
    n_estimators: int = Field(default=400, ge=1, le=5000)
    learning_rate: float = Field(default=0.03, gt=0, le=1)
    num_leaves: int = Field(default=4, ge=2, le=1024)
    min_child_samples: int = Field(default=50, ge=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=1.0, ge=0)
    logistic_c: float = Field(default=0.1, gt=0, description="inverse L2 strength of the logistic part")
    blend_weights: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1, max_length=21,
        description="candidate weights of the trees in the blend (each 0-1; at least one)")
    blend_metric: Literal["auc", "average_precision"] = Field(
        default="auc", description="what the out-of-fold logits maximise when choosing the blend weight")
    ensemble: bool = Field(default=True, description="score with the mean of the K fold models' logits "
                                                      "instead of one model refitted on all rows")
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    cv_folds: int = Field(default=5, ge=2, le=20)
    holdout_calibration_above: int = Field(default=100_000, ge=1000,
                                           description="above this many rows: one calibration fold, not K")
    calibration_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    large_max_fit_rows: int = Field(default=200_000, ge=1000,
                                    description="above holdout_calibration_above rows: fit both models on at most "
                                                "this many rows (a stratified sample of the fitting part)")
    large_learning_rate: float = Field(default=0.1, gt=0, le=1,
                                       description="above holdout_calibration_above rows: the trees' learning rate")
    large_early_stopping_rounds: int = Field(default=20, ge=1,
                                             description="above holdout_calibration_above rows: stop adding trees "
                                                         "when the calibration fold's log loss has not improved "
                                                         "for this many rounds (n_estimators stays the maximum)")
    max_categories: int = Field(default=30, ge=1, le=1000)
    min_rows: int = Field(default=40, ge=10)
    min_class_count: int = Field(default=10, ge=2)
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="random seed (0 to 2^32 - 1)")
    n_jobs: int | None = Field(default=None, ge=1,
                               description="LightGBM threads (default 1: on a shared machine OpenMP threads "
                                           "mostly wait on each other; set 2+ on a dedicated one)")


# -- the design matrix ---------------------------------------------------------------------------------


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype))


class _Design:
    """The column layout learned on training data: numeric columns, one-hot categories, drops."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.features: list[str] = spec["features"]
        self.numeric: list[str] = spec["numeric"]
        self.categories: dict[str, list[str]] = spec["categories"]
        self.columns: list[str] = spec["columns"]  # kept design columns
        self.owner: list[int] = spec["owner"]  # design column -> index in features

    @classmethod
    def learn(cls, X: pd.DataFrame, max_categories: int) -> tuple[_Design, np.ndarray]:
        """The layout learned on ``X`` and ``X``'s design matrix."""
        if X.shape[1] == 0:
            raise InvalidInput("the feature matrix has no columns", field="features")
        numeric = [c for c in X.columns if _is_numeric(X[c])]
        categories: dict[str, list[str]] = {}
        for c in X.columns:
            if c in numeric:
                continue
            counts = X[c].astype("string").fillna("__missing__").value_counts(sort=False)
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            cats = [k for k, _ in ranked[:max_categories]]
            if len(ranked) > max_categories:
                cats.append(OTHER)
            categories[str(c)] = cats
        features = [str(c) for c in X.columns]
        cols, owner = [], []
        for i, c in enumerate(features):
            names = [c] if c in numeric else [f"{c}={v}" for v in categories[c]]
            cols += names
            owner += [i] * len(names)
        d = cls({"features": features, "numeric": [str(c) for c in numeric], "categories": categories,
                 "columns": cols, "owner": owner})
        m = d.matrix(X)
        with np.errstate(all="ignore"):
            seen = ~np.isnan(m).all(axis=0)
            lo = np.where(seen, np.nanmin(np.where(np.isnan(m), np.inf, m), axis=0), 0)
            hi = np.where(seen, np.nanmax(np.where(np.isnan(m), -np.inf, m), axis=0), 0)
            # a column of one value and gaps still tells the trees who has a value
            gaps = np.isnan(m).any(axis=0)
        keep = [j for j in range(m.shape[1]) if seen[j] and (hi[j] > lo[j] or gaps[j])]
        if not keep:
            raise InvalidInput(f"every feature column is constant or empty ({', '.join(features[:10])}): "
                               "nothing to learn from", field="features")
        d.columns = [cols[j] for j in keep]
        d.owner = [owner[j] for j in keep]
        return d, m[:, keep]

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The design matrix of ``X`` (float64, NaN for missing numbers) over the kept columns."""
        return self.block(self.prepare(X), 0, len(X))

    def prepare(self, X: pd.DataFrame) -> list[tuple[np.ndarray, int]]:
        """Per kept design column its source over all rows of ``X``: ``(numbers, -1)`` or
        ``(category codes, code of this column)``; :meth:`block` cuts design rows from it."""
        missing = [c for c in self.features if c not in X.columns]
        if missing:
            raise InvalidInput(f"feature columns missing: {', '.join(missing)}", field="features")
        wanted = set(self.columns)
        parts: dict[str, tuple[np.ndarray, int]] = {}
        for c in self.features:
            if c in self.numeric:
                if c in wanted:
                    parts[c] = (pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan), -1)
                continue
            cats = self.categories[c]
            named = [k for k in cats if k != OTHER]
            codes = _category_codes(X[c], named)
            if OTHER in cats:
                codes = np.where(codes < 0, len(named), codes)
            for i, cat in enumerate(cats):
                if f"{c}={cat}" in wanted:
                    parts[f"{c}={cat}"] = (codes, i)
        return [parts[name] for name in self.columns]

    @staticmethod
    def block(prepared: list[tuple[np.ndarray, int]], lo: int, hi: int) -> np.ndarray:
        """Design rows ``lo:hi`` from :meth:`prepare`'s columns."""
        n = len(prepared[0][0]) if prepared else 0
        out = np.empty((max(0, min(hi, n) - lo), len(prepared)))
        for j, (values, code) in enumerate(prepared):
            out[:, j] = values[lo:hi] if code < 0 else values[lo:hi] == code
        return out

    def spec(self) -> dict[str, Any]:
        return {"features": self.features, "numeric": self.numeric, "categories": self.categories,
                "columns": self.columns, "owner": self.owner}


def _category_codes(col: pd.Series, named: list[str]) -> np.ndarray:
    """Index of each value's text (missing: ``__missing__``) in ``named``, -1 when absent.

    Why not ``astype("string")`` on the column: at 1M rows turning every value into a pandas string
    costs seconds; a column of text takes the same mapping on its distinct values (factorised
    first), which is the same result. Other columns (numbers, mixed objects, where 1 and 1.0 would
    factorise together but print differently) keep the per-value conversion."""
    index = pd.Index(named, dtype="object")
    if col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty"):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        mapped = np.asarray(index.get_indexer(np.asarray(uniques, dtype=object)), dtype=np.int64)
        missing = int(index.get_indexer(["__missing__"])[0])
        return np.where(codes < 0, missing, mapped[np.maximum(codes, 0)] if mapped.size else missing)
    v = col.astype("string").fillna("__missing__")
    return np.asarray(index.get_indexer(v.to_numpy(dtype=object)), dtype=np.int64)


class _Linear:
    """The logistic part: imputation, log1p of skewed columns, standardisation, coefficients."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.median = np.asarray(spec["median"], dtype=float)
        self.log = np.asarray(spec["log"], dtype=bool)
        self.mean = np.asarray(spec["mean"], dtype=float)
        self.std = np.asarray(spec["std"], dtype=float)
        self.coef = np.asarray(spec["coef"], dtype=float)
        self.intercept = float(spec["intercept"])

    @staticmethod
    def _prep(m: np.ndarray, median: np.ndarray, log: np.ndarray) -> np.ndarray:
        z = np.where(np.isnan(m), median, m)
        for j in np.flatnonzero(log):  # column by column: a boolean column index copies the block twice
            z[:, j] = np.log1p(np.maximum(z[:, j], 0))
        return z

    @classmethod
    def fit(cls, m: np.ndarray, y: np.ndarray, c: float) -> _Linear:
        median = np.nanmedian(np.where(np.isnan(m).all(axis=0), 0.0, m), axis=0)
        median = np.nan_to_num(median)
        filled = np.where(np.isnan(m), median, m)
        mean0, sd0 = filled.mean(axis=0), filled.std(axis=0)
        skew = np.where(sd0 > 0, ((filled - mean0) ** 3).mean(axis=0) / np.maximum(sd0, 1e-12) ** 3, 0)
        log = (filled.min(axis=0) >= 0) & (skew > 2)
        z = cls._prep(m, median, log)
        mean, std = z.mean(axis=0), z.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        lr = LogisticRegression(C=c, max_iter=2000)
        lr.fit((z - mean) / std, y)
        return cls({"median": median, "log": log, "mean": mean, "std": std, "coef": lr.coef_[0],
                    "intercept": float(lr.intercept_[0])})

    def terms(self, m: np.ndarray) -> np.ndarray:
        """Per design column ``coef * standardised value`` (sums with the intercept to the logit)."""
        return ((self._prep(m, self.median, self.log) - self.mean) / self.std) * self.coef

    def spec(self) -> dict[str, Any]:
        return {"median": self.median.tolist(), "log": self.log.tolist(), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept}


def _gbm_fit(m: np.ndarray, y: np.ndarray, p: ClassifierParams,
             valid: tuple[np.ndarray, np.ndarray] | None = None) -> lgb.Booster:
    """The trees; with ``valid`` (the large-data path) at ``large_learning_rate``, stopped early on
    ``valid``'s log loss and truncated to the best round."""
    lr = p.learning_rate if valid is None else p.large_learning_rate
    params = {"objective": "binary", "learning_rate": lr, "num_leaves": p.num_leaves,
              "min_data_in_leaf": p.min_child_samples, "bagging_fraction": p.subsample,
              "bagging_freq": 1 if p.subsample < 1 else 0, "feature_fraction": p.colsample_bytree,
              "lambda_l2": p.reg_lambda, "seed": p.seed,
              "num_threads": p.n_jobs or 1, "deterministic": True,
              "force_row_wise": True, "verbose": -1}
    train = lgb.Dataset(m, label=y, free_raw_data=True)
    if valid is None:
        return lgb.train(params, train, num_boost_round=p.n_estimators)
    stop = lgb.early_stopping(p.large_early_stopping_rounds, first_metric_only=True, verbose=False)
    booster = lgb.train({**params, "metric": "binary_logloss"}, train, num_boost_round=p.n_estimators,
                        valid_sets=[lgb.Dataset(valid[0], label=valid[1], reference=train)], callbacks=[stop])
    if booster.best_iteration and booster.best_iteration < booster.num_trees():
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    return booster


class _Parts:
    """One fitted (design, trees, logistic) triple and its logits."""

    def __init__(self, design: _Design, gbm: lgb.Booster, linear: _Linear) -> None:
        self.design, self.gbm, self.linear = design, gbm, linear
        self._shap: tuple[ShapTables | None] | None = None

    def shap_tables(self) -> ShapTables | None:
        """The trees' per-pattern TreeSHAP tables (built once; None when a tree is not covered)."""
        if self._shap is None:
            self._shap = (ShapTables.of(self.gbm),)
        return self._shap[0]

    @classmethod
    def fit(cls, X: pd.DataFrame, y: np.ndarray, p: ClassifierParams,
            valid: tuple[pd.DataFrame, np.ndarray] | None = None) -> _Parts:
        design, m = _Design.learn(X, p.max_categories)
        stop = None if valid is None else (design.matrix(valid[0]), valid[1])
        return cls(design, _gbm_fit(m, y, p, stop), _Linear.fit(m, y, p.logistic_c))

    def logits(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        m = self.design.matrix(X)
        g = np.asarray(self.gbm.predict(m, raw_score=True), dtype=float)
        return g, self.linear.terms(m).sum(axis=1) + self.linear.intercept


_CONTRIB_CHUNK = 100_000  # rows per pred_contrib call: bounds LightGBM's temporaries
_PATTERN_ROWS = 100_000  # from this many rows the per-pattern tables (goldkey.insight.treeshap) replace pred_contrib


def _tree_contributions(booster: lgb.Booster, m: np.ndarray, tables: ShapTables | None = None) -> np.ndarray:
    """Exactly ``booster.predict(m, pred_contrib=True)`` (n x (columns + 1), TreeSHAP): from
    ``_PATTERN_ROWS`` rows through the per-pattern tables of :mod:`goldkey.insight.treeshap`
    (``tables``, or built here), below it or for trees they do not cover plain ``pred_contrib`` in
    chunks."""
    n, k = m.shape[0], m.shape[1] + 1
    if n >= _PATTERN_ROWS:
        tables = tables or ShapTables.of(booster)
        if tables is not None:
            return tables.contributions(m)
    out = np.empty((n, k))
    for lo in range(0, n, _CONTRIB_CHUNK):
        part = m[lo : lo + _CONTRIB_CHUNK]
        out[lo : lo + part.shape[0]] = np.asarray(booster.predict(part, pred_contrib=True),
                                                  dtype=float).reshape(part.shape[0], k)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def _check_labels(y: np.ndarray, p: ClassifierParams, what: str = "customers") -> None:
    n = y.size
    if n < p.min_rows:
        raise InvalidInput(f"too few labelled {what}: {n} (need at least {p.min_rows})", field="labels")
    pos = int(y.sum())
    if pos == 0 or pos == n:
        raise InvalidInput(f"the target has one class only: all {n} labelled {what} are "
                           f"{'positive' if pos else 'negative'}; need both", field="labels")
    need = max(p.min_class_count, p.cv_folds)
    if min(pos, n - pos) < need:
        raise InvalidInput(f"too few {'positive' if pos < n - pos else 'negative'} {what}: "
                           f"{min(pos, n - pos)} (need at least {need} of each class)", field="labels")


class TabularClassifier:
    """Calibrated blend of gradient-boosted trees and logistic regression with additive reasons."""

    def __init__(self, params: ClassifierParams | None = None) -> None:
        self.params = params or ClassifierParams()
        self.members: list[_Parts] = []
        self.weight = 0.5
        self.calibration: dict[str, Any] = {}
        self.cv: dict[str, Any] = {}

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame | pl.DataFrame, y: Any) -> TabularClassifier:
        """Fit on ``X`` (one column per feature) and binary labels ``y`` (0/1 or bool)."""
        X = _pandas(X)
        y = np.asarray(y).astype(int).ravel()
        if len(X) != y.size:
            raise InvalidInput(f"{len(X)} rows but {y.size} labels", field="labels")
        p = self.params
        _check_labels(y, p)
        if y.size > p.holdout_calibration_above:
            # large data: K refits would cost K times a fit whose quality no longer grows with the
            # rows (see the module docstring): one stratified calibration fold, the models fitted on
            # at most large_max_fit_rows of the rest, the trees stopped early on the calibration fold
            fit_idx, cal_idx = train_test_split(np.arange(y.size), test_size=p.calibration_fraction, stratify=y,
                                                random_state=p.seed)
            if fit_idx.size > p.large_max_fit_rows:
                fit_idx, _ = train_test_split(fit_idx, train_size=p.large_max_fit_rows, stratify=y[fit_idx],
                                              random_state=p.seed)
                fit_idx = np.sort(fit_idx)
            Xc, yc = X.iloc[cal_idx], y[cal_idx]
            parts = _Parts.fit(X.iloc[fit_idx], y[fit_idx], p, valid=(Xc, yc))
            g, lin = parts.logits(Xc)
            self._choose(g, lin, yc, f"one held-out calibration fold of {cal_idx.size} rows; fitted on "
                                     f"{fit_idx.size} of the other rows, {parts.gbm.num_trees()} trees "
                                     "(early stopping on the calibration fold)")
            self.cv["fit_rows"] = int(fit_idx.size)
            self.cv["trees"] = int(parts.gbm.num_trees())
            self.members = [parts]
            return self
        g = np.zeros(y.size)
        lin = np.zeros(y.size)
        folds = StratifiedKFold(p.cv_folds, shuffle=True, random_state=p.seed)
        members = []
        for tr, te in folds.split(np.zeros(y.size), y):
            fold = _Parts.fit(X.iloc[tr], y[tr], p)
            g[te], lin[te] = fold.logits(X.iloc[te])
            members.append(fold)
        self._choose(g, lin, y, f"{p.cv_folds}-fold out-of-fold logits")
        self.members = members if p.ensemble else [_Parts.fit(X, y, p)]
        return self

    def _choose(self, g: np.ndarray, lin: np.ndarray, y: np.ndarray, how: str) -> None:
        """Pick the blend weight with the best out-of-sample ``blend_metric`` (ties: closest to 0.5),
        then fit the calibration map on the blended out-of-sample logits."""
        from sklearn.metrics import average_precision_score, roc_auc_score

        metric = roc_auc_score if self.params.blend_metric == "auc" else average_precision_score
        aucs = {w: float(metric(y, w * g + (1 - w) * lin)) for w in self.params.blend_weights}
        best = max(aucs.values())
        self.weight = min((w for w, a in aucs.items() if a >= best - 1e-12), key=lambda w: abs(w - 0.5))
        raw = self.weight * g + (1 - self.weight) * lin
        if self.params.calibration == "sigmoid":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
            self.calibration = {"method": "sigmoid", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
        else:
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            self.calibration = {"method": "isotonic", "x": iso.X_thresholds_.tolist(),
                                "y": iso.y_thresholds_.tolist()}
        self.cv = {"method": how, f"{self.params.blend_metric}_by_blend_weight": {str(w): a for w, a in aucs.items()},
                   "blend_weight": self.weight, "cv_auc": float(roc_auc_score(y, raw))}

    # -- scoring -------------------------------------------------------------------------------
    def _ready(self) -> list[_Parts]:
        if not self.members:
            raise InvalidInput("the classifier is not fitted", field="model")
        return self.members

    def raw_score(self, X: pd.DataFrame | pl.DataFrame) -> np.ndarray:
        """The blended logit (mean over the ensemble members)."""
        Xp = _pandas(X)
        out = np.zeros(len(Xp))
        for part in self._ready():
            g, lin = part.logits(Xp)
            out += self.weight * g + (1 - self.weight) * lin
        return out / len(self.members)

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        c = self.calibration
        if c["method"] == "sigmoid":
            return _sigmoid(c["a"] * raw + c["b"])
        return np.interp(raw, np.asarray(c["x"]), np.asarray(c["y"]))

    def predict_proba(self, X: pd.DataFrame | pl.DataFrame) -> np.ndarray:
        """Calibrated probabilities of the positive class."""
        return self._calibrate(self.raw_score(X))

    def _blended_terms(self, Xp: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(n, features) contributions to the blended logit per original column and the (n,) base
        (mean over the ensemble members, not yet scaled by the calibration); a row's sum plus its
        base is :meth:`raw_score` (to ~1e-13).

        Block by block (``ROW_BLOCK`` rows): the design matrix, the trees' TreeSHAP values (per
        pattern tables from ``_PATTERN_ROWS`` rows, else ``pred_contrib``) and the logistic terms
        of a block are summed into its rows of the result at once, so no (rows x design columns)
        matrix is ever held for the whole table."""
        members = self._ready()
        w = self.weight
        n, n_feats = len(Xp), len(members[0].design.features)
        tables = [p.shap_tables() if n >= _PATTERN_ROWS else None for p in members]
        owners = [np.asarray(p.design.owner, dtype=np.intp) for p in members]
        block = ROW_BLOCK if all(t is not None for t in tables) else _CONTRIB_CHUNK
        out = np.empty((n, n_feats))
        base = np.empty(n)
        prepared = [p.design.prepare(Xp) for p in members]
        for lo in range(0, n, block):
            rows = min(block, n - lo)
            acc = np.zeros((rows, n_feats), order="F")  # column updates: keep columns contiguous
            b = np.zeros(rows)
            for parts, tbl, owner, prep in zip(members, tables, owners, prepared, strict=True):
                m = parts.design.block(prep, lo, lo + rows)
                if tbl is not None:
                    tbl.add_block(acc, np.asfortranarray(m), owner, w)
                    b += w * tbl.bias
                else:
                    gc = np.asarray(parts.gbm.predict(m, pred_contrib=True), dtype=float).reshape(rows, m.shape[1] + 1)
                    _add_by_owner(acc, w * gc[:, :-1], owner)
                    b += w * gc[:, -1]
                _add_by_owner(acc, (1 - w) * parts.linear.terms(m), owner)
                b += (1 - w) * parts.linear.intercept
            out[lo : lo + rows] = acc
            base[lo : lo + rows] = b
        out /= len(members)
        base /= len(members)
        return out, base

    def _scale(self) -> float:
        return float(self.calibration.get("a", 1.0)) if self.calibration.get("method") == "sigmoid" else 1.0

    def contributions(self, X: pd.DataFrame | pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(n, features) log-odds contributions per original column and the (n,) base value; they sum
        to the blended logit (times the sigmoid slope when calibrated by sigmoid)."""
        out, base = self._blended_terms(_pandas(X))
        scale = self._scale()
        return out * scale, base * scale

    def explain(self, X: pd.DataFrame | pl.DataFrame, top_k: int = 3) -> Explanation:
        """Calibrated probabilities and, per row, the ``top_k`` columns that pushed the score up
        most, in one pass: the probabilities come from the same contributions (their sum is the
        logit), so the trees are walked once for both."""
        Xp = _pandas(X)
        terms, base = self._blended_terms(Xp)
        proba = self._calibrate(terms.sum(axis=1) + base)
        terms *= self._scale()
        feats = self._ready()[0].design.features
        k = max(0, min(top_k, len(feats)))
        # k passes of argmax (the first of equal values: ties go by column order, as a stable sort
        # would), each taking the chosen value out: far cheaper than sorting or argpartition rows
        top = np.empty((len(Xp), k), dtype=np.intp)
        vals = np.empty((len(Xp), k))
        rows = np.arange(len(Xp))
        for slot in range(k):
            j = np.argmax(terms, axis=1)
            top[:, slot] = j
            vals[:, slot] = terms[rows, j]
            terms[rows, j] = -np.inf
        return Explanation(proba, feats, top, vals, Xp)

    def reasons(self, X: pd.DataFrame | pl.DataFrame, top_k: int = 3,
                descriptions: Mapping[str, str] | None = None) -> list[list[dict[str, Any]]]:
        """Per row the ``top_k`` columns that pushed the score up most (positive contributions only):
        ``{"feature", "value", "contribution" (log-odds), "description"}``."""
        loads = orjson.loads
        return [loads(t) for t in self.explain(X, top_k).reasons_json(descriptions)]

    def feature_importance(self, top: int = 15) -> list[dict[str, Any]]:
        """Tree gain per original column, largest first (share of the total)."""
        members = self._ready()
        feats = members[0].design.features
        per = np.zeros(len(feats))
        for parts in members:
            gain = np.asarray(parts.gbm.feature_importance(importance_type="gain"), dtype=float)
            np.add.at(per, np.asarray(parts.design.owner), gain)
        total = per.sum() or 1.0
        idx = np.argsort(-per, kind="stable")[:top]
        return [{"feature": feats[i], "gain_share": float(per[i] / total)} for i in idx if per[i] > 0]

    # -- persistence -----------------------------------------------------------------------------
    def to_artifact(self) -> dict[str, Any]:
        members = [{"design": p.design.spec(), "linear": p.linear.spec(), "gbm": p.gbm.model_to_string()}
                   for p in self._ready()]
        return {"params": self.params.model_dump(), "members": members, "blend_weight": self.weight,
                "calibration": self.calibration, "cv": self.cv}

    @classmethod
    def from_artifact(cls, a: Mapping[str, Any]) -> TabularClassifier:
        clf = cls(ClassifierParams.model_validate(a["params"]))
        clf.members = [_Parts(_Design(m["design"]), lgb.Booster(model_str=m["gbm"]), _Linear(m["linear"]))
                       for m in a["members"]]
        clf.weight = float(a["blend_weight"])
        clf.calibration = dict(a["calibration"])
        clf.cv = dict(a.get("cv", {}))
        return clf


def _pandas(X: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
    if isinstance(X, pl.DataFrame):
        return X.to_pandas()
    if not isinstance(X, pd.DataFrame):
        raise InvalidInput("features must be a table (pandas or polars DataFrame)", field="features")
    return X


def _add_by_owner(acc: np.ndarray, design_terms: np.ndarray, owner: np.ndarray) -> None:
    """``acc[:, owner[j]] += design_terms[:, j]``: design columns summed back to their original column."""
    for j, f in enumerate(owner.tolist()):
        acc[:, f] += design_terms[:, j]


class Explanation:
    """What :meth:`TabularClassifier.explain` found for a table of rows: ``proba`` (n,), and per
    row the ``top`` (n, k) feature indices (into ``features``) with the largest contributions
    ``contribution`` (n, k, log-odds, largest first; only positive ones are reasons)."""

    def __init__(self, proba: np.ndarray, features: list[str], top: np.ndarray, contribution: np.ndarray,
                 X: pd.DataFrame) -> None:
        self.proba, self.features, self.top, self.contribution = proba, features, top, contribution
        self._X = X

    def _value_texts(self, idx: np.ndarray) -> pl.Series:
        """The JSON text of each row's value of feature ``idx[row]`` (as :func:`_json_value`
        gives it: integers as they are, other numbers rounded to 4 places, missing as null)."""
        n = idx.size
        num = np.full(n, np.nan)
        is_int = np.zeros(n, dtype=bool)
        other: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        for f in np.flatnonzero(np.bincount(idx, minlength=len(self.features))).tolist():
            rows = np.flatnonzero(idx == f)
            col = self._X[self.features[f]]
            kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "O"
            if kind in "iu":
                num[rows] = col.to_numpy()[rows]
                is_int[rows] = True
            elif kind == "f":
                num[rows] = col.to_numpy()[rows]
            else:  # text, booleans, extension types: each distinct value once
                codes, uniques = pd.factorize(col.iloc[rows], use_na_sentinel=False)
                other.append((rows, codes, [orjson.dumps(_json_value(u)).decode() for u in uniques]))
        v = pl.Series(num, nan_to_null=False)
        text = pl.select(
            pl.when(~v.is_finite()).then(pl.lit("null"))
            .when(pl.Series(is_int)).then(v.cast(pl.Int64, strict=False).cast(pl.String))
            .when(v.abs() < 1e15).then(v.round(4).cast(pl.String))
            .otherwise(v.cast(pl.String))).to_series()
        for rows, codes, texts in other:
            text = text.scatter(rows, pl.Series(texts, dtype=pl.String).gather(codes))
        return text

    def reasons_json(self, descriptions: Mapping[str, str] | None = None) -> list[str]:
        """Per row the JSON array of its reasons, ``[{"feature", "value", "contribution",
        "description"}, ...]``, built column by column (no Python object per reason)."""
        return self._json(descriptions).to_list()

    def payloads_json(self, descriptions: Mapping[str, str] | None = None) -> list[str]:
        """Per row ``{"score": probability (6 places), "reasons": [...]}`` as JSON text."""
        return self.payloads(descriptions).to_list()

    def payloads(self, descriptions: Mapping[str, str] | None = None) -> pl.Series:
        """:meth:`payloads_json` as a polars Series (no Python string per row)."""
        score = pl.Series(self.proba, nan_to_null=False).round(6).cast(pl.String)
        return pl.select(pl.concat_str([pl.lit('{"score":'), score, pl.lit(',"reasons":'), self._json(descriptions),
                                        pl.lit("}")])).to_series()

    def _json(self, descriptions: Mapping[str, str] | None) -> pl.Series:
        desc = descriptions or {}
        dumps = orjson.dumps
        pre = pl.Series([f'{{"feature":{dumps(f).decode()},"value":' for f in self.features], dtype=pl.String)
        post = pl.Series([f',"description":{dumps(desc.get(f, f)).decode()}}}' for f in self.features],
                         dtype=pl.String)
        items = []
        for slot in range(self.top.shape[1]):
            idx = np.ascontiguousarray(self.top[:, slot])
            c = np.ascontiguousarray(self.contribution[:, slot])
            item = pl.concat_str([pre.gather(idx), self._value_texts(idx), pl.lit(',"contribution":'),
                                  pl.Series(c).round(4).cast(pl.String), post.gather(idx)])
            items.append(pl.when(pl.Series(c > 0)).then(item))
        if not items:
            return pl.Series(["[]"] * self.top.shape[0], dtype=pl.String)
        body = pl.concat_str(items, separator=",", ignore_nulls=True)
        return pl.select(pl.concat_str([pl.lit("["), body, pl.lit("]")])).to_series()


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return round(v, 4)
    return v if isinstance(v, int | str | bool) else str(v)


# -- Goldkey definitions ---------------------------------------------------------------------------------


class _TrainDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="score as of this instant (default: now)")
    horizon_days: int = Field(default=90, ge=1, le=730, description="the label window after the cutoff")
    lookback_days: int = Field(default=365, ge=7, le=3650, description="features from the N days before")
    exclude_statuses: list[str] = Field(default_factory=list, description=EXCLUDE_STATUSES_DOC)
    use_feedback: bool = Field(default=True, description="add feedback / complaint counts to the features")
    traits: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50,
        description="computed traits to add as features (`traits.<name>`), each recomputed as of the cutoff "
                    "for training and as of the scoring date for scoring")
    attributes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50,
        description="profile attributes to add as features (`attributes.<key>`, numbers or categories): their "
                    "CURRENT values, so only attributes fixed before the label window (gender, city, sign-up "
                    "channel), never ones that follow the outcome")
    test_fraction: float = Field(default=0.25, gt=0, lt=0.9, description="stratified holdout for the metrics")
    refit_full: bool = Field(default=True, description="refit on every labelled customer after evaluating")
    top_reasons: int = Field(default=3, ge=1, le=10)
    classifier: ClassifierParams = Field(default_factory=ClassifierParams)
    refit_every_hours: int | None = Field(default=None, ge=1, le=8760,
                                          description="the refit schedule: retrain as of now this often "
                                                      "(default: by hand only)")

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


class ChurnDefinition(_TrainDefinition):
    """Churn: active before the cutoff, inactive in the ``horizon_days`` after it."""

    activity: Literal["orders_and_events", "orders"] = Field(
        default="orders_and_events",
        description="what counts as activity: any order or event, or orders only (then the population is "
                    "customers with an order before the cutoff)")


class PropensityDefinition(_TrainDefinition):
    """Propensity: did event ``event`` / bought category ``category`` in the ``horizon_days`` after the cutoff."""

    name: str | None = Field(default=None, max_length=40, pattern=r"^[a-z0-9_]+$",
                             description="model name suffix (default: from the target)")
    event: str | None = Field(default=None, min_length=1, max_length=200, description="target event name")
    category: str | None = Field(default=None, min_length=1, max_length=100, description="target product category")

    @model_validator(mode="after")
    def _one_target(self) -> PropensityDefinition:
        if (self.event is None) == (self.category is None):
            raise ValueError("name exactly one target: event or category")
        if self.name is not None and self.name.endswith("_model_version"):
            raise ValueError("a name may not end with _model_version (scores.propensity_<name>_model_version is "
                             "the version field of another model)")
        return self

    def slug(self) -> str:
        if self.name:
            return self.name
        raw = self.event if self.event is not None else self.category
        s = re.sub(r"[^a-z0-9]+", "_", (raw or "").lower()).strip("_")[:40]
        if not s:
            raise InvalidInput(f"cannot derive a model name from {raw!r}; give a name ([a-z0-9_])", field="name")
        if s.endswith("_model_version"):
            raise InvalidInput(f"the model name from {raw!r} would end in _model_version (another model's version "
                               "field); give a name ([a-z0-9_])", field="name")
        return s


def _parse(cls: type[BaseModel], data: Any) -> Any:
    if isinstance(data, cls):
        return data
    return validated(cls, data or {})


def _holdout_split(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified training / holdout split, refused (naming ``test_fraction``) when the holdout
    could not be evaluated: fewer than 10 customers (the lift table's deciles) or one class only."""
    n_test = math.ceil(fraction * y.size)  # as train_test_split counts it
    need = math.ceil(10 / y.size * 100) / 100
    if n_test < 10:
        raise InvalidInput(f"the holdout would hold {n_test} of the {y.size} labelled customers "
                           f"({fraction:g}); evaluating it (lift by decile) needs at least 10: set test_fraction "
                           f"to at least {need:g} or label more customers", field="test_fraction")
    try:
        tr, te = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise InvalidInput(f"cannot split {y.size} labelled customers for a holdout of {fraction:g}: {exc}",
                           field="test_fraction") from None
    if y[te].min() == y[te].max():
        missing = "positive" if y[te].max() == 0 else "negative"
        raise InvalidInput(f"the holdout ({te.size} customers) would hold no {missing} customer "
                           f"({int(y.sum())} positives of {y.size}): raise test_fraction or label more customers",
                           field="test_fraction")
    return tr, te


_ACTIVE_SQL = {
    "orders": f"""SELECT DISTINCT canonical_id FROM orders_resolved
                 WHERE workspace_id = $ws AND ordered_at >= $start AND ordered_at < $end
                   AND {status_filter("status", "$excluded")}""",
    "events": """SELECT DISTINCT canonical_id FROM events_resolved
                 WHERE workspace_id = $ws AND "timestamp" >= $start AND "timestamp" < $end
                   AND NOT list_contains($own, coalesce(event, ''))""",
    "event": """SELECT DISTINCT canonical_id FROM events_resolved
                WHERE workspace_id = $ws AND "timestamp" >= $start AND "timestamp" < $end AND event = $target""",
    "category": f"""SELECT DISTINCT o.canonical_id FROM orders_resolved o
                   JOIN order_lines l ON l.workspace_id = o.workspace_id AND l.order_id = o.order_id
                   WHERE o.workspace_id = $ws AND o.ordered_at >= $start AND o.ordered_at < $end
                     AND l.category = $target AND {status_filter("o.status", "$excluded")}
                     AND coalesce(l.quantity, 1) > 0""",
}
_KNOWN_SQL = {
    "event": "SELECT event, count(*) FROM events WHERE workspace_id = $ws AND event IS NOT NULL "
             "AND NOT list_contains($own, event) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
    "category": "SELECT category, count(*) FROM order_lines WHERE workspace_id = $ws AND category IS NOT NULL "
                "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
}


def model_evaluation(registry: ModelRegistry, ws: str, name: str) -> dict[str, Any]:
    """Metrics and lift table of every version of a churn / propensity model."""
    versions = registry.versions(ws, name)
    if not versions:
        raise NotFound(f"model {name!r} has no fitted version yet")
    meta = registry.latest_meta(ws, name)
    model_kind = meta["kind"] if meta else ""
    if model_kind not in ("churn", "propensity"):
        raise InvalidInput(f"model {name!r} is a {model_kind!r} model; only churn and propensity models "
                           "have a classifier evaluation", field="name")
    out = []
    for v in versions:
        mv: ModelVersion = registry.load(ws, name, v, kind=model_kind)
        m = mv.metrics
        out.append({"version": v, "created_at": mv.created_at, "as_of": mv.artifact.get("as_of"),
                    "cutoff": mv.artifact.get("cutoff"), "auc": m.get("auc"), "pr_auc": m.get("pr_auc"),
                    "brier": m.get("brier"), "top_decile_lift": m.get("top_decile_lift"),
                    "base_rate": m.get("base_rate"), "labelled": m.get("labelled"), "test": m.get("test"),
                    "cv": m.get("cv"), "lift_table": m.get("holdout", {}).get("lift_table", []),
                    "feature_importance": m.get("feature_importance", [])})
    return {"name": name, "kind": model_kind, "versions": out}


class ChurnService:
    """Train churn / propensity models of a workspace, score its profiles and explain the scores."""

    def __init__(self, engine: Any, analytical: Any, writer: Any, facts: Any, registry: ModelRegistry,
                 realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.facts = facts
        self.registry = registry
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> ChurnService:
        return cls(gk.engine, gk.analytical, gk.writer, gk.facts, ModelRegistry(gk.settings.data_dir / "models"),
                   getattr(gk, "realtime", None))

    # -- data --------------------------------------------------------------------------------------
    def _ids(self, kind: str, ws: str, start: datetime, end: datetime, excluded: Sequence[str],
             target: str | None = None) -> set[str]:
        params: dict[str, Any] = {"ws": ws, "start": start, "end": end}
        if kind in ("orders", "category"):
            params["excluded"] = excluded_statuses(excluded)  # refunds, cancellations and these
        if target is not None:
            params["target"] = target
        if kind == "events":  # Goldkey's own events (tags, messages sent, ...) are not the customer's activity
            params["own"] = list(NOT_CUSTOMER_ACTIVITY)
        cur = self.analytical.cursor()
        try:
            return {r[0] for r in cur.execute(_ACTIVE_SQL[kind], params).fetchall()}
        finally:
            cur.close()

    def _check_target(self, ws: str, kind: str, target: str) -> None:
        from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY

        if kind == "event" and target in NOT_CUSTOMER_ACTIVITY:
            # Goldkey's own events (a tag changed, a message sent) are no customer behaviour to predict
            raise InvalidInput(f"{target!r} is an event Goldkey writes itself, not customer activity; predict a "
                               "customer event", field="event")
        cur = self.analytical.cursor()
        try:
            rows = cur.execute(_KNOWN_SQL[kind], {"ws": ws, **({"own": list(NOT_CUSTOMER_ACTIVITY)}
                                                               if kind == "event" else {})}).fetchall()
            found = cur.execute(
                "SELECT count(*) FROM events WHERE workspace_id = $ws AND event = $t" if kind == "event" else
                "SELECT count(*) FROM order_lines WHERE workspace_id = $ws AND category = $t",
                {"ws": ws, "t": target}).fetchone()
        finally:
            cur.close()
        if not found or not found[0]:
            known = ", ".join(repr(r[0]) for r in rows) or "none"
            raise InvalidInput(f"unknown {kind} {target!r}: the workspace has no such {kind} (known: {known})",
                               field=kind)

    def _features(self, ws: str, d: _TrainDefinition, at: datetime,
                  docs: dict[str, str] | None = None) -> pl.DataFrame:
        """The features of ``d`` as of ``at``: behaviour, feedback, the definition's traits (as of
        ``at``) and attributes; their descriptions are added to ``docs``."""
        f = customer_features(self.analytical, ws, at, d.lookback_days,
                              engine=self.engine if d.use_feedback else None,
                              exclude_statuses=d.exclude_statuses)
        extra = []
        if d.traits:
            extra.append(trait_features(self.engine, self.analytical, ws, at, d.traits))
        if d.attributes:
            extra.append(attribute_features(self.engine, ws, d.attributes))
        if docs is not None:
            for x in extra:
                docs.update(x.docs)
        return with_profile_features(f, extra)

    # -- training -----------------------------------------------------------------------------------
    def train_churn(self, ws: str, definition: ChurnDefinition | dict[str, Any] | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
        """Fit a churn model (new version of ``churn``), score every live profile and write back."""
        d: ChurnDefinition = _parse(ChurnDefinition, definition)

        def population(f: pl.DataFrame) -> pl.DataFrame:
            return f.filter(pl.col("order_count") > 0) if d.activity == "orders" else f

        def label(pids: list[str], start: datetime, end: datetime) -> np.ndarray:
            active = self._ids("orders", ws, start, end, d.exclude_statuses)
            if d.activity == "orders_and_events":
                active |= self._ids("events", ws, start, end, ())
            return np.array([p not in active for p in pids], dtype=int)

        return self._train(ws, d, "churn", "churn", "churn_risk", "churn risk (probability of no activity in "
                           f"the next {d.horizon_days} days)", population, label, progress)

    def train_propensity(self, ws: str, definition: PropensityDefinition | dict[str, Any],
                         progress: Progress | None = None) -> dict[str, Any]:
        """Fit a propensity model (``propensity_<name>``) for an event or a category and write back."""
        d: PropensityDefinition = _parse(PropensityDefinition, definition)
        kind, target = ("event", d.event) if d.event is not None else ("category", d.category)
        assert target is not None
        self._check_target(ws, kind, target)
        slug = d.slug()

        def label(pids: list[str], start: datetime, end: datetime) -> np.ndarray:
            hit = self._ids(kind, ws, start, end, d.exclude_statuses, target)
            return np.array([p in hit for p in pids], dtype=int)

        what = f"did event {target!r}" if kind == "event" else f"bought category {target!r}"
        # the model's run lock (reentrant; _train takes it again) is held from the check to the
        # write-back: two calls at once with one name and two targets both passed the check before
        with run_lock(self.registry.root, ws, f"propensity_{slug}"):
            # one model name, one target: "Care" and "care", or an event and a category of the same
            # name, would otherwise write the same score field and pass for versions of one model
            prior = self.registry.latest_meta(ws, f"propensity_{slug}")
            if prior is not None:
                had = (prior["definition"].get("event"), prior["definition"].get("category"))
                if had != (d.event, d.category):
                    was = f"event {had[0]!r}" if had[0] is not None else f"category {had[1]!r}"
                    raise InvalidInput(f"the model propensity_{slug} already predicts {was}; give this one another "
                                       "name", field="name")
            return self._train(ws, d, "propensity", f"propensity_{slug}", f"propensity_{slug}",
                               f"propensity: probability the customer {what} in the next {d.horizon_days} days",
                               lambda f: f, label, progress)

    @one_run_at_a_time(lambda self, ws, d, kind, name, *rest, **kw: name)
    def _train(self, ws: str, d: _TrainDefinition, kind: str, name: str, field: str, label_text: str,
               population: Callable[[pl.DataFrame], pl.DataFrame],
               label: Callable[[list[str], datetime, datetime], np.ndarray],
               progress: Progress | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        steps = 7

        def step(i: int, what: str) -> None:
            if progress is not None:
                progress(what, i, steps)

        t = as_of_utc(d.as_of)
        cutoff = t - timedelta(days=d.horizon_days)
        # two helper threads: the features as of the scoring date are computed by DuckDB while
        # LightGBM fits (one thread), and the scores are written while the reasons are built
        with ThreadPoolExecutor(2, thread_name_prefix="goldkey-churn") as pool:
            step(0, "features as of the cutoff")
            extra_docs: dict[str, str] = {}
            train_f = population(self._features(ws, d, cutoff, extra_docs))
            if train_f.height == 0:
                raise InvalidInput(f"no customers to learn from: nobody was active in the {d.lookback_days} days "
                                   f"before the cutoff {to_iso(cutoff)} (as_of - horizon_days); import orders/events "
                                   "or move as_of", field="as_of")
            step(1, "labels from the window after the cutoff")
            pids = train_f["profile_id"].to_list()
            y = label(pids, cutoff, t)
            cols = feature_columns(train_f)
            X = train_f.select(cols).to_pandas()
            _check_labels(y, d.classifier)
            step(2, "holdout evaluation (features as of the scoring date meanwhile)")
            now_features = pool.submit(lambda: population(self._features(ws, d, t)))
            idx = np.arange(y.size)
            tr, te = _holdout_split(idx, y, d.test_fraction, d.classifier.seed)
            _check_labels(y[tr], d.classifier, "training customers")
            clf = TabularClassifier(d.classifier).fit(X.iloc[tr], y[tr])
            holdout = evaluate(y[te], clf.predict_proba(X.iloc[te]))
            cv = clf.cv
            if d.refit_full:
                step(3, "refit on every labelled customer")
                clf = TabularClassifier(d.classifier).fit(X, y)
            step(4, "score every live profile")
            t_fit = time.perf_counter()
            now_f = now_features.result()
            docs = {c: describe(c, extra_docs) for c in cols}
            scored_ids = now_f["profile_id"].to_list()
            expl = clf.explain(now_f.select(cols), d.top_reasons) if now_f.height else None
            probs = expl.proba if expl is not None else np.zeros(0)
            metrics = {"holdout": holdout, "auc": holdout["auc"], "pr_auc": holdout["pr_auc"],
                       "brier": holdout["brier"], "top_decile_lift": holdout["top_decile_lift"], "cv": cv,
                       "labelled": int(y.size), "positives": int(y.sum()), "base_rate": float(y.mean()),
                       "train": int(tr.size), "test": int(te.size), "scored": int(now_f.height),
                       "feature_importance": clf.feature_importance(), "label": label_text}
            artifact = {"classifier": clf.to_artifact(), "features": cols, "descriptions": docs, "as_of": to_iso(t),
                        "cutoff": to_iso(cutoff), "score_field": field}
            mv = self.registry.save(ws, name, kind=kind, definition=d.as_json(), artifact=artifact, metrics=metrics)
            step(5, "write scores (reasons built and appended to the analytical store meanwhile)")
            vfield = f"{field}_model_version"
            declare_scores(self.engine, ws, {field: label_text, vfield: f"{name} model version"}, name, mv.version)
            scores_written = pool.submit(write_score_columns, self, ws, (field, vfield), scored_ids,
                                         {field: probs, vfield: mv.version})
            payloads = expl.payloads(docs) if expl is not None else pl.Series([], dtype=pl.String)
            # to the analytical store, while the scores go to the operational one
            reasons_written = pool.submit(write_profile_reasons, self.analytical, ws, name, mv.version,
                                          now_f["profile_id"].to_arrow(), payloads)
            written = scores_written.result()
            step(6, "finish the reasons")
            reasons_written.result()
            step(7, "done")
        return {"model": name, "kind": kind, "version": mv.version, "as_of": to_iso(t), "cutoff": to_iso(cutoff),
                "score_field": field, "labelled": int(y.size), "positives": int(y.sum()), "profiles": int(now_f.height),
                "scores_written": written, "auc": holdout["auc"], "pr_auc": holdout["pr_auc"],
                "brier": holdout["brier"], "top_decile_lift": holdout["top_decile_lift"],
                "blend_weight": clf.weight, "fit_ms": int((t_fit - t0) * 1000),
                "took_ms": int((time.perf_counter() - t0) * 1000)}

    # -- reading --------------------------------------------------------------------------------------
    def evaluation(self, ws: str, name: str) -> dict[str, Any]:
        """Metrics and lift table of every version of a churn / propensity model."""
        return model_evaluation(self.registry, ws, name)

    def reasons(self, ws: str, profile_id: str, profiles: Any = None) -> dict[str, Any]:
        """The churn / propensity scores and reasons stored for a profile (a merged-away id resolves
        to its live profile when ``profiles``, the profile service, is given)."""
        pid = profile_id
        if profiles is not None:
            pid = profiles.get(ws, profile_id, events=0)["profile_id"]
        kinds = {m["name"]: m["kind"] for m in self.registry.list(ws)}
        stored = read_profile_reasons(self.analytical, ws, pid)
        models = {k: v for k, v in stored.items() if kinds.get(k) in ("churn", "propensity") and "reasons" in v}
        return {"profile_id": pid, "models": models}
