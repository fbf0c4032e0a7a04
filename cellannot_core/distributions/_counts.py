"""Count likelihoods as torch Distributions: NB, ZINB, Poisson, ZIP.

Log-probabilities follow the numerically stable forms of scvi-tools
(``log_nb_positive`` / ``log_zinb_positive``, METHODS.md 2.7) and scVAE (METHODS.md 3.4):
every zero-inflation probability is handled through its logit with ``softplus``, every rate
through its logarithm where one is available. ``x`` may be non-integer (lgamma extends the
pmf continuously), which the ELBO novelty score uses on pseudo-counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all

from ._registry import register_likelihood

EPS = 1e-8


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """log NB(x; mean mu, inverse dispersion theta) (scvi-tools' ``log_nb_positive``)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu) + x * (torch.log(mu + eps) - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))


def log_zinb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor,
             eps: float = EPS) -> torch.Tensor:
    """log ZINB with dropout probability sigmoid(zi_logits) (scvi-tools' ``log_zinb_positive``).

    ``softplus(-zi_logits) = -log pi``; ``-softplus(-zi) - zi = log(1 - pi)``;
    x = 0: ``log(pi + (1-pi) NB(0)) = softplus(-zi + theta*log(theta/(theta+mu))) - softplus(-zi)``.
    """
    softplus_pi = F.softplus(-zi_logits)
    log_theta_eps = torch.log(theta + eps)
    log_theta_mu_eps = torch.log(theta + mu + eps)
    pi_theta_log = -zi_logits + theta * (log_theta_eps - log_theta_mu_eps)
    case_zero = F.softplus(pi_theta_log) - softplus_pi
    case_non_zero = (-softplus_pi + pi_theta_log + x * (torch.log(mu + eps) - log_theta_mu_eps)
                     + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))
    return torch.where(x < eps, case_zero, case_non_zero)


def log_poisson(x: torch.Tensor, log_rate: torch.Tensor | None, rate: torch.Tensor) -> torch.Tensor:
    """x log(lambda) - lambda - lgamma(x + 1); ``x * log_rate`` is 0 where x = 0 (even for rate 0)."""
    if log_rate is None:
        x_log_rate = torch.xlogy(x, rate)
    else:
        x_log_rate = torch.where(x == 0, torch.zeros_like(log_rate), x * log_rate)
    return x_log_rate - rate - torch.lgamma(x + 1)


def log_zip(x: torch.Tensor, log_rate: torch.Tensor | None, rate: torch.Tensor, zi_logits: torch.Tensor) -> torch.Tensor:
    """ZIP (METHODS.md 3.4): x = 0: logsumexp(log pi, log(1-pi) - lambda); x > 0: log(1-pi) + log Poisson."""
    log_pi = -F.softplus(-zi_logits)
    log_1m_pi = -F.softplus(zi_logits)
    case_zero = torch.logaddexp(log_pi, log_1m_pi - rate)
    case_non_zero = log_1m_pi + log_poisson(x, log_rate, rate)
    return torch.where(x < EPS, case_zero, case_non_zero)


def _gamma_poisson(mu: torch.Tensor, theta: torch.Tensor, sample_shape: torch.Size) -> torch.Tensor:
    """NB draws as Poisson(Gamma(shape=theta, rate=theta/mu)) (mean mu, variance mu + mu^2/theta)."""
    shape = sample_shape + mu.shape
    with torch.no_grad():
        lam = torch.distributions.Gamma(theta.expand(shape), (theta / mu.clamp_min(EPS)).expand(shape)).sample()
        return torch.poisson(lam)


class _CountDistribution(Distribution):
    """Shared bits: non-negative support, domain 'counts' (decoded from library x proportions)."""

    support = constraints.nonnegative_integer
    domain = "counts"

    def _check(self, value: torch.Tensor) -> None:
        if self._validate_args:
            self._validate_sample(value)


@register_likelihood("nb", "negative binomial (mean, per-gene inverse dispersion)")
class NegativeBinomial(_CountDistribution):
    """NB with mean ``mu`` and inverse dispersion ``theta`` (variance mu + mu^2 / theta).

    scipy's ``nbinom(n=theta, p=theta / (theta + mu))`` is the same distribution.
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    decoder_params = ("mu", "theta")

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, validate_args: bool | None = False) -> None:
        self.mu, self.theta = broadcast_all(mu, theta)
        super().__init__(self.mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu ** 2 / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        return log_nb(value, self.mu, self.theta)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return _gamma_poisson(self.mu, self.theta, torch.Size(sample_shape))


@register_likelihood("zinb", "zero-inflated negative binomial (scVI / scANVI default)")
class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """NB mixed with a point mass at 0 of probability ``sigmoid(zi_logits)``."""

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive, "zi_logits": constraints.real}
    decoder_params = ("mu", "theta", "zi_logits")

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor,
                 validate_args: bool | None = False) -> None:
        mu, theta, self.zi_logits = broadcast_all(mu, theta, zi_logits)
        super().__init__(mu, theta, validate_args=validate_args)

    @property
    def zi_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.zi_probs) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        pi = self.zi_probs
        return (1 - pi) * (self.mu + self.mu ** 2 / self.theta) + pi * (1 - pi) * self.mu ** 2

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        return log_zinb(value, self.mu, self.theta, self.zi_logits)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        x = _gamma_poisson(self.mu, self.theta, shape)
        with torch.no_grad():
            dropped = torch.bernoulli(self.zi_probs.expand(shape + self.mu.shape)).bool()
        return x.masked_fill(dropped, 0.0)


class _RateMixin:
    """Rate given either as ``rate`` or as ``log_rate`` (the log is kept exactly when given)."""

    def _set_rate(self, rate: torch.Tensor | None, log_rate: torch.Tensor | None) -> None:
        if (rate is None) == (log_rate is None):
            raise ValueError("give exactly one of rate or log_rate")
        if log_rate is not None:
            self.log_rate = torch.as_tensor(log_rate)
            self.rate = self.log_rate.exp()
        else:
            self.rate = torch.as_tensor(rate)
            self.log_rate = None


@register_likelihood("poisson", "Poisson (rate = library x expression proportions)")
class Poisson(_RateMixin, _CountDistribution):
    """Poisson with ``rate`` or ``log_rate`` (log p = x log(rate) - rate - lgamma(x + 1))."""

    arg_constraints = {"rate": constraints.nonnegative}
    decoder_params = ("log_rate",)

    def __init__(self, rate: torch.Tensor | None = None, log_rate: torch.Tensor | None = None,
                 validate_args: bool | None = False) -> None:
        self._set_rate(rate, log_rate)
        super().__init__(self.rate.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.rate

    @property
    def variance(self) -> torch.Tensor:
        return self.rate

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        return log_poisson(value, self.log_rate, self.rate)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.poisson(self.rate.expand(torch.Size(sample_shape) + self.rate.shape))


@register_likelihood("zip", "zero-inflated Poisson")
class ZeroInflatedPoisson(_RateMixin, _CountDistribution):
    """Poisson mixed with a point mass at 0 of probability ``sigmoid(zi_logits)``."""

    arg_constraints = {"rate": constraints.nonnegative, "zi_logits": constraints.real}
    decoder_params = ("log_rate", "zi_logits")

    def __init__(self, rate: torch.Tensor | None = None, zi_logits: torch.Tensor | None = None, *,
                 log_rate: torch.Tensor | None = None, validate_args: bool | None = False) -> None:
        if zi_logits is None:
            raise ValueError("ZeroInflatedPoisson needs zi_logits")
        self._set_rate(rate, log_rate)
        self.zi_logits = torch.as_tensor(zi_logits)
        shape = torch.broadcast_shapes(self.rate.shape, self.zi_logits.shape)
        super().__init__(shape, validate_args=validate_args)

    @property
    def zi_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.zi_probs) * self.rate

    @property
    def variance(self) -> torch.Tensor:
        pi = self.zi_probs
        return (1 - pi) * self.rate * (1 + pi * self.rate)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        return log_zip(value, self.log_rate, self.rate, self.zi_logits)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            x = torch.poisson(self.rate.expand(shape))
            dropped = torch.bernoulli(self.zi_probs.expand(shape)).bool()
        return x.masked_fill(dropped, 0.0)
