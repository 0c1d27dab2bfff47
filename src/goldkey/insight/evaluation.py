"""Evaluation of a binary classifier's scores: AUC, PR-AUC, Brier score and the lift table.

- **AUC** (area under the ROC curve): the probability that a random positive scores above a random
  negative (0.5 = random order, 1 = perfect); ``sklearn.metrics.roc_auc_score``.
- **PR-AUC**: average precision, the area under the precision-recall curve
  (``sklearn.metrics.average_precision_score``); a random order scores the base rate.
- **Brier score**: the mean squared error of the probabilities, ``mean((p - y)^2)``; lower is
  better; it rewards calibrated probabilities, not only a good order (Brier, 1950).
- **Lift / cumulative gain by decile** (the marketing "gains chart", e.g. Ling & Li, KDD 1998):
  customers sorted by score, highest first, cut into ten groups of equal size (the first
  ``n % 10`` groups hold one customer more). Customers with equal scores have no order among
  them: when a tie spans several deciles, its positives are shared among them in proportion to the
  customers each takes from it (the expected count over every order of the tie), so the table never
  depends on the input order and a score with no information shows a lift of 1, not whatever the
  input order put first. Positives are then fractional where a tie is cut. Per decile:
  customers, positives, the positive rate, **lift** = rate / overall rate, and cumulatively from the
  top: **cumulative gain %** = share of all positives found so far, **cumulative lift** = rate so far
  / overall rate. A top-decile lift of 3 means contacting the 10% highest scores reaches three times
  as many positives as contacting 10% at random.

Every function returns plain dicts and lists of floats (JSON for the registry and the console).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from goldkey.core.errors import InvalidInput


def _check(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(scores, dtype=float).ravel()
    if y.size == 0:
        raise InvalidInput("nothing to evaluate: no labelled customers", field="labels")
    if y.size != p.size:
        raise InvalidInput(f"{y.size} labels but {p.size} scores", field="scores")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInput("labels must be 0 or 1", field="labels")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise InvalidInput("scores must be probabilities between 0 and 1", field="scores")
    if y.min() == y.max():
        raise InvalidInput(f"cannot evaluate: every label is {int(y[0])} (need both positives and negatives)",
                           field="labels")
    return y.astype(int), p


def _count(x: float) -> float | int:
    """A count of positives: an int when whole, else rounded to 3 decimals (a tie cut by a decile)."""
    r = round(x)
    return int(r) if abs(x - r) < 1e-9 else round(x, 3)


def lift_table(y_true: Any, scores: Any, groups: int = 10) -> list[dict[str, float | int]]:
    """The lift / cumulative gain table: one dict per group (decile by default), best scores first."""
    y, p = _check(y_true, scores)
    if groups < 1 or groups > y.size:
        raise InvalidInput(f"cannot cut {y.size} customers into {groups} groups", field="groups")
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order].astype(float)
    # each customer's expected label: the positive rate of its tie (equal scores)
    starts = np.r_[0, np.flatnonzero(np.diff(ps) != 0) + 1]
    sizes = np.diff(np.r_[starts, ps.size])
    expected = np.repeat(np.add.reduceat(ys, starts) / sizes, sizes)
    base = y.mean()
    total_pos = int(y.sum())
    rows: list[dict[str, float | int]] = []
    cum_n = 0
    cum_pos = 0.0
    for i, idx in enumerate(np.array_split(np.arange(ps.size), groups), start=1):
        n, pos = int(idx.size), float(expected[idx].sum())
        cum_n += n
        cum_pos += pos
        rate = pos / n
        rows.append({"decile": i, "customers": n, "positives": _count(pos), "rate": rate, "lift": rate / base,
                     "min_score": float(ps[idx].min()), "max_score": float(ps[idx].max()),
                     "cumulative_customers": cum_n, "cumulative_positives": _count(cum_pos),
                     "cumulative_gain_pct": 100.0 * cum_pos / total_pos,
                     "cumulative_lift": (cum_pos / cum_n) / base})
    return rows


def evaluate(y_true: Any, scores: Any, groups: int = 10) -> dict[str, Any]:
    """AUC, PR-AUC, Brier, the base rate, the top-decile lift and the lift table of ``scores``."""
    y, p = _check(y_true, scores)
    table = lift_table(y, p, groups)
    return {"n": int(y.size), "positives": int(y.sum()), "base_rate": float(y.mean()),
            "auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
            "brier": float(brier_score_loss(y, p)), "top_decile_lift": float(table[0]["lift"]),
            "lift_table": table}


def format_lift_table(table: list[dict[str, Any]]) -> str:
    """The lift table as fixed-width text (for the console and the docs)."""
    head = f"{'decile':>6} {'customers':>9} {'positives':>9} {'rate':>7} {'lift':>6} {'cum gain %':>10} {'cum lift':>8}"
    lines = [head]
    for r in table:
        lines.append(f"{r['decile']:>6} {r['customers']:>9} {r['positives']:>9} {r['rate']:>7.3f} {r['lift']:>6.2f} "
                     f"{r['cumulative_gain_pct']:>10.1f} {r['cumulative_lift']:>8.2f}")
    return "\n".join(lines)
