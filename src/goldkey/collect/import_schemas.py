"""Declarative schemas of the record kinds Goldkey imports from files.

Each :class:`ImportSchema` lists the fields a kind of record may carry, their
types (which decide how :func:`goldkey.collect.cleaning.clean` parses and
validates them), which fields are required, which fields identify a customer,
and the de-duplication key.

The schemas are pure data: nothing here touches storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "FieldType",
    "FieldSpec",
    "ImportSchema",
    "SCHEMAS",
    "CUSTOMERS",
    "ORDERS",
    "PRODUCTS",
    "FEEDBACK",
    "DEDUPE_KEY",
    "LINE_NO",
    "EXTRA",
    "RECORD",
]

#: Column holding the 1-based data-row number (added by ``read_table``).
RECORD = "__record"
#: Column holding the unmapped source columns of a customer row.
EXTRA = "extra"
#: Column computed for customers: "<identifier field>:<value>" of the first
#: identifier present, in priority order.
DEDUPE_KEY = "__dedupe_key"
#: Column computed for orders: 1-based position of the line within its order
#: (file order, after exact duplicate lines are dropped).
LINE_NO = "line_no"


class FieldType(StrEnum):
    """How a field's text is parsed and what type it has once cleaned."""

    STRING = "string"  #: stripped text (pl.Utf8)
    PHONE = "phone"  #: E.164 phone number text, e.g. "+8613800138000"
    EMAIL = "email"  #: lower-cased e-mail address text
    DATE = "date"  #: pl.Date
    DATETIME = "datetime"  #: pl.Datetime("us", "UTC")
    AMOUNT = "amount"  #: pl.Float64 rounded to 2 decimals
    INT = "int"  #: pl.Int64
    REGION = "region"  #: standard province-level name when recognised (pl.Utf8)
    ENUM = "enum"  #: one of FieldSpec.choices (pl.Utf8)
    IDENTIFIER = "identifier"  #: an opaque id, stripped text (pl.Utf8)


@dataclass(frozen=True)
class FieldSpec:
    """One importable field.

    Attributes:
        name: canonical field name (the column name after mapping).
        type: how the value is parsed.
        required: a row without a value is rejected.
        choices: allowed canonical values of an ENUM field.
        help: a one-line description for UIs and docs.
        synonyms: extra accepted spellings of ENUM values, as (spelling,
            canonical choice) pairs; matching is case-insensitive.
        default: text used when the cell is empty (parsed like user input).
        min_value / max_value: inclusive bounds of an INT field.
    """

    name: str
    type: FieldType
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    synonyms: tuple[tuple[str, str], ...] = ()
    default: str | None = None
    min_value: int | None = None
    max_value: int | None = None


@dataclass(frozen=True)
class ImportSchema:
    """The fields, identifiers and de-duplication key of one record kind.

    Attributes:
        kind: "customers", "orders", "products" or "feedback".
        fields: the fields, in the order checks are made and columns output.
        key: the columns identifying one record after cleaning (may name
            computed columns: ``__dedupe_key`` for customers, ``line_no`` for
            orders).
        identifier_fields: fields identifying the customer; when non-empty, a
            row must have at least one of them.  For customers the order is
            the de-duplication priority.
        help: a one-line description.
    """

    kind: str
    fields: tuple[FieldSpec, ...]
    key: tuple[str, ...]
    identifier_fields: tuple[str, ...] = ()
    help: str = ""

    def field(self, name: str) -> FieldSpec:
        """Return the field called *name*; raises KeyError when there is none."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def field_names(self) -> tuple[str, ...]:
        """Return the field names in schema order."""
        return tuple(f.name for f in self.fields)

    @property
    def keeps_extra(self) -> bool:
        """True when unmapped source columns are kept in an ``extra`` column."""
        return self.kind == "customers"


_GENDER_SYNONYMS = (
    ("男", "male"),
    ("男性", "male"),
    ("男士", "male"),
    ("先生", "male"),
    ("m", "male"),
    ("man", "male"),
    ("女", "female"),
    ("女性", "female"),
    ("女士", "female"),
    ("f", "female"),
    ("woman", "female"),
    ("未知", "unknown"),
    ("保密", "unknown"),
    ("u", "unknown"),
)

_FEEDBACK_KIND_SYNONYMS = (
    ("投诉", "complaint"),
    ("投訴", "complaint"),
    ("咨询", "consultation"),
    ("諮詢", "consultation"),
    ("评价", "review"),
    ("評價", "review"),
    ("评论", "review"),
    ("評論", "review"),
    ("問卷", "survey"),
    ("问卷", "survey"),
    ("调查", "survey"),
    ("調查", "survey"),
    ("调研", "survey"),
    ("調研", "survey"),
)

_FEEDBACK_STATUS_SYNONYMS = (
    ("未解决", "open"),
    ("未解決", "open"),
    ("待处理", "open"),
    ("待處理", "open"),
    ("处理中", "open"),
    ("處理中", "open"),
    ("已解决", "resolved"),
    ("已解決", "resolved"),
    ("已处理", "resolved"),
    ("已處理", "resolved"),
    ("已关闭", "resolved"),
    ("已關閉", "resolved"),
    ("closed", "resolved"),
)

_CONSENT_SYNONYMS = tuple((v, "granted") for v in (
    "true", "yes", "y", "1", "opted_in", "opt_in", "subscribed", "同意", "是", "已同意", "接收", "订阅")) + tuple(
    (v, "denied") for v in ("false", "no", "n", "0", "opted_out", "opt_out", "unsubscribed", "拒绝", "否", "不同意",
                            "不接收", "退订"))
#: consent columns of a customers file: marketing consent per channel (govern.consent.CHANNELS)
CONSENT_FIELDS = {f"consent_{ch}": ch for ch in ("sms", "email", "wechat", "push", "call", "mail")}

_T = FieldType

CUSTOMERS = ImportSchema(
    kind="customers",
    fields=(
        FieldSpec("crm_id", _T.IDENTIFIER, help="customer id in the CRM"),
        FieldSpec("user_id", _T.IDENTIFIER, help="user id in an app or web shop"),
        FieldSpec("phone", _T.PHONE, help="mobile or fixed-line number"),
        FieldSpec("email", _T.EMAIL, help="e-mail address"),
        FieldSpec("wechat_openid", _T.IDENTIFIER, help="WeChat OpenID"),
        FieldSpec("wechat_unionid", _T.IDENTIFIER, help="WeChat UnionID"),
        FieldSpec("device_id", _T.IDENTIFIER, help="device id (IDFA, OAID, ...)"),
        FieldSpec("name", _T.STRING, help="name"),
        FieldSpec(
            "gender",
            _T.ENUM,
            choices=("male", "female", "unknown"),
            synonyms=_GENDER_SYNONYMS,
            help="male / female / unknown (男 / 女 / M / F accepted)",
        ),
        FieldSpec("birthday", _T.DATE, help="date of birth"),
        FieldSpec("region", _T.REGION, help="province-level region"),
        FieldSpec("city", _T.STRING, help="city"),
        FieldSpec("member_tier", _T.STRING, help="membership tier"),
        FieldSpec("points", _T.INT, help="loyalty points balance"),
        FieldSpec("registered_at", _T.DATETIME, help="registration time"),
        FieldSpec("store", _T.STRING, help="home store"),
        FieldSpec("plan", _T.STRING, help="telecom plan name"),
        FieldSpec("plan_data_mb", _T.INT, min_value=0, help="data allowance of the plan, MB"),
        FieldSpec("monthly_fee", _T.AMOUNT, help="monthly fee of the plan"),
        FieldSpec("handset", _T.STRING, help="handset model"),
        FieldSpec("handset_bought_at", _T.DATE, help="date the handset was bought"),
        FieldSpec("balance", _T.AMOUNT, help="account balance"),
        *(FieldSpec(name, _T.ENUM, choices=("granted", "denied"), synonyms=_CONSENT_SYNONYMS,
                    help=f"marketing consent for {ch}: granted / denied (是 / 否, Y / N, 同意 / 拒绝, 退订 ...)")
          for name, ch in CONSENT_FIELDS.items()),
        FieldSpec("consent_updated_at", _T.DATETIME,
                  help="when the consent columns were decided (default: the import time for a denial, "
                       "registered_at, else the import time, for a grant)"),
    ),
    key=(DEDUPE_KEY,),
    identifier_fields=(
        "crm_id",
        "user_id",
        "phone",
        "email",
        "wechat_unionid",
        "wechat_openid",
        "device_id",
    ),
    help="customer master data; one row per customer",
)

ORDERS = ImportSchema(
    kind="orders",
    fields=(
        FieldSpec("order_id", _T.IDENTIFIER, required=True, help="order number"),
        FieldSpec("ordered_at", _T.DATETIME, required=True, help="order time"),
        FieldSpec("crm_id", _T.IDENTIFIER, help="customer id in the CRM"),
        FieldSpec("user_id", _T.IDENTIFIER, help="user id in an app or web shop"),
        FieldSpec("phone", _T.PHONE, help="customer phone"),
        FieldSpec("email", _T.EMAIL, help="customer e-mail"),
        FieldSpec("sku", _T.IDENTIFIER, help="product SKU"),
        FieldSpec("product_name", _T.STRING, help="product name"),
        FieldSpec("category", _T.STRING, help="product category"),
        FieldSpec("quantity", _T.INT, default="1", help="quantity (default 1)"),
        FieldSpec("unit_price", _T.AMOUNT, help="unit price"),
        FieldSpec(
            "line_amount",
            _T.AMOUNT,
            help="line total; quantity x unit_price when empty",
        ),
        FieldSpec("currency", _T.STRING, default="CNY", help="ISO 4217 currency (default CNY)"),
        FieldSpec("channel", _T.STRING, help="sales channel"),
        FieldSpec("store", _T.STRING, help="store"),
        FieldSpec("region", _T.REGION, help="province-level region"),
        FieldSpec("status", _T.STRING, help="order status; 'refund' allows negative amounts"),
    ),
    key=("order_id", "sku", LINE_NO),
    identifier_fields=("crm_id", "user_id", "phone", "email"),
    help="order lines; one row per order line",
)

PRODUCTS = ImportSchema(
    kind="products",
    fields=(
        FieldSpec("sku", _T.IDENTIFIER, required=True, help="product SKU"),
        FieldSpec("name", _T.STRING, required=True, help="product name"),
        FieldSpec("category", _T.STRING, help="category"),
        FieldSpec("subcategory", _T.STRING, help="subcategory"),
        FieldSpec("brand", _T.STRING, help="brand"),
        FieldSpec("price", _T.AMOUNT, help="list price"),
        FieldSpec("qr_code", _T.STRING, help="QR code content"),
        FieldSpec("launched_at", _T.DATE, help="launch date"),
    ),
    key=("sku",),
    help="product catalogue; one row per SKU",
)

FEEDBACK = ImportSchema(
    kind="feedback",
    fields=(
        FieldSpec("feedback_id", _T.IDENTIFIER, required=True, help="feedback id"),
        FieldSpec("crm_id", _T.IDENTIFIER, help="customer id in the CRM"),
        FieldSpec("user_id", _T.IDENTIFIER, help="user id in an app or web shop"),
        FieldSpec("phone", _T.PHONE, help="customer phone"),
        FieldSpec("email", _T.EMAIL, help="customer e-mail"),
        FieldSpec(
            "kind",
            _T.ENUM,
            required=True,
            choices=("complaint", "consultation", "review", "survey"),
            synonyms=_FEEDBACK_KIND_SYNONYMS,
            help="complaint / consultation / review / survey (投诉 / 咨询 / 评价 / 问卷)",
        ),
        FieldSpec("channel", _T.STRING, help="channel"),
        FieldSpec("topic", _T.STRING, help="topic"),
        FieldSpec("text", _T.STRING, help="free text"),
        FieldSpec("rating", _T.INT, min_value=1, max_value=5, help="rating 1..5"),
        FieldSpec("question", _T.STRING, help="survey question"),
        FieldSpec("answer", _T.STRING, help="survey answer"),
        FieldSpec("created_at", _T.DATETIME, required=True, help="creation time"),
        FieldSpec(
            "status",
            _T.ENUM,
            choices=("open", "resolved"),
            synonyms=_FEEDBACK_STATUS_SYNONYMS,
            default="open",
            help="open / resolved (default open; 未解决 / 已解决 accepted)",
        ),
    ),
    key=("feedback_id",),
    identifier_fields=("crm_id", "user_id", "phone", "email"),
    help="complaints, consultations, reviews and survey answers",
)

SCHEMAS: dict[str, ImportSchema] = {s.kind: s for s in (CUSTOMERS, ORDERS, PRODUCTS, FEEDBACK)}
