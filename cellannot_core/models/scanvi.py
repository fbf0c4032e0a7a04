"""scANVI (Xu et al. 2021) as implemented in scvi-tools' SCANVAE (METHODS.md 2).

Generative model: c ~ Cat(1/C) (fixed uniform prior), z2 ~ N(0, I),
z1 | z2, c ~ N(f_mu(z2, c), f_var(z2, c)), observed library l = sum of the cell's counts,
x_g | z1, s ~ ZINB(mu = l rho_g(z1, s), theta_g, pi_g(z1, s)) with s the dataset covariate
(reference = 0, query = 1) one-hot in every decoder layer; per-gene dispersion.
Inference: q(z1 | x) (encoder on the log-expression, no covariate), q(c | z1) (classifier:
one hidden layer of 128 with batch norm and dropout 0.1), q(z2 | z1, c).

Loss, for every cell of the mini-batch (labelled or not), with c marginalised by broadcasting
all C labels (as SCANVAE.loss):
  reconst = -log p(x | z1, l, s) + log q(z1 | x) + sum_c q(c | z1) [-log p(z1 | z2_c, c)]
  KL      = sum_c q(c | z1) KL(q(z2 | z1, c) || N(0, I)) + KL(q(c | z1) || Cat(1/C))
  loss    = mean(reconst + kl_weight KL) + classification_ratio CE(q(c | mu_z1(x_lab)), c_lab)
with z2_c ~ q(z2 | z1, c). As in scvi-tools, labelled cells are scored with the unlabelled
bound plus the cross-entropy (the scANVI documentation writes L_U + L_S; the code uses L_U for
all cells). Difference: the cross-entropy uses the labelled cells of the same shuffled
mini-batch (mean over them) instead of a separate labelled mini-batch. Query cells are
unlabelled in training. Prediction: q(c | z1) at the posterior mean of z1.

Naming: the W&B M2 report calls the classifier's latent z2; here (and in scANVI) it is z1.
"""
from __future__ import annotations



from .registry import register
from ..nn.scanvi import SCANVINet
from .vae import GEN_SUPPORTS, GenerativeModel, common_hparams


@register("scanvi", order=22, supports=GEN_SUPPORTS,
          description="scANVI: semi-supervised hierarchical VAE (z2, c -> z1 -> ZINB counts, decoder conditioned "
                      "on reference/query), query cells unlabelled; classifier q(c|z1) on the latent mean.",
          hparams=common_hparams(likelihood="zinb", max_epochs=40, classification_ratio=50.0))
class SCANVI(GenerativeModel):
    net_cls = SCANVINet
