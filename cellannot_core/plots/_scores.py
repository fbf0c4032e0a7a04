"""Calibration and score figures: reliability diagram, score histograms, ROC, accuracy-coverage."""
from __future__ import annotations

from typing import Mapping, Tuple, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from numpy.typing import ArrayLike
from plotly.subplots import make_subplots
from sklearn.metrics import roc_curve

from cellannot_core.metrics import accuracy_coverage_curve, auroc
from cellannot_core.plots._style import PALETTE, base_layout

__all__ = [
    "reliability_diagram",
    "score_histogram",
    "roc_curve_figure",
    "accuracy_coverage_figure",
]

Pair = Tuple[ArrayLike, ArrayLike]
PairOrDict = Union[ArrayLike, Mapping[str, Pair]]

_DIAGONAL = dict(color="#555555", dash="dash", width=1.5)


def _as_named_pairs(first: PairOrDict, second: ArrayLike | None, name: str) -> dict[str, Pair]:
    """Accept ``(values, labels)`` or ``{name: (values, labels)}``."""
    if isinstance(first, Mapping):
        if second is not None:
            raise ValueError("pass either a dict of (values, labels) pairs or two arrays, not both")
        return {str(k): (v[0], v[1]) for k, v in first.items()}
    if second is None:
        raise ValueError("the second array is required when the first argument is not a dict")
    return {name: (first, second)}


def _ece_from_curve(curve: pd.DataFrame) -> float:
    filled = curve[curve["count"] > 0]
    n = filled["count"].sum()
    if n == 0:
        return float("nan")
    gap = (filled["accuracy"] - filled["mean_confidence"]).abs()
    return float((filled["count"] / n * gap).sum())


def reliability_diagram(
    curves: Mapping[str, pd.DataFrame],
    eces: Mapping[str, float] | None = None,
    *,
    title: str | None = "Reliability diagram",
) -> go.Figure:
    """Accuracy vs mean confidence per bin for several curves, with a count histogram below.

    Parameters
    ----------
    curves
        ``{name: frame}`` from :func:`cellannot_core.metrics.reliability_curve`, e.g.
        ``"before temperature scaling"``, ``"after"``, ``"query"``.
    eces
        ``{name: ece}`` shown in the legend; missing names are computed from the curve
        (identical to :func:`cellannot_core.metrics.ece` for the same bins).
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        Row 1: the diagonal ("perfect calibration") then one line per curve (empty bins
        skipped).  Row 2: one bar trace per curve with the cell count of every bin.
        Trace order: diagonal, curve lines (in ``curves`` order), count bars.
    """
    eces = dict(eces or {})
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.04
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=_DIAGONAL, name="Perfect calibration",
                   hoverinfo="skip"),
        row=1, col=1,
    )
    bars = []
    for i, (name, curve) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        e = eces.get(name, _ece_from_curve(curve))
        label = f"{name} (ECE {e:.3f})" if np.isfinite(e) else f"{name} (ECE n/a)"
        filled = curve[curve["count"] > 0]
        fig.add_trace(
            go.Scatter(
                x=filled["mean_confidence"], y=filled["accuracy"], mode="lines+markers",
                name=label, legendgroup=name, line=dict(color=color, width=2), marker=dict(size=7),
                customdata=filled[["count", "lower", "upper"]].to_numpy(),
                hovertemplate=(
                    "bin %{customdata[1]:.2f}-%{customdata[2]:.2f}<br>mean confidence %{x:.3f}"
                    "<br>accuracy %{y:.3f}<br>cells %{customdata[0]:,}<extra>" + name + "</extra>"
                ),
            ),
            row=1, col=1,
        )
        centers = (curve["lower"] + curve["upper"]) / 2
        bars.append(
            go.Bar(
                x=centers, y=curve["count"], width=(curve["upper"] - curve["lower"]).to_numpy(),
                name=name, legendgroup=name, showlegend=False, marker=dict(color=color),
                opacity=0.45, hovertemplate="%{y:,} cells<extra>" + name + "</extra>",
            )
        )
    for bar in bars:
        fig.add_trace(bar, row=2, col=1)
    base_layout(fig, title=title, height=560, barmode="overlay",
                # below the plot, not over the curves (found 2026-12-07: it hid the low-confidence bins)
                legend=dict(orientation="h", x=0, y=-0.14, xanchor="left", yanchor="top"))
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(range=[0, 1], title_text="Confidence", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="Accuracy", row=1, col=1)
    fig.update_yaxes(title_text="Cells", row=2, col=1)
    return fig


#: Above this many values a histogram is binned on the server (:func:`score_histogram`).
HIST_RAW_MAX = 50_000


def score_histogram(
    scores: Mapping[str, ArrayLike],
    threshold: float | None = None,
    *,
    title: str | None = "Score distribution",
    x_title: str = "Score",
    nbins: int = 50,
    threshold_label: str = "threshold",
) -> go.Figure:
    """Overlaid histograms (each normalised to fractions) on shared bins, with a threshold line.

    Parameters
    ----------
    scores
        ``{name: values}``, e.g. ``{"reference validation": ..., "query": ...}`` or
        ``{"known types": ..., "novel types": ...}``.  Non-finite values are dropped.
    threshold
        Where to draw a dashed vertical line (e.g. the rejection threshold); ``None``: none.
    title, x_title
        Figure title and x-axis title.
    nbins
        Number of shared bins over the pooled range.
    threshold_label
        Text next to the line.

    Returns
    -------
    plotly.graph_objects.Figure
        One trace per entry: a ``go.Histogram`` (``histnorm="probability"``), or above
        :data:`HIST_RAW_MAX` values a ``go.Bar`` of the same fractions binned here, so a
        million cells do not travel to the browser; the threshold is a layout shape.
    """
    arrays = {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in scores.items()}
    arrays = {k: v[np.isfinite(v)] for k, v in arrays.items()}
    pooled = np.concatenate([v for v in arrays.values()] + [np.empty(0)])
    fig = go.Figure()
    xbins = None
    if pooled.size:
        lo, hi = float(pooled.min()), float(pooled.max())
        if threshold is not None and np.isfinite(threshold):
            lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
        if hi <= lo:
            hi = lo + 1.0
        size = (hi - lo) / max(int(nbins), 1)
        xbins = dict(start=lo, end=hi + 1e-9 * max(1.0, abs(hi)), size=size)
    for i, (name, v) in enumerate(arrays.items()):
        if v.size > HIST_RAW_MAX and xbins is not None:  # the same bins, counted here
            edges = np.arange(xbins["start"], xbins["end"] + xbins["size"], xbins["size"])
            counts, edges = np.histogram(v, bins=edges)
            fig.add_trace(go.Bar(
                x=(edges[:-1] + edges[1:]) / 2, y=counts / max(v.size, 1), width=xbins["size"],
                name=f"{name} (n={v.size:,})", marker=dict(color=PALETTE[i % len(PALETTE)]), opacity=0.55,
                hovertemplate="%{x}<br>%{y:.1%} of cells<extra>" + name + "</extra>"))
            continue
        fig.add_trace(
            go.Histogram(
                x=v, name=f"{name} (n={v.size:,})", histnorm="probability", xbins=xbins,
                autobinx=False if xbins else None, marker=dict(color=PALETTE[i % len(PALETTE)]),
                opacity=0.55, hovertemplate="%{x}<br>%{y:.1%} of cells<extra>" + name + "</extra>",
            )
        )
    if threshold is not None and np.isfinite(threshold):
        fig.add_vline(
            x=float(threshold), line=dict(color="#222222", dash="dash", width=2),
            annotation_text=f"{threshold_label} = {threshold:.3g}", annotation_position="top right",
        )
    base_layout(fig, title=title, barmode="overlay", height=420,
                xaxis_title=x_title, yaxis_title="Fraction of cells", yaxis_tickformat=".0%")
    return fig


def roc_curve_figure(
    scores: PairOrDict,
    is_positive: ArrayLike | None = None,
    *,
    name: str = "OOD score",
    title: str | None = "ROC curve",
) -> go.Figure:
    """ROC curve(s) with the AUROC in the legend.

    Parameters
    ----------
    scores
        Scores (higher = positive) with ``is_positive``; or ``{name: (scores, is_positive)}``
        for several curves.
    is_positive
        Ground truth when ``scores`` is an array.
    name
        Legend name of a single curve.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        The chance diagonal, then one line per curve that has both classes; a curve with a
        single class is replaced by a note ("AUROC n/a").
    """
    pairs = _as_named_pairs(scores, is_positive, name)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=_DIAGONAL, name="Chance",
                             hoverinfo="skip"))
    missing = []
    for i, (label, (s, y)) in enumerate(pairs.items()):
        s = np.asarray(s, dtype=float).reshape(-1)
        y = np.asarray(y).reshape(-1).astype(bool)
        auc = auroc(s, y)
        if not np.isfinite(auc):
            missing.append(label)
            continue
        fpr, tpr, thr = roc_curve(y, s)
        fig.add_trace(
            go.Scatter(
                x=fpr, y=tpr, mode="lines", name=f"{label} (AUROC {auc:.3f})",
                line=dict(color=PALETTE[i % len(PALETTE)], width=2.5), customdata=thr,
                hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.3g}"
                "<extra>" + label + "</extra>",
            )
        )
    if missing:
        fig.add_annotation(
            text="AUROC n/a (needs both positives and negatives): " + ", ".join(missing),
            xref="paper", yref="paper", x=0.98, y=0.02, xanchor="right", yanchor="bottom",
            showarrow=False, font=dict(color="#555555"),
        )
    base_layout(
        fig, title=title, height=460,
        xaxis=dict(title=dict(text="False positive rate"), range=[0, 1], constrain="domain"),
        yaxis=dict(title=dict(text="True positive rate"), range=[0, 1.02], scaleanchor="x", scaleratio=1),
        # below the axes: inside, it covered the curves on a narrow window
        legend=dict(orientation="h", x=0, y=-0.2, xanchor="left", yanchor="top"),
    )
    return fig


def accuracy_coverage_figure(
    confidence: PairOrDict,
    correct: ArrayLike | None = None,
    *,
    name: str = "Model",
    threshold: float | None = None,
    higher_is_confident: bool = True,
    title: str | None = "Accuracy vs coverage",
) -> go.Figure:
    """Accuracy of the kept cells against the fraction kept when rejecting the least confident.

    Parameters
    ----------
    confidence
        Per-cell confidence with ``correct``; or ``{name: (confidence, correct)}``.
    correct
        Whether each prediction was right, when ``confidence`` is an array.
    name
        Legend name of a single curve.
    threshold
        Mark the operating point of this threshold on every curve (cells with confidence
        >= threshold are kept; <= when ``higher_is_confident`` is False).
    higher_is_confident
        Direction of the score (False for OOD scores).
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        One line per curve (from :func:`cellannot_core.metrics.accuracy_coverage_curve`), then
        one marker per curve at ``threshold`` if given.
    """
    pairs = _as_named_pairs(confidence, correct, name)
    fig = go.Figure()
    markers = []
    for i, (label, (s, c)) in enumerate(pairs.items()):
        curve = accuracy_coverage_curve(s, c, higher_is_confident=higher_is_confident)
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=curve["coverage"], y=curve["accuracy"], mode="lines", name=label,
                line=dict(color=color, width=2.5), customdata=curve[["threshold", "n_kept"]].to_numpy(),
                hovertemplate="coverage %{x:.1%}<br>accuracy %{y:.1%}<br>threshold %{customdata[0]:.3g}"
                "<br>cells kept %{customdata[1]:,}<extra>" + label + "</extra>",
            )
        )
        if threshold is not None and len(curve):
            kept = curve["threshold"] >= threshold if higher_is_confident else curve["threshold"] <= threshold
            if kept.any():
                row = curve[kept].iloc[-1]
                markers.append(
                    go.Scatter(
                        x=[row["coverage"]], y=[row["accuracy"]], mode="markers",
                        name=f"{label} at threshold {threshold:.3g}", legendgroup=label,
                        marker=dict(color=color, size=12, symbol="diamond", line=dict(color="#222222", width=1)),
                        hovertemplate="coverage %{x:.1%}<br>accuracy %{y:.1%}<extra>threshold</extra>",
                    )
                )
    for m in markers:
        fig.add_trace(m)
    base_layout(
        fig, title=title, height=420,
        xaxis=dict(title=dict(text="Coverage (fraction of cells kept)"), range=[0, 1.01], tickformat=".0%"),
        yaxis=dict(title=dict(text="Accuracy of kept cells"), tickformat=".0%"),
        legend=dict(orientation="h", x=0, y=-0.2, xanchor="left", yanchor="top"),  # (at the right it squeezed the axes)
    )
    return fig
