"""``scanvi_svm``: labels from a calibrated linear SVM, novelty from a generative latent space.

Why two parts (issue 6, measured in bench/label_transfer.py on kang_ctrl / kang_sce -> pbmc3k):
the calibrated linear SVM on log-expression (``svm_reject``) had the best in-distribution
accuracy of every model on the small, IFN-stimulated kang_sce reference (0.952, scANVI 0.922,
CLAMS 0.912) and 0.994 on kang_ctrl, with ECE <= 0.011; but its max-probability novelty score
was weak (AUROC 0.636 on kang_sce: NK cells are confidently called CD8 T). scANVI's latent space,
trained on the reference *and* the unlabelled query with a dataset covariate in the decoder,
gave the best novelty score (kNN distance to reference cells, AUROC 0.90-0.93 on both tasks).
A cell is labelled by the SVM and called Unknown when it is far from every reference cell in
the scANVI latent space. Combining the two scores (Fisher's method on conformal p-values) helped
kang_ctrl but hurt kang_sce, so the novelty score stays the latent kNN distance alone.
Averaging it over the query's 15-NN graph (``knn_graph``) raised the AUROC (0.90 -> 0.95 on
kang_ctrl, median of 5 seeds 0.94 on kang_sce) but not robustly the open-set accuracy: in 3 of 5
kang_sce seeds the query's CD14 monocytes, shifted more than the other known types, crossed the
threshold as a group (up to 65% of them called Unknown), since smoothing removes the noise that
spreads a shifted type around the threshold. Measuring each cell against its predicted class
(``knn_class``: the class's own reference 95th percentile) kept the graph's gain without that
failure, so it is the default. Issue 12 (bench/novelty_stress.py, 51 leave-out experiments):
the query shift used to be estimated per predicted class from the cells predicted as that
class, so a large novel population predicted as one class raised that class's threshold until
it was accepted (worst-case acc_open 0.36). It is now one factor for the whole query from its
lower quartile, and cells are judged by query cluster (see ``novelty.LatentReference.knn_class``).
Where pbmc3k is the reference, novel NK and T cells sit as close to it as the query's shifted known
cells, but the SVM hesitates over them: each query cell's distance now counts ``2 - p`` times, ``p``
the SVM's calibrated probability of its label (``novelty.doubt_factor``; worst-case AUROC over the
suite 0.44 -> 0.50). A technology, culture or stimulation effect moves every type's genes the same
way: the per-gene shift the query's predicted classes share is divided out of the query and the
query re-encoded before its distances are measured (``novelty.LatentReference.shared_shift``;
reject_novel where novel >= 20% 0.79 -> 0.91, worst-case acc_open 0.42 -> 0.46).

The latent model is scANVI when the reference has raw counts (``latent_model="auto"``) and
CLAMS otherwise (its latent space, trained on log-expression); ``history['latent_model']`` says
which. Training curves, the latent space and generated cells come from the latent model.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data import Split, dense
from ..data._types import MAX_BATCHES
from ..calibration import softmax
from ..novelty import GRAPH_K, OOD_METHODS, graph_smooth
from ._base import Model
from .baselines import SvmReject
from ..nn.generative import N_BATCH
from ..training.callbacks import call
from .registry import HParam, Supports, create_model, get_spec, register
from .vae import ELBO, GenerativeModel, _is_counts

LATENT_MODELS = ("auto", "scanvi", "clams")


LABELLER_MAX = 50_000  # the SVM labeller learns from at most this many reference cells (stratified)


def _dense_split(split: Split) -> Split:
    import dataclasses

    return dataclasses.replace(split, X=dense(split.X)) if split.is_sparse else split


def _capped(split: Split, n_max: int, seed: int) -> Split:
    """``split`` itself when it has at most ``n_max`` cells, else a seeded subsample keeping each
    class's share (at least 50 cells of each, or all it has), dense. A linear SVM on 2,000 genes
    needs tens of thousands of cells, not an atlas: this bounds its memory and time (one dense
    copy of ``n_max`` cells) for a reference of any size; smaller references are unchanged."""
    if split.n_obs <= n_max:
        return split
    rng = np.random.default_rng(seed)
    y = np.asarray(split.y)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(len(idx), max(50, int(round(n_max * len(idx) / len(y)))))
        keep.append(rng.choice(idx, k, replace=False))
    return split.rows(np.sort(np.concatenate(keep)))


def _has_counts(split: Split) -> bool:
    return split.counts is not None and split.n_obs > 0 and _is_counts(split)


@register("scanvi_svm", order=-1, supports=Supports(latent=True, samples=True, semi_supervised=True, sparse=True),
          description="Recommended. Labels from a calibrated linear SVM on log-expression (best accuracy and "
                      "calibration in the bench); Unknown by the kNN distance to reference cells in scANVI's "
                      "latent space, trained on reference + query counts (best novelty detection). Without raw "
                      "counts the latent space is CLAMS'.",
          hparams={
              "latent_model": HParam("auto", "model giving the latent space, novelty score and generated cells: "
                                     "auto = scanvi when the reference has raw counts, else clams",
                                     choices=LATENT_MODELS),
              "max_epochs": HParam(0, "training epochs of the latent model (0 = its own default: scanvi 40, "
                                   "clams 30)", low=0, high=10000),
              "n_latent": HParam(0, "latent dimensions of scANVI (0 = its own default, 10; clams' latent "
                                 "space keeps its width). 30 had the better worst case on the novelty stress "
                                 "suite with 2,000 genes and the worse one with 300 (BENCHMARKS.md)", low=0, high=256,
                                 advanced=True),
              "smooth_k": HParam(GRAPH_K, "class probabilities of a cell = the mean SVM probabilities of its k "
                                 "nearest neighbours (itself included) in the latent space, among the cells "
                                 "labelled together (0 = the cell's own)", low=0, high=200),
              "C": HParam(1.0, "the labeller's regularisation (a linear SVM's C: larger fits the reference more closely, "
                                 "smaller generalises more)", low=1e-6, high=1e6),
              "cv": HParam(5, "cross-validation folds that calibrate the labeller's probabilities "
                                 "(scikit-learn's CalibratedClassifierCV)", low=2, high=20, advanced=True),
              "ood_score": HParam("knn_class", "novelty score used for rejection (bench: the kNN distance in "
                                  "scANVI's latent space beat Mahalanobis, max p(y|x) and their combinations on "
                                  "both PBMC tasks; averaged over the query's 15-NN graph and measured against "
                                  "the cell's predicted class (knn_class) it beat the plain kNN distance)",
                                  choices=OOD_METHODS),
              "knn_k": HParam(10, "neighbours for the kNN novelty score", low=1, high=200, advanced=True),
              "n_batches": HParam(N_BATCH, "levels of scANVI's batch covariate (set from the batch key, see the "
                                  "generative models)", low=1, high=MAX_BATCHES, internal=True),
          })
class ScanviSvm(Model):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        h = self.hparams
        self.labeller = SvmReject(self.n_features, self.classes, seed=self.seed, device="cpu",
                                  hparams={"C": h["C"], "cv": h["cv"], "knn_k": h["knn_k"]})
        self.latent_model: Model | None = None
        if h["latent_model"] != "auto":  # resolved (after fit, or a loaded model)
            self.latent_model = self._build_latent_model(h["latent_model"])

    def _build_latent_model(self, name: str) -> Model:
        hp: dict[str, Any] = {"knn_k": self.hparams["knn_k"]}
        if self.hparams["max_epochs"] > 0:
            hp["max_epochs"] = self.hparams["max_epochs"]
        if self.hparams["n_latent"] > 0 and "n_latent" in get_spec(name).hparams:
            hp["n_latent"] = self.hparams["n_latent"]
        if "n_batches" in get_spec(name).hparams:
            hp["n_batches"] = self.hparams["n_batches"]
        return create_model(name, self.n_features, self.classes, seed=self.seed, device=self.device_name, hparams=hp)

    def _latent(self) -> Model:
        if self.latent_model is None:
            raise RuntimeError("scanvi_svm is not fitted")
        return self.latent_model

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = (), *,
            unlabelled: Split | None = None) -> dict[str, Any]:
        if self.hparams["latent_model"] == "auto":
            self.hparams["latent_model"] = "scanvi" if _has_counts(train) and _has_counts(val) else "clams"
            self.latent_model = self._build_latent_model(self.hparams["latent_model"])
        lm = self._latent()
        if lm.spec.supports.semi_supervised:
            lm.fit(train, val, callbacks, unlabelled=unlabelled)
        else:  # clams reads dense data
            lm.fit(_dense_split(train), _dense_split(val), callbacks)
        call(callbacks, "on_phase", f"fitting the labeller: a calibrated linear SVM over {self.n_classes} types "
             f"({self.hparams['cv']} folds, one-vs-rest)")
        self.labeller.fit(_capped(train, LABELLER_MAX, self.seed), _capped(val, LABELLER_MAX // 4, self.seed))
        self.history = dict(lm.history)
        self.history["latent_model"] = self.hparams["latent_model"]
        self.history["labeller_val_acc"] = self.labeller.history["epochs"][-1]["val_acc"]
        self.fit_reference(train)
        return self.history

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Log of the SVM's calibrated probabilities, averaged over each cell's ``smooth_k``
        nearest neighbours in the latent space among the rows of ``X`` (a query is labelled as a
        whole: neighbours of one type agree, single-cell noise averages out)."""
        if int(self.hparams["smooth_k"]) <= 1 or X.shape[0] < 2:
            return self.labeller.logits(X)
        return self.query_logits(self.cell_logits(X), self.latent(X))

    def cell_logits(self, X: np.ndarray) -> np.ndarray:
        """The SVM's log-probabilities of each cell on its own."""
        return self.labeller.logits(X)

    def query_logits(self, cell_logits: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """The smoothing of :meth:`logits` over the query's latent neighbours (:func:`graph_smooth`)."""
        k = int(self.hparams["smooth_k"])
        if k <= 1 or len(cell_logits) < 2:
            return cell_logits
        smoothed = graph_smooth(latent, softmax(cell_logits), k=k)
        return np.log(np.clip(smoothed, 1e-12, 1.0))

    def latent(self, X: np.ndarray) -> np.ndarray:
        return self._latent().latent(X)

    def model_scores(self) -> dict[str, Any]:
        """The latent model's ``"elbo"`` when it is generative (so the bench and the app compare it too)."""
        lm = self._latent()
        return {ELBO: lambda inp: lm.elbo_score(inp.X)} if isinstance(lm, GenerativeModel) else {}

    def sample(self, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        return self._latent().sample(n_per_class)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"labeller.{k}": v for k, v in self.labeller._state_arrays().items()}
        out.update({f"latent.{k}": v for k, v in self._latent()._state_arrays().items()})
        return out

    def _load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.labeller._load_state_arrays({k[9:]: v for k, v in arrays.items() if k.startswith("labeller.")})
        self._latent()._load_state_arrays({k[7:]: v for k, v in arrays.items() if k.startswith("latent.")})
