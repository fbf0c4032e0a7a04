"""SVM baselines: ``svm_reject`` (Abdelaal et al. 2019's SVM_rejection) and ``scpred``
(scPred-style RBF SVM on reference principal components)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...data._types import Split
from ...errors import ConfigError, DataError
from .._scaling import Scaler
from ..registry import HParam, Supports, register
from ._common import _KNN_K, _N_PCS, _OOD, SklearnModel, _dense


@register("svm_reject", order=30, supports=Supports(latent=True),
          description="SVM_rejection (Abdelaal et al. 2019): calibrated linear SVM on log-expression; "
                      "Unknown when the top probability is below 0.7.",
          hparams={
              "C": HParam(1.0, "LinearSVC regularisation C", low=1e-6, high=1e6),
              "cv": HParam(5, "folds of CalibratedClassifierCV (fewer when a class is smaller)", low=2, high=20,
                           advanced=True),
              "reject_below": HParam(0.7, "a cell is Unknown when its calibrated max probability is below this",
                                     low=0.0, high=1.0),
              "max_iter": HParam(1000, "LinearSVC iterations", low=10, high=100000, advanced=True),
              "n_pcs": _N_PCS, "knn_k": _KNN_K,
          })
class SvmReject(SklearnModel):
    """Per fold f of CalibratedClassifierCV: ``dec = X W_f^T + b_f``, ``p = expit(-(a dec + c))``
    per class, normalised; the folds' probabilities are averaged (sklearn's ensemble). They are the
    method's calibrated probabilities, so no temperature is fitted over them: SVM_rejection's 0.7 is
    stated on them (until 2026-12-07 it cut a temperature-scaled probability, T about 0.5 on the demo,
    which called half as many cells Unknown as the published rule)."""

    temperature_scaling = False

    def _fit(self, train: Split, val: Split) -> None:
        import joblib
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        from ..._constants import nn_jobs

        h = self.hparams
        y = np.asarray(train.y)
        counts = np.bincount(y, minlength=self.n_classes)
        folds = int(min(h["cv"], counts.min()))
        if folds < 2:  # (a class of 2 cells keeps 1 after validation; the message named svm_reject to a user of
            k = int(np.argmin(counts))  # the default model, which labels with it: found 2026-12-07)
            raise DataError(f"the calibrated linear SVM (the labeller of this model) needs at least 2 training cells "
                            f"of each type, and {self.classes[k]!r} has {int(counts[k])} once its validation cells are "
                            "held out: set min_cells_per_class to 3 or more (the default is 10), or give that type "
                            "more reference cells")
        clf = CalibratedClassifierCV(LinearSVC(C=h["C"], max_iter=h["max_iter"], random_state=self.seed), cv=folds,
                                     method="sigmoid", n_jobs=nn_jobs())
        # the folds in threads (liblinear releases the GIL; no copy of the data per process): the same
        # coefficients, a one-vs-rest fit per class and fold (200 types: 410 s on one thread here)
        with joblib.parallel_backend("threading"):
            clf.fit(_dense(train.X), y)
        if list(clf.classes_) != list(range(self.n_classes)):
            raise DataError("svm_reject needs every reference class in the training cells")
        cc = clf.calibrated_classifiers_
        self.coef = np.stack([c.estimator.coef_ for c in cc]).astype(np.float64)
        self.intercept = np.stack([c.estimator.intercept_ for c in cc]).astype(np.float64)
        self.cal_a = np.stack([[cal.a_ for cal in c.calibrators] for c in cc]).astype(np.float64)
        self.cal_b = np.stack([[cal.b_ for cal in c.calibrators] for c in cc]).astype(np.float64)
        self._sk = clf  # kept in memory only (tests compare against it)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        X = np.asarray(X, dtype=np.float64)
        K = self.n_classes
        out = np.zeros((X.shape[0], K))
        for f in range(self.coef.shape[0]):
            p = expit(-(self.cal_a[f] * (X @ self.coef[f].T + self.intercept[f]) + self.cal_b[f]))
            proba = np.zeros((X.shape[0], K))
            if K == 2:
                proba[:, 1] = p[:, 0]
                proba[:, 0] = 1.0 - proba[:, 1]
            else:
                proba[:] = p
                den = proba.sum(1, keepdims=True)
                proba = np.divide(proba, den, out=np.full_like(proba, 1.0 / K), where=den != 0)
            proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
            out += proba
        return out / self.coef.shape[0]

    def calibrate(self, val: Split, *, accept: float = 0.95, shift_correction: str = "median") -> dict[str, Any]:
        """SVM_rejection's fixed rule: Unknown when the max probability of CalibratedClassifierCV
        (no temperature over it) < ``reject_below`` (threshold on the maxprob score =
        1 - reject_below, no query-shift correction; ``accept`` is not used)."""
        self.ood_method = "maxprob"
        cal = super().calibrate(val, accept=accept, shift_correction="none")
        self.threshold = 1.0 - float(self.hparams["reject_below"])
        cal.update({"threshold": self.threshold, "accept": None,
                    "rule": f"Unknown when max probability < {self.hparams['reject_below']} "
                            "(SVM_rejection, Abdelaal et al. 2019)"})
        self.calibration = cal
        return cal

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._state_arrays(), "coef": self.coef, "intercept": self.intercept, "cal_a": self.cal_a,
                "cal_b": self.cal_b}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state_arrays(arrays)
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]
        self.cal_a, self.cal_b = arrays["cal_a"], arrays["cal_b"]




@register("scpred", order=31, supports=Supports(latent=True),
          description="scPred-style: PCA of the z-scored reference, RBF-kernel SVM with probabilities.",
          hparams={
              "n_pcs": _N_PCS,
              "C": HParam(1.0, "SVC regularisation C", low=1e-6, high=1e6),
              "gamma": HParam("scale", "RBF kernel width: 'scale', 'auto' or a number", advanced=True),
              "ood_score": _OOD, "knn_k": _KNN_K,
          })
class ScPred(SklearnModel):
    """Probabilities from scikit-learn's ``SVC(probability=True)`` (libsvm's pairwise Platt
    scaling). Nothing is pickled and no private scikit-learn state is stored: the model keeps
    the training cells' principal components and labels, and loading refits the same SVC
    (libsvm is deterministic for a fixed ``random_state``), so a loaded model gives identical
    probabilities."""

    def _pca_input(self, X: np.ndarray) -> np.ndarray:
        return self.scaler(X)

    def _gamma(self):
        g = str(self.hparams["gamma"])
        if g in ("scale", "auto"):
            return g
        try:
            return float(g)
        except ValueError:
            raise ConfigError(f"gamma must be 'scale', 'auto' or a positive number, got {g!r}") from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gamma()
        self.scaler = Scaler()

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        self.scaler.fit(_dense(train.X))
        return super().fit(train, val, callbacks)

    def _fit(self, train: Split, val: Split) -> None:
        self._refit(self.latent(train.X).astype(np.float64), np.asarray(train.y, dtype=np.int64))

    def _refit(self, Z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.svm import SVC

        svc = SVC(C=self.hparams["C"], kernel="rbf", gamma=self._gamma(), probability=True,
                  random_state=self.seed).fit(Z, y)
        if list(svc.classes_) != list(range(self.n_classes)):
            raise DataError("scpred needs every reference class in the training cells")
        self.train_z, self.train_y, self._sk = Z, y, svc

    def _proba(self, X: np.ndarray) -> np.ndarray:
        Z = np.ascontiguousarray(self.latent(X), dtype=np.float64)
        if len(Z) == 0:
            return np.zeros((0, self.n_classes))
        return self._sk.predict_proba(Z)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._state_arrays(), "scale_mean": self.scaler.mean, "scale_std": self.scaler.std,
                "train_z": self.train_z, "train_y": self.train_y}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state_arrays(arrays)
        self.scaler = Scaler(arrays["scale_mean"], arrays["scale_std"])
        if "train_z" not in arrays:
            raise ConfigError("this scpred model was saved by an older cellannot (it kept scikit-learn's private "
                              "SVM state); train it again")
        self._refit(np.ascontiguousarray(arrays["train_z"], dtype=np.float64), arrays["train_y"].astype(np.int64))
