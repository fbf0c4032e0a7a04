"""SIMS: TabNet classifier with per-cell gene masks (Gonzalez-Ferrer et al. 2024; jlehrer1/SIMS).

The network is :class:`cellannot_core.nn.tabnet.TabNet` (pytorch-tabnet's TabNet without
embeddings). Training runs on the one training loop with SIMS' loss

    L = CE(logits, y; w) - lambda_sparse * M_loss,     w_c = N / (K * n_c)  ("balanced")

where ``M_loss`` is the mean negative entropy of the masks (so the term adds
``lambda_sparse`` x their entropy), with gradient-norm clipping at 1 as pytorch-tabnet.

Defaults (METHODS.md 4.1/4.3, sized for speed and measured on the PBMC bench, kang_ctrl ->
pbmc3k): n_d = n_a = 32 (pytorch-tabnet 8, SIMS README 64), 3 steps, gamma 1.3, 2 shared + 2
step-specific GLU layers, virtual batch 128, BN momentum 0.02, lambda_sparse 1e-3, Adam lr 1e-2
and weight decay 1e-3 (SIMS thesis), batch 128 (SIMS: 8-32, far slower per epoch), at most 20
epochs with early stopping on validation loss (patience 5). SIMS' ReduceLROnPlateau is not
used (the one loop has no scheduler). Inputs are the log-normalised genes standardised per
gene on the reference, then TabNet's initial batch norm.

Two deviations from SIMS, both hyper-parameters (set ``mask_temperature=1, gene_dropout=0``
for plain SIMS):

* ``mask_temperature`` 20: attention logits are divided by 20 before sparsemax. With ~2000
  batch-normalised gene logits, plain sparsemax keeps 2-10 genes per cell in total; the
  masks then pick genes whose *position* encodes the class (the attention already sees every
  gene through the initial splitter), not marker genes. At 20 the masks keep ~100-200 genes
  and the per-class top genes are the canonical markers (CD79A/MS4A1 for B, S100A8/9 and
  LYZ for CD14 monocytes, FCGR3A, CD8A) on the demo reference.
* ``gene_dropout`` 0.3 (the hyper-parameter's help says why not 0.1): each gene is zeroed with this
  probability during training. With 0.1, kang_ctrl -> pbmc3k acc_in over seeds 0-2: 0.989 / 0.993 /
  0.991 (without it, seeds 0-1: 0.991 / 0.956; plain TabNet masks without it: 0.91-0.97, with a
  quarter of the CD14 monocytes called B).

``latent`` is the aggregated decision output ``sum_i d_i`` (n_d dims); ``explain`` the
per-cell x gene matrix ``M_explain = sum_i eta_i M_i``; ``standardized`` the inputs as the
network sees them (z-scores over the reference training cells). The helpers at the bottom
summarise an explain matrix per class under one of two gene rankings (:data:`RANKINGS`): the
SIMS thesis' mean mask ("attention") and the default "positive evidence", which keeps only
the mask weight of genes expressed above their reference mean in the cell.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data._types import Split
from ..errors import ConfigError
from ..nn.tabnet import TabNet
from ..novelty import OOD_METHODS
from ..training import TrainConfig
from ._torch import TorchModel
from .registry import HParam, Supports, register
from .._constants import str_array


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """sklearn's ``compute_class_weight("balanced")``: ``N / (K * n_c)`` (0 for absent classes)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


@register("tabnet", order=20, supports=Supports(latent=True, explain=True),
          description="SIMS: TabNet classifier whose sparse attention masks say which genes each "
                      "prediction used (explain matrices); class-balanced loss.",
          hparams={
              "n_d": HParam(32, "width of each decision step's output (the latent size)", low=2, high=512),
              "n_a": HParam(32, "width of the attention input of each step", low=2, high=512),
              "n_steps": HParam(3, "decision steps (one gene mask each)", low=1, high=10),
              "gamma": HParam(1.3, "prior relaxation: 1 = a gene is used by one step only; larger = steps may "
                              "reuse genes", low=1.0, high=3.0),
              "n_independent": HParam(2, "step-specific GLU layers per feature transformer", low=0, high=8,
                                      advanced=True),
              "n_shared": HParam(2, "GLU layers shared by all steps", low=0, high=8, advanced=True),
              "mask_temperature": HParam(20.0, "attention logits are divided by this before sparsemax (1 = "
                                         "TabNet/SIMS); higher keeps more genes per mask", low=0.01, high=1000.0),
              "lambda_sparse": HParam(1e-3, "weight of the mask-entropy (sparsity) loss", low=0.0, high=1.0),
              "virtual_batch_size": HParam(128, "ghost batch norm: rows per virtual batch", low=2, high=4096,
                                           advanced=True),
              "momentum": HParam(0.02, "batch-norm momentum", low=0.0, high=1.0, advanced=True),
              "gene_dropout": HParam(0.3, "training augmentation (not in SIMS): each gene's expression is set to "
                                     "zero with this probability; it also spreads the masks over correlated marker "
                                     "genes (bench/tabnet_markers.py, kang_ctrl: with 0.1 one seed of 3 put no mask "
                                     "weight on LYZ, S100A8, S100A9 or CD14 in monocytes; with 0.3 no seed of 5)",
                                     low=0.0, high=0.9, advanced=True),
              "input_noise": HParam(0.0, "training augmentation (not in SIMS): Gaussian noise added to the "
                                    "standardised inputs", low=0.0, high=2.0, advanced=True),
              "class_weights": HParam(True, "weight the loss by inverse class frequency (sklearn 'balanced')",
                                      advanced=True),
              "max_epochs": HParam(20, "maximum training epochs (early stopping on validation loss)", low=1,
                                   high=1000),
              "batch_size": HParam(128, "mini-batch size (SIMS: 8-32; 128 = the virtual batch)", low=8, high=4096),
              "lr": HParam(1e-2, "Adam learning rate (SIMS thesis: 0.01)", low=1e-6, high=1.0),
              "weight_decay": HParam(1e-3, "Adam weight decay (SIMS: 1e-3)", low=0.0, high=1.0, advanced=True),
              "patience": HParam(5, "early stopping: epochs without validation improvement (0 = off)", low=0,
                                 high=1000),
              "grad_clip": HParam(1.0, "gradient-norm clipping (pytorch-tabnet: 1; 0 = off)", low=0.0, high=100.0,
                                  advanced=True),
              "ood_score": HParam("mahalanobis", "novelty score used for rejection", choices=OOD_METHODS),
              "knn_k": HParam(10, "neighbours for the kNN novelty score", low=1, high=200, advanced=True),
          })
class TabNetModel(TorchModel):
    """SIMS' TabNet on the one training loop."""

    def build_net(self) -> nn.Module:
        h = self.hparams
        if h["n_shared"] == 0 and h["n_independent"] == 0:
            raise ConfigError("n_shared and n_independent cannot both be 0")
        self._weights: torch.Tensor | None = None
        return TabNet(self.n_features, self.n_classes, n_d=h["n_d"], n_a=h["n_a"], n_steps=h["n_steps"],
                      gamma=h["gamma"], n_independent=h["n_independent"], n_shared=h["n_shared"],
                      virtual_batch_size=h["virtual_batch_size"], momentum=h["momentum"],
                      mask_temperature=h["mask_temperature"])

    # ---- training --------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        cfg = super().train_config()
        cfg.grad_clip = float(self.hparams["grad_clip"])
        return cfg

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        w = balanced_class_weights(train.y, self.n_classes) if self.hparams["class_weights"] \
            else np.ones(self.n_classes)
        self._weights = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        return self.run_loop(train, val, callbacks, self.train_config())

    def training_step(self, xb: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        h = self.hparams
        self.net.train()
        gen = self.generator if self.device.type == "cpu" else None
        if h["gene_dropout"] > 0:
            drop = torch.rand(xb.shape, generator=gen, device=xb.device) < h["gene_dropout"]
            xb = torch.where(drop, self.scaler(torch.zeros_like(xb[:1])), xb)
        if h["input_noise"] > 0:
            xb = xb + h["input_noise"] * torch.randn(xb.shape, generator=gen, device=xb.device)
        logits, m_loss = self.net(xb)
        l_ce = F.cross_entropy(logits, yb, weight=self._weights)
        loss = l_ce - h["lambda_sparse"] * m_loss
        return loss, {"loss": float(loss.detach()), "loss_ce": float(l_ce.detach()),
                      "mask_entropy": float(-m_loss.detach())}

    def validation_metrics(self) -> dict[str, float]:
        X, y = self._val
        self.net.eval()
        logits = torch.cat([self.net.logits(X[i:i + 4096]) for i in range(0, X.shape[0], 4096)])
        return {"val_loss": float(F.cross_entropy(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}

    # ---- inference -------------------------------------------------------------------------
    def logits(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net.logits)

    def latent(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net.latent)

    def explain(self, X: np.ndarray, *, normalize: bool = False) -> np.ndarray:
        """Per-cell x gene importance ``M_explain = sum_i eta_i M_i`` (non-negative, float32).

        ``normalize=True`` divides each row by its sum (as pytorch-tabnet's ``explain``).
        """
        out = self._batched(X, lambda x: self.net.forward_masks(x)[0]).astype(np.float32)
        if normalize:
            out = row_normalize(out)
        return out

    def standardized(self, X: np.ndarray) -> np.ndarray:
        """The inputs as the network sees them: each gene's log-normalised expression minus its
        mean over the reference training cells, over their std (clipped to +-10; float32)."""
        return self._batched(X, lambda z: z).astype(np.float32)

    def masks(self, X: np.ndarray) -> list[np.ndarray]:
        """The per-step masks ``M_i`` (each cells x genes, rows sum to 1)."""
        n = self.hparams["n_steps"]
        stacked = self._batched(X, lambda x: torch.stack(self.net.forward_masks(x)[1], dim=1))
        return [stacked[:, i] for i in range(n)]


# ------------------------------------------------------------------------------ explain summaries


def row_normalize(M: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (all-zero rows stay zero)."""
    M = np.asarray(M, dtype=np.float64)
    s = M.sum(axis=1, keepdims=True)
    return np.divide(M, s, out=np.zeros_like(M), where=s > 0)


def global_importance(M: np.ndarray, genes: Sequence[str]) -> pd.Series:
    """pytorch-tabnet's ``feature_importances_``: column sums of ``M_explain`` normalised to 1,
    sorted descending (index = genes)."""
    col = np.asarray(M, dtype=np.float64).sum(axis=0)
    total = col.sum()
    col = col / total if total > 0 else col
    return pd.Series(col, index=list(genes), name="importance").sort_values(ascending=False)


RANKINGS: dict[str, str] = {
    "positive": "positive evidence: mask weight of the genes the cell expresses above their reference "
                "mean, times how far above (mask x max(z, 0))",
    "attention": "attention (SIMS thesis): all mask weight, including genes used because they are absent "
                 "or low in the cell",
}
DEFAULT_RANKING = "positive"


def gene_weights(M: np.ndarray, Z: np.ndarray | None = None, ranking: str = DEFAULT_RANKING) -> np.ndarray:
    """Per-cell x gene weights that the per-class summaries average (float64).

    Rows of ``M`` (the explain matrix) are first divided by their sums, so every cell weighs the
    same. ``ranking="attention"`` stops there. That is the SIMS thesis' view (Figs. 13-14:
    "partitioned the sample-wise explain matrices by class, then averaged the rows ... normalized
    each column (gene) by dividing by its maximum"; jlehrer1/SIMS and pytorch-tabnet, METHODS.md
    4.2-4.3, only map masks to genes and optionally row-normalise): it looks at masks alone. A
    mask says a gene was *used*, not in which direction, and TabNet uses absent genes as much as
    present ones: on kang_ctrl -> pbmc3k (seed 0) the CD14 monocytes' attention top genes start
    GZMB, FCER1G, NKG7, with CD3D 7th, genes whose absence rules out NK and T cells; on the demo
    reference their top 20 holds CD79A and MS4A1. Such lists are not the genes a class expresses.

    ``ranking="positive"`` (default) multiplies each weight by the positive part of the gene's
    z-score in that cell, ``Z`` (:meth:`TabNetModel.standardized`: standardised over the
    reference training cells, what the network sees): weight = mask x max(z, 0), "attended and
    above its reference mean in this cell, by how much". Genes used by their absence (z < 0)
    weigh 0, so a class's top genes are ones it expresses *and* the model attends to; per-class
    means and the per-gene normalisation are then the SIMS thesis' ones. The magnitude of z, not
    only its sign, keeps genes hovering around their mean from counting fully (on the demo
    reference the sign alone ranks more ribosomal genes). Not in SIMS or TabNet.

    Either ranking only reweights what the masks use: a marker the masks ignore cannot rank (on
    kang_ctrl, seed 0, every class puts < 1e-4 of its mask on LYZ, S100A8, S100A9 and CD14, and
    the monocytes are told apart by FCER1G, TYROBP, CST3, ...).
    """
    if ranking not in RANKINGS:
        raise ConfigError(f"unknown gene ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
    R = row_normalize(M)
    if ranking == "attention":
        return R
    if Z is None:
        raise ValueError("the positive-evidence ranking needs the standardised expression Z of the same cells")
    Z = np.asarray(Z)
    if Z.shape != R.shape:
        raise ValueError(f"Z has shape {Z.shape}, the explain matrix {R.shape}")
    return R * np.maximum(Z, 0)


def class_mean(W: np.ndarray, labels: Sequence[str], genes: Sequence[str], *,
               classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean row of ``W`` per class (classes x genes; NaN rows for classes without cells)."""
    W = np.asarray(W, dtype=np.float64)
    labels = str_array(labels)
    order = [str(c) for c in (classes if classes is not None else sorted(set(labels.tolist())))]
    rows = [W[labels == c].mean(axis=0) if (labels == c).any() else np.full(W.shape[1], np.nan) for c in order]
    return pd.DataFrame(np.vstack(rows) if rows else np.zeros((0, W.shape[1])), index=order, columns=list(genes))


def class_importance(M: np.ndarray, labels: Sequence[str], genes: Sequence[str], *, Z: np.ndarray | None = None,
                     ranking: str = DEFAULT_RANKING, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean of :func:`gene_weights` per class (classes x genes): the SIMS thesis' per-class
    mean mask (Figs. 13-14) for ``ranking="attention"``; the default ``"positive"`` needs ``Z``.

    The per-class means are *not* yet normalised per gene (see :func:`normalize_per_gene`).
    """
    return class_mean(gene_weights(M, Z, ranking), labels, genes, classes=classes)


def normalize_per_gene(per_class: pd.DataFrame) -> pd.DataFrame:
    """Each gene (column) divided by its maximum over classes (SIMS thesis); 0 where unused."""
    mx = per_class.max(axis=0, skipna=True).to_numpy()
    vals = per_class.to_numpy(dtype=np.float64)
    out = np.divide(vals, mx, out=np.zeros_like(vals), where=mx > 0)
    return pd.DataFrame(out, index=per_class.index, columns=per_class.columns)


def top_genes_per_class(per_class: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Long table of each class's top ``n`` genes.

    Genes are ranked by ``mean_weight * normalized`` (the class's mean weight from
    :func:`class_importance` times the same value normalised per gene by its maximum over
    classes): high when the class weighs the gene a lot *and* more than the other classes do.
    Columns: class, rank, gene, mean_weight, normalized, score.
    """
    norm = normalize_per_gene(per_class)
    rows = []
    for c in per_class.index:
        mean = per_class.loc[c].to_numpy(dtype=np.float64)
        nv = norm.loc[c].to_numpy(dtype=np.float64)
        score = np.nan_to_num(mean * nv)
        for r, j in enumerate(np.argsort(-score, kind="stable")[:n], 1):
            rows.append({"class": c, "rank": r, "gene": per_class.columns[j], "mean_weight": mean[j],
                         "normalized": nv[j], "score": score[j]})
    return pd.DataFrame(rows, columns=["class", "rank", "gene", "mean_weight", "normalized", "score"])
