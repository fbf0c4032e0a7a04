"""Classification metrics on label arrays: accuracy, balanced accuracy, macro and median F1.

Arrays in, numbers out.  Empty inputs give ``nan`` instead of raising so that summaries over
subsets (e.g. "in-distribution cells" when there are none) stay well defined.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from cellannot_core._constants import UNKNOWN, str_array

__all__ = ["accuracy", "balanced_accuracy", "macro_f1", "median_f1", "per_class_f1"]


def _as_labels(x: ArrayLike) -> np.ndarray:
    """Return a 1-D object array of labels (pandas Categorical/Series, lists, arrays)."""
    arr = np.asarray(x, dtype=object)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


def _check_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true), _as_labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return t, p


def _sorted_unique(x: np.ndarray) -> list[Any]:
    """Unique labels in a stable, type-tolerant order (str sort key)."""
    return sorted(set(x.tolist()), key=lambda v: (str(type(v)), str(v)))


def _coded(*arrays: ArrayLike) -> list[np.ndarray]:
    """Each label array as int codes into one vocabulary of their str forms: scikit-learn makes fixed-width
    arrays of labels, each as wide as the longest (one 100,000-character label among 200 cells: 84 MB)."""
    flat = [str_array(a) for a in arrays]
    _, inv = np.unique(np.concatenate(flat), return_inverse=True)
    return np.split(inv.reshape(-1), np.cumsum([a.size for a in flat])[:-1])


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of cells whose predicted label equals the true label.

    Parameters
    ----------
    y_true, y_pred
        Label arrays of equal length.

    Returns
    -------
    float
        Accuracy in [0, 1]; ``nan`` for empty input.
    """
    t, p = _check_pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(accuracy_score(t, p))


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn definition).

    Predicted labels absent from the truth (e.g. ``Unknown``) count as errors.

    Returns
    -------
    float
        Balanced accuracy in [0, 1]; ``nan`` for empty input.
    """
    t, p = _check_pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected (Unknown, absent classes).
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(*_coded(t, p)))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, *, labels: ArrayLike | None = None) -> float:
    """Unweighted mean of per-class F1 scores.

    Parameters
    ----------
    y_true, y_pred
        Label arrays of equal length.
    labels
        Classes to average over.  Default: the classes present in ``y_true`` (so a predicted
        class that never occurs in the truth, such as ``Unknown``, lowers the precision of
        nothing and adds no zero term, while cells predicted as it still count as misses).

    Returns
    -------
    float
        Macro F1 in [0, 1]; classes never predicted score 0; ``nan`` for empty input.
    """
    t, p = _check_pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    labs = _sorted_unique(t) if labels is None else list(_as_labels(labels))
    if not labs:
        return float("nan")
    ti, pi, li = _coded(t, p, [str(v) for v in labs])
    return float(f1_score(ti, pi, labels=li, average="macro", zero_division=0))


def per_class_f1(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    unknown: str | None = UNKNOWN,
) -> dict[str, float]:
    """Per true class F1 following Abdelaal et al. (2019), *Genome Biology* 20:194.

    Cells predicted ``unknown`` are dropped before the confusion matrix is built (as the
    benchmark's ``evaluate.R`` does with ``table(..., exclude=...)``), so rejection neither
    lowers precision nor recall; a class that is never predicted (among the remaining cells)
    scores 0.  Cells whose *true* label is ``unknown`` are ignored.

    Parameters
    ----------
    y_true, y_pred
        Label arrays of equal length.
    unknown
        The rejection label; ``None`` disables the exclusion.

    Returns
    -------
    dict
        ``{class: f1}`` for every class present in ``y_true`` (as strings, sorted).
    """
    t, p = _check_pair(y_true, y_pred)
    t, p = str_array(t), str_array(p)
    classes = sorted(set(t.tolist()) - ({unknown} if unknown is not None else set()))
    if not classes:
        return {}
    keep = np.ones(t.shape, dtype=bool) if unknown is None else (p != unknown) & (t != unknown)
    if not keep.any():
        return {c: 0.0 for c in classes}
    ti, pi, ci = _coded(t, p, classes)
    f1 = f1_score(ti[keep], pi[keep], labels=ci, average=None, zero_division=0)
    return {c: float(v) for c, v in zip(classes, f1)}


def median_f1(y_true: ArrayLike, y_pred: ArrayLike, *, unknown: str | None = UNKNOWN) -> float:
    """Median over true classes of the Abdelaal per-class F1 (see :func:`per_class_f1`).

    Returns
    -------
    float
        Median F1 in [0, 1]; ``nan`` when there is no (non-Unknown) true class.
    """
    f1 = per_class_f1(y_true, y_pred, unknown=unknown)
    if not f1:
        return float("nan")
    return float(np.median(list(f1.values())))
