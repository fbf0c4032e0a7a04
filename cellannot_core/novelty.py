"""Novelty (out-of-distribution) scores. Higher = more likely a cell type the reference lacks.

Scores that need the reference (kNN, Mahalanobis) are fitted on reference training latents.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy.special import logsumexp

from ._constants import nn_jobs
from .calibration import softmax

GRAPH_K = 15  # neighbours of the smoothing graph (scanpy's default n_neighbors)
LOGIT_K = 50  # knn_logit: the k-th nearest reference cell (CLAMS kang_ctrl: k = 10 / 20 / 100 did no better)
CLASS_UNIT = 0.95  # knn_class: 1 = this quantile of the reference cells of the predicted class
#: a class with fewer reference cells than this cannot bound its own CLASS_UNIT quantile: the chance that all of
#: its cells fall below that quantile, CLASS_UNIT ** n, is over 5% (59 for the 95th percentile)
FEW_REFERENCE_CELLS = int(np.ceil(np.log(0.05) / np.log(CLASS_UNIT)))
SINGLE_CELL_UNIT = 0.99  # knn_class: a cell of an accepted query cluster is Unknown beyond this reference quantile
WHOLE_CLASS = True  # knn_class step 3 (see its docstring)
SHIFT_QUANTILE = 0.25  # knn_class: the query shift compares this quantile of query and reference (breakdown 75%)
# knn_class: the study shift shared by the query's classes (see LatentReference.shared_shift)
STUDY_SHIFT_EPS = 0.05  # normalised counts (per 1e4) added to both means: a pseudo-count for unexpressed genes
STUDY_SHIFT_MIN_CELLS = 20  # a class counts with this many query cells and matched reference cells
STUDY_SHIFT_MIN_CLASSES = 3  # the median over classes needs at least three (one class cannot move it)
SAMPLE_MIN_CELLS = 50  # a query sample with this many cells gets its own shift (knn_class) and Unknown share (run card)
#: knn_class (and a baseline's median shift correction): the query's own shift (its factor F and step 3's
#: whole-class shifts) is estimated only when this many predicted classes have STUDY_SHIFT_MIN_CELLS cells: the
#: lower quartile of a query predicted as one type is that type's own distance, which a population the reference
#: lacks *is* (a query of one novel type accepted itself whole, however far it was); a novel type alone is often
#: predicted as two known ones, so two did not suffice (BENCHMARKS.md, "A query of one type": 53 of 126 novel queries
#: under half Unknown with 2, 22 with 3, seed 1); as many as the study shift's median needs. 1: always (the rule
#: before 2026-12-05); 2: until 2026-12-07
SHIFT_MIN_CLASSES = STUDY_SHIFT_MIN_CLASSES


def shift_estimable(pred: np.ndarray) -> bool:
    """Whether a query predicted as ``pred`` has the types to estimate its own shift from
    (:data:`SHIFT_MIN_CLASSES`)."""
    if SHIFT_MIN_CLASSES <= 1:
        return True
    counts = np.bincount(np.asarray(pred, dtype=np.int64)) if len(pred) else np.zeros(0, dtype=np.int64)
    return int((counts >= STUDY_SHIFT_MIN_CELLS).sum()) >= SHIFT_MIN_CLASSES


# --------------------------------------------------------------------------------------------
# the registry of novelty scores: one function per score, registered like models
# --------------------------------------------------------------------------------------------


class ScoreUnavailable(Exception):
    """A score this model cannot compute (e.g. a saved model predating it); left out when every
    score is asked for, an error when this score is asked for by name."""


class ScoreInputs:
    """What a score function gets: the model, the cells, and their logits and latent codes
    (computed on first use and shared by every score of one call), plus the scores computed so
    far in ``scores`` (``knn_class`` builds on ``knn_graph``)."""

    def __init__(self, model: Any, X: np.ndarray | None, *, logits: np.ndarray | None = None,
                 latent: np.ndarray | None = None, samples: np.ndarray | None = None) -> None:
        self._X = X
        self.model = model
        self.samples = samples  # per cell, its query sample's code (-1: none), for knn_class; or None
        self._logits, self._latent = logits, latent
        self.scores: dict[str, np.ndarray] = {}

    @property
    def X(self) -> np.ndarray:
        """The cells' expression; ``None`` when a query is labelled in chunks
        (:mod:`cellannot_core.streaming`), where a score that needs it is unavailable."""
        if self._X is None:
            raise ScoreUnavailable("this novelty score needs every cell's expression at once, which a query read in "
                                   "chunks does not keep; choose a score of the latent space or the logits")
        return self._X

    @property
    def logits(self) -> np.ndarray:
        if self._logits is None:
            self._logits = self.model.logits(self.X)
        return self._logits

    @property
    def latent(self) -> np.ndarray:
        if self._latent is None:
            self._latent = self.model.latent(self.X)
        return self._latent

    @property
    def reference(self) -> "LatentReference":
        if self.model.reference is None:
            raise RuntimeError("distance-based novelty needs fit_reference() after fit")
        return self.model.reference


ScoreFn = Callable[[ScoreInputs], np.ndarray]


@dataclass(frozen=True)
class NoveltyScore:
    """A registered score: ``fn`` scores query cells; ``validation`` scores reference validation
    cells (the null the threshold comes from) when that differs, e.g. graph-smoothed scores."""

    name: str
    fn: ScoreFn
    help: str
    validation: ScoreFn | None = None


NOVELTY_SCORES: dict[str, NoveltyScore] = {}


def register_score(name: str, *, help: str, validation: ScoreFn | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register ``fn(inputs: ScoreInputs) -> scores`` (higher = more novel) as ``name``.
    It is then computed for every run, offered wherever a novelty score is chosen (the models'
    ``ood_score`` hyper-parameter, the app's pages, ``cellannot models``) and compared in the bench."""
    def deco(fn: ScoreFn) -> ScoreFn:
        if name in NOVELTY_SCORES:
            raise ValueError(f"novelty score {name!r} is already registered")
        NOVELTY_SCORES[name] = NoveltyScore(name, fn, help, validation)
        return fn
    return deco


class _ScoreNames(Sequence):
    """The registered score names, in registration order, always current (a new registration is
    seen by every ``choices=OOD_METHODS``), plus fixed model-specific extras."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = tuple(extra)

    def _names(self) -> tuple[str, ...]:
        return tuple(NOVELTY_SCORES) + self.extra

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __add__(self, other) -> "_ScoreNames":
        return _ScoreNames(self.extra + tuple(other))

    def __repr__(self) -> str:
        return repr(self._names())


OOD_METHODS = _ScoreNames()
MODEL_SCORE_HELP = {  # scores some models add themselves (not in the registry)
    "elbo": "negative evidence lower bound of the cell's counts under the generative model (VAE family)",
}


def score_help(name: str) -> str:
    """One line on what a score measures ('' for an unknown name)."""
    spec = NOVELTY_SCORES.get(name)
    return spec.help if spec else MODEL_SCORE_HELP.get(name, "")


def asks_every_score(methods: Sequence[str]) -> bool:
    """Whether ``methods`` asks for every registered score (the bench and the app do; then
    models add their own scores, such as ``elbo``, too)."""
    return set(NOVELTY_SCORES) <= set(methods)


def energy_score(logits: np.ndarray) -> np.ndarray:
    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def maxprob_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 - softmax(logits, temperature).max(axis=1)


class LatentReference:
    """Reference latents (subsampled) for distance-based novelty scores, and optionally the
    reference cells' logits (for :meth:`knn_logit`)."""

    def __init__(self, latent: np.ndarray, y: np.ndarray, *, logits: np.ndarray | None = None, k: int = 10,
                 max_cells: int = 10000, seed: int = 0, expression: Any = None,
                 count_scale: np.ndarray | None = None, counts: Any = None) -> None:
        import scipy.sparse as sp

        latent = np.asarray(latent, dtype=np.float32)
        y = np.asarray(y)
        logits = None if logits is None else np.asarray(logits, dtype=np.float32)
        if latent.ndim != 2 or y.ndim != 1 or len(y) != len(latent) or (
                logits is not None and (logits.ndim != 2 or len(logits) != len(latent))):  # (a saved model's, edited)
            raise ValueError("reference latent codes, labels and logits of shapes that do not fit one another")
        expr = expression
        scale = None if count_scale is None or expr is None else np.asarray(count_scale, dtype=np.float64).ravel()
        if counts is not None and (expr is None or counts.shape != expr.shape):
            counts = None  # the counts of other cells (a split cut without them) give no scale
        if latent.shape[0] > max_cells:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(latent.shape[0], max_cells, replace=False))
            latent, y = latent[keep], y[keep]
            logits = None if logits is None else logits[keep]
            expr = None if expr is None else expr[keep]
            scale = None if scale is None else scale[keep]
            counts = None if counts is None else counts[keep]
        expr = None if expr is None else sp.csr_matrix(expr, dtype=np.float32)
        if scale is None and counts is not None:  # from the training cells' counts (those kept only)
            scale = self.count_scale_of(expr, counts)
        if expr is not None and expr.shape[0] != latent.shape[0]:
            raise ValueError(f"reference expression has {expr.shape[0]} rows for {latent.shape[0]} cells")
        if scale is not None and (scale.shape != (latent.shape[0],) or not np.all(np.isfinite(scale)) or np.any(scale < 0)):
            raise ValueError("reference count scale must hold one finite, non-negative number per cell")
        self.latent = latent
        self.y = y.astype(np.int64)
        self.logits = logits
        # the reference cells' log1p-normalised expression (the model's input), for shared_shift
        self.expression = expr
        # per cell, its counts over expm1(expression) (library size / 1e4): the counts come back
        # from the expression (reference_counts), for a model trained again with a new query
        self.count_scale = scale
        self.k = int(min(k, len(latent)))
        self._nn = None
        self._logit_nn = None
        self._maha = None
        self._null: tuple[np.ndarray, np.ndarray] | None = None
        self._null_scores: np.ndarray | None = None
        self.last_decision: dict | None = None  # knn_class's shifts of the cells it scored last (class_table)

    def knn(self, z: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        if self._nn is None:
            self._nn = NearestNeighbors(n_neighbors=self.k, n_jobs=nn_jobs()).fit(self.latent)
        d, _ = self._nn.kneighbors(np.asarray(z, dtype=np.float32))
        return d.mean(axis=1)

    def query_pool(self) -> int:
        """How many query cells a query's scores are smoothed and clustered among
        (:class:`QueryGraph`'s pool): as many as the reference cells of this index, whose own
        scores (the null) were smoothed among themselves, but at least :data:`QUERY_POOL_MIN` and at
        most :data:`QUERY_POOL_MAX`. A 15-cell neighbourhood in a query many times denser than the
        reference is smaller, averages less and leaves the far tail of known types higher than the
        null's: with one model, kang_ctrl -> a 10,000-cell resampled pbmc3k called 14.3% of its
        known cells Unknown, 7.4% of the same cells labelled 2,638 at a time (BENCHMARKS.md, "A query
        larger than the reference")."""
        return query_pool_size(len(self.latent))

    def knn_graph(self, z: np.ndarray, *, k: int = GRAPH_K) -> np.ndarray:
        """:meth:`knn` averaged over each cell's ``k`` nearest neighbours among the rows of ``z``
        (itself included; a ``z`` of more than :meth:`query_pool` rows among a seeded pool of that
        many): a property of the cells scored *together* (e.g. one query)."""
        return graph_smooth(z, self.knn(z), k=k, pool_max=self.query_pool())

    def knn_graph_reference(self, z_val: np.ndarray, *, k: int = GRAPH_K) -> np.ndarray:
        """The same score for reference validation cells, as the null of :meth:`knn_graph`.

        A validation cell's kNN score is averaged over its ``k`` nearest neighbours among the
        validation *and* reference training cells, the training cells scored leave-one-out
        (distance to the other training cells), so the neighbourhoods are as dense as a query's
        and every cell in them is scored like a new cell.
        """
        s_val = self.knn(z_val)
        self.knn(z_val[:1])  # builds the index
        d, _ = self._nn.kneighbors(self.latent, n_neighbors=min(self.k + 1, len(self.latent)))
        s_ref = d[:, 1:].mean(axis=1) if d.shape[1] > 1 else d[:, 0]
        pool = np.concatenate([self.latent, np.asarray(z_val, dtype=np.float32)])
        return graph_smooth(z_val, np.concatenate([s_ref, s_val]), k=k, pool=pool)

    def _class_null(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class: the :data:`CLASS_UNIT` quantile (at least that of all reference cells) and the
        median of the reference cells' knn_graph scores (each scored leave-one-out, smoothed among
        reference cells)."""
        if self._null is None:
            self.knn(self.latent[:1])  # builds the index
            d, _ = self._nn.kneighbors(self.latent, n_neighbors=min(self.k + 1, len(self.latent)))
            loo = d[:, 1:].mean(axis=1) if d.shape[1] > 1 else d[:, 0]
            # the reference's own graph, built apart: through query_graph's cache it would push out the
            # query's graph, which the cluster decisions then had to search again
            null = QueryGraph(self.latent).smooth(loo)
            self._null_scores = null
            n_cls = int(self.y.max()) + 1 if len(self.y) else 0
            unit, med = np.full(n_cls, np.nan), np.full(n_cls, np.nan)
            for c in range(n_cls):
                if (self.y == c).any():
                    unit[c], med[c] = np.quantile(null[self.y == c], CLASS_UNIT), np.median(null[self.y == c])
            # never 0 (a denominator): with very few genes many reference cells share one latent point
            tiny = float(null[null > 0].min()) if (null > 0).any() else 1.0
            fallback_u, fallback_m = max(float(np.quantile(null, CLASS_UNIT)), tiny), max(float(np.median(null)), tiny)
            # never stricter than the pooled reference: a large, homogeneous type has a tight null
            # and would otherwise reject a query's natural within-type variation (mouse pancreas
            # donor 1 -> 2: 11% of the query's beta cells)
            unit = np.where(np.isfinite(unit) & (unit > 0), np.maximum(unit, fallback_u), fallback_u)
            med = np.where(np.isfinite(med) & (med > 0), med, fallback_m)
            self._null = (unit, med)
        return self._null

    def query_shift(self, graph: np.ndarray, pred: np.ndarray, *, bounded: bool = True) -> float:
        """How much farther from the reference the query's known cells are than reference cells:
        ``max(1, Q(graph / median_c(pred)) / Q(null / median_c(y)))`` with ``Q`` the
        :data:`SHIFT_QUANTILE` quantile over *all* query cells (each scaled by its predicted
        class's reference median) and over the reference cells' leave-one-out null.

        One factor for the whole query, from its lower quartile: a quarter of the query's cells
        must be known for the estimate to hold, so novel cells cannot move it until they are over
        three quarters of the query, however they are spread over the predicted classes. A
        per-class factor (the rule before) is estimated from the cells predicted as that class,
        which a large novel population predicted as one class *is*: it raised that class's
        threshold until the novel cells were accepted (bench/novelty_stress.py). Likewise a query
        of fewer than :data:`SHIFT_MIN_CLASSES` predicted types (:func:`shift_estimable`) gets 1:
        its quartile would be those types' own distance. A query that is mostly novel (over three quarters)
        moves it as far as it lies: ``bounded``, it is at most :data:`~cellannot_core.calibration.FAR_QUERY_FACTOR`,
        beyond the shifts between studies of one tissue (a mouse pancreas query of a human PBMC reference
        lay 6.4 times as far and was accepted whole: found 2026-12-07).
        """
        from .calibration import FAR_QUERY_FACTOR

        _, med = self._class_null()
        g = np.asarray(graph, dtype=np.float64)
        pred = np.asarray(pred, dtype=np.int64)
        if len(g) == 0 or bounded and not shift_estimable(pred):  # (how far it lies is measured all the same: a
            return 1.0  # human PBMC query of a mouse pancreas model, labelled as two types, was not warned of, 2026-12-07)
        null = float(np.quantile(self._null_scores / med[self.y], SHIFT_QUANTILE))
        if not null > 0:  # a quarter of the reference at distance 0 (cells alike in very few genes)
            return 1.0
        ratio = float(np.quantile(g / med[pred], SHIFT_QUANTILE)) / null
        f = max(1.0, ratio) if np.isfinite(ratio) else 1.0
        return min(f, FAR_QUERY_FACTOR) if bounded else f

    def class_shifts(self, graph: np.ndarray, pred: np.ndarray, *, whole: np.ndarray | None = None) -> np.ndarray:
        """Per class, the shift its threshold is scaled by: the query's :meth:`query_shift`, or for
        the classes in ``whole`` (shifted as a whole, see :meth:`knn_class`) the median shift of the
        cells predicted as that class, never below the query's."""
        _, med = self._class_null()
        g = np.asarray(graph, dtype=np.float64)
        pred = np.asarray(pred, dtype=np.int64)
        f = np.full(len(med), self.query_shift(g, pred))
        for c in np.flatnonzero(whole) if whole is not None else ():
            sel = pred == c
            if sel.any():
                f[c] = max(f[c], float(np.median(g[sel])) / med[c])
        return f

    def sample_shifts(self, graph: np.ndarray, pred: np.ndarray, samples: np.ndarray | None) -> tuple[np.ndarray, dict[int, float]]:
        """Per cell, the query shift of its sample, and the factor of each sample that has its own.

        Samples of one query may differ in condition or depth (a stimulated half, a deeper run):
        one factor for the whole query then rejects the known cells of the farther samples as a
        group. A sample with :data:`SAMPLE_MIN_CELLS` cells gets ``max(1, F * m)``, ``F`` the
        query's :meth:`query_shift` and ``m`` the median, over the predicted classes with
        :data:`STUDY_SHIFT_MIN_CELLS` of its cells (at least :data:`STUDY_SHIFT_MIN_CLASSES`), of
        the ratio of the class's :data:`SHIFT_QUANTILE` quantile in the sample to that in the
        whole query. A condition moves every type of a sample; a novel population moves the one
        class it lands on, which the median over classes cannot follow (a sample of mostly novel
        cells has too few classes and keeps ``F``). A column that groups cell types rather than
        samples changes nothing: a class wholly inside one group has the ratio 1. Other cells
        keep ``F``."""
        from .calibration import FAR_QUERY_FACTOR

        g = np.asarray(graph, dtype=np.float64)
        pred = np.asarray(pred, dtype=np.int64)
        F = self.query_shift(g, pred)
        out, per = np.full(len(g), F), {}
        if samples is None or len(g) == 0:
            return out, per
        samples = np.asarray(samples, dtype=np.int64)
        if samples.shape != g.shape:
            raise ValueError(f"samples must hold one code per cell ({len(g)}), got shape {samples.shape}")
        whole_q = {int(c): float(np.quantile(g[pred == c], SHIFT_QUANTILE)) for c in np.unique(pred)}
        for s in np.unique(samples[samples >= 0]):
            sel = samples == s
            if sel.sum() < SAMPLE_MIN_CELLS:
                continue
            ratios = [float(np.quantile(g[sel & (pred == c)], SHIFT_QUANTILE)) / whole_q[int(c)]
                      for c in np.unique(pred[sel]) if (sel & (pred == c)).sum() >= STUDY_SHIFT_MIN_CELLS
                      and whole_q[int(c)] > 0]
            if len(ratios) >= STUDY_SHIFT_MIN_CLASSES:
                out[sel] = per[int(s)] = min(FAR_QUERY_FACTOR, max(1.0, F * float(np.median(ratios))))
        return out, per

    def knn_class(self, z: np.ndarray, pred: np.ndarray, *, graph: np.ndarray | None = None,
                  threshold: float = 1.0, confidence: np.ndarray | None = None,
                  samples: np.ndarray | None = None) -> np.ndarray:
        """The default rejection score; a cell is Unknown when it is above ``threshold``.

        1. ``s = knn_graph * (2 - p) / (unit_c * F)``: ``c`` the cell's predicted class, ``p`` the
           labeller's calibrated probability of it (``confidence``; none given: 1), ``unit_c`` the
           :data:`CLASS_UNIT` quantile of that class's reference cells (at least that of all
           reference cells), ``F`` the query's :meth:`query_shift` (one robust factor) of these
           scaled distances. The labeller's doubt is a second sign of novelty, independent of the
           distance: a cell far from the reference *and* unlike any one reference type counts up
           to twice as far (:func:`doubt_factor`). With ``samples`` (each cell's query sample), a
           sample's cells are measured against their sample's own shift (:meth:`sample_shifts`).
        2. Decisions by group (queries of more than ``2 * GRAPH_K`` cells): a query cluster
           (:func:`query_clusters`) whose median ``s`` is above ``threshold`` is novel as a
           group; a cell of an accepted cluster only beyond the reference's
           :data:`SINGLE_CELL_UNIT` quantile (its neighbours vouch for it).
        3. A predicted class that leads no accepted cluster is shifted as a whole (the query has
           no group of its cells near the reference, e.g. monocytes between studies): its cells
           are measured against the median shift of that class instead of the query's (or their
           sample's, when that is larger). Only when some class leads an accepted cluster and the
           query's own shift is within :data:`~cellannot_core.calibration.FAR_QUERY_FACTOR`: a query
           with no group near the reference, or as far as another tissue, is not a study's shift.

        Steps 1 and 3 estimate the query's shift from its own cells, which needs
        :data:`SHIFT_MIN_CLASSES` predicted types (:func:`shift_estimable`); a query of fewer types
        is measured against the reference as it is (``F`` = 1, no step 3).

        ``graph`` reuses already computed :meth:`knn_graph` scores of ``z``.
        """
        from .calibration import FAR_QUERY_FACTOR

        g_raw = self.knn_graph(z) if graph is None else np.asarray(graph, dtype=np.float64)
        g = g_raw * doubt_factor(confidence, len(g_raw))
        pred = np.asarray(pred, dtype=np.int64)
        unit, _ = self._class_null()
        f = self.class_shifts(g, pred)
        fc, per_sample = self.sample_shifts(g, pred, samples)
        s = g / (unit[pred] * fc)
        z = np.asarray(z, dtype=np.float32)
        each = {"query_shift": float(f[0]) if len(f) else 1.0, "cell_shifts": fc, "sample_shifts": per_sample,
                "shift_estimated": shift_estimable(pred), "query_far": self.query_shift(g, pred, bounded=False)}
        self.last_decision = {"n": len(g), "shifts": f, "whole": np.zeros(len(unit), dtype=bool), "graph": g_raw,
                              "latent": z, **each}
        if len(s) < 2 * GRAPH_K:
            return s
        cl = query_clusters(z, pool_max=self.query_pool())
        scale = self.single_cell_scale()

        def grouped(s: np.ndarray) -> np.ndarray:
            med = np.array([np.median(s[cl == k]) for k in range(cl.max() + 1)])
            return np.maximum(med[cl], s * scale)

        out = grouped(s)
        # the classes that lead no accepted cluster (a few stray accepted cells do not count)
        led = {int(np.bincount(pred[cl == k]).argmax()) for k in range(cl.max() + 1)
               if np.median(out[cl == k]) <= threshold}
        whole = np.array([(pred == c).any() and c not in led for c in range(len(unit))])
        # a class is shifted as a whole against the rest of the query, near the reference: not when no class is
        # near, nor when the query as a whole lies beyond the bound (a query of other cells, not a study's shift)
        whole &= WHOLE_CLASS and each["shift_estimated"] and bool(led) and each["query_far"] <= FAR_QUERY_FACTOR
        if whole.any():
            f = self.class_shifts(g, pred, whole=whole)
            fc = np.where(whole[pred], np.maximum(f[pred], fc), fc)
            out = grouped(g / (unit[pred] * fc))
        self.last_decision = {"n": len(g), "shifts": f, "whole": whole, "graph": g_raw, "latent": z, "clusters": cl,
                              **each}
        return out

    def measured_latent(self, n: int) -> np.ndarray | None:
        """The query's latent codes the last :meth:`knn_class` call measured when it removed the
        study shift (the query re-encoded without it, :meth:`shared_shift`), if that call scored
        ``n`` cells; else None (the model's own codes are what it measured). For the latent page."""
        last = self.last_decision or {}
        if last.get("study_shift") is None or last.get("n") != n or last.get("latent") is None:
            return None
        return last["latent"]

    def study_shift_summary(self) -> dict[str, Any]:
        """For the run card: whether the last :meth:`knn_class` call measured the query with the
        study shift its classes share removed (:func:`_knn_class`), and how many genes it moved
        more than twofold."""
        shift = (self.last_decision or {}).get("study_shift")
        if shift is None:
            return {"removed": False,
                    "how": "not removed: it needs the reference cells' expression (kept by models trained since "
                           f"2026-12-03) and {STUDY_SHIFT_MIN_CLASSES} predicted classes with "
                           f"{STUDY_SHIFT_MIN_CELLS} query cells and as many matching reference cells"}
        return {"removed": True, "n_genes_moved_2x": int(np.sum(np.abs(shift) > np.log(2))),
                "how": "the per-gene shift the query's predicted classes share (their median) was divided out of "
                       "the query before its distances to the reference were measured"}

    def single_cell_scale(self) -> float:
        """``Q95 / Q99`` of the reference's unit-scaled null: a lone cell counts as Unknown at
        the 99th percentile of the reference cells instead of the 95th."""
        unit, _ = self._class_null()
        r = self._null_scores / unit[self.y]
        return float(np.quantile(r, CLASS_UNIT) / np.quantile(r, SINGLE_CELL_UNIT))

    def class_table(self, graph: np.ndarray, pred: np.ndarray, threshold: float, *,
                    confidence: np.ndarray | None = None) -> list[dict]:
        """Per reference class: reference cells, the unit, the shift its threshold is scaled by
        (the query's, or its own when :meth:`knn_class` found the class shifted as a whole), the
        effective threshold on ``knn_graph * (2 - confidence)`` (``unit * shift * threshold``), query
        cells predicted as the class and how many of them are above that threshold. Uses the last
        :meth:`knn_class` call's shifts when it scored these cells. For the app's "why Unknown"
        table and the run card."""
        unit, med = self._class_null()
        last = self.last_decision
        if last is not None and last["n"] == len(graph) and last.get("graph") is not None:
            graph = last["graph"]  # the distances knn_class decided on (after the study shift was removed)
        g = np.asarray(graph, dtype=np.float64) * doubt_factor(confidence, len(graph))
        pred = np.asarray(pred, dtype=np.int64)
        if last is not None and last["n"] == len(g):
            f, whole = last["shifts"], last["whole"]
            fc = last.get("cell_shifts", f[pred])
        else:
            f, whole = self.class_shifts(g, pred), np.zeros(len(unit), dtype=bool)
            fc = f[pred]
        rows = []
        for c in range(len(unit)):
            sel = pred == c
            t = float(unit[c] * f[c] * threshold)
            rows.append({"class": c, "n_reference": int((self.y == c).sum()), "unit": float(unit[c]),
                         "reference_median": float(med[c]), "shift": float(f[c]),
                         "shifted_as_a_whole": bool(whole[c]), "threshold_knn_graph": t,
                         "n_predicted": int(sel.sum()),
                         "n_above_threshold": int((g[sel] > unit[c] * fc[sel] * threshold).sum())})
        return rows

    def knn_class_reference(self, z_val: np.ndarray, pred_val: np.ndarray) -> np.ndarray:
        """The same score for reference validation cells (the threshold's null): their
        :meth:`knn_graph_reference` over the class units, with no query shift and no
        :func:`doubt_factor`: the threshold is the distance a cell the labeller is sure of may have."""
        unit, _ = self._class_null()
        return self.knn_graph_reference(z_val) / unit[np.asarray(pred_val, dtype=np.int64)]

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

    def knn_logit(self, logits: np.ndarray, *, k: int = LOGIT_K) -> np.ndarray:
        """Euclidean distance between unit-length logit vectors (a monotone map of the cosine
        distance) to the ``k``-th nearest reference cell (``k`` shrinks to the reference size)."""
        from sklearn.neighbors import NearestNeighbors

        if self.logits is None:
            raise ValueError("this reference keeps no logits (a model saved before the knn_logit score): "
                             "train the model again to use knn_logit")
        k = int(max(1, min(k, len(self.logits))))
        if self._logit_nn is None or self._logit_nn.n_neighbors != k:
            self._logit_nn = NearestNeighbors(n_neighbors=k, n_jobs=nn_jobs()).fit(unit_rows(self.logits))
        d, _ = self._logit_nn.kneighbors(unit_rows(logits))
        return d[:, -1].astype(np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"ref_latent": self.latent, "ref_y": self.y}
        if self.logits is not None:
            out["ref_logits"] = self.logits
        if self.expression is not None:
            e = self.expression
            out.update({"ref_expr_data": e.data, "ref_expr_indices": e.indices.astype(np.int64),
                        "ref_expr_indptr": e.indptr.astype(np.int64), "ref_expr_shape": np.asarray(e.shape, np.int64)})
        if self.count_scale is not None:
            out["ref_count_scale"] = self.count_scale
        return out

    def reference_counts(self) -> Any | None:
        """The kept reference cells' raw counts on the model genes (CSR), or None when the model
        kept no count scale (trained before 2026-12-05, or on log-normalised data)."""
        if self.expression is None or self.count_scale is None:
            return None
        c = self.expression.copy()
        c.data = np.rint(np.expm1(c.data.astype(np.float64)) * np.repeat(self.count_scale, np.diff(c.indptr)))
        c = c.astype(np.float32)
        c.eliminate_zeros()
        return c

    @staticmethod
    def count_scale_of(expression: Any, counts: Any) -> np.ndarray | None:
        """Per cell, its counts over ``expm1`` of its log1p-normalised ``expression`` (the same
        cells and genes): ``library size / target sum``. None without counts of these cells (none
        given, another shape, or values that are not whole numbers: the data came log-normalised).
        :class:`LatentReference` takes it of the cells it keeps only (at most ``max_cells``)."""
        import scipy.sparse as sp

        if counts is None or expression is None or counts.shape != expression.shape:
            return None
        vals = counts.data if sp.issparse(counts) else np.asarray(counts)
        if not np.array_equal(vals, np.rint(vals)):
            return None
        num = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        e = sp.csr_matrix(expression, dtype=np.float64)  # a copy
        e.data = np.expm1(e.data)
        den = np.asarray(e.sum(axis=1), dtype=np.float64).ravel()
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    @staticmethod
    def expression_from_arrays(arrays: dict[str, np.ndarray]) -> Any:
        """The reference expression saved by :meth:`arrays` (keys without their prefix), or None."""
        import scipy.sparse as sp

        if "ref_expr_data" not in arrays:
            return None
        data, idx, ptr = arrays["ref_expr_data"], arrays["ref_expr_indices"], arrays["ref_expr_indptr"]
        shape = tuple(int(v) for v in np.asarray(arrays["ref_expr_shape"]).ravel())
        # a model file is untrusted: every index in range before scipy touches it
        if (len(shape) != 2 or min(shape) < 0 or len(ptr) != shape[0] + 1 or ptr[0] != 0 or ptr[-1] != len(idx)
                or len(data) != len(idx) or np.any(np.diff(ptr) < 0)
                or (len(idx) and (idx.min() < 0 or idx.max() >= shape[1])) or not np.all(np.isfinite(data))):
            raise ValueError("reference expression arrays are inconsistent")
        return sp.csr_matrix((data.astype(np.float32), idx.astype(np.int64), ptr.astype(np.int64)), shape=shape)

    def shared_shift(self, z: np.ndarray, X: Any, pred: np.ndarray) -> np.ndarray | None:
        """The study shift the query's predicted classes share, per gene (log scale), or None.

        A technology, culture or stimulation effect moves every cell type's genes the same way;
        a novel type differs from its predicted class in its own genes. Per predicted class with
        :data:`STUDY_SHIFT_MIN_CELLS` query cells: the log ratio of the query cells' mean
        normalised expression and that of the reference cells *of that class among their nearest
        reference neighbours* (so a reference of two conditions is compared with the query
        condition by condition; the class needs as many reference cells, and as many among those
        neighbours, counted with repeats), :data:`STUDY_SHIFT_EPS` added to both; the shift is the median
        over those classes (at least :data:`STUDY_SHIFT_MIN_CLASSES`, so the class a novel
        population lands on cannot move it). None without reference expression or enough classes.
        """
        if X is None or self.expression is None or self.expression.shape[1] != X.shape[1]:
            return None
        pred = np.asarray(pred, dtype=np.int64)
        matched = self.matched_means(z, pred)
        if matched is None:
            return None
        classes, ref_mean = matched
        sums = class_expression_sums(X, pred, classes)
        counts = np.array([(pred == c).sum() for c in classes], dtype=np.float64)
        return shift_from_means(sums / counts[:, None], ref_mean)

    def matched_means(self, z: np.ndarray, pred: np.ndarray) -> tuple[list[int], np.ndarray] | None:
        """The reference side of :meth:`shared_shift`: the classes that count and, per class, the
        mean normalised expression of its reference cells among the query cells' nearest reference
        neighbours (counted with repeats); None when fewer than :data:`STUDY_SHIFT_MIN_CLASSES` count
        or the model kept no reference expression."""
        import scipy.sparse as sp

        if self.expression is None:
            return None
        pred = np.asarray(pred, dtype=np.int64)
        self.knn(np.asarray(z[:1], dtype=np.float32))  # builds the index
        nn = self._nn.kneighbors(np.asarray(z, dtype=np.float32), return_distance=False)
        classes, weights = [], []
        for c in np.unique(pred):
            if (pred == c).sum() < STUDY_SHIFT_MIN_CELLS or (self.y == c).sum() < STUDY_SHIFT_MIN_CELLS:
                continue
            idx = nn[pred == c].ravel()
            idx = idx[self.y[idx] == c]
            if len(idx) >= STUDY_SHIFT_MIN_CELLS:
                classes.append(int(c))
                weights.append(np.bincount(idx, minlength=len(self.y)))
        if len(classes) < STUDY_SHIFT_MIN_CLASSES:
            return None
        ref_e = self.expression.copy()
        ref_e.data = np.expm1(ref_e.data)
        w = np.stack(weights).astype(np.float64)
        return classes, np.asarray((sp.csr_matrix(w / w.sum(1, keepdims=True)) @ ref_e).todense())


ROW_BLOCK = 10 * 2048
"""Rows of a large query worked on at a time where its expression is transformed (the study shift
measured and removed): the transient copies stay this small, and the models' inference batches (2,048
rows) fall where they fall for the whole query, so the latent codes are the same."""


def row_blocks(n: int, size: int | None = None):
    """``(start, stop)`` of consecutive blocks of ``size`` (default :data:`ROW_BLOCK`) rows covering
    ``n`` rows."""
    size = ROW_BLOCK if size is None else int(size)
    return ((a, min(n, a + size)) for a in range(0, n, size))


def class_expression_sums(X: Any, pred: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Per class in ``classes``, the sum over the cells predicted as it of their normalised
    expression (``expm1`` of the log1p ``X``, dense or sparse; a block of rows at a time): a query
    read in chunks adds these up."""
    import scipy.sparse as sp

    pred = np.asarray(pred, dtype=np.int64)
    out = np.zeros((len(classes), X.shape[1]), dtype=np.float64)
    X = sp.csr_matrix(X) if sp.issparse(X) else X
    for a, b in row_blocks(X.shape[0]):
        block, on = X[a:b], pred[a:b]
        for i, c in enumerate(classes):
            sel = np.flatnonzero(on == c)
            if len(sel) == 0:
                continue
            if sp.issparse(block):
                part = block[sel].astype(np.float64)
                part.data = np.expm1(part.data)
                out[i] += np.asarray(part.sum(axis=0)).ravel()
            else:
                out[i] += np.expm1(np.asarray(block[sel], dtype=np.float64)).sum(axis=0)
    return out


def shift_from_means(query_mean: np.ndarray, ref_mean: np.ndarray) -> np.ndarray:
    """Per gene, the median over classes of ``log((query mean + eps) / (reference mean + eps))``."""
    return np.median(np.log((query_mean + STUDY_SHIFT_EPS) / (ref_mean + STUDY_SHIFT_EPS)), axis=0)


def latent_without_shift(model, X: Any, shift: np.ndarray) -> np.ndarray:
    """``model``'s latent codes of ``X`` with the study ``shift`` removed (:func:`remove_shift`), a
    block of :data:`ROW_BLOCK` rows at a time (a million-cell query is never copied whole)."""
    parts = [np.asarray(model.latent(remove_shift(X[a:b], shift)), dtype=np.float32)
             for a, b in row_blocks(X.shape[0])]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def remove_shift(X: Any, shift: np.ndarray) -> Any:
    """Log1p-normalised expression ``X`` with a per-gene shift (log scale,
    :meth:`LatentReference.shared_shift`) divided out of its normalised values; zeros stay zero
    (a sparse ``X`` stays sparse)."""
    import scipy.sparse as sp

    f = np.exp(-np.asarray(shift, dtype=np.float64))
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float32, copy=True)
        out.data = np.log1p(np.expm1(out.data) * f[out.indices]).astype(np.float32)
        return out
    return np.log1p(np.expm1(np.asarray(X, dtype=np.float64)) * f).astype(np.float32)


def doubt_factor(confidence: np.ndarray | None, n: int) -> np.ndarray | float:
    """``2 - p`` for a labeller's calibrated probability ``p`` of its label (clipped to [0, 1]):
    1 for a cell it is sure of, up to 2 for one it cannot place; 1 when no ``confidence`` is given.

    Measured on the stress suite (``bench/novelty_stress.py``, 50 experiments, BENCHMARKS.md): scaling a
    query cell's kNN distance by it raised the worst novelty AUROC from 0.44 to 0.50 (pbmc3k as the
    reference, where novel T and NK cells sit as close to the reference as the query's shifted known
    cells, but the labeller hesitates over them); ``1 / p`` and ``1 + 2 (1 - p)`` measured alike.
    The threshold's null (reference validation cells) is not scaled: scaled, it rose wherever the
    reference's own validation cells are uncertain (a small or stimulated reference) and let large
    novel groups through (kang_sce without T cells: 85% of the novel cells Unknown -> 47%)."""
    if confidence is None:
        return 1.0
    p = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    if p.shape != (n,):
        raise ValueError(f"confidence must hold one value per cell ({n}), got shape {p.shape}")
    return 2.0 - p


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length, as Sun et al. (2022) normalise features, not
    centred (for an energy model the common level of the logits is log p(x), part of the
    evidence; centring measured worse on kang_ctrl, see BENCHMARKS.md); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def graph_smooth(z: np.ndarray, scores: np.ndarray, *, k: int = GRAPH_K, pool: np.ndarray | None = None,
                 pool_max: int | None = None) -> np.ndarray:
    """Mean of ``scores`` over each row of ``z``'s ``k`` nearest neighbours (Euclidean) in
    ``pool`` (default: ``z`` itself, through :func:`query_graph`, so each cell is its own
    nearest neighbour and a large query uses its neighbour pool); ``scores`` are per row of the
    pool (1-D, or 2-D: one column per quantity). ``k`` shrinks to the pool size."""
    from sklearn.neighbors import NearestNeighbors

    scores = np.asarray(scores, dtype=np.float64)
    if len(z) == 0:
        return np.zeros((0,) + scores.shape[1:])
    if pool is None:
        return query_graph(z, k=k, pool_max=pool_max).smooth(scores, k=k)
    z = np.asarray(z, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    k = int(max(1, min(k, len(pool))))
    _, idx = NearestNeighbors(n_neighbors=k, n_jobs=nn_jobs()).fit(pool).kneighbors(z)
    return scores[idx].mean(axis=1)


QUERY_POOL_MAX = 50_000  # a larger query finds its cells' neighbours among a seeded subsample this large
QUERY_POOL_MIN = 3_000  # the novelty rule's pool is never smaller (the stress suite's queries, up to 3,000 cells)


def query_pool_size(n_reference: int) -> int:
    """As many query cells as ``n_reference`` reference cells, but at least :data:`QUERY_POOL_MIN`
    and at most :data:`QUERY_POOL_MAX`: how many a query is smoothed and clustered among
    (:meth:`LatentReference.query_pool`) and trained with (``pipeline.training_query``)."""
    return int(min(QUERY_POOL_MAX, max(int(n_reference), QUERY_POOL_MIN)))


class QueryGraph:
    """The query's own k-NN graph in a latent space, computed once and shared by the label
    smoothing, ``knn_graph`` and the cluster decisions of ``knn_class`` (:func:`query_graph`).

    Up to :data:`QUERY_POOL_MAX` cells every cell's neighbours are its nearest query cells
    (itself included). A larger query draws its neighbours from a seeded random subsample of
    that many cells (the *pool*): each cell is averaged over its nearest pool cells, clusters
    are found on the pool's graph and every other cell joins the cluster of its nearest pool
    cell. Time and memory then grow linearly with the query (an atlas-sized query of a million
    cells needs one search against 50,000 cells, not a million-node graph), and the
    neighbourhoods stay dense enough to average a type's noise: 50,000 cells hold a
    thousand cells of a type making 2% of the query.
    """

    def __init__(self, z: np.ndarray, *, k: int = GRAPH_K, pool_max: int = QUERY_POOL_MAX, seed: int = 0) -> None:
        from sklearn.neighbors import NearestNeighbors

        z = np.asarray(z, dtype=np.float32)
        n = len(z)
        self.n, self.k = n, int(k)
        self.pool = None if n <= pool_max else np.sort(np.random.default_rng(seed).choice(n, pool_max, replace=False))
        P = z if self.pool is None else z[self.pool]
        kk = int(max(1, min(self.k + 1, len(P))))
        nn = NearestNeighbors(n_neighbors=kk, n_jobs=nn_jobs()).fit(P)
        self.idx = nn.kneighbors(z)[1].astype(np.int64)  # rows of P
        self._clusters: dict[tuple[float, int], np.ndarray] = {}

    @property
    def n_pool(self) -> int:
        return self.n if self.pool is None else len(self.pool)

    def smooth(self, values: np.ndarray, *, k: int = GRAPH_K) -> np.ndarray:
        """Mean of ``values`` (per query cell) over each cell's ``k`` nearest pool cells."""
        values = np.asarray(values, dtype=np.float64)
        v = values if self.pool is None else values[self.pool]
        k = int(max(1, min(k, self.idx.shape[1])))
        return v[self.idx[:, :k]].mean(axis=1)

    def clusters(self, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
        """Leiden clusters (modularity, igraph) of the pool's symmetrised ``k``-NN graph (self
        excluded); labels 0..K-1 for every query cell."""
        key = (float(resolution), int(seed))
        if key not in self._clusters:
            self._clusters[key] = self._leiden(resolution, seed)
        return self._clusters[key]

    def _leiden(self, resolution: float, seed: int) -> np.ndarray:
        import igraph as ig

        from .training.device import global_rng

        m = self.n_pool
        if m < 3:
            return np.zeros(self.n, dtype=np.int64)
        nb = self.idx if self.pool is None else self.idx[self.pool]  # the pool cells' neighbours among the pool
        kk = min(self.k, m - 1)
        rows = np.arange(m)[:, None]
        is_self = nb == rows
        # drop each cell itself (or, where a duplicate took its place, the farthest neighbour)
        drop = np.where(is_self.any(1), is_self.argmax(1), nb.shape[1] - 1)
        keep = np.ones_like(nb, dtype=bool)
        keep[np.arange(m), drop] = False
        nb = nb[keep].reshape(m, -1)[:, :kk]
        a, b = np.repeat(np.arange(m), nb.shape[1]), nb.ravel()
        pairs = np.unique(np.minimum(a, b) * m + np.maximum(a, b))
        pairs = pairs[pairs // m != pairs % m]
        graph = ig.Graph(n=m, edges=np.column_stack([pairs // m, pairs % m]).tolist())
        with global_rng(seed):  # igraph draws from Python's random module, which every thread shares
            member = graph.community_leiden(objective_function="modularity", resolution=resolution,
                                            n_iterations=2).membership
        member = np.unique(np.asarray(member), return_inverse=True)[1].astype(np.int64)
        return member if self.pool is None else member[self.idx[:, 0]]


_GRAPHS: dict[tuple, QueryGraph] = {}
_GRAPHS_LOCK = threading.Lock()


GRAPHS_KEPT = 3  # the query as encoded (label smoothing; the rule's pool) and encoded again without the study shift


def query_graph(z: np.ndarray, *, k: int = GRAPH_K, pool_max: int | None = None) -> QueryGraph:
    """The :class:`QueryGraph` of ``z`` (at least :data:`GRAPH_K` neighbours), reused while the
    same latent codes are asked for again (the last :data:`GRAPHS_KEPT` are kept, keyed by their
    content): one query's labelling, novelty score and clusters search its neighbours once."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    pool_max = QUERY_POOL_MAX if pool_max is None else int(pool_max)
    key = (z.shape, max(int(k), GRAPH_K), pool_max, hashlib.blake2b(memoryview(z).cast("B"), digest_size=16).digest())
    with _GRAPHS_LOCK:
        g = _GRAPHS.pop(key, None)
        if g is not None:
            _GRAPHS[key] = g  # most recently used last
    if g is None:
        g = QueryGraph(z, k=key[1], pool_max=pool_max)
        with _GRAPHS_LOCK:
            _GRAPHS[key] = g
            while len(_GRAPHS) > GRAPHS_KEPT:
                _GRAPHS.pop(next(iter(_GRAPHS)))
    return g


def query_clusters(z: np.ndarray, *, resolution: float = 1.0, seed: int = 0, pool_max: int | None = None) -> np.ndarray:
    """Leiden clusters of the query's :data:`GRAPH_K`-NN graph (see :class:`QueryGraph`); labels 0..K-1."""
    z = np.asarray(z, dtype=np.float32)
    if len(z) < 3:
        return np.zeros(len(z), dtype=np.int64)
    return query_graph(z, pool_max=pool_max).clusters(resolution=resolution, seed=seed)


# --------------------------------------------------------------------------------------------
# the built-in scores (registration order = display order)
# --------------------------------------------------------------------------------------------


@register_score("knn", help="mean distance to the k nearest reference cells in the model's latent space")
def _knn(inp: ScoreInputs) -> np.ndarray:
    return inp.reference.knn(inp.latent)


@register_score("knn_graph", help=f"the kNN score averaged over the cell's {GRAPH_K} nearest neighbours among the "
                                  "cells scored together (the query's own neighbourhood graph): novel types form "
                                  "groups, noise averages out",
                validation=lambda inp: inp.reference.knn_graph_reference(inp.latent))
def _knn_graph(inp: ScoreInputs) -> np.ndarray:
    return inp.reference.knn_graph(inp.latent)


@register_score("knn_class", help="the distance to the nearest reference cells (as knn_graph) times (2 - the "
                                  "label's calibrated probability: a cell the labeller "
                                  "cannot place counts up to twice as far), relative to the cell's predicted "
                                  "class: 1 = the 95th percentile of "
                                  "that class's reference cells (scored leave-one-out, smoothed the same way; at "
                                  "least that of all reference cells), times one shift factor for the whole query "
                                  "(its lower quartile against the reference's: novel cells cannot move it unless "
                                  "they are over three quarters of the query), or each query sample's own (the "
                                  "median over its predicted classes); decided by group: a query cluster "
                                  "(Leiden) whose median cell is above the threshold (about 1, set on held-out "
                                  "reference cells) is Unknown as a group, a cell of another "
                                  "cluster only beyond the reference's 99th percentile",
                validation=lambda inp: inp.reference.knn_class_reference(inp.latent, inp.logits.argmax(1)))
def _knn_class(inp: ScoreInputs) -> np.ndarray:
    """:meth:`LatentReference.knn_class`, on the query re-encoded without the study shift its
    classes share (:meth:`LatentReference.shared_shift`) when the model kept its reference cells'
    expression and the query's expression is at hand (a query read in chunks has it done by
    :mod:`cellannot_core.streaming`, which passes the re-encoded latent codes and no expression)."""
    thr = inp.model.threshold if np.isfinite(inp.model.threshold) else 1.0
    ref, pred = inp.reference, inp.logits.argmax(1)
    z, graph = inp.latent, inp.scores.get("knn_graph")
    shift = ref.shared_shift(z, inp._X, pred)
    if shift is not None:
        z, graph = latent_without_shift(inp.model, inp._X, shift), None
    out = ref.knn_class(z, pred, graph=graph, threshold=thr, confidence=label_confidence(inp), samples=inp.samples)
    ref.last_decision["study_shift"] = shift
    return out


def label_confidence(inp: ScoreInputs) -> np.ndarray:
    """The model's calibrated probability of each cell's label (its temperature applied)."""
    return 1.0 - maxprob_score(inp.logits, inp.model.temperature)


@register_score("mahalanobis", help="Mahalanobis distance to the nearest reference class centre in latent space "
                                    "(tied covariance)")
def _mahalanobis(inp: ScoreInputs) -> np.ndarray:
    return inp.reference.mahalanobis(inp.latent)


@register_score("knn_logit", help=f"distance to the {LOGIT_K}th nearest reference cell once every cell's logit vector "
                                  "is scaled to unit length (deep nearest neighbours, Sun et al. 2022, on the "
                                  "logits): high for a cell whose mix of class evidence few reference cells share, "
                                  "e.g. a type between two known ones")
def _knn_logit(inp: ScoreInputs) -> np.ndarray:
    if inp.reference.logits is None:
        raise ScoreUnavailable("this saved model keeps no reference logits (it predates the knn_logit score): "
                               "train it again or choose another novelty score")
    return inp.reference.knn_logit(inp.logits)


@register_score("maxprob", help="1 - calibrated maximum class probability")
def _maxprob(inp: ScoreInputs) -> np.ndarray:
    return maxprob_score(inp.logits, inp.model.temperature)


@register_score("energy", help="energy E(x) = -logsumexp(logits) (= -log p(x) up to a constant)")
def _energy(inp: ScoreInputs) -> np.ndarray:
    return energy_score(inp.logits)
