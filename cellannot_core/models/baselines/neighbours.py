"""Neighbour-vote baselines: ``ingest`` (scanpy's ingest) and ``knn`` (a kNN classifier in
the reference PCA space)."""
from __future__ import annotations

import numpy as np

from ...data._types import Split
from ..registry import HParam, Supports, register
from ._common import _KNN_K, _N_PCS, _OOD, SklearnModel, _dense


class _VoteModel(SklearnModel):
    """Reference PCA coordinates + labels; probabilities are (weighted) neighbour votes."""

    def _fit(self, train: Split, val: Split) -> None:
        self.ref_pcs = self.latent(train.X)
        self.ref_y = np.asarray(train.y, dtype=np.int64)
        self._index = None

    def _votes(self, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        labels = self.ref_y[idx]  # cells x k
        p = np.zeros((idx.shape[0], self.n_classes))
        for c in range(self.n_classes):
            p[:, c] = np.where(labels == c, weights, 0.0).sum(1)
        s = p.sum(1, keepdims=True)
        return np.divide(p, s, out=np.full_like(p, 1.0 / self.n_classes), where=s > 0)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._state_arrays(), "ref_pcs": self.ref_pcs, "ref_y": self.ref_y}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state_arrays(arrays)
        self.ref_pcs, self.ref_y = arrays["ref_pcs"], arrays["ref_y"].astype(np.int64)
        self._index = None


@register("ingest", order=32, supports=Supports(latent=True, per_cell=False),
          description="scanpy ingest: query projected on the reference PCA, majority vote of the 15 nearest "
                      "reference cells; confidence = the vote share.",
          hparams={
              "n_pcs": _N_PCS,
              "n_neighbors": HParam(15, "reference neighbours voting (scanpy's default)", low=1, high=200),
              "center": HParam("query", "centre the projected cells on their own mean (scanpy ingest) or on the "
                               "reference mean", choices=("query", "reference")),
              "backend": HParam("scanpy", "'scanpy' = sc.tl.ingest's approximate search (numba, slow the first "
                                "time); 'exact' = the same projection with an exact kNN search",
                                choices=("scanpy", "exact"), advanced=True),
              "ood_score": _OOD, "knn_k": _KNN_K,
          })
class Ingest(_VoteModel):
    """scanpy's ingest projects ``X - mean(X)`` (the mapped cells' own mean when the reference
    PCA was zero-centred) on the reference loadings; batches smaller than ``MIN_CENTRE``
    cells are centred on the reference mean instead (a single cell would become all zeros)."""

    MIN_CENTRE = 10

    def latent(self, X: np.ndarray) -> np.ndarray:
        X = _dense(X)
        if self.pca_comps is None:
            raise RuntimeError("ingest is not fitted")
        use_own = self.hparams["center"] == "query" and X.shape[0] >= self.MIN_CENTRE and \
            getattr(self, "ref_pcs", None) is not None
        mean = X.mean(0) if use_own else self.pca_mean
        return ((X - mean) @ self.pca_comps.T).astype(np.float32)

    def _fit(self, train: Split, val: Split) -> None:
        Xt = _dense(train.X)
        self.ref_pcs = ((Xt - self.pca_mean) @ self.pca_comps.T).astype(np.float32)  # the reference's own PCA
        self.ref_y = np.asarray(train.y, dtype=np.int64)
        self._index = None

    def _neighbors(self, Z: np.ndarray) -> np.ndarray:
        k = int(min(self.hparams["n_neighbors"], len(self.ref_pcs)))
        if self.hparams["backend"] == "exact":
            from sklearn.neighbors import NearestNeighbors

            if self._index is None:
                self._index = NearestNeighbors(n_neighbors=k).fit(self.ref_pcs)
            return self._index.kneighbors(Z, return_distance=False)
        return self._scanpy_neighbors(Z, k)

    def _scanpy_neighbors(self, Z: np.ndarray, k: int) -> np.ndarray:
        import anndata as ad
        import scanpy as sc

        if self._index is None:
            ref = ad.AnnData(np.ascontiguousarray(self.ref_pcs, dtype=np.float32))
            # the reference's own graph counts each cell as its first neighbour: at least 2 (k=1 failed)
            sc.pp.neighbors(ref, n_neighbors=max(k, 2), use_rep="X", random_state=0)
            self._index = sc.tl.Ingest(ref)
        ing = self._index
        ing.fit(ad.AnnData(np.ascontiguousarray(Z, dtype=np.float32)))
        ing.neighbors(k=k)
        return np.asarray(ing._indices)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        Z = self.latent(X)
        if len(Z) == 0:
            return np.zeros((0, self.n_classes))
        idx = self._neighbors(Z)
        return self._votes(idx, np.ones(idx.shape, dtype=np.float64))


@register("knn", order=34, supports=Supports(latent=True),
          description="kNN classifier in the reference PCA space (distance-weighted vote).",
          hparams={
              "n_pcs": _N_PCS,
              "n_neighbors": HParam(15, "neighbours voting", low=1, high=500),
              "weights": HParam("distance", "vote weights: 1/distance or uniform", choices=("distance", "uniform")),
              "ood_score": _OOD, "knn_k": _KNN_K,
          })
class Knn(_VoteModel):
    """sklearn's ``KNeighborsClassifier`` vote (weights 1/d; cells at distance 0 take all the
    weight) computed from the stored reference coordinates."""

    def _proba(self, X: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        Z = self.latent(X)
        if len(Z) == 0:
            return np.zeros((0, self.n_classes))
        k = int(min(self.hparams["n_neighbors"], len(self.ref_pcs)))
        if self._index is None:
            self._index = NearestNeighbors(n_neighbors=k).fit(self.ref_pcs)
        d, idx = self._index.kneighbors(Z)
        if self.hparams["weights"] == "uniform":
            w = np.ones_like(d)
        else:
            with np.errstate(divide="ignore"):
                w = 1.0 / d
            zero = ~np.isfinite(w)
            w = np.where(zero.any(1, keepdims=True), zero.astype(np.float64), w)
        return self._votes(idx, w)
