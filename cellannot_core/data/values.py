"""What kind of values a matrix holds, and where a dataset keeps its raw counts."""
from __future__ import annotations

from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellannot_core.errors import DataError

__all__ = ["COUNT_LAYERS", "LOGNORM_MAX", "Counts", "detect_value_state", "get_counts"]

#: layers searched for raw counts, in order, after X
COUNT_LAYERS = ("counts", "raw_counts", "raw", "umi_counts")

#: non-integer, non-negative values whose maximum stays below this are taken as log-scale
#: (log1p of 1e4 or 1e6-normalised data tops out near 9 or 14; log2(CPM+1) near 20)
LOGNORM_MAX = 30.0


def _sample_values(X, n_rows: int, seed: int) -> np.ndarray:
    """The stored values (non-zeros for sparse input) of up to ``n_rows`` rows."""
    n = X.shape[0]
    rows = None
    if n > n_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n, n_rows, replace=False))
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if rows is not None:
            X = X[rows]
        vals = np.asarray(X.data)
    else:
        X = np.asarray(X)
        vals = (X[rows] if rows is not None else X).ravel()
    vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
    return vals


def detect_value_state(X, *, n_rows: int = 1000, seed: int = 0) -> str:
    """Classify a cells x genes matrix by its values.

    Looks at up to ``n_rows`` randomly chosen rows (seeded, so the answer is stable);
    non-finite values are ignored here (validation reports them).

    Parameters
    ----------
    X
        Dense or sparse matrix.
    n_rows, seed
        Size and seed of the row sample.

    Returns
    -------
    str
        ``"scaled"`` if any value is negative (centred / z-scored data);
        ``"counts"`` if the values are non-negative integers (99.9% within 1e-3 of one, to
        tolerate round-off), or non-integers reaching above
        :data:`LOGNORM_MAX` (estimated or ambient-corrected counts, CPM: library-size
        normalisation + log1p still applies to them);
        ``"lognorm"`` for non-negative non-integers with maximum below :data:`LOGNORM_MAX`.
        An all-zero matrix is ``"counts"``.
    """
    vals = _sample_values(X, n_rows, seed)
    if vals.size == 0:
        return "counts"
    if vals.min() < 0:
        return "scaled"
    if vals.dtype.kind in "iub":
        return "counts"
    if np.mean(np.abs(vals - np.round(vals)) <= 1e-3) >= 0.999:  # tolerate float round-off
        return "counts"
    return "lognorm" if float(vals.max()) < LOGNORM_MAX else "counts"


class Counts(NamedTuple):
    """Raw counts of a dataset and where they were found.

    Attributes
    ----------
    X
        CSR float32, cells x genes of ``var`` (not necessarily ``adata.var``: ``.raw`` may
        hold more genes).
    var
        Gene table aligned to the columns of ``X`` (its index: the gene names).
    source
        A sentence for the user, e.g. ``"raw counts from adata.raw.X (13714 genes)"``.
    state
        ``"counts"``, or ``"lognorm"`` when log-normalised values were accepted instead.
    """

    X: sp.csr_matrix
    var: pd.DataFrame
    source: str
    state: str

    @property
    def var_names(self) -> pd.Index:
        return self.var.index


def _csr32(X) -> sp.csr_matrix:
    X = sp.csr_matrix(X) if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    return sp.csr_matrix(X, dtype=np.float32)


def get_counts(adata: ad.AnnData, *, name: str = "dataset", allow_lognorm: bool = False) -> Counts:
    """Find the raw counts of ``adata``.

    Looks, in order, at ``X``, ``layers['counts']`` (then ``'raw_counts'``, ``'raw'``,
    ``'umi_counts'``) and ``adata.raw.X``; the first whose values are counts (see
    :func:`detect_value_state`) is used. Library-size normalisation needs counts, and
    log-normalised values cannot be turned back into counts reliably.

    Parameters
    ----------
    adata
        The dataset.
    name
        What to call it in messages (``"reference"``, ``"query"``).
    allow_lognorm
        If no counts exist but ``X`` is log-normalised, return ``X`` as it is with
        ``state="lognorm"`` (the caller must then skip normalisation) instead of raising.

    Returns
    -------
    Counts
        ``(X, var, source, state)``; when the counts come from ``.raw``, ``var`` is
        ``adata.raw.var`` and may list more genes than ``adata.var``.

    Raises
    ------
    DataError
        No counts found (and ``X`` not usable as log-normalised data).
    """
    x_state = detect_value_state(adata.X) if adata.X is not None else None
    if x_state == "counts":
        return Counts(_csr32(adata.X), adata.var.copy(), f"raw counts from X ({adata.n_vars} genes)", "counts")
    for key in COUNT_LAYERS:
        if key in adata.layers and detect_value_state(adata.layers[key]) == "counts":
            return Counts(
                _csr32(adata.layers[key]), adata.var.copy(),
                f"raw counts from layers['{key}'] ({adata.n_vars} genes); X holds {x_state} values",
                "counts",
            )
    raw = adata.raw
    if raw is not None and raw.X is not None and detect_value_state(raw.X) == "counts":
        var = raw.var.copy()
        var.index = pd.Index(raw.var_names.astype(str))
        return Counts(
            _csr32(raw.X), var,
            f"raw counts from adata.raw.X ({raw.n_vars} genes); X holds {x_state} values",
            "counts",
        )
    where = "X, layers['counts'] or .raw"
    if x_state == "lognorm":
        if allow_lognorm:
            return Counts(
                _csr32(adata.X), adata.var.copy(),
                f"log-normalised values from X ({adata.n_vars} genes), used as they are: no raw counts found",
                "lognorm",
            )
        raise DataError(
            f"the {name} holds log-normalised values in X and no raw counts (looked in X, layers "
            f"and .raw). Provide raw counts in {where}, or explicitly allow log-normalised input."
        )
    if x_state == "scaled":
        vals = _sample_values(adata.X, 1000, 0)
        if np.all(vals == np.round(vals)):  # integers with some negatives: broken counts
            allv = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
            raise DataError(
                f"the {name} counts in X contain {int((allv < 0).sum())} negative values. "
                "Counts cannot be negative: provide the raw (unscaled) counts."
            )
        raise DataError(
            f"the {name} holds scaled values (with negatives) in X and no raw counts (looked in X, "
            f"layers and .raw). Provide raw counts in {where}."
        )
    raise DataError(f"the {name} has no expression matrix. Provide raw counts in {where}.")
