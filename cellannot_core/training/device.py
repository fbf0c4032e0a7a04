"""Device choice and seeding (device-agnostic: CUDA when present, else CPU)."""
from __future__ import annotations

import random
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .._constants import num_threads

DEVICES = ("auto", "cpu", "cuda")


def available_devices() -> list[str]:
    """Devices usable on this machine, e.g. ``['cpu']``, ``['cpu', 'cuda']``, or with several GPUs
    ``['cpu', 'cuda', 'cuda:0', 'cuda:1']`` (``cuda``: the current one)."""
    if not torch.cuda.is_available():
        return ["cpu"]
    n = torch.cuda.device_count()
    return ["cpu", "cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])


def device_name(device: str) -> str:
    """The device's name as torch spells it (``auto``, ``cpu``, ``cuda`` or ``cuda:N``, any case
    given), or a clear error for another."""
    from ..errors import ConfigError

    name = str(device).strip().lower()
    base, colon, index = name.partition(":")
    if base not in DEVICES or (colon and not (base == "cuda" and index.isdigit())):
        raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (or cuda:N for GPU N)")
    return name


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda:N`` one GPU of several (``cuda``: the current one).
    Asking for a GPU this machine lacks is a clear error."""
    from ..errors import ConfigError

    name = device_name(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was requested but no CUDA GPU is available; use device 'cpu' or 'auto' (--device on the command line)")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"device {device!r}: this machine has {n} CUDA GPU(s), numbered 0 to {n - 1}")
    return torch.device(name)


#: held while a global generator (Python's, numpy's, torch's) is seeded and drawn from: the app trains
#: several runs at once in threads of one process, and a run whose draws interleave with another's
#: gave other labels from the same seed (found 2026-12-07: 97.7% of labels agreed). A run's own draws
#: use generators of its own (:func:`seed_dropout`, ``Model.generator``); what only the global
#: generators offer (weight initialisation, likelihood sampling, igraph's Leiden) runs under this lock.
GLOBAL_RNG = threading.RLock()


@contextmanager
def global_rng(seed: int, devices: list | None = None) -> Iterator[None]:
    """The global generators seeded with ``seed`` for the block, their state restored after it,
    and no other thread seeding or drawing from them meanwhile (:data:`GLOBAL_RNG`)."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[] if devices is None else devices):
        state = random.getstate()
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch CPU generator seeded the same way."""
    with GLOBAL_RNG:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
    n = num_threads()
    if n:
        torch.set_num_threads(n)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def seed_dropout(net: torch.nn.Module, seed: int, device: torch.device | str = "cpu") -> None:
    """Give every :class:`~cellannot_core.nn.blocks.SeededDropout` of ``net`` one generator of its own,
    seeded with ``seed`` on ``device``: its masks no longer come from torch's global generator, which
    every thread of the process shares (the same masks as before on CPU, where torch's dropout draws
    ``bernoulli_(1 - p)`` from the global generator seeded the same way)."""
    from ..nn.blocks import SeededDropout

    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    for m in net.modules():
        if isinstance(m, SeededDropout):
            m.generator = gen
