"""SGLD for energy-based models: a pure step function and a replay buffer with state.

JEM's sampler (Grathwohl et al. 2019): ``x <- x + step_size * d f(x)/dx + noise_std * eps``,
with step size and noise decoupled, chains persisted in a replay buffer of which a fraction
``reinit_freq`` is re-initialised from noise at every draw.
"""
from __future__ import annotations

from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def sgld_step(score_fn: ScoreFn, x: torch.Tensor, *, step_size: float, noise_std: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One SGLD update ascending ``score_fn`` (an unnormalised log-density per row).

    Returns a new detached tensor; ``x`` is not modified.
    """
    x = x.detach().requires_grad_(True)
    grad = torch.autograd.grad(score_fn(x).sum(), x)[0]
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + step_size * grad + noise_std * noise).detach()


def sgld_sample(score_fn: ScoreFn, x0: torch.Tensor, *, n_steps: int, step_size: float,
                noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``n_steps`` SGLD steps from ``x0``."""
    x = x0.detach()
    for _ in range(n_steps):
        x = sgld_step(score_fn, x, step_size=step_size, noise_std=noise_std, generator=generator)
    return x


class NoiseInit:
    """Draws starting points for SGLD chains.

    ``kind``:
      - ``"marginal"`` (default): each gene drawn independently from its empirical distribution
        in the reference (a shuffled-cells draw). On standardised log-expression this keeps each
        gene's zeros and range but breaks gene-gene structure: noise that looks like expression.
      - ``"normal"``: N(0, 1) per coordinate (the standardised scale).
      - ``"uniform"``: U(-1, 1), as in JEM for images.
    """

    KINDS = ("marginal", "normal", "uniform")

    def __init__(self, kind: str, n_features: int, reference: torch.Tensor | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown SGLD init {kind!r}; choose one of {', '.join(self.KINDS)}")
        if kind == "marginal" and reference is None:
            raise ValueError("marginal SGLD init needs reference data")
        self.kind = kind
        self.n_features = n_features
        self.reference = reference

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "normal":
            return torch.randn(n, self.n_features, generator=generator)
        if self.kind == "uniform":
            return torch.rand(n, self.n_features, generator=generator) * 2 - 1
        ref = self.reference
        rows = torch.randint(0, ref.shape[0], (n, self.n_features), generator=generator)
        cols = torch.arange(self.n_features).expand(n, -1)
        return ref[rows, cols].clone()


class ReplayBuffer:
    """Persistent SGLD chains (JEM's replay buffer).

    Parameters
    ----------
    size
        Number of stored chains (JEM: 10,000).
    init
        A :class:`NoiseInit` used to fill the buffer and to re-initialise chains.
    reinit_freq
        Probability that a drawn chain is replaced by fresh noise (JEM: 0.05).
    """

    def __init__(self, size: int, init: NoiseInit, *, reinit_freq: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        self.size = int(size)
        self.init = init
        self.reinit_freq = float(reinit_freq)
        self.generator = generator
        self.buffer = init(self.size, generator)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` chains (some re-initialised); returns ``(x0, indices)``."""
        idx = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        x = self.buffer[idx].clone()
        fresh = torch.rand(batch_size, generator=self.generator) < self.reinit_freq
        n_fresh = int(fresh.sum())
        if n_fresh:
            x[fresh] = self.init(n_fresh, self.generator)
        return x, idx

    def update(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Write the advanced chains back at the indices they were drawn from."""
        self.buffer[idx] = x.detach().to(self.buffer.device, self.buffer.dtype)

    def reset(self) -> None:
        self.buffer = self.init(self.size, self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        buf = state["buffer"]
        if buf.shape != self.buffer.shape:
            raise ValueError(f"replay buffer shape {tuple(buf.shape)} != {tuple(self.buffer.shape)}")
        self.buffer = buf.clone()
