"""A new query labelled with a finished run's model, without training, into a run of its own
(``cellannot_core.relabel``, the Train page's *Label with a finished run's model*)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellannot_core._constants import OutKeys, RunFiles
from cellannot_core.errors import Cancelled, DataError
from cellannot_core.pipeline import AnnotateOptions, annotate
from cellannot_core.relabel import label_into_run
from cellannot_core.runs import RunDir
from cellannot_core.streaming import predict_file
from conftest import demo_subset

LABEL = "cell_type_harmonized"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished logreg run on a demo subset, and a new query of the same pair."""
    root = tmp_path_factory.mktemp("runs")
    ref, qry = demo_subset(300, 200, seed=1)
    rd = RunDir.create(root, model="logreg")
    annotate(ref, qry, AnnotateOptions(label_key=LABEL, model="logreg", n_top_genes=300), run_dir=rd)
    new_query = demo_subset(300, 400, seed=7)[1]
    new_query.X = sp.csr_matrix(new_query.X)
    return root, rd, new_query


def test_a_sample_of_a_large_file_gets_every_cell_labelled_as_predict_labels_the_file(trained, tmp_path):
    """The app holds a query too large for memory as a sample of its file; the run labels every cell
    of the file a chunk at a time, with the labels ``cellannot predict`` gives the file."""
    from cellannot_core.data.stream import read_sample

    root, source, qry = trained
    qry.obs["truth"] = qry.obs[LABEL].astype(str)
    path = tmp_path / "query.h5ad"
    qry.write_h5ad(path)
    sample = read_sample(path, n=120, seed=0)
    rd = RunDir.create(root, model="logreg")
    card = label_into_run(source, sample, rd, query_label_key="truth")[1]
    assert rd.status()["state"] == "done" and card["n_query"] == 400
    assert rd.status()["elapsed"] > 0  # the Train panel said "elapsed -"
    assert card["query_read_in_chunks"]["n_sample"] == 120
    assert card["query_metrics"]["n_in"] + card["query_metrics"]["n_novel"] == 400
    obs = ad.read_h5ad(rd.file(RunFiles.ANNOTATED), backed="r").obs
    assert list(obs.index) == list(qry.obs_names)
    predict_file(source.path, path, out=tmp_path / "predicted.h5ad", device="cpu")
    want = ad.read_h5ad(tmp_path / "predicted.h5ad").obs[OutKeys.LABEL].astype(str).tolist()
    assert obs[OutKeys.LABEL].astype(str).tolist() == want
    arrays = rd.load_arrays()
    assert arrays["query_latent"].shape[0] == 400 and arrays["query_raw_mean"].shape[0] == len(card["classes"])
    np.testing.assert_array_equal(arrays["val_logits"], source.load_arrays()["val_logits"])  # the model's own
    table = pd.read_csv(rd.file(RunFiles.PREDICTIONS))
    assert len(table) == 400 and table["cell"].tolist() == list(qry.obs_names)


def test_a_failure_or_a_cancel_leaves_the_run_marked(trained, tmp_path):
    root, source, qry = trained
    rd = RunDir.create(root, model="logreg")
    with pytest.raises(DataError, match="genes"):  # a query sharing no gene with the model: one line
        label_into_run(source, ad.AnnData(X=np.ones((5, 3), dtype=np.float32),
                                          var=pd.DataFrame(index=["a", "b", "c"])), rd)
    st = rd.status()
    assert st["state"] == "failed" and "genes" in st["message"] and not rd.file(RunFiles.CARD).exists()
    rd = RunDir.create(root, model="logreg")
    with pytest.raises(Cancelled):
        label_into_run(source, qry, rd, should_stop=lambda: True)
    assert rd.status()["state"] == "cancelled"
