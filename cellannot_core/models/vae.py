"""Generative (VAE-family) label-transfer models on raw counts, and the plain ``vae``.

Shared by ``vae``, ``gmvae``, ``scanvi`` and ``m2flow`` (:class:`GenerativeModel`):

Inputs. The encoders read the log1p-normalised expression ``X`` (counts scaled to 1e4 per
cell, log1p), not scVI's log1p of raw counts: ``logits(X)``, ``latent(X)`` and the novelty
scores receive only ``X`` through the one model interface, and generated cells must embed
beside real ones. The likelihood scores the raw counts of the model genes with the
*observed* library size (sum of those counts; no library latent), mean = library x
softmax(decoder) as in scVI; the continuous Bernoulli scores ``X`` divided by the per-gene
reference maximum (clipped to [0, 1]).

Semi-supervised training. ``fit(train, val, callbacks, unlabelled=query)`` adds the query
cells, with label -1 (their labels, if any, are never read), to the training rows; each
model's bound marginalises the class of unlabelled cells. The one training loop shuffles
row indices and :meth:`GenerativeModel.training_step` looks the rows up. With
``batch_covariate`` the decoder receives a one-hot dataset covariate (reference = 0,
query = 1) in every hidden layer; the encoders never see it.

KL warm-up: the KL terms are weighted by min(1, epoch / kl_warmup_epochs), computed per step.

Generated cells (``sample``): decoded expression proportions rho (rows sum to 1, zero
inflation left out) are put on the scale of ``X``: log1p(s rho), where s is the median over
reference cells of sum_g expm1(X_g) (1e4 times the share of a cell's counts on the model
genes, since ``X`` was normalised on all shared genes). Continuous-Bernoulli models output
their mean times the per-gene maximum. Decoding uses the reference covariate. With
``sample_noise`` the cells are instead drawn from the likelihood (counts at the median
reference library, normalised like ``X``): sparse like real cells, and their latents fall
closer to real cells (scanvi on kang_ctrl: median distance to the nearest reference latent
0.74 vs 1.10 noise-free; 0.50 between real cells). Sampling is seeded by the model's seed.

Novelty score ``"elbo"``: the negative ELBO of a cell, evaluated at the posterior means
(no sampling: deterministic), on pseudo-counts rebuilt from ``X`` at the median reference
library size (``X`` does not carry the library): c = expm1(X) / sum(expm1(X)) * L_ref. With a
dataset covariate the smaller value over the covariate's levels is used (``X`` does not say
which dataset a cell came from). Asking for all the base scores (``OOD_METHODS``) also returns
``"elbo"``.

``vae``: a VAE with a classifier on the posterior mean, trained jointly with
classification_ratio x cross-entropy on labelled cells. It has no class structure in its
prior, so ``sample`` draws z from one Gaussian per reference class, moment-matched to the
aggregate posterior of that class's training cells (covariance of posterior means plus the
mean posterior variance), then decodes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data._types import MAX_BATCHES, Split
from ..distributions import LIKELIHOOD_HELP, likelihood_names
from ..nn.generative import N_BATCH, QUERY, REFERENCE, GenerativeNet, Rows, SparseRows, VAENet
from ..novelty import OOD_METHODS
from ..training import TrainConfig
from ..training.device import global_rng
from ._torch import TorchModel
from .registry import HParam, Supports, register

ELBO = "elbo"
ELBO_BATCHES = 8  # elbo_score: decoder batches tried per cell (the best one counts)
CELLS_BUDGET = 40 * 20_000  # cells_budget: 40 epochs of 20,000 cells
GEN_OOD_METHODS = OOD_METHODS + (ELBO,)
GEN_SUPPORTS = Supports(latent=True, samples=True, needs_counts=True, semi_supervised=True, sparse=True)


def _likelihood_help() -> str:
    return "likelihood of the expression: " + "; ".join(f"{k} = {v}" for k, v in LIKELIHOOD_HELP.items())


def common_hparams(*, likelihood: str = "zinb", max_epochs: int = 40, kl_warmup: int = 10,
                   classification_ratio: float = 50.0, ood_score: str = "mahalanobis") -> dict[str, HParam]:
    """Hyper-parameters shared by the generative models (each model picks its defaults)."""
    return {
        "likelihood": HParam(likelihood, _likelihood_help(), choices=likelihood_names()),
        "n_latent": HParam(10, "latent dimensions", low=2, high=256),
        "n_hidden": HParam(128, "units per hidden layer", low=8, high=4096),
        "n_layers": HParam(1, "hidden layers of encoder and decoder", low=1, high=8),
        "dropout": HParam(0.1, "dropout rate in the encoders and the classifier", low=0.0, high=0.9, advanced=True),
        "classification_ratio": HParam(classification_ratio, "weight of the cross-entropy on labelled cells "
                                       "(scANVI: 50)", low=0.0, high=1e5),
        "use_query": HParam(True, "semi-supervised: train the generative part on the unlabelled query cells too"),
        "batch_covariate": HParam(True, "condition the decoder on the dataset (reference / query), or on each "
                                  "batch of the batch key when one is given, one-hot in every decoder layer",
                                  advanced=True),
        "n_batches": HParam(N_BATCH, "levels of the decoder's batch covariate: the reference's and the query's "
                            "batches of the batch key (set from the data), 2 (reference / query) without one",
                            low=1, high=MAX_BATCHES, internal=True),
        "kl_warmup_epochs": HParam(kl_warmup, "epochs over which the KL weight rises linearly from 0 to 1 "
                                   "(0 = no warm-up)", low=0, high=10000, advanced=True),
        "max_epochs": HParam(max_epochs, "maximum training epochs", low=1, high=10000),
        "cells_budget": HParam(CELLS_BUDGET, "an epoch budget that follows the data size: at most this many cells "
                               "are passed through training (epochs = min(max_epochs, ceil(budget / training "
                               "cells)); the default, 40 epochs of 20,000 cells, changes nothing below 20,000 "
                               "cells and keeps the number of gradient steps of a large reference about that of "
                               "a 20,000-cell one, as scvi-tools' rule does; 0 = off)", low=0, high=10**12,
                               advanced=True),
        "batch_size": HParam(128, "mini-batch size", low=8, high=4096),
        "lr": HParam(1e-3, "Adam learning rate", low=1e-6, high=1.0),
        "weight_decay": HParam(1e-6, "Adam weight decay", low=0.0, high=1.0, advanced=True),
        "patience": HParam(10, "early stopping on the validation loss (negative ELBO + weighted cross-entropy): "
                           "epochs without improvement (0 = off)", low=0, high=10000, advanced=True),
        "ood_score": HParam(ood_score, "novelty score used for rejection; 'elbo' = negative ELBO of the cell",
                            choices=GEN_OOD_METHODS),
        "knn_k": HParam(10, "neighbours for the kNN novelty score", low=1, high=200, advanced=True),
        "sample_noise": HParam(False, "generated cells: False = the decoded expression (noise-free); True = a "
                               "draw from the likelihood at the median reference library (sparse, like real cells)",
                               advanced=True),
    }


# ---- data ------------------------------------------------------------------------------------------

def _is_counts(split: Split) -> bool:
    c = split.counts
    data = c.data if hasattr(c, "data") else np.asarray(c).ravel()
    return bool(np.all(data >= 0) and np.all(np.abs(data - np.round(data)) < 1e-3))


# ---- the network base ------------------------------------------------------------------------------

# ---- the model base --------------------------------------------------------------------------------

class GenerativeModel(TorchModel):
    """Shared plumbing of the VAE-family models (data, loop bridge, sampling, ELBO score)."""

    net_cls: type[GenerativeNet] = GenerativeNet

    def build_net(self) -> nn.Module:
        return self.net_cls(self.n_features, self.n_classes, self.hparams)

    # ---- data --------------------------------------------------------------------------------------
    def _target(self, X: np.ndarray, counts: Any) -> torch.Tensor:
        if self.net.domain == "unit":
            x = torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.device)
            return (x / self.net.gene_max).clamp(0.0, 1.0)
        dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        return torch.as_tensor(np.asarray(dense, dtype=np.float32), device=self.device)

    def _rows(self, splits: Sequence[Split], batches: Sequence[int], labelled: Sequence[bool]) -> Rows | SparseRows:
        """The training rows of ``splits``; each cell's decoder batch is its split's batch-key code
        (``Split.batch``) when the data have a batch key, else ``batches`` (reference / query)."""
        if any(s.is_sparse for s in splits):
            return self._sparse_rows(splits, batches, labelled)
        xs, targets, libs, bs, ys = [], [], [], [], []
        for s, b, lab in zip(splits, batches, labelled):
            n = s.n_obs
            xs.append(torch.as_tensor(np.asarray(s.X, dtype=np.float32), device=self.device))
            targets.append(self._target(s.X, s.counts))
            lib = np.asarray(s.counts.sum(axis=1), dtype=np.float32).reshape(n, 1)
            libs.append(torch.as_tensor(np.maximum(lib, 1.0), device=self.device))
            bs.append(torch.as_tensor(_batch_codes(s, b), dtype=torch.long, device=self.device))
            y = np.asarray(s.y, dtype=np.int64) if lab and s.y is not None else np.full(n, -1, dtype=np.int64)
            ys.append(torch.as_tensor(y, device=self.device))
        cat = lambda t: torch.cat(t) if len(t) > 1 else t[0]  # noqa: E731
        return Rows(cat(xs), cat(targets), cat(libs), cat(bs), cat(ys))

    def _sparse_rows(self, splits: Sequence[Split], batches: Sequence[int], labelled: Sequence[bool]) -> SparseRows:
        """A large dataset's rows, kept sparse and densified per mini-batch (:class:`SparseRows`)."""
        import scipy.sparse as sp

        X = sp.vstack([sp.csr_matrix(s.X, dtype=np.float32) for s in splits], format="csr")
        counts = sp.vstack([sp.csr_matrix(s.counts, dtype=np.float32) for s in splits], format="csr")
        lib = np.maximum(np.asarray(counts.sum(axis=1), dtype=np.float32).reshape(-1, 1), 1.0)
        b = np.concatenate([_batch_codes(s, v) for s, v in zip(splits, batches)])
        y = np.concatenate([np.asarray(s.y, dtype=np.int64) if lab and s.y is not None
                            else np.full(s.n_obs, -1, dtype=np.int64) for s, lab in zip(splits, labelled)])
        dev = self.device
        return SparseRows(X, counts, torch.as_tensor(lib, device=dev), torch.as_tensor(b, device=dev),
                          torch.as_tensor(y, device=dev),
                          unit_max=self.net.gene_max if self.net.domain == "unit" else None, device=dev)

    def _fit_buffers(self, train: Split) -> None:
        X = train.X if train.is_sparse else np.asarray(train.X, dtype=np.float32)
        net = self.net
        if train.is_sparse:  # the same statistics without expanding the matrix
            gmax = np.asarray(X.max(axis=0).toarray()).ravel()
            e = X.copy()
            e.data = np.expm1(e.data)
            expr = float(np.median(np.asarray(e.sum(axis=1)).ravel()))
        else:
            gmax, expr = X.max(0), float(np.median(np.expm1(X).sum(1)))
        net.gene_max.copy_(torch.as_tensor(np.maximum(gmax, 1e-3), dtype=torch.float32))
        net.expr_scale.copy_(torch.tensor(expr))
        lib = np.asarray(train.counts.sum(axis=1), dtype=np.float64).ravel()
        net.ref_library.copy_(torch.tensor(float(max(np.median(lib), 1.0))))

    # ---- training ----------------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        cfg = super().train_config()
        cfg.monitor = "val_loss"
        return cfg

    def fit(self, train: Split, val: Split, callbacks: Sequence[Any] = (), *,
            unlabelled: Split | None = None) -> dict[str, Any]:
        """Train on the labelled reference (``train``) and, semi-supervised, the ``unlabelled`` cells.

        ``val`` (labelled reference cells) drives early stopping. Unlabelled cells whose
        counts are not raw counts are left out (``history['unlabelled_used']`` says so).
        """
        h = self.hparams
        self._fit_buffers(train)
        use_u = bool(h["use_query"]) and unlabelled is not None and unlabelled.n_obs > 0
        note = ""
        if use_u and self.net.domain == "counts" and not _is_counts(unlabelled):
            use_u, note = False, "the unlabelled cells have no raw counts; trained on the reference only"
        splits = [train] + ([unlabelled] if use_u else [])
        rows = self._rows(splits, [REFERENCE, QUERY][:len(splits)], [True, False][:len(splits)])
        self._train_rows = rows
        self._val_rows = self._rows([val], [REFERENCE], [True])
        cfg = self.train_config()
        budget = int(h.get("cells_budget", 0))
        if budget > 0:
            cfg.max_epochs = min(cfg.max_epochs, max(1, -(-budget // len(rows))))
        from ..training.distributed import steps_per_epoch

        self._steps_per_epoch = steps_per_epoch(len(rows), cfg.batch_size)
        from ..training import fit as train_loop

        info = {"model": self.name, "n_train": int(train.n_obs), "n_unlabelled": int(len(rows) - train.n_obs),
                "n_genes": self.n_features, "n_classes": self.n_classes, "device": str(self.device)}
        idx = torch.arange(len(rows), device=self.device)
        hist = train_loop(self, idx, rows.y, cfg, callbacks=callbacks, generator=self.generator, info=info)
        self.history = hist.to_dict()
        self.history["unlabelled_used"] = use_u
        self.history["n_unlabelled"] = int(len(rows) - train.n_obs)
        if note:
            self.history["note"] = note
        del self._train_rows, self._val_rows
        self._after_fit(train)
        self.fit_reference(train)
        return self.history

    def _after_fit(self, train: Split) -> None:
        pass

    def _gen(self) -> torch.Generator | None:
        return self.generator if self.device.type == "cpu" else None

    def kl_weight(self, step: int) -> float:
        w = int(self.hparams["kl_warmup_epochs"])
        return 1.0 if w <= 0 else min(1.0, step / (w * self._steps_per_epoch))

    def training_step(self, idx: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        self.net.train()
        rows = self._train_rows[idx]
        loss, logs = self.net.loss(rows, self.kl_weight(step), self._gen())
        logs = {k: float(v) for k, v in logs.items()}
        logs["loss"] = float(loss.detach())
        return loss, logs

    def validation_metrics(self) -> dict[str, float]:
        r = self._val_rows
        self.net.eval()
        logits, nelbo = [], []
        for i in range(0, len(r), 2048):
            b = r[slice(i, i + 2048)]
            logits.append(self.net.classify(b.x))
            nelbo.append(self.net.neg_elbo(b.x, b.target, b.library, b.batch))
        logits, nelbo = torch.cat(logits), torch.cat(nelbo)
        ce = F.cross_entropy(logits, r.y)
        val_elbo = float(nelbo.mean())
        return {"val_loss": val_elbo + self.net.alpha * float(ce), "val_neg_elbo": val_elbo, "val_ce": float(ce),
                "val_acc": float((logits.argmax(1) == r.y).float().mean())}

    # ---- inference ---------------------------------------------------------------------------------
    def logits(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net.classify)

    def latent(self, X: np.ndarray) -> np.ndarray:
        return self._batched(X, self.net.latent)

    def sample(self, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        """Generated cells (log1p-normalised, like ``X``) and their class indices, n_per_class each."""
        y = torch.arange(self.n_classes).repeat_interleave(int(n_per_class))
        gen = torch.Generator().manual_seed(self.seed)
        noise = bool(self.hparams["sample_noise"])
        self.net.eval()
        outs = []
        # likelihood draws use the global RNG: seeded here, restored afterwards, no other thread's meanwhile
        with torch.no_grad(), global_rng(self.seed, [] if self.device.type == "cpu" else [self.device]):
            for i in range(0, len(y), 2048):
                yb = y[i:i + 2048].to(self.device)
                outs.append(self.net.generate(yb, gen, noise).cpu())
        xs = torch.cat(outs) if outs else torch.zeros(0, self.n_features)
        return xs.numpy().astype(np.float32), y.numpy()

    def _pseudo_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target and library for cells known only by ``X`` (see the module docstring)."""
        net = self.net
        if net.domain == "unit":
            return (x / net.gene_max).clamp(0.0, 1.0), torch.ones(x.shape[0], 1, device=x.device)
        e = torch.expm1(x).clamp_min(0.0)
        tot = e.sum(1, keepdim=True)
        counts = torch.where(tot > 0, e / tot.clamp_min(1e-12) * net.ref_library, torch.zeros_like(e))
        return counts, net.ref_library.expand(x.shape[0], 1)

    def elbo_score(self, X: np.ndarray) -> np.ndarray:
        """Negative ELBO (higher = less likely under the model = more novel), under the decoder
        batch that fits the cell best among the first :data:`ELBO_BATCHES` (the reference's
        batches come first; one pass per batch, so a batch key of hundreds of samples is capped)."""
        net = self.net

        def fn(x: torch.Tensor) -> torch.Tensor:
            target, lib = self._pseudo_rows(x)
            vals = [net.neg_elbo(x, target, lib, torch.full((x.shape[0],), b, dtype=torch.long, device=x.device))
                    for b in range(min(net.n_batch, ELBO_BATCHES))]
            return torch.stack(vals).min(0).values

        return self._batched(X, fn).astype(np.float64)

    def model_scores(self) -> dict[str, Any]:
        """``"elbo"`` beside the registry's scores (asking for every score returns it too)."""
        return {ELBO: lambda inp: self.elbo_score(inp.X)}


# ---- vae ---------------------------------------------------------------------------------------------

@register("vae", order=20, supports=GEN_SUPPORTS,
          description="VAE on raw counts (scVI-style decoder, five likelihoods) with a classifier on the "
                      "latent mean; semi-supervised on the query; generates cells from per-class latent Gaussians.",
          hparams=common_hparams(likelihood="nb", max_epochs=40))
class VAE(GenerativeModel):
    net_cls = VAENet

    def _after_fit(self, train: Split) -> None:
        """Per-class Gaussian of the aggregate posterior: cov(posterior means) + mean posterior variance."""
        net = self.net
        stats = self._batched(train.X, lambda x: torch.cat(net.encoder(x)[:2], dim=1))
        d = net.n_latent
        mu, var = stats[:, :d].astype(np.float64), stats[:, d:].astype(np.float64)
        means, chols = [], []
        for k in range(self.n_classes):
            sel = train.y == k
            m = mu[sel].mean(0) if sel.any() else np.zeros(d)
            cov = (np.cov(mu[sel], rowvar=False) if sel.sum() > 1 else np.zeros((d, d))) + np.diag(
                var[sel].mean(0) if sel.any() else np.ones(d))
            means.append(m)
            chols.append(np.linalg.cholesky(cov + 1e-6 * np.eye(d)))
        net.class_mean.copy_(torch.as_tensor(np.stack(means), dtype=torch.float32))
        net.class_chol.copy_(torch.as_tensor(np.stack(chols), dtype=torch.float32))


def _batch_codes(split: Split, default: int) -> np.ndarray:
    """Each cell's decoder batch: the batch key's codes of ``split`` (:func:`~cellannot_core.data.prepare.prepare`
    with ``batch_key``), else ``default`` for every cell (reference = 0, query = 1)."""
    if split.batch is not None:
        return np.asarray(split.batch, dtype=np.int64)
    return np.full(split.n_obs, default, dtype=np.int64)
