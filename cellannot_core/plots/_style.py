"""Shared look of every figure: template, colour-blind-friendly palette, Unknown in grey."""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go

from cellannot_core._constants import UNKNOWN, str_array

__all__ = [
    "TEMPLATE",
    "PALETTE",
    "UNKNOWN_COLOR",
    "SEQUENTIAL",
    "category_colors",
    "category_order",
    "natural_key",
    "base_layout",
]

TEMPLATE = "plotly_white"

#: Okabe & Ito (2008) without black and grey, then Paul Tol's "muted" and "light" sets
#: (both designed for colour-vision deficiencies).  Cycles beyond 24 categories.
PALETTE: tuple[str, ...] = (
    # Okabe-Ito
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442",
    # Tol muted
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
    "#882255", "#AA4499",
    # Tol light
    "#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00",
)

#: colours taken, in order, by a figure's categories beyond the palette's 24 (plotly's Alphabet, Dark24
#: and Light24 sets, without the palette's own and the Unknown grey): 114 types had 24 colours (found
#: 2026-12-07); a figure of at most 24 keeps the palette's colours by name, as before
EXTRA_PALETTE: tuple[str, ...] = tuple(dict.fromkeys(
    c.upper() for c in (
        "#AA0DFE", "#3283FE", "#85660D", "#782AB6", "#1C8356", "#16FF32", "#F7E1A0",
        "#1CBE4F", "#C4451C", "#DEA0FD", "#FE00FA", "#325A9B", "#FEAF16", "#F8A19F", "#90AD1C", "#F6222E",
        "#1CFFCE", "#2ED9FF", "#B10DA1", "#C075A6", "#FC1CBF", "#B00068", "#FBE426", "#FA0087",
        "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B",
        "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1",
        "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
        "#FD3216", "#00FE35", "#6A76FC", "#FED4C4", "#FE00CE", "#0DF9FF", "#F6F926", "#FF9616", "#479B55",
        "#EEA6FB", "#DC587D", "#D626FF", "#6E899C", "#00B5F7", "#B68E00", "#C9FBE5", "#FF0092", "#22FFA7",
        "#E3EE9E", "#86CE00", "#BC7196", "#7E7DCD", "#FC6955", "#E48F72",
    ) if c.upper() not in PALETTE and c.upper() != "#9E9E9E"))

#: Unknown (rejected) cells are always this grey, in every figure.
UNKNOWN_COLOR = "#9E9E9E"

#: Sequential colour scale for heatmaps and continuous values (perceptually uniform, CVD-safe).
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"  # a value with a meaningful middle (a threshold): blue below, red above


def natural_key(s: str) -> tuple:
    """Sort key putting ``"2"`` before ``"10"`` (cluster ids) and comparing text case-insensitively."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", s) if t)


def category_order(values: Iterable[Any]) -> list[str]:
    """Categories of ``values`` as strings: pandas categorical order if any, else natural sort.

    ``Unknown`` always comes last.
    """
    cats = getattr(values, "cat", None)
    if cats is not None:  # pandas Series of dtype category
        order = [str(c) for c in values.cat.categories]
        present = set(str_array(values).tolist())
        order = [c for c in order if c in present]
    elif hasattr(values, "categories"):  # pandas Categorical
        present = set(str_array(values).tolist())
        order = [str(c) for c in values.categories if str(c) in present]
    else:
        order = sorted(
            set(str_array(values).tolist()), key=natural_key
        )
    return [c for c in order if c != UNKNOWN] + ([UNKNOWN] if UNKNOWN in order else [])


def _slot(name: str) -> int:
    """A palette slot fixed by the category's name (stable across processes, unlike ``hash``)."""
    import zlib

    return zlib.crc32(name.strip().lower().encode()) % len(PALETTE)


def category_colors(
    categories: Iterable[Any],
    color_map: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Colour for every category, fixed by its name; ``Unknown`` is always grey.

    A category gets the palette colour its name hashes to, so "CD14 Mono" has the same colour in
    every figure of every run (issue 13: colours followed the order of the classes and changed
    between runs). When two categories of one figure hash to the same colour, the one later in
    natural order takes the next free colour; beyond 24 categories the next ones take
    :data:`EXTRA_PALETTE`'s colours in order (98 in all), and beyond those colours repeat.

    Parameters
    ----------
    categories
        Category names.
    color_map
        Explicit colours that take precedence (except for ``Unknown``); the other names do not take them.
        One figure after another keeps a name's colour when each is given the same map (as
        ``category_colors(every_name)``): the app's pages colour each run's types alike that way.

    Returns
    -------
    dict
        ``{category: colour}``, in the order given.
    """
    names = list(dict.fromkeys(str(c) for c in categories))
    out: dict[str, str] = {}
    # a colour given for one name is taken for the others (a type of the query alone took a reference type's
    # colour where that one was given, found 2026-12-07)
    taken: set[int] = {PALETTE.index(v) for c, v in (color_map or {}).items() if c in names and v in PALETTE}
    for c in sorted(names, key=natural_key):
        if c == UNKNOWN:
            out[c] = UNKNOWN_COLOR
        elif color_map is not None and c in color_map:
            out[c] = color_map[c]
        else:
            i = _slot(c)
            if len(taken) >= len(PALETTE):  # the palette is used up: the next colour not yet in the figure
                used = set(out.values()) | set((color_map or {}).values())
                out[c] = next((x for x in EXTRA_PALETTE if x not in used), PALETTE[i])
                continue
            while i in taken:
                i = (i + 1) % len(PALETTE)
            taken.add(i)
            out[c] = PALETTE[i]
    return {c: out[c] for c in names}


def tilt(labels: Sequence[Any]) -> int:
    """The angle of a category axis's labels: tilted when they are many or long (CELLxGENE's "CD4-positive,
    alpha-beta T cell" ran into its neighbours on level labels, found 2026-12-07)."""
    names = [str(v) for v in labels]
    if len(names) > 30:  # upright: tilted names of 100 columns lay over each other (found 2026-12-07)
        return -90
    return -45 if len(names) > 8 or max(map(len, names), default=0) > 12 else 0


#: characters of a name shown on an axis (the whole name in the hover)
TICK_CHARS = 32


def every_tick(names: Sequence[object]) -> dict:
    """A category axis that names every category (plotly names one in five when they crowd: 21 of a
    heatmap's 104 columns were named, found 2026-12-07), in a smaller font when they are many, each
    name cut to :data:`TICK_CHARS` characters on the axis (the hover gives it whole)."""
    names = [str(n) for n in names]
    size = 12 if len(names) <= 30 else max(6, int(12 * 30 / len(names)))
    return dict(tickmode="array", tickvals=names, ticktext=short_names(names), tickfont=dict(size=size))


def short_names(names: Sequence[object]) -> list[str]:
    """:func:`short_name` of each name, but a name whose cut form another name shares is kept whole (two
    types must not read alike)."""
    from collections import Counter

    cut = [short_name(n) for n in names]
    seen = Counter(cut)
    return [c if seen[c] == 1 else str(n) for c, n in zip(cut, names)]


def short_name(name: object) -> str:
    """A name cut to :data:`TICK_CHARS` characters in its middle, "…" marking the cut, so that names that
    differ at their end (a number, a state) stay apart (axes and legends of many types)."""
    name = str(name)
    if len(name) <= TICK_CHARS:
        return name
    tail = TICK_CHARS // 3
    return name[:TICK_CHARS - 1 - tail] + "…" + name[-tail:]


def base_layout(fig: go.Figure, *, title: str | None = None, **kwargs: Any) -> go.Figure:
    """Apply the common template, title and margins."""
    fig.update_layout(
        template=TEMPLATE,
        title=dict(text=title, x=0.01, xanchor="left") if title else None,
        margin=dict(l=60, r=20, t=70 if title else 30, b=50),
        font=dict(size=13),
        **kwargs,
    )
    return fig
