"""Refunded and cancelled orders are no purchases, for every model that counts purchases: RFM,
lifecycle, CLV, the shared customer features, churn and propensity labels, clusters, cross-sell."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from goldkey.insight.affinity import load_lines
from goldkey.insight.churn import ChurnService
from goldkey.insight.clv import load_summary
from goldkey.insight.clv import parse_definition as clv_definition
from goldkey.insight.features import customer_features
from goldkey.insight.lifecycle import compute_features
from goldkey.insight.purchases import excluded_statuses
from goldkey.insight.rfm import compute_rfm

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def _at(days: float) -> str:
    return (AS_OF - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(env: Any, tmp: Path) -> dict[str, str]:
    # B and C: one real purchase long ago, then only a refund / a cancelled order recently;
    # A..E: five customers so RFM may score them; D buys twice, E once
    rows = [
        ["O1", _at(300), "A", "S1", "care", "1", "100", "paid"],
        ["O2", _at(200), "A", "S1", "care", "1", "100", "paid"],
        ["O3", _at(10), "A", "S1", "care", "-1", "-50", "Refunded"],
        ["O4", _at(300), "B", "S2", "lens", "1", "300", "paid"],
        ["O5", _at(20), "B", "S3", "care", "-1", "-30", "退款"],
        ["O6", _at(250), "C", "S2", "lens", "1", "300", "paid"],
        ["O7", _at(15), "C", "S3", "care", "1", "30", "Cancelled "],
        ["O8", _at(100), "D", "S2", "lens", "1", "300", "paid"],
        ["O9", _at(50), "D", "S3", "care", "1", "30", ""],
        ["O10", _at(40), "E", "S3", "care", "1", "30", "unpaid"],
    ]
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price", "status"])
        w.writerows(rows)
    s = env.gk.importer.run(env.ws.workspace_id, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s
    out = {}
    for crm in "ABCDE":
        r = env.client.get("/api/v1/profiles/lookup", params={"crm_id": crm}, headers=env.admin_auth())
        out[crm] = r.json()["profile_id"]
    return out


def test_refunds_and_cancellations_are_no_purchases_anywhere(env: Any, tmp_path: Path) -> None:
    # before: a refund was an order like any other: a lapsed customer's refund made them "active",
    # a refund of care was "bought care", and it added to frequency and moved recency
    pid = _load(env, tmp_path)
    ws, an = env.ws.workspace_id, env.gk.analytical
    assert {"refunded", "退款", "cancelled"} <= set(excluded_statuses())
    assert "unpaid" in excluded_statuses(["Unpaid "]) and "unpaid" not in excluded_statuses()

    rfm = {r["profile_id"]: r for r in compute_rfm(an, ws, {}, AS_OF).to_pylist()}
    assert (rfm[pid["A"]]["frequency"], rfm[pid["A"]]["monetary"]) == (2, 200.0)
    assert rfm[pid["B"]]["frequency"] == 1 and rfm[pid["B"]]["recency_days"] >= 299
    assert rfm[pid["C"]]["frequency"] == 1 and rfm[pid["C"]]["recency_days"] >= 249

    lc = {r["profile_id"]: r for r in compute_features(an, ws, {}, AS_OF).to_pylist()}
    assert lc[pid["B"]]["lc_days_since_last"] >= 299 and lc[pid["C"]]["lc_orders_total"] == 1

    clv = {r["profile_id"]: r for r in load_summary(an, ws, clv_definition({}), AS_OF).to_dicts()}
    assert clv[pid["A"]]["frequency"] == 1 and clv[pid["A"]]["monetary"] == 100.0
    assert clv[pid["B"]]["frequency"] == 0

    f = {r["profile_id"]: r for r in customer_features(an, ws, AS_OF, 365).to_dicts()}
    assert f[pid["A"]]["order_count"] == 2 and f[pid["B"]]["order_count"] == 1 and f[pid["C"]]["order_count"] == 1

    svc = ChurnService.from_goldkey(env.gk)
    active = svc._ids("orders", ws, AS_OF - timedelta(days=30), AS_OF, [])
    assert pid["B"] not in active and pid["C"] not in active and pid["A"] not in active
    bought_care = svc._ids("category", ws, AS_OF - timedelta(days=30), AS_OF, [], "care")
    assert bought_care == set()
    # a definition's own statuses add to these, whatever their case
    assert pid["E"] not in svc._ids("orders", ws, AS_OF - timedelta(days=60), AS_OF, ["UNPAID"])
    assert pid["E"] in svc._ids("orders", ws, AS_OF - timedelta(days=60), AS_OF, [])

    lines = load_lines(an, ws, until=AS_OF)
    assert set(lines["order_id"].to_list()) == {"O1", "O2", "O4", "O6", "O8", "O9", "O10"}
