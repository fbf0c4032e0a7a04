"""Metrics: arrays in, numbers out (definitions in DESIGN.md, "Metrics").

scikit-learn computes what it has (accuracy, F1, ROC AUC, silhouette); ECE, the reliability
curve, the accuracy-coverage curve and the label-transfer summary are written here.
"""
from __future__ import annotations

from cellannot_core.metrics._calibration import RELIABILITY_COLUMNS, ece, reliability_curve
from cellannot_core.metrics._classification import (
    accuracy,
    balanced_accuracy,
    macro_f1,
    median_f1,
    per_class_f1,
)
from cellannot_core.metrics._label_transfer import (
    LABEL_TRANSFER_KEYS,
    label_transfer_metrics,
    per_type_ood_auroc,
)
from cellannot_core.metrics._latent import (MIXED_ENOUGH, active_dims, asw, dataset_mixing, generated_placement,
                                            latent_quality)
from cellannot_core.metrics._ranking import accuracy_coverage_curve, auroc

__all__ = [
    "LABEL_TRANSFER_KEYS",
    "RELIABILITY_COLUMNS",
    "accuracy",
    "accuracy_coverage_curve",
    "active_dims",
    "asw",
    "generated_placement",
    "dataset_mixing",
    "MIXED_ENOUGH",
    "auroc",
    "balanced_accuracy",
    "ece",
    "label_transfer_metrics",
    "latent_quality",
    "macro_f1",
    "median_f1",
    "per_class_f1",
    "per_type_ood_auroc",
    "reliability_curve",
]
