"""The console's server side: the overview aggregate and catalogs (checked against an independent
computation over data loaded through the tracking API and the order importer), and the SPA serving
rules (index fallback, assets, never shadowing the API, a clear page when the build is missing)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

NOW = datetime.now(UTC).replace(microsecond=0)
AS_OF = NOW + timedelta(minutes=1)

# user -> days ago of their tracked events (Product Viewed); 45 days is outside a 30-day window
EVENTS = {"u0": [1, 3], "u1": [2, 40], "u2": [45, 60], "u3": [10], "u4": [200], "u5": [29]}
# crm id -> (days ago, amount) of their orders
ORDERS = {"C0": [(5, 100.0), (50, 30.5)], "C1": [(70, 999.0)], "C2": [(12, 12.25), (13, 7.75), (400, 5.0)]}


def _iso(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load(env: Any, tmp: Path) -> None:
    batch = []
    for user, days in EVENTS.items():
        for i, d in enumerate(days):
            batch.append({"type": "track", "event": "Product Viewed", "userId": user, "messageId": f"{user}-{i}",
                          "timestamp": _iso(d), "properties": {"category": "lens", "price": 10.5, "promo": True}})
    batch.append({"type": "track", "event": "Signed Up", "userId": "u0", "messageId": "u0-signup",
                  "timestamp": _iso(1), "properties": {"plan": "gold"}})
    r = env.post("/v1/batch", {"batch": batch})
    assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price", "currency"])
        n = 0
        for crm, orders in ORDERS.items():
            for days, amount in orders:
                n += 1
                w.writerow([f"O{n}", _iso(days), crm, "SKU1", "lens", "1", str(amount), "CNY"])
    s = env.gk.importer.run(env.ws.workspace_id, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s


def _expected(days: int) -> dict[str, Any]:
    """The same figures computed directly from the test's own data."""
    activity = {u: list(ds) for u, ds in EVENTS.items()}
    activity.update({c: [d for d, _ in os] for c, os in ORDERS.items()})
    active = {k for k, ds in activity.items() if any(d < days for d in ds)}
    new = {k for k in active if all(d < days for d in activity[k])}
    in_window = [(d, a) for os in ORDERS.values() for d, a in os if d < days]
    return {
        "customers": len(EVENTS) + len(ORDERS),
        "active": len(active),
        "active_new": len(new),
        "active_returning": len(active - new),
        "revenue": round(sum(a for _, a in in_window), 2),
        "orders": len(in_window),
        "buyers": sum(1 for os in ORDERS.values() if any(d < days for d, _ in os)),
        "revenue_all_time": round(sum(a for os in ORDERS.values() for _, a in os), 2),
        "orders_all_time": sum(len(os) for os in ORDERS.values()),
    }


def test_overview_matches_an_independent_count(env: Any, tmp_path: Path) -> None:
    _load(env, tmp_path)
    # Goldkey's own events (Tag Changed, at "now") must not make old customers active
    tag = {"name": "viewer", "kind": "rule", "value_type": "boolean", "category": "dynamic",
           "rules": [{"value": True, "rule": {"kind": "event", "event": "Product Viewed"}}]}
    assert env.client.post("/api/v1/tags", json=tag, headers=env.admin_auth()).status_code == 201
    assert env.client.post("/api/v1/tags/viewer/compute", headers=env.admin_auth()).status_code == 200

    for days in (30, 90, 365):
        r = env.client.get("/api/v1/console/overview",
                           params={"days": days, "as_of": AS_OF.isoformat(), "tz": "UTC"},
                           headers=env.admin_auth())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["timezone"] == "UTC"
        want = _expected(days)
        assert {k: body[k] for k in want} == want, days
        assert body["customers_existing"] == len(ORDERS) and body["customers_new"] == len(EVENTS)
        assert body["currency"] == "CNY" and body["currencies"] == 1
        assert len(body["daily_active"]) == days and body["daily_active"][-1]["day"] == AS_OF.strftime("%Y-%m-%d")
        # the busiest day in the window has at most `active` customers, and every active one shows up
        assert max(d["active"] for d in body["daily_active"]) <= body["active"]
        assert sum(d["active"] for d in body["daily_active"]) >= body["active"]
    months = body["monthly_revenue"]
    assert len(months) == 12 and months[-1]["month"] == AS_OF.strftime("%Y-%m")
    last_year = sum(a for os in ORDERS.values() for d, a in os if NOW - timedelta(days=d) >= _first_month_start())
    assert round(sum(m["revenue"] for m in months), 2) == round(last_year, 2)
    assert body["last_activity_at"] == _iso(1)


def test_overview_follows_the_workspaces_calendar(env: Any, tmp_path: Path) -> None:
    # before: days and months were cut at UTC midnight; orders at 00:30 and 07:59 Beijing time on
    # 1 July showed as June revenue and the day as 30 June
    path = tmp_path / "orders.csv"
    path.write_text("order_id,ordered_at,crm_id,sku,category,quantity,unit_price\n"
                    "J1,2025-07-01 00:30,C1,S,lens,1,300\nJ2,2025-07-01 07:59,C2,S,lens,1,400\n"
                    "J3,2025-06-30 23:59,C3,S,lens,1,50\n", encoding="utf-8")
    assert env.gk.importer.run(env.ws.workspace_id, "orders", path, {}).quarantined == 0  # Beijing wall clock
    r = env.client.get("/api/v1/console/overview", params={"days": 3, "as_of": "2025-07-01T12:00:00+08:00"},
                       headers=env.admin_auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "Asia/Shanghai"  # the send policy's default
    months = {m["month"]: (m["revenue"], m["orders"]) for m in body["monthly_revenue"]}
    assert months["2025-07"] == (700.0, 2) and months["2025-06"] == (50.0, 1)
    assert [d["day"] for d in body["daily_active"]] == ["2025-06-29", "2025-06-30", "2025-07-01"]
    assert [d["active"] for d in body["daily_active"]] == [0, 1, 2]
    cohorts = env.client.post("/api/v1/insights/reports/cohorts", json={"end": "2025-07-02T00:00:00+08:00"},
                              headers=env.admin_auth()).json()
    assert cohorts["tz"] == "Asia/Shanghai"
    assert {c["cohort"]: c["size"] for c in cohorts["cohorts"]} == {"2025-06": 1, "2025-07": 2}
    r = env.client.get("/api/v1/console/overview", params={"tz": "Mars/Olympus"}, headers=env.admin_auth())
    assert r.status_code == 400 and r.json()["field"] == "tz"


def _first_month_start() -> datetime:
    y, m = AS_OF.year, AS_OF.month - 11
    while m <= 0:
        y, m = y - 1, m + 12
    return datetime(y, m, 1, tzinfo=UTC)


def test_overview_of_an_empty_workspace_and_bad_input(env: Any) -> None:
    r = env.client.get("/api/v1/console/overview", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customers"] == 0 and body["active"] == 0 and body["revenue"] == 0
    assert body["currency"] is None and body["last_activity_at"] is None
    assert all(m["orders"] == 0 for m in body["monthly_revenue"])
    bad = env.client.get("/api/v1/console/overview", params={"days": 0}, headers=env.admin_auth())
    assert bad.status_code == 422 and bad.json()["field"] == "query.days"
    assert env.client.get("/api/v1/console/overview").status_code == 401
    assert env.client.get("/api/v1/console/events").status_code == 401


def test_event_catalog_and_coverage(env: Any, tmp_path: Path) -> None:
    _load(env, tmp_path)
    r = env.client.get("/api/v1/console/events", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    events = {e["event"]: e for e in r.json()["events"]}
    assert events["Product Viewed"]["count"] == sum(len(v) for v in EVENTS.values())
    assert events["Signed Up"]["count"] == 1
    props = {p["name"]: p["type"] for p in events["Product Viewed"]["properties"]}
    assert props == {"category": "string", "price": "number", "promo": "boolean"}
    assert list(events)[0] == "Product Viewed"  # most frequent first

    tag = {"name": "recent_viewer", "kind": "rule", "value_type": "boolean", "category": "dynamic",
           "rules": [{"value": True,
                      "rule": {"kind": "event", "event": "Product Viewed", "window": {"last_days": 30}}}]}
    assert env.client.post("/api/v1/tags", json=tag, headers=env.admin_auth()).status_code == 201
    assert env.client.post("/api/v1/tags/recent_viewer/compute", headers=env.admin_auth()).status_code == 200
    cov = env.client.get("/api/v1/console/coverage", headers=env.admin_auth()).json()
    single = env.client.get("/api/v1/tags/recent_viewer/coverage", headers=env.admin_auth()).json()
    assert cov["fields"]["tags.recent_viewer"] == single["tagged"] == 4  # u0, u1, u3, u5
    assert cov["total_profiles"] == len(EVENTS) + len(ORDERS)


# -- serving the SPA ----------------------------------------------------------------------------------


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><div id=root>goldkey-console</div>", encoding="utf-8")
    (root / "assets" / "app-123.js").write_text("console.log(1)", encoding="utf-8")
    (root / "robots.txt").write_text("User-agent: *", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT", encoding="utf-8")
    monkeypatch.setenv("GOLDKEY_CONSOLE_DIR", str(root))
    return root


def test_spa_fallback_assets_and_api_untouched(env: Any, build: Path) -> None:
    c = env.client
    for path in ("/", "/customers/prf_123", "/segments/new", "/sign-in"):
        r = c.get(path)
        assert r.status_code == 200 and "goldkey-console" in r.text, path
        assert r.headers["cache-control"] == "no-cache"
    a = c.get("/assets/app-123.js")
    assert a.status_code == 200 and a.text == "console.log(1)" and "immutable" in a.headers["cache-control"]
    assert c.get("/robots.txt").text == "User-agent: *"
    assert c.get("/assets/missing-1.js").status_code == 404
    assert c.get("/favicon.ico").status_code == 404
    assert "TOP-SECRET" not in c.get("/..%2fsecret.txt").text
    assert "TOP-SECRET" not in c.get("/assets/..%2f..%2fsecret.txt").text
    # the API's prefixes are never answered with the SPA
    for path in ("/api/v1/nope", "/api", "/v1/nope", "/t/abc", "/metrics/x", "/docs/x"):
        r = c.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json"), path
    r = c.get("/api/v1/insights/rfm/run")  # exists for POST only
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert c.get("/healthz").json()["status"] in ("ok", "degraded")
    assert c.get("/api/v1/workspace", headers=env.admin_auth()).json()["workspace_id"] == env.ws.workspace_id
    assert "swagger" in c.get("/docs").text.lower()
    assert c.get("/openapi.json").json()["paths"]["/api/v1/console/overview"]


def test_missing_build_explains_how_to_build(env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOLDKEY_CONSOLE_DIR", str(tmp_path / "nothing-here"))
    for path in ("/", "/customers/prf_1"):
        r = env.client.get(path)
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
        assert "make console" in r.text and "npm ci" in r.text
    assert env.client.get("/healthz").status_code == 200


def test_rfm_grid_counts_the_scores_rfm_wrote(env: Any, tmp_path: Path) -> None:
    empty = env.client.get("/api/v1/console/rfm-grid", headers=env.admin_auth())
    assert empty.status_code == 200, empty.text
    assert empty.json()["version"] is None and empty.json()["scored"] == 0 and len(empty.json()["cells"]) == 25
    path = tmp_path / "rfm-orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price", "currency"])
        for i in range(40):  # customer i: i % 6 + 1 orders, the last one i * 9 days ago
            for k in range(i % 6 + 1):
                w.writerow([f"R{i}-{k}", _iso(i * 9 + k * 30 + 1), f"K{i}", "SKU1", "lens", "1", str(50 + i), "CNY"])
    assert env.gk.importer.run(env.ws.workspace_id, "orders", path, {}).status == "done"
    run = env.client.post("/api/v1/insights/rfm/run", json={}, headers=env.admin_auth())
    assert run.status_code == 200, run.text
    grid = env.client.get("/api/v1/console/rfm-grid", headers=env.admin_auth()).json()
    assert grid["version"] == run.json()["version"] and grid["scored"] == run.json()["profiles"] == 40
    # independently: every profile's scores through the profile API
    expected: dict[tuple[int, int], int] = {}
    for i in range(40):
        prof = env.client.get("/api/v1/profiles/lookup", params={"crm_id": f"K{i}"}, headers=env.admin_auth()).json()
        sc = prof["scores"]
        expected[(sc["rfm_r"], sc["rfm_f"])] = expected.get((sc["rfm_r"], sc["rfm_f"]), 0) + 1
    assert {(c["r"], c["f"]): c["profiles"] for c in grid["cells"] if c["profiles"]} == expected
    groups = {g["group"]: g["profiles"] for g in grid["groups"]}
    assert groups == {k: v for k, v in run.json()["metrics"]["groups"].items()}
    assert next(g for g in grid["groups"] if g["group"] == "champions")["zh"] == "冠军客户（重要价值客户）"
    assert env.client.get("/api/v1/console/rfm-grid").status_code == 401
