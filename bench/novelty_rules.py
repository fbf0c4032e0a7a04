"""Candidate rejection rules compared by bench/novelty_stress.py on the same trained models.

Each rule takes the model's :class:`~cellannot_core.novelty.LatentReference`, the query's latent
coordinates, predicted classes, calibrated probabilities and stored novelty scores, and returns
``(score, unknown)``. ``class_median`` is the rule before issue 12 (a per-class shift from the
median of the cells predicted as that class); ``global_q25`` is the one the default model now
uses (``knn_class``: one shift for the whole query from its lower quartile).
"""
from __future__ import annotations

import numpy as np

from cellannot_core.novelty import LatentReference, query_clusters
def _rule_class_factor(ref: LatentReference, g: np.ndarray, pred: np.ndarray, how: str) -> np.ndarray:
    unit, med = ref._class_null()
    null, y = ref._null_scores, ref.y
    t = unit.copy()
    if how == "none":
        return t
    if how == "global_median":
        return t * max(1.0, float(np.median(g / med[pred])))
    if how == "global_q25":
        return t * ref.query_shift(g, pred)  # the default rule's own shift
    for c in range(len(unit)):
        sel = pred == c
        if not sel.any():
            continue
        if how == "class_median":
            t[c] = unit[c] * max(1.0, float(np.median(g[sel])) / med[c])
        elif how == "class_q25":
            nc = null[y == c] if (y == c).any() else null
            t[c] = unit[c] * max(1.0, float(np.quantile(g[sel], 0.25)) / float(np.quantile(nc, 0.25)))
    return t


def _make_rule(how: str, maxprob_below: float | None = None):
    def rule(ref, latent, pred, proba, scores):
        g = scores["knn_graph"] if "knn_graph" in scores else ref.knn_graph(latent)
        pred = np.asarray(pred, dtype=np.int64)
        s = g / _rule_class_factor(ref, g, pred, how)[pred]
        unknown = s > 1.0
        if maxprob_below is not None:
            unknown |= proba.max(1) < maxprob_below
        return s, unknown
    return rule


def _bh(p: np.ndarray, alpha: float) -> np.ndarray:
    """Benjamini-Hochberg rejections at level ``alpha``."""
    m = len(p)
    order = np.argsort(p)
    ok = p[order] <= alpha * np.arange(1, m + 1) / m
    out = np.zeros(m, dtype=bool)
    if ok.any():
        out[order[: np.flatnonzero(ok).max() + 1]] = True
    return out


def _make_bh_rule(alpha: float, shift: str = "q25", or_unit: bool = False):
    def rule(ref, latent, pred, proba, scores):
        g = scores["knn_graph"] if "knn_graph" in scores else ref.knn_graph(latent)
        pred = np.asarray(pred, dtype=np.int64)
        unit, _ = ref._class_null()
        r_q, r_n = g / unit[pred], np.sort(ref._null_scores / unit[ref.y])
        q = 0.25 if shift == "q25" else 0.5
        f = max(1.0, float(np.quantile(r_q, q)) / float(np.quantile(r_n, q)))
        s = r_q / f
        pv = (1.0 + len(r_n) - np.searchsorted(r_n, s, side="left")) / (len(r_n) + 1.0)
        unknown = _bh(pv, alpha)
        if or_unit:
            unknown |= s > float(np.quantile(r_n, 0.95)) / float(np.quantile(r_n, 0.95))
        return s, unknown
    return rule


def _leiden(z: np.ndarray) -> np.ndarray:
    """The default rule's own query clusters (Leiden on the 15-NN graph)."""
    return query_clusters(z)


def _vote(s: np.ndarray, cl: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Every cluster whose median score is above 1 is Unknown as a whole (``out`` changed in place)."""
    for c in np.unique(cl):
        sel = cl == c
        if np.median(s[sel]) > 1.0:
            out[sel] = True
    return out


def _make_vote_rule(keep_minority: bool):
    base = _make_rule("global_q25")

    def rule(ref, latent, pred, proba, scores):
        s, unknown = base(ref, latent, pred, proba, scores)
        out = unknown.copy() if keep_minority else np.zeros_like(unknown)
        return s, _vote(s, _leiden(latent), out)
    return rule


def _make_vote_q99_rule():
    base = _make_rule("global_q25")

    def rule(ref, latent, pred, proba, scores):
        s, unknown = base(ref, latent, pred, proba, scores)
        unit, _ = ref._class_null()
        bar = float(np.quantile(ref._null_scores / unit[ref.y], 0.99)) / float(np.quantile(ref._null_scores / unit[ref.y], 0.95))
        return s, _vote(s, _leiden(latent), s > bar)
    return rule


def _mnn(latent: np.ndarray, ref_latent: np.ndarray, k: int = 10) -> np.ndarray:
    """Query cells that are mutual nearest neighbours (k) of at least one reference cell."""
    from sklearn.neighbors import NearestNeighbors

    _, q2r = NearestNeighbors(n_neighbors=min(k, len(ref_latent))).fit(ref_latent).kneighbors(latent)
    _, r2q = NearestNeighbors(n_neighbors=min(k, len(latent))).fit(latent).kneighbors(ref_latent)
    hit = np.zeros((len(ref_latent), len(latent)), dtype=bool) if len(latent) * len(ref_latent) < 5e7 else None
    if hit is not None:
        hit[np.repeat(np.arange(len(ref_latent)), r2q.shape[1]), r2q.ravel()] = True
        return hit[q2r, np.arange(len(latent))[:, None]].any(1)
    rset = [set(x) for x in r2q]
    return np.array([any(i in rset[j] for j in q2r[i]) for i in range(len(latent))])


def _reverse_ratio(ref: LatentReference, latent: np.ndarray, k: int = 10) -> np.ndarray:
    """Per reference class: median over its reference cells of (mean distance to the k nearest
    query cells) / (mean distance to the k nearest other reference cells)."""
    from sklearn.neighbors import NearestNeighbors

    d_rq, _ = NearestNeighbors(n_neighbors=min(k, len(latent))).fit(latent).kneighbors(ref.latent)
    d_rr, _ = NearestNeighbors(n_neighbors=min(k + 1, len(ref.latent))).fit(ref.latent).kneighbors(ref.latent)
    r = d_rq.mean(1) / np.maximum(d_rr[:, 1:].mean(1), 1e-12)
    unit, _ = ref._class_null()
    return np.array([np.median(r[ref.y == c]) if (ref.y == c).any() else np.nan for c in range(len(unit))])


def _make_shift_rule(kind: str, vote: bool = True):
    def rule(ref, latent, pred, proba, scores):
        g = scores["knn_graph"] if "knn_graph" in scores else ref.knn_graph(latent)
        pred = np.asarray(pred, dtype=np.int64)
        unit, med = ref._class_null()
        F = ref.query_shift(g, pred)
        f = np.full(len(unit), F)
        if kind == "mnn":
            mnn = _mnn(latent, ref.latent)
            for c in range(len(unit)):
                sel = (pred == c) & mnn
                if sel.sum() >= 5:
                    f[c] = max(F, float(np.median(g[sel])) / med[c])
        elif kind.startswith("class_q"):
            q = int(kind[7:]) / 100
            for c in range(len(unit)):
                sel = pred == c
                nc = ref._null_scores[ref.y == c] if (ref.y == c).any() else ref._null_scores
                if sel.sum() >= 5:
                    f[c] = max(F, float(np.quantile(g[sel], q)) / float(np.quantile(nc, q)))
        elif kind == "reverse":
            rho = _reverse_ratio(ref, latent)
            f = np.maximum(F, np.where(np.isfinite(rho), rho, F))
        s = g / (unit[pred] * f[pred])
        if not vote:
            return s, s > 1.0
        r0 = ref._null_scores / unit[ref.y]
        return s, _vote(s, _leiden(latent), s > float(np.quantile(r0, 0.99) / np.quantile(r0, 0.95)))
    return rule


def _make_whole_class_rule(min_accepted: float = 0.0):
    """Global shift + cluster vote; a predicted class none of whose clusters is accepted (it is
    shifted as a whole) is measured against its own median shift instead."""
    def rule(ref, latent, pred, proba, scores):
        g = scores["knn_graph"] if "knn_graph" in scores else ref.knn_graph(latent)
        pred = np.asarray(pred, dtype=np.int64)
        unit, med = ref._class_null()
        F = ref.query_shift(g, pred)
        r0 = ref._null_scores / unit[ref.y]
        bar = float(np.quantile(r0, 0.99) / np.quantile(r0, 0.95))
        cl = _leiden(latent)

        def decide(f):
            s = g / (unit[pred] * f[pred])
            return s, _vote(s, cl, s > bar)
        f = np.full(len(unit), F)
        s, out = decide(f)
        for c in range(len(unit)):
            sel = pred == c
            if sel.sum() >= 5 and (~out[sel]).mean() <= min_accepted:
                f[c] = max(F, float(np.median(g[sel])) / med[c])
        return decide(f)
    return rule


def _make_link_rule(min_ratio: float | None):
    """The default's own score (``knn_class``), then a rejected query cluster is accepted when it
    continues an accepted cluster of the same predicted class in the query's 15-NN graph: linked to
    it by ``min_ratio`` times the edges expected between random clusters of their sizes, or (``None``)
    when that cluster is its strongest link and above random; repeated until nothing changes."""
    from cellannot_core.novelty import GRAPH_K, query_graph

    def rule(ref, latent, pred, proba, scores):
        pred = np.asarray(pred, dtype=np.int64)
        s = ref.knn_class(latent, pred, graph=scores.get("knn_graph"))
        cl = _leiden(latent)
        k_n = cl.max() + 1
        nb = query_graph(latent).idx[:, 1:GRAPH_K + 1]
        edges = np.zeros((k_n, k_n))
        np.add.at(edges, (np.repeat(cl, nb.shape[1]), cl[nb.ravel()]), 1)
        edges = edges + edges.T
        np.fill_diagonal(edges, 0)
        n = np.bincount(cl, minlength=k_n).astype(float)
        ratio = edges / np.maximum(np.outer(n, n) / n.sum() ** 2 * edges.sum(), 1e-9)
        med = np.array([np.median(s[cl == k]) for k in range(k_n)])
        lead = np.array([np.bincount(pred[cl == k]).argmax() for k in range(k_n)])
        accepted = med <= 1.0
        changed = True
        while changed:
            changed = False
            for k in np.flatnonzero(~accepted):
                if min_ratio is None:
                    links = [int(np.argmax(ratio[k]))] if ratio[k].max() > 1.0 else []
                else:
                    links = list(np.flatnonzero(ratio[k] >= min_ratio))
                if any(accepted[j] and lead[j] == lead[k] for j in links):
                    accepted[k] = changed = True
        unknown = np.where(accepted[cl] & (med[cl] > 1.0), False, s > 1.0)
        return np.where(unknown, s + 10.0, s), unknown
    return rule


RULES = {  # the full list of candidates measured (BENCHMARKS.md) is kept in CANDIDATES; the suite prints RULES
    "class_median": _make_rule("class_median"),
    "global_q25": _make_rule("global_q25"),
}
CANDIDATES = {
    "class_median": _make_rule("class_median"),
    "class_none": _make_rule("none"),
    "class_q25": _make_rule("class_q25"),
    "global_median": _make_rule("global_median"),
    "global_q25": _make_rule("global_q25"),
    "global_q25|p<0.5": _make_rule("global_q25", 0.5),
    "bh05_q25": _make_bh_rule(0.05),
    "bh10_q25": _make_bh_rule(0.10),
    "q25+vote_all": _make_vote_rule(False),
    "q25+vote_keep": _make_vote_rule(True),
    "q25+vote+q99": _make_vote_q99_rule(),
    "class_q10+vote": _make_shift_rule("class_q10"),
    "mnn+vote": _make_shift_rule("mnn"),
    "whole_class": _make_whole_class_rule(0.0),
    "link_strongest": _make_link_rule(None),
    "link_2x": _make_link_rule(2.0),
    "link_6x": _make_link_rule(6.0),
}
