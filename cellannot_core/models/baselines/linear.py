"""``logreg``: CellTypist-style multinomial logistic regression on z-scored log-expression."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...data._types import Split
from ...errors import DataError
from .._scaling import Scaler
from ..registry import HParam, Supports, register
from ._common import _KNN_K, _N_PCS, _OOD, SklearnModel, _dense


@register("logreg", order=33, supports=Supports(latent=True),
          description="CellTypist-style logistic regression (multinomial, L2) on z-scored log-expression.",
          hparams={
              "C": HParam(1.0, "inverse L2 strength", low=1e-6, high=1e6),
              "max_iter": HParam(500, "L-BFGS iterations", low=10, high=100000, advanced=True),
              "n_pcs": _N_PCS, "ood_score": _OOD, "knn_k": _KNN_K,
          })
class LogReg(SklearnModel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scaler = Scaler()

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        self.scaler.fit(_dense(train.X))
        return super().fit(train, val, callbacks)

    def _pca_input(self, X: np.ndarray) -> np.ndarray:
        return self.scaler(X)

    def _fit(self, train: Split, val: Split) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr = LogisticRegression(C=self.hparams["C"], max_iter=self.hparams["max_iter"], random_state=self.seed)
            lr.fit(self.scaler(_dense(train.X)), np.asarray(train.y))
        if list(lr.classes_) != list(range(self.n_classes)):
            raise DataError("logreg needs every reference class in the training cells")
        coef, icpt = lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64)
        if self.n_classes == 2:  # sklearn keeps one row for binary problems: logits (0, w.x + b)
            coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, icpt]
        self.coef, self.intercept = coef, icpt
        self._sk = lr

    def logits(self, X: np.ndarray) -> np.ndarray:
        return (self.scaler(_dense(X)).astype(np.float64) @ self.coef.T + self.intercept)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        from ...calibration import softmax

        return softmax(self.logits(X))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {**super()._state_arrays(), "coef": self.coef, "intercept": self.intercept,
                "scale_mean": self.scaler.mean, "scale_std": self.scaler.std}

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state_arrays(arrays)
        self.coef, self.intercept = arrays["coef"], arrays["intercept"]
        self.scaler = Scaler(arrays["scale_mean"], arrays["scale_std"])
