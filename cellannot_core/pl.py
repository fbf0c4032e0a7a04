"""Plots of an annotated AnnData, in scanpy's manner (``ca.pl.label_heatmap(adata, "leiden")``).

Each function reads the keys :func:`cellannot_core.annotate` wrote (``key_added``, default
``"cellannot"``) and returns the app's plotly figure: Jupyter shows it when it is a cell's last
value, ``fig.show()`` opens it elsewhere, ``fig.write_html("f.html")`` saves it. Cells that got no
label (removed by the quality filters) are left out.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._constants import UNKNOWN, OutKeys
from .errors import DataError

__all__ = ["label_heatmap", "novelty", "reliability"]


def __dir__() -> list[str]:  # tab completion lists the plots, not this module's imports
    return sorted(__all__)


def _annotated(adata: Any, key_added: str) -> tuple[dict[str, str], Any]:
    """The annotation keys, after checking ``adata`` holds them, and its obs as a pandas DataFrame
    (a lazy AnnData's is xarray-backed)."""
    from .data.prepare import frame
    from .pipeline import annotation_keys

    keys = annotation_keys(key_added)
    obs = frame(adata.obs)
    missing = [f"obs['{k}']" for k in (keys["LABEL"], keys["IS_UNKNOWN"], keys["OOD_SCORE"]) if k not in obs]
    missing += [] if keys["UNS"] in adata.uns else [f"uns['{keys['UNS']}']"]
    if missing:
        raise DataError(f"this AnnData holds no annotations under '{key_added}' (no {missing[0]}): run ca.annotate "
                        "(or Annotator.predict) on it first, with the same key_added if you gave one")
    return keys, obs


def _labelled(obs: Any, keys: dict[str, str]) -> np.ndarray:
    return obs[keys["LABEL"]].notna().to_numpy()


def _column(obs: Any, key: str) -> np.ndarray:
    from .data.validate import check_label_column, per_cell_column

    check_label_column(obs, key, name="annotated AnnData")
    values = obs[key].astype(str).to_numpy()
    n_values = len(set(values))
    if per_cell_column(n_values, len(values)):
        raise DataError(f"'{key}' has {n_values:,} different values in {len(values):,} cells: it holds a measurement "
                        "or the cells' names. Group by a column of labels or clusters (e.g. 'leiden').")
    return values


def label_heatmap(adata: Any, groupby: str, *, key_added: str = OutKeys.UNS, normalize: str = "row",
                  title: str | None = None):
    """Predicted label (rows, Unknown last) against an obs column (``groupby``: the query's own
    labels, or clusters such as ``"leiden"``), each box the cells and their percentage of the row
    (``normalize="row"``), of the column (``"col"``) or of all cells (``"all"``)."""
    from .plots import label_heatmap as heatmap

    keys, obs = _annotated(adata, key_added)
    keep = _labelled(obs, keys)
    classes = [str(c) for c in adata.uns[keys["UNS"]].get("classes", [])]
    share = {"row": "of each predicted label", "col": f"of each {groupby}", "all": "of all cells"}.get(normalize, "")
    return heatmap(obs[keys["LABEL"]].astype(str).to_numpy()[keep], _column(obs, groupby)[keep],
                   normalize=normalize, row_title="Predicted label", col_title=groupby,
                   title=f"Predicted label by {groupby} (cells, % {share})" if title is None else title,
                   row_order=classes + [UNKNOWN])


def novelty(adata: Any, *, groupby: str | None = None, key_added: str = OutKeys.UNS, title: str | None = None):
    """The novelty score's distribution (higher = more novel) with the run's threshold: the cells
    labelled against those called Unknown, or one histogram per value of ``groupby``."""
    from .plots import score_histogram

    keys, obs = _annotated(adata, key_added)
    keep = _labelled(obs, keys)
    score = obs[keys["OOD_SCORE"]].to_numpy(dtype=float)[keep]
    if groupby is None:
        unknown = obs[keys["IS_UNKNOWN"]].to_numpy(dtype=bool)[keep]
        groups = {"labelled": score[~unknown], UNKNOWN: score[unknown]}
    else:
        values = _column(obs, groupby)[keep]
        groups = {str(v): score[values == v] for v in dict.fromkeys(values)}
    rejection = adata.uns[keys["UNS"]].get("rejection") or {}
    method = rejection.get("method", "novelty")
    thr = rejection.get("threshold")
    if title is None:
        title = f"Novelty score ({method})" + (f": Unknown above {float(thr):.3g}" if thr is not None else "")
    return score_histogram(groups, thr, title=title,
                           x_title=f"{method} score (higher = more novel)")


def reliability(adata: Any, truth_key: str, *, key_added: str = OutKeys.UNS, title: str | None = None):
    """Are the confidences honest? Accuracy against confidence (15 bins, with the ECE) on the cells
    whose own label (``truth_key``) is a reference type, before any Unknown call."""
    from .metrics import ece, reliability_curve
    from .plots import reliability_diagram

    keys, obs = _annotated(adata, key_added)
    if keys["PROBA"] not in adata.obsm:
        raise DataError(f"this AnnData has no obsm['{keys['PROBA']}'] (the class probabilities ca.annotate writes)")
    classes = np.array([str(c) for c in adata.uns[keys["UNS"]].get("classes", [])])
    proba = np.asarray(adata.obsm[keys["PROBA"]], dtype=float)
    truth = _column(obs, truth_key)
    known = _labelled(obs, keys) & np.isin(truth, classes) & np.isfinite(proba).all(axis=1)
    if not known.any():
        raise DataError(f"no cell's '{truth_key}' label is one of the reference's types ({', '.join(classes[:10])}): "
                        "the confidences cannot be checked against it")
    conf = proba[known].max(axis=1)
    correct = classes[proba[known].argmax(axis=1)] == truth[known]
    name = f"{int(known.sum()):,} cells of reference types"
    if title is None:
        title = f"Confidence against accuracy on '{truth_key}' (before the Unknown calls)"
    return reliability_diagram({name: reliability_curve(conf, correct)}, {name: ece(conf, correct)}, title=title)
