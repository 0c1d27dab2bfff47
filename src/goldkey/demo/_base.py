"""Shared building blocks of the demo market generator.

Holds the configuration and file dataclasses, seeded random helpers, reference data (regions, names),
identifier generators, the dirt injector for import files and the columnar Segment event table with
its JSONL writer. Everything here is deterministic for a given seed: nothing reads the clock.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

MS_MIN = 60_000
MS_HOUR = 3_600_000
MS_DAY = 86_400_000
EVENTS_PER_FILE = 100_000
CURRENCY = "CNY"

ProgressFn = Callable[[int], None]


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MarketConfig:
    """Size and seed of a generated demo market; equal configs give byte-identical output."""

    seed: int = 42
    customers: int = 50_000
    events: int = 2_000_000
    start: dt.date = dt.date(2025, 1, 1)
    days: int = 540

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-safe dict of the config (start as ISO date)."""
        return {
            "seed": self.seed,
            "customers": self.customers,
            "events": self.events,
            "start": self.start.isoformat(),
            "days": self.days,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MarketConfig:
        """Return the config described by a dict produced by :meth:`to_json`."""
        return cls(
            seed=int(data["seed"]),
            customers=int(data["customers"]),
            events=int(data["events"]),
            start=dt.date.fromisoformat(data["start"]),
            days=int(data["days"]),
        )


@dataclass(frozen=True)
class ImportFile:
    """One import file: its kind, location and the source-column -> Goldkey-field mapping."""

    kind: str
    path: Path
    mapping: dict[str, str]


@dataclass(frozen=True)
class BrandFiles:
    """All files of one brand: imports in load order and chronological JSONL event files."""

    brand: str
    name: str
    imports: list[ImportFile]
    event_files: list[Path]


@dataclass
class BrandResult:
    """What a brand generator returns: its files, counts, hidden truth rows and the dirt log."""

    files: BrandFiles
    counts: dict[str, int]
    truth: pl.DataFrame
    dirt: pl.DataFrame


# Goldkey import fields that mappings may target, per import kind.
IMPORT_FIELDS: dict[str, frozenset[str]] = {
    "customers": frozenset(
        "crm_id user_id phone email wechat_openid wechat_unionid name gender birthday region city "
        "member_tier points registered_at store plan plan_data_mb monthly_fee handset handset_bought_at "
        "balance consent_sms consent_email consent_wechat consent_push consent_call consent_updated_at".split()
    ),
    "orders": frozenset(
        "order_id ordered_at crm_id phone user_id sku product_name category quantity unit_price "
        "line_amount channel store region currency".split()
    ),
    "products": frozenset("sku name category subcategory brand price qr_code launched_at".split()),
    "feedback": frozenset(
        "feedback_id crm_id phone kind channel topic text rating question answer created_at status".split()
    ),
}

# Truth columns that identify a customer the way the platform sees them (all others are hidden).
TRUTH_KEY_COLUMNS: tuple[str, ...] = ("brand", "crm_id", "user_id", "phone")


# --------------------------------------------------------------------------------------------- random
def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """Return an independent PCG64 generator derived from ``seed`` and stable string labels."""
    words = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF] + [zlib.crc32(lab.encode()) for lab in labels]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """Return ``n`` distinct random int64 values in ``[low, high)`` (in random order)."""
    return low + rng.choice(high - low, size=n, replace=False).astype(np.int64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Return the splitmix64 finaliser of a uint64 array: a bijection, so distinct in -> distinct out."""
    z = x.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def hex_strings(rng: np.random.Generator, n: int, nchars: int) -> list[str]:
    """Return ``n`` random lowercase hex strings of ``nchars`` characters."""
    raw = rng.integers(0, 16, size=(n, nchars), dtype=np.uint8)
    table = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    return [s.decode() for s in table[raw].view(f"S{nchars}").ravel()]


def uuid_strings(rng: np.random.Generator, n: int) -> list[str]:
    """Return ``n`` random version-4 style UUID strings."""
    out = []
    for h in hex_strings(rng, n, 32):
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}")
    return out


def token_strings(rng: np.random.Generator, n: int, nchars: int, prefix: str = "") -> list[str]:
    """Return ``n`` random URL-safe base64-alphabet tokens (WeChat OpenID/UnionID style)."""
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
    raw = rng.integers(0, 64, size=(n, nchars), dtype=np.uint8)
    return [prefix + s.decode() for s in alphabet[raw].view(f"S{nchars}").ravel()]


def pick(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    """Return ``n`` indices drawn from a categorical distribution with the given weights."""
    w = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(w), size=n, p=w / w.sum())


def choice_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Return one categorical draw per row of a (n, k) probability matrix (rows need not be normalised)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


# --------------------------------------------------------------------------------------------- time
def epoch_ms(day: dt.date) -> int:
    """Return local-time milliseconds since 1970-01-01 for midnight of ``day`` (naive, +08:00 implied)."""
    return (day - dt.date(1970, 1, 1)).days * MS_DAY


def _ms_series(ms: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(ms, dtype=np.int64)).cast(pl.Datetime("ms"))


def iso_ts(ms: np.ndarray) -> list[str]:
    """Return ISO-8601 timestamps with milliseconds and the +08:00 offset for local epoch ms."""
    return _ms_series(ms).dt.strftime("%Y-%m-%dT%H:%M:%S%.3f+08:00").to_list()


def fmt_datetime(ms: np.ndarray) -> pl.Series:
    """Return 'YYYY-MM-DD HH:MM:SS' strings for local epoch ms."""
    return _ms_series(ms).dt.strftime("%Y-%m-%d %H:%M:%S")


def fmt_date(ms: np.ndarray) -> pl.Series:
    """Return 'YYYY-MM-DD' strings for local epoch ms."""
    return _ms_series(ms).dt.strftime("%Y-%m-%d")


def fmt_amount(x: np.ndarray) -> pl.Series:
    """Return amounts as plain strings with two decimals ('1299.00')."""
    return pl.Series(np.char.mod("%.2f", np.round(np.asarray(x, dtype=np.float64), 2)).astype(str))


def hour_profile(rng: np.random.Generator, n: int, kind: str = "web") -> np.ndarray:
    """Return ``n`` random millisecond offsets within a day following a typical activity curve."""
    if kind == "store":
        w = [0] * 10 + [5, 7, 8, 7, 7, 8, 9, 10, 10, 11, 11, 7] + [0, 0]
    else:
        w = [2, 1, 0.5, 0.3, 0.3, 0.5, 1, 3, 5, 6, 6, 6, 8, 7, 6, 6, 6, 6, 7, 9, 11, 12, 10, 6]
    hours = pick(rng, n, w)
    return hours.astype(np.int64) * MS_HOUR + rng.integers(0, MS_HOUR, size=n)


# --------------------------------------------------------------------------------------------- geography
# (full Chinese name, short Chinese name, English name, weight, [(city_cn, city_en), ...])
PROVINCES: list[tuple[str, str, str, float, list[tuple[str, str]]]] = [
    (
        "广东省",
        "广东",
        "Guangdong",
        14,
        [("广州", "Guangzhou"), ("深圳", "Shenzhen"), ("佛山", "Foshan"), ("东莞", "Dongguan")],
    ),
    ("浙江省", "浙江", "Zhejiang", 9, [("杭州", "Hangzhou"), ("宁波", "Ningbo"), ("温州", "Wenzhou")]),
    ("江苏省", "江苏", "Jiangsu", 9, [("南京", "Nanjing"), ("苏州", "Suzhou"), ("无锡", "Wuxi")]),
    ("上海市", "上海", "Shanghai", 8, [("上海", "Shanghai")]),
    ("北京市", "北京", "Beijing", 8, [("北京", "Beijing")]),
    ("山东省", "山东", "Shandong", 7, [("济南", "Jinan"), ("青岛", "Qingdao"), ("烟台", "Yantai")]),
    ("四川省", "四川", "Sichuan", 6, [("成都", "Chengdu"), ("绵阳", "Mianyang")]),
    ("湖北省", "湖北", "Hubei", 5, [("武汉", "Wuhan"), ("宜昌", "Yichang")]),
    ("福建省", "福建", "Fujian", 5, [("福州", "Fuzhou"), ("厦门", "Xiamen"), ("泉州", "Quanzhou")]),
    ("河南省", "河南", "Henan", 5, [("郑州", "Zhengzhou"), ("洛阳", "Luoyang")]),
    ("湖南省", "湖南", "Hunan", 4, [("长沙", "Changsha"), ("株洲", "Zhuzhou")]),
    ("陕西省", "陕西", "Shaanxi", 3, [("西安", "Xi'an")]),
    ("重庆市", "重庆", "Chongqing", 3, [("重庆", "Chongqing")]),
    ("天津市", "天津", "Tianjin", 3, [("天津", "Tianjin")]),
    ("辽宁省", "辽宁", "Liaoning", 3, [("沈阳", "Shenyang"), ("大连", "Dalian")]),
    ("安徽省", "安徽", "Anhui", 3, [("合肥", "Hefei"), ("芜湖", "Wuhu")]),
    ("广西壮族自治区", "广西", "Guangxi", 2, [("南宁", "Nanning"), ("桂林", "Guilin")]),
    ("云南省", "云南", "Yunnan", 2, [("昆明", "Kunming"), ("大理", "Dali")]),
]

# Flat city table: (province index, city_cn, city_en)
CITIES: list[tuple[int, str, str]] = [(p, c[0], c[1]) for p, prov in enumerate(PROVINCES) for c in prov[4]]
_REGION_VARIANTS_CN = {p[0]: [p[1], p[2]] for p in PROVINCES}
_REGION_VARIANTS_EN = {p[2]: [p[0], p[1], f"{p[2].upper()}"] for p in PROVINCES}

_IP_FIRST = [
    36,
    39,
    58,
    59,
    60,
    61,
    101,
    106,
    110,
    111,
    112,
    113,
    114,
    115,
    116,
    117,
    118,
    119,
    120,
    121,
    122,
    123,
    124,
    125,
    180,
    182,
    183,
    202,
    210,
    211,
    218,
    219,
    220,
    221,
    222,
    223,
]


def random_geo(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (province index, city index into CITIES) arrays for ``n`` people, population-weighted."""
    prov = pick(rng, n, [p[3] for p in PROVINCES])
    offsets = np.cumsum([0] + [len(p[4]) for p in PROVINCES])
    sizes = np.array([len(p[4]) for p in PROVINCES])
    city = offsets[prov] + (rng.random(n) * sizes[prov]).astype(np.int64)
    return prov.astype(np.int64), city


def random_ips(rng: np.random.Generator, n: int) -> list[str]:
    """Return ``n`` random IPv4 addresses from common Chinese ranges."""
    a = np.asarray(_IP_FIRST)[rng.integers(0, len(_IP_FIRST), n)]
    b = rng.integers(1, 255, size=(n, 3))
    return [f"{a[i]}.{b[i, 0]}.{b[i, 1]}.{b[i, 2]}" for i in range(n)]


# --------------------------------------------------------------------------------------------- people
_SURNAMES_CN = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严"
)
_GIVEN_F = list("芳娜敏静丽艳娟霞婷雪琳晶颖倩欣怡佳悦萱璐薇慧洁蕾彤雯莉梅琪瑶雅诗涵思梦")
_GIVEN_M = list("伟强磊军洋勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆帅旭宁龙林博睿航")
_SURNAMES_PY = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Xu",
    "Sun",
    "Ma",
    "Zhu",
    "Hu",
    "Guo",
    "He",
    "Gao",
    "Lin",
    "Luo",
    "Zheng",
    "Liang",
    "Xie",
    "Song",
    "Tang",
]
_GIVEN_PY_F = [
    "Fang",
    "Na",
    "Min",
    "Jing",
    "Li",
    "Yan",
    "Juan",
    "Xia",
    "Ting",
    "Xue",
    "Lin",
    "Ying",
    "Qian",
    "Xin",
    "Yi",
    "Jia",
    "Yue",
    "Lu",
    "Wei",
    "Hui",
    "Mei",
    "Qi",
    "Yao",
    "Xiuying",
    "Shiyu",
]
_GIVEN_PY_M = [
    "Wei",
    "Qiang",
    "Lei",
    "Jun",
    "Yang",
    "Yong",
    "Jie",
    "Tao",
    "Ming",
    "Chao",
    "Gang",
    "Ping",
    "Hui",
    "Peng",
    "Hua",
    "Fei",
    "Xin",
    "Bo",
    "Bin",
    "Yu",
    "Hao",
    "Kai",
    "Jian",
    "Haoran",
    "Zihan",
]
_EMAIL_DOMAINS = ["qq.com", "163.com", "126.com", "sina.com", "foxmail.com", "gmail.com", "outlook.com"]
_EMAIL_WEIGHTS = [45, 25, 8, 5, 7, 5, 5]
_PHONE_PREFIXES = [
    130,
    131,
    132,
    133,
    135,
    136,
    137,
    138,
    139,
    150,
    151,
    152,
    153,
    155,
    156,
    157,
    158,
    159,
    166,
    176,
    177,
    180,
    181,
    182,
    183,
    185,
    186,
    187,
    188,
    189,
    191,
    199,
]


def cn_names(rng: np.random.Generator, female: np.ndarray) -> list[str]:
    """Return Chinese full names (surname + one or two given characters) matching the gender flags."""
    n = len(female)
    sur = rng.integers(0, len(_SURNAMES_CN), n)
    two = rng.random(n) < 0.55
    g1f, g2f = rng.integers(0, len(_GIVEN_F), n), rng.integers(0, len(_GIVEN_F), n)
    g1m, g2m = rng.integers(0, len(_GIVEN_M), n), rng.integers(0, len(_GIVEN_M), n)
    out = []
    for i in range(n):
        pool, a, b = (_GIVEN_F, g1f[i], g2f[i]) if female[i] else (_GIVEN_M, g1m[i], g2m[i])
        out.append(_SURNAMES_CN[sur[i]] + pool[a] + (pool[b] if two[i] else ""))
    return out


def pinyin_names(rng: np.random.Generator, female: np.ndarray) -> list[str]:
    """Return romanised Chinese names ('Zhang Wei') matching the gender flags."""
    n = len(female)
    sur = rng.integers(0, len(_SURNAMES_PY), n)
    gf = rng.integers(0, len(_GIVEN_PY_F), n)
    gm = rng.integers(0, len(_GIVEN_PY_M), n)
    return [f"{_SURNAMES_PY[sur[i]]} {_GIVEN_PY_F[gf[i]] if female[i] else _GIVEN_PY_M[gm[i]]}" for i in range(n)]


def emails(rng: np.random.Generator, n: int) -> list[str]:
    """Return ``n`` distinct-looking e-mail addresses on common Chinese mail domains."""
    dom = pick(rng, n, _EMAIL_WEIGHTS)
    qq = rng.integers(10_000_000, 3_000_000_000, n)
    sur = rng.integers(0, len(_SURNAMES_PY), n)
    giv = rng.integers(0, len(_GIVEN_PY_M), n)
    num = rng.integers(1, 9999, n)
    out = []
    for i in range(n):
        d = _EMAIL_DOMAINS[dom[i]]
        if d in ("qq.com", "foxmail.com") and num[i] % 2:
            out.append(f"{qq[i]}@{d}")
        else:
            out.append(f"{_SURNAMES_PY[sur[i]].lower()}.{_GIVEN_PY_M[giv[i]].lower()}{num[i]}@{d}")
    return out


def phone_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` distinct valid-looking Chinese mobile numbers as int64 (11 digits)."""
    pref = np.asarray(_PHONE_PREFIXES, dtype=np.int64)[rng.integers(0, len(_PHONE_PREFIXES), n)]
    suffix = unique_ints(rng, n, 0, 100_000_000)
    return pref * 100_000_000 + suffix


def birthdays(
    rng: np.random.Generator, ref: dt.date, n: int, mean_age: float, sd: float, lo: int = 16, hi: int = 75
) -> np.ndarray:
    """Return local epoch ms of birthdays for ``n`` people of roughly normal age around ``mean_age``."""
    age_days = np.clip(rng.normal(mean_age, sd, n), lo, hi) * 365.25
    return epoch_ms(ref) - (age_days * MS_DAY).astype(np.int64) // MS_DAY * MS_DAY


# --------------------------------------------------------------------------------------------- dirt
@dataclass
class DirtSpec:
    """Which columns of an import carry which kind of value, to inject realistic dirt into."""

    ids: list[str] = field(default_factory=list)  # identifier columns (blanked for "no identifier" rows)
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    amounts: list[str] = field(default_factory=list)
    region: str | None = None
    region_lang: str = "cn"  # canonical language of the region column: "cn" or "en"
    allow_bad: bool = True
    allow_duplicates: bool = True
    rate: float = 0.005


def _phone_messy(p: str, k: int) -> str:
    variants = (
        f"+86 {p[:3]} {p[3:7]} {p[7:]}",
        f"{p[:3]}-{p[3:7]}-{p[7:]}",
        f"+86{p}",
        f" {p} ",
        f"86-{p}",
        f"{p[:3]} {p[3:7]} {p[7:]}",
    )
    return variants[k % len(variants)]


def _phone_invalid(p: str, k: int) -> str:
    return ("12345", p[:10], p + "9", "1" + "0" * 10, "电话待补充")[k % 5]


def _email_bad(e: str, k: int) -> str:
    local, _, dom = e.partition("@")
    return (f"{local}@{dom.split('.')[0]}", f"{local}{dom}", f"{local}@@{dom}", f"{local} at {dom}")[k % 4]


def _date_messy(s: str, k: int) -> str:
    y, m, d = s[:10].split("-")
    rest = s[10:]
    if k % 2:
        return f"{y}/{int(m)}/{int(d)}{rest[:6] if rest else ''}"
    return f"{y}年{int(m)}月{int(d)}日{rest[:6] if rest else ''}"


def _amount_messy(s: str, k: int) -> str:
    v = float(s)
    return (f"¥{v:,.2f}", f"{v:,.2f}元", f"￥{v:,.2f}")[k % 3]


def inject_dirt(
    df: pl.DataFrame, spec: DirtSpec, rng: np.random.Generator, brand: str, kind: str
) -> tuple[pl.DataFrame, dict[str, int], pl.DataFrame]:
    """Inject realistic dirt into an all-string import table.

    Returns (new table, counts, log) where counts has keys ``rows``, ``dirty`` (normalisable values:
    formatted phones, upper-case e-mails, mixed date formats, currency amounts, region variants),
    ``bad`` (rows that must be quarantined or flagged: invalid phone, malformed e-mail, no identifier)
    and ``duplicates`` (exact copies of another row), and log has one row per injected issue with the
    final 0-based data-row number in the file.
    """
    n = df.height
    if n == 0:
        return df, {"rows": 0, "dirty": 0, "bad": 0, "duplicates": 0}, _empty_dirt_log()
    n_dirty = max(2, round(n * spec.rate * 0.55)) if n >= 20 else 0
    n_bad = max(2, round(n * spec.rate * 0.3)) if (spec.allow_bad and n >= 20) else 0
    n_dup = max(1, round(n * spec.rate * 0.15)) if (spec.allow_duplicates and n >= 20) else 0
    chosen = rng.choice(n, size=min(n, n_dirty + n_bad + n_dup), replace=False)
    dirty_rows = np.sort(chosen[:n_dirty])
    bad_rows = np.sort(chosen[n_dirty : n_dirty + n_bad])
    dup_rows = np.sort(chosen[n_dirty + n_bad :])
    touched = set(
        spec.ids + spec.phones + spec.emails + spec.dates + spec.amounts + ([spec.region] if spec.region else [])
    )
    cols: dict[str, list[Any]] = {c: df[c].to_list() for c in touched}
    log: list[tuple[int, str, str, str, str]] = []  # (orig row, severity, issue, column, value)

    def _try_dirty(r: int, k: int) -> bool:
        options: list[tuple[str, str]] = []
        options += [("phone_format", c) for c in spec.phones if cols[c][r]]
        options += [("email_case", c) for c in spec.emails if cols[c][r]]
        options += [("date_format", c) for c in spec.dates if cols[c][r]]
        options += [("amount_format", c) for c in spec.amounts if cols[c][r]]
        if spec.region and cols[spec.region][r]:
            options.append(("region_variant", spec.region))
        if not options:
            return False
        issue, c = options[k % len(options)]
        v = cols[c][r]
        if issue == "phone_format":
            nv = _phone_messy(v, k // len(options))
        elif issue == "email_case":
            nv = v.upper()
        elif issue == "date_format":
            nv = _date_messy(v, k // len(options))
        elif issue == "amount_format":
            nv = _amount_messy(v, k // len(options))
        else:
            table = _REGION_VARIANTS_CN if spec.region_lang == "cn" else _REGION_VARIANTS_EN
            vs = table.get(v, [v])
            nv = vs[(k // len(options)) % len(vs)]
        cols[c][r] = nv
        log.append((r, "dirty", issue, c, nv))
        return True

    def _make_bad(r: int, k: int) -> None:
        options: list[tuple[str, str]] = []
        options += [("phone_invalid", c) for c in spec.phones if cols[c][r]]
        options += [("email_malformed", c) for c in spec.emails if cols[c][r]]
        if spec.ids:
            options.append(("no_identifier", ""))
        issue, c = options[k % len(options)]
        if issue == "no_identifier":
            for idc in spec.ids:
                cols[idc][r] = None
            log.append((r, "bad", issue, ",".join(spec.ids), ""))
            return
        nv = _phone_invalid(cols[c][r], k) if issue == "phone_invalid" else _email_bad(cols[c][r], k)
        cols[c][r] = nv
        log.append((r, "bad", issue, c, nv))

    ks = rng.integers(0, 1_000_000, size=len(dirty_rows) + len(bad_rows))
    for j, r in enumerate(dirty_rows.tolist()):
        _try_dirty(r, int(ks[j]))
    for j, r in enumerate(bad_rows.tolist()):
        _make_bad(r, int(ks[len(dirty_rows) + j]))
    df = df.with_columns([pl.Series(c, cols[c], dtype=pl.String) for c in sorted(touched)])

    # Duplicates: an exact copy inserted a few rows after its original.
    keys = np.arange(n, dtype=np.float64)
    dup_keys = dup_rows + rng.integers(1, 40, size=len(dup_rows)) + 0.5
    all_keys = np.concatenate([keys, dup_keys])
    src = np.concatenate([np.arange(n), dup_rows])
    order = np.argsort(all_keys, kind="stable")
    df = df[src[order].tolist()]
    final_pos = np.empty(len(order), dtype=np.int64)
    final_pos[order] = np.arange(len(order))
    rows = [(brand, kind, int(final_pos[r]), sev, issue, c, v) for r, sev, issue, c, v in log]
    # the copy of dup_rows[j] sits at index n + j of the pre-sort arrays
    rows += [(brand, kind, int(final_pos[n + j]), "duplicate", "exact_duplicate", "", "") for j in range(len(dup_rows))]
    rows.sort(key=lambda t: t[2])
    log_df = pl.DataFrame(rows, schema=_DIRT_SCHEMA, orient="row") if rows else _empty_dirt_log()
    dirty = sum(1 for r in rows if r[3] == "dirty")
    counts = {"rows": df.height, "dirty": dirty, "bad": len(bad_rows), "duplicates": len(dup_rows)}
    return df, counts, log_df


_DIRT_SCHEMA = {
    "brand": pl.String,
    "kind": pl.String,
    "row": pl.Int64,
    "severity": pl.String,
    "issue": pl.String,
    "column": pl.String,
    "value": pl.String,
}


def _empty_dirt_log() -> pl.DataFrame:
    return pl.DataFrame(schema=_DIRT_SCHEMA)


# --------------------------------------------------------------------------------------------- events
class EventTable:
    """Columnar buffer of events before rendering: one row per event, sorted by time on finish.

    Columns: ``ts`` local epoch ms, ``kind`` (brand-specific code), ``p`` person index, ``m`` identity
    mode (brand-specific), and generic payload columns ``a``, ``b`` (int64) and ``c`` (float64).
    """

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        kind: int,
        ts: np.ndarray,
        p: np.ndarray,
        m: np.ndarray | int = 0,
        a: np.ndarray | int = -1,
        b: np.ndarray | int = -1,
        c: np.ndarray | float = 0.0,
    ) -> None:
        """Append events of one kind; scalar payloads are broadcast."""
        n = len(ts)
        if n == 0:
            return
        self._parts.append(
            {
                "ts": np.asarray(ts, dtype=np.int64),
                "kind": np.full(n, kind, dtype=np.int16),
                "p": np.broadcast_to(np.asarray(p, dtype=np.int64), (n,)).copy(),
                "m": np.broadcast_to(np.asarray(m, dtype=np.int8), (n,)).copy(),
                "a": np.broadcast_to(np.asarray(a, dtype=np.int64), (n,)).copy(),
                "b": np.broadcast_to(np.asarray(b, dtype=np.int64), (n,)).copy(),
                "c": np.broadcast_to(np.asarray(c, dtype=np.float64), (n,)).copy(),
            }
        )

    def __len__(self) -> int:
        return sum(len(p["ts"]) for p in self._parts)

    def finish(self) -> dict[str, np.ndarray]:
        """Return the concatenated columns sorted chronologically (stable: ties keep insertion order)."""
        if not self._parts:
            return {k: np.empty(0) for k in ("ts", "kind", "p", "m", "a", "b", "c")}
        cols = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        order = np.argsort(cols["ts"], kind="stable")
        return {k: v[order] for k, v in cols.items()}


RenderFn = Callable[[str, str, int, int, int, int, float], dict[str, Any]]


def message_ids(brand_no: int, seed: int, start: int, n: int) -> list[str]:
    """Return ``n`` deterministic, unique UUID-formatted message ids for events ``start..start+n``.

    The low 64 bits are a bijection of (brand, event index), so ids never repeat within a market.
    """
    idx = np.arange(start, start + n, dtype=np.uint64)
    salt = np.uint64(zlib.crc32(f"goldkey-demo-{seed}".encode()))
    lo = splitmix64(((np.uint64(brand_no) << np.uint64(40)) | idx) ^ (salt << np.uint64(44)))
    hi = splitmix64(lo ^ np.uint64(0x5DEECE66D) ^ salt)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nib = np.concatenate([(hi[:, None] >> shifts) & np.uint64(15), (lo[:, None] >> shifts) & np.uint64(15)], axis=1)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nib.astype(np.intp)]
    chars[:, 12] = ord("4")  # version nibble (taken from the high half, uniqueness is kept)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 9: 4, 14: 4, 19: 4, 24: 12}[dst]
        out[:, dst : dst + width] = chars[:, src : src + width]
    return [b.decode() for b in out.view("S36").ravel()]


def mix64(x: int) -> int:
    """Return the splitmix64 finaliser of one Python int (same function as :func:`splitmix64`)."""
    m = 0xFFFFFFFFFFFFFFFF
    x &= m
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & m
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def write_events(
    out_dir: Path,
    brand: str,
    brand_no: int,
    seed: int,
    events: dict[str, np.ndarray],
    renderers: Sequence[Callable[..., dict[str, Any]]],
    progress: ProgressFn | None,
    progress_offset: int = 0,
) -> list[Path]:
    """Render sorted events with per-kind renderers and write JSONL files of ~EVENTS_PER_FILE lines.

    Each renderer is called as ``fn(ts_iso, message_id, p, m, a, b, c)`` and returns the event dict.
    Returns the written file paths in chronological order; calls ``progress`` with the running total
    of events written (plus ``progress_offset``) after every file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out_dir.glob("events-*.jsonl")):  # left over from an earlier, larger market
        stale.unlink()
    n = len(events["ts"])
    paths: list[Path] = []
    dumps = orjson.dumps
    for f_no, lo in enumerate(range(0, max(n, 1), EVENTS_PER_FILE)):
        hi = min(n, lo + EVENTS_PER_FILE)
        ts = iso_ts(events["ts"][lo:hi])
        mids = message_ids(brand_no, seed, lo, hi - lo)
        kinds = events["kind"][lo:hi].tolist()
        ps, ms = events["p"][lo:hi].tolist(), events["m"][lo:hi].tolist()
        as_, bs, cs = events["a"][lo:hi].tolist(), events["b"][lo:hi].tolist(), events["c"][lo:hi].tolist()
        lines = [dumps(renderers[kinds[i]](ts[i], mids[i], ps[i], ms[i], as_[i], bs[i], cs[i])) for i in range(hi - lo)]
        path = out_dir / f"events-{f_no + 1:04d}.jsonl"
        with open(path, "wb") as fh:
            if lines:
                fh.write(b"\n".join(lines))
                fh.write(b"\n")
        paths.append(path)
        if progress is not None:
            progress(progress_offset + hi)
    return paths


def write_csv(df: pl.DataFrame, path: Path) -> None:
    """Write an all-string table as UTF-8 CSV (nulls as empty fields)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(path)
