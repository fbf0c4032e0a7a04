"""The energy-model network (models/energy.py): backbone -> latent, linear head -> logits."""
from __future__ import annotations

import torch
from torch import nn


class EnergyNet(nn.Module):
    """Backbone -> latent; linear head -> logits."""

    def __init__(self, backbone: nn.Module, latent_dim: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(latent_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
