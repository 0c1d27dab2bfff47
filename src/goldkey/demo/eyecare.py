"""The eye-care brand of the demo market: "明眸 Eye Care", a social-CRM contact-lens retailer.

Simulates old CRM members (some offline only, some that later log in online), new online members,
WeChat binding, package QR-code scans, buying groups (solution-only, lens-only, same-lens rebuyers,
never-buyers), campaign responses, invitations, feedback and anonymous visitors. Writes a Chinese CRM
export (CSV), products and orders (CSV), feedback (Parquet) and chronological Segment JSONL events.
Hidden per-customer preferences drive the behaviour and are returned only as truth rows.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from goldkey.demo._base import (
    CITIES,
    CURRENCY,
    MS_DAY,
    MS_HOUR,
    MS_MIN,
    PROVINCES,
    BrandFiles,
    BrandResult,
    DirtSpec,
    EventTable,
    ImportFile,
    MarketConfig,
    ProgressFn,
    birthdays,
    choice_rows,
    cn_names,
    emails,
    epoch_ms,
    fmt_amount,
    fmt_date,
    fmt_datetime,
    hex_strings,
    hour_profile,
    inject_dirt,
    mix64,
    phone_numbers,
    pick,
    random_geo,
    random_ips,
    rng_for,
    token_strings,
    unique_ints,
    uuid_strings,
    write_csv,
    write_events,
)
from goldkey.demo.texts import eyecare_feedback

BRAND = "eyecare"
NAME = "明眸 Eye Care"
BRAND_NO = 1

# event kinds
K_VIEW, K_PVIEW, K_PADD, K_CHECKOUT, K_IDENTIFY, K_SIGNUP, K_QR, K_ORDER, K_INV_SENT, K_INV_ACC, K_ALIAS = range(11)
# identity modes: anonymous (primary device), user + anonymous, anonymous (second device), server (user only)
M_ANON, M_USER, M_ANON2, M_SERVER = range(4)
# customer segments
SEG_OFFLINE, SEG_ONLINE_OLD, SEG_NEW = range(3)
SEG_NAMES = ["offline_crm", "online_old", "new_member"]
# buyer groups
G_NEVER, G_SOL, G_LENS, G_SAME, G_MIXED = range(5)
GROUP_NAMES = ["never_bought", "solution_only", "lens_only", "same_lens", "mixed"]
# platforms
P_WEB, P_MINI, P_APP = range(3)
CHANNELS = ["sms", "email", "wechat", "push"]
OFFERS = ["lens_intro", "solution_promo", "trial_voucher", "member_day", "points_bonus"]
TIERS = ["普通会员", "银卡会员", "金卡会员", "钻石会员"]
TIER_PRICE = np.array([1.0, 0.98, 0.95, 0.9])
ONLINE_STORE = "线上商城"

# (sku, name, category, subcategory, brand, price, launched)
PRODUCTS: list[tuple[str, str, str, str, str, float, str]] = [
    ("L-ACU-1D30", "强生安视优 舒日 日抛 30片", "lens", "daily", "强生安视优", 189.0, "2019-03-01"),
    ("L-ACU-1D90", "强生安视优 舒日 日抛 90片", "lens", "daily", "强生安视优", 489.0, "2019-03-01"),
    ("L-ACU-OA6", "强生安视优 欧舒适 双周抛 6片", "lens", "biweekly", "强生安视优", 229.0, "2018-06-01"),
    ("L-ACU-DEF10", "强生安视优 美瞳 彩色日抛 10片", "lens", "color", "强生安视优", 99.0, "2021-04-01"),
    ("L-BL-BIO30", "博士伦 清朗 日抛 30片", "lens", "daily", "博士伦", 149.0, "2017-09-01"),
    ("L-BL-ULT6", "博士伦 超清 月抛 6片", "lens", "monthly", "博士伦", 259.0, "2020-02-15"),
    ("L-BL-SOF3", "博士伦 纯视 月抛 3片", "lens", "monthly", "博士伦", 119.0, "2016-05-01"),
    ("L-BL-LAC10", "博士伦 蕾丝明眸 彩色日抛 10片", "lens", "color", "博士伦", 89.0, "2022-03-01"),
    ("L-CV-CLA30", "库博光学 倍新 日抛 30片", "lens", "daily", "库博光学", 169.0, "2019-08-01"),
    ("L-CV-BIO6", "库博光学 佰视明 月抛 6片", "lens", "monthly", "库博光学", 199.0, "2018-01-10"),
    ("L-HC-DAY30", "海昌 星眸 日抛 30片", "lens", "daily", "海昌", 109.0, "2020-06-01"),
    ("L-HC-MON3", "海昌 水凝胶 月抛 3片", "lens", "monthly", "海昌", 69.0, "2015-04-01"),
    ("L-HC-HY1", "海昌 半年抛 1片", "lens", "half_year", "海昌", 59.0, "2014-01-01"),
    ("L-AL-DT30", "视康 水梦语 日抛 30片", "lens", "daily", "视康", 239.0, "2018-11-01"),
    ("L-AL-AIR6", "视康 舒视氧 月抛 6片", "lens", "monthly", "视康", 219.0, "2017-03-01"),
    ("L-MM-D30", "明眸 清透 日抛 30片", "lens", "daily", "明眸", 99.0, "2021-01-01"),
    ("L-MM-M6", "明眸 舒润 月抛 6片", "lens", "monthly", "明眸", 129.0, "2020-01-01"),
    ("L-MM-C10", "明眸 星光 彩色日抛 10片", "lens", "color", "明眸", 69.0, "2022-07-01"),
    ("L-MM-SI30", "明眸 硅水凝胶 日抛 30片", "lens", "daily", "明眸", 159.0, "2025-05-20"),
    ("L-MM-C30", "明眸 焕彩 彩色日抛 30片", "lens", "color", "明眸", 149.0, "2025-09-10"),
    ("L-ACU-MAX30", "强生安视优 悦舒 日抛 30片", "lens", "daily", "强生安视优", 219.0, "2026-01-15"),
    (
        "S-BL-RM355",
        "博士伦 润明 多功能护理液 355ml",
        "solution",
        "multipurpose",
        "博士伦",
        68.0,
        "2012-01-01",
    ),
    (
        "S-BL-RM500",
        "博士伦 润明 多功能护理液 500ml",
        "solution",
        "multipurpose",
        "博士伦",
        88.0,
        "2012-01-01",
    ),
    ("S-BL-RN120", "博士伦 润明 护理液 旅行装 120ml", "solution", "travel", "博士伦", 32.0, "2014-06-01"),
    ("S-AL-OPT300", "视康 傲滴 多功能护理液 300ml", "solution", "multipurpose", "视康", 79.0, "2013-03-01"),
    ("S-AL-AO360", "视康 傲滴 双氧水护理液 360ml", "solution", "peroxide", "视康", 108.0, "2016-03-01"),
    ("S-HC-CL500", "海昌 优能 护理液 500ml", "solution", "multipurpose", "海昌", 49.0, "2013-01-01"),
    ("S-CV-AV400", "库博光学 护理液 400ml", "solution", "multipurpose", "库博光学", 58.0, "2017-05-01"),
    ("S-MM-360", "明眸 多功能护理液 360ml", "solution", "multipurpose", "明眸", 45.0, "2019-01-01"),
    ("S-MM-60", "明眸 护理液 便携装 60ml", "solution", "travel", "明眸", 15.0, "2019-01-01"),
    ("S-MM-H2O2", "明眸 双氧水护理液 300ml", "solution", "peroxide", "明眸", 89.0, "2023-04-01"),
    ("A-MM-CASE", "明眸 隐形眼镜盒", "accessory", "case", "明眸", 15.0, "2019-01-01"),
    ("A-MM-TWZ", "明眸 硅胶镊子 佩戴器", "accessory", "tool", "明眸", 12.0, "2019-01-01"),
    ("A-MM-DROP", "明眸 润眼液 10ml", "accessory", "eye_drops", "明眸", 39.0, "2020-05-01"),
    ("A-BL-DROP", "博士伦 润眼液 15ml", "accessory", "eye_drops", "博士伦", 45.0, "2015-01-01"),
    ("A-MM-KIT", "明眸 护理盒套装", "accessory", "kit", "明眸", 29.0, "2021-01-01"),
    ("A-MM-MASK", "明眸 蒸汽眼罩 5片", "accessory", "eye_mask", "明眸", 49.0, "2022-10-01"),
    ("A-MM-CLOTH", "明眸 超细纤维眼镜布", "accessory", "cloth", "明眸", 9.0, "2019-01-01"),
]
PAGES = [
    ("首页", "/"),
    ("商品列表", "/products"),
    ("会员中心", "/member"),
    ("积分商城", "/points"),
    ("门店查询", "/stores"),
    ("购物车", "/cart"),
    ("邀请好友", "/invite"),
]
_STORE_SUFFIX = ["万达广场", "万象城", "步行街", "大学城", "火车站", "新城", "中心"]

CUSTOMER_MAP = {
    "会员编号": "crm_id",
    "手机号": "phone",
    "姓名": "name",
    "性别": "gender",
    "生日": "birthday",
    "省份": "region",
    "城市": "city",
    "会员等级": "member_tier",
    "积分": "points",
    "注册时间": "registered_at",
    "微信OpenID": "wechat_openid",
    "微信UnionID": "wechat_unionid",
    "邮箱": "email",
    "所属门店": "store",
    "接收营销短信": "consent_sms",
}
PRODUCT_MAP = {
    "商品编码": "sku",
    "商品名称": "name",
    "品类": "category",
    "子类": "subcategory",
    "品牌": "brand",
    "零售价": "price",
    "二维码前缀": "qr_code",
    "上市日期": "launched_at",
}
ORDER_MAP = {
    "订单号": "order_id",
    "下单时间": "ordered_at",
    "会员编号": "crm_id",
    "手机号": "phone",
    "线上账号": "user_id",
    "商品编码": "sku",
    "商品名称": "product_name",
    "品类": "category",
    "数量": "quantity",
    "单价": "unit_price",
    "金额": "line_amount",
    "渠道": "channel",
    "门店": "store",
    "省份": "region",
    "币种": "currency",
}
FEEDBACK_MAP = {
    "ticket_id": "feedback_id",
    "member_no": "crm_id",
    "mobile": "phone",
    "type": "kind",
    "source": "channel",
    "topic": "topic",
    "content": "text",
    "score": "rating",
    "question": "question",
    "answer": "answer",
    "created": "created_at",
    "state": "status",
}


def _beta(r: np.random.Generator, a: np.ndarray | float, b: np.ndarray | float, n: int) -> np.ndarray:
    return r.beta(np.broadcast_to(a, (n,)), np.broadcast_to(b, (n,)))


class _World:
    """All simulated state of the eye-care brand (arrays indexed by person, product, order, line)."""

    def __init__(self, cfg: MarketConfig, n: int, budget: int) -> None:
        self.cfg, self.n, self.budget = cfg, n, budget
        self.T0 = epoch_ms(cfg.start)
        self.H = cfg.days * MS_DAY
        self.prod_sku = [p[0] for p in PRODUCTS]
        self.prod_cat = np.array([("lens", "solution", "accessory").index(p[2]) for p in PRODUCTS])
        self.prod_price = np.array([p[5] for p in PRODUCTS])
        self.prod_launch = np.array([epoch_ms(dt.date.fromisoformat(p[6])) - self.T0 for p in PRODUCTS])
        self.lenses = np.flatnonzero(self.prod_cat == 0)
        self.sols = np.flatnonzero(self.prod_cat == 1)
        self.accs = np.flatnonzero(self.prod_cat == 2)
        self.stores = [
            (ci, f"明眸眼镜{CITIES[ci][1]}{_STORE_SUFFIX[(ci * 3 + k) % 7]}店")
            for ci in range(len(CITIES))
            for k in range(2)
        ]

    # ------------------------------------------------------------------------------------- people
    def people(self) -> None:
        """Draw identities, segments, WeChat binding, timelines and hidden preferences."""
        r, n, H = rng_for(self.cfg.seed, BRAND, "people"), self.n, self.H
        self.seg = pick(r, n, [0.22, 0.48, 0.30])
        self.female = r.random(n) < 0.68
        self.prov, self.city = random_geo(r, n)
        self.home_store = self.city * 2 + r.integers(0, 2, n)
        self.phone = [str(x) for x in phone_numbers(r, n)]
        self.pname = cn_names(r, self.female)
        em = emails(r, n)
        self.email = [e if h else None for e, h in zip(em, r.random(n) < 0.35, strict=True)]
        self.birthday = birthdays(r, self.cfg.start, n, 29, 7, 16, 62)
        self.in_crm = self.seg != SEG_NEW
        self.online = self.seg != SEG_OFFLINE
        crm_no = unique_ints(r, n, 0, 89_999_999)
        self.crm_id = [f"M{10_000_000 + int(x):08d}" if c else None for x, c in zip(crm_no, self.in_crm, strict=True)]
        uid_no = unique_ints(r, n, 0, 16**10)
        self.user_id = [f"mm{int(x):010x}" if o else None for x, o in zip(uid_no, self.online, strict=True)]
        self.bound = r.random(n) < np.array([0.15, 0.62, 0.78])[self.seg]
        self.openid = token_strings(r, n, 27, "o")
        self.unionid = token_strings(r, n, 28, "o")
        self.crm_has_openid = self.bound & self.in_crm & ((self.seg == SEG_OFFLINE) | (r.random(n) < 0.7))
        u = r.random(n)
        self.platform = np.where(self.bound, np.where(u < 0.75, P_MINI, P_WEB), np.where(u < 0.55, P_APP, P_WEB))
        self.anon = uuid_strings(r, n)
        self.device = uuid_strings(r, n)
        self.ip = random_ips(r, n)
        self.os_ver = r.integers(0, 4, n)

        # hidden preferences
        gp = np.array([[0.03, 0.22, 0.20, 0.17, 0.38], [0.06, 0.20, 0.18, 0.16, 0.40], [0.40, 0.14, 0.14, 0.07, 0.25]])
        self.group = choice_rows(r, gp[self.seg])
        g = self.group
        self.churn = _beta(r, 2.0, 5.0, n)
        self.price = _beta(r, 2.0, 2.0, n)
        self.brr = np.clip(
            _beta(r, 2.0, 16.0, n) * np.where(self.bound, 1.25, 1.0) * (1 - 0.5 * self.churn), 0.003, 0.6
        )
        la = np.array([2.0, 4.5, 3.0, 1.5, 3.0])[g]
        lb = np.array([4.0, 2.5, 3.0, 5.0, 3.0])[g]
        sa = np.array([2.0, 3.0, 4.5, 3.0, 3.0])[g]
        sb = np.array([4.0, 3.0, 2.5, 3.5, 3.0])[g]
        self.p_lens = _beta(r, la, lb, n)
        self.p_sol = _beta(r, sa, sb, n)
        self.p_trial = _beta(r, np.where(g == G_NEVER, 4.0, 2.0), np.where(g == G_NEVER, 3.0, 4.0), n)
        aff = r.dirichlet([1.2, 1.2, 1.2, 1.2], n)
        aff[:, 2] *= np.where(self.bound, 1.6, 1.0)
        aff[:, 3] *= np.where(self.platform == P_APP, 1.6, 1.0)
        self.aff = aff / aff.sum(axis=1, keepdims=True)
        self.referral = np.clip(_beta(r, 1.2, 12.0, n) + 0.05 * self.bound, 0, 1)
        self.engage = r.lognormal(0.0, 0.8, n)
        self.intensity = r.lognormal(0.0, 0.35, n)

        # timelines (ms relative to history start)
        day = MS_DAY
        reg = np.where(
            self.in_crm,
            -(r.uniform(30, 9 * 365, n) * day).astype(np.int64),
            (r.uniform(0.02, 0.97, n) * H).astype(np.int64),
        )
        self.registered = reg
        first = np.zeros(n, dtype=np.int64)
        first = np.where(self.seg == SEG_ONLINE_OLD, (r.uniform(0, 0.75, n) * H).astype(np.int64), first)
        first = np.where(
            self.seg == SEG_NEW, np.maximum(0, reg - (r.exponential(5.0, n) * day).astype(np.int64)), first
        )
        self.first = first
        ident = np.where(self.seg == SEG_NEW, reg, first + (r.exponential(2.0, n) * day).astype(np.int64))
        ident = np.minimum(ident, H - 2 * day)
        ident = np.where(self.online, np.maximum(ident, first + MS_MIN), 2**62)
        self.ident = ident
        bind = ident + (r.uniform(0, 120, n) * day).astype(np.int64)
        bind = np.where(self.platform == P_MINI, ident, bind)
        bind = np.where(bind > H - day, ident, bind)
        self.bind = np.where(self.bound & self.online, bind, 2**62)
        self.churned = r.random(n) < self.churn * 0.7
        start = np.where(self.online, first, 0)
        end = np.where(self.churned, start + (r.uniform(0.15, 0.9, n) * (H - start)).astype(np.int64), H)
        end = np.where(self.online, np.maximum(end, np.minimum(ident + 14 * day, H)), end)
        self.start, self.end = start, end
        self.p_start = np.where(self.seg == SEG_NEW, ident, 0)

        # favourites (only products launched before the history)
        old_lens = self.lenses[self.prod_launch[self.lenses] < 0]
        lens_pop = np.array([3, 1, 2, 2, 3, 1, 2, 2, 2, 1, 3, 2, 1, 1, 1, 3, 2, 2], dtype=float)[: len(old_lens)]
        self.fav_lens = old_lens[pick(r, n, lens_pop)]
        self.fav_lens2 = old_lens[pick(r, n, lens_pop)]
        self.fav_sol = self.sols[pick(r, n, [3, 2, 1, 2, 1, 2, 1, 3, 1, 1])]
        self.same_buys_sol = r.random(n) < 0.5
        # tier of old members from their (pre-history) value
        rank = np.argsort(np.argsort(-(self.intensity * r.lognormal(0, 0.5, n)))) / max(n - 1, 1)
        self.tier = np.where(rank < 0.05, 3, np.where(rank < 0.2, 2, np.where(rank < 0.5, 1, 0)))
        self.tier = np.where(self.in_crm, self.tier, 0)
        self.points = (np.array([800, 5000, 14000, 40000])[self.tier] * r.lognormal(0, 0.45, n)).astype(np.int64)
        # marketing consent ticked at the first login (own stream: the rest of the market is unchanged)
        rc = rng_for(self.cfg.seed, BRAND, "consent")
        self.ok_sms = rc.random(n) < 0.72
        self.ok_email = rc.random(n) < 0.55
        self.ok_push = rc.random(n) < np.where(self.platform == P_APP, 0.65, 0.0)

    # ------------------------------------------------------------------------------------- campaigns
    def campaigns(self) -> None:
        """Weekly campaigns; members click them according to hidden offer and channel preferences."""
        r, H = rng_for(self.cfg.seed, BRAND, "campaigns"), self.H
        n_slots = max(1, self.cfg.days // 7)
        self.camp_start = np.arange(n_slots, dtype=np.int64) * 7 * MS_DAY
        self.camp_offer = np.arange(n_slots) % len(OFFERS)
        names = []
        for k in range(n_slots):
            d = self.cfg.start + dt.timedelta(days=7 * k)
            names.append(f"{d:%Y%m%d}-{OFFERS[k % len(OFFERS)].replace('_', '-')}")
        self.camp_name = names
        self.camp_coupon = [f"MMC{k:03d}{OFFERS[k % 5][:2].upper()}" for k in range(n_slots)]
        members = np.flatnonzero(self.online)
        self.density = min(1.0, self.budget / max(1, len(members) * 36))
        match = np.stack([self.p_lens, self.p_sol, self.p_trial, 0.3 + 0.7 * self.price, np.full(self.n, 0.4)], axis=1)[
            members
        ]  # (m, offers)
        prob = self.brr[members, None] * match[:, self.camp_offer] * 1.3 * self.density
        active = (self.camp_start[None, :] >= self.ident[members, None] - 3 * MS_DAY) & (
            self.camp_start[None, :] < self.end[members, None]
        )
        hit = (r.random(prob.shape) < np.minimum(prob, 0.9)) & active
        mi, slot = np.nonzero(hit)
        person = members[mi]
        ts = (
            self.camp_start[slot]
            + np.minimum(r.exponential(1.2, len(slot)), 6).astype(np.int64) * MS_DAY
            + hour_profile(r, len(slot))
        )
        ts = np.maximum(ts, self.ident[person] + 10 * MS_MIN)
        keep = (ts < self.end[person]) & (ts < H - MS_HOUR)
        person, slot, ts = person[keep], slot[keep], ts[keep]
        avail = np.stack(
            [
                np.ones(len(person), bool),
                np.array([self.email[p] is not None for p in person], bool),
                self.bind[person] <= ts,
                self.platform[person] == P_APP,
            ],
            axis=1,
        )
        ch = choice_rows(r, self.aff[person] * avail)
        order = np.argsort(ts, kind="stable")
        self.click_p, self.click_slot, self.click_ts, self.click_ch = (
            person[order],
            slot[order],
            ts[order],
            ch[order],
        )
        self.click_match = match[np.searchsorted(members, self.click_p), self.camp_offer[self.click_slot]]

    # ------------------------------------------------------------------------------------- orders
    def orders(self) -> None:
        """Organic and campaign-driven orders with per-group baskets; fills order and line arrays."""
        r, H = rng_for(self.cfg.seed, BRAND, "orders"), self.H
        buyers = np.flatnonzero(self.group != G_NEVER)
        rate = np.array([0.0, 0.9, 1.1, 1.2, 1.0])[self.group[buyers]] * self.intensity[buyers]
        span = np.maximum(0, np.minimum(self.end[buyers], H) - self.p_start[buyers]) / MS_DAY
        k = 1 + r.poisson(rate * span / 90.0)
        k = np.where(self.group[buyers] == G_SAME, np.maximum(k, 3), k)
        op = np.repeat(buyers, k)
        ots = self.p_start[op] + (r.random(len(op)) * (np.minimum(self.end[op], H) - self.p_start[op])).astype(np.int64)
        # price-sensitive customers wait for the next promotion window
        promos = _promo_windows(self.cfg)
        ps = np.array([p[0] for p in promos], dtype=np.int64) - self.T0
        pe = np.array([p[1] for p in promos], dtype=np.int64) - self.T0
        nxt = np.searchsorted(ps, ots)
        ok = nxt < len(ps)
        nxt_c = np.minimum(nxt, len(ps) - 1)
        snap = (
            ok
            & (r.random(len(op)) < 0.6 * self.price[op])
            & (ps[nxt_c] - ots < 60 * MS_DAY)
            & (pe[nxt_c] <= np.minimum(self.end[op], H))
        )
        ots = np.where(snap, ps[nxt_c] + (r.random(len(op)) * (pe[nxt_c] - ps[nxt_c])).astype(np.int64), ots)
        ots = (ots // MS_DAY) * MS_DAY
        online_ok = self.online[op] & (ots >= self.ident[op] // MS_DAY * MS_DAY + MS_DAY)
        p_online = np.where(self.bound[op], 0.6, 0.45)
        chan_online = online_ok & (r.random(len(op)) < p_online)
        ots = ots + np.where(chan_online, hour_profile(r, len(op)), hour_profile(r, len(op), "store"))
        in_promo = _in_windows(ots, ps, pe)
        coupon = np.full(len(op), -1)

        # campaign-driven orders
        conv = r.random(len(self.click_p)) < 0.35 * self.click_match
        cp, cs, cts = self.click_p[conv], self.click_slot[conv], self.click_ts[conv]
        offer = self.camp_offer[cs]
        g = self.group[cp]
        allowed = np.select(
            [offer == 0, offer == 1, offer == 2, offer == 3],
            [
                np.isin(g, [G_LENS, G_SAME, G_MIXED]),
                np.isin(g, [G_SOL, G_MIXED]) | ((g == G_SAME) & self.same_buys_sol[cp]),
                np.isin(g, [G_LENS, G_MIXED]),
                g != G_NEVER,
            ],
            default=False,
        )
        cp, cs, cts, offer = cp[allowed], cs[allowed], cts[allowed], offer[allowed]
        c_online = offer != 2
        cts = cts + np.where(
            c_online, r.integers(5 * MS_MIN, 20 * MS_HOUR, len(cp)), r.integers(1, 14, len(cp)) * MS_DAY
        )
        cts = np.where(c_online, cts, cts // MS_DAY * MS_DAY + hour_profile(r, len(cp), "store"))
        keep = cts < H - MS_MIN
        cp, cs, cts, offer, c_online = cp[keep], cs[keep], cts[keep], offer[keep], c_online[keep]

        o_p = np.concatenate([op, cp])
        o_ts = np.concatenate([ots, cts])
        o_online = np.concatenate([chan_online, c_online])
        o_coupon = np.concatenate([coupon, cs])
        o_offer = np.concatenate([np.full(len(op), -1), offer])
        o_promo = np.concatenate([in_promo, np.zeros(len(cp), bool)])
        srt = np.argsort(o_ts, kind="stable")
        o_p, o_ts, o_online, o_coupon, o_offer, o_promo = (
            o_p[srt],
            o_ts[srt],
            o_online[srt],
            o_coupon[srt],
            o_offer[srt],
            o_promo[srt],
        )
        o_store = np.where(o_online, -1, self.home_store[o_p])
        away = (~o_online) & (r.random(len(o_p)) < 0.12)
        o_store = np.where(away, r.integers(0, len(self.stores), len(o_p)), o_store)

        # baskets
        rr = random.Random(self.cfg.seed * 1_000_003 + 17)
        u = rr.random
        lens_launch = self.prod_launch[self.lenses]
        l_p: list[int] = []
        l_o: list[int] = []
        l_sku: list[int] = []
        l_q: list[int] = []
        newest_lens = [
            int(self.lenses[np.flatnonzero(lens_launch <= t)[np.argmax(lens_launch[lens_launch <= t])]])
            for t in self.camp_start
        ]
        lens_list, sol_list, acc_list = self.lenses.tolist(), self.sols.tolist(), self.accs.tolist()
        for oi, (p, t, off, cslot) in enumerate(
            zip(o_p.tolist(), o_ts.tolist(), o_offer.tolist(), o_coupon.tolist(), strict=True)
        ):
            grp = int(self.group[p])
            items: list[tuple[int, int]] = []
            lq = 1 + int(u() * 3) + (u() < 0.08)
            if off == 0:  # lens introduction: the featured lens (same-lens rebuyers stay loyal)
                items.append((int(self.fav_lens[p]) if grp == G_SAME else newest_lens[cslot], lq))
            elif off == 1:
                items.append((int(self.fav_sol[p]), 1 + (u() < 0.5)))
            elif off == 2:  # trial voucher redeemed in a store: a free trial pack
                items.append((_cheap_trial(self.prod_sku), 1))
            elif grp == G_SOL:
                s = int(self.fav_sol[p]) if u() < 0.8 else sol_list[int(u() * len(sol_list))]
                items.append((s, 1 + (u() < 0.3) + (u() < 0.08)))
            elif grp == G_LENS:
                x = u()
                if x < 0.6:
                    lens = int(self.fav_lens[p])
                elif x < 0.85:
                    lens = int(self.fav_lens2[p])
                else:
                    lens = _random_lens(lens_list, lens_launch, t, u)
                items.append((lens, lq))
            elif grp == G_SAME:
                items.append((int(self.fav_lens[p]), lq))
                if self.same_buys_sol[p] and u() < 0.5:
                    items.append((int(self.fav_sol[p]), 1))
                if u() < 0.08:
                    items.append((acc_list[int(u() * len(acc_list))], 1))
            else:
                has_lens = u() < 0.75
                if has_lens:
                    lens = int(self.fav_lens[p]) if u() < 0.5 else _random_lens(lens_list, lens_launch, t, u)
                    items.append((lens, lq))
                if (not has_lens) or u() < 0.55:
                    s = int(self.fav_sol[p]) if u() < 0.6 else sol_list[int(u() * len(sol_list))]
                    items.append((s, 1 + (u() < 0.25)))
                if u() < 0.2:
                    items.append((acc_list[int(u() * len(acc_list))], 1))
            for sku, q in items:
                l_o.append(oi)
                l_p.append(p)
                l_sku.append(sku)
                l_q.append(int(q))
        self.o_p, self.o_ts, self.o_online, self.o_coupon, self.o_offer = (
            o_p,
            o_ts,
            o_online,
            o_coupon,
            o_offer,
        )
        self.o_store, self.o_promo = o_store, o_promo
        self.l_o = np.asarray(l_o, dtype=np.int64)
        self.l_sku = np.asarray(l_sku, dtype=np.int64)
        self.l_q = np.asarray(l_q, dtype=np.int64)
        o_factor = np.where(o_promo, 0.85, 1.0) * np.where(o_coupon >= 0, 0.9, 1.0) * TIER_PRICE[self.tier[o_p]]
        unit = np.round(self.prod_price[self.l_sku] * o_factor[self.l_o], 2)
        unit = np.where(o_offer[self.l_o] == 2, 0.0, unit)
        self.l_unit = unit
        self.l_amount = np.round(unit * self.l_q, 2)
        self.l_list = np.round(self.prod_price[self.l_sku] * self.l_q, 2)
        days = ((self.T0 + o_ts) // MS_DAY).astype("datetime64[D]")
        ymd = np.datetime_as_string(days).tolist()
        self.o_id = [f"MM{d[2:4]}{d[5:7]}{d[8:10]}{i:07d}" for i, d in enumerate(ymd)]
        first_line = np.searchsorted(self.l_o, np.arange(len(o_p)))
        self.o_first_line = first_line
        self.o_last_line = np.append(first_line[1:], len(self.l_o))

    # ------------------------------------------------------------------------------------- events
    def events(self, out_dir: Path, progress: ProgressFn | None, offset: int) -> list[Path]:
        """Build the chronological Segment event stream, fill the budget with browsing and write it."""
        r, H, n = rng_for(self.cfg.seed, BRAND, "events"), self.H, self.n
        t = EventTable()
        on = np.flatnonzero(self.online)
        # identify (first login) and WeChat binding
        t.add(K_IDENTIFY, self.ident[on], on, M_USER, b=0)
        late = on[self.bind[on] > self.ident[on]]
        late = late[self.bind[late] < H]
        t.add(K_IDENTIFY, self.bind[late], late, M_USER, b=1)

        # invitations: new members invited by existing members
        self._invites(r, t)
        new = np.flatnonzero(self.seg == SEG_NEW)
        t.add(K_SIGNUP, self.ident[new] + 1_000, new, M_USER, a=self.invite_of[new])

        # alias: a second (web) device that browses anonymously, later aliased to the member
        cand = on[(self.end[on] - self.ident[on]) > 20 * MS_DAY]
        al = cand[r.random(len(cand)) < 0.05]
        self.alias_ts = np.full(n, 2**62, dtype=np.int64)
        self.alias_ts[al] = self.ident[al] + (r.uniform(0.1, 0.9, len(al)) * (self.end[al] - self.ident[al])).astype(
            np.int64
        )
        self.anon2 = uuid_strings(r, n)
        t.add(K_ALIAS, self.alias_ts[al], al, M_USER)

        # online orders: cart, checkout, order completed
        oo = np.flatnonzero(self.o_online)
        op = self.o_p[oo]
        fl = self.o_first_line[oo]
        t.add(
            K_PADD,
            self.o_ts[oo] - r.integers(5 * MS_MIN, 30 * MS_MIN, len(oo)),
            op,
            M_USER,
            a=self.l_sku[fl],
            b=self.l_q[fl],
        )
        t.add(K_CHECKOUT, self.o_ts[oo] - r.integers(MS_MIN, 5 * MS_MIN, len(oo)), op, M_USER, a=oo, b=-1)
        t.add(K_ORDER, self.o_ts[oo], op, M_SERVER, a=oo)

        # package QR-code scans by members (lens and solution packages)
        lp = self.o_p[self.l_o]
        scannable = self.online[lp] & (self.prod_cat[self.l_sku] < 2)
        li = np.flatnonzero(scannable)
        packs = np.minimum(self.l_q[li], 4)
        li = np.repeat(li, packs)
        pk = np.arange(len(li)) - np.repeat(np.cumsum(packs) - packs, packs)
        lp = self.o_p[self.l_o[li]]
        p_scan = np.where(self.bound[lp], 0.5, 0.2) * (0.5 + 0.5 * self.density)
        hit = r.random(len(li)) < p_scan
        li, pk, lp = li[hit], pk[hit], lp[hit]
        delay = np.where(
            self.o_online[self.l_o[li]],
            r.integers(2 * MS_DAY, 6 * MS_DAY, len(li)),
            r.integers(5 * MS_MIN, 2 * MS_DAY, len(li)),
        )
        sts = self.o_ts[self.l_o[li]] + delay
        ok = (sts >= self.ident[lp]) & (sts < H)
        t.add(K_QR, sts[ok], lp[ok], M_USER, a=li[ok], b=pk[ok])

        # campaign click sessions: landing page with campaign context, then the promoted products
        self._click_sessions(r, t)
        # browsing fills the remaining budget
        self._browse(r, t, max(0, self.budget - len(t)))
        ev = t.finish()
        self.n_events = len(ev["ts"])
        self._prepare_render()
        ev["ts"] = ev["ts"] + self.T0
        return write_events(out_dir, BRAND, BRAND_NO, self.cfg.seed, ev, self._renderers(), progress, offset)

    def _invites(self, r: np.random.Generator, t: EventTable) -> None:
        n, H = self.n, self.H
        on = np.flatnonzero(self.online)
        order = on[np.argsort(self.ident[on], kind="stable")]
        cw = np.cumsum(self.referral[order])
        new = np.flatnonzero(self.seg == SEG_NEW)
        invited = new[(r.random(len(new)) < 0.25) & (self.ident[new] > 3 * MS_DAY)]
        sent = self.ident[invited] - r.integers(MS_HOUR, 5 * MS_DAY, len(invited))
        k = np.searchsorted(self.ident[order], sent - MS_MIN)
        ok = k > 0
        invited, sent, k = invited[ok], sent[ok], k[ok]
        pos = np.searchsorted(cw, r.random(len(k)) * cw[k - 1], side="right")
        inviter = order[np.minimum(pos, k - 1)]
        # invitations that were never accepted
        m = np.flatnonzero(self.online)
        extra = r.poisson(self.referral[m] * 8 * self.density)
        xp = np.repeat(m, extra)
        xs = self.ident[xp] + (r.random(len(xp)) * (np.minimum(self.end[xp], H) - self.ident[xp])).astype(np.int64)
        self.inv_from = np.concatenate([inviter, xp])
        self.inv_ts = np.concatenate([sent, xs])
        self.inv_to = np.concatenate([invited, np.full(len(xp), -1)])
        self.inv_code = ["MM" + h.upper() for h in hex_strings(r, len(self.inv_from), 8)]
        self.inv_channel = pick(r, len(self.inv_from), [6, 3, 1])
        self.invite_of = np.full(n, -1, dtype=np.int64)
        self.invite_of[invited] = np.arange(len(invited))
        idx = np.arange(len(self.inv_from))
        t.add(K_INV_SENT, self.inv_ts, self.inv_from, M_USER, a=idx)
        acc = idx[: len(invited)]
        t.add(
            K_INV_ACC,
            self.ident[invited] - r.integers(MS_MIN, 30 * MS_MIN, len(invited)),
            invited,
            M_ANON,
            a=acc,
        )

    def _view_mix(self) -> np.ndarray:
        """Return per-person browsing weights over (lens, solution, accessory)."""
        g = self.group
        lens = np.select(
            [g == G_SOL, g == G_LENS, g == G_SAME],
            [0.05 + 0.9 * self.p_lens, 0.6, 0.5 + 0.3 * (1 - self.p_lens)],
            0.3 + 0.4 * self.p_lens,
        )
        sol = np.select([g == G_SOL, g == G_LENS], [0.45, 0.05 + 0.5 * self.p_sol], 0.2 + 0.4 * self.p_sol)
        return np.stack([lens, sol, np.full(self.n, 0.12)], axis=1)

    def _pick_skus(self, r: np.random.Generator, p: np.ndarray, cat: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Return one product per (person, category, time): favourites first, then any launched product."""
        m = len(p)
        pp = np.minimum(p, self.n - 1)
        known = p < self.n
        rand_l = self.lenses[r.integers(0, len(self.lenses), m)]
        rand_l = np.where(self.prod_launch[rand_l] <= ts, rand_l, self.fav_lens[pp])
        fav_share = np.where(self.group[pp] == G_SAME, 0.8, 0.4) * known
        lens = np.where(r.random(m) < fav_share, self.fav_lens[pp], rand_l)
        sol = np.where((r.random(m) < 0.5) & known, self.fav_sol[pp], self.sols[r.integers(0, len(self.sols), m)])
        acc = self.accs[r.integers(0, len(self.accs), m)]
        return np.select([cat == 0, cat == 1], [lens, sol], acc)

    def _click_sessions(self, r: np.random.Generator, t: EventTable) -> None:
        p, slot, ts, ch = self.click_p, self.click_slot, self.click_ts, self.click_ch
        t.add(K_VIEW, ts, p, M_USER, a=-1, b=slot * 4 + ch)
        offer = self.camp_offer[slot]
        cat = np.select([offer == 1, offer == 3], [1, r.integers(0, 2, len(p))], 0)
        n_views = 1 + r.binomial(2, 0.5, len(p))
        for j in range(3):
            sel = n_views > j
            tj = ts[sel] + (j + 1) * r.integers(20_000, 120_000, int(sel.sum()))
            t.add(K_PVIEW, tj, p[sel], M_USER, a=self._pick_skus(r, p[sel], cat[sel], tj))
        add = r.random(len(p)) < 0.3 * self.click_match
        ta = ts[add] + 5 * 120_000
        t.add(K_PADD, ta, p[add], M_USER, a=self._pick_skus(r, p[add], cat[add], ta), b=1)

    def _browse(self, r: np.random.Generator, t: EventTable, budget: int) -> None:
        n, H = self.n, self.H
        mean_len = 3.2
        S = int(budget / mean_len)
        if S <= 0:
            self.n_visitors = 0
            return
        on = np.flatnonzero(self.online)
        V = max(10, n // 2)
        self.n_visitors = V
        v_first = (r.random(V) * H).astype(np.int64)
        v_life = np.minimum((r.exponential(20, V) * MS_DAY).astype(np.int64), H - v_first)
        self.v_anon = uuid_strings(r, V)
        self.v_platform = np.where(r.random(V) < 0.6, P_WEB, P_MINI)
        self.v_ip = random_ips(r, V)
        is_anon = r.random(S) < 0.22
        n_a = int(is_anon.sum())
        w = self.engage[on] * np.maximum(1, (self.end[on] - self.first[on]) / MS_DAY)
        owner = np.empty(S, dtype=np.int64)
        owner[~is_anon] = on[r.choice(len(on), size=S - n_a, p=w / w.sum())]
        wv = r.lognormal(0, 1, V)
        owner[is_anon] = n + r.choice(V, size=n_a, p=wv / wv.sum())
        own_m = np.minimum(owner, n - 1)
        lo = np.where(is_anon, v_first[np.maximum(owner - n, 0)], self.first[own_m])
        hi = np.where(
            is_anon,
            v_first[np.maximum(owner - n, 0)] + v_life[np.maximum(owner - n, 0)],
            np.minimum(self.end[own_m], H),
        )
        st = lo + (r.random(S) * np.maximum(hi - lo, 1)).astype(np.int64)
        st = st // MS_DAY * MS_DAY + hour_profile(r, S)
        st = np.clip(st, lo, np.maximum(lo, hi - 10 * MS_MIN))
        st = np.minimum(st, H - 30 * MS_MIN)
        L = 1 + r.poisson(mean_len - 1, S)
        # session-level identity
        logged = (~is_anon) & (st >= self.ident[own_m])
        dev2 = logged & (st < self.alias_ts[own_m]) & (r.random(S) < 0.3)
        smode = np.where(is_anon, M_ANON, np.where(dev2, M_ANON2, np.where(logged, M_USER, M_ANON)))
        mix = np.vstack([self._view_mix(), np.tile([0.6, 0.3, 0.1], (1, 1))])
        scat = choice_rows(r, mix[np.where(is_anon, n, owner)])
        ssku = self._pick_skus(r, owner, scat, st)
        # explode to events
        tot = int(L.sum())
        sess = np.repeat(np.arange(S), L)
        pos = np.arange(tot) - np.repeat(np.cumsum(L) - L, L)
        step = r.integers(15_000, 150_000, tot)
        step[pos == 0] = 0
        cs = np.cumsum(step)
        ts = st[sess] + cs - np.repeat(cs[np.cumsum(L) - L], L)
        u = r.random(tot)
        kind = np.where(
            pos == 0, K_VIEW, np.select([u < 0.45, u < 0.72, u < 0.88], [K_PVIEW, K_VIEW, K_PADD], K_CHECKOUT)
        )
        own_e = owner[sess]
        same = r.random(tot) < 0.65
        other = self._pick_skus(r, own_e, scat[sess], ts)
        sku = np.where(same, ssku[sess], other)
        page = np.where(pos == 0, pick(r, tot, [6, 2, 1, 0, 0, 0, 0]), pick(r, tot, [2, 4, 2, 1, 1, 1, 1]))
        qty = 1 + r.binomial(2, 0.3, tot)
        mode = smode[sess]
        for k in (K_VIEW, K_PVIEW, K_PADD, K_CHECKOUT):
            sel = kind == k
            a = page[sel] if k == K_VIEW else sku[sel]
            t.add(k, ts[sel], own_e[sel], mode[sel], a=a, b=-1 if k == K_VIEW else qty[sel])

    # ------------------------------------------------------------------------------------- render
    def _prepare_render(self) -> None:
        n = self.n
        V = getattr(self, "n_visitors", 0)
        web_lib = {"name": "analytics.js", "version": "4.1.0"}
        mini_lib = {"name": "analytics-wechat-miniprogram", "version": "1.4.2"}
        ios_lib = {"name": "analytics-ios", "version": "4.1.8"}
        android_lib = {"name": "analytics-android", "version": "4.11.3"}
        browser_uas = [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.5 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 14; V2309A) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 "
            "Mobile Safari/537.36",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 "
            "Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.5 Safari/605.1.15",
        ]
        ios_versions = ["16.7", "17.5", "17.6", "18.1"]
        android_versions = ["12", "13", "14", "15"]

        def ctx_for(platform: int, ip: str, device: str, k: int) -> dict[str, Any]:
            if platform == P_WEB:
                return {
                    "ip": ip,
                    "userAgent": browser_uas[k % 4],
                    "locale": "zh-CN",
                    "library": web_lib,
                    "device": {"id": device, "type": "web"},
                }
            ios = k % 2 == 0
            osv = (ios_versions if ios else android_versions)[k % 4]
            os_ = {"name": "iOS" if ios else "Android", "version": osv}
            dev = {"id": device, "type": "ios" if ios else "android"}
            if platform == P_MINI:
                ua = (
                    f"Mozilla/5.0 (iPhone; CPU iPhone OS {osv.replace('.', '_')} like Mac OS X) "
                    "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.49 "
                    "NetType/WIFI Language/zh_CN miniProgram"
                    if ios
                    else f"Mozilla/5.0 (Linux; Android {osv}; V2309A) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/116.0 Mobile Safari/537.36 XWEB/1160065 MicroMessenger/8.0.49 miniProgram"
                )
                return {
                    "ip": ip,
                    "userAgent": ua,
                    "locale": "zh-CN",
                    "library": mini_lib,
                    "device": dev,
                    "app": {"name": "明眸会员小程序", "version": "3.2.1", "build": "321"},
                    "os": os_,
                }
            ua = f"MingMou/5.4.0 (iPhone; iOS {osv}; Scale/3.00)" if ios else f"MingMou/5.4.0 (Linux; Android {osv})"
            return {
                "ip": ip,
                "userAgent": ua,
                "locale": "zh-CN",
                "library": ios_lib if ios else android_lib,
                "device": dev,
                "app": {"name": "明眸 Eye Care", "version": "5.4.0", "build": "540"},
                "os": os_,
            }

        ctx = [ctx_for(int(self.platform[i]), self.ip[i], self.device[i], int(self.os_ver[i])) for i in range(n)]
        ctx += [ctx_for(int(self.v_platform[j]), self.v_ip[j], self.v_anon[j], j) for j in range(V)]
        self.ctx = ctx
        self.ctx2 = {}
        self.server_ctx = {"library": {"name": "analytics-python", "version": "2.3.2"}, "locale": "zh-CN"}
        self.anon_all = self.anon + (self.v_anon if V else [])
        self.plat_all = np.concatenate([self.platform, self.v_platform if V else np.empty(0, int)]).tolist()
        self.prod_props = [
            {
                "product_id": p[0],
                "sku": p[0],
                "name": p[1],
                "category": p[2],
                "brand": p[4],
                "price": p[5],
                "currency": CURRENCY,
            }
            for p in PRODUCTS
        ]
        self.prod_qr = [f"MMQ{i + 1:03d}" for i in range(len(PRODUCTS))]
        self.camp_ctx = [
            {"source": CHANNELS[k % 4], "medium": CHANNELS[k % 4], "name": self.camp_name[k // 4]}
            for k in range(len(self.camp_name) * 4)
        ]

    def _who(self, ev: dict[str, Any], p: int, m: int) -> dict[str, Any]:
        if m == M_USER:
            ev["userId"] = self.user_id[p]
            ev["anonymousId"] = self.anon_all[p]
        elif m == M_ANON:
            ev["anonymousId"] = self.anon_all[p]
        elif m == M_ANON2:
            ev["anonymousId"] = self.anon2[p]
        else:
            ev["userId"] = self.user_id[p]
        return ev

    def _ctx(self, p: int, m: int) -> dict[str, Any]:
        if m == M_SERVER:
            return self.server_ctx
        if m == M_ANON2:
            c = self.ctx2.get(p)
            if c is None:
                c = {
                    "ip": self.ip[p],
                    "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                    "(KHTML, like Gecko) Chrome/126.0 Safari/537.36",
                    "locale": "zh-CN",
                    "library": {"name": "analytics.js", "version": "4.1.0"},
                    "device": {"id": self.anon2[p], "type": "web"},
                }
                self.ctx2[p] = c
            return c
        return self.ctx[p]

    def _renderers(self) -> list[Any]:
        who, ctxf = self._who, self._ctx
        prod = self.prod_props
        plat = self.plat_all

        def view(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            web = m == M_ANON2 or plat[p] == P_WEB
            ctx = ctxf(p, m)
            if a < 0:
                camp = self.camp_ctx[b]
                slug = camp["name"]
                name, path = "活动页", f"/campaign/{slug}"
                ctx = {**ctx, "campaign": camp}
                query = f"?utm_source={camp['source']}&utm_medium={camp['medium']}&utm_campaign={slug}"
            else:
                name, path = PAGES[a]
                query = ""
            if web:
                props = {
                    "title": f"{name} - 明眸",
                    "path": path,
                    "url": f"https://www.mingmou.cn{path}{query}",
                    "referrer": "" if a >= 0 else f"https://{self.camp_ctx[b]['source']}.mingmou.cn/",
                }
                ev = {"type": "page", "messageId": mid, "timestamp": ts, "name": name}
            else:
                props = {"path": path}
                ev = {"type": "screen", "messageId": mid, "timestamp": ts, "name": name}
            who(ev, p, m)
            ev["properties"] = props
            ev["context"] = ctx
            return ev

        def track(event: str, props: dict[str, Any], ts: str, mid: str, p: int, m: int) -> dict[str, Any]:
            ev = {"type": "track", "messageId": mid, "timestamp": ts, "event": event}
            who(ev, p, m)
            ev["properties"] = props
            ev["context"] = ctxf(p, m)
            return ev

        def pviewed(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track("Product Viewed", prod[a], ts, mid, p, m)

        def padded(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track("Product Added", {**prod[a], "quantity": b}, ts, mid, p, m)

        def checkout(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            if b < 0:  # a real checkout of order a
                products = self._order_products(a)
                value = round(float(self.l_list[self.o_first_line[a] : self.o_last_line[a]].sum()), 2)
            else:
                products = [{**prod[a], "quantity": b}]
                value = round(prod[a]["price"] * b, 2)
            return track(
                "Checkout Started",
                {"value": value, "currency": CURRENCY, "products": products},
                ts,
                mid,
                p,
                m,
            )

        def order(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            lo, hi = self.o_first_line[a], self.o_last_line[a]
            total = round(float(self.l_amount[lo:hi].sum()), 2)
            props: dict[str, Any] = {
                "order_id": self.o_id[a],
                "total": total,
                "revenue": total,
                "discount": round(float(self.l_list[lo:hi].sum()) - total, 2),
                "currency": CURRENCY,
                "products": self._order_products(a),
            }
            if self.o_coupon[a] >= 0:
                props["coupon"] = self.camp_coupon[self.o_coupon[a]]
            return track("Order Completed", props, ts, mid, p, m)

        def identify(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            ev = {"type": "identify", "messageId": mid, "timestamp": ts}
            who(ev, p, m)
            ph = self.phone[p]
            if b == 0:
                traits: dict[str, Any] = {
                    "phone": f"+86{ph}" if int(ph[-3:]) % 29 == 0 else ph,
                    "name": self.pname[p],
                    "gender": "female" if self.female[p] else "male",
                }
                if self.email[p] is not None and int(ph[-2:]) % 3 == 0:
                    traits["email"] = self.email[p]
                consent = {"sms": bool(self.ok_sms[p])}
                if "email" in traits:
                    consent["email"] = bool(self.ok_email[p])
                if self.platform[p] == P_APP:
                    consent["push"] = bool(self.ok_push[p])
                traits["consent"] = consent
            else:
                traits = {"phone": ph}
            if b == 1 or (self.bound[p] and self.bind[p] <= self.ident[p]):  # bound at first login or now
                traits["wechat_openid"] = self.openid[p]
                traits["wechat_unionid"] = self.unionid[p]
            ev["traits"] = traits
            ev["context"] = ctxf(p, m)
            return ev

        def signup(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            props: dict[str, Any] = {"method": "wechat" if self.platform[p] == P_MINI else "phone"}
            if a >= 0:
                props["invitation_code"] = self.inv_code[a]
            return track("Signed Up", props, ts, mid, p, m)

        def qr(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            sku = int(self.l_sku[a])
            o = int(self.l_o[a])
            st = int(self.o_store[o])
            if st >= 0:
                ci = self.stores[st][0]
                store = self.stores[st][1]
            else:
                ci, store = int(self.city[p]), ONLINE_STORE
            serial = mix64(a * 8 + b) & 0xFFFFFFFFFFFF
            props = {
                "qr_code": f"{self.prod_qr[sku]}-{serial:012X}",
                "sku": PRODUCTS[sku][0],
                "product_name": PRODUCTS[sku][1],
                "region": PROVINCES[CITIES[ci][0]][0],
                "city": CITIES[ci][1],
                "store": store,
            }
            return track("QR Code Scanned", props, ts, mid, p, m)

        def inv_sent(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            props = {
                "invitation_code": self.inv_code[a],
                "channel": ("wechat", "sms", "link")[int(self.inv_channel[a])],
                "reward_points": 200,
            }
            return track("Invite Sent", props, ts, mid, p, m)

        def inv_acc(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            props = {"invitation_code": self.inv_code[a], "reward": "free_sample"}
            return track("Invite Accepted", props, ts, mid, p, m)

        def alias(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return {
                "type": "alias",
                "messageId": mid,
                "timestamp": ts,
                "userId": self.user_id[p],
                "previousId": self.anon2[p],
                "context": ctxf(p, M_ANON2),
            }

        return [view, pviewed, padded, checkout, identify, signup, qr, order, inv_sent, inv_acc, alias]

    def _order_products(self, o: int) -> list[dict[str, Any]]:
        out = []
        for li in range(int(self.o_first_line[o]), int(self.o_last_line[o])):
            s = int(self.l_sku[li])
            out.append(
                {
                    "product_id": PRODUCTS[s][0],
                    "sku": PRODUCTS[s][0],
                    "name": PRODUCTS[s][1],
                    "category": PRODUCTS[s][2],
                    "price": float(self.l_unit[li]),
                    "quantity": int(self.l_q[li]),
                }
            )
        return out

    # ------------------------------------------------------------------------------------- imports
    def imports(self, out_dir: Path) -> tuple[list[ImportFile], dict[str, int], list[pl.DataFrame]]:
        """Write products, customers (CRM export), orders and feedback; return files, counts, dirt logs."""
        r = rng_for(self.cfg.seed, BRAND, "dirt")
        files, counts, logs = [], {}, []

        prod = pl.DataFrame(
            {
                "商品编码": [p[0] for p in PRODUCTS],
                "商品名称": [p[1] for p in PRODUCTS],
                "品类": [p[2] for p in PRODUCTS],
                "子类": [p[3] for p in PRODUCTS],
                "品牌": [p[4] for p in PRODUCTS],
                "零售价": fmt_amount(self.prod_price),
                "二维码前缀": [f"MMQ{i + 1:03d}" for i in range(len(PRODUCTS))],
                "上市日期": [p[6] for p in PRODUCTS],
            }
        )
        prod, c, log = inject_dirt(
            prod,
            DirtSpec(amounts=["零售价"], dates=["上市日期"], allow_bad=False, allow_duplicates=False, rate=0.05),
            r,
            BRAND,
            "products",
        )
        files.append(self._write(out_dir, "products", "products.csv", prod, PRODUCT_MAP))
        counts.update({f"{BRAND}.products.{k}": v for k, v in c.items()})
        logs.append(log)

        crm = np.flatnonzero(self.in_crm)
        crm = crm[np.argsort(np.array([self.crm_id[i] for i in crm]))]
        reg_ms = self.T0 + self.registered[crm] + hour_profile(rng_for(self.cfg.seed, BRAND, "reg"), len(crm), "store")
        cust = pl.DataFrame(
            {
                "会员编号": [self.crm_id[i] for i in crm],
                "手机号": [self.phone[i] for i in crm],
                "姓名": [self.pname[i] for i in crm],
                "性别": np.where(self.female[crm], "女", "男").tolist(),
                "生日": fmt_date(self.birthday[crm]),
                "省份": [PROVINCES[int(self.prov[i])][0] for i in crm],
                "城市": [CITIES[int(self.city[i])][1] for i in crm],
                "会员等级": [TIERS[int(self.tier[i])] for i in crm],
                "积分": self.points[crm].astype(str).tolist(),
                "注册时间": fmt_datetime(reg_ms),
                "微信OpenID": [self.openid[i] if self.crm_has_openid[i] else None for i in crm],
                "微信UnionID": [self.unionid[i] if self.crm_has_openid[i] else None for i in crm],
                "邮箱": [self.email[i] for i in crm],
                "所属门店": [self.stores[int(self.home_store[i])][1] for i in crm],
                # ticked on the membership form; the same disposition the customer shows online later
                "接收营销短信": np.where(self.ok_sms[crm], "是", "否").tolist(),
            },
            schema={k: pl.String for k in CUSTOMER_MAP},
        )
        cust, c, log = inject_dirt(
            cust,
            DirtSpec(
                ids=["会员编号", "手机号", "微信OpenID", "微信UnionID", "邮箱"],
                phones=["手机号"],
                emails=["邮箱"],
                dates=["生日", "注册时间"],
                region="省份",
            ),
            r,
            BRAND,
            "customers",
        )
        files.append(self._write(out_dir, "customers", "crm_members.csv", cust, CUSTOMER_MAP))
        counts.update({f"{BRAND}.customers.{k}": v for k, v in c.items()})
        logs.append(log)

        lo = self.l_o
        lp = self.o_p[lo]
        online = self.o_online[lo]
        st = self.o_store[lo]
        region = np.where(st >= 0, np.array([CITIES[s[0]][0] for s in self.stores])[np.maximum(st, 0)], self.prov[lp])
        orders = pl.DataFrame(
            {
                "订单号": [self.o_id[i] for i in lo.tolist()],
                "下单时间": fmt_datetime(self.T0 + self.o_ts[lo]),
                "会员编号": [None if online[j] else self.crm_id[p] for j, p in enumerate(lp.tolist())],
                "手机号": [self.phone[p] for p in lp.tolist()],
                "线上账号": [self.user_id[p] if online[j] else None for j, p in enumerate(lp.tolist())],
                "商品编码": [PRODUCTS[s][0] for s in self.l_sku.tolist()],
                "商品名称": [PRODUCTS[s][1] for s in self.l_sku.tolist()],
                "品类": [PRODUCTS[s][2] for s in self.l_sku.tolist()],
                "数量": self.l_q.astype(str).tolist(),
                "单价": fmt_amount(self.l_unit),
                "金额": fmt_amount(self.l_amount),
                "渠道": np.where(online, "online", "store").tolist(),
                "门店": [self.stores[s][1] if s >= 0 else ONLINE_STORE for s in st.tolist()],
                "省份": [PROVINCES[int(x)][0] for x in region.tolist()],
                "币种": CURRENCY,
            },
            schema={k: pl.String for k in ORDER_MAP},
        )
        orders, c, log = inject_dirt(
            orders,
            DirtSpec(
                ids=["会员编号", "手机号", "线上账号"],
                phones=["手机号"],
                dates=["下单时间"],
                amounts=["单价", "金额"],
                region="省份",
            ),
            r,
            BRAND,
            "orders",
        )
        files.append(self._write(out_dir, "orders", "orders.csv", orders, ORDER_MAP))
        counts.update({f"{BRAND}.orders.{k}": v for k, v in c.items()})
        counts[f"{BRAND}.orders"] = len(self.o_p)
        counts[f"{BRAND}.orders.online"] = int(self.o_online.sum())
        logs.append(log)

        fb, self.fb_repeat = eyecare_feedback(self, rng_for(self.cfg.seed, BRAND, "feedback"))
        fb, c, log = inject_dirt(fb, DirtSpec(ids=["member_no", "mobile"], phones=["mobile"]), r, BRAND, "feedback")
        fb = fb.with_columns(
            pl.col("score").cast(pl.Int64),
            pl.col("created").str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="ms"),
        )
        path = out_dir / "feedback.parquet"
        fb.write_parquet(path, statistics=False)
        files.append(ImportFile("feedback", path, dict(FEEDBACK_MAP)))
        counts.update({f"{BRAND}.feedback.{k}": v for k, v in c.items()})
        logs.append(log)
        return files, counts, logs

    @staticmethod
    def _write(out_dir: Path, kind: str, name: str, df: pl.DataFrame, mapping: dict[str, str]) -> ImportFile:
        path = out_dir / name
        write_csv(df, path)
        return ImportFile(kind, path, dict(mapping))

    # ------------------------------------------------------------------------------------- truth
    def truth(self) -> pl.DataFrame:
        """Return the hidden per-customer truth rows (keys the platform can see + preferences)."""
        n = self.n
        names = np.array(GROUP_NAMES)
        lines_per_p = np.bincount(self.o_p[self.l_o], minlength=n)
        return pl.DataFrame(
            {
                "brand": [BRAND] * n,
                "crm_id": self.crm_id,
                "user_id": self.user_id,
                "phone": self.phone,
                "true_segment": np.array(SEG_NAMES)[self.seg].tolist(),
                "true_buyer_group": names[self.group].tolist(),
                "true_wechat_bound": self.bound.tolist(),
                "true_churned": (self.churned & (self.end < self.H)).tolist(),
                "true_repeat_unresolved": self.fb_repeat.tolist(),
                "true_order_lines": lines_per_p.tolist(),
                "prefers_lens_offer": self.p_lens,
                "prefers_solution_offer": self.p_sol,
                "prefers_trial_offer": self.p_trial,
                "affinity_sms": self.aff[:, 0],
                "affinity_email": self.aff[:, 1],
                "affinity_wechat": self.aff[:, 2],
                "affinity_push": self.aff[:, 3],
                "preferred_channel": np.array(CHANNELS)[np.argmax(self.aff, axis=1)].tolist(),
                "true_device_id": self.device,
                "true_wechat_openid": [o if b else None for o, b in zip(self.openid, self.bound, strict=True)],
                "true_consent_sms": self.ok_sms,  # what the customer says at the first login (if any)
                "true_consent_push": self.ok_push,
                "base_response_rate": self.brr,
                "price_sensitivity": self.price,
                "churn_propensity": self.churn,
                "referral_propensity": self.referral,
            }
        )


def _cheap_trial(skus: list[str]) -> int:
    return skus.index("L-MM-D30")


def _random_lens(lens_list: list[int], launch: np.ndarray, t: int, u: Any) -> int:
    while True:
        i = int(u() * len(lens_list))
        if launch[i] <= t:
            return lens_list[i]


def _promo_windows(cfg: MarketConfig) -> list[tuple[int, int]]:
    """Return sorted (start_ms, end_ms) local epoch ms of shopping festivals within the history."""
    out = []
    end = cfg.start + dt.timedelta(days=cfg.days)
    for y in range(cfg.start.year, end.year + 1):
        for (m1, d1), (m2, d2) in [
            ((1, 10), (1, 25)),
            ((3, 1), (3, 8)),
            ((6, 1), (6, 18)),
            ((11, 1), (11, 11)),
            ((12, 8), (12, 12)),
        ]:
            a, b = dt.date(y, m1, d1), dt.date(y, m2, d2) + dt.timedelta(days=1)
            if a >= cfg.start and b <= end:
                out.append((epoch_ms(a), epoch_ms(b)))
    return sorted(out) or [(epoch_ms(end) + MS_DAY, epoch_ms(end) + 2 * MS_DAY)]


def _in_windows(ts: np.ndarray, ps: np.ndarray, pe: np.ndarray) -> np.ndarray:
    k = np.searchsorted(ps, ts, side="right") - 1
    kc = np.maximum(k, 0)
    return (k >= 0) & (ts < pe[kc])


def generate_eyecare(
    out_dir: Path,
    cfg: MarketConfig,
    n_customers: int,
    event_budget: int,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
) -> BrandResult:
    """Generate the eye-care brand into ``out_dir``; return its files, counts, truth rows and dirt log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    w = _World(cfg, n_customers, event_budget)
    w.people()
    w.campaigns()
    w.orders()
    files, counts, logs = w.imports(out_dir)
    event_files = w.events(out_dir / "events", progress, progress_offset)
    counts = {
        f"{BRAND}.customers": n_customers,
        f"{BRAND}.crm_customers": int(w.in_crm.sum()),
        f"{BRAND}.online_members": int(w.online.sum()),
        f"{BRAND}.new_members": int((w.seg == SEG_NEW).sum()),
        f"{BRAND}.anonymous_visitors": int(getattr(w, "n_visitors", 0)),
        f"{BRAND}.events": w.n_events,
        **counts,
    }
    files_ = BrandFiles(BRAND, NAME, files, event_files)
    return BrandResult(files_, counts, w.truth(), pl.concat(logs))
