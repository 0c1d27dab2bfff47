"""Lifecycle stages: against an independent pandas computation, transitions as events, custom
rules, the registry, the API, bad input."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from goldkey.core.errors import InvalidInput
from goldkey.insight.lifecycle import STAGES, TRANSITION_EVENT, LifecycleService, compute_features
from goldkey.insight.schedule import refit_due

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)
HEADER = ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"]
# planted customers: days ago of each order (amount 100 unless given) -> the stage at AS_OF
PLANTED = {
    "NEW": ([10], "new"),
    "WON": ([400, 5], "won_back"),
    "WON_SPLIT": ([400, 5, 5], "won_back"),  # back with an order split in two (before: gap 0, "growing")
    # back with orders at 11:30 and 12:30 UTC of one day (the days are whole: before, 12:00 and later
    # counted as the next day, so the gap was 1 and the stage "growing")
    "WON_NOON": ([400, 4 + 10.5 / 24, 4 + 9.5 / 24], "won_back"),
    "GROW": ([200, 60, 30, 10], "growing"),
    "ACTIVE": ([150, 30], "active"),
    "RISK": ([300, 120], "at_risk"),
    "DORMANT": ([400, 250], "dormant"),
    "CHURN": ([700, 500], "churned"),
}


def _orders(n_random: int = 60, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for crm, (days, _) in PLANTED.items():
        for d in days:
            rows.append({"order_id": f"O{len(rows):05d}", "ordered_at": AS_OF - timedelta(days=d, hours=2),
                         "crm_id": crm, "amount": 100})
    for c in range(n_random):
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            d = rng.choice([1, 20, 45, 80, 95, 130, 170, 200, 260, 370, 500, 800])
            at = AS_OF - timedelta(days=d, hours=rng.choice([1, 7]))
            rows.append({"order_id": f"O{len(rows):05d}", "ordered_at": at, "crm_id": f"C{c:03d}",
                         "amount": rng.choice([50, 80, 100, 300, 900])})
    return rows


def _import(env: Any, tmp: Path, rows: list[dict[str, Any]], name: str = "orders.csv") -> None:
    path = tmp / name
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in rows:
            w.writerow([r["order_id"], r["ordered_at"].strftime("%Y-%m-%dT%H:%M:%SZ"), r["crm_id"], "SKU", "lens", "1",
                        str(r["amount"])])
    s = env.gk.importer.run(env.ws.workspace_id, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s


def _pid_of(env: Any, crm: str) -> str:
    r = env.client.get("/api/v1/profiles/lookup", params={"crm_id": crm}, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()["profile_id"]


def _reference(rows: list[dict[str, Any]], as_of: datetime, period: int = 90) -> pd.DataFrame:
    """Features and default stages, computed independently with pandas."""
    df = pd.DataFrame(rows)
    df = df[df.ordered_at <= as_of]
    out = []
    for crm, g in df.groupby("crm_id"):
        last, first = g.ordered_at.max(), g.ordered_at.min()
        days = sorted({t.tz_convert("UTC").date() for t in g.ordered_at}, reverse=True)  # distinct UTC dates
        rec = g[g.ordered_at > as_of - timedelta(days=period)]
        pri = g[(g.ordered_at > as_of - timedelta(days=2 * period)) & (g.ordered_at <= as_of - timedelta(days=period))]
        since_last = (as_of - last).total_seconds() // 86400
        since_first = (as_of - first).total_seconds() // 86400
        gap = (days[0] - days[1]).days if len(days) > 1 else np.nan
        ratio = rec.amount.sum() / pri.amount.sum() if pri.amount.sum() > 0 else np.nan
        delta = rec.order_id.nunique() - pri.order_id.nunique()
        if since_last <= 90 and gap >= 180:
            stage = "won_back"
        elif since_first <= 90:
            stage = "new"
        elif since_last <= 90 and (delta > 0 or ratio >= 1.2):
            stage = "growing"
        elif since_last <= 90:
            stage = "active"
        elif since_last <= 180:
            stage = "at_risk"
        elif since_last <= 365:
            stage = "dormant"
        else:
            stage = "churned"
        out.append({"crm_id": crm, "days_since_last": since_last, "days_since_first": since_first, "gap": gap,
                    "orders_recent": rec.order_id.nunique(), "orders_prior": pri.order_id.nunique(),
                    "spend_ratio": ratio, "stage": stage})
    return pd.DataFrame(out).set_index("crm_id")



def mount_insights(app: Any) -> None:
    """Mount the insights router (not yet wired into goldkey.app) ahead of the console's SPA fallback."""
    from goldkey.insight.lifecycle_api import router

    if any(getattr(r, "path", "").startswith("/api/v1/insights/lifecycle") for r in app.router.routes):
        return
    n = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[n:]
    del app.router.routes[n:]
    app.router.routes[0:0] = added

def test_stages_match_an_independent_computation_and_are_written_back(env: Any, tmp_path: Path) -> None:
    rows = _orders()
    _import(env, tmp_path, rows)
    ws = env.ws.workspace_id
    ref = _reference(rows, AS_OF)
    for crm, (_, stage) in PLANTED.items():
        assert ref.loc[crm, "stage"] == stage, crm  # the planted customers are what they claim
    ref["profile_id"] = [_pid_of(env, c) for c in ref.index]
    ref = ref.set_index("profile_id").sort_index()
    feats = compute_features(env.gk.analytical, ws, {}, AS_OF).to_pandas().set_index("profile_id").sort_index()
    assert list(feats.index) == list(ref.index)
    assert (feats.lc_days_since_last == ref.days_since_last).all()
    assert (feats.lc_days_since_first == ref.days_since_first).all()
    assert np.allclose(feats.lc_gap_days, ref.gap, equal_nan=True)
    assert np.allclose(feats.lc_spend_ratio, ref.spend_ratio, equal_nan=True)
    assert (feats.lc_orders_recent == ref.orders_recent).all() and (feats.lc_orders_prior == ref.orders_prior).all()

    svc = LifecycleService.from_goldkey(env.gk)
    rep = svc.run(ws, {"as_of": AS_OF.isoformat()})
    assert rep["version"] == 1 and rep["customers"] == len(ref) == rep["staged"]
    got = {p: env.client.get(f"/api/v1/profiles/{p}", headers=env.admin_auth()).json() for p in ref.index}
    assert {p: g["tags"].get("lifecycle_stage") for p, g in got.items()} == ref.stage.to_dict()
    some = ref.index[0]
    assert got[some]["scores"]["lc_days_since_last"] == ref.loc[some, "days_since_last"]
    assert got[some]["scores"]["lc_model_version"] == 1
    # registry metrics: counts per stage and the transition matrix (all from none on a first run)
    counts = ref.stage.value_counts().to_dict()
    m = svc.latest(ws).metrics
    assert {k: v for k, v in m["stages"].items() if v} == counts
    assert m["transitions"]["none"] == {**dict.fromkeys([*STAGES, "none"], 0), **counts}
    assert rep["transition_events"] == len(ref) == rep["tag_changed"]


def test_transitions_are_events_with_from_and_to(env: Any, tmp_path: Path) -> None:
    rows = _orders(n_random=25, seed=5)
    _import(env, tmp_path, rows)
    ws = env.ws.workspace_id
    svc = LifecycleService.from_goldkey(env.gk)
    svc.run(ws, {"as_of": AS_OF.isoformat()})
    later = AS_OF + timedelta(days=100)
    rep = svc.run(ws, {"as_of": later.isoformat()})
    before = _reference(rows, AS_OF).stage
    after = _reference(rows, later).stage
    moved = {c: (before[c], after[c]) for c in before.index if before[c] != after[c]}
    assert moved["NEW"] == ("new", "at_risk") and moved["WON"] == ("won_back", "at_risk")
    assert rep["transition_events"] == len(moved) == rep["metrics"]["changed"]
    matrix = rep["metrics"]["transitions"]
    pairs = pd.Series(list(moved.values())).value_counts()
    for (a, b), n in pairs.items():
        assert matrix[a][b] == n
    # the events: one per change, from/to as properties, queryable with a rule
    ev = env.gk.analytical.query(
        "SELECT canonical_id, json_extract_string(properties, '$.from'), json_extract_string(properties, '$.to'), "
        "json_extract(properties, '$.model_version')::INT FROM events_resolved WHERE workspace_id = ? AND event = ? "
        "ORDER BY \"timestamp\"", [ws, TRANSITION_EVENT])
    second = {r[0]: (r[1], r[2]) for r in ev if r[3] == 2}
    assert second == {_pid_of(env, c): v for c, v in moved.items()}
    assert sum(1 for r in ev if r[3] == 1 and r[1] is None) == len(before)  # first run: from null
    rule = {"kind": "event", "event": TRANSITION_EVENT, "window": {"last_days": 1},
            "where": [{"property": "from", "op": "eq", "value": "new"},
                      {"property": "to", "op": "eq", "value": "at_risk"}]}
    est = env.client.post("/api/v1/segments/estimate", json={"rule": rule}, headers=env.admin_auth())
    assert est.status_code == 200, est.text
    n_new_to_risk = sum(1 for v in moved.values() if v == ("new", "at_risk"))
    assert est.json()["size"] == n_new_to_risk > 0
    # the Tag Changed events carry the same change (tag, previous, value)
    hist = env.gk.tags.history(ws, "lifecycle_stage", profile_id=_pid_of(env, "NEW"))
    assert hist[0]["previous"] == "new" and hist[0]["value"] == "at_risk" and hist[0]["source"] == "model:lifecycle:v2"


def test_custom_rules_first_match_and_other_fields(env: Any, tmp_path: Path) -> None:
    rows = _orders(n_random=10, seed=2)
    _import(env, tmp_path, rows)
    ws = env.ws.workspace_id
    svc = LifecycleService.from_goldkey(env.gk)
    d = {"as_of": AS_OF.isoformat(), "stages": [
        {"stage": "churned",
         "rule": {"kind": "attribute", "field": "scores.lc_days_since_last", "op": "gt", "value": 365}},
        # reads a field the model does not supply: evaluated over the facts table
        {"stage": "active", "rule": {"kind": "attribute", "field": "profile.first_seen_source", "op": "is_set"}}]}
    rep = svc.run(ws, d)
    ref = _reference(rows, AS_OF)
    churned = set(ref.index[ref.days_since_last > 365])
    stages = rep["metrics"]["stages"]
    assert stages["churned"] == len(churned) and stages["active"] == len(ref) - len(churned)
    p = env.client.get(f"/api/v1/profiles/{_pid_of(env, 'CHURN')}", headers=env.admin_auth()).json()
    assert p["tags"]["lifecycle_stage"] == "churned"
    # the refit schedule: not due right after a run; due a day later, rerun as of now
    assert refit_due(env.gk) == []
    assert refit_due(env.gk, now=datetime.now(UTC) + timedelta(hours=25)) == [
        {"workspace_id": ws, "model": "lifecycle", "version": 2}]
    again = svc.latest(ws)
    assert again.version == 2 and again.metrics["stages"]["churned"] == len(ref)


def test_bad_input_is_a_clear_error(env: Any, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    svc = LifecycleService.from_goldkey(env.gk)
    with pytest.raises(InvalidInput) as e:
        svc.run(ws, {"as_of": AS_OF.isoformat()})
    assert e.value.field == "orders" and "no orders" in e.value.message
    with pytest.raises(InvalidInput) as e:
        svc.run(ws, {"active_days": 200, "dormant_days": 100})
    assert "active_days < dormant_days" in e.value.message
    _import(env, tmp_path, _orders(n_random=3))
    with pytest.raises(InvalidInput) as e:
        svc.run(ws, {"stages": [{"stage": "new", "rule": {"kind": "attribute", "field": "scores.lc_days_since_lst",
                                                          "op": "lt", "value": 3}}]})
    assert e.value.field is not None and e.value.field.startswith("stages[0].rule")
    with pytest.raises(InvalidInput) as e:
        svc.run(ws, {"stages": [{"stage": "vip", "rule": {"kind": "attribute", "field": "orders.count", "op": "gt",
                                                          "value": 3}}]})
    assert e.value.field == "stages.0.stage"


def test_api_run_and_summary(env: Any, tmp_path: Path) -> None:
    mount_insights(env.client.app)
    _import(env, tmp_path, _orders(n_random=15))
    r = env.client.get("/api/v1/insights/lifecycle/summary", headers=env.admin_auth())
    assert r.status_code == 404, r.text
    r = env.client.post("/api/v1/insights/lifecycle/run", json={"as_of": AS_OF.isoformat()}, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    r = env.client.get("/api/v1/insights/lifecycle/summary", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    s = r.json()
    assert [x["stage"] for x in s["stages"]] == list(STAGES)
    assert {x["zh"] for x in s["stages"]} == {"新客", "活跃", "成长", "流失预警", "沉睡", "流失", "召回"}
    assert sum(x["profiles"] for x in s["stages"]) == s["staged"] == sum(s["transitions"]["none"].values())
    r = env.client.post("/api/v1/insights/lifecycle/run", json={"period_days": 0}, headers=env.admin_auth())
    assert r.status_code == 400 and "period_days" in r.text


@pytest.mark.slow
def test_cli_commands(tmp_path: Path) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from goldkey.insight.lifecycle_cli import register
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    d = tmp_path / "data"
    gk = Goldkey.open(Settings(data_dir=d))
    try:
        ws = gk.workspaces.create("CLI Brand").workspace_id
        path = tmp_path / "o.csv"
        rows = _orders(n_random=30)
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            for r in rows:
                w.writerow([r["order_id"], r["ordered_at"].strftime("%Y-%m-%dT%H:%M:%SZ"), r["crm_id"], "S", "lens",
                            "1", str(r["amount"])])
        assert gk.importer.run(ws, "orders", path, {}).status == "done"
    finally:
        gk.close()
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    base = ["--data-dir", str(d), "-w", ws]
    r = runner.invoke(app, ["lifecycle", *base, "--as-of", "2024-07-01T00:00:00"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["version"] == 1 and out["staged"] == len(_reference(rows, AS_OF))
    r = runner.invoke(app, ["lifecycle", *base, "--summary"])
    assert r.exit_code == 0 and json.loads(r.stdout)["stages"][0]["zh"] == "新客"
    r = runner.invoke(app, ["clusters", *base, "--as-of", "2024-07-01T00:00:00", "--k", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["k"] == 3
    r = runner.invoke(app, ["cohorts", *base, "--end", "2024-07-01T00:00:00", "--periods", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["offsets"] == [0, 1, 2]
    r = runner.invoke(app, ["funnel", "Order Completed", "Nope", *base])
    assert r.exit_code == 1 and "never been received" in r.output
