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
    t = float(np.clip(t, T_MIN, T_MAX)) if np.isfinite(t) and t > 0 else 1.0
    return _no_more_confident_than_shown(np.asarray(logits, dtype=np.float64), np.asarray(y), t)


def _no_more_confident_than_shown(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    """When every validation cell is called correctly, raise ``t`` until the mean confidence on
    them is at most ``(n + 1) / (n + 2)`` (Laplace's rule of succession).

    On a validation set the model fits perfectly the NLL keeps falling as T -> 0 (``logreg``
    once fitted T = 0.05, so every cell, novel ones included, got confidence 1.0). ``n`` correct
    calls out of ``n`` show an accuracy of about ``(n + 1) / (n + 2)``, not 1: confidences may not
    claim more than the validation set can show.
    """
    n = len(y)
    n_correct = int((logits.argmax(1) == y).sum())
    bound = (n_correct + 1.0) / (n + 2.0)

    def mean_conf(temp: float) -> float:
        return float(softmax(logits, temp).max(1).mean())

    # Only where the NLL has no minimum (every validation cell correct): elsewhere the NLL's own
    # optimum stands (forcing the bound there raised the query's ECE, e.g. 0.089 -> 0.179 on a
    # pancreas task whose validation accuracy was 0.82).
    if n == 0 or n_correct < n or mean_conf(t) <= bound:
        return t
    lo, hi = np.log(t), np.log(T_MAX)
    if mean_conf(T_MAX) > bound:
        return T_MAX
    for _ in range(60):  # mean confidence falls as T grows: bisection on log T
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_conf(float(np.exp(mid))) > bound else (lo, mid)
    return float(np.exp(hi))


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


SHIFTABLE_SCORES = ("knn", "knn_graph", "mahalanobis", "knn_logit")  # positive distances: a study/technology shift scales them


#: The largest shift of a whole query that a rule allows for (a baseline's median shift factor, ``knn_class``'s
#: query and sample shifts), and where a run warns that the query is mostly unlike its reference. Shifts between
#: studies, donors, an interferon stimulation and a technology of one tissue measured 1.0-1.97 (``logreg``) and
#: 1.05-2.32 (``knn_class``'s query shift; one experiment at 3.14 whose 39% novel T cells raised it), pancreas
#: against blood 2.56-6.4: a shift beyond this is not a study's but a query of other cells, which the shift
#: correction's assumption (most of the query is of the reference's types) does not cover. Until 2026-12-07 it
#: warned only, and a mouse pancreas query of a human PBMC reference was labelled whole: 0% Unknown (README,
#: "How far to trust an Unknown call").
FAR_QUERY_FACTOR = 2.5


def shift_factor(val_scores_median: float, query_scores: np.ndarray) -> float:
    """``max(1, median(query scores) / median(validation scores))``; 1 when undefined.

    Distances grow for every query cell when the query comes from another study or technology,
    so a threshold taken on reference validation cells alone rejects many known cells. Scaling
    it by this factor assumes the bulk of the query is known cell types (true while novel cells
    are under half of the query); it never lowers the threshold.
    """
    s = np.asarray(query_scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0 or not np.isfinite(val_scores_median) or val_scores_median <= 0:
        return 1.0
    return max(1.0, float(np.median(s)) / float(val_scores_median))


def query_threshold(threshold: float, method: str, correction: str, val_scores_median: float,
                    query_scores: np.ndarray, pred: np.ndarray | None = None) -> tuple[float, float]:
    """The threshold applied to a query's novelty scores, and the shift factor used.

    ``pred``, each query cell's predicted class: a query predicted as too few types
    (:func:`~cellannot_core.novelty.shift_estimable`) gets no shift factor, as ``knn_class``'s
    does: its median is its own types' distance, which a population the reference lacks *is* (a
    query of one novel type, or one cell, accepted itself however far it was: found 2026-12-07). The factor is
    at most :data:`FAR_QUERY_FACTOR`."""
    from .novelty import shift_estimable

    if correction != "median" or method not in SHIFTABLE_SCORES:
        return float(threshold), 1.0
    if pred is not None and not shift_estimable(pred):
        return float(threshold), 1.0
    f = min(shift_factor(val_scores_median, query_scores), FAR_QUERY_FACTOR)
    return float(threshold) * f, f
