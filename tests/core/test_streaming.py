"""A query labelled in chunks from its file (issue 15): the same labels as the whole query in
memory, the file's matrices untouched, the query graph's pool for large queries, and the files
that cannot be read by rows falling back to the whole read."""
from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cellannot_core._constants import OutKeys
from cellannot_core.data.stream import H5adRows, NotStreamable
from cellannot_core.errors import DataError
from cellannot_core.novelty import QueryGraph, graph_smooth, query_clusters
from cellannot_core.pipeline import (AnnotateOptions, bundle_info, predict_with_bundle, prepare_data, save_bundle,
                                     train_model)
from cellannot_core.streaming import predict_file
from conftest import demo_subset, not_of_counts

LABEL = "cell_type_harmonized"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    ref, qry = demo_subset(300, 400, seed=3)
    opts = AnnotateOptions(label_key=LABEL, seed=0, device="cpu", max_epochs=3, n_top_genes=400)
    prep = prepare_data(ref, qry, opts)
    model = train_model(prep, opts)
    d = tmp_path_factory.mktemp("bundle") / "model"
    save_bundle(d, model, bundle_info(model, prep, opts))
    q = tmp_path_factory.mktemp("query") / "query.h5ad"
    qry.X = sp.csr_matrix(qry.X)
    qry.write_h5ad(q)
    return d, q, qry


def _labels(a: ad.AnnData, key: str = OutKeys.LABEL) -> list[str]:
    return [str(v) for v in a.obs[key]]


def test_streamed_predict_equals_the_whole_query(bundle, tmp_path):
    d, q, qry = bundle
    whole = predict_with_bundle(d, q, device="cpu")
    logs: list[str] = []
    res = predict_file(d, q, out=tmp_path / "out.h5ad", device="cpu", chunk_cells=70, log=logs.append)
    assert res["streamed"] and res["n_obs"] == qry.n_obs
    assert sum("read and encoded" in s for s in logs) == int(np.ceil(qry.n_obs / 70))  # really in chunks
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(out.obs_names) == list(qry.obs_names)
    assert _labels(out) == _labels(whole) and _labels(out, OutKeys.LABEL_RAW) == _labels(whole, OutKeys.LABEL_RAW)
    np.testing.assert_allclose(out.obs[OutKeys.OOD_SCORE], whole.obs[OutKeys.OOD_SCORE], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.obsm[OutKeys.PROBA], whole.obsm[OutKeys.PROBA], atol=1e-5)
    np.testing.assert_allclose(out.obsm[OutKeys.LATENT], whole.obsm[OutKeys.LATENT], atol=1e-5)
    assert (out.X != qry.X).nnz == 0 and list(out.var_names) == list(qry.var_names)  # the file's data untouched
    assert list(out.obs[LABEL].astype(str)) == list(qry.obs[LABEL].astype(str))  # its own obs kept
    card = out.uns[OutKeys.UNS]
    assert card["query_report"]["read_in_chunks_of"] == 70
    # the study shift the query's types share was removed in both (two more passes over the chunks)
    assert card["rejection"]["study_shift"]["removed"] and whole.uns[OutKeys.UNS]["rejection"]["study_shift"]["removed"]
    assert sum("without the study shift" in s for s in logs) == 1
    assert card["unknown_fraction"] == pytest.approx(float(np.mean(whole.obs[OutKeys.IS_UNKNOWN])))
    # the classes accepted against their own shift (here CD14 and FCGR3A Mono): the same from the chunks (one
    # more pass) as from the whole query
    def shifted(c):
        return {k: (str(v["class"]), int(v["n_cells"]), list(v["genes_up"]))
                for k, v in dict(c.get("accepted_on_class_shift") or {}).items()}
    assert shifted(card) == shifted(whole.uns[OutKeys.UNS])
    # the Unknown calls by class, and the classes with few reference cells among them: the same too
    def by_class(c, key):  # .uns keeps a list of rows as {"0": row, ...} and an empty one as an empty array
        rows = c.get(key) if isinstance(c.get(key), dict) else {}
        return [(str(v["class"]), v.get("n_reference"), int(v["n_predicted"]), int(v["n_unknown"]))
                for _, v in sorted(rows.items(), key=lambda kv: int(kv[0]))]
    assert len(by_class(card, "unknown_by_class")) == len(card["classes"])
    for key in ("unknown_by_class", "few_reference_cells"):
        assert by_class(card, key) == by_class(whole.uns[OutKeys.UNS], key)
    assert sum(s.startswith("note: ") and "too few to tell" in s for s in logs) == len(by_class(card, "few_reference_cells"))
    # what sets each Unknown group apart: the same from the chunks (one more pass) as from the whole query
    every_card = predict_with_bundle(d, q, device="cpu", threshold=-1e9).uns[OutKeys.UNS]
    predict_file(d, q, out=tmp_path / "all.h5ad", device="cpu", chunk_cells=70, threshold=-1e9, log=logs.append)
    streamed_card = ad.read_h5ad(tmp_path / "all.h5ad").uns[OutKeys.UNS]
    every, streamed = every_card["unknown_groups"], streamed_card["unknown_groups"]
    # every cell Unknown: each class with fewer than 59 reference cells and ten query cells gets its note, in both
    few = by_class(every_card, "few_reference_cells")
    assert few == by_class(streamed_card, "few_reference_cells") and len(few) >= 1
    assert all(n_ref < 59 and n_unk == n_pred >= 10 for _, n_ref, n_pred, n_unk in few)
    assert len(every) >= 2 and sum(int(g["n_cells"]) for g in every.values()) == qry.n_obs
    for k, g in every.items():
        assert streamed[k]["n_cells"] == g["n_cells"] and list(streamed[k]["genes_up"]) == list(g["genes_up"])
        np.testing.assert_allclose(streamed[k]["up_by"], g["up_by"], atol=0.011)
    assert sum("described the Unknown groups" in s for s in logs) == 1


def test_streamed_predict_measures_each_query_sample_against_its_own_shift(bundle, tmp_path):
    """A query with a sample column: read in chunks or whole, each sample gets the same shift of
    its own (the column found by its name) and the same labels; one half's counts thinned (a
    shallower run) gets the larger shift."""
    d, _, qry = bundle
    a = qry.copy()
    rng = np.random.default_rng(0)
    half = rng.random(a.n_obs) < 0.5
    X = a.X.tocsr(copy=True)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    X.data = np.where(half[rows], rng.binomial(X.data.astype(np.int64), 0.3), X.data).astype(np.float32)
    X.eliminate_zeros()
    a.X = X
    a.obs["donor"] = np.where(half, "shallow", "deep")
    p = tmp_path / "samples.h5ad"
    a.write_h5ad(p)
    whole = predict_with_bundle(d, p, device="cpu")
    predict_file(d, p, out=tmp_path / "out.h5ad", device="cpu", chunk_cells=70)
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    shifts = out.uns[OutKeys.UNS]["rejection"]["sample_shifts"]
    assert shifts == whole.uns[OutKeys.UNS]["rejection"]["sample_shifts"]
    assert shifts["column"] == "donor" and shifts["factors"]["shallow"] > shifts["factors"]["deep"], shifts
    assert _labels(out) == _labels(whole)
    np.testing.assert_allclose(out.obs[OutKeys.OOD_SCORE], whole.obs[OutKeys.OOD_SCORE], rtol=1e-4, atol=1e-5)
    # the labels' markers: read in chunks, measured on a sample (here every cell), as the whole query's
    markers = out.uns[OutKeys.UNS]["rejection"]["marker_agreement"]
    assert markers == whole.uns[OutKeys.UNS]["rejection"]["marker_agreement"] and markers["share"] > 0.5


def test_counts_found_in_a_layer_beside_lognormalised_X(bundle, tmp_path):
    d, q, qry = bundle
    a = qry.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X.copy()
    a.X.data = np.log1p(a.X.data / 3.0).astype(np.float32)
    p = tmp_path / "layer.h5ad"
    a.write_h5ad(p)
    with H5adRows(p) as rows:
        assert "layers['counts']" in rows.source
    predict_file(d, p, out=tmp_path / "o1.h5ad", device="cpu", chunk_cells=150)
    predict_file(d, q, out=tmp_path / "o2.h5ad", device="cpu", chunk_cells=150)
    assert _labels(ad.read_h5ad(tmp_path / "o1.h5ad")) == _labels(ad.read_h5ad(tmp_path / "o2.h5ad"))


def test_counts_recovered_a_chunk_at_a_time_from_a_scanpy_processed_file(bundle, tmp_path):
    """A query saved the scanpy way (log-normalised values of all genes in .raw, X cut to a few
    genes and scaled) is read in chunks with its counts turned back exactly, and labelled as the
    file of counts is."""
    import scanpy as sc

    d, q, qry = bundle
    a = qry.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.raw = a
    a = a[:, :50].copy()
    a.X = a.X.toarray()
    sc.pp.scale(a)
    p = tmp_path / "processed.h5ad"
    a.write_h5ad(p)
    with H5adRows(p) as rows:
        assert "recovered" in rows.source and "raw.X" in rows.source
        got = sp.vstack([x for _, x in rows.chunks(90)])
    assert (got != sp.csr_matrix(qry.X, dtype=np.float32)).nnz == 0
    predict_file(d, p, out=tmp_path / "o1.h5ad", device="cpu", chunk_cells=90)
    predict_file(d, q, out=tmp_path / "o2.h5ad", device="cpu", chunk_cells=90)
    assert _labels(ad.read_h5ad(tmp_path / "o1.h5ad")) == _labels(ad.read_h5ad(tmp_path / "o2.h5ad"))


def test_a_column_stored_matrix_is_read_whole_instead(bundle, tmp_path):
    d, q, qry = bundle
    a = qry.copy()
    a.X = sp.csc_matrix(a.X)
    p = tmp_path / "csc.h5ad"
    a.write_h5ad(p)
    with pytest.raises(NotStreamable):
        H5adRows(p)
    logs: list[str] = []
    res = predict_file(d, p, out=tmp_path / "o.h5ad", device="cpu", log=logs.append)
    assert not res["streamed"] and any("by columns" in s for s in logs)
    assert _labels(ad.read_h5ad(tmp_path / "o.h5ad")) == _labels(predict_with_bundle(d, q, device="cpu"))


def test_unreadable_query_files_get_one_line(bundle, tmp_path):
    d, q, qry = bundle
    a = qry.copy()
    a.X.data = np.log1p(a.X.data).astype(np.float32)
    a.X = not_of_counts(a.X)  # no counts anywhere, nor values to recover them from
    p = tmp_path / "lognorm.h5ad"
    a.write_h5ad(p)
    with pytest.raises(DataError, match="no raw counts"):
        predict_file(d, p, out=tmp_path / "o.h5ad", device="cpu")
    linked = tmp_path / "linked.h5ad"
    qry.write_h5ad(linked)
    with h5py.File(linked, "a") as f:
        f["uns"]["secret"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.raises(DataError, match="external link"):
        predict_file(d, linked, out=tmp_path / "o.h5ad", device="cpu")
    for group in ("obsm", "uns"):  # not groups: an "internal error" when the copy was annotated (2026-12-06)
        odd = tmp_path / f"odd_{group}.h5ad"
        qry.write_h5ad(odd)
        with h5py.File(odd, "a") as f:
            del f[group]
            f[group] = np.arange(3)
        with pytest.raises(DataError, match="could not read query file"):
            predict_file(d, odd, out=tmp_path / "o.h5ad", device="cpu")
    # as annotate says it (found 2026-12-07: an empty file was an "internal error", a folder did not exist)
    (tmp_path / "empty.h5ad").write_bytes(b"")
    with pytest.raises(DataError, match="not HDF5 inside"):
        predict_file(d, tmp_path / "empty.h5ad", out=tmp_path / "o.h5ad", device="cpu")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="contains no matrix.mtx"):
        predict_file(d, tmp_path / "folder", out=tmp_path / "o.h5ad", device="cpu")
    assert not (tmp_path / "o.h5ad").exists()


def test_a_sample_of_a_file_with_indices_out_of_range_is_refused(tmp_path):
    """The app holds a sample of a large query (``read_sample``): rows past the first 1,000 read
    with out-of-range gene indices were taken as they were (scipy's C code reads past its arrays on
    such a matrix); found 2026-12-06."""
    from cellannot_core.data.stream import read_sample

    _, a = demo_subset(n_ref=100, n_query=1500)
    p = tmp_path / "q.h5ad"
    a.write_h5ad(p)
    with h5py.File(p, "r+") as f:
        start = int(f["X/indptr"][1200])
        f["X/indices"][start:start + 3] = 10**7
    with pytest.raises(DataError, match="could not read the query's cells: ValueError"):
        read_sample(p, n=1400, seed=0)


def test_a_file_cannot_name_another_file_as_the_query_it_samples(tmp_path):
    """A sample of a large query carries its source in ``uns["cellannot_stream"]``; a file's own one
    (an upload) made annotate label, and write out, whatever ``.h5ad`` on the server it named
    (found 2026-12-06). Only a sample this process read names a file; a copy of one still does."""
    from cellannot_core.data import read_uploaded
    from cellannot_core.data.stream import STREAM_KEY, read_sample, stream_source
    from cellannot_core.pipeline import annotate

    ref, qry = demo_subset(300, 500, seed=5)
    other = tmp_path / "someone_elses.h5ad"
    qry.write_h5ad(other)
    small = qry[:120].copy()
    small.uns[STREAM_KEY] = {"path": str(other), "n_obs": 500, "n_sample": 120, "seed": 0, "source": "x",
                             "token": "0" * 32}
    small.write_h5ad(tmp_path / "upload.h5ad")
    upload = read_uploaded((tmp_path / "upload.h5ad").read_bytes(), "upload.h5ad", name="query")
    assert stream_source(upload) is None and stream_source(small) is None
    opts = AnnotateOptions(label_key=LABEL, model="logreg", seed=0, device="cpu", n_top_genes=300)
    res = annotate(ref, upload, opts, out=tmp_path / "out.h5ad")
    assert len(res.predictions.label) == 120 and ad.read_h5ad(tmp_path / "out.h5ad").n_obs == 120
    sample = read_sample(other, n=100, seed=0)
    assert stream_source(sample)["path"] == str(other.resolve()) and stream_source(sample.copy())["n_obs"] == 500
    sample.uns[STREAM_KEY]["path"] = "/etc/passwd"  # the source is the process's record, not what uns says
    assert stream_source(sample)["path"] == str(other.resolve())


def test_query_graph_pool_for_large_queries():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 6
    y = rng.integers(0, 4, 3000)
    z = (centres[y] + rng.normal(size=(3000, 6))).astype(np.float32)
    exact = QueryGraph(z)
    assert exact.pool is None and exact.n_pool == 3000
    pooled = QueryGraph(z, pool_max=500)
    assert pooled.n_pool == 500 and len(np.unique(pooled.pool)) == 500
    assert pooled.idx.shape == (3000, 16) and pooled.idx.max() < 500
    # the pool's neighbours are real neighbours: smoothed type indicators stay with the type
    onehot = np.eye(4)[y]
    agree = (pooled.smooth(onehot).argmax(1) == y).mean()
    assert agree > 0.99 and (exact.smooth(onehot).argmax(1) == y).mean() > 0.99
    # clusters cover every cell and follow the types
    cl = pooled.clusters()
    assert cl.shape == (3000,)
    purity = sum(np.bincount(y[cl == k]).max() for k in np.unique(cl)) / len(y)
    assert purity > 0.98
    # graph_smooth and query_clusters use the shared graph: the same values as the exact one
    np.testing.assert_allclose(graph_smooth(z, onehot), exact.smooth(onehot))
    np.testing.assert_array_equal(query_clusters(z), exact.clusters())


def test_the_api_labels_a_file_in_chunks(bundle, tmp_path):
    import cellannot_core as ca

    d, q, qry = bundle
    ann = ca.Annotator.load(d, device="cpu")
    res = ann.predict_file(q, out=tmp_path / "api.h5ad")
    assert res["streamed"] and res["n_obs"] == qry.n_obs
    predict_file(d, q, out=tmp_path / "cli.h5ad", device="cpu")
    assert _labels(ad.read_h5ad(tmp_path / "api.h5ad")) == _labels(ad.read_h5ad(tmp_path / "cli.h5ad"))


def test_annotate_a_query_held_as_a_sample_labels_every_cell_of_its_file(tmp_path):
    """Issue 15 (the app at scale): a query file too large to hold is loaded as a seeded sample of its
    cells (read_sample); annotate checks and trains with the sample and labels every cell of the file
    in chunks, with the same labels the saved model gives the whole file (predict_file)."""
    from cellannot_core.data.stream import read_sample, stream_source
    from cellannot_core.errors import ConfigError
    from cellannot_core.pipeline import annotate
    from cellannot_core.runs import RunDir

    ref, qry = demo_subset(300, 500, seed=5)
    qry.X = sp.csr_matrix(qry.X)
    qry.obs["truth"] = qry.obs[LABEL].astype(str).str.lower()  # matched to the reference's types regardless of case
    path = tmp_path / "big_query.h5ad"
    qry.write_h5ad(path)
    sample = read_sample(path, n=150, seed=0)
    assert sample.n_obs == 150 and stream_source(sample)["n_obs"] == 500
    assert set(sample.obs_names) <= set(qry.obs_names)
    row = list(qry.obs_names).index(sample.obs_names[0])  # the sample's counts are the file's
    np.testing.assert_array_equal(sample.X[0].toarray(), qry.X[row].toarray())
    opts = AnnotateOptions(label_key=LABEL, query_label_key="truth", model="logreg", seed=0, device="cpu",
                           n_top_genes=300)
    rd = RunDir.create(tmp_path / "runs", model="logreg")
    res = annotate(ref, sample, opts, run_dir=rd, out=tmp_path / "annotated.h5ad")
    assert len(res.predictions.label) == 500 and res.card["n_query"] == 500
    assert res.card["query_metrics"]["n_in"] + res.card["query_metrics"]["n_novel"] == 500
    assert res.card["query_metrics"]["n_in"] == qry.obs[LABEL].astype(str).isin(res.model.classes).sum() > 0
    assert res.card["query_read_in_chunks"]["n_sample"] == 150
    assert res.prepared.query.n_obs == 150  # trained with the sample only
    # the Unknown groups are described from every cell of the file, not the sample (all Unknown here)
    every = annotate(ref, sample, AnnotateOptions(**{**opts.__dict__, "threshold": -1e9})).card["unknown_groups"]
    assert sum(g["n_cells"] for g in every) == 500 and all(g["genes_up"] for g in every)
    from cellannot_core._constants import RunFiles

    run_obs = ad.read_h5ad(rd.file(RunFiles.ANNOTATED), backed="r").obs
    assert list(run_obs.index) == list(qry.obs_names) and OutKeys.LABEL in run_obs
    full = ad.read_h5ad(tmp_path / "annotated.h5ad")  # --out: the whole file, annotated
    assert full.n_obs == 500 and (full.X != qry.X).nnz == 0
    model_dir = tmp_path / "model"
    save_bundle(model_dir, res.model, bundle_info(res.model, res.prepared, opts))
    again = predict_file(model_dir, path, out=tmp_path / "again.h5ad", device="cpu")
    assert again["streamed"]
    assert _labels(ad.read_h5ad(tmp_path / "again.h5ad")) == _labels(full)
    assert rd.load_arrays()["query_latent"].shape[0] == 500
    # what needs the whole query is refused in one line
    for bad, msg in ((dict(model="seurat"), "labels a query as a whole"),
                     (dict(qc={"min_genes": 10}), "quality filters need the whole query")):
        with pytest.raises(ConfigError, match=msg):
            annotate(ref, sample, AnnotateOptions(**{**opts.__dict__, **bad}))


def test_a_query_missing_many_model_genes_is_told_what_it_costs_and_most_is_refused(bundle, tmp_path):
    """The missing genes were said only in the run card, never in the log, and the same short way
    for a query missing most of them, which then got no cell Unknown (bench/input_forms.py: the
    default model on the demo pair with 60% or 80% of its genes missing, five draws of six)."""
    import json
    import shutil

    import cellannot_core as ca
    from cellannot_core.pipeline import load_bundle

    _, q, qry = bundle
    d = tmp_path / "model"  # a model whose genes are not all needed (of 400, 50 must be found)
    shutil.copytree(bundle[0], d)
    info = json.loads((d / "bundle.json").read_text())
    (d / "bundle.json").write_text(json.dumps({**info, "min_shared_genes": 50}))
    genes = load_bundle(d, device="cpu")[1]["genes"]

    def without(n: int) -> ad.AnnData:
        return qry[:, [g for g in qry.var_names if g not in set(genes[:n])]].copy()

    most = without(len(genes) * 6 // 10)
    most.write_h5ad(tmp_path / "most.h5ad")
    with pytest.raises(DataError, match="only .* of the model's .* genes.*--adapt"):
        predict_file(d, tmp_path / "most.h5ad", out=tmp_path / "o.h5ad", device="cpu", chunk_cells=70)
    with pytest.raises(DataError, match="adapt=True"):
        ca.Annotator.load(d, device="cpu").predict(most, copy=True, progress_bar=False)
    for query, costs in ((without(len(genes) * 4 // 10), True), (without(1), False)):
        p = tmp_path / "q.h5ad"
        query.write_h5ad(p)
        streamed: list[str] = []
        predict_file(d, p, out=tmp_path / "o.h5ad", device="cpu", chunk_cells=70, log=streamed.append)
        in_memory: list[str] = []
        out = ca.Annotator.load(d, device="cpu").predict(query, copy=True, log=in_memory.append, progress_bar=False)
        for logs in (streamed, in_memory):
            said = [s for s in logs if s.startswith("warning:") and "missing from the query" in s]
            assert len(said) == costs and all("Unknown calls can vanish" in s for s in said), logs
            # one gene missing is said in the step's line, not as a warning (one cried wolf, 2026-12-07)
            assert any(s.endswith("are set to zero") for s in logs), logs
        if said:
            assert streamed.index(said[0]) <= 1, streamed  # before the passes over the chunks (after them until 2026-12-07)
        # and a warning on the labels, which the app's pages show (the log alone said it until 2026-12-07)
        for card in (out.uns["cellannot"], ad.read_h5ad(tmp_path / "o.h5ad").uns["cellannot"]):
            assert ("Unknown calls can vanish" in card["rejection"].get("genes_note", "")) == costs


def test_a_file_of_mostly_empty_droplets_is_warned_of_when_read_a_chunk_at_a_time(bundle, tmp_path):
    """The warning for an unfiltered matrix was given when a query was read whole, not when a
    file was labelled a chunk at a time (the way a large raw_feature_bc_matrix is read)."""
    d, q, qry = bundle
    rng = np.random.default_rng(0)
    empty = ad.AnnData(sp.csr_matrix(rng.poisson(10 / qry.n_vars, size=(qry.n_obs * 3, qry.n_vars)).astype(np.float32)),
                       var=qry.var.copy())
    raw = ad.concat([qry, empty], index_unique="-")
    raw.write_h5ad(tmp_path / "raw.h5ad")
    for path, warned in ((tmp_path / "raw.h5ad", True), (q, False)):
        logs: list[str] = []
        res = predict_file(d, path, out=tmp_path / "o.h5ad", device="cpu", chunk_cells=150, log=logs.append)
        assert res["streamed"]
        assert any(s.startswith("warning:") and "empty droplets" in s for s in logs) == warned, logs


def test_a_streamed_querys_chunks_are_held_to_the_memory_limit(bundle, tmp_path, monkeypatch):
    """A query read in chunks had no bound on its matrix (found 2026-12-07): row pointers giving one
    row 400 million values never written (405 KB) took a server to 9.7 GB at a 0.5 GB limit, and a
    dense matrix of 30,000 genes read 20,000 cells at a time 2.7 GB. Row pointers are checked before
    any value is read, and a chunk holds as many cells as fit an eighth of the limit."""
    import h5py

    from cellannot_core.data import stream
    from cellannot_core.errors import DataError

    _, q, qry = bundle
    dense = qry.copy()
    dense.X = dense.X.toarray()
    p = tmp_path / "dense.h5ad"
    dense.write_h5ad(p)
    per_cell = qry.n_vars * stream.BYTES_PER_VALUE
    monkeypatch.setattr(stream, "chunk_bytes", lambda: 7 * per_cell)
    with H5adRows(p) as rows:
        parts = list(rows.chunks())
        assert max(x.shape[0] for _, x in parts) == 7 and [s for s, _ in parts] == list(range(0, qry.n_obs, 7))
        assert (sp.vstack([x for _, x in parts]) != sp.csr_matrix(qry.X, dtype=np.float32)).nnz == 0
        assert rows.rows_at(np.arange(0, qry.n_obs, 2)).shape[0] == len(range(0, qry.n_obs, 2))
    bomb = tmp_path / "bomb.h5ad"
    bomb.write_bytes(open(q, "rb").read())
    with h5py.File(bomb, "a") as f:
        ptr = f["X/indptr"][...]
        ptr[1:] += qry.n_vars + 1  # the first row claims more values than there are genes
        f["X/indptr"][...] = ptr
    with pytest.raises(DataError, match="row pointers of its X do not fit its values"):
        H5adRows(bomb)


@pytest.mark.parametrize("kind", ["fixed", "array", "vlen", "complex", "float16"])
def test_a_streamed_x_of_values_that_are_not_plain_numbers_is_one_line_before_it_is_read(tmp_path, kind):
    """Found 2026-12-07 by a fifth probe: the streamed query read an X of 1 MB fixed-length strings or of an HDF5
    array type (250,000 floats a value), budgeted at 24 bytes a value (0.07 MB -> 5.2 GB), and labelled one of
    variable-length strings "successfully"; complex values printed numpy's warning with a server path, and sparse
    float16 values failed with a bare ValueError. Values that are not plain numbers, and sparse float16, are one
    line before any is read."""
    from cellannot_core.data.io import read_dataset
    from conftest import make_synthetic

    a = make_synthetic(40, 20, 2)
    a.X = sp.csr_matrix(a.X)
    p = tmp_path / "q.h5ad"
    a.write_h5ad(p)
    with h5py.File(p, "a") as f:
        if kind == "float16":
            data = f["X/data"][...]
            del f["X/data"]
            f["X/data"] = data.astype(np.float16)
        else:
            del f["X"]
            shape = (40, 20)
            if kind == "fixed":
                f.create_dataset("X", data=np.full(shape, b"1", dtype="S1000"), chunks=(1, 1))
            elif kind == "array":
                f.create_dataset("X", shape=shape, dtype=np.dtype((np.float32, (1000,))), chunks=(1, 1))
            elif kind == "vlen":
                f.create_dataset("X", data=np.full(shape, "1", dtype=object), dtype=h5py.string_dtype())
            else:
                f["X"] = np.ones(shape, dtype=np.complex64)
    if kind == "float16":
        with pytest.raises(DataError, match="X holds float16 values in a sparse matrix, which scipy cannot hold"):
            H5adRows(p)
        with pytest.raises(DataError):  # (read whole: a line too)
            read_dataset(p)
        return
    with pytest.raises(DataError, match=r"X holds (text|array|object \(text or variable-length array\)|complex) "
                                        r"values, not numbers") as err:
        H5adRows(p)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["indptr", "indices"])
def test_a_streamed_x_whose_positions_are_not_whole_numbers_is_one_line_before_they_are_read(tmp_path, key):
    """Found 2026-12-07 by a sixth probe: only X's values were checked, so row pointers or column indices
    stored as text sharing one long string were read whole (2 MB -> 4.5 GB at a 0.5 GB limit; the indices
    variant labelled its cells). Positions are whole numbers, checked before any is read."""
    from conftest import make_synthetic

    a = make_synthetic(40, 20, 2)
    a.X = sp.csr_matrix(a.X)
    p = tmp_path / "q.h5ad"
    a.write_h5ad(p)
    with h5py.File(p, "a") as f:
        pos = f[f"X/{key}"][...]
        del f[f"X/{key}"]
        f.create_dataset(f"X/{key}", data=pos.astype(str).astype(object), dtype=h5py.string_dtype())
    what = "row pointers" if key == "indptr" else "column indices"
    with pytest.raises(DataError, match=f"the {what} of its X are not whole numbers"):
        H5adRows(p)
