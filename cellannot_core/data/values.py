"""What kind of values a matrix holds, and where a dataset keeps its raw counts."""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellannot_core.errors import DataError

__all__ = ["COUNT_LAYERS", "LOGNORM_MAX", "NOT_WHOLE", "UNLOGGED", "Counts", "as_given", "counts_genes", "counts_layer", "counts_layers", "detect_value_state", "get_counts",
           "log_name", "recover_counts", "recover_rows", "whole_counts"]

#: how a source of counts that are not whole numbers (and not a normalisation of them) begins
NOT_WHOLE = "non-integer values"

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
        if rows is not None:  # the rows' stored values, read off indptr (no index arrays converted)
            ends = X.indptr[rows + 1]
            starts = X.indptr[rows]
            vals = np.concatenate([X.data[a:b] for a, b in zip(starts, ends)]) if len(rows) else X.data[:0]
        else:
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
    if _whole(vals):
        return "counts"
    return "lognorm" if float(vals.max()) < LOGNORM_MAX else "counts"


def _whole(vals: np.ndarray) -> bool:
    """Whether values are whole numbers (99.9% within 1e-3 of one: float round-off tolerated)."""
    return vals.dtype.kind in "iub" or bool(np.mean(np.abs(vals - np.round(vals)) <= 1e-3) >= 0.999)


def whole_counts(X, *, n_rows: int = 1000, seed: int = 0) -> bool:
    """Whether the non-negative values of ``X`` are whole counts (not e.g. CPM, TPM or estimated
    counts, which :func:`detect_value_state` also calls ``"counts"``)."""
    vals = _sample_values(X, n_rows, seed)
    return vals.size == 0 or _whole(vals)


#: bases of the logarithm tried when turning log-normalised values back into counts (scanpy's and
#: Seurat's natural log1p first, then log2(x + 1) and log10(x + 1))
LOG_BASES = (np.e, 2.0, 10.0)
#: the "base" of values that were normalised but not logged (CPM and the like: counts times a
#: factor per cell), which :func:`recover_rows` takes as they are
UNLOGGED = 1.0
#: a recovered count is taken as an integer within this distance (float32 storage of log1p values
#: of up to ~1e6-normalised data loses about 1e-3 of a count)
RECOVER_TOL = 0.02
#: multiples of the smallest value tried as one count, for a cell with no gene at one count
RECOVER_MULTIPLES = (1, 2, 3, 4)
#: share of the cells (with any value) whose counts must come back whole for the recovery to hold
RECOVER_MIN_CELLS = 0.99
RECOVER_CHUNK = 20_000  # rows turned back at a time


def recover_rows(X, base: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """Log-normalised rows turned back into counts for one logarithm ``base``: ``v = base**x - 1``
    is each cell's counts times its size factor (``target / total``, the same for every gene of the
    cell), so the cell's smallest positive ``v`` is one count (or two, three, four in a cell with no
    gene at one count: the smallest multiple that makes every value whole). Rows are independent,
    so a file can be recovered a chunk at a time. Returns the rounded counts (CSR float32) and, per
    row, whether it came back whole (rows of zeros do)."""
    X = sp.csr_matrix(X, dtype=np.float64, copy=True) if sp.issparse(X) else sp.csr_matrix(
        np.asarray(X, dtype=np.float64))
    X.sum_duplicates()
    X.eliminate_zeros()
    data = X.data if base == UNLOGGED else np.expm1(X.data) if base == np.e else np.power(base, X.data) - 1.0
    lengths = np.diff(X.indptr)
    filled = lengths > 0
    whole = np.ones(X.shape[0], dtype=bool)
    out = np.zeros_like(data)
    if data.size:
        starts = X.indptr[:-1][filled]
        low = np.minimum.reduceat(data, starts)
        ok_low = low > 0
        c = data / np.repeat(np.where(ok_low, low, 1.0), lengths[filled])
        done = np.zeros(len(starts), dtype=bool)
        for k in RECOVER_MULTIPLES:
            ck = c * k
            dev = np.maximum.reduceat(np.abs(ck - np.round(ck)), starts)
            take = ok_low & ~done & (dev <= RECOVER_TOL)
            out = np.where(np.repeat(take, lengths[filled]), np.round(ck), out)
            done |= take
        out = np.where(np.repeat(done, lengths[filled]), out, np.round(c))
        whole[np.flatnonzero(filled)] = done
    v = sp.csr_matrix((out, X.indices, X.indptr), shape=X.shape)
    return sp.csr_matrix(v, dtype=np.float32), whole


def recover_counts(X, *, n_rows: int = 1000, seed: int = 0,
                   bases: tuple[float, ...] = LOG_BASES) -> tuple[sp.csr_matrix, float] | None:
    """Raw counts from log-normalised values (``log1p`` of library-size-normalised counts, as
    ``sc.pp.normalize_total`` + ``sc.pp.log1p`` or Seurat's ``NormalizeData`` leave them), or None
    when they are not that. The inversion is exact for such data: each cell's values are its counts
    times one factor, after the log (:func:`recover_rows`); it is taken only when, for one of
    :data:`LOG_BASES`, at least :data:`RECOVER_MIN_CELLS` of a seeded sample of cells and then of
    all cells come back as whole numbers, which values of any other kind do not. Returns the counts
    and the logarithm's base. ``bases=(UNLOGGED,)``: values normalised but not logged (CPM)."""
    vals = _sample_values(X, n_rows, seed)
    if vals.size == 0 or vals.min() < 0:
        return None
    n = X.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, n_rows, replace=False)) if n > n_rows else None
    for base in bases:
        sample = X[rows] if rows is not None else X
        _, ok = recover_rows(sample, base)
        if ok.mean() < RECOVER_MIN_CELLS:
            continue
        parts, ok = [], []
        for start in range(0, n, RECOVER_CHUNK):  # a block of rows at a time: float64 copies stay small
            c, w = recover_rows(X[start:start + RECOVER_CHUNK], base)
            parts.append(c)
            ok.append(w)
        if np.concatenate(ok).mean() >= RECOVER_MIN_CELLS:
            return sp.vstack(parts, format="csr"), float(base)
    return None


def log_name(base: float) -> str:
    """How the values were logged, for messages: ``log1p``, ``log2(x + 1)`` or ``log10(x + 1)``."""
    return {2.0: "log2(x + 1)", 10.0: "log10(x + 1)", UNLOGGED: "library-size-normalised (not logged)"}.get(
        base, "log1p")


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
    """CSR float32 of any matrix (dense float16, which scipy.sparse cannot hold, included), its two
    index arrays of one integer type (:func:`same_index_dtype`), its duplicate entries summed (:func:`summed`)."""
    out = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else sp.csr_matrix(np.asarray(X, dtype=np.float32))
    return same_index_dtype(summed(out, own=False))


def summed(X: sp.csr_matrix, *, own: bool) -> sp.csr_matrix:
    """``X`` with the entries stored twice for one cell and gene summed into one, which is what scipy and
    anndata take them to mean: log1p and every other step taken value by value act on each stored entry (a
    valid matrix holding each count split in two entries got other labels, 11% of them, found 2026-12-07).
    ``own``: ``X`` is the caller's to change (else a copy is changed, and only when it has duplicates)."""
    if X.has_canonical_format:
        return X
    X = X if own else X.copy()
    X.sum_duplicates()
    return X


def same_index_dtype(X: sp.csr_matrix) -> sp.csr_matrix:
    """``X`` (a CSR matrix the caller may change) with ``indptr`` and ``indices`` of one integer type:
    int32 while the stored values fit it. anndata writes ``indptr`` as int64 beside int32
    ``indices``, and scipy then copies the indices as int64 for every row slice, column selection or
    product: at a million cells a transient of 5.5 GB each time."""
    if X.indptr.dtype == X.indices.dtype:
        return X
    dtype = np.int32 if X.nnz < np.iinfo(np.int32).max and X.shape[1] < np.iinfo(np.int32).max else np.int64
    X.indptr = X.indptr.astype(dtype, copy=False)
    X.indices = X.indices.astype(dtype, copy=False)
    return X


def _raw_counts(raw, state: str, why: str) -> Counts | None:
    """The counts of ``adata.raw`` (``state`` as :func:`detect_value_state` judged it): as they are, or
    recovered from log-normalised values (None when they cannot be)."""
    var = raw.var.copy()
    var.index = pd.Index(raw.var_names.astype(str))
    if state == "counts":
        return Counts(_csr32(raw.X), var, f"raw counts from adata.raw.X ({raw.n_vars} genes){why}", "counts")
    got = recover_counts(raw.X)
    if got is None:
        return None
    return Counts(got[0], var, f"raw counts recovered from the {log_name(got[1])} values of adata.raw.X "
                  f"({raw.n_vars} genes): each cell's values were its counts times one factor{why}", "counts")


def counts_genes(adata: ad.AnnData) -> pd.DataFrame:
    """The genes :func:`get_counts` takes the counts of (``adata.raw.var`` where ``.raw`` keeps more genes than
    ``adata``, else ``adata.var``), without reading the counts: what a pair's shared genes are counted on (the Data
    page counted ``X``'s genes, refusing a pair the training took, found 2026-12-07)."""
    var = adata.raw.var if _raw_holds_more(adata) else adata.var
    kinds = _feature_kinds(var)
    return var if kinds is None else var.iloc[np.flatnonzero(kinds == GENE_EXPRESSION)]


def _raw_holds_more(adata: ad.AnnData, raw_state: str | None = None) -> bool:
    """Whether ``.raw`` holds counts or log-normalised values (``raw_state``, when known) of more genes than
    ``adata`` (its genes cut to the highly variable ones): :func:`find_counts` takes them from there first."""
    raw = adata.raw
    return raw is not None and raw.X is not None and raw.n_vars > adata.n_vars and \
        (raw_state or detect_value_state(raw.X)) in ("counts", "lognorm")


def _feature_kinds(var: pd.DataFrame) -> np.ndarray | None:
    """Each of ``var``'s features' Cell Ranger feature type, where it names genes beside features of other kinds
    (CITE-seq's antibodies, multiome's peaks are no genes); None where it names none or one kind."""
    col = next((c for c in var.columns if str(c).lower() in FEATURE_TYPE_COLUMNS), None)
    if col is None:
        return None
    kinds = var[col].astype(str).to_numpy()
    gex = kinds == GENE_EXPRESSION
    return kinds if gex.any() and not gex.all() else None


GENE_EXPRESSION = "Gene Expression"  # Cell Ranger's feature type of genes
FEATURE_TYPE_COLUMNS = ("feature_types", "feature_type")
FEATURES_LEFT_OUT = "features left out"


def get_counts(adata: ad.AnnData, *, name: str = "dataset", allow_lognorm: bool = False) -> Counts:
    """:func:`find_counts`, its gene expression only where ``var`` holds Cell Ranger's feature types of
    several kinds (CITE-seq's antibodies, multiome's peaks): those are no genes, and an antibody named as
    its gene (CD4) took the gene's place. Said in ``source``: until 2026-12-07 the readers left them out
    without a word, and an AnnData read with ``gex_only=False`` had its 20,000 peaks taken for genes."""
    got = find_counts(adata, name=name, allow_lognorm=allow_lognorm)
    kinds = _feature_kinds(got.var)
    if kinds is None:
        return got
    gex = kinds == GENE_EXPRESSION
    other = pd.Series(kinds[~gex]).value_counts()
    left = ", ".join(f"{int(n):,} {k}" for k, n in other.items())
    return Counts(got.X[:, np.flatnonzero(gex)], got.var.iloc[np.flatnonzero(gex)], f"{got.source}; its "
                  f"{int(gex.sum()):,} {GENE_EXPRESSION} features only ({left} {FEATURES_LEFT_OUT}: they are no "
                  "genes)", got.state)


def find_counts(adata: ad.AnnData, *, name: str = "dataset", allow_lognorm: bool = False) -> Counts:
    """Find the raw counts of ``adata``.

    When ``adata.raw`` keeps more genes than ``adata`` (genes cut to the highly variable ones, layers
    and all), its counts (or those recovered from its log-normalised values) come first. Otherwise
    looks, in order, at ``X``, ``layers['counts']`` (then ``'raw_counts'``, ``'raw'``,
    ``'umi_counts'``) and ``adata.raw.X``; the first whose values are counts (see
    :func:`detect_value_state`) is used. Without counts, log-normalised values in ``adata.raw.X``
    (scanpy's usual place for them, with all genes) or ``X`` are turned back into counts when they
    are log1p of library-size-normalised counts (:func:`recover_counts`, exact for such data).

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
    raw = adata.raw
    raw_state = detect_value_state(raw.X) if raw is not None and raw.X is not None else None
    if _raw_holds_more(adata, raw_state):
        # the object's genes were cut (scanpy's highly_variable_genes(subset=True), counts layer and all)
        # while .raw keeps them all: the genes another dataset shares are there (found 2026-12-07: such an
        # object, scanpy's usual one, was refused for "only 105 of 1267 reference genes")
        got = _raw_counts(raw, raw_state, f"; X and its layers hold {adata.n_vars} of them, a subset")
        if got is not None:
            return got
    if x_state == "counts":
        layer = adata.uns.get(COUNTS_LAYER_UNS) if isinstance(adata.uns, Mapping) else None
        x = f"layers[{layer!r}]" if isinstance(layer, str) else "X"  # (counts_layer's: "X" until 2026-12-07)
        if whole_counts(adata.X):
            return Counts(_csr32(adata.X), adata.var.copy(), f"raw counts from {x} ({adata.n_vars} genes)", "counts")
        got = recover_counts(adata.X, bases=(UNLOGGED,))
        if got is not None:  # CPM and the like: each cell's counts times one factor
            return Counts(got[0], adata.var.copy(), f"raw counts recovered from the {log_name(UNLOGGED)} values of "
                          f"{x} ({adata.n_vars} genes): each cell's values were its counts times one factor", "counts")
        return Counts(_csr32(adata.X), adata.var.copy(), f"{NOT_WHOLE} from {x} ({adata.n_vars} genes), taken as "
                      "counts (estimated or ambient-corrected counts, or TPM); the count models' likelihood "
                      "is for whole counts", "counts")
    for key in COUNT_LAYERS:
        if key in adata.layers and detect_value_state(adata.layers[key]) == "counts":
            return Counts(
                _csr32(adata.layers[key]), adata.var.copy(),
                f"raw counts from layers['{key}'] ({adata.n_vars} genes); X holds {x_state} values",
                "counts",
            )
    others = [str(k) for k in adata.layers.keys() if k not in COUNT_LAYERS
              and detect_value_state(adata.layers[k]) == "counts"]
    # a layer of counts under another name is not taken on trust (velocyto's 'spliced' holds counts, not all of
    # them) but named, where the counts are recovered from log values too (found 2026-12-07: X log-normalised,
    # the counts in layers['umis'], and the warning said only that they were recovered)
    also = (f"; layers[{others[0]!r}] holds counts: if those are the raw counts, give layer={others[0]!r} "
            f"(--layer {others[0]} on the command line)") if others else ""
    if raw_state in ("counts", "lognorm"):  # counts, or log-normalised values (scanpy's usual place, all genes)
        got = _raw_counts(raw, raw_state, (f"; X holds {x_state} values" if raw_state == "counts" else "") + also)
        if got is not None:
            return got
    if x_state == "lognorm" and (got := recover_counts(adata.X)) is not None:
        return Counts(got[0], adata.var.copy(), f"raw counts recovered from the {log_name(got[1])} values of X "
                      f"({adata.n_vars} genes): each cell's values were its counts times one factor{also}", "counts")
    where = "X, layers['counts'] or .raw"
    if others:
        where += (f". Its layers[{others[0]!r}] holds counts: if those are the raw counts, name that layer "
                  f"'counts' (adata.layers['counts'] = adata.layers[{others[0]!r}]), or give "
                  f"layer={others[0]!r} to ca.annotate / ca.train / predict (--layer {others[0]} on the command line)")
    if x_state == "lognorm":
        if allow_lognorm:
            return Counts(
                _csr32(adata.X), adata.var.copy(),
                f"log-normalised values from X ({adata.n_vars} genes), used as they are: no raw counts found",
                "lognorm",
            )
        raise DataError(
            f"the {name} holds log-normalised values in X and no raw counts (looked in X, layers "
            f"and .raw), and they are not log1p of library-size-normalised counts, so they cannot be turned "
            f"back into counts. Provide raw counts in {where}."
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


#: where :func:`counts_layer` names the layer its matrix came from, for :func:`get_counts`' account of the counts
COUNTS_LAYER_UNS = "cellannot_counts_layer"


def counts_layer(adata: ad.AnnData, layer: Any, name: str) -> ad.AnnData:
    """``adata`` as the pipeline reads it, with ``layer`` (the user's name for the layer of raw
    counts, as scvi-tools' ``setup_anndata(layer=...)``) as its matrix, its other matrices left
    out; ``adata`` itself without one. The user's object is not changed."""
    from cellannot_core.errors import ConfigError

    if layer is None:
        return adata
    if not isinstance(layer, str):
        raise ConfigError(f"layer names the layer holding the raw counts, e.g. 'counts'; not {layer!r}")
    if layer not in adata.layers:
        have = ", ".join(repr(str(k)) for k in adata.layers.keys()) or "none"
        raise DataError(f"the {name} has no layer {layer!r} (its layers: {have}); layer names the one holding the "
                        f"raw counts")
    out = ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var, uns=dict(adata.uns) | {COUNTS_LAYER_UNS: layer})
    _GIVEN[id(out)] = adata
    weakref.finalize(out, _GIVEN.pop, id(out), None)
    return out


#: id of an AnnData made by :func:`counts_layer` -> the AnnData it was made from, while it lives
_GIVEN: dict[int, ad.AnnData] = {}


def as_given(adata: Any) -> Any:
    """The AnnData ``adata`` was made from by :func:`counts_layer` (its ``X``, layers, ``obsm`` and ``raw`` as the
    user gave them), else ``adata``: what the annotations are written into. Until 2026-12-07 a query whose counts
    were taken from a layer in the app, or by ``predict --runs-dir --layer``, came back with the layer as ``X`` and
    without its other layers and embeddings (its UMAP among them)."""
    return _GIVEN.get(id(adata), adata)


def counts_layers(ref: ad.AnnData, query: ad.AnnData, layer: Any,
                  log: Callable[[str], None]) -> tuple[ad.AnnData, ad.AnnData]:
    """:func:`counts_layer` of both datasets, the layer needed in one of them at least: a scanpy
    user's reference may keep its counts in ``layers['umis']`` and the query in ``X``."""
    if layer is None or not isinstance(layer, str) or (layer in ref.layers) == (layer in query.layers):
        return counts_layer(ref, layer, "reference"), counts_layer(query, layer, "query")
    without = "query" if layer in ref.layers else "reference"
    log(f"note: the {without} has no layer {layer!r}; its counts are found as without a layer (X, a counts layer "
        "or .raw)")
    return (counts_layer(ref, layer if without == "query" else None, "reference"),
            counts_layer(query, layer if without == "reference" else None, "query"))
