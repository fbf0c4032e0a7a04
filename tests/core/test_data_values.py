"""Value-state detection and finding the raw counts."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from cellannot_core.data import detect_value_state, get_counts
from cellannot_core.errors import DataError
from conftest import make_synthetic, not_of_counts

pytestmark = pytest.mark.filterwarnings("ignore:zero-centering")


def _lognorm(a):
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


def test_detect_counts_lognorm_scaled(synthetic_adata):
    a = synthetic_adata
    assert detect_value_state(a.X) == "counts"
    assert detect_value_state(a.X.toarray()) == "counts"
    b = _lognorm(a)
    assert detect_value_state(b.X) == "lognorm"
    sc.pp.scale(b)
    assert detect_value_state(b.X) == "scaled"
    assert detect_value_state(sp.csr_matrix((5, 4))) == "counts"
    # non-integer but large (CPM / estimated counts): treated as counts
    assert detect_value_state(np.array([[0.5, 1500.25], [3.3, 0.0]])) == "counts"
    assert detect_value_state(np.array([[0.5, 2.25], [3.3, 0.0]])) == "lognorm"
    # float round-off on counts is tolerated
    assert detect_value_state(np.array([[1.0000001, 2.0], [3.0, 0.0]], dtype=np.float32)) == "counts"


def test_detect_uses_a_sample_but_is_stable():
    rng = np.random.default_rng(0)
    X = sp.random(5000, 50, density=0.1, format="csr", random_state=1, data_rvs=lambda n: rng.poisson(3, n) + 1.0)
    assert detect_value_state(X, n_rows=100) == "counts"
    X2 = X.copy()
    X2.data = np.log1p(X2.data)
    assert detect_value_state(X2, n_rows=100) == "lognorm"


def test_counts_from_x(synthetic_adata):
    c = get_counts(synthetic_adata, name="reference")
    assert c.state == "counts" and "from X" in c.source
    assert c.X.dtype == np.float32 and sp.isspmatrix_csr(c.X)
    assert list(c.var_names) == list(synthetic_adata.var_names)


def test_counts_from_layers(synthetic_adata):
    a = _lognorm(synthetic_adata)
    a.layers["counts"] = synthetic_adata.X.copy()
    c = get_counts(a, name="query")
    assert "layers['counts']" in c.source and "lognorm" in c.source
    np.testing.assert_array_equal(c.X.toarray(), synthetic_adata.X.toarray())


def test_counts_from_raw_with_more_genes(synthetic_adata):
    full = synthetic_adata
    a = _lognorm(full)
    a.raw = full  # raw keeps all genes and counts
    a = a[:, 10:50].copy()  # X now has fewer genes than raw
    sc.pp.scale(a)
    c = get_counts(a, name="reference")
    assert "adata.raw.X" in c.source and f"({full.n_vars} genes)" in c.source
    assert list(c.var_names) == list(full.var_names)
    assert c.X.shape == full.shape
    np.testing.assert_array_equal(c.X.toarray(), full.X.toarray())


def test_no_counts_lognorm_raises_or_allowed(synthetic_adata):
    a = _lognorm(synthetic_adata)
    a.X = not_of_counts(a.X)  # log-scale values that are not log1p of normalised counts
    with pytest.raises(DataError, match="log-normalised values in X and no raw counts.*Provide raw counts in X, layers"):
        get_counts(a, name="query")
    c = get_counts(a, name="query", allow_lognorm=True)
    assert c.state == "lognorm"
    np.testing.assert_allclose(c.X.toarray(), a.X.toarray())


def test_scaled_without_counts_raises(synthetic_adata):
    a = _lognorm(synthetic_adata)
    sc.pp.scale(a)
    with pytest.raises(DataError, match="scaled values"):
        get_counts(a, name="reference", allow_lognorm=True)


def test_counts_in_a_layer_of_another_name_are_named_not_taken(synthetic_adata):
    """A layer of counts under a name the reader does not know (velocyto's 'spliced', a lab's 'umi')
    is not taken on trust, but the message names it and says how to use it."""
    a = _lognorm(synthetic_adata)
    a.layers["umi"] = synthetic_adata.X.copy()
    sc.pp.scale(a)
    with pytest.raises(DataError, match=r"Its layers\['umi'\] holds counts: if those are the raw counts, name that "
                                        r"layer 'counts' \(adata.layers\['counts'\] = adata.layers\['umi'\]\)"):
        get_counts(a, name="reference")
    a.layers["counts"] = a.layers["umi"]
    assert get_counts(a, name="reference").source.startswith("raw counts from layers['counts']")
    b = _lognorm(synthetic_adata)  # X log-normalised: recovered from it, and the layer still named (found
    b.layers["umi"] = synthetic_adata.X.copy()  # 2026-12-07: the warning said only "recovered from the log1p values")
    got = get_counts(b, name="query").source
    assert got.startswith("raw counts recovered from the log1p values of X") and "layers['umi'] holds counts: if " \
        "those are the raw counts, give layer='umi'" in got
    from cellannot_core.data.values import counts_layer

    assert get_counts(counts_layer(b, "umi", "query"), name="query").source.startswith("raw counts from layers['umi']")


def test_layer_that_is_not_counts_is_skipped(synthetic_adata):
    a = _lognorm(synthetic_adata)
    a.X = not_of_counts(a.X)
    a.layers["counts"] = a.X.copy()  # mislabelled layer
    with pytest.raises(DataError, match="no raw counts"):
        get_counts(a, name="reference")


def test_negative_integer_counts_message():
    a = make_synthetic(50, 30)
    X = a.X.toarray()
    X[0, 0] = -3
    a.X = sp.csr_matrix(X)
    with pytest.raises(DataError, match="counts in X contain 1 negative values"):
        get_counts(a, name="reference")


def test_empty_anndata_x_none():
    a = ad.AnnData(obs=None, var=None, shape=(3, 4))
    with pytest.raises(DataError, match="no expression matrix"):
        get_counts(a, name="query")


@pytest.mark.parametrize("target, base", [(1e4, None), (1e6, None), (None, None), (1e4, 2)])
def test_counts_recovered_exactly_from_log_normalised_x(synthetic_adata, target, base):
    """log1p of library-size-normalised counts (scanpy's normalize_total + log1p, Seurat's
    NormalizeData; any target, natural or base-2 log, stored as float32) is each cell's counts
    times one factor after the log: the counts come back exactly, and the source says so."""
    a = synthetic_adata.copy()
    sc.pp.normalize_total(a, target_sum=target)
    sc.pp.log1p(a, base=base)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    c = get_counts(a, name="query")
    assert c.state == "counts" and "recovered" in c.source and ("log2" in c.source) == (base == 2)
    np.testing.assert_array_equal(c.X.toarray(), synthetic_adata.X.toarray())


def test_counts_recovered_from_the_scanpy_tutorial_layout(synthetic_adata):
    """The usual scanpy object: log-normalised values of all genes in .raw, X cut to a few genes
    and scaled (negatives): the counts of all genes come back from .raw."""
    full = synthetic_adata
    a = _lognorm(full)
    a.raw = a
    a = a[:, 10:50].copy()
    sc.pp.scale(a)
    c = get_counts(a, name="reference")
    assert "recovered" in c.source and "adata.raw.X" in c.source and c.X.shape == full.shape
    np.testing.assert_array_equal(c.X.toarray(), full.X.toarray())


def test_a_cell_with_no_gene_at_one_count_is_recovered_whole():
    """A cell whose smallest count is 2 or 3 (a few genes kept after normalising): the smallest
    multiple that makes every value whole is taken, not counts divided by 2."""
    from cellannot_core.data.values import recover_rows

    counts = sp.csr_matrix(np.array([[2.0, 4.0, 6.0, 0.0], [3.0, 5.0, 0.0, 7.0], [1.0, 0.0, 9.0, 2.0],
                                     [0.0, 0.0, 0.0, 0.0]]))
    x = counts.multiply(1e4 / np.maximum(counts.sum(1), 1)).tocsr()
    x.data = np.log1p(x.data)
    got, whole = recover_rows(x, np.e)
    assert whole.all()
    np.testing.assert_array_equal(got.toarray()[1:], counts.toarray()[1:])
    np.testing.assert_array_equal(got.toarray()[0], [1, 2, 3, 0])  # all even: its depth halves, its profile holds


def test_values_that_are_not_of_counts_are_not_recovered(synthetic_adata):
    """Log-scale values moved cell by cell and gene by gene (imputed, corrected) do not come back
    as whole numbers: no counts are made up, the message says what to provide."""
    from cellannot_core.data.values import recover_counts

    a = _lognorm(synthetic_adata)
    assert recover_counts(a.X) is not None
    assert recover_counts(not_of_counts(a.X)) is None
    b = synthetic_adata.copy()
    b.X = sp.csr_matrix(b.X, dtype=np.float32)
    b.X.data = np.sqrt(b.X.data) / 3  # another transform, on the log scale's range
    assert detect_value_state(b.X) == "lognorm" and recover_counts(b.X) is None
    with pytest.raises(DataError, match="cannot be turned back into counts. Provide raw counts"):
        get_counts(b, name="query")


def test_counts_get_one_index_dtype_and_the_callers_matrix_is_untouched():
    """anndata writes a CSR matrix's indptr as int64 beside int32 indices; scipy then copied the
    indices as int64 for every row slice or product (5.5 GB each at a million cells). The counts
    the pipeline works on carry one index type; the user's matrix keeps its own; the value state is
    read from the same sampled values."""
    from cellannot_core.data.values import _sample_values

    X = sp.random(3000, 40, density=0.2, format="csr", random_state=0, dtype=np.float32)
    X.data = np.round(X.data * 10) + 1
    X.indptr = X.indptr.astype(np.int64)
    X.indices = X.indices.astype(np.int32)
    a = ad.AnnData(X=X)
    c = get_counts(a, name="query")
    assert c.X.indptr.dtype == c.X.indices.dtype == np.int32
    assert a.X.indptr.dtype == np.int64 and a.X.indices.dtype == np.int32  # the user's matrix as it was
    np.testing.assert_array_equal(c.X.toarray(), X.toarray())
    rows = np.sort(np.random.default_rng(0).choice(3000, 1000, replace=False))  # _sample_values' rows
    np.testing.assert_array_equal(_sample_values(X, 1000, 0), X[rows].data)


def test_counts_recovered_from_normalised_values_that_were_not_logged(synthetic_adata, tmp_path):
    """CPM and the like (library-size-normalised, not logged; a table from a paper's supplement)
    were taken as counts as they were: the count models then saw every cell at a depth of a million.
    They are each cell's counts times one factor: the counts come back exactly, in memory and read
    a chunk at a time. Values of another kind (here TPM-like, divided by a length per gene) stay as
    they are, with a warning."""
    from cellannot_core.data import prepare
    from cellannot_core.data.stream import H5adRows

    a = synthetic_adata.copy()
    sc.pp.normalize_total(a, target_sum=1e6)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    assert detect_value_state(a.X) == "counts"
    c = get_counts(a, name="query")
    assert "recovered" in c.source and "not logged" in c.source
    np.testing.assert_array_equal(c.X.toarray(), synthetic_adata.X.toarray())
    a.write_h5ad(tmp_path / "cpm.h5ad")
    with H5adRows(tmp_path / "cpm.h5ad", name="query") as rows:
        assert "not logged" in rows.source
        got = sp.vstack([block for _, block in rows.chunks(7)])
    np.testing.assert_array_equal(got.toarray(), synthetic_adata.X.toarray())

    tpm = synthetic_adata.copy()
    lengths = np.random.default_rng(0).uniform(0.5, 5.0, tpm.n_vars)
    tpm.X = sp.csr_matrix(tpm.X.multiply(1 / lengths[None, :]).tocsr(), dtype=np.float32)
    sc.pp.normalize_total(tpm, target_sum=1e6)
    c = get_counts(tpm, name="query")
    assert c.source.startswith("non-integer values") and c.state == "counts"
    p = prepare(synthetic_adata, tpm, label_key="cell_type", n_top_genes=100, min_shared_genes=10)
    assert any("no whole counts" in w for w in p.report["warnings"])


def test_a_matrix_storing_one_count_in_two_entries_is_read_as_their_sum(synthetic_adata, tmp_path):
    """Found 2026-12-07 (a scanpy user's probe): a valid CSR matrix holding each count split in two entries
    of the same cell and gene (scipy and anndata read them as their sum) got 11% other labels and no
    Unknown: log1p acted on each stored entry. Now the counts are the sums, in memory and read a chunk at a
    time, and the user's matrix is not changed."""
    from cellannot_core.data import prepare
    from cellannot_core.data.stream import H5adRows

    a = synthetic_adata.copy()
    c = sp.csr_matrix(a.X).tocoo()
    two = (c.data >= 2) & (np.random.default_rng(0).random(c.nnz) < 0.3)  # (a row of more entries than genes is
    half = np.floor(c.data[two] / 2)                                       # refused read a chunk at a time)
    rows, cols = np.r_[c.row, c.row[two]], np.r_[c.col, c.col[two]]
    vals = c.data.copy()
    vals[two] -= half
    vals = np.r_[vals, half].astype(np.float32)
    order = np.lexsort((cols, rows))  # (the constructor would sum them: built by hand)
    split = sp.csr_matrix((vals[order], cols[order], np.r_[0, np.cumsum(np.bincount(rows, minlength=a.n_obs))]),
                          shape=a.shape)
    assert not split.has_canonical_format and split.nnz > c.nnz
    kept = split.copy()
    b = a.copy()
    b.X = split
    np.testing.assert_array_equal(get_counts(b, name="query").X.toarray(), synthetic_adata.X.toarray())
    assert b.X.nnz == kept.nnz and np.array_equal(b.X.data, kept.data)  # the user's matrix as it was
    same = prepare(synthetic_adata, a, label_key="cell_type", n_top_genes=100, min_shared_genes=10)
    got = prepare(synthetic_adata, b, label_key="cell_type", n_top_genes=100, min_shared_genes=10)
    dense = lambda m: m.toarray() if sp.issparse(m) else np.asarray(m)  # noqa: E731
    np.testing.assert_allclose(dense(got.query.X), dense(same.query.X), rtol=1e-6)
    b.write_h5ad(tmp_path / "split.h5ad")
    with H5adRows(tmp_path / "split.h5ad", name="query") as r:
        blocks = [block for _, block in r.chunks(7)]
    assert all(b.has_canonical_format for b in blocks)  # (toarray would sum them anyway)
    np.testing.assert_array_equal(sp.vstack(blocks).toarray(), synthetic_adata.X.toarray())
