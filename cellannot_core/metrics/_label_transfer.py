"""The label-transfer summary of DESIGN.md ("Metrics"), shared by tests, benchmarks and the app."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cellannot_core._constants import UNKNOWN, str_array
from cellannot_core.metrics._calibration import ece
from cellannot_core.metrics._classification import (
    accuracy,
    balanced_accuracy,
    macro_f1,
    median_f1,
)
from cellannot_core.metrics._ranking import auroc

__all__ = ["label_transfer_metrics", "per_type_ood_auroc", "LABEL_TRANSFER_KEYS"]

#: Keys of the dict returned by :func:`label_transfer_metrics`, in display order.
LABEL_TRANSFER_KEYS = (
    "acc_in",
    "f1_in",
    "ece_in",
    "auroc_ood",
    "acc_open",
    "reject_in",
    "reject_novel",
    "n_in",
    "n_novel",
    "balanced_acc_in",
    "median_f1_in",
)


def _str_labels(x: ArrayLike) -> np.ndarray:
    return str_array(x)


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def label_transfer_metrics(
    true_labels: ArrayLike,
    label_raw: ArrayLike,
    label_final: ArrayLike,
    confidence: ArrayLike,
    ood_score: ArrayLike,
    classes: Sequence[Any],
    *,
    n_bins: int = 15,
) -> dict[str, float | int]:
    """Every label-transfer figure of DESIGN.md for one annotated query.

    In-distribution cells are those whose true label is one of ``classes`` (the reference
    classes); all other cells are novel.  Labels are compared as strings.

    Parameters
    ----------
    true_labels
        The query's ground-truth labels.
    label_raw
        Most probable reference class (``obs['cellannot_label_raw']``).
    label_final
        Final label, ``Unknown`` when rejected (``obs['cellannot_label']``).
    confidence
        Calibrated max class probability in [0, 1].
    ood_score
        Higher = more likely a novel type.
    classes
        The reference classes.
    n_bins
        Bins of ``ece_in``.

    Returns
    -------
    dict
        ``acc_in``
            accuracy of ``label_raw`` on in-distribution cells;
        ``f1_in``
            macro F1 of ``label_raw`` there, averaged over the classes present in the truth;
        ``ece_in``
            ECE (``n_bins`` equal-width bins) of ``confidence`` vs correctness of ``label_raw``
            on in-distribution cells;
        ``auroc_ood``
            ROC AUC of ``ood_score``, novel = positive (``nan`` without novel cells);
        ``acc_open``
            accuracy of ``label_final`` against the truth with novel cells' truth ``Unknown``;
        ``reject_in`` / ``reject_novel``
            fraction of in-distribution / novel cells whose final label is ``Unknown``
            (``nan`` when the group is empty);
        ``n_in`` / ``n_novel``
            cell counts;
        ``balanced_acc_in``
            balanced accuracy of ``label_raw`` on in-distribution cells;
        ``median_f1_in``
            median per-class F1 (Abdelaal et al. 2019) of ``label_raw`` on in-distribution
            cells (``label_raw`` is never ``Unknown``, so no cell is excluded).

        Figures over an empty group are ``nan``.  Keys are :data:`LABEL_TRANSFER_KEYS`.
    """
    truth = _str_labels(true_labels)
    raw = _str_labels(label_raw)
    final = _str_labels(label_final)
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    ood = np.asarray(ood_score, dtype=float).reshape(-1)
    n = truth.size
    for name, arr in (("label_raw", raw), ("label_final", final), ("confidence", conf), ("ood_score", ood)):
        if arr.size != n:
            raise ValueError(f"{name} has {arr.size} entries but true_labels has {n}")
    class_set = [str(c) for c in classes]

    is_in = np.isin(truth, class_set)
    t_in, r_in = truth[is_in], raw[is_in]
    correct_in = r_in == t_in
    truth_open = np.where(is_in, truth, UNKNOWN)
    called_unknown = final == UNKNOWN

    out: dict[str, float | int] = {
        "acc_in": accuracy(t_in, r_in),
        "f1_in": macro_f1(t_in, r_in),
        "ece_in": ece(conf[is_in], correct_in, n_bins=n_bins),
        "auroc_ood": auroc(ood, ~is_in),
        "acc_open": accuracy(truth_open, final),
        "reject_in": _fraction(called_unknown[is_in]),
        "reject_novel": _fraction(called_unknown[~is_in]),
        "n_in": int(is_in.sum()),
        "n_novel": int((~is_in).sum()),
        "balanced_acc_in": balanced_accuracy(t_in, r_in),
        "median_f1_in": median_f1(t_in, r_in),
    }
    return out


def per_type_ood_auroc(
    true_labels: ArrayLike,
    ood_score: ArrayLike,
    classes: Sequence[Any],
) -> dict[str, float]:
    """ROC AUC of ``ood_score`` for each novel type against all in-distribution cells.

    Parameters
    ----------
    true_labels
        The query's ground-truth labels.
    ood_score
        Higher = more likely a novel type.
    classes
        The reference classes; every other true label is a novel type.

    Returns
    -------
    dict
        ``{novel_type: auroc}`` in sorted order (``nan`` when there are no in-distribution
        cells); empty when the query has no novel type.
    """
    truth = _str_labels(true_labels)
    ood = np.asarray(ood_score, dtype=float).reshape(-1)
    if ood.size != truth.size:
        raise ValueError(f"ood_score has {ood.size} entries but true_labels has {truth.size}")
    is_in = np.isin(truth, [str(c) for c in classes])
    out: dict[str, float] = {}
    for novel in sorted(set(truth[~is_in].tolist())):
        sel = is_in | (truth == novel)
        out[novel] = auroc(ood[sel], truth[sel] == novel)
    return out
