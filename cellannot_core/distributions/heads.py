"""Decoder heads: from a decoder's last hidden layer to any registered likelihood.

:class:`LikelihoodHead` reads ``decoder_params`` of the likelihood class and builds one small
module per parameter from :data:`PARAM_HEADS`; nothing branches on the likelihood's name.

- ``mu``: library x softmax(Linear(h)) (scVI's ``px_rate = exp(library) * px_scale``);
- ``log_rate``: log(library) + log_softmax(Linear(h)) (the same rate, kept in log space);
- ``theta``: per-gene inverse dispersion exp(px_r), px_r ~ N(0, 1) at init (scVI ``dispersion="gene"``);
- ``zi_logits``: Linear(h), zero-inflation logits;
- ``logits``: Linear(h), continuous-Bernoulli logits (domain [0, 1], no library).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution

from ._registry import get_likelihood


class ProportionHead(nn.Module):
    """Expression proportions rho = softmax(Linear(h)) (sum to 1 over genes), times the library."""

    def __init__(self, n_in: int, n_genes: int, log: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_genes)
        self.log = log

    def proportions(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(h), dim=-1)

    def forward(self, h: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        if library is None:
            raise ValueError("count likelihoods need the library size")
        if self.log:
            return torch.log(library) + F.log_softmax(self.linear(h), dim=-1)
        return library * self.proportions(h)


class GeneParameter(nn.Module):
    """A per-gene positive parameter exp(p), independent of the cell."""

    def __init__(self, n_in: int, n_genes: int) -> None:
        super().__init__()
        self.log_value = nn.Parameter(torch.randn(n_genes))

    def forward(self, h: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        return self.log_value.exp().expand(h.shape[:-1] + self.log_value.shape)


class LinearHead(nn.Module):
    def __init__(self, n_in: int, n_genes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_genes)

    def forward(self, h: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        return self.linear(h)


PARAM_HEADS = {
    "mu": lambda n_in, g: ProportionHead(n_in, g, log=False),
    "log_rate": lambda n_in, g: ProportionHead(n_in, g, log=True),
    "theta": GeneParameter,
    "zi_logits": LinearHead,
    "logits": LinearHead,
}


class LikelihoodHead(nn.Module):
    """``head(h, library) -> Distribution`` for the likelihood registered as ``name``."""

    def __init__(self, name: str, n_in: int, n_genes: int) -> None:
        super().__init__()
        self.dist_cls = get_likelihood(name)
        self.domain: str = self.dist_cls.domain
        self.heads = nn.ModuleDict({p: PARAM_HEADS[p](n_in, n_genes) for p in self.dist_cls.decoder_params})

    def forward(self, h: torch.Tensor, library: torch.Tensor | None = None) -> Distribution:
        return self.dist_cls(**{p: head(h, library) for p, head in self.heads.items()})

    def expression(self, h: torch.Tensor) -> torch.Tensor:
        """Noise-free expression of decoded cells.

        Count likelihoods: the proportions rho (rows sum to 1; technical zero inflation left
        out); unit-domain likelihoods: the mean in [0, 1].
        """
        for head in self.heads.values():
            if isinstance(head, ProportionHead):
                return head.proportions(h)
        return self(h).mean
