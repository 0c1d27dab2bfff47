"""Affinity: mlxtend's rules against an independent count on a hand example, category gaps, the
next best product on the demo eye-care brand, the API and bad input."""

from __future__ import annotations

import csv
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from goldkey.core.errors import InvalidInput, NotFound
from goldkey.insight import affinity_api
from goldkey.insight.affinity import (
    AffinityDefinition,
    AffinityService,
    category_gaps,
    consumables,
    customer_gaps,
    incidence,
    mlxtend_rules,
    next_best_products,
    pair_rules,
)

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
CAT = {"L": "lens", "S": "solution", "A": "accessory"}
# order -> (customer, SKUs): the hand example
BASKETS = {
    "O1": ("c1", ["L1", "S1"]), "O2": ("c1", ["S1"]), "O3": ("c2", ["L1", "S1"]), "O4": ("c2", ["L2"]),
    "O5": ("c3", ["S1"]), "O6": ("c3", ["S2", "A1"]), "O7": ("c4", ["L2"]), "O8": ("c5", ["L1", "S1", "A1"]),
    "O9": ("c6", ["S2"]), "O10": ("c5", ["L1", "S1"]),
}


def _import(env: Any, tmp: Path, baskets: dict[str, tuple[str, list[str]]]) -> None:
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"])
        for k, (oid, (cust, skus)) in enumerate(baskets.items()):
            at = (AS_OF - timedelta(days=30 - k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for s in skus:
                w.writerow([oid, at, cust, s, CAT[s[0]], "1", "10"])
    s = env.gk.importer.run(env.ws.workspace_id, "orders", path, {})
    assert s.status == "done" and s.quarantined == 0, s


def _reference_rules(transactions: list[set[str]]) -> dict[tuple[str, str], dict[str, float]]:
    """Every pair rule X -> Y counted by hand."""
    n = len(transactions)
    items = sorted(set().union(*transactions))
    sup = {i: sum(i in t for t in transactions) / n for i in items}
    out = {}
    for x, y in itertools.permutations(items, 2):
        both = sum(x in t and y in t for t in transactions)
        if both == 0:
            continue
        s, conf = both / n, both / (sup[x] * n)
        out[(x, y)] = {"support": s, "confidence": conf, "lift": conf / sup[y], "leverage": s - sup[x] * sup[y],
                       "conviction": None if conf == 1 else (1 - sup[y]) / (1 - conf), "count": both}
    return out


def _mount(env: Any) -> None:
    """Mount the cross-sell router on the test app (until goldkey.app includes it), ahead of the
    console's SPA fallback route."""
    app = env.client.app
    if any(getattr(r, "endpoint", None) is affinity_api.run_affinity for r in app.routes):
        return
    n = len(app.router.routes)
    app.include_router(affinity_api.router)
    added = app.router.routes[n:]
    del app.router.routes[n:]
    app.router.routes[0:0] = added


def test_rules_match_an_independent_count_and_the_api_filters_them(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, BASKETS)
    _mount(env)
    h = env.admin_auth()
    d = {"as_of": AS_OF.isoformat(), "min_support": 0.01, "min_confidence": 0.0, "min_transactions": 2}
    r = env.client.post("/api/v1/insights/affinity/run", json=d, headers=h)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["version"] == 1 and rep["metrics"]["transactions"] == {
        "basket_sku": 10, "basket_category": 10, "customer_sku": 6, "customer_category": 6}

    customers: dict[str, set[str]] = {}
    for cust, skus in BASKETS.values():
        customers.setdefault(cust, set()).update(skus)
    cases = {
        ("basket", "sku"): [set(s) for _, s in BASKETS.values()],
        ("basket", "category"): [{CAT[x[0]] for x in s} for _, s in BASKETS.values()],
        ("customer", "sku"): list(customers.values()),
        ("customer", "category"): [{CAT[x[0]] for x in s} for s in customers.values()],
    }
    for (scope, level), tx in cases.items():
        ref = _reference_rules(tx)
        got = env.client.get("/api/v1/insights/affinity/rules", params={"scope": scope, "level": level,
                                                                       "limit": 1000}, headers=h).json()
        rules = {(g["antecedent"][0], g["consequent"][0]): g for g in got["rules"]}
        assert set(rules) == set(ref), (scope, level)
        for k, want in ref.items():
            for m in ("support", "confidence", "lift", "leverage"):
                assert rules[k][m] == pytest.approx(want[m]), (scope, level, k, m)
            assert rules[k]["count"] == want["count"]
            assert (rules[k]["conviction"] is None) == (want["conviction"] is None)
            if want["conviction"] is not None:
                assert rules[k]["conviction"] == pytest.approx(want["conviction"])
        lifts = [g["lift"] for g in got["rules"]]
        assert lifts == sorted(lifts, reverse=True)

    # filters: lift, confidence, support and an antecedent
    got = env.client.get("/api/v1/insights/affinity/rules", params={"min_lift": 1.5, "antecedent": "L1"},
                         headers=h).json()["rules"]
    ref = _reference_rules(cases[("basket", "sku")])
    assert {(g["antecedent"][0], g["consequent"][0]) for g in got} == {
        k for k, v in ref.items() if k[0] == "L1" and v["lift"] >= 1.5}
    got = env.client.get("/api/v1/insights/affinity/rules", params={"min_confidence": 0.7, "min_support": 0.3},
                         headers=h).json()["rules"]
    assert got and all(g["confidence"] >= 0.7 and g["support"] >= 0.3 for g in got)
    # the number of rules that match, beyond the page returned (the console showed the page's size)
    page = env.client.get("/api/v1/insights/affinity/rules", params={"limit": 2}, headers=h).json()
    every = env.client.get("/api/v1/insights/affinity/rules", params={"limit": 10_000}, headers=h).json()
    assert len(page["rules"]) == 2 and page["matched"] == every["matched"] == len(every["rules"]) > 2

    # three-item rules with max_len 3: {L1, S1} -> A1 holds in 1 of the 4 baskets with L1 and S1 (O1, O3, O8, O10)
    rep3 = AffinityService.from_goldkey(env.gk).run(env.ws.workspace_id, {**d, "max_len": 3})
    three = AffinityService.from_goldkey(env.gk).rules(env.ws.workspace_id, antecedent="L1", consequent="A1",
                                                        min_support=0.0)["rules"]
    r3 = next(x for x in three if x["antecedent"] == ["L1", "S1"])
    assert rep3["version"] == 2 and r3["count"] == 1 and r3["confidence"] == pytest.approx(1 / 4)


def test_category_gaps_bought_a_never_b(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, BASKETS)
    _mount(env)
    h = env.admin_auth()
    r = env.client.post("/api/v1/insights/affinity/run", json={"as_of": AS_OF.isoformat(), "min_transactions": 2},
                        headers=h)
    assert r.status_code == 200, r.text
    cats = {c: {CAT[s[0]] for o in BASKETS.values() if o[0] == c for s in o[1]} for c, _ in BASKETS.values()}
    got = env.client.get("/api/v1/insights/affinity/gaps", params={"category_a": "solution", "category_b": "lens"},
                         headers=h).json()["gaps"]
    assert len(got) == 1
    g = got[0]
    sol = [c for c, s in cats.items() if "solution" in s]
    assert g["a_buyers"] == len(sol) == 5
    assert g["both"] == sum("lens" in cats[c] for c in sol) == 3
    assert g["never_b"] == 2 and g["only_a"] == sum(cats[c] == {"solution"} for c in cats) == 1
    assert g["confidence"] == pytest.approx(3 / 5) and g["offer_sku"] == "L1"  # c1, c2, c5 all bought L1
    everything = env.client.get("/api/v1/insights/affinity/gaps", headers=h).json()["gaps"]
    assert len(everything) == 6 and everything[0]["never_b"] == max(x["never_b"] for x in everything)

    # one customer's gaps: c6 bought only solution
    pid = env.client.get("/api/v1/profiles/lookup", params={"crm_id": "c6"}, headers=h).json()["profile_id"]
    mine = env.client.get("/api/v1/insights/affinity/gaps", params={"profile_id": pid}, headers=h).json()
    assert mine["categories"] == ["solution"]
    assert [x["category"] for x in mine["gaps"]] == ["lens", "accessory"]  # 3/5 buy lens, 2/5 accessory
    assert mine["gaps"][0]["reason"] == ("60% of customers who buy solution also buy lens; "
                                         "this customer never bought lens")

    r = env.client.get("/api/v1/insights/affinity/gaps", params={"category_a": "glasses"}, headers=h)
    assert r.status_code == 404 and "glasses" in r.json()["error"]
    r = env.client.get("/api/v1/insights/affinity/gaps", params={"profile_id": "p_nobody"}, headers=h)
    assert r.status_code == 404 and "p_nobody" in r.json()["error"]


def test_one_customers_gaps_count_purchases_in_the_models_window(env: Any, tmp_path: Path) -> None:
    """A customer's own gaps follow the model's rules (docs/cross-sell.md): a refunded order, or one
    before the model's lookback window, bought nothing. Before, both closed the customer's
    'solution' gap, so neither was offered solution while the stored next best said otherwise."""
    _import(env, tmp_path, BASKETS)
    path = tmp_path / "more.csv"
    old = (AS_OF - timedelta(days=5 * 365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent = (AS_OF - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text("order_id,ordered_at,crm_id,sku,category,quantity,unit_price,status\n"
                    f"R1,{recent},ref,L1,lens,1,10,paid\nR2,{recent},ref,S1,solution,1,10,Refunded\n"
                    f"D1,{recent},old,L1,lens,1,10,paid\nD2,{old},old,S1,solution,1,10,paid\n"
                    f"N1,{recent},ref,X1,,1,10,paid\n", encoding="utf-8")  # a line without a category
    assert env.gk.importer.run(env.ws.workspace_id, "orders", path, {}).status == "done"
    _mount(env)
    h = env.admin_auth()
    r = env.client.post("/api/v1/insights/affinity/run", json={"as_of": AS_OF.isoformat(), "min_transactions": 2},
                        headers=h)
    assert r.status_code == 200, r.text
    for crm in ("ref", "old"):
        pid = env.client.get("/api/v1/profiles/lookup", params={"crm_id": crm}, headers=h).json()["profile_id"]
        mine = env.client.get("/api/v1/insights/affinity/gaps", params={"profile_id": pid}, headers=h).json()
        assert mine["categories"] == ["lens"], (crm, mine)
        assert "solution" in [x["category"] for x in mine["gaps"]], (crm, mine)
        # "(none)" is no category to offer, and a pairing nobody bought (0 %) is no reason to
        assert all(x["category"] != "(none)" and x["confidence"] > 0 for x in mine["gaps"]), mine
    store = env.client.get("/api/v1/insights/affinity/gaps", headers=h).json()["gaps"]
    assert all("(none)" not in (g["category_a"], g["category_b"]) for g in store)


def _demo_lines(n: int = 2000) -> pl.DataFrame:
    """Order lines of the demo market's eye-care brand (its buying groups are hidden preferences)."""
    from goldkey.demo import eyecare
    from goldkey.demo._base import MarketConfig

    w = eyecare._World(MarketConfig(customers=n, events=50_000), n, 50_000)
    w.people()
    w.campaigns()
    w.orders()
    lo = w.l_o
    return pl.DataFrame({"profile_id": w.o_p[lo].astype(str), "order_id": lo.astype(str),
                         "sku": [eyecare.PRODUCTS[s][0] for s in w.l_sku],
                         "category": [eyecare.PRODUCTS[s][2] for s in w.l_sku]})


def test_next_best_on_the_demo_eye_care_brand() -> None:
    lines = _demo_lines()
    gaps = category_gaps(lines)
    cons = consumables(lines, 0.3)
    cat_of = dict(lines.select("sku", "category").unique(subset="sku").iter_rows())
    # lenses and solutions are rebought, accessories (a case, tweezers) are not
    assert all(cat_of[s] in ("lens", "solution") for s in cons)
    assert {s for s, c in cat_of.items() if c == "lens"} <= cons
    hist = {p: set(g) for p, g in lines.group_by("profile_id").agg(pl.col("sku").unique()).iter_rows()}
    cats = {p: {cat_of[s] for s in h} for p, h in hist.items()}
    nb = next_best_products(hist, cat_of, [], gaps, {}, cons)
    sol_only = [p for p, c in cats.items() if c == {"solution"}]
    lens_only = [p for p, c in cats.items() if c == {"lens"}]
    assert len(sol_only) > 50 and len(lens_only) > 50
    # solution-only buyers are offered lenses, lens-only buyers solution, each with the gap as reason
    assert all(nb[p]["category"] == "lens" and nb[p]["source"] == "category_gap" for p in sol_only)
    assert all(nb[p]["category"] == "solution" for p in lens_only)
    assert "also buy lens; this customer never bought lens" in nb[sol_only[0]]["reason"]
    want = customer_gaps({"solution"}, gaps)[0]
    assert want["category"] == "lens" and nb[sol_only[0]]["sku"] == want["offer_sku"]


def test_next_best_rules_respect_what_the_customer_owns() -> None:
    rule_case = {"antecedent": ["L1"], "consequent": ["CASE"], "support": 0.2, "confidence": 0.5, "lift": 3.2}
    refill = {"antecedent": ["L1"], "consequent": ["S1"], "support": 0.3, "confidence": 0.4, "lift": 1.1}
    cat_of = {"L1": "lens", "CASE": "accessory", "S1": "solution"}
    # owns the case (not a consumable): the case rule is skipped, the solution refill is allowed
    nb = next_best_products({"p": {"L1", "CASE", "S1"}}, cat_of, [rule_case, refill], [], {}, {"L1", "S1"})
    assert nb["p"]["sku"] == "S1" and nb["p"]["source"] == "rule"
    nb = next_best_products({"p": {"L1"}}, cat_of, [rule_case, refill], [], {}, {"L1", "S1"})
    assert nb["p"] == {"sku": "CASE", "category": "accessory", "source": "rule", "score": 0.5,
                       "reason": "customers who buy L1 also buy CASE, lift 3.2, confidence 50%"}
    # nothing applies: the recommender's first unowned (or consumable) item
    recs = {"p": [{"sku": "CASE", "score": 2.0, "reason": "r1"}, {"sku": "X", "score": 1.0, "reason": "r2"}]}
    nb = next_best_products({"p": {"CASE"}}, {**cat_of, "X": "lens"}, [], [], recs, set())
    assert nb["p"]["sku"] == "X" and nb["p"]["reason"] == "r2" and nb["p"]["source"] == "recommender"


def test_bad_input(env: Any, tmp_path: Path) -> None:
    _mount(env)
    h = env.admin_auth()
    ws = env.ws.workspace_id
    r = env.client.get("/api/v1/insights/affinity/rules", headers=h)
    assert r.status_code == 404 and "run it first" in r.json()["error"]
    r = env.client.post("/api/v1/insights/affinity/run", json={"as_of": AS_OF.isoformat()}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "orders" and "no order lines" in r.json()["error"]
    _import(env, tmp_path, BASKETS)
    with pytest.raises(InvalidInput, match=r"too few orders \(baskets\) to mine: 10 \(need at least 20\)"):
        AffinityService.from_goldkey(env.gk).run(ws, {"as_of": AS_OF.isoformat()})
    r = env.client.post("/api/v1/insights/affinity/run", json={"min_support": 0}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "min_support"
    r = env.client.post("/api/v1/insights/affinity/run", content=b"[1]", headers=h)
    assert r.status_code == 400
    with pytest.raises(NotFound):
        AffinityService.from_goldkey(env.gk).gaps(ws)


def test_pair_rules_equal_mlxtend_on_random_baskets() -> None:
    rng = np.random.default_rng(4)
    items = [f"I{k}" for k in range(12)]
    weights = rng.dirichlet(np.full(12, 0.7))
    rows = [(f"T{t}", items[i]) for t in range(400) for i in set(rng.choice(12, 1 + rng.poisson(1.5), p=weights))]
    pairs = pl.DataFrame({"tid": [r[0] for r in rows], "item": [r[1] for r in rows]})
    m, names, n_tx = incidence(pairs)
    d = AffinityDefinition(min_support=0.02, min_confidence=0.1)
    fast = {(r["antecedent"][0], r["consequent"][0]): r for r in pair_rules(m, names, n_tx, d)}
    ref = {(r["antecedent"][0], r["consequent"][0]): r for r in mlxtend_rules(m, names, n_tx, d)}
    assert len(fast) > 20 and set(fast) == set(ref)
    for k, r in ref.items():
        for f in ("support", "confidence", "lift", "leverage", "antecedent_support", "consequent_support", "count"):
            assert fast[k][f] == pytest.approx(r[f]), (k, f)


def test_the_cli_reads_what_the_api_reads(tmp_path: Path) -> None:
    """`goldkey insight show ...`: the read routes' results from the command line (before: only the
    runs had CLI forms)."""
    import json

    from typer.testing import CliRunner

    from goldkey.cli import app

    runner = CliRunner()
    d = str(tmp_path / "data")
    assert runner.invoke(app, ["workspace", "create", "Shop", "--json", "--data-dir", d]).exit_code == 0
    rows = ["order_id,ordered_at,crm_id,sku,category,quantity,unit_price"]
    for c in range(30):
        rows.append(f"A{c},2024-06-0{1 + c % 9}T10:00:00Z,C{c},SOL,solution,1,50")
        if c % 3:
            rows.append(f"A{c},2024-06-0{1 + c % 9}T10:00:00Z,C{c},LENS,lens,1,200")
    path = tmp_path / "o.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert runner.invoke(app, ["import", "orders", str(path), "-w", "Shop", "--data-dir", d]).exit_code == 0
    r = runner.invoke(app, ["insight", "affinity", "-w", "Shop", "--data-dir", d, "--as-of", "2024-07-01T00:00:00"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["insight", "show", "rules", "--level", "category", "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0, r.output
    rules = json.loads(r.stdout)["rules"]
    assert {(tuple(x["antecedent"]), tuple(x["consequent"])) for x in rules} >= {(("lens",), ("solution",))}, rules
    r = runner.invoke(app, ["insight", "show", "gaps", "--category-a", "solution", "--category-b", "lens",
                            "-w", "Shop", "--data-dir", d])
    assert r.exit_code == 0 and json.loads(r.stdout)["gaps"][0]["never_b"] == 10, r.output
    for args, says in ((["reasons"], "needs a profile id"), (["lifecycle-summary"], "no fitted version"),
                       (["recommendations", "prf_nope"], "")):
        r = runner.invoke(app, ["insight", "show", *args, "-w", "Shop", "--data-dir", d])
        assert r.exit_code == 1 and says in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
