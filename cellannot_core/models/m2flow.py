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



from .registry import HParam, register
from ..nn.m2flow import M2FlowNet
from .vae import GEN_SUPPORTS, GenerativeModel, common_hparams


@register("m2flow", order=23, supports=GEN_SUPPORTS,
          description="M2 + flow: Kingma's semi-supervised M2 on an M1 latent, with planar normalising-flow "
                      "layers on the latent that feeds the classifier; query cells unlabelled.",
          hparams={**common_hparams(likelihood="zinb", max_epochs=40, classification_ratio=50.0),
                   "flow_layers": HParam(4, "planar flow layers K on q(z1|x) (0 = Gaussian posterior)",
                                         low=0, high=64)})
class M2Flow(GenerativeModel):
    net_cls = M2FlowNet
