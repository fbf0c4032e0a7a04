"""Score-ranking metrics: ROC AUC and the accuracy-coverage (selective prediction) curve."""
from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

__all__ = ["auroc", "accuracy_coverage_curve"]


def auroc(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for separating positives from negatives.

    Parameters
    ----------
    scores
        Higher = more likely positive (e.g. an OOD score with novel cells positive).
    is_positive
        Boolean (or 0/1) ground truth.

    Returns
    -------
    float
        ROC AUC in [0, 1] (scikit-learn, ties count one half); ``nan`` when only one class is
        present (or the input is empty) instead of raising.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    y = np.asarray(is_positive).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and is_positive differ in length: {s.size} vs {y.size}")
    if s.size == 0 or y.all() or not y.any():
        return float("nan")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return float(roc_auc_score(y, s))


def accuracy_coverage_curve(
    confidence_or_score: ArrayLike,
    correct: ArrayLike,
    *,
    higher_is_confident: bool = True,
) -> pd.DataFrame:
    """Accuracy of the cells kept when only cells at least as confident as a threshold are kept.

    Sweeping the threshold from the most to the least confident value traces coverage (the
    fraction of cells kept) against the accuracy among them.  Tied scores enter together, so
    there is one row per distinct score value.

    Parameters
    ----------
    confidence_or_score
        Per-cell confidence (higher = keep first).  For an OOD score (higher = more novel)
        pass ``higher_is_confident=False``.
    correct
        Whether each prediction was right (bool or 0/1).
    higher_is_confident
        Direction of ``confidence_or_score``.

    Returns
    -------
    pandas.DataFrame
        Columns ``threshold`` (in the units of ``confidence_or_score``), ``coverage``
        (increasing, ending at 1), ``accuracy`` and ``n_kept``.  Empty input gives an empty
        frame.
    """
    s = np.asarray(confidence_or_score, dtype=float).reshape(-1)
    c = np.asarray(correct).reshape(-1).astype(float)
    if s.shape != c.shape:
        raise ValueError(f"scores and correct differ in length: {s.size} vs {c.size}")
    cols = ["threshold", "coverage", "accuracy", "n_kept"]
    if s.size == 0:
        return pd.DataFrame({k: pd.Series(dtype=float) for k in cols})
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    key = s if higher_is_confident else -s
    order = np.argsort(-key, kind="stable")
    key_sorted = key[order]
    cum_correct = np.cumsum(c[order])
    # last position of every run of tied scores
    last = np.r_[np.nonzero(np.diff(key_sorted))[0], key_sorted.size - 1]
    n_kept = last + 1
    return pd.DataFrame(
        {
            "threshold": s[order][last],
            "coverage": n_kept / s.size,
            "accuracy": cum_correct[last] / n_kept,
            "n_kept": n_kept.astype(np.int64),
        },
        columns=cols,
    )
