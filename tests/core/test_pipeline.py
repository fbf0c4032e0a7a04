"""annotate() end to end on a subset of the real demo pair: the annotate contract field by field,
the run directory, the saved bundle and predict_with_bundle()."""
from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellannot_core._constants import DEFAULT_MODEL, UNKNOWN, OutKeys, RunFiles
from cellannot_core.errors import Cancelled, DataError
from cellannot_core.novelty import OOD_METHODS
from cellannot_core.pipeline import AnnotateOptions, annotate, predict_with_bundle, prepare_data
from cellannot_core.runs import RunDir, RunProgress
from cellannot_core.training import CancelToken
from conftest import make_synthetic

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
LABEL = "cell_type_harmonized"
TINY = {"hidden": "32,16", "sgld_steps": 2, "buffer_size": 200, "batch_size": 32}
NOVEL = {"NK", "DC", "Platelet"}


@pytest.fixture(scope="module")
def demo_pair():
    ref = ad.read_h5ad(ASSETS / "kang_pbmc_example_sce_1556.h5ad")
    q = ad.read_h5ad(ASSETS / "pbmc3k_seurat_2638.h5ad")
    rng = np.random.default_rng(0)
    lab = ref.obs[LABEL].astype(str).to_numpy()
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(lab == c), 80, replace=False)
                                   for c in np.unique(lab)]))  # 400 cells, stratified
    ref = ref[keep].copy()
    # 300 query cells, shuffled (not sorted) so "input order" is a real check
    q = q[rng.choice(q.n_obs, 300, replace=False)].copy()
    assert NOVEL & set(q.obs[LABEL].astype(str))
    return ref, q


@pytest.fixture(scope="module")
def run(demo_pair, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    ref, q = demo_pair
    tmp = tmp_path_factory.mktemp("annotate")
    opts = AnnotateOptions(label_key=LABEL, query_label_key=LABEL, model="clams", hparams=dict(TINY), seed=0,
                           device="cpu", max_epochs=3, n_top_genes=500, n_generate=5)
    rd = RunDir.create(tmp / "runs")
    logs: list[str] = []
    q_before = q.copy()
    try:
        res = annotate(ref, q, opts, out=tmp / "out.h5ad", run_dir=rd, save_model=tmp / "model",
                       callbacks=[RunProgress(rd, every_seconds=0.0)], log=logs.append)
    finally:
        mp.undo()
    return {"res": res, "tmp": tmp, "rd": rd, "opts": opts, "q": q, "q_before": q_before, "logs": logs,
            "out": ad.read_h5ad(tmp / "out.h5ad")}


# ---- the output h5ad ---------------------------------------------------------------------------------

def test_output_cells_in_input_order(run):
    out, q = run["out"], run["q"]
    assert out.n_obs == q.n_obs == 300
    assert list(out.obs_names) == list(q.obs_names)
    assert list(out.var_names) == list(q.var_names)  # the query as given, all its genes
    assert (out.X != q.X).nnz == 0
    pd.testing.assert_series_equal(out.obs[LABEL].astype(str), q.obs[LABEL].astype(str))
    # the caller's AnnData was not modified
    assert list(run["q"].obs.columns) == list(run["q_before"].obs.columns)
    assert OutKeys.PROBA not in run["q"].obsm


def test_output_obs_fields(run):
    out = run["out"]
    obs = out.obs
    classes = [str(c) for c in out.uns[OutKeys.UNS][OutKeys.CLASSES]]
    assert classes == sorted(["B", "CD14 Mono", "CD4 T", "CD8 T", "FCGR3A Mono"])
    label = obs[OutKeys.LABEL].astype(str).to_numpy()
    raw = obs[OutKeys.LABEL_RAW].astype(str).to_numpy()
    conf = obs[OutKeys.CONFIDENCE].to_numpy()
    ood = obs[OutKeys.OOD_SCORE].to_numpy()
    unk = obs[OutKeys.IS_UNKNOWN].to_numpy()
    assert obs[OutKeys.IS_UNKNOWN].dtype == bool
    assert set(raw) <= set(classes)
    assert set(label) <= set(classes) | {UNKNOWN}
    np.testing.assert_array_equal(unk, label == UNKNOWN)
    np.testing.assert_array_equal(label[~unk], raw[~unk])
    assert np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1
    assert np.isfinite(ood).all()
    # rejection is the threshold rule on the chosen novelty score
    thr = float(out.uns[OutKeys.UNS]["rejection"]["threshold"])
    np.testing.assert_array_equal(unk, ood > thr)
    assert 0 < unk.mean() < 1


def test_output_obsm_fields(run):
    out = run["out"]
    classes = list(out.uns[OutKeys.UNS][OutKeys.CLASSES])
    proba = out.obsm[OutKeys.PROBA]
    assert proba.shape == (300, len(classes))
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    raw = out.obs[OutKeys.LABEL_RAW].astype(str).to_numpy()
    np.testing.assert_array_equal(np.asarray(classes)[proba.argmax(1)], raw)
    np.testing.assert_allclose(out.obs[OutKeys.CONFIDENCE].to_numpy(), proba.max(1), atol=1e-6)
    z = out.obsm[OutKeys.LATENT]
    assert z.shape == (300, 16) and np.isfinite(z).all()


def test_output_run_card(run):
    card = run["out"].uns[OutKeys.UNS]
    assert card["model"] == "clams"
    assert card["seed"] == 0
    hp = card["hparams"]
    assert hp["hidden"] == "32,16" and int(hp["max_epochs"]) == 3 and int(hp["sgld_steps"]) == 2
    genes = [str(g) for g in card["genes"]]
    assert len(genes) == int(card["n_genes"]) and 200 <= len(genes) <= 500 and len(set(genes)) == len(genes)
    assert set(genes) <= set(run["q"].var_names)
    t = float(card["temperature"])
    assert np.isfinite(t) and t > 0
    rej = card["rejection"]
    assert rej["method"] == run["res"].model.ood_method and np.isfinite(float(rej["threshold"]))
    assert float(rej["accept_fraction_on_validation"]) == 0.95
    val = card["validation"]
    for k in ("val_accuracy", "ece_before", "ece_after", "temperature", "threshold", "n_val"):
        assert k in val, k
    assert float(val["val_accuracy"]) > 0.6
    assert float(val["temperature"]) == pytest.approx(t)
    assert {"python", "torch", "numpy", "scanpy"} <= set(card["versions"])
    assert int(card["threads"]) == __import__("torch").get_num_threads()  # float sums follow it
    assert isinstance(card["preprocessing"], str) and "log1p" in card["preprocessing"]
    assert int(card["n_query"]) == 300 and int(card["n_train"]) + int(card["n_val"]) == 400
    assert int(card["training"]["n_epochs"]) <= 3
    lq = card["latent_quality"]  # label ASW + active dimensions of the 16-d latent
    assert int(lq["n_latent"]) == 16 and 1 <= int(lq["active_dims"]) <= 16
    assert 0.5 < float(lq["asw_reference"]) <= 1.0 and 0.0 <= float(lq["asw_query"]) <= 1.0
    # query labels were given: the DESIGN.md metrics are in the card, well above chance
    qm = card["query_metrics"]
    assert int(qm["n_novel"]) == int(run["q"].obs[LABEL].isin(NOVEL).sum())
    assert float(qm["acc_in"]) > 0.6
    assert float(qm["auroc_ood"]) > 0.6
    for k in ("f1_in", "ece_in", "acc_open", "reject_in", "reject_novel"):
        assert 0 <= float(qm[k]) <= 1, k


def test_result_object_matches_file(run):
    res, out = run["res"], run["out"]
    np.testing.assert_array_equal(res.predictions.label, out.obs[OutKeys.LABEL].astype(str).to_numpy())
    np.testing.assert_allclose(res.predictions.proba, out.obsm[OutKeys.PROBA], atol=1e-6)
    assert res.model.name == "clams" and res.prepared.query.n_obs == 300
    assert "labelling the query" in run["logs"]


# ---- the run directory -----------------------------------------------------------------------------------

def test_run_dir_status_and_card(run):
    rd = run["rd"]
    st = rd.status()
    assert st["state"] == "done" and st["progress"] == 1.0
    card = json.loads(rd.file(RunFiles.CARD).read_text())
    assert card["model"] == "clams" and card["classes"] == list(run["out"].uns[OutKeys.UNS]["classes"])
    assert rd.card() == card
    hist = rd.history()
    assert 1 <= len(hist) <= 3 and hist[0]["epoch"] == 1 and "val_loss" in hist[0]
    assert not [p for p in rd.path.rglob("*") if ".tmp" in p.name]
    ann = ad.read_h5ad(rd.file(RunFiles.ANNOTATED))
    assert list(ann.obs_names) == list(run["out"].obs_names)


def test_run_dir_predictions_csv(run):
    rd, out = run["rd"], run["out"]
    df = pd.read_csv(rd.file(RunFiles.PREDICTIONS))
    classes = [str(c) for c in out.uns[OutKeys.UNS]["classes"]]
    assert list(df["cell"].astype(str)) == list(out.obs_names)
    assert [c for c in df.columns if c.startswith("p_")] == [f"p_{c}" for c in classes]
    np.testing.assert_allclose(df[[f"p_{c}" for c in classes]].to_numpy(), out.obsm[OutKeys.PROBA], atol=1e-5)
    np.testing.assert_array_equal(df[OutKeys.LABEL].astype(str), out.obs[OutKeys.LABEL].astype(str))
    np.testing.assert_array_equal(df[OutKeys.IS_UNKNOWN].astype(bool), out.obs[OutKeys.IS_UNKNOWN].to_numpy())
    np.testing.assert_allclose(df[OutKeys.CONFIDENCE], out.obs[OutKeys.CONFIDENCE], atol=1e-5)
    # each cell's Unknown group too, as the .h5ad has it (the CSV lacked it until 2026-12-07)
    np.testing.assert_array_equal(df[OutKeys.UNKNOWN_GROUP], out.obs[OutKeys.UNKNOWN_GROUP])


def test_run_dir_arrays(run):
    rd = run["rd"]
    with np.load(rd.file(RunFiles.ARRAYS), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays == {} or set(arrays) == set(rd.load_arrays())
    K = len(run["res"].model.classes)
    n_val = run["res"].prepared.val.n_obs
    assert arrays["gen_latent"].shape == (5 * K, 16)
    np.testing.assert_array_equal(np.bincount(arrays["gen_y"], minlength=K), [5] * K)
    assert arrays["gen_X"].shape == (5 * K, run["res"].prepared.n_genes)
    assert arrays["val_logits"].shape == (n_val, K) and arrays["val_y"].shape == (n_val,)
    assert arrays["query_latent"].shape == (300, 16) and arrays["query_logits"].shape == (300, K)
    assert arrays["ref_latent"].shape[0] == arrays["ref_y"].shape[0] == run["res"].prepared.train.n_obs
    for m in OOD_METHODS:
        assert arrays[f"val_score_{m}"].shape == (n_val,) and arrays[f"query_score_{m}"].shape == (300,)
    np.testing.assert_allclose(arrays[f"query_score_{run['res'].model.ood_method}"], run["out"].obs[OutKeys.OOD_SCORE], rtol=1e-5)
    for v in arrays.values():
        assert v.dtype != object


def test_bundles_saved(run):
    for d in (run["tmp"] / "model", run["rd"].model_dir):
        assert {RunFiles.CONFIG, RunFiles.WEIGHTS, "bundle.json"} <= {p.name for p in d.iterdir()}
        bundle = json.loads((d / "bundle.json").read_text())
        assert bundle["genes"] == [str(g) for g in run["out"].uns[OutKeys.UNS]["genes"]]
        assert bundle["label_key"] == LABEL and bundle["model"] == "clams"


def test_predict_with_bundle_reproduces_annotate(run, tmp_path):
    out = run["out"]
    adata = predict_with_bundle(run["tmp"] / "model", run["q"], device="cpu", out=tmp_path / "pred.h5ad")
    assert list(adata.obs_names) == list(out.obs_names)
    np.testing.assert_array_equal(adata.obs[OutKeys.LABEL].astype(str), out.obs[OutKeys.LABEL].astype(str))
    np.testing.assert_array_equal(adata.obs[OutKeys.LABEL_RAW].astype(str), out.obs[OutKeys.LABEL_RAW].astype(str))
    np.testing.assert_allclose(adata.obsm[OutKeys.PROBA], out.obsm[OutKeys.PROBA], atol=1e-5)
    np.testing.assert_allclose(adata.obs[OutKeys.OOD_SCORE], out.obs[OutKeys.OOD_SCORE], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adata.obsm[OutKeys.LATENT], out.obsm[OutKeys.LATENT], atol=1e-5)
    written = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert list(written.obs[OutKeys.LABEL].astype(str)) == list(out.obs[OutKeys.LABEL].astype(str))
    # where and how the labels were made, as annotate's card says it (predict's lacked it until 2026-12-07)
    card, first = written.uns[OutKeys.UNS], out.uns[OutKeys.UNS]
    assert card["created"]
    for key in ("cellannot_version", "device", "threads"):
        assert str(card[key]) == str(first[key]), key
    assert set(card["versions"]) == set(first["versions"]) >= {"python", "torch", "scanpy", "numpy"}
    # a threshold override changes only the rejection
    adata2 = predict_with_bundle(run["tmp"] / "model", run["q"], device="cpu", threshold=float("inf"))
    assert not adata2.obs[OutKeys.IS_UNKNOWN].any()
    np.testing.assert_array_equal(adata2.obs[OutKeys.LABEL].astype(str), out.obs[OutKeys.LABEL_RAW].astype(str))


def test_a_large_query_gets_its_models_score_alone_with_the_same_calls(run, monkeypatch):
    """Every novelty score on a million cells cost minutes (the VAE family's ELBO once per class):
    above ALL_SCORES_MAX_CELLS only the model's own score is computed, and the calls are the same."""
    import cellannot_core.pipeline as pl

    model, X = run["res"].model, run["res"].prepared.query.X
    full = pl.predict(model, X)
    assert set(OOD_METHODS) <= set(full.scores) and pl.scores_note(model, full) == {}
    monkeypatch.setattr(pl, "ALL_SCORES_MAX_CELLS", 100)  # the query has 300 cells
    capped = pl.predict(model, X)
    assert list(capped.scores) == [model.ood_method]
    np.testing.assert_array_equal(capped.label, full.label)
    np.testing.assert_allclose(capped.ood_score, full.ood_score, rtol=1e-5)
    assert "only the model's own novelty score" in pl.scores_note(model, capped)["scores_note"]


def test_predict_with_bundle_needs_a_bundle(tmp_path, run):
    with pytest.raises(DataError, match="bundle"):
        predict_with_bundle(tmp_path, run["q"], device="cpu")


# ---- synthetic, fast: defaults, failures, cancel -----------------------------------------------------------

def _syn_opts(**kw):
    base = dict(label_key="cell_type", model="resnet", hparams={"hidden": "8,4", "blocks": "1,1"}, max_epochs=1,
                n_top_genes=50, min_shared_genes=20, device="cpu", n_generate=0)
    base.update(kw)
    return AnnotateOptions(**base)


def test_default_model_is_the_recommended_one():
    assert AnnotateOptions(label_key="x").model == DEFAULT_MODEL == "scanvi_svm"
    assert _syn_opts(max_epochs=7, hparams={"lr": 0.01}).model_hparams() == {"lr": 0.01, "max_epochs": 7}


def test_annotate_writes_h5ad_as_is(tmp_path):
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    annotate(ref, q, _syn_opts(), out=tmp_path / "o.h5ad")
    assert ad.read_h5ad(tmp_path / "o.h5ad").n_obs == 60


def test_a_count_model_trains_on_counts_kept_in_a_layer(tmp_path):
    """Found 2026-12-07 (a methods review): scanpy's usual layout (log values in X, the counts in
    layers['counts']) refused scanvi, gmvae, vae and m2flow as if there were no counts, though the
    pipeline reads them from the layer."""
    import scanpy as sc

    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    for a in (ref, q):
        a.layers["counts"] = a.X.copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
    res = annotate(ref, q, _syn_opts(model="vae", hparams={"n_latent": 4, "n_hidden": 16}))
    assert res.model.name == "vae" and "layers['counts']" in res.prepared.report["reference"]["counts_source"]
    from cellannot_core.pipeline import counts_refusal

    assert counts_refusal("vae", {"counts_available": False}) and counts_refusal("logreg", {"counts_available": False}) is None


def test_a_query_larger_than_the_reference_trains_with_a_sample_of_its_size(monkeypatch):
    """A 100,000-cell query trained with every cell called 19% of its known cells Unknown, the same
    cells 4% in a 2,638-cell query: the model trains with as many query cells as the reference's
    training cells (a seeded sample; at least QUERY_POOL_MIN) and labels every cell."""
    import cellannot_core.novelty as nov

    monkeypatch.setattr(nov, "QUERY_POOL_MIN", 50)
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(500, 60, 3, seed=2)
    opts = _syn_opts(model="scanvi", hparams={"n_hidden": 16, "n_latent": 4})
    logs: list[str] = []
    res = annotate(ref, q, opts, log=logs.append)
    n_train = res.prepared.train.n_obs
    assert res.model.history["n_unlabelled"] == n_train < 500 and len(res.predictions.label) == 500
    assert f"{n_train:,} of the query's 500 cells" in res.card["training"]["query_sample_note"]
    assert any("seeded sample" in line for line in logs)
    # only the sample keeps its counts (labelling reads X alone): the sample drawn as before, its counts the query's
    prep = res.prepared
    assert prep.query.counts is None and prep.query_train.counts.shape == (n_train, prep.n_genes)
    rows = np.sort(np.random.default_rng(opts.seed).choice(500, n_train, replace=False))
    assert np.array_equal(prep.query_train.obs_names, prep.query.obs_names[rows])
    monkeypatch.setattr(nov, "QUERY_POOL_MIN", 10_000)  # no sample: every query cell keeps its counts
    whole = prepare_data(ref, q, opts)
    assert whole.query_train is None and np.array_equal(prep.query_train.counts.toarray(),
                                                        whole.query.counts[rows].toarray())
    small = annotate(ref, q[:120].copy(), opts)  # a query no larger than the reference: every cell
    assert small.model.history["n_unlabelled"] == 120 and "query_sample_note" not in small.card["training"]
    assert small.prepared.query_train is None and small.prepared.query.counts is not None


def test_failure_is_recorded_in_run_dir(tmp_path):
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    rd = RunDir.create(tmp_path)
    with pytest.raises(DataError, match="no_such_column"):
        annotate(ref, q, _syn_opts(label_key="no_such_column"), run_dir=rd)
    st = rd.status()
    assert st["state"] == "failed" and "no_such_column" in st["message"]


def test_the_run_shows_each_step_from_the_first_second(tmp_path, monkeypatch):
    """Issue 13: nothing was shown for the first 30 s (reading and preparing the data)."""
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    rd = RunDir.create(tmp_path)
    seen = []
    orig = RunDir.set_status

    def spy(self, state, **fields):
        seen.append((state, fields.get("message")))
        return orig(self, state, **fields)

    monkeypatch.setattr(RunDir, "set_status", spy)
    annotate(ref, q, _syn_opts(), run_dir=rd)
    msgs = [m for _, m in seen]
    assert seen[0] == ("running", "reading data") and msgs.index("preparing data") < msgs.index("training")


def test_cancel_is_recorded_in_run_dir(tmp_path):
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    rd = RunDir.create(tmp_path)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        annotate(ref, q, _syn_opts(), run_dir=rd, callbacks=[token])
    assert rd.status()["state"] == "cancelled"
    assert not rd.file(RunFiles.CARD).exists()


def test_qc_removes_query_cells_keeps_order():
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    X = q.X.toarray()
    X[[3, 10], :] = 0
    X[[3, 10], 0] = 5  # one detected gene: removed by min_genes=3
    q.X = X
    res = annotate(ref, q, _syn_opts(qc={"min_genes": 3}))
    expect = [n for i, n in enumerate(q.obs_names) if i not in (3, 10)]
    assert list(res.adata.obs_names) == expect
    np.testing.assert_array_equal(res.prepared.query.index, [i for i in range(60) if i not in (3, 10)])


def test_qc_with_duplicate_query_names():
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    q.obs_names = [f"c{i % 30}" for i in range(60)]
    X = q.X.toarray()
    X[3, :] = 0
    X[3, 0] = 5
    q.X = X
    res = annotate(ref, q, _syn_opts(qc={"min_genes": 3}))
    assert res.adata.n_obs == 59


def test_cancel_outside_training_stops_the_run(tmp_path, synthetic_pair):
    """A Cancel pressed during data preparation (before training) ends the run as cancelled."""
    from cellannot_core.errors import Cancelled
    from cellannot_core.pipeline import AnnotateOptions, annotate
    from cellannot_core.runs import RunDir
    from cellannot_core.training import CancelToken

    ref, q = synthetic_pair
    token = CancelToken()
    token.cancel()
    rd = RunDir.create(tmp_path, model="resnet")
    opts = AnnotateOptions(label_key="cell_type", model="resnet", hparams={"hidden": "8,4", "blocks": "1,1"},
                           max_epochs=1, n_top_genes=50)
    with pytest.raises(Cancelled):
        annotate(ref, q, opts, run_dir=rd, callbacks=[token])
    assert rd.status()["state"] == "cancelled"
    assert not rd.file("annotated.h5ad").exists()


def test_unknown_by_sample_names_the_sample_whose_cells_are_called_unknown():
    """The run card's hint: the first column named like a sample whose groups (>= 50 cells) differ
    by >= 25 points of Unknown share; groups too small to say, label columns and unnamed columns
    do not count; nothing when the shares are close or a batch key was given."""
    from cellannot_core.pipeline import AnnotateOptions, unknown_by_sample

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": ["T"] * 210,  # a label column: excluded even though uneven
                        "leiden": np.repeat(["0", "1", "2"], 70),  # not named like a sample: never used
                        "sample_id": ["ctrl"] * 100 + ["stim"] * 100 + ["tiny"] * 10})
    unk = np.r_[rng.random(100) < 0.05, rng.random(100) < 0.7, np.ones(10, bool)]
    opts = AnnotateOptions(label_key="cell_type", query_label_key="cell_type")
    hint = unknown_by_sample(obs, unk, opts)
    assert hint["column"] == "sample_id" and set(hint["shares"]) == {"ctrl", "stim"}  # "tiny": 10 cells
    assert hint["shares"]["stim"] == pytest.approx(unk[100:200].mean()) and hint["cells"] == {"ctrl": 100, "stim": 100}
    assert "stim: " in hint["note"] and "--batch-key sample_id" in hint["note"]
    assert "train again with 'sample_id' as the batch column" in hint["note"]
    # a model without a batch covariate is not told to train with a batch key that changes none of its labels
    logreg = unknown_by_sample(obs, unk, AnnotateOptions(label_key="cell_type", model="logreg"))["note"]
    assert "a model that takes a batch covariate (such as scanvi_svm; logreg takes none)" in logreg
    assert unknown_by_sample(obs, unk, AnnotateOptions(label_key="cell_type", batch_key="sample_id")) is None
    even = np.r_[rng.random(100) < 0.3, rng.random(100) < 0.4, np.zeros(10, bool)]
    assert unknown_by_sample(obs, even, opts) is None
    assert unknown_by_sample(obs[["leiden"]], unk, opts) is None
    blank = obs.assign(sample_id=np.r_[["ctrl"] * 100, [None] * 100, ["tiny"] * 10])  # cells without a sample
    assert unknown_by_sample(blank, unk, opts) is None  # one group left: nothing to compare


def test_query_samples_finds_the_sample_column_a_rule_can_use():
    """The query's samples for knn_class's per-sample shift: the batch key's column when the query
    has it, else the first column named like a sample with two values of >= 50 cells; label
    columns, unnamed columns and cells without a value (code -1) stay out."""
    from cellannot_core.pipeline import query_samples

    obs = pd.DataFrame({"cell_type": np.repeat(["T", "B"], 100),
                        "leiden": np.repeat(["0", "1"], 100),  # not named like a sample
                        "batch": ["x"] * 190 + ["y"] * 10,  # named, but only one value with 50 cells
                        "donor": [None] * 20 + ["d1"] * 90 + ["d2"] * 90})
    s = query_samples(obs, exclude=("cell_type",))
    assert s.column == "donor" and s.names == ["d1", "d2"]
    assert list(s.codes[:20]) == [-1] * 20 and set(s.codes[20:110]) == {0} and set(s.codes[110:]) == {1}
    assert query_samples(obs, batch_key="leiden").column == "leiden"  # the user's batch key wins
    assert query_samples(obs, batch_key="missing") is None  # a key the query lacks: no samples
    assert query_samples(obs[["cell_type", "leiden", "batch"]]) is None
    assert query_samples(obs.iloc[:0]) is None
    # a query annotated before: its Unknown groups are the last run's calls, not samples (found 2026-12-07:
    # taken for samples, they made the rule measure each "sample" against its own shift and the run advise
    # training with them as the batch key); a column of that name alone is the user's
    again = obs[["cell_type"]].assign(cellannot_unknown_group=np.repeat([0, -1], 100))
    assert query_samples(again).column == "cellannot_unknown_group"
    for sfx, v in (("label", "T"), ("label_raw", "T"), ("confidence", 0.9), ("ood_score", 1.0), ("is_unknown", False)):
        again[f"cellannot_{sfx}"] = v
    assert query_samples(again) is None


@pytest.mark.parametrize("kw, words", [({"n_generate": -1}, "n_generate"), ({"n_generate": 10**6}, "n_generate"),
                                       ({"threshold": float("nan")}, "threshold must be a number"),
                                       ({"seed": True}, "seed must be a whole number")])
def test_options_out_of_range_are_refused_before_any_data_is_read(kw, words):
    """n_generate 1,000,000 would have generated a million cells per class for the Latent page."""
    from cellannot_core.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        AnnotateOptions(label_key="x", device="cpu", **kw)


def test_the_predictions_table_of_many_classes_is_built_without_warnings():
    """A reference of 200 types (an atlas' fine labels) made pandas warn of a fragmented frame on
    every run (the per-class probability columns were added one at a time)."""
    import warnings

    from cellannot_core.pipeline import Predictions, predictions_table

    n, k = 5, 200
    proba = np.full((n, k), 1.0 / k)
    z = np.zeros(n)
    preds = Predictions(proba, proba, np.array(["c0"] * n), np.array(["c0"] * n), 1.0, 1.0, z, z, z.astype(bool),
                        np.zeros((n, 2)), {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = predictions_table([f"cell{i}" for i in range(n)], preds, [f"c{j}" for j in range(k)])
    assert df.shape == (n, 6 + k) and list(df.columns[:2]) == ["cell", OutKeys.LABEL] and df.columns[-1] == "p_c199"


def test_the_metrics_line_says_n_a_where_a_figure_does_not_exist():
    """Found 2026-12-07 (a new user's probe): a query without novel cells logged "auroc_ood nan"."""
    from cellannot_core.pipeline import metrics_line

    line = metrics_line({"acc_in": 0.91, "auroc_ood": float("nan"), "reject_novel": float("nan"), "acc_open": 0.9})
    assert "acc_in 0.910" in line and "auroc_ood n/a" in line and "reject_novel n/a" in line and "nan" not in line


def test_an_output_written_again_removes_what_a_killed_writer_left_beside_it(tmp_path):
    """`annotate` killed while it wrote its output left a hidden partial copy beside `--out` for good (found
    2026-12-07; gigabytes for an atlas). Writing that output again removes the copies of processes that are
    gone, and leaves those of live ones and other files."""
    import os
    import subprocess
    import sys

    from cellannot_core.pipeline import write_atomic

    out = tmp_path / "out.h5ad"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".out.h5ad.{int(gone.stdout)}-abcd1234.tmp.h5ad"
    live = tmp_path / f".out.h5ad.{os.getppid()}-abcd1234.tmp.h5ad"
    other = tmp_path / ".other.h5ad.1-abcd1234.tmp.h5ad"
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    write_atomic(out, lambda p: p.write_bytes(b"done"))
    assert out.read_bytes() == b"done"
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])


@pytest.mark.parametrize("name, said", [("SIGINT", "interrupted (Ctrl-C)"), ("SIGTERM", "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_while_a_file_is_written_is_not_lost(tmp_path, monkeypatch, name, said):
    """Found 2026-12-07: h5py drops its objects in weak-reference callbacks, where Python prints an
    interrupt and drops it, so Ctrl-C while an annotated query was written let the write finish and the
    command end with exit code 0. Here the write drops the interrupt as such a callback would; the
    interrupt must still stop the write (no output, no temporary file), and a run says it was cancelled.
    SIGTERM (``timeout``, SLURM, ``docker stop``) left the run "running" and a hidden temporary file beside
    ``--out`` (a pipeline author's probe): with the command line's handler it is stopped the same way."""
    import signal

    from cellannot_core import pipeline
    from cellannot_core.errors import Terminated, raise_terminated
    from cellannot_core.pipeline import write_atomic

    signum, stop = getattr(signal, name), KeyboardInterrupt if name == "SIGINT" else Terminated

    def write_dropping_it(p):
        p.write_bytes(b"part")
        try:
            signal.raise_signal(signum)
        except KeyboardInterrupt:
            pass  # what the weak-reference callback does with it
        p.write_bytes(b"whole")

    # the command line's handlers (an earlier test in the suite may leave others)
    before = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                                  (signal.SIGTERM, raise_terminated))}
    try:
        with pytest.raises(stop) as got:
            write_atomic(tmp_path / "out.h5ad", write_dropping_it)
        assert type(got.value) is stop and signal.getsignal(signal.SIGTERM) is raise_terminated
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert list(tmp_path.iterdir()) == []

    def stopped(adata, path):
        raise stop

    monkeypatch.setattr(pipeline, "write_h5ad_atomic", stopped)
    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    rd = RunDir.create(tmp_path / "runs")
    with pytest.raises(stop):
        annotate(ref, q, _syn_opts(), run_dir=rd)
    assert rd.status()["state"] == "cancelled" and rd.status()["message"] == said


def test_a_query_whose_counts_come_from_a_layer_is_annotated_as_given(tmp_path):
    """Found 2026-12-07: a query whose counts the app took from a layer ("Take the raw counts from layers"),
    or that ``predict --runs-dir --layer`` read, came back in the run's annotated file with the layer as X
    and without its other layers and its UMAP. The run writes the user's object: X, layers and obsm kept."""
    import scipy.sparse as sp

    from cellannot_core.data.values import as_given, counts_layer
    from cellannot_core.relabel import label_into_run

    ref, q = make_synthetic(200, 60, 3, seed=1), make_synthetic(60, 60, 3, seed=2)
    q.layers["umis"] = q.X.copy()
    q.X = sp.csr_matrix(-q.X.toarray().astype(np.float32))  # scaled values: not counts
    q.obsm["X_umap"] = np.arange(q.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    layered = counts_layer(q, "umis", "query")
    assert as_given(layered) is q and as_given(q) is q and "X_umap" not in layered.obsm
    runs = tmp_path / "runs"
    first = RunDir.create(runs)
    annotate(ref, layered, _syn_opts(), run_dir=first)
    again = RunDir.create(runs)
    label_into_run(first, counts_layer(q, "umis", "query"), again, device="cpu")
    for rd in (first, again):
        out = ad.read_h5ad(rd.file(RunFiles.ANNOTATED))
        assert out.X.max() <= 0 and "umis" in out.layers, rd.id
        np.testing.assert_array_equal(out.obsm["X_umap"], q.obsm["X_umap"])
        assert out.obs[OutKeys.LABEL].notna().all()


def test_genes_named_by_ensembl_ids_are_told_by_their_symbols(tmp_path):
    """Found 2026-12-07 (files in CELLxGENE's form: Ensembl IDs, symbols in var['feature_name']): the Unknown
    groups listed ENSG IDs and a heat-shock group went unrecognised (its programme is named by symbols), so the
    same data with symbols and with IDs got other calls. The model keeps the IDs (a query is matched by them) and
    tells the genes by their symbols: in the groups, the card, the saved model and a query labelled with it."""
    from cellannot_core.data.prepare import gene_symbols

    ref, q = make_synthetic(300, 60, 3, seed=1), make_synthetic(200, 60, 4, seed=2)  # type3: novel
    symbols = list(ref.var_names)
    for d in (ref, q):
        d.var["feature_name"] = list(d.var_names)
        d.var_names = [f"ENSG{100000000 + i:011d}" for i in range(d.n_vars)]
    res = annotate(ref, q, _syn_opts(), save_model=tmp_path / "m")
    card = res.card
    assert card["genes"][0].startswith("ENSG") and len(card["gene_symbols"]) == len(card["genes"])
    assert all(symbols[int(g[4:]) - 100000000] == s for g, s in zip(card["genes"], card["gene_symbols"]))
    listed = [g for grp in card["unknown_groups"] for g in grp["genes_up"] + grp["genes_down"]]
    assert listed and not any(g.startswith("ENSG") for g in listed), listed
    for adapt in (False, True):  # a query labelled with the saved model, and the model trained again with it
        ids_only = q.copy()  # (a query of IDs alone: the symbols come from the model)
        del ids_only.var["feature_name"]
        again = predict_with_bundle(tmp_path / "m", ids_only, adapt=adapt, device="cpu")
        groups = again.uns["cellannot"]["unknown_groups"]  # (as an .h5ad holds a list of records: keyed by position)
        listed = [str(g) for grp in (groups.values() if isinstance(groups, dict) else groups) for g in grp["genes_up"]]
        assert listed and not any(g.startswith("ENSG") for g in listed), (adapt, listed)
    # a query named by symbols alone is matched through the model's symbols (its genes and those it was normalised
    # on): "0 of 2000 model genes found" until 2026-12-07, held whole or read a chunk at a time
    from cellannot_core.streaming import predict_file

    by_symbol = q.copy()
    by_symbol.var_names = list(by_symbol.var["feature_name"])
    del by_symbol.var["feature_name"]
    whole = predict_with_bundle(tmp_path / "m", by_symbol, device="cpu")
    labels = list(predict_with_bundle(tmp_path / "m", q, device="cpu").obs[OutKeys.LABEL].astype(str))
    assert list(whole.obs[OutKeys.LABEL].astype(str)) == labels
    by_symbol.write_h5ad(tmp_path / "symbols.h5ad")
    assert predict_file(tmp_path / "m", tmp_path / "symbols.h5ad", out=tmp_path / "o.h5ad", device="cpu")["streamed"]
    assert list(ad.read_h5ad(tmp_path / "o.h5ad").obs[OutKeys.LABEL].astype(str)) == labels
    # where the names are symbols, or neither dataset has any, there is nothing to tell them by
    cols = np.arange(5)
    assert gene_symbols(q.var.set_index("feature_name"), cols, q.var, cols) is None
    assert gene_symbols(q.var[[]], cols, q.var[[]], cols) is None
    assert gene_symbols(q.var[[]], cols, q.var.set_index("feature_name"), cols) == symbols[:5]  # the query's names
