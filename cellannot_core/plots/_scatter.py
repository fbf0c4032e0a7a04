"""Latent-space scatter (UMAP / t-SNE / PCA coordinates), WebGL for large point clouds."""
from __future__ import annotations

from html import escape  # a label in a hover template is text, not plotly's HTML
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from numpy.typing import ArrayLike

from cellannot_core._constants import UNKNOWN, str_array
from cellannot_core.plots._style import (
    DIVERGING,
    SEQUENTIAL,
    UNKNOWN_COLOR,
    base_layout,
    category_colors,
    category_order,
    natural_key,
    short_names,
)

__all__ = ["latent_scatter", "subsample_indices"]

#: Marker symbols handed out to the values of ``symbol`` (the primary value gets circles).
# after the first, hollow: generated cells are drawn on top and, filled, covered the real cells under them (2026-12-07)
SYMBOLS = ("circle", "diamond-open", "square-open", "triangle-up-open", "cross-open", "star-open", "x-open")
#: A ``symbol`` value with this name is the primary one (drawn first, as plain circles).
PRIMARY_SYMBOL = "real"


def subsample_indices(
    n: int,
    max_points: int,
    *,
    seed: int = 0,
    priority: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points, seeded.

    Parameters
    ----------
    n
        Number of points.
    max_points
        Upper bound on the number returned.
    seed
        Seed of the random choice.
    priority
        Optional boolean mask of points kept first (e.g. generated cells, usually few); the
        remaining slots are filled uniformly at random from the others.

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices; ``arange(n)`` when ``n <= max_points``.
    """
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if priority is None or not np.any(priority):
        return np.sort(rng.choice(n, size=max_points, replace=False)).astype(np.int64)
    pri = np.flatnonzero(priority)
    rest = np.flatnonzero(~np.asarray(priority, dtype=bool))
    if pri.size >= max_points:
        return np.sort(rng.choice(pri, size=max_points, replace=False)).astype(np.int64)
    fill = rng.choice(rest, size=max_points - pri.size, replace=False)
    return np.sort(np.concatenate([pri, fill])).astype(np.int64)


def _hover_text(hover: Any, n: int) -> tuple[np.ndarray, str] | None:
    """Per-point hover values (an ``(n, k)`` object array of str, a trace's ``customdata``) and the
    template that writes them, from an array of strings or a dict/DataFrame of columns. The values
    are data (the app escapes them, :func:`ui.widgets.text_only`), the template is markup: one string
    per point joining its columns with ``<br>`` was escaped whole and showed "cell: c1<br>conf: 0.1"
    in every tooltip (found 2026-12-07)."""
    if hover is None:
        return None
    if isinstance(hover, (pd.DataFrame, Mapping)):
        frame = pd.DataFrame(hover)
        if len(frame) != n:
            raise ValueError(f"hover has {len(frame)} rows but coords has {n}")
        values = np.empty((n, frame.shape[1]), dtype=object)
        for j, col in enumerate(frame.columns):
            values[:, j] = str_array(frame[col].astype(str).to_numpy(dtype=object))
        template = "".join(f"{escape(str(col), quote=False)}: %{{customdata[{j}]}}<br>"
                           for j, col in enumerate(frame.columns))
        return values, template
    arr = str_array(hover)
    if arr.size != n:
        raise ValueError(f"hover has {arr.size} entries but coords has {n}")
    return arr.reshape(n, 1), "%{customdata[0]}<br>"


def _auto_size(n: int) -> float:
    return 6.0 if n <= 2_000 else 4.0 if n <= 20_000 else 3.0


#: legend entries beyond which a scatter's legend goes below the map, four to a row
MANY_LEGEND = 30


def latent_scatter(
    coords: ArrayLike,
    color: ArrayLike,
    *,
    symbol: ArrayLike | None = None,
    hover: Any = None,
    title: str | None = "Latent space",
    continuous: bool = False,
    max_points: int = 50_000,
    seed: int = 0,
    color_title: str = "Label",
    color_map: Mapping[str, str] | None = None,
    categories: Sequence[str] | None = None,
    marker_size: float | None = None,
    x_title: str = "Dim 1",
    y_title: str = "Dim 2",
    color_mid: float | None = None,
) -> go.Figure:
    """2-D scatter of cells coloured by label (legend) or by a value (colour bar).

    Parameters
    ----------
    coords
        (n, 2) coordinates, e.g. from :func:`cellannot_core.embed.embed`.
    color
        One value per point: labels (categorical, ``Unknown`` grey) or numbers
        (``continuous=True``, e.g. confidence or OOD score).
    symbol
        Optional second grouping drawn with different markers, e.g. ``"real"`` /
        ``"generated"``.  ``"real"`` (else the first value) gets plain circles and is drawn
        first; other values get larger hollow markers (diamond, square, ...) on top, in their colour,
        so the real cells under them stay visible.
    hover
        Extra hover text: an array of strings, or a dict/DataFrame of columns (one line each).
    title
        Figure title.  When points are subsampled a second line says
        ``"showing 50,000 of 120,000 cells"``.
    continuous
        Colour by value with a colour bar instead of by category.
    max_points
        Above this many points a seeded random subset is drawn (points of a non-primary
        ``symbol``, e.g. generated cells, are kept first).
    seed
        Seed of the subsample.
    color_title
        Legend / colour-bar title.
    color_map
        Explicit ``{category: colour}``; ``Unknown`` stays grey regardless.
    categories
        Category order for colours and legend (pass the reference classes to keep colours
        identical across figures); default: categorical order or natural sort, ``Unknown`` last.
    marker_size
        Marker size; default depends on the number of points drawn.
    x_title, y_title
        Axis titles (e.g. ``"UMAP 1"``).
    color_mid
        ``continuous``: a value with a meaning (e.g. the Unknown threshold of a novelty score) at the middle of a
        diverging colour scale, blue below and red above it.

    Returns
    -------
    plotly.graph_objects.Figure
        ``go.Scattergl`` traces: categorical: one per (category, symbol) present, plus one
        legend-only key entry per symbol value when there are several (those have no points);
        continuous: one per symbol value sharing a colour axis, plus a grey trace for missing
        values if any.  ``layout.meta`` holds ``{"n_total", "n_shown"}``.
    """
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must have shape (n, 2), got {xy.shape}")
    n = xy.shape[0]
    col_raw = np.asarray(color, dtype=object).reshape(-1)
    if col_raw.size != n:
        raise ValueError(f"color has {col_raw.size} entries but coords has {n}")
    sym = None if symbol is None else str_array(symbol)
    if sym is not None and sym.size != n:
        raise ValueError(f"symbol has {sym.size} entries but coords has {n}")
    text = _hover_text(hover, n)
    text_template = "" if text is None else text[1]

    # symbol values: primary first
    if sym is not None:
        sym_values = sorted(set(sym.tolist()), key=natural_key)
        if PRIMARY_SYMBOL in sym_values:
            sym_values.remove(PRIMARY_SYMBOL)
            sym_values.insert(0, PRIMARY_SYMBOL)
    else:
        sym_values = [""]
    primary = sym_values[0]

    # subsample
    priority = None if sym is None else sym != primary
    idx = subsample_indices(n, max_points, seed=seed, priority=priority)
    n_shown = idx.size
    xy_s = xy[idx]
    text_s = None if text is None else text[0][idx]
    sym_s = np.full(n_shown, "", dtype=object) if sym is None else sym[idx]

    size = marker_size if marker_size is not None else _auto_size(n_shown)
    base_opacity = 0.8 if n_shown <= 20_000 else 0.6
    sym_style = {
        v: dict(symbol=SYMBOLS[k % len(SYMBOLS)], size=size if k == 0 else size + 4,
                opacity=base_opacity if k == 0 else 0.95)
        for k, v in enumerate(sym_values)
    }
    several_symbols = len(sym_values) > 1

    def _marker(style: dict[str, Any], **extra: Any) -> dict[str, Any]:
        m = dict(symbol=style["symbol"], size=style["size"], opacity=style["opacity"], **extra)
        if style["symbol"] != SYMBOLS[0]:  # a hollow marker's outline takes the marker's colour
            m["line"] = dict(width=1.5)
        return m

    fig = go.Figure()
    n_legend = 0  # the types a legend names
    if not continuous:
        labels = str_array(col_raw)
        order = list(categories) if categories is not None else category_order(
            color if (hasattr(color, "categories") or hasattr(color, "cat")) else labels
        )
        order = [str(c) for c in order]
        present = set(labels[idx].tolist())
        order = order + [c for c in category_order(labels) if c not in set(order)]
        colors = category_colors(order, color_map)
        rank = {c: (10_000 if c == UNKNOWN else i) for i, c in enumerate(order)}
        labels_s = labels[idx]
        # draw Unknown first (underneath), legend keeps it last via legendrank
        draw_order = ([UNKNOWN] if UNKNOWN in order else []) + [c for c in order if c != UNKNOWN]
        shown = dict(zip(order, short_names(order) if len(order) > MANY_LEGEND else order))
        for sv in sym_values:
            for cat in draw_order:
                if cat not in present:
                    continue
                sel = (labels_s == cat) & (sym_s == sv)
                if not sel.any():
                    continue
                first_for_cat = sv == primary or not np.any((labels_s == cat) & (sym_s == primary))
                fig.add_trace(
                    go.Scattergl(
                        x=xy_s[sel, 0], y=xy_s[sel, 1], mode="markers",
                        name=shown[cat]  # (long names ran into the next column of a legend below the map)
                        + ("" if not (several_symbols and not first_for_cat) else f" ({sv})"),
                        legendgroup=cat, showlegend=bool(first_for_cat), legendrank=rank[cat],
                        marker=_marker(sym_style[sv], color=colors[cat]),
                        customdata=None if text_s is None else text_s[sel],
                        hovertemplate=(
                            text_template
                            + f"{color_title}: {escape(str(cat), quote=False)}"
                            + (f"<br>{escape(str(sv), quote=False)}" if several_symbols else "")
                            + "<extra></extra>"
                        ),
                    )
                )
        legend_title = color_title
        n_legend = len(present)
    else:
        vals = np.asarray(col_raw, dtype=float)[idx]
        finite = np.isfinite(vals)
        for sv in sym_values:  # drawn first, underneath the cells the colour is about (it covered them until
            sel = (sym_s == sv) & ~finite  # 2026-12-07), in each marker style (generated cells hollow: they were
            if not sel.any():  # grey circles like the reference's, found 2026-12-07)
                continue
            name = f"no value ({sv})" if several_symbols else "no value"
            fig.add_trace(
                go.Scattergl(
                    x=xy_s[sel, 0], y=xy_s[sel, 1], mode="markers", name=name,
                    marker=_marker(sym_style[sv], color=UNKNOWN_COLOR), hovertemplate=f"{name}<extra></extra>",
                )
            )
        for sv in sym_values:
            sel = (sym_s == sv) & finite
            if not sel.any():
                continue
            fig.add_trace(
                go.Scattergl(
                    x=xy_s[sel, 0], y=xy_s[sel, 1], mode="markers",
                    name=sv if several_symbols else color_title,
                    showlegend=several_symbols,
                    marker=_marker(sym_style[sv], color=vals[sel], coloraxis="coloraxis"),
                    customdata=None if text_s is None else text_s[sel],
                    hovertemplate=(
                        text_template
                        + f"{color_title}: " + "%{marker.color:.3g}"
                        + (f"<br>{escape(str(sv), quote=False)}" if several_symbols else "") + "<extra></extra>"
                    ),
                )
            )
        fig.update_layout(
            # the colour bar below the legend's entries ("real", "no value"), not over them
            coloraxis=dict(colorscale=SEQUENTIAL if color_mid is None else DIVERGING,
                           **({} if color_mid is None else {"cmid": float(color_mid)}),
                           colorbar=dict(title=dict(text=color_title), len=0.75, y=0, yanchor="bottom"))
        )
        legend_title = None

    if several_symbols and not continuous:
        # legend key for the marker styles (legend-only entries, no points)
        for k, sv in enumerate(sym_values):
            if not np.any(sym_s == sv):
                continue
            fig.add_trace(
                go.Scattergl(
                    x=[None], y=[None], mode="markers", name=sv, legendgroup="__symbols__",
                    legendgrouptitle=dict(text="Cells") if k == 0 else None,
                    legendrank=20_000 + k,
                    marker=_marker(dict(sym_style[sv], size=max(sym_style[sv]["size"], 8)), color="#555555"),
                    hoverinfo="skip",
                )
            )

    full_title = title or ""
    if n_shown < n:
        note = f"showing {n_shown:,} of {n:,} cells (random subsample)"
        full_title = f"{full_title}<br><sup>{note}</sup>" if full_title else note
    many = n_legend > MANY_LEGEND  # (a legend of 114 types took half the map's width: below it)
    base_layout(
        fig,
        title=full_title or None,
        height=600 + (22 * -(-n_legend // 4) if many else 0),
        meta=dict(n_total=int(n), n_shown=int(n_shown)),
        legend=dict(title=dict(text=legend_title) if legend_title else None, itemsizing="constant",
                    tracegroupgap=2, **(dict(orientation="h", yanchor="top", y=-0.02, x=0, entrywidth=240,
                                             font=dict(size=10)) if many else {})),
        xaxis=dict(title=dict(text=x_title), showticklabels=False, zeroline=False, showgrid=False),
        yaxis=dict(title=dict(text=y_title), showticklabels=False, zeroline=False, showgrid=False,
                   scaleanchor="x", scaleratio=1),
    )
    return fig
