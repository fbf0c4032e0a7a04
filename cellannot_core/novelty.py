"""Novelty (out-of-distribution) scores. Higher = more likely a cell type the reference lacks.

Scores that need the reference (kNN, Mahalanobis) are fitted on reference training latents.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from .calibration import softmax

OOD_METHODS = ("knn", "mahalanobis", "maxprob", "energy")
OOD_HELP = {
    "knn": "mean distance to the k nearest reference cells in the model's latent space",
    "mahalanobis": "Mahalanobis distance to the nearest reference class centre in latent space (tied covariance)",
    "maxprob": "1 - calibrated maximum class probability",
    "energy": "energy E(x) = -logsumexp(logits) (= -log p(x) up to a constant)",
}


def energy_score(logits: np.ndarray) -> np.ndarray:
    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def maxprob_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 - softmax(logits, temperature).max(axis=1)


class LatentReference:
    """Reference latents (subsampled) for distance-based novelty scores."""

    def __init__(self, latent: np.ndarray, y: np.ndarray, *, k: int = 10, max_cells: int = 10000,
                 seed: int = 0) -> None:
        latent = np.asarray(latent, dtype=np.float32)
        y = np.asarray(y)
        if latent.shape[0] > max_cells:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(latent.shape[0], max_cells, replace=False))
            latent, y = latent[keep], y[keep]
        self.latent = latent
        self.y = y.astype(np.int64)
        self.k = int(min(k, len(latent)))
        self._nn = None
        self._maha = None

    def knn(self, z: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        if self._nn is None:
            self._nn = NearestNeighbors(n_neighbors=self.k).fit(self.latent)
        d, _ = self._nn.kneighbors(np.asarray(z, dtype=np.float32))
        return d.mean(axis=1)

    def mahalanobis(self, z: np.ndarray) -> np.ndarray:
        if self._maha is None:
            classes = np.unique(self.y)
            means = np.stack([self.latent[self.y == c].mean(0) for c in classes])
            centred = self.latent - means[np.searchsorted(classes, self.y)]
            cov = np.cov(centred, rowvar=False) + 1e-3 * np.eye(self.latent.shape[1])
            self._maha = (means, np.linalg.inv(cov))
        means, prec = self._maha
        z = np.asarray(z, dtype=np.float64)
        d = np.stack([np.einsum("ij,jk,ik->i", z - m, prec, z - m) for m in means], axis=1)
        return np.sqrt(np.maximum(d.min(axis=1), 0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ref_latent": self.latent, "ref_y": self.y}
