"""Lookalike audiences: score every customer by how much they resemble a seed audience.

The seed (a segment's members, or a list of profile ids) is a set of *positive* examples; every
other customer is *unlabelled* (some of them are lookalikes, most are not). This is
positive-unlabelled (PU) learning:

- ``elkan_noto`` (default; Elkan & Noto, "Learning classifiers from only positive and unlabeled
  data", KDD 2008): a classifier g(x) ~ P(labelled | x) is trained on the seed vs a random sample of
  the unlabelled; with c = E[g(x) | x positive], estimated as the mean out-of-fold g over the seed
  (5-fold), P(y = 1 | x) = g(x) / c, after g's odds are scaled back from the sample of the
  unlabelled it was trained on to all of them. The ranking is g's. That probability is NOT returned
  per customer: it assumes the seed was picked at random from all lookalikes (Elkan-Noto's SCAR),
  which a segment seldom is, and c is underestimated where the classes overlap; on a synthetic market
  most of the top candidates came out at 1.0 while 70 % of them were lookalikes. The validation's
  recall is the honest measure of the audience. Sampled unlabelled customers are scored out of
  fold, by a model that did not train on them.
- ``bagging`` (Mordelet & Vert, "A bagging SVM to learn from positive and unlabeled examples",
  Pattern Recognition Letters 2014): ``bags`` classifiers, each on the seed vs a bootstrap sample
  of the unlabelled of the seed's size; a customer's score is the mean over the bags that did not
  train on it.

The classifier is a logistic regression (scikit-learn) on standardised ``log1p`` features, robust
with seeds of a few dozen; ``gbm`` (scikit-learn's HistGradientBoostingClassifier) can be chosen for
large seeds. Features are :func:`goldkey.insight.features.customer_features` (RFM, activity,
breadth) plus each customer's share of order lines per product category (the product mix).

**Validation.** Before scoring, ``holdout`` of the seed (20-30 %) is hidden, the model is trained
on the rest, and the hidden members are looked for among all other customers: recall@N (share of
hidden members in the top N) against the random expectation N / candidates, and the AUC of hidden
members vs everyone else. The final scores come from a model trained on the whole seed.

The segment service has no static (list) segments, so a lookalike audience is returned as ids and
scores, not saved as a segment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, validated
from goldkey.insight import affinity
from goldkey.insight.features import customer_features
from goldkey.rules.values import as_of_utc
from goldkey.store.analytical import AnalyticalStore
from goldkey.store.operational import profiles, segment_members

MIN_SEED = 10
MAX_CATEGORIES = 30


class LookalikeRequest(BaseModel):
    """A lookalike request: the seed, how many to return, and how to learn."""

    model_config = ConfigDict(extra="forbid")
    segment_id: str | None = Field(default=None, description="seed: the members of this segment")
    profile_ids: list[str] | None = Field(default=None, description="seed: these profiles")
    top_n: int = Field(default=100, ge=1, le=1_000_000, description="lookalikes to return")
    as_of: datetime | None = Field(default=None, description="features as of this instant (default: now)")
    lookback_days: int = Field(default=365, ge=1, le=3650, description="feature window")
    method: Literal["elkan_noto", "bagging"] = "elkan_noto"
    classifier: Literal["logistic", "gbm"] = "logistic"
    unlabelled_ratio: float = Field(default=10.0, gt=0, le=1000,
                                    description="elkan_noto: unlabelled sampled per seed member")
    bags: int = Field(default=15, ge=2, le=200, description="bagging: number of bags")
    holdout: float = Field(default=0.25, ge=0.1, le=0.5, description="validation: share of the seed hidden")
    validation: bool = Field(default=True, description="run the held-out validation first")
    random_state: int = 0

    @model_validator(mode="after")
    def _one_seed(self) -> LookalikeRequest:
        if (self.segment_id is None) == (self.profile_ids is None):
            raise ValueError("give exactly one seed: segment_id or profile_ids")
        return self


def parse_request(data: LookalikeRequest | Mapping[str, Any]) -> LookalikeRequest:
    if isinstance(data, LookalikeRequest):
        return data
    return validated(LookalikeRequest, dict(data))


# -- features -----------------------------------------------------------------------------------------
def feature_frame(analytical: AnalyticalStore, ws: str, as_of: datetime, lookback_days: int) -> pl.DataFrame:
    """customer_features plus ``cat_share:<category>`` columns (share of the customer's order lines);
    one row per active profile, numeric columns only besides ``profile_id``."""
    base = customer_features(analytical, ws, as_of, lookback_days)
    lines = affinity.load_lines(analytical, ws, until=as_of - timedelta(microseconds=1),
                                since=as_of - timedelta(days=lookback_days))
    if lines.height:
        top = lines.group_by("category").len().sort("len", descending=True).head(MAX_CATEGORIES)["category"]
        mix = (lines.filter(pl.col("category").is_in(top.to_list()))
               .group_by("profile_id", "category").len()
               .with_columns((pl.col("len") / pl.col("len").sum().over("profile_id")).alias("share"))
               .pivot(on="category", index="profile_id", values="share"))
        mix = mix.rename({c: f"cat_share:{c}" for c in mix.columns if c != "profile_id"})
        base = base.join(mix, on="profile_id", how="left")
    return base.fill_null(0.0).fill_nan(0.0).sort("profile_id")


def _matrix(df: pl.DataFrame) -> np.ndarray:
    cols = [c for c in df.columns if c != "profile_id"]
    x = df.select(cols).to_numpy().astype(np.float64)
    x = np.sign(x) * np.log1p(np.abs(x))
    sd = x.std(axis=0)
    keep = sd > 0
    if not keep.any():
        raise InvalidInput("every customer has the same features: nothing tells the seed apart", field="features")
    x = x[:, keep]
    return (x - x.mean(axis=0)) / sd[keep]


# -- PU learning --------------------------------------------------------------------------------------
def _classifier(kind: str, seed: int, n: int) -> Any:
    if kind == "gbm":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_depth=4, learning_rate=0.1, max_iter=150, random_state=seed)
    from sklearn.linear_model import LogisticRegression

    # liblinear is ~8x faster than lbfgs on a few thousand rows, lbfgs faster on hundreds of thousands
    return LogisticRegression(C=1.0, max_iter=1000, solver="liblinear" if n < 50_000 else "lbfgs")


def pu_scores(x: np.ndarray, positive: np.ndarray, req: LookalikeRequest) -> tuple[np.ndarray, np.ndarray, float]:
    """PU scores of every row of ``x`` given the boolean ``positive`` (seed) mask: (ranking score,
    Elkan-Noto probability, c). Seed rows get scores too (not meaningful for them)."""
    rng = np.random.default_rng(req.random_state)
    pos = np.flatnonzero(positive)
    unl = np.flatnonzero(~positive)
    if req.method == "bagging":
        return _bagging(x, pos, unl, req, rng)
    n_u = min(len(unl), max(len(pos), int(round(req.unlabelled_ratio * len(pos)))))
    sample = rng.choice(unl, n_u, replace=False)
    idx = np.concatenate([pos, sample])
    y = np.concatenate([np.ones(len(pos)), np.zeros(n_u)])
    c, oof = _holdout_c(x[idx], y, req)
    clf = _classifier(req.classifier, req.random_state, len(idx)).fit(x[idx], y)
    g = clf.predict_proba(x)[:, 1]
    # the sampled customers were the final model's negatives: scored by it, a true lookalike among
    # them would rank low for having been drawn. Each gets the score of the fold model that did not
    # train on it instead, as every other customer gets a model that never saw them.
    g[sample] = oof[len(pos):]
    # Elkan-Noto's P(y=1|x) = P(s=1|x) / c holds for a classifier of the seed against ALL the
    # unlabelled. Trained against a sample (rate r = sampled / unlabelled), its odds are 1/r times
    # too high: scale them back before dividing (without this, most top candidates showed 1.0)
    rate = n_u / len(unl)
    c_true = float(np.mean(_rescale(oof[: len(pos)], rate)))
    prob = np.clip(_rescale(g, rate) / max(c_true, 1e-9), 0.0, 1.0)
    return g, prob, c_true


def _rescale(p: np.ndarray, rate: float) -> np.ndarray:
    """Probabilities of a classifier trained with the negatives sampled at ``rate``, as they would be
    against all of them (odds times ``rate``)."""
    odds = p / np.maximum(1.0 - p, 1e-12) * rate
    return odds / (1.0 + odds)


def _holdout_c(x: np.ndarray, y: np.ndarray, req: LookalikeRequest) -> tuple[float, np.ndarray]:
    """Elkan-Noto's c, the mean out-of-fold g over the positives (5 folds, stratified), and the
    out-of-fold g of every row."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(5, int(y.sum()))
    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=req.random_state).split(x, y):
        clf = _classifier(req.classifier, req.random_state, len(tr)).fit(x[tr], y[tr])
        oof[te] = clf.predict_proba(x[te])[:, 1]
    return max(float(np.mean(oof[y == 1])), 1e-6), oof


def _bagging(x: np.ndarray, pos: np.ndarray, unl: np.ndarray, req: LookalikeRequest, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, float]:
    total = np.zeros(len(x))
    count = np.zeros(len(x))
    for _ in range(req.bags):
        bag = rng.choice(unl, len(pos), replace=True)
        idx = np.concatenate([pos, bag])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(bag))])
        clf = _classifier(req.classifier, int(rng.integers(1 << 31)), len(idx)).fit(x[idx], y)
        out = np.ones(len(x), bool)
        out[bag] = False
        total[out] += clf.predict_proba(x[out])[:, 1]
        count[out] += 1
    s = total / np.maximum(count, 1)
    return s, s, 1.0


def validate(x: np.ndarray, seed_rows: np.ndarray, req: LookalikeRequest, top_n: int) -> dict[str, Any]:
    """Hide ``req.holdout`` of the seed, learn from the rest, and measure how high the hidden members
    rank among every non-training customer: recall@N vs random, AUC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(req.random_state + 1)
    shuffled = rng.permutation(seed_rows)
    n_hide = max(1, int(round(req.holdout * len(seed_rows))))
    hidden, kept = shuffled[:n_hide], shuffled[n_hide:]
    positive = np.zeros(len(x), bool)
    positive[kept] = True
    score, _, _ = pu_scores(x, positive, req)
    cand = np.flatnonzero(~positive)
    label = np.zeros(len(x), bool)
    label[hidden] = True
    order = cand[np.argsort(-score[cand], kind="stable")]
    n = min(top_n, len(cand))
    found = int(label[order[:n]].sum())
    recall = found / n_hide
    rand = n / len(cand)
    return {"hidden": int(n_hide), "trained_on": int(len(kept)), "candidates": int(len(cand)), "n": int(n),
            "recall_at_n": recall, "random_recall_at_n": rand, "lift_at_n": recall / rand if rand else None,
            "auc": float(roc_auc_score(label[cand], score[cand]))}


# -- the service --------------------------------------------------------------------------------------
class LookalikeService:
    """Find lookalikes of a seed audience in a workspace."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, segments: Any) -> None:
        self.engine = engine
        self.analytical = analytical
        self.segments = segments

    @classmethod
    def from_goldkey(cls, gk: Any) -> LookalikeService:
        return cls(gk.engine, gk.analytical, gk.segments)

    def seed_ids(self, ws: str, req: LookalikeRequest) -> list[str]:
        """The seed's live profile ids; NotFound (from the segment service) for an unknown segment,
        InvalidInput for unknown ids."""
        if req.segment_id is not None:
            self.segments.get(ws, req.segment_id)  # NotFound for an unknown segment
            m = segment_members.c
            with self.engine.connect() as c:
                rows = c.execute(sa.select(m.profile_id).join(profiles, profiles.c.profile_id == m.profile_id)
                                 .where(m.workspace_id == ws, m.segment_id == req.segment_id,
                                        profiles.c.merged_into.is_(None))).all()
            return sorted({r[0] for r in rows})
        ids = sorted(set(req.profile_ids or []))
        with self.engine.connect() as c:
            found = {r[0]: r[1] for r in c.execute(sa.select(profiles.c.profile_id, profiles.c.merged_into).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id.in_(ids)))} if ids else {}
        unknown = [p for p in ids if p not in found]
        if unknown:
            raise InvalidInput(f"{len(unknown)} seed profile ids are unknown in this workspace, e.g. "
                               f"{unknown[:3]}", field="profile_ids")
        return sorted({found[p] or p for p in ids})

    def find(self, ws: str, request: LookalikeRequest | Mapping[str, Any], progress: Any = None) -> dict[str, Any]:
        """The top N lookalikes (never seed members) with scores, and the held-out validation.
        Raises InvalidInput for a seed under MIN_SEED customers with features, NotFound for an
        unknown segment."""
        t0 = time.perf_counter()
        req = parse_request(request)
        seed = self.seed_ids(ws, req)
        if len(seed) < MIN_SEED:
            raise InvalidInput(f"the seed has {len(seed)} profiles; a lookalike model needs at least {MIN_SEED}",
                               field="segment_id" if req.segment_id else "profile_ids")
        if progress is not None:
            progress(0, 3, "features")
        t = as_of_utc(req.as_of)
        df = feature_frame(self.analytical, ws, t, req.lookback_days)
        pids = df["profile_id"].to_list()
        in_seed = np.isin(np.array(pids, dtype=object), np.array(seed, dtype=object))
        used = int(in_seed.sum())
        if used < MIN_SEED:
            raise InvalidInput(f"only {used} of the {len(seed)} seed profiles have orders or events in the "
                               f"{req.lookback_days} days before {to_iso(t)}; a lookalike model needs at least "
                               f"{MIN_SEED} (widen lookback_days)", field="lookback_days")
        if len(pids) - used < MIN_SEED:
            raise InvalidInput(f"only {len(pids) - used} customers outside the seed to score", field="profile_ids")
        x = _matrix(df)
        report: dict[str, Any] = {"seed_size": len(seed), "seed_with_features": used, "method": req.method,
                                  "classifier": req.classifier, "as_of": to_iso(t)}
        if req.validation:
            if progress is not None:
                progress(1, 3, "validation on a held-out part of the seed")
            report["validation"] = validate(x, np.flatnonzero(in_seed), req, req.top_n)
        if progress is not None:
            progress(2, 3, "scoring")
        score, _, c = pu_scores(x, in_seed, req)
        cand = np.flatnonzero(~in_seed)
        order = cand[np.argsort(-score[cand], kind="stable")][: req.top_n]
        report.update({"candidates": int(len(cand)), "c": c,
                       "lookalikes": [{"profile_id": pids[i], "score": float(score[i])} for i in order],
                       "segment": None, "note": "returned as ids: the segment service has no static-list segments",
                       "took_ms": int((time.perf_counter() - t0) * 1000)})
        if progress is not None:
            progress(3, 3, "done")
        return report


__all__: Sequence[str] = ("LookalikeRequest", "LookalikeService", "feature_frame", "pu_scores", "validate")
