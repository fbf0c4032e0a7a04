"""Device choice and seeding (device-agnostic: CUDA when present, else CPU)."""
from __future__ import annotations

import random

import numpy as np
import torch

from .._constants import num_threads

DEVICES = ("auto", "cpu", "cuda")


def available_devices() -> list[str]:
    """Devices usable on this machine, e.g. ``['cpu']`` or ``['cpu', 'cuda']``."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    from ..errors import ConfigError

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    n = num_threads()
    if n:
        torch.set_num_threads(n)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
