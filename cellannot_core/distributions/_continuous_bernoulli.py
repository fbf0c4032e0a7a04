"""Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) on expression scaled to [0, 1].

p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x), x in [0, 1], lambda = sigmoid(eta).

Log normaliser (METHODS.md 3.4). With lambda = sigmoid(eta), log((1 - lambda)/lambda) = -eta and
1 - 2 lambda = -tanh(eta / 2), so

    C = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = eta / tanh(eta / 2),
    log C = log|eta| - log|tanh(eta / 2)|,

which is exact and stable for every logit (no clamping of lambda, no overflow for large |eta|);
it is 0/0 only at eta = 0 (lambda = 1/2). Inside lambda in (0.499, 0.501) we use the Taylor
expansion around 1/2 that torch.distributions.ContinuousBernoulli uses:
log C ~ log 2 + 4/3 (lambda - 1/2)^2 + 104/45 (lambda - 1/2)^4 (checked: from
atanh(u)/u = 1 + u^2/3 + u^4/5 with u = 1 - 2 lambda).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from ._registry import register_likelihood

LIMS = (0.499, 0.501)  # lambda window of the Taylor branch (as torch)
_ETA_LIM = math.log(LIMS[1] / (1 - LIMS[1]))  # the same window in logits, ~0.004
_MEAN_ETA_LIM = 1e-2


def cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, from logits (see the module docstring)."""
    small = logits.abs() < _ETA_LIM
    safe = torch.where(small, torch.ones_like(logits), logits)  # keep the unused branch finite (and its grad)
    exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
    d = torch.sigmoid(logits) - 0.5
    d2 = d * d
    taylor = math.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * d2) * d2
    return torch.where(small, taylor, exact)


@register_likelihood("cb", "continuous Bernoulli on log-expression scaled to [0, 1] per gene")
class ContinuousBernoulli(Distribution):
    """Continuous Bernoulli with ``logits`` (log p = -BCEWithLogits(logits, x) + log C)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = False
    domain = "unit"
    decoder_params = ("logits",)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = False) -> None:
        self.logits = torch.as_tensor(logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = 1 / (1 - exp(-eta)) - 1 / eta; near eta = 0: 1/2 + eta/12 - eta^3/720."""
        eta = self.logits
        small = eta.abs() < _MEAN_ETA_LIM
        safe = torch.where(small, torch.ones_like(eta), eta)
        exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
        taylor = 0.5 + eta / 12.0 - eta ** 3 / 720.0
        return torch.where(small, taylor, exact)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none") + cb_log_norm(logits)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """Inverse CDF of F(x) = (exp(eta x) - 1) / (exp(eta) - 1), written without overflow."""
        eta = self.logits
        small = eta.abs() < _MEAN_ETA_LIM
        pos = eta > 0
        safe = torch.where(small, torch.ones_like(eta), eta)
        # eta > 0: x = 1 + log(u + (1 - u) exp(-eta)) / eta;  eta < 0: x = log1p(u expm1(eta)) / eta
        x_pos = 1.0 + torch.log(u + (1 - u) * torch.exp(-safe.clamp_min(0))) / safe
        x_neg = torch.log1p(u * torch.expm1(safe.clamp_max(0))) / safe
        x = torch.where(pos, x_pos, x_neg)
        return torch.where(small, u, x).clamp(0.0, 1.0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
            return self.icdf(u)
