"""The mobile-operator brand of the demo market: "Skyline Mobile".

Simulates subscribers with a plan, handset, balance and calling circle. Before the event window only
orders are produced (data packs, handsets); inside the window (the last weeks of the history, sized to
the event budget) a day-by-day simulation emits daily "Data Usage Reported", "Balance Updated",
"Top Up", weekly "Call Summary", "Handset Changed", data-pack "Order Completed" and app screen views.
Data-pack purchases after crossing 75% of the plan follow the hidden data-pack propensity.
"""

from __future__ import annotations

import datetime as dt
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
    emails,
    epoch_ms,
    fmt_amount,
    fmt_date,
    fmt_datetime,
    hour_profile,
    inject_dirt,
    phone_numbers,
    pinyin_names,
    random_geo,
    random_ips,
    rng_for,
    unique_ints,
    uuid_strings,
    write_csv,
    write_events,
)
from goldkey.demo.texts import operator_feedback

BRAND = "operator"
NAME = "Skyline Mobile"
BRAND_NO = 2
EVENTS_PER_SUBSCRIBER_DAY = 1.58  # calibrated: average events per subscriber and window day
MIN_WINDOW_DAYS = 7

K_USAGE, K_BALANCE, K_TOPUP, K_CALLS, K_HANDSET, K_SCREEN, K_IDENTIFY, K_ORDER = range(8)
M_ANON, M_USER, M_SERVER = range(3)

# (name, data MB, monthly fee, included minutes)
PLANS = [
    ("Skyline 4G 29", 3072, 29.0, 100),
    ("Skyline 4G 39", 5120, 39.0, 200),
    ("Skyline 5G 59", 10240, 59.0, 300),
    ("Skyline 5G 99", 30720, 99.0, 500),
    ("Skyline 5G 129", 61440, 129.0, 800),
    ("Skyline 5G 199", 102400, 199.0, 1500),
]
PLAN_SKUS = ["PL-4G-29", "PL-4G-39", "PL-5G-59", "PL-5G-99", "PL-5G-129", "PL-5G-199"]
# (sku, name, MB, price)
DATA_PACKS = [
    ("DP-1G", "1GB Data Pack", 1024, 10.0),
    ("DP-3G", "3GB Data Pack", 3072, 20.0),
    ("DP-5G", "5GB Data Pack", 5120, 30.0),
    ("DP-10G", "10GB Data Pack", 10240, 50.0),
    ("DP-20G", "20GB Data Pack", 20480, 80.0),
]
# (sku, model, vendor, price, launched)
HANDSETS = [
    ("HS-RM-N13", "Redmi Note 13", "Xiaomi", 1299.0, "2023-09-21"),
    ("HS-HN-90", "Honor 90", "Honor", 2299.0, "2023-05-29"),
    ("HS-OP-R11", "OPPO Reno11", "OPPO", 2499.0, "2023-11-23"),
    ("HS-XM-14", "Xiaomi 14", "Xiaomi", 3999.0, "2023-10-26"),
    ("HS-VV-X100", "vivo X100", "vivo", 3999.0, "2023-11-13"),
    ("HS-HW-P70", "Huawei Pura 70", "Huawei", 5499.0, "2024-04-18"),
    ("HS-HW-M60", "Huawei Mate 60", "Huawei", 5999.0, "2023-08-29"),
    ("HS-AP-15", "iPhone 15", "Apple", 5999.0, "2023-09-22"),
    ("HS-XM-15", "Xiaomi 15", "Xiaomi", 4499.0, "2025-10-30"),
    ("HS-AP-16", "iPhone 16", "Apple", 5999.0, "2025-09-19"),
    ("HS-HW-M70", "Huawei Mate 70", "Huawei", 5499.0, "2025-11-26"),
]
SCREENS = ["Home", "Usage", "Data Packs", "Top Up", "Bill", "Rewards", "Plans"]
TOPUP_CHANNELS = ["app", "wechat_pay", "alipay", "store", "bank_card"]
TOPUP_AMOUNTS = np.array([20.0, 30.0, 50.0, 100.0, 200.0])
BALANCE_REASONS = ["monthly_fee", "top_up", "data_pack", "usage_charge"]
CHANNELS = ["sms", "email", "wechat", "push"]
OFFERS = ["data-pack-offer", "top-up-bonus", "5g-upgrade", "handset-trade-in"]
TIERS = ["Standard", "Silver", "Gold", "Platinum"]
_OUTLET = ["Central", "Plaza", "East", "Station", "West"]

CUSTOMER_MAP = {
    "customer_no": "crm_id",
    "subscriber_id": "user_id",
    "msisdn": "phone",
    "full_name": "name",
    "gender": "gender",
    "date_of_birth": "birthday",
    "email": "email",
    "province": "region",
    "city": "city",
    "tier": "member_tier",
    "loyalty_points": "points",
    "activation_date": "registered_at",
    "outlet": "store",
    "plan_name": "plan",
    "plan_data_mb": "plan_data_mb",
    "monthly_fee": "monthly_fee",
    "handset_model": "handset",
    "handset_purchase_date": "handset_bought_at",
    "balance": "balance",
}
PRODUCT_MAP = {
    "product_code": "sku",
    "product_name": "name",
    "product_type": "category",
    "sub_type": "subcategory",
    "vendor": "brand",
    "list_price": "price",
    "qr_code": "qr_code",
    "launch_date": "launched_at",
}
ORDER_MAP = {
    "order_no": "order_id",
    "order_time": "ordered_at",
    "subscriber_id": "user_id",
    "msisdn": "phone",
    "sku": "sku",
    "item_name": "product_name",
    "category": "category",
    "qty": "quantity",
    "unit_price": "unit_price",
    "amount": "line_amount",
    "sales_channel": "channel",
    "outlet": "store",
    "province": "region",
    "currency": "currency",
}
FEEDBACK_MAP = {
    "case_id": "feedback_id",
    "customer_no": "crm_id",
    "msisdn": "phone",
    "case_type": "kind",
    "channel": "channel",
    "category": "topic",
    "description": "text",
    "score": "rating",
    "survey_question": "question",
    "survey_answer": "answer",
    "opened_at": "created_at",
    "case_status": "status",
}

# unified product table: data packs, plans, handsets
PRODUCTS: list[tuple[str, str, str, str, str, float, str]] = (
    [(s, nm, "data_pack", "monthly", "Skyline", pr, "2020-01-01") for s, nm, _, pr in DATA_PACKS]
    + [
        (PLAN_SKUS[i], p[0], "plan", "5g" if "5G" in p[0] else "4g", "Skyline", p[2], "2019-06-06")
        for i, p in enumerate(PLANS)
    ]
    + [(s, m, "handset", v.lower(), v, pr, ld) for s, m, v, pr, ld in HANDSETS]
)
_PACK0 = 0
_HANDSET0 = len(DATA_PACKS) + len(PLANS)


class _Acc:
    """Per-kind lists of event column chunks accumulated during the day loop."""

    def __init__(self) -> None:
        self.parts: dict[int, list[tuple[np.ndarray, ...]]] = {}

    def add(self, kind: int, ts: np.ndarray, p: np.ndarray, m: Any, a: Any = -1, b: Any = -1, c: Any = 0.0) -> None:
        n = len(ts)
        if n:
            self.parts.setdefault(kind, []).append(
                tuple(np.broadcast_to(np.asarray(x), (n,)).copy() for x in (ts, p, m, a, b, c))
            )

    def into(self, t: EventTable) -> None:
        for kind in sorted(self.parts):
            cols = [np.concatenate([part[j] for part in self.parts[kind]]) for j in range(6)]
            t.add(kind, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5])


class _Operator:
    """All simulated state of the operator brand."""

    def __init__(self, cfg: MarketConfig, n: int, budget: int) -> None:
        self.cfg, self.n, self.budget = cfg, n, budget
        self.T0 = epoch_ms(cfg.start)
        self.H = cfg.days * MS_DAY
        w = round(budget / max(1, n) / EVENTS_PER_SUBSCRIBER_DAY)
        self.W = int(min(cfg.days, max(MIN_WINDOW_DAYS, w)))
        self.w0 = cfg.days - self.W  # first window day (index from history start)
        self.outlets = [
            f"Skyline {CITIES[ci][2]} {_OUTLET[(ci + k) % 5]} Store" for ci in range(len(CITIES)) for k in range(2)
        ]
        self.hs_launch = np.array([epoch_ms(dt.date.fromisoformat(h[4])) - self.T0 for h in HANDSETS])

    def people(self) -> None:
        """Draw subscriber identities, plans, handsets, balances and hidden preferences."""
        r, n = rng_for(self.cfg.seed, BRAND, "people"), self.n
        self.female = r.random(n) < 0.48
        self.pname = pinyin_names(r, self.female)
        self.prov, self.city = random_geo(r, n)
        self.outlet = self.city * 2 + r.integers(0, 2, n)
        self.phone = [str(x) for x in phone_numbers(r, n)]
        em = emails(r, n)
        self.email = [e if h else None for e, h in zip(em, r.random(n) < 0.5, strict=True)]
        self.birthday = birthdays(r, self.cfg.start, n, 37, 12, 18, 78)
        age = (epoch_ms(self.cfg.start) - self.birthday) / (365.25 * MS_DAY)
        nums = unique_ints(r, n, 0, 89_999_999)
        self.crm_id = [f"C{1_000_000_000 + int(x):010d}" for x in nums]
        self.user_id = [f"SKY{10_000_000 + int(x):08d}" for x in unique_ints(r, n, 0, 89_999_999)]
        self.price = r.beta(2.0, 2.0, n)
        base = np.array([0.12, 0.18, 0.28, 0.22, 0.12, 0.08])
        rank = np.arange(6)
        w = base[None, :] * np.exp((0.5 - self.price)[:, None] * 1.4 * rank[None, :])
        self.plan = choice_rows(r, w)
        self.plan_mb = np.array([p[1] for p in PLANS], dtype=np.float64)[self.plan]
        self.fee = np.array([p[2] for p in PLANS])[self.plan]
        self.plan_min = np.array([p[3] for p in PLANS], dtype=np.float64)[self.plan]
        self.intensity = r.lognormal(-0.35, 0.45, n)
        self.dpp = np.clip(r.beta(2.0, 4.0, n) + 0.1 * (self.intensity > 0.9), 0, 1)
        # marketing consent given when the app was first used (own stream: the rest is unchanged)
        rc = rng_for(self.cfg.seed, BRAND, "consent")
        self.ok_sms = rc.random(n) < 0.8
        self.ok_push = rc.random(n) < 0.6
        self.churn = r.beta(2.0, 6.0, n)
        will_churn = r.random(n) < self.churn * 0.3
        self.churn_ts = np.where(will_churn, (self.w0 + r.random(n) * self.W) * MS_DAY, 2**62).astype(np.int64)
        self.brr = np.clip(r.beta(2.0, 18.0, n) * (1 - 0.5 * self.churn), 0.003, 0.6)
        self.app = r.random(n) < np.clip(0.95 - 0.012 * (age - 18), 0.2, 0.9)
        aff = r.dirichlet([1.2, 1.2, 1.2, 1.2], n)
        aff[:, 3] *= np.where(self.app, 1.5, 1.0)
        self.aff = aff / aff.sum(axis=1, keepdims=True)
        self.social = r.lognormal(3.0, 0.5, n)
        self.activated = -(r.uniform(60, 14 * 365, n) * MS_DAY).astype(np.int64)
        hw = np.array([4, 3, 3, 2, 2, 2, 2, 2, 0, 0, 0], dtype=float)
        hp = np.array([h[3] for h in HANDSETS])
        hwm = hw[None, :] * np.exp(-(self.price[:, None] - 0.5) * 2.0 * (hp[None, :] / 3000.0))
        self.handset = choice_rows(r, hwm)
        self.hs_bought = np.maximum(
            self.hs_launch[self.handset],
            self.w0 * MS_DAY - (r.uniform(20, 1300, n) * MS_DAY).astype(np.int64),
        )
        self.hs_bought = np.maximum(self.hs_bought, self.activated) // MS_DAY * MS_DAY
        self.balance0 = self.fee * r.uniform(0.3, 2.5, n)
        self.trigger = self.fee * (0.15 + 0.5 * (1 - self.price)) * (1 - 0.6 * self.churn)
        self.p_top = 0.25 + 0.5 * (1 - self.churn)
        self.anon = uuid_strings(r, n)
        self.device = uuid_strings(r, n)
        self.ip = random_ips(r, n)
        self.ios = r.random(n) < 0.3
        self.has_churned = will_churn

    def history_orders(self) -> None:
        """Data-pack and handset orders before the event window (imports only)."""
        r, n = rng_for(self.cfg.seed, BRAND, "history"), self.n
        ts_l, p_l, sku_l, ch_l = [], [], [], []
        d = self.cfg.start
        end_day = self.cfg.start + dt.timedelta(days=self.w0)
        while d < end_day:
            m0 = epoch_ms(d) - self.T0
            p_buy = np.clip(self.dpp * np.clip((self.intensity - 0.55) * 1.6, 0, 1.2), 0, 0.9)
            buy = np.flatnonzero(r.random(n) < p_buy)
            day = r.integers(8, 28, len(buy))
            ts = m0 + day * MS_DAY + hour_profile(r, len(buy))
            ok = ts < self.w0 * MS_DAY
            pack = np.clip(
                np.round(self.intensity[buy] * 2.2 - self.price[buy] * 1.5 + r.normal(0, 0.7, len(buy))), 0, 4
            ).astype(np.int64)
            ts_l.append(ts[ok])
            p_l.append(buy[ok])
            sku_l.append(_PACK0 + pack[ok])
            ch_l.append(r.random(int(ok.sum())) < 0.85)
            d = (d.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        hb = np.flatnonzero((self.hs_bought >= 0) & (self.hs_bought < self.w0 * MS_DAY))
        ts_l.append(self.hs_bought[hb] + hour_profile(r, len(hb), "store"))
        p_l.append(hb)
        sku_l.append(_HANDSET0 + self.handset[hb])
        ch_l.append(r.random(len(hb)) < 0.3)
        self.ord = [np.concatenate(x) for x in (ts_l, p_l, sku_l)] + [np.concatenate(ch_l).astype(bool)]

    def simulate(self) -> EventTable:
        """Run the day-by-day window simulation; return the event table (order events still unnumbered)."""
        r, n = rng_for(self.cfg.seed, BRAND, "window"), self.n
        acc = _Acc()
        o_ts, o_p, o_sku, o_online = [], [], [], []
        w_start = self.cfg.start + dt.timedelta(days=self.w0)
        sim0 = max(0, self.w0 - (w_start.day - 1))
        cum = np.zeros(n)
        plan_eff = self.plan_mb.copy()
        balance = self.balance0.copy()
        bought = np.zeros(n, dtype=bool)
        pending = np.zeros(n, dtype=bool)
        identified = np.zeros(n, dtype=bool)
        handset = self.handset.copy()
        hs_bought = self.hs_bought.copy()
        idx = np.arange(n)
        months = {}
        for d in range(sim0, self.cfg.days):
            date = self.cfg.start + dt.timedelta(days=d)
            day_ms = d * MS_DAY
            emit = d >= self.w0
            alive = self.churn_ts > day_ms
            if date.day == 1 or d == sim0:
                cum[:] = 0.0
                plan_eff = self.plan_mb.copy()
                bought[:] = False
                if date.day == 1:
                    balance = np.where(alive, balance - self.fee, balance)
                    if emit:
                        sel = idx[alive]
                        acc.add(
                            K_BALANCE,
                            day_ms + r.integers(0, 2 * MS_HOUR, len(sel)),
                            sel,
                            M_SERVER,
                            b=0,
                            c=balance[sel],
                        )
            # yesterday's decision to buy a data pack
            buy = idx[pending & alive]
            pending[:] = False
            if len(buy):
                pack = np.clip(
                    np.round(self.intensity[buy] * 2.2 - self.price[buy] * 1.5 + r.normal(0, 0.7, len(buy))),
                    0,
                    4,
                ).astype(np.int64)
                price = np.array([p[3] for p in DATA_PACKS])[pack]
                plan_eff[buy] += np.array([p[2] for p in DATA_PACKS], dtype=np.float64)[pack]
                paid = balance[buy] >= price
                balance[buy] = np.where(paid, balance[buy] - price, balance[buy])
                ts = day_ms + 7 * MS_HOUR + r.integers(0, 6 * MS_HOUR, len(buy))
                if emit:
                    appb = buy[self.app[buy] & identified[buy]]
                    acc.add(K_SCREEN, ts[self.app[buy] & identified[buy]] - 2 * MS_MIN, appb, M_USER, a=2)
                    pb = buy[paid]
                    acc.add(K_BALANCE, ts[paid] + 2_000, pb, M_SERVER, b=2, c=balance[pb])
                o_ts.append(ts)
                o_p.append(buy)
                o_sku.append(_PACK0 + pack)
                o_online.append(np.ones(len(buy), dtype=bool))
            # data usage
            wk = 1.15 if date.weekday() >= 5 else 1.0
            daily = self.plan_mb / 30.0 * self.intensity * wk * r.lognormal(0, 0.35, n)
            left = (self.churn_ts - day_ms) / MS_DAY
            daily *= np.where(left < 20, np.clip(0.3 + 0.7 * left / 20, 0.3, 1), 1.0)
            daily = np.where(cum >= plan_eff, daily * 0.08, daily)
            prev = cum / plan_eff
            cum += daily
            pct = cum / plan_eff
            if emit:
                sel = idx[alive]
                acc.add(
                    K_USAGE,
                    day_ms + 23 * MS_HOUR + r.integers(0, 55 * MS_MIN, len(sel)),
                    sel,
                    M_SERVER,
                    a=np.round(cum[sel]).astype(np.int64),
                    b=plan_eff[sel].astype(np.int64),
                    c=np.round(daily[sel], 1),
                )
            cross = (prev < 0.75) & (pct >= 0.75) & ~bought
            over = (pct >= 1.0) & ~bought & ~cross
            u = r.random(n)
            pending = alive & (
                (cross & (u < 0.55 * self.dpp * (1 - 0.4 * self.price))) | (over & (u < 0.25 * self.dpp))
            )
            bought |= pending
            # top-ups when the balance runs low
            low = idx[alive & (balance < self.trigger) & (r.random(n) < self.p_top)]
            if len(low):
                amt = TOPUP_AMOUNTS[
                    np.clip(np.searchsorted(TOPUP_AMOUNTS, self.fee[low] * r.uniform(0.5, 2.0, len(low))), 0, 4)
                ]
                chw = np.tile(np.array([4.0, 3.0, 2.0, 1.0, 1.0]), (len(low), 1))
                chw[:, 0] *= self.app[low]
                ch = choice_rows(r, chw)
                balance[low] += amt
                if emit:
                    ts = day_ms + hour_profile(r, len(low))
                    acc.add(K_TOPUP, ts, low, M_SERVER, a=amt.astype(np.int64), b=ch)
                    acc.add(K_BALANCE, ts + 1_500, low, M_SERVER, b=1, c=balance[low])
            # weekly call summary and usage charges (Mondays)
            if date.weekday() == 0:
                sel = idx[alive]
                minutes = r.gamma(2.0, 30.0 * self.social[sel] / 20.0)
                contacts = r.poisson(self.social[sel] * 0.35)
                charge = np.maximum(0, minutes - self.plan_min[sel] / 4.3) * 0.15 + (r.random(len(sel)) < 0.3) * 2.0
                balance[sel] -= charge
                if emit:
                    ts = day_ms + 2 * MS_HOUR + r.integers(0, MS_HOUR, len(sel))
                    acc.add(
                        K_CALLS,
                        ts,
                        sel,
                        M_SERVER,
                        a=np.round(minutes).astype(np.int64),
                        b=contacts,
                        c=np.round(minutes / 3.1),
                    )
                    ch_sel = sel[charge > 0]
                    acc.add(K_BALANCE, ts[charge > 0] + 60_000, ch_sel, M_SERVER, b=3, c=balance[ch_sel])
            # handset replacement
            age = (day_ms - hs_bought) / MS_DAY
            hz = (1 / 1100) * np.where(age > 730, 3.0, 1.0) * (1.5 - self.price)
            chg = idx[alive & (r.random(n) < hz) & emit]
            if len(chg):
                avail = self.hs_launch <= day_ms
                wts = np.tile(np.where(avail, 1.0, 0.0) * (1 + (self.hs_launch > day_ms - 365 * MS_DAY)), (len(chg), 1))
                new = choice_rows(r, wts)
                ts = day_ms + hour_profile(r, len(chg), "store")
                acc.add(K_HANDSET, ts + 3 * MS_HOUR, chg, M_SERVER, a=new, b=handset[chg])
                o_ts.append(ts)
                o_p.append(chg)
                o_sku.append(_HANDSET0 + new)
                o_online.append(r.random(len(chg)) < 0.3)
                handset[chg] = new
                hs_bought[chg] = day_ms
            # app sessions
            if emit:
                ps = 0.10 + 0.35 * (pct > 0.7) + 0.25 * (balance < self.trigger)
                ses = idx[alive & self.app & (r.random(n) < ps)]
                if len(ses):
                    st = day_ms + hour_profile(r, len(ses))
                    st = np.minimum(st, day_ms + 22 * MS_HOUR)
                    new_id = ~identified[ses]
                    mode0 = np.where(new_id, M_ANON, M_USER)
                    # campaign landing on the first screen
                    camp = r.random(len(ses)) < self.brr[ses] * 1.5
                    month_no = months.setdefault((date.year, date.month), len(months))
                    offer = choice_rows(
                        r,
                        np.stack(
                            [
                                self.dpp[ses],
                                0.5 * self.price[ses],
                                np.full(len(ses), 0.3),
                                0.2 + 0.6 * ((day_ms - hs_bought[ses]) > 730 * MS_DAY),
                            ],
                            1,
                        ),
                    )
                    avail = np.stack(
                        [
                            np.ones(len(ses)),
                            np.array([self.email[s] is not None for s in ses]),
                            np.ones(len(ses)),
                            np.ones(len(ses)),
                        ],
                        1,
                    )
                    chn = choice_rows(r, self.aff[ses] * avail)
                    ckey = np.where(camp, month_no * 16 + offer * 4 + chn, -1)
                    acc.add(K_SCREEN, st, ses, mode0, a=0, b=ckey)
                    ni = ses[new_id]
                    acc.add(K_IDENTIFY, st[new_id] + 3_000, ni, M_USER)
                    identified[ni] = True
                    k = r.poisson(1.1, len(ses))
                    sw = np.stack(
                        [
                            np.full(len(ses), 0.6 + 3 * (pct[ses] > 0.7)),
                            np.full(len(ses), 0.3) + 2 * (pct[ses] > 0.7),
                            np.full(len(ses), 0.4) + 3 * (balance[ses] < self.trigger[ses]),
                            np.full(len(ses), 0.5),
                            np.full(len(ses), 0.4),
                            np.full(len(ses), 0.3),
                        ],
                        1,
                    )
                    for j in range(3):
                        sel = k > j
                        scr = 1 + choice_rows(r, sw[sel])
                        acc.add(
                            K_SCREEN,
                            st[sel] + (j + 1) * r.integers(10_000, 90_000, int(sel.sum())),
                            ses[sel],
                            M_USER,
                            a=scr,
                        )
        self.months = months
        self.balance_end, self.handset_end, self.hs_bought_end = balance, handset, hs_bought
        # merge orders and number them chronologically
        h_ts, h_p, h_sku, h_on = self.ord
        w_n = sum(len(x) for x in o_ts)
        cat = lambda xs, dtp: np.concatenate(xs).astype(dtp) if xs else np.empty(0, dtp)  # noqa: E731
        all_ts = np.concatenate([h_ts, cat(o_ts, np.int64)])
        order = np.argsort(all_ts, kind="stable")
        self.o_ts = all_ts[order]
        self.o_p = np.concatenate([h_p, cat(o_p, np.int64)])[order]
        self.o_sku = np.concatenate([h_sku, cat(o_sku, np.int64)])[order]
        self.o_online = np.concatenate([h_on, cat(o_online, bool)])[order]
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        win = rank[len(h_ts) :]  # final index of each window order
        days = ((self.T0 + self.o_ts) // MS_DAY).astype("datetime64[D]")
        self.o_id = [f"SO{d[:4]}{d[5:7]}{d[8:10]}{i:07d}" for i, d in enumerate(np.datetime_as_string(days).tolist())]
        t = EventTable()
        acc.into(t)
        if w_n:
            t.add(K_ORDER, self.o_ts[win] + 1_000, self.o_p[win], M_SERVER, a=win)
        return t

    # ------------------------------------------------------------------------------------- render
    def _renderers(self) -> list[Any]:
        server = {"library": {"name": "analytics-java", "version": "3.5.1"}, "locale": "zh-CN"}
        app_ctx: dict[int, dict[str, Any]] = {}
        uid, anon = self.user_id, self.anon
        month_names = {v: f"{y}{m:02d}" for (y, m), v in self.months.items()}
        prods = [{"product_id": p[0], "sku": p[0], "name": p[1], "category": p[2], "price": p[5]} for p in PRODUCTS]

        def actx(p: int) -> dict[str, Any]:
            c = app_ctx.get(p)
            if c is None:
                ios = bool(self.ios[p])
                osv = "17.5" if ios else "14"
                c = {
                    "ip": self.ip[p],
                    "userAgent": f"SkylineMobile/6.2.0 ({'iPhone; iOS' if ios else 'Android'} {osv})",
                    "locale": "zh-CN",
                    "library": {"name": "analytics-ios", "version": "4.1.8"}
                    if ios
                    else {"name": "analytics-android", "version": "4.11.3"},
                    "device": {"id": self.device[p], "type": "ios" if ios else "android"},
                    "app": {"name": "Skyline Mobile", "version": "6.2.0", "build": "620"},
                    "os": {"name": "iOS" if ios else "Android", "version": osv},
                }
                app_ctx[p] = c
            return c

        def track(event: str, ts: str, mid: str, p: int, props: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "track",
                "messageId": mid,
                "timestamp": ts,
                "userId": uid[p],
                "event": event,
                "properties": props,
                "context": server,
            }

        def usage(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track(
                "Data Usage Reported",
                ts,
                mid,
                p,
                {
                    "day": ts[:10],
                    "used_mb": a,
                    "plan_mb": b,
                    "used_pct": round(100.0 * a / b, 1),
                    "daily_mb": c,
                },
            )

        def balance(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track(
                "Balance Updated",
                ts,
                mid,
                p,
                {"balance": round(c, 2), "currency": CURRENCY, "reason": BALANCE_REASONS[b]},
            )

        def topup(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track("Top Up", ts, mid, p, {"amount": float(a), "currency": CURRENCY, "channel": TOPUP_CHANNELS[b]})

        def calls(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track("Call Summary", ts, mid, p, {"minutes": a, "contacts": b, "calls": int(c), "period": "week"})

        def handset(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return track(
                "Handset Changed",
                ts,
                mid,
                p,
                {
                    "model": HANDSETS[a][1],
                    "brand": HANDSETS[a][2],
                    "previous_model": HANDSETS[b][1],
                    "previous_brand": HANDSETS[b][2],
                },
            )

        def screen(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            ev: dict[str, Any] = {"type": "screen", "messageId": mid, "timestamp": ts}
            if m == M_USER:
                ev["userId"] = uid[p]
            ev["anonymousId"] = anon[p]
            ev["name"] = SCREENS[a]
            ev["properties"] = {}
            ctx = actx(p)
            if b >= 0:
                ch = CHANNELS[b % 4]
                ctx = {
                    **ctx,
                    "campaign": {
                        "source": ch,
                        "medium": ch,
                        "name": f"{month_names[b // 16]}-{OFFERS[(b // 4) % 4]}",
                    },
                }
            ev["context"] = ctx
            return ev

        def identify(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            return {
                "type": "identify",
                "messageId": mid,
                "timestamp": ts,
                "userId": uid[p],
                "anonymousId": anon[p],
                "traits": {
                    "phone": self.phone[p],
                    "name": self.pname[p],
                    "plan": PLANS[int(self.plan[p])][0],
                    "consent": {"sms": bool(self.ok_sms[p]), "push": bool(self.ok_push[p])},
                },
                "context": actx(p),
            }

        def order(ts: str, mid: str, p: int, m: int, a: int, b: int, c: float) -> dict[str, Any]:
            pr = prods[int(self.o_sku[a])]
            return track(
                "Order Completed",
                ts,
                mid,
                p,
                {
                    "order_id": self.o_id[a],
                    "total": pr["price"],
                    "revenue": pr["price"],
                    "currency": CURRENCY,
                    "products": [{**pr, "quantity": 1}],
                },
            )

        return [usage, balance, topup, calls, handset, screen, identify, order]

    # ------------------------------------------------------------------------------------- imports
    def imports(self, out_dir: Path) -> tuple[list[ImportFile], dict[str, int], list[pl.DataFrame]]:
        """Write products, customers, orders (CSV) and feedback (CSV); return files, counts and dirt logs."""
        r = rng_for(self.cfg.seed, BRAND, "dirt")
        files, counts, logs = [], {}, []
        prod = pl.DataFrame(
            {
                "product_code": [p[0] for p in PRODUCTS],
                "product_name": [p[1] for p in PRODUCTS],
                "product_type": [p[2] for p in PRODUCTS],
                "sub_type": [p[3] for p in PRODUCTS],
                "vendor": [p[4] for p in PRODUCTS],
                "list_price": fmt_amount(np.array([p[5] for p in PRODUCTS])),
                "qr_code": [f"SKYQ-{p[0]}" if p[2] == "handset" else None for p in PRODUCTS],
                "launch_date": [p[6] for p in PRODUCTS],
            },
            schema={k: pl.String for k in PRODUCT_MAP},
        )
        prod, c, log = inject_dirt(
            prod,
            DirtSpec(
                amounts=["list_price"],
                dates=["launch_date"],
                allow_bad=False,
                allow_duplicates=False,
                rate=0.05,
            ),
            r,
            BRAND,
            "products",
        )
        files.append(self._write(out_dir, "products", "products.csv", prod, PRODUCT_MAP))
        counts.update({f"{BRAND}.products.{k}": v for k, v in c.items()})
        logs.append(log)

        order = np.argsort(np.array(self.crm_id))
        tenure = (self.H - self.activated) / (365 * MS_DAY)
        tier = np.clip((tenure / 4 + self.fee / 80).astype(np.int64), 0, 3)
        points = (tenure * self.fee * 12 * 0.8).astype(np.int64)
        cust = pl.DataFrame(
            {
                "customer_no": [self.crm_id[i] for i in order],
                "subscriber_id": [self.user_id[i] for i in order],
                "msisdn": [self.phone[i] for i in order],
                "full_name": [self.pname[i] for i in order],
                "gender": np.where(self.female[order], "F", "M").tolist(),
                "date_of_birth": fmt_date(self.birthday[order]),
                "email": [self.email[i] for i in order],
                "province": [PROVINCES[int(self.prov[i])][2] for i in order],
                "city": [CITIES[int(self.city[i])][2] for i in order],
                "tier": [TIERS[int(x)] for x in tier[order]],
                "loyalty_points": points[order].astype(str).tolist(),
                "activation_date": fmt_datetime(self.T0 + self.activated[order] + 10 * MS_HOUR),
                "outlet": [self.outlets[int(self.outlet[i])] for i in order],
                "plan_name": [PLANS[int(self.plan[i])][0] for i in order],
                "plan_data_mb": self.plan_mb[order].astype(np.int64).astype(str).tolist(),
                "monthly_fee": fmt_amount(self.fee[order]),
                "handset_model": [HANDSETS[int(self.handset_end[i])][1] for i in order],
                "handset_purchase_date": fmt_date(self.T0 + self.hs_bought_end[order]),
                "balance": fmt_amount(self.balance_end[order]),
            },
            schema={k: pl.String for k in CUSTOMER_MAP},
        )
        cust, c, log = inject_dirt(
            cust,
            DirtSpec(
                ids=["customer_no", "subscriber_id", "msisdn", "email"],
                phones=["msisdn"],
                emails=["email"],
                dates=["date_of_birth", "activation_date"],
                amounts=["monthly_fee", "balance"],
                region="province",
                region_lang="en",
            ),
            r,
            BRAND,
            "customers",
        )
        files.append(self._write(out_dir, "customers", "subscribers.csv", cust, CUSTOMER_MAP))
        counts.update({f"{BRAND}.customers.{k}": v for k, v in c.items()})
        logs.append(log)

        op = self.o_p
        stores = np.where(self.o_online, -1, self.outlet[op])
        orders = pl.DataFrame(
            {
                "order_no": self.o_id,
                "order_time": fmt_datetime(self.T0 + self.o_ts),
                "subscriber_id": [self.user_id[p] for p in op.tolist()],
                "msisdn": [self.phone[p] for p in op.tolist()],
                "sku": [PRODUCTS[s][0] for s in self.o_sku.tolist()],
                "item_name": [PRODUCTS[s][1] for s in self.o_sku.tolist()],
                "category": [PRODUCTS[s][2] for s in self.o_sku.tolist()],
                "qty": "1",
                "unit_price": fmt_amount(np.array([PRODUCTS[s][5] for s in self.o_sku.tolist()])),
                "amount": fmt_amount(np.array([PRODUCTS[s][5] for s in self.o_sku.tolist()])),
                "sales_channel": np.where(self.o_online, "online", "store").tolist(),
                "outlet": [self.outlets[s] if s >= 0 else "Skyline App" for s in stores.tolist()],
                "province": [PROVINCES[int(self.prov[p])][2] for p in op.tolist()],
                "currency": CURRENCY,
            },
            schema={k: pl.String for k in ORDER_MAP},
        )
        orders, c, log = inject_dirt(
            orders,
            DirtSpec(
                ids=["subscriber_id", "msisdn"],
                phones=["msisdn"],
                dates=["order_time"],
                amounts=["unit_price", "amount"],
                region="province",
                region_lang="en",
            ),
            r,
            BRAND,
            "orders",
        )
        files.append(self._write(out_dir, "orders", "orders.csv", orders, ORDER_MAP))
        counts.update({f"{BRAND}.orders.{k}": v for k, v in c.items()})
        counts[f"{BRAND}.orders"] = len(self.o_ts)
        logs.append(log)

        fb, self.fb_repeat = operator_feedback(self, rng_for(self.cfg.seed, BRAND, "feedback"))
        fb, c, log = inject_dirt(
            fb,
            DirtSpec(ids=["customer_no", "msisdn"], phones=["msisdn"], dates=["opened_at"]),
            r,
            BRAND,
            "feedback",
        )
        files.append(self._write(out_dir, "feedback", "cases.csv", fb, FEEDBACK_MAP))
        counts.update({f"{BRAND}.feedback.{k}": v for k, v in c.items()})
        logs.append(log)
        return files, counts, logs

    @staticmethod
    def _write(out_dir: Path, kind: str, name: str, df: pl.DataFrame, mapping: dict[str, str]) -> ImportFile:
        path = out_dir / name
        write_csv(df, path)
        return ImportFile(kind, path, dict(mapping))

    def truth(self) -> pl.DataFrame:
        """Return the hidden per-subscriber truth rows (keys the platform can see + preferences)."""
        n = self.n
        return pl.DataFrame(
            {
                "brand": [BRAND] * n,
                "crm_id": self.crm_id,
                "user_id": self.user_id,
                "phone": self.phone,
                "true_churned": self.has_churned.tolist(),
                "true_repeat_unresolved": self.fb_repeat.tolist(),
                "affinity_sms": self.aff[:, 0],
                "affinity_email": self.aff[:, 1],
                "affinity_wechat": self.aff[:, 2],
                "affinity_push": self.aff[:, 3],
                "preferred_channel": np.array(CHANNELS)[np.argmax(self.aff, axis=1)].tolist(),
                "true_device_id": self.device,
                "true_plan_mb": self.plan_mb.astype(np.int64),
                "true_consent_sms": self.ok_sms,  # what the subscriber says in the app (if they identify)
                "base_response_rate": self.brr,
                "price_sensitivity": self.price,
                "churn_propensity": self.churn,
                "data_pack_propensity": self.dpp,
                "usage_intensity": self.intensity,
            }
        )


def generate_operator(
    out_dir: Path,
    cfg: MarketConfig,
    n_customers: int,
    event_budget: int,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
) -> BrandResult:
    """Generate the operator brand into ``out_dir``; return its files, counts, truth rows and dirt log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    w = _Operator(cfg, n_customers, event_budget)
    w.people()
    w.history_orders()
    table = w.simulate()
    files, counts, logs = w.imports(out_dir)
    ev = table.finish()
    ev["ts"] = ev["ts"] + w.T0
    event_files = write_events(
        out_dir / "events", BRAND, BRAND_NO, cfg.seed, ev, w._renderers(), progress, progress_offset
    )
    counts = {
        f"{BRAND}.customers": n_customers,
        f"{BRAND}.events": len(ev["ts"]),
        f"{BRAND}.event_window_days": w.W,
        f"{BRAND}.churned_in_window": int(w.has_churned.sum()),
        **counts,
    }
    return BrandResult(BrandFiles(BRAND, NAME, files, event_files), counts, w.truth(), pl.concat(logs))
