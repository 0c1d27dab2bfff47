"""Standardise Chinese province-level region names.

China has 34 province-level administrative divisions (GB/T 2260): 23 provinces
(including Taiwan), 5 autonomous regions, 4 municipalities and 2 special
administrative regions.  Source files spell them in many ways — with or without
the administrative suffix ("广东" / "广东省"), in traditional characters
("廣東"), in pinyin or English ("Guangdong", "guangdong province",
"Inner Mongolia"), with a "中国" prefix — and analytics needs one spelling.

:func:`standardise_region` maps any of those spellings to the full official
simplified-Chinese name ("广东省", "北京市", "内蒙古自治区", "香港特别行政区").
Two-letter abbreviations ("GD", "BJ") and one-character abbreviations ("粤",
"京") are deliberately *not* recognised: they are too ambiguous to be safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Province",
    "PROVINCES",
    "province_names",
    "standardise_region",
    "is_standard_region",
]


@dataclass(frozen=True)
class Province:
    """One province-level division.

    Attributes:
        name: the full official simplified-Chinese name, e.g. "广东省".
        short: the name without its administrative suffix, e.g. "广东".
        code: the two-digit GB/T 2260 code, e.g. "44".
        english: accepted English / pinyin names, canonical first.
        variants: further accepted spellings (traditional characters etc.).
    """

    name: str
    short: str
    code: str
    english: tuple[str, ...]
    variants: tuple[str, ...] = ()


PROVINCES: tuple[Province, ...] = (
    Province("北京市", "北京", "11", ("Beijing", "Peking")),
    Province("天津市", "天津", "12", ("Tianjin",)),
    Province("河北省", "河北", "13", ("Hebei",)),
    Province("山西省", "山西", "14", ("Shanxi",)),
    Province(
        "内蒙古自治区",
        "内蒙古",
        "15",
        ("Inner Mongolia", "Nei Mongol", "Neimenggu", "Nei Menggu"),
        ("內蒙古", "內蒙古自治區", "内蒙古自治區"),
    ),
    Province("辽宁省", "辽宁", "21", ("Liaoning",), ("遼寧", "遼寧省")),
    Province("吉林省", "吉林", "22", ("Jilin",)),
    Province("黑龙江省", "黑龙江", "23", ("Heilongjiang",), ("黑龍江", "黑龍江省")),
    Province("上海市", "上海", "31", ("Shanghai",)),
    Province("江苏省", "江苏", "32", ("Jiangsu",), ("江蘇", "江蘇省")),
    Province("浙江省", "浙江", "33", ("Zhejiang",)),
    Province("安徽省", "安徽", "34", ("Anhui",)),
    Province("福建省", "福建", "35", ("Fujian",)),
    Province("江西省", "江西", "36", ("Jiangxi",)),
    Province("山东省", "山东", "37", ("Shandong",), ("山東", "山東省")),
    Province("河南省", "河南", "41", ("Henan",)),
    Province("湖北省", "湖北", "42", ("Hubei",)),
    Province("湖南省", "湖南", "43", ("Hunan",)),
    Province("广东省", "广东", "44", ("Guangdong", "Canton"), ("廣東", "廣東省")),
    Province(
        "广西壮族自治区",
        "广西",
        "45",
        ("Guangxi", "Guangxi Zhuang"),
        ("廣西", "广西自治区", "廣西壯族自治區", "广西壮族"),
    ),
    Province("海南省", "海南", "46", ("Hainan",)),
    Province("重庆市", "重庆", "50", ("Chongqing", "Chungking"), ("重慶", "重慶市")),
    Province("四川省", "四川", "51", ("Sichuan", "Szechuan", "Szechwan")),
    Province("贵州省", "贵州", "52", ("Guizhou",), ("貴州", "貴州省")),
    Province("云南省", "云南", "53", ("Yunnan",), ("雲南", "雲南省")),
    Province("西藏自治区", "西藏", "54", ("Tibet", "Xizang"), ("西藏自治區",)),
    Province("陕西省", "陕西", "61", ("Shaanxi",), ("陝西", "陝西省")),
    Province("甘肃省", "甘肃", "62", ("Gansu",), ("甘肅", "甘肅省")),
    Province("青海省", "青海", "63", ("Qinghai",)),
    Province(
        "宁夏回族自治区",
        "宁夏",
        "64",
        ("Ningxia", "Ningxia Hui"),
        ("寧夏", "宁夏自治区", "寧夏回族自治區", "宁夏回族"),
    ),
    Province(
        "新疆维吾尔自治区",
        "新疆",
        "65",
        ("Xinjiang", "Xinjiang Uygur", "Xinjiang Uyghur", "Sinkiang"),
        ("新疆自治区", "新疆維吾爾自治區", "新疆维吾尔"),
    ),
    Province("台湾省", "台湾", "71", ("Taiwan",), ("台灣", "臺灣", "臺灣省", "台灣省", "台湾地区", "臺灣地區")),
    Province(
        "香港特别行政区",
        "香港",
        "81",
        ("Hong Kong", "Hongkong", "Hong Kong SAR", "Hong Kong Special Administrative Region"),
        ("香港特別行政區", "中国香港", "中國香港"),
    ),
    Province(
        "澳门特别行政区",
        "澳门",
        "82",
        (
            "Macau",
            "Macao",
            "Macau SAR",
            "Macao SAR",
            "Macao Special Administrative Region",
            "Macau Special Administrative Region",
        ),
        ("澳門", "澳門特別行政區", "中国澳门", "中國澳門"),
    ),
)

# Chinese administrative suffixes, longest first so "壮族自治区" wins over "自治区".
_ZH_SUFFIXES = (
    "维吾尔自治区",
    "維吾爾自治區",
    "壮族自治区",
    "壯族自治區",
    "回族自治区",
    "特别行政区",
    "特別行政區",
    "自治区",
    "自治區",
    "地区",
    "地區",
    "省",
    "市",
)
_ZH_PREFIXES = ("中华人民共和国", "中華人民共和國", "中国", "中國")

# English suffixes / noise words removed after lower-casing and dropping
# spaces, hyphens, dots and apostrophes.  Longest first.
_EN_SUFFIXES = (
    "specialadministrativeregion",
    "uygurautonomousregion",
    "uyghurautonomousregion",
    "zhuangautonomousregion",
    "huiautonomousregion",
    "autonomousregion",
    "municipality",
    "province",
    "region",
    "zizhiqu",
    "sheng",
    "city",
    "shi",
    "sar",
)
_EN_PREFIXES = ("peoplesrepublicofchina", "prchina", "china", "prc")

_NOISE = re.compile(r"[\s\-_.'’,()（）·]+")


def _en_key(value: str) -> str:
    """Lower-case, drop separators and strip English prefixes/suffixes."""
    key = _NOISE.sub("", value.lower())
    for prefix in _EN_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix) :]
            break
    changed = True
    while changed:
        changed = False
        for suffix in _EN_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                key = key[: -len(suffix)]
                changed = True
                break
    return key


def _zh_key(value: str) -> str:
    """Drop separators, a leading "中国" and one administrative suffix."""
    key = _NOISE.sub("", value)
    for prefix in _ZH_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix) :]
            break
    for suffix in _ZH_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for p in PROVINCES:
        for zh in (p.name, p.short, *p.variants):
            lookup[zh] = p.name
            lookup[_zh_key(zh)] = p.name
        for en in p.english:
            lookup[_en_key(en)] = p.name
    # Pinyin "Shanxi" is 山西; the official romanisation of 陕西 is "Shaanxi".
    # Both are listed above; make sure neither key was overwritten.
    assert lookup["shanxi"] == "山西省" and lookup["shaanxi"] == "陕西省"
    return lookup


_LOOKUP = _build_lookup()
_NAMES = frozenset(p.name for p in PROVINCES)


def province_names() -> tuple[str, ...]:
    """Return the 34 official full names, in GB/T 2260 code order."""
    return tuple(p.name for p in PROVINCES)


def is_standard_region(value: str) -> bool:
    """Return True when *value* is already one of the 34 official full names."""
    return value in _NAMES


@lru_cache(maxsize=4096)
def standardise_region(value: str | None) -> str | None:
    """Return the official full name of the province-level division *value* names.

    Accepts full and short Chinese names (simplified or traditional), a
    "中国" prefix, and English/pinyin names in any case with optional
    "Province"/"City"/"Autonomous Region"/"SAR" suffixes.

    Returns:
        The standard name (e.g. "广东省"), or None when *value* is None, empty
        or not recognised.  Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text in _NAMES:
        return text
    found = _LOOKUP.get(text)
    if found is not None:
        return found
    if text.isascii():
        return _LOOKUP.get(_en_key(text))
    return _LOOKUP.get(_zh_key(text))
