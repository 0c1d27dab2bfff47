"""Evaluation metrics against independent computations, and the lift table on hand-checked data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from goldkey.core.errors import InvalidInput
from goldkey.insight.evaluation import evaluate, format_lift_table, lift_table


def _auc_by_pairs(y: np.ndarray, p: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ordered right, ties counting one half."""
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (pos.size * neg.size)


def _average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of the precision at the rank of each positive (distinct scores)."""
    order = np.argsort(-p)
    hits = np.cumsum(y[order])
    ranks = np.arange(1, y.size + 1)
    return float(np.sum((hits / ranks)[y[order] == 1]) / y.sum())


def test_metrics_match_independent_computations() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    p = p + np.arange(300) * 1e-9  # distinct scores for the average precision reference
    got = evaluate(y, p)
    assert got["n"] == 300 and got["positives"] == int(y.sum())
    assert got["base_rate"] == pytest.approx(y.mean())
    assert got["auc"] == pytest.approx(_auc_by_pairs(y, p), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(_average_precision(y, p), abs=1e-12)
    assert got["brier"] == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12)
    assert got["top_decile_lift"] == got["lift_table"][0]["lift"]


def test_lift_table_on_a_hand_checked_example() -> None:
    # 20 customers, 5 positives, scores 20..1 (descending = input order): positives at ranks 1, 2, 3, 7, 20
    y = np.zeros(20, dtype=int)
    y[[0, 1, 2, 6, 19]] = 1
    p = (20 - np.arange(20)) / 20
    t = lift_table(y, p)
    assert [r["customers"] for r in t] == [2] * 10
    assert [r["positives"] for r in t] == [2, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    assert t[0]["rate"] == 1.0 and t[0]["lift"] == pytest.approx(4.0)  # base rate 0.25
    assert t[1]["lift"] == pytest.approx(2.0) and t[2]["lift"] == 0.0
    assert [r["cumulative_positives"] for r in t] == [2, 3, 3, 4, 4, 4, 4, 4, 4, 5]
    assert t[1]["cumulative_gain_pct"] == pytest.approx(60.0) and t[-1]["cumulative_gain_pct"] == pytest.approx(100.0)
    assert t[1]["cumulative_lift"] == pytest.approx((3 / 4) / 0.25)
    assert t[-1]["cumulative_lift"] == pytest.approx(1.0)
    assert t[0]["max_score"] == 1.0 and t[-1]["min_score"] == pytest.approx(0.05)
    text = format_lift_table(t)
    assert text.splitlines()[0].split()[:2] == ["decile", "customers"] and len(text.splitlines()) == 11


def test_uneven_deciles_and_ties_shared_across_deciles() -> None:
    y = np.array([1, 0] * 11 + [1])  # 23 customers
    p = np.full(23, 0.5)  # all tied: no order among them
    t = lift_table(y, p)
    assert [r["customers"] for r in t] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert sum(r["positives"] for r in t) == pytest.approx(12, abs=0.01)  # each rounded to 3 decimals
    assert t[0]["positives"] == pytest.approx(3 * 12 / 23, abs=0.001)  # not whatever the input order put first
    assert all(r["lift"] == pytest.approx(1.0) for r in t)  # a score with no information lifts nothing
    quint = lift_table(y, p, groups=5)
    assert [r["customers"] for r in quint] == [5, 5, 5, 4, 4]


def test_the_input_order_never_changes_the_table() -> None:
    rng = np.random.default_rng(3)
    p = np.round(rng.uniform(size=200), 1)  # 11 levels: ties cross the decile boundaries
    y = (rng.uniform(size=200) < p).astype(int)
    ref = lift_table(y, p)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(200)
        got = lift_table(y[perm], p[perm])
        for a, b in zip(ref, got, strict=True):
            assert a["positives"] == pytest.approx(b["positives"]) and a["lift"] == pytest.approx(b["lift"])
    assert ref[-1]["cumulative_positives"] == y.sum() and ref[-1]["cumulative_gain_pct"] == pytest.approx(100)
    # a tie inside one decile is counted as it is: whole positives there
    t = lift_table([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert [r["positives"] for r in t] == [1, 1, 0, 0, 1, 0, 0, 0, 0, 0] and isinstance(t[0]["positives"], int)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "no labelled customers"),
        ([1, 0, 1], [0.2, 0.4], "3 labels but 2 scores"),
        ([1, 1, 1], [0.2, 0.4, 0.9], "every label is 1"),
        ([0, 0], [0.2, 0.4], "every label is 0"),
        ([1, 0, 2], [0.2, 0.4, 0.5], "labels must be 0 or 1"),
        ([1, 0], [0.2, 1.5], "probabilities between 0 and 1"),
        ([1, 0], [0.2, float("nan")], "probabilities between 0 and 1"),
    ],
)
def test_bad_input_is_a_clear_error(y: list[float], p: list[float], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        evaluate(y, p)


def test_more_groups_than_customers_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot cut 3 customers into 10 groups"):
        lift_table([1, 0, 1], [0.9, 0.1, 0.5])
