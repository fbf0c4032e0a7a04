"""The M2 + planar-flow network (models/m2flow.py)."""
from __future__ import annotations

from typing import Any

import torch

from .generative import Rows
from .scanvi import HierarchicalNet
from .vae import PlanarFlow, log_normal, reparameterize


class M2FlowNet(HierarchicalNet):
    def __init__(self, n_genes: int, n_classes: int, hp: dict[str, Any]) -> None:
        super().__init__(n_genes, n_classes, hp)
        self.flow = PlanarFlow(self.n_latent, self.n_hidden, int(hp["flow_layers"]))

    def encode_z1(self, x: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, var, h = self.z1_encoder(x)
        z0 = mu if gen == "mean" else reparameterize(mu, var, gen)
        z1, log_det = self.flow(z0, h)
        mean_latent = z1 if gen == "mean" else self.flow(mu, h)[0]
        return z1, log_normal(z0, mu, var) - log_det, mean_latent

    def bound(self, rows: Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        z1, log_qz1, z1_mean = self.encode_z1(rows.x, gen)
        rec = self.reconstruction(z1, rows.target, rows.library, rows.batch)
        nlp, kl_rest = self.class_terms(z1, rows.y, gen)
        kl = log_qz1 + nlp + kl_rest
        return rec + kl_weight * kl, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach()}, z1_mean
