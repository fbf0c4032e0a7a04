"""Reusable widgets: the registry-driven hyper-parameter form, dataset summaries, traffic light,
the live run panel and small formatting helpers."""
from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd
import streamlit as st

from ui.state import WidgetKeys, code, md

LIGHT = {"green": ":green[●] Good overlap", "yellow": ":orange[●] Partial overlap",
         "red": ":red[●] Too little overlap"}


#: a trace's parts that hold the data's own text (labels, genes, cells), which plotly would render as its
#: HTML subset (``<a href>`` a link, ``<b>``); titles and hover templates are the app's own markup
_DATA_TEXT = ("name", "x", "y", "text", "hovertext", "labels", "customdata", "ids", "legendgroup")


def _text_only(value: Any) -> Any:
    import numpy as np

    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") if "<" in value or ">" in value \
            or "&" in value else value
    if isinstance(value, (list, tuple)):
        return type(value)(_text_only(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return np.vectorize(_text_only, otypes=[object])(value) if value.size else value
    return value


def text_only(fig: Any) -> Any:
    """``fig`` with the data's own text in its traces and axis labels escaped, so that a label such as
    ``<a href="http://host">x</a>`` is shown as written, not as a link (found 2026-12-07)."""
    for trace in fig.data:
        for prop in _DATA_TEXT:
            value = getattr(trace, prop, None) if prop in trace else None
            if value is not None:
                trace[prop] = _text_only(value)
    for axis in [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
        for prop in ("ticktext", "tickvals", "categoryarray"):  # (tickvals name the x and y escaped above)
            value = fig.layout[axis][prop]
            if value is not None:
                fig.layout[axis][prop] = _text_only(value)
    return fig


def plot(fig: Any, key: str | None = None) -> None:
    """Show a plotly figure at full width, the data's own text as text (:func:`text_only`)."""
    st.plotly_chart(text_only(fig), width="stretch", key=key)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# ------------------------------------------------------------------------------ hyper-parameters


#: the registry's help texts say what a 0 stands for as "(0 = its own default: ...)" or "(0 = off)"
_ZERO_MEANS = re.compile(r"\(0 = ([^;)]+)")

#: plain words for the hyper-parameters a biologist meets first ("knn k", "ood score" read as code);
#: the help gives the name the CLI's ``--hparam`` and the API take. Others read as their name.
PLAIN_LABELS = {
    "ood_score": "novelty score (the Unknown rule)", "knn_k": "neighbours for the novelty distance",
    "smooth_k": "neighbours averaging the labels", "C": "C (how closely it fits the reference)",
    "cv": "calibration folds", "n_latent": "latent dimensions", "latent_model": "latent model",
    "lr": "learning rate", "n_pcs": "principal components", "reject_below": "Unknown below probability",
    "use_query": "train with the query cells", "patience": "early-stop patience (epochs)",
}


def hparam_label(name: str) -> str:
    """A hyper-parameter's widget label: plain words where :data:`PLAIN_LABELS` has them."""
    return PLAIN_LABELS.get(name, name.replace("_", " "))


def hparam_widget(model: str, name: str, hp: Any) -> Any:
    """One widget for a registry ``HParam``: selectbox for choices, checkbox for bools,
    number_input for numbers (bounded by low/high), text_input for strings."""
    key = WidgetKeys.HPARAM.format(model=model, name=name)
    label, helptext = hparam_label(name), f"{hp.help}\n\nIn the CLI and the Python API: `{name}`"
    t = type(hp.default)
    zero = _ZERO_MEANS.search(hp.help) if t in (int, float) and hp.default == 0 else None
    if zero:  # a box showing "0" by default says what 0 means, or "max epochs: 0" reads as a fault
        label = f"{label} (0 = {zero.group(1).strip()})"
    if hp.choices is not None:
        choices = list(hp.choices)
        return st.selectbox(label, choices, index=choices.index(hp.default) if hp.default in choices else 0,
                            help=helptext, key=key)
    if t is bool:
        return st.checkbox(label, value=hp.default, help=helptext, key=key)
    if t is int:
        return int(st.number_input(label, value=int(hp.default), step=1, help=helptext, key=key,
                                   min_value=None if hp.low is None else int(hp.low),
                                   max_value=None if hp.high is None else int(hp.high)))
    if t is float:
        d = float(hp.default)
        fmt = "%.2e" if d != 0 and (abs(d) < 1e-2 or abs(d) >= 1e4) else "%.4g"
        return float(st.number_input(label, value=d, help=helptext, key=key, format=fmt,
                                     min_value=None if hp.low is None else float(hp.low),
                                     max_value=None if hp.high is None else float(hp.high)))
    return st.text_input(label, value=str(hp.default), help=helptext, key=key)


def hparam_form(spec: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Widgets for every hyper-parameter of a registry entry; advanced ones in an expander.

    Returns only the values that differ from the defaults (the run card records all).
    """
    values: dict[str, Any] = {}
    shown = {k: h for k, h in spec.hparams.items() if not h.internal and k not in skip}  # internal: set from the data
    basic = {k: h for k, h in shown.items() if not h.advanced}
    advanced = {k: h for k, h in shown.items() if h.advanced}
    cols = st.columns(3)
    for i, (name, hp) in enumerate(basic.items()):
        with cols[i % 3]:
            values[name] = hparam_widget(spec.name, name, hp)
    if advanced:
        with st.expander(f"Advanced hyper-parameters ({len(advanced)})"):
            cols = st.columns(3)
            for i, (name, hp) in enumerate(advanced.items()):
                with cols[i % 3]:
                    values[name] = hparam_widget(spec.name, name, hp)
    return {k: v for k, v in values.items() if v != spec.hparams[k].default}


# ------------------------------------------------------------------------------ data page


def dataset_summary(info: dict[str, Any], summ: dict[str, Any], count_layers: list[str] = ()) -> None:
    """Cells, genes, value state and what will be used, plus problems in plain words;
    ``count_layers``: layers of another name holding the counts X lacks (a button below takes one)."""
    st.caption(f"{code(info['name'])} ({md(info['source'])}" + ("; restored after a reload" if info.get("restored") else "")
               + ")")
    c1, c2, c3 = st.columns(3)
    c1.metric("Cells", f"{summ['n_cells']:,}")
    c2.metric("Genes", f"{summ['n_genes']:,}")
    # after the layer button the summary is of the layer taken (X itself is kept as given, and written back)
    c3.metric(f"Values in layers['{info['layer']}']" if info.get("layer") else "Values in X", str(summ["value_state"]))
    used = summ.get("counts_source") or "no raw counts found"
    if info.get("layer"):
        used = f"raw counts from layers['{md(info['layer'])}'] (taken on this page)"
    st.markdown(f"**Will use:** {md(used) if not info.get('layer') else used}; gene identifiers: "
                f"{md(summ.get('gene_ids'))} (e.g. {md(', '.join(summ.get('example_genes', [])[:3]))})")
    if count_layers:  # one line and the button, not the reader's advice for Python and the command line
        st.warning(f"X holds {summ['value_state']} values, not raw counts; layers['{md(count_layers[0])}'] holds counts: "
                   "take them with the button below.", icon=":material/layers:")
    for p in summ.get("problems", []):
        if not (count_layers and "holds counts" in p):
            st.error(md(p))
    for n in summ.get("notes", []):  # e.g. a table of cell annotations joined beside a 10x matrix
        st.info(md(n), icon=":material/table_chart:")
    if not summ.get("counts_source") and not count_layers:
        count_models = count_model_names()
        if count_models:
            st.warning(f"No raw counts in this dataset (X holds {summ['value_state']} values, there is no "
                       "`.raw` or `layers['counts']` with counts, and the values are not log1p of normalised "
                       "counts, which would give them back). The count models "
                       f"({', '.join(count_models)}) model integer counts and cannot use it: pick another model, "
                       "or load the file that still holds the raw counts.")


def count_model_names() -> list[str]:
    """Registered models that need raw counts (from the registry, so new models appear here)."""
    from cellannot_core.models import MODELS

    return [n for n, spec in MODELS.items() if spec.supports.needs_counts]


def label_counts_table(candidates: list[dict[str, Any]], key: str | None) -> None:
    cand = next((c for c in candidates if c["key"] == key), None)
    if cand is None:
        return
    df = pd.DataFrame({"class": list(cand["counts"]), "cells": list(cand["counts"].values())})
    st.dataframe(df, hide_index=True, height=min(300, 38 + 35 * len(df)))


def gene_overlap_report(rep: dict[str, Any]) -> None:
    st.markdown(f"#### Gene overlap  {LIGHT[rep['light']]}")
    if rep["ok"]:
        st.progress(min(1.0, rep["fraction"]),
                    text=f"{rep['n_shared']:,} of {rep['n_ref']:,} reference genes found in the query "
                         f"({math.floor(rep['fraction'] * 1000) / 10:g}%); the query has {rep['n_query']:,} genes")
        how = rep["message"].split(" (", 1)[-1].removesuffix(")") if " (" in rep["message"] else rep["message"]
        st.caption(md(f"Matched by {how}"))  # (the count is in the bar above: it was said twice, 2026-12-07)
        if rep.get("approximate"):
            st.warning("Genes matched only when ignoring upper/lower case: check both datasets are the same species.")
        if rep["light"] == "red":
            st.warning("Few genes are shared: predictions may be poor. Check gene identifiers (symbols vs Ensembl).")
    else:
        st.error(md(rep["message"]))


# ------------------------------------------------------------------------------ train page

STATE_ICON = {"queued": ":material/hourglass_empty:", "running": ":material/autorenew:",
              "done": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
              "cancelled": ":orange[:material/stop_circle:]", "interrupted": ":orange[:material/warning:]"}


def status_text(status: dict[str, Any]) -> str:
    state = status.get("state", "?")
    return f"{STATE_ICON.get(state, '')} **{state}**: {status.get('message', '')}"
