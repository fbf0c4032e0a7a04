"""The one z-score rule for model inputs: per gene, the reference mean and standard deviation
(floored at ``STD_FLOOR``), clipped to +-``SCALE_CLIP`` as ``sc.pp.scale(max_value=10)``. Used by
the numpy baselines (:class:`Scaler`) and by the torch models (``_torch.Standardizer`` takes its
mean and std from :class:`Scaler`)."""
from __future__ import annotations

import numpy as np

SCALE_CLIP = 10.0
STD_FLOOR = 1e-2


class Scaler:
    """Per-gene z-score with the reference mean/std, clipped at +-``SCALE_CLIP``."""

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        self.mean, self.std = mean, std

    def fit(self, X: np.ndarray) -> "Scaler":
        self.mean = X.mean(0).astype(np.float32)
        self.std = np.maximum(X.std(0), STD_FLOOR).astype(np.float32)
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.clip((X - self.mean) / self.std, -SCALE_CLIP, SCALE_CLIP).astype(np.float32)
