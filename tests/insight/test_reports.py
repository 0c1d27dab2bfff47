"""Reports: funnel, cohort retention and acquisition channels against independent pandas
computations, on events tracked through /v1/batch and orders imported through the importer."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from goldkey.core.errors import InvalidInput
from goldkey.insight.reports import channels, cohorts, funnel
from goldkey.insight.writeback import declare_scores, write_scores

T0 = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 9, 1, tzinfo=UTC)
STEPS = ["Product Viewed", "Product Added", "Checkout Started"]
SOURCES = [("wechat", "social"), ("baidu", "cpc"), ("douyin", "video")]


def _data(n_users: int = 48, seed: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tracked events and orders of ``n_users``; some steps out of order or outside the window."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    for i in range(n_users):
        u = f"u{i:03d}"
        src, med = SOURCES[i % 3]
        t = T0 + timedelta(days=rng.uniform(0, 60), minutes=i)
        cat = rng.choice(["lens", "frames"])
        if rng.random() < 0.15:  # an "add" before any view: must not count as step 2
            events.append({"u": u, "event": "Product Added", "ts": t - timedelta(hours=5), "props": {}, "ctx": None})
        ctx = {"campaign": {"source": src, "medium": med}} if i % 7 != 6 else None  # some without a campaign
        events.append({"u": u, "event": "Product Viewed", "ts": t, "props": {"category": cat}, "ctx": ctx})
        events.append({"u": u, "event": "Product Viewed", "ts": t + timedelta(days=1), "props": {"category": cat},
                       "ctx": {"campaign": {"source": "later", "medium": "x"}}})
        if rng.random() < 0.7:
            t2 = t + timedelta(hours=rng.choice([1, 20, 100, 200]))  # 200 h is outside a 7-day window
            events.append({"u": u, "event": "Product Added", "ts": t2, "props": {}, "ctx": None})
            if rng.random() < 0.6:
                events.append({"u": u, "event": "Checkout Started", "ts": t2 + timedelta(hours=rng.choice([2, 30])),
                               "props": {}, "ctx": None})
        if rng.random() < 0.6:
            for k in range(rng.choice([1, 2, 4])):
                at = t + timedelta(days=rng.choice([2, 10]) + 31 * k * rng.choice([1, 2]))
                if at < END:
                    orders.append({"order_id": f"O{len(orders):04d}", "u": u, "at": at,
                                   "amount": rng.choice([99, 250, 800])})
        if i % 5 == 0:  # an order before the first touch: not credited to the channel
            orders.append({"order_id": f"O{len(orders):04d}", "u": u, "at": T0 - timedelta(days=20), "amount": 50})
    return events, orders


def _load(env: Any, tmp: Path, events: list[dict[str, Any]], orders: list[dict[str, Any]]) -> None:
    batch = []
    for j, e in enumerate(events):
        msg: dict[str, Any] = {"type": "track", "userId": e["u"], "event": e["event"], "messageId": f"m{j}",
                               "timestamp": e["ts"].isoformat().replace("+00:00", "Z"), "properties": e["props"]}
        if e["ctx"]:
            msg["context"] = e["ctx"]
        batch.append(msg)
    for i in range(0, len(batch), 100):
        r = env.client.post("/v1/batch", json={"batch": batch[i:i + 100]}, headers=env.write_auth())
        assert r.status_code == 200, r.text
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "user_id", "sku", "category", "quantity", "unit_price", "status"])
        for o in orders:
            w.writerow([o["order_id"], o["at"].strftime("%Y-%m-%dT%H:%M:%SZ"), o["u"], "S", "lens", "1", o["amount"],
                        o.get("status", "")])
    s = env.gk.importer.run(env.ws.workspace_id, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s


def _ref_funnel(events: list[dict[str, Any]], start: datetime, end: datetime, window: timedelta,
                where_cat: str | None = None) -> list[tuple[int, float | None]]:
    df = pd.DataFrame(events)
    counts = [0] * len(STEPS)
    gaps: list[list[float]] = [[] for _ in STEPS]
    for _, g in df.groupby("u"):
        g = g.sort_values("ts")
        first = g[(g.event == STEPS[0]) & (g.ts >= start) & (g.ts < end)]
        if where_cat:
            first = first[[p.get("category") == where_cat for p in first.props]]
        if first.empty:
            continue
        t1 = prev = first.ts.iloc[0]
        counts[0] += 1
        for i, name in enumerate(STEPS[1:], start=1):
            nxt = g[(g.event == name) & (g.ts > prev) & (g.ts <= t1 + window)]
            if nxt.empty:
                break
            counts[i] += 1
            gaps[i].append((nxt.ts.iloc[0] - prev).total_seconds())
            prev = nxt.ts.iloc[0]
    return [(c, float(pd.Series(gp).median()) if gp else None) for c, gp in zip(counts, gaps, strict=True)]



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

def test_funnel_matches_pandas_with_window_order_filters_and_breakdown(env: Any, tmp_path: Path) -> None:
    events, orders = _data()
    _load(env, tmp_path, events, orders)
    ws = env.ws.workspace_id
    start, end = T0, T0 + timedelta(days=45)
    rep = funnel(env.gk.analytical, ws, {"steps": [{"event": s} for s in STEPS], "start": start, "end": end,
                                         "window_days": 7, "breakdown": "properties.category"})
    ref = _ref_funnel(events, start, end, timedelta(days=7))
    assert [(s["profiles"], s["median_seconds_from_previous"]) for s in rep["steps"]] == ref
    assert ref[1][0] < ref[0][0] and ref[2][0] > 0  # the data exercises drop-off
    assert rep["steps"][1]["conversion_pct"] == round(100 * ref[1][0] / ref[0][0], 2)
    by = {g["value"]: g for g in rep["breakdown"]["groups"]}
    for cat in ("lens", "frames"):
        assert [s["profiles"] for s in by[cat]["steps"]] == [c for c, _ in _ref_funnel(events, start, end,
                                                                                        timedelta(days=7), cat)]
    filtered = funnel(env.gk.analytical, ws, {"steps": [{"event": STEPS[0], "where": [
        {"property": "category", "value": "lens"}]}, {"event": STEPS[1]}], "start": start, "end": end})
    assert [s["profiles"] for s in filtered["steps"]] == [c for c, _ in _ref_funnel(
        events, start, end, timedelta(days=7), "lens")[:2]]
    by_source = funnel(env.gk.analytical, ws, {"steps": [{"event": s} for s in STEPS[:2]], "start": start,
                                               "end": end, "breakdown": "context.campaign.source"})
    assert {g["value"] for g in by_source["breakdown"]["groups"]} == {"wechat", "baidu", "douyin", None}
    with pytest.raises(InvalidInput) as e:
        funnel(env.gk.analytical, ws, {"steps": [{"event": STEPS[0]}, {"event": "Product Teleported"}]})
    assert e.value.field == "steps[1].event" and "Product Teleported" in e.value.message
    with pytest.raises(InvalidInput) as e:
        funnel(env.gk.analytical, ws, {"steps": [{"event": STEPS[0]}]})
    assert e.value.field == "steps"
    with pytest.raises(InvalidInput) as e:
        funnel(env.gk.analytical, ws, {"steps": [{"event": s} for s in STEPS], "breakdown": "properties.a-b"})
    assert e.value.field == "breakdown"


def test_cohort_retention_matches_pandas(env: Any, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    with pytest.raises(InvalidInput) as e:
        cohorts(env.gk.analytical, ws, {})
    assert "no orders" in e.value.message
    events, orders = _data(seed=8)
    _load(env, tmp_path, events, orders)
    rep = cohorts(env.gk.analytical, ws, {"period": "month", "periods": 6, "end": END})
    df = pd.DataFrame(orders)
    df["month"] = df["at"].dt.tz_convert(None).dt.to_period("M")
    first = df.groupby("u")["month"].min().rename("cohort")
    df = df.join(first, on="u")
    df["off"] = [(m - c).n for m, c in zip(df.month, df.cohort, strict=True)]
    ref = df[df.off < 6].groupby(["cohort", "off"])["u"].nunique()
    sizes = first.value_counts()
    got = {c["cohort"]: c for c in rep["cohorts"]}
    assert set(got) == {str(c) for c in sizes.index}
    for cohort, c in got.items():
        p = pd.Period(cohort, "M")
        assert c["size"] == sizes[p]
        # months that had not begun by END (2024-09-01, a month boundary) are unknown, not 0 %
        elapsed = (pd.Period("2024-08", "M") - p).n + 1
        assert c["counts"] == [int(ref.get((p, k), 0)) if k < elapsed else None for k in range(6)]
        assert c["periods_elapsed"] == min(elapsed, 6) and c["partial_last"] is False
        assert c["counts"][0] == c["size"] and c["pct"][0] == 100.0
    weekly = cohorts(env.gk.analytical, ws, {"cohort_by": "first_event", "activity": "event", "period": "week",
                                             "periods": 4, "end": END, "tz": "Asia/Shanghai"})
    assert sum(c["size"] for c in weekly["cohorts"]) == df.u.nunique() + len({e["u"] for e in events} - set(df.u))
    assert all(c["cohort"].count("-W") == 1 for c in weekly["cohorts"])
    with pytest.raises(InvalidInput) as e:
        cohorts(env.gk.analytical, ws, {"tz": "Mars/Olympus"})
    assert e.value.field == "tz"


def test_a_cohort_nobody_came_back_from_is_listed_with_zeros(env: Any, tmp_path: Path) -> None:
    # before: the sizes were joined to the activity, so a month of sign-ups who never ordered was
    # missing from the table (its 0 % retention was the news), and with no orders at all it failed
    t0 = datetime(2024, 3, 4, 10, tzinfo=UTC)
    signups = [{"u": f"m{i}", "event": "Signed Up", "ts": t0 + timedelta(days=i), "props": {}, "ctx": None}
               for i in range(4)]
    signups += [{"u": f"a{i}", "event": "Signed Up", "ts": t0 + timedelta(days=32 + i), "props": {}, "ctx": None}
                for i in range(3)]
    orders = [{"order_id": f"O{i}", "at": t0 + timedelta(days=40), "u": f"m{i}", "amount": "10"} for i in range(2)]
    _load(env, tmp_path, signups, orders)
    rep = cohorts(env.gk.analytical, env.ws.workspace_id, {"cohort_by": "first_event", "activity": "order",
                                                          "period": "month", "periods": 3, "end": "2024-06-01"})
    assert [(c["cohort"], c["size"], c["counts"], c["pct"]) for c in rep["cohorts"]] == [
        ("2024-03", 4, [0, 2, 0], [0.0, 50.0, 0.0]), ("2024-04", 3, [0, 0, None], [0.0, 0.0, None])]
    # and a period that has not begun is unknown, not 0 %; the one holding `end` is marked partial
    # (before: the months after `end` showed 0 %)
    mid = cohorts(env.gk.analytical, env.ws.workspace_id, {"cohort_by": "first_event", "activity": "order",
                                                          "period": "month", "periods": 3, "end": "2024-04-15"})
    assert [(c["cohort"], c["counts"], c["partial_last"]) for c in mid["cohorts"]] == [
        ("2024-03", [0, 2, None], True), ("2024-04", [0, None, None], True)]


def test_cohorts_count_purchases_only_and_read_a_bare_end_in_tz(env: Any, tmp_path: Path) -> None:
    """A refunded or cancelled order is no purchase (docs/insight.md): it opens no cohort and is no
    return. Before, a January refund made its customer a January cohort member and a cancelled
    February order showed as 50 % month-1 retention."""
    at = datetime(2024, 1, 10, 4, tzinfo=UTC)
    orders = [
        {"order_id": "Z0", "at": at, "u": "z", "amount": "10", "status": "refunded"},  # z first buys in February
        {"order_id": "Z1", "at": at + timedelta(days=26), "u": "z", "amount": "10"},
        {"order_id": "W1", "at": at, "u": "w", "amount": "10"},
        {"order_id": "W2", "at": at + timedelta(days=31), "u": "w", "amount": "10", "status": "已取消"},
        {"order_id": "V1", "at": at, "u": "v", "amount": "10"},
    ]
    _load(env, tmp_path, [], orders)
    ws = env.ws.workspace_id
    rep = cohorts(env.gk.analytical, ws, {"period": "month", "periods": 3, "end": "2024-04-01T00:00:00Z"})
    assert [(c["cohort"], c["size"], c["counts"]) for c in rep["cohorts"]] == [
        ("2024-01", 2, [2, 0, 0]), ("2024-02", 1, [1, 0, None])]
    # an end without an offset is midnight in tz: April has not begun in Shanghai (before: read as
    # UTC, 08:00 on April 1st there, so April showed as a running period)
    local = cohorts(env.gk.analytical, ws, {"period": "month", "periods": 4, "end": "2024-04-01T00:00:00",
                                            "tz": "Asia/Shanghai"})
    assert [(c["cohort"], c["counts"], c["partial_last"]) for c in local["cohorts"]] == [
        ("2024-01", [2, 0, 0, None], False), ("2024-02", [1, 0, None, None], False)]


def test_channels_match_pandas_with_clv_and_costs(env: Any, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    with pytest.raises(InvalidInput):
        channels(env.gk.engine, env.gk.analytical, ws, {})
    events, orders = _data(seed=5)
    _load(env, tmp_path, events, orders)
    pid = {r[1]: r[0] for r in env.gk.engine.connect().exec_driver_sql(
        "SELECT profile_id, id_value FROM identities WHERE workspace_id = ? AND id_type = 'user_id'", (ws,)).all()}
    clv = {u: 100.0 + 10 * i for i, u in enumerate(sorted(pid)) if i % 2 == 0}
    declare_scores(env.gk.engine, ws, {"clv_value": "CLV"}, "clv", 1)
    write_scores(env.gk, ws, ["clv_value"], {pid[u]: {"clv_value": v} for u, v in clv.items()})
    rep = channels(env.gk.engine, env.gk.analytical, ws, {"end": END, "costs": {"wechat": 1200.0, "tiktok": 5}})
    ev = pd.DataFrame([e for e in events if e["ctx"]]).sort_values("ts")
    touch = ev.groupby("u").first()
    od = pd.DataFrame(orders)
    got = {(c["source"], c["medium"]): c for c in rep["channels"]}
    for (src, med), g in touch.assign(src=[c["campaign"]["source"] for c in touch.ctx],
                                      med=[c["campaign"]["medium"] for c in touch.ctx]).groupby(["src", "med"]):
        c = got[(src, med)]
        # a profile that had bought before its touch was not acquired by the channel
        first = od.groupby("u")["at"].min()
        existing = {u for u in g.index if u in first.index and first[u] < g.loc[u, "ts"]}
        new = g[~g.index.isin(existing)]
        credited = od.merge(new[["ts"]], left_on="u", right_index=True)
        credited = credited[credited["at"] >= credited["ts"]]
        assert c["customers"] == len(new) and c["converted"] == credited.u.nunique()
        assert c["existing_customers"] == len(existing)
        assert c["revenue"] == pytest.approx(credited.amount.sum())
        vals = [clv[u] for u in new.index if u in clv]
        assert c["avg_clv"] == round(sum(vals) / len(vals), 2) and c["customers_with_clv"] == len(vals)
        if src == "wechat":
            assert c["cac"] == pytest.approx(round(1200 / c["converted"], 2))
            assert c["roas"] == pytest.approx(round(c["revenue"] / 1200, 3))
        else:
            assert c["cost"] is None and c["cac"] is None
    assert set(got) == {(s, m) for s, m in touch.ctx.map(lambda c: (c["campaign"]["source"], c["campaign"]["medium"]))}
    assert rep["costs_without_channel"] == ["tiktok"] and rep["clv_available"]
    with pytest.raises(InvalidInput) as e:
        channels(env.gk.engine, env.gk.analytical, ws, {"costs": {"wechat": -1}})
    assert e.value.field == "costs"


def test_api(env: Any, tmp_path: Path) -> None:
    mount_insights(env.client.app)
    events, orders = _data(n_users=15, seed=1)
    _load(env, tmp_path, events, orders)
    h = env.admin_auth()
    body = {"steps": [{"event": s} for s in STEPS], "start": T0.isoformat(), "end": END.isoformat()}
    r = env.client.post("/api/v1/insights/reports/funnel", json=body, headers=h)
    assert r.status_code == 200, r.text
    assert [s["profiles"] for s in r.json()["steps"]] == [c for c, _ in _ref_funnel(events, T0, END,
                                                                                     timedelta(days=7))]
    r = env.client.post("/api/v1/insights/reports/funnel", json={"steps": [{"event": "Nope"}, {"event": "X"}]},
                        headers=h)
    assert r.status_code == 400 and r.json()["field"] == "steps[0].event"
    r = env.client.post("/api/v1/insights/reports/cohorts", json={"period": "week", "periods": 3}, headers=h)
    assert r.status_code == 200 and r.json()["offsets"] == [0, 1, 2]
    r = env.client.get("/api/v1/insights/reports/channels", params={"cost": ["wechat:300"]}, headers=h)
    assert r.status_code == 200, r.text
    wechat = [c for c in r.json()["channels"] if c["source"] == "wechat"]
    assert wechat and wechat[0]["cost"] == 300.0
    r = env.client.get("/api/v1/insights/reports/channels", params={"cost": ["wechat"]}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "cost"


def test_a_source_cost_is_spent_once_over_all_its_media(env: Any, tmp_path: Path) -> None:
    """A cost named by a source alone covers that source's media together: its CAC is the cost over
    all their converted customers, never the whole cost charged to each medium."""
    ws = env.ws.workspace_id
    touches = {"a": ("baidu", "cpc"), "b": ("baidu", "cpc"), "c": ("baidu", "organic"), "d": ("baidu", "organic"),
               "e": ("wechat", "social")}
    events = [{"u": u, "event": "Landed", "ts": T0 + timedelta(days=i), "props": {},
               "ctx": {"campaign": {"source": s, "medium": m}}} for i, (u, (s, m)) in enumerate(touches.items())]
    orders = [{"order_id": f"o{u}", "u": u, "at": T0 + timedelta(days=20), "amount": 100 + i}
              for i, u in enumerate("abce")]  # d never orders
    _load(env, tmp_path, events, orders)
    rep = channels(env.gk.engine, env.gk.analytical, ws, {"end": END, "costs": {"baidu": 1200.0, "wechat": 50}})
    rows = {(c["source"], c["medium"]): c for c in rep["channels"]}
    for med in ("cpc", "organic"):
        assert rows[("baidu", med)]["cost_key"] == "baidu"
        assert rows[("baidu", med)]["cost"] is None and rows[("baidu", med)]["cac"] is None
    assert (rows[("wechat", "social")]["cost"], rows[("wechat", "social")]["cac"]) == (50, 50.0)
    spend = {s["key"]: s for s in rep["spend"]}
    assert spend["baidu"] == {"key": "baidu", "channels": 2, "customers": 4, "converted": 3, "revenue": 303.0,
                              "cost": 1200.0, "cac": 400.0, "roas": round(303 / 1200, 3)}
    assert sum(s["cost"] for s in rep["spend"]) == 1250.0  # what was entered, counted once
    # a medium's own cost covers it; the source's cost covers the rest of the source
    rep = channels(env.gk.engine, env.gk.analytical, ws,
                   {"end": END, "costs": {"baidu": 1000.0, "baidu/organic": 200.0}})
    rows = {(c["source"], c["medium"]): c for c in rep["channels"]}
    assert (rows[("baidu", "organic")]["cost_key"], rows[("baidu", "organic")]["cac"]) == ("baidu/organic", 200.0)
    assert (rows[("baidu", "cpc")]["cost_key"], rows[("baidu", "cpc")]["cac"]) == ("baidu", 500.0)
    assert rows[("wechat", "social")]["cost_key"] is None
    assert [s["key"] for s in rep["spend"]] == ["baidu", "baidu/organic"] and rep["costs_without_channel"] == []


def test_a_step_at_the_same_instant_as_the_one_before_converts_but_no_event_is_two_steps(
        env: Any, tmp_path: Path) -> None:
    # before: steps had to be strictly later, so events of one batch or second-precision imports
    # with equal timestamps never converted
    t0 = datetime(2024, 5, 1, 10, tzinfo=UTC)
    evs = [{"u": "x", "event": "Order Completed", "ts": t0, "props": {}, "ctx": None},  # sent first
           {"u": "x", "event": "Signed Up", "ts": t0, "props": {}, "ctx": None},
           {"u": "y", "event": "Signed Up", "ts": t0, "props": {}, "ctx": None}]
    _load(env, tmp_path, evs, [])
    ws = env.ws.workspace_id
    rep = funnel(env.gk.analytical, ws, {"steps": [{"event": "Signed Up"}, {"event": "Order Completed"}],
                                         "start": "2024-04-01", "end": "2024-06-01"})
    assert [s["profiles"] for s in rep["steps"]] == [2, 1]
    twice = funnel(env.gk.analytical, ws, {"steps": [{"event": "Signed Up"}, {"event": "Signed Up"}],
                                           "start": "2024-04-01", "end": "2024-06-01"})
    assert [s["profiles"] for s in twice["steps"]] == [2, 0]


def test_a_customer_who_bought_before_the_touch_was_not_acquired_by_the_channel(env: Any, tmp_path: Path) -> None:
    # before: an existing customer touched by wechat, who ordered again later, counted as a wechat
    # conversion, giving wechat the same CAC as a channel that found a new customer
    t0 = datetime(2024, 1, 10, tzinfo=UTC)
    ctx = {"wechat": {"campaign": {"source": "wechat", "medium": "social"}},
           "baidu": {"campaign": {"source": "baidu", "medium": "cpc"}}}
    evs = [{"u": "old", "event": "Page Viewed", "ts": t0 + timedelta(days=22), "props": {}, "ctx": ctx["wechat"]},
           {"u": "new", "event": "Page Viewed", "ts": t0 + timedelta(days=22), "props": {}, "ctx": ctx["baidu"]}]
    orders = [{"order_id": "O1", "at": t0, "u": "old", "amount": "300"},
              {"order_id": "O2", "at": t0 + timedelta(days=60), "u": "old", "amount": "500"},
              {"order_id": "O3", "at": t0 + timedelta(days=60), "u": "new", "amount": "500"}]
    _load(env, tmp_path, evs, orders)
    rep = channels(env.gk.engine, env.gk.analytical, env.ws.workspace_id,
                   {"end": "2024-06-01", "costs": {"wechat": 1000.0, "baidu": 1000.0}})
    got = {c["source"]: c for c in rep["channels"]}
    assert (got["wechat"]["customers"], got["wechat"]["converted"], got["wechat"]["existing_customers"]) == (0, 0, 1)
    assert got["wechat"]["existing_revenue"] == 500.0 and got["wechat"]["cac"] is None
    assert got["wechat"]["conversion_pct"] is None
    assert (got["baidu"]["customers"], got["baidu"]["converted"], got["baidu"]["cac"]) == (1, 1, 1000.0)
