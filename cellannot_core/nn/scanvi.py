"""The hierarchical semi-supervised networks (models/scanvi.py, m2flow.py): scANVI's bound."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .generative import GenerativeNet, Rows
from .vae import Classifier, GaussianEncoder, kl_standard_normal, log_normal, reparameterize


class HierarchicalNet(GenerativeNet):
    """z1 from x; c and z2 above z1 (the M1+M2 structure shared by scANVI and M2 + flow)."""

    def __init__(self, n_genes: int, n_classes: int, hp: dict[str, Any]) -> None:
        super().__init__(n_genes, n_classes, hp)
        d, K = self.n_latent, n_classes
        self.z1_encoder = GaussianEncoder(n_genes, d, n_layers=self.n_layers, n_hidden=self.n_hidden,
                                          dropout=self.dropout)
        self.dec = self.decoder()
        self.classifier = Classifier(d, K, n_hidden=128, dropout=self.dropout)
        self.z2_encoder = GaussianEncoder(d, d, n_cats=[K], n_layers=self.n_layers, n_hidden=self.n_hidden,
                                          dropout=self.dropout)  # q(z2 | z1, c)
        self.z1_decoder = GaussianEncoder(d, d, n_cats=[K], n_layers=self.n_layers, n_hidden=self.n_hidden,
                                          dropout=0.0)  # p(z1 | z2, c)

    # q(z1 | x): (sample or mean, log q(z1|x) at it, the deterministic latent) - M2+flow overrides
    def encode_z1(self, x: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, var, _ = self.z1_encoder(x)
        z1 = mu if gen == "mean" else reparameterize(mu, var, gen)
        return z1, log_normal(z1, mu, var), mu

    def upper_terms(self, z1: torch.Tensor, ys: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """For z1 (rows) and classes ys: -log p(z1 | z2, c) with z2 ~ q(z2 | z1, c), and KL(q(z2|z1,c) || N(0,I))."""
        mu2, var2, _ = self.z2_encoder(z1, ys)
        z2 = mu2 if gen == "mean" else reparameterize(mu2, var2, gen)
        pm, pv, _ = self.z1_decoder(z2, ys)
        return -log_normal(z1, pm, pv), kl_standard_normal(mu2, var2)

    def class_terms(self, z1: torch.Tensor, y: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """The class level of the bound, per row: ``(a, b)``.

        Labelled rows (y >= 0): a = -log p(z1 | z2, y), b = KL(q(z2 | z1, y) || N(0, I)) - log p(y).
        Unlabelled rows (y = -1): a = sum_c q(c|z1) [-log p(z1 | z2_c, c)],
        b = sum_c q(c|z1) KL(q(z2 | z1, c) || N(0, I)) + KL(q(c|z1) || p(c)).
        All rows go through the networks in one call (batch norm sees the whole mini-batch).
        """
        n, K = z1.shape[0], self.n_classes
        i = (y >= 0).nonzero().squeeze(1)
        j = (y < 0).nonzero().squeeze(1)
        n_lab, m = i.numel(), j.numel()
        rows = torch.cat([i, j.repeat(K)])
        ys = torch.cat([y[i], torch.arange(K, device=z1.device).repeat_interleave(m)])
        nlp, kl2 = self.upper_terms(z1[rows], ys, gen)
        a = torch.zeros(n, device=z1.device, dtype=z1.dtype)
        b = torch.zeros_like(a)
        a[i] = nlp[:n_lab]
        b[i] = kl2[:n_lab] - self.log_prior[y[i]]
        if m:
            log_q = F.log_softmax(self.classifier(z1), dim=-1)[j]
            q = log_q.exp()
            a[j] = (q * nlp[n_lab:].view(K, m).t()).sum(-1)
            b[j] = (q * kl2[n_lab:].view(K, m).t()).sum(-1) + (q * (log_q - self.log_prior)).sum(-1)
        return a, b

    def reconstruction(self, z1, target, library, batch) -> torch.Tensor:
        return -self.dec(z1, library, self.batch_cov(batch)).log_prob(target).sum(-1)

    def scanvi_bound(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        z1, log_qz1, mu1 = self.encode_z1(rows.x, gen)
        rec = self.reconstruction(z1, rows.target, rows.library, rows.batch)
        unlabelled = torch.full_like(rows.y, -1)  # scvi-tools scores every cell with the unlabelled bound
        nlp, kl = self.class_terms(z1, unlabelled, gen)
        reconst = rec + log_qz1 + nlp
        return reconst + kl_weight * kl, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach()}, mu1

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.latent(x))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_z1(x, "mean")[2]

    def sample_z(self, y: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """z2 ~ N(0, I), z1 ~ p(z1 | z2, c)."""
        z2 = torch.randn(y.shape[0], self.n_latent, generator=gen).to(y.device)
        pm, pv, _ = self.z1_decoder(z2, y)
        return pm + pv.sqrt() * torch.randn(pm.shape, generator=gen).to(pm.device)


    # the bound per cell, its logs and the latent mean that feeds the classifier (M2 + flow overrides)
    def bound(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        return self.scanvi_bound(rows, kl_weight, gen)

    def loss(self, rows: Rows, kl_weight: float, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
        neg, logs, latent_mean = self.bound(rows, kl_weight, gen)
        ce = self.ce(self.classifier(latent_mean), rows.y)
        logs.update(ce=ce.detach(), kl_weight=kl_weight)
        return neg.mean() + self.alpha * ce, logs

    def neg_elbo(self, x, target, library, batch) -> torch.Tensor:
        rows = Rows(x, target, library, batch, torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device))
        return self.bound(rows, 1.0, "mean")[0]


class SCANVINet(HierarchicalNet):
    """scANVI: the hierarchical network with scvi-tools' bound (every cell scored as unlabelled)."""
