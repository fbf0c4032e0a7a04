"""Shared blocks of the generative (VAE-family) models.

- :class:`FCLayers`: scvi-tools' fully connected stack ``Linear -> BatchNorm1d(momentum=0.01,
  eps=1e-3) -> ReLU -> Dropout``; one-hot covariates (batch, label) are concatenated to the
  input of every layer (``deeply_inject_covariates``).
- :class:`GaussianEncoder`: ``q(z | x[, covariates]) = N(mu, var)``, var = exp(linear) + 1e-4.
- :class:`CountDecoder`: ``p(x | z[, covariates])`` for any registered likelihood (via
  :class:`~cellannot_core.distributions.LikelihoodHead`).
- :class:`Classifier`: logits from a latent (one hidden layer, or linear).
- :class:`PlanarFlow`: K amortised planar layers with their log-determinants.
- Gaussian helpers: ``log_normal``, ``kl_normal``, ``kl_standard_normal``, ``reparameterize``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from ..distributions import LikelihoodHead
from .blocks import SeededDropout

VAR_EPS = 1e-4
PLANAR_MARGIN = 1e-4
LOG_2PI = math.log(2 * math.pi)


def one_hot_list(cats: Sequence[torch.Tensor | None], sizes: Sequence[int]) -> list[torch.Tensor]:
    """One-hot encodings of integer covariates (``None`` entries are skipped)."""
    out = []
    for c, n in zip(cats, sizes):
        if c is None or n <= 1:
            continue
        out.append(c if c.dtype.is_floating_point else F.one_hot(c.long().view(-1), n).float())
    return out


class FCLayers(nn.Module):
    """``n_layers`` x (Linear -> [BatchNorm] -> ReLU -> [Dropout]), covariates injected in each Linear.

    Covariates are integer tensors (one value per cell) with ``n_cats[i]`` categories, or
    already one-hot float tensors (e.g. class probabilities) of that width.
    """

    def __init__(self, n_in: int, n_out: int, *, n_cats: Sequence[int] = (), n_layers: int = 1,
                 n_hidden: int = 128, dropout: float = 0.1, batch_norm: bool = True) -> None:
        super().__init__()
        self.n_cats = [int(n) if n > 1 else 0 for n in n_cats]
        cat_dim = sum(self.n_cats)
        dims = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.layers = nn.ModuleList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            block: list[nn.Module] = [nn.Linear(d_in + cat_dim, d_out)]
            if batch_norm:
                block.append(nn.BatchNorm1d(d_out, momentum=0.01, eps=1e-3))
            block.append(nn.ReLU())
            if dropout > 0:
                block.append(SeededDropout(dropout))
            self.layers.append(nn.Sequential(*block))

    def forward(self, x: torch.Tensor, *cats: torch.Tensor | None) -> torch.Tensor:
        oh = one_hot_list(cats, self.n_cats)
        for layer in self.layers:
            inp = torch.cat([x, *oh], dim=-1) if oh else x
            x = layer(inp)
        return x


def reparameterize(mu: torch.Tensor, var: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + var.sqrt() * eps


def log_normal(z: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(var)) summed over the last dimension."""
    return -0.5 * (LOG_2PI + var.log() + (z - mu) ** 2 / var).sum(-1)


def kl_normal(mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor, var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)), diagonal, summed over the last dimension."""
    return 0.5 * (var_p.log() - var_q.log() + (var_q + (mu_q - mu_p) ** 2) / var_p - 1).sum(-1)


def kl_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, I)) summed over the last dimension."""
    return 0.5 * (var + mu ** 2 - 1 - var.log()).sum(-1)


class GaussianEncoder(nn.Module):
    """``(mu, var, h) = enc(x, *cats)``: FC stack, then linear mean and exp-linear variance."""

    def __init__(self, n_in: int, n_latent: int, *, n_cats: Sequence[int] = (), n_layers: int = 1,
                 n_hidden: int = 128, dropout: float = 0.1, batch_norm: bool = True) -> None:
        super().__init__()
        self.encoder = FCLayers(n_in, n_hidden, n_cats=n_cats, n_layers=n_layers, n_hidden=n_hidden,
                                dropout=dropout, batch_norm=batch_norm)
        self.mean = nn.Linear(n_hidden, n_latent)
        self.log_var = nn.Linear(n_hidden, n_latent)

    def forward(self, x: torch.Tensor, *cats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x, *cats)
        # clamp keeps exp() finite early in training; scVI has no clamp but var_eps
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0).exp() + VAR_EPS, h


class CountDecoder(nn.Module):
    """``p(x | z, *cats)``: FC stack (covariates injected in every layer) + likelihood head."""

    def __init__(self, n_latent: int, n_genes: int, likelihood: str, *, n_cats: Sequence[int] = (),
                 n_layers: int = 1, n_hidden: int = 128, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.fc = FCLayers(n_latent, n_hidden, n_cats=n_cats, n_layers=n_layers, n_hidden=n_hidden,
                           dropout=dropout, batch_norm=batch_norm)
        self.head = LikelihoodHead(likelihood, n_hidden, n_genes)

    @property
    def domain(self) -> str:
        return self.head.domain

    def forward(self, z: torch.Tensor, library: torch.Tensor | None, *cats: torch.Tensor | None) -> Distribution:
        return self.head(self.fc(z, *cats), library)

    def expression(self, z: torch.Tensor, *cats: torch.Tensor | None) -> torch.Tensor:
        return self.head.expression(self.fc(z, *cats))


class Classifier(nn.Module):
    """Logits over classes from a latent: one hidden FC layer (scANVI's default) or linear."""

    def __init__(self, n_in: int, n_classes: int, *, n_hidden: int = 128, n_layers: int = 1,
                 dropout: float = 0.1, linear: bool = False) -> None:
        super().__init__()
        if linear or n_layers == 0:
            self.net = nn.Linear(n_in, n_classes)
        else:
            self.net = nn.Sequential(FCLayers(n_in, n_hidden, n_layers=n_layers, n_hidden=n_hidden, dropout=dropout),
                                     nn.Linear(n_hidden, n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class PlanarFlow(nn.Module):
    """K planar layers f(z) = z + u_hat tanh(w^T z + b) (Rezende & Mohamed 2015), amortised.

    The parameters (u, w, b) of every layer are computed per cell from the encoder's hidden
    representation ``h`` (as in the paper's amortised flows). Invertibility: u is replaced by
    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a) + 1e-4, so
    w^T u_hat > -1 + 1e-4 (the margin keeps the determinant >= 1e-4 where softplus underflows).

    Log-determinant of one layer: with psi(z) = (1 - tanh^2(w^T z + b)) w,
    det(I + u_hat psi^T) = 1 + u_hat^T psi = 1 + (1 - tanh^2(.)) w^T u_hat  (matrix determinant
    lemma), which is > 0 because 0 < 1 - tanh^2 <= 1 and w^T u_hat > -1. The density of
    z_K = f_K o ... o f_1 (z_0) is log q(z_K) = log q(z_0) - sum_k log(1 + u_hat_k^T psi_k(z_{k-1})).
    """

    def __init__(self, n_latent: int, n_in: int, n_layers: int = 4) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.n_layers = n_layers
        self.params = nn.Linear(n_in, n_layers * (2 * n_latent + 1)) if n_layers > 0 else None
        if self.params is not None:  # start near the identity
            nn.init.normal_(self.params.weight, std=1e-3)
            nn.init.zeros_(self.params.bias)

    def layer_params(self, h: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.params is None:
            return []
        d = self.n_latent
        p = self.params(h).view(h.shape[0], self.n_layers, 2 * d + 1)
        out = []
        for k in range(self.n_layers):
            u, w, b = p[:, k, :d], p[:, k, d:2 * d], p[:, k, 2 * d:]
            wu = (w * u).sum(-1, keepdim=True)
            u_hat = u + (-1 + PLANAR_MARGIN + F.softplus(wu) - wu) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-8)
            out.append((u_hat, w, b))
        return out

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_K, sum_k log|det df_k/dz|)`` for base samples ``z`` (batch x d) and hidden ``h``."""
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for u_hat, w, b in self.layer_params(h):
            a = torch.tanh((w * z).sum(-1, keepdim=True) + b)
            z = z + u_hat * a
            log_det = log_det + torch.log((1 + (1 - a.pow(2)) * (w * u_hat).sum(-1, keepdim=True)).squeeze(-1)
                                          .clamp_min(1e-12))
        return z, log_det
