"""Temperature scaling and rejection thresholds, both fitted on reference validation cells."""
from __future__ import annotations

import numpy as np
import torch


T_MIN, T_MAX = 0.05, 100.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Optimised over log T with L-BFGS, so T stays positive; returns 1.0 for empty input.
    """
    if len(y) == 0:
        return 1.0
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lg / log_t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # With (near-)perfect validation accuracy the NLL keeps falling as T -> 0, which would make
    # every confidence 1.0; keep T in a sane range.
    return float(np.clip(t, T_MIN, T_MAX)) if np.isfinite(t) and t > 0 else 1.0


def threshold_for_acceptance(val_scores: np.ndarray, accept: float = 0.95) -> float:
    """Novelty-score threshold that accepts ``accept`` of reference validation cells.

    Cells with ``score > threshold`` are called Unknown.
    """
    if not 0 < accept <= 1:
        raise ValueError("accept must be in (0, 1]")
    s = np.asarray(val_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("inf")
    return float(np.quantile(s, accept))
