"""Training history and class-count figures."""
from __future__ import annotations

from numbers import Real
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from numpy.typing import ArrayLike
from plotly.subplots import make_subplots

from cellannot_core._constants import UNKNOWN, str_array
from cellannot_core.plots._style import PALETTE, base_layout, category_colors, category_order, every_tick, tilt

__all__ = ["training_curves", "class_counts_bar"]


def _numeric_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for rec in history:
        for k, v in rec.items():
            if k not in keys and isinstance(v, Real) and not isinstance(v, bool):
                keys.append(k)
    return keys


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    out = np.full(len(history), np.nan)
    for i, rec in enumerate(history):
        v = rec.get(key)
        if isinstance(v, Real) and not isinstance(v, bool):
            out[i] = float(v)
    return out


#: What a history key means, as the figure names it (other keys are shown as they are).
CURVE_NAMES = {
    "loss": "training loss", "val_loss": "validation loss", "loss_ce": "classification loss (cross-entropy)",
    "loss_px": "generative loss (log p(x))", "loss_contrast": "contrastive loss", "val_acc": "validation accuracy",
    "train_acc": "training accuracy", "acc": "training accuracy", "val_neg_elbo": "validation -ELBO",
}


def training_curves(
    history: Sequence[Mapping[str, Any]],
    *,
    loss_keys: Sequence[str] | None = None,
    metric_keys: Sequence[str] | None = None,
    title: str | None = "Training",
) -> go.Figure:
    """Loss (top) and validation metrics such as accuracy (bottom) per epoch.

    Parameters
    ----------
    history
        One dict per epoch (the ``logs`` of ``on_epoch_end``), e.g.
        ``{"loss": 0.8, "val_loss": 0.9, "val_acc": 0.71}``.  Epochs are numbered 1..N in
        list order; missing or non-finite values leave gaps.
    loss_keys
        Keys plotted in the top panel; default: numeric keys containing ``"loss"``.
    metric_keys
        Keys plotted in the bottom panel; default: numeric keys containing ``"acc"`` (or
        ``"f1"``).  Without any, the figure has only the loss panel.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        One line per key: losses first, then metrics.
    """
    history = list(history)
    numeric = _numeric_keys(history)
    if loss_keys is None:
        loss_keys = [k for k in numeric if "loss" in k.lower()]
    if metric_keys is None:
        metric_keys = [k for k in numeric if ("acc" in k.lower() or "f1" in k.lower()) and k not in loss_keys]
    epochs = np.arange(1, len(history) + 1)
    two = len(metric_keys) > 0
    fig = make_subplots(rows=2 if two else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.55, 0.45] if two else None)
    color_i = 0
    for k in loss_keys:
        fig.add_trace(
            go.Scatter(x=epochs, y=_series(history, k), mode="lines+markers", name=CURVE_NAMES.get(k, k),
                       line=dict(color=PALETTE[color_i % len(PALETTE)], width=2), marker=dict(size=5),
                       hovertemplate="epoch %{x}<br>" + CURVE_NAMES.get(k, k) + " %{y:.4g}<extra></extra>"),
            row=1, col=1,
        )
        color_i += 1
    for k in metric_keys:
        y = _series(history, k)
        fig.add_trace(
            go.Scatter(x=epochs, y=y, mode="lines+markers", name=CURVE_NAMES.get(k, k),
                       line=dict(color=PALETTE[color_i % len(PALETTE)], width=2), marker=dict(size=5),
                       hovertemplate="epoch %{x}<br>" + CURVE_NAMES.get(k, k) + " %{y:.4g}<extra></extra>"),
            row=2, col=1,
        )
        color_i += 1
    base_layout(fig, title=title, height=520 if two else 360, hovermode="x unified")
    fig.update_yaxes(title_text="Loss", row=1, col=1)
    last_row = 2 if two else 1
    fig.update_xaxes(title_text="Epoch", row=last_row, col=1)
    # whole epochs (not 1.2, 1.4, ...), and none past the last (the padding showed 41 of 40, found 2026-12-07)
    fig.update_xaxes(tick0=1, dtick=max(1, int(np.ceil(len(history) / 10))), range=[0.5, len(history) + 0.5])
    if two:
        vals = np.concatenate([_series(history, k) for k in metric_keys])
        vals = vals[np.isfinite(vals)]
        in_unit = vals.size > 0 and vals.min() >= 0 and vals.max() <= 1
        all_acc = all("acc" in k.lower() for k in metric_keys)
        fig.update_yaxes(title_text="Accuracy" if all_acc else "Metric", row=2, col=1,
                         **(dict(range=[0, 1.02], tickformat=".0%") if in_unit else {}))
    return fig


def class_counts_bar(
    labels: ArrayLike | Mapping[str, ArrayLike],
    *,
    title: str | None = "Cells per type",
    color_map: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    x_title: str = "Cell type",
) -> go.Figure:
    """Number of cells per label.

    Parameters
    ----------
    labels
        One label per cell; or ``{dataset: labels}`` (e.g. reference and query) for grouped
        bars.
    title
        Figure title.
    color_map
        ``{label: colour}`` for a single dataset (``Unknown`` stays grey).
    order
        Bar order; default: descending count, ``Unknown`` last.
    x_title
        Axis title.

    Returns
    -------
    plotly.graph_objects.Figure
        A single ``go.Bar`` coloured per label; or one ``go.Bar`` per dataset, grouped.
    """
    if isinstance(labels, Mapping):
        groups = {str(k): pd.Series(str_array(v))
                  for k, v in labels.items()}
    else:
        groups = {"cells": pd.Series(str_array(labels))}
    counts = {k: v.value_counts() for k, v in groups.items()}
    total = pd.concat(list(counts.values()), axis=1).fillna(0).sum(axis=1) if counts else pd.Series(dtype=float)
    if order is None:
        ranked = sorted(total.index, key=lambda c: (c == UNKNOWN, -total[c], c))
    else:
        ranked = [str(o) for o in order] + [c for c in category_order(total.index) if c not in set(map(str, order))]
    fig = go.Figure()
    many = len(ranked) > 40  # bars across: 81 names under a half-width chart were 4.5 px apart (found 2026-12-07)
    if not isinstance(labels, Mapping):
        cnt = counts["cells"].reindex(ranked, fill_value=0)
        colors = category_colors(ranked, color_map)
        xy = dict(y=ranked, x=cnt.to_numpy(), orientation="h") if many else dict(x=ranked, y=cnt.to_numpy())
        fig.add_trace(go.Bar(
            **xy, marker=dict(color=[colors[c] for c in ranked]),
            text=None if many else [f"{v:,}" for v in cnt.to_numpy()], textposition="outside", name="cells",
            showlegend=False, hovertemplate="%{y}: %{x:,} cells<extra></extra>" if many else
            "%{x}: %{y:,} cells<extra></extra>",
        ))
    else:
        for i, (name, cnt) in enumerate(counts.items()):
            cnt = cnt.reindex(ranked, fill_value=0)
            fig.add_trace(go.Bar(
                x=ranked, y=cnt.to_numpy(), name=name, marker=dict(color=PALETTE[i % len(PALETTE)]),
                hovertemplate="%{x}: %{y:,} cells<extra>" + name + "</extra>",
            ))
    if many and not isinstance(labels, Mapping):
        base_layout(fig, title=title, height=120 + 12 * len(ranked),
                    yaxis=dict(title=dict(text=x_title), type="category", autorange="reversed", **every_tick(ranked)),
                    xaxis=dict(title=dict(text="Cells")))
        return fig
    base_layout(fig, title=title, height=420, barmode="group",
                xaxis=dict(title=dict(text=x_title), type="category", tickangle=tilt(ranked), **every_tick(ranked)),
                yaxis=dict(title=dict(text="Cells")))
    return fig
