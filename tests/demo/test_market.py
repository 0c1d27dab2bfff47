"""Tests of the deterministic demo market generator (small configs, a few seconds in total)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from goldkey.demo.market import (
    IMPORT_FIELDS,
    TRUTH_KEY_COLUMNS,
    MarketConfig,
    MarketManifest,
    generate,
    load_truth,
)

SMALL = MarketConfig(seed=7, customers=400, events=16_000)
TINY = MarketConfig(seed=3, customers=200, events=5_000, days=200)
SEGMENT_TYPES = {"track", "identify", "page", "screen", "group", "alias"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[MarketManifest, list[int]]:
    progress: list[int] = []
    m = generate(tmp_path_factory.mktemp("market"), SMALL, progress=progress.append)
    return m, progress


@pytest.fixture(scope="module")
def market(run: tuple[MarketManifest, list[int]]) -> MarketManifest:
    return run[0]


@pytest.fixture(scope="module")
def events(market: MarketManifest) -> dict[str, list[dict[str, Any]]]:
    return {
        b.brand: [orjson.loads(line) for f in b.event_files for line in f.read_bytes().splitlines()]
        for b in market.brands
    }


def _read(f: Any) -> pl.DataFrame:
    if f.path.suffix == ".parquet":
        return pl.read_parquet(f.path)
    return pl.read_csv(f.path, infer_schema=False)


def _digits(col: str) -> pl.Expr:
    return pl.col(col).str.replace_all(r"\D", "").str.slice(-11)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ determinism
def test_same_config_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", TINY)
    # the second run is in a fresh interpreter with another hash seed: no dependence on set/dict order
    code = (
        "import datetime, sys; from goldkey.demo.market import MarketConfig, generate; "
        f"generate(sys.argv[1], MarketConfig(seed={TINY.seed}, customers={TINY.customers}, "
        f"events={TINY.events}, days={TINY.days}, start=datetime.date.fromisoformat('{TINY.start}')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True, env=env)
    fa, fb = _files(a.out_dir), _files(tmp_path / "b")
    assert fa.keys() == fb.keys()
    assert any(k.endswith(".parquet") for k in fa) and any(k.endswith(".jsonl") for k in fa)
    for k in fa:
        assert fa[k] == fb[k], k
    c = generate(tmp_path / "c", MarketConfig(seed=4, customers=200, events=5_000, days=200))
    assert _files(c.out_dir)["eyecare/crm_members.csv"] != fa["eyecare/crm_members.csv"]


def test_regenerating_into_the_same_directory_leaves_no_stale_files(tmp_path: Path) -> None:
    generate(tmp_path, MarketConfig(seed=1, customers=300, events=120_000, days=120))
    m = generate(tmp_path, MarketConfig(seed=1, customers=200, events=5_000, days=120))
    listed = {p for b in m.brands for p in b.event_files}
    assert set(tmp_path.rglob("events-*.jsonl")) == listed
    assert MarketManifest.load(tmp_path).config.customers == 200


def test_tiny_config_event_count_within_tolerance(tmp_path: Path) -> None:
    m = generate(tmp_path, MarketConfig(customers=200, events=5_000))
    assert abs(m.counts["events"] - 5_000) <= 0.15 * 5_000


# ------------------------------------------------------------------------------------------ manifest
def test_manifest_round_trip(market: MarketManifest) -> None:
    loaded = MarketManifest.load(market.out_dir)
    assert loaded == market
    assert loaded.config == SMALL
    raw = orjson.loads((market.out_dir / "manifest.json").read_bytes())
    assert str(market.out_dir) not in (market.out_dir / "manifest.json").read_text()
    assert raw["truth_path"] == "_truth/preferences.parquet"
    assert [b["brand"] for b in raw["brands"]] == ["eyecare", "operator"]
    for b in loaded.brands:
        assert [f.kind for f in b.imports] == ["products", "customers", "orders", "feedback"]
        for f in b.imports:
            assert f.path.is_file()
        assert b.event_files and all(p.is_file() for p in b.event_files)
    assert load_truth(market.out_dir).equals(load_truth(market))
    assert load_truth(market.truth_path).height == SMALL.customers


def test_progress_reports_events_written(run: tuple[MarketManifest, list[int]]) -> None:
    market, progress = run
    assert progress and progress == sorted(progress)
    assert progress[-1] == market.counts["events"]


# ------------------------------------------------------------------------------------------ events
def test_events_follow_segment_spec(market: MarketManifest, events: dict[str, list[dict[str, Any]]]) -> None:
    start = dt.datetime.combine(SMALL.start, dt.time(), dt.timezone(dt.timedelta(hours=8)))
    end = start + dt.timedelta(days=SMALL.days)
    for brand, evs in events.items():
        assert len(evs) == market.counts[f"{brand}.events"]
        last = start
        for e in evs:
            assert e["type"] in SEGMENT_TYPES
            assert isinstance(e["messageId"], str) and e["messageId"]
            assert e.get("userId") or e.get("anonymousId"), e
            ts = dt.datetime.fromisoformat(e["timestamp"])
            assert ts.utcoffset() == dt.timedelta(hours=8)
            assert start <= ts < end
            assert ts >= last, "events must be chronological within a brand"
            last = ts
            ctx = e["context"]
            assert ctx["locale"] == "zh-CN" and ctx["library"]["name"] and ctx["library"]["version"]
            if e["type"] == "track":
                assert isinstance(e["event"], str) and isinstance(e["properties"], dict)
            elif e["type"] in ("page", "screen"):
                assert e["name"] and isinstance(e["properties"], dict)
                assert "ip" in ctx and "userAgent" in ctx and ctx["device"]["id"]
                if e["type"] == "screen":
                    assert ctx["app"]["name"] and ctx["os"]["name"]
            elif e["type"] == "identify":
                assert e["userId"] and isinstance(e["traits"], dict)
            elif e["type"] == "alias":
                assert e["userId"] and e["previousId"]
    total = sum(len(v) for v in events.values())
    assert abs(total - SMALL.events) <= 0.15 * SMALL.events
    assert market.counts["events"] == total


def test_message_ids_unique(events: dict[str, list[dict[str, Any]]]) -> None:
    ids = [e["messageId"] for evs in events.values() for e in evs]
    assert len(ids) == len(set(ids))


def test_eyecare_event_vocabulary(events: dict[str, list[dict[str, Any]]]) -> None:
    evs = events["eyecare"]
    names = Counter(e.get("event") for e in evs if e["type"] == "track")
    for name in (
        "QR Code Scanned",
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Invite Sent",
        "Invite Accepted",
        "Signed Up",
    ):
        assert names[name] > 0, name
    types = Counter(e["type"] for e in evs)
    assert types["page"] and types["screen"] and types["identify"] and types["alias"]
    scan = next(e for e in evs if e.get("event") == "QR Code Scanned")
    assert {"qr_code", "sku", "region", "city", "store"} <= scan["properties"].keys() and scan["userId"]
    assert any("campaign" in e["context"] and e["type"] == "page" for e in evs)
    # anonymous visits that later identify with the same anonymousId
    anon_only = {e["anonymousId"] for e in evs if e["type"] in ("page", "screen") and "userId" not in e}
    identified = {e["anonymousId"] for e in evs if e["type"] == "identify"}
    assert anon_only & identified
    # invitation codes: accepted codes were sent before
    sent = {e["properties"]["invitation_code"] for e in evs if e.get("event") == "Invite Sent"}
    accepted = {e["properties"]["invitation_code"] for e in evs if e.get("event") == "Invite Accepted"}
    assert accepted and accepted <= sent


def test_online_orders_match_order_import(market: MarketManifest, events: dict[str, list[dict[str, Any]]]) -> None:
    orders = _read(market.brand("eyecare").imports[2])
    ids = set(orders["订单号"].to_list())
    completed = [e for e in events["eyecare"] if e.get("event") == "Order Completed"]
    assert completed
    assert all(e["properties"]["order_id"] in ids for e in completed)
    online = set(orders.filter(pl.col("渠道") == "online")["订单号"].to_list())
    assert {e["properties"]["order_id"] for e in completed} == online


def test_operator_real_time_moments(events: dict[str, list[dict[str, Any]]]) -> None:
    evs = events["operator"]
    names = Counter(e.get("event") or e["type"] for e in evs)
    for name in (
        "Data Usage Reported",
        "Balance Updated",
        "Top Up",
        "Call Summary",
        "Handset Changed",
        "screen",
        "identify",
        "Order Completed",
    ):
        assert names[name] > 0, name
    prev: dict[str, float] = {}
    crossings = 0
    for e in evs:
        if e.get("event") == "Data Usage Reported":
            p = e["properties"]
            assert {"used_mb", "plan_mb", "used_pct", "day"} <= p.keys()
            if prev.get(e["userId"], 0.0) < 75 <= p["used_pct"]:
                crossings += 1
            prev[e["userId"]] = p["used_pct"]
    assert crossings > 10
    assert sum(1 for e in evs if e.get("event") == "Balance Updated" and e["properties"]["balance"] < 5) > 0


# ------------------------------------------------------------------------------------------ imports
def test_mappings_target_goldkey_fields(market: MarketManifest) -> None:
    for b in market.brands:
        for f in b.imports:
            assert set(f.mapping.values()) <= IMPORT_FIELDS[f.kind], (b.brand, f.kind)
            df = _read(f)
            assert set(df.columns) == set(f.mapping), (b.brand, f.kind)
    eye = market.brand("eyecare")
    assert eye.imports[3].path.suffix == ".parquet"
    assert "会员编号" in _read(eye.imports[1]).columns


def test_buying_groups_present(market: MarketManifest) -> None:
    orders = _read(market.brand("eyecare").imports[2]).with_columns(ph=_digits("手机号"))
    per = (
        orders.filter(pl.col("ph").str.len_chars() == 11)
        .group_by("ph")
        .agg(
            cats=pl.col("品类").unique(),
            lens=pl.col("商品编码").filter(pl.col("品类") == "lens").unique(),
            lens_orders=pl.col("订单号").filter(pl.col("品类") == "lens").n_unique(),
        )
    )
    buyers = per.height
    solution_only = per.filter(pl.col("cats").list.len() == 1, pl.col("cats").list.first() == "solution").height
    lens_only = per.filter(pl.col("cats").list.len() == 1, pl.col("cats").list.first() == "lens").height
    same_lens = per.filter(pl.col("lens").list.len() == 1, pl.col("lens_orders") >= 3).height
    never_lens_buyers = per.filter(pl.col("lens").list.len() == 0).height
    for size in (solution_only, lens_only, same_lens, never_lens_buyers):
        assert size >= 0.05 * buyers, (buyers, solution_only, lens_only, same_lens, never_lens_buyers)
    # members (CRM or online) who never bought lenses at all, including never-buyers
    crm = _read(market.brand("eyecare").imports[1]).with_columns(ph=_digits("手机号"))
    lens_buyers = set(per.filter(pl.col("lens").list.len() > 0)["ph"].to_list())
    assert sum(1 for p in crm["ph"].to_list() if p not in lens_buyers) >= 0.1 * crm.height


def test_wechat_unbound_members_present(market: MarketManifest, events: dict[str, list[dict[str, Any]]]) -> None:
    crm = _read(market.brand("eyecare").imports[1]).with_columns(ph=_digits("手机号"))
    unbound_crm = set(crm.filter(pl.col("微信OpenID").is_null())["ph"].to_list())
    sent_wechat: set[str] = set()
    online_phones: set[str] = set()
    for e in events["eyecare"]:
        if e["type"] == "identify":
            ph = re.sub(r"\D", "", e["traits"]["phone"])[-11:]
            online_phones.add(ph)
            if "wechat_openid" in e["traits"]:
                sent_wechat.add(ph)
    never_bound = unbound_crm - sent_wechat
    assert len(never_bound) >= 0.2 * crm.height
    assert len(never_bound & online_phones) >= 10  # unbound members who do use the app/web
    assert len(set(crm["ph"].to_list()) & online_phones) > 0  # old customers matched by phone
    assert len(online_phones - set(crm["ph"].to_list())) > 0  # new members not in the CRM


def test_feedback_has_repeat_unresolved_complaints(market: MarketManifest) -> None:
    fb = _read(market.brand("eyecare").imports[3])
    assert set(fb["type"].unique().to_list()) == {"complaint", "consultation", "review", "survey"}
    assert fb.schema["created"] == pl.Datetime("ms") and fb.schema["score"] == pl.Int64
    rep = (
        fb.filter(pl.col("type") == "complaint", pl.col("state") == "open", pl.col("mobile").is_not_null())
        .group_by("mobile", "topic")
        .len()
        .filter(pl.col("len") >= 2)
    )
    assert rep.height > 0
    truth = load_truth(market)
    assert truth.filter(pl.col("brand") == "eyecare")["true_repeat_unresolved"].sum() > 0


def test_bad_rows_exist_and_are_counted(market: MarketManifest) -> None:
    dirt = pl.read_parquet(market.dirt_path)
    for b in market.brands:
        total_bad = 0
        for f in b.imports:
            key = f"{b.brand}.{f.kind}"
            logged = dirt.filter(pl.col("brand") == b.brand, pl.col("kind") == f.kind)
            assert market.counts[f"{key}.bad"] == logged.filter(pl.col("severity") == "bad").height
            assert market.counts[f"{key}.duplicates"] == logged.filter(pl.col("severity") == "duplicate").height
            assert market.counts[f"{key}.dirty"] == logged.filter(pl.col("severity") == "dirty").height
            total_bad += market.counts[f"{key}.bad"]
            df = _read(f)
            assert df.height == market.counts[f"{key}.rows"]
            if f.kind != "products":
                assert market.counts[f"{key}.bad"] > 0 and market.counts[f"{key}.duplicates"] > 0
            # logged values are really in the file at the logged row
            rows = df.rows()
            for r in logged.filter(pl.col("severity") != "duplicate", pl.col("issue") != "no_identifier").iter_rows(
                named=True
            ):
                assert r["value"] in rows[r["row"]], r
            for r in logged.filter(pl.col("severity") == "duplicate").iter_rows(named=True):
                assert rows.count(rows[r["row"]]) >= 2
        assert market.counts[f"{b.brand}.bad"] == total_bad > 0
    issues = set(dirt["issue"].to_list())
    assert {
        "phone_invalid",
        "no_identifier",
        "exact_duplicate",
        "phone_format",
        "date_format",
        "region_variant",
        "amount_format",
    } <= issues
    assert (
        dirt.height
        < 0.02 * sum(market.counts[f"{b.brand}.{f.kind}.rows"] for b in market.brands for f in b.imports) + 60
    )


# ------------------------------------------------------------------------------------------ truth
def test_truth_is_hidden(market: MarketManifest) -> None:
    truth = load_truth(market)
    hidden = [c for c in truth.columns if c not in TRUTH_KEY_COLUMNS]
    assert {
        "prefers_lens_offer",
        "prefers_solution_offer",
        "affinity_sms",
        "affinity_email",
        "affinity_wechat",
        "affinity_push",
        "base_response_rate",
        "price_sensitivity",
        "churn_propensity",
        "data_pack_propensity",
    } <= set(hidden)
    assert market.truth_path.parent.name == "_truth"
    for path in market.out_dir.rglob("*"):
        if not path.is_file() or "_truth" in path.parts or path.name == "manifest.json":
            continue
        data = path.read_bytes()
        for col in hidden:
            assert col.encode() not in data, (path, col)
        if path.suffix == ".parquet":
            assert not set(pl.read_parquet_schema(path)) & set(hidden)


def test_truth_keys_match_what_the_platform_sees(market: MarketManifest) -> None:
    truth = load_truth(market)
    eye = truth.filter(pl.col("brand") == "eyecare")
    crm = _read(market.brand("eyecare").imports[1])
    crm_ids = set(crm["会员编号"].drop_nulls().to_list())
    assert crm_ids <= set(eye["crm_id"].drop_nulls().to_list())
    subs = _read(market.brand("operator").imports[1])
    op = truth.filter(pl.col("brand") == "operator")
    assert set(subs["subscriber_id"].drop_nulls().to_list()) <= set(op["user_id"].to_list())
    assert eye.filter(pl.col("crm_id").is_null() & pl.col("user_id").is_null()).height == 0


def test_behaviour_correlates_with_hidden_preferences(
    market: MarketManifest, events: dict[str, list[dict[str, Any]]]
) -> None:
    truth = load_truth(market)
    clicks = Counter(e["userId"] for e in events["eyecare"] if "campaign" in e["context"] and "userId" in e)
    eye = truth.filter(pl.col("brand") == "eyecare", pl.col("user_id").is_not_null()).with_columns(
        clicks=pl.col("user_id").replace_strict(dict(clicks), default=0, return_dtype=pl.Int64)
    )
    assert eye.select(pl.corr("clicks", "base_response_rate")).item() > 0.2
    packs = Counter(e["userId"] for e in events["operator"] if e.get("event") == "Order Completed")
    orders = _read(market.brand("operator").imports[2]).filter(pl.col("category") == "data_pack")
    hist = Counter(orders["subscriber_id"].drop_nulls().to_list())
    total = {u: packs[u] + hist[u] for u in set(packs) | set(hist)}
    op = truth.filter(pl.col("brand") == "operator").with_columns(
        packs=pl.col("user_id").replace_strict(total, default=0, return_dtype=pl.Int64)
    )
    assert op.select(pl.corr("packs", "data_pack_propensity")).item() > 0.2
