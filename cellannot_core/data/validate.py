"""Checks on the input data, each failing with one clear :class:`DataError` line.

Fatal problems raise; fixable ones are fixed and described in a list of warning strings
(never printed), which :func:`validate_dataset` and :func:`~cellannot_core.data.prepare.prepare`
put in their report. Decisions:

- duplicate cell names are made unique (``obs_names_make_unique`` style: the first keeps its
  name, later ones get ``-1``, ``-2``...) with a warning;
- duplicate gene names are made unique the same way, so only the first of each is matched
  across datasets (summing would be wrong for log-normalised input and hides the problem);
- reference cells with a missing label (NaN, empty, ``"nan"``, ``"NA"``, ``"None"``) are dropped;
- reference classes with fewer than ``min_cells_per_class`` cells are dropped (reported);
  fewer than 2 remaining classes is an error;
- cells whose counts are all zero are dropped from the reference and kept (with a warning)
  in the query, whose cells must all come back in input order.
"""
from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellannot_core._constants import MAX_CLASSES, MAX_LABEL_CHARS, UNKNOWN
from cellannot_core.errors import DataError, did_you_mean, shown_name

from .values import detect_value_state, get_counts

__all__ = [
    "MISSING_LABELS",
    "check_not_empty",
    "check_values",
    "make_unique",
    "check_label_column",
    "per_cell_column",
    "missing_label_mask",
    "untyped_label_mask",
    "clean_labels",
    "match_query_labels",
    "query_labels",
    "zero_total_cells",
    "validate_dataset",
]

MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "none", "null"})
#: cell-type labels that name no type: a reference class called "Unknown" would be predicted under the
#: name cellannot gives the cells the reference lacks, and a query cell so labelled is not of a novel type
NO_TYPE_LABELS = frozenset({UNKNOWN.lower(), "unassigned", "unclassified", "unlabeled", "unlabelled",
                            "unannotated", "undefined", "undetermined"})


def check_not_empty(n_obs: int, n_vars: int, *, name: str = "dataset") -> None:
    """Raise if there are no cells or no genes."""
    if n_obs == 0 or n_vars == 0:
        raise DataError(
            f"the {name} is empty ({n_obs} cells x {n_vars} genes). "
            "Check that the right file was chosen and that it holds an expression matrix."
        )


def check_values(X, *, name: str = "dataset", state: str = "counts") -> None:
    """Raise on NaN / Inf, on negative counts, and on a matrix without any counts.

    Parameters
    ----------
    X
        Cells x genes (sparse or dense).
    name
        For messages.
    state
        ``"counts"`` (negatives are an error) or ``"lognorm"``.
    """
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    n_nan = int(np.isnan(vals).sum()) if vals.dtype.kind == "f" else 0
    n_inf = int(np.isinf(vals).sum()) if vals.dtype.kind == "f" else 0
    if n_nan or n_inf:
        what = " and ".join(
            t for t in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if t
        )
        raise DataError(
            f"the {name} matrix contains {what} values. Replace them (missing counts are 0) "
            "or export the raw counts again."
        )
    if state == "counts" and vals.size and vals.min() < 0:
        raise DataError(
            f"the {name} counts contain {int((vals < 0).sum())} negative values. "
            "Counts cannot be negative: provide the raw (unscaled) counts."
        )
    if vals.size == 0 or not np.any(vals):
        raise DataError(
            f"the {name} has no usable counts: every value is zero. "
            "Check that the matrix holds the expression data (not an empty or placeholder layer)."
        )


def per_cell_column(n_values: int, n_cells: int) -> bool:
    """Whether a column of ``n_values`` distinct values over ``n_cells`` cells holds a measurement or
    the cells' names (a count, a coordinate, a barcode) rather than groups: more values than half
    the cells, and more than 50 (a small dataset may have many small types). The one rule for a
    label column, a batch key and a plot's grouping."""
    return n_values > max(50, n_cells // 2)


def make_unique(names: pd.Index, *, what: str = "cell", name: str = "dataset") -> tuple[pd.Index, str | None]:
    """Make names unique, keeping the first occurrence as it is.

    Returns
    -------
    (names, warning)
        The unique names and a warning sentence (``None`` when nothing changed).
    """
    names = pd.Index(names.astype(str))
    dup = names.duplicated()
    if not dup.any():
        return names, None
    new = pd.Index(ad.utils.make_index_unique(names.copy()))
    examples = ", ".join(shown_name(v) for v in pd.unique(names[dup])[:3])
    if what == "gene":
        msg = (
            f"the {name} has {int(dup.sum())} duplicate gene names (e.g. {examples}); for this run they "
            "were made unique as var_names_make_unique does (the object itself keeps them), so only the first of each "
            "is matched to the other dataset"
        )
    else:
        msg = (
            f"the {name} has {int(dup.sum())} duplicate cell names (e.g. {examples}); for this run they "
            "were made unique as obs_names_make_unique does (later copies get -1, -2, ...; the object itself keeps "
            "them)"
        )
    return new, msg


def check_label_column(obs: pd.DataFrame, label_key: str, *, name: str = "reference") -> None:
    """Raise if ``label_key`` is not a column of ``obs``, listing the columns there are."""
    if label_key not in obs.columns:
        cols = ", ".join(shown_name(c) for c in obs.columns[:30]) or "none"
        more = f" (and {len(obs.columns) - 30} more)" if len(obs.columns) > 30 else ""
        hint = ("" if len(obs.columns) else " It has no cell annotations: a 10x matrix folder (or its archive) "
                "gets them from a table put beside the matrix, a row per cell with its barcode in one column and "
                "e.g. its cell type in another; other files: save the data as .h5ad with them in obs.")
        raise DataError(
            f"the {name} has no label column '{label_key}'. "
            f"Choose one of its obs columns: {cols}{more}." + did_you_mean(label_key, obs.columns) + hint
        )
    col = obs[label_key]
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else pd.unique(col.to_numpy(dtype=object))
    longest = max((len(str(v)) for v in values), default=0)
    if longest > MAX_LABEL_CHARS:  # (widened to its length in every cell, 0.45 MB took 5 GB: found 2026-12-07)
        raise DataError(f"the {name}'s label column '{shown_name(label_key)}' holds a label of {longest:,} characters, "
                        f"where a cell type's name has at most {MAX_LABEL_CHARS}: choose the column naming each cell's "
                        "type, or shorten its values.")


_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))  # zero-width characters


def label_text(values) -> pd.Series:
    """Labels as cellannot names types: as text, in Unicode's composed form (NFC: "ï" typed as one
    character or as "i" and a combining diaeresis are one name), without zero-width characters, and
    stripped of spaces around them. Two writings of one name made two classes of one look, each
    learnt from part of its cells, and a name with a trailing space was merged with its bare
    twin without a word (found 2026-12-07 by a probe with an atlas reference)."""
    import unicodedata

    return pd.Series(np.asarray(values, dtype=object)).astype(str).map(
        lambda v: unicodedata.normalize("NFC", v.translate(_INVISIBLE)).strip())


def _label_form(label: str) -> str:
    return " ".join(str(label).split()).casefold()


def match_query_labels(labels, classes) -> tuple[np.ndarray, dict[str, str]]:
    """Each query label's reference class index (-1: a type the reference lacks), the label as it
    is, or else regardless of case and of repeated spaces when that names one class ("b" for "B",
    "CD4  T" for "CD4 T"); and the labels matched that way (query label -> class)."""
    exact = {str(c): i for i, c in enumerate(classes)}
    forms: dict[str, int] = {}
    for c, i in exact.items():
        forms[_label_form(c)] = -2 if _label_form(c) in forms else i  # -2: two classes of one form
    idx, renamed = [], {}
    for v in labels:
        i = exact.get(v, -1)
        if i < 0 and v:
            i = max(forms.get(_label_form(v), -1), -1)
            if i >= 0:
                renamed[str(v)] = str(classes[i])
        idx.append(i)
    return np.asarray(idx, dtype=np.int64), renamed


def query_labels(obs: pd.DataFrame, key: str, classes) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The query's own labels in ``obs[key]``, to measure the predictions by: each cell's label
    ("" where it names no type, :func:`untyped_label_mask`), a label that differs from a reference
    class only in case or spacing named as that class (:func:`match_query_labels`); its class index
    (-1: a type the reference lacks); the mask of cells without a label; warnings."""
    check_label_column(obs, key, name="query")
    col = obs[key]
    missing = untyped_label_mask(col)
    labels = label_text(col).to_numpy(dtype=object)
    labels[missing] = ""
    idx, renamed = match_query_labels(labels, classes)
    warns = [] if len(labels) == 0 or not missing.all() else [
        f"the query's label column {key!r} names no cell type (every value is empty, NaN or Unknown): the labels "
        "are not measured against it"]
    if len(labels) and not missing.all() and not (idx >= 0).any():  # (cluster numbers, a count column: the
        shown = ", ".join(repr(str(v))[:40] for v in pd.unique(labels[~missing])[:3])  # metrics were printed as
        warns.append(f"none of the query's labels in {key!r} names a reference type ({shown}...): every labelled "  # if
                     "cell counts as a type the reference lacks, so the accuracy figures only say how many were "  # all
                     "called Unknown; check it is the column of cell types")  # novel, found 2026-12-07)
    if renamed:  # the labels the metrics compare with the predictions: as the reference names them
        labels = np.asarray([renamed.get(v, v) for v in labels], dtype=object)
        shown = ", ".join(f"{k!r} as {v!r}" for k, v in list(renamed.items())[:5])
        warns.append(f"query labels matched to reference types regardless of case or spacing: {shown}"
                     + (f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""))
    return labels, idx, missing, warns


def missing_label_mask(labels: pd.Series) -> np.ndarray:
    s = pd.Series(labels, copy=False)
    miss = s.isna().to_numpy()
    text = s.astype(str).str.strip().str.lower()
    return miss | text.isin(MISSING_LABELS).to_numpy()


def untyped_label_mask(labels: pd.Series) -> np.ndarray:
    """:func:`missing_label_mask` of a cell-type column, plus the labels that name no type
    (:data:`NO_TYPE_LABELS`, any case)."""
    s = pd.Series(labels, copy=False)
    text = s.astype(str).str.strip().str.lower()
    return missing_label_mask(s) | text.isin(NO_TYPE_LABELS).to_numpy()


def clean_labels(
    labels: pd.Series | np.ndarray,
    *,
    label_key: str,
    min_cells_per_class: int = 10,
    name: str = "reference",
) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Decide which reference cells keep their labels.

    Cells with a missing label or one naming no type (:data:`NO_TYPE_LABELS`, e.g. "Unknown")
    are dropped, then classes with fewer than ``min_cells_per_class`` cells.

    Parameters
    ----------
    labels
        One label per cell.
    label_key
        The column name, for messages.
    min_cells_per_class
        Smallest class kept.
    name
        For messages.

    Returns
    -------
    (keep, info, warnings)
        ``keep``: bool mask over the cells; ``info``: ``n_missing_labels``,
        ``dropped_classes`` (class -> cells) and ``class_counts`` (kept class -> cells);
        ``warnings``: sentences for the report.

    Raises
    ------
    DataError
        All labels missing, a single class, or fewer than 2 classes big enough.
    """
    s = pd.Series(np.asarray(labels, dtype=object))
    blank = missing_label_mask(s)
    missing = untyped_label_mask(s)
    warns: list[str] = []
    if missing.all():
        raise DataError(
            f"the {name} label column '{label_key}' has no labels (all {len(s)} are missing or name no "
            "cell type). Choose the column that holds the cell types."
        )
    if blank.any():
        warns.append(
            f"{int(blank.sum())} {name} cells have no label in '{label_key}' and were left out"
        )
    untyped = missing & ~blank
    if untyped.any():
        names = ", ".join(sorted(set(s[untyped].astype(str).str.strip())))
        warns.append(
            f"{int(untyped.sum())} {name} cells labelled {names} in '{label_key}' name no cell type and were "
            f"left out: '{UNKNOWN}' is what cellannot calls a cell of a type the reference lacks"
        )
    text = label_text(s)
    writings: dict[str, set[str]] = {}  # a name's writings: spaces around it, Unicode forms, invisible characters
    for raw, canon in set(zip(s.astype(str)[~missing], text[~missing])):
        writings.setdefault(canon, set()).add(raw)
    written = {raw: canon for canon, raws in writings.items() if len(raws) > 1 for raw in sorted(raws) if raw != canon}
    if written:
        shown = ", ".join(f"{k!r} as {v!r}" if k.strip() != k else f"{k!a} as {v!a}"  # (two Unicode forms look alike:
                          for k, v in list(written.items())[:5])  # their code points tell them apart)
        warns.append(f"{name} labels written otherwise (spaces around them, another Unicode form of the same letters, "
                     f"invisible characters) were taken as one type: {shown}"
                     + (f" and {len(written) - 5} more" if len(written) > 5 else "")
                     + f"; if they are different types, give them names that differ by more in '{label_key}'")
    spelling = label_spellings(text[~missing])
    if spelling:
        text = text.map(lambda v: spelling.get(v, v))
        shown = ", ".join(f"{k!r} as {v!r}" for k, v in list(spelling.items())[:5])
        warns.append(f"{name} labels that differ only in case or spacing were taken as one type, named as most of "
                     f"their cells name it: {shown}" + (f" and {len(spelling) - 5} more" if len(spelling) > 5 else "")
                     + f"; if they are different types, give them names that differ by more in '{label_key}'")
    counts = text[~missing].value_counts()
    if len(counts) < 2:
        raise DataError(
            f"the {name} label column '{label_key}' has a single class ('{counts.index[0]}'). "
            "A reference needs at least 2 cell types: choose another label column."
        )
    small = counts[counts < min_cells_per_class]
    kept = counts[counts >= min_cells_per_class]
    n_labelled = int((~missing).sum())
    if per_cell_column(len(counts), n_labelled):
        raise DataError(
            f"the {name} label column '{label_key}' has {len(counts):,} different values in {n_labelled:,} cells: it "
            "holds a measurement or the cells' names, not cell types. Choose the column that holds the cell types."
        )
    if len(kept) > MAX_CLASSES:  # (what a saved model may have: each cell's probabilities take 8 bytes a class)
        raise DataError(
            f"the {name} label column '{label_key}' has {len(kept):,} classes of at least {min_cells_per_class} cells, "
            f"where cellannot takes at most {MAX_CLASSES:,} cell types: choose a coarser label column, or merge types.")
    if len(kept) < 2:
        raise DataError(
            f"only {len(kept)} class(es) in the {name} label column '{label_key}' have at least "
            f"{min_cells_per_class} cells ({len(counts)} classes in all). Lower min_cells_per_class "
            "or use a larger reference."
        )
    if len(small):
        desc = ", ".join(f"{k} ({v})" for k, v in small.head(10).items()) + (
            f" and {len(small) - 10} more" if len(small) > 10 else "")
        warns.append(
            f"{len(small)} {name} {'class' if len(small) == 1 else 'classes'} with fewer than {min_cells_per_class} "
            f"cells {'was' if len(small) == 1 else 'were'} dropped: "
            f"{desc}; {int(small.sum())} cells (min_cells_per_class, --min-cells-per-class on the command line, "
            "lowers the minimum: such a class is learnt from very few cells)"
        )
    keep = ~missing & text.isin(kept.index).to_numpy()
    info = {
        "n_missing_labels": int(missing.sum()),
        "dropped_classes": {str(k): int(v) for k, v in small.items()},
        "class_counts": {str(k): int(v) for k, v in kept.sort_index().items()},
        "labels_merged": {**{k: spelling.get(v, v) for k, v in written.items()}, **spelling},
    }
    return keep, info, warns


def label_spellings(labels: pd.Series) -> dict[str, str]:
    """Labels (stripped) that differ from another only in case or repeated spaces ("b" beside "B",
    "CD4  T" beside "CD4 T"), each mapped to the spelling most of that form's cells carry (ties: the
    first in sort order); ``{}`` when every form has one spelling. Two spellings of one type made two
    classes, each learnt from part of its cells, without a word (found 2026-12-07); the query's labels
    were already matched regardless of case (:func:`match_query_labels`)."""
    counts = labels.astype(str).value_counts()
    forms: dict[str, list[tuple[int, str]]] = {}
    for label, n in counts.items():
        forms.setdefault(_label_form(label), []).append((-int(n), str(label)))
    out: dict[str, str] = {}
    for spellings in forms.values():
        if len(spellings) > 1:
            best = min(spellings)[1]
            out.update({label: best for _, label in spellings if label != best})
    return out


def zero_total_cells(X) -> np.ndarray:
    """Bool mask of cells (rows) whose values are all zero."""
    totals = np.asarray(X.sum(axis=1)).ravel()
    return totals <= 0


def validate_dataset(
    adata: ad.AnnData,
    *,
    name: str = "dataset",
    label_key: str | None = None,
    min_cells_per_class: int = 10,
    allow_lognorm: bool = False,
) -> dict[str, Any]:
    """Check one dataset without changing it; raise on fatal problems.

    Runs the checks :func:`~cellannot_core.data.prepare.prepare` runs on each dataset
    (for a data page that wants to say early what is wrong).

    Parameters
    ----------
    adata
        The dataset.
    name
        ``"reference"`` or ``"query"`` (for messages).
    label_key
        Label column to check (reference), or None.
    min_cells_per_class, allow_lognorm
        As in :func:`~cellannot_core.data.prepare.prepare`.

    Returns
    -------
    dict
        JSON-serialisable: ``n_cells``, ``n_genes``, ``value_state``, ``counts_source``,
        ``warnings`` and, with ``label_key``, the label info of :func:`clean_labels`.
    """
    check_not_empty(adata.n_obs, adata.n_vars, name=name)
    counts = get_counts(adata, name=name, allow_lognorm=allow_lognorm)
    check_values(counts.X, name=name, state=counts.state)
    warns: list[str] = []
    for index, what in ((adata.obs_names, "cell"), (counts.var_names, "gene")):
        _, msg = make_unique(index, what=what, name=name)
        if msg:
            warns.append(msg)
    n_zero = int(zero_total_cells(counts.X).sum())
    if n_zero:
        warns.append(f"{n_zero} {name} cells have no counts at all")
    report: dict[str, Any] = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(counts.X.shape[1]),
        "value_state": detect_value_state(adata.X),
        "counts_source": counts.source,
    }
    if label_key is not None:
        check_label_column(adata.obs, label_key, name=name)
        _, info, lw = clean_labels(
            adata.obs[label_key], label_key=label_key, min_cells_per_class=min_cells_per_class, name=name
        )
        report.update(info)
        warns.extend(lw)
    report["warnings"] = warns
    return report
