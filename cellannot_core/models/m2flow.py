"""M2 + flow: Kingma et al.'s semi-supervised M2 stacked on an M1 latent, with a planar flow.

Structure (M1+M2, METHODS.md 5; the scANVI graph): y ~ Cat(1/K), z2 ~ N(0, I),
z1 | z2, y ~ N(f(z2, y)), x | z1[, dataset] any of the five likelihoods (observed library).
Inference: q(z1 | x) = a Gaussian N(mu(x), var(x)) pushed through K planar layers whose
parameters are computed from the encoder's hidden layer (amortised flow):

    z1 = f_K o ... o f_1 (z0),  z0 ~ N(mu(x), var(x)),
    log q(z1 | x) = log N(z0; mu, var) - sum_k log(1 + (1 - tanh^2(w_k^T z_{k-1} + b_k)) w_k^T u_hat_k)

(log-determinant of a planar layer by the matrix determinant lemma; u_hat keeps w^T u_hat > -1
so every layer is invertible: see ``nn.vae.PlanarFlow``). The classifier q(y | z1) reads the
flow's output: the flow lets the latent that feeds the classifier be non-Gaussian (the W&B
"Cell Discovery Catalog" report, which calls this latent z2). q(z2 | z1, y) is Gaussian.

Objective (Kingma's J^alpha, per cell, KL-like terms times the warm-up weight w):
- labelled (x, y):  L = -log p(x|z1) + w [log q(z1|x) - log p(z1|z2, y) + KL(q(z2|z1,y) || N(0,I))] - log p(y)
- unlabelled x:     U = -log p(x|z1) + w [log q(z1|x) + sum_y q(y|z1) (-log p(z1|z2_y, y) + KL_z2,y)
                                          + KL(q(y|z1) || p(y))]
- loss = mean over the batch of L or U + classification_ratio CE(q(y | f(mu)), y) on labelled cells.
Unlike the ``scanvi`` model, labelled cells get the labelled bound L (the scANVI docs' L_S) and
the KL of z1 is warmed up with the rest. One MC sample per cell.

Deterministic latent (``latent``, and the classifier at prediction): z1 = f(mu(x)), the flow
applied to the base mean (the mean of the flow density has no closed form).
"""
from __future__ import annotations

from typing import Any

import torch

from ..nn.vae import PlanarFlow, log_normal, reparameterize
from .registry import HParam, register
from .scanvi import HierarchicalNet
from .vae import GEN_SUPPORTS, GenerativeModel, _Rows, common_hparams


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

    def bound(self, rows: _Rows, kl_weight: float, gen) -> tuple[torch.Tensor, dict, torch.Tensor]:
        z1, log_qz1, z1_mean = self.encode_z1(rows.x, gen)
        rec = self.reconstruction(z1, rows.target, rows.library, rows.batch)
        nlp, kl_rest = self.class_terms(z1, rows.y, gen)
        kl = log_qz1 + nlp + kl_rest
        return rec + kl_weight * kl, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach()}, z1_mean


@register("m2flow", order=23, supports=GEN_SUPPORTS,
          description="M2 + flow: Kingma's semi-supervised M2 on an M1 latent, with planar normalising-flow "
                      "layers on the latent that feeds the classifier; query cells unlabelled.",
          hparams={**common_hparams(likelihood="zinb", max_epochs=40, classification_ratio=50.0),
                   "flow_layers": HParam(4, "planar flow layers K on q(z1|x) (0 = Gaussian posterior)",
                                         low=0, high=64)})
class M2Flow(GenerativeModel):
    net_cls = M2FlowNet
