"""Classical label-transfer baselines behind the one model interface, one module per family
(``svm``, ``neighbours``, ``linear``, ``seurat``; what they share is in ``_common``).

Every baseline is a registered :class:`~cellannot_core.models._base.Model`: ``logits`` are
log-probabilities (so the shared temperature scaling and every novelty score still apply),
``latent`` is a PCA of the reference (the model's own space where it has one), and
``save``/``load`` store plain arrays (coefficients, support vectors, PCA components) through
``_state_arrays`` plus the JSON config: nothing is pickled.

* ``svm_reject``: Abdelaal et al. 2019 ``SVM_rejection``: ``CalibratedClassifierCV(LinearSVC)``
  on the log-normalised genes; a cell is Unknown when its calibrated maximum probability is
  below 0.7. Implemented as the ``maxprob`` novelty score with the fixed threshold 1 - 0.7
  and no query-shift correction (``calibrate`` still fits the shared temperature; the
  validation-quantile rule of the other models is not used).
* ``scpred``: scPred-style: reference z-scores -> PCA (50) -> RBF-kernel SVC with Platt
  probabilities.
* ``ingest``: scanpy's ``sc.tl.ingest``: PCA of the reference, the query projected on it
  (centred on its own mean, as ingest does), k = 15 nearest reference cells, majority vote;
  confidence = the neighbour-vote fraction. ``backend="scanpy"`` runs scanpy's ``Ingest``
  (pynndescent search on the reference neighbour graph; numba compiles for ~30-60 s the
  first time in a process); ``backend="exact"`` is the same projection with an exact kNN.
* ``logreg``: CellTypist-style: z-scored log-expression (clipped at 10), multinomial logistic
  regression with L2 penalty. Its logits are the real linear logits.
* ``knn``: kNN classifier in the reference PCA space, distance-weighted vote.
* ``seurat``: Seurat v4 ``FindTransferAnchors`` + ``TransferData`` through ``Rscript``; only
  available when R and the Seurat package are installed (``ModelSpec.available``).
"""
from ._common import SklearnModel
from .linear import LogReg
from .neighbours import Ingest, Knn
from .seurat import Seurat, r_error, seurat_unavailable
from .svm import ScPred, SvmReject

__all__ = ["Ingest", "Knn", "LogReg", "ScPred", "Seurat", "SklearnModel", "SvmReject", "r_error", "seurat_unavailable"]
