"""Feedback records (complaints, consultations, reviews, surveys) for the demo market brands.

Texts come from small template banks: Chinese for the eye-care brand, English for the operator. Which
customers complain, how they rate and whether they complain twice unanswered follows their hidden churn
propensity, so text and sentiment mining can rediscover it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from goldkey.demo._base import MS_DAY, fmt_datetime, hour_profile, pick

KINDS = ["complaint", "consultation", "review", "survey"]

_CN_COMPLAINTS: dict[str, list[str]] = {
    "物流": [
        "快递三天了还没到，物流信息一直不更新。",
        "{product}发货太慢了，下单五天才收到。",
        "收到的包裹外箱破损，{product}的盒子都压坏了。",
        "物流显示已签收，但我根本没收到货。",
    ],
    "售后": [
        "申请退货一周了还没人处理。",
        "客服一直不回复，售后太差了。",
        "{product}有质量问题要求换货，门店推给线上，线上又推给门店。",
        "退款迟迟不到账，请尽快处理。",
    ],
    "价格": [
        "刚买完{product}就降价了，能不能补差价？",
        "会员价比电商平台还贵，不太合理。",
        "活动优惠券用不了，结算价格不对。",
        "同样的{product}门店和小程序价格不一样。",
    ],
    "质量": [
        "{product}戴上有异物感，眼睛很干。",
        "这盒{product}有一片是破损的。",
        "护理液开封后有沉淀，担心质量问题。",
        "{product}度数好像不准，戴着看不清。",
    ],
}
_CN_CONSULTATIONS: dict[str, list[str]] = {
    "产品咨询": ["{product}适合干眼症人群吗？", "日抛和月抛哪个更适合学生？", "{product}有没有150度的？"],
    "配戴方法": ["第一次戴隐形眼镜，正反面怎么分？", "护理液需要每天更换吗？", "月抛镜片过期了还能戴吗？"],
    "会员积分": ["积分怎么兑换礼品？", "我的积分为什么少了？", "会员等级怎么升级？"],
    "门店服务": ["附近哪家门店可以免费验光？", "门店营业时间是几点到几点？", "试戴券可以在哪些门店使用？"],
}
_CN_REPLIES = [
    "您好，已为您查询并处理，请留意短信通知。",
    "感谢咨询，详情可在会员中心查看。",
    "您好，建议您到就近门店由验光师为您检查。",
    "已为您登记，专属顾问会尽快联系您。",
]
_CN_REVIEWS = {
    5: ["{product}戴着很舒服，一整天都不干，会回购。", "包装完好，发货快，好评！", "一直用这款，品质稳定。"],
    4: ["总体不错，就是价格有点高。", "{product}佩戴舒适，物流稍慢。", "效果可以，客服也很耐心。"],
    3: ["一般般，和之前买的差不多。", "还行吧，没有宣传的那么好。", "中规中矩。"],
    2: ["戴久了有点干，不太满意。", "包装有点简陋，{product}不如以前好用。", "客服回复太慢。"],
    1: ["非常差，戴了眼睛发红，再也不买了。", "客服态度差，产品也有问题。", "{product}质量太差，要求退货。"],
}
_CN_SURVEY = [
    ("您对本次购物体验的满意度如何？", ["非常不满意", "不满意", "一般", "满意", "非常满意"]),
    ("您是否愿意向朋友推荐明眸？", ["绝不推荐", "不太愿意", "不确定", "愿意", "非常愿意"]),
    (
        "您最希望我们改进哪方面？",
        ["希望价格更优惠", "希望物流更快", "希望客服响应更快", "希望门店更多", "希望有更多试戴装"],
    ),
]

_EN_COMPLAINTS: dict[str, list[str]] = {
    "network": [
        "No signal at home since last week, calls keep dropping.",
        "5G coverage in my district is terrible.",
        "Mobile data is extremely slow in the evening.",
    ],
    "billing": [
        "I was charged twice for the {product}.",
        "My bill is much higher than my plan fee, please explain.",
        "Top-up was deducted from my bank card but the balance did not change.",
    ],
    "data": [
        "My data ran out in the middle of the month again.",
        "The data pack I bought was not activated.",
        "Usage reported in the app does not match my own records.",
    ],
    "service": [
        "Waited 40 minutes on the hotline and nobody answered.",
        "The store staff could not solve my problem.",
        "Nobody replied to my previous complaint.",
    ],
}
_EN_CONSULTATIONS: dict[str, list[str]] = {
    "plan": [
        "Can I switch to a cheaper plan without a fee?",
        "What is included in the {product}?",
        "How do I upgrade to 5G?",
    ],
    "roaming": ["Does my plan work in Hong Kong?", "How much is international roaming per day?"],
    "handset": ["Is there a trade-in offer for my old phone?", "When will the new handsets be in store?"],
}
_EN_REPLIES = [
    "Thank you, this has been resolved.",
    "Please check the app for details.",
    "Our engineer will contact you within 24 hours.",
    "The refund has been processed.",
]
_EN_REVIEWS = {
    5: ["Great network and friendly service.", "The app makes topping up really easy."],
    4: ["Good value, coverage could be better.", "Happy with my plan overall."],
    3: ["Average service, nothing special.", "Okay but the data packs are pricey."],
    2: ["Coverage is poor where I live.", "Too many marketing messages."],
    1: ["Worst operator I have used, thinking of switching.", "Terrible service, I want to cancel."],
}
_EN_SURVEY = [
    ("How likely are you to recommend Skyline Mobile to a friend?", ["0-2", "3-5", "6-7", "8-9", "10"]),
    (
        "How satisfied are you with our network?",
        ["Very dissatisfied", "Dissatisfied", "Neutral", "Satisfied", "Very satisfied"],
    ),
]


def _ratings(r: np.random.Generator, churn: np.ndarray) -> np.ndarray:
    return np.clip(np.round(5.0 - 3.2 * churn + r.normal(0, 0.7, len(churn))), 1, 5).astype(np.int64)


def _records(
    r: np.random.Generator,
    persons: np.ndarray,
    t_lo: np.ndarray,
    t_hi: np.ndarray,
    churn: np.ndarray,
    rate: float,
    scale: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw feedback records; return (person, time, kind, repeat flag, churn of the person)."""
    lam = (rate + 0.35 * churn[persons]) * scale
    k = r.poisson(lam)
    fp = np.repeat(persons, k)
    span = np.maximum(t_hi[fp] - t_lo[fp], MS_DAY)
    ts = t_lo[fp] + (r.random(len(fp)) * span).astype(np.int64)
    ts = ts // MS_DAY * MS_DAY + hour_profile(r, len(fp))
    c = churn[fp]
    probs = np.stack([0.15 + 0.45 * c, np.full(len(fp), 0.3), np.full(len(fp), 0.35), np.full(len(fp), 0.12)], axis=1)
    cum = np.cumsum(probs, axis=1)
    kind = (cum < (r.random(len(fp)) * cum[:, -1])[:, None]).sum(axis=1)
    # repeat complaints: the same customer complains again about the same topic, still unanswered
    rep = (kind == 0) & (c > 0.4) & (r.random(len(fp)) < 0.35)
    return fp, ts, kind, rep, c


def _build(
    r: np.random.Generator,
    fp: np.ndarray,
    ts: np.ndarray,
    kind: np.ndarray,
    rep: np.ndarray,
    c: np.ndarray,
    h_end: int,
    complaints: dict[str, list[str]],
    consults: dict[str, list[str]],
    replies: list[str],
    reviews: dict[int, list[str]],
    survey: list[tuple[str, list[str]]],
    product_of: Any,
    channels: list[str],
    channel_w: list[float],
) -> list[dict[str, Any]]:
    n = len(fp)
    ratings = _ratings(r, c)
    u = r.random((n, 4))
    topics_c, topics_q = list(complaints), list(consults)
    ch = pick(r, n, channel_w)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        p, k = int(fp[i]), int(kind[i])
        prod = product_of(p)
        row: dict[str, Any] = {
            "p": p,
            "ts": int(ts[i]),
            "kind": KINDS[k],
            "channel": channels[int(ch[i])],
            "rating": None,
            "question": None,
            "answer": None,
        }
        if k == 0:
            topic = topics_c[int(u[i, 0] * len(topics_c))]
            bank = complaints[topic]
            row.update(
                topic=topic,
                text=bank[int(u[i, 1] * len(bank))].format(product=prod),
                status="open" if (rep[i] or u[i, 2] < 0.15) else "resolved",
            )
            rows.append(row)
            if rep[i]:
                t2 = int(ts[i]) + int((3 + u[i, 3] * 11) * MS_DAY)
                if t2 < h_end:
                    again = bank[(int(u[i, 1] * len(bank)) + 1) % len(bank)].format(product=prod)
                    rows.append({**row, "ts": t2, "text": again, "status": "open"})
            continue
        if k == 1:
            topic = topics_q[int(u[i, 0] * len(topics_q))]
            bank = consults[topic]
            q = bank[int(u[i, 1] * len(bank))].format(product=prod)
            resolved = u[i, 2] < 0.9
            row.update(
                topic=topic,
                text=q,
                question=q,
                answer=replies[int(u[i, 3] * len(replies))] if resolved else None,
                status="resolved" if resolved else "open",
            )
        elif k == 2:
            rt = int(ratings[i])
            bank = reviews[rt]
            row.update(
                topic="review",
                text=bank[int(u[i, 1] * len(bank))].format(product=prod),
                rating=rt,
                status="resolved",
            )
        else:
            qi = int(u[i, 0] * len(survey))
            q, answers = survey[qi]
            rt = int(ratings[i])
            ans = answers[rt - 1] if len(answers) == 5 and qi < 2 else answers[int(u[i, 1] * len(answers))]
            row.update(topic="survey", text=ans, rating=rt, question=q, answer=ans, status="resolved")
        rows.append(row)
    rows.sort(key=lambda x: x["ts"])
    return rows


def eyecare_feedback(w: Any, r: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """Return (feedback table with all-string columns as in the eye-care service desk export,
    per-person flag of customers with a repeated unresolved complaint)."""
    n = w.n
    bought = np.bincount(w.o_p, minlength=n) > 0
    persons = np.flatnonzero(bought | w.online)
    t_lo = np.maximum(w.start, np.where(w.seg == 2, w.ident, 0))
    t_hi = np.minimum(w.end, w.H)
    fp, ts, kind, rep, c = _records(r, persons, t_lo, t_hi, w.churn, 0.08, 1.0)

    def product_of(p: int) -> str:
        from goldkey.demo.eyecare import G_SOL, PRODUCTS

        return PRODUCTS[int(w.fav_sol[p] if w.group[p] == G_SOL else w.fav_lens[p])][1]

    rows = _build(
        r,
        fp,
        ts,
        kind,
        rep,
        c,
        w.H,
        _CN_COMPLAINTS,
        _CN_CONSULTATIONS,
        _CN_REPLIES,
        _CN_REVIEWS,
        _CN_SURVEY,
        product_of,
        ["wechat", "hotline", "store", "app", "email"],
        [5, 3, 2, 2, 1],
    )
    repeat = np.zeros(n, dtype=bool)
    seen: dict[tuple[int, str], int] = {}
    for row in rows:
        if row["kind"] == "complaint" and row["status"] == "open":
            key = (row["p"], row["topic"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] >= 2:
                repeat[row["p"]] = True
    tsa = np.array([x["ts"] for x in rows], dtype=np.int64) + w.T0
    created = fmt_datetime(tsa).to_list() if len(rows) else []
    df = pl.DataFrame(
        {
            "ticket_id": [f"FB{s[2:4]}{s[5:7]}{s[8:10]}{i:06d}" for i, s in enumerate(created)],
            "member_no": [w.crm_id[x["p"]] for x in rows],
            "mobile": [w.phone[x["p"]] for x in rows],
            "type": [x["kind"] for x in rows],
            "source": [x["channel"] for x in rows],
            "topic": [x["topic"] for x in rows],
            "content": [x["text"] for x in rows],
            "score": [None if x["rating"] is None else str(x["rating"]) for x in rows],
            "question": [x["question"] for x in rows],
            "answer": [x["answer"] for x in rows],
            "created": created,
            "state": [x["status"] for x in rows],
        },
        schema={
            k: pl.String
            for k in (
                "ticket_id",
                "member_no",
                "mobile",
                "type",
                "source",
                "topic",
                "content",
                "score",
                "question",
                "answer",
                "created",
                "state",
            )
        },
    )
    return df, repeat


def operator_feedback(w: Any, r: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """Return (feedback table with all-string columns as in the operator's case-management export,
    per-subscriber flag of subscribers with a repeated unresolved complaint)."""
    n = w.n
    persons = np.arange(n)
    t_lo = np.zeros(n, dtype=np.int64)
    t_hi = np.minimum(w.churn_ts, w.H)
    fp, ts, kind, rep, c = _records(r, persons, t_lo, t_hi, w.churn, 0.04, 1.0)

    def product_of(p: int) -> str:
        from goldkey.demo.mobile import PLANS

        return PLANS[int(w.plan[p])][0]

    rows = _build(
        r,
        fp,
        ts,
        kind,
        rep,
        c,
        w.H,
        _EN_COMPLAINTS,
        _EN_CONSULTATIONS,
        _EN_REPLIES,
        _EN_REVIEWS,
        _EN_SURVEY,
        product_of,
        ["hotline", "app", "store", "wechat", "email"],
        [5, 4, 2, 2, 1],
    )
    repeat = np.zeros(n, dtype=bool)
    seen: dict[tuple[int, str], int] = {}
    for row in rows:
        if row["kind"] == "complaint" and row["status"] == "open":
            key = (row["p"], row["topic"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] >= 2:
                repeat[row["p"]] = True
    tsa = np.array([x["ts"] for x in rows], dtype=np.int64) + w.T0
    created = fmt_datetime(tsa).to_list() if len(rows) else []
    df = pl.DataFrame(
        {
            "case_id": [f"CS{s[:4]}{s[5:7]}{i:07d}" for i, s in enumerate(created)],
            "customer_no": [w.crm_id[x["p"]] for x in rows],
            "msisdn": [w.phone[x["p"]] for x in rows],
            "case_type": [x["kind"] for x in rows],
            "channel": [x["channel"] for x in rows],
            "category": [x["topic"] for x in rows],
            "description": [x["text"] for x in rows],
            "score": [None if x["rating"] is None else str(x["rating"]) for x in rows],
            "survey_question": [x["question"] for x in rows],
            "survey_answer": [x["answer"] for x in rows],
            "opened_at": created,
            "case_status": [x["status"] for x in rows],
        },
        schema={
            k: pl.String
            for k in (
                "case_id",
                "customer_no",
                "msisdn",
                "case_type",
                "channel",
                "category",
                "description",
                "score",
                "survey_question",
                "survey_answer",
                "opened_at",
                "case_status",
            )
        },
    )
    return df, repeat
