"""Calibration metrics: expected calibration error and the reliability curve.

Both use ``n_bins`` equal-width bins over [0, 1].  Bin ``b`` holds confidences in
``[b / n_bins, (b + 1) / n_bins)``; the last bin is closed on the right, so a confidence of
exactly 1.0 falls in the last bin and 0.0 in the first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = ["ece", "reliability_curve", "RELIABILITY_COLUMNS"]

#: Columns of the DataFrame returned by :func:`reliability_curve`.
RELIABILITY_COLUMNS = ("lower", "upper", "mean_confidence", "accuracy", "count")


def _check_conf_correct(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    corr = np.asarray(correct).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {corr.size}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidence must be finite and within [0, 1]")
    return conf, corr.astype(float)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of every confidence: ``[lo, hi)`` bins, the last one closed (1.0 -> last bin)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf, side="right")


def reliability_curve(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin mean confidence and accuracy (the data of a reliability diagram).

    Parameters
    ----------
    confidence
        Predicted confidence of every cell, in [0, 1].
    correct
        Whether each prediction was right (bool or 0/1).
    n_bins
        Number of equal-width bins over [0, 1].

    Returns
    -------
    pandas.DataFrame
        One row per bin (all ``n_bins`` rows, empty ones included) with columns ``lower``,
        ``upper``, ``mean_confidence``, ``accuracy`` (``nan`` in empty bins) and ``count``.
    """
    conf, corr = _check_conf_correct(confidence, correct)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, sum_corr / np.maximum(count, 1), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "mean_confidence": mean_conf,
            "accuracy": acc,
            "count": count,
        },
        columns=list(RELIABILITY_COLUMNS),
    )


def ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error, ``sum_b (n_b / N) |acc_b - conf_b|`` over equal-width bins.

    Parameters
    ----------
    confidence
        Predicted confidence of every cell, in [0, 1].
    correct
        Whether each prediction was right (bool or 0/1).
    n_bins
        Number of equal-width bins over [0, 1] (15 as in DESIGN.md and Guo et al. 2017).

    Returns
    -------
    float
        ECE in [0, 1]; ``nan`` for empty input.
    """
    curve = reliability_curve(confidence, correct, n_bins)
    n = int(curve["count"].sum())
    if n == 0:
        return float("nan")
    filled = curve[curve["count"] > 0]
    gap = np.abs(filled["accuracy"].to_numpy() - filled["mean_confidence"].to_numpy())
    return float(np.sum(filled["count"].to_numpy() / n * gap))
