"""``scanvi_svm`` (the recommended default): SVM labels, latent-model novelty, save/load, and the
fallback to CLAMS' latent space when there are no raw counts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from cellannot_core.calibration import softmax
from cellannot_core.metrics import auroc
from cellannot_core.models import create_model, load_model
from conftest import make_prepared

TINY = {"max_epochs": 20}


@pytest.fixture(scope="module")
def prep():
    return make_prepared(3)  # type3 of the query is novel


@pytest.fixture(scope="module")
def fitted(prep):
    m = create_model("scanvi_svm", prep.n_genes, prep.classes, seed=0, device="cpu", hparams=TINY)
    m.fit(prep.train, prep.val, unlabelled=prep.query)
    m.calibrate(prep.val)
    return m


def test_labels_come_from_the_svm_and_the_latent_from_scanvi(prep, fitted):
    assert fitted.hparams["latent_model"] == "scanvi" and fitted.history["latent_model"] == "scanvi"
    assert fitted.latent_model.name == "scanvi" and fitted.ood_method == "knn_class"
    svm = create_model("svm_reject", prep.n_genes, prep.classes, seed=0, device="cpu")
    svm.fit(prep.train, prep.val)
    # probabilities: the SVM's, averaged over each cell's 15 nearest query cells in the latent space
    z, p_svm = fitted.latent(prep.query.X), softmax(svm.logits(prep.query.X))
    _, idx = NearestNeighbors(n_neighbors=15).fit(z).kneighbors(z)
    np.testing.assert_allclose(np.exp(fitted.logits(prep.query.X)), p_svm[idx].mean(1), rtol=1e-6, atol=1e-9)
    fitted.hparams["smooth_k"] = 0
    try:
        np.testing.assert_allclose(fitted.logits(prep.query.X), svm.logits(prep.query.X))
    finally:
        fitted.hparams["smooth_k"] = 15
    np.testing.assert_array_equal(fitted.latent(prep.query.X), fitted.latent_model.latent(prep.query.X))
    assert fitted.history["epochs"] and fitted.history["unlabelled_used"]  # scANVI saw the query
    known = np.isin(prep.query.labels, prep.classes)
    acc = (np.asarray(prep.classes)[fitted.predict_proba(prep.query.X).argmax(1)] == prep.query.labels)[known].mean()
    assert acc > 0.9
    scores = fitted.ood_scores(prep.query.X)
    assert {"knn", "knn_graph", "knn_class", "mahalanobis", "maxprob", "energy", "elbo"} <= set(scores)
    assert auroc(scores["knn_graph"], ~known) > 0.8  # the novel type is far in scANVI's latent space


def test_save_load_round_trip(prep, fitted, tmp_path):
    fitted.save(tmp_path / "m")
    m2 = load_model(tmp_path / "m", device="cpu")
    assert m2.name == "scanvi_svm" and m2.hparams["latent_model"] == "scanvi"
    np.testing.assert_allclose(m2.predict_proba(prep.query.X), fitted.predict_proba(prep.query.X))
    np.testing.assert_allclose(m2.ood_score(prep.query.X), fitted.ood_score(prep.query.X), rtol=1e-5)
    assert m2.threshold == fitted.threshold
    # the reference cells' expression (for the shared study shift) survives, without pickle
    assert fitted.reference.expression is not None
    assert (m2.reference.expression != fitted.reference.expression).nnz == 0
    x, y = m2.sample(4)
    assert x.shape == (4 * len(prep.classes), prep.n_genes) and np.all(np.isfinite(x))


def test_without_raw_counts_the_latent_model_is_clams(prep):
    def no_counts(s):
        return dataclasses.replace(s, counts=sp.csr_matrix(np.asarray(s.X, dtype=np.float32)))  # log values

    m = create_model("scanvi_svm", prep.n_genes, prep.classes, seed=0, device="cpu",
                     hparams={"max_epochs": 1})
    hist = m.fit(no_counts(prep.train), no_counts(prep.val), unlabelled=no_counts(prep.query))
    assert m.hparams["latent_model"] == "clams" and hist["latent_model"] == "clams"
    assert m.latent(prep.query.X).shape[0] == prep.query.n_obs


def test_a_query_sample_in_another_condition_gets_its_own_shift_and_a_novel_type_still_shows(tmp_path):
    """A query sample B with a strong gene-wise batch effect and a cell type the reference lacks.
    One shift for the whole query calls B's known cells Unknown as a group (they are unlike the
    reference); measured against B's own shift (the query's ``sample`` column, found by its name)
    they are labelled, the novel type stays Unknown, and the run card says which sample shifts
    were used and that the Unknown calls differ by sample (the novel type, or a batch key to try).
    Given the batch key, scANVI's decoder takes the sample as a covariate, the card says nothing
    more, and the model keeps its batch levels through save / load."""
    import scipy.sparse as sp

    from cellannot_core.calibration import FAR_QUERY_FACTOR
    from cellannot_core.models import load_model
    from cellannot_core.pipeline import AnnotateOptions, annotate, predict
    from conftest import make_synthetic

    ref = make_synthetic(400, 120, 3, seed=1)
    q = make_synthetic(500, 120, 4, seed=2)  # type3 is not in the reference
    rng = np.random.default_rng(5)
    novel_all = (q.obs["cell_type"] == "type3").to_numpy()
    side = np.where(novel_all, 1, rng.integers(0, 2, q.n_obs))  # the novel type only in sample B
    X = q.X.toarray()
    X[side == 1] = rng.poisson(X[side == 1] * np.exp(rng.normal(0, 1.5, q.n_vars)))
    q.X = sp.csr_matrix(X.astype(np.float32))
    q.obs["sample"] = np.where(side == 1, "B", "A")
    for key in (None, "sample"):
        opts = AnnotateOptions(label_key="cell_type", query_label_key="cell_type", model="scanvi_svm", seed=0,
                               batch_key=key, n_top_genes=100, min_shared_genes=50, hparams={"max_epochs": 60})
        logs: list[str] = []
        res = annotate(ref, q, opts, log=logs.append)
        m, prep, p = res.model, res.prepared, res.predictions
        b, novel = side[prep.query.index] == 1, novel_all[prep.query.index]
        truth = np.asarray(prep.query.labels)
        hint, shifts = res.card.get("unknown_by_sample"), res.card["rejection"].get("sample_shifts")
        assert p.is_unknown[~b].mean() < 0.2, key  # A (no shift, nothing novel) keeps its labels
        assert p.is_unknown[b & ~novel].mean() < 0.2, key  # B's known cells labelled ...
        assert (p.label_raw[b & ~novel] == truth[b & ~novel]).mean() > 0.9, key  # ... rightly
        assert p.is_unknown[novel].mean() > 0.8, key  # the novel type stays Unknown
        # what sets the novel cells apart: type3's own marker genes (GENE24-31), named in the card and the log
        big = res.card["unknown_groups"][0]
        assert big["n_cells"] >= 0.5 * novel.sum() and set(big["genes_up"][:4]) <= {f"GENE{i}" for i in range(24, 32)}
        assert any(line.startswith(f"Unknown group of {big['n_cells']:,} cells") for line in logs)
        if key is None:
            # (B's shift reaches the bound on a whole query's shift, calibration.FAR_QUERY_FACTOR, since 2026-12-07)
            assert shifts["column"] == "sample" and \
                shifts["factors"]["B"] >= min(FAR_QUERY_FACTOR, 1.5 * shifts["factors"]["A"]), shifts
            assert any("'sample' sample measured against its own shift" in line for line in logs)  # the CLI's log
            one = predict(m, prep.query.X)  # one shift for the whole query: B's known cells rejected as a group
            # (most of them: 0.69 with the seurat_v3 genes, over 0.8 with the seurat genes before 2026-12-05;
            # against their own sample's shift under 0.2, above)
            assert one.is_unknown[b & ~novel].mean() > 0.5
            assert hint["column"] == "sample" and hint["shares"]["B"] > hint["shares"]["A"] + 0.25, hint
            assert "--batch-key sample" in hint["note"]
        else:
            assert hint is None and shifts["column"] == "sample"
    assert res.adata.uns["cellannot"].get("unknown_by_sample") is None  # the run with the key
    assert list(res.adata.uns["cellannot"]["unknown_groups"]["0"]["genes_up"]) == big["genes_up"]  # stored in .uns
    assert m.hparams["n_batches"] == 3 and m.latent_model.net.n_batch == 3
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m", device="cpu")
    assert back.latent_model.net.n_batch == 3
    np.testing.assert_allclose(back.latent(prep.query.X), m.latent(prep.query.X), atol=1e-5)


def test_latent_dimensions_reach_the_latent_model(prep, fitted, tmp_path):
    assert fitted.latent(prep.query.X).shape[1] == 10  # n_latent = 0: scANVI's own default
    m = create_model("scanvi_svm", prep.n_genes, prep.classes, seed=0, device="cpu",
                     hparams={"max_epochs": 1, "n_latent": 6})
    said = []  # the labeller's fit after the epochs is announced (200 types: minutes without a word)
    m.fit(prep.train, prep.val, [type("Phase", (), {"on_phase": lambda self, msg: said.append(msg)})()],
          unlabelled=prep.query)
    assert len(said) == 1 and "labeller" in said[0] and f"{len(prep.classes)} types" in said[0]
    assert m.latent_model.hparams["n_latent"] == 6 and m.latent(prep.query.X).shape[1] == 6
    m.save(tmp_path / "m")
    assert load_model(tmp_path / "m", device="cpu").latent(prep.query.X).shape[1] == 6
