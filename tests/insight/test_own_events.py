"""Goldkey's own events (tag and segment changes, lifecycle transitions, messages sent, service alerts)
are never counted as a customer's activity: not in churn labels and features, not in cohort
retention, not among the dashboard's active customers. A model run that writes a Tag Changed event
for every customer must not make every customer look active."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from goldkey.activate.receipts import _EVENT as RECEIPT_EVENTS
from goldkey.api.console import overview
from goldkey.audience.common import NOT_CUSTOMER_ACTIVITY, emit_events
from goldkey.core.clock import utcnow
from goldkey.insight.churn import ChurnService
from goldkey.insight.features import customer_features
from goldkey.insight.lifecycle import TRANSITION_EVENT
from goldkey.insight.reports import cohorts
from goldkey.insight.rfm import RFMService
from goldkey.insight.text import ALERT_EVENT

OWN = ["Tag Changed", "segment_entered", TRANSITION_EVENT, "Message Sent", "Message Delivered", "Message Failed",
       ALERT_EVENT]


def _emit(env, rows, at: datetime) -> None:  # type: ignore[no-untyped-def]
    ws = env.ws.workspace_id

    def run(ctx):  # type: ignore[no-untyped-def]
        with ctx.analytical.transaction() as con:
            return emit_events(ctx.analytical, con, ws, rows, "test", at)

    env.gk.writer.run_command(run)


def _profiles(env) -> list[str]:  # type: ignore[no-untyped-def]
    with env.gk.engine.connect() as c:
        return [r[0] for r in c.exec_driver_sql(
            "SELECT profile_id FROM profiles WHERE workspace_id = ? ORDER BY profile_id",
            (env.ws.workspace_id,)).all()]


def test_the_list_names_every_event_goldkey_writes_about_a_customer() -> None:
    assert set(OWN) <= set(NOT_CUSTOMER_ACTIVITY)
    # what a customer did with a message is the customer's activity
    for status in ("opened", "clicked", "replied", "unsubscribed"):
        assert RECEIPT_EVENTS[status] not in NOT_CUSTOMER_ACTIVITY


def test_features_cohorts_and_dashboard_leave_own_events_out(env) -> None:  # type: ignore[no-untyped-def]
    ws = env.ws.workspace_id
    batch = [{"type": "track", "userId": f"u{i}", "event": "Viewed", "messageId": f"m{i}",
              "timestamp": f"2024-01-{10 + i:02d}T10:00:00Z", "properties": {}} for i in range(4)]
    assert env.post("/v1/batch", {"batch": batch}).status_code == 200
    pids = _profiles(env)
    assert len(pids) == 4
    march = datetime(2024, 3, 5, tzinfo=UTC)
    _emit(env, [(p, name, {}) for p in pids for name in OWN], march)
    # the first customer opened the message: that is activity
    _emit(env, [(pids[0], "Message Opened", {})], march)

    feats = customer_features(env.gk.analytical, ws, datetime(2024, 4, 1, tzinfo=UTC), 365)
    rows = {r["profile_id"]: r for r in feats.iter_rows(named=True)}
    assert rows[pids[0]]["events_total"] == 2  # Viewed + Message Opened
    assert rows[pids[0]]["active_days"] == 2
    for p in pids[1:]:
        assert rows[p]["events_total"] == 1, rows[p]
        assert rows[p]["distinct_event_types"] == 1
        assert 78 < rows[p]["days_since_last_event"] < 83  # a January event, not the March ones (27 days)

    rep = cohorts(env.gk.analytical, ws, {"cohort_by": "first_event", "activity": "event", "periods": 3,
                                          "end": "2024-06-01T00:00:00Z"})
    (jan,) = [c for c in rep["cohorts"] if c["cohort"].startswith("2024-01")]
    assert jan["size"] == 4
    assert jan["pct"][2] == 25.0  # only the customer who opened the message was active in March

    ov = overview(env.gk, ws, days=30, as_of=datetime(2024, 3, 20, tzinfo=UTC))
    assert ov["active"] == 1


def test_a_model_run_does_not_make_churned_customers_look_active(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ws = env.ws.workspace_id
    now = utcnow()
    rng = random.Random(1)
    rows = []
    for i in range(200):
        last = rng.uniform(1, 80) if i % 2 == 0 else rng.uniform(100, 300)  # days ago
        for k in range(rng.randint(2, 5)):
            rows.append([f"O{i}_{k}", (now - timedelta(days=last + 40 * k)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         f"u{i}", "S", "lens", "1", rng.choice([50, 120, 300])])
    p = tmp_path / "orders.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "user_id", "sku", "category", "quantity", "unit_price"])
        w.writerows(rows)
    assert env.gk.importer.run(ws, "orders", p, {}).status == "done"
    svc = ChurnService.from_goldkey(env.gk)
    d = {"use_feedback": False, "classifier": {"n_estimators": 30, "cv_folds": 2}}
    before = svc.train_churn(ws, d)
    assert before["positives"] > 50
    # an RFM run writes a Tag Changed event for every customer, stamped now (inside the label window)
    RFMService.from_goldkey(env.gk).run(ws, {})
    n_tag_events = env.gk.analytical.query(
        "SELECT count(*) FROM events WHERE workspace_id = ? AND event = 'Tag Changed'", [ws])[0][0]
    assert n_tag_events >= 200
    after = svc.train_churn(ws, d)
    assert (after["labelled"], after["positives"]) == (before["labelled"], before["positives"])
