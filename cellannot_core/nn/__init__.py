"""Shared neural-network blocks."""
from .blocks import ResBlock, activation, mlp, resnet

__all__ = ["ResBlock", "activation", "mlp", "resnet"]
