"""The GMVAE network (models/gmvae.py): a Gaussian-mixture prior with one component per class."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .generative import GenerativeNet, Rows
from .vae import Classifier, FCLayers, GaussianEncoder, kl_normal, reparameterize


PRIOR_SPEED = 10.0


class GMVAENet(GenerativeNet):
    def __init__(self, n_genes: int, n_classes: int, hp: dict[str, Any]) -> None:
        super().__init__(n_genes, n_classes, hp)
        H, d, K = self.n_hidden, self.n_latent, n_classes
        self.per_class = hp["posterior"] == "per_class"
        if self.per_class:
            self.trunk = FCLayers(n_genes, H, n_layers=self.n_layers, n_hidden=H, dropout=self.dropout)
            self.y_head = nn.Sequential(FCLayers(H, H, n_hidden=H, dropout=self.dropout), nn.Linear(H, K))
            self.z_encoder = GaussianEncoder(H, d, n_cats=[K], n_layers=1, n_hidden=H, dropout=0.0)
        else:
            self.encoder = GaussianEncoder(n_genes, d, n_layers=self.n_layers, n_hidden=H, dropout=self.dropout)
            self.classifier = Classifier(d, K, n_hidden=H, dropout=self.dropout)
        # p(z|k) parameters, stored divided by PRIOR_SPEED: the one Adam optimiser then moves them
        # PRIOR_SPEED times faster than the networks (a prior moving 1e-3 per step lagged far
        # behind the encoder on small data, and samples from it missed their class)
        self.prior_mean_raw = nn.Parameter(torch.randn(K, d) / PRIOR_SPEED)
        self.prior_log_var_raw = nn.Parameter(torch.zeros(K, d))
        self.dec = self.decoder()

    @property
    def prior_mean(self) -> torch.Tensor:
        return self.prior_mean_raw * PRIOR_SPEED

    @property
    def prior_log_var(self) -> torch.Tensor:
        return (self.prior_log_var_raw * PRIOR_SPEED).clamp(-10.0, 10.0)

    def prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior_mean[y], self.prior_log_var[y].exp()

    def _component_terms(self, h, target, library, batch, y, gen):
        """Per row: reconstruction and KL_z for component ``y`` (z sampled, or the mean if gen is 'mean')."""
        mu, var, _ = self.z_encoder(h, y)
        z = mu if gen == "mean" else reparameterize(mu, var, gen)
        rec = -self.dec(z, library, self.batch_cov(batch)).log_prob(target).sum(-1)
        pm, pv = self.prior(y)
        return rec, kl_normal(mu, var, pm, pv)

    def _bounds(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        return (self._bounds_per_class if self.per_class else self._bounds_shared)(rows, kl_weight, gen)

    def _bounds_shared(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Per-row negative bound with q(z|x,y) = q(z|x): one reconstruction, K analytic KLs."""
        mu, var, _ = self.encoder(rows.x)
        logits = self.classifier(mu)
        z = mu if gen == "mean" else reparameterize(mu, var, gen)
        rec = -self.dec(z, rows.library, self.batch_cov(rows.batch)).log_prob(rows.target).sum(-1)
        K = self.n_classes
        pm, pv = self.prior(torch.arange(K, device=mu.device))
        kl_k = kl_normal(mu[:, None], var[:, None], pm[None], pv[None])  # cells x K
        log_q = F.log_softmax(logits, dim=-1)
        q = log_q.exp()
        kl_unl = (q * kl_k).sum(-1) + (q * (log_q - self.log_prior)).sum(-1)
        lab = rows.y >= 0
        y = rows.y.clamp_min(0)
        kl_lab = kl_k.gather(1, y[:, None]).squeeze(1) - self.log_prior[y]
        kl = torch.where(lab, kl_lab, kl_unl)
        return rec + kl_weight * kl, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach()}, logits

    def _bounds_per_class(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Per-row negative bound; labelled rows use their class, unlabelled rows all K components.

        All (row, component) pairs go through the encoder and decoder in one call.
        """
        h = self.trunk(rows.x)
        logits = self.y_head(h)
        n, K = rows.x.shape[0], self.n_classes
        i = (rows.y >= 0).nonzero().squeeze(1)
        j = (rows.y < 0).nonzero().squeeze(1)
        n_lab, m = i.numel(), j.numel()
        idx = torch.cat([i, j.repeat(K)])
        comp = torch.cat([rows.y[i], torch.arange(K, device=h.device).repeat_interleave(m)])
        rec, kl = self._component_terms(h[idx], rows.target[idx], rows.library[idx], rows.batch[idx], comp, gen)
        neg = torch.zeros(n, device=h.device, dtype=h.dtype)
        rec_all, kl_all = torch.zeros_like(neg), torch.zeros_like(neg)
        neg[i] = rec[:n_lab] + kl_weight * kl[:n_lab] - self.log_prior[rows.y[i]]
        rec_all[i], kl_all[i] = rec[:n_lab], kl[:n_lab]
        if m:
            rec_u, kl_u = rec[n_lab:].view(K, m).t(), kl[n_lab:].view(K, m).t()
            log_q = F.log_softmax(logits[j], dim=-1)
            q = log_q.exp()
            kl_y = (q * (log_q - self.log_prior)).sum(-1)
            neg[j] = (q * (rec_u + kl_weight * kl_u)).sum(-1) + kl_weight * kl_y
            rec_all[j], kl_all[j] = (q * rec_u).sum(-1), (q * kl_u).sum(-1) + kl_y
        return neg, {"reconstruction": rec_all.mean().detach(), "kl": kl_all.mean().detach()}, logits

    def loss(self, rows: Rows, kl_weight: float, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        neg, logs, logits = self._bounds(rows, kl_weight, gen)
        ce = self.ce(logits, rows.y)
        logs.update(ce=ce.detach(), kl_weight=kl_weight)
        return neg.mean() + self.alpha * ce, logs

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_class:
            return self.y_head(self.trunk(x))
        return self.classifier(self.encoder(x)[0])

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_class:
            return self.encoder(x)[0]
        h = self.trunk(x)
        q = torch.softmax(self.y_head(h), dim=-1)
        K, n = self.n_classes, x.shape[0]
        ys = torch.arange(K, device=x.device).repeat_interleave(n)
        mu = self.z_encoder(h.repeat(K, 1), ys)[0].view(K, n, -1)
        return (q.t()[:, :, None] * mu).sum(0)

    def neg_elbo(self, x, target, library, batch) -> torch.Tensor:
        rows = Rows(x, target, library, batch, torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device))
        return self._bounds(rows, 1.0, "mean")[0]

    def sample_z(self, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        pm, pv = self.prior(y)
        return pm + pv.sqrt() * torch.randn(pm.shape, generator=gen).to(pm.device)
