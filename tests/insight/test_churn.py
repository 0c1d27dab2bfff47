"""Churn and propensity: the telco benchmark, a workspace built through the real importer and
tracking API, the features against an independent computation, write-back, reasons and bad input."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
import sqlalchemy as sa
from sklearn.model_selection import train_test_split

from goldkey.core.errors import InvalidInput
from goldkey.insight import churn_api
from goldkey.insight.churn import ChurnService, ClassifierParams, TabularClassifier, _holdout_split
from goldkey.insight.evaluation import evaluate
from goldkey.insight.features import FEATURE_DOCS, FEEDBACK_DOCS, customer_features
from goldkey.insight.schedule import refit_due
from goldkey.store.operational import identities

TELCO = Path("/work/shared/data/telco_churn.csv")
AS_OF = datetime(2024, 7, 1, tzinfo=UTC)
HORIZON = 60
CUTOFF = AS_OF - timedelta(days=HORIZON)
FAST = {"n_estimators": 150, "cv_folds": 3}  # a few hundred customers: fewer trees and folds keep the test fast


# -- the telco benchmark ------------------------------------------------------------------------------


def _telco() -> tuple[pd.DataFrame, np.ndarray]:
    d = pd.read_csv(TELCO)
    y = (d.pop("churn") == "Yes").astype(int).to_numpy()
    d["total_charges"] = d["total_charges"].fillna(0.0)  # the 11 blanks are customers of tenure 0
    return d, y


@pytest.mark.slow
@pytest.mark.skipif(not TELCO.exists(), reason="telco data set not available")
def test_telco_holdout_reaches_the_target_auc_and_top_decile_lift() -> None:
    X, y = _telco()
    assert X.shape == (7043, 19)
    # fixed seeds, single-threaded LightGBM with deterministic=True: the figures below are the same every run
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    clf = TabularClassifier().fit(Xtr, ytr)
    p = clf.predict_proba(Xte)
    m = evaluate(yte, p)
    assert m["auc"] >= 0.845, m["auc"]
    assert m["top_decile_lift"] >= 2.8, m["top_decile_lift"]
    # calibrated: mean probability close to the observed rate, Brier better than the base-rate guess
    assert abs(p.mean() - yte.mean()) < 0.03
    assert m["brier"] < yte.mean() * (1 - yte.mean())
    # the artifact round-trips through JSON and scores the same
    import orjson

    back = TabularClassifier.from_artifact(orjson.loads(orjson.dumps(clf.to_artifact(),
                                                                     option=orjson.OPT_SERIALIZE_NUMPY)))
    assert np.allclose(back.predict_proba(Xte), p)
    # reasons are additive: contributions + base = the calibrated logit
    contrib, base = clf.contributions(Xte.iloc[:50])
    logit = np.log(p[:50] / (1 - p[:50]))
    assert np.allclose(contrib.sum(axis=1) + base + clf.calibration["b"], logit, atol=1e-6)
    top = clf.reasons(Xte.iloc[:50], top_k=3)
    assert all(len(r) <= 3 and all(x["contribution"] > 0 for x in r) for r in top)
    high = int(np.argmax(p[:50]))
    assert {r["feature"] for r in top[high]} & {"contract", "tenure", "internet_service", "payment_method"}


# -- bad input to the classifier -----------------------------------------------------------------------


def test_classifier_refuses_bad_input() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(int)
    ok = pd.DataFrame({"a": rng.random(200), "b": rng.choice(["x", "y"], 200)})
    with pytest.raises(InvalidInput, match="one class only"):
        TabularClassifier().fit(ok, np.zeros(200))
    with pytest.raises(InvalidInput, match="too few labelled customers: 20"):
        TabularClassifier().fit(ok.iloc[:20], y[:20])
    with pytest.raises(InvalidInput, match="too few positive customers: 3"):
        TabularClassifier().fit(ok, np.r_[np.ones(3), np.zeros(197)])
    with pytest.raises(InvalidInput, match="every feature column is constant or empty"):
        TabularClassifier().fit(pd.DataFrame({"a": np.ones(200), "b": ["x"] * 200, "c": np.nan}), y)
    with pytest.raises(InvalidInput, match="no columns"):
        TabularClassifier().fit(pd.DataFrame(index=range(200)), y)
    with pytest.raises(InvalidInput, match="200 rows but 199 labels"):
        TabularClassifier().fit(ok, y[:199])
    clf = TabularClassifier(ClassifierParams(n_estimators=20)).fit(ok, y)
    with pytest.raises(InvalidInput, match="feature columns missing: b"):
        clf.predict_proba(ok[["a"]])
    # an unseen category scores (all its one-hot columns are zero)
    assert np.isfinite(clf.predict_proba(pd.DataFrame({"a": [0.5], "b": ["zzz"]}))).all()


def test_a_column_of_one_value_and_gaps_is_kept_for_who_has_a_value() -> None:
    """A trait that is 1 for some customers and missing for the rest says who has it: the design
    keeps it (before, it was dropped as constant) and the trees learn from it."""
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.4).astype(int)
    flag = np.where(y == 1, np.where(rng.random(400) < 0.8, 1.0, np.nan), np.where(rng.random(400) < 0.1, 1.0, np.nan))
    X = pd.DataFrame({"noise": rng.random(400), "flag": flag})
    clf = TabularClassifier(ClassifierParams(n_estimators=50, min_child_samples=10)).fit(X, y)
    assert clf.feature_importance()[0]["feature"] == "flag"
    assert evaluate(y, clf.predict_proba(X))["auc"] > 0.8


# -- a Goldkey workspace -------------------------------------------------------------------------------


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _world(n: int = 240, seed: int = 11) -> dict[str, Any]:
    """Customers with an engagement level e: churners (no activity in [CUTOFF, AS_OF)) are mostly the
    less engaged, whose last orders and events before the cutoff lie further back."""
    rng = random.Random(seed)
    orders: list[list[str]] = []
    events: list[dict[str, Any]] = []
    feedback: list[list[str]] = []
    churned: dict[str, bool] = {}
    oid = 0
    for i in range(n):
        uid = f"u{i:04d}"
        e = rng.random()
        churn = rng.random() > 0.15 + 0.8 * e
        churned[uid] = churn
        gap = rng.uniform(20, 250) if churn else rng.uniform(1, 90)  # days from last activity to the cutoff
        for k in range(1 + int(5 * e)):
            oid += 1
            at = CUTOFF - timedelta(days=gap + k * rng.uniform(10, 40), hours=rng.randint(1, 20))
            cat = "care" if rng.random() < e else "lens"
            orders.append([f"O{oid:06d}", _ts(at), uid, f"S{cat}", cat, "1", str(rng.choice([80, 150, 400]))])
        for k in range(int(12 * e)):
            at = CUTOFF - timedelta(days=gap + k * rng.uniform(1, 5), hours=rng.randint(1, 20))
            events.append({"type": "track", "event": "Product Viewed", "userId": uid, "timestamp": at.isoformat()})
        if churn and rng.random() < 0.3:
            feedback.append([f"F{i:04d}", uid, "complaint", _ts(CUTOFF - timedelta(days=gap + 1)), "slow delivery"])
        if not churn:  # active in the label window
            at = CUTOFF + timedelta(days=rng.uniform(1, HORIZON - 2))
            if rng.random() < 0.5:
                oid += 1
                orders.append([f"O{oid:06d}", _ts(at), uid, "Scare", "care", "1", "80"])
            else:
                events.append({"type": "track", "event": "Coupon Used", "userId": uid, "timestamp": at.isoformat()})
    # an order after as_of never leaks into anything
    orders.append([f"O{oid + 1:06d}", _ts(AS_OF + timedelta(days=3)), "u0000", "Scare", "care", "1", "80"])
    return {"orders": orders, "events": events, "feedback": feedback, "churned": churned}


def _load(env: Any, tmp: Path, w: dict[str, Any]) -> None:
    ws = env.ws.workspace_id
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["order_id", "ordered_at", "user_id", "sku", "category", "quantity", "unit_price"])
        wr.writerows(w["orders"])
    s = env.gk.importer.run(ws, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s
    if w["feedback"]:
        fpath = tmp / "feedback.csv"
        with fpath.open("w", encoding="utf-8", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["feedback_id", "user_id", "kind", "created_at", "text"])
            wr.writerows(w["feedback"])
        s = env.gk.importer.run(ws, "feedback", fpath, {})
        assert s.status == "done" and s.quarantined == 0, s
    ev = w["events"]
    for i in range(0, len(ev), 200):
        batch = [{**e, "messageId": f"m{i + j}"} for j, e in enumerate(ev[i : i + 200])]
        r = env.client.post("/v1/batch", json={"batch": batch}, headers=env.write_auth())
        assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text


def _pids(env: Any) -> dict[str, str]:
    """user id -> live profile id, from the identity graph."""
    t = identities.c
    with env.gk.engine.connect() as c:
        rows = c.execute(sa.select(t.id_value, t.profile_id).where(
            t.workspace_id == env.ws.workspace_id, t.id_type == "user_id")).all()
    return {u: env.gk.profiles.get(env.ws.workspace_id, p, events=0)["profile_id"] for u, p in rows}


def _mount(env: Any) -> None:
    """Mount the insights router (until goldkey.app does) ahead of the console's SPA fallback."""
    routes = env.client.app.router.routes
    if any(getattr(r, "path", "").startswith("/api/v1/insights/") for r in routes):
        return
    n = len(routes)
    env.client.app.include_router(churn_api.router)
    new = routes[n:]
    del routes[n:]
    routes[0:0] = new


def test_features_match_an_independent_computation(env: Any, tmp_path: Path) -> None:
    w = _world(n=60, seed=5)
    _load(env, tmp_path, w)
    ws = env.ws.workspace_id
    f = customer_features(env.gk.analytical, ws, CUTOFF, 365, engine=env.gk.engine)
    assert set(f.columns) == {"profile_id", *FEATURE_DOCS, *FEEDBACK_DOCS}
    assert f["profile_id"].is_sorted() and f.null_count().sum_horizontal().item() == 0
    pid = _pids(env)
    df = pd.DataFrame(w["orders"], columns=["order_id", "at", "uid", "sku", "cat", "q", "amount"])
    df["at"] = pd.to_datetime(df["at"], utc=True)
    df["amount"] = df["amount"].astype(float)
    before = df[(df["at"] < CUTOFF) & (df["at"] >= CUTOFF - timedelta(days=365))]
    got = f.to_pandas().set_index("profile_id")
    for uid, g in before.groupby("uid"):
        row = got.loc[pid[uid]]
        assert row["order_count"] == g["order_id"].nunique()
        assert row["revenue"] == pytest.approx(g["amount"].sum())
        assert row["distinct_categories"] == g["cat"].nunique()
        assert row["recency_days"] == pytest.approx((CUTOFF - g["at"].max()).total_seconds() / 86400)
        assert row["order_count_90d"] == (g["at"] >= CUTOFF - timedelta(days=90)).sum()
    evs = pd.DataFrame(w["events"])
    evs["at"] = pd.to_datetime(evs["timestamp"], utc=True)
    evs = evs[evs["at"] < CUTOFF]
    for uid, g in evs.groupby("userId"):
        row = got.loc[pid[uid]]
        assert row["events_total"] == len(g) and row["events_30d"] == (g["at"] >= CUTOFF - timedelta(days=30)).sum()
    complaints = {pid[r[1]] for r in w["feedback"]}
    assert set(got.index[got["complaint_count"] > 0]) == complaints
    # the independent counts above only take rows before the cutoff: the label window is invisible.
    # As of AS_OF the window counts, but the order placed after AS_OF does not
    later = customer_features(env.gk.analytical, ws, AS_OF, 365).to_pandas().set_index("profile_id")
    u0 = df[(df["uid"] == "u0000") & (df["at"] < AS_OF)]
    assert later.loc[pid["u0000"], "order_count"] == u0["order_id"].nunique()
    assert (later["recency_days"] >= 0).all() and (later["days_since_last_event"] >= 0).all()
    window_event = {pid[e["userId"]] for e in w["events"] if e["event"] == "Coupon Used"}
    assert window_event and (later.loc[sorted(window_event), "days_since_last_event"] < HORIZON).all()
    assert (got.loc[sorted(window_event), "days_since_last_event"] > 0).all()
    # profiles without orders get the documented defaults
    assert (got.loc[got["order_count"] < 2, "avg_days_between_orders"] == 365).all()


def test_churn_model_learns_and_writes_scores_and_reasons(env: Any, tmp_path: Path) -> None:
    w = _world()
    _load(env, tmp_path, w)
    ws = env.ws.workspace_id
    svc = ChurnService.from_goldkey(env.gk)
    seen: list[tuple[str, int, int]] = []
    rep = svc.train_churn(ws, {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON, "classifier": FAST},
                          progress=lambda s, i, n: seen.append((s, i, n)))
    assert rep["version"] == 1 and rep["kind"] == "churn" and rep["score_field"] == "churn_risk"
    assert rep["labelled"] == len(w["churned"])
    assert rep["positives"] == sum(w["churned"].values())  # the labels are exactly the churners
    assert rep["auc"] > 0.8, rep
    assert seen[-1][1] == seen[-1][2] == 7
    pid = _pids(env)
    assert rep["profiles"] == rep["scores_written"] == len(pid)
    # scores and reasons land on the profiles
    churner = max((pid[u] for u, c in w["churned"].items() if c),
                  key=lambda p: env.gk.profiles.get(ws, p, events=0)["scores"]["churn_risk"])
    prof = env.gk.profiles.get(ws, churner, events=0)
    assert 0 < prof["scores"]["churn_risk"] < 1 and prof["scores"]["churn_risk_model_version"] == 1
    _mount(env)
    r = env.client.get(f"/api/v1/insights/profiles/{churner}/reasons", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    body = r.json()["models"]["churn"]
    assert body["version"] == 1 and body["score"] == pytest.approx(prof["scores"]["churn_risk"], abs=1e-6)
    docs = {**FEATURE_DOCS, **FEEDBACK_DOCS}
    assert body["reasons"] and all(x["description"] == docs[x["feature"]] for x in body["reasons"])
    assert all(x["contribution"] > 0 for x in body["reasons"])
    # churners score higher than the others on average
    scores = {u: env.gk.profiles.get(ws, p, events=0)["scores"]["churn_risk"] for u, p in pid.items()}
    churn_mean = np.mean([s for u, s in scores.items() if w["churned"][u]])
    stay_mean = np.mean([s for u, s in scores.items() if not w["churned"][u]])
    assert churn_mean > stay_mean
    # the evaluation endpoint: metrics and the lift table per version
    r = env.client.get("/api/v1/insights/models/churn/evaluation", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["kind"] == "churn" and ev["versions"][0]["auc"] == pytest.approx(rep["auc"])
    table = ev["versions"][0]["lift_table"]
    assert len(table) == 10 and table[-1]["cumulative_gain_pct"] == pytest.approx(100.0)
    assert sum(t["customers"] for t in table) == ev["versions"][0]["test"]
    # a propensity model through the API: who buys "care" in the window
    r = env.client.post("/api/v1/insights/propensity/train", headers=env.admin_auth(),
                        json={"category": "care", "as_of": AS_OF.isoformat(), "horizon_days": HORIZON,
                              "classifier": FAST})
    assert r.status_code == 200, r.text
    pr = r.json()
    assert pr["model"] == "propensity_care" and pr["score_field"] == "propensity_care" and pr["auc"] > 0.6
    prof = env.gk.profiles.get(ws, churner, events=0)
    assert "propensity_care" in prof["scores"] and prof["scores"]["propensity_care_model_version"] == 1
    assert prof["scores"]["churn_risk_model_version"] == 1  # untouched by the other model
    r = env.client.get(f"/api/v1/insights/profiles/{churner}/reasons", headers=env.admin_auth())
    assert set(r.json()["models"]) == {"churn", "propensity_care"}
    # another target whose name makes the same model name is refused (before: it overwrote the scores)
    with pytest.raises(InvalidInput, match="already predicts category 'care'") as e:
        svc.train_propensity(ws, {"event": "Coupon Used", "name": "care", "as_of": AS_OF.isoformat()})
    assert e.value.field == "name"
    # the refit schedule: neither model asked for one; a version that does is retrained as of now
    # (here, long after this test market's history, so the retrain finds nobody to learn from and says so)
    later = datetime.now(UTC) + timedelta(hours=2)
    assert refit_due(env.gk, now=later) == []
    svc.train_churn(ws, {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON, "classifier": FAST,
                         "refit_every_hours": 1})
    [failed] = refit_due(env.gk, now=later)
    assert failed["model"] == "churn" and "no customers to learn from" in failed["error"]


def test_traits_are_features_as_of_the_cutoff_and_attributes_as_stored(env: Any, tmp_path: Path) -> None:
    """Traits named in a definition are recomputed as of the cutoff for training (a trait that
    counts what happens in the label window is empty then, so it cannot leak the label) and as of
    the scoring date for scoring; attributes are read as stored, numbers or categories."""
    w = _world(n=200, seed=7)
    _load(env, tmp_path, w)
    ws = env.ws.workspace_id
    traits = env.gk.traits
    traits.create(ws, {"name": "views", "event": "Product Viewed", "aggregate": "count",
                       "description": "product views"})
    traits.create(ws, {"name": "coupons", "event": "Coupon Used", "aggregate": "count"})
    traits.create(ws, {"name": "care_spend", "source": "order_lines", "aggregate": "sum", "property": "line_amount",
                       "where": [{"property": "category", "op": "eq", "value": "care"}]})
    # the stored values (as of now) would give the label away: "Coupon Used" only happens in the window
    traits.compute(ws)
    # an attribute from identify calls: a category for most, a number for all
    rng = random.Random(3)
    batch = [{"type": "identify", "userId": u, "messageId": f"id-{u}", "timestamp": (CUTOFF - timedelta(days=400))
              .isoformat(), "traits": {"tier": rng.choice(["gold", "silver"]) if rng.random() < 0.9 else None,
                                       "age": 20 + i % 40}}
             for i, u in enumerate(sorted(w["churned"]))]
    for b in batch:
        if b["traits"]["tier"] is None:
            del b["traits"]["tier"]
    r = env.client.post("/v1/batch", json={"batch": batch}, headers=env.write_auth())
    assert r.status_code == 200, r.text
    pid = _pids(env)
    svc = ChurnService.from_goldkey(env.gk)
    from goldkey.insight.features import attribute_features, trait_features

    at_cut = trait_features(env.gk.engine, env.gk.analytical, ws, CUTOFF, ["views", "coupons", "care_spend"])
    assert at_cut.docs["traits.views"] == "trait views as of the date scored: product views"
    assert at_cut.zero_when_missing == ["traits.views", "traits.coupons", "traits.care_spend"]
    got = at_cut.frame.to_pandas().set_index("profile_id")
    assert (got["traits.coupons"] == 0).all()  # nothing before the cutoff
    evs = pd.DataFrame(w["events"])
    evs["at"] = pd.to_datetime(evs["timestamp"], utc=True)
    views = evs[(evs["event"] == "Product Viewed") & (evs["at"] < CUTOFF)].groupby("userId").size()
    assert {pid[u]: n for u, n in views.items()} == got["traits.views"][got["traits.views"] > 0].to_dict()
    odf = pd.DataFrame(w["orders"], columns=["order_id", "at", "uid", "sku", "cat", "q", "amount"])
    odf["at"] = pd.to_datetime(odf["at"], utc=True)
    care = odf[(odf["cat"] == "care") & (odf["at"] < CUTOFF)].groupby("uid")["amount"].apply(
        lambda a: a.astype(float).sum())
    assert {pid[u]: v for u, v in care.items()} == pytest.approx(
        got["traits.care_spend"][got["traits.care_spend"] > 0].to_dict())
    coupons = evs[evs["event"] == "Coupon Used"].groupby("userId").size()
    at_end = trait_features(env.gk.engine, env.gk.analytical, ws, AS_OF, ["coupons"]).frame
    assert at_end.filter(pl.col("traits.coupons") > 0).height == len(coupons) > 0
    attrs, adocs, _ = attribute_features(env.gk.engine, ws, ["tier", "age"])
    assert attrs.schema["attributes.age"] == pl.Float64 and attrs.schema["attributes.tier"] == pl.String
    assert adocs["attributes.tier"] == "profile attribute tier (its current value)"
    assert attrs.height == len(pid) and attrs["attributes.tier"].null_count() > 0

    # (small leaves, so that the trees could split on the coupon users were their trait leaked)
    rep = svc.train_churn(ws, {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON,
                               "classifier": {**FAST, "min_child_samples": 5},
                               "traits": ["views", "coupons", "care_spend"], "attributes": ["tier", "age"]})
    mv = svc.registry.load(ws, "churn", rep["version"], kind="churn")
    assert {"traits.views", "traits.care_spend", "attributes.tier", "attributes.age"} <= set(mv.artifact["features"])
    assert mv.definition["traits"] == ["views", "coupons", "care_spend"]
    # the leaking trait was empty at the cutoff: dropped as constant, not learnt (AUC stays honest)
    important = {f["feature"] for f in mv.metrics["feature_importance"]}
    assert not any(f.startswith("traits.coupons") for f in important)
    assert rep["auc"] < 0.999
    assert mv.artifact["descriptions"]["attributes.tier"] == "profile attribute tier (its current value)"
    # scoring used the traits as of the scoring date and the reasons describe them
    _mount(env)
    reasons = [x for p in pid.values() for x in
               env.client.get(f"/api/v1/insights/profiles/{p}/reasons", headers=env.admin_auth())
               .json()["models"]["churn"]["reasons"]]
    described = {x["feature"]: x["description"] for x in reasons if x["feature"].startswith(("traits.", "attri"))}
    assert described and all(v == mv.artifact["descriptions"][k] for k, v in described.items())
    # unknown names are refused, naming the field
    with pytest.raises(InvalidInput, match="no trait named 'nope'") as e:
        svc.train_churn(ws, {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON, "traits": ["nope"]})
    assert e.value.field == "traits"
    r = env.client.post("/api/v1/insights/churn/train", headers=env.admin_auth(),
                        json={"as_of": AS_OF.isoformat(), "horizon_days": HORIZON, "attributes": ["shoe_size"]})
    assert r.status_code == 400 and "shoe_size" in r.text and "attributes" in r.text, r.text


def test_bad_goldkey_input_is_a_clear_error(env: Any, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    svc = ChurnService.from_goldkey(env.gk)
    with pytest.raises(InvalidInput, match="no customers to learn from"):
        svc.train_churn(ws, {"as_of": AS_OF.isoformat()})
    w = _world(n=12, seed=2)
    _load(env, tmp_path, w)
    with pytest.raises(InvalidInput, match="too few labelled customers: 12"):
        svc.train_churn(ws, {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON})
    r = env.client.post("/v1/track", json={"userId": "u0", "event": "Message Sent"}, headers=env.write_auth())
    assert r.status_code == 200
    with pytest.raises(InvalidInput, match="unknown event 'Nope'.*'Product Viewed'") as e:
        svc.train_propensity(ws, {"event": "Nope"})
    assert "Message Sent" not in e.value.message  # Goldkey's own events are not offered as targets
    with pytest.raises(InvalidInput, match="an event Goldkey writes itself") as e:
        svc.train_propensity(ws, {"event": "Message Sent"})
    assert e.value.field == "event"
    with pytest.raises(InvalidInput, match="unknown category 'hats'"):
        svc.train_propensity(ws, {"category": "hats"})
    with pytest.raises(InvalidInput, match="exactly one target"):
        svc.train_propensity(ws, {"event": "Product Viewed", "category": "care"})
    # no model name may reach another model's version field, given or derived from the target
    from goldkey.insight.churn import PropensityDefinition

    for bad in ({"event": "x", "name": "buy_model_version"}, {"category": "Buy Model Version"}):
        with pytest.raises(InvalidInput, match="_model_version"):
            PropensityDefinition.model_validate(bad).slug() if "name" not in bad else svc.train_propensity(ws, bad)
    # nobody is inactive after a cutoff in the future of every order: one class
    with pytest.raises(InvalidInput, match="one class only"):
        svc.train_churn(ws, {"as_of": (AS_OF + timedelta(days=400)).isoformat(), "horizon_days": 30,
                             "lookback_days": 3650, "classifier": {"min_rows": 10}})
    _mount(env)
    r = env.client.get("/api/v1/insights/models/churn/evaluation", headers=env.admin_auth())
    assert r.status_code == 404 and "no fitted version" in r.text
    r = env.client.post("/api/v1/insights/churn/train", headers=env.admin_auth(), json={"horizon_days": 0})
    assert r.status_code == 400 and "horizon_days" in r.text
    # blend weights: none is a 400 (before: a 500), one outside 0-1 is refused (before: used, negating the trees)
    for weights in ([], [2.0, -1.0]):
        r = env.client.post("/api/v1/insights/churn/train", headers=env.admin_auth(),
                            json={"classifier": {"blend_weights": weights}})
        assert r.status_code == 400 and "blend_weights" in r.text, r.text
    assert svc.registry.versions(ws, "churn") == []


@pytest.mark.parametrize("command", ["rfm", "lifecycle", "clusters", "affinity", "recommend", "clv", "churn",
                                     "propensity"])
def test_the_cli_refuses_a_bad_definition_file_clearly(tmp_path: Path, command: str) -> None:
    # before: rfm, lifecycle, clusters, affinity and recommend printed a traceback
    from typer.testing import CliRunner

    from goldkey.cli import app

    runner = CliRunner()
    f = tmp_path / "d.json"
    for text in ("{not json", '["a"]', None):
        if text is None:
            f.unlink()
        else:
            f.write_text(text, encoding="utf-8")
        r = runner.invoke(app, ["insight", command, "--definition", str(f), "--data-dir", str(tmp_path / "data")])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (text, r.output, r.exception)
        assert "definition" in r.output and "Traceback" not in r.output


def test_a_holdout_too_small_to_evaluate_is_refused_naming_test_fraction() -> None:
    y = np.array([0, 1] * 30)
    idx = np.arange(y.size)
    with pytest.raises(InvalidInput, match="would hold 6 of the 60 .* at least 0.17") as e:
        _holdout_split(idx, y, 0.1, 0)
    assert e.value.field == "test_fraction"
    with pytest.raises(InvalidInput, match="would hold 2 of the 200"):
        _holdout_split(np.arange(200), np.array([0, 1] * 100), 0.01, 0)
    y = np.zeros(400, dtype=int)
    y[0] = 1  # one positive: it cannot be on both sides
    with pytest.raises(InvalidInput, match="no positive customer|cannot split") as e:
        _holdout_split(np.arange(400), y, 0.25, 0)
    assert e.value.field == "test_fraction"
    tr, te = _holdout_split(idx[:60], np.array([0, 1] * 30), 0.25, 0)
    assert (tr.size, te.size) == (45, 15) and 0 < np.array([0, 1] * 30)[te].sum() < 15


# -- the large-data path ---------------------------------------------------------------------------------


def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"recency": rng.exponential(60, n), "orders": rng.poisson(3, n).astype(float),
                      "spend": rng.lognormal(4, 1, n), "channel": rng.choice(["app", "web", "store"], n)})
    X.loc[rng.random(n) < 0.1, "spend"] = np.nan
    logit = -1 + X["recency"] / 50 - 0.3 * X["orders"] + 0.5 * (X["channel"] == "web")
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(int)


def test_large_data_path_subsamples_stops_early_and_calibrates_on_a_held_out_fold() -> None:
    X, y = _synthetic(6000, 3)
    p = ClassifierParams(holdout_calibration_above=1000, large_max_fit_rows=2000, n_estimators=300)
    clf = TabularClassifier(p).fit(X, y)
    assert len(clf.members) == 1
    assert clf.cv["fit_rows"] == 2000 and "calibration fold of 600 rows" in clf.cv["method"]
    assert 1 <= clf.cv["trees"] == clf.members[0].gbm.num_trees() <= 300
    Xf, yf = _synthetic(3000, 4)
    m = evaluate(yf, clf.predict_proba(Xf))
    assert m["auc"] > 0.75 and abs(clf.predict_proba(Xf).mean() - yf.mean()) < 0.05
    # the same fit twice gives the same model (seeded sample, deterministic trees)
    again = TabularClassifier(p).fit(X, y)
    assert np.array_equal(again.predict_proba(Xf), clf.predict_proba(Xf))


def test_fast_tree_contributions_equal_lightgbm_pred_contrib() -> None:
    from goldkey.insight.churn import _PATTERN_ROWS, _gbm_fit, _tree_contributions

    rng = np.random.default_rng(5)
    n = _PATTERN_ROWS + 1000
    m = rng.normal(size=(n, 6))
    m[rng.random(n) < 0.1, 0] = np.nan  # missing values take the default side
    m[rng.random(n) < 0.3, 1] = 0.0
    y = (rng.random(n) < 1 / (1 + np.exp(-(m[:, 1] + np.nan_to_num(m[:, 0]) * m[:, 2])))).astype(int)
    # 4-leaf trees (the default) and 8-leaf ones (7 splits, a column split twice on a path)
    for params in (ClassifierParams(n_estimators=60), ClassifierParams(n_estimators=20, num_leaves=8)):
        gbm = _gbm_fit(m[:20000], y[:20000], params)
        fast = _tree_contributions(gbm, m)
        exact = np.asarray(gbm.predict(m, pred_contrib=True), dtype=float)
        assert fast.shape == exact.shape and np.allclose(fast, exact, rtol=0, atol=1e-10)


def test_explain_gives_predict_proba_and_the_top_contributions_as_json() -> None:
    """One pass gives the probabilities (from the summed contributions) and per row the top-k
    positive contributions, rendered as JSON column by column: the same as a row-by-row reference,
    on the pred_contrib path (small tables) and the per-pattern path (from _PATTERN_ROWS rows)."""
    import orjson

    from goldkey.insight.churn import _PATTERN_ROWS, _json_value

    for n in (3000, _PATTERN_ROWS + 500):
        X, y = _synthetic(n, 7)
        X["visits"] = np.random.default_rng(1).poisson(3, n)  # an integer column: its values print as integers
        X.loc[X.index[:5], "channel"] = None
        clf = TabularClassifier(ClassifierParams(n_estimators=80, cv_folds=3,
                                                 holdout_calibration_above=1000)).fit(X, y)
        e = clf.explain(X, top_k=3)
        assert np.allclose(e.proba, clf.predict_proba(X), rtol=0, atol=1e-12)
        contrib, _ = clf.contributions(X)
        feats = list(X.columns)
        docs = {"recency": "days since", "spend": "money \"quoted\""}
        got = [orjson.loads(t) for t in e.payloads_json(docs)]
        rows = X.to_dict("records")
        for i in range(0, n, max(1, n // 400)):
            order = np.argsort(-contrib[i], kind="stable")[:3]
            want = [{"feature": feats[j], "value": _json_value(rows[i][feats[j]]),
                     "contribution": round(float(contrib[i, j]), 4), "description": docs.get(feats[j], feats[j])}
                    for j in order if contrib[i, j] > 0]
            assert got[i] == {"score": round(float(e.proba[i]), 6), "reasons": want}, i
        assert any(r["feature"] == "visits" and isinstance(r["value"], int) for g in got for r in g["reasons"])
        assert any(r["feature"] == "channel" and isinstance(r["value"], str) for g in got for r in g["reasons"])
        assert clf.reasons(X.iloc[:3], top_k=3, descriptions=docs) == [g["reasons"] for g in got[:3]]


def test_profile_insights_write_only_changes_and_replace_the_model_rows(env: Any) -> None:
    from goldkey.insight.writeback import read_profile_insights, write_profile_insights
    from goldkey.store.operational import profile_insights as t

    ws, gk = env.ws.workspace_id, env.gk
    assert write_profile_insights(gk, ws, "churn", 1, {"pa": {"score": 0.1}, "pb": {"score": 0.2}}) == 2
    write_profile_insights(gk, ws, "other", 4, {"pa": {"x": 1}})
    with gk.engine.connect() as c:
        before = dict(c.execute(sa.select(t.c.profile_id, t.c.updated_at).where(t.c.model == "churn")).all())
    assert write_profile_insights(gk, ws, "churn", 2, {"pb": {"score": 0.2}, "pc": {"score": 0.3}}) == 2
    assert read_profile_insights(gk.engine, ws, "pa") == {"other": {"version": 4, "x": 1}}  # pa left churn only
    assert read_profile_insights(gk.engine, ws, "pb") == {"churn": {"version": 2, "score": 0.2}}
    assert read_profile_insights(gk.engine, ws, "pc") == {"churn": {"version": 2, "score": 0.3}}
    with gk.engine.connect() as c:
        after = dict(c.execute(sa.select(t.c.profile_id, t.c.updated_at).where(t.c.model == "churn")).all())
    assert after["pb"] == before["pb"]  # unchanged details are not rewritten
    write_profile_insights(gk, ws, "churn", 3, {"pb": {"score": 0.25}})
    assert read_profile_insights(gk.engine, ws, "pb")["churn"] == {"version": 3, "score": 0.25}
    assert read_profile_insights(gk.engine, ws, "pc") == {}


def test_two_propensity_trainings_of_one_name_and_two_targets_at_once(env: Any, tmp_path: Path,
                                                                       monkeypatch: Any) -> None:
    """The one-name-one-target check runs under the model's run lock: before, two calls at once with
    name "race" (one for a category, one for an event) both passed it and became v1 and v2 of one
    model writing one score field."""
    import threading
    import time

    _load(env, tmp_path, _world())
    ws = env.ws.workspace_id
    real = ChurnService._train
    calls: list[int] = []

    def slow_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)  # the first training is still running when the second call comes
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChurnService, "_train", slow_first)
    base = {"as_of": AS_OF.isoformat(), "horizon_days": HORIZON, "classifier": FAST, "name": "race"}
    first = threading.Thread(target=ChurnService.from_goldkey(env.gk).train_propensity,
                             args=(ws, {**base, "category": "care"}))
    first.start()
    time.sleep(0.3)
    with pytest.raises(InvalidInput, match="already predicts category 'care'"):
        ChurnService.from_goldkey(env.gk).train_propensity(ws, {**base, "event": "Coupon Used"})
    first.join()
    assert ChurnService.from_goldkey(env.gk).registry.versions(ws, "propensity_race") == [1]


@pytest.mark.parametrize("seed", [-1, 10**12])
def test_a_seed_out_of_range_is_refused_naming_it(env: Any, seed: int) -> None:
    # before: a 400 naming 'test_fraction' with scikit-learn's random_state message
    with pytest.raises(InvalidInput) as e:
        ChurnService.from_goldkey(env.gk).train_churn(env.ws.workspace_id, {"classifier": {"seed": seed}})
    assert e.value.field == "classifier.seed", e.value
