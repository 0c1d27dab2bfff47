"""The demo's audience: the eye-care brand's customer groups as tags, and a few segments for each
brand, defined and computed through the REST API like a marketer's script would.

Eye-care groups (PRODUCT.md): solution-only buyers, lens-only buyers, same-lens loyalists,
WeChat-unbound members, members who never bought lenses.

The demo market's history runs from 2025-01-01 for 540 days (to 2026-06-25), so windows relative
to now are long (a year) for the segments to have members.
"""

from __future__ import annotations

from typing import Any

import httpx

MEMBER = {"kind": "or", "conditions": [
    {"kind": "attribute", "field": "profile.identifier_types", "op": "contains", "value": "crm_id"},
    {"kind": "attribute", "field": "profile.identifier_types", "op": "contains", "value": "user_id"},
]}


def _cat(op: str, category: str) -> dict[str, Any]:
    return {"kind": "attribute", "field": "orders.categories", "op": op, "value": category}


EYECARE_TRAITS: list[dict[str, Any]] = [
    {"name": "lens_skus", "description": "distinct lens products bought / 购买过的镜片款数", "source": "order_lines",
     "aggregate": "distinct_count", "property": "sku",
     "where": [{"property": "category", "op": "eq", "value": "lens"}]},
    {"name": "lens_orders", "description": "order lines with lenses / 镜片购买次数", "source": "order_lines",
     "aggregate": "count", "where": [{"property": "category", "op": "eq", "value": "lens"}]},
    {"name": "views_365d", "description": "product views in the last year / 近一年浏览商品次数",
     "source": "events", "event": "Product Viewed", "aggregate": "count", "window": {"last_days": 365}},
]

EYECARE_TAGS: list[dict[str, Any]] = [
    {"name": "solution_only_buyer", "kind": "rule", "value_type": "boolean", "category": "consumption",
     "owner": "demo", "description": "只买护理液 / bought solution, never lenses",
     "rules": [{"rule": {"kind": "and", "conditions": [_cat("contains", "solution"), _cat("not_contains", "lens")]}}]},
    {"name": "lens_only_buyer", "kind": "rule", "value_type": "boolean", "category": "consumption",
     "owner": "demo", "description": "只买镜片 / bought lenses, never solution",
     "rules": [{"rule": {"kind": "and", "conditions": [_cat("contains", "lens"), _cat("not_contains", "solution")]}}]},
    {"name": "same_lens_loyalist", "kind": "rule", "value_type": "boolean", "category": "consumption",
     "owner": "demo", "description": "总买同一款镜片 / bought lenses at least twice, always the same one",
     "rules": [{"rule": {"kind": "and", "conditions": [
         {"kind": "attribute", "field": "traits.lens_skus", "op": "eq", "value": 1},
         {"kind": "attribute", "field": "traits.lens_orders", "op": "gte", "value": 2}]}}]},
    {"name": "wechat_unbound_member", "kind": "rule", "value_type": "boolean", "category": "social",
     "owner": "demo", "description": "未绑定微信的会员 / members without a WeChat binding",
     "rules": [{"rule": {"kind": "and", "conditions": [MEMBER, {"kind": "not", "condition": {
         "kind": "attribute", "field": "profile.identifier_types", "op": "contains", "value": "wechat_openid"}}]}}]},
    {"name": "never_bought_lens_member", "kind": "rule", "value_type": "boolean", "category": "consumption",
     "owner": "demo", "description": "从未买过镜片的会员 / members who never bought lenses",
     "rules": [{"rule": {"kind": "and", "conditions": [MEMBER, {"kind": "not", "condition": _cat("contains",
                                                                                                  "lens")}]}}]},
    {"name": "value_tier", "kind": "rule", "value_type": "enum", "category": "consumption", "owner": "demo",
     "description": "消费分层 / spend tier",
     "rules": [
         {"value": "high", "rule": {"kind": "attribute", "field": "orders.revenue", "op": "gte", "value": 2000}},
         {"value": "mid", "rule": {"kind": "attribute", "field": "orders.revenue", "op": "gte", "value": 500}},
         {"value": "low", "rule": {"kind": "attribute", "field": "orders.count", "op": "gte", "value": 1}}]},
]

EYECARE_SEGMENTS: list[dict[str, Any]] = [
    {"name": "护理液老客·推镜片 / solution-only buyers to convert",
     "description": "Solution-only buyers who looked at products in the last year",
     "rule": {"kind": "and", "conditions": [
         {"kind": "attribute", "field": "tags.solution_only_buyer", "op": "eq", "value": True},
         {"kind": "event", "event": "Product Viewed", "window": {"last_days": 365}}]}},
    {"name": "未绑微信会员 / members to bind on WeChat",
     "rule": {"kind": "attribute", "field": "tags.wechat_unbound_member", "op": "eq", "value": True}},
    {"name": "镜片复购到期 / lens buyers due to repurchase",
     "description": "Bought lenses, last order 5 to 9 months ago",
     "rule": {"kind": "and", "conditions": [
         _cat("contains", "lens"),
         {"kind": "attribute", "field": "orders.last_order_at", "op": "before", "value": {"days_ago": 150}},
         {"kind": "attribute", "field": "orders.last_order_at", "op": "after", "value": {"days_ago": 270}}]}},
    {"name": "浏览后未下单 / viewed then did not buy",
     "rule": {"kind": "and", "conditions": [
         {"kind": "event", "event": "Product Viewed", "window": {"last_days": 365}},
         {"kind": "event", "event": "Order Completed", "did": False, "window": {"last_days": 365}}]}},
]

MOBILE_SEGMENTS: list[dict[str, Any]] = [
    {"name": "高频充值 / frequent top-ups",
     "rule": {"kind": "event", "event": "Top Up", "count": {"op": "at_least", "n": 3}, "window": {"last_days": 365}}},
    {"name": "换机后一月内充值 / topped up within 30 days of a handset change",
     "rule": {"kind": "sequence", "within_days": 30, "steps": [{"event": "Handset Changed"}, {"event": "Top Up"}]}},
]


def define_audience(url: str, admin_token: str, brand: str) -> dict[str, Any]:
    """Create (once) and compute the brand's traits, tags and segments through the REST API; return
    trait, tag and segment figures."""
    h = {"Authorization": f"Bearer {admin_token}"}
    out: dict[str, Any] = {"traits": {}, "tags": {}, "segments": {}}
    traits = EYECARE_TRAITS if brand == "eyecare" else []
    tags = EYECARE_TAGS if brand == "eyecare" else []
    segs = EYECARE_SEGMENTS if brand == "eyecare" else MOBILE_SEGMENTS
    with httpx.Client(base_url=url, headers=h, timeout=600) as c:
        if traits:
            have = {t["name"] for t in _ok(c.get("/api/v1/traits"))["traits"]}
            for t in traits:
                if t["name"] not in have:
                    _ok(c.post("/api/v1/traits", json=t))
            _ok(c.post("/api/v1/traits/compute", json={}))
        if brand == "eyecare":  # RFM groups and value tiers (two years: the market ended in mid-2026)
            rfm = _ok(c.post("/api/v1/insights/rfm/run", json={"lookback_days": 730}))
            out["rfm"] = {"version": rfm.get("version"), "profiles": rfm.get("profiles")}
            # lifecycle stages for the overview (default rules, as of now)
            lc = _ok(c.post("/api/v1/insights/lifecycle/run", json={}))
            out["lifecycle"] = {"version": lc.get("version"), "stages": lc.get("metrics", {}).get("stages")}
        have = {t["name"] for t in _ok(c.get("/api/v1/tags"))}
        for t in tags:
            if t["name"] not in have:
                _ok(c.post("/api/v1/tags", json=t))
            _ok(c.post(f"/api/v1/tags/{t['name']}/compute"))
            cov = _ok(c.get(f"/api/v1/tags/{t['name']}/coverage"))
            out["tags"][t["name"]] = {v["value"] if not isinstance(v["value"], bool) else "true": v["profiles"]
                                      for v in cov["values"]}
        have_s = {s["name"]: s["segment_id"] for s in _ok(c.get("/api/v1/segments"))}
        for s in segs:
            sid = have_s.get(s["name"]) or _ok(c.post("/api/v1/segments", json=s))["segment_id"]
            snap = _ok(c.post(f"/api/v1/segments/{sid}/compute"))
            out["segments"][s["name"]] = {"segment_id": sid, "size": snap["size"], "took_ms": snap["took_ms"]}
    return out


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json()
