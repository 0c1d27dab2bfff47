"""Tests of goldkey.collect.cleaning, import_schemas and regions (pure, no storage)."""

from __future__ import annotations

import datetime as dt
import random

import phonenumbers
import polars as pl
import pytest

from goldkey.collect.cleaning import (
    CleaningOptions,
    CleanResult,
    Rejection,
    clean,
    normalise_phone,
    parse_datetime_text,
)
from goldkey.collect.import_schemas import (
    DEDUPE_KEY,
    EXTRA,
    LINE_NO,
    RECORD,
    SCHEMAS,
    FieldSpec,
    FieldType,
    ImportSchema,
)
from goldkey.collect.reading import apply_mapping
from goldkey.collect.regions import PROVINCES, province_names, standardise_region

CUSTOMERS = SCHEMAS["customers"]
ORDERS = SCHEMAS["orders"]
PRODUCTS = SCHEMAS["products"]
FEEDBACK = SCHEMAS["feedback"]
UTC = dt.UTC


def frame(rows: list[dict[str, str | None]]) -> pl.DataFrame:
    """All-text frame with every key of every row as a column."""
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return pl.DataFrame({c: [r.get(c) for r in rows] for c in cols}, schema={c: pl.Utf8 for c in cols})


def run(schema: ImportSchema, rows: list[dict[str, str | None]], **opts: object) -> CleanResult:
    return clean(apply_mapping(frame(rows), {}, schema), schema, CleaningOptions(**opts))  # type: ignore[arg-type]


def one_value(
    schema: ImportSchema, field: str, value: str | None, base: dict[str, str | None] | None = None, **opts: object
) -> object:
    """Clean one row and return the cleaned *field*; fails if rejected."""
    row = dict(base or {"crm_id": "C1"})
    row[field] = value
    result = run(schema, [row], **opts)
    assert result.rejected == [], [str(r) for r in result.rejected]
    return result.accepted[field][0]


def one_rejection(schema: ImportSchema, row: dict[str, str | None], **opts: object) -> Rejection:
    result = run(schema, [row], **opts)
    assert result.accepted.height == 0
    assert len(result.rejected) == 1
    return result.rejected[0]


# ---------------------------------------------------------------------------
# schemas
# ---------------------------------------------------------------------------


def test_schemas_have_the_four_kinds_with_their_keys() -> None:
    assert set(SCHEMAS) == {"customers", "orders", "products", "feedback"}
    assert CUSTOMERS.key == (DEDUPE_KEY,)
    assert CUSTOMERS.identifier_fields == (
        "crm_id",
        "user_id",
        "phone",
        "email",
        "wechat_unionid",
        "wechat_openid",
        "device_id",
    )
    assert ORDERS.key == ("order_id", "sku", LINE_NO)
    assert PRODUCTS.key == ("sku",)
    assert FEEDBACK.key == ("feedback_id",)
    assert ORDERS.identifier_fields == ("crm_id", "user_id", "phone", "email")
    assert PRODUCTS.identifier_fields == ()
    assert CUSTOMERS.field("gender").choices == ("male", "female", "unknown")
    assert FEEDBACK.field("kind").choices == ("complaint", "consultation", "review", "survey")
    assert FEEDBACK.field("status").default == "open"
    assert ORDERS.field("quantity").default == "1"
    assert ORDERS.field("currency").default == "CNY"
    assert isinstance(CUSTOMERS.fields[0], FieldSpec)
    assert FieldType("phone") is FieldType.PHONE
    for schema in SCHEMAS.values():
        assert len(set(schema.field_names)) == len(schema.fields)
        assert set(schema.identifier_fields) <= set(schema.field_names)
    with pytest.raises(KeyError):
        CUSTOMERS.field("nope")


def test_expected_fields_per_kind() -> None:
    assert set(CUSTOMERS.field_names) == {
        "crm_id",
        "user_id",
        "phone",
        "email",
        "wechat_openid",
        "wechat_unionid",
        "device_id",
        "name",
        "gender",
        "birthday",
        "region",
        "city",
        "member_tier",
        "points",
        "registered_at",
        "store",
        "plan",
        "plan_data_mb",
        "monthly_fee",
        "handset",
        "handset_bought_at",
        "balance",
        "consent_sms",
        "consent_email",
        "consent_wechat",
        "consent_push",
        "consent_call",
        "consent_mail",
        "consent_updated_at",
    }
    assert set(ORDERS.field_names) == {
        "order_id",
        "ordered_at",
        "crm_id",
        "user_id",
        "phone",
        "email",
        "sku",
        "product_name",
        "category",
        "quantity",
        "unit_price",
        "line_amount",
        "currency",
        "channel",
        "store",
        "region",
        "status",
    }
    assert set(PRODUCTS.field_names) == {
        "sku",
        "name",
        "category",
        "subcategory",
        "brand",
        "price",
        "qr_code",
        "launched_at",
    }
    assert set(FEEDBACK.field_names) == {
        "feedback_id",
        "crm_id",
        "user_id",
        "phone",
        "email",
        "kind",
        "channel",
        "topic",
        "text",
        "rating",
        "question",
        "answer",
        "created_at",
        "status",
    }


# ---------------------------------------------------------------------------
# phones
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "138 0013 8000",
        "+86-138-0013-8000",
        "8613800138000",
        "(0)13800138000",
        "13800138000",
        "+86 (0) 138 0013 8000",
        "0086 138 0013 8000",
        "138-0013-8000",
        "  13800138000  ",
    ],
)
def test_mainland_mobiles_become_e164(raw: str) -> None:
    assert one_value(CUSTOMERS, "phone", raw, base={}) == "+8613800138000"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("010-8888 8888", "+861088888888"),
        ("+86 10 8888 8888", "+861088888888"),
        ("(020) 8888 8888", "+862088888888"),
        ("+1 650-253-0000", "+16502530000"),
        ("+852 2123 4567", "+85221234567"),
        ("１３８００１３８０００", "+8613800138000"),  # full-width digits
    ],
)
def test_other_phones_go_through_phonenumbers(raw: str, expected: str) -> None:
    assert one_value(CUSTOMERS, "phone", raw, base={}) == expected


def test_phone_default_region_is_configurable() -> None:
    assert one_value(CUSTOMERS, "phone", "(650) 253-0000", base={}, default_region="US") == "+16502530000"
    us = {"base": {}, "default_region": "US"}
    assert one_value(CUSTOMERS, "phone", "+86 138 0013 8000", **us) == "+8613800138000"
    rej = one_rejection(CUSTOMERS, {"phone": "13800138000"}, default_region="US")
    assert rej.field == "phone"


@pytest.mark.parametrize(
    "raw",
    [
        "12345",
        "1380013800",
        "138001380001",
        "23800138000",
        "138-0013-800a",
        "+86 138 0013 8000 ext. 12",
        "phone",
        "00000000000",
    ],
)
def test_invalid_phone_rejects_the_row(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C9", "phone": raw})
    assert rej.record == 1
    assert rej.field == "phone"
    assert rej.value == raw
    assert "phone" in rej.reason and raw in rej.reason
    assert str(rej).startswith("record 1: ")


def test_phone_fast_path_agrees_with_phonenumbers() -> None:
    """Whatever path settles a number, the result equals phonenumbers' own."""
    rng = random.Random(7)
    areas = [
        "10",
        "20",
        "21",
        "22",
        "23",
        "24",
        "25",
        "27",
        "28",
        "29",
        "311",
        "351",
        "371",
        "431",
        "451",
        "471",
        "531",
        "551",
        "571",
        "591",
        "731",
        "755",
        "769",
        "851",
        "871",
        "898",
        "991",
    ]
    values = []
    for _ in range(3000):
        k = rng.random()
        if k < 0.4:
            number = "1" + "".join(rng.choice("0123456789") for _ in range(10))
        elif k < 0.8:
            digits = rng.choice([7, 8])
            number = "0" + rng.choice(areas) + "".join(rng.choice("0123456789") for _ in range(digits))
        else:
            number = "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 13)))
        values.append(rng.choice(["", "+86", "+86 ", "0086", "86", "+86 (0) ", "(0)", "+86-"]) + number)
    df = pl.DataFrame({"crm_id": [f"C{i}" for i in range(len(values))], "phone": values})
    result = clean(apply_mapping(df, {}, CUSTOMERS), CUSTOMERS)
    got = {rec: phone for rec, phone in zip(result.accepted[RECORD], result.accepted["phone"], strict=True)}
    for rej in result.rejected:
        got[rej.record] = None
    for i, value in enumerate(values, start=1):
        try:
            n = phonenumbers.parse(value, "CN")
            expected = (
                phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
                if phonenumbers.is_valid_number(n)
                else None
            )
        except phonenumbers.NumberParseException:
            expected = None
        assert got[i] == expected, value
        assert normalise_phone(value) == expected, value


def test_normalise_phone_helper() -> None:
    assert normalise_phone("138 0013 8000") == "+8613800138000"
    assert normalise_phone("nope") is None
    assert normalise_phone("") is None


# ---------------------------------------------------------------------------
# e-mail
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" A.B@Example.COM ", "a.b@example.com"),
        ("x+tag@mail.qq.com", "x+tag@mail.qq.com"),
        ("张三@例子.中国", "张三@例子.中国"),
    ],
)
def test_emails_are_lowercased_and_stripped(raw: str, expected: str) -> None:
    assert one_value(CUSTOMERS, "email", raw, base={}) == expected


@pytest.mark.parametrize(
    "raw", ["a b@c.com", "abc", "a@b", "a@@b.com", "a@b.c", "a@.com", "@b.com", "Name <a@b.com>", "a@b.com;c@d.com",
            # dots and hyphens where no address has them (accepted before)
            "a..b@x.com", ".a@x.com", "a.@x.com", "a@-x.com", "a@x-.com"]
)
def test_invalid_emails_reject_the_row(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "email": raw})
    assert rej.field == "email"
    assert rej.value == raw
    assert "e-mail" in rej.reason and raw in rej.reason


# ---------------------------------------------------------------------------
# dates and date-times
# ---------------------------------------------------------------------------

MARCH_1 = dt.date(2025, 3, 1)
EXCEL_MARCH_1 = str((MARCH_1 - dt.date(1899, 12, 30)).days)


@pytest.mark.parametrize(
    "raw",
    [
        "2025-03-01",
        "2025/3/1",
        "2025-3-1",
        "2025.03.01",
        "2025年3月1日",
        "2025 年 3 月 1 日",
        "20250301",
        "03/01/2025",
        "2025-03-01 00:00:00",
        "2025-03-01T00:00:00",
        EXCEL_MARCH_1,
        "1 Mar 2025",
        "March 1, 2025",
    ],
)
def test_dates(raw: str) -> None:
    assert one_value(CUSTOMERS, "birthday", raw) == MARCH_1


def test_day_first_decides_ambiguous_dates() -> None:
    assert one_value(CUSTOMERS, "birthday", "01/03/2025") == dt.date(2025, 1, 3)
    assert one_value(CUSTOMERS, "birthday", "01/03/2025", day_first=True) == MARCH_1
    assert one_value(CUSTOMERS, "birthday", "25/12/2024", day_first=True) == dt.date(2024, 12, 25)
    # Strict: no silent swap when the other order would fit.
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "birthday": "25/12/2024"})
    assert rej.field == "birthday"
    assert "month/day/year" in rej.reason


@pytest.mark.parametrize(
    "raw",
    [
        "2025-02-30",
        "2025-13-01",
        "13/13/2025",
        "hello",
        "1990",
        "25-03-01",
        "2025031",
        "2025-03-01 12:30",
        "45717.5",
        "2025/3/1/2",
    ],
)
def test_invalid_dates_reject_the_row(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "birthday": raw})
    assert rej.field == "birthday"
    assert rej.value == raw
    assert "invalid date" in rej.reason and raw in rej.reason


def shanghai(*args: int) -> dt.datetime:
    return (dt.datetime(*args) - dt.timedelta(hours=8)).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-03-01 12:30", shanghai(2025, 3, 1, 12, 30)),
        ("2025-03-01 12:30:15", shanghai(2025, 3, 1, 12, 30, 15)),
        ("2025/3/1 12:30", shanghai(2025, 3, 1, 12, 30)),
        ("2025-03-01T12:30:00", shanghai(2025, 3, 1, 12, 30)),
        ("2025-03-01T12:30:00.250", shanghai(2025, 3, 1, 12, 30, 0, 250000)),
        ("2025年3月1日 12:30", shanghai(2025, 3, 1, 12, 30)),
        ("2025年3月1日12时30分", shanghai(2025, 3, 1, 12, 30)),
        ("2025-03-01", shanghai(2025, 3, 1)),
        ("20250301", shanghai(2025, 3, 1)),
        ("20250301123000", shanghai(2025, 3, 1, 12, 30)),
        ("03/01/2025 12:30", shanghai(2025, 3, 1, 12, 30)),
        ("2025-03-01T12:30:00Z", dt.datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
        ("2025-03-01 12:30:00 UTC", dt.datetime(2025, 3, 1, 12, 30, tzinfo=UTC)),
        ("2025-03-01T12:30:00+09:00", dt.datetime(2025, 3, 1, 3, 30, tzinfo=UTC)),
        ("2025-03-01T12:30:00-0500", dt.datetime(2025, 3, 1, 17, 30, tzinfo=UTC)),
        (EXCEL_MARCH_1 + ".5", shanghai(2025, 3, 1, 12)),
    ],
)
def test_datetimes_are_utc_and_local_time_is_shanghai(raw: str, expected: dt.datetime) -> None:
    value = one_value(CUSTOMERS, "registered_at", raw)
    assert value == expected


def test_datetime_column_is_utc_typed() -> None:
    result = run(CUSTOMERS, [{"crm_id": "C1", "registered_at": "2025-03-01 08:00:00"}])
    assert result.accepted.schema["registered_at"] == pl.Datetime("us", "UTC")
    assert result.accepted.schema["birthday"] == pl.Date
    assert result.accepted["registered_at"][0] == dt.datetime(2025, 3, 1, 0, 0, tzinfo=UTC)


def test_time_zone_follows_region_or_option() -> None:
    assert CleaningOptions().zone == "Asia/Shanghai"
    assert CleaningOptions(default_region="US").zone == "UTC"
    assert CleaningOptions(time_zone="Asia/Tokyo").zone == "Asia/Tokyo"
    assert one_value(CUSTOMERS, "registered_at", "2025-03-01 12:30", default_region="US") == dt.datetime(
        2025, 3, 1, 12, 30, tzinfo=UTC
    )
    assert one_value(CUSTOMERS, "registered_at", "2025-03-01 12:30", time_zone="Asia/Tokyo") == dt.datetime(
        2025, 3, 1, 3, 30, tzinfo=UTC
    )


@pytest.mark.parametrize("raw", ["2025-03-01 25:00", "2025-02-30 10:00", "yesterday", "2025-03-01 12:60"])
def test_invalid_datetimes_reject_the_row(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "registered_at": raw})
    assert rej.field == "registered_at"
    assert "invalid date-time" in rej.reason


def test_fast_and_slow_date_paths_agree() -> None:
    """A format that dominates a column is parsed by the fast path; the same
    text alone (or among others) must parse to the same value."""
    mixed = [
        "2025/3/1 12:30",
        "2025-03-01 12:30:00",
        "2025年3月1日 12:30",
        "03/01/2025 12:30",
        "2025-03-01T12:30:00",
        "2025.3.1 12:30",
        "20250301",
        "2025-03-01",
    ]
    for text in mixed:
        alone = one_value(CUSTOMERS, "registered_at", text)
        column = [text] * 3000 + mixed
        df = pl.DataFrame({"crm_id": [f"C{i}" for i in range(len(column))], "registered_at": column})
        result = clean(df, CUSTOMERS)
        assert result.rejected == []
        got = result.accepted["registered_at"]
        assert got[0] == alone
        for j, other in enumerate(mixed):
            assert got[3000 + j] == one_value(CUSTOMERS, "registered_at", other), (text, other)


def test_parse_datetime_text_helper() -> None:
    assert parse_datetime_text("2025-03-01T12:30:00+08:00") == (dt.datetime(2025, 3, 1, 12, 30), 480)
    assert parse_datetime_text("2025/3/1") == (dt.datetime(2025, 3, 1), None)
    assert parse_datetime_text("01/03/2025", day_first=True) == (dt.datetime(2025, 3, 1), None)
    assert parse_datetime_text("nonsense") is None


# ---------------------------------------------------------------------------
# amounts and integers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("¥1,299.00", 1299.0),
        ("1299", 1299.0),
        ("1 299,50", 1299.5),
        ("1299,50", 1299.5),
        ("RMB 30", 30.0),
        ("￥30", 30.0),
        ("30元", 30.0),
        ("CNY 12.5", 12.5),
        ("1,299", 1299.0),
        ("12,345,678.9", 12345678.9),
        ("12.3456", 12.35),
        ("0", 0.0),
        (".5", 0.5),
    ],
)
def test_amounts(raw: str, expected: float) -> None:
    assert one_value(CUSTOMERS, "balance", raw) == pytest.approx(expected)


def test_amount_column_is_float64() -> None:
    result = run(CUSTOMERS, [{"crm_id": "C1", "balance": "¥1,299.00"}])
    assert result.accepted.schema["balance"] == pl.Float64


@pytest.mark.parametrize("raw", ["1,5", "abc", "1.299,50", "$30", "1,29,9", "12e3", "inf", "NaN", "1 2 3,4"])
def test_invalid_amounts_reject_the_row(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "balance": raw})
    assert rej.field == "balance"
    assert "invalid amount" in rej.reason and raw in rej.reason


def test_negative_amounts_are_rejected_outside_refunds() -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "balance": "-5"})
    assert rej.field == "balance" and "negative" in rej.reason
    rej = one_rejection(PRODUCTS, {"sku": "S1", "name": "n", "price": "¥-1"})
    assert rej.field == "price"
    base = {"order_id": "O1", "ordered_at": "2025-03-01 10:00", "crm_id": "C1", "sku": "S1"}
    rej = one_rejection(ORDERS, {**base, "line_amount": "-30"})
    assert rej.field == "line_amount" and "refund" in rej.reason
    for status in ("refund", "Refunded", "退款"):
        result = run(ORDERS, [{**base, "line_amount": "-30", "quantity": "-1", "status": status}])
        assert result.rejected == []
        assert result.accepted["line_amount"][0] == -30.0
        assert result.accepted["quantity"][0] == -1


@pytest.mark.parametrize(("quantity", "price", "expected"), [("-1", "-100", -100.0), ("-2", "50", -100.0),
                                                           ("1", "-100", -100.0), ("1", "100", 100.0)])
def test_a_refund_line_computed_from_negatives_is_negative(quantity: str, price: str, expected: float) -> None:
    # before: -1 x -100 became +100, a refund adding revenue
    base = {"order_id": "O1", "ordered_at": "2025-03-01 10:00", "crm_id": "C1", "sku": "S1", "status": "refund"}
    assert one_value(ORDERS, "line_amount", None, {**base, "quantity": quantity, "unit_price": price}) == expected


@pytest.mark.parametrize(("raw", "expected"), [("12", 12), ("+12", 12), ("-3", -3), ("12.0", 12), ("007", 7)])
def test_ints(raw: str, expected: int) -> None:
    assert one_value(CUSTOMERS, "points", raw) == expected


@pytest.mark.parametrize("raw", ["12.5", "1,000", "ten", "1e3", "12 000", "99999999999999999999"])
def test_ints_are_strict(raw: str) -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "points": raw})
    assert rej.field == "points"
    assert "invalid integer" in rej.reason


def test_int_ranges() -> None:
    base = {"feedback_id": "F1", "crm_id": "C1", "kind": "review", "created_at": "2025-03-01 10:00"}
    assert one_value(FEEDBACK, "rating", "5", base=base) == 5
    assert one_value(FEEDBACK, "rating", "1", base=base) == 1
    for bad in ("0", "6"):
        rej = one_rejection(FEEDBACK, {**base, "rating": bad})
        assert rej.field == "rating" and "out of range 1..5" in rej.reason
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "plan_data_mb": "-1"})
    assert rej.field == "plan_data_mb"


# ---------------------------------------------------------------------------
# enums and regions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("男", "male"),
        ("女", "female"),
        ("M", "male"),
        ("f", "female"),
        ("男性", "male"),
        ("女性", "female"),
        ("Female", "female"),
        ("UNKNOWN", "unknown"),
        ("未知", "unknown"),
    ],
)
def test_gender_synonyms(raw: str, expected: str) -> None:
    assert one_value(CUSTOMERS, "gender", raw) == expected


def test_unknown_enum_value_rejects_naming_allowed_values() -> None:
    rej = one_rejection(CUSTOMERS, {"crm_id": "C1", "gender": "外星人"})
    assert rej.field == "gender"
    assert rej.value == "外星人"
    assert "male, female, unknown" in rej.reason


def test_feedback_kind_and_status() -> None:
    base = {"feedback_id": "F1", "crm_id": "C1", "created_at": "2025-03-01 10:00"}
    for raw, expected in [
        ("投诉", "complaint"),
        ("咨询", "consultation"),
        ("评价", "review"),
        ("问卷", "survey"),
        ("Complaint", "complaint"),
    ]:
        assert one_value(FEEDBACK, "kind", raw, base=base) == expected
    base["kind"] = "review"
    assert one_value(FEEDBACK, "status", None, base=base) == "open"
    assert one_value(FEEDBACK, "status", "未解决", base=base) == "open"
    assert one_value(FEEDBACK, "status", "已解决", base=base) == "resolved"
    rej = one_rejection(FEEDBACK, {**base, "status": "maybe"})
    assert rej.field == "status" and "open, resolved" in rej.reason
    rej = one_rejection(FEEDBACK, {**base, "kind": None})
    assert rej.reason == "missing required field 'kind'"


def test_all_34_province_level_divisions() -> None:
    names = province_names()
    assert len(names) == 34 == len(set(names))
    for p in PROVINCES:
        assert standardise_region(p.name) == p.name
        assert standardise_region(p.short) == p.name
        for en in p.english:
            assert standardise_region(en) == p.name, en
            assert standardise_region(en.upper()) == p.name, en
        for variant in p.variants:
            assert standardise_region(variant) == p.name, variant


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("广东", "广东省"),
        ("广东省", "广东省"),
        ("Guangdong", "广东省"),
        ("guangdong province", "广东省"),
        ("北京", "北京市"),
        ("北京市", "北京市"),
        ("Beijing", "北京市"),
        ("beijing city", "北京市"),
        ("内蒙古", "内蒙古自治区"),
        ("Inner Mongolia", "内蒙古自治区"),
        ("广西壮族自治区", "广西壮族自治区"),
        ("Guangxi Zhuang Autonomous Region", "广西壮族自治区"),
        ("新疆", "新疆维吾尔自治区"),
        ("Tibet", "西藏自治区"),
        ("Shaanxi", "陕西省"),
        ("Shanxi", "山西省"),
        ("香港", "香港特别行政区"),
        ("Hong Kong SAR", "香港特别行政区"),
        ("澳門", "澳门特别行政区"),
        ("Macao", "澳门特别行政区"),
        ("台湾", "台湾省"),
        ("Taiwan", "台湾省"),
        ("中国广东省", "广东省"),
        ("廣東", "广东省"),
        (" 上海 ", "上海市"),
    ],
)
def test_region_spellings(raw: str, expected: str) -> None:
    assert standardise_region(raw) == expected
    assert one_value(CUSTOMERS, "region", raw) == expected


def test_abbreviations_and_unknown_regions_are_not_recognised() -> None:
    for raw in ("GD", "BJ", "粤", "火星", "广州市", ""):
        assert standardise_region(raw) is None
    assert standardise_region(None) is None


def test_unknown_regions_are_kept_and_counted() -> None:
    result = run(
        CUSTOMERS,
        [
            {"crm_id": "C1", "region": " 火星 "},
            {"crm_id": "C2", "region": "广东"},
            {"crm_id": "C3", "region": "Atlantis"},
            {"crm_id": "C4"},
        ],
    )
    assert result.rejected == []
    assert result.accepted["region"].to_list() == ["火星", "广东省", "Atlantis", None]
    assert result.regions_unrecognised == 2
    assert result.unrecognised_region_values == ["Atlantis", "火星"]


# ---------------------------------------------------------------------------
# row rules and rejections
# ---------------------------------------------------------------------------


def test_missing_required_field() -> None:
    rej = one_rejection(ORDERS, {"order_id": "  ", "ordered_at": "2025-03-01 10:00", "crm_id": "C1", "unit_price": "1"})
    assert rej.field == "order_id"
    assert rej.value is None
    assert rej.reason == "missing required field 'order_id'"
    rej = one_rejection(PRODUCTS, {"sku": "S1"})
    assert rej.reason == "missing required field 'name'"


def test_row_without_identifier() -> None:
    rej = one_rejection(CUSTOMERS, {"name": "张三", "gender": "男"})
    assert rej.field == "identifier"
    assert rej.value is None
    for name in CUSTOMERS.identifier_fields:
        assert name in rej.reason
    rej = one_rejection(ORDERS, {"order_id": "O1", "ordered_at": "2025-03-01 10:00", "unit_price": "1"})
    assert rej.field == "identifier"
    assert "crm_id, user_id, phone, email" in rej.reason


def test_one_rejection_per_row_first_problem_in_field_order() -> None:
    rows = [
        {"crm_id": "C1", "phone": "123", "email": "bad", "birthday": "never"},
        {"crm_id": "C2", "email": "bad", "birthday": "never"},
        {"crm_id": "C3", "birthday": "never", "points": "x"},
        {"crm_id": "C4"},
    ]
    result = run(CUSTOMERS, rows)
    assert [(r.record, r.field) for r in result.rejected] == [(1, "phone"), (2, "email"), (3, "birthday")]
    assert result.accepted[RECORD].to_list() == [4]
    first = result.rejected[0]
    assert first.raw["phone"] == "123" and first.raw["email"] == "bad" and first.raw["crm_id"] == "C1"
    assert "record 1" in str(first) and "'phone'" in str(first) and "'123'" in str(first)
    assert result.rows_read == 4


def test_rejection_record_numbers_come_from_record_column() -> None:
    df = pl.DataFrame({RECORD: [7, 9], "crm_id": ["C1", "C2"], "phone": ["13800138000", "42"]})
    result = clean(df, CUSTOMERS)
    assert [r.record for r in result.rejected] == [9]
    assert result.accepted[RECORD].to_list() == [7]


def test_raw_row_includes_extra_columns() -> None:
    df = pl.DataFrame({"crm_id": ["C1"], "email": ["nope"], "会员卡号": ["V001"]})
    result = clean(apply_mapping(df, {}, CUSTOMERS), CUSTOMERS)
    assert result.rejected[0].raw == {"crm_id": "C1", "email": "nope", "会员卡号": "V001"}


def test_result_columns_and_types() -> None:
    result = run(
        CUSTOMERS,
        [
            {
                "crm_id": "C1",
                "points": "3",
                "monthly_fee": "58",
                "plan_data_mb": "1024",
                "handset_bought_at": "2024/5/1",
                "name": " 张三 ",
            }
        ],
    )
    acc = result.accepted
    assert acc.columns == [RECORD, *CUSTOMERS.field_names, DEDUPE_KEY, EXTRA]
    assert acc.schema[RECORD] == pl.Int64
    assert acc.schema["points"] == pl.Int64
    assert acc.schema["monthly_fee"] == pl.Float64
    assert acc.schema["handset_bought_at"] == pl.Date
    assert acc.row(0, named=True)["name"] == "张三"
    assert acc[EXTRA].to_list() == [{}]
    orders = run(ORDERS, [{"order_id": "O1", "ordered_at": "2025-03-01", "crm_id": "C1", "unit_price": "1"}])
    assert orders.accepted.columns == [RECORD, *ORDERS.field_names, LINE_NO]
    products = run(PRODUCTS, [{"sku": "S1", "name": "n", "launched_at": "2025-01-01"}])
    assert products.accepted.columns == [RECORD, *PRODUCTS.field_names]


def test_empty_input() -> None:
    result = clean(pl.DataFrame({"crm_id": []}, schema={"crm_id": pl.Utf8}), CUSTOMERS)
    assert result.accepted.height == 0
    assert result.rejected == [] and result.rows_read == 0 and result.duplicates_merged == 0


# ---------------------------------------------------------------------------
# orders
# ---------------------------------------------------------------------------

ORDER = {"order_id": "O1", "ordered_at": "2025-03-01 10:00", "phone": "13800138000", "sku": "S1"}


def test_order_defaults_and_computed_line_amount() -> None:
    result = run(
        ORDERS,
        [
            {**ORDER, "unit_price": "¥10.50"},
            {**ORDER, "sku": "S2", "quantity": "3", "unit_price": "9.99", "currency": "rmb"},
        ],
    )
    assert result.rejected == []
    acc = result.accepted
    assert acc["quantity"].to_list() == [1, 3]
    assert acc["line_amount"].to_list() == [10.5, 29.97]
    assert acc["currency"].to_list() == ["CNY", "CNY"]
    assert acc["phone"].to_list() == ["+8613800138000"] * 2


def test_given_line_amount_is_kept() -> None:
    result = run(ORDERS, [{**ORDER, "quantity": "2", "unit_price": "10", "line_amount": "18"}])
    assert result.accepted["line_amount"][0] == 18.0


def test_order_needs_line_amount_or_unit_price() -> None:
    rej = one_rejection(ORDERS, dict(ORDER))
    assert rej.field == "line_amount"
    assert "line_amount" in rej.reason and "unit_price" in rej.reason
    assert run(ORDERS, [{**ORDER, "line_amount": "5"}]).accepted["unit_price"][0] is None


def test_order_currency_and_quantity_rules() -> None:
    rej = one_rejection(ORDERS, {**ORDER, "unit_price": "1", "currency": "人民"})
    assert rej.field == "currency" and "人民" in rej.reason
    assert one_value(ORDERS, "currency", "usd", base={**ORDER, "unit_price": "1"}) == "USD"
    rej = one_rejection(ORDERS, {**ORDER, "unit_price": "1", "quantity": "0"})
    assert rej.field == "quantity"
    rej = one_rejection(ORDERS, {**ORDER, "unit_price": "1", "quantity": "-1"})
    assert rej.field == "quantity" and "negative" in rej.reason
    rej = one_rejection(ORDERS, {**ORDER, "unit_price": "1", "ordered_at": None})
    assert rej.reason == "missing required field 'ordered_at'"


def test_order_duplicates_and_line_numbers() -> None:
    line = {**ORDER, "unit_price": "10"}
    rows = [
        line,
        {**line, "phone": "+86 138 0013 8000"},  # same line after cleaning: exact duplicate
        {**line, "unit_price": "12"},  # same order and sku, another line
        {**line, "sku": "S2"},
        {**line, "order_id": "O2"},
        line,  # exact duplicate again
    ]
    result = run(ORDERS, rows)
    assert result.rejected == []
    assert result.duplicates_merged == 2
    acc = result.accepted
    assert acc[RECORD].to_list() == [1, 3, 4, 5]
    assert acc[LINE_NO].to_list() == [1, 2, 3, 1]
    assert acc.select("order_id", "sku", LINE_NO).is_duplicated().sum() == 0


# ---------------------------------------------------------------------------
# de-duplication of customers, products, feedback
# ---------------------------------------------------------------------------


def test_customer_dedupe_key_priority() -> None:
    result = run(
        CUSTOMERS,
        [
            {"crm_id": "C1", "phone": "13800138000", "email": "a@b.cn"},
            {"phone": "138 0013 8000", "email": "a@b.cn", "device_id": "D"},
            {"email": "A@B.cn", "wechat_openid": "o1", "wechat_unionid": "u1"},
            {"wechat_openid": "o1", "device_id": "D"},
            {"device_id": "D"},
            {"user_id": "13800138000"},
        ],
    )
    assert result.accepted[DEDUPE_KEY].to_list() == [
        "crm_id:C1",
        "phone:+8613800138000",
        "email:a@b.cn",
        "wechat_openid:o1",
        "device_id:D",
        "user_id:13800138000",
    ]
    assert result.duplicates_merged == 0


def test_customer_duplicates_are_merged_latest_non_null_wins() -> None:
    result = run(
        CUSTOMERS,
        [
            {"crm_id": "C1", "name": "张三", "phone": "13800138000", "city": "广州", "备注": "a"},
            {"crm_id": "C2", "name": "李四"},
            {"crm_id": "C1", "name": "张三丰", "city": None, "email": "z@s.cn", "备注": None},
            {"crm_id": "C1", "points": "10", "备注": "c"},
        ],
    )
    assert result.duplicates_merged == 2
    acc = result.accepted
    assert acc[RECORD].to_list() == [1, 2]
    first = acc.row(0, named=True)
    assert first["name"] == "张三丰"  # later value wins
    assert first["phone"] == "+8613800138000"  # earlier value fills the gap
    assert first["city"] == "广州"
    assert first["email"] == "z@s.cn"
    assert first["points"] == 10
    assert first[EXTRA] == {"备注": "c"}
    assert acc.row(1, named=True)[EXTRA] == {"备注": None}


def test_products_and_feedback_dedupe() -> None:
    products = run(
        PRODUCTS,
        [
            {"sku": "S1", "name": "A", "price": "10"},
            {"sku": "S1", "name": "A2", "brand": "B"},
            {"sku": "S2", "name": "C"},
        ],
    )
    assert products.duplicates_merged == 1
    assert products.accepted.select("sku", "name", "price", "brand").rows() == [
        ("S1", "A2", 10.0, "B"),
        ("S2", "C", None, None),
    ]
    base = {"crm_id": "C1", "kind": "complaint", "created_at": "2025-03-01 10:00"}
    feedback = run(
        FEEDBACK,
        [
            {**base, "feedback_id": "F1", "text": "坏了"},
            {**base, "feedback_id": "F1", "status": "已解决"},
        ],
    )
    assert feedback.duplicates_merged == 1
    row = feedback.accepted.row(0, named=True)
    assert (row["text"], row["status"]) == ("坏了", "resolved")


def test_duplicates_with_many_rows() -> None:
    n = 5000
    df = pl.DataFrame(
        {
            "crm_id": [f"C{i % 1000}" for i in range(n)],
            "points": [str(i) for i in range(n)],
        }
    )
    result = clean(df, CUSTOMERS)
    assert result.accepted.height == 1000
    assert result.duplicates_merged == n - 1000
    assert result.accepted["points"].to_list() == list(range(n - 1000, n))
    assert result.accepted[RECORD].to_list() == list(range(1, 1001))


@pytest.mark.parametrize("value", ["0001-01-01", "0001-01-01 00:00", "9999-12-31 23:00-05:00", "1899-12-31"])
def test_a_placeholder_date_time_is_invalid_not_a_crash(value: str) -> None:
    # before: 0001-01-01 (a CRM's "no date") moved to UTC became year 0: the feedback import failed
    # with a 500, and an imported customer's profile could no longer be read
    for schema, base in ((CUSTOMERS, {"crm_id": "C1"}),
                         (FEEDBACK, {"feedback_id": "F1", "crm_id": "C1", "kind": "review"})):
        field = "registered_at" if schema is CUSTOMERS else "created_at"
        rej = one_rejection(schema, {**base, field: value})
        assert rej.field == field and "1900-2200" in rej.reason and value in rej.reason, rej
    assert one_value(CUSTOMERS, "registered_at", "1950-01-02") == dt.datetime(1950, 1, 1, 16, tzinfo=UTC)
