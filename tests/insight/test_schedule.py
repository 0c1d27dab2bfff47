"""The refit schedule: the server refits every model whose refit_every_hours have passed, as of now."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from goldkey.insight.lifecycle import LifecycleService
from goldkey.insight.rfm import RFMService
from goldkey.insight.schedule import RefitScheduler, refit_due

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def _orders(env: Any, tmp: Path, n: int = 40) -> None:
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"])
        for c in range(n):
            for k in range(1 + c % 3):
                at = AS_OF - timedelta(days=5 + 40 * k + c)
                w.writerow([f"O{c}-{k}", at.strftime("%Y-%m-%dT%H:%M:%SZ"), f"C{c}", "S", "care", "1", str(10 + c)])
    assert env.gk.importer.run(env.ws.workspace_id, "orders", path, {}).status == "done"


def test_due_models_are_refitted_as_of_now_and_others_left(env: Any, tmp_path: Path) -> None:
    # before: refit_every_hours was recorded with each model and never acted on (nothing called it)
    _orders(env, tmp_path)
    ws = env.ws.workspace_id
    RFMService.from_goldkey(env.gk).run(ws, {"as_of": AS_OF.isoformat(), "lookback_days": 3650})  # every 24 h
    LifecycleService.from_goldkey(env.gk).run(ws, {"as_of": AS_OF.isoformat(), "refit_every_hours": None})
    assert refit_due(env.gk) == []  # nothing is due yet
    later = datetime.now(UTC) + timedelta(hours=25)
    done = refit_due(env.gk, now=later)
    assert [(d["model"], d["version"]) for d in done] == [("rfm", 2)], done
    latest = RFMService.from_goldkey(env.gk).latest(ws)
    assert latest.version == 2 and datetime.fromisoformat(latest.artifact["as_of"]) > AS_OF + timedelta(days=365)
    assert LifecycleService.from_goldkey(env.gk).latest(ws).version == 1  # by hand only


def test_the_server_thread_looks_on_its_interval(env: Any) -> None:
    sched = RefitScheduler(env.gk, 0.05)
    sched.start()
    try:
        import time

        deadline = time.time() + 10
        while sched.runs < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert sched.runs >= 2
    finally:
        sched.stop()
    assert RefitScheduler(env.gk, 0)._thread is None  # 0: the schedule is off


def test_every_kind_is_scheduled_and_a_failing_refit_stops_no_other(env: Any, tmp_path: Path) -> None:
    """Clusters, affinity, recommendations and feedback text take refit_every_hours too (before: a
    400), and the schedule goes model by model: before, one churn or propensity model whose refit
    failed stopped the models after it, and its error was reported as "churn"."""
    from goldkey.insight.clusters import ClusterService

    _orders(env, tmp_path)
    ws = env.ws.workspace_id
    clusters = ClusterService.from_goldkey(env.gk)
    # features of the last 400 days: fine as of AS_OF, nobody left as of now (a refit that fails)
    clusters.run(ws, {"as_of": AS_OF.isoformat(), "lookback_days": 400, "k": 2, "refit_every_hours": 1,
                      "features": ["recency_days", "order_count", "revenue"]})
    RFMService.from_goldkey(env.gk).run(ws, {"as_of": AS_OF.isoformat(), "lookback_days": 3650})
    done = refit_due(env.gk, now=datetime.now(UTC) + timedelta(hours=25))
    by_model = {d["model"]: d for d in done}
    assert set(by_model) == {"clusters", "rfm"}, done
    assert "customers" in by_model["clusters"]["error"] and by_model["rfm"]["version"] == 2, done
    for kind in ("affinity", "recommend", "feedback_text"):
        from goldkey.insight import affinity, recommend, text

        parse = {"affinity": affinity.parse_definition, "recommend": recommend.parse_definition,
                 "feedback_text": text.parse_definition}[kind]
        assert parse({"refit_every_hours": 12}).refit_every_hours == 12
