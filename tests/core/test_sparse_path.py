"""A large reference stays sparse from preparation to the model (issue 15): the default model
trains on CSR splits, densifying a mini-batch at a time, with the same results as on dense
splits; models that need dense data get it within the memory limit, or one line says why."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import cellannot_core.models.hybrid as hybrid
from cellannot_core.errors import DataError
from cellannot_core.pipeline import AnnotateOptions, predict, prepare_data, train_model
from conftest import demo_subset

prep_mod = importlib.import_module("cellannot_core.data.prepare")  # the module (the package exports the function)

LABEL = "cell_type_harmonized"


@pytest.fixture(scope="module")
def pair():
    return demo_subset(300, 300, seed=5)


def _prepare(pair, monkeypatch, *, sparse: bool, **kw):
    if sparse:
        monkeypatch.setattr(prep_mod, "DENSE_LIMIT_BYTES", 0)
    opts = AnnotateOptions(label_key=LABEL, seed=0, device="cpu", n_top_genes=300, **kw)
    return prepare_data(*pair, opts), opts


def test_default_model_on_sparse_splits_equals_dense(pair, monkeypatch):
    dense_prep, opts = _prepare(pair, monkeypatch, sparse=False, max_epochs=3)
    assert not dense_prep.train.is_sparse
    m_dense = train_model(dense_prep, opts)
    p_dense = predict(m_dense, dense_prep.query.X)
    with monkeypatch.context() as mp:
        sparse_prep, _ = _prepare(pair, mp, sparse=True, max_epochs=3)
    assert sparse_prep.train.is_sparse and sparse_prep.query.is_sparse
    np.testing.assert_allclose(sparse_prep.train.X.toarray(), dense_prep.train.X)
    m_sparse = train_model(sparse_prep, opts)
    assert m_sparse.history["latent_model"] == "scanvi"
    p_sparse = predict(m_sparse, sparse_prep.query.X)
    np.testing.assert_allclose(p_sparse.latent, p_dense.latent, atol=1e-4)
    np.testing.assert_allclose(p_sparse.proba, p_dense.proba, atol=1e-5)
    assert list(p_sparse.label) == list(p_dense.label)


def test_a_dense_model_gets_dense_data_or_a_clear_refusal(pair, monkeypatch):
    sparse_prep, opts = _prepare(pair, monkeypatch, sparse=True, model="logreg")
    m = train_model(sparse_prep, opts)
    p = predict(m, sparse_prep.query.X)  # densified for the model
    assert p.proba.shape == (sparse_prep.query.n_obs, len(m.classes))
    monkeypatch.setenv("CELLANNOT_MEMORY_LIMIT_GB", "0.0000001")
    with pytest.raises(DataError, match="needs the data dense in memory"):
        train_model(sparse_prep, opts)


def test_labeller_learns_from_a_capped_stratified_subsample(pair, monkeypatch):
    prep, opts = _prepare(pair, monkeypatch, sparse=True, max_epochs=2)
    monkeypatch.setattr(hybrid, "LABELLER_MAX", 120)
    capped = hybrid._capped(prep.train, 120, seed=0)
    assert capped.n_obs < prep.train.n_obs and not capped.is_sparse
    assert set(np.unique(capped.y)) == set(np.unique(prep.train.y))  # every class kept
    m = train_model(prep, opts)
    assert m.labeller.history["epochs"][-1]["val_acc"] > 0.5


def test_epochs_follow_the_data_size(pair, monkeypatch):
    """cells_budget: at most this many cells pass through training (epochs = ceil(budget / rows))."""
    prep, opts = _prepare(pair, monkeypatch, sparse=False, model="scanvi", max_epochs=10)
    rows = prep.train.n_obs + prep.query.n_obs
    opts.hparams = {"cells_budget": 3 * rows - 1}
    m = train_model(prep, opts)
    assert len(m.history["epochs"]) == 3
    opts.hparams = {"cells_budget": 0}  # off: max_epochs
    assert len(train_model(prep, opts).history["epochs"]) == 10


def test_idle_openmp_threads_sleep_unless_chosen():
    import os
    import subprocess
    import sys

    code = "import cellannot_core, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()
    assert out == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}).stdout.strip()
    assert out == "ACTIVE"


def test_torch_keeps_its_own_openmp_runtime_after_numba_has_run():
    """torch is imported by ``import cellannot_core`` before the policy is set: it runs on its own
    OpenMP runtime at its default policy, even after numba's parallel code has loaded the system's
    (imported later, torch bound to that one and trained slower: the comment in __init__)."""
    import os
    import subprocess
    import sys

    code = ("import cellannot_core, numba, numpy as np, threadpoolctl\n"
            "@numba.njit(parallel=True)\n"
            "def total(x):\n"
            "    s = 0.0\n"
            "    for i in numba.prange(x.shape[0]):\n"
            "        s += x[i]\n"
            "    return s\n"
            "total(np.ones(10_000))  # numba's OpenMP pool: the system's libgomp.so.1\n"
            "import torch\n"
            "(torch.randn(64, 64) @ torch.randn(64, 64)).sum()\n"
            "print([l['filepath'] for l in threadpoolctl.threadpool_info() if l['internal_api'] == 'openmp'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_dir = os.path.dirname(__import__("torch").__file__)
    assert os.path.join(torch_dir, "lib") in out.stdout, out.stdout
    assert "OpenMP runtime" not in out.stderr  # no warning when the order is right

    # the other order, as a notebook that ran scanpy's functions first: torch is bound to the system's
    # runtime (slower), and the import says so and what to do
    later = code.replace("import cellannot_core, numba", "import numba").replace("import torch\n", "import cellannot_core, torch\n")
    out = subprocess.run([sys.executable, "-c", later], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.join(torch_dir, "lib") not in out.stdout, out.stdout
    assert "import cellannot_core (or torch) before calling scanpy's functions" in out.stderr, out.stderr[-2000:]
