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
scores. With a ``name`` it is also kept as the model ``lookalike_<name>`` (kind ``lookalike``): a
registry version (the request with its seed as definition, the validation as metrics, the feature
columns, method and seed ids as artifact), the score ``scores.lookalike_<name>`` with
``scores.lookalike_<name>_model_version`` written on the top N and removed from the profiles no
longer among them (so a segment rule on the score selects the audience), and ``refit_every_hours``
for the refit schedule, which finds it again as of now from the seed segment's members then.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import orjson
import polars as pl
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from goldkey.core.clock import to_iso
from goldkey.core.errors import InvalidInput, validated
from goldkey.insight import affinity
from goldkey.insight.features import customer_features
from goldkey.insight.registry import AsOf, ModelRegistry, one_run_at_a_time
from goldkey.insight.writeback import declare_scores, write_score_columns
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
    as_of: AsOf = Field(default=None, description="features as of this instant (default: now)")
    lookback_days: int = Field(default=365, ge=1, le=3650, description="feature window")
    method: Literal["elkan_noto", "bagging"] = "elkan_noto"
    classifier: Literal["logistic", "gbm"] = "logistic"
    unlabelled_ratio: float = Field(default=10.0, gt=0, le=1000,
                                    description="elkan_noto: unlabelled sampled per seed member")
    bags: int = Field(default=15, ge=2, le=200, description="bagging: number of bags")
    holdout: float = Field(default=0.25, ge=0.1, le=0.5, description="validation: share of the seed hidden")
    validation: bool = Field(default=True, description="run the held-out validation first")
    random_state: int = 0
    name: str | None = Field(default=None, max_length=40, pattern=r"^[a-z0-9_]+$",
                             description="keep the audience as model lookalike_<name>: a registry version, the "
                                         "score scores.lookalike_<name> on the top N (removed from the others) "
                                         "and a refit schedule; without a name the audience is only returned")
    refit_every_hours: int | None = Field(default=None, ge=1, le=8760,
                                          description="with a name: find the audience again as of now this "
                                                      "often, from the seed segment's members then")

    @model_validator(mode="after")
    def _one_seed(self) -> LookalikeRequest:
        if (self.segment_id is None) == (self.profile_ids is None):
            raise ValueError("give exactly one seed: segment_id or profile_ids")
        if self.name is not None and self.name.endswith("_model_version"):
            raise ValueError("a name may not end with _model_version (scores.lookalike_<name>_model_version is "
                             "the version field of another audience)")
        if self.refit_every_hours is not None and self.name is None:
            raise ValueError("a refit schedule needs a name (the audience is kept as lookalike_<name>)")
        return self

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_request(data: LookalikeRequest | Mapping[str, Any]) -> LookalikeRequest:
    if isinstance(data, LookalikeRequest):
        return data
    return validated(LookalikeRequest, dict(data))


# -- features -----------------------------------------------------------------------------------------
def feature_frame(analytical: AnalyticalStore, ws: str, as_of: datetime, lookback_days: int) -> pl.DataFrame:
    """customer_features plus ``cat_share:<category>`` columns (share of the customer's order lines);
    one row per active profile, numeric columns only besides ``profile_id``."""
    base = customer_features(analytical, ws, as_of, lookback_days)
    # load_lines takes (since, until]; customer_features [since, as_of): one microsecond (the stores'
    # precision) on each side makes both windows the same
    lines = affinity.load_lines(analytical, ws, until=as_of - timedelta(microseconds=1),
                                since=as_of - timedelta(days=lookback_days) - timedelta(microseconds=1))
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
MODEL_KIND = "lookalike"


def _model_name(_self: Any, _ws: str, request: Any, *_a: Any, **_k: Any) -> str | None:
    name = parse_request(request).name
    return f"lookalike_{name}" if name else None  # an unnamed run keeps nothing: no lock


class LookalikeService:
    """Find lookalikes of a seed audience in a workspace."""

    def __init__(self, engine: sa.Engine, analytical: AnalyticalStore, segments: Any,
                 registry: ModelRegistry | None = None, writer: Any = None, facts: Any = None,
                 realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.segments = segments
        # a named audience's version and write-back (goldkey.insight.writeback)
        self.registry = registry
        self.writer = writer
        self.facts = facts
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> LookalikeService:
        return cls(gk.engine, gk.analytical, gk.segments, ModelRegistry(gk.settings.data_dir / "models"),
                   gk.writer, gk.facts, getattr(gk, "realtime", None))

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
            # canonical_id names the live root; merged_into only the direct parent, which a later
            # merge may have merged away in turn
            found = {r[0]: r[1] for r in c.execute(sa.select(profiles.c.profile_id, profiles.c.canonical_id).where(
                profiles.c.workspace_id == ws, profiles.c.profile_id.in_(ids)))} if ids else {}
        unknown = [p for p in ids if p not in found]
        if unknown:
            raise InvalidInput(f"{len(unknown)} seed profile ids are unknown in this workspace, e.g. "
                               f"{unknown[:3]}", field="profile_ids")
        return sorted({found[p] or p for p in ids})

    @one_run_at_a_time(_model_name)
    def find(self, ws: str, request: LookalikeRequest | Mapping[str, Any], progress: Any = None) -> dict[str, Any]:
        """The top N lookalikes (never seed members) with scores, and the held-out validation.
        With a ``name`` the audience is also kept (see :meth:`_keep`). Raises InvalidInput for a
        seed under MIN_SEED customers with features, NotFound for an unknown segment."""
        t0 = time.perf_counter()
        req = parse_request(request)
        if req.name is not None:
            self._check_name(ws, req)
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
                       "model": None, "version": None, "score_field": None})
        if req.name is not None:
            self._keep(ws, req, report, seed, [c for c in df.columns if c != "profile_id"])
        report["took_ms"] = int((time.perf_counter() - t0) * 1000)
        if progress is not None:
            progress(3, 3, "done")
        return report

    def _check_name(self, ws: str, req: LookalikeRequest) -> None:
        """A name stays with its seed segment: another segment under a taken name would write the
        same score and pass for a version of that audience."""
        assert self.registry is not None, "a named lookalike audience needs the registry"
        name = f"lookalike_{req.name}"
        prior = self.registry.latest_meta(ws, name)
        if prior is None:
            return
        had_segment = prior["definition"].get("segment_id")
        had_ids = sorted(set(prior["definition"].get("profile_ids") or []))
        same = had_segment == req.segment_id if had_segment or req.segment_id else had_ids == sorted(
            set(req.profile_ids or []))
        if not same:
            was = f"segment {had_segment!r}" if had_segment else f"another list of {len(had_ids)} profile ids"
            raise InvalidInput(f"the audience {name} was found from {was}; give this seed another name", field="name")

    def _keep(self, ws: str, req: LookalikeRequest, report: dict[str, Any], seed: list[str],
              features: list[str]) -> None:
        """Save a version of ``lookalike_<name>`` (definition: the request, seed included; the
        validation as its metrics) and write ``scores.lookalike_<name>`` with the model version on
        the top N, removing both from the profiles no longer in the audience."""
        assert self.registry is not None
        name = f"lookalike_{req.name}"
        field, vfield = name, f"{name}_model_version"
        metrics = {"validation": report.get("validation"), "seed_size": report["seed_size"],
                   "seed_with_features": report["seed_with_features"], "candidates": report["candidates"],
                   "audience": len(report["lookalikes"]), "c": report["c"]}
        artifact = {"as_of": report["as_of"], "features": features, "method": req.method,
                    "classifier": req.classifier, "seed": seed, "score_field": field}
        mv = self.registry.save(ws, name, kind=MODEL_KIND, definition=req.as_json(), artifact=artifact,
                                metrics=metrics)
        declare_scores(self.engine, ws, {field: f"lookalike score: likeness to the seed of {name} (top "
                                                f"{req.top_n}; not a probability)", vfield: f"{name} model version"},
                       name, mv.version)
        ids = [x["profile_id"] for x in report["lookalikes"]]
        scores = np.array([x["score"] for x in report["lookalikes"]], dtype=float)
        report["scores_written"] = write_score_columns(self, ws, (field, vfield), ids, {field: scores,
                                                                                          vfield: mv.version})
        report.update({"model": name, "version": mv.version, "score_field": field,
                       "segment": None, "note": f"kept as model {name}: the audience is the profiles with "
                                                f"scores.{field} (a segment rule can select them)"})


__all__: Sequence[str] = ("LookalikeRequest", "LookalikeService", "feature_frame", "pu_scores", "validate")
