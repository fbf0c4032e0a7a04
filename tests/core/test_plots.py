"""Figure builders: trace counts, point counts and data checked against independent maths."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from cellannot_core._constants import UNKNOWN
from cellannot_core.metrics import accuracy_coverage_curve, ece, reliability_curve
from cellannot_core.plots import (
    PALETTE,
    UNKNOWN_COLOR,
    accuracy_coverage_figure,
    category_colors,
    class_counts_bar,
    contingency_table,
    label_heatmap,
    latent_scatter,
    reliability_diagram,
    roc_curve_figure,
    score_histogram,
    training_curves,
)


def _is_white(fig: go.Figure) -> bool:
    return fig.layout.template == pio.templates["plotly_white"]


def _n_points(fig: go.Figure) -> int:
    """Points drawn (legend-only key traces have x == (None,))."""
    return sum(len(t.x) for t in fig.data if t.x is not None and not (len(t.x) == 1 and t.x[0] is None))


@pytest.fixture
def pred_query():
    rng = np.random.default_rng(0)
    pred = rng.choice(["T cell", "B cell", "NK", UNKNOWN], size=300, p=[0.4, 0.3, 0.2, 0.1])
    query = rng.choice(["c2", "c10", "c1"], size=300)
    return pred, query


# --------------------------------------------------------------------------- palette
def test_palette_unknown_grey_and_distinct():
    colors = category_colors(["b", UNKNOWN, "a", "c"])
    assert colors[UNKNOWN] == UNKNOWN_COLOR
    assert len({colors[c] for c in "abc"}) == 3 and list(colors) == ["b", UNKNOWN, "a", "c"]
    assert UNKNOWN_COLOR not in PALETTE and len(set(PALETTE)) == len(PALETTE)
    assert category_colors([UNKNOWN], {UNKNOWN: "#ff0000"})[UNKNOWN] == UNKNOWN_COLOR


def test_a_category_keeps_its_colour_across_runs():
    """Issue 13: the same category changed colour between runs (colours followed class order)."""
    a = category_colors(["CD4 T", "CD14 Mono", "B", "NK"])
    b = category_colors(["NK", "B", "CD14 Mono", "CD8 T", "CD4 T", "DC"])
    assert all(a[c] == b[c] for c in a)
    many = [f"type {i}" for i in range(24)]
    assert len(set(category_colors(many).values())) == 24  # collisions take the next free colour
    # a map given keeps its colours for its names and from the others, so each figure of a run colours alike
    # (found 2026-12-07: a query-only type took a reference type's colour in one figure, not in the next)
    first = category_colors(many[:12])
    both = category_colors(many[:20], first)
    assert all(both[c] == first[c] for c in first) and len(set(both.values())) == 20
    clash = next(c for c in many[12:] if category_colors([c])[c] in set(first.values()))  # hashes onto one taken
    assert category_colors([clash, *many[:12]], first)[clash] not in set(first.values())


# --------------------------------------------------------------------------- heatmap
def test_contingency_table(pred_query):
    pred, query = pred_query
    counts, pct = contingency_table(pred, query)
    assert list(counts.index) == ["B cell", "NK", "T cell", UNKNOWN]  # Unknown last
    assert list(counts.columns) == ["c1", "c2", "c10"]  # natural order
    for r in counts.index:
        for c in counts.columns:
            assert counts.loc[r, c] == np.sum((pred == r) & (query == c))
    assert np.allclose(pct.sum(axis=1), 100.0)
    _, pct_col = contingency_table(pred, query, normalize="col")
    assert np.allclose(pct_col.sum(axis=0), 100.0)
    _, pct_all = contingency_table(pred, query, normalize="all")
    assert pct_all.to_numpy().sum() == pytest.approx(100.0)
    c2, _ = contingency_table(pred, query, row_order=["NK", "ghost"])
    assert list(c2.index)[:2] == ["NK", "ghost"] and c2.loc["ghost"].sum() == 0
    _, p2 = contingency_table(pred, query, row_order=["ghost"])
    assert (p2.loc["ghost"] == 0).all()  # empty row -> 0, not NaN
    with pytest.raises(ValueError):
        contingency_table(["a"], ["a", "b"])


def test_label_heatmap_values(pred_query):
    pred, query = pred_query
    fig = label_heatmap(pred, query)
    assert isinstance(fig, go.Figure) and _is_white(fig)
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    h = fig.data[0]
    rows, cols = list(h.y), list(h.x)
    assert rows[-1] == UNKNOWN
    expected = np.zeros((len(rows), len(cols)))
    for i, r in enumerate(rows):
        n_r = np.sum(pred == r)
        for j, c in enumerate(cols):
            expected[i, j] = 100.0 * np.sum((pred == r) & (query == c)) / n_r
    z = np.asarray(h.z, dtype=float)
    assert np.allclose(np.nan_to_num(z), expected / 100) and np.isnan(z[expected == 0]).all()  # shares; empty: a gap
    # each cell writes its count and its share
    n00 = int(np.sum((pred == rows[0]) & (query == cols[0])))
    assert h.text[0][0] == f"{n00:,}" and h.customdata[0][0] == n00
    assert h.texttemplate == "%{text}<br>%{z:.1~%}"
    from ui.widgets import text_only  # as the app shows it: the data's own text escaped, the line break kept

    shown = text_only(go.Figure(fig)).data[0]
    written = "".join(map(str, np.ravel(shown.text))) + "".join(map(str, np.ravel(shown.customdata)))
    assert "<" not in written and "&lt;" not in written and shown.texttemplate == h.texttemplate
    assert fig.layout.yaxis.title.text == "Reference label (predicted)"
    assert fig.layout.xaxis.title.text == "Query label"
    assert fig.layout.yaxis.autorange == "reversed"


# --------------------------------------------------------------------------- calibration
def test_reliability_diagram():
    rng = np.random.default_rng(1)
    conf = rng.random(400)
    correct = rng.random(400) < conf**2
    curves = {"before": reliability_curve(conf, correct), "after": reliability_curve(conf**2, correct)}
    e_before = ece(conf, correct)
    fig = reliability_diagram(curves, {"before": e_before})
    assert _is_white(fig)
    assert len(fig.data) == 1 + 2 * 2  # diagonal + line and bars per curve
    assert list(fig.data[0].x) == [0, 1] and list(fig.data[0].y) == [0, 1]
    line = fig.data[1]
    filled = curves["before"][curves["before"]["count"] > 0]
    assert np.allclose(line.y, filled["accuracy"]) and np.allclose(line.x, filled["mean_confidence"])
    assert f"ECE {e_before:.3f}" in line.name
    # ECE computed from the curve when not given
    assert f"ECE {ece(conf**2, correct):.3f}" in fig.data[2].name
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 2 and np.sum(bars[0].y) == 400
    assert fig.layout.xaxis2.title.text == "Confidence" and fig.layout.yaxis.title.text == "Accuracy"


def test_score_histogram():
    rng = np.random.default_rng(2)
    scores = {"reference validation": rng.normal(size=100), "query": np.r_[rng.normal(1, 1, 80), np.nan]}
    fig = score_histogram(scores, 0.7, title="OOD score", x_title="Energy")
    assert len(fig.data) == 2 and all(isinstance(t, go.Histogram) for t in fig.data)
    assert len(fig.data[0].x) == 100 and len(fig.data[1].x) == 80  # NaN dropped
    assert all(t.histnorm == "probability" for t in fig.data)
    assert fig.data[0].xbins.size == fig.data[1].xbins.size  # shared bins
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 0.7
    assert fig.layout.xaxis.title.text == "Energy" and "OOD score" in fig.layout.title.text
    assert len(score_histogram(scores, None).layout.shapes) == 0
    # a million values are binned here (the browser gets 50 bars, not the values), same fractions
    from cellannot_core.plots._scores import HIST_RAW_MAX

    big = {"query": rng.normal(size=HIST_RAW_MAX + 1), "small": rng.normal(size=200)}
    fig = score_histogram(big, 0.0, nbins=50)
    assert isinstance(fig.data[0], go.Bar) and len(fig.data[0].y) in (50, 51)
    assert abs(sum(fig.data[0].y) - 1.0) < 1e-9 and isinstance(fig.data[1], go.Histogram)


def test_roc_curve_figure():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + 1.5 * y
    fig = roc_curve_figure(s, y, name="energy")
    assert len(fig.data) == 2  # chance + curve
    auc = roc_auc_score(y, s)
    assert fig.data[1].name == f"energy (AUROC {auc:.3f})"
    fpr, tpr, _ = roc_curve(y, s)
    assert np.allclose(fig.data[1].x, fpr) and np.allclose(fig.data[1].y, tpr)
    fig2 = roc_curve_figure({"a": (s, y), "b": (-s, y), "none": (s, np.zeros(200, bool))})
    assert len(fig2.data) == 3
    assert "AUROC n/a" in fig2.layout.annotations[0].text
    with pytest.raises(ValueError):
        roc_curve_figure(s)


def test_accuracy_coverage_figure():
    rng = np.random.default_rng(4)
    conf = rng.random(150)
    correct = rng.random(150) < conf
    fig = accuracy_coverage_figure(conf, correct, name="model", threshold=0.5)
    curve = accuracy_coverage_curve(conf, correct)
    assert len(fig.data) == 2
    assert np.allclose(fig.data[0].x, curve["coverage"]) and np.allclose(fig.data[0].y, curve["accuracy"])
    kept = conf >= 0.5
    assert fig.data[1].x[0] == pytest.approx(kept.mean())
    assert fig.data[1].y[0] == pytest.approx(correct[kept].mean())
    assert len(accuracy_coverage_figure({"a": (conf, correct), "b": (conf**2, correct)}).data) == 2


# --------------------------------------------------------------------------- latent scatter
def test_latent_scatter_categorical():
    rng = np.random.default_rng(5)
    xy = rng.normal(size=(500, 2))
    lab = rng.choice(["B cell", "T cell", UNKNOWN], size=500)
    fig = latent_scatter(xy, lab, title="UMAP", hover={"cell": np.arange(500)})
    assert _is_white(fig)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert len(fig.data) == 3 and _n_points(fig) == 500
    by_name = {t.name: t for t in fig.data}
    assert by_name[UNKNOWN].marker.color == UNKNOWN_COLOR
    assert by_name["T cell"].marker.color != UNKNOWN_COLOR
    assert len(by_name["B cell"].x) == np.sum(lab == "B cell")
    sel = lab == "B cell"
    assert np.allclose(np.sort(by_name["B cell"].x), np.sort(xy[sel, 0]))
    b = by_name["B cell"]  # each column a value of the point's customdata, written by the template
    assert b.hovertemplate.startswith("cell: %{customdata[0]}<br>") and len(b.customdata) == len(b.x)
    from ui.widgets import text_only  # as the app shows it: values escaped, the template's line breaks kept

    shown = text_only(latent_scatter(xy[:3], lab[:3], hover={"cell": ["<b>c1</b>", "c2", "c3"], "p": [1, 2, 3]}))
    values = [v for t in shown.data for v in np.ravel(t.customdata)]
    assert "&lt;b&gt;c1&lt;/b&gt;" in values and not any("<" in str(v) for v in values)
    assert all(t.hovertemplate.startswith("cell: %{customdata[0]}<br>p: %{customdata[1]}<br>") for t in shown.data)
    assert "showing" not in fig.layout.title.text
    assert fig.layout.meta == {"n_total": 500, "n_shown": 500}
    # Unknown last in the legend
    assert by_name[UNKNOWN].legendrank > by_name["T cell"].legendrank


def test_latent_scatter_subsample_note_and_seed():
    rng = np.random.default_rng(6)
    xy = rng.normal(size=(1200, 2))
    lab = rng.choice(list("abc"), size=1200)
    fig = latent_scatter(xy, lab, title="Latent", max_points=1000, seed=1)
    assert _n_points(fig) == 1000
    assert "showing 1,000 of 1,200 cells" in fig.layout.title.text
    again = latent_scatter(xy, lab, title="Latent", max_points=1000, seed=1)
    assert np.array_equal(fig.data[0].x, again.data[0].x)


def test_latent_scatter_generated_symbols():
    rng = np.random.default_rng(7)
    xy = rng.normal(size=(600, 2))
    lab = rng.choice(["a", "b"], size=600)
    sym = np.where(np.arange(600) < 40, "generated", "real")
    fig = latent_scatter(xy, lab, symbol=sym, max_points=300)
    real = [t for t in fig.data if t.x is not None and t.marker.symbol == "circle" and t.x[0] is not None]
    gen = [t for t in fig.data if t.x is not None and t.marker.symbol == "diamond-open" and t.x[0] is not None]
    assert sum(len(t.x) for t in gen) == 40  # generated cells kept when subsampling
    assert sum(len(t.x) for t in real) == 260
    assert _n_points(fig) == 300
    assert all(t.marker.opacity > real[0].marker.opacity for t in gen)
    # drawn on top but hollow, outlined in their class's colour: the real cells under them stay visible
    assert all(t.marker.line.color is None and t.marker.line.width > 0 for t in gen)
    assert [t.marker.color for t in gen] == [t.marker.color for t in real]
    keys = [t.name for t in fig.data if t.legendgroup == "__symbols__"]
    assert keys == ["real", "generated"]


def test_latent_scatter_continuous():
    rng = np.random.default_rng(8)
    xy = rng.normal(size=(200, 2))
    val = rng.random(200)
    val[0] = np.nan
    fig = latent_scatter(xy, val, continuous=True, color_title="confidence")
    assert len(fig.data) == 2  # "no value" + values
    # the cells without a value (the reference's, on the Latent page) are drawn first, underneath the others
    assert fig.data[0].name == "no value" and len(fig.data[0].x) == 1
    assert np.allclose(fig.data[1].marker.color, val[1:])
    assert fig.data[1].marker.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.colorbar.title.text == "confidence"
    bar = fig.layout.coloraxis.colorbar  # below the legend's entries, not over them (found 2026-12-07)
    assert bar.yanchor == "bottom" and bar.y + bar.len <= 0.8
    assert fig.data[0].marker.color == UNKNOWN_COLOR and len(fig.data[0].x) == 1
    # generated cells without a value keep their hollow marker, apart from the reference's (found 2026-12-07)
    sym = np.where(np.arange(200) < 100, "real", "generated")
    val[150] = np.nan
    fig = latent_scatter(xy, val, continuous=True, symbol=sym, color_title="confidence")
    empty = {t.name: t.marker.symbol for t in fig.data if t.name.startswith("no value")}
    assert set(empty) == {"no value (real)", "no value (generated)"} and empty["no value (real)"] != \
        empty["no value (generated)"]
    with pytest.raises(ValueError):
        latent_scatter(xy[:, :1], val)


# --------------------------------------------------------------------------- training, counts
def test_training_curves():
    hist = [{"loss": 1.0, "val_loss": 1.2, "val_acc": 0.5, "lr": 1e-3},
            {"loss": 0.6, "val_loss": 0.9, "val_acc": 0.7, "lr": 1e-3},
            {"loss": 0.4, "val_loss": 0.8, "val_acc": 0.8, "lr": 1e-3}]
    fig = training_curves(hist)
    assert [t.name for t in fig.data] == ["training loss", "validation loss", "validation accuracy"]
    # the energy models' parts in words, not their log keys (loss_ce, loss_px); unknown keys as they are
    parts = training_curves([{"loss_ce": 1.0, "loss_px": 2.0, "loss_other": 3.0}])
    assert [t.name for t in parts.data] == ["classification loss (cross-entropy)", "generative loss (log p(x))",
                                            "loss_other"]
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[2].y) == [0.5, 0.7, 0.8]
    assert fig.data[2].yaxis == "y2" and fig.layout.xaxis2.title.text == "Epoch"
    assert fig.layout.xaxis.dtick == fig.layout.xaxis2.dtick == 1  # whole epochs (it ticked 1.2, 1.4, ...)
    forty = training_curves([{"loss": 1.0}] * 40).layout
    assert forty.xaxis.dtick == 4 and tuple(forty.xaxis.range) == (0.5, 40.5)  # no axis past the last epoch
    only_loss = training_curves([{"loss": 1.0}, {"loss": float("nan")}])
    assert len(only_loss.data) == 1 and np.isnan(only_loss.data[0].y[1])


def test_a_table_of_many_types_names_every_one_and_reads_along_a_diagonal():
    """Found 2026-12-07 (an atlas reference of 111 types): plotly named 21 of 104 columns, an 84-character name
    took half the width, and alphabetical columns beside ordered rows showed no diagonal."""
    rng = np.random.default_rng(0)
    names = [f"type {i:03d} " + ("with a very long atlas-style name, cluster " if i % 7 == 0 else "") + str(i)
             for i in range(60)]
    truth = rng.choice(names, 3000)
    pred = np.where(rng.random(3000) < 0.9, truth, rng.choice(names, 3000))
    fig = label_heatmap(pred, truth, row_order=sorted(names, reverse=True))  # rows in an order of their own
    h, x = fig.data[0], fig.layout.xaxis
    assert list(x.tickvals) == list(h.x) and len(h.x) == 60  # every column named ...
    assert max(map(len, x.ticktext)) <= 32 and any("…" in t for t in x.ticktext)  # ... short on the axis
    assert list(h.x) == list(h.y)  # the columns follow the rows where the labels agree: a diagonal
    bar = class_counts_bar(pred)  # bars across, each named, no counts written (60 ran together)
    assert bar.data[0].orientation == "h" and len(bar.layout.yaxis.tickvals) == 60 and bar.data[0].text is None
    assert x.tickangle == -90  # upright: 60 tilted names lay over each other


def test_a_hundred_types_get_a_hundred_colours_and_a_legend_below_the_map():
    """Found 2026-12-07 (an atlas reference): 114 types shared 24 colours, and their legend took half the map's width."""
    from cellannot_core.plots._style import PALETTE, UNKNOWN_COLOR, category_colors

    names = [f"type {i}" for i in range(100)] + [UNKNOWN]
    colours = category_colors(names)
    assert len(set(colours.values())) == 96 and colours[UNKNOWN] == UNKNOWN_COLOR  # 24 + 71 more, and Unknown's grey
    few = [f"type {i}" for i in range(20)]
    assert set(category_colors(few).values()) <= set(PALETTE)  # a figure of few types keeps the palette by name
    labels = np.array(names * 3, dtype=object)
    fig = latent_scatter(np.random.default_rng(0).normal(size=(len(labels), 2)), labels)
    assert fig.layout.legend.orientation == "h" and fig.layout.height > 600
    long = [f"a long atlas type name with its state, number {i:03d}" for i in range(40)] + ["x" * 40, "x" * 41]
    named = {t.name for t in latent_scatter(np.zeros((42, 2)), np.array(long, dtype=object)).data}
    assert len(named) == 42 and sum(len(n) <= 32 for n in named) == 40  # cut in the legend (they ran into the next
    assert {"x" * 40, "x" * 41} <= named  # column), but two names that would read alike are kept whole
    assert latent_scatter(np.zeros((20, 2)), np.array(few, dtype=object)).layout.legend.orientation is None


def test_class_counts_bar():
    lab = ["b"] * 5 + ["a"] * 7 + [UNKNOWN] * 9 + ["c"]
    fig = class_counts_bar(lab)
    bar = fig.data[0]
    assert list(bar.x) == ["a", "b", "c", UNKNOWN]  # by count, Unknown last
    assert list(bar.y) == [7, 5, 1, 9]
    assert bar.marker.color[-1] == UNKNOWN_COLOR
    grouped = class_counts_bar({"reference": lab, "query": ["a", "d"]})
    assert len(grouped.data) == 2 and [t.name for t in grouped.data] == ["reference", "query"]
    q = dict(zip(grouped.data[1].x, grouped.data[1].y))
    assert q["a"] == 1 and q["d"] == 1 and q["b"] == 0


def test_all_figures_serialise(pred_query):
    pred, query = pred_query
    for fig in (label_heatmap(pred, query), class_counts_bar(pred)):
        assert isinstance(pio.to_json(fig), str)


def test_long_or_many_category_names_are_tilted_not_run_into_each_other():
    """Found 2026-12-07 (a browser probe with CELLxGENE's names): "CD4-positive, alpha-beta T cell" and its
    neighbours ran into each other under a heatmap of four columns, labels kept level below nine."""
    from cellannot_core.plots._heatmap import label_heatmap

    long = ["CD4-positive, alpha-beta T cell", "natural killer cell", "B cell", "CD14-positive monocyte"]
    short = ["B", "NK", "CD4 T", "CD14 Mono"]
    for names, angle in ((long, -45), (short, 0)):
        fig = label_heatmap(names * 3, names * 3)
        assert fig.layout.xaxis.tickangle == angle, names
