"""2-D embeddings: PCA and t-SNE paths (fast), UMAP (slow: numba compile), on-disk cache."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from cellannot_core.embed import cached_embedding, embed, embed_with_extra, embedding_key

ROOT = Path(__file__).resolve().parents[2]


def _blobs(n_per: int = 50, dims: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, 1, (n_per, dims)), rng.normal(8, 1, (n_per, dims))]).astype(np.float32)
    return X, np.repeat([0, 1], n_per)


def _knn_agreement(Y: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    d = ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((y[nn] == y[:, None]).mean())


def _align_signs(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return A * np.sign((A * B).sum(axis=0))


def test_pca_matches_sklearn():
    X, _ = _blobs()
    msgs: list[str] = []
    Y = embed(X, method="pca", progress=msgs.append)
    ref = PCA(n_components=2).fit_transform(X)
    assert Y.shape == (100, 2)
    assert np.allclose(_align_signs(Y, ref), ref, atol=1e-3)
    assert msgs and all(isinstance(m, str) for m in msgs)


def test_pca_max_cells_projects_the_rest():
    X, _ = _blobs()
    Y = embed(X, method="pca", max_cells=60, seed=0)
    assert Y.shape == (100, 2) and np.isfinite(Y).all()
    # the projection is linear: every row sits where the PCA of the subsample puts it
    fit = np.sort(np.random.default_rng(0).choice(100, size=60, replace=False))
    ref = PCA(n_components=2).fit(X[fit]).transform(X)
    assert np.allclose(_align_signs(Y, ref), ref, atol=1e-3)


def test_pca_with_extra_is_projection_of_real_fit():
    X, _ = _blobs()
    extra = X[:5] + 0.0
    for strategy in ("union", "transform"):
        Y, Ye = embed_with_extra(X, extra, method="pca", strategy=strategy)
        assert np.allclose(Y, embed(X, method="pca"))
        assert np.allclose(Ye, Y[:5], atol=1e-4)  # copies of real cells land on them


def test_tsne_separates_blobs_and_is_seeded():
    X, y = _blobs(40)
    Y = embed(X, method="tsne", seed=0)
    assert Y.shape == (80, 2) and np.isfinite(Y).all()
    assert _knn_agreement(Y, y) > 0.95
    assert np.allclose(Y, embed(X, method="tsne", seed=0))


def test_tsne_with_extra_union_and_transform():
    X, y = _blobs(40, dims=60)  # > 50 columns: PCA first
    rng = np.random.default_rng(1)
    extra = X[:10] + rng.normal(0, 0.1, (10, 60)).astype(np.float32)  # near blob 0
    msgs: list[str] = []
    Y, Ye = embed_with_extra(X, extra, method="tsne", progress=msgs.append)
    assert Y.shape == (80, 2) and Ye.shape == (10, 2)
    assert any("principal components" in m for m in msgs)
    c0, c1 = Y[y == 0].mean(0), Y[y == 1].mean(0)
    assert (np.linalg.norm(Ye - c0, axis=1) < np.linalg.norm(Ye - c1, axis=1)).all()
    Yt, Yte = embed_with_extra(X, extra, method="tsne", strategy="transform")
    assert np.allclose(Yt, embed(X, method="tsne"))  # real layout unchanged
    assert (np.linalg.norm(Yte - Yt[y == 0].mean(0), axis=1)
            < np.linalg.norm(Yte - Yt[y == 1].mean(0), axis=1)).all()


def test_small_inputs_and_errors():
    X, _ = _blobs(3)
    assert embed(X, method="umap").shape == (6, 2)  # < 10 cells: PCA fallback, no numba
    assert embed(np.zeros((0, 4)), method="pca").shape == (0, 2)
    Y, Ye = embed_with_extra(X, np.zeros((0, X.shape[1])), method="pca")
    assert Y.shape == (6, 2) and Ye.shape == (0, 2)
    with pytest.raises(ValueError, match="umap, tsne, pca"):
        embed(X, method="mds")
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embed(bad, method="pca")
    with pytest.raises(ValueError, match="features"):
        embed_with_extra(X, np.zeros((2, 3)), method="pca")


def test_module_import_does_not_import_umap():
    code = "import sys, cellannot_core.embed; assert 'umap' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cached_embedding(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return np.arange(6, dtype=float).reshape(3, 2)

    key = embedding_key(np.ones((3, 4)), method="pca", seed=0)
    a = cached_embedding(tmp_path / "cache", key, fn)
    b = cached_embedding(tmp_path / "cache", key, fn)
    assert len(calls) == 1 and np.array_equal(a, b)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{key}.npy"]  # no tmp left
    # a corrupt file is recomputed
    (tmp_path / "cache" / f"{key}.npy").write_bytes(b"garbage")
    c = cached_embedding(tmp_path / "cache", key, fn)
    assert len(calls) == 2 and np.array_equal(a, c)
    with pytest.raises(ValueError):
        cached_embedding(tmp_path, "../evil", fn)


def test_embedding_key():
    X = np.ones((3, 4))
    assert embedding_key(X, method="umap") == embedding_key(X.copy(), method="umap")
    assert embedding_key(X, method="umap") != embedding_key(X, method="tsne")
    assert embedding_key(X, method="umap") != embedding_key(X + 1, method="umap")
    assert embedding_key(X) != embedding_key(X.astype(np.float32))


@pytest.mark.slow
def test_umap_fit_and_transform():
    X, y = _blobs(60)
    Y = embed(X, method="umap", seed=0)
    assert Y.shape == (120, 2) and _knn_agreement(Y, y) > 0.95
    extra = X[:8] + 0.01
    Yt, Ye = embed_with_extra(X, extra, method="umap", strategy="transform", seed=0)
    assert np.allclose(Yt, Y)  # fit on the real cells only: same layout as embed()
    c0, c1 = Y[y == 0].mean(0), Y[y == 1].mean(0)
    assert (np.linalg.norm(Ye - c0, axis=1) < np.linalg.norm(Ye - c1, axis=1)).all()
    Yu, Yue = embed_with_extra(X, extra, method="umap", seed=0)
    assert Yu.shape == (120, 2) and Yue.shape == (8, 2)
    Ym = embed(X, method="umap", max_cells=80, seed=0)
    assert Ym.shape == (120, 2) and _knn_agreement(Ym, y) > 0.95


def test_embed_onto_places_a_shifted_query_among_the_reference_cells_of_its_type():
    """Issue 13: when the latent space keeps reference and query apart (a study effect the model did
    not remove), a joint map shows two separate islands; the reference map places each query cell
    by its nearest reference cells, so query cells land on the reference cells of their own type."""
    from cellannot_core.embed import embed_onto
    from cellannot_core.metrics import dataset_mixing, generated_placement

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8.0, size=(3, 10))
    ref_y, q_y = rng.integers(0, 3, 300), rng.integers(0, 3, 200)
    ref = centres[ref_y] + rng.normal(size=(300, 10))
    shift = np.r_[6.0, np.zeros(9)]  # a study effect smaller than the distance between types
    query = centres[q_y] + rng.normal(size=(200, 10)) + shift
    assert dataset_mixing(ref, query) < 0.3  # apart in the input space
    y_ref, y_q = embed_onto(ref, query, method="pca")
    np.testing.assert_allclose(y_ref, embed(ref, method="pca"))  # the reference's own map
    placed = generated_placement(y_q, q_y, y_ref, ref_y)  # where the query cells land on the map
    assert placed["class_agreement"] > 0.95 and placed["distance_ratio"] < 1.5
    apart = generated_placement(query, q_y, ref, ref_y)  # in the input space: beside, not among
    assert apart["distance_ratio"] > 2 * placed["distance_ratio"]
    y0, y_empty = embed_onto(ref, np.zeros((0, 10)), method="pca")
    assert y_empty.shape == (0, 2)
