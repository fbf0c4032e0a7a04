"""A saved model labelling a query it was not trained with (``predict``), and ``adapt``: the model
trained again on the reference cells its bundle kept, with the new query, as ``annotate`` trains."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import cellannot_core as ca
from cellannot_core.cli import main
from cellannot_core.data.stream import read_sample as _sample
from cellannot_core.errors import ConfigError
from cellannot_core.pipeline import AnnotateOptions, bundle_reference, prepare_data
from conftest import make_synthetic

FAST = {"label_key": "cell_type", "model": "scanvi_svm", "max_epochs": 2, "n_top_genes": 100, "device": "cpu"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ref = make_synthetic(300, 120, 3, seed=0)
    query = make_synthetic(200, 120, 4, seed=1)  # type3: a type the reference lacks
    d = tmp_path_factory.mktemp("adapt") / "model"
    ca.train(ref, **FAST).save(d)
    return ref, query, d


def test_a_saved_model_gives_back_its_reference_cells_counts(saved):
    """The bundle keeps its training cells' normalised expression and a count scale per cell: their
    raw counts come back exactly (the same cells, genes and labels as the training split)."""
    ref, _, d = saved
    ann = ca.Annotator.load(d, device="cpu")
    back = bundle_reference(ann.model, ann.bundle)
    prep = prepare_data(ref, ref, AnnotateOptions(label_key="cell_type", n_top_genes=100))
    assert list(back.var_names) == ann.genes == list(prep.genes)
    want = sp.csr_matrix(prep.train.counts)
    assert back.shape == want.shape
    np.testing.assert_array_equal(back.X.toarray(), want.toarray())
    np.testing.assert_array_equal(back.obs["cell_type"].astype(str), np.asarray(prep.classes)[prep.train.y])


def test_predict_says_when_its_model_learns_from_the_query_and_adapt_trains_with_it(saved, capsys):
    _, query, d = saved
    ann = ca.Annotator.load(d, device="cpu")
    plain = ann.predict(query, copy=True)
    note = plain.uns["cellannot"]["unseen_query"]
    assert "unless these are the cells it was trained with" in note and "adapt" in note
    lines: list[str] = []
    adapted = ann.predict(query, copy=True, adapt=True, log=lines.append)
    card = adapted.uns["cellannot"]
    # a run of annotate: the saved model's name and seed, its kept reference cells, this query's cells
    assert card["model"] == "scanvi_svm" and card["seed"] == ann.model.seed and "unseen_query" not in card
    assert card["n_query"] == query.n_obs and card["n_train"] + card["n_val"] == len(ann.model.reference.y)
    assert any(s.startswith("adapt: training scanvi_svm again on the") for s in lines)
    assert "training scanvi: 100%" in capsys.readouterr().err.replace("\r", "\n")  # its progress bar, as annotate's
    assert "training" in card and list(adapted.obs_names) == list(query.obs_names)
    # the latent space was learnt again (a model trained with these cells), not the saved one reused
    assert not np.allclose(adapted.obsm["X_cellannot"], plain.obsm["X_cellannot"])


def test_a_model_without_reference_counts_cannot_adapt_and_says_why(saved, tmp_path):
    _, query, d = saved
    ann = ca.Annotator.load(d, device="cpu")
    ann.model.reference.count_scale = None  # as saved before 2026-12-05, or trained on log-normalised values
    ann.save(tmp_path / "old")
    old = ca.Annotator.load(tmp_path / "old", device="cpu")
    assert old.model.reference.count_scale is None
    with pytest.raises(ConfigError, match="keeps no reference counts .* label without adapt, or run annotate"):
        old.predict(query, adapt=True)
    assert old.predict(query, copy=True).n_obs == query.n_obs  # labelling without adapt still works


def test_the_command_line_predicts_with_adapt(saved, tmp_path, capsys):
    import anndata as ad

    _, query, d = saved
    qf = tmp_path / "q.h5ad"
    query.write_h5ad(qf)
    code = main(["predict", "--model", str(d), "--query", str(qf), "--out", str(tmp_path / "o.h5ad"), "--adapt",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "adapt: training scanvi_svm again" in err
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert out.n_obs == query.n_obs and out.uns["cellannot"]["n_query"] == query.n_obs


def test_a_query_of_one_type_is_measured_against_the_reference_as_it_is(saved):
    """A query whose cells are predicted as one type (a sorted population) gives no shift to estimate
    (novelty.SHIFT_MIN_CLASSES): the card, the log and the Calibration page say so."""
    _, query, d = saved
    ann = ca.Annotator.load(d, device="cpu")
    one = query[(query.obs["cell_type"] == "type0").to_numpy()].copy()
    lines: list[str] = []
    out = ann.predict(one, copy=True, log=lines.append)
    assert set(out.obs["cellannot_label_raw"].astype(str)) == {"type0"}
    why = out.uns["cellannot"]["rejection"]["query_shift_not_estimated"]
    assert why.startswith("the query's cells were predicted as fewer than 3 types")
    assert f"note: {why}" in lines
    assert "query_shift_not_estimated" not in ann.predict(query, copy=True).uns["cellannot"]["rejection"]


def test_a_large_query_file_adapts_on_a_sample_and_labels_every_cell(saved, tmp_path, monkeypatch):
    """``predict_file(..., adapt=True)`` with a file over the large-query size (here every file):
    trained on a seeded sample of its cells, as the app holds such a query, every cell labelled a
    chunk at a time into the written copy."""
    import anndata as ad

    from cellannot_core.data import stream

    _, query, d = saved
    qf = tmp_path / "q.h5ad"
    query.write_h5ad(qf)
    monkeypatch.setenv("CELLANNOT_STREAM_QUERY_MB", "0")
    monkeypatch.setattr(stream, "SAMPLE_CELLS", 120)
    read = []
    monkeypatch.setattr(stream, "read_sample", lambda *a, **k: read.append(k) or _sample(*a, **k))
    res = ca.Annotator.load(d, device="cpu").predict_file(qf, out=tmp_path / "o.h5ad", adapt=True, progress_bar=False)
    assert read and res["streamed"] and res["n_obs"] == query.n_obs
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert out.n_obs == query.n_obs and out.obs["cellannot_label"].notna().all()
    assert out.uns["cellannot"]["query_read_in_chunks"]["n_sample"] == 120



def test_adapt_keeps_every_class_of_the_saved_model(saved, tmp_path):
    """A class of 10 reference cells (the minimum) keeps only its training cells in the bundle: adapt trained
    on those with the minimum of 10 and dropped the class (found 2026-12-07)."""
    ref, query, _ = saved
    y = ref.obs["cell_type"].astype(str).to_numpy()
    keep = np.flatnonzero(y != "type2").tolist() + np.flatnonzero(y == "type2")[:10].tolist()
    ann = ca.train(ref[keep].copy(), **FAST)
    assert (np.asarray(ann.model.classes)[ann.model.reference.y] == "type2").sum() < 10
    lines: list[str] = []
    adapted = ann.predict(query, copy=True, adapt=True, log=lines.append)
    assert list(adapted.uns["cellannot"]["classes"]) == list(ann.model.classes)
    assert not any("dropped" in s for s in lines)
