"""Label-transfer contingency heatmap (predicted reference labels x query labels or clusters)."""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from numpy.typing import ArrayLike

from cellannot_core.plots._style import base_layout, category_order, every_tick, tilt
from cellannot_core._constants import str_array

__all__ = ["contingency_table", "label_heatmap"]

Normalize = Literal["row", "col", "all"]


def contingency_table(
    row_labels: ArrayLike,
    col_labels: ArrayLike,
    *,
    normalize: Normalize = "row",
    row_order: Sequence[str] | None = None,
    col_order: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts of cells per (row label, column label) and the matching percentages.

    Parameters
    ----------
    row_labels
        One label per cell for the rows (e.g. the predicted reference label, ``Unknown``
        included).
    col_labels
        One label per cell for the columns (e.g. the query's own labels or clusters).
    normalize
        ``"row"``: each row sums to 100; ``"col"``: each column sums to 100; ``"all"``: the
        whole table sums to 100.  Empty rows/columns give 0, not NaN.
    row_order, col_order
        Explicit order (labels not listed are appended in the default order).  Default:
        pandas categorical order, else natural sort, ``Unknown`` last.

    Returns
    -------
    counts : pandas.DataFrame
        Integer counts; index = row labels, columns = column labels.
    percent : pandas.DataFrame
        Same shape, percentages according to ``normalize``.
    """
    r = str_array(row_labels)
    c = str_array(col_labels)
    if r.size != c.size:
        raise ValueError(f"row_labels has {r.size} entries but col_labels has {c.size}")
    if normalize not in ("row", "col", "all"):
        raise ValueError(f"normalize must be 'row', 'col' or 'all', not {normalize!r}")

    def _order(given: Sequence[str] | None, original: ArrayLike, as_str: np.ndarray) -> list[str]:
        categorical = hasattr(original, "categories") or hasattr(original, "cat")
        default = category_order(original if categorical else as_str)
        if given is None:
            return default
        listed = [str(g) for g in given]
        return listed + [d for d in default if d not in set(listed)]

    rows = _order(row_order, row_labels, r)
    cols = _order(col_order, col_labels, c)
    counts = (
        pd.crosstab(pd.Series(r, name="row"), pd.Series(c, name="col"))
        .reindex(index=rows, columns=cols, fill_value=0)
        .astype(np.int64)
    )
    counts.index.name = None
    counts.columns.name = None
    values = counts.to_numpy(dtype=float)
    if normalize == "row":
        denom = values.sum(axis=1, keepdims=True)
    elif normalize == "col":
        denom = values.sum(axis=0, keepdims=True)
    else:
        denom = np.full((1, 1), values.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(denom > 0, 100.0 * values / np.where(denom > 0, denom, 1.0), 0.0)
    percent = pd.DataFrame(pct, index=counts.index, columns=counts.columns)
    return counts, percent


def _cell_text(count: int) -> str:
    """A cell's first line, its count (empty for no cells); its second, the percentage, is the cell's
    ``z``, formatted by the template. Not one string holding ``<br>``: the app shows a trace's text as
    text (a label written as HTML stays as written), which showed "342<br>100%" in every cell (found
    2026-12-07)."""
    return f"{count:,}" if count else ""


def label_heatmap(
    row_labels: ArrayLike,
    col_labels: ArrayLike,
    *,
    normalize: Normalize = "row",
    row_title: str = "Reference label (predicted)",
    col_title: str = "Query label",
    title: str | None = "Label transfer",
    row_order: Sequence[str] | None = None,
    col_order: Sequence[str] | None = None,
    annotate: bool | None = None,
) -> go.Figure:
    """Contingency heatmap: colour = percentage, text = count and percentage per cell.

    Rows are the predicted reference labels (``Unknown`` last), columns the query's labels or
    clusters, as in the CLAMS poster (Figure 2).  The table itself comes from
    :func:`contingency_table` (offer that for download).

    Parameters
    ----------
    row_labels, col_labels
        One label per cell.
    normalize
        See :func:`contingency_table`; ``"row"`` colours each predicted label by where its
        cells come from.
    row_title, col_title
        Axis titles.
    title
        Figure title.
    row_order, col_order
        Explicit label orders.
    annotate
        Write count and percent in every cell; default: only when the table has at most
        1,000 cells (beyond that the text is unreadable).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``go.Heatmap`` trace; ``z`` holds the shares (0-1; a gap where no cell is),
        ``customdata`` the counts, ``text`` the counts as written.
    """
    counts, percent = contingency_table(
        row_labels, col_labels, normalize=normalize, row_order=row_order, col_order=col_order
    )
    if col_order is None and counts.shape[1] > MANY_TYPES:  # a diagonal, not an alphabet, to read many types by
        ordered = _diagonal(counts)
        counts, percent = ordered, percent[ordered.columns]
    n_rows, n_cols = counts.shape
    if annotate is None:
        annotate = n_rows * n_cols <= 1000
    text = [[_cell_text(int(counts.iat[i, j])) for j in range(n_cols)] for i in range(n_rows)]
    z = percent.to_numpy(dtype=float) / 100.0  # shares: the template writes them as percentages
    z[counts.to_numpy() == 0] = np.nan  # an empty cell is a gap: nothing written in it
    norm_word = {"row": "% of row", "col": "% of column", "all": "% of cells"}[normalize]
    heat = go.Heatmap(
        z=z,
        x=[str(c) for c in counts.columns],
        y=[str(r) for r in counts.index],
        customdata=counts.to_numpy(),
        text=text,
        texttemplate="%{text}<br>%{z:.1~%}" if annotate else None,
        textfont=dict(size=11),
        zmin=0.0,
        zmax=1.0,
        colorscale="Blues",
        colorbar=dict(title=dict(text=norm_word), tickformat=".0%"),
        xgap=1,
        ygap=1,
        hovertemplate=(
            f"{row_title}: %{{y}}<br>{col_title}: %{{x}}<br>"
            f"cells: %{{customdata:,}}<br>{norm_word}: %{{z:.1%}}<extra></extra>"
        ),
    )
    fig = go.Figure(heat)
    base_layout(
        fig,
        title=title,
        height=max(320, 120 + 32 * n_rows),
        xaxis=dict(title=dict(text=col_title), type="category", tickangle=tilt(counts.columns),
                   side="bottom", showgrid=False, **every_tick(counts.columns)),
        yaxis=dict(title=dict(text=row_title), type="category", autorange="reversed", showgrid=False,
                   **every_tick(counts.index)),
    )
    return fig


#: columns beyond which the table's columns follow its rows (:func:`_diagonal`)
MANY_TYPES = 20


def _diagonal(counts: pd.DataFrame) -> pd.DataFrame:
    """The columns ordered by the row that holds most of each column's cells, then by that share: the
    query's groups along the predicted labels' order, a diagonal where they agree. Alphabetical columns
    beside ordered rows gave a 107 x 104 table no one could read (found 2026-12-07, an atlas reference)."""
    v = counts.to_numpy(dtype=float)
    top = v.argmax(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(v.sum(axis=0) > 0, v.max(axis=0) / np.maximum(v.sum(axis=0), 1), 0.0)
    order = np.lexsort((-share, top))
    return counts.iloc[:, order]
