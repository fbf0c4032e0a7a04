"""Likelihoods as torch Distributions, reused by every generative model.

``LIKELIHOODS`` maps a name to its class (an unknown name raises ConfigError listing the valid
ones); :class:`LikelihoodHead` builds the decoder heads a likelihood needs.
"""
from ._registry import LIKELIHOOD_HELP, LIKELIHOODS, get_likelihood, likelihood_names, register_likelihood
from ._counts import (  # noqa: I001  (registration order = display order)
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    ZeroInflatedPoisson,
    log_nb,
    log_poisson,
    log_zinb,
    log_zip,
)
from ._continuous_bernoulli import ContinuousBernoulli, cb_log_norm
from .heads import PARAM_HEADS, LikelihoodHead

__all__ = ["LIKELIHOODS", "LIKELIHOOD_HELP", "PARAM_HEADS", "ContinuousBernoulli", "LikelihoodHead",
           "NegativeBinomial", "Poisson", "ZeroInflatedNegativeBinomial", "ZeroInflatedPoisson", "cb_log_norm",
           "get_likelihood", "likelihood_names", "log_nb", "log_poisson", "log_zinb", "log_zip",
           "register_likelihood"]
