"""Computed traits on a real instance: every aggregate in batch against plain Python over the same
generated events (windows, property filters, merged profiles, a profile without events), order-line
traits, incremental updates through the tracking API (also while batch runs overlap them), the
schedule, the REST API with its validation errors, the CLI, and the 360° profile."""

from __future__ import annotations

import csv
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from goldkey.audience.catalog import load_catalog
from goldkey.audience.traits import TraitService
from goldkey.audience.traits_cli import traits_app
from goldkey.store.operational import profiles

Env = Any  # tests/conftest.py Env

AS_OF = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
DAY = timedelta(days=1)


def _service(env: Env) -> Iterator[TraitService]:
    """The instance's trait service with its incremental path on and its schedule off, so that no
    scheduled run lands in the middle of a test (the schedule test starts it itself)."""
    svc: TraitService = env.gk.traits
    svc.stop()
    svc.attach()
    yield svc


@pytest.fixture
def svc(env: Env) -> Iterator[TraitService]:
    yield from _service(env)


@pytest.fixture
def svc_any(env_any: Env) -> Iterator[TraitService]:
    yield from _service(env_any)


def _send(env: Env, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 100):
        r = env.post("/v1/batch", {"batch": events[i : i + 100]})
        assert r.status_code == 200, r.text
        assert not r.json().get("rejected"), r.text


def _pid(env: Env, **q: str) -> str:
    r = env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return str(r.json()["profile_id"])


def _profile_traits(env: Env, pid: str) -> dict[str, Any]:
    r = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return dict(r.json()["traits"])


# ------------------------------------------------------------------------------------ generated events


def generate(seed: int = 7, people: int = 14) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Events per person (user id) and the tracking calls that send them. Every fourth person starts
    anonymous and logs in later (two profiles merged); timestamps are unique."""
    rng = random.Random(seed)
    per_person: dict[str, list[dict[str, Any]]] = {}
    calls: list[dict[str, Any]] = []
    used: set[datetime] = set()
    n = 0

    def when() -> datetime:
        while True:
            t = AS_OF - timedelta(days=rng.uniform(0, 120), microseconds=rng.randrange(1_000_000))
            if rng.random() < 0.04:
                t = AS_OF + timedelta(days=rng.uniform(0.1, 2))  # after as_of: never counts
            if t not in used:
                used.add(t)
                return t

    for p in range(people):
        uid = f"u{p}"
        anon = f"a{p}" if p % 4 == 0 else None
        evs: list[dict[str, Any]] = []
        for _ in range(rng.randrange(8, 30)):
            kind = rng.random()
            ts = when()
            if kind < 0.35:
                props: dict[str, Any] = {"sku": rng.choice(["L-1", "L-2", "S-1", "F-9", 7]),
                                         "quantity": rng.choice([1, 1, 2, 3])}
                total = rng.choice([round(rng.uniform(20, 900), 2), rng.randrange(10, 600), "120", None, True])
                if total is not None:
                    props["total"] = total
                if rng.random() < 0.5:
                    props["coupon"] = rng.choice(["VIP", "SPRING", "kid's"])
                ev = {"type": "track", "event": "Order Completed", "properties": props}
            elif kind < 0.8:
                props = {"sku": rng.choice(["L-1", "L-2", "L-3", "S-1", "S-2", "care-1"]),
                         "category": rng.choice(["lens", "solution", "care", "kid's", "frames"]),
                         "price": rng.choice([round(rng.uniform(5, 300), 2), rng.randrange(5, 300), "9.9"])}
                if rng.random() < 0.1:
                    del props["category"]
                ev = {"type": "track", "event": "Product Viewed", "properties": props}
            else:
                ev = {"type": "page", "name": rng.choice(["Home", "Cart"]), "properties": {"path": "/"}}
            ev["ts"] = ts
            evs.append(ev)
            n += 1
            # an anonymous starter's first three events come before the login
            ident = {"anonymousId": anon} if anon and len(evs) <= 3 else {"userId": uid}
            call = {"type": ev["type"], "messageId": f"g{n}", "timestamp": ts.isoformat(), **ident,
                    "properties": ev["properties"]}
            if ev["type"] == "track":
                call["event"] = ev["event"]
            else:
                call["name"] = ev["name"]
            calls.append(call)
        if anon:
            n += 1
            calls.append({"type": "identify", "messageId": f"g{n}", "userId": uid, "anonymousId": anon,
                          "timestamp": (AS_OF - timedelta(days=200)).isoformat()})
        per_person[uid] = evs
    return per_person, calls


def _num(p: dict[str, Any], k: str) -> float | None:
    v = p.get(k)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _str(p: dict[str, Any], k: str) -> str | None:
    v = p.get(k)
    return v if isinstance(v, str) else None


def _track(name: str, days: float | None = None, start: datetime | None = None,
           end: datetime | None = None) -> Callable[[dict[str, Any]], bool]:
    def ok(e: dict[str, Any]) -> bool:
        ts = e["ts"]
        return (e["type"] == "track" and e.get("event") == name and ts <= AS_OF
                and (days is None or ts >= AS_OF - days * DAY) and (start is None or ts >= start)
                and (end is None or ts < end))
    return ok


def _count(evs: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> int | None:
    return sum(1 for e in evs if pred(e)) or None


def _agg(fn: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    return lambda xs: fn(xs) if xs else None


def _vals(evs: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool], key: str,
          get: Callable[[dict[str, Any], str], Any]) -> list[Any]:
    return [v for e in evs if pred(e) and (v := get(e["properties"], key)) is not None]


def _by_time(evs: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool], key: str,
             get: Callable[[dict[str, Any], str], Any]) -> list[Any]:
    return [get(e["properties"], key) for e in sorted(evs, key=lambda e: e["ts"])
            if pred(e) and get(e["properties"], key) is not None]


def _mode(xs: list[Any]) -> Any:
    """The most frequent value; of several, the greatest."""
    if not xs:
        return None
    c = Counter(xs)
    top = max(c.values())
    return max(v for v, k in c.items() if k == top)


OC, PV = _track("Order Completed"), _track("Product Viewed")
W_START, W_END = AS_OF - 60 * DAY, AS_OF - 20 * DAY


def _vip(e: dict[str, Any]) -> bool:
    return OC(e) and _str(e["properties"], "coupon") == "VIP"


def _eye(e: dict[str, Any]) -> bool:
    return PV(e) and _str(e["properties"], "category") in ("lens", "solution")


def _q(e: dict[str, Any]) -> bool:
    t = _num(e["properties"], "total")
    return _track("Order Completed", start=W_START, end=W_END)(e) and t is not None and 100 <= t <= 500


def _lens_view(e: dict[str, Any]) -> bool:
    p = e["properties"]
    sku, cat = _str(p, "sku"), _str(p, "category")
    return PV(e) and sku is not None and sku.startswith("L-") and cat is not None and cat != "care"


def _home(e: dict[str, Any]) -> bool:
    return e["type"] == "page" and e.get("name") == "Home" and e["ts"] <= AS_OF


# (definition, reference over one person's events)
TRAITS: list[tuple[dict[str, Any], Callable[[list[dict[str, Any]]], Any]]] = [
    ({"name": "orders", "event": "Order Completed", "aggregate": "count"}, lambda ev: _count(ev, OC)),
    ({"name": "orders_30d", "event": "Order Completed", "aggregate": "count", "window": {"last_days": 30}},
     lambda ev: _count(ev, _track("Order Completed", 30))),
    ({"name": "revenue", "event": "Order Completed", "aggregate": "sum", "property": "total"},
     lambda ev: _agg(lambda xs: round(sum(xs), 6))(_vals(ev, OC, "total", _num))),
    ({"name": "vip_revenue", "event": "Order Completed", "aggregate": "sum", "property": "total",
      "where": [{"property": "coupon", "op": "eq", "value": "VIP"}]},
     lambda ev: _agg(lambda xs: round(sum(xs), 6))(_vals(ev, _vip, "total", _num))),
    ({"name": "eye_price_avg", "event": "Product Viewed", "aggregate": "avg", "property": "price",
      "where": [{"property": "category", "op": "in", "value": ["lens", "solution"]}]},
     lambda ev: _agg(lambda xs: round(sum(xs) / len(xs), 6))(_vals(ev, _eye, "price", _num))),
    ({"name": "min_price", "event": "Product Viewed", "aggregate": "min", "property": "price"},
     lambda ev: _agg(min)(_vals(ev, PV, "price", _num))),
    ({"name": "max_price_90d", "event": "Product Viewed", "aggregate": "max", "property": "price",
      "window": {"last_days": 90}},
     lambda ev: _agg(max)(_vals(ev, _track("Product Viewed", 90), "price", _num))),
    ({"name": "max_category", "event": "Product Viewed", "aggregate": "max", "property": "category",
      "value_type": "string"}, lambda ev: _agg(max)(_vals(ev, PV, "category", _str))),
    ({"name": "first_sku", "event": "Order Completed", "aggregate": "first", "property": "sku"},
     lambda ev: _agg(lambda xs: xs[0])(_by_time(ev, OC, "sku", _str))),
    ({"name": "last_sku", "event": "Order Completed", "aggregate": "last", "property": "sku"},
     lambda ev: _agg(lambda xs: xs[-1])(_by_time(ev, OC, "sku", _str))),
    ({"name": "last_total", "event": "Order Completed", "aggregate": "last", "property": "total",
      "value_type": "number"}, lambda ev: _agg(lambda xs: xs[-1])(_by_time(ev, OC, "total", _num))),
    ({"name": "skus_viewed", "event": "Product Viewed", "aggregate": "distinct_count", "property": "sku"},
     lambda ev: len(set(_vals(ev, PV, "sku", lambda p, k: p.get(k)))) or None),
    ({"name": "order_skus", "event": "Order Completed", "aggregate": "distinct_count", "property": "sku"},
     lambda ev: len({json.dumps(v) for v in _vals(ev, OC, "sku", lambda p, k: p.get(k))}) or None),
    ({"name": "top_category", "event": "Product Viewed", "aggregate": "most_frequent", "property": "category"},
     lambda ev: _mode(_vals(ev, PV, "category", _str))),
    ({"name": "top_quantity", "event": "Order Completed", "aggregate": "most_frequent", "property": "quantity",
      "value_type": "number"}, lambda ev: _mode(_vals(ev, OC, "quantity", _num))),
    ({"name": "days_since_order", "event": "Order Completed", "aggregate": "days_since_last"},
     lambda ev: _agg(lambda ts: (AS_OF - max(ts)) // DAY)([e["ts"] for e in ev if OC(e)])),
    ({"name": "home_views", "type": "page", "event": "Home", "aggregate": "count"}, lambda ev: _count(ev, _home)),
    ({"name": "mid_orders_window", "event": "Order Completed", "aggregate": "count",
      "where": [{"property": "total", "op": "between", "value": [100, 500]}],
      "window": {"start": W_START.isoformat(), "end": W_END.isoformat()}}, lambda ev: _count(ev, _q)),
    ({"name": "kid_coupon_orders", "event": "Order Completed", "aggregate": "count",
      "where": [{"property": "coupon", "op": "eq", "value": "kid's"}]},
     lambda ev: _count(ev, lambda e: OC(e) and _str(e["properties"], "coupon") == "kid's")),
    ({"name": "no_coupon_orders", "event": "Order Completed", "aggregate": "count",
      "where": [{"property": "coupon", "op": "is_not_set", "type": "string"}]},
     lambda ev: _count(ev, lambda e: OC(e) and _str(e["properties"], "coupon") is None)),
    ({"name": "lens_views", "event": "Product Viewed", "aggregate": "count",
      "where": [{"property": "sku", "op": "starts_with", "value": "L-"},
                {"property": "category", "op": "ne", "value": "care"}]}, lambda ev: _count(ev, _lens_view)),
]


def _check(name: str, got: Any, want: Any) -> None:
    if want is None:
        assert got is None, f"{name}: expected no value, got {got!r}"
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), name
    else:
        assert got == want and type(got) is type(want), f"{name}: {got!r} != {want!r}"


def test_batch_values_of_every_aggregate_match_plain_python(env: Env, svc: TraitService, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    per_person, calls = generate()
    _send(env, calls)
    # a customer known from the CRM, without a single event
    crm = tmp_path / "crm.csv"
    crm.write_text("crm_id,name\nC900,无事件\n", encoding="utf-8")
    env.gk.importer.run(ws, "customers", crm, {})
    quiet = _pid(env, crm_id="C900")
    for d, _ in TRAITS:
        svc.create(ws, d)

    report = svc.compute(ws, as_of=AS_OF)
    assert sorted(report["traits"]) == sorted(d["name"] for d, _ in TRAITS)
    assert set(report["seconds"]) == {"snapshot", "aggregate", "compare", "write", "write_back", "total"}

    merged_away = []
    for uid, evs in per_person.items():
        pid = _pid(env, user_id=uid)
        if uid in ("u0", "u4", "u8", "u12"):
            anon_pid = _pid(env, anonymous_id=f"a{uid[1:]}")
            assert anon_pid == pid  # the login merged the anonymous profile into the customer's
        got = _profile_traits(env, pid)  # the 360° profile shows the traits
        for d, ref in TRAITS:
            _check(f"{uid}.{d['name']}", got.get(d["name"]), ref(evs))
        assert set(got) <= {d["name"] for d, _ in TRAITS}
    assert _profile_traits(env, quiet) == {}
    with env.gk.engine.connect() as c:
        merged_away = c.execute(sa.select(profiles.c.traits).where(
            profiles.c.workspace_id == ws, profiles.c.merged_into.is_not(None))).scalars().all()
    assert merged_away and all(t == "{}" for t in merged_away)  # only live profiles hold values

    # the catalog knows each trait's type; nothing changed means nothing is written
    cat = load_catalog(env.gk.engine, ws)
    assert cat["traits.revenue"] == "number" and cat["traits.last_sku"] == "string"
    assert cat["traits.top_quantity"] == "number" and cat["traits.max_category"] == "string"
    again = svc.compute(ws, as_of=AS_OF)
    assert again["profiles_changed"] == 0 and again["profiles_written"] == 0
    assert all(t["status"] == "computed" for t in svc.list(ws))

    # a later as_of moves windows and days; one trait can be computed alone
    later = AS_OF + 40 * DAY
    svc.compute(ws, names=["orders_30d", "days_since_order"], as_of=later)
    for uid, evs in per_person.items():
        got = _profile_traits(env, _pid(env, user_id=uid))
        oc = [e for e in evs if e["type"] == "track" and e.get("event") == "Order Completed" and e["ts"] <= later]
        recent = sum(1 for e in oc if e["ts"] >= later - 30 * DAY)
        assert got.get("orders_30d") == (recent or None)
        assert got.get("days_since_order") == ((later - max(e["ts"] for e in oc)) // DAY if oc else None)


def test_property_names_in_any_script_boolean_filters_and_quotes(env: Env, svc: TraitService) -> None:
    ws = env.ws.workspace_id
    sent = [({"价格": 12.5, "首单": True, "渠道": "小程序"}, 1), ({"价格": 7, "首单": False, "渠道": "门店"}, 2),
            ({"价格": "9", "首单": True, "渠道": 'say "hi" \\ ok'}, 3), ({"首单": "true"}, 4)]
    _send(env, [{"type": "track", "messageId": f"c{i}", "userId": "u1", "event": "下单", "properties": p,
                 "timestamp": (AS_OF - i * DAY).isoformat()} for p, i in sent])
    svc.create(ws, {"name": "消费", "event": "下单", "aggregate": "sum", "property": "价格"})
    svc.create(ws, {"name": "首单次数", "event": "下单", "aggregate": "count",
                    "where": [{"property": "首单", "op": "eq", "value": True}]})
    svc.create(ws, {"name": "last_channel", "event": "下单", "aggregate": "last", "property": "渠道"})
    svc.create(ws, {"name": "quoted", "event": "下单", "aggregate": "count",
                    "where": [{"property": "渠道", "op": "eq", "value": 'say "hi" \\ ok'}]})
    svc.compute(ws, as_of=AS_OF)
    assert _profile_traits(env, _pid(env, user_id="u1")) == {
        "消费": 19.5, "首单次数": 2, "last_channel": "小程序", "quoted": 1}


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_order_line_traits(env: Env, svc: TraitService, tmp_path: Path) -> None:
    ws = env.ws.workspace_id
    _write_csv(tmp_path / "crm.csv", ["crm_id", "name"], [["C1", "王芳"], ["C2", "李雷"], ["C3", "无订单"]])
    env.gk.importer.run(ws, "customers", tmp_path / "crm.csv", {})
    d0 = (AS_OF - 200 * DAY).replace(hour=3)
    at = [(d0 + i * 20 * DAY).isoformat() for i in range(8)]
    lines = [
        # order_id, ordered_at, crm_id, sku, category, quantity, unit_price, line_amount, channel
        ["O1", at[0], "C1", "LENS-A", "lens", 2, 99.5, 199.0, "store"],
        ["O1", at[0], "C1", "SOL-1", "solution", 1, 39, 39.0, "store"],
        ["O2", at[2], "C1", "SOL-1", "solution", 1, 39, 39.0, "online"],
        ["O3", at[4], "C1", "LENS-B", "lens", 1, 120, 120.0, "online"],
        ["O4", at[5], "C1", "LENS-A", "lens", 1, 99.5, 99.5, "online"],
        ["O5", at[6], "C1", "SOL-2", "solution", 3, 20, 60.0, "store"],
        ["O6", at[1], "C2", "FRAME-1", "frames", 1, 500, 500.0, "store"],
        ["O7", at[3], "C2", "SOL-1", "solution", 2, 39, 78.0, "online"],
    ]
    orders = _write_csv(tmp_path / "orders.csv", ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity",
                                                  "unit_price", "line_amount", "channel"], lines)
    env.gk.importer.run(ws, "orders", orders, {})
    defs = [
        {"name": "lens_skus", "source": "order_lines", "aggregate": "distinct_count", "property": "sku",
         "where": [{"property": "category", "op": "eq", "value": "lens"}]},
        {"name": "solution_orders", "source": "order_lines", "aggregate": "distinct_count", "property": "order_id",
         "where": [{"property": "category", "op": "eq", "value": "solution"}]},
        {"name": "spend", "source": "order_lines", "aggregate": "sum", "property": "line_amount"},
        {"name": "online_spend_150d", "source": "order_lines", "aggregate": "sum", "property": "line_amount",
         "where": [{"property": "channel", "op": "eq", "value": "online"}], "window": {"last_days": 150}},
        {"name": "units", "source": "order_lines", "aggregate": "sum", "property": "quantity",
         "where": [{"property": "quantity", "op": "gte", "value": 2}]},
        {"name": "avg_price", "source": "order_lines", "aggregate": "avg", "property": "unit_price"},
        {"name": "last_line_sku", "source": "order_lines", "aggregate": "last", "property": "sku"},
        {"name": "top_category", "source": "order_lines", "aggregate": "most_frequent", "property": "category"},
        {"name": "lines", "source": "order_lines", "aggregate": "count"},
        {"name": "days_since_purchase", "source": "order_lines", "aggregate": "days_since_last"},
        # an events trait computed in the same run (the two sources are joined)
        {"name": "visits", "type": "page", "aggregate": "count"},
    ]
    for d in defs:
        svc.create(ws, d)
    env.post("/v1/page", {"messageId": "p1", "userId": "web-1", "name": "Home", "timestamp": at[7]})
    svc.compute(ws, as_of=AS_OF)

    c1, c2, c3 = (_profile_traits(env, _pid(env, crm_id=c)) for c in ("C1", "C2", "C3"))
    web = _profile_traits(env, _pid(env, user_id="web-1"))
    c1_lines = [r for r in lines if r[2] == "C1"]
    online_from = AS_OF - 150 * DAY
    assert c1["lens_skus"] == 2 and c1["solution_orders"] == 3
    assert c1["spend"] == pytest.approx(sum(r[7] for r in c1_lines))
    assert c1["online_spend_150d"] == pytest.approx(
        sum(r[7] for r in c1_lines if r[8] == "online" and datetime.fromisoformat(r[1]) >= online_from))
    assert c1["units"] == pytest.approx(sum(r[5] for r in c1_lines if r[5] >= 2))
    assert c1["avg_price"] == pytest.approx(round(sum(r[6] for r in c1_lines) / len(c1_lines), 6))
    assert c1["last_line_sku"] == "SOL-2"
    assert c1["top_category"] == "solution"  # 3 lines each: the greatest wins
    assert c1["lines"] == 6
    assert c1["days_since_purchase"] == (AS_OF - datetime.fromisoformat(at[6])) // DAY
    assert c2 == {"top_category": "solution", "solution_orders": 1, "spend": 578.0, "online_spend_150d": 78.0,
                  "units": 2.0, "avg_price": 269.5, "last_line_sku": "SOL-1", "lines": 2,
                  "days_since_purchase": (AS_OF - datetime.fromisoformat(at[3])) // DAY}
    assert c3 == {}
    assert web == {"visits": 1}


# ------------------------------------------------------------------------------------ incremental

LIVE_TRAITS = [
    {"name": "orders", "event": "Order Completed", "aggregate": "count"},
    {"name": "orders_30d", "event": "Order Completed", "aggregate": "count", "window": {"last_days": 30}},
    {"name": "revenue", "event": "Order Completed", "aggregate": "sum", "property": "total"},
    {"name": "vip_orders", "event": "Order Completed", "aggregate": "count",
     "where": [{"property": "coupon", "op": "eq", "value": "VIP"}]},
    {"name": "first_sku", "event": "Order Completed", "aggregate": "first", "property": "sku"},
    {"name": "last_sku", "event": "Order Completed", "aggregate": "last", "property": "sku"},
    {"name": "max_total", "event": "Order Completed", "aggregate": "max", "property": "total"},
    {"name": "days_since_order", "event": "Order Completed", "aggregate": "days_since_last"},
    {"name": "avg_total", "event": "Order Completed", "aggregate": "avg", "property": "total"},  # batch only
]


def _wait_for(check: Callable[[], bool], timeout: float = 3.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s")


def test_incremental_updates_arrive_within_seconds(env_any: Env, svc_any: TraitService) -> None:
    env, svc = env_any, svc_any
    ws = env.ws.workspace_id
    old = [
        {"messageId": "o1", "userId": "u1", "event": "Order Completed", "properties": {"total": 100, "sku": "A"},
         "timestamp": (AS_OF - 50 * DAY).isoformat()},
        {"messageId": "o2", "userId": "u1", "event": "Order Completed",
         "properties": {"total": 300, "sku": "B", "coupon": "VIP"}, "timestamp": (AS_OF - 10 * DAY).isoformat()},
        {"messageId": "o3", "userId": "u2", "event": "Product Viewed", "properties": {"sku": "A"},
         "timestamp": (AS_OF - 1 * DAY).isoformat()},
    ]
    _send(env, [{"type": "track", **e} for e in old])
    for d in LIVE_TRAITS:
        svc.create(ws, d)
    svc.compute(ws)
    svc.attach()  # (attached by the fixture already: events from now on update the traits)
    u1, u2 = _pid(env, user_id="u1"), _pid(env, user_id="u2")
    before = _profile_traits(env, u1)
    assert before == {"orders": 2, "orders_30d": 1, "revenue": 400.0, "vip_orders": 1, "first_sku": "A",
                      "last_sku": "B", "max_total": 300.0, "days_since_order": 10, "avg_total": 200.0}

    r = env.post("/v1/track", {"messageId": "n1", "userId": "u1", "event": "Order Completed",
                               "properties": {"total": 550.5, "sku": "C"}})
    assert r.status_code == 200
    took = _wait_for(lambda: _profile_traits(env, u1).get("orders") == 3)
    got = _profile_traits(env, u1)
    assert got == {**before, "orders": 3, "orders_30d": 2, "revenue": 950.5, "last_sku": "C", "max_total": 550.5,
                   "days_since_order": 0}, f"after {took:.2f}s"
    # a first order makes a profile qualify; a non-matching event changes nothing
    env.post("/v1/track", {"messageId": "n2", "userId": "u2", "event": "Order Completed",
                           "properties": {"total": "12", "sku": 5, "coupon": "VIP"}})
    env.post("/v1/track", {"messageId": "n3", "userId": "u2", "event": "Product Viewed", "properties": {"total": 1}})
    _wait_for(lambda: "orders" in _profile_traits(env, u2))
    assert svc.flush()
    assert _profile_traits(env, u2) == {"orders": 1, "orders_30d": 1, "vip_orders": 1, "days_since_order": 0}

    # the batch agrees with what the incremental path wrote (only the batch-only average moves)
    report = svc.compute(ws)
    assert report["profiles_changed"] == 1
    assert _profile_traits(env, u1) == {**got, "avg_total": pytest.approx(950.5 / 3, abs=1e-6)}
    # updating a definition pauses its incremental updates until the next batch run
    svc.update(ws, "orders", {**LIVE_TRAITS[0], "description": "all orders"})
    env.post("/v1/track", {"messageId": "n4", "userId": "u1", "event": "Order Completed", "properties": {}})
    _wait_for(lambda: _profile_traits(env, u1).get("orders_30d") == 3)
    assert _profile_traits(env, u1)["orders"] == 3
    svc.compute(ws, names=["orders"])
    assert _profile_traits(env, u1)["orders"] == 4


def test_batch_runs_overlapping_live_traffic_neither_lose_nor_double_count(env_any: Env, svc_any: TraitService) -> None:
    env, svc = env_any, svc_any
    ws = env.ws.workspace_id
    for d in LIVE_TRAITS[:3] + LIVE_TRAITS[5:6]:
        svc.create(ws, d)
    _send(env, [{"type": "track", "messageId": f"s{i}", "userId": f"u{i % 5}", "event": "Order Completed",
                 "properties": {"total": i, "sku": f"K{i}"}, "timestamp": (AS_OF - (20 - i) * DAY).isoformat()}
                for i in range(20)])
    svc.compute(ws)
    svc.attach()
    stop = threading.Event()
    sent = [20]

    def traffic() -> None:
        i = 20
        while i < 400 and (not stop.is_set() or i < 120):
            r = env.post("/v1/batch", {"batch": [
                {"type": "track", "messageId": f"s{j}", "userId": f"u{j % 5}", "event": "Order Completed",
                 "properties": {"total": j, "sku": f"K{j}"}} for j in range(i, i + 4)]})
            assert r.status_code == 200
            i += 4
            sent[0] = i
            time.sleep(0.005)

    th = threading.Thread(target=traffic)
    th.start()
    try:
        for _ in range(4):
            svc.compute(ws)
    finally:
        stop.set()
        th.join()
    assert svc.flush()
    n = sent[0]
    for u in range(5):
        got = _profile_traits(env, _pid(env, user_id=f"u{u}"))
        mine = [i for i in range(n) if i % 5 == u]
        assert got["orders"] == len(mine), f"u{u}"
        assert got["revenue"] == pytest.approx(sum(mine))
        assert got["last_sku"] == f"K{mine[-1]}"
    assert svc.compute(ws)["profiles_changed"] == 0


def _fresh_compute_changes(env: Env, ws: str, as_of: datetime = AS_OF) -> int:
    """What a from-scratch run would still change: a new service (no baselines: every profile's stored
    traits are compared) over a property cache rebuilt from the event log."""
    from goldkey.audience.property_cache import drop_cache

    with env.gk.analytical.transaction() as cur:
        drop_cache(cur, ws)
    fresh = TraitService(env.gk.engine, env.gk.analytical, env.gk.writer)
    return int(fresh.compute(ws, as_of=as_of)["profiles_changed"])


def test_refreshes_from_the_property_cache_and_baseline_equal_a_full_recomputation(env: Env, svc: TraitService
                                                                                  ) -> None:
    """Refreshes append new events to the property cache and compare with the last run's values
    (plus the profiles changed since: incremental updates, merges); after events, logins that merge
    profiles, an undone merge and an event removed from the log, they still give exactly the values
    plain Python gives, and a from-scratch run changes nothing."""
    ws = env.ws.workspace_id
    per_person, calls = generate(seed=11, people=12)
    for d, _ in TRAITS:
        svc.create(ws, d)
    half = len(calls) // 2
    _send(env, calls[:half])
    first = svc.compute(ws, as_of=AS_OF)
    assert first["profiles_changed"] > 0
    _send(env, calls[half:])  # more events, and the logins (identify) that merge profiles
    assert svc.flush()
    svc.compute(ws, as_of=AS_OF)
    for uid, evs in per_person.items():
        got = _profile_traits(env, _pid(env, user_id=uid))
        for d, ref in TRAITS:
            _check(f"{uid}.{d['name']}", got.get(d["name"]), ref(evs))
    assert svc.compute(ws, as_of=AS_OF)["profiles_changed"] == 0
    assert _fresh_compute_changes(env, ws) == 0

    # an undone merge moves events back to the restored profile: the cache is rebuilt
    with env.gk.engine.connect() as c:
        merge_id = c.execute(sa.text("SELECT merge_id FROM merges WHERE workspace_id = :ws LIMIT 1"),
                             {"ws": ws}).scalar_one()
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert svc.compute(ws, as_of=AS_OF)["profiles_changed"] > 0
    assert _fresh_compute_changes(env, ws) == 0

    # an event removed from the log behind the cache's back: the count no longer matches, rebuilt
    svc.compute(ws, as_of=AS_OF)
    with env.gk.analytical.transaction() as cur:
        cur.execute("DELETE FROM events WHERE workspace_id = ? AND message_id = ?", [ws, calls[0]["messageId"]])
    svc.compute(ws, as_of=AS_OF)
    assert _fresh_compute_changes(env, ws) == 0


def test_a_merge_and_its_undoing_between_refreshes(env: Env, svc: TraitService) -> None:
    """A merge copies the loser's stored traits into the winner, which a baseline cannot see (the
    winner's computed value may not change); undoing it moves events back to the restored profile,
    which the property cache cannot see (it rebuilds)."""
    ws = env.ws.workspace_id
    svc.create(ws, LIVE_TRAITS[1])  # orders_30d
    _send(env, [{"type": "track", "messageId": "m1", "userId": "u1", "event": "Product Viewed", "properties": {},
                 "timestamp": (AS_OF - 40 * DAY).isoformat()}])
    _send(env, [{"type": "track", "messageId": "m2", "anonymousId": "a1", "event": "Order Completed",
                 "properties": {"total": 5}, "timestamp": (AS_OF - 25 * DAY).isoformat()}])
    winner, anon = _pid(env, user_id="u1"), _pid(env, anonymous_id="a1")
    svc.compute(ws, as_of=AS_OF)
    assert _profile_traits(env, anon) == {"orders_30d": 1} and _profile_traits(env, winner) == {}
    _send(env, [{"type": "identify", "messageId": "m3", "userId": "u1", "anonymousId": "a1"}])  # the login
    assert _pid(env, anonymous_id="a1") == _pid(env, user_id="u1") == winner  # the first seen profile wins
    assert svc.flush()
    # ten days on, the one order is out of the window: the winner must not keep the copied value
    later = AS_OF + 10 * DAY
    svc.compute(ws, as_of=later)
    assert _profile_traits(env, winner) == {}

    # an order sent under the anonymous id after the login is stored on the winner ...
    _send(env, [{"type": "track", "messageId": "m4", "anonymousId": "a1", "event": "Order Completed",
                 "properties": {"total": 7}, "timestamp": (later - 1 * DAY).isoformat()}])
    assert svc.flush()
    svc.compute(ws, as_of=later)
    assert _profile_traits(env, winner) == {"orders_30d": 1}
    # ... and undoing the merge moves it back to the restored profile
    with env.gk.engine.connect() as c:
        merge_id = c.execute(sa.text("SELECT merge_id FROM merges WHERE workspace_id = :ws"), {"ws": ws}).scalar_one()
    r = env.client.post(f"/api/v1/profiles/merges/{merge_id}/undo", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    svc.compute(ws, as_of=later)
    assert _profile_traits(env, winner) == {}
    assert _profile_traits(env, anon) == {"orders_30d": 1}
    assert _fresh_compute_changes(env, ws, later) == 0


def test_computing_different_sets_of_traits_keeps_each_baseline_honest(env: Env, svc: TraitService) -> None:
    """Two sets of traits sharing one: each run writes the shared trait, which the other set's
    baseline must not take for its own values."""
    ws = env.ws.workspace_id
    for d in LIVE_TRAITS[:3]:
        svc.create(ws, d)
    _send(env, [{"type": "track", "messageId": f"b{i}", "userId": f"u{i % 3}", "event": "Order Completed",
                 "properties": {"total": i}, "timestamp": (AS_OF - (29.5 - i) * DAY).isoformat()} for i in range(30)])
    svc.compute(ws, as_of=AS_OF)  # baseline of all three
    svc.compute(ws, names=["orders_30d"], as_of=AS_OF + 20 * DAY)  # the window moved: values change
    svc.compute(ws, as_of=AS_OF)  # back: the shared trait must be written again
    for u in range(3):
        got = _profile_traits(env, _pid(env, user_id=f"u{u}"))
        assert got["orders_30d"] == sum(1 for i in range(30) if i % 3 == u), f"u{u}"
    assert _fresh_compute_changes(env, ws) == 0


# ------------------------------------------------------------------------------------ schedule


def test_schedule_computes_new_and_due_traits(env: Env, svc: TraitService) -> None:
    ws = env.ws.workspace_id
    env.post("/v1/track", {"messageId": "m1", "userId": "u1", "event": "Order Completed"})
    svc.create(ws, {"name": "orders", "event": "Order Completed", "aggregate": "count", "refresh_every_minutes": 60})
    now = datetime.now(UTC)
    assert svc.due(now) == {ws: ["orders"]}
    reports = svc.run_due(now)
    assert [r["traits"] for r in reports] == [["orders"]]
    first = svc.get(ws, "orders")["computed_at"]
    assert svc.get(ws, "orders")["status"] == "computed" and svc.due(now) == {}
    assert svc.due(now + timedelta(minutes=59)) == {}
    assert svc.due(now + timedelta(minutes=61)) == {ws: ["orders"]}
    svc.run_due(now + timedelta(minutes=61))
    assert svc.get(ws, "orders")["computed_at"] > first

    # the scheduler thread picks a new trait up by itself
    svc.stop()
    svc.tick_seconds = 0.1
    svc.start()
    svc.create(ws, {"name": "visits", "type": "page", "aggregate": "count"})
    env.post("/v1/page", {"messageId": "m2", "userId": "u1", "name": "Home"})
    _wait_for(lambda: svc.get(ws, "visits")["status"] == "computed", timeout=5)
    _wait_for(lambda: _profile_traits(env, _pid(env, user_id="u1")).get("visits") == 1)


# ------------------------------------------------------------------------------------ API


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "event": "E", "aggregate": "median"}, "aggregate"),
        ({"name": "x", "event": "E", "aggregate": "sum"}, "property"),
        ({"name": "x", "event": "E", "aggregate": "count", "property": "total"}, "property"),
        ({"name": "1x", "event": "E", "aggregate": "count"}, "name"),
        ({"name": "x" * 65, "event": "E", "aggregate": "count"}, "name"),
        ({"name": "x", "aggregate": "count"}, "event"),
        ({"name": "x", "event": "E", "aggregate": "count", "colour": "red"}, "colour"),
        ({"name": "x", "event": "E", "aggregate": "sum", "property": "total", "value_type": "string"}, "value_type"),
        ({"name": "x", "event": "E", "aggregate": "max", "property": "a-b"}, "property"),
        ({"name": "x", "event": "E", "aggregate": "count", "window": {"last_days": -1}}, "window.last_days"),
        ({"name": "x", "event": "E", "aggregate": "count", "window": {"since": "month", "last_days": 3}}, "window"),
        ({"name": "x", "event": "E", "aggregate": "count",
          "where": [{"property": "total", "op": "contains", "value": 5}]}, "where[0]"),
        ({"name": "x", "source": "order_lines", "aggregate": "sum", "property": "colour"}, "property"),
        ({"name": "x", "source": "order_lines", "aggregate": "sum", "property": "sku"}, "property"),
        ({"name": "x", "source": "order_lines", "event": "E", "aggregate": "count"}, "event"),
        ({"name": "x", "source": "order_lines", "aggregate": "count",
          "where": [{"property": "colour", "op": "eq", "value": "red"}]}, "where[0].property"),
        ({"name": "x", "source": "order_lines", "aggregate": "count",
          "where": [{"property": "category", "op": "eq", "value": "lens"},
                    {"property": "quantity", "op": "eq", "value": "two"}]}, "where[1].value"),
        ({"name": "x", "source": "order_lines", "aggregate": "max", "property": "sku", "value_type": "number"},
         "value_type"),
        ({"name": "x", "event": "E", "aggregate": "count", "refresh_every_minutes": 0}, "refresh_every_minutes"),
    ],
)
def test_invalid_definitions_name_the_field(env: Env, svc: TraitService, body: dict[str, Any], field: str) -> None:
    r = env.client.post("/api/v1/traits", json=body, headers=env.admin_auth())
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert env.client.get("/api/v1/traits", headers=env.admin_auth()).json() == {"traits": []}


def test_api_crud_compute_and_profile(env: Env, svc: TraitService) -> None:
    h = env.admin_auth()
    env.post("/v1/track", {"messageId": "m1", "userId": "u1", "event": "Order Completed",
                           "properties": {"total": 20, "sku": "LENS-1"}})
    body = {"name": "revenue", "event": "Order Completed", "aggregate": "sum", "property": "total",
            "description": "消费总额", "window": {"last_days": 365}}
    r = env.client.post("/api/v1/traits", json=body, headers=h)
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["name"], t["field"], t["value_type"], t["incremental"], t["version"], t["status"]) == (
        "revenue", "traits.revenue", "number", True, 1, "new")
    assert t["definition"]["window"] == {"last_days": 365.0, "tz": "UTC"}
    assert env.client.post("/api/v1/traits", json=body, headers=h).status_code == 409
    assert env.client.post("/api/v1/traits", content=b"{not json", headers=h).json()["field"] == "body"
    assert env.client.get("/api/v1/traits", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert env.client.get("/api/v1/traits/nope", headers=h).status_code == 404
    assert env.client.post("/api/v1/traits/compute", json={"names": ["nope"]}, headers=h).status_code == 404

    r = env.client.post("/api/v1/traits/compute", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["profiles_with_value"] == {"revenue": 1} and r.json()["profiles_changed"] == 1
    pid = _pid(env, user_id="u1")
    assert _profile_traits(env, pid) == {"revenue": 20.0}
    listed = env.client.get("/api/v1/traits", headers=h).json()["traits"]
    assert [x["name"] for x in listed] == ["revenue"] and listed[0]["status"] == "computed"
    assert listed[0]["computed_at"] is not None

    # PUT replaces the definition: the version goes up and the trait waits for its next run
    r = env.client.put("/api/v1/traits/revenue", json={**body, "name": None, "property": "amount"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "name"
    upd = {k: v for k, v in body.items() if k != "name"} | {"where": [{"property": "sku", "op": "eq", "value": "X"}]}
    r = env.client.put("/api/v1/traits/revenue", json=upd, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["status"] == "new"
    assert env.client.put("/api/v1/traits/revenue", json={**upd, "name": "other"}, headers=h).json()["field"] == "name"
    assert env.client.put("/api/v1/traits/nope", json=upd, headers=h).status_code == 404
    env.client.post("/api/v1/traits/compute", json={"names": ["revenue"]}, headers=h)
    assert _profile_traits(env, pid) == {}  # no order with sku X: the profile lost the value

    # DELETE removes the trait, its field and its values
    env.client.put("/api/v1/traits/revenue", json={k: v for k, v in body.items() if k != "name"}, headers=h)
    env.client.post("/api/v1/traits/compute", headers=h)
    assert _profile_traits(env, pid) == {"revenue": 20.0}
    r = env.client.delete("/api/v1/traits/revenue", headers=h)
    assert r.status_code == 200 and r.json() == {"name": "revenue", "deleted": True, "profiles_cleared": 1}
    assert _profile_traits(env, pid) == {}
    assert "traits.revenue" not in load_catalog(env.gk.engine, env.ws.workspace_id)
    assert env.client.delete("/api/v1/traits/revenue", headers=h).status_code == 404


def test_workspaces_do_not_see_each_others_traits(env: Env, svc: TraitService) -> None:
    other = env.gk.workspaces.create("Other Brand")
    svc.create(env.ws.workspace_id, {"name": "orders", "event": "Order Completed", "aggregate": "count"})
    h2 = env.admin_auth(other.admin_token)
    assert env.client.get("/api/v1/traits", headers=h2).json() == {"traits": []}
    assert env.client.get("/api/v1/traits/orders", headers=h2).status_code == 404
    env.post("/v1/track", {"messageId": "x", "userId": "u1", "event": "Order Completed"}, key=other.write_key)
    assert env.client.post("/api/v1/traits/compute", headers=h2).json()["traits"] == []
    svc.compute(env.ws.workspace_id)
    r = env.client.get("/api/v1/profiles/lookup", params={"user_id": "u1"}, headers=h2)
    assert r.json()["traits"] == {}


# ------------------------------------------------------------------------------------ CLI


def test_cli_create_list_show_compute_delete(tmp_path: Path) -> None:
    from goldkey.runtime import Goldkey
    from goldkey.settings import Settings

    data = tmp_path / "data"
    gk = Goldkey.open(Settings(data_dir=data, group_commit_wait_ms=1.0))
    try:
        ws = gk.workspaces.create("CLI Brand")
        ev = []
        from goldkey.collect.tracking import normalise_event, now_micros

        for i in range(3):
            ev.append(normalise_event({"type": "track", "userId": "u1", "event": "Order Completed",
                                       "messageId": f"c{i}", "properties": {"total": 10}}, received_at=now_micros()))
        gk.writer.submit_events(ws.workspace_id, ev).result(timeout=30)
    finally:
        gk.close()
    spec = tmp_path / "trait.json"
    spec.write_text(json.dumps({"name": "revenue", "event": "Order Completed", "aggregate": "sum",
                                "property": "total"}), encoding="utf-8")
    runner = CliRunner()
    d = ["--data-dir", str(data)]
    r = runner.invoke(traits_app, ["create", "--file", str(spec), *d])
    assert r.exit_code == 0, r.output
    r = runner.invoke(traits_app, ["create", "--name", "orders", "--event", "Order Completed", "--aggregate", "count",
                                   "--last-days", "30", "--where", '{"property": "total", "op": "gt", "value": 5}', *d])
    assert r.exit_code == 0, r.output
    r = runner.invoke(traits_app, ["create", "--name", "bad", "--event", "E", "--aggregate", "sum", *d])
    assert r.exit_code == 2 and "property" in r.output
    r = runner.invoke(traits_app, ["create", "--file", str(spec), *d])
    assert r.exit_code == 1 and "exists" in r.output
    r = runner.invoke(traits_app, ["create", "--file", str(spec), "--description", "money", "--replace", *d])
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == 2
    r = runner.invoke(traits_app, ["compute", *d])
    assert r.exit_code == 0, r.output
    assert "2 trait(s) computed" in r.output
    r = runner.invoke(traits_app, ["list", *d])
    assert r.exit_code == 0 and "orders\tcount\tnumber\tincremental\tcomputed" in r.stdout
    r = runner.invoke(traits_app, ["show", "revenue", *d])
    shown = json.loads(r.stdout)
    assert shown["definition"]["property"] == "total"
    # times as the API gives them (before: Python's str(), "2026-11-25 05:55:49.946427+00:00")
    assert shown["created_at"].endswith("Z") and "T" in shown["created_at"], shown["created_at"]
    r = runner.invoke(traits_app, ["compute", "--name", "orders", *d])
    assert r.exit_code == 0 and "1 trait(s) computed" in r.output
    r = runner.invoke(traits_app, ["delete", "revenue", "--yes", *d])
    assert r.exit_code == 0 and "removed from 1 profile" in r.output

    gk = Goldkey.open(Settings(data_dir=data))
    try:
        with gk.engine.connect() as c:
            rows = c.execute(sa.select(profiles.c.traits).where(profiles.c.merged_into.is_(None))).scalars().all()
        assert [json.loads(t) for t in rows] == [{"orders": 3}]
    finally:
        gk.close()
