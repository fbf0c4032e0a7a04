"""2-D embeddings (UMAP, t-SNE, PCA) of latent spaces, generated cells in the same space.

``umap`` is imported lazily inside the functions: its first import compiles numba code
(20-60 s), which must never happen at module import.

Placing extra points (e.g. generated cells) with the real cells
---------------------------------------------------------------
:func:`embed_with_extra` has two strategies:

``"union"`` (default)
    UMAP / t-SNE are fitted on real and extra points together.  Generated cells that lie
    off the real manifold then show up as their own islands, which is what one wants to see
    when judging samples; ``UMAP.transform`` would instead initialise every new point at the
    average position of its nearest real neighbours, snapping even poor samples onto real
    clusters.  The extra points are usually few (``n_per_class`` x classes), so the real
    layout changes little.
``"transform"``
    Fitted on the real cells only, extra points placed afterwards (``UMAP.transform``,
    openTSNE's ``transform``, or, with scikit-learn's t-SNE which cannot place new points,
    the inverse-distance-weighted mean position of the 10 nearest fitted cells).  The real
    layout is then identical to ``embed(X_fit)`` with the same seed.

PCA (the method, and the reduction to 50 components applied first when the input has more
than 50 columns) is always fitted on the real cells only, so generated cells never shape
the axes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from ._constants import num_threads

__all__ = [
    "METHODS",
    "embed",
    "embed_onto",
    "embed_with_extra",
    "cached_embedding",
    "embedding_key",
]

Method = Literal["umap", "tsne", "pca"]
Strategy = Literal["union", "transform"]
Progress = Callable[[str], None]

#: Supported methods.
METHODS: tuple[str, ...] = ("umap", "tsne", "pca")
#: Inputs wider than this are reduced with PCA first (UMAP / t-SNE).
PCA_DIMS = 50
#: Below this many fitted cells UMAP / t-SNE are not meaningful; PCA is used instead.
MIN_CELLS_NONLINEAR = 10
#: Neighbours used to place points when the method cannot transform new data.
KNN_PLACE = 10


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _as_dense(X: Any, name: str) -> np.ndarray:
    A = X.toarray() if sp.issparse(X) else np.asarray(X)
    A = np.asarray(A, dtype=np.float32)
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x features), got shape {A.shape}")
    if A.size and not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return A


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown embedding method {method!r}; valid: {', '.join(METHODS)}")


def _pca_reduce(X_fit: np.ndarray, others: list[np.ndarray], seed: int,
                progress: Progress | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Project everything on the first 50 PCs of ``X_fit`` when wider than 50 columns."""
    if X_fit.shape[1] <= PCA_DIMS:
        return X_fit, others
    from sklearn.decomposition import PCA

    k = min(PCA_DIMS, X_fit.shape[0] - 1, X_fit.shape[1])
    if k < 2:
        return X_fit, others
    _say(progress, f"Reducing {X_fit.shape[1]} features to {k} principal components")
    pca = PCA(n_components=k, random_state=seed).fit(X_fit)
    return (pca.transform(X_fit).astype(np.float32),
            [pca.transform(o).astype(np.float32) if o.shape[0] else np.empty((0, k), np.float32)
             for o in others])


def _knn_place(X_fit: np.ndarray, Y_fit: np.ndarray, X_new: np.ndarray) -> np.ndarray:
    """Inverse-distance-weighted mean position of the nearest fitted points."""
    from sklearn.neighbors import NearestNeighbors

    k = min(KNN_PLACE, X_fit.shape[0])
    nn = NearestNeighbors(n_neighbors=k).fit(X_fit)
    dist, ind = nn.kneighbors(X_new)
    w = 1.0 / (dist + 1e-8)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", w, Y_fit[ind])


def _import_umap(progress: Progress | None):
    if "umap" not in sys.modules:
        _say(progress, "Loading UMAP (the first use compiles numba code: 20-60 s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap  # noqa: PLC0415  (lazy on purpose)
    return umap


def _fit_place(
    X_fit: np.ndarray,
    X_place: np.ndarray,
    *,
    method: str,
    n_neighbors: int,
    seed: int,
    min_dist: float,
    perplexity: float,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``method`` on ``X_fit`` and place ``X_place`` in the same 2-D space."""
    n_fit = X_fit.shape[0]
    if n_fit == 0:
        return np.empty((0, 2)), np.zeros((X_place.shape[0], 2))
    if method != "pca" and n_fit < MIN_CELLS_NONLINEAR:
        _say(progress, f"Only {n_fit} cells: using PCA instead of {method}")
        method = "pca"

    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, n_fit, X_fit.shape[1])
        Y_fit = np.zeros((n_fit, 2))
        Y_place = np.zeros((X_place.shape[0], 2))
        if k >= 1 and n_fit >= 2:
            _say(progress, f"Running PCA on {n_fit:,} cells")
            pca = PCA(n_components=k, random_state=seed).fit(X_fit)
            Y_fit[:, :k] = pca.transform(X_fit)
            if X_place.shape[0]:
                Y_place[:, :k] = pca.transform(X_place)
        return Y_fit, Y_place

    if method == "umap":
        umap = _import_umap(progress)
        k = max(2, min(int(n_neighbors), n_fit - 1))
        _say(progress, f"Running UMAP on {n_fit:,} cells ({k} neighbours)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist,
                                random_state=seed, n_jobs=1)
            Y_fit = reducer.fit_transform(X_fit)
            Y_place = np.empty((0, 2))
            if X_place.shape[0]:
                _say(progress, f"Placing {X_place.shape[0]:,} cells in the UMAP")
                Y_place = reducer.transform(X_place)
        return np.asarray(Y_fit, dtype=float), np.asarray(Y_place, dtype=float)

    # t-SNE
    perp = float(max(2.0, min(perplexity, (n_fit - 1) / 3.0)))
    try:
        import openTSNE  # noqa: PLC0415
    except ImportError:
        openTSNE = None
    if openTSNE is not None:
        _say(progress, f"Running t-SNE (openTSNE) on {n_fit:,} cells")
        emb = openTSNE.TSNE(perplexity=perp, random_state=seed, n_jobs=num_threads() or 1,
                            verbose=False).fit(X_fit)
        Y_place = np.empty((0, 2))
        if X_place.shape[0]:
            _say(progress, f"Placing {X_place.shape[0]:,} cells in the t-SNE")
            Y_place = np.asarray(emb.transform(X_place), dtype=float)
        return np.asarray(emb, dtype=float), Y_place
    from sklearn.manifold import TSNE

    from threadpoolctl import threadpool_limits

    _say(progress, f"Running t-SNE (scikit-learn) on {n_fit:,} cells")
    # One OpenMP thread: when the CPU is busy (e.g. a training job in the background), the
    # spin-waiting OpenMP threads of scikit-learn's Barnes-Hut gradient run 5-50x slower
    # than a single thread (measured: 1,000 cells 31 s with 2 threads vs 5 s with 1).
    with threadpool_limits(limits=1, user_api="openmp"):
        Y_fit = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
                     random_state=seed, n_jobs=1).fit_transform(X_fit)
    Y_fit = np.asarray(Y_fit, dtype=float)
    Y_place = np.empty((0, 2))
    if X_place.shape[0]:
        _say(progress, f"Placing {X_place.shape[0]:,} cells next to their nearest neighbours")
        Y_place = _knn_place(X_fit, Y_fit, X_place)
    return Y_fit, Y_place


def _split_fit(n: int, max_cells: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices fitted on and indices placed afterwards (seeded subsample above max_cells)."""
    if max_cells is None or n <= max_cells:
        return np.arange(n), np.empty(0, dtype=np.int64)
    if max_cells < 1:
        raise ValueError("max_cells must be >= 1")
    fit = np.sort(np.random.default_rng(seed).choice(n, size=int(max_cells), replace=False))
    mask = np.ones(n, dtype=bool)
    mask[fit] = False
    return fit, np.flatnonzero(mask)


def embed(
    X: ArrayLike,
    *,
    method: Method = "umap",
    n_neighbors: int = 15,
    seed: int = 0,
    max_cells: int | None = None,
    progress: Progress | None = None,
    min_dist: float = 0.3,
    perplexity: float = 30.0,
) -> np.ndarray:
    """Embed cells in 2-D.

    Parameters
    ----------
    X
        (cells x features), e.g. a model's latent space (dense; sparse is densified).
        More than 50 columns are first reduced to 50 principal components (UMAP / t-SNE).
    method
        ``"umap"`` (umap-learn), ``"tsne"`` (openTSNE if installed, else scikit-learn) or
        ``"pca"``.
    n_neighbors
        UMAP neighbourhood size (clipped to the number of cells - 1).
    seed
        Random seed (UMAP then runs single-threaded and is reproducible).
    max_cells
        Fit on a seeded subsample of this many cells and place the others in the same space
        (UMAP/openTSNE ``transform``, PCA projection, or nearest-neighbour placement for
        scikit-learn t-SNE).  ``None``: fit on all cells.
    progress
        Optional ``callable(str)`` receiving status messages.
    min_dist
        UMAP ``min_dist`` (0.3 spreads clusters a little more than umap's 0.1 default).
    perplexity
        t-SNE perplexity (clipped to (cells - 1) / 3).

    Returns
    -------
    numpy.ndarray
        (cells, 2) float64 coordinates, rows in input order.  Fewer than 10 cells fall back
        to PCA.
    """
    _check_method(method)
    A = _as_dense(X, "X")
    n = A.shape[0]
    fit_idx, rest_idx = _split_fit(n, max_cells, seed)
    A_fit, A_rest = A[fit_idx], A[rest_idx]
    if method != "pca":
        A_fit, (A_rest,) = _pca_reduce(A_fit, [A_rest], seed, progress)
    Y_fit, Y_rest = _fit_place(A_fit, A_rest, method=method, n_neighbors=n_neighbors, seed=seed,
                               min_dist=min_dist, perplexity=perplexity, progress=progress)
    out = np.zeros((n, 2))
    out[fit_idx] = Y_fit
    out[rest_idx] = Y_rest
    _say(progress, "Embedding done")
    return out


def embed_with_extra(
    X_fit: ArrayLike,
    X_extra: ArrayLike,
    *,
    method: Method = "umap",
    strategy: Strategy = "union",
    n_neighbors: int = 15,
    seed: int = 0,
    max_cells: int | None = None,
    progress: Progress | None = None,
    min_dist: float = 0.3,
    perplexity: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed real cells and extra points (e.g. generated cells) in the same 2-D space.

    Parameters
    ----------
    X_fit
        (real cells x features).
    X_extra
        (extra points x features), same features as ``X_fit``.
    method
        ``"umap"``, ``"tsne"`` or ``"pca"`` (see :func:`embed`).
    strategy
        ``"union"`` (default): fit UMAP / t-SNE on real and extra points together, so
        off-manifold samples stay visible as such; ``"transform"``: fit on the real cells
        only and place the extra points afterwards (real layout identical to
        ``embed(X_fit)``).  PCA always fits on the real cells.  See the module docstring.
    n_neighbors, seed, progress, min_dist, perplexity
        As in :func:`embed`.
    max_cells
        Caps the number of *real* cells fitted on (seeded subsample; the others are placed);
        extra points are always included.

    Returns
    -------
    Y_fit : numpy.ndarray
        (real cells, 2) coordinates, input order.
    Y_extra : numpy.ndarray
        (extra points, 2) coordinates in the same space.
    """
    _check_method(method)
    if strategy not in ("union", "transform"):
        raise ValueError(f"strategy must be 'union' or 'transform', not {strategy!r}")
    A = _as_dense(X_fit, "X_fit")
    E = _as_dense(X_extra, "X_extra")
    if E.shape[0] and E.shape[1] != A.shape[1]:
        raise ValueError(f"X_extra has {E.shape[1]} features but X_fit has {A.shape[1]}")
    E = E.reshape(-1, A.shape[1])
    n, m = A.shape[0], E.shape[0]
    fit_idx, rest_idx = _split_fit(n, max_cells, seed)
    if method != "pca":
        A_fit, (A_rest, E) = _pca_reduce(A[fit_idx], [A[rest_idx], E], seed, progress)
    else:
        A_fit, A_rest = A[fit_idx], A[rest_idx]

    nf, nr = fit_idx.size, rest_idx.size
    opts = dict(method=method, n_neighbors=n_neighbors, seed=seed, min_dist=min_dist,
                perplexity=perplexity, progress=progress)
    if strategy == "union" and method != "pca" and m:
        Y_union, Y_rest = _fit_place(np.vstack([A_fit, E]), A_rest, **opts)
        Y_fit_part, Y_extra = Y_union[:nf], Y_union[nf:]
    else:
        Y_fit_part, Y_place = _fit_place(A_fit, np.vstack([A_rest, E]), **opts)
        Y_rest, Y_extra = Y_place[:nr], Y_place[nr:]
    Y = np.zeros((n, 2))
    Y[fit_idx] = Y_fit_part
    Y[rest_idx] = Y_rest
    _say(progress, "Embedding done")
    return Y, np.asarray(Y_extra, dtype=float).reshape(m, 2)


def embed_onto(
    X_ref: ArrayLike,
    X_new: ArrayLike,
    *,
    method: Method = "umap",
    seed: int = 0,
    max_cells: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A map of the reference with new cells placed on it, as a mapped query is shown (Azimuth,
    scanpy's ``ingest``): ``method`` is fitted on ``X_ref`` only (:func:`embed`, same arguments),
    and each row of ``X_new`` is put at the inverse-distance-weighted mean position of its
    nearest reference cells, found in the input space (e.g. the latent space), whatever the
    method. New cells therefore always land among the reference cells they resemble most, even
    when the input space keeps the two datasets apart; how far they are is for other views
    (e.g. a novelty score) to say.

    Returns ``(Y_ref, Y_new)``, (cells, 2) each, rows in input order.
    """
    _check_method(method)
    A = _as_dense(X_ref, "X_ref")
    B = _as_dense(X_new, "X_new").reshape(-1, A.shape[1])
    Y_ref = embed(A, method=method, seed=seed, max_cells=max_cells, progress=progress)
    if not B.shape[0] or not A.shape[0]:
        return Y_ref, np.zeros((B.shape[0], 2))
    _say(progress, f"Placing {B.shape[0]:,} cells by their nearest reference cells")
    return Y_ref, _knn_place(A, Y_ref, B)


# ----------------------------------------------------------------------------- caching

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def embedding_key(*arrays: ArrayLike, **params: Any) -> str:
    """A hash string identifying the inputs and options of an embedding.

    Parameters
    ----------
    *arrays
        The input arrays (dtype, shape and bytes are hashed).
    **params
        Options (method, seed, ...), hashed as sorted JSON.

    Returns
    -------
    str
        40 hex characters, usable as ``key`` of :func:`cached_embedding`.
    """
    h = hashlib.sha256()
    for a in arrays:
        arr = np.ascontiguousarray(a.toarray() if sp.issparse(a) else np.asarray(a))
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:40]


def cached_embedding(cache_dir: Path | str, key: str, fn: Callable[[], ArrayLike]) -> np.ndarray:
    """Return the array cached under ``key`` in ``cache_dir``, computing it with ``fn`` once.

    The array is stored as ``<cache_dir>/<key>.npy``, written to a temporary file in the
    same directory and moved into place with :func:`os.replace`, so readers never see a
    partial file.  An unreadable cache file is recomputed.

    Parameters
    ----------
    cache_dir
        Directory of the cache (created if missing).
    key
        A hash string provided by the caller (e.g. :func:`embedding_key`); letters, digits,
        ``.``, ``_`` and ``-`` only.
    fn
        Called without arguments when the key is not cached; returns the array.  (For
        :func:`embed_with_extra`, cache ``np.vstack([Y_fit, Y_extra])``.)

    Returns
    -------
    numpy.ndarray
        The cached or freshly computed array.
    """
    if not _KEY_RE.match(key):
        raise ValueError(f"cache key must be letters, digits, '.', '_' or '-' (got {key!r})")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
    arr = np.asarray(fn())
    if arr.dtype == object:
        raise ValueError("cached_embedding stores numeric arrays only (no pickled objects)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arr
