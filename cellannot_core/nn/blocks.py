"""Shared network blocks: MLP and residual backbones (CLAMS' clamsnet.py shapes)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


class SeededDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its masks from ``generator`` when one is set
    (:func:`~cellannot_core.training.device.seed_dropout`), so that two runs trained at once in
    one process do not draw each other's masks; without one, torch's own dropout."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        keep = 1.0 - self.p
        if keep == 0:
            return x * 0.0
        noise = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * noise.div_(keep)


def mlp(in_dim: int, hidden: Sequence[int], *, act: str = "elu", dropout: float = 0.0,
        batch_norm: bool = False) -> nn.Sequential:
    """``Linear -> [BatchNorm] -> act -> [Dropout]`` per hidden width (CLAMS' MLP)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(activation(act))
        if dropout > 0:
            layers.append(SeededDropout(dropout))
        d = h
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """``act(side(x) + x)``, side = FC -> [BN] -> act -> [drop] -> FC -> [BN] -> [drop]."""

    def __init__(self, dim: int, *, act: str = "elu", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        side: list[nn.Module] = [nn.Linear(dim, dim)]
        if batch_norm:
            side.append(nn.BatchNorm1d(dim))
        side.append(activation(act))
        if dropout > 0:
            side.append(SeededDropout(dropout))
        side.append(nn.Linear(dim, dim))
        if batch_norm:
            side.append(nn.BatchNorm1d(dim))
        if dropout > 0:
            side.append(SeededDropout(dropout))
        self.side = nn.Sequential(*side)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.side(x) + x)


def resnet(in_dim: int, widths: Sequence[int], blocks: Sequence[int], *, act: str = "elu",
           dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Per stage: ``Linear(d -> width) -> act`` then ``blocks`` residual blocks of that width."""
    if len(widths) != len(blocks):
        raise ValueError("widths and blocks must have the same length")
    layers: list[nn.Module] = []
    d = in_dim
    for w, nb in zip(widths, blocks):
        layers += [nn.Linear(d, w), activation(act)]
        layers += [ResBlock(w, act=act, dropout=dropout, batch_norm=batch_norm) for _ in range(nb)]
        d = w
    return nn.Sequential(*layers)
