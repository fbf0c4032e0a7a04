"""Plotly figure builders: each returns a ``go.Figure`` and never shows it.

Every figure uses the ``plotly_white`` template and a colour-blind-friendly categorical
palette (Okabe-Ito, then Paul Tol's sets); ``Unknown`` is always grey (:data:`UNKNOWN_COLOR`).
"""
from __future__ import annotations

from cellannot_core.plots._heatmap import contingency_table, label_heatmap
from cellannot_core.plots._scatter import latent_scatter, subsample_indices
from cellannot_core.plots._scores import (
    accuracy_coverage_figure,
    reliability_diagram,
    roc_curve_figure,
    score_histogram,
)
from cellannot_core.plots._style import (
    PALETTE,
    TEMPLATE,
    UNKNOWN_COLOR,
    category_colors,
    category_order,
    every_tick,
)
from cellannot_core.plots._training import class_counts_bar, training_curves

__all__ = [
    "PALETTE",
    "TEMPLATE",
    "UNKNOWN_COLOR",
    "accuracy_coverage_figure",
    "category_colors",
    "category_order",
    "class_counts_bar",
    "contingency_table",
    "every_tick",
    "label_heatmap",
    "latent_scatter",
    "reliability_diagram",
    "roc_curve_figure",
    "score_histogram",
    "subsample_indices",
    "training_curves",
]
