"""GMVAE: a VAE whose prior is a Gaussian mixture with one component per reference class.

Generative model (scVAE, Grønbech et al. 2020; Gangloff's tutorial, METHODS.md 3):
p(y) = Cat(1/K), p(z | y = k) = N(m_k, diag s_k^2) (learned), p(x | z[, dataset]) any of the
five likelihoods. Inference: q(y | x) (the classifier) and q(z | x, y), in one of two forms
(hyper-parameter ``posterior``):

- ``"shared"`` (default): q(z | x, y) = q(z | x), one Gaussian encoder; q(y | x) is a
  classifier on its mean (the VaDE factorisation, Jiang et al. 2017). One decoder pass per cell.
- ``"per_class"``: scVAE's q(z | x, y = k), the class one-hot entering the encoder after a
  shared trunk; q(y | x) from the trunk. K decoder passes per unlabelled cell. On
  kang_ctrl -> pbmc3k this form re-assigned the query cells to wrong components (acc_in 0.23,
  reference validation accuracy 0.997): every component has its own encoder path, so the
  unlabelled bound can explain a shifted query cell under any component. The shared form
  ties the class of a query cell to where its latent falls, and transfers (see the bench).

ELBO, summed exactly over the components (no Gumbel-softmax):
- labelled cell (class c):  E_q(z|x,c)[log p(x|z)] - KL(q(z|x,c) || p(z|c)) + log p(c);
- unlabelled (query) cell:  sum_k q(k|x) [E_q(z|x,k) log p(x|z) - KL(q(z|x,k) || p(z|k))]
                            - KL(q(y|x) || p(y)),  KL to the uniform p(y) = log K - H[q(y|x)]
  (with the shared posterior the reconstruction term does not depend on k).
Loss = mean over the mini-batch of the negative bounds (KL terms times the warm-up weight)
+ classification_ratio x cross-entropy of q(y|x) on labelled cells.

latent(X) = E_q[z | x] (= sum_k q(k|x) mu_k(x) for ``per_class``); sample() draws
z ~ p(z | y = k) and decodes.
"""
from __future__ import annotations



from .registry import HParam, register
from ..nn.gmvae import GMVAENet
from .vae import GEN_SUPPORTS, GenerativeModel, common_hparams

@register("gmvae", order=21, supports=GEN_SUPPORTS,
          description="GMVAE: Gaussian-mixture prior with one component per reference class, ELBO summed "
                      "exactly over components, semi-supervised on the query; classifier = q(y|x).",
          hparams={**common_hparams(likelihood="nb", max_epochs=40),
                   "posterior": HParam("shared", "q(z|x,y): 'shared' = one Gaussian q(z|x) for every component "
                                       "(transfers to a shifted query); 'per_class' = scVAE's q(z|x,y=k) "
                                       "(K decoder passes per query cell)", choices=("shared", "per_class"),
                                       advanced=True)})
class GMVAE(GenerativeModel):
    net_cls = GMVAENet
