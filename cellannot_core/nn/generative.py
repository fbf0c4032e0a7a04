"""Networks of the VAE family (models/vae.py, gmvae.py, scanvi.py, m2flow.py use them): the
shared base :class:`GenerativeNet` (scaling buffers, decoder, cross-entropy, generation), the
plain :class:`VAENet`, and :class:`Rows`, what a loss gets for a mini-batch."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import get_likelihood
from .vae import Classifier, CountDecoder, GaussianEncoder, kl_standard_normal, reparameterize

N_BATCH = 2  # dataset covariate levels without a batch key: reference, query
REFERENCE, QUERY = 0, 1


class Rows:
    """Everything a loss needs for a set of cells, as device tensors indexed by row."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, library: torch.Tensor, batch: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.x, self.target, self.library, self.batch, self.y = x, target, library, batch, y

    def __getitem__(self, idx: torch.Tensor) -> "Rows":
        return Rows(self.x[idx], self.target[idx], self.library[idx], self.batch[idx], self.y[idx])

    def __len__(self) -> int:
        return int(self.x.shape[0])


class SparseRows:
    """:class:`Rows` of a large dataset kept sparse: the log-expression and counts as CSR
    matrices (on the CPU), densified a mini-batch at a time on indexing (the target is the
    counts, or for a unit-domain likelihood ``X / gene_max`` clipped to [0, 1])."""

    def __init__(self, X, counts, library: torch.Tensor, batch: torch.Tensor, y: torch.Tensor, *,
                 unit_max: torch.Tensor | None, device: torch.device) -> None:
        self.X, self.counts, self.library, self.batch, self.y = X, counts, library, batch, y
        self.unit_max, self.device = unit_max, device

    def __getitem__(self, idx) -> Rows:
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else idx.detach().cpu().numpy()
        x = torch.as_tensor(self.X[rows].toarray(), dtype=torch.float32, device=self.device)
        if self.unit_max is not None:
            target = (x / self.unit_max).clamp(0.0, 1.0)
        else:
            target = torch.as_tensor(self.counts[rows].toarray(), dtype=torch.float32, device=self.device)
        t = torch.as_tensor(rows, device=self.library.device)
        return Rows(x, target, self.library[t], self.batch[t], self.y[t])

    def __len__(self) -> int:
        return int(self.X.shape[0])


class GenerativeNet(nn.Module):
    """Base of the per-model networks: the scaling buffers and the methods models call.

    Subclasses implement ``loss``, ``classify``, ``latent``, ``neg_elbo`` and ``sample_z``.
    """

    def __init__(self, n_genes: int, n_classes: int, hp: dict[str, Any]) -> None:
        super().__init__()
        self.n_genes, self.n_classes = n_genes, n_classes
        self.n_latent, self.n_hidden, self.n_layers = int(hp["n_latent"]), int(hp["n_hidden"]), int(hp["n_layers"])
        self.dropout = float(hp["dropout"])
        self.alpha = float(hp["classification_ratio"])
        self.n_batch = int(hp.get("n_batches", N_BATCH)) if hp["batch_covariate"] else 1
        self.likelihood = hp["likelihood"]
        self.domain = get_likelihood(self.likelihood).domain
        self.register_buffer("gene_max", torch.ones(n_genes))  # per-gene max of reference X (unit domain)
        self.register_buffer("expr_scale", torch.tensor(1e4))  # median sum_g expm1(X_g) of reference cells
        self.register_buffer("ref_library", torch.tensor(1e3))  # median library (counts on the model genes)
        self.register_buffer("log_prior", torch.full((n_classes,), -float(np.log(n_classes))))  # uniform p(c)

    def decoder(self, n_cats: Sequence[int] = ()) -> CountDecoder:
        return CountDecoder(self.n_latent, self.n_genes, self.likelihood, n_cats=[self.n_batch, *n_cats],
                            n_layers=self.n_layers, n_hidden=self.n_hidden)

    def batch_cov(self, batch: torch.Tensor) -> torch.Tensor | None:
        return batch if self.n_batch > 1 else None

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lab = y >= 0
        if not bool(lab.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[lab], y[lab])

    def to_log_expression(self, expr: torch.Tensor) -> torch.Tensor:
        """Decoder expression -> the scale of ``X`` (see the module docstring)."""
        if self.domain == "unit":
            return expr * self.gene_max
        return torch.log1p(expr * self.expr_scale)

    # to implement
    def loss(self, rows: Rows, kl_weight: float, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def neg_elbo(self, x: torch.Tensor, target: torch.Tensor, library: torch.Tensor,
                 batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_z(self, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Latents (the decoder's input) of new cells of classes ``y``, drawn from the model."""
        raise NotImplementedError

    def generate(self, y: torch.Tensor, gen: torch.Generator | None, noise: bool = False) -> torch.Tensor:
        """New cells of classes ``y`` on the scale of ``X``, decoded with the reference covariate.

        ``noise=False``: the decoded expression (proportions rho, or the unit-domain mean);
        ``noise=True``: a draw from the likelihood (counts at the median reference library,
        then normalised like ``X``; unit domain: a draw times the per-gene maximum).
        """
        z = self.sample_z(y, gen)
        cov = self.batch_cov(torch.full_like(y, REFERENCE))
        if not noise:
            return self.to_log_expression(self.dec.expression(z, cov))
        x = self.dec(z, self.ref_library.expand(y.shape[0], 1), cov).sample()
        if self.domain == "unit":
            return x * self.gene_max
        return torch.log1p(x / x.sum(1, keepdim=True).clamp_min(1.0) * self.expr_scale)


class VAENet(GenerativeNet):
    """q(z|x) Gaussian, p(z) = N(0, I), p(x|z[, dataset]); classifier on E[z|x]."""

    def __init__(self, n_genes: int, n_classes: int, hp: dict[str, Any]) -> None:
        super().__init__(n_genes, n_classes, hp)
        self.encoder = GaussianEncoder(n_genes, self.n_latent, n_layers=self.n_layers, n_hidden=self.n_hidden,
                                       dropout=self.dropout)
        self.dec = self.decoder()
        self.classifier = Classifier(self.n_latent, n_classes, n_hidden=self.n_hidden, dropout=self.dropout)
        # per-class Gaussians of the aggregate posterior, fitted after training (for sample())
        self.register_buffer("class_mean", torch.zeros(n_classes, self.n_latent))
        self.register_buffer("class_chol", torch.eye(self.n_latent).repeat(n_classes, 1, 1))

    def _elbo_terms(self, x, target, library, batch, z=None, mu=None, var=None):
        if mu is None:
            mu, var, _ = self.encoder(x)
        z = mu if z is None else z
        rec = -self.dec(z, library, self.batch_cov(batch)).log_prob(target).sum(-1)
        return rec, kl_standard_normal(mu, var), mu

    def loss(self, rows: Rows, kl_weight: float, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        mu, var, _ = self.encoder(rows.x)
        z = reparameterize(mu, var, gen)
        rec, kl, _ = self._elbo_terms(rows.x, rows.target, rows.library, rows.batch, z=z, mu=mu, var=var)
        ce = self.ce(self.classifier(mu), rows.y)
        loss = (rec + kl_weight * kl).mean() + self.alpha * ce
        return loss, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach(), "ce": ce.detach(),
                      "kl_weight": kl_weight}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x)[0])

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def neg_elbo(self, x, target, library, batch) -> torch.Tensor:
        rec, kl, _ = self._elbo_terms(x, target, library, batch)
        return rec + kl

    def sample_z(self, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        eps = torch.randn(y.shape[0], self.n_latent, generator=gen).to(y.device)
        return self.class_mean[y] + torch.einsum("nij,nj->ni", self.class_chol[y], eps)
