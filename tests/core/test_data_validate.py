"""Every bad input gives one clear DataError line (or a reported fix)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellannot_core.data import prepare, validate_dataset
from cellannot_core.data.validate import clean_labels
from cellannot_core.errors import DataError
from conftest import make_synthetic


def _with_x(a, fn):
    X = a.X.toarray()
    fn(X)
    a.X = sp.csr_matrix(X)
    return a


def _prep(ref, q=None, **kw):
    q = q if q is not None else make_synthetic(100, 120, 3, seed=9)
    kw.setdefault("label_key", "cell_type")
    return prepare(ref, q, **kw)


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_empty():
    a = make_synthetic(50, 30)
    with pytest.raises(DataError) as e:
        validate_dataset(a[:0].copy(), name="reference")
    assert "the reference is empty (0 cells x 30 genes)" in _one_line(e)
    with pytest.raises(DataError, match=r"query is empty \(50 cells x 0 genes\)"):
        _prep(make_synthetic(), a[:, :0].copy())


@pytest.mark.parametrize("value,word", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_nan_inf(value, word):
    a = _with_x(make_synthetic(), lambda X: X.__setitem__((3, 4), value))
    with pytest.raises(DataError) as e:
        _prep(a)
    assert f"the reference matrix contains {word} values" in _one_line(e)


def test_negative_counts():
    a = _with_x(make_synthetic(), lambda X: X.__setitem__((0, 0), -2))
    with pytest.raises(DataError) as e:
        validate_dataset(a, name="reference")
    assert "counts in X contain 1 negative values" in _one_line(e)


def test_negative_in_counts_layer_found_by_full_check():
    from cellannot_core.data.validate import check_values

    X = sp.csr_matrix(np.array([[1.0, 2.0], [0.0, -1.0]]))
    with pytest.raises(DataError, match="1 negative values"):
        check_values(X, name="query")
    check_values(X, name="query", state="lognorm")  # allowed there


def test_no_usable_counts():
    a = make_synthetic()
    a.X = sp.csr_matrix(a.shape, dtype=np.float32)
    with pytest.raises(DataError) as e:
        _prep(make_synthetic(), a)
    assert "the query has no usable counts: every value is zero" in _one_line(e)


def test_duplicate_cell_and_gene_names_are_fixed_and_reported():
    ref = make_synthetic(300, 120, 3, seed=1)
    q = make_synthetic(100, 120, 3, seed=2)
    q.obs_names = ["c0"] * 3 + [f"c{i}" for i in range(3, 100)]
    names = list(ref.var_names)
    names[5] = names[4]
    ref.var_names = names
    p = _prep(ref, q)
    w = " | ".join(p.report["warnings"])
    assert "the query has 2 duplicate cell names (e.g. c0)" in w
    assert "the reference has 1 duplicate gene names (e.g. GENE4)" in w
    assert list(p.query.obs_names[:4]) == ["c0", "c0-1", "c0-2", "c3"]
    assert len(set(p.query.obs_names)) == 100
    assert "GENE4-1" not in p.genes and "GENE5" not in p.genes  # only the first GENE4 matched
    rep = validate_dataset(q, name="query")
    assert any("duplicate cell names" in x for x in rep["warnings"])


def test_missing_label_column_lists_columns():
    ref = make_synthetic()
    ref.obs["donor"] = "d1"
    with pytest.raises(DataError) as e:
        _prep(ref, label_key="celltype")
    msg = _one_line(e)
    assert "the reference has no label column 'celltype'" in msg and "cell_type, donor" in msg
    assert msg.endswith("Did you mean 'cell_type'?")
    with pytest.raises(DataError, match="the query has no label column 'truth'"):
        _prep(make_synthetic(), query_label_key="truth")


def test_single_class():
    ref = make_synthetic(100, 120, 1)
    with pytest.raises(DataError) as e:
        _prep(ref)
    assert "has a single class ('type0')" in _one_line(e) and "at least 2 cell types" in str(e.value)


def test_small_classes_dropped_and_reported():
    ref = make_synthetic(300, 120, 3, seed=1)
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    labels[:4] = "rare"
    ref.obs["cell_type"] = labels
    p = _prep(ref, min_cells_per_class=10)
    assert "rare" not in p.classes and p.classes == ["type0", "type1", "type2"]
    assert p.report["reference"]["dropped_classes"] == {"rare": 4}
    assert any("1 reference class with fewer than 10 cells was dropped: rare (4); 4 cells (min_cells_per_class" in w for w in p.report["warnings"])
    assert p.train.n_obs + p.val.n_obs == 296
    assert "cell0" not in set(p.train.obs_names) | set(p.val.obs_names)


def test_too_few_classes_after_dropping():
    ref = make_synthetic(100, 120, 2, seed=1)
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    labels[:5] = "type1"
    labels[5:] = "type0"
    ref.obs["cell_type"] = labels
    with pytest.raises(DataError) as e:
        _prep(ref, min_cells_per_class=10)
    assert "only 1 class(es) in the reference label column 'cell_type' have at least 10 cells" in _one_line(e)


@pytest.mark.parametrize("column", ["counts", "barcode"])
def test_a_measurement_or_cell_names_chosen_as_labels_is_named_as_such(column):
    """A count column or the barcodes picked as the label said 'lower min_cells_per_class or use a
    larger reference', which is not what is wrong; and with many small classes beside real ones the
    warning listed every one of them."""
    ref = make_synthetic(300, 120, 3, seed=1)
    ref.obs[column] = (np.asarray(ref.X.sum(1)).ravel() if column == "counts" else ref.obs_names.astype(str))
    with pytest.raises(DataError) as e:
        _prep(ref, label_key=column)
    assert f"label column '{column}' has" in _one_line(e) and "not cell types" in str(e.value)
    many = make_synthetic(300, 120, 3, seed=1)
    labels = many.obs["cell_type"].astype(str).to_numpy()
    labels[:40] = [f"tiny{i}" for i in range(40)]
    many.obs["cell_type"] = labels
    p = _prep(many, min_cells_per_class=10)
    line = next(w for w in p.report["warnings"] if "classes with fewer than 10 cells" in w)
    assert "and 30 more" in line and line.count("(1)") == 10


def test_missing_labels_dropped():
    ref = make_synthetic(300, 120, 3, seed=1)
    lab = ref.obs["cell_type"].astype(object).to_numpy()
    lab[0], lab[1], lab[2], lab[3] = np.nan, "", "nan", " "
    ref.obs["cell_type"] = lab
    p = _prep(ref)
    assert p.report["reference"]["n_missing_labels"] == 4
    assert p.classes == ["type0", "type1", "type2"]
    kept = set(p.train.obs_names) | set(p.val.obs_names)
    assert not {"cell0", "cell1", "cell2", "cell3"} & kept and len(kept) == 296
    assert any("4 reference cells have no label in 'cell_type'" in w for w in p.report["warnings"])



def test_a_reference_class_named_unknown_is_no_type():
    """An atlas's "Unknown" / "unassigned" cells are not a class: trained as one, its name would be
    predicted beside the Unknown cellannot gives a type the reference lacks (cellannot_label
    "Unknown" with cellannot_is_unknown False). In the query's own labels they are no novel type."""
    ref = make_synthetic(300, 120, 3, seed=1)
    lab = ref.obs["cell_type"].astype(object).to_numpy()
    lab[:20], lab[20:32] = "Unknown", " unassigned"
    ref.obs["cell_type"] = lab
    q = make_synthetic(100, 120, 3, seed=9)
    qlab = q.obs["cell_type"].astype(object).to_numpy()
    qlab[:7] = "UNKNOWN"
    q.obs["cell_type"] = qlab
    p = _prep(ref, q, query_label_key="cell_type")
    assert p.classes == ["type0", "type1", "type2"]
    assert len(set(p.train.obs_names) | set(p.val.obs_names)) == 268
    assert p.report["reference"]["n_missing_labels"] == 32
    assert any("32 reference cells labelled Unknown, unassigned in 'cell_type' name no cell type" in w
               for w in p.report["warnings"])
    assert p.report["query"]["n_missing_labels"] == 7 and "UNKNOWN" not in p.report["query"]["labels_not_in_reference"]
    assert list(p.query.labels[:7]) == [""] * 7 and (p.query.y[:7] == -1).all()

def test_all_labels_missing():
    keep_s = pd.Series([None, np.nan, ""])
    with pytest.raises(DataError, match="has no labels"):
        clean_labels(keep_s, label_key="ct")


def test_zero_count_cells():
    ref = _with_x(make_synthetic(300, 120, 3, seed=1), lambda X: X.__setitem__(slice(0, 2), 0))
    q = _with_x(make_synthetic(100, 120, 3, seed=2), lambda X: X.__setitem__(slice(5, 8), 0))
    p = _prep(ref, q)
    assert p.report["reference"]["zero_count_cells_removed"] == 2
    assert p.report["query"]["zero_count_cells"] == 3
    assert p.query.n_obs == 100  # query keeps them
    assert np.all(p.query.X[5:8] == 0)


def test_query_cells_without_counts_on_the_models_genes_are_named():
    """Cells with counts only on genes the model does not use are as empty to it as cells without
    any: one warning says so (the "no counts at all" one does not count them)."""
    ref = make_synthetic(300, 120, 3, seed=1)
    q = make_synthetic(100, 120, 3, seed=2)
    genes = set(_prep(ref, q, n_top_genes=40).genes)
    unused = next(i for i, g in enumerate(q.var_names) if g not in genes)

    def off_genes(X):
        X[10:14] = 0
        X[10:14, unused] = 7
        X[20:22] = 0  # no counts at all

    p = _prep(ref, _with_x(q, off_genes), n_top_genes=40)
    assert p.report["query"]["cells_without_counts_on_model_genes"] == 4
    assert p.report["query"]["zero_count_cells"] == 2
    assert any(w.startswith("4 query cells have counts but none on the 40 genes") for w in p.report["warnings"])
    assert "cells_without_counts_on_model_genes" not in p.report["reference"]


def test_validate_report_ok(synthetic_adata):
    rep = validate_dataset(synthetic_adata, name="reference", label_key="cell_type")
    assert rep["n_cells"] == 300 and rep["value_state"] == "counts"
    assert rep["class_counts"] == synthetic_adata.obs["cell_type"].value_counts().sort_index().to_dict()
    assert rep["warnings"] == []
    import json

    json.dumps(rep)


def test_not_anndata():
    with pytest.raises(DataError, match="not an AnnData"):
        prepare(np.zeros((3, 3)), make_synthetic(), label_key="cell_type")


def test_lognorm_x_without_counts_in_prepare():
    import scanpy as sc

    from conftest import not_of_counts

    q = make_synthetic(100, 120, 3, seed=2)
    sc.pp.normalize_total(q, target_sum=1e4)
    sc.pp.log1p(q)
    q.X = not_of_counts(q.X)  # not log1p of counts: nothing to recover
    ref = make_synthetic(300, 120, 3, seed=1)
    with pytest.raises(DataError, match="the query holds log-normalised values"):
        _prep(ref, q)
    p = _prep(ref, q, allow_lognorm=True)
    assert p.report["counts_available"] is False
    assert any("no raw counts" in w for w in p.report["warnings"])
    np.testing.assert_allclose(p.query.X, q.X.toarray()[:, [q.var_names.get_loc(g) for g in p.genes]], rtol=1e-6)
    # without counts, a counts ranking falls back to the log values' dispersion, and says so
    v3 = _prep(ref, q, allow_lognorm=True, n_top_genes=60, hvg_flavor="seurat_v3", hvg_from="both")
    assert v3.n_genes == 60 and v3.report["genes"]["hvg_flavor"] == "seurat"


def test_adata_input_not_modified():
    ref = make_synthetic(300, 120, 3, seed=1)
    ref.obs_names = ["x"] * 300
    before = ref.X.toarray().copy()
    _prep(ref)
    assert list(ref.obs_names[:2]) == ["x", "x"]
    np.testing.assert_array_equal(ref.X.toarray(), before)


def test_genes_do_not_match():
    q = make_synthetic(100, 120, 3, seed=2, gene_prefix="OTHER")
    with pytest.raises(DataError) as e:
        _prep(make_synthetic(), q)
    assert _one_line(e).startswith("only 0 of 120 reference genes found in the query")


def test_a_reference_of_more_cell_types_than_a_model_may_have_is_refused():
    """Found 2026-12-07 by an eighth probe: a saved model of 300,000 classes took 15.6 GB labelling 2,638 cells (each
    cell's logits and probabilities take 8-16 bytes a class); a model now has at most MAX_CLASSES, so a reference
    of more types of enough cells is refused before training, not only its model at load."""
    from cellannot_core._constants import MAX_CLASSES

    labels = np.repeat([f"type {i}" for i in range(MAX_CLASSES + 1)], 2)
    with pytest.raises(DataError, match="10,001 classes of at least 2 cells, where cellannot takes at most 10,000"):
        clean_labels(labels, label_key="cell_type", min_cells_per_class=2)


def test_query_labels_that_name_no_reference_type_are_warned_of():
    """Found 2026-12-07 (a command-line user's probe): --query-label-key seurat_clusters (cluster numbers) printed
    acc_open 0.024 and said nothing: every labelled cell counted as a type the reference lacks."""
    from cellannot_core.data.validate import query_labels

    obs = pd.DataFrame({"clusters": ["0", "1", "2", "1"], "types": ["B", "T", "B", "NK"]})
    *_, warns = query_labels(obs, "clusters", ["B", "T"])
    assert len(warns) == 1 and warns[0].startswith("none of the query's labels in 'clusters' names a reference type")
    *_, warns = query_labels(obs, "types", ["B", "T"])  # some do (NK is novel): nothing to say
    assert warns == []
