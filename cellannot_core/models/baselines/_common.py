"""What the classical baselines share: the one-step fit behind the model interface
(:class:`SklearnModel`), the PCA latent, log-probability logits and the shared hyper-parameters."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ...data._types import Split, dense
from ...errors import Cancelled
from ...novelty import OOD_METHODS
from ...training.callbacks import any_stop, call
from .._base import Model
from ..registry import HParam

PROB_FLOOR = 1e-4  # log-probabilities of vote/probability models are floored here


# ------------------------------------------------------------------------------ shared helpers


_dense = dense  # the shared rule (data._types.dense)

LOGITS_CHUNK = 20_000  # cells per block when labelling (a large reference is labelled in blocks)


def _log_proba(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    p = (p + PROB_FLOOR) / (1.0 + PROB_FLOOR * p.shape[1])
    return np.log(p)


def _fit_pca(X: np.ndarray, n_comps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, components)`` of a PCA of ``X`` (components: n_comps x genes)."""
    from sklearn.decomposition import PCA

    n = int(max(1, min(n_comps, X.shape[0] - 1, X.shape[1])))
    pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(X)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


_OOD = HParam("mahalanobis", "novelty score used for rejection (bench kang_ctrl: Mahalanobis distance in the "
              "reference PCA space beat max probability for every baseline, AUROC 0.82-0.86 vs 0.63-0.80, "
              "and max probability rejected a third to a half of the known cells)", choices=OOD_METHODS)
_KNN_K = HParam(10, "neighbours for the kNN novelty score", low=1, high=200, advanced=True)
_N_PCS = HParam(50, "principal components of the reference", low=2, high=200)


class SklearnModel(Model):
    """A model fitted in one go (no epochs); subclasses implement ``_fit``, ``_proba`` and the
    arrays. ``fit`` reports one "epoch" to the callbacks so progress bars and cancel work."""

    uses_pca_latent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.device_name not in ("auto", "cpu"):
            from ...training import resolve_device

            resolve_device(self.device_name)  # a clear error for cuda without a GPU
        self.device = "cpu"
        self.pca_mean: np.ndarray | None = None
        self.pca_comps: np.ndarray | None = None

    # ---- to implement -------------------------------------------------------------------
    def _fit(self, train: Split, val: Split) -> None:
        raise NotImplementedError

    def _proba(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated class probabilities (rows sum to 1)."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------
    def _pca_input(self, X: np.ndarray) -> np.ndarray:
        """What the PCA latent is computed on (default: the log-expression)."""
        return X

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        t0 = time.time()
        call(callbacks, "on_train_begin", {"model": self.name, "n_train": int(train.n_obs), "n_genes": self.n_features,
                                           "n_classes": self.n_classes, "device": "cpu", "max_epochs": 1,
                                           "steps_per_epoch": 1})
        if any_stop(callbacks):
            raise Cancelled("training was cancelled")
        Xt = _dense(train.X)
        if self.uses_pca_latent and self.pca_comps is None:
            self.pca_mean, self.pca_comps = _fit_pca(self._pca_input(Xt), int(self.hparams.get("n_pcs", 50)),
                                                     self.seed)
        self._fit(train, val)
        if any_stop(callbacks):
            raise Cancelled("training was cancelled")
        p = self._proba(_dense(val.X)) if val.n_obs else np.zeros((0, self.n_classes))
        yv = np.asarray(val.y)
        logs = {"val_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(yv)), yv], 1e-12, 1)))) if len(yv) else
                float("nan"), "val_acc": float((p.argmax(1) == yv).mean()) if len(yv) else float("nan")}
        call(callbacks, "on_epoch_end", 0, logs)
        secs = time.time() - t0
        self.history = {"epochs": [{"epoch": 1, **logs, "epoch_seconds": secs}], "diverged": False,
                        "divergence_message": "", "recoveries": 0, "best_epoch": 1, "stopped_early": False,
                        "seconds": round(secs, 2)}
        call(callbacks, "on_train_end", self.history)
        self.fit_reference(train)
        return self.history

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Log-probabilities (floored at 1e-4), so ``softmax(logits)`` = the probabilities; a
        large matrix is labelled in blocks of :data:`LOGITS_CHUNK` cells (models whose labels
        depend on the other cells given, ``Supports.per_cell`` False, take it whole)."""
        if X.shape[0] <= LOGITS_CHUNK or not self.spec.supports.per_cell:
            return _log_proba(self._proba(_dense(X)))
        return np.concatenate([_log_proba(self._proba(_dense(X[i:i + LOGITS_CHUNK])))
                               for i in range(0, X.shape[0], LOGITS_CHUNK)])

    def latent(self, X: np.ndarray) -> np.ndarray:
        if self.pca_comps is None:
            raise RuntimeError(f"model {self.name} is not fitted")
        return ((self._pca_input(_dense(X)) - self.pca_mean) @ self.pca_comps.T).astype(np.float32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.pca_comps is not None:
            out.update({"pca_mean": self.pca_mean, "pca_comps": self.pca_comps})
        return out

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if "pca_comps" in arrays:
            self.pca_mean, self.pca_comps = arrays["pca_mean"], arrays["pca_comps"]
