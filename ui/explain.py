"""Explain view: TabNet (SIMS) gene masks of a finished run's query cells.

The explain matrix is computed on demand from the run's saved model and its annotated query
(``model/`` + ``annotated.h5ad``), cached per run (``st.cache_resource`` for the model,
``st.cache_data`` for the matrix). Every view and download shows one per-cell gene weight,
chosen by the page's gene ranking (``cellannot_core.models.tabnet.gene_weights``): positive
evidence (default: the cell's mask share times the positive part of the gene's standardised
expression) or attention (the mask share alone, as the SIMS thesis). Summaries follow the SIMS
thesis: global importances (column sums normalised to 1), per-class mean weights normalised per
gene by their maximum over classes, and the top genes of each class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cellannot_core._constants import OutKeys
from cellannot_core.runs import csv_bytes
from ui.results import Run
from ui.state import md

RANKING_LABELS = {"positive": "positive evidence", "attention": "attention (SIMS)"}  # radio labels
WEIGHT_UNITS = {"positive": "mask share x max(z, 0)", "attention": "share of the cell's mask"}  # axis titles
MAX_HEATMAP_CELLS = 600  # rows of the cells x genes heatmap (seeded subsample, balanced over groups)
GENES_PER_CLASS = 5  # columns of the heatmaps: each class's top genes, merged


class ExplainKeys:
    """Widget keys of the Explain page."""

    GROUP_BY = "w_explain_group_by"
    RANKING = "w_explain_ranking"
    N_TOP = "w_explain_n_top"
    CLASS = "w_explain_class"
    CELL = "w_explain_cell"
    WHY_CELL = "w_why_cell"


def explain_models() -> list[str]:
    """Registry names of the models with explain matrices."""
    from cellannot_core.models import MODELS, model_names

    return [n for n in model_names() if MODELS[n].supports.explain]


def run_can_explain(run: Run) -> bool:
    from cellannot_core.errors import CellannotError
    from cellannot_core.models import get_spec

    try:
        return bool(get_spec(str(run.card.get("model"))).supports.explain)
    except CellannotError:
        return False


@st.cache_resource(show_spinner=False, max_entries=4)
def load_run_model(root: str, run_id: str) -> Any:
    from cellannot_core.models import load_model
    from cellannot_core.runs import RunDir

    return load_model(RunDir.open(root, run_id).model_dir, device="cpu")


def compute_explain(root: str, run_id: str) -> dict[str, Any]:
    """Explain matrix of every query cell (no Streamlit): model + annotated query -> arrays."""
    import anndata as ad

    from cellannot_core._constants import RunFiles
    from cellannot_core.data import prepare_query
    from cellannot_core.errors import DataError
    from cellannot_core.pipeline import gene_labels
    from cellannot_core.runs import RunDir, read_json

    rd = RunDir.open(root, run_id)
    bundle = read_json(rd.model_dir / "bundle.json")
    if not isinstance(bundle, dict) or "genes" not in bundle:
        raise DataError(f"run {run_id} has no model bundle; train it again to see explain matrices")
    model = load_run_model(root, run_id)
    qa = ad.read_h5ad(rd.file(RunFiles.ANNOTATED))
    split, _ = prepare_query(qa, genes=bundle["genes"], norm_genes=bundle.get("norm_genes"), symbols=bundle,
                             min_shared_genes=min(int(bundle.get("min_shared_genes", 200)), len(bundle["genes"])),
                             allow_lognorm=True, with_counts=False)
    M = model.explain(split.X).astype(np.float32)
    Z = model.standardized(split.X)
    rows = np.asarray(split.index) if split.index is not None else np.arange(qa.n_obs)
    obs = qa.obs.iloc[rows]
    return {"M": M, "Z": Z, "genes": gene_labels(bundle), "cells": obs.index.astype(str).to_numpy(), "rows": rows,
            "predicted": obs[OutKeys.LABEL_RAW].astype(str).to_numpy(),
            "confidence": obs[OutKeys.CONFIDENCE].to_numpy(dtype=float)}


@st.cache_data(show_spinner="Computing the explain matrices of the query cells...", max_entries=4)
def explain_data(root: str, run_id: str) -> dict[str, Any]:
    return compute_explain(root, run_id)


# ------------------------------------------------------------------------------ summaries (pure)


def group_labels(run: Run, data: dict[str, Any], group_by: str) -> np.ndarray:
    """Predicted class of each explained cell, or its own query label (``group_by="query"``)."""
    if group_by == "query" and run.query_labels is not None:
        return np.asarray(run.query_labels)[data["rows"]]
    return data["predicted"]


def group_order(run: Run, labels: np.ndarray) -> list[str]:
    present = set(labels.tolist())
    order = [c for c in run.classes if c in present]
    return order + sorted(present - set(order))


def weights(data: dict[str, Any], ranking: str, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Gene weights of the explained cells ``rows`` under ``ranking`` (cells x genes; see
    ``cellannot_core.models.tabnet.gene_weights``)."""
    from cellannot_core.models.tabnet import gene_weights

    return gene_weights(data["M"][rows], data["Z"][rows], ranking)


def summaries(data: dict[str, Any], labels: np.ndarray, order: list[str], n_top: int, ranking: str) -> dict[str, Any]:
    """Global importances, per-class importances (raw and normalised per gene), top genes."""
    from cellannot_core.models.tabnet import class_mean, global_importance, normalize_per_gene, top_genes_per_class

    W, genes = weights(data, ranking), data["genes"]
    per_class = class_mean(W, labels, genes, classes=order)
    norm = normalize_per_gene(per_class)
    top = top_genes_per_class(per_class, n_top)
    heat_genes = list(dict.fromkeys(top[top["rank"] <= GENES_PER_CLASS]["gene"]))
    return {"global": global_importance(W, genes), "per_class": per_class, "normalized": norm, "top": top,
            "heat_genes": heat_genes}


def heatmap_cells(labels: np.ndarray, order: list[str], max_cells: int = MAX_HEATMAP_CELLS, seed: int = 0) -> np.ndarray:
    """Row positions of a seeded subsample, at most ``max_cells``, shared fairly between the
    groups, ordered by group (``order``)."""
    rng = np.random.default_rng(seed)
    per = max(1, max_cells // max(1, len(order)))
    rows = []
    for g in order:
        idx = np.flatnonzero(labels == g)
        if len(idx) > per:
            idx = np.sort(rng.choice(idx, per, replace=False))
        rows.append(idx)
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def cell_matrix(data: dict[str, Any], rows: np.ndarray, genes: list[str], ranking: str) -> pd.DataFrame:
    """Gene weights of cells ``rows`` for ``genes`` under ``ranking`` (cells x genes)."""
    col = [data["genes"].index(g) for g in genes]
    return pd.DataFrame(weights(data, ranking, rows)[:, col], index=data["cells"][rows], columns=genes)


def cell_mask(data: dict[str, Any], cell: str, ranking: str, n: int = 20) -> pd.DataFrame:
    """One cell's gene weights under ``ranking``, top ``n`` genes."""
    i = int(np.flatnonzero(data["cells"] == cell)[0])
    w = weights(data, ranking, slice(i, i + 1))[0]
    top = np.argsort(-w, kind="stable")[:n]
    return pd.DataFrame({"gene": [data["genes"][j] for j in top], "importance": w[top]})


def full_matrix_csv(data: dict[str, Any], ranking: str) -> bytes:
    """Every query cell x gene (gene weights under ``ranking``) as CSV (built on click)."""
    df = pd.DataFrame(weights(data, ranking).astype(np.float32), index=data["cells"], columns=data["genes"])
    df.index.name = "cell"
    return csv_bytes(df, float_format="%.5g")


# ------------------------------------------------------------------------------ figures


def _layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    from cellannot_core.plots import TEMPLATE

    fig.update_layout(template=TEMPLATE, title=title, height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig


def global_bar(global_imp: pd.Series, ranking: str, n: int = 30) -> go.Figure:
    top = global_imp.head(n)[::-1]
    fig = go.Figure(go.Bar(x=top.to_numpy(), y=top.index.tolist(), orientation="h", marker_color="#0072B2",
                           hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    fig.update_xaxes(title=f"share of all weight ({WEIGHT_UNITS[ranking]})")
    return _layout(fig, f"Global gene importance (top {len(top)})", max(300, 18 * len(top) + 80))


def class_heatmap(normalized: pd.DataFrame, genes: list[str]) -> go.Figure:
    z = normalized[genes]
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=genes, y=z.index.tolist(), colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title="normalised<br>weight"),
                               hovertemplate="class %{y}<br>gene %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60)
    return _layout(fig, "Mean weight per class, each gene divided by its maximum over classes",
                   max(300, 30 * len(z) + 160))


def cells_heatmap(mat: pd.DataFrame, groups: np.ndarray, order: list[str], ranking: str) -> go.Figure:
    """Cells (rows, grouped) x genes; group names as y ticks at the middle of each block."""
    n = len(mat)
    fig = go.Figure(go.Heatmap(z=mat.to_numpy(), x=mat.columns.tolist(), y=np.arange(n), colorscale="Viridis",
                               zmin=0, colorbar=dict(title="weight"), customdata=np.c_[mat.index, groups],
                               hovertemplate="cell %{customdata[0]}<br>group %{customdata[1]}<br>gene %{x}"
                                             "<br>%{z:.4f}<extra></extra>"))
    ticks, text, start = [], [], 0
    for g in order:
        k = int((groups == g).sum())
        if k == 0:
            continue
        ticks.append(start + (k - 1) / 2)
        text.append(g)
        if start > 0:
            fig.add_hline(y=start - 0.5, line_color="white", line_width=2)
        start += k
    fig.update_yaxes(tickvals=ticks, ticktext=text, autorange="reversed", title=None)
    fig.update_xaxes(tickangle=-60)
    return _layout(fig, f"Explain matrix: {n} cells x {mat.shape[1]} genes ({WEIGHT_UNITS[ranking]})", 560)


def cell_bar(mask: pd.DataFrame, cell: str, ranking: str) -> go.Figure:
    d = mask[::-1]
    fig = go.Figure(go.Bar(x=d["importance"], y=d["gene"], orientation="h", marker_color="#E69F00",
                           hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    fig.update_xaxes(title=WEIGHT_UNITS[ranking])
    return _layout(fig, f"Cell {cell}: top {len(d)} genes", max(300, 18 * len(d) + 80))


# ------------------------------------------------------------------------------ why this label (every model)

WHY_MAX_CHOICES = 500  # cells offered in the picker (Unknown cells first)


def why_choices(run: Run) -> list[str]:
    """Cells to pick from: the Unknown ones first, then the rest (at most WHY_MAX_CHOICES)."""
    obs = run.obs
    unknown = obs.index[obs[OutKeys.IS_UNKNOWN].astype(bool).to_numpy()]
    known = obs.index[~obs[OutKeys.IS_UNKNOWN].astype(bool).to_numpy()]
    return [str(c) for c in list(unknown[:WHY_MAX_CHOICES]) + list(known[:max(0, WHY_MAX_CHOICES - len(unknown))])]


def cell_probabilities(run: Run, cell: str, n: int = 6) -> pd.DataFrame:
    """The cell's calibrated class probabilities (highest first)."""
    from cellannot_core.calibration import softmax

    i = run.obs.index.get_loc(cell)
    p = softmax(run.arrays["query_logits"][i:i + 1], float(run.card.get("temperature", 1.0)))[0]
    order = np.argsort(-p)[:n]
    return pd.DataFrame({"type": [run.classes[j] for j in order], "probability": p[order]})


def why_text(run: Run, cell: str) -> str:
    """The decision in words: label, most likely type, confidence, novelty score against the threshold."""
    row = run.obs.loc[cell]
    rej = run.rejection
    thr = rej.get("threshold")
    score = float(row[OutKeys.OOD_SCORE])
    raw, conf = str(row[OutKeys.LABEL_RAW]), float(row[OutKeys.CONFIDENCE])
    method = rej.get("method", "novelty")
    ratio = f" ({score / thr:.2f} x the threshold)" if thr not in (None, 0) and np.isfinite(thr) else ""
    if bool(row[OutKeys.IS_UNKNOWN]):
        how = (f" Its distance counted {2 - conf:.2f} times (2 - its probability), and its score is decided with its "
               "query cluster: the cluster's typical cell is beyond the threshold, or the cell itself is beyond the "
               "reference's 99th percentile." if method == "knn_class" else "")
        return (f"**Unknown**: its {method} novelty score is {score:.3g}, above the threshold {thr:.3g}{ratio}.{how} "
                f"Had it been labelled, it would be **{md(raw)}** (probability {conf:.0%}).")
    return (f"**{md(raw)}** with probability {conf:.0%}; its {method} novelty score {score:.3g} is within the "
            f"threshold {thr:.3g}{ratio}.")


def why_markers(run: Run, label: str, n: int = 10) -> pd.DataFrame | None:
    """The reference markers of ``label`` and whether the query cells given that type express
    them (:func:`cellannot_core.evidence.marker_evidence`); None for runs that predate it."""
    from cellannot_core.evidence import marker_evidence
    from cellannot_core.pipeline import gene_labels

    a = run.arrays
    if "ref_class_mean" not in a or "query_raw_mean" not in a or label not in run.classes:
        return None
    c = run.classes.index(label)
    return marker_evidence(a["ref_class_mean"], a["query_raw_mean"][c], gene_labels(run.card), run.classes, label,
                           n=n)


def why_nearest(run: Run, cell: str) -> pd.DataFrame | None:
    """The cell's nearest reference types (:func:`cellannot_core.evidence.nearest_types`)."""
    if "query_latent" not in run.arrays or "ref_latent" not in run.arrays:
        return None
    return _nearest(run.root, run.run_id, int(run.obs.index.get_loc(cell)), tuple(run.classes))


@st.cache_data(show_spinner=False, max_entries=64)
def _nearest(root: str, run_id: str, row: int, classes: tuple[str, ...]) -> pd.DataFrame:
    from cellannot_core.evidence import nearest_types
    from ui.results import load_arrays

    a = load_arrays(root, run_id)
    return nearest_types(a["query_latent"][row], a["ref_latent"], a["ref_y"], list(classes))


def why_section(run: Run) -> None:
    """For any model: pick a cell and see why it got its label."""
    from ui.widgets import plot

    choices = why_choices(run)
    if not choices:
        return
    cell = st.selectbox(f"Cell (Unknown cells first; {len(choices):,} offered)", choices, key=ExplainKeys.WHY_CELL)
    st.markdown(why_text(run, cell))
    c1, c2 = st.columns([1, 2])
    probs = cell_probabilities(run, cell)
    fig = go.Figure(go.Bar(x=probs["probability"], y=probs["type"], orientation="h", marker_color="#0072B2",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    from cellannot_core.plots import every_tick

    fig.update_layout(xaxis=dict(range=[0, 1], title="probability"),  # (a long name cut the axis's title, 2026-12-07)
                      yaxis=dict(autorange="reversed", automargin=True, **every_tick(probs["type"])),
                      height=260, margin=dict(l=10, r=10, t=30, b=10), title="Class probabilities")
    with c1:
        plot(fig, key="why_probs")
    with c1:
        near = why_nearest(run, cell)
        if near is not None:
            st.markdown("**Nearest reference types** (latent space; distance over the type's usual, 1 = as close as "
                        "its own cells)")
            st.dataframe(near.rename(columns={"type": "Type", "share_of_neighbours": "Of 10 nearest",
                                              "ratio": "Ratio"})[["Type", "Of 10 nearest", "Ratio"]].head(5),
                         hide_index=True, column_config={  # (narrow: in a third of the page the ratio was cut off)
                             "Of 10 nearest": st.column_config.NumberColumn(format="percent", width="small"),
                             "Ratio": st.column_config.NumberColumn(format="%.2f", width="small",
                                                                    help="the distance over the type's usual one")})
    raw = str(run.obs.loc[cell, OutKeys.LABEL_RAW])
    markers = why_markers(run, raw)
    with c2:
        if markers is None:
            st.caption("This run predates the marker evidence: train it again to see it.")
        elif markers.empty:
            st.caption(f"No gene marks {md(raw)} out from every other reference type among the model's genes.")
        else:
            n_sup = int(markers["supports"].sum())
            st.markdown(f"**{md(raw)}'s reference markers** in the query cells whose raw label it is (Unknown ones "
                        f"included): {n_sup} of {len(markers)} "
                        "expressed (at least half the reference level)" + ("" if n_sup >= len(markers) / 2 else
                                                                         ": weak evidence for this label"))
            st.dataframe(markers.rename(columns={"gene": "Gene", "reference_class_mean": f"{raw} (reference)",
                                                 "other_classes_max": "Highest other type",
                                                 "query_group_mean": "Query cells of this raw label",
                                                 "supports": "Supports"}),
                         hide_index=True, height=260, column_config={
                             c: st.column_config.NumberColumn(format="%.2f") for c in
                             (f"{raw} (reference)", "Highest other type", "Query cells of this raw label")})
