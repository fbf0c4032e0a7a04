"""Why a cell got its label, for every model: the reference's marker genes of the predicted
type, and whether the query cells given that type express them.

Model-agnostic on purpose (TabNet's masks, where present, are on the Explain page beside it):
the evidence is in the data the model was trained on. For each reference class ``c``, its
markers are the genes whose mean log-expression in ``c`` most exceeds the highest mean among the
other classes. A group of query cells labelled ``c`` *supports* the label on a marker when its
mean reaches half of the reference class's, and *contradicts* it otherwise; a group that lacks
most of ``c``'s markers was probably labelled ``c`` for want of a better class.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

SUPPORT_FRACTION = 0.5  # a marker supports the label when the group's mean reaches this share of the class's


def class_means(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean of the rows of ``X`` per class ``0..n_classes-1`` (NaN rows for absent classes)."""
    out = np.full((n_classes, X.shape[1]), np.nan)
    for c in range(n_classes):
        rows = np.asarray(y) == c
        if rows.any():  # accumulate in float64 without copying the whole matrix
            out[c] = X[rows].mean(0, dtype=np.float64)
    return out.astype(np.float32)


def class_markers(ref_mean: np.ndarray, genes: Sequence[str], classes: Sequence[str], *, n: int = 10) -> dict[str, list[int]]:
    """Per class, the indices of its ``n`` top markers (class mean minus the largest other-class
    mean, highest first; only genes where that margin is positive)."""
    m = np.nan_to_num(np.asarray(ref_mean, dtype=np.float64), nan=-np.inf)
    out = {}
    for c, name in enumerate(classes):
        others = np.delete(m, c, axis=0)
        margin = m[c] - (others.max(0) if len(others) else 0.0)
        order = [int(i) for i in np.argsort(-margin) if np.isfinite(margin[i]) and margin[i] > 0][:n]
        out[str(name)] = order
    return out


def marker_evidence(ref_mean: np.ndarray, group_mean: np.ndarray, genes: Sequence[str], classes: Sequence[str],
                    label: str, *, n: int = 10) -> pd.DataFrame:
    """For the query cells labelled ``label`` (their mean ``group_mean`` over the model genes):
    each of the class's reference markers with its reference mean, the highest other class's
    mean, the group's mean and ``supports`` (the group reaches :data:`SUPPORT_FRACTION` of the
    class mean)."""
    c = list(map(str, classes)).index(str(label))
    idx = class_markers(ref_mean, genes, classes, n=n)[str(label)]
    others = np.delete(np.asarray(ref_mean, dtype=np.float64), c, axis=0)
    rows = []
    for i in idx:
        ref_c = float(ref_mean[c, i])
        grp = float(group_mean[i])
        rows.append({"gene": str(genes[i]), "reference_class_mean": ref_c,
                     "other_classes_max": float(np.nanmax(others[:, i])) if len(others) else float("nan"),
                     "query_group_mean": grp, "supports": bool(grp >= SUPPORT_FRACTION * ref_c)})
    return pd.DataFrame(rows, columns=["gene", "reference_class_mean", "other_classes_max", "query_group_mean",
                                       "supports"])


def nearest_types(z: np.ndarray, ref_latent: np.ndarray, ref_y: np.ndarray, classes: Sequence[str], *,
                  k: int = 10, quantile: float = 0.95) -> pd.DataFrame:
    """Where one cell sits among the reference types in the model's latent space.

    For each type: its share of the cell's ``k`` nearest reference cells, the cell's mean
    distance to the type's ``k`` nearest cells, and that distance over the type's own usual one
    (the ``quantile`` of the same distance for the type's reference cells to the rest of the
    type): at most 1 = as close as the type's own cells usually are; well above 1 = far from it.
    Sorted by that ratio.
    """
    from sklearn.neighbors import NearestNeighbors

    z = np.asarray(z, dtype=np.float64).reshape(1, -1)
    r, y = np.asarray(ref_latent, dtype=np.float64), np.asarray(ref_y)
    kk = int(min(k, len(r)))
    _, idx = NearestNeighbors(n_neighbors=kk).fit(r).kneighbors(z)
    rows = []
    for c, name in enumerate(classes):
        rc = r[y == c]
        if len(rc) < 2:
            continue
        kc = int(min(k, len(rc) - 1))
        nn = NearestNeighbors(n_neighbors=kc + 1).fit(rc)
        d_cell = float(nn.kneighbors(z, n_neighbors=kc)[0].mean())
        d_own = nn.kneighbors(rc, n_neighbors=kc + 1)[0][:, 1:].mean(1)  # leave the cell itself out
        usual = float(np.quantile(d_own, quantile))
        rows.append({"type": str(name), "share_of_neighbours": float(np.mean(y[idx[0]] == c)), "distance": d_cell,
                     "usual_distance": usual, "ratio": d_cell / usual if usual > 0 else float("inf")})
    return pd.DataFrame(rows).sort_values("ratio").reset_index(drop=True)
