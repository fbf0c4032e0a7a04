"""Latent-space quality: average silhouette width (scib-style, rescaled to [0, 1])."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import silhouette_score

__all__ = ["asw"]


def asw(
    latent: ArrayLike,
    labels: ArrayLike,
    *,
    max_cells: int = 5000,
    seed: int = 0,
    metric: str = "euclidean",
) -> float:
    """Average silhouette width of ``labels`` in ``latent``, rescaled as ``(s + 1) / 2``.

    This is the cell-type ASW of scib (Luecken et al. 2022): 1 = compact, well separated
    types, 0.5 = overlapping, 0 = points closer to other types than to their own.

    Parameters
    ----------
    latent
        (cells x dims) coordinates.
    labels
        Per-cell labels.
    max_cells
        Above this many cells a seeded random subset of ``max_cells`` cells is used
        (silhouette is quadratic in the number of cells).
    seed
        Seed of the subsample.
    metric
        Distance passed to :func:`sklearn.metrics.silhouette_score`.

    Returns
    -------
    float
        Rescaled ASW in [0, 1]; ``nan`` when fewer than two labels (or fewer than three cells)
        remain, where silhouette is undefined.
    """
    Z = np.asarray(latent, dtype=float)
    if Z.ndim == 1:
        Z = Z[:, None]
    y = np.asarray(labels, dtype=object).reshape(-1).astype(str)
    if Z.shape[0] != y.size:
        raise ValueError(f"latent has {Z.shape[0]} rows but labels has {y.size}")
    if Z.shape[0] > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(Z.shape[0], size=max_cells, replace=False))
        Z, y = Z[idx], y[idx]
    n_labels = np.unique(y).size
    if n_labels < 2 or n_labels > Z.shape[0] - 1:
        return float("nan")
    s = silhouette_score(Z, y, metric=metric)
    return float((s + 1.0) / 2.0)
