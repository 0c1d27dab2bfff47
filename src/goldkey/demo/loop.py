"""The demo's closed loop: campaigns and a real-time trigger run on the demo market, the market's
hidden preferences decide who responds, the responses come back through the real ingestion paths,
and each campaign's funnel and measured uplift over its holdout are printed.

What runs (all through the REST and tracking APIs, like a marketer's script and the customers' devices):

* 明眸 Eye Care — the cross-sell pair: solution-only buyers get a lens offer, lens-only buyers a
  solution offer, each with a 20% holdout; a **random-target** campaign of the same size as the lens
  offer, same offer and holdout, drawn at random from all members (its own coupon, so the platform's
  de-duplication does not treat it as the same message); the WeChat-unbound members' re-engagement
  push (converts when the customer binds WeChat).
* Skyline Mobile — the real-time data-pack trigger: "data used >= 75% of the plan -> offer a data pack".
  Today's usage reports are sent through ``/v1/batch``; the trigger fires on the ingestion path.

The "world" (``World``) plays the customers. It reads what the sink channels wrote (the messages
as a phone, an app or WeChat would receive them), finds the person behind each address in the
market's hidden truth, and draws responses from that person's hidden offer preference, channel
affinity and base response rate; everyone in the market also buys on their own at a small organic
rate, so holdouts convert too and the uplift is what the messages added. The attribution week is
compressed into the moment after the sends: every response is stamped "now". Responses come back as
an orders export through the order importer (store and online orders, as the brands' order files do),
as ``Order Completed`` / ``WeChat Bound`` events through ``/v1/batch`` for online customers, and as
clicks on the messages' tracked links. Nothing of the truth reaches the platform except through those
paths. The world is seeded: the same market and seed give the same person the same answer to the
same campaign, and draw the same random target. Which members the platform holds out is its own
choice (by its profile and campaign ids, new on every fresh run), so the counts of a run still vary.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import orjson
import polars as pl
from rich.console import Console
from rich.table import Table

from goldkey.demo.audience import MEMBER

CN = ZoneInfo("Asia/Shanghai")
HOLDOUT_PCT = 20.0
#: product offered, coupon, and the preference column of the truth that decides the response
LENS_OFFER = {"sku": "L-MM-D30", "name": "明眸 清透 日抛 30片", "category": "lens", "price": 99.0}
SOLUTION_OFFER = {"sku": "S-AL-OPT300", "name": "视康 傲滴 多功能护理液 300ml", "category": "solution",
                  "price": 79.0}

LENS_ONLY_SEGMENT = {
    "name": "镜片老客·推护理液 / lens-only buyers to cross-sell",
    "description": "Bought lenses, never solution",
    "rule": {"kind": "attribute", "field": "tags.lens_only_buyer", "op": "eq", "value": True}}
ALL_MEMBERS_SEGMENT = {"name": "全体会员 / all members", "rule": MEMBER}
SOLUTION_ONLY_SEGMENT = "护理液老客·推镜片 / solution-only buyers to convert"
UNBOUND_SEGMENT = "未绑微信会员 / members to bind on WeChat"


@dataclass
class LoopResult:
    """What the closed loop measured (the demo test reads it)."""

    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> report
    trigger: dict[str, Any] = field(default_factory=dict)
    world: dict[str, int] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    events_accepted: int = 0  # what the world sent through /v1/batch and the server stored


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def _unit(*parts: object) -> float:
    """A deterministic uniform [0, 1) draw from its parts (the world's dice)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _digits(phone: str | None) -> str | None:
    if not phone:
        return None
    d = "".join(ch for ch in phone if ch.isdigit())
    return d[2:] if len(d) == 13 and d.startswith("86") else d


class Admin:
    """A brand's admin session on the REST API."""

    def __init__(self, url: str, token: str) -> None:
        self.c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)

    def get(self, path: str, **kw: Any) -> Any:
        return _ok(self.c.get(path, **kw))

    def post(self, path: str, body: Any = None) -> Any:
        return _ok(self.c.post(path, json=body if body is not None else {}))

    def put(self, path: str, body: Any) -> Any:
        return _ok(self.c.put(path, json=body))

    def close(self) -> None:
        self.c.close()

    def channel(self, name: str, simulates: str, path: Path) -> str:
        """The demo's sink channel ``name`` writing ``path`` (a file in the workspace's folder of the
        channel-files directory, given by its name): created, or set to that file when an earlier
        run saved it elsewhere."""
        body = {"name": name, "kind": "sink", "config": {"simulates": simulates, "path": path.name}}
        for ch in self.get("/api/v1/channels"):
            if ch["name"] == name:
                if ch["config"].get("path") != path.name:
                    self.put(f"/api/v1/channels/{ch['channel_id']}", body)
                return ch["channel_id"]
        return self.post("/api/v1/channels", body)["channel_id"]

    def segment(self, spec: dict[str, Any]) -> dict[str, Any]:
        have = {s["name"]: s for s in self.get("/api/v1/segments")}
        sid = have[spec["name"]]["segment_id"] if spec["name"] in have else self.post("/api/v1/segments",
                                                                                     spec)["segment_id"]
        snap = self.post(f"/api/v1/segments/{sid}/compute")
        return {"segment_id": sid, "size": snap["size"], "name": spec["name"]}

    def segment_by_name(self, name: str) -> dict[str, Any]:
        s = next(s for s in self.get("/api/v1/segments") if s["name"] == name)
        return {"segment_id": s["segment_id"], "size": s["size"], "name": name}

    def members(self, sid: str) -> list[str]:
        out: list[str] = []
        while True:
            page = self.get(f"/api/v1/segments/{sid}/members", params={"limit": 1000, "offset": len(out)})
            items = page.get("members") or page.get("items") or []
            out += [m["profile_id"] for m in items]
            if not items or len(out) >= page.get("total", 0):
                return out

    def campaign(self, body: dict[str, Any]) -> tuple[str, bool]:
        """Create and launch; a re-run of the demo finds the campaign of the same name and reports it again.
        Returns (campaign id, launched now)."""
        old = next((c for c in self.get("/api/v1/campaigns") if c["name"] == body["name"]), None)
        cid = old["campaign_id"] if old else self.post("/api/v1/campaigns", body)["campaign_id"]
        if old is None or old["status"] == "draft":
            self.post(f"/api/v1/campaigns/{cid}/launch")
            return cid, True
        return cid, False

    def wait_done(self, cid: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.get(f"/api/v1/campaigns/{cid}")
            if c["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
                return c
            time.sleep(0.5)


def _demo_policy(admin: Admin, url: str) -> None:
    """Links point at this server; quiet hours off: the sinks reach nobody, and the demo must run at any hour."""
    policy = admin.get("/api/v1/send-policy")
    policy.update({"tracking_base_url": url, "quiet_hours": None})
    admin.put("/api/v1/send-policy", policy)


def _offer_campaign(name: str, audience: dict[str, Any], channel_id: str, offer: dict[str, Any],
                    coupon: str) -> dict[str, Any]:
    link = f"{{{{ link('https://www.mingmou.cn/offer/{offer['sku']}') }}}}"
    zh = (f"{{{{ attributes.name | default('亲爱的会员') }}}}您好，明眸会员专享：{offer['name']} "
          f"凭券 {{{{ vars.coupon }}}} 立减 20 元 {link} 退订回T")
    return {
        "name": name, "audience": audience, "channel_id": channel_id, "holdout_pct": HOLDOUT_PCT,
        "variants": [{"key": "A", "template": {"variants": {"zh": {"text": zh}}, "vars": ["coupon"]}}],
        "conversion": {"order": True, "attribution_days": 7}, "vars": {"coupon": coupon},
        "cost_per_message": 0.05,
    }


class World:
    """The demo market's customers: who they are (hidden truth), and how they answer a message."""

    def __init__(self, truth: pl.DataFrame, brand: str, seed: int) -> None:
        t = truth.filter(pl.col("brand") == brand)
        self.brand, self.seed = brand, seed
        self.rows = t.to_dicts()
        self.by_phone = {_digits(r["phone"]): i for i, r in enumerate(self.rows) if r.get("phone")}
        self.by_device = {r["true_device_id"]: i for i, r in enumerate(self.rows) if r.get("true_device_id")}
        self.by_openid = {r["true_wechat_openid"]: i for i, r in enumerate(self.rows) if r.get("true_wechat_openid")}

    def person(self, simulates: str, to: str) -> int | None:
        if simulates in ("sms", "call"):
            return self.by_phone.get(_digits(to))
        if simulates == "push":
            return self.by_device.get(to)
        if simulates == "wechat":
            return self.by_openid.get(to)
        return None

    def draw(self, *parts: object) -> float:
        return _unit(self.seed, self.brand, *parts)


def read_outbox(path: Path, since: str) -> list[dict[str, Any]]:
    """The messages a sink wrote at or after ``since`` (ISO time)."""
    if not path.exists():
        return []
    out = []
    with path.open("rb") as f:
        for line in f:
            m = orjson.loads(line)
            if m["at"] >= since:
                out.append(m)
    return out


def _links(text: str) -> list[str]:
    return [w for w in text.split() if "/t/c/" in w]


class Responses:
    """What the world sends back: order lines (an orders export), tracking events, link clicks."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.clicks: list[str] = []

    def order(self, brand: str, person: dict[str, Any], product: dict[str, Any], at: datetime, key: str) -> None:
        online = bool(person.get("user_id"))
        self.orders.append({"order_id": f"{'MMS' if brand == 'eyecare' else 'SOS'}{key}", "at": at,
                            "crm_id": person.get("crm_id"), "phone": person.get("phone"),
                            "user_id": person.get("user_id"), "product": product,
                            "channel": "online" if online else "store"})
        if online:
            self.events.append({
                "type": "track", "event": "Order Completed", "userId": person["user_id"],
                "messageId": str(uuid.UUID(bytes=hashlib.md5(key.encode()).digest())), "timestamp": _iso(at),
                "properties": {"order_id": self.orders[-1]["order_id"], "total": product["price"],
                               "revenue": product["price"], "currency": "CNY",
                               "products": [{"sku": product["sku"], "name": product["name"],
                                             "category": product["category"], "price": product["price"],
                                             "quantity": 1}]}})


def _known_ids(gk: Any, ws: str) -> dict[str, str]:
    """Each profile's smallest crm_id / user_id: a key that does not change from run to run."""
    import sqlalchemy as sa

    from goldkey.store.operational import identities

    with gk.engine.connect() as conn:
        rows = conn.execute(sa.select(identities.c.profile_id, sa.func.min(identities.c.id_type + ":" +
                                                                            identities.c.id_value))
                            .where(identities.c.workspace_id == ws, identities.c.id_type.in_(("crm_id", "user_id")))
                            .group_by(identities.c.profile_id)).all()
    return {pid: key for pid, key in rows}


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _write_orders(path: Path, brand: str, lines: list[dict[str, Any]]) -> dict[str, str]:
    """An orders export in the brand's own file format; returns its column mapping."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if brand == "eyecare":
        cols = ["订单号", "下单时间", "会员编号", "手机号", "线上账号", "商品编码", "商品名称", "品类", "数量", "单价",
                "金额", "渠道", "币种"]
        mapping = {"订单号": "order_id", "下单时间": "ordered_at", "会员编号": "crm_id", "手机号": "phone",
                   "线上账号": "user_id", "商品编码": "sku", "商品名称": "product_name", "品类": "category",
                   "数量": "quantity", "单价": "unit_price", "金额": "line_amount", "渠道": "channel",
                   "币种": "currency"}
    else:
        cols = ["order_no", "order_time", "subscriber_id", "msisdn", "sku", "item_name", "category", "qty",
                "unit_price", "amount", "sales_channel", "currency"]
        mapping = {"order_no": "order_id", "order_time": "ordered_at", "subscriber_id": "user_id", "msisdn": "phone",
                   "sku": "sku", "item_name": "product_name", "category": "category", "qty": "quantity",
                   "unit_price": "unit_price", "amount": "line_amount", "sales_channel": "channel",
                   "currency": "currency"}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for o in lines:
            p = o["product"]
            at = o["at"].astimezone(CN).strftime("%Y-%m-%d %H:%M:%S")
            price = f"{p['price']:.2f}"
            if brand == "eyecare":
                w.writerow([o["order_id"], at, o["crm_id"] or "", o["phone"] or "", o["user_id"] or "", p["sku"],
                            p["name"], p["category"], 1, price, price, o["channel"], "CNY"])
            else:
                w.writerow([o["order_id"], at, o["user_id"] or "", o["phone"] or "", p["sku"], p["name"],
                            p["category"], 1, price, price, o["channel"], "CNY"])
    return mapping


class Loop:
    """Runs the closed loop for the demo's two brands."""

    def __init__(self, gk: Any, url: str, brands: list[Any], truth: pl.DataFrame, out_dir: Path, seed: int,
                 console: Console) -> None:
        self.gk, self.url, self.truth, self.out, self.seed, self.console = gk, url, truth, out_dir, seed, console
        self.brands = {b.brand: b for b in brands}
        self.result = LoopResult()

    # -- ingestion paths back into the platform ------------------------------------------------------------
    def _send_events(self, brand: str, events: list[dict[str, Any]]) -> None:
        key = self.brands[brand].write_key
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        with httpx.Client(base_url=self.url, timeout=120) as c:
            for i in range(0, len(events), 200):
                r = c.post("/v1/batch", content=orjson.dumps({"batch": events[i:i + 200]}),
                           headers={"Authorization": auth, "Content-Type": "application/json"})
                ack = _ok(r)
                if ack["rejected"]:
                    raise RuntimeError(f"the server refused the world's events: {ack['rejected'][:3]}")
                self.result.events_accepted += ack["accepted"]

    def _import_orders(self, brand: str, lines: list[dict[str, Any]], name: str) -> dict[str, Any]:
        if not lines:
            return {"rows_read": 0, "accepted": 0, "quarantined": 0}
        path = self.out / f"{brand}-{name}.csv"
        mapping = _write_orders(path, brand, lines)
        s = self.gk.importer.run(self.brands[brand].workspace_id, "orders", path, mapping)
        return s.as_dict()

    def _click(self, links: list[str]) -> None:
        with httpx.Client(timeout=30, follow_redirects=False) as c:
            for u in links:
                c.get(u)

    # -- eye care ------------------------------------------------------------------------------------------
    def eyecare(self) -> None:
        b = self.brands["eyecare"]
        admin = Admin(self.url, b.admin_token)
        world = World(self.truth, "eyecare", self.seed)
        try:
            _demo_policy(admin, self.url)
            # the sinks write in the workspace's folder of the channel-files directory (and nowhere else)
            sms_path, push_path = (self.gk.sender.channels.file_path(b.workspace_id, f"eyecare-{k}.jsonl")
                                   for k in ("sms", "push"))
            sms = admin.channel("短信 SMS (demo sink)", "sms", sms_path)
            push = admin.channel("App 推送 Push (demo sink)", "push", push_path)
            since = _iso(datetime.now(UTC) - timedelta(seconds=1))
            sol_only = admin.segment_by_name(SOLUTION_ONLY_SEGMENT)
            lens_only = admin.segment(LENS_ONLY_SEGMENT)
            unbound = admin.segment_by_name(UNBOUND_SEGMENT)
            members = admin.segment(ALL_MEMBERS_SEGMENT)
            rng = np.random.default_rng(self.seed)
            # drawn from the members in a stable order (by the id the brand knows them by), so the
            # same market and seed draw the same people whatever profile ids this run made
            known = _known_ids(self.gk, b.workspace_id)
            pool = sorted(admin.members(members["segment_id"]), key=lambda pid: (known.get(pid, "~"), pid))
            k = min(sol_only["size"], len(pool))
            random_ids = sorted(rng.choice(pool, size=k, replace=False).tolist()) if k else []
            plan = [
                ("交叉销售·镜片 / cross-sell lenses to solution-only buyers", {"segment_id": sol_only["segment_id"]},
                 sms, LENS_OFFER, "LENS20", "lens"),
                ("交叉销售·护理液 / cross-sell solution to lens-only buyers", {"segment_id": lens_only["segment_id"]},
                 sms, SOLUTION_OFFER, "SOL20", "solution"),
                ("随机对照·镜片 / lens offer to random members", {"list": {"id_type": "profile_id",
                                                                         "values": random_ids}},
                 sms, LENS_OFFER, "LENSR20", "lens"),
            ]
            cids: dict[str, tuple[str, dict[str, Any], str]] = {}
            launched = False
            for name, audience, ch, offer, coupon, pref in plan:
                if audience.get("list") is not None and not random_ids:
                    continue
                cid, new = admin.campaign(_offer_campaign(name, audience, ch, offer, coupon))
                cids[name], launched = (cid, offer, pref), launched or new
            push_name = "微信绑定唤醒 / WeChat binding re-engagement (push)"
            cid, new = admin.campaign({
                "name": push_name, "audience": {"segment_id": unbound["segment_id"]}, "channel_id": push,
                "holdout_pct": HOLDOUT_PCT, "conversion": {"event": "WeChat Bound", "attribution_days": 7},
                "variants": [{"key": "A", "template": {"variants": {"zh": {
                    "subject": "绑定微信，领 200 积分",
                    "text": "绑定微信即送 200 积分，镜片到期提醒不再错过 "
                            "{{ link('https://www.mingmou.cn/bind') }}"}}}}],
                "cost_per_message": 0.0})
            cids[push_name], launched = (cid, {}, "bind"), launched or new
            for cid, _, _ in cids.values():
                admin.wait_done(cid)
            # the world answers
            sent = read_outbox(sms_path, since) + read_outbox(push_path, since)
            by_campaign: dict[str, list[dict[str, Any]]] = {}
            for m in sent:
                by_campaign.setdefault((m.get("metadata") or {}).get("ref", ""), []).append(m)
            resp = Responses()
            now = datetime.now(UTC)
            counts: dict[str, Any] = {"messages": len(sent), "responses": 0, "organic": 0, "bound": 0, "clicks": 0,
                                      "responders": {}, "messaged_without_consent": 0}
            for name, (cid, offer, pref) in cids.items():
                responders: set[int] = set()
                for m in by_campaign.get(f"campaign:{cid}", []):
                    i = world.person(m["simulates"], m["to"])
                    if i is None:
                        continue
                    p = world.rows[i]
                    if not p.get(f"true_consent_{m['simulates']}", True):
                        counts["messaged_without_consent"] += 1  # the platform must never let this happen
                    aff = p.get(f"affinity_{m['simulates']}") or 0.25
                    base = p["base_response_rate"]
                    if pref == "bind":
                        chance = min(0.9, base * 1.5 * (0.5 + 2 * aff))
                    else:
                        like = p["prefers_lens_offer"] if pref == "lens" else p["prefers_solution_offer"]
                        price = 1.2 - 0.4 * p["price_sensitivity"]
                        chance = min(0.9, 2 * base * like * like * (0.5 + 2 * aff) * price)
                    # the dice are the person's and the campaign's (by name), not the platform's
                    # random ids: the same market and seed give the same answers to the same messages
                    yes = world.draw("respond", name, i) < chance
                    if yes or world.draw("click", name, i) < base * 0.3:
                        resp.clicks += _links(m["text"])
                    if not yes:
                        continue
                    counts["responses"] += 1
                    responders.add(i)
                    at = now + timedelta(seconds=1)
                    if pref == "bind":
                        if p.get("user_id"):
                            counts["bound"] += 1
                            openid = "o" + hashlib.sha1(f"{p['user_id']}".encode()).hexdigest()[:27]
                            resp.events.append({"type": "identify", "userId": p["user_id"],
                                                "messageId": f"bind-{m['message_id']}", "timestamp": _iso(at),
                                                "traits": {"wechat_openid": openid}})
                            resp.events.append({"type": "track", "event": "WeChat Bound", "userId": p["user_id"],
                                                "messageId": f"bound-{m['message_id']}", "timestamp": _iso(at),
                                                "properties": {"source": "push", "reward_points": 200}})
                    else:
                        resp.order("eyecare", p, offer, at, f"{m['message_id'][-12:]}")
                counts["responders"][name] = len(responders)
            # organic purchases over the same (compressed) week, messaged or not (once: not on a re-run)
            for i, p in enumerate(world.rows if launched else []):
                if world.draw("organic", i) < 0.012 * (1 - 0.6 * p["churn_propensity"]):
                    counts["organic"] += 1
                    offer = LENS_OFFER if world.draw("organic-what", i) < 0.55 else SOLUTION_OFFER
                    resp.order("eyecare", p, offer, now + timedelta(seconds=2), f"O{self.seed}{i:07d}")
            counts["clicks"] = len(resp.clicks)
            self._click(resp.clicks)
            self._send_events("eyecare", resp.events)
            imp = self._import_orders("eyecare", resp.orders, "orders-after-campaigns")
            counts["orders_imported"] = int(imp.get("accepted", 0))
            for name, (cid, _, _) in cids.items():
                self.result.campaigns[name] = admin.get(f"/api/v1/campaigns/{cid}/report")
            self.result.world["eyecare"] = counts
            names = list(cids)
            if len(names) >= 3:
                self.result.comparison = _compare(self.result.campaigns[names[0]], self.result.campaigns[names[2]])
        finally:
            admin.close()

    # -- operator ------------------------------------------------------------------------------------------
    def operator(self) -> None:
        b = self.brands["operator"]
        admin = Admin(self.url, b.admin_token)
        world = World(self.truth, "operator", self.seed)
        try:
            _demo_policy(admin, self.url)
            sms_path = self.gk.sender.channels.file_path(b.workspace_id, "operator-sms.jsonl")
            sms = admin.channel("SMS (demo sink)", "sms", sms_path)
            name = "流量包推荐 / data pack offer at 75% of the plan"
            trig = next((t for t in admin.get("/api/v1/triggers") if t["name"] == name), None)
            if trig is None:
                trig = admin.post("/api/v1/triggers", {
                    "name": name, "kind": "realtime",
                    "event": {"kind": "event", "event": "Data Usage Reported",
                              "where": [{"property": "used_pct", "op": "gte", "value": 75}]},
                    "window": {"unit": "month"}, "channel_id": sms,
                    # a fifth of the customers is held back: the trigger's effect is measured, not guessed
                    "holdout_pct": 20, "conversion": {"order": True, "attribution_days": 7},
                    "template": {"variants": {
                        "zh": {"text": "【Skyline】本月流量已用超 75%，3GB 流量包仅 20 元，回复 DP3 立即开通。退订回T"},
                        "en": {"text": "[Skyline] You have used over 75% of this month's data. 3GB for 20 CNY: reply "
                                       "DP3. STOP to opt out."}}}})
            f0 = next(t for t in admin.get("/api/v1/triggers") if t["trigger_id"] == trig["trigger_id"])["firings"]
            before = f0.get("queued", 0) + f0.get("sent", 0)  # a re-run of the demo fires nothing new
            since = _iso(datetime.now(UTC) - timedelta(seconds=1))
            # today's usage reports: every online subscriber's app reports its usage once
            now = datetime.now(UTC)
            events = []
            crossing = []
            for i, p in enumerate(world.rows):
                if not p.get("user_id"):
                    continue
                plan_mb = int(p.get("true_plan_mb") or 10240)
                pct = min(99.0, 100 * world.draw("usage", i) ** (1 / (1 + p["usage_intensity"])))
                used = int(plan_mb * pct / 100)
                if pct >= 75:
                    crossing.append(i)
                events.append({"type": "track", "event": "Data Usage Reported", "userId": p["user_id"],
                               "messageId": f"usage-{self.seed}-{i}-{now:%Y%m%d}", "timestamp": _iso(now),
                               "properties": {"day": f"{now.astimezone(CN):%Y-%m-%d}", "used_mb": used,
                                              "plan_mb": plan_mb, "used_pct": round(pct, 1), "daily_mb": 0}})
            self._send_events("operator", events)
            # the trigger fires on the ingestion path; wait until the real-time worker has settled
            deadline = time.monotonic() + 600
            seen: list[int] = []
            while time.monotonic() < deadline:
                t = next(t for t in admin.get("/api/v1/triggers") if t["trigger_id"] == trig["trigger_id"])
                seen.append(sum(t["firings"].values()))
                if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:
                    break
                time.sleep(1.0)
            firings = t["firings"]
            # reserved messages are delivered by the trigger's delivery worker: wait for them in the sink
            want = firings.get("queued", 0) + firings.get("sent", 0) - before
            sent = read_outbox(sms_path, since)
            until = time.monotonic() + 120
            while len(sent) < want and time.monotonic() < until:
                time.sleep(0.5)
                sent = read_outbox(sms_path, since)
            messaged = set()
            resp = Responses()
            pack = {"sku": "DP-3G", "name": "3GB Data Pack", "category": "data_pack", "price": 20.0}
            at = datetime.now(UTC) + timedelta(seconds=1)
            for m in sent:
                i = world.person("sms", m["to"])
                if i is None:
                    continue
                messaged.add(i)
                p = world.rows[i]
                chance = min(0.9, p["data_pack_propensity"] * (0.4 + 1.6 * p["affinity_sms"]) * 0.6)
                if world.draw("pack", i) < chance:
                    resp.order("operator", p, pack, at, f"{m['message_id'][-12:]}")
            bought_msg = len(resp.orders)
            buyers = {o["user_id"] for o in resp.orders if o.get("user_id")}
            bought_other = 0
            for i in crossing:  # some would buy a pack anyway, messaged or not
                p = world.rows[i]
                if p.get("user_id") in buyers or world.draw("pack-organic", i) >= p["data_pack_propensity"] * 0.12:
                    continue
                if i not in messaged:
                    bought_other += 1
                resp.order("operator", p, pack, at, f"O{self.seed}{i:07d}")
            self._send_events("operator", resp.events)
            self._import_orders("operator", resp.orders, "orders-after-trigger")
            lat = [f.get("latency_ms") for f in admin.get(f"/api/v1/triggers/{trig['trigger_id']}/firings",
                                                         params={"limit": 1000})["items"]]  # the newest 1,000
            lat = sorted(x for x in lat if x is not None)
            report = admin.get(f"/api/v1/triggers/{trig['trigger_id']}/report", params={"since": since})
            self.result.trigger = {
                "report": report,
                "name": name, "usage_events": len(events), "crossed_75pct": len(crossing), "firings": firings,
                "messages": len(sent), "bought_after_message": bought_msg, "messaged": len(messaged),
                "bought_not_messaged": bought_other, "crossed_not_messaged": len(crossing) - len(messaged),
                "latency_ms_p50": round(lat[len(lat) // 2], 1) if lat else None,
                "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
                "messaged_without_consent": sum(1 for i in messaged if not world.rows[i].get("true_consent_sms", True)),
            }
        finally:
            admin.close()

    def run(self) -> LoopResult:
        self.out.mkdir(parents=True, exist_ok=True)
        if "eyecare" in self.brands:
            self.eyecare()
        if "operator" in self.brands:
            self.operator()
        return self.result


def _rate_ci(arm: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    return arm.get("uplift"), arm.get("uplift_ci95")


def _compare(targeted: dict[str, Any], random: dict[str, Any]) -> dict[str, Any]:
    """Targeted vs random: uplift (ITT, vs each campaign's own holdout) and conversion rates."""
    def pick(rep: dict[str, Any]) -> dict[str, Any]:
        t = rep["uplift"].get("treated") or {}
        h = rep["uplift"].get("holdout") or {}
        return {"n": t.get("n"), "conversion_rate": t.get("conversion_rate"),
                "holdout_rate": h.get("conversion_rate"), "uplift": t.get("uplift"),
                "uplift_ci95": t.get("uplift_ci95"), "incremental_conversions": t.get("incremental_conversions")}
    a, b = pick(targeted), pick(random)
    out: dict[str, Any] = {"targeted": a, "random": b, "uplift_difference": None, "uplift_difference_ci95": None,
                           "targeted_beats_random": False, "verdict": "not measured"}
    if a["uplift"] is None or b["uplift"] is None:
        return out
    diff = a["uplift"] - b["uplift"]
    out["uplift_difference"] = diff
    out["verdict"] = "higher, not significant" if diff > 0 else "not higher"
    if a["uplift_ci95"] and b["uplift_ci95"]:
        # the two uplifts come from independent customers: their difference's 95% interval by MOVER
        # (Zou & Donner 2008) from each uplift's own interval
        (l1, u1), (l2, u2) = a["uplift_ci95"], b["uplift_ci95"]
        lo = diff - math.sqrt((a["uplift"] - l1) ** 2 + (u2 - b["uplift"]) ** 2)
        hi = diff + math.sqrt((u1 - a["uplift"]) ** 2 + (b["uplift"] - l2) ** 2)
        out["uplift_difference_ci95"] = [lo, hi]
        out["targeted_beats_random"] = lo > 0  # measured, not a point estimate's luck
        if lo > 0:
            out["verdict"] = "beats"
    return out


def print_loop(console: Console, r: LoopResult) -> None:
    """The funnels, the uplifts and the targeted-vs-random comparison."""
    console.rule("Closed loop: campaigns on the demo market (responses decided by its hidden preferences)")
    if r.world.get("eyecare"):
        w = r.world["eyecare"]
        if w["messages"] == 0 and r.campaigns:
            console.print("this run sent nothing new: the campaigns already ran on this data directory (a message "
                          "goes once per customer), so the tables below are their reports from the earlier run(s)")
        else:
            console.print(f"the world answered {w['messages']} messages: {w['responses']} responses, {w['clicks']} "
                          f"link clicks, {w['organic']} organic orders; {w.get('orders_imported', 0)} order lines "
                          "imported, online ones also tracked (the attribution week is compressed into now)")
    for name, rep in r.campaigns.items():
        t = Table(title=name, show_lines=False)
        for col in ("arm", "targeted", "suppressed", "sent", "clicked", "converted", "conv. rate", "revenue",
                    "cost", "ROI"):
            t.add_column(col, justify="right" if col != "arm" else "left")
        for a in rep["arms"]:
            if a["arm"] == "holdout":
                itt = a["itt"]
                t.add_row("holdout", str(a["targeted"]), "", "", "", str(itt["converted"]),
                          _pct(itt["conversion_rate"]), f"{itt['revenue']:.0f}", "", "")
                continue
            t.add_row(a["arm"], str(a["targeted"]), str(a["suppressed"]), str(a["sent"]), str(a["clicked"]),
                      str(a["converted"]), _pct(a["conversion_rate"]), f"{a['revenue']:.0f}", f"{a['cost']:.2f}",
                      "" if a["roi"] is None else f"{a['roi']:.1f}")
        console.print(t)
        reasons = {k: v for a in rep["arms"] for k, v in (a.get("suppressed_by_reason") or {}).items()}
        if reasons:
            console.print("  suppressed: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
        u = rep["uplift"]
        if u.get("available") and u.get("treated"):
            tr = u["treated"]
            ci = tr.get("uplift_ci95") or [None, None]
            console.print(f"  uplift over holdout (intention to treat): {_pp(tr['uplift'])} "
                          f"(95% CI {_pp(ci[0])} to {_pp(ci[1])}), incremental conversions "
                          f"{tr.get('incremental_conversions', 0):.1f}, incremental revenue "
                          f"{tr.get('incremental_revenue', 0):.0f}")
    c = r.comparison
    if c:
        a, b = c["targeted"], c["random"]
        ca, cb = a["uplift_ci95"] or [None, None], b["uplift_ci95"] or [None, None]
        console.print(f"\n[bold]Segment targeting vs a random target of the same size[/bold] (same lens offer): "
                      f"uplift {_pp(a['uplift'])} (95% CI {_pp(ca[0])} to {_pp(ca[1])}) vs {_pp(b['uplift'])} "
                      f"(95% CI {_pp(cb[0])} to {_pp(cb[1])}); conversion {_pct(a['conversion_rate'])} vs "
                      f"{_pct(b['conversion_rate'])}")
        d, dci = c["uplift_difference"], c["uplift_difference_ci95"] or [None, None]
        verdict = {"beats": "targeting beats random on this run",
                   "higher, not significant": "targeting did better on this run, but the difference's 95% CI "
                                              "includes 0: not shown to beat random",
                   "not higher": "targeting did NOT beat random on this run"}.get(c["verdict"], "not measured")
        console.print(f"  difference in uplift {_pp(d)} (95% CI {_pp(dci[0])} to {_pp(dci[1])}) -> {verdict}")
    if r.trigger:
        t = r.trigger
        if t["messages"] == 0 and any(t["firings"].values()):
            console.print(f"\n[bold]{t['name']}[/bold]: nothing new fired on this run (its usage reports were "
                          "already loaded: duplicates); the firings and the report below count every run so far")
        console.print(f"\n[bold]{t['name']}[/bold] (real time, on /v1/batch): {t['usage_events']} usage reports, "
                      f"{t['crossed_75pct']} crossed 75%, firings {t['firings']}, {t['messages']} messages; "
                      f"data packs bought: {t['bought_after_message']} of {t['messaged']} messaged, "
                      f"{t['bought_not_messaged']} of {t['crossed_not_messaged']} not messaged (held out or no "
                      f"consent); event-to-queued latency p50 {t['latency_ms_p50']} ms, p99 {t['latency_ms_p99']} ms")
        rep = t.get("report") or {}
        arms = {a["arm"]: a for a in rep.get("arms", [])}
        up = rep.get("uplift") or {}
        if up.get("available"):
            tr, ho = arms["treated"], arms["holdout"]
            ci = up["uplift_ci95"]
            console.print(f"  against its {rep['holdout_pct']:.0f}% holdout: bought within "
                          f"{rep['conversion'].get('attribution_days')} days of the firing "
                          f"{_pct(tr['conversion_rate'])} of {tr['firings']} treated firings ({tr['messaged']} "
                          f"messaged, the rest suppressed: intention to treat) vs {_pct(ho['conversion_rate'])} of "
                          f"{ho['firings']} held out -> uplift {_pp(up['uplift'])} (95% CI {_pp(ci[0])} to "
                          f"{_pp(ci[1])}), {up['incremental_conversions']:.0f} incremental packs")
        elif rep:
            console.print(f"  uplift not available: {up.get('reason')}")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f} pp"
