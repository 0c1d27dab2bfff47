"""Which orders are purchases: the one rule every model that counts purchases follows.

An order whose status says it was refunded or cancelled is no purchase: it does not make a customer
active (churn labels, lifecycle), is no "bought category X" (propensity targets), and counts in no
frequency, recency or monetary value (RFM, CLV, features, clusters, recommendations). Statuses are
compared lower-cased and trimmed, so ``Refunded``, ``退款`` and ``cancelled `` are all caught; a
definition's ``exclude_statuses`` adds more (``unpaid``, say) to these.
"""

from __future__ import annotations

from collections.abc import Iterable

from goldkey.collect.cleaning import REFUND_STATUSES

CANCELLED_STATUSES = ("cancelled", "canceled", "cancel", "void", "voided", "取消", "已取消", "作废", "已作废",
                      "交易关闭")
EXCLUDE_STATUSES_DOC = "order statuses that do not count, besides refunds and cancellations (always left out; any case)"
NOT_PURCHASES = frozenset(s.strip().lower() for s in (*REFUND_STATUSES, *CANCELLED_STATUSES))


def excluded_statuses(extra: Iterable[str] = ()) -> list[str]:
    """The lower-cased statuses of orders that are no purchase: refunds, cancellations and ``extra``."""
    return sorted(NOT_PURCHASES | {s.strip().lower() for s in extra if s and s.strip()})


def status_filter(column: str = "status", placeholder: str = "?") -> str:
    """SQL (DuckDB) true for an order that is a purchase, given ``excluded_statuses()`` as the
    parameter ``placeholder``."""
    return f"NOT list_contains({placeholder}, lower(trim(coalesce({column}, ''))))"
