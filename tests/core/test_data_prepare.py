"""prepare(): end to end on synthetic data and on a small real subset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from cellannot_core.data import Prepared, Split, prepare, read_dataset, stratified_split, summarize_dataset
from cellannot_core.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def prepared(synthetic_pair) -> Prepared:
    ref, q = synthetic_pair
    return prepare(ref, q, label_key="cell_type", query_label_key="cell_type", n_top_genes=60, seed=0)


def test_shapes_genes_and_types(prepared, synthetic_pair):
    ref, q = synthetic_pair
    p = prepared
    assert p.n_genes == 60 and len(set(p.genes)) == 60
    # genes are reference genes, in reference order
    pos = [ref.var_names.get_loc(g) for g in p.genes]
    assert pos == sorted(pos)
    for s in (p.train, p.val, p.query):
        assert isinstance(s, Split)
        assert s.X.dtype == np.float32 and isinstance(s.X, np.ndarray)
        assert sp.issparse(s.counts) and s.counts.format == "csr" and s.counts.dtype == np.float32
        assert s.X.shape == s.counts.shape == (s.n_obs, 60)
        assert s.y.dtype == np.int64 and len(s.obs_names) == s.n_obs
    assert p.train.n_obs + p.val.n_obs == ref.n_obs
    assert p.classes == ["type0", "type1", "type2"]
    assert p.report["n_train"] == p.train.n_obs and p.report["n_val"] == p.val.n_obs


def test_query_order_and_labels(prepared, synthetic_pair):
    _, q = synthetic_pair
    p = prepared
    assert list(p.query.obs_names) == list(q.obs_names)
    np.testing.assert_array_equal(p.query.index, np.arange(q.n_obs))
    truth = q.obs["cell_type"].astype(str).to_numpy()
    assert list(p.query.labels) == list(truth)
    expected = np.array([p.classes.index(t) if t in p.classes else -1 for t in truth])
    np.testing.assert_array_equal(p.query.y, expected)
    assert (p.query.y == -1).sum() == (truth == "type3").sum() > 0
    assert p.report["query"]["labels_not_in_reference"] == {"type3": int((truth == "type3").sum())}


def test_values_are_lognorm_of_full_library(prepared, synthetic_pair):
    ref, q = synthetic_pair
    p = prepared
    for ad_, split in ((q, p.query), (ref, p.train)):
        expected = ad_.copy()
        sc.pp.normalize_total(expected, target_sum=1e4)  # on ALL genes
        sc.pp.log1p(expected)
        rows = [ad_.obs_names.get_loc(n) for n in split.obs_names]
        cols = [ad_.var_names.get_loc(g) for g in p.genes]
        np.testing.assert_allclose(split.X, expected.X[rows][:, cols].toarray(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(split.counts.toarray(), ad_.X[rows][:, cols].toarray())


def test_only_the_chosen_genes_are_normalised(synthetic_pair, monkeypatch):
    """A million-cell query normalised on every shared gene held a second copy of most of its
    matrix: each dataset's values are computed on the genes the model uses alone (with the same
    library sizes, so the values are those above)."""
    import importlib

    prep = importlib.import_module("cellannot_core.data.prepare")  # the module, not its function
    widths = []
    real = prep.lognormalize

    def spy(X, cols, **kw):
        widths.append(len(cols))
        return real(X, cols, **kw)

    monkeypatch.setattr(prep, "lognormalize", spy)
    ref, q = synthetic_pair
    p = prepare(ref, q, label_key="cell_type", n_top_genes=60, seed=0)
    assert p.n_genes == 60 < ref.n_vars
    assert widths == [60, 60]  # the reference's and the query's, nothing wider


def test_stratified_split_every_class_in_val(prepared, synthetic_pair):
    ref, _ = synthetic_pair
    p = prepared
    assert set(p.val.y) == set(p.train.y) == {0, 1, 2}
    assert not set(p.train.obs_names) & set(p.val.obs_names)
    frac = p.val.n_obs / ref.n_obs
    assert 0.12 < frac < 0.18
    # labels/y agree with the reference obs
    truth = ref.obs["cell_type"].astype(str)
    for s in (p.train, p.val):
        assert [p.classes[k] for k in s.y] == list(truth[s.obs_names])
        assert list(s.labels) == list(truth[s.obs_names])
    # small classes still get a val cell
    y = np.array([0] * 100 + [1] * 3 + [2] * 2)
    tr, va = stratified_split(y, 0.15, seed=1)
    assert set(y[va]) == {0, 1, 2} and set(y[tr]) == {0, 1, 2}
    assert len(tr) + len(va) == len(y)


def test_seeded_and_reproducible(synthetic_pair):
    ref, q = synthetic_pair
    a = prepare(ref, q, label_key="cell_type", seed=3)
    b = prepare(ref, q, label_key="cell_type", seed=3)
    c = prepare(ref, q, label_key="cell_type", seed=4)
    assert list(a.val.obs_names) == list(b.val.obs_names)
    assert list(a.val.obs_names) != list(c.val.obs_names)
    assert a.genes == b.genes == list(ref.var_names)  # 120 shared genes <= 2000: all kept
    assert a.report["genes"]["hvg"] == "all 120 shared genes"


def test_hvg_prefers_marker_genes(prepared):
    # the synthetic markers (GENE0..GENE23 for 3 classes x 8) vary the most
    markers = {f"GENE{j}" for j in range(24)}
    assert len(markers & set(prepared.genes)) >= 22
    assert prepared.report["genes"]["n_hvg"] == 60


def test_a_type_only_the_query_has_keeps_its_marker_genes(synthetic_pair):
    # the query's novel type3 is marked by GENE24..GENE31, which do not vary in the reference
    ref, q = synthetic_pair
    novel = {f"GENE{j}" for j in range(24, 32)}
    both = prepare(ref, q, label_key="cell_type", n_top_genes=32, seed=0, hvg_from="both", hvg_flavor="seurat_v3")
    alone = prepare(ref, q, label_key="cell_type", n_top_genes=32, seed=0, hvg_flavor="seurat_v3")
    assert len(novel & set(both.genes)) >= len(novel & set(alone.genes)) + 4  # 5 against 0
    assert len({f"GENE{j}" for j in range(24)} & set(both.genes)) >= 20  # the reference's markers stay (23 of 24)
    assert "reference or the query" in both.report["genes"]["hvg"] and both.report["genes"]["hvg_flavor"] == "seurat_v3"
    assert both.report["options"]["hvg_from"] == "both" and both.report["options"]["hvg_flavor"] == "seurat_v3"
    # trained without a query (the reference given twice): the reference's own choice
    assert prepare(ref, ref, label_key="cell_type", n_top_genes=32, seed=0, hvg_from="both",
                   hvg_flavor="seurat_v3").genes == alone.genes
    # the default ranks the reference's counts (seurat_v3), as scanpy ranks them
    default = prepare(ref, q, label_key="cell_type", n_top_genes=32, seed=0)
    assert default.genes == alone.genes and default.report["options"]["hvg_flavor"] == "seurat_v3"
    counts = ref.copy()
    counts.X = sp.csr_matrix(counts.X)
    v3 = sc.pp.highly_variable_genes(counts, flavor="seurat_v3", n_top_genes=32, inplace=False)
    assert set(default.genes) == set(ref.var_names[v3["highly_variable"].to_numpy()])
    # seurat (the default before 2026-12-05): scanpy's flavor on the reference's log values, exactly as scanpy cuts it
    import anndata as ad

    old = prepare(ref, q, label_key="cell_type", n_top_genes=32, seed=0, hvg_flavor="seurat")
    from cellannot_core.data import lognormalize

    log = ad.AnnData(X=lognormalize(sp.csr_matrix(ref.X), np.arange(ref.n_vars)), var=ref.var)
    sc.pp.highly_variable_genes(log, flavor="seurat", n_top_genes=32)
    assert old.genes == list(ref.var_names[log.var["highly_variable"].to_numpy()])
    assert old.report["genes"]["hvg_flavor"] == "seurat" and "reference (" in old.report["genes"]["hvg"]
    with pytest.raises(ConfigError, match="hvg_from"):
        prepare(ref, q, label_key="cell_type", hvg_from="query")
    with pytest.raises(ConfigError, match="hvg_flavor"):
        prepare(ref, q, label_key="cell_type", hvg_flavor="pearson")


def test_query_with_fewer_genes_and_different_order(synthetic_pair):
    ref, q = synthetic_pair
    q2 = q[:, q.var_names[::-1][:100]].copy()
    p = prepare(ref, q2, label_key="cell_type", min_shared_genes=50)
    assert p.report["genes"]["n_shared"] == 100
    assert p.n_genes == 100
    cols = [q2.var_names.get_loc(g) for g in p.genes]
    np.testing.assert_array_equal(p.query.counts.toarray(), q2.X[:, cols].toarray())
    assert not any("genes are shared" in w for w in p.report["warnings"])
    panel = q[:, q.var_names[:20]].copy()  # a 20-gene panel: accepted (half of the smaller set), and said
    w = prepare(ref, panel, label_key="cell_type").report["warnings"]
    assert any(x.startswith("only 20 genes are shared") and "panel of 20 genes" in x for x in w), w


def test_counts_in_raw_with_lognorm_x(synthetic_pair):
    ref, q = synthetic_pair
    r = ref.copy()
    sc.pp.normalize_total(r)
    sc.pp.log1p(r)
    r.raw = ref
    r = r[:, 20:].copy()  # X has fewer genes than raw
    p = prepare(r, q, label_key="cell_type")
    assert "adata.raw.X" in p.report["reference"]["counts_source"]
    assert p.report["reference"]["value_state"] == "lognorm"
    assert p.n_genes == 120  # all raw genes usable


def test_report_is_json(prepared):
    rep = prepared.report
    json.dumps(rep)
    for k in ("n_cells", "n_genes", "value_state", "counts_source"):
        assert k in rep["reference"] and k in rep["query"]
    assert rep["genes"]["message"] == "120 of 120 reference genes found in the query (exact symbols)"
    assert rep["genes"]["mode"] == "exact" and rep["genes"]["approximate"] is False
    assert rep["reference"]["dropped_classes"] == {}
    assert [w for w in rep["warnings"] if not w.startswith("only 120 genes are shared")] == []  # 120-gene fixture
    assert sum(rep["reference"]["class_counts"].values()) == rep["n_train"] + rep["n_val"]


def test_qc(synthetic_pair):
    ref, q = synthetic_pair
    q = q.copy()
    names = list(q.var_names)
    names[100:103] = ["MT-CO1", "MT-ND1", "MT-ATP6"]
    q.var_names = names
    X = q.X.toarray()
    X[[3, 7], 100] = 5000  # mostly mitochondrial cells
    q.X = sp.csr_matrix(X)
    p = prepare(ref, q, label_key="cell_type", qc={"max_pct_mito": 20, "min_genes": 1})
    assert p.report["query"]["qc_removed"] == 2
    assert p.report["query"]["qc_removed_obs_names"] == ["cell3", "cell7"]
    assert p.query.n_obs == q.n_obs - 2
    keep = np.setdiff1d(np.arange(q.n_obs), [3, 7])
    np.testing.assert_array_equal(p.query.index, keep)
    assert list(p.query.obs_names) == list(q.obs_names[keep])
    assert any("no mitochondrial genes" in w for w in p.report["warnings"])  # reference has none
    with pytest.raises(DataError, match="quality control removed all"):
        prepare(ref, q, label_key="cell_type", qc={"min_counts": 1e9})
    with pytest.raises(ConfigError, match="unknown QC option"):
        prepare(ref, q, label_key="cell_type", qc={"max_mito": 5})


@pytest.mark.parametrize(
    "kw,match",
    [({"val_fraction": 0.0}, "val_fraction"), ({"n_top_genes": 0}, "n_top_genes"), ({"min_cells_per_class": 1}, "min_cells_per_class")],
)
def test_bad_options(synthetic_pair, kw, match):
    ref, q = synthetic_pair
    with pytest.raises(ConfigError, match=match):
        prepare(ref, q, label_key="cell_type", **kw)


def test_summarize_dataset(synthetic_adata):
    a = synthetic_adata.copy()
    a.obs["donor"] = ["d1", "d2"] * 150
    a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel()
    a.obs["barcode"] = a.obs_names
    s = summarize_dataset(a, name="reference")
    json.dumps(s)
    assert s["n_cells"] == 300 and s["n_genes"] == 120 and s["value_state"] == "counts"
    assert s["counts_source"].startswith("raw counts from X")
    assert [c["key"] for c in s["label_candidates"]] == ["cell_type", "donor"]
    assert s["suggested_label_key"] == "cell_type"
    assert s["label_candidates"][0]["counts"] == a.obs["cell_type"].value_counts().to_dict()
    assert s["label_notes"] == []
    one = a[a.obs["cell_type"] == a.obs["cell_type"].iloc[0]].copy()  # one type: its donor column is no guess
    s1 = summarize_dataset(one, name="reference")
    assert [c["key"] for c in s1["label_candidates"]] == ["donor"] and s1["suggested_label_key"] is None
    assert "cell_type holds one type only" in s1["label_notes"][0]
    a.obs["subtype"] = [f"t{i % 150}" for i in range(a.n_obs)]  # an atlas's fine types: over 100 is offered
    assert "subtype" in [c["key"] for c in summarize_dataset(a, name="reference")["label_candidates"]]
    assert s["problems"] == [] and s["gene_ids"] == "symbols"
    b = a.copy()
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    s2 = summarize_dataset(b, name="query")
    assert s2["counts_source"].startswith("raw counts recovered from the log1p values of X") and not s2["problems"]
    from conftest import not_of_counts

    b.X = not_of_counts(b.X)  # not log1p of counts: nothing to recover
    s3 = summarize_dataset(b, name="query")
    assert s3["counts_source"] is None and "no raw counts" in s3["problems"][0]


def test_real_subset_end_to_end():
    """A real pbmc3k subset (tests/data): reference = half the cells without DC, query = rest."""
    a = read_dataset(DATA / "pbmc3k_small.h5ad", name="reference")
    rng = np.random.default_rng(0)
    is_ref = rng.random(a.n_obs) < 0.5
    lab = a.obs["cell_type_harmonized"].astype(str)
    plate = np.flatnonzero((lab == "Platelet").to_numpy())
    is_ref[plate] = False
    is_ref[plate[:5]] = True  # 5 platelets: below min_cells_per_class, dropped
    ref = a[is_ref & (lab != "DC").to_numpy()].copy()
    q = a[~is_ref].copy()
    p = prepare(ref, q, label_key="cell_type_harmonized", query_label_key="cell_type_harmonized", n_top_genes=500)
    assert p.n_genes == 500
    assert "Platelet" not in p.classes and p.report["reference"]["dropped_classes"] == {"Platelet": 5}
    assert "DC" not in p.classes and (p.query.y[p.query.labels == "DC"] == -1).all()
    assert list(p.query.obs_names) == list(q.obs_names)
    assert {"MALAT1", "LYZ", "CD74"} & set(p.genes)
    # a nearest-centroid classifier on the prepared data already works on real PBMCs
    cent = np.stack([p.train.X[p.train.y == k].mean(0) for k in range(len(p.classes))])
    inq = p.query.y >= 0
    d = ((p.query.X[inq, None, :] - cent[None]) ** 2).sum(-1)
    assert (d.argmin(1) == p.query.y[inq]).mean() > 0.6


def test_batch_key_codes_each_datasets_batches(synthetic_pair):
    """scvi-tools' batch_key: the column's values become batches, per dataset (the reference's
    first); a dataset without the column, or a cell without a value, is its dataset's batch."""
    ref, q = synthetic_pair
    ref, q = ref.copy(), q.copy()
    q.obs["sample"] = np.where(np.arange(q.n_obs) % 3 == 0, "B", "A")
    q.obs.loc[q.obs_names[1], "sample"] = None
    p = prepare(ref, q, label_key="cell_type", batch_key="sample", n_top_genes=100, min_shared_genes=50)
    assert p.batches == ["reference", "query", "query: A", "query: B"]
    assert set(p.train.batch) == set(p.val.batch) == {0}
    want = np.where(np.arange(q.n_obs) % 3 == 0, 3, 2)
    want[1] = 1
    np.testing.assert_array_equal(p.query.batch, want[p.query.index])
    assert p.report["batches"]["cells"]["query: B"] == int((want == 3).sum())
    assert p.report["options"]["batch_key"] == "sample"
    json.dumps(p.report)
    plain = prepare(ref, q, label_key="cell_type", n_top_genes=100, min_shared_genes=50)
    assert plain.batches is None and plain.query.batch is None and "batches" not in plain.report
    rows = p.query.rows(np.array([0, 3]))
    np.testing.assert_array_equal(rows.batch, p.query.batch[[0, 3]])


def test_batch_key_problems_are_one_clear_error(synthetic_pair):
    ref, q = synthetic_pair
    with pytest.raises(DataError, match="batch key 'donor' is a column of neither.*cell_type"):
        prepare(ref, q, label_key="cell_type", batch_key="donor", n_top_genes=100, min_shared_genes=50)
    q = q.copy()
    q.obs["barcode"] = q.obs_names.astype(str)  # one value per cell
    big = __import__("anndata").concat([q] * 5, keys=list("abcde"), index_unique="-")
    big.obs["barcode"] = big.obs_names.astype(str)
    with pytest.raises(DataError, match="per-cell column"):
        prepare(ref, big, label_key="cell_type", batch_key="barcode", n_top_genes=100, min_shared_genes=50)
    # under a thousand cells a per-cell column passed (722 'batches' of one cell each, 2026-12-06)
    with pytest.raises(DataError, match="per-cell column"):
        prepare(ref, q, label_key="cell_type", batch_key="barcode", n_top_genes=100, min_shared_genes=50)



def test_a_batch_key_that_is_the_label_column_or_holds_one_type_per_sample_is_said(synthetic_pair):
    """The label column given as the batch key was taken: the decoder's covariate then names each
    reference cell's type, and a model explains the types away as batch effects."""
    ref, q = synthetic_pair
    with pytest.raises(ConfigError, match="batch key 'cell_type' is the reference's label column"):
        prepare(ref, q, label_key="cell_type", batch_key="cell_type", n_top_genes=100, min_shared_genes=50)
    with pytest.raises(ConfigError, match="the query's label column"):
        prepare(ref, q, label_key="cell_type", query_label_key="truth", batch_key="truth", n_top_genes=100,
                min_shared_genes=50)
    ref = ref.copy()
    ref.obs["sample"] = "s-" + ref.obs["cell_type"].astype(str)  # one type per sample: confounded
    p = prepare(ref, q, label_key="cell_type", batch_key="sample", n_top_genes=100, min_shared_genes=50)
    assert any("holds one cell type" in w for w in p.report["warnings"])
    ref.obs["sample"] = np.where(np.arange(ref.n_obs) % 2 == 0, "s1", "s2")  # samples of every type
    p = prepare(ref, q, label_key="cell_type", batch_key="sample", n_top_genes=100, min_shared_genes=50)
    assert not any("holds one cell type" in w for w in p.report["warnings"])


def test_batch_candidates_rank_sample_columns_first(synthetic_pair):
    from cellannot_core.data import batch_candidates

    ref, q = synthetic_pair
    ref, q = ref.copy(), q.copy()
    q.obs["donor_id"] = np.where(np.arange(q.n_obs) % 2 == 0, "d1", "d2")
    q.obs["qc_score"] = np.linspace(0, 1, q.n_obs)  # decimals: never a batch
    ref.obs["lane"] = "L1"  # one value in the reference, absent from the query: no choice
    got = batch_candidates(ref.obs, q.obs, exclude=("cell_type",))
    assert got[0] == "donor_id" and "qc_score" not in got and "lane" not in got and "cell_type" not in got
    # a grouping of cells by what they are is no sample, though "group" is a hint (found 2026-12-07: a query's
    # lymphoid / myeloid column was taken for its samples); a word of the strong hints keeps a column
    q.obs["lineage_group"] = np.where(np.arange(q.n_obs) < q.n_obs // 2, "lymphoid", "myeloid")
    q.obs["sample_type"] = np.where(np.arange(q.n_obs) % 3 == 0, "tumour", "normal")
    q.obs["stim_group"] = np.where(np.arange(q.n_obs) % 3 == 0, "ctrl", "stim")
    named = batch_candidates(ref.obs, q.obs, exclude=("cell_type",), named_only=True)
    assert "lineage_group" not in named and {"sample_type", "stim_group", "donor_id"} <= set(named)
    assert batch_candidates(ref.obs, q.obs, exclude=("cell_type",))[-1] == "lineage_group"  # offered last
    from cellannot_core.pipeline import query_samples

    q.obs = q.obs[["lineage_group", "cell_type"]]
    assert query_samples(q.obs, exclude=("cell_type",)) is None


def test_a_new_query_too_large_to_hold_dense_stays_sparse_with_the_same_values(synthetic_pair, monkeypatch):
    """A saved model's query (``Annotator.predict``) was made dense, with a dense copy beside it and
    its counts through a row-list matrix: a million-cell AnnData needed tens of GB. Past the dense
    limit its values stay CSR, in the model's gene order, equal to the dense ones."""
    import importlib

    from cellannot_core.data.prepare import prepare_query

    prep = importlib.import_module("cellannot_core.data.prepare")
    ref, q = synthetic_pair
    genes = [str(g) for g in ref.var_names[::-2]] + ["NOT_IN_THE_QUERY"]  # another order, one gene missing
    dense_split, report = prepare_query(q, genes=genes)
    assert isinstance(dense_split.X, np.ndarray) and "of 61 model genes" in report["message"]
    monkeypatch.setattr(prep, "DENSE_LIMIT_BYTES", 1024)
    sparse_split, _ = prepare_query(q, genes=genes)
    assert sp.issparse(sparse_split.X) and sparse_split.X.has_sorted_indices
    np.testing.assert_array_equal(sparse_split.X.toarray(), dense_split.X)
    np.testing.assert_array_equal(sparse_split.counts.toarray(), dense_split.counts.toarray())
    cols = [q.var_names.get_loc(g) for g in genes[:-1]]
    np.testing.assert_array_equal(dense_split.counts.toarray()[:, :-1], q.X[:, cols].toarray())
    assert not dense_split.X[:, -1].any()
    labelled_only, _ = prepare_query(q, genes=genes, with_counts=False)  # what predict needs
    assert labelled_only.counts is None and sp.issparse(labelled_only.X)


def test_rows_of_a_query_aligned_without_counts(prepared):
    """A saved model's query is aligned without its counts: a sample of its rows keeps none."""
    no_counts = Split(X=prepared.query.X, counts=None, y=None, obs_names=prepared.query.obs_names).rows([0, 1])
    assert no_counts.counts is None and no_counts.n_obs == 2 and isinstance(no_counts.X, np.ndarray)


def test_a_matrix_of_mostly_empty_droplets_is_warned_of(synthetic_pair):
    """Cell Ranger's unfiltered matrix (every barcode, most of them empty droplets) was labelled
    without a word: its near-empty 'cells' came out as Unknown or as whatever type was nearest."""
    import anndata as ad

    ref, q = synthetic_pair
    rng = np.random.default_rng(0)
    empty = sp.csr_matrix(rng.poisson(0.05, size=(q.n_obs * 3, q.n_vars)).astype(np.float32))
    raw = ad.concat([q, ad.AnnData(empty, var=q.var.copy())], index_unique="-")
    raw.obs_names_make_unique()
    warned = [w for w in prepare(ref, raw, label_key="cell_type", n_top_genes=100,
                                 min_shared_genes=50).report["warnings"] if "empty droplets" in w]
    assert len(warned) == 1 and "of the query's" in warned[0]
    assert not any("empty droplets" in w for w in prepare(ref, q, label_key="cell_type", n_top_genes=100,
                                                           min_shared_genes=50).report["warnings"])


def test_query_labels_are_matched_to_the_reference_regardless_of_case_and_spacing(synthetic_pair):
    """A query labelled 'b' against a reference's 'B' counted its cells as a type the reference
    lacks: every metric of a correctly labelled query read as failed Unknown calls."""
    ref, q = synthetic_pair
    q = q.copy()
    classes = sorted(ref.obs["cell_type"].astype(str).unique())
    first = classes[0]
    q.obs["truth"] = q.obs["cell_type"].astype(str).map(lambda v: f" {v.upper()}  " if v == first else v)
    p = prepare(ref, q, label_key="cell_type", query_label_key="truth", n_top_genes=100, min_shared_genes=50)
    shown = q.obs["cell_type"].astype(str).to_numpy()[p.query.index]
    np.testing.assert_array_equal(p.query.labels, shown)  # named as the reference names them
    assert (p.query.y[shown == first] == p.classes.index(first)).all()
    assert any("regardless of case" in w for w in p.report["warnings"])
    from cellannot_core.data.validate import match_query_labels

    y, renamed = match_query_labels(np.array(["b", "B", "x", ""], dtype=object), ["B", "T"])
    assert list(y) == [0, 0, -1, -1] and renamed == {"b": "B"}
    assert list(match_query_labels(np.array(["t"], dtype=object), ["T", "t "])[0]) == [-1]  # two classes: no guess


def test_a_cellxgene_obs_offers_its_cell_types_not_their_ontology_ids(synthetic_pair):
    """Found 2026-12-07 (a file in CELLxGENE's form): the label picker chose cell_type_ontology_term_id (classes
    'CL:0000624', ...), before cell_type; every upload warned that tissue_type and suspension_type hold one type
    only; and the batch picker offered the ontology IDs, a copy of the labels in other words."""
    import pandas as pd

    from cellannot_core.data import batch_candidates

    ref = synthetic_pair[0].copy()
    names = ref.obs["cell_type"].astype(str)
    ids = {n: f"CL:{1000000 + i:07d}" for i, n in enumerate(sorted(names.unique()))}
    ref.obs = pd.DataFrame({"donor_id": np.where(np.arange(ref.n_obs) % 2, "d1", "d2"),
                            "cell_type_ontology_term_id": pd.Categorical(names.map(ids)),
                            "tissue_type": "tissue", "suspension_type": "cell",
                            "cell_type": pd.Categorical(names), "assay": "10x 3' v3"}, index=ref.obs_names)
    summ = summarize_dataset(ref)
    assert summ["suggested_label_key"] == "cell_type"
    assert not any("one type only" in n for n in summ["label_notes"]), summ["label_notes"]
    assert batch_candidates(ref.obs, ref.obs[[]], exclude=("cell_type",)) == ["donor_id"]
    # a column named as labels holding one type is still said where no better-named column is there
    alone = ref.obs[["donor_id", "tissue_type"]].assign(cell_type="T cell")
    ref.obs = alone
    assert any("cell_type holds one type only" in n for n in summarize_dataset(ref)["label_notes"])


def test_a_targeted_panels_cells_are_not_taken_for_empty_droplets():
    """Found 2026-12-07: a reference of a 300-gene panel (median 43 counts a cell) was told its cells looked like
    empty droplets; a cell's counts grow with the genes measured, so the bound is in proportion for a panel."""
    from cellannot_core.data.prepare import mostly_empty

    rng = np.random.default_rng(0)
    panel = rng.poisson(43, size=2000).astype(float)
    assert mostly_empty(panel, "reference", n_genes=300) == []
    assert mostly_empty(panel, "reference", n_genes=20_000)  # so few counts across a whole transcriptome: empty
    assert mostly_empty(rng.poisson(5, size=2000).astype(float), "reference", n_genes=300)


def test_a_dataset_cut_to_its_highly_variable_genes_is_warned_of(synthetic_pair):
    """Found 2026-12-07 (a scanpy user's probe): a query cut to its own 2,000 highly variable genes
    (``subset=True``, no ``.raw``) shared 364 of the reference's 1,267 genes and was labelled with no word (10%
    of the labels differed from the run on all its genes). Now the cut is named, for either dataset, with what
    to do; a cut that kept nearly all the other's genes, or a dataset not cut, is not warned of."""
    ref, q = synthetic_pair
    cut = q.copy()
    sc.pp.normalize_total(cut)
    sc.pp.log1p(cut)
    sc.pp.highly_variable_genes(cut, n_top_genes=40, subset=True)
    p = prepare(ref, cut, label_key="cell_type", n_top_genes=30, min_shared_genes=10, seed=0)
    said = [w for w in p.report["warnings"] if "highly variable genes" in w]
    assert len(said) == 1 and said[0].startswith("the query holds only its 40 highly variable genes")
    assert f"shares 40 genes of the reference's {ref.n_vars}" in said[0] and "adata.raw.to_adata()" in said[0]
    p = prepare(ref, q, label_key="cell_type", n_top_genes=30, seed=0)
    assert not any("highly variable genes (var" in w for w in p.report["warnings"])
    whole = q.copy()
    whole.var["highly_variable"] = True  # marked, and holding every gene the reference has: nothing lost
    p = prepare(ref, whole, label_key="cell_type", n_top_genes=30, seed=0)
    assert not any("highly variable genes (var" in w for w in p.report["warnings"])
