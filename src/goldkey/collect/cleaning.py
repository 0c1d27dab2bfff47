"""Validate, normalise and de-duplicate imported records — column-wise.

:func:`clean` takes the all-text frame produced by
:func:`goldkey.collect.reading.read_table` + ``apply_mapping`` and returns the
accepted rows with typed columns, one :class:`Rejection` per bad row, and
counts.  It never touches storage.

Rules, by :class:`~goldkey.collect.import_schemas.FieldType`:

* all values are stripped of surrounding whitespace (including full-width
  spaces); an empty cell is missing.  A field's ``default`` fills missing cells.
* PHONE → E.164 ("+8613800138000") via ``phonenumbers`` with
  ``CleaningOptions.default_region`` for numbers without a country code.
  Mainland mobiles ("138 0013 8000", "+86-138-0013-8000", "8613800138000",
  "(0)13800138000") and fixed lines written with a trunk 0 or +86
  ("010-8888 8888") are settled by vectorised fast paths that use
  phonenumbers' own CN metadata (same answers, no per-row calls); everything
  else goes through phonenumbers once per distinct value.  Numbers with
  letters or an extension are invalid.  An invalid phone rejects the row.
* EMAIL → stripped, lower-cased, must look like local@domain.tld without
  spaces; otherwise the row is rejected.
* DATE / DATETIME: ISO 8601, "2025/3/1", "2025-03-01 12:30", "2025.3.1",
  "2025年3月1日 12时30分", "20250301", "20250301123000", "01/03/2025"
  (month/day/year unless ``day_first``; strictly, no guessing), and Excel
  serial numbers with five integer digits (1927-05-18 .. 2173-10-13; shorter
  numbers are rejected so a bare year is never read as a serial).  DATE
  values must not carry a time other than 00:00:00.  DATETIME values without
  a zone are wall-clock times in ``CleaningOptions.zone`` (Asia/Shanghai for
  default_region "CN", UTC otherwise, or ``time_zone`` when given); values
  with "Z", "UTC" or "+08:00" keep their offset.  Output is
  ``pl.Datetime("us", "UTC")``.
* AMOUNT: optional sign, optional "¥"/"￥"/"RMB"/"CNY" prefix or "元"/"RMB"/
  "CNY" suffix, spaces ignored, "," thousands separators when grouped by
  three ("1,299.00", "1,299"), "," as the decimal mark only when there is no
  "." and exactly two digits follow it ("1299,50", "1 299,50").  Output is
  Float64 rounded to 2 places.  Negative amounts are rejected, except on
  order lines whose status is a refund ("refund", "refunded", "退款",
  "已退款", "退货").
* INT: digits with an optional sign (a ".0" tail, as spreadsheets write
  integers, is accepted); anything else — "1,000", "1.5", "ten" — is
  rejected, as are values outside the field's min/max.
* ENUM: case-insensitive match of a choice or synonym ("男", "M" → "male");
  otherwise rejected, naming the allowed values.
* REGION: standard province-level name when recognised (see
  :mod:`goldkey.collect.regions`); otherwise kept as given and counted in
  ``CleanResult.regions_unrecognised`` — not a rejection.
* IDENTIFIER / STRING: kept as stripped text.

Row rules: a required field that is empty → "missing required field 'x'";
when the schema has identifier fields and none has a value → rejection on
pseudo-field "identifier".  Orders: quantity defaults to 1, must not be 0
and may be negative only on refund lines;
line_amount = quantity × unit_price when empty; at least one of
line_amount / unit_price is required; currency defaults to CNY ("RMB",
"人民币", "¥" → "CNY") and must be a 3-letter code.  Exactly one rejection is
reported per bad row: the first problem in schema field order.

De-duplication (after validation, on cleaned values): customers by
``__dedupe_key`` = "<field>:<value>" of the first identifier present in the
order crm_id > user_id > phone > email > wechat_unionid > wechat_openid >
device_id; products by sku; feedback by feedback_id.  Rows sharing a key are
merged into one: for every column the latest non-null value wins and earlier
values fill the gaps (``extra`` entries merged the same way); the merged row
keeps the ``__record`` of the key's first row.  Orders: exact duplicate lines
(all fields equal after cleaning) are dropped; ``line_no`` numbers the
remaining lines of each order 1, 2, ... in file order, so (order_id, sku,
line_no) — and (order_id, line_no) — identify a line.  Each row removed
counts in ``duplicates_merged``.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import phonenumbers
import polars as pl

from goldkey.collect.import_schemas import (
    DEDUPE_KEY,
    EXTRA,
    LINE_NO,
    RECORD,
    FieldSpec,
    FieldType,
    ImportSchema,
)
from goldkey.collect.regions import province_names, standardise_region

__all__ = [
    "CleaningOptions",
    "Rejection",
    "CleanResult",
    "clean",
    "normalise_phone",
    "parse_datetime_text",
    "REFUND_STATUSES",
]

#: Order statuses (compared lower-cased) that allow negative amounts/quantities.
REFUND_STATUSES = ("refund", "refunded", "退款", "已退款", "退货", "已退货")

_REGION_ZONES = {
    "CN": "Asia/Shanghai",
    "HK": "Asia/Hong_Kong",
    "MO": "Asia/Macau",
    "TW": "Asia/Taipei",
    "SG": "Asia/Singapore",
    "JP": "Asia/Tokyo",
    "KR": "Asia/Seoul",
}


@dataclass(frozen=True)
class CleaningOptions:
    """How ambiguous input is read.

    Attributes:
        default_region: ISO 3166 region for phone numbers written without a
            country code; also picks the default time zone.
        day_first: read "01/03/2025" as 1 March (day/month/year) instead of
            3 January (month/day/year).
        time_zone: IANA zone for date-times without an offset; None derives
            it from *default_region* (CN → Asia/Shanghai, i.e. UTC+08:00;
            unknown regions → UTC).
        blocked: identifier values that never link anyone (the workspace's
            identity rules): per identifier field its blocked values in normal
            form, and under ``"*"`` the lower-cased values blocked for every
            type. Two customer rows sharing only such a value are two people,
            so the value is no de-duplication key.
    """

    default_region: str = "CN"
    day_first: bool = False
    time_zone: str | None = None
    blocked: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def zone(self) -> str:
        """Return the IANA zone used for date-times without an offset."""
        if self.time_zone:
            return self.time_zone
        return _REGION_ZONES.get(self.default_region.upper(), "UTC")


@dataclass(frozen=True)
class Rejection:
    """One rejected row.

    Attributes:
        record: the row's ``__record`` (1-based data row number in the file).
        field: the field with the problem, or "identifier" when the row has
            no identifier at all.
        value: the offending value as given, or None when it is missing.
        reason: what is wrong, naming the field and value.
        raw: the row as given (mapped field names, plus ``extra`` entries).
    """

    record: int
    field: str
    value: str | None
    reason: str
    raw: dict[str, str | None]

    @property
    def message(self) -> str:
        """Return "record N: <reason>" for people."""
        return f"record {self.record}: {self.reason}"

    def __str__(self) -> str:
        return self.message


@dataclass
class CleanResult:
    """The outcome of :func:`clean`.

    Attributes:
        accepted: the valid, de-duplicated rows: ``__record``, every schema
            field (typed: Utf8 / Date / Datetime(us, UTC) / Float64 / Int64),
            then ``__dedupe_key`` and ``extra`` for customers, ``line_no``
            for orders.
        rejected: one Rejection per rejected row, in input order.
        duplicates_merged: rows removed by de-duplication.
        rows_read: rows in the input frame.
        regions_unrecognised: accepted rows whose region is not a recognised
            province-level name (kept as given).
        unrecognised_region_values: those regions' distinct values (sorted,
            at most 100), to show to the user.
    """

    accepted: pl.DataFrame
    rejected: list[Rejection]
    duplicates_merged: int
    rows_read: int
    regions_unrecognised: int = 0
    unrecognised_region_values: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# error codes (internal)
# ---------------------------------------------------------------------------

_E_MISSING = 1
_E_INVALID = 2
_E_NEGATIVE = 3
_E_RANGE = 4
_E_ZERO = 5
_E_NO_IDENTIFIER = 6
_E_NO_AMOUNT = 7

_CODE = pl.UInt8

DATETIME_YEARS = (1900, 2200)  # a date-time outside these years is invalid (a placeholder, not a time)


def _const(value: Any, n: int, dtype: pl.DataType, name: str = "") -> pl.Series:
    """Return a Series of *n* copies of *value* (a fresh, writable buffer)."""
    return pl.repeat(value, n, dtype=dtype, eager=True).alias(name)


# ---------------------------------------------------------------------------
# phones
# ---------------------------------------------------------------------------

_PHONE_SEPARATORS = r"[\s\-‐‑‒–—―－.()（）/]"
_LETTERS = re.compile(r"[A-Za-z]")


def _ascii_pattern(desc: Any) -> str | None:
    """Anchored national-number pattern of a phonenumbers descriptor, ASCII digits only."""
    if desc is None or not desc.national_number_pattern:
        return None
    return "^(?:" + desc.national_number_pattern.replace(r"\d", "[0-9]") + ")$"


_CN_META = phonenumbers.PhoneMetadata.metadata_for_region("CN")
# The fast paths use phonenumbers' own CN metadata, so they accept exactly what
# ``phonenumbers.is_valid_number`` accepts for these shapes and format them
# identically (tests/collect/test_cleaning.py checks this).
_CN_MOBILE = _ascii_pattern(_CN_META.mobile) if _CN_META else None
_CN_FIXED = _ascii_pattern(_CN_META.fixed_line) if _CN_META else None
_CN_GENERAL = _ascii_pattern(_CN_META.general_desc) if _CN_META else None
_CN_FIXED_LENGTHS = tuple(_CN_META.fixed_line.possible_length or ()) if _CN_META else ()
# Country code / trunk prefixes removed before the pattern checks.  A CN
# mobile never starts with 0 or 86, so stripping them greedily is exact.
_CN_MOBILE_PREFIXES = ["", "0", "+86", "+860", "0086", "00860", "86", "860"]
_INTL_MOBILE_PREFIXES = ["+86", "+860"]
_PY_CN_MOBILE = re.compile(_CN_MOBILE) if _CN_MOBILE else None
_PY_SEPARATORS = re.compile(_PHONE_SEPARATORS)
_CN_FIXED_PREFIX = r"^(?:(?:\+86|0086)0?|0)"


@lru_cache(maxsize=1 << 17)
def normalise_phone(value: str, region: str = "CN") -> str | None:
    """Return *value* as an E.164 phone number, or None when it is not valid.

    The same rules as :func:`clean` (CN mobiles are settled without calling
    phonenumbers, with the same answer); otherwise ``phonenumbers`` with
    *region* for numbers without a country code.  Values containing letters
    (vanity numbers, "ext.") are invalid.  Cached per (value, region).
    """
    text = value.strip()
    if not text or _LETTERS.search(text):
        return None
    if _PY_CN_MOBILE is not None:  # the vectorised fast path, per value
        digits = _PY_SEPARATORS.sub("", text)
        prefixes = _CN_MOBILE_PREFIXES if region.upper() == "CN" else _INTL_MOBILE_PREFIXES
        if digits[:-11] in prefixes and _PY_CN_MOBILE.fullmatch(digits[-11:]):
            return "+86" + digits[-11:]
    try:
        number = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException:
        return None
    if number.extension or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _phone_fast(text: pl.Expr, region: str) -> pl.Expr:
    """E.164 for CN mobile numbers, settled without calling phonenumbers.

    The last 11 characters (after removing separators) must match the CN
    mobile pattern and whatever precedes them must be a country-code /
    trunk prefix ("+86", "0086", "86", "0", ...).  Slicing is much cheaper
    than a regex replace on every row.
    """
    if _CN_MOBILE is None:
        return pl.lit(None, pl.Utf8)
    digits = text.str.replace_all(_PHONE_SEPARATORS, "")
    national = digits.str.slice(-11, 11)
    prefixes = _CN_MOBILE_PREFIXES if region.upper() == "CN" else _INTL_MOBILE_PREFIXES
    ok = national.str.contains(_CN_MOBILE) & digits.str.head(-11).is_in(prefixes)
    return pl.when(ok).then(pl.lit("+86") + national)


def _phone_leftovers(sub: pl.Series, region: str) -> pl.Series:
    """Normalise phones the mobile fast path did not settle.

    CN fixed-line numbers written with a trunk 0 or +86 are settled
    vectorised (same metadata checks as above); the rest go through
    phonenumbers once per distinct value.
    """
    out = _const(None, len(sub), pl.Utf8, sub.name)
    todo = pl.int_range(0, len(sub), eager=True)
    if _CN_FIXED and _CN_GENERAL and region.upper() == "CN":
        frame = pl.DataFrame({"d": sub.str.replace_all(_PHONE_SEPARATORS, "")})
        d = pl.col("d")
        national = d.str.replace(_CN_FIXED_PREFIX, "")
        ok = (
            d.str.contains(_CN_FIXED_PREFIX)
            & national.str.contains(_CN_FIXED)
            & national.str.contains(_CN_GENERAL)
            & national.str.len_bytes().is_in(list(_CN_FIXED_LENGTHS))
        )
        fixed = frame.lazy().select(pl.when(ok).then(pl.lit("+86") + national).alias("v")).collect()["v"]
        settled = fixed.is_not_null()
        if settled.any():
            out.scatter(todo.filter(settled), fixed.filter(settled))
            todo = todo.filter(~settled)
    if todo.len():
        rest = sub.gather(todo)
        mapping = {u: normalise_phone(u, region) for u in rest.unique().to_list()}
        good = {k: p for k, p in mapping.items() if p is not None}
        if good:
            mapped = rest.replace_strict(list(good), list(good.values()), default=None, return_dtype=pl.Utf8)
            ok_py = mapped.is_not_null()
            out.scatter(todo.filter(ok_py), mapped.filter(ok_py))
    return out


# ---------------------------------------------------------------------------
# e-mail
# ---------------------------------------------------------------------------

_EMAIL_ATOM = r"[^\s@,;:<>()\[\]\\\".]"  # a character of an address other than a dot
# local part: dot-separated atoms (no leading, trailing or doubled dot); domain: labels that neither
# start nor end with a hyphen (nor start with "_"), then a top-level domain of letters or punycode
_EMAIL_RE = (
    rf"^{_EMAIL_ATOM}+(?:\.{_EMAIL_ATOM}+)*@"
    rf"(?:[^\s@,;:<>()\[\]\\\"._-](?:{_EMAIL_ATOM}*[^\s@,;:<>()\[\]\\\".-])?\.)+"
    r"(?:\p{L}{2,}|xn--[a-z0-9-]+)$"
)

# ---------------------------------------------------------------------------
# dates and times
# ---------------------------------------------------------------------------

_D = "[0-9]"
_TIME = (
    rf"(?P<H>{_D}{{1,2}})\s*(?:[:：]|[时時点點])\s*(?P<M>{_D}{{1,2}})"
    rf"(?:\s*(?:[:：]|分)\s*(?P<S>{_D}{{1,2}})(?:[.,](?P<f>{_D}{{1,9}}))?\s*秒?|\s*分)?"
)
_TZ = rf"\s*(?P<tz>Z|UTC|GMT|[+-]{_D}{{2}}(?::?{_D}{{2}})?)?"
_TIME_SEP = r"(?:\s*[日号號]\s*|\s*T\s*|\s+)"
_YMD_RE = (
    rf"^(?P<y>{_D}{{4}})\s*(?:[-/.]|年)\s*(?P<m>{_D}{{1,2}})\s*(?:[-/.]|月)\s*(?P<d>{_D}{{1,2}})"
    rf"(?:{_TIME_SEP}{_TIME})?(?:\s*[日号號])?{_TZ}$"
)
_DMY_RE = (
    rf"^(?P<a>{_D}{{1,2}})[-/.](?P<b>{_D}{{1,2}})[-/.](?P<y>{_D}{{4}})"
    rf"(?:{_TIME_SEP}{_TIME})?{_TZ}$"
)
_COMPACT_RE = (
    rf"^(?P<y>{_D}{{4}})(?P<m>{_D}{{2}})(?P<d>{_D}{{2}})"
    rf"(?:[T\s]?(?P<H>{_D}{{2}})(?P<M>{_D}{{2}})(?P<S>{_D}{{2}})?)?{_TZ}$"
)
_SERIAL_RE = rf"^{_D}{{5}}(?:\.{_D}+)?$"
_EXCEL_EPOCH = _dt.datetime(1899, 12, 30)

_PY_FORMATS = (
    "%d %b %Y",
    "%d %B %Y",
    "%b %d %Y",
    "%B %d %Y",
    "%b %d, %Y",
    "%B %d, %Y",
    "%d-%b-%Y",
    "%d %b %Y %H:%M",
    "%d %b %Y %H:%M:%S",
    "%b %d, %Y %H:%M",
    "%b %d, %Y %H:%M:%S",
    "%B %d, %Y %H:%M",
    "%B %d, %Y %H:%M:%S",
)


_MONTH_NAME = re.compile(r"(?i)\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?(?![a-z])")


def parse_datetime_text(value: str, day_first: bool = False) -> tuple[_dt.datetime, int | None] | None:
    """Parse one date or date-time string (the general, per-value path).

    Accepts everything :func:`clean` accepts (see the module docstring) plus
    ``datetime.fromisoformat`` forms and English month names ("1 Mar 2025",
    "March 1, 2025 12:30").

    Returns:
        (naive wall-clock datetime, UTC offset in minutes or None when the
        text has no zone), or None when *value* is not a date.
    """
    text = value.strip()
    if not text:
        return None
    for pattern in (_YMD_RE, _COMPACT_RE, _DMY_RE):
        m = re.match(pattern, text)
        if m is None:
            continue
        g = m.groupdict()
        if "a" in g:
            a, b = int(g["a"]), int(g["b"])
            day, month = (a, b) if day_first else (b, a)
        else:
            day, month = int(g["d"]), int(g["m"])
        frac = (g.get("f") or "")[:6].ljust(6, "0")
        try:
            naive = _dt.datetime(
                int(g["y"]),
                month,
                day,
                int(g.get("H") or 0),
                int(g.get("M") or 0),
                int(g.get("S") or 0),
                int(frac),
            )
        except ValueError:
            return None
        return naive, _offset_minutes(g.get("tz"))
    if re.match(_SERIAL_RE, text):
        serial = float(text)
        return _EXCEL_EPOCH + _dt.timedelta(microseconds=round(serial * 86_400_000_000)), None
    if re.match(r"^[0-9]{4}", text):
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return parsed, None
        offset = parsed.utcoffset()
        minutes = int(offset.total_seconds() // 60) if offset is not None else 0
        return parsed.replace(tzinfo=None), minutes
    if not _MONTH_NAME.search(text):
        return None
    squeezed = re.sub(r"\s*,\s*", ", ", re.sub(r"\s+", " ", text))
    for fmt in _PY_FORMATS:
        try:
            return _dt.datetime.strptime(squeezed, fmt), None
        except ValueError:
            continue
    return None


def _offset_minutes(tz: str | None) -> int | None:
    if not tz:
        return None
    if tz in ("Z", "UTC", "GMT"):
        return 0
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) >= 4 else 0
    return sign * (hours * 60 + minutes)


# Fast-path formats, each a subset of what the regex stages accept (so the
# result never depends on which path settled a value).  Chosen per column
# from a sample; chrono's "%Y" also takes 1-3 digit years, hence the year
# check, and "%Y%m%d" takes 7 digits, hence its length check.
_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日", "%Y%m%d")
_DMY_FORMATS = ("{a}/{b}/%Y", "{a}-{b}-%Y", "{a}.{b}.%Y")
# Polars parses " %H:%M:%S" much faster than "%.f" variants; on ties the
# earlier (faster) format wins.
_TIME_FORMATS = (" %H:%M:%S", " %H:%M:%S%.f", " %H:%M", "T%H:%M:%S", "T%H:%M:%S%.f", "T%H:%M")


def _candidate_formats(kind: FieldType, day_first: bool) -> list[str]:
    """Fast-path strptime formats for a DATE or DATETIME field."""
    a, b = ("%d", "%m") if day_first else ("%m", "%d")
    dmy = [f.format(a=a, b=b) for f in _DMY_FORMATS]
    dates = [*_DATE_FORMATS, *dmy]
    if kind is FieldType.DATE:
        return dates
    with_time = [d + t for d in ("%Y-%m-%d", "%Y/%m/%d") for t in _TIME_FORMATS]
    with_time += [d + t for d in ("%Y.%m.%d", "%Y年%m月%d日", *dmy) for t in (" %H:%M:%S", " %H:%M")]
    return with_time + dates


def _strptime_check(parsed: pl.Expr, text: pl.Expr, fmt: str) -> pl.Expr:
    """Null out lenient chrono parses the regex stages would not accept."""
    ok = parsed.dt.year() >= 1000
    if fmt == "%Y%m%d":
        ok = ok & (text.str.len_bytes() == 8)
    return pl.when(ok).then(parsed)


def _strptime_series(text: pl.Series, fmt: str, dtype: pl.DataType) -> pl.Series:
    """Parse *text* with one fast format (null where it does not fit)."""
    frame = pl.DataFrame({"t": text}).with_columns(pl.col("t").str.strptime(dtype, fmt, strict=False).alias("v"))
    return frame.select(_strptime_check(pl.col("v"), pl.col("t"), fmt)).to_series()


def _best_format(sample: pl.Series, kind: FieldType, day_first: bool) -> str | None:
    """Return the fast format parsing most of *sample* (ties: the earlier,
    faster one), or None when none parses at least 0.5% of it."""
    if sample.len() == 0:
        return None
    # Only formats whose literal characters occur in the sample are tried.
    seen = set("".join(sample.head(500).to_list()))
    candidates = [(f, expr) for f, literals, expr in _candidate_exprs(kind, day_first) if literals <= seen]
    if not candidates:
        return None
    counts = pl.DataFrame({"t": sample}).select([expr for _, expr in candidates]).row(0)
    best = max(range(len(candidates)), key=lambda i: (counts[i], -i))
    return candidates[best][0] if counts[best] >= max(1, sample.len() // 200) else None


@lru_cache(maxsize=8)
def _candidate_exprs(kind: FieldType, day_first: bool) -> tuple[tuple[str, frozenset[str], pl.Expr], ...]:
    """(format, its literal characters, expression counting its parses of "t")."""
    dtype = pl.Date if kind is FieldType.DATE else pl.Datetime("us")
    t = pl.col("t")
    out = []
    for i, f in enumerate(_candidate_formats(kind, day_first)):
        literals = frozenset(re.sub(r"%\.?[a-zA-Z]", "", f))
        parsed = t.str.strptime(dtype, f, strict=False)
        out.append((f, literals, _strptime_check(parsed, t, f).is_not_null().sum().alias(str(i))))
    return tuple(out)


def _components_to_datetime(g: pl.DataFrame, day_col: str, month_col: str) -> pl.Series:
    """Build naive datetimes from extracted text components (null when invalid)."""
    frac = pl.col("f").fill_null("").str.slice(0, 6).str.pad_end(6, "0")
    text = pl.concat_str(
        [
            pl.col("y"),
            pl.lit("-"),
            pl.col(month_col).str.zfill(2),
            pl.lit("-"),
            pl.col(day_col).str.zfill(2),
            pl.lit(" "),
            pl.col("H").fill_null("0").str.zfill(2),
            pl.lit(":"),
            pl.col("M").fill_null("0").str.zfill(2),
            pl.lit(":"),
            pl.col("S").fill_null("0").str.zfill(2),
        ]
    )
    out = g.select(
        (
            text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)
            + pl.duration(microseconds=frac.cast(pl.Int64))
        ).alias("dt")
    )
    return out["dt"]


def _tz_minutes_expr(col: str) -> pl.Expr:
    tz = pl.col(col)
    digits = tz.str.replace_all(r"[+\-:]", "")
    hours = digits.str.slice(0, 2).cast(pl.Int32, strict=False)
    minutes = digits.str.slice(2, 2).cast(pl.Int32, strict=False).fill_null(0)
    sign = pl.when(tz.str.starts_with("-")).then(-1).otherwise(1)
    return (
        pl.when(tz.is_null())
        .then(pl.lit(None, pl.Int32))
        .when(tz.is_in(["Z", "UTC", "GMT"]))
        .then(pl.lit(0, pl.Int32))
        .otherwise((sign * (hours * 60 + minutes)).cast(pl.Int32))
    )


def _datetime_leftovers(text: pl.Series, kind: FieldType, day_first: bool) -> tuple[pl.Series, pl.Series]:
    """Parse date/date-time texts the fast path did not settle.

    Vectorised stages first: the fast strptime formats that fit what is
    left, then regexes (Y-M-D with any separator incl. 年月日 and
    an optional time and zone, compact digits, D/M/Y or M/D/Y, Excel
    serials); what is left is parsed in Python once per distinct value.

    Returns:
        (naive datetimes, UTC offset minutes or null), aligned with *text*;
        the datetime is null where the text is not a date.
    """
    n = len(text)
    result = _const(None, n, pl.Datetime("us"), "dt")
    offsets = _const(None, n, pl.Int32, "off")
    todo = text.is_not_null().arg_true()
    # Cheap strptime formats first, picked on a sample of what is left.
    dtype = pl.Date if kind is FieldType.DATE else pl.Datetime("us")
    for _ in range(4):
        if todo.len() == 0:
            break
        sub = text.gather(todo)
        fmt = _best_format(_sample(sub), kind, day_first)
        if fmt is None:
            break
        parsed = _strptime_series(sub, fmt, dtype).cast(pl.Datetime("us"))
        ok = parsed.is_not_null()
        if not ok.any():
            break
        result.scatter(todo.filter(ok), parsed.filter(ok))
        todo = todo.filter(~ok)
    stages: list[tuple[str, str, str]] = [
        (_YMD_RE, "d", "m"),
        (_COMPACT_RE, "d", "m"),
        (_DMY_RE, "a" if day_first else "b", "b" if day_first else "a"),
    ]
    for pattern, day_col, month_col in stages:
        if todo.len() == 0:
            break
        sub = text.gather(todo)
        groups = sub.str.extract_groups(pattern).struct.unnest()
        if "f" not in groups.columns:
            groups = groups.with_columns(pl.lit(None, pl.Utf8).alias("f"))
        parsed = _components_to_datetime(groups, day_col, month_col)
        off = groups.select(_tz_minutes_expr("tz").alias("off"))["off"]
        ok = parsed.is_not_null()
        if ok.any():
            idx = todo.filter(ok)
            result.scatter(idx, parsed.filter(ok))
            offsets.scatter(idx, off.filter(ok))
            todo = todo.filter(~ok)
    if todo.len():
        sub = text.gather(todo)
        is_serial = sub.str.contains(_SERIAL_RE)
        if is_serial.any():
            serial = sub.filter(is_serial).cast(pl.Float64)
            values = pl.select(
                pl.lit(_EXCEL_EPOCH, pl.Datetime("us"))
                + pl.duration(microseconds=(pl.lit(serial) * 86_400_000_000).round(0).cast(pl.Int64))
            ).to_series()
            result.scatter(todo.filter(is_serial), values)
            todo = todo.filter(~is_serial)
    if todo.len():
        sub = text.gather(todo)
        parsed_map = {u: parse_datetime_text(u, day_first) for u in sub.unique().to_list()}
        good = {k: v for k, v in parsed_map.items() if v is not None}
        if good:
            keys = list(good)
            dts = pl.Series([good[k][0] for k in keys], dtype=pl.Datetime("us"))
            offs = pl.Series([good[k][1] for k in keys], dtype=pl.Int32)
            mapped_dt = sub.replace_strict(keys, dts, default=None, return_dtype=pl.Datetime("us"))
            mapped_off = sub.replace_strict(keys, offs, default=None, return_dtype=pl.Int32)
            ok = mapped_dt.is_not_null()
            result.scatter(todo.filter(ok), mapped_dt.filter(ok))
            offsets.scatter(todo.filter(ok), mapped_off.filter(ok))
    return result, offsets


# ---------------------------------------------------------------------------
# amounts and integers
# ---------------------------------------------------------------------------

_AMOUNT_PLAIN = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$"
_AMOUNT_THOUSANDS = r"^[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?$"
_AMOUNT_DECIMAL_COMMA = r"^[+-]?[0-9]+,[0-9]{2}$"
_CURRENCY_PREFIX = r"^([+-]?)(?:¥|￥|[Rr][Mm][Bb]|[Cc][Nn][Yy])"
_CURRENCY_SUFFIX = r"(?:元|[Rr][Mm][Bb]|[Cc][Nn][Yy])$"


def _amount_fast(text: pl.Expr) -> pl.Expr:
    """Plain decimal numbers ("1299", "-5", "1299.50")."""
    return pl.when(text.str.contains(_AMOUNT_PLAIN)).then(text.cast(pl.Float64, strict=False)).round(2)


def _amount_leftovers(sub: pl.Series) -> pl.Series:
    """Amounts with currency marks, spaces or separators (see module doc)."""
    t = sub.str.replace_all(r"[\s\u00a0\u3000]", "")
    t = t.str.replace(_CURRENCY_PREFIX, "${1}").str.replace(_CURRENCY_SUFFIX, "")
    frame = pl.DataFrame({"t": t})
    out = frame.select(
        pl.when(pl.col("t").str.contains(_AMOUNT_PLAIN))
        .then(pl.col("t"))
        .when(pl.col("t").str.contains(_AMOUNT_THOUSANDS))
        .then(pl.col("t").str.replace_all(",", ""))
        .when(pl.col("t").str.contains(_AMOUNT_DECIMAL_COMMA))
        .then(pl.col("t").str.replace(",", "."))
        .cast(pl.Float64, strict=False)
        .round(2)
        .alias("v")
    )
    return out["v"]


def _int_fast(text: pl.Expr) -> pl.Expr:
    return pl.when(text.str.contains(r"^-?[0-9]+$")).then(text.cast(pl.Int64, strict=False))


def _int_leftovers(sub: pl.Series) -> pl.Series:
    """Integers with a "+" sign or a ".0" tail; anything else stays null."""
    frame = pl.DataFrame({"t": sub})
    t = pl.col("t")
    return frame.select(
        pl.when(t.str.contains(r"^[+-]?[0-9]+(?:\.0*)?$"))
        .then(t.str.replace(r"\.0*$", "").str.replace(r"^\+", ""))
        .cast(pl.Int64, strict=False)
        .alias("v")
    )["v"]


# ---------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------


def _enum_lookup(spec: FieldSpec) -> dict[str, str]:
    lookup = {c.lower(): c for c in spec.choices}
    for spelling, canonical in spec.synonyms:
        lookup[spelling.lower()] = canonical
    return lookup


_CURRENCY_SYNONYMS = {"RMB": "CNY", "人民币": "CNY", "人民幣": "CNY", "¥": "CNY", "￥": "CNY", "元": "CNY"}
_SAMPLE = 2000


def _t(i: int) -> str:
    """Column of field i's stripped text (null when empty)."""
    return f"__t{i}"


def _p(i: int) -> str:
    """Column of field i's text as parsed (default applied)."""
    return f"__p{i}"


def _v(i: int) -> str:
    """Column of field i's parsed value."""
    return f"__v{i}"


def _d(i: int) -> str:
    """Column of a derived text of field i (phone digits, lower-cased enum)."""
    return f"__d{i}"


def _parse_col_name(spec: FieldSpec, i: int) -> str:
    """Name of the column holding field i's text as parsed."""
    return _p(i) if spec.default is not None else _t(i)


def _o(i: int) -> str:
    """Column of DATETIME field i's UTC offset in minutes (null: local time)."""
    return f"__o{i}"


def _sample(s: pl.Series) -> pl.Series:
    nn = s.drop_nulls()
    if nn.len() <= _SAMPLE:
        return nn
    return nn.gather_every(nn.len() // _SAMPLE)[:_SAMPLE]


def clean(
    df: pl.DataFrame,
    schema: ImportSchema,
    options: CleaningOptions = CleaningOptions(),
) -> CleanResult:
    """Validate, normalise and de-duplicate *df* according to *schema*.

    Args:
        df: text columns named after schema fields (from ``apply_mapping``);
            fields absent from *df* count as empty.  ``__record`` is used for
            reporting when present (rows are numbered from 1 otherwise);
            ``extra`` (customers) is passed through.  Other columns are
            ignored.
        schema: the record kind.
        options: region, day order and time zone for ambiguous input.

    Returns:
        A :class:`CleanResult`; see the module docstring for every rule.

    Raises:
        Nothing for bad data: bad rows become rejections.  Programming errors
        (e.g. a ``__record`` column that is not integer-like) raise polars
        exceptions.
    """
    rows_read = df.height
    if RECORD not in df.columns:
        df = df.with_row_index(RECORD, offset=1)
    df = df.with_columns(pl.col(RECORD).cast(pl.Int64))
    fields = schema.fields
    names = schema.field_names
    is_orders = schema.kind == "orders"

    # Polars does not reliably share common sub-expressions, so every
    # intermediate used twice is materialised by its own (parallel) step.

    # -- phase A: stripped text, missing cells null; defaults applied -----
    text_exprs: list[pl.Expr] = [
        pl.col(RECORD),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("__pos"),
    ]
    placeholders = sorted(options.blocked.get("*", ()))
    for i, spec in enumerate(fields):
        if spec.name in df.columns:
            s = pl.col(spec.name).cast(pl.Utf8).str.strip_chars().replace("", None)
            if placeholders and spec.type in (FieldType.PHONE, FieldType.EMAIL):
                # a placeholder the identity rules block ("unknown", "n/a", "-", "0") is no phone or
                # e-mail at all, as on the tracking path: an empty cell, not a reason to lose the row
                s = pl.when(s.str.to_lowercase().is_in(placeholders)).then(None).otherwise(s)
        else:
            s = pl.lit(None, pl.Utf8)
        text_exprs.append(s.alias(_t(i)))
    work = df.select(text_exprs)
    defaults = [
        pl.col(_t(i)).fill_null(pl.lit(spec.default)).alias(_p(i))
        for i, spec in enumerate(fields)
        if spec.default is not None
    ]
    if defaults:
        work = work.with_columns(defaults)
    derived: list[pl.Expr] = []
    for i, spec in enumerate(fields):
        if spec.type is FieldType.PHONE:
            derived.append(pl.col(_t(i)).str.replace_all(_PHONE_SEPARATORS, "").alias(_d(i)))
        if spec.type is FieldType.ENUM or (is_orders and spec.name == "currency"):
            derived.append(pl.col(_parse_col_name(spec, i)).str.to_lowercase().alias(_d(i)))
    if derived:
        work = work.with_columns(derived)

    def parse_col(i: int) -> str:
        return _parse_col_name(fields[i], i)

    # -- phase B: vectorised fast paths -------------------------------------
    value_exprs: list[pl.Expr] = []
    checks_b: list[pl.Expr] = []  # post-checks on materialised fast values
    for i, spec in enumerate(fields):
        t = pl.col(parse_col(i))
        ft = spec.type
        if ft is FieldType.PHONE:
            v = _phone_fast(pl.col(_d(i)), options.default_region)
        elif ft is FieldType.EMAIL:
            v = pl.when(t.str.contains(_EMAIL_RE)).then(t.str.to_lowercase())
        elif ft in (FieldType.DATE, FieldType.DATETIME):
            fmt = _best_format(_sample(work[parse_col(i)]), ft, options.day_first)
            dtype = pl.Date if ft is FieldType.DATE else pl.Datetime("us")
            if fmt is not None:
                v = t.str.strptime(dtype, fmt, strict=False)
                checks_b.append(_strptime_check(pl.col(_v(i)), t, fmt).alias(_v(i)))
            else:
                v = pl.lit(None, dtype)
        elif ft is FieldType.AMOUNT:
            v = _amount_fast(t)
        elif ft is FieldType.INT:
            v = _int_fast(t)
        elif ft is FieldType.ENUM:
            lookup = _enum_lookup(spec)
            v = pl.col(_d(i)).replace_strict(list(lookup), list(lookup.values()), default=None, return_dtype=pl.Utf8)
        elif ft is FieldType.REGION:
            uniques = work[parse_col(i)].drop_nulls().unique().to_list()
            mapping = {u: std for u in uniques if (std := standardise_region(u)) is not None and std != u}
            v = t.replace(list(mapping), list(mapping.values())) if mapping else t
        elif is_orders and spec.name == "currency":
            lookup = {k.lower(): v_ for k, v_ in _CURRENCY_SYNONYMS.items()}
            up = pl.col(_d(i)).replace(list(lookup), list(lookup.values())).str.to_uppercase()
            v = up
            checks_b.append(pl.when(pl.col(_v(i)).str.contains(r"^[A-Z]{3}$")).then(pl.col(_v(i))).alias(_v(i)))
        else:  # STRING, IDENTIFIER
            v = t
        value_exprs.append(v.alias(_v(i)))
    values = work.select(value_exprs)
    if checks_b:
        values = pl.concat([work, values], how="horizontal").with_columns(checks_b).select(values.columns)

    # -- phase C: leftovers the fast paths did not settle -------------------
    updates: list[pl.Series] = []
    for i, spec in enumerate(fields):
        ft = spec.type
        if ft not in (FieldType.PHONE, FieldType.DATE, FieldType.DATETIME, FieldType.AMOUNT, FieldType.INT):
            continue
        text = work[parse_col(i)]
        val = values[_v(i)]
        left = (text.is_not_null() & val.is_null()).arg_true()
        offsets = _const(None, len(val), pl.Int32, _o(i)) if ft is FieldType.DATETIME else None
        if left.len():
            sub = text.gather(left)
            if ft is FieldType.PHONE:
                fixed = _phone_leftovers(sub, options.default_region)
            elif ft is FieldType.AMOUNT:
                fixed = _amount_leftovers(sub)
            elif ft is FieldType.INT:
                fixed = _int_leftovers(sub)
            else:
                naive, off = _datetime_leftovers(sub, ft, options.day_first)
                if ft is FieldType.DATE:
                    midnight = (naive.dt.time() == _dt.time(0)).fill_null(False)
                    fixed = pl.select(pl.when(pl.lit(midnight)).then(pl.lit(naive).dt.date())).to_series()
                else:
                    fixed = naive
                    assert offsets is not None
                    ok = naive.is_not_null()
                    offsets.scatter(left.filter(ok), off.filter(ok))
            ok = fixed.is_not_null()
            if ok.any():
                val = val.clone()
                val.scatter(left.filter(ok), fixed.filter(ok))
                updates.append(val.alias(_v(i)))
        if offsets is not None:
            updates.append(offsets)
    if updates:
        values = values.with_columns(updates)
    frame = pl.concat([work, values], how="horizontal")

    # -- phase D: typed values (zones, computed amounts) --------------------
    zone = options.zone
    typed_exprs: list[pl.Expr] = []
    for i, spec in enumerate(fields):
        if spec.type is FieldType.DATETIME:
            v, off = pl.col(_v(i)), pl.col(_o(i))
            # a CRM's placeholder (0001-01-01) or 9999-12-31 is no time: it would leave the range
            # the stores and Python can hold once moved to UTC. Invalid, so quarantined.
            v = pl.when(v.dt.year().is_between(*DATETIME_YEARS)).then(v)
            local = v.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
            aware = (v - pl.duration(minutes=off.fill_null(0))).dt.replace_time_zone("UTC")
            typed_exprs.append(
                pl.when(off.is_null()).then(local.dt.convert_time_zone("UTC")).otherwise(aware).alias(spec.name)
            )
        else:
            typed_exprs.append(pl.col(_v(i)).alias(spec.name))
    refund: pl.Expr = pl.lit(False)
    if is_orders:
        qi, ui, li = names.index("quantity"), names.index("unit_price"), names.index("line_amount")
        refund = pl.col(_t(names.index("status"))).str.to_lowercase().is_in(list(REFUND_STATUSES))
        q, u = pl.col(_v(qi)), pl.col(_v(ui))
        # a refund line's quantity or price (or both) is negative: money going back is negative, and
        # -1 x -100 must not become +100 of revenue
        computed = (q * u).round(2)
        computed = pl.when(refund & ((q < 0) | (u < 0))).then(-computed.abs()).otherwise(computed)
        typed_exprs[li] = (
            pl.when(pl.col(_t(li)).is_null())
            .then(computed)
            .otherwise(pl.col(_v(li)))
            .alias("line_amount")
        )
        typed_exprs.append(refund.fill_null(False).alias("__refund"))
    frame = frame.with_columns(typed_exprs)
    refund = pl.col("__refund") if is_orders else pl.lit(False)

    # -- phase D2: per-field error codes, in field order ---------------------
    ident_idx = [names.index(f) for f in schema.identifier_fields if f in names]
    first_ident = min(ident_idx) if ident_idx else None
    checks: list[tuple[str, int | None]] = []  # (reported field, field index)
    code_exprs: list[pl.Expr] = []

    def add_check(field_name: str, idx: int | None, code: pl.Expr) -> None:
        code_exprs.append(code.alias(f"__c{len(checks)}"))
        checks.append((field_name, idx))

    def lit(code: int) -> pl.Expr:
        return pl.lit(code, _CODE)

    for i, spec in enumerate(fields):
        if i == first_ident:
            any_ident = pl.any_horizontal([pl.col(_t(j)).is_not_null() for j in ident_idx])
            add_check("identifier", None, pl.when(~any_ident).then(lit(_E_NO_IDENTIFIER)))
        t = pl.col(parse_col(i))
        v = pl.col(spec.name)
        rules: list[tuple[pl.Expr, int]] = []
        if spec.required:
            rules.append((t.is_null(), _E_MISSING))
        if spec.type not in (FieldType.STRING, FieldType.IDENTIFIER, FieldType.REGION) or (
            is_orders and spec.name == "currency"
        ):
            rules.append((t.is_not_null() & v.is_null(), _E_INVALID))
        if spec.type is FieldType.INT:
            if spec.min_value is not None:
                rules.append((v < spec.min_value, _E_RANGE))
            if spec.max_value is not None:
                rules.append((v > spec.max_value, _E_RANGE))
            if is_orders and spec.name == "quantity":
                rules.append((v == 0, _E_ZERO))
                rules.append(((v < 0) & ~refund, _E_NEGATIVE))
        if spec.type is FieldType.AMOUNT:
            rules.append(((v < 0) & ~refund, _E_NEGATIVE))
        if is_orders and spec.name == "line_amount":
            rules = [
                (pl.col(_t(i)).is_not_null() & pl.col(_v(i)).is_null(), _E_INVALID),
                *[r for r in rules if r[1] != _E_INVALID],
            ]
            no_price = pl.col(_t(names.index("unit_price"))).is_null()
            rules.append((pl.col(_t(i)).is_null() & no_price, _E_NO_AMOUNT))
        if rules:
            chain = pl.when(rules[0][0].fill_null(False)).then(lit(rules[0][1]))
            for cond, code in rules[1:]:
                chain = chain.when(cond.fill_null(False)).then(lit(code))
            add_check(spec.name, i, chain)

    n_checks = len(checks)
    frame = frame.with_columns(code_exprs)
    first_bad = pl.coalesce(
        [pl.when(pl.col(f"__c{k}").is_not_null()).then(pl.lit(k, pl.Int32)) for k in range(n_checks)]
        or [pl.lit(None, pl.Int32)]
    ).alias("__first")
    evaluated = frame.select(
        pl.col(RECORD),
        *[pl.col(spec.name) for spec in fields],
        pl.col("__pos"),
        first_bad,
        *[pl.col(f"__c{k}") for k in range(n_checks)],
    )

    bad_mask = evaluated["__first"].is_not_null()
    rejected = _rejections(df, evaluated.filter(bad_mask), checks, schema, options)
    accepted = evaluated.filter(~bad_mask).select(pl.col(RECORD), *names)
    if schema.keeps_extra:
        if EXTRA in df.columns:
            extra = df[EXTRA].filter(~bad_mask)
        else:
            extra = _const({}, accepted.height, pl.Struct({}), EXTRA)
        accepted = accepted.with_columns(extra.alias(EXTRA))

    # -- phase E: de-duplication -------------------------------------------
    before = accepted.height
    accepted = _dedupe(accepted, schema, options.blocked)
    duplicates = before - accepted.height

    unrecognised = 0
    unrecognised_values: list[str] = []
    if "region" in names:
        region = accepted["region"]
        odd = region.is_not_null() & ~region.is_in(list(province_names()))
        unrecognised = int(odd.sum())
        if unrecognised:
            unrecognised_values = sorted(region.filter(odd).unique().to_list())[:100]
    return CleanResult(
        accepted=accepted,
        rejected=rejected,
        duplicates_merged=duplicates,
        rows_read=rows_read,
        regions_unrecognised=unrecognised,
        unrecognised_region_values=unrecognised_values,
    )


# ---------------------------------------------------------------------------
# rejections
# ---------------------------------------------------------------------------

_EXAMPLES = {
    FieldType.DATE: "2025-03-01, 2025/3/1, 2025年3月1日 or 20250301",
    FieldType.DATETIME: "2025-03-01 12:30, 2025-03-01T12:30:00+08:00 or 2025年3月1日 12:30",
}


def _reason(
    code: int,
    spec: FieldSpec | None,
    value: str | None,
    schema: ImportSchema,
    options: CleaningOptions,
) -> str:
    if code == _E_NO_IDENTIFIER:
        return "no identifier: at least one of " + ", ".join(schema.identifier_fields) + " is required"
    assert spec is not None
    name = spec.name
    if code == _E_MISSING:
        return f"missing required field '{name}'"
    if code == _E_NO_AMOUNT:
        return "missing both 'line_amount' and 'unit_price' (at least one is required)"
    if code == _E_ZERO:
        return f"field '{name}': quantity must not be 0"
    if code == _E_NEGATIVE:
        tail = " (only order lines with status 'refund' may be negative)" if schema.kind == "orders" else ""
        return f"field '{name}': negative value '{value}' is not allowed{tail}"
    if code == _E_RANGE:
        if spec.max_value is None:
            bound = f"must be at least {spec.min_value}"
        elif spec.min_value is None:
            bound = f"must be at most {spec.max_value}"
        else:
            bound = f"is out of range {spec.min_value}..{spec.max_value}"
        return f"field '{name}': value '{value}' {bound}"
    ft = spec.type
    if ft is FieldType.PHONE:
        return f"field '{name}': invalid phone number '{value}'"
    if ft is FieldType.EMAIL:
        return f"field '{name}': invalid e-mail address '{value}'"
    if ft in (FieldType.DATE, FieldType.DATETIME):
        order = "day/month/year" if options.day_first else "month/day/year"
        kind = "date" if ft is FieldType.DATE else "date-time"
        years = f" in the years {DATETIME_YEARS[0]}-{DATETIME_YEARS[1]}" if ft is FieldType.DATETIME else ""
        return (
            f"field '{name}': invalid {kind} '{value}' (expected e.g. {_EXAMPLES[ft]}{years}; "
            f"01/03/2025 is read as {order})"
        )
    if ft is FieldType.AMOUNT:
        return f"field '{name}': invalid amount '{value}' (expected e.g. 1299.00, ¥1,299.00 or 1299,50)"
    if ft is FieldType.INT:
        return f"field '{name}': invalid integer '{value}'"
    if ft is FieldType.ENUM:
        return f"field '{name}': invalid value '{value}' (allowed: {', '.join(spec.choices)})"
    if name == "currency":
        return f"field '{name}': invalid currency '{value}' (expected a 3-letter code such as CNY)"
    return f"field '{name}': invalid value '{value}'"


def _rejections(
    df: pl.DataFrame,
    bad: pl.DataFrame,
    checks: list[tuple[str, int | None]],
    schema: ImportSchema,
    options: CleaningOptions,
) -> list[Rejection]:
    """Return one Rejection per row of *bad* (evaluated rows with ``__first``)."""
    if bad.height == 0:
        return []
    raw_cols = [c for c in schema.field_names if c in df.columns]
    raw_rows = _raw_rows(df, bad["__pos"], raw_cols)
    firsts = bad["__first"].to_list()
    code_cols = {k: bad[f"__c{k}"].to_list() for k in set(firsts)}
    out: list[Rejection] = []
    for row_i, (record, k, raw) in enumerate(zip(bad[RECORD].to_list(), firsts, raw_rows, strict=True)):
        field_name, idx = checks[k]
        code = int(code_cols[k][row_i])
        spec = schema.fields[idx] if idx is not None else None
        value = None
        if idx is not None and code not in (_E_MISSING, _E_NO_AMOUNT):
            value = raw.get(field_name)
            if value is None and spec is not None and spec.default is not None:
                value = spec.default
        out.append(
            Rejection(
                record=int(record),
                field=field_name,
                value=value,
                reason=_reason(code, spec, value, schema, options),
                raw=raw,
            )
        )
    return out


def _raw_rows(df: pl.DataFrame, positions: pl.Series, raw_cols: Sequence[str]) -> list[dict[str, str | None]]:
    """Return the original cells of the rows at *positions* of *df*.

    Keys are the mapped field names present in *df*, then the ``extra``
    entries (customers).
    """
    cols: list[pl.Expr] = [pl.col(c).cast(pl.Utf8) for c in raw_cols]
    if EXTRA in df.columns:
        cols.append(pl.col(EXTRA))
    if not cols:  # no field of the kind in the file: nothing of the row to keep but its number
        return [{} for _ in range(len(positions))]
    rows = df.select(cols)[positions]
    result: list[dict[str, str | None]] = []
    for row in rows.iter_rows(named=True):
        extra = row.pop(EXTRA, None) or {}
        raw: dict[str, str | None] = dict(row)
        for key, value in extra.items():
            raw.setdefault(key, None if value is None else str(value))
        result.append(raw)
    return result


# ---------------------------------------------------------------------------
# de-duplication
# ---------------------------------------------------------------------------


def _duplicated(hashes: pl.Series) -> pl.Series:
    """Return a mask of the rows whose hash occurs more than once.

    (Faster than ``Series.is_duplicated`` when repeats are few.)
    """
    repeats = hashes.filter(~hashes.is_first_distinct())
    if repeats.len() == 0:
        return _const(False, hashes.len(), pl.Boolean, "dup")
    return hashes.is_in(repeats.unique().implode())


def _first_of_duplicates(df: pl.DataFrame, subset: Sequence[str]) -> pl.Series:
    """Return a mask keeping the first of every group of identical rows.

    Rows are hashed first (cheap); only rows whose hash repeats are compared
    exactly, so a hash collision can never drop a distinct row.
    """
    dup = _duplicated(df.select(subset).hash_rows())
    keep = _const(True, df.height, pl.Boolean, "keep")
    if not dup.any():
        return keep
    idx = dup.arg_true()
    sub = df.select(subset)[idx]
    first = sub.select(pl.struct(list(subset)).is_first_distinct()).to_series()
    keep.scatter(idx, first)
    return keep


def _merge_latest(df: pl.DataFrame, key: Sequence[str]) -> pl.DataFrame:
    """Merge rows sharing *key*: for every column the latest non-null value wins.

    The merged row takes the place (and ``__record``) of the key's first row.
    """
    key = list(key)
    # Candidate rows by key hash (cheap); the exact grouping below makes a
    # hash collision harmless (a group of one is "merged" with itself).
    dup = _duplicated(df.select((pl.struct(key) if len(key) > 1 else pl.col(key[0])).hash()).to_series())
    # Rows without a key (cannot happen after validation) are never merged.
    dup = dup & df.select(pl.all_horizontal([pl.col(k).is_not_null() for k in key])).to_series()
    if not dup.any():
        return df
    extra_fields: list[str] = []
    if EXTRA in df.columns and isinstance(df.schema[EXTRA], pl.Struct):
        extra_fields = [f.name for f in df.schema[EXTRA].fields]
    positions = dup.arg_true()
    multi = df[positions].with_columns(pl.Series("__pos", positions))
    xcols = [f"__x{j}" for j in range(len(extra_fields))]
    if EXTRA in df.columns:
        if extra_fields:
            multi = multi.with_columns(pl.col(EXTRA).struct.rename_fields(xcols)).unnest(EXTRA)
        else:
            multi = multi.drop(EXTRA)
    others = [c for c in multi.columns if c not in key and c not in (RECORD, "__pos")]
    merged = multi.group_by(key, maintain_order=True).agg(
        pl.col(RECORD).first(),
        pl.col("__pos").first(),
        *[pl.col(c).drop_nulls().last() for c in others],
    )
    if EXTRA in df.columns:
        if extra_fields:
            merged = merged.with_columns(pl.struct(xcols).struct.rename_fields(extra_fields).alias(EXTRA)).drop(xcols)
        else:
            merged = merged.with_columns(pl.repeat({}, pl.len(), dtype=pl.Struct({})).alias(EXTRA))
    keep = ~dup
    keep.scatter(merged["__pos"], True)
    out = df.filter(keep)
    # Positions of the merged rows within the filtered frame.
    new_pos = (keep.cast(pl.Int64).cum_sum() - 1).gather(merged["__pos"])
    merged = merged.select(df.columns)
    return pl.DataFrame([_scatter(out[c], new_pos, merged[c]) for c in df.columns])


def _scatter(target: pl.Series, idx: pl.Series, values: pl.Series) -> pl.Series:
    """Return *target* with *values* written at *idx* (struct columns too)."""
    if values.null_count() == values.len() and target.null_count() == target.len():
        return target  # an absent field: nothing to write
    if isinstance(target.dtype, pl.Struct):
        if not target.dtype.fields:
            return target
        parts = [_scatter(target.struct.field(f.name), idx, values.struct.field(f.name)) for f in target.dtype.fields]
        return pl.DataFrame(parts).select(pl.struct(pl.all()).alias(target.name)).to_series()
    return target.clone().scatter(idx, values)


def _dedupe(df: pl.DataFrame, schema: ImportSchema, blocked: Mapping[str, frozenset[str]] | None = None
            ) -> pl.DataFrame:
    """Return *df* de-duplicated as the module docstring describes (*blocked*: CleaningOptions.blocked)."""
    if schema.kind == "orders":
        df = df.filter(_first_of_duplicates(df, schema.field_names))
        line_no = _const(1, df.height, pl.Int64, LINE_NO)
        multi = _duplicated(df.select(pl.col("order_id").hash()).to_series())
        if multi.any():
            idx = multi.arg_true()
            numbers = (
                df.get_column("order_id")
                .gather(idx)
                .to_frame()
                .select(pl.col("order_id").cum_count().over("order_id"))
                .to_series()
            )
            line_no.scatter(idx, numbers.cast(pl.Int64))
        return df.with_columns(line_no)
    if schema.key == (DEDUPE_KEY,):
        # "<field>:<value>" of the first identifier present: one concat of
        # the coalesced field name and value (cheaper than one per field).
        ids = schema.identifier_fields
        blocked = blocked or {}
        every = list(blocked.get("*", ()))

        def usable(f: str) -> pl.Expr:  # the field's value, or null when it may not link anyone
            typed = list(blocked.get(f, ()))
            if not every and not typed:
                return pl.col(f)
            hit = pl.col(f).str.strip_chars().str.to_lowercase().is_in(every) | pl.col(f).is_in(typed)
            return pl.when(hit).then(None).otherwise(pl.col(f))

        key_expr = pl.concat_str(
            [
                pl.coalesce([pl.when(usable(f).is_not_null()).then(pl.lit(f + ":")) for f in ids]),
                pl.coalesce([usable(f) for f in ids]),
            ]
        ).alias(DEDUPE_KEY)
        cols = [c for c in df.columns if c != EXTRA]
        df = df.with_columns(key_expr).select(*cols, DEDUPE_KEY, *([EXTRA] if EXTRA in df.columns else []))
        return _merge_latest(df, [DEDUPE_KEY])
    return _merge_latest(df, list(schema.key))
