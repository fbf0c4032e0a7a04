"""The energy-model network (models/energy.py): backbone -> latent, linear head -> logits; VERA's generator."""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import mlp


class EnergyNet(nn.Module):
    """Backbone -> latent; linear head -> logits."""

    def __init__(self, backbone: nn.Module, latent_dim: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(latent_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class VeraGenerator(nn.Module):
    """VERA's generator (Grathwohl et al. 2021): h ~ N(0, I), x = g(h) + sigma * eps on the
    standardised scale, with a learned sigma and a learned per-dimension posterior spread for the
    entropy estimator (q(h | x) ~ N(h, post_sigma^2), importance-weighted)."""

    def __init__(self, n_features: int, noise_dim: int, hidden: list[int], *, act: str = "elu") -> None:
        super().__init__()
        self.noise_dim = int(noise_dim)
        self.g = nn.Sequential(mlp(self.noise_dim, hidden, act=act), nn.Linear(hidden[-1], n_features))
        self.logsigma = nn.Parameter(torch.full((1,), math.log(0.01)))
        self.post_logsigma = nn.Parameter(torch.full((self.noise_dim,), math.log(0.1)))

    def sample(self, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.logsigma.device
        h = torch.randn(n, self.noise_dim, generator=gen).to(dev)
        mu = self.g(h)
        return mu + torch.randn(mu.shape, generator=gen).to(dev) * self.logsigma.exp(), h

    def log_joint(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log q(x, h) per row and g(h)."""
        mu = self.g(h)
        sigma = self.logsigma.exp()
        lx = (-0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(1)
        lh = (-0.5 * h ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
        return lx + lh, mu

    def entropy_surrogate(self, x: torch.Tensor, h: torch.Tensor, n_post: int = 20,
                          gen: torch.Generator | None = None) -> torch.Tensor:
        """A scalar whose gradient (through ``x``) is VERA's estimate of the gradient of the
        generator's entropy: the score c = E_{q(h'|x)}[(x - g(h')) / sigma^2] from importance-
        weighted posterior samples, then mean over cells of c . x (c detached)."""
        ps = self.post_logsigma.detach().exp()
        eps = torch.randn((n_post,) + h.shape, generator=gen).to(h.device)
        hs = h.detach()[None] + eps * ps
        log_post = (-0.5 * eps ** 2 - torch.log(ps) - 0.5 * math.log(2 * math.pi)).sum(2)
        with torch.no_grad():
            xr = x.detach()[None].expand(n_post, -1, -1).reshape(-1, x.shape[1])
            lq, mu = self.log_joint(xr, hs.reshape(-1, h.shape[1]))
            w = (lq.view(n_post, -1) - log_post).softmax(0)
            c = ((x.detach()[None] - mu.view(n_post, *x.shape)) / self.logsigma.exp() ** 2 * w[..., None]).sum(0)
        return (c * x).sum(1).mean()

    def posterior_loss(self, x: torch.Tensor, h: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO of the posterior spread (VERA learns it on its own optimiser)."""
        ps = self.post_logsigma.exp()
        hp = h.detach() + torch.randn(h.shape, generator=gen).to(h.device) * ps
        joint, _ = self.log_joint(x.detach(), hp)
        ent = (torch.log(ps) + 0.5 * math.log(2 * math.pi * math.e)).sum()
        return -(joint + ent).mean()
