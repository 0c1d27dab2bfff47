"""RFM: scores against an independent pandas computation, ties, groups, write-back, registry."""

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
from goldkey.insight.registry import ModelMismatch, ModelRegistry
from goldkey.insight.rfm import GROUPS, RFMDefinition, RFMService, compute_rfm, fit_summary, group_of
from goldkey.insight.schedule import refit_due

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)
HEADER = ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"]


def _orders(n_customers: int = 57, seed: int = 7) -> list[dict[str, Any]]:
    """Orders with many ties (amounts and days drawn from small sets), plus some outside the window."""
    rng = random.Random(seed)
    rows = []
    oid = 0
    for c in range(n_customers):
        for _ in range(rng.choice([1, 1, 2, 3, 5])):
            oid += 1
            days = rng.choice([0, 1, 3, 10, 30, 90, 200, 400])  # 400: outside a 365-day window
            at = AS_OF - timedelta(days=days, hours=rng.choice([1, 5]))
            rows.append({"order_id": f"O{oid:05d}", "ordered_at": at, "crm_id": f"C{c:03d}",
                         "amount": rng.choice([50, 100, 100, 300, 1200, 6000])})
    return rows


def _import(env: Any, tmp: Path, rows: list[dict[str, Any]]) -> None:
    path = tmp / "orders.csv"
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


def _ntile(n: int) -> np.ndarray:
    """NTILE(5) over n ordered rows: the first n % 5 tiles get one row more."""
    sizes = [n // 5 + (1 if i < n % 5 else 0) for i in range(5)]
    return np.repeat(np.arange(1, 6), sizes)


def _reference(env: Any, rows: list[dict[str, Any]], lookback: int = 365) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df = df[(df.ordered_at <= AS_OF) & (df.ordered_at > AS_OF - timedelta(days=lookback))]
    g = df.groupby("crm_id").agg(last=("ordered_at", "max"), frequency=("order_id", "nunique"),
                                 monetary=("amount", "sum")).reset_index()
    g["profile_id"] = [_pid_of(env, c) for c in g.crm_id]
    g["recency_days"] = ((AS_OF - g["last"]).dt.total_seconds() // 86400).astype(int)
    # higher is better; ties by profile id ascending
    for score, col, asc in (("r", "recency_days", False), ("f", "frequency", True), ("m", "monetary", True)):
        order = g.sort_values([col, "profile_id"], ascending=[asc, True]).index
        g.loc[order, f"{score}_score"] = _ntile(len(g))
    return g.set_index("profile_id").sort_index()


def test_quintiles_match_an_independent_computation_and_ties_are_deterministic(env: Any, tmp_path: Path) -> None:
    rows = _orders()
    _import(env, tmp_path, rows)
    ws = env.ws.workspace_id
    ref = _reference(env, rows)
    tbl = compute_rfm(env.gk.analytical, ws, RFMDefinition(), AS_OF)
    got = tbl.to_pandas().set_index("profile_id").sort_index()
    assert list(got.index) == list(ref.index)
    assert (got.recency_days == ref.recency_days).all()
    assert (got.frequency == ref.frequency).all()
    assert np.allclose(got.monetary, ref.monetary)
    for s in ("r", "f", "m"):
        assert (got[f"{s}_score"].astype(int) == ref[f"{s}_score"].astype(int)).all(), s
        counts = got[f"{s}_score"].value_counts()
        assert counts.max() - counts.min() <= 1  # quintiles are balanced even with heavy ties
    assert (got.rfm_group == [group_of(int(r), int(f)) for r, f in zip(got.r_score, got.f_score, strict=True)]).all()
    # ties broken the same way every time
    again = compute_rfm(env.gk.analytical, ws, RFMDefinition(), AS_OF)
    assert again.equals(tbl)
    # value tiers: the highest threshold reached
    tiers = got.value_tier
    assert (tiers[got.monetary >= 5000] == "high").all()
    assert (tiers[(got.monetary >= 1000) & (got.monetary < 5000)] == "medium").all()
    assert (tiers[got.monetary < 1000] == "low").all()
    custom = compute_rfm(env.gk.analytical, ws, {"value_tiers": [{"name": "vip", "min_monetary": 6000}]}, AS_OF)
    ct = custom.to_pandas().set_index("profile_id")
    assert set(ct.value_tier.dropna()) == {"vip"} and ct.value_tier.isna().any()
    # the metrics say how many customers the tie-breaker placed: those of a value spread over scores
    _, metrics = fit_summary(tbl)
    for s, col in (("r", "recency_days"), ("f", "frequency"), ("m", "monetary")):
        spread = got.groupby(col)[f"{s}_score"].transform("nunique")
        assert metrics["tie_broken"][s] == int((spread > 1).sum()), s
    assert metrics["tie_broken"]["f"] > 0  # few distinct order counts: F is mostly the tie-breaker's


def test_group_grid_covers_every_cell_with_named_groups() -> None:
    cells = {group_of(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert cells == set(GROUPS)
    assert group_of(5, 5) == "champions" and group_of(1, 1) == "lost" and group_of(1, 5) == "cant_lose_them"
    assert group_of(2, 2) == "hibernating" and group_of(2, 3) == "at_risk" and group_of(5, 1) == "new_customers"
    assert GROUPS["hibernating"][1] == "沉睡客户" and GROUPS["loyal_customers"][1] == "忠诚客户"


def test_run_writes_scores_and_model_tags_with_the_version(env: Any, tmp_path: Path) -> None:
    rows = _orders(n_customers=20, seed=3)
    _import(env, tmp_path, rows)
    ws = env.ws.workspace_id
    svc = RFMService.from_goldkey(env.gk)
    d = {"as_of": AS_OF.isoformat()}
    stages: list[tuple[str, int, int]] = []
    rep = svc.run(ws, d, progress=lambda what, i, n: stages.append((what, i, n)))
    assert rep["version"] == 1 and rep["profiles"] == rep["scores_written"] > 0
    # the CLI's progress bar follows these (before: RFM had none)
    assert [i for _, i, _ in stages] == [0, 1, 2, 3] and stages[-1] == ("done", 3, 3)
    assert sum(rep["metrics"]["groups"].values()) == rep["profiles"]
    tbl = compute_rfm(env.gk.analytical, ws, d).to_pandas().set_index("profile_id")
    pid = tbl.index[0]
    r = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["scores"]["rfm_r"] == tbl.loc[pid, "r_score"] and p["scores"]["rfm_m"] == tbl.loc[pid, "m_score"]
    assert p["scores"]["rfm_model_version"] == 1
    assert p["tags"]["rfm_group"] == tbl.loc[pid, "rfm_group"]
    assert p["tags"]["rfm_value_tier"] == tbl.loc[pid, "value_tier"]
    tag = env.gk.tags.get(ws, "rfm_group")
    assert tag["kind"] == "model" and tag["category"] == "consumption" and "v1" in tag["description"]
    hist = env.gk.tags.history(ws, "rfm_group", profile_id=pid)
    assert hist and hist[0]["source"] == "model:rfm:v1"
    # a refit is version 2; the scores say so; unchanged tags are not rewritten
    rep2 = svc.run(ws, d)
    assert rep2["version"] == 2 and rep2["group_tag_changed"] == 0
    p = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth()).json()
    assert p["scores"]["rfm_model_version"] == 2
    assert svc.latest(ws, d).version == 2 and svc.latest(ws).metrics["profiles"] == rep["profiles"]
    # a narrower window scores fewer customers: the others lose their RFM scores and tags
    short = {"as_of": AS_OF.isoformat(), "lookback_days": 5}
    kept = set(compute_rfm(env.gk.analytical, ws, short).column("profile_id").to_pylist())
    dropped = [p for p in tbl.index if p not in kept]
    assert kept and dropped
    rep3 = svc.run(ws, short)
    assert rep3["version"] == 3 and rep3["profiles"] == len(kept)
    gone = env.client.get(f"/api/v1/profiles/{dropped[0]}", headers=env.admin_auth()).json()
    assert "rfm_r" not in gone["scores"] and "rfm_group" not in gone["tags"] and "rfm_value_tier" not in gone["tags"]
    assert env.gk.tags.coverage(ws, "rfm_group")["tagged"] == len(kept)


class _PublicTagsOnly:
    """A tag service exposing only the public API (the fallback write path)."""

    def __init__(self, tags: Any) -> None:
        self._t = tags

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._t, name)


def test_fallback_through_set_values_gives_the_same_tags(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, _orders(n_customers=15, seed=5))
    ws = env.ws.workspace_id
    svc = RFMService.from_goldkey(env.gk)
    svc.tags = _PublicTagsOnly(env.gk.tags)
    svc.run(ws, {"as_of": AS_OF.isoformat()})
    tbl = compute_rfm(env.gk.analytical, ws, {"as_of": AS_OF.isoformat()}).to_pandas()
    for pid, group in zip(tbl.profile_id, tbl.rfm_group, strict=True):
        assert env.gk.profiles.get(ws, pid)["tags"]["rfm_group"] == group


def test_artifact_refuses_to_load_into_a_different_model(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, _orders(n_customers=10))
    ws = env.ws.workspace_id
    svc = RFMService.from_goldkey(env.gk)
    _, mv = svc.fit(ws, {"as_of": AS_OF.isoformat()})
    assert mv.version == 1 and mv.artifact["cut_points"]["r"][0]["score"] == 1
    assert (mv.path / "meta.json").exists() and (mv.path / "artifact.json").exists()
    reg: ModelRegistry = svc.registry
    with pytest.raises(ModelMismatch, match="cannot load into a 'churn' model"):
        reg.load(ws, "rfm", 1, kind="churn")
    with pytest.raises(ModelMismatch, match="another definition"):
        svc.latest(ws, {"as_of": AS_OF.isoformat(), "lookback_days": 90})
    assert svc.latest(ws, {"as_of": AS_OF.isoformat()}).version == 1
    with pytest.raises(InvalidInput):
        reg.load("../etc", "rfm", kind="rfm")
    # a version directory copied into another workspace's (or model's) place loads into neither
    import shutil

    for other_ws, other_name in (("ws_other", "rfm"), (ws, "rfm_copy")):
        shutil.copytree(mv.path, reg.root / other_ws / other_name / "v1")
        with pytest.raises(ModelMismatch, match=f"fitted as {ws}/rfm"):
            reg.load(other_ws, other_name, kind="rfm")
        assert [m["name"] for m in reg.list(other_ws)] == (["rfm"] if other_ws == ws else [])


def test_versions_saved_at_once_by_separate_registries_all_land(tmp_path: Path) -> None:
    # before: each API request's own registry had its own lock; saves at the same moment all took
    # v1, one won and the others failed (a 500 after all their fitting work)
    import threading

    start = threading.Barrier(6)
    saved: list[int] = []
    errors: list[BaseException] = []

    def save(i: int) -> None:
        reg = ModelRegistry(tmp_path / "models")  # one per request, as the services build them
        start.wait()
        try:
            mv = reg.save("ws1", "rfm", kind="rfm", definition={"a": 1}, artifact={"i": i}, metrics={})
            saved.append(mv.version)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(saved) == [1, 2, 3, 4, 5, 6]
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions("ws1", "rfm") == [1, 2, 3, 4, 5, 6]
    assert sorted(reg.load("ws1", "rfm", v, kind="rfm").artifact["i"] for v in range(1, 7)) == list(range(6))
    # a version another process wrote is never overwritten: the next number is taken
    (tmp_path / "models" / "ws1" / "rfm" / "v7").mkdir()
    (tmp_path / "models" / "ws1" / "rfm" / "v7" / "meta.json").write_text("{}")
    assert reg.save("ws1", "rfm", kind="rfm", definition={"a": 1}, artifact={}, metrics={}).version == 8


def test_empty_workspace_is_a_clear_error(env: Any) -> None:
    svc = RFMService.from_goldkey(env.gk)
    with pytest.raises(InvalidInput, match="no orders to score"):
        svc.run(env.ws.workspace_id)
    with pytest.raises(InvalidInput, match="value tier names must be unique"):
        svc.run(env.ws.workspace_id, {"value_tiers": [{"name": "a", "min_monetary": 1}, {"name": "a",
                                                                                          "min_monetary": 2}]})
    assert svc.registry.versions(env.ws.workspace_id, "rfm") == []


def test_a_measure_every_customer_shares_is_refused(env: Any, tmp_path: Path) -> None:
    """40 customers with one order each: their frequency scores were 1-5 by profile id alone, so
    one-order buyers of the same day came out "champions" and "lost". A clear error instead."""
    rows = [{"order_id": f"O{c}", "ordered_at": AS_OF - timedelta(days=c % 30 + 1), "crm_id": f"C{c:03d}",
             "amount": 50 + c} for c in range(40)]
    _import(env, tmp_path, rows)
    svc = RFMService.from_goldkey(env.gk)
    with pytest.raises(InvalidInput, match=r"same frequency \(orders\): 1") as e:
        svc.run(env.ws.workspace_id, {"as_of": AS_OF.isoformat()})
    assert e.value.field == "orders"
    assert svc.registry.versions(env.ws.workspace_id, "rfm") == []
    r = env.client.post("/api/v1/insights/rfm/run", headers=env.admin_auth(), json={"as_of": AS_OF.isoformat()})
    assert r.status_code == 400 and "same frequency" in r.text, r.text


def test_api_runs_rfm_and_lists_models(env: Any, tmp_path: Path) -> None:
    from goldkey.insight.api import router

    env.client.app.include_router(router)
    h = env.admin_auth()
    r = env.client.post("/api/v1/insights/rfm/run", json={}, headers=h)
    assert r.status_code == 400 and "no orders to score" in r.text
    r = env.client.post("/api/v1/insights/rfm/run", json={"lookback_days": 0}, headers=h)
    assert r.status_code == 400 and "lookback_days" in r.text
    _import(env, tmp_path, _orders(n_customers=12))
    r = env.client.post("/api/v1/insights/rfm/run", json={"as_of": AS_OF.isoformat()}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["profiles"] > 0
    models = env.client.get("/api/v1/insights/models", headers=h).json()["models"]
    assert [(m["name"], m["kind"], m["version"]) for m in models] == [("rfm", "rfm", 1)]
    m = env.client.get("/api/v1/insights/models/rfm", headers=h).json()
    assert m["metrics"]["profiles"] == r.json()["profiles"]
    assert env.client.get("/api/v1/insights/models/churn", headers=h).status_code == 404
    assert env.client.get("/api/v1/insights/models/rfm", params={"version": 9}, headers=h).status_code == 404
    assert env.client.get("/api/v1/insights/models", headers=env.write_auth()).status_code == 401
    # the registry under /api/v1/models too, with every version (before: no such route)
    env.client.post("/api/v1/insights/rfm/run", json={"as_of": AS_OF.isoformat(), "lookback_days": 200}, headers=h)
    assert env.client.get("/api/v1/models", headers=h).json()["models"][0]["version"] == 2
    assert env.client.get("/api/v1/models/rfm", params={"version": 1}, headers=h).json()["definition"][
        "lookback_days"] == 365
    vs = env.client.get("/api/v1/models/rfm/versions", headers=h).json()
    assert vs["kind"] == "rfm" and [v["version"] for v in vs["versions"]] == [1, 2]
    assert vs["versions"][1]["definition"]["lookback_days"] == 200
    assert env.client.get("/api/v1/models/churn/versions", headers=h).status_code == 404
    r = env.client.get("/api/v1/models/rfm/evaluation", headers=h)
    assert r.status_code == 400 and "only churn and propensity" in r.text
    assert env.client.get("/api/v1/models", headers=env.write_auth()).status_code == 401


def test_cli_runs_rfm_and_lists_models(tmp_path: Path, monkeypatch: Any) -> None:
    import json

    from typer.testing import CliRunner

    from goldkey.cli import app
    from goldkey.insight.cli import insight_app

    runner = CliRunner()
    d = str(tmp_path / "data")
    r = runner.invoke(app, ["workspace", "create", "Shop", "--json", "--data-dir", d])
    assert r.exit_code == 0, r.output
    empty = runner.invoke(insight_app, ["rfm", "-w", "Shop", "--data-dir", d])
    assert empty.exit_code == 1 and "no orders to score" in empty.output
    path = tmp_path / "o.csv"
    path.write_text("order_id,ordered_at,crm_id,sku,quantity,unit_price\n"
                    "O1,2024-06-01T10:00:00Z,C1,S,1,100\nO2,2024-06-20T10:00:00Z,C2,S,2,50\n", encoding="utf-8")
    r = runner.invoke(app, ["import", "orders", str(path), "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0, r.output
    # two customers cannot fill five quintiles: a clear error (before: scores 1 and 2 by profile id)
    few = runner.invoke(insight_app, ["rfm", "-w", "Shop", "--data-dir", d, "--as-of", "2024-07-01T00:00:00"])
    assert few.exit_code == 1 and "too few customers" in " ".join(few.output.split())
    path.write_text("order_id,ordered_at,crm_id,sku,quantity,unit_price\n" + "".join(
        f"O{i},2024-06-{i:02d}T10:00:00Z,C{i},S,1,{10 * i}\n" for i in range(3, 7))
        + "O7,2024-06-08T10:00:00Z,C3,S,1,10\n", encoding="utf-8")  # a repeat buyer: frequencies differ
    r = runner.invoke(app, ["import", "orders", str(path), "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0, r.output
    r = runner.invoke(insight_app, ["rfm", "-w", "Shop", "--data-dir", d, "--as-of", "2024-07-01T00:00:00"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["profiles"] == 6
    r = runner.invoke(insight_app, ["models", "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["version"] == 1
    # one model's versions, or one version, as the REST registry gives them
    r = runner.invoke(insight_app, ["models", "rfm", "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0 and [v["version"] for v in json.loads(r.stdout)] == [1], r.output
    r = runner.invoke(insight_app, ["models", "rfm", "--version", "1", "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0 and json.loads(r.stdout)["kind"] == "rfm", r.output
    for args, says in ((["models", "rfm", "--version", "7"], "no version 7"), (["models", "churn"], "no fitted"),
                       (["evaluation", "rfm"], "only churn and propensity")):
        r = runner.invoke(insight_app, [*args, "-w", "Shop", "--data-dir", d])
        assert r.exit_code == 1 and says in " ".join(r.output.split()), r.output
    # the schedule's look by hand: nothing is due right after a run; a day later, the RFM model
    # (24 h by default) is refitted as of now, which finds no order in its 365 days and says so
    r = runner.invoke(insight_app, ["refit-due", "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0 and json.loads(r.stdout) == [], r.output
    import goldkey.insight.schedule as schedule

    monkeypatch.setattr(schedule, "as_of_utc", lambda now: datetime.now(UTC) + timedelta(hours=25))
    r = runner.invoke(insight_app, ["refit-due", "-w", "Shop", "--data-dir", d])
    [failed] = json.loads(r.stdout)
    assert r.exit_code == 1 and failed["model"] == "rfm" and "no orders to score" in failed["error"], r.output
    assert "refit of rfm failed" in " ".join(r.output.split())


def test_refit_when_due(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, _orders(n_customers=8))
    ws = env.ws.workspace_id
    svc = RFMService.from_goldkey(env.gk)
    assert refit_due(env.gk) == []  # no model yet
    svc.run(ws, {"refit_every_hours": 6, "lookback_days": 3650})
    assert refit_due(env.gk) == []  # fitted just now
    later = datetime.now(UTC) + timedelta(hours=7)
    assert refit_due(env.gk, now=later) == [{"workspace_id": ws, "model": "rfm", "version": 2}]
    svc.run(ws, {"refit_every_hours": None, "lookback_days": 3650})
    assert refit_due(env.gk, now=later + timedelta(days=30)) == []
    # a model first run as of a fixed date is refitted as of now (before: the fixed date, for ever)
    svc.run(ws, {"refit_every_hours": 6, "lookback_days": 3650, "as_of": AS_OF.isoformat()})
    assert refit_due(env.gk, now=later + timedelta(days=31)) == [{"workspace_id": ws, "model": "rfm", "version": 5}]
    latest = svc.latest(ws)
    assert latest.version == 5
    assert datetime.fromisoformat(latest.artifact["as_of"]) > datetime.now(UTC) - timedelta(minutes=5)


def test_runs_of_one_model_go_one_after_another(env: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Two runs at once (the schedule's refit and one by hand): before, the first run's slow
    write-back landed after the second's, leaving profiles with v1's scores while the registry said
    v2. Now the second run waits for the first, and the profiles hold the latest version."""
    import threading
    import time

    _import(env, tmp_path, _orders())
    ws = env.ws.workspace_id
    svc = RFMService.from_goldkey(env.gk)
    real = RFMService._write_scores
    calls: list[int] = []

    def slow_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)  # the first run's write-back is slow
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RFMService, "_write_scores", slow_first)
    first = threading.Thread(target=svc.run, args=(ws, {"as_of": AS_OF.isoformat()}))
    first.start()
    time.sleep(0.3)
    second = RFMService.from_goldkey(env.gk).run(ws, {"as_of": AS_OF.isoformat()})
    first.join()
    assert second["version"] == 2 and svc.registry.versions(ws, "rfm") == [1, 2]
    versions = {env.gk.profiles.get(ws, _pid_of(env, f"C{c:03d}"), events=0)["scores"].get("rfm_model_version")
                for c in range(5)}
    assert versions == {2}
