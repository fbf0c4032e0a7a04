"""Shared fixtures: small synthetic NB-count datasets (a few hundred cells) and markers."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("CELLANNOT_NUM_THREADS", "1")  # tiny test models run fastest single-threaded
# runs and browser-session data of tests that do not choose a folder go to a temporary one, never ./runs
if "CELLANNOT_RUNS" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["CELLANNOT_RUNS"] = tempfile.mkdtemp(prefix="cellannot_test_runs_")
    atexit.register(shutil.rmtree, os.environ["CELLANNOT_RUNS"], ignore_errors=True)  # removed when pytest ends


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _tracked_changes() -> str | None:
    """``git status`` of the tracked files (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._tracked_before = _tracked_changes()


def pytest_sessionfinish(session, exitstatus):
    """Tests must not modify tracked files (the screenshots once were rewritten by every run)."""
    before = getattr(session.config, "_tracked_before", None)
    after = _tracked_changes()
    if before is not None and after is not None and after != before:
        changed = sorted(set(after.splitlines()) - set(before.splitlines()))
        if os.environ.get("CELLANNOT_SCREENSHOTS"):  # bench/screenshots.sh rewrites these on purpose
            changed = [c for c in changed if not c[3:].startswith("assets/screenshots/")]
        if not changed:
            return
        print("\nerror: the test run modified tracked files:\n  " + "\n  ".join(changed), file=sys.stderr)
        session.exitstatus = 1


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def shown(text: str) -> str:
    """A page element's Markdown source as the visitor reads it: the app escapes Markdown characters
    in labels, names and messages (``ui.state.md``)."""
    return re.sub(r"\\(.)", r"\1", text).replace("\u2060", "")


def make_synthetic(
    n_cells: int = 300,
    n_genes: int = 120,
    n_classes: int = 3,
    *,
    seed: int = 0,
    class_names: list[str] | None = None,
    gene_prefix: str = "GENE",
    markers_per_class: int = 8,
):
    """NB counts with class-specific marker genes; obs['cell_type'] holds the label."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    names = class_names or [f"type{k}" for k in range(n_classes)]
    y = rng.integers(0, len(names), size=n_cells)
    base = rng.gamma(2.0, 0.5, size=n_genes)
    mu = np.tile(base, (n_cells, 1))
    for k in range(len(names)):
        genes = np.arange(k * markers_per_class, (k + 1) * markers_per_class) % n_genes
        mu[np.ix_(y == k, genes)] *= 8.0
    lib = rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    mu = mu * lib
    theta = 5.0
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([names[i] for i in y])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"{gene_prefix}{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture
def synthetic_adata():
    return make_synthetic()


@pytest.fixture
def synthetic_pair():
    """Reference with 3 types; query with the same 3 plus a novel 4th type (shared genes)."""
    ref = make_synthetic(400, 120, 3, seed=1)
    q = make_synthetic(240, 120, 4, seed=2)
    return ref, q


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny test networks run fastest on one thread (two threads on a loaded 2-core machine are far
    slower); the models read CELLANNOT_NUM_THREADS, this covers torch code called directly."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def not_of_counts(X, seed: int = 0):
    """``X`` (log-normalised) with each stored value moved by a seeded factor in [0.8, 1.2]: values
    that are not a function of counts (imputed, corrected), which no inversion turns back into them."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.data *= np.random.default_rng(seed).uniform(0.8, 1.2, X.data.size).astype(np.float32)
    return X


def make_prepared(n_ref_classes: int = 3):
    """A prepared synthetic pair: 400 reference cells of ``n_ref_classes`` types, 240 query cells
    with one more type (novel), 100 genes; what the model tests train on."""
    from cellannot_core.data import prepare

    ref = make_synthetic(400, 120, n_ref_classes, seed=1)
    q = make_synthetic(240, 120, n_ref_classes + 1, seed=2)
    return prepare(ref, q, label_key="cell_type", query_label_key="cell_type", n_top_genes=100,
                   min_shared_genes=50, seed=0)


def demo_subset(n_ref: int = 300, n_query: int = 300, seed: int = 0):
    """Random subsets of the bundled demo pair (reference, query): small enough for fast CPU
    training in app tests. One generator draws the reference cells, then the query cells."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    ref = ad.read_h5ad(ROOT / "assets" / "kang_pbmc_example_sce_1556.h5ad")
    qry = ad.read_h5ad(ROOT / "assets" / "pbmc3k_seurat_2638.h5ad")
    ref = ref[np.sort(rng.choice(ref.n_obs, n_ref, replace=False))].copy()
    qry = qry[np.sort(rng.choice(qry.n_obs, n_query, replace=False))].copy()
    return ref, qry


def write_loom(adata, path, *, layers: tuple[str, ...] = ()) -> None:
    """``adata`` as loompy writes a .loom (no loompy here): /matrix genes x cells, dense and chunked,
    gene names as fixed-length bytes in row_attrs/Gene, cell names as variable-length strings in
    col_attrs/CellID, each obs column a column attribute, and ``layers`` (zeros) beside the matrix."""
    import h5py
    import scipy.sparse as sp

    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=X.T.astype(np.float32), chunks=(min(64, adata.n_vars), min(64, adata.n_obs)),
                         compression="gzip")
        f.create_group("row_attrs")["Gene"] = np.array(list(adata.var_names), dtype="S")
        ca = f.create_group("col_attrs")
        ca.create_dataset("CellID", data=np.array(list(adata.obs_names), dtype=object), dtype=h5py.string_dtype())
        for c in adata.obs.columns:
            ca[c] = np.array(adata.obs[c].astype(str).tolist(), dtype="S")
        lay = f.create_group("layers")
        for name in layers:
            lay.create_dataset(name, shape=X.T.shape, dtype=np.float32)
        f.attrs["LOOM_SPEC_VERSION"] = "3.0.0"
