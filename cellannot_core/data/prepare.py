"""From two AnnData objects to model-ready arrays: validate, match genes, normalise, select
genes, split.

Preprocessing (recorded in ``Prepared.report['preprocessing']``):

1. raw counts are taken from X, ``layers['counts']`` or ``.raw`` (:func:`get_counts`);
2. optional QC removes cells (both datasets) by genes detected, total counts, % mitochondrial;
3. each dataset is library-size normalised to 1e4 and log1p-transformed using **all** of its
   genes for the library size (as ``sc.pp.normalize_total(target_sum=1e4)`` +
   ``sc.pp.log1p`` on the full matrix), and only then subset to the genes it shares with the
   other dataset, so a query measuring fewer genes is not inflated;
4. highly variable genes are chosen on the reference among the shared genes
   (``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on the counts, ``flavor="seurat"`` on the
   log data when a dataset has no counts or ``hvg_flavor="seurat"``; ``hvg_from="both"``: those
   ranked highest in the reference or the query);
   all shared genes are kept when there are at most ``n_top_genes``; genes keep reference order;
5. the reference is split into train / val, stratified by class, every class in both.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellannot_core._constants import DEFAULT_HVG_FLAVOR, DEFAULT_HVG_FROM, DEFAULT_MIN_SHARED_GENES, DEFAULT_N_TOP_GENES, HVG_FLAVORS, HVG_FROM
from cellannot_core.errors import ConfigError, DataError, shown_name

from ._types import MAX_BATCHES, Prepared, Split
from .genes import is_ensembl, match_genes
from .validate import (
    missing_label_mask,
    untyped_label_mask,
    check_label_column,
    check_not_empty,
    check_values,
    clean_labels,
    label_text,
    make_unique,
    per_cell_column,
    query_labels,
    zero_total_cells,
)
from .values import FEATURES_LEFT_OUT, NOT_WHOLE, detect_value_state, get_counts
from .._constants import str_array

__all__ = ["QC_KEYS", "TARGET_SUM", "prepare", "summarize_dataset", "stratified_split", "lognormalize"]

TARGET_SUM = 1e4
QC_KEYS = ("min_genes", "min_counts", "max_pct_mito")
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "symbol", "symbols")
_LABEL_HINTS = ("cell_type", "celltype", "cell type", "cell.type", "label", "annotation", "annot", "type", "cluster")


@dataclass
class _Loaded:
    """One dataset after validation: full-gene matrix, names, positions into the input."""

    X: sp.csr_matrix  # counts (or log-normalised values when state == "lognorm"), all genes
    var: pd.DataFrame
    obs_names: pd.Index
    index: np.ndarray
    obs: pd.DataFrame
    state: str
    report: dict[str, Any]

    def take(self, keep: np.ndarray) -> None:
        if keep.dtype == bool and keep.all():
            return  # nothing to drop: no copy of a large matrix
        self.X = self.X[keep]
        self.obs_names = self.obs_names[keep]
        self.index = self.index[keep]
        self.obs = self.obs.iloc[keep]


#: the start of the warning that genes were matched only ignoring case (the app's gene-overlap report says it
#: too, and leaves this one out: ``ui.data.unsaid``)
CASE_MATCH_WARNING = "genes were matched ignoring case"


def lognormalize(X: sp.csr_matrix, cols: np.ndarray, *, state: str = "counts",
                 total_cols: np.ndarray | None = None) -> sp.csr_matrix:
    """Library-size normalise to :data:`TARGET_SUM`, log1p, keep ``cols``.

    The library size is summed over ``total_cols`` (default: all columns).

    Parameters
    ----------
    X
        Cells x all genes (counts).
    cols
        Columns to return.
    state
        ``"lognorm"``: ``X`` is already log-normalised and is only subset.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, cells x ``len(cols)``; cells without counts stay all-zero.
    """
    sub = X[:, cols]
    if state == "lognorm":
        return sp.csr_matrix(sub, dtype=np.float32)
    total = row_sums(X, total_cols)
    scale = np.divide(TARGET_SUM, total, out=np.zeros_like(total), where=total > 0)
    out = sp.csr_matrix(sub, dtype=np.float32)
    # in place, a block of rows at a time (a large matrix is not copied): the float64 product of
    # the row's scale and each value, cast to float32, then log1p
    per_row = np.diff(out.indptr)
    for a in range(0, out.shape[0], _BLOCK_ROWS):
        b = min(out.shape[0], a + _BLOCK_ROWS)
        lo, hi = out.indptr[a], out.indptr[b]
        vals = out.data[lo:hi].astype(np.float64) * np.repeat(scale[a:b], per_row[a:b])
        out.data[lo:hi] = np.log1p(vals.astype(np.float32))
    return out


_BLOCK_ROWS = 50_000


def row_sums(X: sp.csr_matrix, cols: np.ndarray | None = None) -> np.ndarray:
    """Each row's sum over ``cols`` (all columns when None), float64, without copying ``X``."""
    if cols is None:
        return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    pick = np.zeros(X.shape[1], dtype=X.dtype)
    pick[np.asarray(cols)] = 1
    return np.asarray(X @ pick, dtype=np.float64).ravel()


def stratified_split(y: np.ndarray, val_fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of train and val cells, stratified by ``y``.

    Each class contributes ``round(val_fraction * n_k)`` cells to val, clipped to
    ``[1, n_k - 1]``, so every class with at least 2 cells is in both sets (scikit-learn's
    ``train_test_split(stratify=...)`` can leave a small class out of val). Seeded;
    positions are returned sorted.
    """
    rng = np.random.default_rng(seed)
    val = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n_val = int(np.clip(round(val_fraction * len(idx)), 1, max(len(idx) - 1, 1)))
        val.append(idx[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def _symbols(var: pd.DataFrame) -> np.ndarray:
    names = var.index.astype(str)
    if is_ensembl(names):
        lower = {str(c).lower(): c for c in var.columns}
        for c in _SYMBOL_COLUMNS:
            if c in lower:
                return var[lower[c]].astype(str).to_numpy()
    return np.asarray(names)


def gene_symbols(ref_var: pd.DataFrame, ref_cols: np.ndarray, q_var: pd.DataFrame, q_cols: np.ndarray) -> list[str] | None:
    """The model genes' symbols where their names (the reference's) are Ensembl IDs: from the reference's symbol
    column, else the query's names or symbol column; None where the names are symbols already or neither dataset
    has symbols. Found 2026-12-07 (files in CELLxGENE's form, Ensembl IDs with symbols in ``feature_name``): the
    Unknown groups listed ``ENSG...`` IDs, and a heat-shock group, named by its symbols, went unrecognised, so it
    stayed Unknown where the same data with symbols had it accepted as its type."""
    if not is_ensembl(ref_var.index.astype(str)[ref_cols]):
        return None
    for var, cols in ((ref_var, ref_cols), (q_var, q_cols)):
        names = _symbols(var)[cols] if is_ensembl(var.index.astype(str)) else var.index.astype(str).to_numpy()[cols]
        if not is_ensembl(names):
            return [str(v) for v in names]
    return None


def model_genes(genes: Sequence[str], symbols: Sequence[str] | None = None) -> pd.DataFrame:
    """A saved model's genes as a var table to match a query against: their names, and their symbols
    (:func:`gene_symbols`) as a ``gene_symbols`` column where the names are Ensembl IDs, so a query named by
    symbols is matched too (found 2026-12-07: a model trained on CELLxGENE's files found "0 of 2000 model genes"
    in a query of symbols, though it kept them)."""
    var = pd.DataFrame(index=pd.Index([str(g) for g in genes], dtype=object))
    if symbols is not None and len(symbols) == len(var):
        var["gene_symbols"] = [str(g) for g in symbols]
    return var


def _qc_mask(d: _Loaded, qc: dict[str, Any], name: str, warns: list[str]) -> np.ndarray:
    X = d.X
    keep = np.ones(X.shape[0], dtype=bool)
    if qc.get("min_genes") is not None:
        n_genes = np.asarray((X > 0).sum(axis=1)).ravel()
        keep &= n_genes >= float(qc["min_genes"])
    lognorm = d.state == "lognorm"
    if lognorm and (qc.get("min_counts") is not None or qc.get("max_pct_mito") is not None):
        warns.append(f"the {name} has no raw counts, so min_counts / max_pct_mito were not applied")
        return keep
    total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    if qc.get("min_counts") is not None:
        keep &= total >= float(qc["min_counts"])
    if qc.get("max_pct_mito") is not None:
        sym = pd.Series(_symbols(d.var))
        mito = sym.str.upper().str.startswith("MT-").to_numpy()
        if not mito.any():
            warns.append(f"no mitochondrial genes (MT- / mt-) found in the {name}; max_pct_mito not applied")
        else:
            mt = np.asarray(X[:, np.flatnonzero(mito)].sum(axis=1), dtype=np.float64).ravel()
            pct = np.divide(100.0 * mt, total, out=np.zeros_like(total), where=total > 0)
            keep &= pct <= float(qc["max_pct_mito"])
    return keep


def frame(table: Any) -> pd.DataFrame:
    """``table`` as a pandas DataFrame (a lazy AnnData's obs / var are xarray-backed)."""
    return table if isinstance(table, pd.DataFrame) else table.to_memory()


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "blocks")


def _dask_computed(x: Any, *, what: str, name: str, budget: int) -> sp.csr_matrix:
    """A dask array (scanpy's lazy matrices, dense or sparse chunks) computed a block of rows at a
    time into CSR float32, within ``budget`` bytes (what is left of the memory budget)."""
    parts, used = [], 0
    for i in range(x.numblocks[0]):
        block = x.blocks[i].compute()
        part = sp.csr_matrix(block, dtype=np.float32)
        used += part.data.nbytes + part.indices.nbytes + part.indptr.nbytes
        if used > budget:
            raise DataError(f"the {name}'s {what} is a dask array larger than this machine's memory budget "
                            f"(CELLANNOT_MEMORY_LIMIT_GB, {budget / 1024**3:.1f} GiB): write it to an .h5ad and label the "
                            "file a chunk at a time with Annotator.predict_file(path, out=...) or `cellannot predict`.")
        parts.append(part)
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix(x.shape, dtype=np.float32)


def in_memory(adata: ad.AnnData, *, name: str) -> ad.AnnData:
    """``adata`` itself, or, when it is backed (``read_h5ad(path, backed="r")``, a scanpy user's way
    into a large file) or holds dask arrays (scanpy's lazy matrices), its data read into memory
    within :func:`~.io.memory_limit_bytes`; above it one message says how to label a file of any
    size. The user's object is not changed."""
    obs, var = frame(adata.obs), frame(adata.var)  # anndata.experimental.read_lazy: xarray-backed tables
    lazy = {"X": adata.X, **{f"layers['{k}']": v for k, v in adata.layers.items()}}
    if adata.raw is not None:
        lazy["raw.X"] = adata.raw.X
    lazy = {k: v for k, v in lazy.items() if _is_dask(v)}
    if lazy or obs is not adata.obs or var is not adata.var:
        from .io import memory_limit_bytes

        budget, got = memory_limit_bytes(), {}
        for k, v in lazy.items():  # the matrices share the budget
            got[k] = _dask_computed(v, what=k, name=name, budget=budget)
            budget -= sum(a.nbytes for a in (got[k].data, got[k].indices, got[k].indptr))
        out = ad.AnnData(X=got.get("X", adata.X), obs=obs, var=var,
                         layers={k: got.get(f"layers['{k}']", v) for k, v in adata.layers.items()},
                         uns=dict(adata.uns))
        if adata.raw is not None:
            out.raw = ad.AnnData(X=got.get("raw.X", adata.raw.X), var=frame(adata.raw.var), obs=obs[[]])
        return out
    if not getattr(adata, "isbacked", False):
        return adata
    from pathlib import Path

    from .io import guard_hdf5

    path = Path(adata.filename)
    try:
        guard_hdf5(path, f"the {name} (opened backed from {path.name})")
    except DataError as e:
        if name != "query":
            raise
        raise DataError(f"{e} A query of any size is labelled from its file a chunk at a time: "
                        "Annotator.predict_file(path, out=...) or `cellannot predict`.") from None
    return adata.to_memory()


def _cut_to_variable_genes(ref: _Loaded, qry: _Loaded, n_shared: int) -> list[str]:
    """A warning for each dataset whose genes were cut to its own highly variable ones (its
    ``var['highly_variable']`` True for every gene, as ``sc.pp.highly_variable_genes(subset=True)`` leaves it)
    where the pair shares under 90% of the other's genes: it shares only what the cut kept, and the model learns
    from those. A query
    cut to its 2,000 genes shared 364 of the reference's 1,267 and was labelled with no word (found 2026-12-07;
    10% of its labels differed from the run on all its genes)."""
    out = []
    for name, d, other in (("reference", ref, qry), ("query", qry, ref)):
        col = d.var.get("highly_variable")
        if col is None or col.dtype != bool or not len(col) or not col.all() or n_shared >= 0.9 * len(other.var):
            continue  # (a cut that kept nearly all the other's genes cost nothing)
        out.append(f"the {name} holds only its {len(d.var):,} highly variable genes (var['highly_variable'] is True "
                   f"for each, as sc.pp.highly_variable_genes(subset=True) leaves it): the pair shares {n_shared:,} "
                   f"genes of the {'query' if name == 'reference' else 'reference'}'s {len(other.var):,}, which the model learns from. Give it "
                   "with all its genes (the data before the cut, or adata.raw.to_adata() where .raw keeps them)")
    return out


def _load(
    adata: ad.AnnData, *, name: str, allow_lognorm: bool, qc: dict[str, Any] | None, warns: list[str]
) -> _Loaded:
    """Checks common to both datasets, names made unique, optional QC."""
    if not isinstance(adata, ad.AnnData):
        raise DataError(f"the {name} is not an AnnData object. Read it with read_dataset first.")
    adata = in_memory(adata, name=name)
    check_not_empty(adata.n_obs, adata.n_vars, name=name)
    counts = get_counts(adata, name=name, allow_lognorm=allow_lognorm)
    check_not_empty(adata.n_obs, counts.X.shape[1], name=name)
    check_values(counts.X, name=name, state=counts.state)
    if counts.state == "lognorm":
        warns.append(f"the {name} has no raw counts: its log-normalised X is used as it is")
    elif counts.source.startswith("raw counts recovered"):  # (from .raw's log values: all of them, or more genes)
        warns.append(f"the {name} has no raw counts of all its genes: {counts.source}")
    elif counts.source.startswith(NOT_WHOLE):
        warns.append(f"the {name} has no whole counts: {counts.source}")
    if FEATURES_LEFT_OUT in counts.source:  # (CITE-seq's antibodies, multiome's peaks)
        warns.append(f"the {name} holds features that are no genes: {counts.source.split('; ', 1)[-1]}")
    obs_names, msg = make_unique(adata.obs_names, what="cell", name=name)
    if msg:
        warns.append(msg)
    var = counts.var.copy()
    var.index, msg = make_unique(var.index, what="gene", name=name)
    if msg:
        warns.append(msg)
    obs = adata.obs.copy()
    obs.index = obs_names
    d = _Loaded(
        X=counts.X, var=var, obs_names=obs_names, index=np.arange(adata.n_obs, dtype=np.int64),
        obs=obs, state=counts.state,
        report={
            "n_cells_input": int(adata.n_obs),
            "n_genes": int(counts.X.shape[1]),
            "value_state": detect_value_state(adata.X) if adata.X is not None else "none",
            "counts_source": counts.source,
        },
    )
    if counts.state == "counts" and not (qc or {}).get("min_counts"):
        warns.extend(mostly_empty(np.asarray(counts.X.sum(axis=1)).ravel(), name, counts.X.shape[1]))
    if qc:
        keep = _qc_mask(d, qc, name, warns)
        n_removed = int((~keep).sum())
        d.report["qc_removed"] = n_removed
        if n_removed == len(keep):
            raise DataError(
                f"quality control removed all {len(keep)} {name} cells ({_qc_text(qc)}). Loosen the QC thresholds."
            )
        if n_removed:
            warns.append(f"quality control ({_qc_text(qc)}) removed {n_removed} of {len(keep)} {name} cells")
            if name == "query":
                d.report["qc_removed_obs_names"] = [str(v) for v in d.obs_names[~keep]]
            d.take(keep)
    return d


#: a dataset whose median cell has fewer counts than this is mostly empty droplets (a cell of a
#: droplet assay holds hundreds to thousands of counts; Cell Ranger's unfiltered matrix holds every
#: barcode, most of them with a handful)
EMPTY_DROPLET_COUNTS = 100


PANEL_GENES = 1_000  # fewer genes than this: a targeted panel, whose cells hold fewer counts by design


def mostly_empty(totals: np.ndarray, name: str, n_genes: int | None = None) -> list[str]:
    """A warning when most of a dataset's cells (their total counts ``totals``) are nearly empty:
    :data:`EMPTY_DROPLET_COUNTS`, in proportion for a panel of fewer than :data:`PANEL_GENES` genes (a cell's
    counts grow with the genes measured: a panel of 300 genes, median 43 counts a cell, was told its cells
    looked like empty droplets, found 2026-12-07)."""
    least = EMPTY_DROPLET_COUNTS * (1.0 if n_genes is None else min(1.0, n_genes / PANEL_GENES))
    if len(totals) < 100 or np.median(totals) >= least:
        return []
    low = int((totals < least).sum())
    return [f"{low:,} of the {name}'s {len(totals):,} cells have fewer than {least:g} counts (the median "
            f"cell {np.median(totals):g}): most of them look like empty droplets, as in an unfiltered matrix "
            f"(Cell Ranger's raw_feature_bc_matrix). Load the filtered matrix, or set quality control's minimum "
            f"counts per cell"]


def _qc_text(qc: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in qc.items() if v is not None)


def _check_options(n_top_genes: int, val_fraction: float, min_cells_per_class: int, qc) -> dict | None:
    if not (isinstance(n_top_genes, (int, np.integer)) and n_top_genes > 0):
        raise ConfigError(f"n_top_genes must be a positive integer, not {n_top_genes!r}. Use e.g. 2000.")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction!r}. Use e.g. 0.15.")
    if min_cells_per_class < 2:
        raise ConfigError(
            f"min_cells_per_class must be at least 2 (a class needs cells in train and val), not {min_cells_per_class}."
        )
    if not qc:
        return None
    unknown = sorted(set(qc) - set(QC_KEYS))
    if unknown:
        raise ConfigError(f"unknown QC option(s) {', '.join(unknown)}. Valid: {', '.join(QC_KEYS)}.")
    return {k: qc[k] for k in QC_KEYS if qc.get(k) is not None} or None


HVG_MAX_CELLS = 100_000  # a larger dataset chooses its variable genes on a seeded sample this large


def _variability_rank(X: sp.csr_matrix, *, flavor: str, n_top_genes: int) -> tuple[np.ndarray, str]:
    """Each column's rank (0 = most variable) and the scanpy flavor that ranked them.

    ``"seurat_v3"`` (``X``: counts): the variance of each gene's counts standardised by the variance
    its mean predicts (a loess fit; no mean bins); a loess that cannot be fitted falls back to
    ``"seurat"``. ``"seurat"`` (``X``: log values): the normalised dispersion within mean bins, which
    puts a gene alone in its bin (the most expressed genes: hormones, haemoglobin) at a fixed rank
    whatever its dispersion.
    """
    import warnings

    import scanpy as sc

    if flavor == "seurat_v3":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-integer counts (e.g. ambient-corrected) are ranked too
                df = sc.pp.highly_variable_genes(ad.AnnData(X=X), flavor="seurat_v3",
                                                 n_top_genes=min(n_top_genes, X.shape[1]), inplace=False)
            v = df["variances_norm"].to_numpy(dtype=np.float64)
        except (ValueError, RuntimeError, ImportError):
            X, flavor = lognormalize(X, np.arange(X.shape[1])), "seurat"
    if flavor == "seurat":
        df = sc.pp.highly_variable_genes(ad.AnnData(X=X), flavor="seurat", inplace=False)
        v = df["dispersions_norm"].to_numpy(dtype=np.float64)
    rank = np.empty(len(v), dtype=np.int64)
    rank[np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")] = np.arange(len(v))
    return rank, flavor


def _select_hvg(datasets: list[tuple[sp.csr_matrix, np.ndarray]], n_top_genes: int, *,
                flavor: str) -> tuple[np.ndarray, str]:
    """Positions (sorted) among the shared genes of the ``n_top_genes`` most variable ones, and
    the flavor that ranked them.

    ``datasets``: (cells x genes, the shared genes' columns) of the reference and, when the genes
    are chosen on both, the query; counts for ``"seurat_v3"``, log values for ``"seurat"``. With
    two, a gene's rank is its better rank of the two (ties: the other), so that a cell type only
    the query has brings the genes that mark it, as the reference's types bring theirs.
    """
    import scanpy as sc

    n = len(datasets[0][1])
    if n <= n_top_genes:
        return np.arange(n, dtype=np.int64), "all"
    parts = []
    for i, (X, cols) in enumerate(datasets):
        if X.shape[0] > HVG_MAX_CELLS:  # per-gene statistics from a seeded sample
            X = X[np.sort(np.random.default_rng(i).choice(X.shape[0], HVG_MAX_CELLS, replace=False))]
        parts.append(sp.csr_matrix(X[:, cols]))
    if flavor == "seurat" and len(parts) == 1:  # scanpy's own cut (genes tied at it included)
        tmp = ad.AnnData(X=parts[0])
        sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes, subset=False)
        return np.flatnonzero(tmp.var["highly_variable"].to_numpy()).astype(np.int64), "seurat"
    ranked = [_variability_rank(p, flavor=flavor, n_top_genes=n_top_genes) for p in parts]
    r = np.stack([x[0] for x in ranked])
    order = np.lexsort((r.max(axis=0), r.min(axis=0)))
    return np.sort(order[:n_top_genes]).astype(np.int64), "seurat" if any(x[1] == "seurat" for x in ranked) else flavor


def _shared_fraction(X: sp.csr_matrix, cols: np.ndarray) -> float:
    """Median over cells of the fraction of their counts on ``cols`` (cells with counts only)."""
    total = row_sums(X)
    shared = row_sums(X, cols)
    ok = total > 0
    return round(float(np.median(shared[ok] / total[ok])), 4) if ok.any() else 0.0


def batch_codes(ref_obs: pd.DataFrame, q_obs: pd.DataFrame, batch_key: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The batches of ``batch_key`` (an obs column of the reference, the query or both): their
    names (``"reference: v"`` / ``"query: v"``, reference first; a dataset without the column, or
    a cell without a value, is in its dataset's batch ``"reference"`` / ``"query"``) and each
    cell's code. The same value in both datasets is two batches: the datasets differ anyway."""
    if batch_key not in ref_obs.columns and batch_key not in q_obs.columns:
        cols = sorted(set(map(str, ref_obs.columns)) | set(map(str, q_obs.columns)))
        shown = ", ".join(shown_name(c) for c in cols[:20]) + (" ..." if len(cols) > 20 else "")
        raise DataError(f"batch key {batch_key!r} is a column of neither the reference's nor the query's cell "
                        f"table; columns: {shown or 'none'}. Choose the column naming each cell's sample or "
                        "batch, or none")
    names: list[str] = []
    codes = []
    for obs, tag in ((ref_obs, "reference"), (q_obs, "query")):
        if batch_key in obs.columns:
            col = obs[batch_key]
            vals = col.astype(str).str.strip().to_numpy(dtype=object)
            vals[missing_label_mask(col)] = None  # the dataset's own batch, named by its tag
        else:
            vals = np.full(len(obs), None, dtype=object)
        levels, inv = np.unique(str_array(np.where(vals == None, "", vals)), return_inverse=True)  # noqa: E711
        if per_cell_column(len(levels), len(obs)):  # (a batch of one or two cells is no batch)
            raise DataError(f"batch key {batch_key!r} has {len(levels):,} values in the {tag}'s {len(obs):,} cells: "
                            "that looks like a per-cell column, not samples or batches; choose the sample column")
        codes.append(inv.astype(np.int64).ravel() + len(names))
        names.extend(f"{tag}: {v}" if v else tag for v in levels)
    if len(names) > MAX_BATCHES:
        raise DataError(f"batch key {batch_key!r} has {len(names)} values over the two datasets (at most "
                        f"{MAX_BATCHES}): that looks like a per-cell column, not samples or batches; choose the "
                        "sample column")
    return names, codes[0], codes[1]


def batches_hold_one_type(batch: np.ndarray, y: np.ndarray, share: float = 0.95) -> int:
    """How many batches the reference's cells are in when the batches are confounded with the types
    (at least two of each, and in every batch at least ``share`` of its labelled cells of one type),
    else 0."""
    keep = y >= 0
    batch, y = batch[keep], y[keep]
    levels = np.unique(batch)
    if len(levels) < 2 or len(np.unique(y)) < 2:
        return 0
    top = [np.bincount(y[batch == b]).max() / (batch == b).sum() for b in levels]
    return len(levels) if min(top) >= share else 0


DENSE_LIMIT_BYTES = 2 * 1024**3  # a split whose dense X would be larger keeps X sparse (CSR)


def too_big_for_dense(X) -> bool:
    """Whether ``X`` held dense (float32) would pass :data:`DENSE_LIMIT_BYTES` (it then stays CSR)."""
    return X.shape[0] * X.shape[1] * 4 > DENSE_LIMIT_BYTES


def _split(X: sp.csr_matrix, counts: sp.csr_matrix, rows, y, obs_names, labels, index,
           batch: np.ndarray | None = None) -> Split:
    """The split of ``rows`` (``None``: every row, in order, without copying the matrices)."""
    pick = (lambda v: v) if rows is None else (lambda v: v[rows])  # noqa: E731
    sub = pick(X)
    return Split(
        X=(sp.csr_matrix(sub, dtype=np.float32) if too_big_for_dense(sub)
           else np.asarray(sub.toarray(), dtype=np.float32)),
        counts=sp.csr_matrix(pick(counts), dtype=np.float32),
        y=None if y is None else np.asarray(pick(y), dtype=np.int64),
        obs_names=str_array(pick(obs_names)),
        labels=None if labels is None else np.asarray(pick(labels), dtype=object),
        index=np.asarray(pick(index), dtype=np.int64),
        batch=None if batch is None else np.asarray(pick(batch), dtype=np.int64),
    )


def _in_model_order(M: sp.csr_matrix, cols: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """``M``'s columns put at positions ``cols`` of a CSR matrix ``n_cols`` wide (the model's gene
    order; its other genes zero), without a dense copy; ``M``'s own arrays become the result's."""
    M = sp.csr_matrix(M, dtype=np.float32)  # ``M`` is the caller's own fresh matrix: its arrays are reused
    cols = np.asarray(cols, dtype=M.indices.dtype)
    step = 5_000_000  # in place, this many stored values at a time
    for a in range(0, len(M.indices), step):
        M.indices[a:a + step] = cols[M.indices[a:a + step]]
    out = sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], n_cols), copy=False)
    out.has_sorted_indices = False
    out.sort_indices()
    return out


def prepare(
    reference: ad.AnnData,
    query: ad.AnnData,
    *,
    label_key: str,
    query_label_key: str | None = None,
    n_top_genes: int = DEFAULT_N_TOP_GENES,
    val_fraction: float = 0.15,
    min_cells_per_class: int = 10,
    min_shared_genes: int = DEFAULT_MIN_SHARED_GENES,
    seed: int = 0,
    qc: dict[str, Any] | None = None,
    allow_lognorm: bool = False,
    normalize_on: str = "shared",
    batch_key: str | None = None,
    hvg_from: str = DEFAULT_HVG_FROM,
    hvg_flavor: str = DEFAULT_HVG_FLAVOR,
) -> Prepared:
    """Validate a labelled reference and a query and turn them into model inputs.

    Parameters
    ----------
    reference
        Labelled cells (raw counts in X, ``layers['counts']`` or ``.raw``).
    query
        Cells to label. All are kept, in input order, unless ``qc`` removes some
        (``Prepared.query.index`` gives the positions of the kept cells in ``query``).
    label_key
        Reference obs column with the cell types.
    query_label_key
        Optional query obs column with known labels (for evaluation): ``query.y`` holds the
        class index where the label is a reference class, -1 otherwise (novel or missing);
        ``query.labels`` keeps the strings (missing labels as ``""``).
    n_top_genes
        Highly variable genes to keep (all shared genes when there are fewer).
    val_fraction
        Share of each reference class held out for validation (at least one cell per class).
    min_cells_per_class
        Reference classes with fewer cells are dropped (reported).
    min_shared_genes
        Fewest shared genes accepted (see :func:`match_genes`).
    seed
        Seed of the train/val split.
    qc
        Optional cell filters applied to both datasets: ``min_genes``, ``min_counts``,
        ``max_pct_mito`` (genes starting with ``MT-`` / ``mt-``).
    allow_lognorm
        Accept a dataset that only has log-normalised values (then used as they are, and
        its ``counts`` hold those values: ``report['counts_available']`` is False).
    normalize_on
        ``"shared"`` (default): each cell's library size is summed over the genes shared by
        reference and query, so both datasets are normalised on the same genes (a query with
        many more genes is otherwise shifted down on the shared ones); ``"all"``: over all
        of each dataset's genes (scanpy's ``normalize_total`` on the full matrix).
    batch_key
        Optional obs column naming each cell's sample or batch (in the reference, the query or
        both), as scvi-tools' ``setup_anndata(batch_key=...)``: the generative models' decoder
        is then conditioned on each batch instead of on the dataset alone, so that donors,
        conditions or runs inside a dataset do not make known cells look unlike the reference
        (``Split.batch``, ``Prepared.batches``).

    hvg_from
        Where the ``n_top_genes`` are chosen: ``"reference"`` (default), on the reference alone;
        ``"both"``, the genes ranked highest in *either* the reference or the query (each gene by
        its better rank), so that a type only the query has keeps the genes that mark it.
    hvg_flavor
        How genes are ranked: ``"seurat_v3"`` (default since 2026-12-05), the variance of
        standardised counts (on log values when a dataset has no counts: ``"seurat"``);
        ``"seurat"``, scanpy's normalised dispersion of the log values within mean bins, which ranks
        every gene alone in its mean bin, the most expressed of a tissue (hormones in pancreas), at
        one fixed place, so that with few genes they are left out.

    Returns
    -------
    Prepared
        ``train`` / ``val`` / ``query`` splits on the same genes (``genes``, reference
        spelling), ``classes`` (sorted reference class names) and a JSON-serialisable
        ``report``.

    Raises
    ------
    DataError
        A problem with the data (one line: what is wrong, what to do).
    ConfigError
        An invalid option.
    """
    t0 = time.perf_counter()
    qc = _check_options(n_top_genes, val_fraction, min_cells_per_class, qc)
    if hvg_from not in HVG_FROM:
        raise ConfigError(f"hvg_from must be one of {', '.join(HVG_FROM)}, not {hvg_from!r}")
    if hvg_flavor not in HVG_FLAVORS:
        raise ConfigError(f"hvg_flavor must be one of {', '.join(HVG_FLAVORS)}, not {hvg_flavor!r}")
    for key, what in ((label_key, "the reference's label column"), (query_label_key, "the query's label column")):
        if batch_key and batch_key == key:  # a covariate of the decoder would explain the cell types away
            raise ConfigError(f"the batch key {batch_key!r} is {what}: a batch column names each cell's sample, "
                              f"donor or run, and the models would take its cell types for batch effects. Choose "
                              f"the sample column, or none")
    warns: list[str] = []

    ref = _load(reference, name="reference", allow_lognorm=allow_lognorm, qc=qc, warns=warns)
    # the reference standing in as its own query (``train`` without one): read again, said once
    qry = _load(query, name="query", allow_lognorm=allow_lognorm, qc=qc, warns=[] if query is reference else warns)

    # reference labels: missing and small classes dropped; cells without counts dropped
    check_label_column(ref.obs, label_key, name="reference")
    zero = zero_total_cells(ref.X)
    if zero.any():
        warns.append(f"{int(zero.sum())} reference cells have no counts at all and were left out")
        ref.take(~zero)
        ref.report["zero_count_cells_removed"] = int(zero.sum())
    keep, label_info, lw = clean_labels(
        ref.obs[label_key].to_numpy(), label_key=label_key, min_cells_per_class=min_cells_per_class
    )
    warns.extend(lw)
    ref.take(keep)
    ref.report.update(label_info, label_key=label_key)
    merged = label_info["labels_merged"]
    ref_labels = label_text(ref.obs[label_key]).map(lambda v: merged.get(v, v)).to_numpy(dtype=object)
    classes = sorted(label_info["class_counts"])
    class_idx = {c: i for i, c in enumerate(classes)}
    ref_y = np.array([class_idx[c] for c in ref_labels], dtype=np.int64)

    n_zero_q = int(zero_total_cells(qry.X).sum())
    if n_zero_q:
        warns.append(f"{n_zero_q} query cells have no counts at all; they are kept but carry no information")
        qry.report["zero_count_cells"] = n_zero_q

    q_labels = q_y = None
    if query_label_key is not None:
        q_labels, q_y, missing, lw = query_labels(qry.obs, query_label_key, classes)
        warns.extend(lw)
        in_ref = q_y >= 0
        qry.report.update(
            label_key=query_label_key,
            n_missing_labels=int(missing.sum()),
            n_labels_in_reference=int(in_ref.sum()),
            labels_not_in_reference={
                str(k): int(v) for k, v in pd.Series(q_labels[~in_ref & ~missing]).value_counts().items()
            },
        )

    # genes
    gm = match_genes(ref.var, qry.var, min_shared=min_shared_genes)
    if gm.n_shared < min_shared_genes:  # accepted because one dataset is a small gene panel
        warns.append(f"only {gm.n_shared} genes are shared by the reference and the query (a panel of "
                     f"{min(gm.n_ref, gm.n_query)} genes); cell types that differ in other genes cannot be told "
                     "apart, so check the labels against known markers" if query is not reference else
                     f"the reference has only {gm.n_shared} genes (a panel); cell types that differ in other genes "
                     "cannot be told apart, so check the labels against known markers")
    if gm.approximate:
        warns.append(f"{CASE_MATCH_WARNING} ({gm.n_shared} genes): check both datasets are the same species")
    if query is not reference:
        warns.extend(_cut_to_variable_genes(ref, qry, gm.n_shared))
    for d, cols in ((ref, gm.ref_idx), (qry, gm.query_idx)):
        d.report["median_fraction_counts_on_shared_genes"] = _shared_fraction(d.X, cols)
    f_ref = ref.report["median_fraction_counts_on_shared_genes"]
    f_q = qry.report["median_fraction_counts_on_shared_genes"]
    if normalize_on not in ("shared", "all"):
        raise ConfigError(f"normalize_on must be 'shared' or 'all', got {normalize_on!r}")
    if normalize_on == "all" and min(f_ref, f_q) < 0.7 * max(f_ref, f_q):
        warns.append(
            f"a typical cell has {f_ref:.0%} of its reference counts but {f_q:.0%} of its query counts on "
            "the shared genes; since each dataset is normalised on all its genes, expression levels of the "
            "two may be shifted"
        )
    shared_only = normalize_on == "shared"

    def log_of(d: _Loaded, cols: np.ndarray, shared: np.ndarray) -> sp.csr_matrix:
        """``d``'s log-normalised values on ``cols`` alone, each cell's library summed over the shared
        genes (or all): a large dataset is never normalised on genes the model does not use."""
        return lognormalize(d.X, cols, state=d.state, total_cols=shared if shared_only else None)

    on_query = hvg_from == "both" and query is not reference  # train() without a query passes the reference twice
    on_counts = hvg_flavor == "seurat_v3" and ref.state == "counts" and qry.state == "counts"
    if on_counts:
        chosen_on = [(ref.X, gm.ref_idx)] + ([(qry.X, gm.query_idx)] if on_query else [])
    else:  # normalised dispersion of the log values (as the models see them)
        chosen_on = [(log_of(d, cols, cols), np.arange(len(cols)))
                     for d, cols in [(ref, gm.ref_idx)] + ([(qry, gm.query_idx)] if on_query else [])]
    hvg, ranked_by = _select_hvg(chosen_on, n_top_genes, flavor="seurat_v3" if on_counts else "seurat")
    del chosen_on
    ref_cols, q_cols = gm.ref_idx[hvg], gm.query_idx[hvg]
    genes = [gm.names[i] for i in hvg]
    symbols = gene_symbols(ref.var, ref_cols, qry.var, q_cols)
    ref_log = log_of(ref, ref_cols, gm.ref_idx)
    q_log = log_of(qry, q_cols, gm.query_idx)
    ref_counts = ref.X[:, ref_cols]
    q_counts = qry.X[:, q_cols]
    # cells with counts, but none on the genes the model uses: as empty to the model as cells without any
    for name, d, sub, before in (("reference", ref, ref_counts, 0), ("query", qry, q_counts, n_zero_q)):
        n_off = int(zero_total_cells(sub).sum()) - before
        if n_off > 0:
            warns.append(f"{n_off} {name} cells have counts but none on the {len(genes)} genes the model uses; "
                         + ("they add nothing to training" if name == "reference" else
                            "they carry no information for it and will likely be called Unknown"))
            d.report["cells_without_counts_on_model_genes"] = n_off
    for d in (ref, qry):
        d.report["n_cells"] = int(d.X.shape[0])
    ref.X = qry.X = None  # the full matrices are not needed past here (a large reference's copy is freed)

    batches = ref_b = q_b = None
    if batch_key:
        batches, ref_b, q_b = batch_codes(ref.obs, qry.obs, batch_key)
        confounded = batches_hold_one_type(ref_b, ref_y)
        if confounded:
            warns.append(f"each of the reference's {confounded} samples of batch key {batch_key!r} holds one cell "
                         f"type: the generative models may take the types for batch effects (check that the column "
                         f"names samples, or train without a batch key)")

    # split
    train_idx, val_idx = stratified_split(ref_y, val_fraction, seed=seed)
    ref_names = np.asarray(ref.obs_names)
    train = _split(ref_log, ref_counts, train_idx, ref_y, ref_names, ref_labels, ref.index, ref_b)
    val = _split(ref_log, ref_counts, val_idx, ref_y, ref_names, ref_labels, ref.index, ref_b)
    qsplit = _split(q_log, q_counts, None, q_y, np.asarray(qry.obs_names), q_labels, qry.index, q_b)

    report: dict[str, Any] = {
        "reference": ref.report,
        "query": qry.report,
        "genes": {
            "message": gm.message,
            "mode": gm.mode,
            "approximate": gm.approximate,
            "n_shared": gm.n_shared,
            "n_ref": gm.n_ref,
            "n_query": gm.n_query,
            "ref_key": gm.ref_key,
            "query_key": gm.query_key,
            "n_hvg": len(genes),
            "hvg": (
                f"top {len(genes)} highly variable genes of the "
                + ("reference or the query (each gene by its better rank; " if on_query else "reference (")
                + f"scanpy flavor '{ranked_by}')"
                if len(genes) < gm.n_shared else f"all {len(genes)} shared genes"
            ),
            "hvg_flavor": ranked_by,
        },
        "classes": classes,
        "n_classes": len(classes),
        "n_train": train.n_obs,
        "n_val": val.n_obs,
        "n_query": qsplit.n_obs,
        "val_class_counts": {c: int((val.y == i).sum()) for i, c in enumerate(classes)},
        "preprocessing": (
            f"library-size normalisation to {TARGET_SUM:g} counts per cell on "
            + ("the genes shared by both datasets" if shared_only else "all genes of each dataset")
            + ", log1p, then the selected shared genes"
        ),
        "normalize_on": normalize_on,
        "norm_genes": [str(g) for g in gm.names] if shared_only else None,
        "norm_gene_symbols": gene_symbols(ref.var, gm.ref_idx, qry.var, gm.query_idx) if shared_only else None,
        "counts_available": ref.state == "counts" and qry.state == "counts",
        "options": {
            "label_key": label_key, "query_label_key": query_label_key, "n_top_genes": int(n_top_genes),
            "val_fraction": float(val_fraction), "min_cells_per_class": int(min_cells_per_class),
            "min_shared_genes": int(min_shared_genes), "seed": int(seed), "qc": qc,
            "allow_lognorm": bool(allow_lognorm), "normalize_on": normalize_on, "batch_key": batch_key or None,
            "hvg_from": hvg_from, "hvg_flavor": hvg_flavor,
        },
        "warnings": warns,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if batches is not None:
        n = np.bincount(np.r_[ref_b, q_b], minlength=len(batches))
        report["batches"] = {"key": batch_key, "cells": {b: int(k) for b, k in zip(batches, n)}}
    return Prepared(train=train, val=val, query=qsplit, classes=classes, genes=genes, report=report,
                    batches=batches, gene_symbols=symbols)


_BATCH_HINTS = ("sample", "donor", "batch", "orig.ident", "individual", "patient", "subject", "library", "run",
                "replicate", "condition", "group")
#: words naming a grouping of cells by what they are: a column named so ("lineage_group", "celltype_group") is no
#: sample unless a hint before "replicate" says it is ("sample_type"); found 2026-12-07, a query's
#: lymphoid / myeloid column taken for its samples, and the run advised training with it as the batch key
_TYPE_WORDS = ("type", "lineage", "cluster", "leiden", "louvain", "annotation", "label", "class", "compartment")


def batch_candidates(ref_obs: pd.DataFrame, q_obs: pd.DataFrame, *, exclude: tuple[str, ...] = (),
                     max_levels: int = 200, named_only: bool = False) -> list[str]:
    """Obs columns of either dataset that could name each cell's sample or batch (2 to
    ``max_levels`` values in at least one dataset, not decimals), likeliest first by name
    (sample, donor, batch, ...); for the Data page's batch-key choice. ``named_only``: only the
    columns whose name says so."""
    out = []
    labels = tuple(exclude)
    exclude = (*exclude, *annotation_columns(ref_obs), *annotation_columns(q_obs))
    for col in dict.fromkeys([*map(str, ref_obs.columns), *map(str, q_obs.columns)]):
        if col in exclude:
            continue
        # the labels again in other words (CELLxGENE's cell_type_ontology_term_id beside cell_type): no sample
        # column, though offered as one until 2026-12-07
        if any(_same_partition(obs[col], obs[k]) for k in labels for obs in (ref_obs, q_obs)
               if col in obs.columns and k in obs.columns):
            continue
        levels = []
        for obs in (ref_obs, q_obs):
            if col in obs.columns:
                s = obs[col]
                kind = s.dtype.kind if not isinstance(s.dtype, pd.CategoricalDtype) else "O"
                levels.append(-1 if kind == "f" else int(s[~missing_label_mask(s)].astype(str).nunique()))
        if any(n < 0 for n in levels) or not any(2 <= n <= max_levels for n in levels):
            continue
        low = col.lower()
        hint = next((i for i, h in enumerate(_BATCH_HINTS) if h in low), len(_BATCH_HINTS))
        if hint >= _BATCH_HINTS.index("replicate") and any(w in low for w in _TYPE_WORDS):
            hint = len(_BATCH_HINTS)
        if named_only and hint == len(_BATCH_HINTS):
            continue
        out.append((hint, -len(levels), col))
    return [c for *_, c in sorted(out)]


def _same_partition(a: pd.Series, b: pd.Series) -> bool:
    """Whether ``a`` and ``b`` (one column each of one obs) group the cells the same way, under other names."""
    pairs = pd.DataFrame({"a": a.astype(str).to_numpy(), "b": b.astype(str).to_numpy()}).drop_duplicates()
    return bool(pairs["a"].is_unique and pairs["b"].is_unique)


_ID_VALUE = re.compile(r"^[A-Za-z]+[:_]\d{4,}$")  # an ontology term (CL:0000624, UBERON_0002048)


def _id_column(col: Any, s: pd.Series) -> bool:
    """A column of identifiers of what another column names (``cell_type_ontology_term_id`` beside CELLxGENE's
    ``cell_type``): its name says so, or its values are ontology terms."""
    low = str(col).lower()
    if "ontology" in low or low.endswith(("_id", "_ids", "term")):
        return True
    vals = s.dropna().astype(str).unique()[:50]
    return len(vals) > 0 and sum(bool(_ID_VALUE.match(v)) for v in vals) > 0.8 * len(vals)


def annotation_columns(obs: pd.DataFrame) -> list[str]:
    """The columns of ``obs`` that a cellannot run wrote (every one of a prefix's ``_label``,
    ``_label_raw``, ``_is_unknown``, ... present): not a sample or batch column of the data. A query
    annotated once and labelled again had its ``cellannot_unknown_group`` taken for its samples (found
    2026-12-07), whose groups are the last run's Unknown calls by construction."""
    from cellannot_core._constants import OutKeys

    suffixes = [v[len(OutKeys.UNS):] for v in (OutKeys.LABEL, OutKeys.LABEL_RAW, OutKeys.CONFIDENCE,
                                               OutKeys.OOD_SCORE, OutKeys.IS_UNKNOWN, OutKeys.UNKNOWN_GROUP)]
    cols, out = set(map(str, obs.columns)), []
    for col in cols:
        if col.endswith(suffixes[4]):
            names = [col[: -len(suffixes[4])] + sfx for sfx in suffixes]
            if sum(n in cols for n in names) >= 4:  # an annotation written before _unknown_group existed too
                out += [n for n in names if n in cols]
    return out


def _hint(col: Any, hints: tuple[str, ...]) -> int:
    """The position of the first of ``hints`` in the column's name (lower case), ``len(hints)`` for none."""
    low = str(col).lower()
    return next((i for i, h in enumerate(hints) if h in low), len(hints))


def label_name_note(key: str) -> str | None:
    """A warning when a label column's name says it holds samples or batches, not cell types: a model
    trained on it learns to tell samples apart (a reference of one type offered its ``library`` column,
    found 2026-12-07)."""
    if _hint(key, _LABEL_HINTS) < len(_LABEL_HINTS) or _hint(key, _BATCH_HINTS) == len(_BATCH_HINTS):
        return None
    return (f"{shown_name(key)} looks like a sample or batch column, not cell types: a model trained on it "
            "learns to tell samples apart. Pick the column of cell types.")


def _label_candidates(obs: pd.DataFrame, n_cells: int, max_classes: int = 500) -> tuple[list[dict[str, Any]], list[str]]:
    """Columns that could hold cell types, likeliest first (named as labels, then not named as samples
    or batches, then by kind and number of classes), and a note for each column named as labels that
    cannot be one (one type only, or too many)."""
    out, notes, single = [], [], {}
    for col in obs.columns:
        s = obs[col]
        kind = s.dtype.kind if not isinstance(s.dtype, pd.CategoricalDtype) else "O"
        if kind == "f":  # QC metrics, coordinates
            continue
        hint = _hint(col, _LABEL_HINTS)
        if kind in "iu" and s.nunique() > 50:
            continue
        vc = s[~untyped_label_mask(s)].astype(str).value_counts()
        if not 2 <= len(vc) <= max_classes or len(vc) > 0.5 * n_cells:
            if hint < len(_LABEL_HINTS) and len(vc) == 1:
                single.setdefault(str(vc.index[0]), []).append((shown_name(col), hint))
            elif hint < len(_LABEL_HINTS) and len(vc) > 1:
                notes.append(f"{shown_name(col)} holds {len(vc):,} different values, too many to be cell types "
                             f"(at most {max_classes}, and under half the cells).")
            continue
        out.append({
            "key": str(col),
            "n_classes": int(len(vc)),
            "counts": {str(k): int(v) for k, v in vc.head(50).items()},
            # (CELLxGENE's cell_type_ontology_term_id, before its cell_type, was picked: found 2026-12-07)
            "_rank": (hint, label_name_note(str(col)) is not None, _id_column(col, s), kind in "iub", -len(vc)),
        })
    best = min((d["_rank"][0] for d in out), default=len(_LABEL_HINTS))
    for value, cols in single.items():  # said where such a column would be the one expected: CELLxGENE's
        cols = [c for c, h in cols if h < best]  # tissue_type and suspension_type beside cell_type were noise
        if cols:
            notes.insert(0, f"{', '.join(cols)} {'holds' if len(cols) == 1 else 'hold'} one type only "
                            f"({shown_name(value)}): a reference needs at least two cell types to tell apart.")
    out.sort(key=lambda d: d["_rank"])
    for d in out:
        del d["_rank"]
    return out, notes


def _suggested_label_key(cands: list[dict[str, Any]], notes: list[str]) -> str | None:
    """The first candidate, unless its name says samples or batches, or a column named as labels was
    refused and this one is not named so: then none is picked for the user."""
    if not cands:
        return None
    key = cands[0]["key"]
    if label_name_note(key) is not None or (notes and _hint(key, _LABEL_HINTS) == len(_LABEL_HINTS)):
        return None
    return key


def summarize_dataset(adata: ad.AnnData, *, name: str = "dataset") -> dict[str, Any]:
    """Describe a dataset for the data page (never raises on data problems).

    Parameters
    ----------
    adata
        The dataset.
    name
        ``"reference"`` / ``"query"``, for messages.

    Returns
    -------
    dict
        JSON-serialisable: ``name``, ``n_cells``, ``n_genes``, ``value_state`` (of X),
        ``counts_source`` (None if no counts were found), ``gene_ids`` (``"Ensembl IDs"``
        or ``"symbols"``), ``example_genes``, ``obs_columns``, ``label_candidates`` (obs
        columns with 2-500 categories, most likely cell-type columns first, each with
        ``key``, ``n_classes`` and ``counts``), ``suggested_label_key`` (None when no column is a
        safe guess), ``label_notes`` (why a column named as labels is not offered), ``problems``
        (one-line messages of what would stop :func:`prepare`) and ``notes`` (what the reader did,
        e.g. tables of cell annotations joined beside a 10x matrix).
    """
    problems: list[str] = []
    source = None
    n_genes = int(adata.n_vars)
    try:
        c = get_counts(adata, name=name)
        source, n_genes = c.source, int(c.X.shape[1])
        check_values(c.X, name=name)
    except DataError as exc:
        problems.append(str(exc))
    if adata.n_obs == 0 or adata.n_vars == 0:
        problems.insert(0, f"the {name} is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    cands, label_notes = _label_candidates(adata.obs, adata.n_obs)
    return {
        "name": name,
        "n_cells": int(adata.n_obs),
        "n_genes": n_genes,
        "value_state": detect_value_state(adata.X) if adata.X is not None else "none",
        "counts_source": source,
        "gene_ids": "Ensembl IDs" if is_ensembl(adata.var_names) else "symbols",
        "example_genes": [str(v) for v in adata.var_names[:5]],
        "obs_columns": [str(c) for c in adata.obs.columns],
        "label_candidates": cands,
        "suggested_label_key": _suggested_label_key(cands, label_notes),
        "label_notes": label_notes,
        "problems": problems,
        "notes": _read_notes(_input_info(adata)),
    }


def read_notes(adata: ad.AnnData) -> list[str]:
    """What the reader did that the user should see (:func:`_read_notes`), for the Data page and the log."""
    return _read_notes(_input_info(adata))


def _read_notes(info: dict[str, Any]) -> list[str]:
    """What the reader did that the user should see: a table's orientation, guessed from its
    names, a MuData's modality, the tables of cell annotations joined beside a matrix."""
    notes = []
    if info.get("format") == "table" and info.get("orientation") in ("cells_x_genes", "genes_x_cells"):
        rows = "cells" if info["orientation"] == "cells_x_genes" else "genes"
        reason = info.get("orientation_reason", "guessed")
        notes.append(f"the table was read with {rows} as rows ({reason})" + ("" if reason == "set by the user" else (
            f"; if its rows are {'genes' if rows == 'cells' else 'cells'}, say so (the command line's "
            "--reference-orientation / --query-orientation, read_dataset(orientation=...)) or save it transposed")))
    if info.get("format") == "h5mu":
        notes.append(f"the MuData file was read as its {info.get('modality')!r} modality")
    if info.get("format") == "loom" and info.get("layers"):
        notes.append("the loom file was read as its main matrix, its layers left out (" + ", ".join(info["layers"])
                     + "); velocyto's files keep the spliced counts there: to count the unspliced ones too, save "
                     "spliced + unspliced as an .h5ad")
    return notes + [str(n) for n in info.get("cell_tables", [])]


def _input_info(adata: ad.AnnData) -> dict[str, Any]:
    """The reader's note of how a dataset was read (``uns['cellannot_input']``), or {}."""
    from .io import INPUT_UNS_KEY

    info = adata.uns.get(INPUT_UNS_KEY)
    return info if isinstance(info, dict) else {}


#: a query missing more than this share of a saved model's genes is told what that costs ...
MISSING_GENES_WARN = 0.2
#: ... and more than this share is refused: the model would score mostly zeros put in for the genes,
#: and the study-shift correction takes the loss for a shift, so Unknown calls vanish
#: (``bench/input_forms.py``: the default model on the demo pair with 60% or 80% of its genes
#: missing called no novel cell Unknown on five draws of six, against 19% with all its genes)
MISSING_GENES_REFUSE = 0.5
_ADAPT = ("label it with `predict --adapt` (the API's adapt=True), which trains the model again on the genes the "
          "query has, or annotate it with the reference")


def check_model_genes(n_shared: int, n_model: int) -> list[str]:
    """A query that lacks a saved model's genes (they are set to zero): the warning to give, or
    none; refused when it lacks more than :data:`MISSING_GENES_REFUSE` of them."""
    missing = n_model - n_shared
    if missing / max(n_model, 1) > MISSING_GENES_REFUSE:
        raise DataError(f"the query has only {n_shared} of the model's {n_model} genes: with most of its genes set "
                        f"to zero the model would label from what is left and call almost no cell Unknown. Check "
                        f"that the gene names are of the same kind (symbols or IDs, species), or {_ADAPT}")
    if missing / max(n_model, 1) <= MISSING_GENES_WARN:  # (said in the step's line: a warning for 16 of 1,267
        return []                                        # genes missing cried wolf, found 2026-12-07)
    return [f"{missing} of the model's {n_model} genes are missing from the query and were set to zero "
            f"({missing / n_model:.0%}): labels are less reliable and Unknown calls can vanish (the model takes the "
            f"loss for a shift of the whole query); {_ADAPT}"]


def model_genes_found(gm, n_model: int) -> str:
    """The step's line of a saved model's genes matched in a query, naming those set to zero."""
    missing = n_model - gm.n_shared
    return (f"{gm.n_shared} of {n_model} model genes found in the query ({gm.mode})"
            + (f"; the other {missing} are set to zero" if missing > 0 else ""))


def genes_note(missing: list[str], n_shared: int, n_model: int) -> dict[str, str]:
    """``{"genes_note": ...}``, :func:`check_model_genes`' warning when it costs the labels (more than
    :data:`MISSING_GENES_WARN` of the model's genes missing): a warning on every label, which the pages show
    (found 2026-12-07: 43% of a model's genes missing from a query of another tissue and species, said in the
    log alone)."""
    return {"genes_note": missing[0]} if missing and n_model - n_shared > MISSING_GENES_WARN * n_model else {}


def prepare_query(
    query: ad.AnnData,
    *,
    genes: list[str],
    norm_genes: list[str] | None = None,
    min_shared_genes: int = DEFAULT_MIN_SHARED_GENES,
    allow_lognorm: bool = False,
    with_counts: bool = True,
    symbols: dict[str, list[str] | None] | None = None,
) -> tuple[Split, dict[str, Any]]:
    """Align a new query to the genes of a trained model (for ``predict --model``).

    Genes of the model missing from the query are filled with zeros (reported). The library
    size is summed over ``norm_genes`` found in the query (the genes the reference was
    normalised on) or over all query genes when ``norm_genes`` is None. ``with_counts=False``:
    ``Split.counts`` is None (labelling needs only ``X``; a million-cell query's counts on the
    model's genes are gigabytes).

    Returns
    -------
    (Split, report)
        ``Split.X`` is cells x ``len(genes)`` in the model's gene order; ``report['message']``
        says how many model genes the query has.
    """
    warns: list[str] = []
    qry = _load(query, name="query", allow_lognorm=allow_lognorm, qc=None, warns=warns)
    symbols = symbols or {}  # ``gene_symbols`` / ``norm_gene_symbols`` of the model's bundle (model_genes)
    gm = match_genes(model_genes(genes, symbols.get("gene_symbols")), qry.var, min_shared=min_shared_genes,
                     ref_name="model")
    total_cols = None
    if norm_genes is not None:
        nm = match_genes(model_genes(norm_genes, symbols.get("norm_gene_symbols")), qry.var,
                         min_shared=min_shared_genes)
        total_cols = nm.query_idx
    X = _in_model_order(lognormalize(qry.X, gm.query_idx, state=qry.state, total_cols=total_cols), gm.ref_idx,
                        len(genes))
    counts = _in_model_order(sp.csr_matrix(qry.X[:, gm.query_idx], dtype=np.float32), gm.ref_idx,
                             len(genes)) if with_counts else None
    split = Split(X=X if too_big_for_dense(X) else X.toarray(), counts=counts, y=None,
                  obs_names=np.asarray(qry.obs_names), labels=None)
    split.index = qry.index
    message = model_genes_found(gm, len(genes))
    missing = check_model_genes(gm.n_shared, len(genes))
    warns.extend(missing)
    return split, {"message": message, "n_shared": gm.n_shared, "n_model_genes": len(genes),
                   "approximate": gm.approximate, "warnings": warns, **qry.report,
                   **genes_note(missing, gm.n_shared, len(genes))}
